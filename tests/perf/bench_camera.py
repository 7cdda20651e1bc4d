"""Camera benchmark: N RTSP cameras (720p25 H.264) to V WebRTC viewers each, on one node.

A real ``ucbridge serve`` runs the camera gateway and the WebRTC gateway in processes of
their own; GStreamer's RTSP server (Debian packages, the system python3) plays N cameras
from one x264 encoder (one pipeline shared by every mount, so the load generator stays
small). ``N × V`` viewers are aiortc clients in ``--load-processes`` separate load
processes, each one peer connection as a console's would be (socket.io ``webrtc_offer``
with ``video_sources: ["camera:<name>"]``, DTLS-SRTP), receiving H.264 that is never
decoded (:class:`webrtc_client.FrameClock`: frames are counted and timed at their last RTP
packet; aiortc's decoder thread never runs).

Latency, ingest → viewer: from the moment the camera gateway took the access unit from
the RTSP demuxer (``EncodedFrame.captured``, wall clock) to the arrival of the frame's last
RTP packet (marker bit, after SRTP) at the viewer's receiver, same host and clock. It spans
the video bus, the WebRTC gateway's queue, aiortc's packetisation and SRTP, loopback UDP and
the viewer's SRTP; not the camera's encoder, the RTSP transport, nor a viewer's jitter
buffer or decoder. Each received frame is matched to its ``captured`` by content: this
process subscribes to each camera on the video bus too (one more bus subscriber per camera)
and keeps a digest of every access unit's NAL units with its ``captured``; the viewer
digests the NAL units it reassembled from RTP. RTCP sender reports cannot give this: aiortc
stamps a report with the time it *sent* the last packet, so an SR mapping would leave the
gateway's own queueing out.

Reported per process: CPU of the camera gateway, the WebRTC gateway, the control process,
the media worker, the RTSP server (load) and the viewer load processes; frames forwarded
(WebRTC gateway) and transcoded (camera gateway and WebRTC gateway: both must be 0).
``--viewers-kind bus`` keeps the older, lighter measure: viewers that subscribe to the video
bus directly, as the WebRTC gateway does, in this process.

    .venv/bin/python tests/perf/bench_camera.py --seconds 30            # writes BENCHMARKS.md
    .venv/bin/python tests/perf/bench_camera.py --cameras 2 --viewers 2 --seconds 5 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "integration"))

from bench_common import (  # noqa: E402
    Machine,
    UcbridgeServer,
    cpu_snapshot,
    free_port,
    other_cores,
    process_cpu_s,
    write_section,
)
from rtsp_camera import RtspCamera  # noqa: E402

from bridge.videobus import EncodedFrame, subscribe  # noqa: E402
from bridge.web.auth import Role  # noqa: E402

MARK_START: Final = "<!-- bench_camera:start -->"
MARK_END: Final = "<!-- bench_camera:end -->"
SCRIPT: Final = "tests/perf/bench_camera.py"
ROOM: Final = "bench-cam"
#: Frames every viewer must have had before the measuring window opens (one GOP at 25 fps).
WARM_FRAMES: Final = 25
WARMUP_TIMEOUT_S: Final = 60.0
CONNECT_TIMEOUT_S: Final = 90.0
REPORT_TIMEOUT_S: Final = 60.0
JOIN_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.1
HTTP_OK: Final = 200
#: Below this share of the cameras' frame rate at the viewers, the run says it was overloaded.
OVERLOADED_SHARE: Final = 0.9


# ----------------------------------------------------------------- load process
def _viewers(
    base: str, viewers: list[tuple[str, str, str]], audio: bool, conn: Any
) -> None:  # runs in a spawned load process
    try:
        asyncio.run(_run_viewers(base, viewers, audio, conn))
    except Exception as exc:  # reported to the parent, which fails loudly
        with contextlib.suppress(OSError):
            conn.send({"error": repr(exc)})


async def _run_viewers(
    base: str, viewers: list[tuple[str, str, str]], audio: bool, conn: Any
) -> None:
    """Connect ``(token, session, source)`` viewers; report their frames when told to stop."""
    from aiortc import RTCPeerConnection
    from webrtc_client import FrameClock, QuietTrack, connect, offer_answer, wait_connected

    sios: list[Any] = []
    pcs: list[Any] = []
    clocks: list[FrameClock] = []
    try:
        for token, session, source in viewers:
            sios.append(await connect(base, token))
            pc = RTCPeerConnection()
            pcs.append(pc)
            # The gateway wants one audio m-line (a console's leg in the room): a silent
            # microphone as a console's, or an inactive one that carries nothing.
            if audio:
                pc.addTrack(QuietTrack())
            else:
                pc.addTransceiver("audio", direction="inactive")
            transceiver = pc.addTransceiver("video", direction="recvonly")
            clocks.append(FrameClock(transceiver.receiver))
            await offer_answer(sios[-1], pc, ROOM, session, [source])
        connected = await wait_connected(pcs, CONNECT_TIMEOUT_S)
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while min(c.frames for c in clocks) < WARM_FRAMES and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        conn.send({"connected": connected, "warm": [c.frames for c in clocks]})
        window = await asyncio.to_thread(conn.recv)  # (from, to), wall clock
        start, end = window
        conn.send(
            {
                "viewers": [
                    {
                        "source": source,
                        "arrivals": [(d, at) for d, at in clock.arrivals if start <= at < end],
                        "lost": clock.lost,
                    }
                    for (_, _, source), clock in zip(viewers, clocks, strict=True)
                ]
            }
        )
    finally:
        for pc in pcs:
            await pc.close()
        for sio in sios:
            with contextlib.suppress(Exception):
                await sio.disconnect()


# ------------------------------------------------------------------ the parent
class Probe:
    """One video-bus subscriber per camera: each access unit's digest and ``captured``."""

    def __init__(self, bus: Path, sources: list[str]) -> None:
        from webrtc_client import frame_digest

        self._digest = frame_digest
        self.captured: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in sources}
        #: Ingest → this subscriber, ms (the bus's own share of the latency).
        self.bus_ms: list[float] = []
        #: Access-unit octets ingested since the window opened, all cameras.
        self.octets = 0
        self.since = float("inf")
        self._tasks = [asyncio.ensure_future(self._run(bus, s)) for s in sources]

    async def _run(self, bus: Path, source: str) -> None:
        async for frame in subscribe(bus, source):
            now = time.time()
            self.captured[source][self._digest(frame.data)].append(frame.captured)
            if frame.captured >= self.since:
                self.bus_ms.append((now - frame.captured) * 1000)
                self.octets += len(frame.data)

    def check(self) -> None:
        """Fail loudly if a subscription ended (the figures would all be unmatched)."""
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"a latency probe ended: {task.exception()!r}")

    def match(self, source: str, digest: str, at: float) -> float | None:
        """``captured`` of the latest access unit with this digest ingested before ``at``."""
        earlier = [c for c in self.captured[source].get(digest, ()) if c <= at]
        return max(earlier) if earlier else None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Result:
    kind: str
    wall: float
    viewers: int
    connected: int
    frames: int
    latencies_ms: list[float]
    unmatched: int
    bus_ms: list[float]
    cpu: dict[str, float]  # % of one core
    #: Mean H.264 bitrate of one camera, as ingested (0: not measured).
    camera_kbps: float
    forwarded: int  # WebRTC gateway, over the window
    dropped: int  # WebRTC gateway (slow viewers), over the window
    transcoded_camera: int
    transcoded_webrtc: int
    incomplete: int = 0
    out_of_order: int = 0
    load_processes: int = 0
    notes: list[str] = field(default_factory=list)


