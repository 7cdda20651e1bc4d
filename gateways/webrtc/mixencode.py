"""One Opus encode per distinct 20 ms mix, shared by every browser that hears it.

DESIGN "Encode and send in bulk": listeners who are not talking share one encoded room
mix; only the talkers get their own N-1 encode, and a stateful encoder moves a listener
between the shared mix and its own only at a burst boundary.

The media worker already sends every leg that shares a mix row the identical L16 payload
in the same tick (one ``sendmmsg``), each on its own loopback leg. Each leg hands its
payload to the gateway's :class:`MixEncoder`, which waits until the event loop has run
every datagram callback that was ready (``call_soon``), groups the batch by payload, and
encodes each distinct payload once, with the persistent Opus encoder of its
:class:`Stream`. Every leg of the group gets the same Opus packet, which aiortc's sender
packs as it is (``OpusEncoder.pack``): per leg it only rewrites the RTP sequence number,
timestamp and SSRC (RFC 3550 §5.1), from :class:`~.audio.MixTrack`'s own continuous pts.

Streams follow the mixes, not the rooms:

- a group keeps the stream most of its legs were on, so a talker whose mix leaves the
  room mix (the worker gives it its own N-1 row) takes a new encoder, and the listeners
  keep theirs;
- a leg whose stream went on with another mix this tick (it has just started talking,
  or stopped) follows its new mix at once: that is the worker's own burst boundary;
- a leg that hears the same mix as a group but on a stream of its own (a talker that
  stopped and hears the room mix again) joins the group's stream only at a burst
  boundary: once its own uplink is silent (the worker's talker detection, with the same
  levels and hang time) or after it heard silence. It is never moved mid-burst;
- digital silence (the worker's silent mix, or no frame at all: a ``ptt`` room with its
  floor idle sends nothing) is not encoded: every leg gets :data:`SILENCE_PACKET`.

The Opus encoder takes the mix at its own 16 kHz, mono (RFC 7587 §4: the RTP clock is
48 kHz whatever the encoded bandwidth, and a mono stream is valid in an ``opus/48000/2``
session, RFC 7587 §7), so there is no resampling either.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import math
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from bridge.levels import frame_level_dbov

#: The rate of the L16 mix the worker sends, and of the encoder's input.
INPUT_RATE = 16000
INPUT_SAMPLES = INPUT_RATE // 50
#: Opus RTP timestamps run at 48 kHz (RFC 7587 §4.1); 20 ms is 960 of them.
OPUS_CLOCK_RATE = 48000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK_RATE)
OPUS_FRAME_TICKS = OPUS_CLOCK_RATE // 50
#: Wideband speech, mono: transparent at 32 kbit/s (RFC 7587 §3.1.1 recommends 28-40 for
#: fullband speech; the mix is wideband).
OPUS_BITRATE = 32000
OPUS_APPLICATION = "voip"
#: An Opus packet that decodes to digital silence: TOC 0xB8 = configuration 23 (CELT-only,
#: wideband, 20 ms), mono, one frame (RFC 6716 §3.1); its range-coded body starts with the
#: silence flag set (RFC 6716 §4.3, Table 56), so the decoder outputs zeros after the
#: overlap of the previous frame. It is what libopus itself emits for a silent frame.
SILENCE_PACKET = bytes.fromhex("b8fffe")
#: A stream fed longer ago than this was fed in an earlier tick.
TICK_WINDOW_S = 0.010
#: The uplink talker detection that marks a leg's own burst boundaries: the levels and
#: hang time of the worker's :class:`bridge.levels.TalkerDetector`.
TALK_ON_DBOV = -40.0
TALK_OFF_DBOV = -50.0
TALK_HANG_FRAMES = 15  # 300 ms

_NETWORK_INT16 = np.dtype(">i2")


def opus_encoder() -> Any:
    """A libopus encoder for the 20 ms, 16 kHz mono frames of one mix stream."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = INPUT_RATE
    codec.time_base = fractions.Fraction(1, INPUT_RATE)
    codec.options = {"application": OPUS_APPLICATION}
    codec.open()
    return codec


class Stream:
    """One distinct mix over time: a persistent Opus encoder and its last frame."""

    def __init__(self) -> None:
        self._codec = opus_encoder()
        self._pts = 0
        #: The last L16 payload encoded, its Opus packet, and when (flush serial and time).
        self.payload = b""
        self.packet = b""
        self.serial = -1
        self.fed_at = -math.inf

    def encode(self, payload: bytes, serial: int, now: float) -> bytes:
        pcm = np.frombuffer(payload, dtype=_NETWORK_INT16).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INPUT_RATE
        frame.pts = self._pts
        self._pts += INPUT_SAMPLES
        packets = self._codec.encode(frame)
        # libopus codes each 20 ms frame as it comes: one packet per frame.
        self.packet = bytes(packets[0]) if packets else SILENCE_PACKET
        self.payload = payload
        self.serial = serial
        self.fed_at = now
        return self.packet


