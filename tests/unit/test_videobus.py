from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge import videobus
from bridge.videobus import EncodedFrame, VideoBusServer, subscribe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "video"
SOURCE = "camera:gate"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_keyframe_fixture_parses_and_round_trips() -> None:
    data = load("frame_keyframe.bin")
    frame = EncodedFrame.parse(data)
    assert frame == EncodedFrame(
        source="camera:gate",
        codec="H264",
        pts=900_000,
        keyframe=True,
        data=b"\x00\x00\x00\x01\x67\x42\x00\x1f\x00\x00\x00\x01\x65\x88",
        captured=1_700_000_000.25,
    )
    assert bytes(frame) == data


def test_delta_fixture_parses_and_round_trips() -> None:
    data = load("frame_delta.bin")
    frame = EncodedFrame.parse(data)
    assert (frame.codec, frame.keyframe, frame.pts, frame.data) == (
        "VP8",
        False,
        903_600,
        b"1\x02\x00",
    )
    assert bytes(frame) == data


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("frame_header_truncated.bin", "video frame is truncated"),
        ("frame_source_truncated.bin", "video frame is truncated"),
        ("frame_version_invalid.bin", "video frame has unsupported version 2"),
        ("frame_flags_invalid.bin", "video frame has reserved flags set"),
        ("frame_codec_invalid.bin", "video frame has unknown codec 'H265'"),
        ("frame_source_invalid.bin", "video frame source is not UTF-8"),
        ("frame_data_invalid.bin", "video frame has no data"),
    ],
)
def test_bad_frames_are_refused_with_exact_errors(name: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        EncodedFrame.parse(load(name))
    assert str(exc.value) == message


def test_source_too_long_is_refused() -> None:
    frame = EncodedFrame("c" * 256, "H264", 0, True, b"x", 0.0)
    with pytest.raises(ValueError, match="video frame source is too long"):
        bytes(frame)


def make(pts: int, keyframe: bool, size: int = 100, source: str = SOURCE) -> EncodedFrame:
    return EncodedFrame(source, "H264", pts, keyframe, bytes([pts % 251]) * size, float(pts))


@pytest.fixture
async def bus() -> AsyncIterator[VideoBusServer]:
    # A short folder: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="vb") as tmp:
        server = VideoBusServer(Path(tmp) / "video.sock")
        await server.start()
        server.add_source(SOURCE)
        try:
            yield server
        finally:
            await server.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_unknown_source_is_refused(bus: VideoBusServer) -> None:
    with pytest.raises(LookupError) as exc:
        async for _ in subscribe(bus.path, "camera:x"):
            pass
    assert str(exc.value) == "unknown video source: camera:x"


async def test_socket_is_private(bus: VideoBusServer) -> None:
    assert bus.path.stat().st_mode & 0o777 == videobus.SOCKET_MODE


async def test_late_subscriber_gets_the_gop_from_the_keyframe(bus: VideoBusServer) -> None:
    demand: list[tuple[str, int]] = []
    bus.on_demand(lambda source, count: demand.append((source, count)))
    bus.publish(make(0, False))  # before any keyframe: never cached
    bus.publish(make(1, True))
    bus.publish(make(2, False))
    bus.publish(make(3, True))  # a new GOP replaces the old one
    bus.publish(make(4, False))
    bus.publish(make(5, False))
    assert bus.stats(SOURCE)["gop_frames"] == 3

    stream = subscribe(bus.path, SOURCE)
    got = [await anext(stream) for _ in range(3)]
    assert [(f.pts, f.keyframe) for f in got] == [(3, True), (4, False), (5, False)]
    assert got[0] == make(3, True)
    assert demand == [(SOURCE, 1)]
    bus.publish(make(6, False))
    assert (await anext(stream)).pts == 6
    await stream.aclose()
    await wait_for(lambda: demand[-1] == (SOURCE, 0))
    assert bus.subscribers(SOURCE) == 0


async def test_frames_of_other_sources_and_unknown_ones(bus: VideoBusServer) -> None:
    bus.add_source("camera:other")
    stream = subscribe(bus.path, SOURCE)
    first = asyncio.ensure_future(anext(stream))
    await wait_for(lambda: bus.subscribers(SOURCE) == 1)
    bus.publish(make(1, True, source="camera:other"))
    bus.publish(make(2, True, source="camera:nobody"))
    bus.publish(make(3, True))
    assert (await asyncio.wait_for(first, 5)).pts == 3
    assert bus.unknown_frames == 1
    assert bus.stats("camera:other")["frames"] == 1
    await stream.aclose()


async def test_slow_consumer_is_dropped_to_the_next_keyframe(bus: VideoBusServer) -> None:
    fast = subscribe(bus.path, SOURCE)
    slow_reader, slow_writer = await asyncio.open_unix_connection(str(bus.path))
    slow_writer.write(videobus.encode_record(videobus.RecordType.SUBSCRIBE, SOURCE.encode()))
    await wait_for(lambda: bus.subscribers(SOURCE) == 1)
    fast_first = asyncio.ensure_future(anext(fast))
    await wait_for(lambda: bus.subscribers(SOURCE) == 2)

    # The slow one never reads: the producer must never wait for it.
    size = videobus.HIGH_WATER // 16
    fast_frames: list[EncodedFrame] = []
    pts = 0
    for _ in range(8):
        for i in range(25):
            bus.publish(make(pts, i == 0, size))
            pts += 1
            # The fast consumer keeps up, frame by frame.
            fast_frames.append(await (fast_first if pts == 1 else anext(fast)))
    assert [f.pts for f in fast_frames] == list(range(pts))
    stats = bus.stats(SOURCE)
    assert stats["dropped"] > 0

    # Now the slow one reads everything it was sent: it must see whole GOPs only —
    # each run of frames after a gap begins at a keyframe.
    slow_writer.write_eof()
    got: list[EncodedFrame] = []
    kind, _ = await videobus.read_record(slow_reader)
    assert kind == videobus.RecordType.ACCEPTED
    while True:
        try:
            kind, payload = await videobus.read_record(slow_reader)
        except asyncio.IncompleteReadError:
            break
        got.append(EncodedFrame.parse(payload))
    assert got, "the slow consumer got nothing before it fell behind"
    assert len(got) < pts
    assert got[0].keyframe
    for prev, cur in itertools.pairwise(got):
        if cur.pts != prev.pts + 1:
            assert cur.keyframe, f"resumed at pts {cur.pts}, not a keyframe"
    slow_writer.close()
    await fast.aclose()


async def test_gop_cache_is_bounded(bus: VideoBusServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(videobus, "MAX_GOP_FRAMES", 4)
    bus.publish(make(0, True))
    for pts in range(1, 4):
        bus.publish(make(pts, False))
    assert bus.stats(SOURCE)["gop_frames"] == 4
    bus.publish(make(4, False))
    assert bus.stats(SOURCE)["gop_frames"] == 0
    assert bus.stats(SOURCE)["gop_overflows"] == 1
    bus.publish(make(5, True))
    assert bus.stats(SOURCE)["gop_frames"] == 1


async def test_removed_source_ends_the_stream(bus: VideoBusServer) -> None:
    stream = subscribe(bus.path, SOURCE)
    first = asyncio.ensure_future(anext(stream))
    await wait_for(lambda: bus.subscribers(SOURCE) == 1)
    bus.remove_source(SOURCE)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(first, 5)
    assert SOURCE not in bus.sources()


async def test_a_bus_that_closes_before_answering_ends_the_stream(tmp_path: Path) -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    path = tmp_path / "closing.sock"
    server = await asyncio.start_unix_server(hang_up, str(path))
    try:
        assert [frame async for frame in subscribe(path, "cam")] == []
    finally:
        server.close()
        await server.wait_closed()


async def test_a_bad_request_is_counted_and_closed(bus: VideoBusServer) -> None:
    reader, writer = await asyncio.open_unix_connection(str(bus.path))
    writer.write(videobus.encode_record(videobus.RecordType.FRAME, b"nonsense"))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert bus.bad_requests == 1
    writer.close()
