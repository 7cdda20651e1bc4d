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

Where the transit goes: each aiortc receiver (the gateway's, and the load client's in
place of a browser's NetEq) holds back audio frames before it releases them (aiortc's
prefetch of 4 = 80 ms, which absorbs reordering only: it releases on arrival, not on a
clock). The gateway's own receiver now holds back one frame (``AUDIO_PREFETCH``), the
load client keeps aiortc's 4 unless ``--client-prefetch`` says otherwise, so the table
can show both. The rest is the worker's shallow jitter buffer and tick, the gateway's
L16 framing and its mix queue (:data:`~bridge.gateways.webrtc.audio.MAX_QUEUED_FRAMES`).

``--breakdown`` splits the gateway's share off: the gateway runs in this process with a
fake worker (a UDP socket that timestamps the L16 onsets it receives and sends tone bursts
of its own), one aiortc client, and times mic → worker (uplink) and worker → decoded
(downlink), for the gateway's receive buffer at 1 and at aiortc's 4, and the client's at
4 and 1. The worker's share is the table's transit minus both.

``--video-viewers 1,4`` measures video forwarding instead: one publisher (aiortc,
VP8 320×240 at 25 fps) and N viewers, all with their audio legs. The gateway's CPU is
sampled with the viewers receiving audio only, then again after each viewer renegotiates
(same session: its leg is kept) to receive the publisher's video: the difference over N
is the gateway's CPU per forwarded stream (frames are forwarded as encoded, never decoded).

The table goes to ``BENCHMARKS.md`` between the ``bench_webrtc`` markers. Run from the
repository root::

    .venv/bin/python tests/perf/bench_webrtc.py [--legs 2,10,20] [--seconds 30]
    .venv/bin/python tests/perf/bench_webrtc.py --video-viewers 1,4,8 [--seconds 30]

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
from collections.abc import Iterator
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


@dataclass
class VideoRow:
    viewers: int
    seconds: float
    audio_only_ms_per_s: float
    with_video_ms_per_s: float
    ms_per_stream_s: float
    frames_per_viewer_s: float
    forwarded: int
    transcoded: int
    load_cores: float


# ----------------------------------------------------------------- load process
def _clients(base: str, tokens: list[str], seconds: float, conn: Any, prefetch: int = 0) -> None:
    try:
        conn.send(asyncio.run(_run_clients(base, tokens, seconds, conn, prefetch)))
    except Exception as exc:  # reported to the parent, which fails loudly
        conn.send({"error": repr(exc)})


def _video_clients(base: str, tokens: list[str], seconds: float, conn: Any) -> None:
    try:
        conn.send(asyncio.run(_run_video(base, tokens, seconds, conn)))
    except Exception as exc:  # reported to the parent, which fails loudly
        conn.send({"error": repr(exc)})


