"""The handset simulator: LTE PTT handsets that speak the trunking gateway's protocols.

Each :class:`Handset` does what an MCPTT client in a pre-arranged group call does, over the
bridge's light control channel (:mod:`bridge.gateways.trunking.affiliation`):

- it affiliates to a talkgroup with a JSON offer (Opus, its RTP and floor addresses, its
  SSRC) and de-affiliates at the end;
- it is a TS 24.380 floor participant (§6.2.4, simplified to the states 'U: has no
  permission', 'U: pending Request', 'U: queued', 'U: has permission' and 'U: pending
  Release'): pressing PTT sends a Floor Request under T101/C101, releasing it a Floor Release
  under T100/C100 (:mod:`bridge.gateways.trunking.transaction`); a Floor Revoke stops its
  media and makes it release; every message that asks for a Floor Ack gets one;
- it sends Opus RTP (RFC 7587, 20 ms) only while it holds the floor and its PTT is pressed,
  never otherwise, and keeps every RTP packet it hears, for a WAV recording or a test;
- it reports its position along a GeoJSON route as TS 24.379 location-info documents.

Many handsets run in one asyncio process (:class:`Fleet`), batched where it pays: one HTTP
session, one 20 ms media clock for every talker, and one Opus encoding per audio clip shared
by every handset that plays it (the clip is encoded once, up front). Received audio is kept
as packets and decoded only when asked for.

``ucbridge handset`` is the command-line front end (:func:`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import math
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp
import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from bridge import codecs
from bridge.locationinfo import CONTENT_TYPE as LOCATION_INFO_CONTENT_TYPE
from bridge.locationinfo import LocationReport, ReportType
from bridge.presence import haversine_m
from bridge.rtp import RtpPacket

from .mcpt import (
    QUEUE_POSITION_NOT_QUEUED,
    FloorAck,
    FloorDeny,
    FloorGranted,
    FloorIndicator,
    FloorMessage,
    FloorMessageType,
    FloorQueuePositionInfo,
    FloorQueuePositionRequest,
    FloorRelease,
    FloorRequest,
    FloorRevoke,
    FloorSource,
    FloorTaken,
    parse_datagram_lenient,
)
from .transaction import (
    DEFAULT_C100,
    DEFAULT_C101,
    DEFAULT_T100,
    DEFAULT_T101,
    Transaction,
    TransactionTimeoutError,
    floor_release_transaction,
    floor_request_transaction,
)

__all__ = [
    "AffiliationRefusedError",
    "AudioClip",
    "EventKind",
    "Fleet",
    "FloorState",
    "Handset",
    "HandsetConfig",
    "HandsetEvent",
    "MediaClock",
    "Route",
    "add_arguments",
    "main",
    "parse_schedule",
    "run",
]

#: Opus (RFC 7587): 48 kHz RTP clock, 20 ms frames.
OPUS_RATE: Final = 48000
FRAME_S: Final = 0.020
FRAME_SAMPLES: Final = 960
DEFAULT_TONE_HZ: Final = 440.0
TONE_DBOV: Final = -16.0
FULL_SCALE: Final = 32767.0
DBOV_PER_DECADE: Final = 20.0
#: A tone clip lasts whole seconds, so that an integer frequency loops without a click.
TONE_CLIP_S: Final = 1.0
DEFAULT_LOCATION_INTERVAL_S: Final = 5.0
DEFAULT_WALK_SPEED_MPS: Final = 1.4
HTTP_TIMEOUT_S: Final = 10.0
MAX_SSRC_BITS: Final = 32
MAX_SEQUENCE_BITS: Final = 16
RTP_VERSION_BYTE: Final = 0x80
RTP_MARKER: Final = 0x80
SEQUENCE_MASK: Final = 0xFFFF
TIMESTAMP_MASK: Final = 0xFFFF_FFFF
_RTP_HEADER: Final = struct.Struct("!BBHII")
HTTP_OK_LIMIT: Final = 300
#: Floor datagrams kept while the affiliation's answer is still on its way.
MAX_EARLY_DATAGRAMS: Final = 16
#: After the last scheduled burst, the command keeps listening this long.
SCHEDULE_TAIL_S: Final = 2.0


class AffiliationRefusedError(RuntimeError):
    """The bridge refused the affiliation; ``status`` is the HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"affiliation refused: {status} {reason}")
        self.status = status
        self.reason = reason


