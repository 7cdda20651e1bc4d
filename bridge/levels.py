"""Audio levels in dBov and talker detection, for every leg of a worker at once.

A level is expressed in dBov, decibels relative to the overload point of the
system, as RFC 6464 section 3 defines it: 0 dBov is a full-scale square wave, so a
full-scale sine measures about -3 dBov.  The scale stops at -127 dBov, the value
RFC 6464 uses for digital silence.

Levels come either from decoding (:func:`frame_level_dbov`) or, without decoding,
from the RFC 6464 client-to-mixer header extension (:func:`level_from_rfc6464`).
:class:`TalkerDetector` turns them into "started talking" and "stopped talking"
events with a hysteresis and a hang time, in the manner of a voice-operated switch.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

#: The lowest level, which RFC 6464 section 3 reserves for digital silence.
SILENCE_DBOV = -127.0

#: The overload point of 16-bit linear PCM: the RMS of a full-scale square wave.
FULL_SCALE = 32768.0

#: RFC 6464 section 3: the 7-bit level field carries 0 to 127, meaning -0 to -127 dBov.
RFC6464_MAX_LEVEL = 127

#: The value a caller passes for a packet that carried no RFC 6464 extension.
RFC6464_ABSENT = -1

_DB_PER_DECADE_OF_POWER = 10.0
_POWER_FLOOR = (FULL_SCALE * FULL_SCALE) * 10.0 ** (SILENCE_DBOV / _DB_PER_DECADE_OF_POWER)


def frame_level_dbov(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """Return the RMS level of each frame in dBov, clamped to -127..0 (RFC 6464 section 3).

    ``pcm`` is ``(n, samples)``, one frame per row; the result has shape ``(n,)``.
    Digital silence measures -127 dBov.
    """
    if pcm.ndim != 2:
        raise ValueError("PCM must be a 2-D array of frames")
    if pcm.shape[1] == 0:
        raise ValueError("PCM frames are empty")
    samples = pcm.astype(np.float32)
    # Row-wise dot products as one batched matmul: (n, 1, k) @ (n, k, 1).
    power: npt.NDArray[np.float32] = np.matmul(samples[:, None, :], samples[:, :, None])[:, 0, 0]
    power /= np.float32(pcm.shape[1])
    np.maximum(power, np.float32(_POWER_FLOOR), out=power)
    power /= np.float32(FULL_SCALE * FULL_SCALE)
    level = np.log10(power, out=power)
    level *= np.float32(_DB_PER_DECADE_OF_POWER)
    return np.minimum(level, np.float32(0.0), out=level)


def level_from_rfc6464(level: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """Convert RFC 6464 level fields (0..127, meaning -dBov) to dBov.

    ``-1`` (:data:`RFC6464_ABSENT`) marks a packet without the extension and yields
    NaN, so that a caller can fall back to a decoded level with ``np.isnan``.
    Consumers in this module treat NaN as silence.
    """
    if level.size and (level.min() < RFC6464_ABSENT or level.max() > RFC6464_MAX_LEVEL):
        raise ValueError("RFC 6464 level is out of range")
    dbov = -level.astype(np.float32)
    dbov[level == RFC6464_ABSENT] = np.nan
    return dbov


class TalkerDetector:
    """Who is talking, per leg, with hysteresis and a hang time.

    A leg starts talking on a frame at or above ``on_dbov``.  It keeps talking while
    its frames stay at or above ``off_dbov``, and stops once they have stayed below it
    for ``hang_ms``, so that the pauses between words are not reported.  This is the
    "talking" indication that Janus AudioBridge and RFC 6465 mixers derive from levels.

    ``talking`` holds the current state of every leg.  The whole capacity is updated at
    once; a leg that sent no frame this tick counts as silent.
    """

    def __init__(
        self,
        capacity: int,
        *,
        on_dbov: float = -40.0,
        off_dbov: float = -50.0,
        hang_ms: int = 300,
        frame_ms: int = 20,
    ) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        if off_dbov > on_dbov:
            raise ValueError("off level must not be above the on level")
        if hang_ms < 0:
            raise ValueError("hang time must not be negative")
        if frame_ms <= 0:
            raise ValueError("frame duration must be positive")
        self.capacity = capacity
        self.on_dbov = np.float32(on_dbov)
        self.off_dbov = np.float32(off_dbov)
        #: Consecutive quiet frames after which a talker stops.
        self.hang_frames = math.ceil(hang_ms / frame_ms)
        self.talking: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=np.bool_)
        self._hang = np.zeros(capacity, dtype=np.int32)
        self._level = np.empty(capacity, dtype=np.float32)

    def update(
        self, legs: npt.NDArray[np.intp], level_dbov: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Take this tick's levels and return the legs that (started, stopped) talking.

        ``legs`` are the legs that produced a frame this tick and ``level_dbov`` their
        levels; every other leg counts as silent.  NaN counts as silent too.
        """
        if legs.shape != level_dbov.shape:
            raise ValueError("legs and levels differ in shape")
        level = self._level
        level.fill(SILENCE_DBOV)
        level[legs] = level_dbov
        # fmax drops NaN in favour of the floor, so an absent level is silence.
        np.fmax(level, np.float32(SILENCE_DBOV), out=level)

        loud = level >= self.off_dbov
        started = ~self.talking & (level >= self.on_dbov)
        # A talker's hang counter restarts on every loud frame and runs down on quiet ones.
        hang = self._hang
        hang -= 1
        np.maximum(hang, 0, out=hang)
        hang[loud | started] = self.hang_frames
        stopped = self.talking & ~loud & (hang == 0)
        self.talking = (self.talking | started) & ~stopped
        return np.flatnonzero(started), np.flatnonzero(stopped)

    def reset(self, leg: int | npt.NDArray[np.intp]) -> None:
        """Forget a leg's state without an event, e.g. when its slot is reused."""
        self.talking[leg] = False
        self._hang[leg] = 0
