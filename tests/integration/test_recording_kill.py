"""The recorder as a process: fed through its rings, stopped, terminated and killed."""

from __future__ import annotations

import json
import os
import signal
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from bridge.recorder import (
    BurstInfo,
    RecorderConfig,
    RecorderProcess,
    RecordingFormat,
    RecordingStart,
    RecordKind,
    list_recordings,
    sidecar_path,
)
from bridge.shmring import RingWriter

pytestmark = pytest.mark.slow

RATE = 16000
FRAME = 320
FRAME_S = 0.02
FRAME_NS = 20_000_000
ROOM = 3


def tone(seconds: float) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    return (12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(params=list(RecordingFormat))
def recorder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecorderProcess]:
    process = RecorderProcess(RecorderConfig(tmp_path, format=request.param), workers=2)
    process.start()
    yield process
    process.close()  # stops the process if a test left it running, unlinks the rings


@pytest.fixture
def writer(recorder: RecorderProcess) -> Iterator[RingWriter]:
    writer = RingWriter.attach(recorder.ring_name(1))
    yield writer
    writer.close()


def test_sigkill_leaves_a_readable_file_missing_at_most_a_second(
    recorder: RecorderProcess, writer: RingWriter, tmp_path: Path
) -> None:
    signal_in = tone(3.0)
    t0 = time.time_ns()
    started = time.monotonic()
    assert writer.push(RecordKind.START, ROOM, t0, bytes(RecordingStart("ops-1")))
    for i in range(len(signal_in) // FRAME):
        # In real time, stamped like a media worker's ticks.
        delay = started + i * FRAME_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = signal_in[i * FRAME : (i + 1) * FRAME]
        assert writer.push(RecordKind.FRAME, ROOM, t0 + i * FRAME_NS, frame)
    wait_for(lambda: writer.pending == 0, 10, "the recorder to take every frame")
    pid = recorder.pid
    assert pid is not None and recorder.is_alive()

    os.kill(pid, signal.SIGKILL)

    assert recorder.stop() == -signal.SIGKILL
    (info,) = list_recordings(tmp_path)
    out, rate = sf.read(info.path, dtype="int16")
    assert rate == RATE
    assert 2 * RATE <= len(out) <= len(signal_in)
    assert np.array_equal(out, signal_in[: len(out)])
    if info.path.suffix == ".wav":
        with wave.open(str(info.path)) as strict:  # the RIFF sizes were kept up to date
            assert 2 * RATE <= strict.getnframes() <= len(signal_in)


def test_stop_drains_the_ring_and_finishes_the_files(
    recorder: RecorderProcess, writer: RingWriter, tmp_path: Path
) -> None:
    signal_in = tone(1.0)
    t0 = time.time_ns()
    unit = BurstInfo("u7", "Medic 7", "imminent peril")
    writer.push(RecordKind.START, ROOM, t0, bytes(RecordingStart("ops-2")))
    writer.push(RecordKind.BURST_START, ROOM, t0 + 100_000_000, bytes(unit))
    rooms = np.full(len(signal_in) // FRAME, ROOM, dtype=np.int64)
    stamps = t0 + FRAME_NS * np.arange(len(rooms), dtype=np.int64)
    assert writer.push_many(RecordKind.FRAME, rooms, stamps, signal_in.reshape(-1, FRAME)) == 50
    writer.push(RecordKind.BURST_END, ROOM, t0 + 900_000_000, bytes(unit))
    writer.push(RecordKind.STOP, ROOM, t0 + 1_000_000_000, b"")

    assert recorder.stop() == 0

    (info,) = list_recordings(tmp_path)
    assert (info.room, info.duration_s, info.has_bursts) == ("ops-2", 1.0, True)
    assert np.array_equal(sf.read(info.path, dtype="int16")[0], signal_in)
    (line,) = sidecar_path(info.path).read_text().splitlines()
    burst = json.loads(line)
    assert (burst["participant"], burst["call_type"]) == ("u7", "imminent peril")
    assert (burst["start_offset_s"], burst["end_offset_s"]) == (0.1, 0.9)
    health = recorder.health()
    assert health["alive"] is False
    assert [ring["dropped"] for ring in health["rings"]] == [0, 0]


def test_sigterm_finishes_open_recordings(
    recorder: RecorderProcess, writer: RingWriter, tmp_path: Path
) -> None:
    t0 = time.time_ns()
    unit = BurstInfo("u1", "Engine 1")
    writer.push(RecordKind.START, ROOM, t0, bytes(RecordingStart("ops-3")))
    writer.push(RecordKind.BURST_START, ROOM, t0, bytes(unit))
    for i in range(25):
        writer.push(
            RecordKind.FRAME, ROOM, t0 + i * FRAME_NS, tone(0.5)[i * FRAME : (i + 1) * FRAME]
        )
    wait_for(lambda: writer.pending == 0, 10, "the recorder to take every record")
    pid = recorder.pid
    assert pid is not None

    os.kill(pid, signal.SIGTERM)

    assert recorder.stop() == 0
    (info,) = list_recordings(tmp_path)
    # Finished: libsndfile knows the length, and the open burst was closed.
    assert info.duration_s is not None and info.duration_s >= 0.5
    with sf.SoundFile(info.path) as sound:
        assert sound.frames == int(info.duration_s * RATE)
    (line,) = sidecar_path(info.path).read_text().splitlines()
    assert json.loads(line)["participant"] == "u1"
