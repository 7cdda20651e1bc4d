"""The benchmark's load generator: many plain-RTP legs at real-time pace, in its own process.

It knows nothing of the mixer under test (ucbridge or the Janus AudioBridge): only
:class:`Leg`s, each one UDP socket on 127.0.0.1 (a mixer demultiplexes by source address)
sending G.711 µ-law (RFC 3551 PCMU) every 20 ms to its ``remote``.

- **Talkers** (one per room) send bursts: 1 s of a tone at the room's frequency
  (:func:`room_frequency`), then 1 s of low noise, repeating; rooms are staggered.
- **Listeners** send low noise at about -50 dBov, never digital silence, so that no figure
  rests on a mixer skipping silent frames (DESIGN.md, "Performance targets").

The generator is batched as far as one socket per leg allows: the packets of a tick are built
as one array (headers as columns, payloads picked from a precomputed bank), then sent by a
tight loop of ``send`` over per-row memoryviews; it wakes once per tick. Receiving is lazy:
every :data:`DRAIN_TICKS` ticks one ``recvmmsg(2)`` per socket takes everything it queued
and only counts it (measured: 1.9 µs per packet, against 3.0 µs for a ``recv_into`` per
packet; both are mostly the kernel's own cost). A sample of
listeners (``sample_per_room``) keeps what it heard, with kernel receive timestamps
(``SO_TIMESTAMPNS``) so that reading late does not blur the latency analysis after the run.

What it measures, in :class:`LoadReport`:

- its own CPU (process time) over the run and whether it fell behind (ticks started late),
  so that a generator limit is never read as a mixer limit;
- packets sent and received, per leg and per room;
- end-to-end latency: from sending the first packet of a talker's tone burst to the arrival
  of the first packet in which a sampled listener of that room hears the tone (µ-law decoded,
  one DFT bin at the room's frequency). The arrival packet's granularity is one frame, and a
  mixer that fades the tone in may add a frame; both are small against the targets.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from rtpload import (
    FRAME_NS,
    FRAME_S,
    PACKET_SIZE,
    PAYLOAD_TYPE_PCMU,
    RTP_HEADER_SIZE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    noise,
    rtp_headers,
    rtp_payload_offset,
    set_marker,
    stamp,
    tone,
    tone_fraction,
    ulaw_decode,
    ulaw_encode,
)

from bridge.mmsg import (
    IOVEC_DTYPE,
    MMSGHDR_DTYPE,
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    TIMESTAMP_CMSG_SPACE,
    mmsg_available,
)

LOOPBACK: Final = "127.0.0.1"
#: Level of a talker's tone and of the noise everyone sends between bursts.
TONE_DBOV: Final = -16.0
NOISE_DBOV: Final = -50.0
#: A talker's cycle: this many frames of tone, then as many of noise.
BURST_FRAMES: Final = 50
CYCLE_FRAMES: Final = 2 * BURST_FRAMES
#: Distinct noise frames each leg cycles through.
NOISE_BANK_FRAMES: Final = 50
#: Room tones lie on 50 Hz DFT bins of a 160-sample frame, from 500 Hz up.
TONE_BASE_HZ: Final = 500.0
TONE_STEP_HZ: Final = SAMPLE_RATE / SAMPLES_PER_FRAME
TONE_BINS: Final = 50
#: A frame hears its room's tone when that bin holds this share of its power, at this level.
TONE_SHARE: Final = 0.5
TONE_MIN_DBOV: Final = -40.0
#: Receive slot of a sampled listener; longer packets are cut (only one frame is analysed).
SAMPLE_SLOT: Final = 256
#: A tick that starts this late counts as late; one a whole frame late means falling behind.
LATE_TICK_NS: Final = FRAME_NS // 2
FELL_BEHIND_NS: Final = FRAME_NS
#: Share of late ticks above which the generator fell behind.
LATE_TICK_SHARE: Final = 0.001
#: A heard onset belongs to the latest burst onset sent at most this long before it; bursts
#: sent later than this before the end of the run are not expected to be heard.
MATCH_WINDOW_NS: Final = BURST_FRAMES * FRAME_NS
#: The run is abandoned this long after its planned end if the generator cannot keep up.
OVERRUN_S: Final = 5.0
#: Receive buffer of each leg's socket.
LEG_RCVBUF: Final = 256 * 1024
#: Sockets are read every this many ticks; kernel timestamps keep arrival times exact.
DRAIN_TICKS: Final = 5
#: Messages one recvmmsg call may take from one socket.
DRAIN_VLEN: Final = 64
_MS_PER_NS: Final = 1e-6
_TIMESPEC: Final = struct.Struct("@qq")
#: Errors a connected UDP socket reports once for an earlier ICMP message; reading goes on.
_TRANSIENT_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.EINTR})


@dataclass(frozen=True)
class Leg:
    """One participant: a UDP socket on ``127.0.0.1:local_port`` sending to ``remote``.

    ``payload_type`` goes into the RTP header as is; the payload is always µ-law.
    ``local_port`` 0 lets the kernel choose.
    """

    local_port: int
    remote: tuple[str, int]
    talker: bool
    room: int
    payload_type: int = PAYLOAD_TYPE_PCMU


@dataclass
class LoadReport:
    """What one run of the generator saw; latencies are None when nothing was measured."""

    legs: int
    rooms: int
    duration_s: float
    wall_s: float
    #: The generator's own process time over the run (sending, receiving, bookkeeping).
    cpu_s: float
    ticks: int
    late_ticks: int
    max_lag_ms: float
    lag_p99_ms: float
    #: True when the generator itself could not keep real time: then the mixer's figures of
    #: this run are not trustworthy.
    fell_behind: bool
    sent: int
    received: int
    send_errors: int
    sent_per_leg: list[int]
    received_per_leg: list[int]
    received_per_room: dict[int, int]
    e2e_latency_ms_p50: float | None
    e2e_latency_ms_p99: float | None
    e2e_latency_ms_max: float | None
    latency_samples: int
    sampled_listeners: int
    #: Tone bursts sent in the rooms of the sampled listeners (one per listener per burst),
    #: and how many of them those listeners heard.
    bursts_expected: int
    bursts_detected: int
    #: Sampled packets cut short because they exceeded the sample slot.
    truncated_samples: int = 0
    local_ports: list[int] = field(default_factory=list)
    #: The CPUs the generator was allowed to run on.
    affinity: list[int] = field(default_factory=list)

    @property
    def cpu_fraction(self) -> float:
        """Share of one core the generator used."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def received_share(self) -> float:
        """Packets received over one per leg per tick (a mixer's start-up delay lowers it)."""
        expected = self.legs * self.ticks
        return self.received / expected if expected else 0.0


