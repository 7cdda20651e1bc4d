"""The WebRTC gateway against aiortc clients, with a fake gateway link and a fake worker.

The fake link answers ``room``/``join``/``leave``/``publish`` as the control process
does; the fake worker is a UDP socket on 127.0.0.1 that keeps the L16 frames the gateway
sends and sends its own tone back as the leg's mix. Host candidates are restricted to
127.0.0.1 through the gateway's own ``interfaces`` setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bridge.gatewaylink import LinkError
from bridge.gateways.webrtc import gateway as gateway_module
from bridge.gateways.webrtc import ice
from bridge.gateways.webrtc.audio import FRAME_BYTES, L16_RATE, l16_packet, l16_payload
from bridge.gateways.webrtc.gateway import (
    BAD_CANDIDATE,
    MAX_SOURCE_NAME,
    NOT_CONNECTED,
    SESSION_CLOSED,
    UNSUPPORTED_CODECS,
    Settings,
    WebRtcGateway,
)
from bridge.gateways.webrtc.mixencode import SILENCE_PACKET, Listener, MixEncoder
from bridge.gateways.webrtc.video import (
    VIEWER_QUEUE,
    EncodedTrack,
    Transcoder,
    VideoSource,
    VideoUnit,
    is_keyframe,
)

TONE_TO_WORKER = 440.0
TONE_FROM_WORKER = 1000.0
WAIT_S = 10.0


def band_share(pcm: np.ndarray[Any, Any], freq: float, rate: int) -> float:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    total = float(spectrum.sum())
    return float(spectrum[(freqs > freq - 30) & (freqs < freq + 30)].sum()) / total if total else 0


class ToneTrack(MediaStreamTrack):
    """A browser's microphone: a sine at 48 kHz, paced at 20 ms."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq = freq
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.pts / 48000
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (np.arange(960) + self.pts) / 48000
        pcm = (8000 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += 960
        return frame


class BallTrack(MediaStreamTrack):
    """A browser's camera: moving frames at 25 fps, encoded by aiortc (VP8)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(0.04)
        image = np.zeros((120, 160, 3), dtype=np.uint8)
        image[:, (self.count * 4) % 160 :] = (200, 50, 50)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.count * 3600
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class FakeWorker(asyncio.DatagramProtocol):
    """The media worker's RTP port: keeps what arrives, sends a tone to the leg."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None
        self.peers: list[tuple[str, int]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.frames.append(l16_payload(data))

    async def send_tone(self, seconds: float) -> None:
        samples = L16_RATE // 50
        for i in range(int(seconds * 50)):
            t = (np.arange(samples) + i * samples) / L16_RATE
            pcm = (8000 * np.sin(2 * np.pi * TONE_FROM_WORKER * t)).astype(">i2").tobytes()
            if self.transport is not None and self.peer is not None:
                self.transport.sendto(l16_packet(i, i * samples, 1234, pcm, i == 0), self.peer)
            await asyncio.sleep(0.02)

    async def send_mix(self, seconds: float, freq: float) -> int:
        """The same mix to every leg each tick, as the worker sends a shared row; a tone
        whose frames all differ (not a multiple of 50 Hz). Returns the ticks sent."""
        samples = L16_RATE // 50
        ticks = int(seconds * 50)
        for i in range(ticks):
            t = (np.arange(samples) + i * samples) / L16_RATE
            pcm = (8000 * np.sin(2 * np.pi * freq * t)).astype(">i2").tobytes()
            assert self.transport is not None
            for peer in self.peers:
                self.transport.sendto(l16_packet(i, i * samples, 1234, pcm, i == 0), peer)
            await asyncio.sleep(0.02)
        return ticks

    def heard(self) -> np.ndarray[Any, Any]:
        return np.frombuffer(b"".join(self.frames), dtype=">i2").astype(np.int16)


class FakeLink:
    """The control process's side of the gateway link, as far as the gateway uses it."""

    def __init__(self, worker_port: int, worker: FakeWorker) -> None:
        self.worker_port = worker_port
        self.worker = worker
        self.joined: dict[str, dict[str, Any]] = {}
        self.left: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.ids = 0

    async def request(self, op: str, **args: Any) -> Any:
        if op == "room":
            if args["room"] not in ("tac-1", "r1"):
                raise LinkError(f"unknown room: {args['room']}", "NotFound")
            return {"id": "r1", "name": "tac-1"}
        if op == "join":
            self.ids += 1
            pid = f"p{self.ids}"
            participant = dict(args["participant"], id=pid, room=args["room"])
            self.joined[pid] = participant
            remote = participant["remote"]
            self.worker.peer = (remote["ip"], remote["port"])
            self.worker.peers.append(self.worker.peer)
            return {
                "participant": participant,
                "media": {
                    "rtp": {"ip": "127.0.0.1", "port": self.worker_port},
                    "rtcp": {"ip": "127.0.0.1", "port": self.worker_port + 1},
                    "ssrc": 1234,
                },
            }
        if op == "leave":
            self.joined.pop(args["participant"], None)
            self.left.append(args["participant"])
            return None
        if op == "publish":
            self.events.append(args["event"])
            return None
        raise LinkError(f"unknown op {op}", "Invalid")


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1, through the gateway's own ``interfaces`` setting."""
    original = aioice.ice.get_host_addresses
    ice.restrict_host_addresses(["127.0.0.1"])
    restricted = aioice.ice.get_host_addresses
    monkeypatch.setattr(aioice.ice, "get_host_addresses", original)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", restricted)


@pytest.fixture
async def bridge(loopback_only: None) -> AsyncIterator[tuple[WebRtcGateway, FakeLink, FakeWorker]]:
    loop = asyncio.get_running_loop()
    worker = FakeWorker()
    transport, _ = await loop.create_datagram_endpoint(lambda: worker, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    link = FakeLink(port, worker)
    gateway = WebRtcGateway(link, Settings(max_publishers=1, max_subscribers=1))
    gateway.start()
    yield gateway, link, worker
    await gateway.close()
    transport.close()


async def connect(
    gateway: WebRtcGateway,
    client: RTCPeerConnection,
    session: str,
    user: str = "alice",
    **kwargs: Any,
) -> dict[str, Any]:
    offer = await client.createOffer()
    await client.setLocalDescription(offer)
    answer = await gateway.offer(
        user=user, room="tac-1", sdp=client.localDescription.sdp, session=session, **kwargs
    )
    await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return answer


async def wait_for(predicate: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def record(track: MediaStreamTrack, seconds: float) -> np.ndarray[Any, Any]:
    chunks = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(MediaStreamError):
        while time.monotonic() < deadline:
            frame = await asyncio.wait_for(track.recv(), WAIT_S)
            chunks.append(frame.to_ndarray().reshape(-1, 2)[:, 0])
    return np.concatenate(chunks)


async def test_audio_both_ways_through_the_loopback_leg(bridge: Any) -> None:
    gateway, link, worker = bridge
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    received: list[MediaStreamTrack] = []
    client.on("track", received.append)
    try:
        answer = await connect(gateway, client, "s1", priority=200, dispatcher=True)
        assert "a=candidate" in answer["sdp"]  # half-trickle: all of the bridge's candidates
        assert link.joined[answer["participant"]]["codec"] == "L16"
        assert link.joined[answer["participant"]]["dispatcher"] is True
        await wait_for(lambda: len(worker.frames) >= 50)
        assert all(len(f) == FRAME_BYTES for f in worker.frames)
        heard = worker.heard()[-L16_RATE // 2 :]
        assert band_share(heard, TONE_TO_WORKER, L16_RATE) > 0.8

        sending = asyncio.ensure_future(worker.send_tone(2.0))
        await wait_for(lambda: bool(received))
        pcm = await record(received[0], 1.5)
        assert band_share(pcm[-48000 // 2 :], TONE_FROM_WORKER, 48000) > 0.8
        await sending
        stats = await gateway.stats()
        assert stats["sessions"][0]["audio"]["received"] > 0
    finally:
        await client.close()


async def test_a_new_peer_connection_of_the_same_session_keeps_the_leg(bridge: Any) -> None:
    gateway, link, worker = bridge
    first = RTCPeerConnection()
    first.addTrack(ToneTrack(TONE_TO_WORKER))
    second = RTCPeerConnection()
    second.addTrack(ToneTrack(TONE_TO_WORKER))
    received: list[MediaStreamTrack] = []
    second.on("track", received.append)
    try:
        a = await connect(gateway, first, "same")
        await wait_for(lambda: len(worker.frames) > 5)
        b = await connect(gateway, second, "same")
        # Same room: the new peer connection takes over the leg; it never left (a floor
        # it holds stays held) and the room holds it once.
        assert b["participant"] == a["participant"]
        assert not link.left and list(link.joined) == [a["participant"]]
        assert len(gateway.sessions) == 1
        # Audio flows both ways through the kept leg.
        sent = len(worker.frames)
        await wait_for(lambda: len(worker.frames) > sent + 25)
        sending = asyncio.ensure_future(worker.send_tone(2.0))
        await wait_for(lambda: bool(received))
        pcm = await record(received[0], 1.5)
        assert band_share(pcm[-48000 // 2 :], TONE_FROM_WORKER, 48000) > 0.8
        await sending
        # The old peer connection's end does not end the session it handed on.
        await first.close()
        await asyncio.sleep(0.5)
        assert not link.left and len(gateway.sessions) == 1
    finally:
        await first.close()
        await second.close()


async def test_peer_connection_closed_leaves_the_room(bridge: Any) -> None:
    gateway, link, worker = bridge
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    answer = await connect(gateway, client, "s1")
    await wait_for(lambda: len(worker.frames) > 5)
    await client.close()
    # The browser is gone without a hangup: DTLS close_notify ends the connection here;
    # a vanished one fails consent freshness after ~30 s the same way.
    await wait_for(lambda: answer["participant"] in link.left, timeout=40)
    assert not gateway.sessions
    assert any(e["event"] == "webrtc_session" and e["state"] == "closed" for e in link.events)


async def test_unsupported_codecs_are_refused_with_a_clear_error(bridge: Any) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    client = RTCPeerConnection()
    transceiver = client.addTransceiver("audio")
    # Only G.711 offered: the bridge needs Opus from browsers.
    from aiortc import RTCRtpSender

    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
    )
    offer = await client.createOffer()
    await client.setLocalDescription(offer)
    with pytest.raises(LinkError) as refused:
        await gateway.offer(user="bob", room="tac-1", sdp=client.localDescription.sdp, session="x")
    assert str(refused.value) == UNSUPPORTED_CODECS
    assert refused.value.kind == "Invalid"
    assert not link.joined and not gateway.sessions
    await wait_for(lambda: any(e["event"] == "webrtc_error" for e in link.events))
    await client.close()


async def test_unknown_room_and_bad_sdp(bridge: Any) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    with pytest.raises(ValueError, match="SDP offer needs exactly one audio m-line"):
        await gateway.offer(user="bob", room="tac-1", sdp="v=0\r\n", session="x")
    client = RTCPeerConnection()
    client.addTransceiver("audio")
    await client.setLocalDescription(await client.createOffer())
    with pytest.raises(LinkError, match="unknown room: nowhere"):
        await gateway.offer(
            user="bob", room="nowhere", sdp=client.localDescription.sdp, session="x"
        )
    await client.close()


async def test_video_forwarded_without_transcoding_and_limits(bridge: Any) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    publisher = RTCPeerConnection()
    publisher.addTrack(ToneTrack(TONE_TO_WORKER))
    publisher.addTrack(BallTrack())
    viewer = RTCPeerConnection()
    viewer.addTransceiver("audio")
    viewer.addTransceiver("video", direction="recvonly")
    tracks: list[MediaStreamTrack] = []
    viewer.on("track", tracks.append)
    extra = RTCPeerConnection()
    extra.addTrack(ToneTrack(TONE_TO_WORKER))
    extra.addTrack(BallTrack())
    try:
        pub = await connect(gateway, publisher, "pub", user="cam-user")
        source = pub["publishing"]
        assert source == f"webrtc:{pub['participant']}"
        view = await connect(gateway, viewer, "view", user="watcher", video_sources=[source])
        assert view["views"][0]["codec"] == "VP8"
        video = next(t for t in tracks if t.kind == "video")
        frames = 0
        for _ in range(10):
            frame = await asyncio.wait_for(video.recv(), WAIT_S)
            assert frame.width == 160
            frames += 1
        stats = {s["source"]: s for s in (await gateway.stats())["sources"]}
        assert stats[source]["forwarded"] >= frames
        assert stats[source]["transcoded"] == 0
        assert stats[source]["keyframes_in"] >= 1
        # One publisher per room here: the next one is refused, clearly.
        with pytest.raises(LinkError, match="room tac-1 has its maximum of 1 video publishers"):
            await connect(gateway, extra, "extra", user="other")
    finally:
        for pc in (publisher, viewer, extra):
            await pc.close()


def test_keyframe_detection() -> None:
    assert is_keyframe("VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))
    assert not is_keyframe("VP8", bytes([0x11, 0x02, 0x00]))
    assert is_keyframe("H264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88")
    assert not is_keyframe("H264", b"\x00\x00\x00\x01\x41\x9a")
    assert not is_keyframe("AV1", b"\x00")


async def test_transcoded_once_per_source_not_per_viewer() -> None:
    """Two H.264 viewers of a VP8 source share one transcoder; a VP8 viewer is forwarded."""
    source = VideoSource("webrtc:p1", "r1")
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 48, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90000)
    encoder.options = {"deadline": "realtime", "lag-in-frames": "0"}
    h264_a, h264_b, vp8 = EncodedTrack("H264"), EncodedTrack("H264"), EncodedTrack("VP8")
    source.add_viewer(vp8)
    units = []
    for i in range(10):
        image = np.full((48, 64, 3), i * 20, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 3000
        for packet in encoder.encode(frame):
            data = bytes(packet)
            units.append(VideoUnit("VP8", i * 3000, is_keyframe("VP8", data), data, time.time()))
    source.publish(units[0])
    source.add_viewer(h264_a)
    source.add_viewer(h264_b)
    assert list(source.transcoders) == ["H264"]
    for unit in units[1:]:
        source.publish(unit)
    await wait_for(lambda: source.counters.transcoded >= 5)
    received = [await asyncio.wait_for(h264_a.recv(), WAIT_S) for _ in range(3)]
    assert received[0].pts is not None
    assert source.counters.transcoded < len(units) + 1  # once per frame, not per viewer
    assert source.counters.forwarded == len(units)
    await source.close()


async def test_camera_feed_waits_for_the_bus_and_comes_back_after_a_restart(
    tmp_path: Path,
) -> None:
    """The camera gateway reports running before its bus socket exists, and may restart:
    the WebRTC gateway's subscription retries with back-off; its viewer's timeline never
    goes back when the restarted camera's timestamps do."""
    from bridge.videobus import EncodedFrame, VideoBusServer

    path = tmp_path / "video.sock"
    link = FakeLink(0, FakeWorker())
    gateway = WebRtcGateway(link, Settings(video_bus=path))
    source = gateway._source("camera:gate", "r1")
    viewer = EncodedTrack("H264")
    source.add_viewer(viewer)
    gateway._watch_camera(source)
    idr = b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88"

    async def serve(first_pts: int) -> None:
        bus = VideoBusServer(path)
        await bus.start()
        bus.add_source("camera:gate")
        await wait_for(lambda: bus.subscribers("camera:gate") == 1)
        for i in range(3):
            bus.publish(EncodedFrame("camera:gate", "H264", first_pts + i * 3600, True, idr, 0.0))
        await wait_for(lambda: len(viewer._queue) >= 3)
        await bus.close()

    try:
        await wait_for(lambda: source.counters.bus_errors >= 2)  # no bus yet: it keeps trying
        assert source.counters.frames_in == 0
        await serve(900000)
        first = [(await viewer.recv()).pts for _ in range(3)]
        await serve(0)  # a restart: timestamps start again from 0
        second = [(await viewer.recv()).pts for _ in range(3)]
    finally:
        await gateway.close()
    assert first == [900000, 903600, 907200]
    assert second == sorted(second) and second[0] > first[-1]
    assert viewer.restarts == 1
    assert [e["kind"] for e in link.events if e["event"] == "webrtc_error"][:1] == ["Unavailable"]


def test_interface_addresses() -> None:
    assert ice.interface_addresses(["127.0.0.1", "lo", "::1"])[0] == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown interface or address: nope0"):
        ice.interface_addresses(["nope0"])


def test_l16_payload_errors() -> None:
    good = l16_packet(1, 2, 3, b"\x00" * FRAME_BYTES, True)
    assert l16_payload(good) == b"\x00" * FRAME_BYTES
    with pytest.raises(ValueError, match="RTP packet is truncated"):
        l16_payload(good[:8])
    with pytest.raises(ValueError, match="L16 payload is not one 20 ms frame"):
        l16_payload(good[:-2])
    bad_pt = bytearray(good)
    bad_pt[1] = 0
    with pytest.raises(ValueError, match="RTP packet has unexpected payload type"):
        l16_payload(bytes(bad_pt))
    header = struct.unpack("!BBHII", good[:12])
    assert header[0] == 0x80 and header[1] & 0x80


# ---------------------------------------------------------------- shared Opus encode
SHARED_TONE = 1010.0  # Hz: not a multiple of 50, so no two 20 ms frames are equal


@pytest.mark.parametrize("shared", [True, False])
async def test_legs_that_hear_the_same_mix_share_one_encode_per_tick(
    loopback_only: None, shared: bool
) -> None:
    """Three browsers hear the worker's shared row: one Opus encode per tick, not three
    (with ``shared_encode`` off aiortc encodes per leg), and each decodes the tone."""
    loop = asyncio.get_running_loop()
    worker = FakeWorker()
    transport, _ = await loop.create_datagram_endpoint(lambda: worker, local_addr=("127.0.0.1", 0))
    link = FakeLink(transport.get_extra_info("sockname")[1], worker)
    gateway = WebRtcGateway(link, Settings(shared_encode=shared))
    clients = [RTCPeerConnection() for _ in range(3)]
    tracks: list[list[MediaStreamTrack]] = [[] for _ in clients]
    try:
        for i, client in enumerate(clients):
            client.addTransceiver("audio", direction="recvonly")
            client.on("track", tracks[i].append)
            await connect(gateway, client, f"s{i}", user=f"user{i}")
        await wait_for(lambda: all(tracks))
        sending = asyncio.ensure_future(worker.send_mix(2.0, SHARED_TONE))
        recorded = await asyncio.gather(*(record(t[0], 1.5) for t in tracks))
        ticks = await sending
        await asyncio.sleep(0.1)  # the last frames are delivered
        for pcm in recorded:
            assert band_share(pcm[-48000 // 2 :], SHARED_TONE, 48000) > 0.8
        stats = (await gateway.stats())["audio_encode"]
        if not shared:
            assert stats is None
            return
        assert gateway.encoder is not None
        assert stats["streams_created"] == 1
        assert stats["switches"] == 0
        assert ticks - 5 <= stats["encodes"] <= ticks
        assert stats["frames"] >= 3 * (ticks - 5)
    finally:
        for client in clients:
            await client.close()
        await gateway.close()
        transport.close()


def test_silence_packet_decodes_to_silence() -> None:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout, decoder.format = 48000, "stereo", "s16"
    for _ in range(3):
        frames = decoder.decode(av.Packet(SILENCE_PACKET))
        assert sum(f.samples for f in frames) == 960
        assert all(not f.to_ndarray().any() for f in frames)


class Client:
    """What one leg's browser decodes from the packets the encoder hands its leg."""

    def __init__(self, encoder: MixEncoder) -> None:
        self.packets: list[bytes] = []
        self.listener: Listener = encoder.add(self.packets.append)
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate, self._decoder.layout, self._decoder.format = (
            48000,
            "mono",
            "s16",
        )
        self._decoded = 0

    def decoded(self) -> np.ndarray[Any, Any]:
        """All packets not decoded yet, decoded (48 kHz mono)."""
        out = []
        for data in self.packets[self._decoded :]:
            out += [f.to_ndarray().reshape(-1) for f in self._decoder.decode(av.Packet(data))]
        self._decoded = len(self.packets)
        return np.concatenate(out)


def tone_frame(freq: float, tick: int) -> bytes:
    t = (np.arange(320) + tick * 320) / L16_RATE
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(">i2").tobytes()


async def test_a_talker_gets_its_own_encode_and_returns_only_at_a_burst_boundary() -> None:
    encoder = MixEncoder()
    talker, *listeners = clients = [Client(encoder) for _ in range(4)]
    loud = tone_frame(300.0, 0)
    quiet = bytes(FRAME_BYTES)
    tick = 0

    def run(ticks: int, talker_hears: float | None, talker_says: bytes) -> None:
        nonlocal tick
        for _ in range(ticks):
            room = tone_frame(SHARED_TONE, tick)
            talker.listener.uplink(talker_says)
            # The talker's frame first: the order of arrival does not decide who keeps
            # the shared encoder.
            encoder.submit(
                talker.listener, room if talker_hears is None else tone_frame(talker_hears, tick)
            )
            for client in listeners:
                encoder.submit(client.listener, room)
            encoder.flush()
            tick += 1

    # All four listen: one encoder, one encode per tick.
    run(20, None, quiet)
    shared = talker.listener.stream
    assert shared is not None and all(c.listener.stream is shared for c in clients)
    assert encoder.encodes == 20
    # The talker talks and the worker gives it its own N-1 mix: its own encoder at once;
    # the listeners keep theirs.
    run(40, 700.0, loud)
    own = talker.listener.stream
    assert own is not None and own is not shared
    assert all(c.listener.stream is shared for c in listeners)
    assert encoder.encodes == 20 + 2 * 40
    # Mid-burst its mix equals the room mix again (a pause in the N-1, a displaced
    # talker): it stays on its own encoder while its own uplink is talking.
    run(10, None, loud)
    assert talker.listener.stream is own
    assert encoder.encodes == 20 + 2 * 40 + 2 * 10
    # Its burst ends (the talker detection's hang time runs out): back on the shared one.
    run(20, None, quiet)
    assert talker.listener.stream is shared
    assert encoder.switches == 2
    # Room silence: no encode at all, every leg gets the silence packet.
    before = encoder.encodes
    for client in clients:
        encoder.submit(client.listener, quiet)
    encoder.flush()
    assert encoder.encodes == before
    assert all(c.packets[-1] == SILENCE_PACKET and c.listener.stream is None for c in clients)

    for i, client in enumerate(clients):
        pcm = client.decoded()
        assert len(pcm) == 960 * (tick + 1)
        heard = pcm[: 960 * tick]
        # Each listener decodes the room tone all along; the talker its N-1 mix while
        # it talked, then the room tone again.
        assert band_share(heard[960 : 960 * 20], SHARED_TONE, 48000) > 0.8
        if i == 0:
            assert band_share(heard[960 * 22 : 960 * 60], 700.0, 48000) > 0.8
        else:
            assert band_share(heard[960 * 20 : 960 * 60], SHARED_TONE, 48000) > 0.8
        assert band_share(heard[960 * 72 :], SHARED_TONE, 48000) > 0.8


# ------------------------------------------------------------------ races and leftovers
class HeldJoinLink(FakeLink):
    """A link whose ``join`` answers only when the test releases it."""

    def __init__(self, worker_port: int, worker: FakeWorker) -> None:
        super().__init__(worker_port, worker)
        self.join_started = asyncio.Event()
        self.release = asyncio.Event()

    async def request(self, op: str, **args: Any) -> Any:
        if op == "join":
            self.join_started.set()
            await self.release.wait()
        return await super().request(op, **args)


async def test_a_malformed_trickled_candidate_is_refused_as_invalid(bridge: Any) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    try:
        await connect(gateway, client, "s1")
        for bad in ("foo", "candidate:foo", "1 1 udp x 127.0.0.1 5 typ host"):
            with pytest.raises(ValueError) as refused:
                await gateway.candidate(user="alice", session="s1", candidate=bad, sdpMid="0")
            assert str(refused.value) == f"{BAD_CANDIDATE}: {bad}"
        assert ("alice", "s1") in gateway.sessions
    finally:
        await client.close()


async def test_a_hangup_during_the_join_leaves_the_room(loopback_only: None) -> None:
    worker = FakeWorker()
    link = HeldJoinLink(0, worker)
    gateway = WebRtcGateway(link, Settings())
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    client.addTrack(BallTrack())
    try:
        await client.setLocalDescription(await client.createOffer())
        offering = asyncio.ensure_future(
            gateway.offer(user="alice", room="tac-1", sdp=client.localDescription.sdp, session="s")
        )
        await asyncio.wait_for(link.join_started.wait(), WAIT_S)
        await gateway.hangup(user="alice", session="s")
        link.release.set()
        with pytest.raises(LinkError) as refused:
            await offering
        assert str(refused.value) == SESSION_CLOSED
        assert refused.value.kind == "Conflict"
        assert link.left == ["p1"] and not link.joined
        assert not gateway.sessions and not gateway.sources
    finally:
        await client.close()
        await gateway.close()


async def test_a_hangup_during_ice_gathering_registers_no_views(
    loopback_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = FakeWorker()
    link = FakeLink(0, worker)
    gateway = WebRtcGateway(link, Settings(video_bus=tmp_path / "video.sock"))
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    client.addTransceiver("video", direction="recvonly")
    gathering = asyncio.Event()
    release = asyncio.Event()
    original = RTCPeerConnection.setLocalDescription

    async def held(self: RTCPeerConnection, description: Any) -> None:
        gathering.set()
        await release.wait()
        await original(self, description)

    try:
        await client.setLocalDescription(await client.createOffer())
        monkeypatch.setattr(RTCPeerConnection, "setLocalDescription", held)
        offering = asyncio.ensure_future(
            gateway.offer(
                user="alice",
                room="tac-1",
                sdp=client.localDescription.sdp,
                session="s",
                video_sources=["camera:gate"],
            )
        )
        await asyncio.wait_for(gathering.wait(), WAIT_S)
        await gateway.hangup(user="alice", session="s")
        release.set()
        with pytest.raises(LinkError, match=SESSION_CLOSED) as refused:
            await offering
        assert refused.value.kind == "Conflict"
        assert link.left == ["p1"]
        assert not gateway.sessions and not gateway.sources and not gateway._cameras
    finally:
        await client.close()
        await gateway.close()


async def test_a_refused_offer_leaves_no_camera_source(bridge: Any, tmp_path: Path) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    gateway.settings = Settings(video_bus=tmp_path / "video.sock")
    from aiortc import RTCRtpSender

    client = RTCPeerConnection()
    audio = client.addTransceiver("audio")
    audio.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
    )
    client.addTransceiver("video", direction="recvonly")
    try:
        await client.setLocalDescription(await client.createOffer())
        sdp = client.localDescription.sdp
        with pytest.raises(LinkError, match=UNSUPPORTED_CODECS):
            await gateway.offer(
                user="bob", room="tac-1", sdp=sdp, session="x", video_sources=["camera:gate"]
            )
        assert not gateway.sources and not gateway.sessions
        long_name = "camera:" + "x" * MAX_SOURCE_NAME
        with pytest.raises(ValueError) as refused:
            await gateway.offer(
                user="bob", room="tac-1", sdp=sdp, session="x", video_sources=[long_name]
            )
        assert str(refused.value) == (
            f"video source names are at most {MAX_SOURCE_NAME} characters"
        )
    finally:
        await client.close()


async def test_a_session_that_never_connects_ends_at_its_deadline(
    bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, link, worker = bridge  # noqa: RUF059
    monkeypatch.setattr(gateway_module, "CONNECT_DEADLINE_S", 0.2)
    client = RTCPeerConnection()
    client.addTrack(ToneTrack(TONE_TO_WORKER))
    try:
        await client.setLocalDescription(await client.createOffer())
        # A trickling browser's offer: no candidates yet, and the tab closes before any.
        sdp = "".join(
            line
            for line in client.localDescription.sdp.splitlines(keepends=True)
            if not line.startswith(("a=candidate", "a=end-of-candidates"))
        )
        answer = await gateway.offer(user="alice", room="tac-1", sdp=sdp, session="s")
        await wait_for(lambda: answer["participant"] in link.left)
        assert not gateway.sessions
        await wait_for(
            lambda: any(
                e["event"] == "webrtc_session" and e.get("reason") == NOT_CONNECTED
                for e in link.events
            )
        )
    finally:
        await client.close()


async def test_a_full_transcoder_queue_waits_for_a_keyframe() -> None:
    sent: list[int] = []

    async def keyframe_sender() -> None:
        sent.append(1)

    source = VideoSource("webrtc:p1", "r1", keyframe_sender=keyframe_sender)
    transcoder = Transcoder(source, "H264")
    try:
        transcoder.put(VideoUnit("VP8", 0, True, b"k", 0.0))
        for i in range(VIEWER_QUEUE):  # no await: the transcoder takes none meanwhile
            transcoder.put(VideoUnit("VP8", i + 1, False, b"p", 0.0))
        assert source.counters.dropped == 1
        assert source.counters.keyframe_requests_sent == 1
        transcoder.put(VideoUnit("VP8", 99, False, b"p", 0.0))  # no reference: not taken
        assert source.counters.dropped == 1 and transcoder._queue.qsize() == VIEWER_QUEUE
    finally:
        await transcoder.close()
        await source.close()
