"""Floor access time under mixing load, and late call entry (issue 10).

One row per ``--legs`` count, each on a fresh ``ucbridge serve`` (one media worker):

1. **Mixing load.** ``legs`` plain-RTP G.711 legs in open rooms of ten (one talker sending
   tone bursts, nine listeners sending low noise), driven by the batched load generator of
   :mod:`loadgen` in its own process.
2. **Floor access time** (TS 22.179 "MCPTT access time", the bridge's share of it). A floor
   client in its own process affiliates two handsets to each of ``--talkgroups`` ptt
   talkgroups over the trunking control channel, then sends MCPT Floor Requests to the
   worker's floor port at ``--rate`` requests/s in all (talkgroups staggered, the two
   handsets of a talkgroup taking turns); each granted handset releases after
   :data:`HOLD_S`. Access time is from the moment just before ``sendto`` of the Floor
   Request (``CLOCK_REALTIME``) to the kernel's receive timestamp of the Floor Granted
   (``SO_TIMESTAMPNS``), so the client's own scheduling is not counted on the receive side.
   The client reports how late it sent against its schedule and its CPU, so that a client
   limit is never read as a bridge limit.
3. **Late call entry** (TS 22.179 KPI 4, < 150 ms): in a talkgroup where a handset is
   talking, one handset after another affiliates (the :mod:`bridge.gateways.trunking.handset`
   simulator); entry time is from sending the affiliation request to the arrival of the
   first RTP packet of the burst in progress. Measured while the mixing load still runs.

The table goes to ``BENCHMARKS.md`` between the ``bench_floor`` markers (the rest of the file
is kept). Run from the repository root::

    .venv/bin/python tests/perf/bench_floor.py [--quick] [--legs 0,1000] [--seconds 30]

Every process it starts is stopped by its PID, on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import select
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench_common import (
    LOOPBACK,
    AdmissionRefusedError,
    Api,
    Machine,
    UcbridgeServer,
    close_all,
    cpu_snapshot,
    free_port,
    other_cores,
    port_of,
    reproduce_command,
    reserve_udp_ports,
    wait_for_quiet,
    write_section,
)
from loadgen import Leg, LoadProcess, LoadReport, start_load

from bridge.gateways.trunking import mcpt
from bridge.gateways.trunking.handset import (
    AffiliationRefusedError,
    EventKind,
    Fleet,
    HandsetConfig,
)
from bridge.mmsg import SCM_TIMESTAMPNS, SO_TIMESTAMPNS

DEFAULT_LEGS: Final = (0, 1000)
QUICK_LEGS: Final = (0, 200)
DEFAULT_RATE: Final = 200.0
DEFAULT_TALKGROUPS: Final = 50
DEFAULT_SECONDS: Final = 30.0
QUICK_SECONDS: Final = 8.0
WARMUP_S: Final = 3.0
DEFAULT_LATE_ENTRIES: Final = 20
QUICK_LATE_ENTRIES: Final = 8
HANDSETS_PER_TALKGROUP: Final = 2
ROOM_SIZE: Final = 10
#: A granted handset holds the floor this long (at most half its talkgroup's period).
HOLD_S: Final = 0.1
#: A request unanswered for this long counts as lost (far beyond any access time).
ANSWER_TIMEOUT_S: Final = 1.0
#: T101/C101 of the late-entry talker's Floor Request.
PATIENT_T101_S: Final = 0.5
PATIENT_C101: Final = 10
#: A late entrant that hears nothing for this long counts as failed.
ENTRY_TIMEOUT_S: Final = 3.0
#: Seconds the load generator runs past what the row needs.
TAIL_S: Final = 2.0
#: Time budget of the late-entry phase per entrant (affiliate, hear, de-affiliate).
ENTRY_BUDGET_S: Final = 0.6
CLIENT_START_TIMEOUT_S: Final = 60.0
#: The worker's sliding tick window is 10 s; wait a little longer for it to settle.
SETTLE_TIMEOUT_S: Final = 15.0
SETTLE_POLL_S: Final = 0.5
#: ``media.tick_budget`` of the bench's server: admission control never refuses.
TICK_BUDGET: Final = 1.0
JOIN_ATTEMPTS: Final = 40
JOIN_RETRY_S: Final = 0.5
#: The client sent later than this behind its schedule: it fell behind.
CLIENT_LAG_LIMIT_MS: Final = 5.0
#: Targets (DESIGN.md, "Performance targets").
TARGET_ACCESS_P99_MS: Final = 20.0
TARGET_LATE_ENTRY_MS: Final = 150.0
MIN_ON_TIME_PCT: Final = 99.9
#: Before each row, wait (at most ``--quiet-wait`` seconds) until the host is busier than
#: this many CPUs no more; the reading is recorded with the row either way.
QUIET_CORES: Final = 0.25
DEFAULT_QUIET_WAIT_S: Final = 90.0

MARK_START: Final = "<!-- bench_floor:start -->"
MARK_END: Final = "<!-- bench_floor:end -->"
DEFAULT_OUTPUT: Final = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
SCRIPT: Final = "tests/perf/bench_floor.py"
OUTPUT_OPTIONS: Final = frozenset({"--output", "--quiet-wait"})
OUTPUT_FLAGS: Final = frozenset({"--no-write"})

# RFC 3550 §6.7 / TS 24.380 §8.1.2: the first packet's header, enough to tell Floor Granted.
_RTCP_APP: Final = 204
_MESSAGE_TYPE_MASK: Final = 0x0F
_NAME: Final = slice(8, 12)
_APP_NAME: Final = b"MCPT"
_MIN_PACKET: Final = 12
_TIMESPEC: Final = struct.Struct("@qq")
_CMSG_SPACE: Final = socket.CMSG_SPACE(_TIMESPEC.size)
_NS_PER_S: Final = 1_000_000_000
_NS_PER_MS: Final = 1_000_000
_MS_PER_S: Final = 1000.0
_PERCENT: Final = 100.0
_RECV_SIZE: Final = 2048


# --- the floor client (its own process) ------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    api_port: int
    token: str
    talkgroups: list[str]
    rate: float
    warmup_s: float
    seconds: float


@dataclass
class FloorReport:
    """What the floor client saw; access times in ms, measured requests only."""

    requests: int = 0
    access_ms: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class _Unit:
    """One handset of the floor client."""

    index: int
    talkgroup: int
    sock: socket.socket
    rtp: socket.socket
    request: bytes
    release: bytes
    address: tuple[str, int] = ("", 0)
    participant: str = ""


@dataclass
class _Talkgroup:
    units: list[_Unit]
    turn: int = 0
    pending: _Unit | None = None
    sent_ns: int = 0
    measured: bool = False


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / _PERCENT * len(ordered)) - 1)
    return ordered[rank]


def _affiliate(api: Api, unit: _Unit, talkgroup: str) -> None:
    ssrc = int.from_bytes(os.urandom(4), "big")
    unit.request = bytes(mcpt.FloorRequest(ssrc=ssrc))
    unit.release = bytes(mcpt.FloorRelease(ssrc=ssrc))
    offer = {
        "talkgroup": talkgroup,
        "user_id": f"{talkgroup}-h{unit.index}",
        "codecs": ["opus"],
        "ssrc": ssrc,
        "rtp": {"ip": LOOPBACK, "port": port_of(unit.rtp)},
        "floor": {"ip": LOOPBACK, "port": port_of(unit.sock)},
    }
    for _ in range(JOIN_ATTEMPTS):
        try:
            answer = api.ok("POST", "/api/trunking/affiliate", offer)
            break
        except AdmissionRefusedError:
            time.sleep(JOIN_RETRY_S)
    else:
        raise RuntimeError(f"the worker refused {offer['user_id']} {JOIN_ATTEMPTS} times")
    unit.address = (answer["floor"]["ip"], int(answer["floor"]["port"]))
    unit.participant = str(answer["participant"])


def _kernel_time_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack(data[: _TIMESPEC.size])
            return seconds * _NS_PER_S + nanoseconds
    return time.time_ns()


def _is_granted(data: bytes) -> bool:
    return (
        len(data) >= _MIN_PACKET
        and data[1] == _RTCP_APP
        and data[_NAME] == _APP_NAME
        and data[0] & _MESSAGE_TYPE_MASK == mcpt.FloorMessageType.GRANTED
    )


def _answer_name(data: bytes) -> str:
    if len(data) < _MIN_PACKET or data[1] != _RTCP_APP:
        return "other"
    try:
        return mcpt.FloorMessageType(data[0] & _MESSAGE_TYPE_MASK).name.lower()
    except ValueError:
        return "other"


class FloorClient:
    """Handsets that only ask for the floor, on a fixed schedule (see the module docstring)."""

    def __init__(self, plan: ClientPlan) -> None:
        self.plan = plan
        self.talkgroups: list[_Talkgroup] = []
        self.by_fd: dict[int, _Unit] = {}
        self.report = FloorReport()
        self.lags_ms: list[float] = []
        self.answers: Counter[str] = Counter()
        self._poll = select.epoll()
        api = Api(plan.api_port, plan.token)
        try:
            for t, name in enumerate(plan.talkgroups):
                units = []
                for h in range(HANDSETS_PER_TALKGROUP):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind((LOOPBACK, 0))
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    sock.setblocking(False)
                    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    rtp.bind((LOOPBACK, 0))
                    unit = _Unit(h, t, sock, rtp, b"", b"")
                    _affiliate(api, unit, name)
                    self.by_fd[sock.fileno()] = unit
                    self._poll.register(sock.fileno(), select.EPOLLIN)
                    units.append(unit)
                self.talkgroups.append(_Talkgroup(units))
        finally:
            api.close()

    def deaffiliate(self) -> None:
        """Leave the talkgroups, so that no registration outlives its socket."""
        api = Api(self.plan.api_port, self.plan.token)
        try:
            for group in self.talkgroups:
                for unit in group.units:
                    if unit.participant:
                        api.request("DELETE", f"/api/trunking/affiliate/{unit.participant}")
                        unit.participant = ""
        finally:
            api.close()

    def close(self) -> None:
        self._poll.close()
        for group in self.talkgroups:
            for unit in group.units:
                unit.sock.close()
                unit.rtp.close()

    def run(self) -> FloorReport:
        plan = self.plan
        groups = len(self.talkgroups)
        period_ns = int(groups / plan.rate * _NS_PER_S)
        hold_ns = int(min(HOLD_S, groups / plan.rate / 2) * _NS_PER_S)
        start = time.monotonic_ns()
        measure_from = start + int(plan.warmup_s * _NS_PER_S)
        end = measure_from + int(plan.seconds * _NS_PER_S)
        # (due, kind, talkgroup, turn): kind 0 request, 1 release, 2 give up waiting.
        agenda: list[tuple[int, int, int, int]] = [
            (start + t * period_ns // groups, 0, t, 0) for t in range(groups)
        ]
        heapq.heapify(agenda)
        cpu_a = time.process_time()
        while agenda:
            now = time.monotonic_ns()
            while agenda and agenda[0][0] <= now:
                due, kind, t, turn = heapq.heappop(agenda)
                group = self.talkgroups[t]
                if kind == 0:
                    if due >= end:
                        continue
                    unit = group.units[group.turn % HANDSETS_PER_TALKGROUP]
                    group.turn += 1
                    group.pending = unit
                    group.measured = due >= measure_from
                    group.sent_ns = time.time_ns()
                    unit.sock.sendto(unit.request, unit.address)
                    if group.measured:
                        self.report.requests += 1
                        self.lags_ms.append((time.monotonic_ns() - due) / _NS_PER_MS)
                    heapq.heappush(agenda, (due + period_ns, 0, t, 0))
                    timeout = now + int(ANSWER_TIMEOUT_S * _NS_PER_S)
                    heapq.heappush(agenda, (timeout, 2, t, group.turn))
                elif kind == 1:
                    unit = group.units[(group.turn - 1) % HANDSETS_PER_TALKGROUP]
                    unit.sock.sendto(unit.release, unit.address)
                elif kind == 2 and group.pending is not None and group.turn == turn:
                    if group.measured:
                        self.report.lost += 1
                    stale = group.pending
                    group.pending = None
                    stale.sock.sendto(stale.release, stale.address)
            wait = (agenda[0][0] - time.monotonic_ns()) / _NS_PER_S if agenda else 0.0
            for fd, _ in self._poll.poll(max(0.0, wait)):
                self._readable(self.by_fd[fd], agenda, hold_ns)
        self.report.cpu_s = time.process_time() - cpu_a
        self.report.wall_s = (time.monotonic_ns() - start) / _NS_PER_S
        self.report.answers = dict(self.answers)
        self.report.lag_p99_ms = _percentile(self.lags_ms, 99)
        self.report.lag_max_ms = max(self.lags_ms, default=0.0)
        return self.report

    def _readable(self, unit: _Unit, agenda: list[tuple[int, int, int, int]], hold_ns: int) -> None:
        while True:
            try:
                data, ancillary, _, _ = unit.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
            except BlockingIOError:
                return
            group = self.talkgroups[unit.talkgroup]
            if group.pending is not unit:
                continue  # Floor Taken, Idle, ... to a handset not waiting for an answer
            if not _is_granted(data):
                self.answers[_answer_name(data)] += int(group.measured)
                continue
            received = _kernel_time_ns(ancillary)
            group.pending = None
            if group.measured:
                self.answers["granted"] += 1
                self.report.access_ms.append((received - group.sent_ns) / _NS_PER_MS)
            heapq.heappush(agenda, (time.monotonic_ns() + hold_ns, 1, unit.talkgroup, 0))


def _client_main(plan: ClientPlan, connection: multiprocessing.connection.Connection) -> None:
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        client = FloorClient(plan)
    except Exception:
        connection.send(traceback.format_exc())
        return
    try:
        connection.send("ready")
        if connection.recv() != "go":
            return
        report = client.run()
        client.deaffiliate()
        connection.send(report)
    except Exception:
        connection.send(traceback.format_exc())
    finally:
        client.close()


class ClientProcess:
    """The floor client, spawned; stopped by its PID on the way out."""

    def __init__(self, plan: ClientPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.process = context.Process(
            target=_client_main, args=(plan, child), name="floorclient", daemon=True
        )
        self.process.start()
        child.close()

    def ready(self) -> None:
        if not self._connection.poll(CLIENT_START_TIMEOUT_S):
            raise RuntimeError("floor client did not start")
        message = self._connection.recv()
        if message != "ready":
            raise RuntimeError(f"floor client failed: {message}")

    def go(self, timeout: float) -> FloorReport:
        self._connection.send("go")
        if not self._connection.poll(timeout):
            raise RuntimeError("floor client did not finish")
        message = self._connection.recv()
        if not isinstance(message, FloorReport):
            raise RuntimeError(f"floor client failed: {message}")
        return message

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def stop(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, 9)
        self.process.join(timeout=10)


# --- late call entry (this process) ----------------------------------------------------------


@dataclass
class EntryReport:
    entry_ms: list[float] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)
    failed: int = 0
    #: Why the last failed entrant failed.
    reason: str = ""


async def late_entries(base: str, token: str, talkgroup: str, count: int) -> EntryReport:
    """A handset talks in ``talkgroup``; ``count`` handsets join it one after another."""
    report = EntryReport()
    async with Fleet() as fleet:
        # Setting up, not measuring: the talker is patient with an overloaded worker.
        talker = fleet.add(
            HandsetConfig(
                server=base,
                token=token,
                talkgroup=talkgroup,
                user_id="late-talker",
                t101=PATIENT_T101_S,
                c101=PATIENT_C101,
            )
        )
        await talker.affiliate()
        granted = await talker.press()
        if granted.kind is not EventKind.GRANTED:
            raise RuntimeError(f"the talker did not get the floor: {granted.describe()}")
        await asyncio.sleep(0.5)
        for i in range(count):
            entrant = fleet.add(
                HandsetConfig(server=base, token=token, talkgroup=talkgroup, user_id=f"late-{i}")
            )
            await entrant.open()
            sent = time.monotonic()
            try:
                await entrant.affiliate()
            except AffiliationRefusedError as exc:
                report.failed += 1
                report.reason = str(exc)
                entrant.close()
                continue
            answered = time.monotonic()
            deadline = sent + ENTRY_TIMEOUT_S
            while not entrant.received and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            if entrant.received:
                report.entry_ms.append((entrant.received[0].at - sent) * _MS_PER_S)
                report.answer_ms.append((answered - sent) * _MS_PER_S)
            else:
                report.failed += 1
                report.reason = "heard nothing"
            await entrant.deaffiliate()
            entrant.close()
        await talker.release()
    return report


# --- one row ---------------------------------------------------------------------------------


@dataclass
class Row:
    legs: int
    talkgroups: int
    rate: float
    window_s: float = 0.0
    floor: FloorReport | None = None
    entries: EntryReport | None = None
    on_time_pct: float | None = None
    work_p99_ms: float | None = None
    load_cpu_pct: float | None = None
    load_fell_behind: bool | None = None
    worker_floor: dict[str, Any] = field(default_factory=dict)
    #: Joins of the mixing legs the worker refused for its tick budget (then retried).
    join_refusals: int = 0
    #: How long the worker took to drop under its tick budget after the floor phase.
    settle_s: float | None = None
    #: CPUs' worth of other work on the host just before the row, and during its window.
    host_busy_cores: float | None = None
    other_cpus: float | None = None
    note: str = ""


def join_legs(server: UcbridgeServer, ports: Sequence[int]) -> tuple[list[Leg], int]:
    """Open rooms of ten; the first leg of each room is its talker.

    A join the worker refuses for its tick budget (a sliding p99 that start-up and the
    topology changes of the joins themselves push up) is tried again a little later;
    returns the legs and how many refusals there were.
    """
    legs = []
    refusals = 0
    for room in range(math.ceil(len(ports) / ROOM_SIZE)):
        server.api.ok("POST", "/api/rooms", {"name": f"mix-{room}", "mode": "open"})
    for index, port in enumerate(ports):
        body = {"address": {"ip": LOOPBACK, "port": port}, "codec": "PCMU", "name": f"leg-{index}"}
        for _ in range(JOIN_ATTEMPTS):
            try:
                reply = server.api.ok(
                    "POST", f"/api/rooms/mix-{index // ROOM_SIZE}/participants", body
                )
                break
            except AdmissionRefusedError:
                refusals += 1
                time.sleep(JOIN_RETRY_S)
        else:
            raise RuntimeError(f"the worker refused leg {index + 1} {JOIN_ATTEMPTS} times")
        remote = (str(reply["rtp"]["ip"]), int(reply["rtp"]["port"]))
        legs.append(Leg(port, remote, talker=index % ROOM_SIZE == 0, room=index // ROOM_SIZE))
    return legs, refusals


@contextlib.contextmanager
def mixing_load(legs: Sequence[Leg], seconds: float) -> Iterator[LoadProcess | None]:
    if not legs:
        yield None
        return
    load = start_load(legs, seconds)
    try:
        load.ready()
        yield load
    finally:
        load.stop()


def settle(server: UcbridgeServer) -> float | None:
    """Wait until the worker takes joins again; seconds waited, or None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        tick = server.workers()[0]["tick"]
        if tick["work_p99_ms"] <= tick["budget_ms"]:
            return time.monotonic() - started
        time.sleep(SETTLE_POLL_S)
    return None


