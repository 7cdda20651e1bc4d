"""Mixing capacity side by side (issue 9): ucbridge, the Janus AudioBridge and the kernel floor.

One run drives three systems with the same load generator (:mod:`loadgen`: G.711 µ-law legs at
real-time pace, rooms of ten with one talker sending tone bursts and nine listeners sending
low noise, never digital silence):

1. **ucbridge**, a fresh ``ucbridge serve`` (one media worker) per row, at each ``--legs``
   count, unpinned and then pinned (the worker on CPU 0, the generator on CPU 1). A series
   stops at the first row whose ticks on time fall below 99.9 % or whose generator fell
   behind; that row is kept and the reason written beside it.
2. **Janus AudioBridge** (:mod:`janus`) at 200 and 500 legs, same rooms and talkers.
3. **The kernel floor** (:mod:`echo_floor`): a bare ``recvmmsg``/``sendmmsg`` echo.

Each row warms up, then measures over a window of ``--seconds``:

- CPU per participant-second: Δ process CPU over the window / (legs × window). For ucbridge
  it is the media worker's ``cpu_s`` from ``GET /api/workers``;
- ticks on time in the window: 1 − (Δ late + Δ skipped ticks) / (Δ ticks + Δ skipped ticks);
- tick work p99: the largest of the worker's 10 s sliding p99, read every few seconds once
  the whole sliding window lies after the first second of load;
- transit (kernel receive timestamp of the frame mixed → return of ``sendmmsg``), with and
  without each frame's time in the jitter buffer: the median of the worker's p50 readings and the
  largest of its p99 readings over the window;
- end-to-end latency (tone onset sent → tone onset heard), generator CPU and whether it fell
  behind: the generator's own report over its whole run (warm-up included);
- RSS per participant: (RSS with the legs − RSS of the fresh idle process) / legs.

The table is printed and written to ``BENCHMARKS.md`` between the ``bench_mixing`` markers
(the rest of the file is kept); ``--quick`` (200 and 500 legs, 8 s windows, about two
minutes) only prints, unless ``--output`` is given. Run from the repository root::

    .venv/bin/python tests/perf/bench_mixing.py [--quick] [--legs 200,500,1000,2000] [--seconds 20]

Every process it starts is stopped by its PID, on failure too; the whole run is bounded by
``--max-minutes``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench_common import (
    LOOPBACK,
    AdmissionRefusedError,
    Machine,
    UcbridgeServer,
    close_all,
    cpu_snapshot,
    free_port,
    load_average,
    other_cores,
    port_of,
    process_cpu_s,
    process_rss,
    reproduce_command,
    reserve_udp_ports,
    wait_for_quiet,
    write_section,
)
from echo_floor import EchoReport, start_echo
from janus import JanusAudioBridge
from loadgen import Leg, LoadProcess, LoadReport, start_load

SYSTEM_UCBRIDGE: Final = "ucbridge"
SYSTEM_JANUS: Final = "Janus AudioBridge"
SYSTEM_FLOOR: Final = "kernel floor (echo)"

ROOM_SIZE: Final = 10
DEFAULT_LEGS: Final = (200, 500, 1000, 2000)
QUICK_LEGS: Final = (200, 500)
JANUS_LEGS: Final = (200, 500)
FLOOR_LEGS: Final = (200, 500, 1000)
DEFAULT_SECONDS: Final = 20.0
QUICK_SECONDS: Final = 8.0
DEFAULT_WARMUP_S: Final = 5.0
QUICK_WARMUP_S: Final = 3.0
#: The generator runs this long past the window, so that the window never sees it stop.
TAIL_S: Final = 1.0
#: Pause after a fresh process is up before its idle RSS is read.
IDLE_SETTLE_S: Final = 1.0
#: How often the worker's figures are read during a window.
POLL_S: Final = 2.0
#: The worker's sliding tick window (``bridge.worker.WINDOW_TICKS`` × 20 ms), and how long
#: after the load starts a reading of it no longer covers the first, latching, ticks.
TICK_WINDOW_S: Final = 10.0
LOAD_SETTLE_S: Final = 1.0
#: Pinned rows: the media worker on one core, the load generator on the other.
WORKER_CPU: Final = 0
LOAD_CPU: Final = 1
#: Janus's plain-RTP sockets; apart from the legs' ports and below the ephemeral range.
JANUS_RTP_PORTS: Final = (20000, 30000)
JANUS_ROOM_RATE: Final = 16000
DEFAULT_MAX_MINUTES: Final = 30.0
#: Before each row, wait (at most ``--quiet-wait`` seconds) until the host is busier than
#: this many CPUs no more; the reading is recorded with the row either way.
QUIET_CORES: Final = 0.25
#: A ucbridge row that would end its series is measured once more when processes other than
#: the system under test and the generator used more than this share of a CPU in its window.
RETRY_OTHERS_PCT: Final = 25.0
DEFAULT_QUIET_WAIT_S: Final = 90.0

#: Targets (DESIGN.md, "Performance targets").
MIN_ON_TIME_PCT: Final = 99.9
MAX_JANUS_RATIO: Final = 0.15
MAX_FLOOR_RATIO: Final = 1.3
MAX_TRANSIT_P99_MS: Final = 30.0
MAX_RSS_PER_LEG_KIB: Final = 50.0
ON_TIME_TARGETS: Final = ((1000, False), (2000, True))

MARK_START: Final = "<!-- bench_mixing:start -->"
MARK_END: Final = "<!-- bench_mixing:end -->"
DEFAULT_OUTPUT: Final = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
SCRIPT: Final = "tests/perf/bench_mixing.py"
#: Options that choose where results go, left out of the reproduce command.
OUTPUT_OPTIONS: Final = frozenset({"--output", "--json"})
OUTPUT_FLAGS: Final = frozenset({"--no-write"})

_MS_PER_S: Final = 1000.0
_KIB: Final = 1024.0
_PERCENT: Final = 100.0


class BenchTimeoutError(Exception):
    """The whole run went past ``--max-minutes``."""


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    seconds: float


@dataclass
class Row:
    """One system at one leg count: what the window measured."""

    system: str
    legs: int
    pinned: bool
    cpu_ms_per_ps: float | None = None
    on_time_pct: float | None = None
    work_p99_ms: float | None = None
    transit_p50_ms: float | None = None
    transit_p99_ms: float | None = None
    transit_excl_jb_p50_ms: float | None = None
    transit_excl_jb_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    rss_per_leg_kib: float | None = None
    generator_cpu_pct: float | None = None
    generator_fell_behind: bool | None = None
    #: Packets the generator received over one per leg per tick.
    received_pct: float | None = None
    bursts_detected: int | None = None
    bursts_expected: int | None = None
    #: Host-wide ``Udp: RcvbufErrors`` added during the window.
    rcvbuf_errors: int | None = None
    stages_p50_ms: dict[str, float] = field(default_factory=dict)
    window_s: float | None = None
    #: The host's busy CPUs just before the row, and the share of a CPU that processes
    #: other than the system under test and the generator used during the window.
    host_busy_before_cores: float | None = None
    other_cpu_pct: float | None = None
    #: Figures that are not in the main table (cross-checks, other processes).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Why this row ended its series, or what went wrong.
    note: str = ""
    stops_series: bool = False


# --- measuring -------------------------------------------------------------------------------


def room_legs(ports: Sequence[int], remotes: Sequence[tuple[str, int]]) -> list[Leg]:
    """Rooms of ``ROOM_SIZE`` in leg order; the first leg of each room is its talker."""
    return [
        Leg(port, remote, talker=index % ROOM_SIZE == 0, room=index // ROOM_SIZE)
        for index, (port, remote) in enumerate(zip(ports, remotes, strict=True))
    ]


def rooms_for(legs: int) -> int:
    return math.ceil(legs / ROOM_SIZE)


@contextlib.contextmanager
def running_load(legs: Sequence[Leg], timing: Timing, cpu: int | None) -> Iterator[LoadProcess]:
    """The generator, started and ready; stopped by its PID on the way out."""
    load = start_load(legs, timing.warmup_s + timing.seconds + TAIL_S, cpu)
    try:
        load.ready()
        yield load
    finally:
        load.stop()


def apply_load_report(row: Row, report: LoadReport) -> None:
    row.e2e_p50_ms = report.e2e_latency_ms_p50
    row.e2e_p99_ms = report.e2e_latency_ms_p99
    row.generator_cpu_pct = _PERCENT * report.cpu_fraction
    row.generator_fell_behind = report.fell_behind
    row.received_pct = _PERCENT * report.received_share
    row.bursts_detected = report.bursts_detected
    row.bursts_expected = report.bursts_expected
    row.extra["generator_send_errors"] = report.send_errors
    row.extra["generator_max_lag_ms"] = round(report.max_lag_ms, 2)
    row.extra["generator_affinity"] = report.affinity


def per_participant_ms(cpu_s: float, legs: int, window_s: float) -> float:
    return _MS_PER_S * cpu_s / (legs * window_s)


def rss_per_leg_kib(before: int, after: int, legs: int) -> float:
    return (after - before) / legs / _KIB


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after.get(key) or 0) - int(before.get(key) or 0)


def worker_window_figures(
    row: Row,
    before: dict[str, Any],
    polls: list[tuple[float, dict[str, Any]]],
    load_started: float,
) -> None:
    """Ticks on time, work p99, transit and stages from ``/api/workers`` readings."""
    after = polls[-1][1]
    tick_a, tick_b = before["tick"], after["tick"]
    ticks = _delta(tick_b, tick_a, "ticks")
    late = _delta(tick_b, tick_a, "late_ticks")
    skipped = _delta(tick_b, tick_a, "missed_ticks")
    if ticks + skipped > 0:
        row.on_time_pct = _PERCENT * (1 - (late + skipped) / (ticks + skipped))
    row.extra["ticks"] = ticks
    row.extra["late_ticks"] = late
    row.extra["skipped_ticks"] = skipped
    settled = [s for t, s in polls if t >= load_started + LOAD_SETTLE_S + TICK_WINDOW_S]
    work = [s["tick"]["work_p99_ms"] for s in settled or [after]]
    row.work_p99_ms = max(work)
    row.extra["work_p50_ms"] = tick_b.get("work_p50_ms")
    row.stages_p50_ms = dict(tick_b.get("stages_p50_ms") or {})
    readings = [s for _, s in polls]
    for name in ("transit", "transit_excl_jb"):
        p50 = [s[f"{name}_p50_ms"] for s in readings if s.get(f"{name}_p50_ms") is not None]
        p99 = [s[f"{name}_p99_ms"] for s in readings if s.get(f"{name}_p99_ms") is not None]
        setattr(row, f"{name}_p50_ms", statistics.median(p50) if p50 else None)
        setattr(row, f"{name}_p99_ms", max(p99) if p99 else None)
    if before.get("rcvbuf_errors") is not None and after.get("rcvbuf_errors") is not None:
        row.rcvbuf_errors = int(after["rcvbuf_errors"]) - int(before["rcvbuf_errors"])
    for key in ("channel_dropped", "recorder_dropped", "backend", "legs"):
        if key in after:
            row.extra[key] = after[key]


class JoinRefusedError(RuntimeError):
    """A join was refused with 503 (admission control) after ``joined`` legs had joined."""

    def __init__(self, joined: int, reason: str, worker: dict[str, Any] | None) -> None:
        super().__init__(reason)
        self.joined = joined
        self.worker = worker


def join_ucbridge(server: UcbridgeServer, ports: Sequence[int]) -> list[Leg]:
    """Create the rooms and join one leg per port; raises JoinRefusedError on a 503."""
    remotes: list[tuple[str, int]] = []
    for room in range(rooms_for(len(ports))):
        server.api.ok("POST", "/api/rooms", {"name": f"bench-{room}", "mode": "open"})
    for index, port in enumerate(ports):
        try:
            reply = server.api.ok(
                "POST",
                f"/api/rooms/bench-{index // ROOM_SIZE}/participants",
                {
                    "address": {"ip": LOOPBACK, "port": port},
                    "codec": "PCMU",
                    "payload_type": 0,
                    "name": f"leg-{index}",
                },
            )
        except AdmissionRefusedError as exc:
            worker: dict[str, Any] | None = None
            with contextlib.suppress(RuntimeError, OSError):
                worker = server.workers()[0]
            raise JoinRefusedError(index, str(exc), worker) from None
        remotes.append((str(reply["rtp"]["ip"]), int(reply["rtp"]["port"])))
    return room_legs(ports, remotes)


def note_refusal(row: Row, refused: JoinRefusedError) -> None:
    """Keep what the worker said when it refused: the bench is over its capacity here."""
    row.note = (
        f"admission control refused join {refused.joined + 1} of {row.legs} while joining, "
        f"before any load: {refused}"
    )
    row.stops_series = True
    row.extra["joined_before_refusal"] = refused.joined
    if refused.worker is not None:
        tick = refused.worker.get("tick", {})
        row.work_p99_ms = tick.get("work_p99_ms")
        row.extra["work_p50_ms"] = tick.get("work_p50_ms")
        row.stages_p50_ms = dict(tick.get("stages_p50_ms") or {})


def run_ucbridge(legs: int, pinned: bool, timing: Timing) -> Row:
    row = Row(SYSTEM_UCBRIDGE, legs, pinned)
    with (
        tempfile.TemporaryDirectory(prefix="bench-ucbridge-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        server = UcbridgeServer(Path(tmp), pin_cpus=[WORKER_CPU] if pinned else None)
        stack.callback(server.stop)
        health = server.start()
        worker_pid = int(health["workers"][0]["pid"])
        pids = [server.pid, *server.descendants()]
        time.sleep(IDLE_SETTLE_S)
        rss_idle = process_rss(worker_pid)
        control_rss_idle = process_rss(server.pid)
        joined = time.monotonic()
        sockets = reserve_udp_ports(legs)
        stack.callback(close_all, sockets)
        try:
            leg_list = join_ucbridge(server, [port_of(sock) for sock in sockets])
        except JoinRefusedError as refused:
            note_refusal(row, refused)
            return row
        row.extra["join_s"] = round(time.monotonic() - joined, 1)
        close_all(sockets)
        load = stack.enter_context(running_load(leg_list, timing, LOAD_CPU if pinned else None))
        load_started = time.monotonic()
        pids.append(load.pid)
        time.sleep(timing.warmup_s)
        control_cpu_a = process_cpu_s(server.pid)
        psutil_cpu_a = process_cpu_s(worker_pid)
        host_a = cpu_snapshot(pids)
        before = server.workers()[0]
        t_a = time.monotonic()
        polls: list[tuple[float, dict[str, Any]]] = []
        end = t_a + timing.seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(POLL_S, left))
            polls.append((time.monotonic(), server.workers()[0]))
        t_b = polls[-1][0]
        host_b = cpu_snapshot(pids)
        psutil_cpu_b = process_cpu_s(worker_pid)
        control_cpu_b = process_cpu_s(server.pid)
        rss_legs = process_rss(worker_pid)
        control_rss_legs = process_rss(server.pid)
        report = load.wait()

    after = polls[-1][1]
    window = t_b - t_a
    row.window_s = window
    row.cpu_ms_per_ps = per_participant_ms(float(after["cpu_s"]) - before["cpu_s"], legs, window)
    row.other_cpu_pct = _PERCENT * other_cores(host_a, host_b, window)
    row.rss_per_leg_kib = rss_per_leg_kib(rss_idle, rss_legs, legs)
    worker_window_figures(row, before, polls, load_started)
    apply_load_report(row, report)
    row.extra["worker_cpu_ms_per_ps_psutil"] = round(
        per_participant_ms(psutil_cpu_b - psutil_cpu_a, legs, window), 4
    )
    row.extra["control_cpu_ms_per_ps"] = round(
        per_participant_ms(control_cpu_b - control_cpu_a, legs, window), 4
    )
    row.extra["worker_rss_idle_mib"] = round(rss_idle / _KIB / _KIB, 1)
    row.extra["control_rss_per_leg_kib"] = round(
        rss_per_leg_kib(control_rss_idle, control_rss_legs, legs), 1
    )
    return row


def run_janus(legs: int, timing: Timing) -> Row:
    row = Row(SYSTEM_JANUS, legs, pinned=False)
    with JanusAudioBridge(free_port(), rtp_port_range=JANUS_RTP_PORTS) as janus:
        row.extra["version"] = janus.version_string
        time.sleep(IDLE_SETTLE_S)
        rss_idle = janus.rss_bytes()
        sockets = reserve_udp_ports(legs)
        try:
            ports = [port_of(sock) for sock in sockets]
            rooms = janus.create_rooms(rooms_for(legs), sampling_rate=JANUS_ROOM_RATE)
            remotes: list[tuple[str, int]] = []
            for number, room in enumerate(rooms):
                members = ports[number * ROOM_SIZE : (number + 1) * ROOM_SIZE]
                remotes += janus.join_rtp_many(room, [(LOOPBACK, port) for port in members])
        finally:
            close_all(sockets)
        with running_load(room_legs(ports, remotes), timing, None) as load:
            time.sleep(timing.warmup_s)
            host_a = cpu_snapshot([janus.pid, load.pid])
            cpu_a = janus.cpu_seconds()
            t_a = time.monotonic()
            time.sleep(timing.seconds)
            cpu_b = janus.cpu_seconds()
            t_b = time.monotonic()
            host_b = cpu_snapshot([janus.pid, load.pid])
            rss_legs = janus.rss_bytes()
            row.extra["threads"] = janus.thread_count()
            report = load.wait()
    row.window_s = t_b - t_a
    row.cpu_ms_per_ps = per_participant_ms(cpu_b - cpu_a, legs, row.window_s)
    row.other_cpu_pct = _PERCENT * other_cores(host_a, host_b, row.window_s)
    row.rss_per_leg_kib = rss_per_leg_kib(rss_idle, rss_legs, legs)
    apply_load_report(row, report)
    return row


def run_floor(legs: int, timing: Timing) -> Row:
    row = Row(SYSTEM_FLOOR, legs, pinned=False)
    echo = start_echo(0)
    echo_report: EchoReport | None = None
    try:
        rss_idle = process_rss(echo.pid)
        leg_list = room_legs([0] * legs, [(LOOPBACK, echo.port)] * legs)
        with running_load(leg_list, timing, None) as load:
            time.sleep(timing.warmup_s)
            host_a = cpu_snapshot([echo.pid, load.pid])
            cpu_a = echo.cpu_seconds()
            t_a = time.monotonic()
            time.sleep(timing.seconds)
            cpu_b = echo.cpu_seconds()
            t_b = time.monotonic()
            host_b = cpu_snapshot([echo.pid, load.pid])
            rss_legs = process_rss(echo.pid)
            report = load.wait()
    finally:
        echo_report = echo.stop()
    row.window_s = t_b - t_a
    row.cpu_ms_per_ps = per_participant_ms(cpu_b - cpu_a, legs, row.window_s)
    row.other_cpu_pct = _PERCENT * other_cores(host_a, host_b, row.window_s)
    row.rss_per_leg_kib = rss_per_leg_kib(rss_idle, rss_legs, legs)
    apply_load_report(row, report)
    if echo_report is not None:
        if echo_report.ticks:
            row.on_time_pct = _PERCENT * (1 - echo_report.late_ticks / echo_report.ticks)
        row.rcvbuf_errors = echo_report.rcvbuf_errors
        row.extra["echo_legs_latched"] = echo_report.legs
    # The echo sends every leg the first source's frames (room 0's talker): only room 0's
    # sampled listener hears its own room's tone, so its latency is that one listener's.
    row.extra["e2e_scope"] = "room 0 only"
    return row


def guarded(run: Callable[[], Row], failed: Row) -> Row:
    """Run one row; an error becomes the row's note (and ends its series) instead of the run."""
    try:
        return run()
    except (BenchTimeoutError, KeyboardInterrupt):
        raise
    except Exception as exc:
        failed.note = f"failed: {type(exc).__name__}: {exc}"[:600]
        failed.stops_series = True
        return failed