def _pids(server: UcbridgeServer) -> dict[str, int]:
    health = server.health()
    gateways = {g["name"]: g["pid"] for g in health.get("gateways", [])}
    pids = {"camera gateway": int(gateways["camera"])}
    if "webrtc" in gateways:
        pids["WebRTC gateway"] = int(gateways["webrtc"])
    pids["control process"] = server.pid
    if health.get("workers"):
        pids["media worker"] = int(health["workers"][0]["pid"])
    return pids


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: process_cpu_s(pid) for name, pid in pids.items()}


def _webrtc_counters(server: UcbridgeServer) -> dict[str, int]:
    status, body = server.api.request("GET", "/api/webrtc/stats")
    if status != HTTP_OK:
        raise RuntimeError(f"GET /api/webrtc/stats: {status} {body}")
    sources = body.get("sources", [])
    return {
        k: sum(int(s.get(k, 0)) for s in sources) for k in ("forwarded", "transcoded", "dropped")
    }


def _camera_transcoded(server: UcbridgeServer) -> int:
    status, body = server.api.request("GET", "/api/cameras")
    if status != HTTP_OK:
        raise RuntimeError(f"GET /api/cameras: {status} {body}")
    return sum(int(c["frames_transcoded"]) for c in body["cameras"])


async def _receive(conn: Any, what: str, timeout: float) -> dict[str, Any]:
    if not await asyncio.to_thread(conn.poll, timeout):
        raise RuntimeError(f"a load process did not report {what}")
    message: dict[str, Any] = conn.recv()
    if "error" in message:
        raise RuntimeError(f"load process failed: {message['error']}")
    return message