async def _run_video(base: str, tokens: list[str], seconds: float, conn: Any) -> dict[str, Any]:
    """Client 0 publishes video; the others view it after a phase of audio only."""
    import av
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import MediaStreamTrack
    from webrtc_client import QuietTrack, connect, offer_answer, wait_connected

    class Ball(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.start = time.monotonic()

        async def recv(self) -> Any:
            await asyncio.sleep(max(0.0, self.start + self.count / 25 - time.monotonic()))
            image = np.zeros((240, 320, 3), dtype=np.uint8)
            x = (self.count * 4) % 300
            image[100:140, x : x + 20] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = self.count * 3600, fractions.Fraction(1, 90000)
            self.count += 1
            return frame

    frames = [0] * len(tokens)
    tasks: list[Any] = []

    async def count(i: int, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()
                frames[i] += 1

    sios: list[Any] = []
    pcs: dict[int, Any] = {}

    async def offer(i: int, sources: list[str], publish: bool = False) -> dict[str, Any]:
        pc = RTCPeerConnection()
        pc.addTrack(QuietTrack())
        if publish:
            pc.addTransceiver(Ball(), direction="sendonly")
        for _ in sources:
            pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                tasks.append(asyncio.ensure_future(count(i, track)))

        answer = await offer_answer(sios[i], pc, ROOM, f"video{i}", sources)
        old, pcs[i] = pcs.get(i), pc
        if old is not None:
            await old.close()
        return answer

    async def all_connected() -> int:
        return await wait_connected(pcs.values(), CONNECT_TIMEOUT_S)

    for token in tokens:
        sios.append(await connect(base, token))
    source = str((await offer(0, [], publish=True))["publishing"])
    for i in range(1, len(tokens)):
        await offer(i, [])
    connected = await all_connected()
    process = psutil.Process()
    cpu0 = sum(process.cpu_times()[:2])
    start = time.monotonic()
    conn.send({"connected": connected, "phase": "audio"})
    await asyncio.sleep(seconds)
    conn.send({"phase": "renegotiating"})
    for i in range(1, len(tokens)):
        await offer(i, [source])
    await all_connected()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while min(frames[1:]) < 25 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    before = list(frames)
    conn.send({"phase": "video"})
    video_start = time.monotonic()
    await asyncio.sleep(seconds)
    video_wall = time.monotonic() - video_start
    received = [b - a for a, b in zip(before[1:], frames[1:], strict=True)]
    cpu = sum(process.cpu_times()[:2]) - cpu0
    wall = time.monotonic() - start
    conn.send({"phase": "done"})  # the parent reads the gateway's counters now
    for pc in pcs.values():
        await pc.close()
    for sio in sios:
        await sio.disconnect()
    for task in tasks:
        task.cancel()
    return {
        "connected": connected,
        "frames_per_viewer_s": sum(received) / len(received) / video_wall,
        "load_cores": cpu / wall,
        "source": source,
    }


async def _run_clients(
    base: str, tokens: list[str], seconds: float, conn: Any, prefetch: int = 0
) -> dict[str, Any]:
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
            if prefetch:  # the listener's receive buffer, as a browser's would be shallower
                from bridge.gateways.webrtc.audio import shorten_receive_buffer

                shorten_receive_buffer(pc.getTransceivers()[0].receiver, prefetch)
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


# ------------------------------------------------------------- latency breakdown
BREAKDOWN_PERIOD_S: Final = 1.0
BREAKDOWN_TONE_S: Final = 0.3
BREAKDOWN_LOUD: Final = 2000


@dataclass
class Breakdown:
    gateway_prefetch: int
    client_prefetch: int
    uplink_ms: float | None
    downlink_ms: float | None
    bursts: int


async def _breakdown(gateway_prefetch: int, client_prefetch: int, seconds: float) -> Breakdown:
    """One aiortc client against an in-process gateway and a fake worker (see the docstring)."""
    import av
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    from bridge.gateways.webrtc import gateway as gateway_module
    from bridge.gateways.webrtc.audio import (
        FRAME_SAMPLES,
        L16_RATE,
        l16_packet,
        l16_payload,
        shorten_receive_buffer,
    )
    from bridge.gateways.webrtc.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    gateway_module.shorten_receive_buffer = lambda receiver, prefetch=gateway_prefetch: (
        shorten_receive_buffer(receiver, prefetch)
    )

    def tone(start: int, count: int, rate: int) -> Any:
        n = np.arange(count) + start
        return (8000 * np.sin(2 * np.pi * BURST_HZ * n / rate)).astype(np.int16)

    mic_onsets: list[float] = []
    worker_onsets: list[float] = []
    sent_onsets: list[float] = []
    heard_onsets: list[float] = []

    class Mic(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.pts = 0
            self.start = time.monotonic()

        async def recv(self) -> Any:
            await asyncio.sleep(max(0.0, self.start + self.pts / 48000 - time.monotonic()))
            phase = (self.pts / 48000) % BREAKDOWN_PERIOD_S
            if phase < BREAKDOWN_TONE_S:
                if phase < 0.02:
                    mic_onsets.append(time.monotonic())
                pcm = tone(self.pts, 960, 48000)
            else:
                pcm = np.zeros(960, dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, self.pts
            frame.time_base = fractions.Fraction(1, 48000)
            self.pts += 960
            return frame

    class Worker(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.transport: Any = None
            self.peer: tuple[str, int] | None = None
            self.loud = False

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            pcm = np.frombuffer(l16_payload(data), dtype=">i2")
            loud = bool(np.abs(pcm).max() > BREAKDOWN_LOUD)
            if loud and not self.loud:
                worker_onsets.append(time.monotonic())
            self.loud = loud

    class Link:
        async def request(self, op: str, **args: Any) -> Any:
            if op == "room":
                return {"id": "r1", "name": ROOM}
            if op == "join":
                remote = args["participant"]["remote"]
                worker.peer = (remote["ip"], remote["port"])
                media = {"ip": "127.0.0.1", "port": worker_port}
                return {"participant": {"id": "p1"}, "media": {"rtp": media, "rtcp": media}}
            return None

    loop = asyncio.get_running_loop()
    worker = Worker()
    transport, _ = await loop.create_datagram_endpoint(lambda: worker, local_addr=("127.0.0.1", 0))
    worker_port = transport.get_extra_info("sockname")[1]
    gateway = gateway_module.WebRtcGateway(Link(), gateway_module.Settings())
    gateway.start()
    pc = RTCPeerConnection()
    pc.addTrack(Mic())
    if client_prefetch:
        shorten_receive_buffer(pc.getTransceivers()[0].receiver, client_prefetch)

    async def listen(track: Any) -> None:
        loud = False
        with contextlib.suppress(Exception):
            while True:
                pcm = (await track.recv()).to_ndarray().reshape(-1)
                now_loud = bool(np.abs(pcm).max() > BREAKDOWN_LOUD // 2)
                if now_loud and not loud:
                    heard_onsets.append(time.monotonic())
                loud = now_loud

    listener: list[Any] = []
    pc.on("track", lambda track: listener.append(asyncio.ensure_future(listen(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await gateway.offer(user="u", room=ROOM, sdp=pc.localDescription.sdp, session="s")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        mic_onsets.clear()
        worker_onsets.clear()
        start = time.monotonic()
        frames = int(seconds * 50)
        for i in range(frames):  # the worker's own bursts, paced at 20 ms
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
            if (i * 0.02) % BREAKDOWN_PERIOD_S < BREAKDOWN_TONE_S:
                if (i * 0.02) % BREAKDOWN_PERIOD_S < 0.02:
                    sent_onsets.append(time.monotonic())
                payload = tone(i * FRAME_SAMPLES, FRAME_SAMPLES, L16_RATE).astype(">i2").tobytes()
            else:
                payload = bytes(2 * FRAME_SAMPLES)
            if worker.peer is not None:
                packet = l16_packet(i, i * FRAME_SAMPLES, 7, payload, i == 0)
                transport.sendto(packet, worker.peer)
    finally:
        await pc.close()
        await gateway.close()
        transport.close()
        for task in listener:
            task.cancel()

    def delay(sent: list[float], seen: list[float]) -> list[float]:
        out = []
        for at in sent:
            after = [s - at for s in seen if 0 <= s - at < BREAKDOWN_PERIOD_S / 2]
            if after:
                out.append(min(after) * 1000)
        return out

    up, down = delay(mic_onsets, worker_onsets), delay(sent_onsets, heard_onsets)
    return Breakdown(
        gateway_prefetch=gateway_prefetch,
        client_prefetch=client_prefetch or 4,
        uplink_ms=_percentile(up, 50),
        downlink_ms=_percentile(down, 50),
        bursts=min(len(up), len(down)),
    )


def run_breakdown(seconds: float) -> list[Breakdown]:
    from bridge.gateways.webrtc.audio import AUDIO_PREFETCH

    cases = [(AUDIO_PREFETCH, 0), (AUDIO_PREFETCH, 1), (4, 0)]
    return [asyncio.run(_breakdown(g, c, seconds)) for g, c in cases]


# ------------------------------------------------------------------- one row
@contextlib.contextmanager
def _webrtc_server() -> Iterator[tuple[UcbridgeServer, dict[str, Any]]]:
    """A bridge with the WebRTC gateway running and the open room made; its /health."""
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
            server.api.ok("POST", "/api/rooms", {"name": ROOM, "mode": "open"})
            yield server, health
        finally:
            server.stop()


def _gateway_pid(health: dict[str, Any]) -> int:
    return int(next(g["pid"] for g in health["gateways"] if g["name"] == "webrtc"))


def _finish(load: multiprocessing.process.BaseProcess) -> None:
    load.join(10)
    if load.is_alive():
        load.kill()
        load.join()


def run_video_row(viewers: int, seconds: float) -> VideoRow:
    with _webrtc_server() as (server, health):
        gateway_pid = _gateway_pid(health)
        tokens = [server.authority.issue(f"video-{i}", _dispatcher()) for i in range(viewers + 1)]
        ours, theirs = multiprocessing.Pipe(duplex=False)
        load = multiprocessing.get_context("spawn").Process(
            target=_video_clients,
            args=(f"http://127.0.0.1:{server.port}", tokens, seconds, theirs),
        )
        load.start()
        marks: dict[str, tuple[float, float]] = {}
        stats: dict[str, Any] = {"sources": []}
        try:
            result: dict[str, Any] = {}
            while "source" not in result:
                if not ours.poll(CONNECT_TIMEOUT_S + seconds + 60):
                    raise RuntimeError("the load process did not report")
                result = ours.recv()
                if "error" in result:
                    raise RuntimeError(f"load process failed: {result['error']}")
                if "phase" in result:
                    marks[result["phase"]] = (time.monotonic(), process_cpu_s(gateway_pid))
                if result.get("phase") == "done":
                    stats = server.api.ok("GET", "/api/webrtc/stats")
        finally:
            _finish(load)
        counters = {s["source"]: s for s in stats["sources"]}.get(result["source"], {})

        def rate(first: str, last: str) -> float:
            (t0, c0), (t1, c1) = marks[first], marks[last]
            return (c1 - c0) * 1000 / (t1 - t0)

        audio_only = rate("audio", "renegotiating")
        with_video = rate("video", "done")
        return VideoRow(
            viewers=viewers,
            seconds=seconds,
            audio_only_ms_per_s=audio_only,
            with_video_ms_per_s=with_video,
            ms_per_stream_s=(with_video - audio_only) / viewers,
            frames_per_viewer_s=result["frames_per_viewer_s"],
            forwarded=int(counters.get("forwarded", 0)),
            transcoded=int(counters.get("transcoded", 0)),
            load_cores=result["load_cores"],
        )


def run_row(legs: int, seconds: float, prefetch: int = 0) -> Row:
    with _webrtc_server() as (server, health):
        gateway_pid = _gateway_pid(health)
        worker_pid = health["workers"][0]["pid"]
        tokens = [server.authority.issue(f"bench-{i}", _dispatcher()) for i in range(legs)]
        ours, theirs = multiprocessing.Pipe(duplex=False)
        load = multiprocessing.get_context("spawn").Process(
            target=_clients,
            args=(f"http://127.0.0.1:{server.port}", tokens, seconds, theirs, prefetch),
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
            _finish(load)
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


def report(
    rows: list[Row],
    args: argparse.Namespace,
    video: list[VideoRow] | None = None,
    breakdown: list[Breakdown] | None = None,
) -> str:
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
    if breakdown:
        lines += [
            "",
            f"Where the transit goes (`{SCRIPT} --breakdown`): the gateway in process with "
            "a fake worker and one aiortc client; medians. Uplink = client mic → L16 at the "
            "worker; downlink = L16 from the worker → decoded at the client. Receive buffer = "
            "frames aiortc holds back (its default: 4 = 80 ms).",
            "",
            "| gateway receive buffer | client receive buffer | uplink ms | downlink ms | bursts |",
            "| --- | --- | --- | --- | --- |",
        ]
        for b in breakdown:
            lines.append(
                f"| {b.gateway_prefetch} | {b.client_prefetch} | {_fmt(b.uplink_ms)} | "
                f"{_fmt(b.downlink_ms)} | {b.bursts} |"
            )
    if video:
        lines += [
            "",
            f"Video forwarding: `{SCRIPT} --video-viewers {args.video_viewers} --seconds "
            f"{args.seconds}`; one aiortc publisher (VP8 320×240, 25 fps) and N aiortc "
            "viewers. Gateway CPU with the viewers on audio only, then with each receiving "
            "the publisher's video (renegotiated on the same session, leg kept); the "
            "difference over N is the CPU per forwarded stream.",
            "",
            "| viewers | gateway ms/s audio only | gateway ms/s with video | "
            "ms per forwarded stream-s | frames/s per viewer | forwarded | transcoded | "
            "load cores |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for v in video:
            lines.append(
                f"| {v.viewers} | {v.audio_only_ms_per_s:.1f} | {v.with_video_ms_per_s:.1f} | "
                f"{v.ms_per_stream_s:.2f} | {v.frames_per_viewer_s:.1f} | {v.forwarded} | "
                f"{v.transcoded} | {v.load_cores:.2f} |"
            )
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", default="2,10,20", help="comma-separated leg counts")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print, do not write the file")
    parser.add_argument(
        "--client-prefetch",
        type=int,
        default=0,
        help="the listening load client's audio receive buffer (aiortc's default: 4)",
    )
    parser.add_argument(
        "--video-viewers", default="", help="comma-separated viewer counts (video forwarding)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="time the gateway's uplink and downlink"
    )
    args = parser.parse_args()
    breakdown = run_breakdown(min(args.seconds, 10.0)) if args.breakdown else []
    for b in breakdown:
        print(b, flush=True)
    rows = []
    for legs in [int(n) for n in args.legs.split(",") if n]:
        if legs < 2:
            parser.error("at least 2 legs (one talker, one listener)")
        row = run_row(legs, args.seconds, args.client_prefetch)
        print(row, flush=True)
        rows.append(row)
    video = []
    for viewers in [int(n) for n in args.video_viewers.split(",") if n]:
        video_row = run_video_row(viewers, args.seconds)
        print(video_row, flush=True)
        video.append(video_row)
    text = report(rows, args, video, breakdown)
    print(text)
    if not args.no_write:
        write_section(args.output, text, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