def stop_reason(row: Row) -> str:
    """Why a ucbridge series ends at this row ('' if it goes on)."""
    if row.stops_series:
        return row.note
    reasons = []
    if row.on_time_pct is not None and row.on_time_pct < MIN_ON_TIME_PCT:
        reasons.append(f"ticks on time {row.on_time_pct:.2f} % < {MIN_ON_TIME_PCT} %")
    if row.generator_fell_behind:
        reasons.append("the load generator fell behind (the row's figures are not trustworthy)")
    return "; ".join(reasons)


# --- reporting -------------------------------------------------------------------------------


def nearest(rows: Sequence[Row], system: str, legs: int) -> Row | None:
    """The row of ``system`` at ``legs``, or at the nearest leg count measured."""
    candidates = [r for r in rows if r.system == system and r.cpu_ms_per_ps]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (abs(r.legs - legs), -r.legs))


def ratio(row: Row, rows: Sequence[Row], system: str) -> tuple[float | None, str]:
    """``row``'s CPU per participant-second over ``system``'s, and the reference's legs."""
    if row.system == system:
        return None, ""
    reference = nearest(rows, system, row.legs)
    if reference is None or row.cpu_ms_per_ps is None or reference.cpu_ms_per_ps is None:
        return None, ""
    value = row.cpu_ms_per_ps / reference.cpu_ms_per_ps
    return value, "" if reference.legs == row.legs else f" (vs {reference.legs})"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pair(a: float | None, b: float | None, digits: int = 1) -> str:
    if a is None and b is None:
        return "—"
    return f"{_num(a, digits)} / {_num(b, digits)}"