def room_frequency(room: int) -> float:
    """The tone of ``room``'s talker: a 50 Hz DFT bin between 500 and 2950 Hz."""
    return TONE_BASE_HZ + TONE_STEP_HZ * (room % TONE_BINS)


class LoadProcess:
    """A running generator; :meth:`wait` returns its report."""

    def __init__(
        self,
        process: multiprocessing.process.BaseProcess,
        connection: multiprocessing.connection.Connection,
        duration_s: float,
    ) -> None:
        self.process = process
        self._connection = connection
        self._duration_s = duration_s
        self._ports: list[int] | None = None

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def ready(self, timeout: float = 30.0) -> list[int]:
        """Wait until every leg's socket is bound; returns the local ports, in leg order."""
        if self._ports is None:
            message = self._receive(timeout)
            if not isinstance(message, list):
                raise RuntimeError(f"load generator did not start: {message}")
            self._ports = message
        return self._ports

    def wait(self, timeout: float | None = None) -> LoadReport:
        """Wait for the run to end and return its report."""
        self.ready()
        limit = self._duration_s + OVERRUN_S + 60.0 if timeout is None else timeout
        message = self._receive(limit)
        self.process.join(timeout=10.0)
        if not isinstance(message, LoadReport):
            raise RuntimeError(f"load generator failed: {message}")
        return message

    def stop(self) -> None:
        """End the generator by its PID, if it still runs."""
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.process.join(timeout=10.0)

    def _receive(self, timeout: float) -> object:
        if not self._connection.poll(timeout):
            self.stop()
            raise RuntimeError("load generator did not answer in time")
        try:
            return self._connection.recv()
        except EOFError:
            self.process.join(timeout=10.0)
            raise RuntimeError(f"load generator exited with code {self.process.exitcode}") from None


