"""Camera audio as a monitor-only source of its rooms, over loopback RTP.

Each room the camera belongs to gets one leg (kind ``camera``, ``monitor_only``): the
mixer puts it in the room's monitor row, heard by dispatcher legs only (and by the whole
room when an ``open`` room sets ``monitor_to_mix``), and it never holds the floor.

RTSP hands audio over in bursts (a PCMU packet of 1,024 samples is 128 ms); the worker
expects one 20 ms frame per packet at an even pace (DESIGN.md: gateway legs get a shallow
buffer). So the decoded PCM goes through a small FIFO, and a pacer sends L16 (RFC 3551
§4.5.11: big-endian 16-bit) at :data:`~.ingest.AUDIO_RATE` every 20 ms against the loop's
clock, never drifting. The FIFO waits for :data:`PREBUFFER_MS` before it starts and is
capped at :data:`MAX_BUFFER_MS` (the oldest samples go, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bridge.rtp import RtpPacket

from .ingest import AUDIO_RATE

logger = logging.getLogger("bridge.gateways.camera")

FRAME_MS = 20
FRAME_SAMPLES = AUDIO_RATE * FRAME_MS // 1000
BYTES_PER_SAMPLE = 2
#: The dynamic payload type the legs send L16 with (RFC 3551 §3).
L16_PAYLOAD_TYPE = 96
PREBUFFER_MS = 160
MAX_BUFFER_MS = 600
_PREBUFFER_BYTES = AUDIO_RATE * PREBUFFER_MS // 1000 * BYTES_PER_SAMPLE
_MAX_BUFFER_BYTES = AUDIO_RATE * MAX_BUFFER_MS // 1000 * BYTES_PER_SAMPLE
_FRAME_BYTES = FRAME_SAMPLES * BYTES_PER_SAMPLE
_LOOPBACK = "127.0.0.1"


class Link(Protocol):
    async def request(self, op: str, **args: Any) -> Any: ...


class _Discard(asyncio.DatagramProtocol):
    """The worker sends each leg its room's mix; a camera has no speaker."""

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        pass


@dataclass
class _Leg:
    room: str
    participant: str
    transport: asyncio.DatagramTransport
    destination: tuple[str, int]


@dataclass
class AudioCounters:
    frames_sent: int = 0
    overflow_bytes: int = 0
    underruns: int = 0
    join_failures: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class MonitorAudio:
    """One camera's audio legs, one per room, all fed from one paced FIFO."""

    def __init__(self, link: Link, camera: str, rooms: list[str]) -> None:
        self.link = link
        self.camera = camera
        self.rooms = list(rooms)
        self.counters = AudioCounters()
        self._legs: list[_Leg] = []
        self._buffer = bytearray()
        self._started = False
        self._pacer: asyncio.Task[None] | None = None
        self._ssrc = random.getrandbits(32)
        self._sequence = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._marker = True

    @property
    def joined(self) -> list[dict[str, str]]:
        return [{"room": leg.room, "participant": leg.participant} for leg in self._legs]

    async def join(self) -> None:
        """Join every room not joined yet; a room that refuses is skipped (counted)."""
        loop = asyncio.get_running_loop()
        joined = {leg.room for leg in self._legs}
        for room in self.rooms:
            if room in joined:
                continue
            transport, _ = await loop.create_datagram_endpoint(_Discard, local_addr=(_LOOPBACK, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                answer = await self.link.request(
                    "join",
                    room=room,
                    participant={
                        "kind": "camera",
                        "name": f"camera:{self.camera}",
                        "codec": "L16",
                        "clock_rate": AUDIO_RATE,
                        "payload_type": L16_PAYLOAD_TYPE,
                        "remote": {"ip": _LOOPBACK, "port": port},
                        "latch": False,
                        "monitor_only": True,
                    },
                )
            except Exception as exc:
                transport.close()
                self.counters.join_failures += 1
                self.counters.errors[room] = str(exc)
                logger.warning("camera %s: audio cannot join room %s: %s", self.camera, room, exc)
                continue
            rtp = answer["media"]["rtp"]
            self.counters.errors.pop(room, None)
            self._legs.append(
                _Leg(
                    room,
                    str(answer["participant"]["id"]),
                    transport,
                    (str(rtp["ip"]), int(rtp["port"])),
                )
            )
        if self._legs and self._pacer is None:
            self._pacer = loop.create_task(self._pace())

    async def leave(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
            self._pacer = None
        legs, self._legs = self._legs, []
        for leg in legs:
            leg.transport.close()
            try:
                await self.link.request("leave", room=leg.room, participant=leg.participant)
            except Exception as exc:
                logger.info("camera %s: leaving room %s: %s", self.camera, leg.room, exc)
        self._buffer.clear()
        self._started = False

    def feed(self, pcm: bytes) -> None:
        """Decoded audio: 16-bit mono at AUDIO_RATE, in the machine's byte order."""
        self._buffer += pcm
        excess = len(self._buffer) - _MAX_BUFFER_BYTES
        if excess > 0:
            excess += excess % BYTES_PER_SAMPLE
            del self._buffer[:excess]
            self.counters.overflow_bytes += excess

    def reset(self) -> None:
        """The stream restarted: start from an empty FIFO again."""
        self._buffer.clear()
        self._started = False

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000
        due = loop.time()
        while True:
            due += period
            self._tick()
            delay = due - loop.time()
            if delay < -period * 5:
                due = loop.time()  # the loop stalled: do not burst to catch up
                delay = 0
            await asyncio.sleep(max(delay, 0))

    def _tick(self) -> None:
        # The RTP clock runs on through gaps (RFC 3550 §5.1), so the worker sees them.
        timestamp = self._timestamp
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        if not self._started:
            if len(self._buffer) < _PREBUFFER_BYTES:
                return
            self._started = True
            self._marker = True
        if len(self._buffer) < _FRAME_BYTES:
            self.counters.underruns += 1
            self._started = False
            return
        frame = np.frombuffer(bytes(self._buffer[:_FRAME_BYTES]), dtype=np.int16)
        del self._buffer[:_FRAME_BYTES]
        packet = RtpPacket(
            payload_type=L16_PAYLOAD_TYPE,
            marker=self._marker,
            sequence_number=self._sequence,
            timestamp=timestamp,
            ssrc=self._ssrc,
            payload=frame.astype(">i2").tobytes(),
        )
        self._marker = False
        data = bytes(packet)
        for leg in self._legs:
            leg.transport.sendto(data, leg.destination)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.counters.frames_sent += 1