def _configure(server: UcbridgeServer) -> None:
    """A free floor port (``media.floor_port_base``), and admission control out of the way.

    Every join and every floor holder change rebuilds the worker's mixing topology, and those
    ticks push the sliding p99 of tick work over the admission budget while the bench sets up
    (see the section's notes); ``media.tick_budget`` 1.0 lets every leg in, and the row
    reports the ticks on time and the tick work it measured.
    """
    text = server.config.read_text()
    port = free_port(socket.SOCK_DGRAM)
    media = f"[media]\nfloor_port_base = {port}\ntick_budget = {TICK_BUDGET}\n"
    server.config.write_text(text.replace("[media]\n", media, 1))


def run_row(legs: int, args: argparse.Namespace) -> Row:
    row = Row(legs, args.talkgroups, args.rate)
    entry_budget = args.late_entries * ENTRY_BUDGET_S + SETTLE_TIMEOUT_S + 2.0
    load_seconds = WARMUP_S + args.seconds + entry_budget + TAIL_S
    with (
        tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        server = UcbridgeServer(Path(tmp))
        _configure(server)
        stack.callback(server.stop)
        server.start()
        talkgroups = [f"tg-{i}" for i in range(args.talkgroups)]
        for name in [*talkgroups, "late"]:
            server.api.ok("POST", "/api/rooms", {"name": name, "mode": "ptt"})
        # The handsets first: each join rebuilds the mixing topology, which costs less while
        # the worker has few legs (see the notes of the section).
        plan = ClientPlan(
            server.port, server.api.token, talkgroups, args.rate, WARMUP_S, args.seconds
        )
        client = ClientProcess(plan)
        stack.callback(client.stop)
        client.ready()
        sockets = reserve_udp_ports(legs) if legs else []
        stack.callback(close_all, sockets)
        leg_list, row.join_refusals = join_legs(server, [port_of(s) for s in sockets])
        close_all(sockets)
        load = stack.enter_context(mixing_load(leg_list, load_seconds))
        time.sleep(1.0)  # the generator's legs latch
        pids = [server.pid, *server.descendants(), client.pid]
        if load is not None:
            pids.append(load.pid)
        before = server.workers()[0]
        host_a = cpu_snapshot(pids)
        started = time.monotonic()
        row.floor = client.go(timeout=WARMUP_S + args.seconds + 30)
        row.window_s = time.monotonic() - started
        host_b = cpu_snapshot(pids)
        after = server.workers()[0]
        row.other_cpus = other_cores(host_a, host_b, row.window_s)
        # Joins are refused while the worker's p99 tick work (a sliding window) is over its
        # budget: let the window forget the floor churn before the late entrants come.
        row.settle_s = settle(server)
        try:
            row.entries = asyncio.run(
                late_entries(
                    f"http://{LOOPBACK}:{server.port}", server.api.token, "late", args.late_entries
                )
            )
        except (RuntimeError, OSError) as exc:
            row.entries = EntryReport(failed=args.late_entries, reason=str(exc))
        tick_a, tick_b = before["tick"], after["tick"]
        ticks = tick_b["ticks"] - tick_a["ticks"]
        late = tick_b["late_ticks"] - tick_a["late_ticks"]
        skipped = tick_b["missed_ticks"] - tick_a["missed_ticks"]
        if ticks + skipped:
            row.on_time_pct = _PERCENT * (1 - (late + skipped) / (ticks + skipped))
        row.work_p99_ms = tick_b["work_p99_ms"]
        row.worker_floor = after["plugins"]["trunking"]
        if load is not None:
            report: LoadReport = load.wait()
            row.load_cpu_pct = _PERCENT * report.cpu_fraction
            row.load_fell_behind = report.fell_behind
    return row


# --- the report ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def table(rows: Sequence[Row]) -> list[str]:
    header = (
        "| plain-RTP legs | floor requests (rate) | granted | lost | access p50 / p95 / p99 / max "
        "(ms) | late entry p50 / p95 / max (ms) | ticks on time | tick work p99 | "
        "client lag p99 | generator CPU, fell behind | other CPUs before / during |"
    )
    lines = [header, "| " + " | ".join(["---"] * 11) + " |"]
    for row in rows:
        floor, entries = row.floor, row.entries
        if floor is None or entries is None:
            lines.append(f"| {row.legs} | failed: {row.note} |" + " |" * 9)
            continue
        access = floor.access_ms
        entry = entries.entry_ms
        load = (
            "—"
            if row.load_cpu_pct is None
            else f"{row.load_cpu_pct:.0f} %, {'yes' if row.load_fell_behind else 'no'}"
        )
        lines.append(
            f"| {row.legs} | {floor.requests} ({row.rate:g}/s, {row.talkgroups} talkgroups) "
            f"| {len(access)} | {floor.lost} "
            f"| {_ms(_percentile(access, 50))} / {_ms(_percentile(access, 95))} / "
            f"{_ms(_percentile(access, 99))} / {_ms(max(access, default=math.nan))} "
            f"| {_ms(_percentile(entry, 50))} / {_ms(_percentile(entry, 95))} / "
            f"{_ms(max(entry, default=math.nan))} ({len(entry)} of "
            f"{len(entry) + entries.failed}) "
            f"| {_ms(row.on_time_pct)} % | {_ms(row.work_p99_ms)} ms "
            f"| {_ms(floor.lag_p99_ms)} ms | {load} "
            f"| {_ms(row.host_busy_cores)} / {_ms(row.other_cpus)} |"
        )
    return lines


def targets(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        if row.floor is None or row.entries is None:
            continue
        p99 = _percentile(row.floor.access_ms, 99)
        entry = max(row.entries.entry_ms, default=math.inf)
        lines.append(
            f"- {row.legs} legs: floor access p99 {_ms(p99)} ms against "
            f"{TARGET_ACCESS_P99_MS:g} ms: {_verdict(p99 <= TARGET_ACCESS_P99_MS)}; "
            f"late call entry, worst of {len(row.entries.entry_ms)}, {_ms(entry)} ms against "
            f"{TARGET_LATE_ENTRY_MS:g} ms (KPI 4): "
            f"{_verdict(entry <= TARGET_LATE_ENTRY_MS and not row.entries.failed)}."
        )
        if row.on_time_pct is not None and row.on_time_pct < MIN_ON_TIME_PCT:
            lines.append(
                f"  Ticks on time {row.on_time_pct:.2f} % < {MIN_ON_TIME_PCT:g} %: the worker is "
                "past its mixing capacity on this machine at this leg count; floor messages are "
                "served between ticks, so they wait for ticks that run late."
            )
        others = {k: v for k, v in row.floor.answers.items() if k != "granted" and v}
        if others:
            named = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(others.items()))
            lines.append(
                f"  Requests answered otherwise than by Floor Granted: {named} (the previous "
                "holder's release had not been served yet)."
            )
        if row.floor.lag_max_ms > CLIENT_LAG_LIMIT_MS:
            lines.append(
                f"  The floor client sent up to {row.floor.lag_max_ms:.1f} ms behind its "
                "schedule (its own limit, not the bridge's; access times start at the send)."
            )
    return lines


def section(rows: Sequence[Row], machine: Machine, command: str) -> str:
    entry_detail = [
        f"{row.legs} legs: affiliation answered in "
        f"{_ms(statistics.median(row.entries.answer_ms))} ms (median)"
        for row in rows
        if row.entries is not None and row.entries.answer_ms
    ]
    settles = []
    for row in rows:
        if row.floor is None:
            continue
        if row.settle_s is None:
            settles.append(
                f"{row.legs} legs: the worker refused joins through the late-entry phase "
                "(p99 tick work over its budget)"
            )
        elif row.settle_s >= SETTLE_POLL_S:
            settles.append(
                f"{row.legs} legs: the worker refused joins for {row.settle_s:.1f} s after "
                "the floor phase (p99 tick work over its budget)"
            )
    refused = [
        f"{row.legs} legs: {row.join_refusals} joins of mixing legs refused, then retried"
        for row in rows
        if row.join_refusals
    ]
    failures = [
        f"{row.legs} legs: {row.entries.failed} late entrants failed ({row.entries.reason})"
        for row in rows
        if row.entries is not None and row.entries.failed
    ]
    drops = [
        f"{row.legs} legs: floor port received {row.worker_floor.get('received')}, "
        f"dropped {row.worker_floor.get('dropped') or 'nothing'}"
        for row in rows
        if row.worker_floor
    ]
    parts = [
        MARK_START,
        "## Floor access time and late call entry (trunking gateway)",
        "",
        f"Measured {machine.date} on {machine.nproc} × {machine.cpu_model}, {machine.kernel}, "
        f"Python {machine.python}; load average before the run "
        f"{machine.load_before[0]:.2f}. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"One media worker, unpinned, `media.tick_budget = {TICK_BUDGET:g}` (admission "
        "control off, see below). Floor access: MCPT Floor Request sent → Floor Granted "
        "received (kernel receive timestamp), two handsets per talkgroup taking turns, each "
        f"grant held {HOLD_S * _MS_PER_S:.0f} ms, after {WARMUP_S:g} s of warm-up. Late call "
        "entry: affiliation request sent → first RTP packet of the burst in progress, one "
        "entrant at a time, during the same mixing load.",
        "",
        *table(rows),
        "",
        "Targets (DESIGN.md): floor access p99 ≤ 20 ms in one node; late call entry ≤ 150 ms.",
        "",
        *targets(rows),
        "",
        "Details: " + "; ".join(entry_detail + refused + settles + failures + drops) + ".",
        MARK_END,
    ]
    return "\n".join(parts) + "\n"


def _legs(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of leg counts: {text}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("leg counts must not be negative")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--legs", type=_legs, help="plain-RTP legs mixing, one row each")
    parser.add_argument("--seconds", type=float, help="measured window of floor requests")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="floor requests/s")
    parser.add_argument("--talkgroups", type=int, default=DEFAULT_TALKGROUPS)
    parser.add_argument("--late-entries", type=int, help="late entrants per row")
    parser.add_argument("--quick", action="store_true", help="short run, small rows")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=DEFAULT_QUIET_WAIT_S,
        help="seconds to wait for an idle host before each row",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.legs is None:
        args.legs = list(QUICK_LEGS if args.quick else DEFAULT_LEGS)
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    if args.late_entries is None:
        args.late_entries = QUICK_LATE_ENTRIES if args.quick else DEFAULT_LATE_ENTRIES
    if args.talkgroups < 1 or args.rate <= 0:
        parser.error("--talkgroups and --rate must be positive")
    return args


def _on_term(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like an error, so that every process started is stopped."""
    raise SystemExit(f"bench_floor: stopped by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    machine = Machine.probe()
    rows = []
    for legs in args.legs:
        busy = wait_for_quiet(args.quiet_wait, QUIET_CORES)
        print(f"bench_floor: {legs} legs (host busy {busy:.2f} CPUs)", file=sys.stderr, flush=True)
        try:
            rows.append(run_row(legs, args))
            rows[-1].host_busy_cores = busy
        except Exception as exc:  # keep the other rows
            traceback.print_exc()
            rows.append(Row(legs, args.talkgroups, args.rate, note=str(exc)))
    text = section(rows, machine, reproduce_command(SCRIPT, argv, OUTPUT_OPTIONS, OUTPUT_FLAGS))
    print(text)
    if not args.no_write:
        write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