class FloorState(enum.StrEnum):
    """The floor participant's states (TS 24.380 §6.2.4), as far as the simulator needs."""

    START_STOP = "Start-stop"
    NO_PERMISSION = "U: has no permission"
    PENDING_REQUEST = "U: pending Request"
    QUEUED = "U: queued"
    PERMISSION = "U: has permission"
    PENDING_RELEASE = "U: pending Release"


class EventKind(enum.StrEnum):
    """What a handset saw: a floor message from the server, or an outcome of its own."""

    AFFILIATED = "affiliated"
    GRANTED = "granted"
    TAKEN = "taken"
    DENY = "deny"
    REVOKE = "revoke"
    IDLE = "idle"
    QUEUED = "queued"
    ACK = "ack"
    #: T101 expired with C101 at its limit: the floor never answered.
    NO_ANSWER = "no_answer"
    RELEASED = "released"
    DEAFFILIATED = "deaffiliated"


_EVENT_OF: Final[dict[FloorMessageType, EventKind]] = {
    FloorMessageType.GRANTED: EventKind.GRANTED,
    FloorMessageType.TAKEN: EventKind.TAKEN,
    FloorMessageType.DENY: EventKind.DENY,
    FloorMessageType.REVOKE: EventKind.REVOKE,
    FloorMessageType.IDLE: EventKind.IDLE,
    FloorMessageType.QUEUE_POSITION_INFO: EventKind.QUEUED,
    FloorMessageType.ACK: EventKind.ACK,
}

_CALL_TYPE_INDICATORS: Final[dict[str, FloorIndicator]] = {
    "normal": FloorIndicator.NORMAL_CALL,
    "imminent-peril": FloorIndicator.IMMINENT_PERIL_CALL,
    "emergency": FloorIndicator.EMERGENCY_CALL,
}