async def measure_webrtc(
    server: UcbridgeServer, rtsp: RtspCamera, args: argparse.Namespace
) -> Result:
    bus = server.tmp / "run" / "video.sock"
    sources = [f"camera:cam{i}" for i in range(args.cameras)]
    probe = Probe(bus, sources)
    viewers = [
        (
            server.authority.issue(f"viewer-{c}-{v}", Role.DISPATCHER),
            f"cam{c}-viewer{v}",
            sources[c],
        )
        for c in range(args.cameras)
        for v in range(args.viewers)
    ]
    shares = [viewers[i :: args.load_processes] for i in range(args.load_processes)]
    shares = [s for s in shares if s]
    context = multiprocessing.get_context("spawn")
    loads: list[tuple[Any, Any]] = []
    try:
        for share in shares:
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=_viewers,
                args=(f"http://127.0.0.1:{server.port}", share, args.viewer_audio, theirs),
            )
            process.start()
            loads.append((process, ours))
        ready = [
            await _receive(conn, "its viewers connected", CONNECT_TIMEOUT_S + WARMUP_TIMEOUT_S)
            for _, conn in loads
        ]
        connected = sum(int(r["connected"]) for r in ready)
        warm = [n for r in ready for n in r["warm"]]
        notes = []
        if min(warm) < WARM_FRAMES:
            notes.append(f"some viewers had fewer than {WARM_FRAMES} frames at the start: {warm}")
        pids = _pids(server)
        assert rtsp.process is not None
        pids["RTSP server (load)"] = rtsp.process.pid
        for i, (process, _) in enumerate(loads):
            pids[f"viewer load process {i + 1}"] = int(process.pid)
        probe.check()
        counters0 = await asyncio.to_thread(_webrtc_counters, server)
        host0, cpu0 = cpu_snapshot(list(pids.values())), _cpu(pids)
        start = time.time()
        probe.since = start
        await asyncio.sleep(args.seconds)
        cpu1, host1 = _cpu(pids), cpu_snapshot(list(pids.values()))
        end = time.time()
        wall = end - start
        counters1 = await asyncio.to_thread(_webrtc_counters, server)
        probe.check()
        transcoded_camera = await asyncio.to_thread(_camera_transcoded, server)
        for _, conn in loads:
            conn.send((start, end))
        reports = [await _receive(conn, "its frames", REPORT_TIMEOUT_S) for _, conn in loads]
    finally:
        for _, conn in loads:
            conn.close()  # a load process still waiting for its window ends on EOF
        for process, _ in loads:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        await probe.close()
    latencies: list[float] = []
    unmatched = frames = incomplete = 0
    for viewer in (v for r in reports for v in r["viewers"]):
        frames += len(viewer["arrivals"])
        incomplete += int(viewer["lost"])
        for digest, at in viewer["arrivals"]:
            captured = probe.match(viewer["source"], digest, at)
            if captured is None:
                unmatched += 1
            else:
                latencies.append((at - captured) * 1000)
    cpu = {name: (cpu1[name] - cpu0[name]) / wall * 100 for name in pids}
    cpu["viewer load processes, together"] = sum(
        v for k, v in cpu.items() if k.startswith("viewer load")
    )
    cpu["everything else on the host"] = other_cores(host0, host1, wall) * 100
    return Result(
        kind="webrtc",
        wall=wall,
        viewers=len(viewers),
        connected=connected,
        frames=frames,
        latencies_ms=latencies,
        unmatched=unmatched,
        bus_ms=probe.bus_ms,
        cpu=cpu,
        camera_kbps=probe.octets * 8 / 1000 / wall / args.cameras,
        forwarded=counters1["forwarded"] - counters0["forwarded"],
        dropped=counters1["dropped"] - counters0["dropped"],
        transcoded_camera=transcoded_camera,
        transcoded_webrtc=counters1["transcoded"],
        incomplete=incomplete,
        load_processes=len(loads),
        notes=notes,
    )


