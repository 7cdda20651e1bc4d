"""Routing features of the mixing matrix: monitor-only sources, patches, monitors, ducking.

Every feature is an edit of ``W``; these tests drive the mixer as a worker would and
measure the mixed output by band energy (FFT), so a wrong gain or a leak shows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from bridge.mixer import (
    NO_HOLDER,
    NO_MIX,
    Mixer,
    MixKind,
    MixResult,
    Monitor,
    RoomMode,
    RoomTopology,
)

FRAME = 320
RATE = 16000
LOUD = -20.0
NOISE = -70.0
#: Band energy (dB) below which a tone counts as absent: leakage of the other tones
#: stays far below, a tone at the test level is over 110 dB.
ABSENT = 60.0
DUCK_12_DB = float(10 ** (-12 / 20))


def room(
    index: int,
    mode: RoomMode,
    legs: list[int],
    *,
    monitor_only: list[int] = (),  # type: ignore[assignment]
    dispatcher: list[int] = (),  # type: ignore[assignment]
    holder: int = NO_HOLDER,
    monitor_to_mix: bool = False,
    max_talkers: int = 3,
) -> RoomTopology:
    members = np.asarray(legs, dtype=np.intp)
    return RoomTopology(
        room=index,
        mode=mode,
        legs=members,
        listens=np.ones(len(legs), dtype=np.bool_),
        talks=np.ones(len(legs), dtype=np.bool_),
        gain=np.ones(len(legs), dtype=np.float32),
        holder=holder,
        max_talkers=max_talkers,
        monitor_only=np.isin(members, list(monitor_only)),
        dispatcher=np.isin(members, list(dispatcher)),
        monitor_to_mix=monitor_to_mix,
    )


class Bench:
    """A mixer fed a continuous sine per talking leg, tick after tick."""

    def __init__(self, capacity: int, rooms: list[RoomTopology]) -> None:
        self.mixer = Mixer(capacity, FRAME, hang_ms=100)
        self.mixer.set_rooms(rooms)
        self.capacity = capacity
        self.tone: dict[int, float] = {}
        self.ticks = 0

    def talk(self, leg: int, hz: float | None) -> None:
        if hz is None:
            self.tone.pop(leg, None)
        else:
            self.tone[leg] = hz

    def tick(self) -> MixResult:
        level = np.full(self.capacity, NOISE, dtype=np.float32)
        pcm = np.zeros((self.capacity, FRAME), dtype=np.int16)
        t = (self.ticks * FRAME + np.arange(FRAME)) / RATE
        for leg, hz in self.tone.items():
            level[leg] = LOUD
            pcm[leg] = np.round(3000 * np.sin(2 * np.pi * hz * t))
        self.ticks += 1
        sources = self.mixer.select(level, np.ones(self.capacity, dtype=np.bool_))
        return self.mixer.mix(sources, pcm[sources])

    def settle(self, ticks: int = 3) -> MixResult:
        for _ in range(ticks):
            result = self.tick()
        return result


def heard(result: MixResult, leg: int) -> npt.NDArray[np.int16] | None:
    row = int(result.listener_mix[leg])
    return None if row == NO_MIX else result.frames[row]


def band_db(frame: npt.NDArray[np.int16] | None, hz: float) -> float:
    """Energy within 50 Hz of ``hz``, in dB (a floor of -100 dB for silence)."""
    if frame is None:
        return -100.0
    spectrum = np.abs(np.fft.rfft(frame.astype(np.float64) * np.hanning(len(frame)))) ** 2
    freqs = np.fft.rfftfreq(len(frame), 1 / RATE)
    energy = float(spectrum[np.abs(freqs - hz) <= 50].sum())
    return 10 * np.log10(energy) if energy > 0 else -100.0


CAMERA_HZ, TALKER_HZ, OTHER_HZ = 1000.0, 440.0, 2500.0


class TestMonitorOnly:
    def test_camera_is_heard_by_dispatchers_only(self) -> None:
        # Room 0 (ptt): 0 camera, 1 dispatcher, 2 officer.
        bench = Bench(3, [room(0, RoomMode.PTT, [0, 1, 2], monitor_only=[0], dispatcher=[1])])
        bench.talk(0, CAMERA_HZ)
        result = bench.settle()
        assert band_db(heard(result, 1), CAMERA_HZ) > 100
        assert heard(result, 2) is None  # a ptt listener with nothing to hear gets nothing
        assert result.keys[result.listener_mix[1]] == (MixKind.MONITOR, 1)

    def test_open_room_camera_stays_off_the_mix_without_monitor_to_mix(self) -> None:
        bench = Bench(4, [room(0, RoomMode.OPEN, [0, 1, 2, 3], monitor_only=[0], dispatcher=[1])])
        bench.talk(0, CAMERA_HZ)
        bench.talk(3, TALKER_HZ)
        result = bench.settle()
        officer = heard(result, 2)
        assert band_db(officer, TALKER_HZ) > 100
        assert band_db(officer, CAMERA_HZ) < ABSENT
        dispatcher = heard(result, 1)
        assert band_db(dispatcher, TALKER_HZ) > 100
        assert band_db(dispatcher, CAMERA_HZ) > 100

    def test_monitor_to_mix_adds_the_camera_to_an_open_room(self) -> None:
        rooms = [room(0, RoomMode.OPEN, [0, 1, 2], monitor_only=[0], monitor_to_mix=True)]
        bench = Bench(3, rooms)
        bench.talk(0, CAMERA_HZ)
        result = bench.settle()
        assert band_db(heard(result, 1), CAMERA_HZ) > 100
        assert band_db(heard(result, 2), CAMERA_HZ) > 100

    def test_monitor_to_mix_does_not_open_a_ptt_room(self) -> None:
        rooms = [room(0, RoomMode.PTT, [0, 1, 2], monitor_only=[0], monitor_to_mix=True)]
        bench = Bench(3, rooms)
        bench.talk(0, CAMERA_HZ)
        result = bench.settle()
        assert heard(result, 1) is None
        assert heard(result, 2) is None

    def test_camera_does_not_take_a_talker_slot(self) -> None:
        rooms = [room(0, RoomMode.OPEN, [0, 1, 2], monitor_only=[0], dispatcher=[1], max_talkers=1)]
        bench = Bench(3, rooms)
        bench.talk(0, CAMERA_HZ)
        bench.talk(2, TALKER_HZ)
        result = bench.settle()
        np.testing.assert_array_equal(np.flatnonzero(bench.mixer.live), [0, 2])
        assert band_db(heard(result, 1), CAMERA_HZ) > 100
        assert band_db(heard(result, 1), TALKER_HZ) > 100

    def test_a_monitor_only_leg_cannot_hold_the_floor(self) -> None:
        with pytest.raises(ValueError, match="monitor-only source cannot hold the floor"):
            room(0, RoomMode.PTT, [0, 1], monitor_only=[0], holder=0)


class TestPatch:
    def test_patched_open_rooms_hear_each_other_until_unpatched(self) -> None:
        bench = Bench(4, [room(0, RoomMode.OPEN, [0, 1]), room(1, RoomMode.OPEN, [2, 3])])
        bench.talk(0, TALKER_HZ)
        result = bench.settle()
        assert band_db(heard(result, 3), TALKER_HZ) < ABSENT
        bench.mixer.set_routing(patches=[[0, 1]])
        result = bench.settle()
        assert band_db(heard(result, 3), TALKER_HZ) > 100
        assert band_db(heard(result, 1), TALKER_HZ) > 100
        assert band_db(heard(result, 0), TALKER_HZ) < ABSENT  # N-1 across the patch
        bench.mixer.set_routing()
        result = bench.settle()
        assert band_db(heard(result, 3), TALKER_HZ) < ABSENT

    def test_holder_is_heard_in_every_patched_ptt_room(self) -> None:
        rooms = [room(0, RoomMode.PTT, [0, 1], holder=0), room(1, RoomMode.PTT, [2, 3])]
        bench = Bench(4, rooms)
        bench.mixer.set_routing(patches=[[0, 1]])
        bench.talk(0, TALKER_HZ)
        bench.talk(2, OTHER_HZ)  # not the holder: gated out
        result = bench.settle()
        for leg in (1, 2, 3):
            assert band_db(heard(result, leg), TALKER_HZ) > 100
            assert band_db(heard(result, leg), OTHER_HZ) < ABSENT

    def test_a_room_in_two_groups_is_refused_and_routing_kept(self) -> None:
        bench = Bench(6, [room(i, RoomMode.OPEN, [2 * i, 2 * i + 1]) for i in range(3)])
        bench.mixer.set_routing(patches=[[0, 1]])
        with pytest.raises(ValueError, match="more than one patch group"):
            bench.mixer.set_routing(patches=[[0, 1], [1, 2]])
        bench.talk(0, TALKER_HZ)
        assert band_db(heard(bench.settle(), 3), TALKER_HZ) > 100


class TestMonitor:
    def setup_bench(self, monitor: Monitor) -> Bench:
        # Rooms 0 and 1 hold a talker each; the dispatcher (leg 4) sits in room 2.
        rooms = [
            room(0, RoomMode.OPEN, [0, 1]),
            room(1, RoomMode.OPEN, [2, 3]),
            room(2, RoomMode.OPEN, [4, 5], dispatcher=[4]),
        ]
        bench = Bench(6, rooms)
        bench.mixer.set_routing(monitors=[monitor])
        bench.talk(0, TALKER_HZ)
        bench.talk(2, OTHER_HZ)
        return bench

    def test_per_talkgroup_volume(self) -> None:
        bench = self.setup_bench(Monitor(4, {0: 0.5, 1: 1.0}))
        result = bench.settle()
        console = heard(result, 4)
        assert band_db(console, OTHER_HZ) - band_db(console, TALKER_HZ) == pytest.approx(
            20 * np.log10(2), abs=0.5
        )
        # The others in the dispatcher's room hear their room only.
        assert band_db(heard(result, 5), TALKER_HZ) < ABSENT

    def test_priority_room_ducks_the_others_and_releases(self) -> None:
        bench = self.setup_bench(Monitor(4, {0: 1.0, 1: 1.0}, priority=0, duck=DUCK_12_DB))
        result = bench.settle()
        console = heard(result, 4)
        # Room 0 is live: room 1 is ducked by 12 dB, room 0 is not.
        assert band_db(console, TALKER_HZ) - band_db(console, OTHER_HZ) == pytest.approx(
            12, abs=0.5
        )
        bench.talk(0, None)
        for _ in range(20):  # the talker's hang time runs out, then the duck ramps back
            result = bench.tick()
        console = heard(result, 4)
        assert band_db(console, OTHER_HZ) > 100
        assert band_db(console, TALKER_HZ) < ABSENT

    def test_duck_is_ramped_over_one_frame(self) -> None:
        bench = self.setup_bench(Monitor(4, {1: 1.0}, priority=0, duck=DUCK_12_DB))
        bench.talk(0, None)
        bench.settle()
        before = bench.mixer.rebuilds
        bench.talk(0, TALKER_HZ)
        ramp = heard(bench.tick(), 4)
        after = heard(bench.tick(), 4)
        assert bench.mixer.rebuilds == before + 1
        assert ramp is not None and after is not None
        # Room 1's tone starts the ramp near full level and ends it near the ducked one:
        # its envelope falls across the frame instead of stepping.
        head = float(np.abs(ramp[:40].astype(np.float64)).max())
        tail = float(np.abs(ramp[-40:].astype(np.float64)).max())
        assert head > 2 * tail

    def test_w_is_not_rebuilt_while_nothing_changes(self) -> None:
        bench = self.setup_bench(Monitor(4, {0: 1.0, 1: 0.7}, priority=0))
        bench.settle()
        before = bench.mixer.rebuilds
        bench.settle(20)
        assert bench.mixer.rebuilds == before

    def test_dispatcher_talking_gets_its_own_n_minus_1(self) -> None:
        bench = self.setup_bench(Monitor(4, {0: 1.0}))
        bench.talk(4, CAMERA_HZ)
        result = bench.settle()
        console = heard(result, 4)
        assert result.keys[result.listener_mix[4]] == (MixKind.OWN, 4)
        assert band_db(console, TALKER_HZ) > 100
        assert band_db(console, CAMERA_HZ) < ABSENT
        assert band_db(heard(result, 5), CAMERA_HZ) > 100

    def test_bad_monitor_gain_is_refused(self) -> None:
        with pytest.raises(ValueError, match="monitor gain must be finite"):
            Monitor(0, {1: -1.0})
        with pytest.raises(ValueError, match="duck must be a gain between 0 and 1"):
            Monitor(0, {}, duck=2.0)


def test_plain_rooms_keep_one_row_per_room() -> None:
    bench = Bench(4, [room(0, RoomMode.OPEN, [0, 1]), room(1, RoomMode.OPEN, [2, 3])])
    bench.talk(0, TALKER_HZ)
    result = bench.settle()
    assert [key for key in result.keys if key[0] != MixKind.OWN] == [
        (MixKind.ROOM, 0),
        (MixKind.ROOM, 1),
    ]