class Listener:
    """A leg's place in the shared encode: its stream and its own burst state."""

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        #: Takes each Opus packet for the leg (:meth:`~.audio.MixTrack.push_encoded`).
        self.deliver = deliver
        self.stream: Stream | None = None
        #: The flush serial of the leg's last frame.
        self.serial = -1
        #: The leg heard silence since its last frame: it may change streams.
        self.after_silence = True
        #: The leg's own uplink, as the worker's talker detection sees it.
        self.talking = False
        self._quiet = 0

    @property
    def may_switch(self) -> bool:
        """Whether the leg is at a burst boundary: between its own bursts, or after silence."""
        return self.after_silence or not self.talking

    def heard_silence(self) -> None:
        self.after_silence = True

    def uplink(self, payload: bytes) -> None:
        """Follow the leg's own talk bursts from the 20 ms L16 frames it sends."""
        pcm = np.frombuffer(payload, dtype=_NETWORK_INT16).astype(np.int16)
        level = float(frame_level_dbov(pcm.reshape(1, -1))[0])
        if level >= TALK_OFF_DBOV and (self.talking or level >= TALK_ON_DBOV):
            self.talking = True
            self._quiet = 0
        elif self.talking:
            self._quiet += 1
            if self._quiet >= TALK_HANG_FRAMES:
                self.talking = False

    def fed_this_tick(self, stream: Stream, now: float) -> bool:
        """Whether ``stream`` was fed since this leg's last frame, within one tick."""
        return stream.serial > self.serial and now - stream.fed_at < TICK_WINDOW_S

    def takes(self, stream: Stream, payload: bytes, now: float) -> bool:
        """Whether ``stream`` can carry ``payload`` as this leg's next frame: it was not fed
        this tick, or was fed this very payload (another leg of the group came first)."""
        return not self.fed_this_tick(stream, now) or stream.payload == payload


class MixEncoder:
    """Every leg's mix of one gateway, encoded once per distinct payload and tick."""

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()
        self._pending: dict[Listener, bytes] = {}
        self._scheduled = False
        self._serial = 0
        self._zeros = bytes(2 * INPUT_SAMPLES)
        #: Opus encodes, frames delivered encoded, frames delivered as silence.
        self.encodes = 0
        self.frames = 0
        self.silent_frames = 0
        #: Encoders created, and legs moved from one stream to another.
        self.streams_created = 0
        self.switches = 0

    def add(self, deliver: Callable[[bytes], None]) -> Listener:
        listener = Listener(deliver)
        self.listeners.add(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        self._pending.pop(listener, None)
        listener.stream = None

    def submit(self, listener: Listener, payload: bytes) -> None:
        """A leg's L16 mix frame from the worker; encoded once the batch is complete."""
        if listener in self._pending:  # the leg's next frame: its previous tick is complete
            self.flush()
        self._pending[listener] = payload
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Encode each distinct payload of the pending batch once and deliver it."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._serial += 1
        serial = self._serial
        now = asyncio.get_running_loop().time()
        groups: dict[bytes, list[Listener]] = {}
        for listener, payload in batch.items():
            groups.setdefault(payload, []).append(listener)
        # The largest group first: a stream stays with most of the legs that hear it.
        for payload, members in sorted(groups.items(), key=lambda g: len(g[1]), reverse=True):
            if payload == self._zeros:
                for listener in members:
                    listener.stream = None
                    listener.serial = serial
                    listener.after_silence = True
                    listener.deliver(SILENCE_PACKET)
                self.silent_frames += len(members)
                continue
            self._encode_group(payload, members, serial, now)

    def _encode_group(
        self, payload: bytes, members: list[Listener], serial: int, now: float
    ) -> None:
        usable = collections.Counter(
            m.stream for m in members if m.stream is not None and m.takes(m.stream, payload, now)
        )
        main = usable.most_common(1)[0][0] if usable else None
        for listener in members:
            stream = listener.stream
            keep = stream is not None and (
                stream is main or (listener.takes(stream, payload, now) and not listener.may_switch)
            )
            if not keep:
                if main is None:
                    main = Stream()
                    self.streams_created += 1
                if stream is not None:
                    self.switches += 1
                stream = listener.stream = main
            assert stream is not None
            if stream.payload == payload and listener.fed_this_tick(stream, now):
                packet = stream.packet  # encoded this tick for another leg of the group
            else:
                packet = stream.encode(payload, serial, now)
                self.encodes += 1
            listener.serial = serial
            listener.after_silence = False
            listener.deliver(packet)
        self.frames += len(members)

    def stats(self) -> dict[str, int]:
        return {
            "legs": len(self.listeners),
            "streams": len({id(lst.stream) for lst in self.listeners if lst.stream is not None}),
            "encodes": self.encodes,
            "frames": self.frames,
            "silent_frames": self.silent_frames,
            "streams_created": self.streams_created,
            "switches": self.switches,
        }
