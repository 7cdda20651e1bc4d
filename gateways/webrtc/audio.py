"""A browser's audio as a loopback RTP leg of the media worker.

aiortc has already de-jittered and decoded the browser's Opus (48 kHz stereo s16 frames).
The gateway resamples them once to mono :data:`L16_RATE` and sends one 20 ms L16 frame
per RTP packet (RFC 3551 §4.5.11, big-endian samples) from its own UDP socket on
127.0.0.1 to the worker, which joins it to the mix like any leg, with a shallow buffer,
and detects talkers on its PCM level. The worker's mix for the leg comes back the same
way and is played into :class:`MixTrack`. With ``shared_encode`` (the default) the
gateway's :class:`~.mixencode.MixEncoder` encodes each distinct mix once per tick and the
track hands aiortc's sender the Opus packets as they are; otherwise aiortc's sender
encodes the PCM frames, once per leg.

Why 16 kHz and not 48 kHz towards the worker: the room mixes at 16 kHz by default, so the
worker then resamples nothing for this leg; and an L16/48000 20 ms payload (1920 octets)
is wider than the worker's jitter slot (1280 octets).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .mixencode import OPUS_FRAME_TICKS, OPUS_TIME_BASE, SILENCE_PACKET, Listener, MixEncoder

logger = logging.getLogger("bridge.gateways.webrtc.audio")

#: The rate of the leg towards the worker (the default room rate).
L16_RATE = 16000
#: Samples and octets of one 20 ms L16 frame.
FRAME_SAMPLES = L16_RATE // 50
FRAME_BYTES = 2 * FRAME_SAMPLES
FRAME_S = 0.020
#: The dynamic payload type the leg uses for L16 both ways.
L16_PAYLOAD_TYPE = 96
RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
RTP_MARKER = 0x80
#: A mix frame later than this after the previous one is replaced by silence.
LATE_SLACK_S = 0.010
#: Mix frames kept for the encoder; older ones are dropped (counted) so delay never grows.
MAX_QUEUED_FRAMES = 3
#: After a stall this long the silence clock restarts from now.
CLOCK_RESET_S = 0.1
#: Range of the UDP receive buffer of one leg.
RECEIVE_BUFFER_BYTES = 256 * 1024

#: Frames aiortc's audio receive buffer holds back before it releases the oldest. aiortc uses
#: 4 (80 ms); the buffer releases on packet arrival, not on a playout clock, so holding
#: back only absorbs reordering, never timing jitter, which the worker's jitter buffer
#: absorbs. 1 (20 ms: a frame goes on when the next one arrives) keeps 60 ms off every
#: browser's mouth-to-ear, both ways; a packet reordered by more than one is lost (and
#: concealed by the worker).
AUDIO_PREFETCH = 1
AUDIO_JITTER_CAPACITY = 16
#: Name of the jitter buffer attribute inside aiortc's RTCRtpReceiver.
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"

_SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_NETWORK_INT16 = np.dtype(">i2")


def shorten_receive_buffer(receiver: RTCRtpReceiver, prefetch: int = AUDIO_PREFETCH) -> None:
    """Give an audio receiver a shallower jitter buffer (call before it receives)."""
    if not isinstance(getattr(receiver, _JITTER_BUFFER, None), JitterBuffer):
        raise RuntimeError(
            "aiortc's RTCRtpReceiver has no jitter buffer attribute: the shallow audio "
            "buffer needs aiortc 1.9 to 1.16"
        )
    setattr(receiver, _JITTER_BUFFER, JitterBuffer(AUDIO_JITTER_CAPACITY, prefetch=prefetch))


def l16_packet(seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool) -> bytes:
    """One RTP packet (RFC 3550 §5.1) of L16 audio, with the fixed 12-octet header."""
    header = RTP_HEADER.pack(
        RTP_VERSION << 6,
        (RTP_MARKER if marker else 0) | L16_PAYLOAD_TYPE,
        seq & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    return header + payload


def l16_payload(data: bytes) -> bytes:
    """The payload of an L16 RTP packet; ValueError with the reason when it is not one."""
    if len(data) < RTP_HEADER.size:
        raise ValueError("RTP packet is truncated")
    first, second = data[0], data[1]
    if first >> 6 != RTP_VERSION:
        raise ValueError("RTP packet has wrong version")
    if second & 0x7F != L16_PAYLOAD_TYPE:
        raise ValueError("RTP packet has unexpected payload type")
    offset = RTP_HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < offset + 4:
            raise ValueError("RTP packet is truncated")
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if first & 0x20:
        end -= data[-1]
    if end - offset != FRAME_BYTES:
        raise ValueError("L16 payload is not one 20 ms frame")
    return data[offset:end]


class MixTrack(MediaStreamTrack):
    """The worker's mix for one browser: 20 ms mono frames for aiortc's Opus encoder, or,
    when ``encoded``, the shared Opus packets (:mod:`.mixencode`) for its ``pack``.

    Frames are returned as soon as the worker's packet arrives, so the worker's tick paces
    the stream. When the worker sends nothing (a ptt room with an idle floor sends nothing,
    as MCPTT expects), silence keeps the 20 ms cadence: the Opus encoder then always sees
    a continuous stream, so its state never jumps between the shared mix and an N-1 mix
    other than at the burst boundaries where the worker switches them.
    """

    kind = "audio"

    def __init__(
        self, *, encoded: bool = False, on_silence: Callable[[], None] | None = None
    ) -> None:
        super().__init__()
        self.encoded = encoded
        self._on_silence = on_silence
        self._frames: collections.deque[np.ndarray[Any, np.dtype[np.int16]] | bytes] = (
            collections.deque()
        )
        self._ready = asyncio.Event()
        self._next = 0.0
        self._pts = 0
        self.frames = 0
        self.silence = 0
        self.dropped = 0

    def push(self, payload: bytes) -> None:
        """Queue one L16 frame of the mix (network byte order)."""
        self._queue(np.frombuffer(payload, dtype=_NETWORK_INT16).astype(np.int16))

    def push_encoded(self, packet: bytes) -> None:
        """Queue one 20 ms Opus packet of the mix, encoded once for all who hear it."""
        self._queue(packet)

    def _queue(self, item: np.ndarray[Any, np.dtype[np.int16]] | bytes) -> None:
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(item)
        self._ready.set()

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def recv(self) -> av.AudioFrame | av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next < now - CLOCK_RESET_S:
            self._next = now + FRAME_S
        while not self._frames:
            wait = self._next - loop.time()
            if wait <= 0:
                break
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
            if self.readyState != "live":
                raise MediaStreamError
        if self._frames:
            item = self._frames.popleft()
            self.frames += 1
            self._next = loop.time() + FRAME_S + LATE_SLACK_S
        else:
            item = SILENCE_PACKET if self.encoded else _SILENCE
            self.silence += 1
            self._next += FRAME_S
            if self._on_silence is not None:
                self._on_silence()
        if isinstance(item, bytes):
            packet = av.Packet(item)
            packet.pts = self._pts
            packet.time_base = OPUS_TIME_BASE
            self._pts += OPUS_FRAME_TICKS
            return packet
        pcm = item
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = L16_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, L16_RATE)
        self._pts += FRAME_SAMPLES
        return frame


@dataclass
class LegCounters:
    """Packets of one leg, both ways, with what was dropped and why."""

    sent: int = 0
    received: int = 0
    foreign: int = 0
    malformed: int = 0
    frames_in: int = 0
    resample_ns: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _LegProtocol(asyncio.DatagramProtocol):
    def __init__(self, leg: AudioLeg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.leg.datagram_received(data, addr)


class AudioLeg:
    """The loopback RTP leg of one browser: uplink from aiortc, downlink into :class:`MixTrack`.

    With an ``encoder`` the leg's mix frames go through the gateway's shared Opus encode
    (:mod:`.mixencode`), and its uplink frames mark its own talk bursts there.
    """

    def __init__(self, host: str = "127.0.0.1", encoder: MixEncoder | None = None) -> None:
        self.host = host
        self.encoder = encoder
        self.listener: Listener | None = None
        if encoder is not None:
            self.listener = encoder.add(self._deliver)
        self.mix = self._new_mix()
        self.counters = LegCounters()
        self.worker: tuple[str, int] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._uplink: asyncio.Task[None] | None = None
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._marker = True

    @property
    def opened(self) -> bool:
        return self._transport is not None

    def renew_mix(self) -> None:
        """A fresh :class:`MixTrack` for a new peer connection (aiortc stops the old one's
        track with its sender); the worker's frames go to it from now on."""
        self.mix = self._new_mix()
        if self.listener is not None:
            self.listener.heard_silence()  # a new decoder: any stream may start it

    def _new_mix(self) -> MixTrack:
        if self.listener is None:
            return MixTrack()
        return MixTrack(encoded=True, on_silence=self.listener.heard_silence)

    def _deliver(self, packet: bytes) -> None:
        self.mix.push_encoded(packet)

    @property
    def port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    async def open(self) -> None:
        """Bind the leg's UDP socket on the loopback address (port chosen by the kernel)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _LegProtocol(self), local_addr=(self.host, 0)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._transport = transport

    def connect(self, ip: str, port: int) -> None:
        """Send to (and only accept from) the worker's RTP address of the join answer."""
        self.worker = (ip, port)

    def start(self, track: MediaStreamTrack) -> None:
        """Forward the browser's decoded audio (aiortc's remote track) to the worker."""
        if self._uplink is not None:
            self._uplink.cancel()
        self._uplink = asyncio.get_running_loop().create_task(self._run_uplink(track))

    async def _run_uplink(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=L16_RATE)
        pending = bytearray()
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.counters.frames_in += 1
                started = time.perf_counter_ns()
                for out in resampler.resample(frame):
                    pending += out.to_ndarray().reshape(-1).astype(_NETWORK_INT16).tobytes()
                self.counters.resample_ns += time.perf_counter_ns() - started
                while len(pending) >= FRAME_BYTES:
                    self.send(bytes(pending[:FRAME_BYTES]))
                    del pending[:FRAME_BYTES]
        except MediaStreamError:
            return

    def send(self, payload: bytes) -> None:
        """Send one 20 ms L16 frame to the worker."""
        if self._transport is None or self.worker is None:
            return
        if self.listener is not None:
            self.listener.uplink(payload)
        packet = l16_packet(self._seq, self._timestamp, self._ssrc, payload, self._marker)
        self._marker = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self._transport.sendto(packet, self.worker)
        self.counters.sent += 1

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.worker is None or (addr[0], addr[1]) != self.worker:
            self.counters.foreign += 1
            return
        try:
            payload = l16_payload(data)
        except ValueError:
            self.counters.malformed += 1
            return
        self.counters.received += 1
        if self.encoder is not None and self.listener is not None:
            self.encoder.submit(self.listener, payload)
        else:
            self.mix.push(payload)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "sent": c.sent,
            "received": c.received,
            "foreign": c.foreign,
            "malformed": c.malformed,
            "frames_in": c.frames_in,
            "mix_frames": self.mix.frames,
            "silence_frames": self.mix.silence,
            "mix_dropped": self.mix.dropped,
        }

    async def close(self) -> None:
        if self._uplink is not None:
            self._uplink.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._uplink
            self._uplink = None
        if self.encoder is not None and self.listener is not None:
            self.encoder.remove(self.listener)
        self.mix.stop()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
