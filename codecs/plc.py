"""Packet-loss concealment by repeating the last good frame and fading it out.

This is the simple concealment for codecs without one of their own (G.711, L16,
G.722): the last frame that was heard is played again, its gain ramped down
linearly, sample by sample, so that it reaches silence after
:data:`FADE_FRAMES` lost frames in a row (60 ms) and stays there. ITU-T G.711
Appendix I describes a pitch-based concealment that sounds better; this one is
cheap and, more importantly here, batch-first: :func:`fade_out` conceals the
frames of every lost leg of a worker in one NumPy operation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FADE_FRAMES = 3
"""Number of consecutive lost frames over which the concealment fades to silence."""


def fade_out(
    last: npt.NDArray[np.int16], lost: int | npt.NDArray[np.integer]
) -> npt.NDArray[np.int16]:
    """Conceal lost frames by fading out copies of the last good ones.

    ``last`` holds the last good frame of each stream, shape ``(..., samples)``.
    ``lost`` is, for each stream, the number of the lost frame in the current
    run of losses: 1 for the first lost frame, 2 for the second and so on; a
    scalar, or an array of the leading shape of ``last``. Frame ``k`` of a run
    is ``last`` times a gain ramped linearly from ``1 - (k - 1) / FADE_FRAMES``
    at its first sample towards ``1 - k / FADE_FRAMES`` after its last, clipped
    at 0, so consecutive concealed frames join without a step in gain.
    """
    samples = last.shape[-1]
    run = np.asarray(lost, dtype=np.float32)[..., np.newaxis]
    position = np.arange(samples, dtype=np.float32) / np.float32(samples)
    ramp = 1.0 - (run - 1.0 + position) / np.float32(FADE_FRAMES)
    gain = np.minimum(np.maximum(ramp, np.float32(0.0)), np.float32(1.0))
    faded: npt.NDArray[np.float32] = np.rint(last * gain)
    return faded.astype(np.int16)


class FadeConcealer:
    """Concealment state of one stream: the last good frame and the length of the loss run."""

    def __init__(self, frame_samples: int) -> None:
        self._last: npt.NDArray[np.int16] = np.zeros(frame_samples, dtype=np.int16)
        self._lost = 0

    @property
    def lost(self) -> int:
        """Number of frames concealed since the last good frame."""
        return self._lost

    def good(self, frame: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Remember a frame that was decoded from a received packet, and return it."""
        self._last = frame[-self._last.shape[0] :]
        self._lost = 0
        return frame

    def conceal(self) -> npt.NDArray[np.int16]:
        """Return one concealed frame for a lost packet."""
        self._lost += 1
        return fade_out(self._last, self._lost)