def start_load(
    legs: Sequence[Leg],
    duration_s: float,
    cpu: int | None = None,
    *,
    sample_per_room: int = 1,
    max_sampled: int = 64,
    connected: bool = True,
    seed: int = 0,
) -> LoadProcess:
    """Start the generator in a child process (spawned), pinned to ``cpu`` when given.

    Ticks start as soon as the sockets are bound; :meth:`LoadProcess.ready` returns then.
    ``sample_per_room`` listeners of each room with a talker (at most ``max_sampled``) keep
    what they hear for the latency analysis. ``connected`` sockets send a little cheaper
    but hear only their ``remote``: a mixer must answer from the address it is sent to
    (symmetric RTP, as Janus and ucbridge do).
    """
    if not legs:
        raise ValueError("no legs")
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    options = _Options(
        duration_s=duration_s,
        cpu=cpu,
        sample_per_room=sample_per_room,
        max_sampled=max_sampled,
        connected=connected,
        seed=seed,
    )
    process = context.Process(
        target=_child_main, args=(list(legs), options, sender), name="loadgen", daemon=True
    )
    process.start()
    sender.close()
    return LoadProcess(process, receiver, duration_s)


def run_load(legs: Sequence[Leg], duration_s: float, cpu: int | None = None) -> LoadReport:
    """Run the generator for ``duration_s`` in its own process and return its report."""
    load = start_load(legs, duration_s, cpu)
    try:
        return load.wait()
    finally:
        load.stop()


# --- the child process -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    duration_s: float
    cpu: int | None
    sample_per_room: int
    max_sampled: int
    connected: bool
    seed: int


def _child_main(
    legs: list[Leg], options: _Options, connection: multiprocessing.connection.Connection
) -> None:
    try:
        if options.cpu is not None:
            os.sched_setaffinity(0, {options.cpu})
        _raise_file_limit(len(legs) + 64)
        generator = _Generator(legs, options)
    except Exception:
        connection.send(traceback.format_exc())
        return
    try:
        connection.send(generator.local_ports())
        generator.run()
        connection.send(generator.report())
    except Exception:
        connection.send(traceback.format_exc())
    finally:
        generator.close()


class _DiscardingReader:
    """Empties a socket with ``recvmmsg(2)`` into one scratch slot, only counting datagrams.

    Every message of the vector shares one ``iovec`` and has no name or control buffer, so
    nothing needs resetting between calls. Without recvmmsg it reads one datagram per call.
    """

    def __init__(self) -> None:
        self.scratch = np.zeros(SAMPLE_SLOT, dtype=np.uint8)
        self.iov = np.zeros(1, dtype=IOVEC_DTYPE)
        self.iov["iov_base"] = self.scratch.ctypes.data
        self.iov["iov_len"] = SAMPLE_SLOT
        self.hdrs = np.zeros(DRAIN_VLEN, dtype=MMSGHDR_DTYPE)
        self.hdrs["msg_iov"] = self.iov.ctypes.data
        self.hdrs["msg_iovlen"] = 1
        self.hdrs_at = int(self.hdrs.ctypes.data)
        self.recvmmsg: Callable[..., int] | None = None
        if mmsg_available():
            libc = ctypes.CDLL(None, use_errno=True)
            recvmmsg = libc.recvmmsg
            recvmmsg.argtypes = (
                ctypes.c_int,
                ctypes.c_void_p,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_void_p,
            )
            recvmmsg.restype = ctypes.c_int
            self.recvmmsg = recvmmsg
        self.buffer = bytearray(SAMPLE_SLOT)

    def __call__(self, fd: int) -> int:
        recvmmsg = self.recvmmsg
        if recvmmsg is None:
            return self._one_by_one(fd)
        total = 0
        while True:
            count = recvmmsg(fd, self.hdrs_at, DRAIN_VLEN, socket.MSG_DONTWAIT, None)
            if count < 0:
                if ctypes.get_errno() in _TRANSIENT_ERRNOS:
                    continue  # an ICMP error was reported and cleared; read on
                return total
            total += count
            if count < DRAIN_VLEN:
                return total

    def _one_by_one(self, fd: int) -> int:
        total = 0
        while True:
            try:
                os.readv(fd, [self.buffer])
            except (BlockingIOError, InterruptedError):
                return total
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                raise
            total += 1


def _send_to(sock: socket.socket, address: tuple[str, int], data: memoryview) -> int:
    return sock.sendto(data, address)


def _raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