@dataclass(frozen=True)
class HandsetEvent:
    """One event, stamped with the event loop's clock."""

    t: float
    kind: EventKind
    message: FloorMessage | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line for a person: the event and what its message says."""
        message = self.message
        text = self.kind.value
        if isinstance(message, FloorGranted):
            text += f" (duration {message.duration} s, priority {message.floor_priority})"
        elif isinstance(message, FloorTaken):
            who = message.functional_alias or message.granted_party_identity or "?"
            text += f" by {who} (seq {message.message_sequence_number})"
        elif isinstance(message, FloorDeny | FloorRevoke):
            cause = message.reject_cause
            text += f" cause {int(cause.cause)}"
            if cause.phrase:
                text += f" ({cause.phrase})"
        elif isinstance(message, FloorQueuePositionInfo):
            text += f" at position {message.queue_info.position}"
        if self.detail:
            text += f" {self.detail}"
        return text


@dataclass(frozen=True)
class ReceivedPacket:
    at: float
    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    payload: bytes


@dataclass
class HandsetConfig:
    """One simulated handset: who it is, where it goes, how it behaves."""

    server: str
    token: str
    talkgroup: str
    user_id: str
    alias: str = ""
    priority: int = 0
    pre_emptive: bool = False
    codecs: tuple[str, ...] = ("opus",)
    #: Local address its RTP and floor sockets bind to.
    host: str = "127.0.0.1"
    #: False: it holds the floor silently (no RTP), as a handset whose microphone died.
    send_media: bool = True
    t101: float = DEFAULT_T101
    c101: int = DEFAULT_C101
    t100: float = DEFAULT_T100
    c100: int = DEFAULT_C100


# ------------------------------------------------------------------------------------ audio
class AudioClip:
    """Audio to talk with, encoded to Opus packets once and shared by every handset."""

    _cache: ClassVar[dict[tuple[str, float], AudioClip]] = {}

    def __init__(self, pcm: npt.NDArray[np.int16]) -> None:
        frames = len(pcm) // FRAME_SAMPLES
        if frames == 0:
            raise ValueError("audio clip is shorter than one 20 ms frame")
        encoder = codecs.get_encoder(codecs.get_codec("opus"))
        self.packets = [
            encoder.encode(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(frames)
        ]

    @classmethod
    def tone(cls, freq: float = DEFAULT_TONE_HZ, seconds: float = TONE_CLIP_S) -> AudioClip:
        """A sine at ``freq`` Hz and -16 dBov (shared per frequency)."""
        key = ("tone", float(freq))
        clip = cls._cache.get(key)
        if clip is None:
            samples = int(seconds * OPUS_RATE)
            amplitude = FULL_SCALE * 10 ** (TONE_DBOV / DBOV_PER_DECADE) * math.sqrt(2)
            t = np.arange(samples) / OPUS_RATE
            clip = cls((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16))
            cls._cache[key] = clip
        return clip

    @classmethod
    def from_wav(cls, path: Path) -> AudioClip:
        """A sound file (any rate, mixed down to mono, resampled to 48 kHz; shared per file)."""
        key = (str(path.resolve()), 0.0)
        clip = cls._cache.get(key)
        if clip is None:
            data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
            mono = data.astype(np.float64).mean(axis=1)
            if rate != OPUS_RATE:
                mono = soxr.resample(mono, rate, OPUS_RATE)
            clip = cls(np.clip(mono, -FULL_SCALE, FULL_SCALE).astype(np.int16))
            cls._cache[key] = clip
        return clip


def decode_opus(payloads: Sequence[bytes]) -> npt.NDArray[np.int16]:
    """Opus payloads, in order, as 48 kHz PCM."""
    if not payloads:
        return np.zeros(0, dtype=np.int16)
    decoder = codecs.get_decoder(codecs.get_codec("opus"))
    return np.concatenate([decoder.decode(p) for p in payloads])


# ------------------------------------------------------------------------------------ route
class Route:
    """A walk along a GeoJSON line (RFC 7946), back and forth at a steady speed."""

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        if not points:
            raise ValueError("route has no points")
        self.lats = np.array([p[0] for p in points], dtype=np.float64)
        self.lons = np.array([p[1] for p in points], dtype=np.float64)
        legs = [
            float(haversine_m(self.lats[i], self.lons[i], self.lats[i + 1], self.lons[i + 1])[()])
            for i in range(len(points) - 1)
        ]
        self.cumulative = np.concatenate([[0.0], np.cumsum(legs)])

    @property
    def length_m(self) -> float:
        return float(self.cumulative[-1])

    @classmethod
    def from_geojson(cls, data: Any) -> Route:
        """The first LineString (or the Points, in order) of a GeoJSON object."""
        lines: list[list[tuple[float, float]]] = []
        singles: list[tuple[float, float]] = []

        def point(position: Sequence[float]) -> tuple[float, float]:
            return float(position[1]), float(position[0])  # GeoJSON is (lon, lat)

        def visit(node: Any) -> None:
            if not isinstance(node, dict):
                return
            kind = node.get("type")
            if kind == "FeatureCollection":
                for feature in node.get("features", []):
                    visit(feature)
            elif kind == "Feature":
                visit(node.get("geometry"))
            elif kind == "GeometryCollection":
                for geometry in node.get("geometries", []):
                    visit(geometry)
            elif kind == "LineString":
                lines.append([point(c) for c in node["coordinates"]])
            elif kind == "MultiLineString":
                lines.extend([point(c) for c in line] for line in node["coordinates"])
            elif kind == "Point":
                singles.append(point(node["coordinates"]))

        try:
            visit(data)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError("GeoJSON coordinates are invalid") from None
        points = lines[0] if lines else singles
        if not points:
            raise ValueError("GeoJSON has no LineString or Point")
        return cls(points)

    @classmethod
    def load(cls, path: Path) -> Route:
        return cls.from_geojson(json.loads(path.read_text()))

    def position(self, distance_m: float) -> tuple[float, float]:
        """(lat, lon) after walking ``distance_m``, turning back at either end."""
        length = self.length_m
        if length <= 0:
            return float(self.lats[0]), float(self.lons[0])
        d = distance_m % (2 * length)
        if d > length:
            d = 2 * length - d
        i = int(
            np.clip(np.searchsorted(self.cumulative, d, side="right") - 1, 0, len(self.lats) - 2)
        )
        span = self.cumulative[i + 1] - self.cumulative[i]
        f = (d - self.cumulative[i]) / span if span > 0 else 0.0
        lat = self.lats[i] + f * (self.lats[i + 1] - self.lats[i])
        lon = self.lons[i] + f * (self.lons[i + 1] - self.lons[i])
        return float(lat), float(lon)


# ---------------------------------------------------------------------------------- sockets
class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier send (a peer that went away): nothing to do."""


