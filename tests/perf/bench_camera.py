"""Camera benchmark: N RTSP cameras (720p25 H.264) to V viewers each, on one node.

A real ``ucbridge serve`` runs the camera gateway in its own process; GStreamer's RTSP server
(Debian packages, the system python3) plays N cameras from one x264 encoder (one pipeline
shared by every mount, so the load generator stays small). V viewers per camera subscribe
to the video bus as the WebRTC gateway does. Reported: frames delivered, frame latency from
the gateway's ingest stamp (``EncodedFrame.captured``) to each viewer, frames dropped and
transcoded, and the CPU of the camera gateway, of the control process and of the generator.

    .venv/bin/python tests/perf/bench_camera.py --seconds 30            # writes BENCHMARKS.md
    .venv/bin/python tests/perf/bench_camera.py --seconds 3 --no-write  # a short check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from bench_common import (  # noqa: E402
    UcbridgeServer,
    free_port,
    write_section,
)
from rtsp_camera import RtspCamera  # noqa: E402

from bridge.videobus import subscribe  # noqa: E402

MARK_START = "<!-- bench_camera:start -->"
MARK_END = "<!-- bench_camera:end -->"
GATEWAY_MODULE = "bridge.gateways.camera.process"
WARMUP_TIMEOUT_S = 30.0


@dataclass
class ViewerStats:
    frames: int = 0
    keyframes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    gaps: int = 0


async def view(path: Path, source: str, stats: ViewerStats, until: float) -> None:
    last_pts: int | None = None
    subscribed = time.time()
    async for frame in subscribe(path, source):
        now = time.time()
        if now >= until:
            return
        stats.frames += 1
        stats.keyframes += frame.keyframe
        # The cached GOP a new viewer gets first was ingested before it asked: not latency.
        if frame.captured >= subscribed:
            stats.latencies_ms.append((now - frame.captured) * 1000)
        if last_pts is not None and frame.pts < last_pts:
            stats.gaps += 1
        last_pts = frame.pts


def gateway_pid(server: UcbridgeServer) -> int:
    for pid in server.descendants():
        with contextlib.suppress(psutil.NoSuchProcess):
            if GATEWAY_MODULE in " ".join(psutil.Process(pid).cmdline()):
                return pid
    raise RuntimeError("the camera gateway process is not running")


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def measure(
    server: UcbridgeServer, cameras: int, viewers: int, seconds: float
) -> dict[str, float]:
    bus = server.tmp / "run" / "video.sock"
    sources = [f"camera:cam{i}" for i in range(cameras)]
    # Warm up: one viewer per camera until every camera delivers.
    warm = [ViewerStats() for _ in sources]
    deadline = time.time() + WARMUP_TIMEOUT_S
    warmers = [
        asyncio.ensure_future(view(bus, s, st, deadline))
        for s, st in zip(sources, warm, strict=True)
    ]
    while time.time() < deadline and not all(st.frames >= 25 for st in warm):
        await asyncio.sleep(0.1)
    if not all(st.frames >= 25 for st in warm):
        raise RuntimeError(f"cameras did not all deliver: {[st.frames for st in warm]}")
    gw = gateway_pid(server)
    pids = {"gateway": gw, "control": server.pid}
    start_cpu = {k: cpu_s(p) for k, p in pids.items()}
    start = time.time()
    until = start + seconds
    stats = [ViewerStats() for _ in range(cameras * viewers)]
    tasks = [
        asyncio.ensure_future(view(bus, sources[i // viewers], stats[i], until))
        for i in range(cameras * viewers)
    ]
    for w in warmers:
        w.cancel()
    await asyncio.sleep(seconds)
    wall = time.time() - start
    cpu = {k: (cpu_s(p) - start_cpu[k]) / wall * 100 for k, p in pids.items()}
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, *warmers, return_exceptions=True)
    status, body = server.api.request("GET", "/api/cameras")
    transcoded = sum(c["frames_transcoded"] for c in body["cameras"]) if status == 200 else -1
    latencies = np.array([x for s in stats for x in s.latencies_ms])
    frames = sum(s.frames for s in stats)
    return {
        "wall": wall,
        "frames": frames,
        "fps_per_viewer": frames / len(stats) / wall,
        "p50": float(np.percentile(latencies, 50)),
        "p95": float(np.percentile(latencies, 95)),
        "p99": float(np.percentile(latencies, 99)),
        "max": float(latencies.max()),
        "gateway_cpu": cpu["gateway"],
        "control_cpu": cpu["control"],
        "transcoded": transcoded,
        "gaps": sum(s.gaps for s in stats),
    }


def section(args: argparse.Namespace, r: dict[str, float], generator_cpu: float) -> str:
    command = (
        f".venv/bin/python tests/perf/bench_camera.py --cameras {args.cameras} "
        f"--viewers {args.viewers} --seconds {args.seconds:g}"
    )
    title = (
        f"Camera video: {args.cameras} cameras at {args.width}x{args.height} {args.fps} fps, "
        f"{args.viewers} viewers each"
    )
    delivered = f"{r['frames']:.0f} ({r['fps_per_viewer']:.1f} fps per viewer)"
    latency = f"{r['p50']:.2f} / {r['p95']:.2f} / {r['p99']:.2f} / {r['max']:.2f} ms"
    return f"""{MARK_START}