class _Generator:
    def __init__(self, legs: list[Leg], options: _Options) -> None:
        self.options = options
        rng = np.random.default_rng(options.seed)
        # Talkers first: their onset packets leave at the start of each tick.
        self.order = sorted(range(len(legs)), key=lambda index: not legs[index].talker)
        self.legs = [legs[index] for index in self.order]
        count = len(self.legs)
        self.talkers = sum(leg.talker for leg in self.legs)
        self.room_of = np.array([leg.room for leg in self.legs], dtype=np.int64)
        self.rooms = sorted(set(self.room_of.tolist()))

        self.sockets: list[socket.socket] = []
        for leg in self.legs:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LEG_RCVBUF)
            sock.bind((LOOPBACK, leg.local_port))
            if options.connected:
                sock.connect(leg.remote)
            sock.setblocking(False)

        self._build_payloads(rng)
        ssrc = rng.integers(1, 1 << 32, count, dtype=np.uint64).astype(np.uint32)
        self.seq0 = rng.integers(0, 1 << 16, count, dtype=np.uint64).astype(np.uint16)
        self.ts0 = rng.integers(0, 1 << 32, count, dtype=np.uint64).astype(np.uint32)
        payload_types = np.array([leg.payload_type for leg in self.legs], dtype=np.uint8)
        self.headers = rtp_headers(count, payload_types, ssrc)
        self.packets = np.zeros((count, PACKET_SIZE), dtype=np.uint8)
        self.packet_views = [row.data for row in self.packets]
        self.senders: list[Callable[[memoryview], int]] = [
            sock.send if options.connected else functools.partial(_send_to, sock, leg.remote)
            for sock, leg in zip(self.sockets, self.legs, strict=True)
        ]
        self.discard = _DiscardingReader()

        self.ticks = round(options.duration_s / FRAME_S)
        self.sent = np.zeros(count, dtype=np.int64)
        self.received = [0] * count
        self.send_errors = 0
        self.lag_ns = np.zeros(self.ticks, dtype=np.int64)
        self.ticks_done = 0
        # Burst onsets as sent: room -> send times (ns, CLOCK_REALTIME).
        self.onsets: dict[int, list[int]] = {room: [] for room in self.rooms}
        self._sample(options)
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.end_ns = 0

    def local_ports(self) -> list[int]:
        ports = [0] * len(self.legs)
        for position, index in enumerate(self.order):
            ports[index] = self.sockets[position].getsockname()[1]
        return ports

    def _build_payloads(self, rng: np.random.Generator) -> None:
        """A bank of µ-law frames: noise rows first, then one second of tone per room."""
        noise_pcm = noise(NOISE_BANK_FRAMES * SAMPLES_PER_FRAME, NOISE_DBOV, rng)
        banks = [ulaw_encode(noise_pcm).reshape(NOISE_BANK_FRAMES, SAMPLES_PER_FRAME)]
        self.tone_row = {}
        talker_rooms = sorted({leg.room for leg in self.legs if leg.talker})
        for position, room in enumerate(talker_rooms):
            pcm = tone(room_frequency(room), BURST_FRAMES * SAMPLES_PER_FRAME, TONE_DBOV)
            banks.append(ulaw_encode(pcm).reshape(BURST_FRAMES, SAMPLES_PER_FRAME))
            self.tone_row[room] = NOISE_BANK_FRAMES + position * BURST_FRAMES
        self.bank = np.concatenate(banks)
        count = len(self.legs)
        self.is_talker = np.array([leg.talker for leg in self.legs], dtype=np.bool_)
        self.tone_base = np.array(
            [self.tone_row.get(leg.room, 0) for leg in self.legs], dtype=np.int64
        )
        # Rooms start their bursts at staggered frames so that onsets spread over the cycle.
        self.phase0 = (self.room_of * 7) % CYCLE_FRAMES
        self.noise_phase = np.arange(count, dtype=np.int64) % NOISE_BANK_FRAMES

    def _sample(self, options: _Options) -> None:
        """Pick the listeners whose received audio is kept for the latency analysis."""
        per_room: dict[int, int] = {}
        chosen: list[int] = []
        for index, leg in enumerate(self.legs):
            if leg.talker or leg.room not in self.tone_row:
                continue
            if len(chosen) >= options.max_sampled:
                break
            if per_room.get(leg.room, 0) < options.sample_per_room:
                per_room[leg.room] = per_room.get(leg.room, 0) + 1
                chosen.append(index)
        self.sampled = {index: slot for slot, index in enumerate(chosen)}
        self.plain = [
            (index, sock.fileno())
            for index, sock in enumerate(self.sockets)
            if index not in self.sampled
        ]
        capacity = 2 * self.ticks + 64
        self.sample_data = np.zeros((len(chosen), capacity, SAMPLE_SLOT), dtype=np.uint8)
        self.sample_length = np.zeros((len(chosen), capacity), dtype=np.int64)
        self.sample_rx_ns = np.zeros((len(chosen), capacity), dtype=np.int64)
        self.sample_count = np.zeros(len(chosen), dtype=np.int64)
        self.truncated_samples = 0
        for index in chosen:
            with contextlib.suppress(OSError):
                self.sockets[index].setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    # --- the run -------------------------------------------------------------------------

    def run(self) -> None:
        cpu_start = time.process_time()
        start = time.monotonic_ns()
        give_up = start + int((self.options.duration_s + OVERRUN_S) * 1e9)
        tick = 0
        while tick < self.ticks:
            due = start + tick * FRAME_NS
            now = time.monotonic_ns()
            if now < due:
                time.sleep((due - now) / 1e9)
                continue
            self.lag_ns[tick] = now - due
            self._send_tick(tick)
            tick += 1
            self.ticks_done = tick
            if tick % DRAIN_TICKS == 0:
                self._drain()
            if now > give_up:
                break
        # Count what arrived up to the end of the last tick, not what is still in flight.
        end = start + self.ticks_done * FRAME_NS
        if (now := time.monotonic_ns()) < end:
            time.sleep((end - now) / 1e9)
        self._drain()
        self.cpu_s = time.process_time() - cpu_start
        self.end_ns = time.time_ns()
        self.wall_s = (time.monotonic_ns() - start) / 1e9

    def _send_tick(self, tick: int) -> None:
        frame = tick + self.phase0
        phase = frame % CYCLE_FRAMES
        in_tone = self.is_talker & (phase < BURST_FRAMES)
        rows = np.where(
            in_tone, self.tone_base + phase, (self.noise_phase + tick) % NOISE_BANK_FRAMES
        )
        stamp(self.headers, self.seq0, self.ts0, tick)
        set_marker(self.headers, tick == 0)
        self.packets[:, :RTP_HEADER_SIZE] = self.headers.view(np.uint8).reshape(-1, RTP_HEADER_SIZE)
        self.packets[:, RTP_HEADER_SIZE:] = self.bank[rows]

        senders = self.senders
        views = self.packet_views
        failed: list[int] = []
        talkers = self.talkers
        for index in range(talkers):
            try:
                senders[index](views[index])
            except OSError:
                failed.append(index)
        if talkers:
            sent_at = time.time_ns()
            onset = np.flatnonzero(in_tone[:talkers] & (phase[:talkers] == 0))
            for index in onset.tolist():
                self.onsets[self.legs[index].room].append(sent_at)
        for index in range(talkers, len(views)):
            try:
                senders[index](views[index])
            except OSError:
                failed.append(index)
        self.sent += 1
        if failed:  # rare: a full socket buffer or an unreachable mixer
            self.send_errors += len(failed)
            self.sent[failed] -= 1

    def _drain(self) -> None:
        """Read every socket empty: count the plain ones, keep what sampled listeners heard."""
        received = self.received
        discard = self.discard
        for index, fd in self.plain:
            count = discard(fd)
            if count:
                received[index] += count
        for index, slot in self.sampled.items():
            received[index] += self._receive_samples(self.sockets[index], slot)

    def _receive_samples(self, sock: socket.socket, slot: int) -> int:
        """Keep a sampled listener's packets with their kernel receive times."""
        received = 0
        capacity = self.sample_data.shape[1]
        while True:
            count = int(self.sample_count[slot])
            view = self.sample_data[slot, min(count, capacity - 1)].data
            try:
                nbytes, ancdata, flags, _ = sock.recvmsg_into([view], TIMESTAMP_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return received
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                raise
            received += 1
            if count >= capacity:  # full: counted, not kept
                continue
            rx_ns = 0
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                    rx_ns = seconds * 1_000_000_000 + nanoseconds
            if flags & socket.MSG_TRUNC:
                self.truncated_samples += 1
            self.sample_length[slot, count] = nbytes
            self.sample_rx_ns[slot, count] = rx_ns or time.time_ns()
            self.sample_count[slot] = count + 1

    # --- after the run -------------------------------------------------------------------

    def report(self) -> LoadReport:
        ticks = self.ticks_done
        lag = self.lag_ns[:ticks]
        late = int(np.count_nonzero(lag > LATE_TICK_NS))
        max_lag = int(lag.max()) if ticks else 0
        by_leg = self.received
        sent = np.zeros(len(self.legs), dtype=np.int64)
        received = np.zeros(len(self.legs), dtype=np.int64)
        sent[self.order] = self.sent
        received[self.order] = by_leg
        per_room: dict[int, int] = {}
        for room, count in zip(self.room_of.tolist(), by_leg, strict=True):
            per_room[room] = per_room.get(room, 0) + count
        latencies, expected, detected = self._latencies()
        percentiles = (
            np.percentile(latencies, [50, 99]).tolist() if len(latencies) else [None, None]
        )
        return LoadReport(
            legs=len(self.legs),
            rooms=len(self.rooms),
            duration_s=self.options.duration_s,
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
            ticks=ticks,
            late_ticks=late,
            max_lag_ms=max_lag * _MS_PER_NS,
            lag_p99_ms=float(np.percentile(lag, 99)) * _MS_PER_NS if ticks else 0.0,
            fell_behind=max_lag >= FELL_BEHIND_NS
            or late > LATE_TICK_SHARE * max(ticks, 1)
            or ticks < self.ticks,
            sent=int(sent.sum()),
            received=int(received.sum()),
            send_errors=self.send_errors,
            sent_per_leg=sent.tolist(),
            received_per_leg=received.tolist(),
            received_per_room=per_room,
            e2e_latency_ms_p50=percentiles[0],
            e2e_latency_ms_p99=percentiles[1],
            e2e_latency_ms_max=float(max(latencies)) if len(latencies) else None,
            latency_samples=len(latencies),
            sampled_listeners=len(self.sampled),
            bursts_expected=expected,
            bursts_detected=detected,
            truncated_samples=self.truncated_samples,
            local_ports=self.local_ports(),
            affinity=sorted(os.sched_getaffinity(0)),
        )

    def _latencies(self) -> tuple[list[float], int, int]:
        """Match each sampled listener's tone onsets with its room's burst onsets."""
        latencies: list[float] = []
        expected = 0
        detected = 0
        end_ns = self.end_ns
        window_ns = MATCH_WINDOW_NS
        for index, slot in self.sampled.items():
            room = self.legs[index].room
            sends = np.array(self.onsets[room], dtype=np.int64)
            # Only bursts whose onset a working mixer had time to deliver.
            sends = sends[sends < end_ns - window_ns]
            expected += len(sends)
            onsets = self._heard_onsets(slot, room_frequency(room))
            matched: set[int] = set()
            for heard in onsets[onsets < end_ns].tolist():
                position = int(np.searchsorted(sends, heard, side="right")) - 1
                if position < 0 or position in matched:
                    continue
                if heard - sends[position] < window_ns:
                    matched.add(position)
                    latencies.append((heard - int(sends[position])) * _MS_PER_NS)
            detected += len(matched)
        return latencies, expected, detected

    def _heard_onsets(self, slot: int, freq: float) -> npt.NDArray[np.int64]:
        """Arrival times of the packets where the tone starts in this listener's stream."""
        count = int(self.sample_count[slot])
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        packets = self.sample_data[slot, :count]
        length = np.minimum(self.sample_length[slot, :count], SAMPLE_SLOT)
        offset = rtp_payload_offset(packets, length)
        usable = (offset >= 0) & (length - offset >= SAMPLES_PER_FRAME)
        columns = offset[:, None] + np.arange(SAMPLES_PER_FRAME)[None, :]
        columns = np.minimum(columns, SAMPLE_SLOT - 1)
        codes = np.take_along_axis(packets, columns, axis=1)
        frames = ulaw_decode(codes).astype(np.float64)
        share, level = tone_fraction(frames, np.full(count, freq))
        present = usable & (share > TONE_SHARE) & (level > TONE_MIN_DBOV)
        rising = present & ~np.concatenate(([False], present[:-1]))
        return self.sample_rx_ns[slot, :count][rising]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
