from __future__ import annotations

import json
import logging
import shutil
import wave
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from bridge.recorder import (
    BurstInfo,
    Recorder,
    RecorderConfig,
    RecordingFormat,
    RecordingStart,
    RecordKind,
    list_recordings,
    sidecar_path,
)
from bridge.shmring import Record

RATE = 16000
FRAME = 320  # 20 ms
FRAME_NS = 20_000_000
NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # 2023-11-14T22:13:20Z
ROOM = 7


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def tone(seconds: float, hz: float = 440.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    return (12000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def frames(samples: npt.NDArray[np.int16], t0: int, room: int = ROOM) -> list[Record]:
    return [
        Record(
            RecordKind.FRAME,
            room,
            t0 + i * FRAME_NS,
            samples[i * FRAME : (i + 1) * FRAME].tobytes(),
        )
        for i in range(len(samples) // FRAME)
    ]


def start(room_name: str = "ops-1", t_ns: int = T0, room: int = ROOM) -> Record:
    return Record(RecordKind.START, room, t_ns, bytes(RecordingStart(room_name)))


def stop(t_ns: int, room: int = ROOM) -> Record:
    return Record(RecordKind.STOP, room, t_ns, b"")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=list(RecordingFormat))
def recorder(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Recorder]:
    recorder = Recorder(RecorderConfig(tmp_path, format=request.param), clock=clock)
    yield recorder
    recorder.close()


def only_path(recorder: Recorder) -> Path:
    (path,) = recorder.active.values()
    return path


def read(path: Path) -> npt.NDArray[np.int16]:
    samples, rate = sf.read(path, dtype="int16")
    assert rate == RATE
    return np.asarray(samples)


def test_a_sine_in_is_the_same_sine_out(recorder: Recorder, tmp_path: Path) -> None:
    signal = tone(2.0)
    recorder.handle(0, [start(), *frames(signal, T0)])
    path = only_path(recorder)

    recorder.handle(0, [stop(T0 + 2 * NS)])

    assert recorder.active == {}
    suffix = recorder.config.format.suffix
    assert path == tmp_path / "ops-1" / f"ops-1-20231114T221320Z{suffix}"
    out = read(path)
    assert len(out) == len(signal)
    assert np.array_equal(out, signal)
    assert sf.info(path).format == recorder.config.format.major


def test_jitter_below_a_frame_is_not_filled(recorder: Recorder) -> None:
    signal = tone(1.0)
    records = frames(signal, T0)
    jittered = [
        Record(r.kind, r.room, r.t_ns + (7_000_000 if i % 3 else -4_000_000), r.payload)
        for i, r in enumerate(records)
    ]
    recorder.handle(0, [start(), *jittered])
    path = only_path(recorder)
    recorder.handle(0, [stop(T0 + NS)])

    assert np.array_equal(read(path), signal)


def test_a_gap_in_the_frames_is_filled_with_silence(recorder: Recorder) -> None:
    first, second = tone(1.0, 440), tone(0.5, 880)
    recorder.handle(0, [start(), *frames(first, T0), *frames(second, T0 + 3 * NS)])
    path = only_path(recorder)
    recorder.handle(0, [stop(T0 + 4 * NS)])

    out = read(path)
    assert len(out) == 4 * RATE  # file time is wall time
    assert np.array_equal(out[:RATE], first)
    assert not out[RATE : 3 * RATE].any()
    assert np.array_equal(out[3 * RATE : 3 * RATE + len(second)], second)
    assert not out[3 * RATE + len(second) :].any()


def test_an_idle_room_is_filled_up_to_now_less_the_lag(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.handle(0, [start(), *frames(tone(0.2), T0)])
    path = only_path(recorder)
    clock.now = T0 + 3 * NS

    recorder.poll()

    lag = recorder.config.silence_lag_s
    # Frames of the last `lag` seconds may still be in the ring: not filled yet.
    recorder.handle(0, frames(tone(0.1), T0 + int((3 - lag) * NS)))
    recorder.handle(0, [stop(T0 + 3 * NS)])
    out = read(path)
    assert len(out) == 3 * RATE
    assert np.array_equal(out[: int(0.2 * RATE)], tone(0.2))
    assert not out[int(0.2 * RATE) : int((3 - lag) * RATE)].any()
    assert np.array_equal(out[int((3 - lag) * RATE) : int((3 - lag + 0.1) * RATE)], tone(0.1))


def test_a_step_of_the_wall_clock_is_not_filled(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    an_hour = 3600 * NS
    recorder.handle(0, [start(), *frames(tone(0.2), T0), *frames(tone(0.2), T0 + an_hour)])
    path = only_path(recorder)
    recorder.handle(0, [stop(T0 + an_hour + NS // 5)])

    assert len(read(path)) == int(0.4 * RATE)
    assert "taken for a step of the wall clock" in caplog.text


def test_bursts_are_indexed_in_the_sidecar(recorder: Recorder) -> None:
    unit = BurstInfo("sip:unit-12@example.org", "Engine 12", "emergency")
    dispatcher = BurstInfo("disp-1", "Dispatch", "normal")
    recorder.handle(
        0,
        [
            start(),
            *frames(tone(3.0), T0),
            Record(RecordKind.BURST_START, ROOM, T0 + 250_000_000, bytes(unit)),
            Record(
                RecordKind.BURST_END, ROOM, T0 + 1_500_000_000, bytes(BurstInfo(unit.participant))
            ),
            Record(RecordKind.BURST_START, ROOM, T0 + 2_000_000_000, bytes(dispatcher)),
        ],
    )
    path = only_path(recorder)
    sidecar = sidecar_path(path)
    assert sidecar.name == path.stem + ".bursts.jsonl"
    # The first burst is on disk as soon as it ended.
    assert len(sidecar.read_text().splitlines()) == 1

    recorder.handle(0, [stop(T0 + 3 * NS)])  # closes the open burst

    lines = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert lines == [
        {
            "participant": "sip:unit-12@example.org",
            "alias": "Engine 12",
            "call_type": "emergency",
            "start": "2023-11-14T22:13:20.250+00:00",
            "end": "2023-11-14T22:13:21.500+00:00",
            "start_offset_s": 0.25,
            "end_offset_s": 1.5,
        },
        {
            "participant": "disp-1",
            "alias": "Dispatch",
            "call_type": "normal",
            "start": "2023-11-14T22:13:22.000+00:00",
            "end": "2023-11-14T22:13:23.000+00:00",
            "start_offset_s": 2.0,
            "end_offset_s": 3.0,
        },
    ]


def test_the_header_counts_the_audio_while_recording(
    recorder: Recorder, clock: FakeClock, tmp_path: Path
) -> None:
    """What a SIGKILL leaves behind: the file as it is between two header updates."""
    signal = tone(2.0)
    recorder.handle(0, [start(), *frames(signal, T0)])
    path = only_path(recorder)
    clock.now = T0 + 2 * NS
    recorder.poll()  # the header update is due
    snapshot = tmp_path / ("snapshot" + path.suffix)
    shutil.copyfile(path, snapshot)

    out = read(snapshot)

    if recorder.config.format is RecordingFormat.FLAC:
        # Whole FLAC blocks of 4096 samples; libFLAC holds back the last one.
        assert len(out) == (len(signal) - 1) // 4096 * 4096
    else:
        assert len(out) == len(signal)
        with wave.open(str(snapshot)) as strict:  # checks the RIFF and data sizes
            assert strict.getnframes() == len(signal)
    assert np.array_equal(out, signal[: len(out)])


def test_an_unfinished_file_without_header_update_is_what_we_fix(tmp_path: Path) -> None:
    """The libsndfile behaviour the header upkeep exists for."""
    flac = sf.SoundFile(tmp_path / "a.flac", "w", RATE, 1, format="FLAC", subtype="PCM_16")
    flac.write(tone(1.0))
    assert sf.info(tmp_path / "a.flac").frames == 2**63 - 1  # total samples "unknown"
    flac.close()
    wav = sf.SoundFile(tmp_path / "a.wav", "w", RATE, 1, format="WAV", subtype="PCM_16")
    wav.write(tone(1.0))
    with pytest.raises(wave.Error), wave.open(str(tmp_path / "a.wav")):  # data size still 0
        pass
    wav.close()


def test_names_do_not_collide_and_rooms_are_made_safe(recorder: Recorder, tmp_path: Path) -> None:
    recorder.handle(0, [start("Fire/Ops 1", room=1), start("Fire/Ops 1", room=2)])

    suffix = recorder.config.format.suffix
    assert sorted(p.name for p in recorder.active.values()) == [
        f"Fire_Ops_1-20231114T221320Z-2{suffix}",
        f"Fire_Ops_1-20231114T221320Z{suffix}",
    ]
    assert {p.parent for p in recorder.active.values()} == {tmp_path / "Fire_Ops_1"}


def test_one_bad_room_does_not_stop_the_others(
    recorder: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "blocked").write_text("a file where the room's folder should be")
    signal = tone(1.0)
    records = [
        start("blocked", room=1),  # cannot create its folder
        Record(RecordKind.START, 2, T0, b"{not json"),
        start("good", room=3),
        Record(RecordKind.FRAME, 3, T0, b"\x00\x01\x02"),  # odd length: skipped
        Record(RecordKind.BURST_START, 3, T0, b"[]"),
        Record(99, 3, T0, b""),
        *frames(signal, T0, room=3),
        *frames(signal, T0, room=1),
    ]

    with caplog.at_level(logging.WARNING):
        recorder.handle(0, records)

    assert list(recorder.active) == [(0, 3)]
    path = only_path(recorder)
    recorder.handle(0, [stop(T0 + NS, room=3)])
    assert np.array_equal(read(path), signal)
    assert recorder.errors == 5
    assert recorder.orphan_frames == len(signal) // FRAME
    assert "START payload is not JSON" in caplog.text
    assert "frame payload has an odd number of bytes" in caplog.text
    assert "burst payload is not a JSON object" in caplog.text
    assert "unknown record kind" in caplog.text
    assert "ring 0 room 1: recording failed" in caplog.text


def test_a_second_start_closes_the_first_recording(recorder: Recorder) -> None:
    recorder.handle(0, [start(), *frames(tone(1.0), T0)])
    first = only_path(recorder)

    recorder.handle(0, [start(t_ns=T0 + 2 * NS)])

    assert only_path(recorder) != first
    assert len(read(first)) == 2 * RATE


def test_close_finishes_every_file(recorder: Recorder, clock: FakeClock) -> None:
    recorder.handle(0, [start(room=1), start("b", room=2), *frames(tone(0.5), T0, room=1)])
    paths = list(recorder.active.values())
    clock.now = T0 + NS

    recorder.close()

    assert recorder.active == {}
    assert [len(read(p)) for p in paths] == [RATE, RATE]


def test_list_recordings_describes_each_file(recorder: Recorder, clock: FakeClock) -> None:
    unit = BurstInfo("u1", "Unit 1")
    recorder.handle(
        0,
        [
            start("ops-1", room=1),
            *frames(tone(1.5), T0, room=1),
            Record(RecordKind.BURST_START, 1, T0, bytes(unit)),
            Record(RecordKind.BURST_END, 1, T0 + NS, bytes(unit)),
            stop(T0 + 2 * NS, room=1),
            start("ops-2", t_ns=T0 + 5 * NS, room=2),
            stop(T0 + 6 * NS, room=2),
        ],
    )
    out_dir = recorder.config.out_dir

    infos = list_recordings(out_dir)

    suffix = recorder.config.format.suffix
    assert [(i.room, i.name, i.duration_s, i.has_bursts) for i in infos] == [
        ("ops-1", "ops-1-20231114T221320Z", 2.0, True),
        ("ops-2", "ops-2-20231114T221325Z", 1.0, False),
    ]
    assert infos[0].started == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert infos[0].path == out_dir / "ops-1" / f"ops-1-20231114T221320Z{suffix}"
    assert infos[0].size == infos[0].path.stat().st_size
    assert infos[1].as_dict()["started"] == "2023-11-14T22:13:25+00:00"
    assert list_recordings(out_dir / "missing") == []


def test_list_recordings_of_a_file_still_being_written(recorder: Recorder) -> None:
    recorder.handle(0, [start(), Record(RecordKind.FRAME, ROOM, T0, tone(0.02).tobytes())])

    (info,) = list_recordings(recorder.config.out_dir)

    if recorder.config.format is RecordingFormat.FLAC:
        assert info.duration_s is None  # no complete FLAC block yet
    assert info.room == "ops-1"
    assert info.started == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_payloads_round_trip_and_reject_garbage() -> None:
    assert RecordingStart.parse(bytes(RecordingStart("ops-1"))) == RecordingStart("ops-1")
    burst = BurstInfo("u1", "Unit 1", "imminent peril")
    assert BurstInfo.parse(bytes(burst)) == burst
    assert BurstInfo.parse(b'{"participant": 12}') == BurstInfo("12")
    with pytest.raises(ValueError, match=r"^START payload has no room name$"):
        RecordingStart.parse(b'{"room_name": ""}')
    with pytest.raises(ValueError, match=r"^burst payload has no participant$"):
        BurstInfo.parse(b'{"alias": "x"}')
    with pytest.raises(ValueError, match=r"^burst payload is not JSON$"):
        BurstInfo.parse(b"\xff")