## {title}

`{command}` ({r["wall"]:.1f} s measured). GStreamer's RTSP server plays the cameras (H.264
from one shared x264 encoder, RTP over TCP); the camera gateway pulls each once and forwards
access units on the video bus without decoding; {args.cameras * args.viewers} bus subscribers
stand in for the WebRTC gateway's viewers (its own per-viewer cost is measured apart).

| figure | value |
| --- | --- |
| frames delivered (with each viewer's first cached GOP) | {delivered} |
| latency ingest → viewer, p50 / p95 / p99 / max | {latency} |
| frames transcoded | {r["transcoded"]:.0f} |
| out-of-order frames at viewers | {r["gaps"]:.0f} |
| camera gateway CPU | {r["gateway_cpu"]:.1f} % of one core |
| control process CPU | {r["control_cpu"]:.1f} % of one core |
| load generator (RTSP server) CPU | {generator_cpu:.1f} % of one core |

Latency is measured from the moment the gateway took the access unit from the RTSP demuxer
(``EncodedFrame.captured``) to its arrival at a viewer; the camera's own encode and the
network before the gateway are not in it.
{MARK_END}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=HERE.parents[1] / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bcam") as tmp_name:
        tmp = Path(tmp_name)
        mounts = tuple(f"/cam{i}" for i in range(args.cameras))
        rtsp = RtspCamera(
            free_port(),
            mounts,
            width=args.width,
            height=args.height,
            fps=args.fps,
            gop=args.fps,
            one_pipeline=True,
        )
        cameras = "".join(
            f'[[gateways.camera.cameras]]\nname = "cam{i}"\nurl = "{rtsp.url(m)}"\naudio = false\n'
            for i, m in enumerate(mounts)
        )
        extra = (
            f'[gateways]\nruntime_dir = "{tmp / "run"}"\n'
            "[gateways.sip]\nenabled = false\n[gateways.webrtc]\nenabled = false\n"
            "[gateways.camera]\nenabled = true\n" + cameras
        )
        server = UcbridgeServer(tmp, extra_toml=extra)
        rtsp.start()
        try:
            server.start()
            server.wait_health(
                lambda h: all(g["state"] == "running" for g in h.get("gateways", [])), 30
            )
            # The gateway answers once its video bus is up.
            status, _ = server.api.request("GET", "/api/cameras")
            if status != 200:
                raise RuntimeError(f"GET /api/cameras: {status}")
            assert rtsp.process is not None
            generator = psutil.Process(rtsp.process.pid)
            gen_start = cpu_s(generator.pid)
            gen_wall = time.time()
            result = asyncio.run(measure(server, args.cameras, args.viewers, args.seconds))
            generator_cpu = (cpu_s(generator.pid) - gen_start) / (time.time() - gen_wall) * 100
        finally:
            server.stop()
            rtsp.stop()
    text = section(args, result, generator_cpu)
    print(text)
    if not args.no_write:
        write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
