"""WebRTC audio legs in one room: gateway CPU per leg, transit latency, worker ticks (issue 12).

A fresh ``ucbridge serve`` (one media worker, the WebRTC gateway on 127.0.0.1) and one
open room. ``--legs`` aiortc clients in a separate load process each connect as a browser
would (socket.io ``webrtc_offer``, DTLS-SRTP, Opus 48 kHz). Client 0 talks: tone bursts of
1000 Hz, one per :data:`BURST_PERIOD_S`, the rest silence; the others send low noise.
Measured over ``--seconds``:

- CPU of the gateway process and of the media worker, per leg (ms per leg-second);
- transit latency, mouth to ear through both aiortc stacks, the gateway twice and the
  worker's mix: from the first sample of a burst at client 0 to its onset in what client 1
  decodes (both in the load process, one clock). aiortc's own jitter buffers are in it;
- the media worker's ticks on time and its p99 tick work, from ``/api/workers``;
- the load process's CPU, so a client limit is never read as a bridge limit.

The table goes to ``BENCHMARKS.md`` between the ``bench_webrtc`` markers. Run from the
repository root::

    .venv/bin/python tests/perf/bench_webrtc.py [--legs 2,10,20] [--seconds 30]

Every process it starts is stopped by its PID, on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import multiprocessing
import multiprocessing.connection
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import UcbridgeServer, process_cpu_s, write_section

MARK_START: Final = "<!-- bench_webrtc:start -->"
MARK_END: Final = "<!-- bench_webrtc:end -->"
SCRIPT: Final = "tests/perf/bench_webrtc.py"
ROOM: Final = "bench-webrtc"
BURST_HZ: Final = 1000.0
BURST_PERIOD_S: Final = 2.0
BURST_S: Final = 0.6
ONSET_SHARE: Final = 0.5
CONNECT_TIMEOUT_S: Final = 60.0
GATEWAY_TOML: Final = (
    "[gateways.sip]\nenabled = false\n[gateways.camera]\nenabled = false\n"
    '[gateways.webrtc]\nenabled = true\ninterfaces = ["127.0.0.1"]\nmax_sessions = 500\n'
)


@dataclass
class Row:
    legs: int
    connected: int
    seconds: float
    gateway_ms_per_leg_s: float
    worker_ms_per_leg_s: float
    load_cores: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    bursts: int
    on_time_pct: float | None
    work_p99_ms: float | None


# ----------------------------------------------------------------- load process
def _clients(base: str, tokens: list[str], seconds: float, conn: Any) -> None:
    try:
        conn.send(asyncio.run(_run_clients(base, tokens, seconds, conn)))
    except Exception as exc:  # reported to the parent, which fails loudly
        conn.send({"error": repr(exc)})


async def _run_clients(base: str, tokens: list[str], seconds: float, conn: Any) -> dict[str, Any]:
    import av
    import socketio
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    bursts: list[float] = []

    class Mic(MediaStreamTrack):
        kind = "audio"

        def __init__(self, talker: bool) -> None:
            super().__init__()
            self.talker = talker
            self.pts = 0
            self.start = time.monotonic()
            self.rng = np.random.default_rng()

        async def recv(self) -> Any:
            due = self.start + self.pts / 48000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            t = self.pts / 48000
            phase = t % BURST_PERIOD_S
            if self.talker and phase < BURST_S:
                if phase < 0.02:
                    bursts.append(time.monotonic())
                n = np.arange(960) + self.pts
                pcm = (8000 * np.sin(2 * np.pi * BURST_HZ * n / 48000)).astype(np.int16)
            else:
                pcm = self.rng.normal(0, 30, 960).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = self.pts
            frame.time_base = fractions.Fraction(1, 48000)
            self.pts += 960
            return frame

    onsets: list[float] = []

    async def listen(track: Any) -> None:
        loud = False
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1, 2)[:, 0].astype(np.float64)
                spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
                freqs = np.fft.rfftfreq(len(pcm), 1 / 48000)
                total = float(spectrum.sum()) or 1.0
                share = float(spectrum[np.abs(freqs - BURST_HZ) < 60].sum()) / total
                now_loud = share > ONSET_SHARE and float(np.abs(pcm).max()) > 1000
                if now_loud and not loud:
                    onsets.append(time.monotonic())
                loud = now_loud

    pcs: list[Any] = []
    sios: list[Any] = []
    connected = 0
    tasks = []
    for i, token in enumerate(tokens):
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(base, namespaces=["/rooms"], auth={"token": token}, wait_timeout=10)
        sios.append(sio)
        pc = RTCPeerConnection()
        pcs.append(pc)
        pc.addTrack(Mic(talker=i == 0))
        if i == 1:
            pc.on("track", lambda track: tasks.append(asyncio.ensure_future(listen(track))))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await sio.call(
            "webrtc_offer",
            {"room": ROOM, "sdp": pc.localDescription.sdp, "session": f"bench{i}"},
            namespace="/rooms",
            timeout=30,
        )
        if not answer.get("ok"):
            raise RuntimeError(f"offer {i} refused: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        connected = sum(1 for pc in pcs if pc.connectionState == "connected")
        if connected == len(pcs):
            break
        await asyncio.sleep(0.1)
    conn.send({"connected": connected})  # the parent samples CPU from here on
    process = psutil.Process()
    cpu0 = sum(process.cpu_times()[:2])
    start = time.monotonic()
    bursts.clear()
    onsets.clear()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - start
    cpu = sum(process.cpu_times()[:2]) - cpu0
    latencies = []
    for burst in bursts:
        after = [o - burst for o in onsets if 0 <= o - burst < BURST_PERIOD_S / 2]
        if after:
            latencies.append(min(after) * 1000)
    for pc in pcs:
        await pc.close()
    for sio in sios:
        await sio.disconnect()
    return {
        "connected": connected,
        "latencies_ms": latencies,
        "bursts": len(bursts),
        "load_cores": cpu / wall,
        "started": start,
    }


# ------------------------------------------------------------------- one row
def run_row(legs: int, seconds: float) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        server = UcbridgeServer(
            Path(tmp),
            extra_toml=f'[gateways]\nruntime_dir = "{Path(tmp) / "run"}"\n' + GATEWAY_TOML,
        )
        server.start()
        try:
            health = server.wait_health(
                lambda h: all(g["state"] == "running" for g in h.get("gateways", [])), 30.0
            )
            gateway_pid = next(g["pid"] for g in health["gateways"] if g["name"] == "webrtc")
            worker_pid = health["workers"][0]["pid"]
            server.api.ok("POST", "/api/rooms", {"name": ROOM, "mode": "open"})
            tokens = [server.authority.issue(f"bench-{i}", _dispatcher()) for i in range(legs)]
            ours, theirs = multiprocessing.Pipe(duplex=False)
            load = multiprocessing.get_context("spawn").Process(
                target=_clients, args=(f"http://127.0.0.1:{server.port}", tokens, seconds, theirs)
            )
            load.start()
            try:
                # CPU over the load process's measuring window only, not the handshakes.
                if not ours.poll(CONNECT_TIMEOUT_S + 60):
                    raise RuntimeError("the load process did not connect")
                first = ours.recv()
                if "error" in first:
                    raise RuntimeError(f"load process failed: {first['error']}")
                cpu_before = (process_cpu_s(gateway_pid), process_cpu_s(worker_pid))
                ticks_before = _ticks(server)
                t0 = time.monotonic()
                if not ours.poll(seconds + 60):
                    raise RuntimeError("the load process did not report")
                result = ours.recv()
                wall = time.monotonic() - t0
                cpu_after = (process_cpu_s(gateway_pid), process_cpu_s(worker_pid))
                ticks_after = _ticks(server)
            finally:
                load.join(10)
                if load.is_alive():
                    load.kill()
                    load.join()
            if "error" in result:
                raise RuntimeError(f"load process failed: {result['error']}")
            leg_s = legs * wall
            latencies = sorted(result["latencies_ms"])
            ticks = ticks_after[0] - ticks_before[0]
            late = ticks_after[1] - ticks_before[1]
            return Row(
                legs=legs,
                connected=result["connected"],
                seconds=seconds,
                gateway_ms_per_leg_s=(cpu_after[0] - cpu_before[0]) * 1000 / leg_s,
                worker_ms_per_leg_s=(cpu_after[1] - cpu_before[1]) * 1000 / leg_s,
                load_cores=result["load_cores"],
                latency_p50_ms=_percentile(latencies, 50),
                latency_p95_ms=_percentile(latencies, 95),
                bursts=len(latencies),
                on_time_pct=100.0 * (ticks - late) / ticks if ticks else None,
                work_p99_ms=ticks_after[2],
            )
        finally:
            server.stop()


def _dispatcher() -> Any:
    from bridge.web.auth import Role

    return Role.DISPATCHER


def _ticks(server: UcbridgeServer) -> tuple[int, int, float | None]:
    worker = server.health()["workers"][0]
    return (
        int(worker.get("ticks") or 0),
        int(worker.get("late_ticks") or 0),
        worker.get("work_p99_ms"),
    )


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        MARK_START,
        "## WebRTC audio legs in one room (issue 12)",
        "",
        f"`{SCRIPT} --legs {args.legs} --seconds {args.seconds}`; aiortc clients in a separate "
        "process as load (Opus 48 kHz, DTLS-SRTP), one open room, one talker (tone bursts), "
        "the others sending low noise. Gateway and worker CPU per leg-second; transit is "
        "mouth to ear (client 0's burst onset to its onset in client 1's decoded audio, "
        "through both aiortc stacks, the gateway twice and the mix).",
        "",
        "| legs | connected | gateway ms/leg-s | worker ms/leg-s | transit p50 ms | "
        "transit p95 ms | bursts | ticks on time % | tick work p99 ms | load cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.legs} | {r.connected} | {_fmt(r.gateway_ms_per_leg_s, 2)} | "
            f"{_fmt(r.worker_ms_per_leg_s, 3)} | {_fmt(r.latency_p50_ms)} | "
            f"{_fmt(r.latency_p95_ms)} | {r.bursts} | {_fmt(r.on_time_pct, 2)} | "
            f"{_fmt(r.work_p99_ms, 2)} | {_fmt(r.load_cores, 2)} |"
        )
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", default="2,10,20", help="comma-separated leg counts")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print, do not write the file")
    args = parser.parse_args()
    rows = []
    for legs in [int(n) for n in args.legs.split(",")]:
        if legs < 2:
            parser.error("at least 2 legs (one talker, one listener)")
        row = run_row(legs, args.seconds)
        print(row, flush=True)
        rows.append(row)
    text = report(rows, args)
    print(text)
    if not args.no_write:
        write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
