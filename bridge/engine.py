"""The audio engine of one media worker: every room it owns, one 20 ms tick, batch first.

DESIGN.md, "How one audio frame flows": the tick drains every pending packet of every
leg from one shared UDP port, parses the RTP headers as NumPy columns, scatters the
payloads into one jitter array, plays out one frame per leg, decodes by codec group,
picks the live sources, resamples only those to the room rate, mixes every room with
one sparse product ``out = W @ S``, encodes once per distinct (codec, mix) and sends
everything with one ``sendmmsg``. Nothing on this path loops per packet or per sample
in Python; the loops that remain run per codec group, per live source or per mix, or
on rare slow paths (unknown sources, DTMF, SSRC changes).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import codecs
from .codecs.base import Decoder, Encoder
from .codecs.plc import fade_out
from .codecs.resample import ResamplerBank
from .dtmf import DtmfReceiver
from .jitterbuffer import JitterArray, PlayoutStatus
from .levels import frame_level_dbov
from .mixer import Mixer, MixKind, MixResult, Monitor, RoomTopology
from .mmsg import BatchSocket, RecvBatch
from .model import DEFAULT_DUCK_DB, RoomMode
from .rtpcolumns import DropReason, parse_rtp_columns

logger = logging.getLogger(__name__)

FRAME_MS = 20
RTP_HEADER_SIZE = 12
RTP_VERSION_BYTE = 0x80
MARKER_BIT = 0x80
#: Widest payload we keep per frame (L16 mono 16 kHz is 640 bytes, Opus at most 1275).
PAYLOAD_SIZE = 1280
#: Unknown sources examined per tick for latching; the rest are dropped and counted.
MAX_LATCH_ATTEMPTS = 64
#: Silence level reported for a leg with no audio this tick.
SILENCE_DBOV = -127.0
#: Ticks a mix-row encoder may stay unused before it is freed.
IDLE_STATE_TICKS = 250
#: Transit samples kept for the p50/p99 figures.
TRANSIT_WINDOW = 16384
#: Receive times of this many recent ticks are kept, to tell which tick took in a frame
#: (the jitter buffer holds at most 200 ms; 1.28 s is ample).
RECEIVE_HISTORY_TICKS = 64
#: Samples of the widest 20 ms frame a leg decodes to (48 kHz).
MAX_FRAME_SAMPLES = 960

EventSink = Callable[[dict[str, Any]], None]
FramesSink = Callable[[int, int, npt.NDArray[np.int16]], None]


class AdmissionError(RuntimeError):
    """The worker cannot take another leg."""


@dataclass
class LegSpec:
    """What the worker needs to know about a joining leg."""

    participant: str
    room: str
    codec: str
    clock_rate: int | None
    payload_type: int
    dtmf_payload_type: int | None
    remote_ip: str
    remote_port: int
    ssrc: int | None = None
    gain: float = 1.0
    muted: bool = False
    alias: str = ""
    latch: bool = False
    #: Hears monitor-only sources; a monitor-only source is heard by dispatchers only.
    dispatcher: bool = False
    monitor_only: bool = False


@dataclass
class Leg:
    slot: int
    spec: LegSpec
    codec: codecs.CodecSpec
    ssrc_out: int
    decoder: Decoder | None = None
    dtmf: DtmfReceiver | None = None


@dataclass
class Decoded:
    """One codec group's frames of this tick, at the codec's own rate."""

    codec: codecs.CodecSpec
    slots: npt.NDArray[np.intp]
    pcm: npt.NDArray[np.int16]


@dataclass
class RoomState:
    id: str
    name: str
    index: int
    mode: RoomMode
    record: bool = False
    holder: int = -1
    legs: dict[str, Leg] = field(default_factory=dict)
    monitor_to_mix: bool = False


@dataclass
class MonitorSpec:
    """A dispatcher leg's monitored rooms (room id -> linear gain) and priority room."""

    rooms: dict[str, float]
    priority: str | None = None
    duck_db: float = DEFAULT_DUCK_DB


@dataclass
class TickTimes:
    """Nanoseconds spent per stage in one tick."""

    receive: int = 0
    parse: int = 0
    jitter: int = 0
    decode: int = 0
    mix: int = 0
    encode: int = 0
    send: int = 0

    def total(self) -> int:
        return (
            self.receive
            + self.parse
            + self.jitter
            + self.decode
            + self.mix
            + self.encode
            + self.send
        )


def ip_to_int(ip: str) -> int:
    parts = [int(p) for p in ip.split(".")]
    if len(parts) != 4 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError(f"not an IPv4 address: {ip}")
    return (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]


def int_to_ip(value: int) -> str:
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _address_key(
    ip: npt.NDArray[np.uint32], port: npt.NDArray[np.uint16]
) -> npt.NDArray[np.uint64]:
    return (ip.astype(np.uint64) << np.uint64(16)) | port.astype(np.uint64)


