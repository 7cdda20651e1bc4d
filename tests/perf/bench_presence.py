"""Presence fan-out under load: GPS reports to socket.io consoles while the worker mixes.

Issue 11's benchmark: R GPS reports a second, evenly spread, go over REST in batches (the
fixes of each 10 ms in one ``POST /api/presence/reports``, one process) and are fanned out
to C socket.io consoles (``/presence``, another process) for S seconds, while the media
worker mixes L plain-RTP legs from the batched load generator (a third process); one row,
on a fresh server, per leg count L. It reports the delivery latency (the moment of the fix
→ the console has the batch holding it) p50/p99, the control process's CPU, the worker's
ticks on time, and writes them to BENCHMARKS.md between the ``bench_presence`` markers.

    .venv/bin/python tests/perf/bench_presence.py [--reports 1000] [--consoles 20]
        [--seconds 60] [--legs 0,1000] [--units 200]

Everything runs on 127.0.0.1 and stops by PID at the end, failure or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from bench_common import (
    LOOPBACK,
    Machine,
    UcbridgeServer,
    close_all,
    port_of,
    process_cpu_s,
    reserve_udp_ports,
    write_section,
)
from bench_mixing import join_ucbridge
from loadgen import start_load

from bridge.config import DEFAULT_PRESENCE_RATE_HZ
from bridge.web.auth import Role

MARK_START = "<!-- bench_presence:start -->"
MARK_END = "<!-- bench_presence:end -->"
#: Concurrent HTTP requests the reporter keeps in flight.
REPORTER_CONNECTIONS = 8
#: The reporter sends the fixes of each period in one batch request.
BATCH_PERIOD_S = 0.01
BATCH_PATH = "/api/presence/reports"
#: DESIGN.md's targets: delivery p99, and the worker's ticks on time while it mixes.
TARGET_P99_MS = 250
TARGET_ON_TIME_PCT = 99.9
#: Units move inside this box (around Paris), a small step per report.
ORIGIN = (48.85, 2.35)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# --- the consoles (a process of their own) ---------------------------------------------------
async def _consoles(url: str, token: str, count: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    batches = 0
    clients = []
    for _ in range(count):
        client = socketio.AsyncClient(reconnection=False)

        @client.on("presence", namespace="/presence")  # type: ignore[misc]
        async def on_presence(payload: dict[str, Any]) -> None:
            nonlocal batches
            now = time.time()
            batches += 1
            for feature in payload.get("features", []):
                sent = feature["properties"].get("time")
                if sent:
                    stamp = datetime.fromisoformat(sent.replace("Z", "+00:00")).timestamp()
                    latencies.append((now - stamp) * 1000)

        await client.connect(
            url, namespaces=["/presence"], auth={"token": token}, transports=["websocket"]
        )
        await client.call("subscribe", {}, namespace="/presence")
        clients.append(client)
    await asyncio.sleep(seconds)
    for client in clients:
        await client.disconnect()
    return {"latencies_ms": latencies, "batches": batches}


def _consoles_main(url: str, token: str, count: int, seconds: float, out: Any) -> None:
    out.send(asyncio.run(_consoles(url, token, count, seconds)))


# --- the reporter (a process of its own) -----------------------------------------------------
def _fix(i: int, units: int, at: float) -> dict[str, Any]:
    step = i // units
    return {
        "unit": f"unit-{i % units}",
        "lat": ORIGIN[0] + 1e-4 * (step % 100),
        "lon": ORIGIN[1] + 1e-4 * (i % units),
        "time": at,
        "kind": "trunk",
        "interval": 1.0,
    }


async def _reporter(base: str, token: str, rate: int, units: int, seconds: float) -> dict[str, Any]:
    """Fix ``i`` happens at ``start + i / rate`` (evenly spread, stamped with that moment);
    every :data:`BATCH_PERIOD_S` the fixes that happened since the last request go in one
    ``POST /api/presence/reports``, so a fix waits at most one period before it is sent."""
    accepted = rejected = errors = late = requests = 0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=REPORTER_CONNECTIONS)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:
        gate = asyncio.Semaphore(REPORTER_CONNECTIONS)

        async def send(batch: list[dict[str, Any]]) -> None:
            nonlocal accepted, rejected, errors, requests
            try:
                async with session.post(BATCH_PATH, json={"reports": batch}) as resp:
                    answer = await resp.json()
                    requests += 1
                    if resp.status != 200:
                        errors += len(batch)
                    else:
                        accepted += answer["accepted"]
                        rejected += len(answer["rejected"])
            except aiohttp.ClientError:
                errors += len(batch)
            finally:
                gate.release()

        start = time.monotonic()
        wall = time.time()
        total = int(rate * seconds)
        tasks = set()
        sent = period = 0
        while sent < total:
            period += 1
            delay = start + period * BATCH_PERIOD_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                late += 1
            due = min(total, int(period * BATCH_PERIOD_S * rate))
            if due <= sent:
                continue
            batch = [_fix(i, units, wall + i / rate) for i in range(sent, due)]
            sent = due
            await gate.acquire()
            task = asyncio.create_task(send(batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    return {
        "sent": accepted,
        "rejected": rejected,
        "errors": errors + rejected,
        "late": late,
        "requests": requests,
        "rate": accepted / elapsed if elapsed else 0.0,
    }


def _reporter_main(base: str, token: str, rate: int, units: int, seconds: float, out: Any) -> None:
    out.send(asyncio.run(_reporter(base, token, rate, units, seconds)))


# --- the run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace, legs_count: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        server = UcbridgeServer(Path(tmp))
        # Admission control off: the row reports the ticks on time it measured instead.
        text = server.config.read_text()
        server.config.write_text(text.replace("[media]\n", "[media]\ntick_budget = 1.0\n", 1))
        load = None
        procs: list[Any] = []
        try:
            health = server.start()
            worker_pid = health["workers"][0]["pid"]
            sockets = reserve_udp_ports(legs_count)
            ports = [port_of(s) for s in sockets]
            legs = join_ucbridge(server, ports)
            close_all(sockets)
            if legs:  # --legs 0: presence alone
                load = start_load(legs, args.seconds + 10)
                load.ready()
                time.sleep(3)  # the worker's p99 window fills with loaded ticks
            base = f"http://{LOOPBACK}:{server.port}"
            token = server.authority.issue("bench-console", Role.DISPATCHER)
            console_rx, console_tx = context.Pipe(duplex=False)
            reporter_rx, reporter_tx = context.Pipe(duplex=False)
            consoles = context.Process(
                target=_consoles_main,
                args=(base, token, args.consoles, args.seconds + 2, console_tx),
            )
            consoles.start()
            procs.append(consoles)
            time.sleep(2)  # every console has connected and subscribed
            before_control = process_cpu_s(server.pid)
            before_worker = server.workers()[0]["tick"]
            reporter = context.Process(
                target=_reporter_main,
                args=(base, token, args.reports, args.units, args.seconds, reporter_tx),
            )
            reporter.start()
            procs.append(reporter)
            sent = reporter_rx.recv()
            control_cpu = process_cpu_s(server.pid) - before_control
            after_worker = server.workers()[0]["tick"]
            heard = console_rx.recv()
            for proc in procs:
                proc.join(10)
            ticks = after_worker["ticks"] - before_worker["ticks"]
            late = after_worker["late_ticks"] - before_worker["late_ticks"]
            latencies = heard["latencies_ms"]
            return {
                "machine": Machine.probe(),
                "worker_pid": worker_pid,
                "reports_per_s": sent["rate"],
                "reports_sent": sent["sent"],
                "requests_per_s": sent["requests"] / args.seconds,
                "report_errors": sent["errors"],
                "reporter_late": sent["late"],
                "consoles": args.consoles,
                "batches": heard["batches"],
                "deliveries": len(latencies),
                "latency_p50_ms": statistics.median(latencies) if latencies else None,
                "latency_p99_ms": _percentile(latencies, 99),
                "control_cpu_pct": 100 * control_cpu / args.seconds,
                "ticks_on_time_pct": 100 * (1 - late / ticks) if ticks else None,
                "worker_work_p99_ms": after_worker["work_p99_ms"],
                "legs": legs_count,
                "seconds": args.seconds,
            }
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            if load is not None:
                with contextlib.suppress(Exception):
                    load.stop()
            server.stop()


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def section(results: Sequence[dict[str, Any]], command: str) -> str:
    first = results[0]
    m: Machine = first["machine"]
    rate = DEFAULT_PRESENCE_RATE_HZ
    rows = [
        f"| {r['legs']} | {r['reports_per_s']:.0f} | {r['consoles']} | {r['deliveries']} | "
        f"{fmt(r['latency_p50_ms'])} | {fmt(r['latency_p99_ms'])} | "
        f"{r['control_cpu_pct']:.0f} | {fmt(r['ticks_on_time_pct'])} | "
        f"{fmt(r['worker_work_p99_ms'])} | {r['report_errors']} |"
        for r in results
    ]
    verdicts = [
        f"- {r['legs']} legs mixed: delivery p99 ≤ {TARGET_P99_MS} ms: "
        + _verdict((r["latency_p99_ms"] or 1e9) <= TARGET_P99_MS)
        + (
            f"; the worker stays ≥ {TARGET_ON_TIME_PCT} % on time: "
            + _verdict((r["ticks_on_time_pct"] or 0) >= TARGET_ON_TIME_PCT)
            if r["legs"]
            else ""
        )
        + "."
        for r in results
    ]
    return "\n".join(
        [
            MARK_START,
            "## Presence fan-out (issue 11)",
            "",
            f"Measured {m.date} on {m.nproc} CPUs ({m.cpu_model}), {m.kernel}, Python {m.python}; "
            f"load average before {m.load_before[0]:.2f}. Reproduce from the repository root:",
            "",
            f"```sh\n{command}\n```",
            "",
            f"{first['reports_per_s']:.0f} GPS reports/s, evenly spread, over REST in "
            f"batches (`POST {BATCH_PATH}` with the fixes of each "
            f"{BATCH_PERIOD_S * 1000:.0f} ms, {first['requests_per_s']:.0f} requests/s, one "
            "process; latency counts from the moment of each fix) fanned out to "
            f"{first['consoles']} socket.io consoles (another process) for "
            f"{first['seconds']:.0f} s, while the media worker mixed the row's G.711 legs from "
            "the batched load generator (a third process); each row is a fresh server. "
            f"Consoles are coalesced at {rate:g} Hz (`console.presence_rate_hz`; one batch per "
            "period, serialised once and sent to every console), so a fix waits up to "
            f"{1000 / rate:.0f} ms for the next batch by design. Admission control is off "
            "(`media.tick_budget = 1`) so that all legs join. The row without legs is the "
            "presence path alone; the issue's figure is the row with 1000.",
            "",
            "| legs mixed | reports/s | consoles | deliveries | latency p50 ms | latency p99 ms "
            "| control CPU % of a core | worker ticks on time % | worker work p99 ms "
            "| report errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Targets:",
            "",
            *verdicts,
            MARK_END,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reports", type=int, default=1000, help="GPS reports per second")
    parser.add_argument("--consoles", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--legs",
        default="0,1000",
        help="G.711 legs the worker mixes: one row per comma-separated count",
    )
    parser.add_argument("--units", type=int, default=200, help="distinct units reporting")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.legs.split(",")]
    results = [run(args, n) for n in counts]
    command = (
        f".venv/bin/python tests/perf/bench_presence.py --reports {args.reports} "
        f"--consoles {args.consoles} --seconds {args.seconds:g} --legs {args.legs} "
        f"--units {args.units}"
    )
    text = section(results, command)
    print(text)
    write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