# --------------------------------------------------------------------------------- handset
class Handset:
    """One simulated LTE PTT handset (see the module docstring)."""

    def __init__(
        self,
        config: HandsetConfig,
        *,
        session: aiohttp.ClientSession,
        clock: MediaClock,
        clip: AudioClip | None = None,
        on_event: Callable[[Handset, HandsetEvent], None] | None = None,
    ) -> None:
        self.config = config
        self.session = session
        self.clock = clock
        clock.handsets.append(self)
        self.clip = clip if clip is not None else AudioClip.tone()
        self.on_event = on_event
        self.ssrc = random.getrandbits(MAX_SSRC_BITS)
        self.state = FloorState.START_STOP
        self.events: list[HandsetEvent] = []
        self.received: list[ReceivedPacket] = []
        #: Floor messages received, by MCPT name; datagrams that did not parse.
        self.floor_messages: Counter[str] = Counter()
        self.floor_errors = 0
        self.sent_packets = 0
        self.answer: dict[str, Any] | None = None
        #: PTT held; sending media (PTT held while holding the floor); has a microphone.
        self.ptt = False
        self.talking = False
        self.send_media = config.send_media
        self._burst_start = False
        self._sequence = random.getrandbits(MAX_SEQUENCE_BITS)
        self._timestamp_base = random.getrandbits(MAX_SSRC_BITS)
        self._clip_index = 0
        self._payload_type = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._floor: asyncio.DatagramTransport | None = None
        self._server_rtp: tuple[str, int] | None = None
        self._server_floor: tuple[str, int] | None = None
        self._request: Transaction | None = None
        self._release: Transaction | None = None
        self._early_floor: list[tuple[bytes, tuple[str, int]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[
            tuple[Callable[[HandsetEvent], bool], asyncio.Future[HandsetEvent]]
        ] = []

    # -------------------------------------------------------------- lifecycle
    @property
    def participant(self) -> str:
        return str(self.answer["participant"]) if self.answer else ""

    @property
    def rtp_port(self) -> int:
        assert self._rtp is not None
        return int(self._rtp.get_extra_info("sockname")[1])

    @property
    def floor_port(self) -> int:
        assert self._floor is not None
        return int(self._floor.get_extra_info("sockname")[1])

    async def open(self) -> None:
        """Bind the RTP and floor sockets."""
        loop = asyncio.get_running_loop()
        if self._rtp is None:
            self._rtp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._on_rtp), local_addr=(self.config.host, 0)
            )
        if self._floor is None:
            self._floor, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._on_floor), local_addr=(self.config.host, 0)
            )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"}

    async def affiliate(self) -> dict[str, Any]:
        """Send the offer; on ``201`` the handset is in its talkgroup. Raises on refusal."""
        await self.open()
        config = self.config
        offer = {
            "talkgroup": config.talkgroup,
            "user_id": config.user_id,
            "alias": config.alias,
            "priority": config.priority,
            "pre_emptive": config.pre_emptive,
            "codecs": list(config.codecs),
            "ssrc": self.ssrc,
            "rtp": {"ip": config.host, "port": self.rtp_port},
            "floor": {"ip": config.host, "port": self.floor_port},
        }
        status, body = await self._http("POST", "/api/trunking/affiliate", json=offer)
        if status >= HTTP_OK_LIMIT:
            reason = body.get("error", body) if isinstance(body, dict) else body
            raise AffiliationRefusedError(status, str(reason))
        answer: dict[str, Any] = body
        if answer["codec"] != "opus":
            raise AffiliationRefusedError(
                status, f"the simulator speaks opus only, not {answer['codec']}"
            )
        self.attach(answer)
        return answer

    def attach(self, answer: dict[str, Any]) -> None:
        """Take the bridge's answer: where its RTP and floor ports are, which payload type."""
        self.answer = answer
        self._payload_type = int(answer["payload_type"])
        self._server_rtp = (answer["rtp"]["ip"], int(answer["rtp"]["port"]))
        self._server_floor = (answer["floor"]["ip"], int(answer["floor"]["port"]))
        if self.state is FloorState.START_STOP:
            self.state = FloorState.NO_PERMISSION
        self._emit(EventKind.AFFILIATED, detail=f"to {answer['talkgroup']}")
        early, self._early_floor = self._early_floor, []
        for data, addr in early:
            self._on_floor(data, addr)

    async def deaffiliate(self) -> None:
        if not self.answer:
            return
        self.ptt = self.talking = False
        await self._http("DELETE", f"/api/trunking/affiliate/{self.participant}")
        self.answer = None
        self._server_floor = self._server_rtp = None
        self.state = FloorState.START_STOP
        self._emit(EventKind.DEAFFILIATED)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.clock.handsets.remove(self)
        for transaction in (self._request, self._release):
            if transaction is not None:
                transaction.cancel()
        for task in self._tasks:
            task.cancel()
        for transport in (self._rtp, self._floor):
            if transport is not None:
                transport.close()
        self._rtp = self._floor = None
        for _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()

    async def _http(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        async with self.session.request(
            method, self.config.server.rstrip("/") + path, headers=headers, **kwargs
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {"error": await response.text()}
            return response.status, body

    # ------------------------------------------------------------------ floor
    async def press(
        self, *, call_type: str = "normal", priority: int | None = None
    ) -> HandsetEvent:
        """PTT pressed: a Floor Request under T101/C101; returns the event that answered it.

        ``call_type`` is ``normal``, ``imminent-peril`` or ``emergency`` (the Floor Indicator,
        TS 24.380 §8.2.3.15). The answer is Floor Granted, Taken, Deny or Queue Position
        Info (table 11.1.1-1), or :attr:`EventKind.NO_ANSWER`.
        """
        try:
            indicator = _CALL_TYPE_INDICATORS[call_type]
        except KeyError:
            raise ValueError(f"unknown call type: {call_type}") from None
        if self._request is not None:
            raise RuntimeError("a Floor Request is already pending")
        self.ptt = True
        if self.state is FloorState.PERMISSION:
            self._start_talking()
            return next(e for e in reversed(self.events) if e.kind is EventKind.GRANTED)
        if self.state is FloorState.QUEUED:
            return next(e for e in reversed(self.events) if e.kind is EventKind.QUEUED)
        request = FloorRequest(ssrc=self.ssrc, floor_priority=priority, floor_indicator=indicator)
        self.state = FloorState.PENDING_REQUEST
        transaction = floor_request_transaction(
            bytes(request), self._send_floor, t101=self.config.t101, c101=self.config.c101
        )
        self._request = transaction
        try:
            answer = await transaction.run()
        except TransactionTimeoutError as exc:
            self.ptt = False
            if self.state is FloorState.PENDING_REQUEST:
                self.state = FloorState.NO_PERMISSION
            return self._emit(EventKind.NO_ANSWER, detail=f"after {exc.sent} Floor Requests")
        finally:
            self._request = None
        if answer is None:  # the user let go of PTT first
            return next(e for e in reversed(self.events) if e.kind is EventKind.RELEASED)
        return next(e for e in reversed(self.events) if e.message is answer)

    async def release(self) -> None:
        """PTT released: stop media; Floor Release (under T100/C100 when holding the floor)."""
        self.ptt = False
        self.talking = False
        state = self.state
        if state in (FloorState.PENDING_REQUEST, FloorState.QUEUED):
            if self._request is not None:
                self._request.stop()
            self._send_floor(bytes(FloorRelease(ssrc=self.ssrc)))
            self.state = FloorState.NO_PERMISSION
            self._emit(EventKind.RELEASED, detail="(request withdrawn)")
            return
        if state is not FloorState.PERMISSION:
            return
        await self._release_floor()

    async def _release_floor(self) -> None:
        self.state = FloorState.PENDING_RELEASE
        transaction = floor_release_transaction(
            bytes(FloorRelease(ssrc=self.ssrc)),
            self._send_floor,
            t100=self.config.t100,
            c100=self.config.c100,
        )
        self._release = transaction
        try:
            await transaction.run()
        except TransactionTimeoutError:
            pass
        finally:
            self._release = None
        if self.state is FloorState.PENDING_RELEASE:
            self.state = FloorState.NO_PERMISSION
        self._emit(EventKind.RELEASED)

    def queue_position_request(self) -> None:
        """Ask where the queued request stands (Floor Queue Position Request)."""
        self._send_floor(bytes(FloorQueuePositionRequest(ssrc=self.ssrc)))

    def send_floor_raw(self, data: bytes) -> None:
        """Put any bytes on the floor port (tests of bad input)."""
        self._send_floor(data)

    def _send_floor(self, data: bytes) -> None:
        if self._floor is not None and self._server_floor is not None:
            self._floor.sendto(data, self._server_floor)

    def _on_floor(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._server_floor is None:
            # The first Floor Idle or Taken may overtake the HTTP answer that names the
            # server's floor address: keep it until the answer comes.
            if len(self._early_floor) < MAX_EARLY_DATAGRAMS:
                self._early_floor.append((data, addr))
            return
        if addr != self._server_floor:
            return
        messages, errors = parse_datagram_lenient(data)
        self.floor_errors += len(errors)
        for message in messages:
            self.floor_messages[message.name] += 1
            self._on_floor_message(message)

    def _on_floor_message(self, message: FloorMessage) -> None:
        if message.ack_requested:
            ack = FloorAck.for_message(
                message, ssrc=self.ssrc, source=FloorSource.FLOOR_PARTICIPANT
            )
            self._send_floor(bytes(ack))
        kind = message.message_type
        if kind is FloorMessageType.GRANTED:
            self.state = FloorState.PERMISSION
        elif kind is FloorMessageType.DENY:
            self.state = FloorState.NO_PERMISSION
            self.ptt = self.talking = False
        elif kind in (FloorMessageType.TAKEN, FloorMessageType.IDLE):
            if self.state is FloorState.PERMISSION:  # the burst ended without our Release
                self.ptt = self.talking = False
            if self.state in (FloorState.PENDING_REQUEST, FloorState.PERMISSION) or (
                kind is FloorMessageType.IDLE and self.state is not FloorState.QUEUED
            ):
                self.state = FloorState.NO_PERMISSION
        elif kind is FloorMessageType.QUEUE_POSITION_INFO:
            assert isinstance(message, FloorQueuePositionInfo)
            if message.queue_info.position != QUEUE_POSITION_NOT_QUEUED:
                self.state = FloorState.QUEUED
        elif kind is FloorMessageType.REVOKE:
            self.talking = False
        event_kind = _EVENT_OF.get(kind)
        if event_kind is not None:
            self._emit(event_kind, message)
        for transaction in (self._request, self._release):
            if transaction is not None:
                transaction.response_received(message)
        if kind is FloorMessageType.GRANTED:
            if self.ptt:
                self._start_talking()
            else:
                self._background(self._release_floor())
        elif kind is FloorMessageType.REVOKE and self.state is FloorState.PERMISSION:
            # TS 24.380 §6.2.4: a revoked participant stops its media and releases the floor.
            self.ptt = False
            self._background(self._release_floor())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop_media(self) -> None:
        """The microphone dies: no more RTP, the PTT still held, the floor not released."""
        self.send_media = False
        self.talking = False

    def _start_talking(self) -> None:
        if self.send_media and not self.talking:
            self.talking = True
            self._burst_start = True

    # ------------------------------------------------------------------ media
    def send_frame(self, tick: int) -> None:
        """Send the next Opus frame of the clip (the media clock calls this each 20 ms)."""
        if self._rtp is None or self._server_rtp is None:
            return
        packets = self.clip.packets
        payload = packets[self._clip_index]
        self._clip_index = (self._clip_index + 1) % len(packets)
        header = _RTP_HEADER.pack(
            RTP_VERSION_BYTE,
            self._payload_type | (RTP_MARKER if self._burst_start else 0),
            self._sequence,
            (self._timestamp_base + tick * FRAME_SAMPLES) & TIMESTAMP_MASK,
            self.ssrc,
        )
        self._burst_start = False
        self._sequence = (self._sequence + 1) & SEQUENCE_MASK
        self._rtp.sendto(header + payload, self._server_rtp)
        self.sent_packets += 1

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self._server_rtp:
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        self.received.append(
            ReceivedPacket(
                at=time.monotonic(),
                sequence=packet.sequence_number,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                payload_type=packet.payload_type,
                marker=packet.marker,
                payload=packet.payload,
            )
        )
        if self._release is not None:
            self._release.stop()  # T100 stops on the next talker's media (table 11.1.1-1)

    def heard(self, since: float = 0.0, until: float = math.inf) -> npt.NDArray[np.int16]:
        """What it heard between ``since`` and ``until`` (``time.monotonic``), at 48 kHz."""
        return decode_opus([p.payload for p in self.received if since <= p.at < until])

    def first_audio_after(self, since: float) -> float | None:
        for packet in self.received:
            if packet.at >= since:
                return packet.at
        return None

    def write_wav(self, path: Path) -> None:
        soundfile.write(str(path), self.heard(), OPUS_RATE, subtype="PCM_16")

    # ------------------------------------------------------------------ location
    async def report_location(
        self, lat: float, lon: float, *, emergency: bool = False
    ) -> tuple[int, Any]:
        """One TS 24.379 location report (``application/vnd.3gpp.mcptt-location-info+xml``)."""
        report = LocationReport(
            report_type=ReportType.EMERGENCY if emergency else ReportType.NON_EMERGENCY,
            latitude=lat,
            longitude=lon,
        )
        return await self._http(
            "POST",
            "/api/trunking/location",
            params={"user": self.config.user_id},
            data=bytes(report),
            headers={"Content-Type": LOCATION_INFO_CONTENT_TYPE},
        )

    async def walk(
        self,
        route: Route,
        *,
        speed_mps: float = DEFAULT_WALK_SPEED_MPS,
        interval: float = DEFAULT_LOCATION_INTERVAL_S,
    ) -> None:
        """Walk the route, reporting the position every ``interval`` seconds, until cancelled."""
        distance = 0.0
        while True:
            lat, lon = route.position(distance)
            await self.report_location(lat, lon)
            distance += speed_mps * interval
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ events
    def _emit(
        self, kind: EventKind, message: FloorMessage | None = None, detail: str = ""
    ) -> HandsetEvent:
        event = HandsetEvent(time.monotonic(), kind, message, detail)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(self, event)
        waiting = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate(event):
                future.set_result(event)
            else:
                waiting.append((predicate, future))
        self._waiters = waiting
        return event

    def mark(self) -> int:
        """A position in :attr:`events`, for :meth:`wait_for`."""
        return len(self.events)

    async def wait_for(
        self,
        kind: EventKind,
        *,
        since: int = 0,
        timeout: float = 5.0,
        where: Callable[[HandsetEvent], bool] | None = None,
    ) -> HandsetEvent:
        """The first event of ``kind`` at or after position ``since`` (waiting for it)."""

        def matches(event: HandsetEvent) -> bool:
            return event.kind is kind and (where is None or where(event))

        for event in self.events[since:]:
            if matches(event):
                return event
        future: asyncio.Future[HandsetEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((matches, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            seen = ", ".join(e.kind.value for e in self.events[since:]) or "nothing"
            raise TimeoutError(
                f"{self.config.user_id}: no {kind.value} in {timeout} s (saw {seen})"
            ) from None


# ------------------------------------------------------------------------------ the fleet
class MediaClock:
    """One 20 ms clock for every handset of the process: each talker sends its next frame."""

    def __init__(self) -> None:
        self.handsets: list[Handset] = []
        self.tick = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            for handset in self.handsets:
                if handset.talking:
                    handset.send_frame(self.tick)
            self.tick += 1
            deadline += FRAME_S
            now = loop.time()
            if deadline < now - FRAME_S:  # far behind: skip, never burst
                missed = int((now - deadline) / FRAME_S)
                deadline += missed * FRAME_S
                self.tick += missed
            await asyncio.sleep(max(0.0, deadline - now))


class Fleet:
    """Many handsets in one asyncio process: one HTTP session, one media clock, shared clips."""

    def __init__(self) -> None:
        self.clock = MediaClock()
        self.handsets: list[Handset] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fleet:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0),
        )
        self.clock.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add(
        self,
        config: HandsetConfig,
        *,
        clip: AudioClip | None = None,
        on_event: Callable[[Handset, HandsetEvent], None] | None = None,
    ) -> Handset:
        if self._session is None:
            raise RuntimeError("the fleet is not open")
        handset = Handset(
            config, session=self._session, clock=self.clock, clip=clip, on_event=on_event
        )
        self.handsets.append(handset)
        return handset

    async def close(self, *, deaffiliate: bool = True) -> None:
        if deaffiliate and self._session is not None:
            await asyncio.gather(
                *(h.deaffiliate() for h in self.handsets if h.answer), return_exceptions=True
            )
        await self.clock.stop()
        for handset in self.handsets:
            handset.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


# -------------------------------------------------------------------------------- command
def parse_schedule(text: str) -> list[tuple[float, float]]:
    """``"2:5,10:3"``: press at 2 s for 5 s, then at 10 s for 3 s (seconds from the start)."""
    schedule = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        start, sep, length = item.partition(":")
        try:
            pair = (float(start), float(length))
        except ValueError:
            raise ValueError(f"PTT schedule item is not START:SECONDS: {item}") from None
        if not sep or pair[0] < 0 or pair[1] <= 0:
            raise ValueError(f"PTT schedule item is not START:SECONDS: {item}")
        schedule.append(pair)
    return sorted(schedule)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ucbridge handset``."""
    parser.add_argument(
        "--server", required=True, help="bridge base URL, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument("--token", required=True, help="access token (role officer: itself only)")
    parser.add_argument("--talkgroup", required=True, help="talkgroup (ptt room) to affiliate to")
    parser.add_argument("--user", required=True, help="MCPTT user id (with --count: a prefix)")
    parser.add_argument("--alias", default="", help="functional alias shown to others")
    parser.add_argument("--count", type=int, default=1, help="handsets in this process")
    parser.add_argument("--priority", type=int, default=0, help="floor priority 0-255")
    parser.add_argument("--wav", type=Path, help="talk with this sound file (default: a tone)")
    parser.add_argument("--tone", type=float, default=DEFAULT_TONE_HZ, help="tone frequency, Hz")
    parser.add_argument("--route", type=Path, help="GeoJSON line to walk, reporting the position")
    parser.add_argument("--speed", type=float, default=DEFAULT_WALK_SPEED_MPS, help="m/s")
    parser.add_argument(
        "--location-interval", type=float, default=DEFAULT_LOCATION_INTERVAL_S, help="seconds"
    )
    parser.add_argument(
        "--ptt-schedule",
        default="",
        help='press PTT at START for SECONDS, e.g. "2:5,10:3"; without it, Enter toggles PTT, '
        '"e" Enter toggles an emergency PTT, "q" Enter quits',
    )
    parser.add_argument(
        "--call-type", default="normal", choices=sorted(_CALL_TYPE_INDICATORS), help="PTT call type"
    )
    parser.add_argument("--duration", type=float, help="seconds to run (default: the schedule)")
    parser.add_argument("--record", type=Path, help="directory for a WAV of what each one hears")
    parser.add_argument("--bind", default="127.0.0.1", help="local address of the sockets")


def _printer(started: float) -> Callable[[Handset, HandsetEvent], None]:
    def show(handset: Handset, event: HandsetEvent) -> None:
        print(f"{event.t - started:8.3f} {handset.config.user_id}: {event.describe()}", flush=True)

    return show


async def _scheduled(
    handset: Handset, schedule: list[tuple[float, float]], t0: float, call: str
) -> None:
    loop = asyncio.get_running_loop()
    for start, length in schedule:
        await asyncio.sleep(max(0.0, t0 + start - loop.time()))
        pressed = loop.time()
        await handset.press(call_type=call)
        await asyncio.sleep(max(0.0, pressed + length - loop.time()))
        await handset.release()


async def _keys(handsets: list[Handset], call: str, stop: asyncio.Event) -> None:
    """Enter toggles PTT of every handset; "e" toggles an emergency PTT; "q" or EOF quits."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        line = await loop.run_in_executor(None, sys.stdin.readline)
        key = line.strip().lower()
        if not line or key == "q":
            stop.set()
            return
        kind = "emergency" if key == "e" else call
        actions = [
            handset.release() if handset.ptt else handset.press(call_type=kind)
            for handset in handsets
        ]
        await asyncio.gather(*actions)


async def _main(args: argparse.Namespace) -> int:
    schedule = parse_schedule(args.ptt_schedule)
    clip = AudioClip.from_wav(args.wav) if args.wav else AudioClip.tone(args.tone)
    route = Route.load(args.route) if args.route else None
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    async with Fleet() as fleet:
        handsets = []
        for i in range(args.count):
            user = f"{args.user}-{i + 1}" if args.count > 1 else args.user
            alias = f"{args.alias or args.user} {i + 1}" if args.count > 1 else args.alias
            config = HandsetConfig(
                server=args.server,
                token=args.token,
                talkgroup=args.talkgroup,
                user_id=user,
                alias=alias,
                priority=args.priority,
                host=args.bind,
            )
            handsets.append(fleet.add(config, clip=clip, on_event=_printer(started)))
        results = await asyncio.gather(*(h.affiliate() for h in handsets), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            print(f"ucbridge handset: {failure}", file=sys.stderr)
        if failures:
            return 1
        t0 = loop.time()
        for handset in handsets:
            if schedule:
                tasks.append(loop.create_task(_scheduled(handset, schedule, t0, args.call_type)))
            if route is not None:
                tasks.append(
                    loop.create_task(
                        handset.walk(route, speed_mps=args.speed, interval=args.location_interval)
                    )
                )
        if not schedule:
            tasks.append(loop.create_task(_keys(handsets, args.call_type, stop)))
        duration = args.duration
        if duration is None and schedule:
            duration = max(start + length for start, length in schedule) + SCHEDULE_TAIL_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if args.record is not None:
            args.record.mkdir(parents=True, exist_ok=True)
            for handset in handsets:
                handset.write_wav(args.record / f"{handset.config.user_id}.wav")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ucbridge handset [options]``."""
    parser = argparse.ArgumentParser(
        prog="ucbridge handset",
        description="Simulate LTE PTT handsets on a ucbridge talkgroup: affiliate, press PTT, "
        "talk (Opus) only while holding the floor, record what they hear, walk a GPS route.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``ucbridge handset``: run the simulated handsets until the schedule (or the user) ends."""
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError) as exc:
        print(f"ucbridge handset: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