@dataclass
class BusViewer:
    frames: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    out_of_order: int = 0


async def _bus_view(bus: Path, source: str, stats: BusViewer, since: list[float]) -> None:
    last: EncodedFrame | None = None
    async for frame in subscribe(bus, source):
        now = time.time()
        # The cached GOP a new viewer gets first was ingested before the window: not latency.
        if frame.captured >= since[0]:
            stats.frames += 1
            stats.latencies_ms.append((now - frame.captured) * 1000)
            if last is not None and frame.pts < last.pts:
                stats.out_of_order += 1
        last = frame


async def measure_bus(server: UcbridgeServer, rtsp: RtspCamera, args: argparse.Namespace) -> Result:
    bus = server.tmp / "run" / "video.sock"
    sources = [f"camera:cam{i}" for i in range(args.cameras)]
    since = [float("inf")]
    stats = [BusViewer() for _ in range(args.cameras * args.viewers)]
    tasks = [
        asyncio.ensure_future(_bus_view(bus, sources[i // args.viewers], st, since))
        for i, st in enumerate(stats)
    ]
    try:
        since[0] = time.time()  # warm up: every viewer gets live frames
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while min(s.frames for s in stats) < WARM_FRAMES and time.monotonic() < deadline:
            for task in tasks:
                if task.done():
                    raise RuntimeError(f"a bus viewer ended: {task.exception()!r}")
            await asyncio.sleep(POLL_S)
        if min(s.frames for s in stats) < WARM_FRAMES:
            raise RuntimeError(f"cameras did not all deliver: {[s.frames for s in stats]}")
        pids = _pids(server)
        assert rtsp.process is not None
        pids["RTSP server (load)"] = rtsp.process.pid
        pids["bus viewers (this process)"] = os.getpid()
        for s in stats:
            s.frames, s.latencies_ms, s.out_of_order = 0, [], 0
        host0, cpu0 = cpu_snapshot(list(pids.values())), _cpu(pids)
        start = since[0] = time.time()
        await asyncio.sleep(args.seconds)
        cpu1, host1 = _cpu(pids), cpu_snapshot(list(pids.values()))
        wall = time.time() - start
        cpu = {name: (cpu1[name] - cpu0[name]) / wall * 100 for name in pids}
        cpu["everything else on the host"] = other_cores(host0, host1, wall) * 100
        frames = sum(s.frames for s in stats)
        latencies = [x for s in stats for x in s.latencies_ms]
        out_of_order = sum(s.out_of_order for s in stats)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Result(
        kind="bus",
        wall=wall,
        viewers=len(stats),
        connected=len(stats),
        frames=frames,
        latencies_ms=latencies,
        unmatched=0,
        bus_ms=[],
        cpu=cpu,
        camera_kbps=0.0,
        forwarded=0,
        dropped=0,
        transcoded_camera=await asyncio.to_thread(_camera_transcoded, server),
        transcoded_webrtc=0,
        out_of_order=out_of_order,
    )


# ------------------------------------------------------------------- the report
def _percentiles(values: list[float]) -> str:
    if not values:
        return "—"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"{p50:.1f} / {p95:.1f} / {p99:.1f} / {max(values):.1f} ms"


def section(args: argparse.Namespace, r: Result, machine: Machine) -> str:
    command = (
        f"{SCRIPT} --cameras {args.cameras} --viewers {args.viewers} --seconds {args.seconds:g}"
        f" --pattern {args.pattern} --bitrate {args.bitrate}"
        + (f" --load-processes {args.load_processes}" if r.kind == "webrtc" else "")
        + (" --viewer-audio" if args.viewer_audio and r.kind == "webrtc" else "")
        + (" --viewers-kind bus" if r.kind == "bus" else "")
    )
    title = (
        f"Camera video: {args.cameras} cameras at {args.width}x{args.height} {args.fps} fps, "
        f"{args.viewers} viewers each"
    )
    fps = r.frames / r.viewers / r.wall if r.viewers else 0.0
    if fps < OVERLOADED_SHARE * args.fps:
        r.notes.append(
            f"viewers received {fps:.1f} of {args.fps} fps: the node or the host was "
            "overloaded (see the CPU rows); the latency is not a steady state"
        )
    rows = [
        ("viewers connected", f"{r.connected} of {r.viewers}"),
        ("frames received in the window", f"{r.frames} ({fps:.1f} fps per viewer)"),
    ]
    if r.kind == "webrtc":
        rows += [
            ("H.264 bitrate of one camera, as ingested", f"{r.camera_kbps:.0f} kbit/s"),
            ("latency ingest → viewer (last RTP packet), p50 / p95 / p99 / max",
             _percentiles(r.latencies_ms)),
            ("of which ingest → a video-bus subscriber, p50 / p95 / p99 / max",
             _percentiles(r.bus_ms)),
            ("frames not matched to an ingested access unit", f"{r.unmatched}"),
            ("frames incomplete at viewers, whole run (a packet missing)", f"{r.incomplete}"),
            ("frames forwarded by the WebRTC gateway in the window", f"{r.forwarded}"),
            ("frames dropped by the WebRTC gateway (slow viewers)", f"{r.dropped}"),
            ("frames transcoded: camera gateway / WebRTC gateway",
             f"{r.transcoded_camera} / {r.transcoded_webrtc}"),
        ]  # fmt: skip
    else:
        rows += [
            ("latency ingest → bus viewer, p50 / p95 / p99 / max", _percentiles(r.latencies_ms)),
            ("frames transcoded (camera gateway)", f"{r.transcoded_camera}"),
            ("out-of-order frames at viewers", f"{r.out_of_order}"),
        ]
    rows += [(f"CPU: {name}", f"{value:.1f} % of one core") for name, value in r.cpu.items()]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if r.kind == "webrtc":
        how = (
            f"GStreamer's RTSP server plays the cameras (H.264 from one shared x264 encoder, "
            f"RTP over TCP); the camera gateway pulls each once and puts its access units on "
            f"the video bus undecoded; the WebRTC gateway subscribes once per camera and "
            f"forwards to {r.viewers} aiortc viewers ({r.load_processes} load process(es), "
            f"one peer connection per viewer, "
            f"{'with' if args.viewer_audio else 'without'} an audio leg), which count and "
            "time frames without decoding them.\n\n"
            "Latency spans the camera gateway's ingest (`EncodedFrame.captured`, when the "
            "access unit left the RTSP demuxer) to the arrival of the frame's last RTP packet "
            "at the viewer, after SRTP: the video bus, the WebRTC gateway, aiortc's "
            "packetisation and SRTP, loopback UDP. Not in it: the camera's encoder, RTSP, a "
            "viewer's jitter buffer and decoder. Frames are matched to their ingest by a "
            "digest of their NAL units (a probe subscribes to each camera on the bus: one more "
            "bus subscriber per camera). The viewer load processes' CPU is theirs, not the "
            "bridge's."
        )
    else:
        how = (
            "GStreamer's RTSP server plays the cameras (H.264 from one shared x264 encoder, "
            f"RTP over TCP); {r.viewers} video-bus subscribers in the benchmark's process "
            "stand in for the WebRTC gateway. Latency is from the gateway's ingest "
            "(`EncodedFrame.captured`) to arrival at a bus subscriber."
        )
    notes = "".join(f"\nNote: {n}\n" for n in r.notes)
    host = (
        f"Measured {machine.date} on {machine.nproc} × {machine.cpu_model}, {machine.kernel}, "
        f"Python {machine.python}; load average before: "
        + " / ".join(f"{x:.2f}" for x in machine.load_before)
        + "."
    )
    return (
        f"{MARK_START}\n## {title}\n\n`{command}` ({r.wall:.1f} s measured). {how}\n\n"
        f"{host}\n\n"
        f"| figure | value |\n| --- | --- |\n{table}\n{notes}{MARK_END}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--viewers", type=int, default=4, help="viewers per camera")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument(
        "--pattern",
        choices=("snow", "ball", "smpte"),
        default="snow",
        help="test picture: snow makes x264 spend the whole --bitrate, as a busy real scene",
    )
    parser.add_argument("--bitrate", type=int, default=2000, help="camera kbit/s (x264 target)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--viewers-kind", choices=("webrtc", "bus"), default="webrtc")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes the WebRTC viewers share"
    )
    parser.add_argument(
        "--viewer-audio", action="store_true", help="each viewer has an audio leg, as a console"
    )
    parser.add_argument("--output", type=Path, default=HERE.parents[1] / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the file")
    args = parser.parse_args()
    if args.load_processes < 1:
        parser.error("--load-processes must be at least 1")

    machine = Machine.probe()
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
            pattern=args.pattern,
            bitrate=args.bitrate,
            one_pipeline=True,
            log=tmp / "rtsp.log",
        )
        cameras = "".join(
            f'[[gateways.camera.cameras]]\nname = "cam{i}"\nurl = "{rtsp.url(m)}"\n'
            f'audio = false\nrooms = ["{ROOM}"]\n'
            for i, m in enumerate(mounts)
        )
        viewers = args.cameras * args.viewers
        webrtc = (
            '[gateways.webrtc]\nenabled = true\ninterfaces = ["127.0.0.1"]\n'
            f"max_subscribers = {max(viewers, 32)}\nmax_sessions = {max(viewers, 200)}\n"
            if args.viewers_kind == "webrtc"
            else "[gateways.webrtc]\nenabled = false\n"
        )
        extra = (
            f'[gateways]\nruntime_dir = "{tmp / "run"}"\n[gateways.sip]\nenabled = false\n'
            + webrtc
            + "[gateways.camera]\nenabled = true\n"
            + cameras
            + f'[[rooms]]\nname = "{ROOM}"\nmode = "open"\n'
        )
        server = UcbridgeServer(tmp, extra_toml=extra)
        rtsp.start()
        try:
            server.start()
            server.wait_health(
                lambda h: all(g["state"] == "running" for g in h.get("gateways", [])), 30
            )
            # The camera gateway answers once its video bus is up.
            _camera_transcoded(server)
            measure = measure_webrtc if args.viewers_kind == "webrtc" else measure_bus
            result = asyncio.run(measure(server, rtsp, args))
        finally:
            server.stop()
            rtsp.stop()
    text = section(args, result, machine)
    print(text)
    if not args.no_write:
        write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