def _short(value: Any) -> str:
    """A figure for the *other* column: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


MAIN_HEADER: Final = (
    "system",
    "legs",
    "pinned",
    "CPU ms / participant-s",
    "× Janus",
    "× floor",
    "ticks on time %",
    "work p99 ms",
    "transit p50 / p99 ms",
    "transit excl. JB p50 / p99 ms",
    "e2e p50 / p99 ms",
    "RSS / leg KiB",
    "generator CPU %",
    "generator fell behind",
)


def main_table(rows: Sequence[Row]) -> list[list[str]]:
    table = []
    for row in rows:
        janus, janus_ref = ratio(row, rows, SYSTEM_JANUS)
        floor, floor_ref = ratio(row, rows, SYSTEM_FLOOR)
        table.append(
            [
                row.system,
                f"{row.legs:,}",
                "yes" if row.pinned else "no",
                _num(row.cpu_ms_per_ps, 3),
                "—" if janus is None else f"{janus:.3f}{janus_ref}",
                "—" if floor is None else f"{floor:.2f}{floor_ref}",
                _num(row.on_time_pct, 2),
                _num(row.work_p99_ms, 2),
                _pair(row.transit_p50_ms, row.transit_p99_ms),
                _pair(row.transit_excl_jb_p50_ms, row.transit_excl_jb_p99_ms),
                _pair(row.e2e_p50_ms, row.e2e_p99_ms),
                _num(row.rss_per_leg_kib, 1),
                _num(row.generator_cpu_pct, 0),
                _yes_no(row.generator_fell_behind),
            ]
        )
    return table


DETAIL_HEADER: Final = (
    "system",
    "legs",
    "pinned",
    "received %",
    "bursts heard",
    "RcvbufErrors Δ",
    "host busy before (CPUs)",
    "others in window (% of a CPU)",
    "stage p50 ms: receive / parse / jitter / decode / mix / encode / send",
    "other",
)


def detail_table(rows: Sequence[Row]) -> list[list[str]]:
    table = []
    for row in rows:
        stages = " / ".join(f"{v:.2f}" for v in row.stages_p50_ms.values()) or "—"
        bursts = (
            "—"
            if row.bursts_expected is None
            else f"{row.bursts_detected} of {row.bursts_expected}"
        )
        other = ", ".join(
            f"{k} {_short(v)}" for k, v in row.extra.items() if k != "generator_affinity"
        )
        table.append(
            [
                row.system,
                f"{row.legs:,}",
                "yes" if row.pinned else "no",
                _num(row.received_pct, 1),
                bursts,
                "—" if row.rcvbuf_errors is None else str(row.rcvbuf_errors),
                _num(row.host_busy_before_cores, 2),
                _num(row.other_cpu_pct, 0),
                stages,
                other or "—",
            ]
        )
    return table


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _find(rows: Sequence[Row], legs: int, pinned: bool) -> Row | None:
    for row in rows:
        if row.system == SYSTEM_UCBRIDGE and row.legs == legs and row.pinned == pinned:
            return row
    return None


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "**not measured**"}[met]


def targets(rows: Sequence[Row], series_end: dict[bool, str]) -> list[str]:
    """The targets of DESIGN.md, each stated plainly as met, not met or not measured."""
    ours = [r for r in rows if r.system == SYSTEM_UCBRIDGE and r.cpu_ms_per_ps is not None]
    lines = []

    janus_rows = {r.legs for r in rows if r.system == SYSTEM_JANUS and r.cpu_ms_per_ps}
    same = [(r, ratio(r, rows, SYSTEM_JANUS)[0]) for r in ours if r.legs in janus_rows]
    if same:
        worst_row, worst = max(same, key=lambda p: p[1] or 0.0)
        met = all(v is not None and v <= MAX_JANUS_RATIO for _, v in same)
        detail = ", ".join(
            f"{r.legs:,} {'pinned' if r.pinned else 'unpinned'} {v:.3f}×" for r, v in same if v
        )
        lines.append(
            f"- ≤ {MAX_JANUS_RATIO}× Janus CPU per participant-second: {_verdict(met)} "
            f"(same leg counts: {detail}; worst {worst:.3f}× at {worst_row.legs:,})."
        )
    else:
        lines.append(
            f"- ≤ {MAX_JANUS_RATIO}× Janus CPU per participant-second: {_verdict(None)} "
            "(no ucbridge and Janus rows at the same leg count)."
        )

    for legs, pinned in ON_TIME_TARGETS:
        label = f"≥ {MIN_ON_TIME_PCT} % ticks on time at {legs:,} legs " + (
            "pinned" if pinned else "unpinned"
        )
        row = _find(rows, legs, pinned)
        if row is None or row.on_time_pct is None:
            why = series_end.get(pinned) or f"{legs:,} legs were not part of this run"
            lines.append(f"- {label}: {_verdict(None)} ({why}).")
            continue
        met = row.on_time_pct >= MIN_ON_TIME_PCT and not row.generator_fell_behind
        extra = "; the generator fell behind" if row.generator_fell_behind else ""
        lines.append(
            f"- {label}: {_verdict(met)} ({row.on_time_pct:.2f} %, "
            f"work p99 {_num(row.work_p99_ms, 2)} ms{extra})."
        )

    excl = [r for r in ours if r.transit_excl_jb_p99_ms is not None]
    if excl:
        worst_row = max(excl, key=lambda r: r.transit_excl_jb_p99_ms or 0.0)
        negative = [r for r in excl if (r.transit_excl_jb_p50_ms or 0.0) < 0]
        met_excl = all((r.transit_excl_jb_p99_ms or 0.0) <= MAX_TRANSIT_P99_MS for r in excl)
        total_worst = max((r.transit_p99_ms or 0.0) for r in excl)
        line = (
            f"- Transit p99 ≤ {MAX_TRANSIT_P99_MS:.0f} ms, jitter buffer excluded: "
            f"{_verdict(met_excl)} (worst {worst_row.transit_excl_jb_p99_ms:.1f} ms at "
            f"{worst_row.legs:,} {'pinned' if worst_row.pinned else 'unpinned'}; "
            f"with the jitter buffer, worst {total_worst:.1f} ms)"
        )
        if negative:
            line += (
                ". Caution: the worker's excl.-JB figures go below zero in "
                f"{len(negative)} row(s), so the jitter-buffer time it subtracts is "
                "overstated and this verdict rests on a figure that is wrong"
            )
        lines.append(line + ".")
    else:
        lines.append(f"- Transit p99 ≤ {MAX_TRANSIT_P99_MS:.0f} ms: {_verdict(None)}.")

    rss = [r for r in ours if r.rss_per_leg_kib is not None]
    if rss:
        worst_row = max(rss, key=lambda r: r.rss_per_leg_kib or 0.0)
        met = all((r.rss_per_leg_kib or 0.0) <= MAX_RSS_PER_LEG_KIB for r in rss)
        lines.append(
            f"- ≤ {MAX_RSS_PER_LEG_KIB:.0f} KiB RSS per leg (media worker): {_verdict(met)} "
            f"(worst {worst_row.rss_per_leg_kib:.1f} KiB at {worst_row.legs:,} legs)."
        )

    floors = [(r, ratio(r, rows, SYSTEM_FLOOR)) for r in ours]
    floors = [(r, v) for r, v in floors if v[0] is not None]
    if floors:
        met = all((v[0] or 0.0) <= MAX_FLOOR_RATIO for _, v in floors)
        best_row, best = min(floors, key=lambda p: p[1][0] or 0.0)
        lines.append(
            f"- Within {MAX_FLOOR_RATIO}× the kernel floor (DESIGN.md's aim behind the Janus "
            f"target): {_verdict(met)} (best {best[0]:.2f}× at {best_row.legs:,}{best[1]})."
        )
    return lines


def section(
    rows: Sequence[Row],
    machine: Machine,
    load_after: tuple[float, float, float],
    command: str,
    timing: Timing,
    series_end: dict[bool, str],
    janus_version: str,
    elapsed_s: float,
    quiet_wait: float,
) -> str:
    ours_stop = [r for r in rows if r.system == SYSTEM_UCBRIDGE and r.stops_series]
    stops = [
        f"- {'Pinned' if r.pinned else 'Unpinned'} ucbridge series stopped at {r.legs:,} legs: "
        f"{r.note}."
        for r in ours_stop
    ]
    notes = [
        f"- {r.system} at {r.legs:,}: {r.note}"
        for r in rows
        if r.note and not (r.system == SYSTEM_UCBRIDGE and r.stops_series)
    ]
    before, after = machine.load_before, load_after
    parts = [
        MARK_START,
        "## Mixing capacity (issue 9)",
        "",
        f"Measured {machine.date} on {machine.nproc} CPUs ({machine.cpu_model}), "
        f"{machine.kernel}, Python {machine.python}"
        + (f", Janus {janus_version}" if janus_version else "")
        + f". Load average {before[0]:.2f} / {before[1]:.2f} / {before[2]:.2f} (1/5/15 min) "
        f"before the run and {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f} after it; "
        f"the run took {elapsed_s / 60:.1f} min.",
        "",
        "Reproduce from the repository root (nothing else heavy running):",
        "",
        "```sh",
        command,
        "```",
        "",
        f"G.711 µ-law legs at real-time pace, rooms of {ROOM_SIZE} with one talker each (1 s "
        "tone bursts) and nine listeners sending noise at -50 dBov, all from one load generator "
        "process. Each row is a fresh process of the system under test; "
        f"{timing.warmup_s:g} s warm-up, then a {timing.seconds:g} s window. Pinned: the "
        f"media worker on CPU {WORKER_CPU}, the generator on CPU {LOAD_CPU}; unpinned: both "
        "free. Janus and the echo run unpinned. A series stops at its first row under 99.9 % "
        "ticks on time, whose generator fell behind, or where admission control refused a join "
        f"while the legs were being joined. Before each row the run waits up to {quiet_wait:g} s "
        f"for the host to be busy below {QUIET_CORES} CPUs (the reading is in *Detail*); a "
        "ucbridge row that would stop its series while other programs used more than "
        f"{RETRY_OTHERS_PCT:.0f} % of a CPU in its window is measured once more (*Detail* "
        "says so under *retried*).",
        "",
        markdown_table(MAIN_HEADER, main_table(rows)),
        "",
        *(stops or ["- Neither ucbridge series was stopped (99.9 % on time, generator on time)."]),
        *notes,
        "",
        "### Targets",
        "",
        *targets(rows, series_end),
        "",
        "### How each figure is taken",
        "",
        "- CPU ms per participant-second: Δ process CPU over the window / (legs × window). "
        "ucbridge: the media worker's `cpu_s` from `GET /api/workers` (the control process's "
        "share is under *other*); Janus: its whole process; floor: the echo process. "
        "× Janus and × floor compare with the row at the same leg count, or the nearest one "
        "measured (named in brackets).",
        "- Ticks on time: 1 − (Δ late + Δ skipped) / (Δ ticks + Δ skipped) over the window; "
        "a tick is late when its work ends after the next tick's deadline. The floor's figure "
        "is its own count over its whole run (late when it starts > 10 ms behind).",
        "- Work p99: the largest of the worker's 10 s sliding p99 tick work, read every "
        f"{POLL_S:g} s once the sliding window lies wholly after the first second of load "
        "(with windows shorter than that: the last reading).",
        "- Transit (ucbridge only): kernel receive timestamp of a mixed frame → return of "
        "`sendmmsg`; the median of the worker's p50 readings and the largest of its p99 "
        "readings over the window (each covers its last 16,384 mixed frames). "
        "*excl. JB* subtracts each frame's own time in the jitter buffer, from the tick "
        "that took it in to the tick that mixed it; the wait in the socket for the next "
        "tick and the tick's work stay in.",
        "- e2e: tone onset sent by a talker → tone onset heard by a sampled listener (one per "
        "room, at most 64), from the generator's kernel timestamps, over its whole run "
        "(warm-up included). For the floor, only room 0's listener hears its own room's tone.",
        "- RSS per leg: (RSS with the legs − RSS of the fresh, idle process) / legs; ucbridge's "
        "figure is the media worker's (the control process's is under *other*).",
        "- Generator CPU and fell behind: the generator's own report; when it fell behind, "
        "the row's figures are not trustworthy.",
        "- Others in window (*Detail*): the host's busy time (/proc/stat) minus the CPU time of "
        "the system under test and the generator, in % of one CPU. Kernel work done for them "
        "outside their own context (loopback softirqs) lands here too, so a few % are normal; "
        "much more means another program shared the machine during that row.",
        "",
        "### Detail",
        "",
        markdown_table(DETAIL_HEADER, detail_table(rows)),
        MARK_END,
    ]
    return "\n".join(parts) + "\n"


# --- the run ---------------------------------------------------------------------------------


def _leg_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of leg counts: {text}") from None
    if not values or min(values) < ROOM_SIZE:
        raise argparse.ArgumentTypeError(f"leg counts must be at least {ROOM_SIZE}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 and 500 legs, 8 s windows")
    parser.add_argument("--legs", type=_leg_list, help="ucbridge leg counts (200,500,1000,2000)")
    parser.add_argument("--seconds", type=float, help="measurement window per row (20)")
    parser.add_argument("--warmup", type=float, help="warm-up before each window (5)")
    parser.add_argument("--janus-legs", type=_leg_list, help="Janus leg counts (200,500)")
    parser.add_argument("--floor-legs", type=_leg_list, help="echo leg counts")
    parser.add_argument("--no-janus", action="store_true")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--output",
        type=Path,
        help="the Markdown file whose section is rewritten (BENCHMARKS.md; with --quick, "
        "nothing is written unless this is given)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help=f"seconds to wait before each row for the host to go quiet "
        f"(< {QUIET_CORES} CPUs busy; {DEFAULT_QUIET_WAIT_S:g}, 0 with --quick)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.legs = args.legs or list(QUICK_LEGS if quick else DEFAULT_LEGS)
    args.seconds = args.seconds or (QUICK_SECONDS if quick else DEFAULT_SECONDS)
    args.warmup = (
        args.warmup if args.warmup is not None else (QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S)
    )
    args.janus_legs = args.janus_legs or list(JANUS_LEGS)
    if args.output is None:
        # A smoke test must not replace the full run's figures.
        args.no_write = args.no_write or quick
        args.output = DEFAULT_OUTPUT
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else DEFAULT_QUIET_WAIT_S
    if args.floor_legs is None:
        wanted = [n for n in args.legs if n in FLOOR_LEGS] or [min(args.legs)]
        args.floor_legs = wanted[-1:] if quick else wanted
    return args


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchTimeoutError("the benchmark ran past --max-minutes")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def run(
    args: argparse.Namespace,
    progress: Callable[[str], None],
    rows: list[Row],
    series_end: dict[bool, str],
) -> None:
    """Floor, Janus, then both ucbridge series; rows are appended as they finish."""
    timing = Timing(args.warmup, args.seconds)

    def measure(title: str, run_row: Callable[[], Row], failed: Row) -> Row:
        progress(title)
        busy = wait_for_quiet(args.quiet_wait, QUIET_CORES)
        row = guarded(run_row, failed)
        row.host_busy_before_cores = busy
        rows.append(row)
        progress(
            f"  {row.system} {row.legs} {'pinned' if row.pinned else 'unpinned'}: "
            f"{_num(row.cpu_ms_per_ps, 3)} ms/participant-s, on time {_num(row.on_time_pct, 2)} %, "
            f"generator {_num(row.generator_cpu_pct, 0)} % behind={row.generator_fell_behind}, "
            f"host busy before {busy:.2f} CPUs, others {_num(row.other_cpu_pct, 0)} % of a CPU"
            + (f" — {row.note}" if row.note else "")
        )
        return row

    if not args.no_floor:
        for legs in args.floor_legs:
            measure(
                f"kernel floor, {legs} legs",
                functools.partial(run_floor, legs, timing),
                Row(SYSTEM_FLOOR, legs, False),
            )
    if not args.no_janus:
        for legs in args.janus_legs:
            measure(
                f"Janus AudioBridge, {legs} legs",
                functools.partial(run_janus, legs, timing),
                Row(SYSTEM_JANUS, legs, False),
            )
    for pinned in (False, True):
        for legs in args.legs:
            title = f"ucbridge, {legs} legs, {'pinned' if pinned else 'unpinned'}"
            run_row = functools.partial(run_ucbridge, legs, pinned, timing)
            row = measure(title, run_row, Row(SYSTEM_UCBRIDGE, legs, pinned))
            reason = stop_reason(row)
            if reason and not args.quick and (row.other_cpu_pct or 0.0) > RETRY_OTHERS_PCT:
                # Another program shared the host during the window: measure the row once
                # more, and keep what the first attempt saw beside the second.
                rows.remove(row)
                first = (
                    f"first attempt discarded ({reason}) because other programs used "
                    f"{row.other_cpu_pct:.0f} % of a CPU during its window"
                )
                row = measure(title + " (again)", run_row, Row(SYSTEM_UCBRIDGE, legs, pinned))
                row.extra["retried"] = first
                reason = stop_reason(row)
            if reason:
                row.stops_series = True
                if not row.note:
                    row.note = reason
                series_end[pinned] = f"stopped at {legs:,} legs: {reason}"
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = reproduce_command(
        SCRIPT, sys.argv[1:] if argv is None else argv, OUTPUT_OPTIONS, OUTPUT_FLAGS
    )
    machine = Machine.probe()
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    progress(
        f"load average {machine.load_before[0]:.2f}; legs {args.legs}, window {args.seconds:g} s"
    )
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(max(1, round(args.max_minutes * 60)))
    rows: list[Row] = []
    series_end: dict[bool, str] = {}
    aborted = ""
    try:
        run(args, progress, rows, series_end)
    except BenchTimeoutError as exc:
        aborted = str(exc)
    finally:
        signal.alarm(0)
    elapsed = time.monotonic() - started
    load_after = load_average()
    janus_version = next((str(r.extra["version"]) for r in rows if r.extra.get("version")), "")

    print()
    print(text_table(MAIN_HEADER, main_table(rows)))
    print()
    print("\n".join(targets(rows, series_end)))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": dataclasses.asdict(machine),
                    "load_after": load_after,
                    "command": command,
                    "rows": [dataclasses.asdict(r) for r in rows],
                    "series_end": {str(k): v for k, v in series_end.items()},
                },
                indent=1,
            )
        )
    if aborted:
        print(f"\n{aborted}: the table above is partial and {args.output.name} was not written")
        return 1
    if not args.no_write:
        text = section(
            rows,
            machine,
            load_after,
            command,
            Timing(args.warmup, args.seconds),
            series_end,
            janus_version,
            elapsed,
            args.quiet_wait,
        )
        write_section(args.output, text, MARK_START, MARK_END)
        print(f"\nwrote {args.output.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