class AudioEngine:
    """All rooms and legs of one media worker, mixed once per tick."""

    def __init__(
        self,
        rtp: BatchSocket,
        *,
        capacity: int = 4096,
        room_rate: int = 16000,
        events: EventSink | None = None,
        frames: FramesSink | None = None,
    ) -> None:
        self.rtp = rtp
        self.capacity = capacity
        self.room_rate = room_rate
        self.room_frame = room_rate * FRAME_MS // 1000
        self.events: EventSink = events or (lambda _event: None)
        self.frames: FramesSink | None = frames
        self.rooms: dict[str, RoomState] = {}
        self.legs: dict[str, Leg] = {}
        self._slot_leg: list[Leg | None] = [None] * capacity
        self._free_slots = list(range(capacity - 1, -1, -1))
        self._free_room_indexes: list[int] = []
        self._next_room_index = 0
        self._room_by_index: dict[int, RoomState] = {}
        self._ssrc_random = random.SystemRandom()

        # Per-leg columns, indexed by slot.
        self.active = np.zeros(capacity, dtype=np.bool_)
        self.room_of = np.full(capacity, -1, dtype=np.int32)
        self.payload_type = np.full(capacity, -1, dtype=np.int16)
        self.dtmf_type = np.full(capacity, -1, dtype=np.int16)
        self.remote_ip = np.zeros(capacity, dtype=np.uint32)
        self.remote_port = np.zeros(capacity, dtype=np.uint16)
        self.latched = np.zeros(capacity, dtype=np.bool_)
        self.may_latch = np.zeros(capacity, dtype=np.bool_)
        self.ssrc_in = np.zeros(capacity, dtype=np.uint32)
        self.ssrc_known = np.zeros(capacity, dtype=np.bool_)
        self.last_sequence = np.zeros(capacity, dtype=np.uint16)
        self.ssrc_out = np.zeros(capacity, dtype=np.uint32)
        self.seq_out = np.zeros(capacity, dtype=np.uint16)
        self.ts_out = np.zeros(capacity, dtype=np.uint32)
        self.ts_step = np.zeros(capacity, dtype=np.uint32)
        self.out_type = np.zeros(capacity, dtype=np.uint8)
        self.sent_last_tick = np.zeros(capacity, dtype=np.bool_)
        self.level = np.full(capacity, SILENCE_DBOV, dtype=np.float32)
        self.header_level = np.full(capacity, -1, dtype=np.int16)
        self.drops = np.zeros((capacity, len(DropReason)), dtype=np.int64)
        self.received = np.zeros(capacity, dtype=np.int64)
        self.sent = np.zeros(capacity, dtype=np.int64)
        self.unknown_drops = np.zeros(len(DropReason), dtype=np.int64)

        self._keys = np.zeros(0, dtype=np.uint64)
        self._key_slots = np.zeros(0, dtype=np.intp)

        self.jitter = JitterArray(capacity, payload_size=PAYLOAD_SIZE)
        self.mixer = Mixer(capacity, frame_samples=self.room_frame)
        self._topology_dirty = False
        # Each room's topology is rebuilt only when that room changed: a join into one room
        # of a hundred does not walk the other ninety-nine.
        self._topologies: dict[str, RoomTopology] = {}
        self._stale_rooms: set[str] = set()
        # Routing across rooms (patch groups of room ids, dispatchers' monitors), handed
        # to the mixer as room indexes and leg slots whenever it or the topology changes.
        self.patch_groups: list[list[str]] = []
        self.monitors: dict[str, MonitorSpec] = {}
        self._routing_dirty = False

        # Resampler banks by (in rate, out rate), three rows per slot: rooms' shared mixes
        # [0, capacity), legs' own N-1 mixes [capacity, 2 capacity), legs' input streams
        # [2 capacity, 3 capacity).
        self._banks: dict[tuple[int, int], ResamplerBank] = {}
        self._row_tick = np.full(3 * capacity, -2, dtype=np.int64)
        self._row_ids_for: list[tuple[str, int]] | None = None
        self._row_ids_cache = np.zeros(0, dtype=np.intp)
        self.codec_id = np.zeros(capacity, dtype=np.int16)
        self._codecs: list[codecs.CodecSpec] = []
        self.last_pcm = np.zeros((capacity, MAX_FRAME_SAMPLES), dtype=np.int16)
        self.lost_run = np.zeros(capacity, dtype=np.int32)
        self._row_encoders: dict[tuple[str, int, tuple[str, int]], Encoder] = {}
        self._row_state_used: dict[tuple[str, int, tuple[str, int]], int] = {}
        self._silence: dict[tuple[str, int], bytes] = {}
        self._send_payload = np.zeros((2 * capacity + 16, PAYLOAD_SIZE), dtype=np.uint8)
        self.ticks = 0
        self.audible: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self.times = TickTimes()
        # Transit of the frames mixed: kernel receive timestamp -> return of sendmmsg, and
        # how long each frame sat in the jitter buffer (from the tick that took it in to
        # the tick that played it), over the last TRANSIT_WINDOW.
        self.transit_ns = np.zeros(TRANSIT_WINDOW, dtype=np.int64)
        self.transit_held_ns = np.zeros(TRANSIT_WINDOW, dtype=np.int64)
        self.transit_count = 0
        # Wall-clock return of each recent tick's receive, oldest first.
        self._received_at = np.zeros(RECEIVE_HISTORY_TICKS, dtype=np.int64)

    # ------------------------------------------------------------------ rooms
    def add_room(
        self,
        room_id: str,
        name: str,
        mode: RoomMode,
        record: bool = False,
        *,
        monitor_to_mix: bool = False,
    ) -> RoomState:
        if room_id in self.rooms:
            room = self.rooms[room_id]
            room.mode, room.record, room.monitor_to_mix = mode, record, monitor_to_mix
            self._stale(room_id)
            return room
        if self._free_room_indexes:
            index = self._free_room_indexes.pop()
        else:
            index = self._next_room_index
            self._next_room_index += 1
        room = RoomState(
            id=room_id,
            name=name,
            index=index,
            mode=mode,
            record=record,
            monitor_to_mix=monitor_to_mix,
        )
        self.rooms[room_id] = room
        self._room_by_index[index] = room
        self._stale(room_id)
        return room

    def set_monitor_to_mix(self, room_id: str, monitor_to_mix: bool) -> None:
        self._room(room_id).monitor_to_mix = monitor_to_mix
        self._stale(room_id)

    def remove_room(self, room_id: str) -> None:
        room = self.rooms.pop(room_id, None)
        if room is None:
            return
        for participant in list(room.legs):
            self.remove_leg(participant)
        del self._room_by_index[room.index]
        self._free_room_indexes.append(room.index)
        self._stale(room_id)

    def set_record(self, room_id: str, record: bool) -> None:
        self._room(room_id).record = record

    def audible_by_room(self, rooms: Iterable[str]) -> dict[str, list[str]]:
        """Participants of ``rooms`` whose frame was played this tick, by room."""
        wanted = {self.rooms[r].index: r for r in rooms if r in self.rooms}
        if not wanted or not len(self.audible):
            return {}
        slots = self.audible[np.isin(self.room_of[self.audible], list(wanted))]
        found: dict[str, list[str]] = {}
        for slot in slots:
            leg = self._slot_leg[int(slot)]
            if leg is not None:
                found.setdefault(leg.spec.room, []).append(leg.spec.participant)
        return found

    def set_holder(self, room_id: str, participant: str | None) -> None:
        """Give the floor of a ``ptt`` room to a participant (None: the floor is idle)."""
        room = self._room(room_id)
        room.holder = self.legs[participant].slot if participant is not None else -1
        self._stale(room_id)

    def _room(self, room_id: str) -> RoomState:
        try:
            return self.rooms[room_id]
        except KeyError:
            raise KeyError(f"unknown room: {room_id}") from None

    # ------------------------------------------------------------------- legs
    def add_leg(self, spec: LegSpec) -> Leg:
        room = self._room(spec.room)
        if spec.participant in self.legs:
            raise ValueError(f"participant already joined: {spec.participant}")
        if not self._free_slots:
            raise AdmissionError(f"worker is full: {self.capacity} legs")
        codec = codecs.get_codec(spec.codec, spec.clock_rate)
        if not codec.can_encode:
            # Every leg hears its room: a codec we cannot encode would fail every tick.
            raise ValueError(f"codec cannot encode: {codec.mime}; a leg must also receive")
        remote_ip = ip_to_int(spec.remote_ip)
        slot = self._free_slots.pop()
        leg = Leg(slot=slot, spec=spec, codec=codec, ssrc_out=self._ssrc_random.getrandbits(32))
        if codec.stateful:
            leg.decoder = codecs.get_decoder(codec)
        if spec.dtmf_payload_type is not None:
            leg.dtmf = DtmfReceiver()
        self.legs[spec.participant] = leg
        room.legs[spec.participant] = leg
        self._slot_leg[slot] = leg

        if codec not in self._codecs:
            self._codecs.append(codec)
        self.codec_id[slot] = self._codecs.index(codec)
        self.lost_run[slot] = 0
        self.active[slot] = True
        self.room_of[slot] = room.index
        self.payload_type[slot] = spec.payload_type
        self.dtmf_type[slot] = -1 if spec.dtmf_payload_type is None else spec.dtmf_payload_type
        self.remote_ip[slot] = remote_ip
        self.remote_port[slot] = spec.remote_port
        self.latched[slot] = False
        self.may_latch[slot] = spec.latch
        self.ssrc_in[slot] = spec.ssrc or 0
        self.ssrc_known[slot] = spec.ssrc is not None
        self.ssrc_out[slot] = leg.ssrc_out
        self.seq_out[slot] = self._ssrc_random.getrandbits(16)
        self.ts_out[slot] = self._ssrc_random.getrandbits(32)
        self.ts_step[slot] = codec.rtp_timestamp_step
        self.out_type[slot] = spec.payload_type
        self.sent_last_tick[slot] = False
        self.level[slot] = SILENCE_DBOV
        self.header_level[slot] = -1
        self.drops[slot] = 0
        self.received[slot] = 0
        self.sent[slot] = 0
        self.jitter.open(slot, codec.clock_rate, codec.rtp_timestamp_step)
        self.mixer.detector.reset(slot)
        self._rebuild_demux()
        self._stale(spec.room)
        return leg

    def remove_leg(self, participant: str) -> None:
        leg = self.legs.pop(participant, None)
        if leg is None:
            return
        room = self.rooms.get(leg.spec.room)
        if room is not None:
            room.legs.pop(participant, None)
            if room.holder == leg.slot:
                room.holder = -1
        if self.mixer.detector.talking[leg.slot]:
            self.events(
                {"event": "stopped_talking", "room": leg.spec.room, "participant": participant}
            )
        self.monitors.pop(participant, None)
        slot = leg.slot
        self._slot_leg[slot] = None
        self.active[slot] = False
        self.may_latch[slot] = False
        self.room_of[slot] = -1
        self.jitter.close(slot)
        self.mixer.detector.reset(slot)
        self._free_slots.append(slot)
        self._rebuild_demux()
        self._stale(leg.spec.room)

    def set_leg(
        self, participant: str, *, gain: float | None = None, muted: bool | None = None
    ) -> None:
        leg = self.legs[participant]
        if gain is not None:
            leg.spec.gain = gain
        if muted is not None:
            leg.spec.muted = muted
        self._stale(leg.spec.room)

    def leg_stats(self, participant: str) -> dict[str, Any]:
        leg = self.legs[participant]
        slot = leg.slot
        drops = {
            reason.name.lower(): int(n)
            for reason, n in zip(DropReason, self.drops[slot], strict=True)
            if n and reason != DropReason.OK
        }
        return {
            "received": int(self.received[slot]),
            "sent": int(self.sent[slot]),
            "dropped": drops,
            "latched": bool(self.latched[slot]),
            "remote": f"{int_to_ip(int(self.remote_ip[slot]))}:{int(self.remote_port[slot])}",
            "ssrc_out": leg.ssrc_out,
            "talking": bool(self.mixer.detector.talking[slot]),
            "level_dbov": float(self.level[slot]),
        }

    def _rebuild_demux(self) -> None:
        slots = np.flatnonzero(self.active)
        keys = _address_key(self.remote_ip[slots], self.remote_port[slots])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._key_slots = slots[order]

    def _stale(self, room_id: str) -> None:
        self._stale_rooms.add(room_id)
        self._topology_dirty = True
        # Indexes and slots may have moved under the routing: map it again.
        self._routing_dirty |= bool(self.patch_groups or self.monitors)

    # ---------------------------------------------------------------- routing
    def set_patches(self, groups: list[list[str]]) -> None:
        """Patch groups: the listeners of every room of a group hear the whole group."""
        self.patch_groups = [list(group) for group in groups if len(group) > 1]
        self._routing_dirty = True
        self._topology_dirty = True

    def set_monitor(self, participant: str, monitor: MonitorSpec | None) -> None:
        """What a dispatcher leg monitors (None: its own room only)."""
        if participant not in self.legs:
            raise KeyError(f"unknown participant: {participant}")
        if monitor is None:
            self.monitors.pop(participant, None)
        else:
            self.monitors[participant] = monitor
        self._routing_dirty = True
        self._topology_dirty = True

    def _routing(self) -> tuple[list[list[int]], list[Monitor]]:
        index = {room_id: room.index for room_id, room in self.rooms.items()}
        groups = [[index[r] for r in group if r in index] for group in self.patch_groups]
        monitors = []
        for participant, spec in self.monitors.items():
            leg = self.legs.get(participant)
            if leg is None:
                continue
            priority = index.get(spec.priority) if spec.priority is not None else None
            monitors.append(
                Monitor(
                    leg.slot,
                    {index[r]: gain for r, gain in spec.rooms.items() if r in index},
                    priority,
                    float(10 ** (-spec.duck_db / 20)),
                )
            )
        return groups, monitors

    def _room_topology(self, room: RoomState) -> RoomTopology:
        legs = list(room.legs.values())
        return RoomTopology(
            room=room.index,
            mode=room.mode,
            legs=np.fromiter((leg.slot for leg in legs), dtype=np.intp, count=len(legs)),
            listens=np.ones(len(legs), dtype=np.bool_),
            talks=np.fromiter((not leg.spec.muted for leg in legs), np.bool_, count=len(legs)),
            gain=np.fromiter((leg.spec.gain for leg in legs), np.float32, count=len(legs)),
            holder=room.holder,
            monitor_only=np.fromiter((leg.spec.monitor_only for leg in legs), np.bool_, len(legs)),
            dispatcher=np.fromiter((leg.spec.dispatcher for leg in legs), np.bool_, len(legs)),
            monitor_to_mix=room.monitor_to_mix,
        )

    def _topology(self) -> list[RoomTopology]:
        for room_id in self._stale_rooms:
            room = self.rooms.get(room_id)
            if room is None:
                self._topologies.pop(room_id, None)
            else:
                self._topologies[room_id] = self._room_topology(room)
        self._stale_rooms.clear()
        return list(self._topologies.values())

    # ------------------------------------------------------------------- tick
    def tick(self) -> TickTimes:
        """Run one 20 ms tick for every room of this worker."""
        times = TickTimes()
        t0 = time.perf_counter_ns()
        batch = self.rtp.recv()
        t1 = time.perf_counter_ns()
        self._received_at[:-1] = self._received_at[1:]
        self._received_at[-1] = time.time_ns()
        times.receive = t1 - t0
        if batch.count:
            self._ingest(batch, times)
        t2 = time.perf_counter_ns()

        if self._topology_dirty:
            self.mixer.set_rooms(self._topology())
            if self._routing_dirty:
                self.mixer.set_routing(*self._routing())
                self._routing_dirty = False
            self._topology_dirty = False
        slots = np.flatnonzero(self.active)
        playout = self.jitter.pop(slots)
        t3 = time.perf_counter_ns()
        times.jitter += t3 - t2

        has_audio = playout.status != PlayoutStatus.IDLE
        self.audible = slots[has_audio]
        groups = self._decode(slots, playout.payload, playout.length, playout.status)
        active = np.zeros(self.capacity, dtype=np.bool_)
        active[slots] = has_audio
        self.level[slots] = SILENCE_DBOV
        self._levels(groups)
        sources = self.mixer.select(self.level, active)
        self._talk_events(self.mixer.started, self.mixer.stopped)
        pcm = self._to_room_rate(sources, groups)
        t4 = time.perf_counter_ns()
        times.decode = t4 - t3

        result = self.mixer.mix(sources, pcm)
        t5 = time.perf_counter_ns()
        times.mix = t5 - t4

        self._record(result)
        send = self._encode(result)
        t6 = time.perf_counter_ns()
        times.encode = t6 - t5
        if send is not None:
            self._send(*send)
            if len(sources):
                self._note_transit(sources, playout.arrival_ns[np.searchsorted(slots, sources)])
        else:
            self.sent_last_tick[:] = False
        times.send = time.perf_counter_ns() - t6
        self.ts_out[slots] += self.ts_step[slots]
        self.ticks += 1
        if self.ticks % IDLE_STATE_TICKS == 0:
            self._prune_row_state()
        self.times = times
        return times

    def _ingest(self, batch: RecvBatch, times: TickTimes) -> None:
        """Parse, demultiplex and filter a receive batch, then fill the jitter array."""
        t0 = time.perf_counter_ns()
        n = batch.count
        cols = parse_rtp_columns(batch.data[:n], batch.length[:n])
        reason = cols.reason.copy()
        reason[batch.truncated[:n] & (reason == DropReason.OK)] = DropReason.TOO_LARGE

        key = _address_key(batch.src_ip[:n], batch.src_port[:n])
        pos = np.searchsorted(self._keys, key)
        pos_c = np.minimum(pos, max(len(self._keys) - 1, 0))
        matched = (
            (len(self._keys) > 0) & (self._keys[pos_c] == key)
            if len(self._keys)
            else np.zeros(n, dtype=np.bool_)
        )
        slot = np.where(matched, self._key_slots[pos_c] if len(self._keys) else 0, -1)

        unknown = ~matched & (reason == DropReason.OK)
        if unknown.any():
            slot, matched = self._latch(batch, cols.ssrc, key, unknown, slot, matched)

        # Packets from unknown sources are counted per worker; the rest per leg.
        unmatched = ~matched
        reason[unmatched & (reason == DropReason.OK)] = DropReason.UNKNOWN_SOURCE
        self.unknown_drops += np.bincount(reason[unmatched], minlength=len(DropReason))

        m_slot = slot[matched]
        m_reason = reason[matched]
        pt = cols.payload_type[matched].astype(np.int16)
        ok = m_reason == DropReason.OK
        dtmf = ok & (pt == self.dtmf_type[m_slot])
        if dtmf.any():
            self._dtmf(batch, cols, np.flatnonzero(matched)[dtmf], m_slot[dtmf])
        audio = ok & ~dtmf
        wrong_pt = audio & (pt != self.payload_type[m_slot])
        m_reason[wrong_pt] = DropReason.UNEXPECTED_PAYLOAD_TYPE
        audio &= ~wrong_pt
        self.latched[m_slot[audio]] = True

        rows = np.flatnonzero(matched)[audio]
        a_slot = m_slot[audio]
        self._check_ssrc(a_slot, cols.ssrc[rows])
        self.last_sequence[a_slot] = cols.sequence[rows]
        level = cols.audio_level[rows]
        has_level = level >= 0
        self.header_level[a_slot[has_level]] = level[has_level]
        t1 = time.perf_counter_ns()
        times.parse = t1 - t0

        if len(rows):
            result = self.jitter.insert(
                a_slot,
                cols.sequence[rows],
                cols.timestamp[rows],
                batch.data,
                rows,
                cols.payload_offset[rows],
                cols.payload_length[rows],
                batch.rx_ns[rows],
                marker=cols.marker[rows],
            )
            jb_reason = np.asarray(result.reason)
            m_reason[np.flatnonzero(audio)] = np.where(
                jb_reason == 0, m_reason[np.flatnonzero(audio)], jb_reason
            )
        self.received += np.bincount(m_slot, minlength=self.capacity)
        # Almost every packet is fine: count the others by (leg, reason) only.
        bad = m_reason != DropReason.OK
        if bad.any():
            flat = m_slot[bad] * len(DropReason) + m_reason[bad]
            self.drops += np.bincount(flat, minlength=self.drops.size).reshape(self.drops.shape)
        times.jitter = time.perf_counter_ns() - t1

    def _latch(
        self,
        batch: RecvBatch,
        ssrc: npt.NDArray[np.uint32],
        key: npt.NDArray[np.uint64],
        unknown: npt.NDArray[np.bool_],
        slot: npt.NDArray[np.intp],
        matched: npt.NDArray[np.bool_],
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Symmetric RTP: attach an unknown source to the leg it must belong to.

        Only legs that joined with ``latch`` (phones behind a NAT, whose port is not the
        one they declared) are re-pointed: to a new source address from their declared IP
        when they have not been latched yet and they are the only such leg, or when the
        source carries the leg's known SSRC. Without ``latch`` a leg takes packets from its
        declared address alone, as Janus does, so another sender on the same host cannot
        take it over. Only a bounded number of unknown sources is examined per tick.
        """
        changed = False
        rows = np.flatnonzero(unknown)
        _, first = np.unique(key[rows], return_index=True)
        for row in rows[first][:MAX_LATCH_ATTEMPTS]:
            src_ip = batch.src_ip[row]
            candidates = np.flatnonzero(self.may_latch & (self.remote_ip == src_ip))
            known = candidates[
                self.ssrc_known[candidates] & (self.ssrc_in[candidates] == ssrc[row])
            ]
            fresh = candidates[~self.latched[candidates]]
            if len(known) == 1:
                target = int(known[0])
            elif len(fresh) == 1:
                target = int(fresh[0])
            else:
                continue
            self.remote_port[target] = batch.src_port[row]
            self.latched[target] = True
            leg = self._slot_leg[target]
            changed = True
            if leg is not None:
                self.events(
                    {
                        "event": "latched",
                        "room": leg.spec.room,
                        "participant": leg.spec.participant,
                        "remote": f"{int_to_ip(int(src_ip))}:{int(batch.src_port[row])}",
                    }
                )
        if changed:
            self._rebuild_demux()
            pos = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
            matched = self._keys[pos] == key
            slot = np.where(matched, self._key_slots[pos], -1)
        return slot, matched

    def _check_ssrc(self, slots: npt.NDArray[np.intp], ssrc: npt.NDArray[np.uint32]) -> None:
        new = ~self.ssrc_known[slots]
        self.ssrc_in[slots[new]] = ssrc[new]
        self.ssrc_known[slots[new]] = True
        changed = self.ssrc_known[slots] & (self.ssrc_in[slots] != ssrc) & ~new
        if changed.any():
            for s in np.unique(slots[changed]):
                leg = self._slot_leg[int(s)]
                if leg is None:
                    continue
                # A new stream from the same source: restart its buffer on the new SSRC.
                first = int(np.flatnonzero(slots == s)[-1])
                self.ssrc_in[s] = ssrc[first]
                self.jitter.open(int(s), leg.codec.clock_rate, leg.codec.rtp_timestamp_step)

    def _dtmf(
        self, batch: RecvBatch, cols: Any, rows: npt.NDArray[np.intp], slots: npt.NDArray[np.intp]
    ) -> None:
        for row, s in zip(rows, slots, strict=True):
            leg = self._slot_leg[int(s)]
            if leg is None or leg.dtmf is None:
                continue
            offset = int(cols.payload_offset[row])
            payload = bytes(batch.data[row, offset : offset + int(cols.payload_length[row])])
            try:
                digit = leg.dtmf.feed(int(cols.timestamp[row]), payload)
            except ValueError:
                self.drops[s, DropReason.BAD_PADDING] += 0  # counted below as malformed
                continue
            if digit is not None:
                self.events(
                    {
                        "event": "dtmf",
                        "room": leg.spec.room,
                        "participant": leg.spec.participant,
                        "digit": digit,
                    }
                )

    # ----------------------------------------------------------------- decode
    def _note_transit(self, sources: npt.NDArray[np.intp], arrival: npt.NDArray[np.int64]) -> None:
        """Note the transit of this tick's mixed frames, and their time in the jitter buffer.

        A frame was taken in by the first tick whose receive returned after the kernel's
        timestamp of it; it sat in the jitter buffer from that receive to this tick's. The
        wait in the socket for the next tick and this tick's work are not jitter buffer.
        """
        arrival = arrival[arrival > 0]
        transit = time.time_ns() - arrival
        received = self._received_at
        taken_in = np.minimum(np.searchsorted(received, arrival), len(received) - 1)
        held = received[-1] - received[taken_in]
        at = (self.transit_count + np.arange(len(transit))) % TRANSIT_WINDOW
        self.transit_ns[at] = transit
        self.transit_held_ns[at] = held
        self.transit_count += len(transit)

    def transit_summary(self) -> dict[str, float | None]:
        """p50/p99 transit in ms, with and without the frames' time in the jitter buffer."""
        n = min(self.transit_count, TRANSIT_WINDOW)
        if not n:
            return {
                "transit_p50_ms": None,
                "transit_p99_ms": None,
                "transit_excl_jb_p50_ms": None,
                "transit_excl_jb_p99_ms": None,
            }
        total = self.transit_ns[:n] / 1e6
        excl = (self.transit_ns[:n] - self.transit_held_ns[:n]) / 1e6
        return {
            "transit_p50_ms": float(np.percentile(total, 50)),
            "transit_p99_ms": float(np.percentile(total, 99)),
            "transit_excl_jb_p50_ms": float(np.percentile(excl, 50)),
            "transit_excl_jb_p99_ms": float(np.percentile(excl, 99)),
        }

    def _decode(
        self,
        slots: npt.NDArray[np.intp],
        payload: npt.NDArray[np.uint8],
        length: npt.NDArray[np.int32],
        status: npt.NDArray[np.uint8],
    ) -> list[Decoded]:
        """Decode the played-out frames of every leg with audio, one group per codec.

        Stateless codecs decode as one batch per codec, their lost frames concealed by one
        batched fade-out; stateful codecs decode every frame or run their own PLC.
        """
        groups: list[Decoded] = []
        audible = np.flatnonzero(status != PlayoutStatus.IDLE)
        if not len(audible):
            return groups
        ids = self.codec_id[slots[audible]]
        for cid in np.unique(ids):
            members = audible[ids == cid]
            codec = self._codecs[int(cid)]
            g_slots = slots[members]
            lost = status[members] == PlayoutStatus.LOST
            n = codec.frame_samples
            if codec.batch_decode is not None:
                pcm = codec.batch_decode(payload[members, : codec.frame_bytes])
                if lost.any():
                    run = self.lost_run[g_slots[lost]] + 1
                    self.lost_run[g_slots[lost]] = run
                    pcm[lost] = fade_out(self.last_pcm[g_slots[lost], :n], run)
                good = g_slots[~lost]
                self.last_pcm[good, :n] = pcm[~lost]
                self.lost_run[good] = 0
            else:
                pcm = np.zeros((len(members), n), dtype=np.int16)
                for j, i in enumerate(members):
                    leg = self._slot_leg[int(slots[i])]
                    assert leg is not None and leg.decoder is not None
                    data = None if lost[j] else bytes(payload[i, : length[i]])
                    try:
                        pcm[j] = leg.decoder.decode(data)[:n]
                    except ValueError:
                        self.drops[slots[i], DropReason.BAD_PAYLOAD] += 1
            groups.append(Decoded(codec=codec, slots=g_slots, pcm=pcm))
        return groups

    def _levels(self, groups: list[Decoded]) -> None:
        for group in groups:
            level = frame_level_dbov(group.pcm)
            # RFC 6464: the sender's own level wins where it provides one.
            header = self.header_level[group.slots]
            from_header = header >= 0
            level[from_header] = -header[from_header].astype(np.float32)
            self.level[group.slots] = level

    def _talk_events(self, started: npt.NDArray[np.intp], stopped: npt.NDArray[np.intp]) -> None:
        for name, legs in (("talking", started), ("stopped_talking", stopped)):
            for s in legs:
                leg = self._slot_leg[int(s)]
                if leg is not None:
                    self.events(
                        {
                            "event": name,
                            "room": leg.spec.room,
                            "participant": leg.spec.participant,
                            "alias": leg.spec.alias,
                            "level_dbov": round(float(self.level[int(s)]), 1),
                        }
                    )

    def _bank(self, in_rate: int, out_rate: int) -> ResamplerBank:
        bank = self._banks.get((in_rate, out_rate))
        if bank is None:
            bank = ResamplerBank(in_rate, out_rate, 3 * self.capacity)
            self._banks[(in_rate, out_rate)] = bank
        return bank

    def _resample(
        self,
        rows: npt.NDArray[np.intp],
        frames: npt.NDArray[np.int16],
        in_rate: int,
        out_rate: int,
    ) -> npt.NDArray[np.int16]:
        """Resample streams whose state lives in ``rows`` of the bank for this rate pair.

        A stream that was not resampled on the previous tick starts from a clean history,
        so a new burst never carries the tail of an old one.
        """
        if in_rate == out_rate:
            return frames
        bank = self._bank(in_rate, out_rate)
        stale = self._row_tick[rows] != self.ticks - 1
        if stale.any():
            bank.reset(rows[stale])
        self._row_tick[rows] = self.ticks
        return bank.process(rows, frames)

    def _to_room_rate(
        self, sources: npt.NDArray[np.intp], groups: list[Decoded]
    ) -> npt.NDArray[np.int16]:
        """The live sources' frames at the room rate, in the order of ``sources``."""
        pcm = np.zeros((len(sources), self.room_frame), dtype=np.int16)
        if not len(sources):
            return pcm
        for group in groups:
            live = np.isin(group.slots, sources)
            if live.any():
                g_slots = group.slots[live]
                pcm[np.searchsorted(sources, g_slots)] = self._resample(
                    g_slots + 2 * self.capacity,
                    group.pcm[live],
                    group.codec.sample_rate,
                    self.room_rate,
                )
        return pcm

    # ------------------------------------------------------------ record/send
    def _record(self, result: MixResult) -> None:
        if self.frames is None:
            return
        now = time.time_ns()
        for i, (kind, index) in enumerate(result.keys):
            if kind != MixKind.ROOM or result.silent[i]:
                continue
            room = self._room_by_index.get(index)
            if room is not None and room.record:
                self.frames(index, now, result.frames[i])

    def room_index(self, room_id: str) -> int:
        return self._room(room_id).index

    def _row_ids(self, result: MixResult) -> npt.NDArray[np.intp]:
        """A stable resampler row per mix: rooms, then each leg's own N-1 mix (see ``_banks``).

        The mixer hands out the same ``keys`` list while W is unchanged, so the rows are
        computed once per W, not once per tick.
        """
        if self._row_ids_for is not result.keys:
            own = np.fromiter((kind != MixKind.ROOM for kind, _ in result.keys), np.bool_)
            index = np.fromiter((index for _, index in result.keys), np.intp)
            self._row_ids_cache = index + own * self.capacity
            self._row_ids_for = result.keys
        return self._row_ids_cache

    def _encode(self, result: MixResult) -> tuple[npt.NDArray[Any], ...] | None:
        """Encode once per distinct (codec, mix); returns what :meth:`_send` needs."""
        listeners = np.flatnonzero(result.listener_mix >= 0)
        if not len(listeners):
            return None
        rows = result.listener_mix[listeners].astype(np.intp)
        payload_row = np.empty(len(listeners), dtype=np.intp)
        payload_len = np.empty(len(listeners), dtype=np.int32)
        row_ids = self._row_ids(result)
        next_row = 0
        ids = self.codec_id[listeners]
        for cid in np.unique(ids):
            idx = np.flatnonzero(ids == cid)
            codec = self._codecs[int(cid)]
            needed = np.unique(rows[idx])
            row_map = np.zeros(len(result.keys), dtype=np.intp)
            row_len = np.zeros(len(result.keys), dtype=np.int32)
            loud = needed[~result.silent[needed]]
            quiet = needed[result.silent[needed]]
            if len(quiet):
                silence = self._silence_payload(codec)
                self._send_payload[next_row, : len(silence)] = np.frombuffer(silence, np.uint8)
                row_map[quiet] = next_row
                row_len[quiet] = len(silence)
                next_row += 1
            if len(loud):
                frames = self._resample(
                    row_ids[loud], result.frames[loud], self.room_rate, codec.sample_rate
                )
                if codec.batch_encode is not None:
                    encoded = codec.batch_encode(frames)
                    nbytes = encoded.shape[1]
                    self._send_payload[next_row : next_row + len(loud), :nbytes] = encoded
                    row_map[loud] = np.arange(next_row, next_row + len(loud))
                    row_len[loud] = nbytes
                    next_row += len(loud)
                else:
                    for r, frame in zip(loud, frames, strict=True):
                        data = self._row_encoder(codec, result.keys[r]).encode(frame)
                        self._send_payload[next_row, : len(data)] = np.frombuffer(data, np.uint8)
                        row_map[r] = next_row
                        row_len[r] = len(data)
                        next_row += 1
            payload_row[idx] = row_map[rows[idx]]
            payload_len[idx] = row_len[rows[idx]]
        return listeners, payload_row, payload_len

    def _row_encoder(self, codec: codecs.CodecSpec, key: tuple[str, int]) -> Encoder:
        state_key = (codec.mime, codec.clock_rate, key)
        encoder = self._row_encoders.get(state_key)
        if encoder is None:
            encoder = codecs.get_encoder(codec)
            self._row_encoders[state_key] = encoder
        self._row_state_used[state_key] = self.ticks
        return encoder

    def _silence_payload(self, codec: codecs.CodecSpec) -> bytes:
        key = (codec.mime, codec.clock_rate)
        data = self._silence.get(key)
        if data is None:
            zeros = np.zeros(codec.frame_samples, dtype=np.int16)
            if codec.batch_encode is not None:
                data = bytes(codec.batch_encode(zeros[None, :])[0])
            else:
                data = codecs.get_encoder(codec).encode(zeros)
            self._silence[key] = data
        return data

    def _prune_row_state(self) -> None:
        stale = [k for k, t in self._row_state_used.items() if self.ticks - t > IDLE_STATE_TICKS]
        for k in stale:
            self._row_state_used.pop(k, None)
            self._row_encoders.pop(k, None)

    def _send(
        self,
        listeners: npt.NDArray[np.intp],
        payload_row: npt.NDArray[np.intp],
        payload_len: npt.NDArray[np.int32],
    ) -> None:
        n = len(listeners)
        header = np.empty((n, RTP_HEADER_SIZE), dtype=np.uint8)
        marker = ~self.sent_last_tick[listeners]
        header[:, 0] = RTP_VERSION_BYTE
        header[:, 1] = self.out_type[listeners] | np.where(marker, MARKER_BIT, 0).astype(np.uint8)
        header[:, 2:4] = self.seq_out[listeners].astype(">u2").view(np.uint8).reshape(n, 2)
        header[:, 4:8] = self.ts_out[listeners].astype(">u4").view(np.uint8).reshape(n, 4)
        header[:, 8:12] = self.ssrc_out[listeners].astype(">u4").view(np.uint8).reshape(n, 4)
        self.rtp.send(
            header,
            self._send_payload,
            payload_row,
            payload_len,
            self.remote_ip[listeners],
            self.remote_port[listeners],
        )
        self.seq_out[listeners] += np.uint16(1)
        self.sent[listeners] += 1
        self.sent_last_tick[:] = False
        self.sent_last_tick[listeners] = True

    # ------------------------------------------------------------------ stats
    def counters(self) -> dict[str, Any]:
        per_reason = self.drops.sum(axis=0) + self.unknown_drops
        return {
            "rooms": len(self.rooms),
            "legs": len(self.legs),
            "dropped": {
                r.name.lower(): int(per_reason[r])
                for r in DropReason
                if r != DropReason.OK and per_reason[r]
            },
            "received": int(self.received.sum()),
            "sent": int(self.sent.sum()),
        }
