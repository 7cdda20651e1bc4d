import dataclasses
from typing import Any

import numpy as np
import pytest

from bridge.mixer import (
    INT16_CEILING,
    NO_MIX,
    SOFT_KNEE,
    Mixer,
    MixKind,
    MixResult,
    RoomMode,
    RoomTopology,
)

FRAME = 320
RATE = 16000
LOUD = -20.0
NOISE = -55.0


class Bench:
    """A mixer plus the per-leg state a media worker would hand it each tick."""

    def __init__(self, capacity: int, rooms: list[RoomTopology], *, hang_ms: int = 300) -> None:
        self.mixer = Mixer(capacity, FRAME, hang_ms=hang_ms)
        self.mixer.set_rooms(rooms)
        self.level = np.full(capacity, NOISE, dtype=np.float32)
        self.active = np.ones(capacity, dtype=np.bool_)
        self.pcm = np.zeros((capacity, FRAME), dtype=np.int16)
        self.sources = np.zeros(0, dtype=np.intp)

    def talk(self, leg: int, value: int | np.ndarray, level: float = LOUD) -> None:
        self.pcm[leg] = value
        self.level[leg] = level

    def tick(self) -> MixResult:
        self.sources = self.mixer.select(self.level, self.active)
        return self.mixer.mix(self.sources, self.pcm[self.sources])

    def settle(self, ticks: int = 2) -> MixResult:
        for _ in range(ticks):
            result = self.tick()
        return result


def heard(result: MixResult, leg: int) -> np.ndarray | None:
    row = int(result.listener_mix[leg])
    return None if row == NO_MIX else result.frames[row]


def open_room(room: int, legs: list[int], **kwargs: int) -> RoomTopology:
    return RoomTopology.uniform(room, RoomMode.OPEN, legs, **kwargs)


def sine(ticks: int, amplitude: float, hz: float) -> np.ndarray:
    t = np.arange(ticks * FRAME) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * hz * t)).reshape(ticks, FRAME)


class TestNMinusOne:
    def test_three_talkers_each_hear_the_other_two(self) -> None:
        bench = Bench(4, [open_room(7, [0, 1, 2, 3])])
        for leg, value in enumerate([100, 1000, 10000]):
            bench.talk(leg, value)
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, [0, 1, 2])
        expected = {0: 11000, 1: 10100, 2: 1100, 3: 11100}
        for leg, value in expected.items():
            np.testing.assert_array_equal(heard(result, leg), value)
        assert result.keys[result.listener_mix[3]] == (MixKind.ROOM, 7)
        assert result.keys[result.listener_mix[0]] == ("n-1", 0)
        assert len(set(result.listener_mix.tolist())) == 4
        assert not result.silent.any()

    def test_distinct_sines_are_separated(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        a = sine(1, 5000, 440)[0]
        b = sine(1, 5000, 1000)[0]
        bench.talk(0, a)
        bench.talk(1, b)
        result = bench.settle()
        np.testing.assert_array_equal(heard(result, 0), b)
        np.testing.assert_array_equal(heard(result, 1), a)
        np.testing.assert_array_equal(heard(result, 2), a + b)

    def test_sole_talker_gets_a_silent_own_row(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        bench.talk(0, 500)
        result = bench.settle()
        own = result.listener_mix[0]
        assert result.keys[own] == ("n-1", 0)
        assert result.silent[own]
        np.testing.assert_array_equal(heard(result, 0), 0)
        np.testing.assert_array_equal(heard(result, 1), 500)

    def test_open_room_without_talkers_sends_silence(self) -> None:
        bench = Bench(2, [open_room(0, [0, 1])])
        result = bench.tick()
        assert bench.sources.size == 0
        np.testing.assert_array_equal(result.listener_mix, [0, 0])
        assert result.silent.tolist() == [True]

    def test_send_only_leg_is_heard_but_gets_nothing(self) -> None:
        camera = RoomTopology(
            room=0,
            mode=RoomMode.OPEN,
            legs=np.array([0, 1]),
            listens=np.array([False, True]),
            talks=np.array([True, True]),
            gain=np.ones(2, dtype=np.float32),
        )
        bench = Bench(2, [camera])
        bench.talk(0, 300)
        result = bench.settle()
        assert result.listener_mix[0] == NO_MIX
        np.testing.assert_array_equal(heard(result, 1), 300)


class TestPtt:
    def ptt(self, holder: int) -> RoomTopology:
        return RoomTopology.uniform(3, RoomMode.PTT, [0, 1, 2, 3], holder=holder)

    def test_only_the_holder_is_heard(self) -> None:
        bench = Bench(4, [self.ptt(holder=1)])
        for leg in range(4):
            bench.talk(leg, 10**leg)  # everybody is loud, only the holder counts
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, [1])
        for leg in (0, 2, 3):
            np.testing.assert_array_equal(heard(result, leg), 10)
        assert result.listener_mix[1] == NO_MIX  # the holder hears nothing

    def test_holder_is_mixed_even_when_quiet(self) -> None:
        bench = Bench(2, [RoomTopology.uniform(0, RoomMode.PTT, [0, 1], holder=0)])
        bench.talk(0, 3, level=-90.0)
        np.testing.assert_array_equal(heard(bench.settle(), 1), 3)

    def test_idle_floor_sends_nothing(self) -> None:
        bench = Bench(6, [self.ptt(holder=-1), open_room(4, [4, 5])])
        for leg in range(6):
            bench.talk(leg, 100)
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, [4, 5])
        np.testing.assert_array_equal(result.listener_mix[:4], NO_MIX)
        np.testing.assert_array_equal(heard(result, 4), 100)

    def test_holder_without_a_frame_sends_nothing(self) -> None:
        bench = Bench(4, [self.ptt(holder=1)])
        bench.talk(1, 100)
        bench.settle()
        bench.active[1] = False
        result = bench.settle()
        assert bench.sources.size == 0
        np.testing.assert_array_equal(result.listener_mix, NO_MIX)

    def test_floor_handover_ramps_old_holder_out(self) -> None:
        bench = Bench(4, [self.ptt(holder=1)])
        bench.talk(1, 1000)
        bench.talk(2, 3000)
        bench.settle()
        bench.mixer.set_rooms([self.ptt(holder=2)])
        result = bench.tick()
        # The old holder is mixed once more while it fades; the new one fades in.
        np.testing.assert_array_equal(bench.sources, [1, 2])
        np.testing.assert_array_equal(bench.mixer.fading.nonzero()[0], [1])
        listener = heard(result, 0)
        assert listener is not None
        assert abs(int(listener[0]) - 1000) < 20
        assert listener[-1] == 3000
        # The old holder now listens: it never hears itself while fading out.
        old_holder = heard(result, 1)
        assert old_holder is not None and old_holder[-1] == 3000 and old_holder[0] < 20
        result = bench.tick()
        np.testing.assert_array_equal(bench.sources, [2])
        np.testing.assert_array_equal(heard(result, 0), 3000)
        assert result.listener_mix[2] == NO_MIX


class TestGain:
    def room(self, talks: list[bool], gain: list[float]) -> RoomTopology:
        return RoomTopology(
            room=0,
            mode=RoomMode.OPEN,
            legs=np.arange(3),
            listens=np.ones(3, dtype=np.bool_),
            talks=np.array(talks),
            gain=np.array(gain, dtype=np.float32),
        )

    def test_mute_and_gain(self) -> None:
        bench = Bench(3, [self.room([True, False, True], [0.5, 1.0, 1.0])])
        bench.talk(0, 1000)
        bench.talk(1, 7000)  # muted: never selected, never heard
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, [0])
        np.testing.assert_array_equal(heard(result, 2), 500)
        np.testing.assert_array_equal(heard(result, 1), 500)

    def test_gain_step_is_ramped(self) -> None:
        ticks = 6
        signal = sine(ticks, 8000, 440)  # a frame boundary falls near a peak
        bench = Bench(3, [self.room([True] * 3, [1.0] * 3)])
        out = []
        for tick in range(ticks):
            if tick == 3:
                bench.mixer.set_rooms([self.room([True] * 3, [0.1, 1.0, 1.0])])
            bench.talk(0, signal[tick])
            frame = heard(bench.tick(), 1)
            assert frame is not None
            out.append(frame.astype(np.int32))
        output = np.concatenate(out[1:])  # after the fade-in of the first tick
        own_jump = np.abs(np.diff(signal.ravel())).max()
        assert np.abs(np.diff(output)).max() <= own_jump + 1
        # Without the ramp the boundary alone would jump by 0.9 x the signal there.
        boundary = 3 * FRAME
        assert 0.9 * abs(signal.ravel()[boundary]) > 2 * own_jump
        np.testing.assert_allclose(out[-1], np.round(0.1 * signal[-1]), atol=1)
        np.testing.assert_array_equal(out[2], signal[2])

    def test_first_tick_fades_in(self) -> None:
        bench = Bench(2, [open_room(0, [0, 1])])
        bench.talk(0, 3200)
        frame = heard(bench.tick(), 1)
        assert frame is not None
        np.testing.assert_array_equal(frame, np.round(3200 * np.arange(1, FRAME + 1) / FRAME))

    def test_dropped_talker_fades_out(self) -> None:
        bench = Bench(2, [open_room(0, [0, 1])], hang_ms=0)
        bench.talk(0, 3200)
        bench.settle()
        bench.talk(0, 3200, level=-70.0)
        result = bench.tick()
        np.testing.assert_array_equal(bench.sources, [0])
        assert bench.mixer.fading[0] and not bench.mixer.live[0]
        frame = heard(result, 1)
        assert frame is not None
        np.testing.assert_array_equal(frame, np.round(3200 * (1 - np.arange(1, FRAME + 1) / FRAME)))
        result = bench.tick()
        assert bench.sources.size == 0
        assert result.silent[result.listener_mix[1]]


class TestClip:
    def test_three_full_scale_talkers(self) -> None:
        bench = Bench(4, [open_room(0, [0, 1, 2, 3])])
        for leg in range(3):
            bench.talk(leg, 32767)
        result = bench.settle()
        assert result.frames.dtype == np.int16
        room = heard(result, 3)
        own = heard(result, 0)
        assert room is not None and own is not None
        # Saturated, never wrapped around to negative values.
        assert SOFT_KNEE < own[0] < room[0] <= INT16_CEILING
        assert (result.frames >= 0).all()

    def test_negative_full_scale(self) -> None:
        bench = Bench(4, [open_room(0, [0, 1, 2, 3])])
        for leg in range(3):
            bench.talk(leg, -32768)
        room = heard(bench.settle(), 3)
        assert room is not None
        assert room.min() >= -INT16_CEILING and room.max() < -SOFT_KNEE

    def test_below_the_knee_is_linear(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        bench.talk(0, 12000)
        bench.talk(1, 12000)
        np.testing.assert_array_equal(heard(bench.settle(), 2), 24000)


class TestSelection:
    def test_newcomer_must_beat_the_talker_by_a_margin(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2], max_talkers=1)])
        bench.talk(0, 100, level=-30.0)
        bench.settle()
        bench.talk(1, 200, level=-29.0)
        for _ in range(10):
            result = bench.tick()
            np.testing.assert_array_equal(bench.sources, [0])
        np.testing.assert_array_equal(heard(result, 2), 100)

        bench.talk(1, 200, level=-20.0)
        bench.tick()
        np.testing.assert_array_equal(bench.mixer.live.nonzero()[0], [1])
        np.testing.assert_array_equal(bench.mixer.fading.nonzero()[0], [0])
        result = bench.tick()
        np.testing.assert_array_equal(bench.sources, [1])
        np.testing.assert_array_equal(heard(result, 2), 200)
        # The displaced talker, still talking, does not flap back in.
        for _ in range(10):
            bench.tick()
            np.testing.assert_array_equal(bench.sources, [1])

    def test_max_talkers_keeps_the_loudest(self) -> None:
        bench = Bench(6, [open_room(0, list(range(6)))])
        for leg, level in enumerate([-35.0, -25.0, -15.0, -30.0, -20.0, -60.0]):
            bench.talk(leg, 10 * (leg + 1), level=level)
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, [1, 2, 4])
        np.testing.assert_array_equal(heard(result, 5), 20 + 30 + 50)

    def test_quiet_legs_are_not_sources(self) -> None:
        bench = Bench(4, [open_room(0, [0, 1, 2, 3])])
        bench.talk(0, 100, level=-45.0)  # between off and on: never started
        bench.settle()
        assert bench.sources.size == 0
        assert bench.mixer.started.size == 0

    def test_talking_events(self) -> None:
        bench = Bench(2, [open_room(0, [0, 1])], hang_ms=0)
        bench.talk(0, 100)
        bench.tick()
        np.testing.assert_array_equal(bench.mixer.started, [0])
        bench.talk(0, 0, level=-127.0)
        bench.tick()
        np.testing.assert_array_equal(bench.mixer.stopped, [0])

    def test_rooms_are_selected_independently(self) -> None:
        rooms = [open_room(r, list(range(r * 4, r * 4 + 4)), max_talkers=1) for r in range(3)]
        bench = Bench(12, rooms)
        for leg in range(12):
            bench.talk(leg, leg, level=-40.0 + leg)
        bench.settle()
        np.testing.assert_array_equal(bench.sources, [3, 7, 11])


class TestMatrix:
    @pytest.mark.parametrize("general", [False, True])
    def test_rooms_do_not_leak(self, general: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        if general:  # through the (profiles x rooms) product that patches will use
            one_per_room = Mixer._listen_profiles

            def profiles(mixer: Mixer, routing: Any) -> Any:
                return dataclasses.replace(one_per_room(mixer, routing), one_per_room=False)

            monkeypatch.setattr(Mixer, "_listen_profiles", profiles)
        bench = Bench(6, [open_room(0, [0, 1, 2]), open_room(1, [3, 4, 5])])
        bench.talk(0, 1)
        bench.talk(3, 100)
        bench.talk(4, 10000)
        result = bench.settle()
        np.testing.assert_array_equal(heard(result, 1), 1)
        np.testing.assert_array_equal(heard(result, 0), 0)
        np.testing.assert_array_equal(heard(result, 5), 10100)
        np.testing.assert_array_equal(heard(result, 3), 10000)
        assert bench.mixer.rebuilds == 1

    def test_not_rebuilt_while_nothing_changes(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        bench.talk(0, 100)
        bench.settle()
        rebuilds = bench.mixer.rebuilds
        for _ in range(20):
            bench.tick()
        assert bench.mixer.rebuilds == rebuilds
        bench.talk(1, 100)
        bench.tick()
        assert bench.mixer.rebuilds == rebuilds + 1
        bench.mixer.set_rooms([open_room(0, [0, 1, 2])])
        bench.tick()
        assert bench.mixer.rebuilds == rebuilds + 2

    def test_not_rebuilt_when_a_faded_source_leaves(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])], hang_ms=0)
        bench.talk(0, 100)
        bench.talk(1, 1000)
        bench.settle()
        bench.talk(0, 100, level=-70.0)
        bench.tick()  # leg 0 fades out: rebuilt
        rebuilds = bench.mixer.rebuilds
        for _ in range(3):
            result = bench.tick()
            np.testing.assert_array_equal(bench.sources, [1])
        assert bench.mixer.rebuilds == rebuilds
        np.testing.assert_array_equal(heard(result, 0), 1000)
        np.testing.assert_array_equal(heard(result, 2), 1000)
        np.testing.assert_array_equal(heard(result, 1), 0)

    def test_talker_without_a_frame_is_not_heard(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        bench.talk(0, 100)
        bench.talk(1, 1000)
        bench.settle()
        bench.active[0] = False  # lost, or discontinuous transmission
        bench.pcm[0] = 7777  # never to be mixed: not a source this tick
        result = bench.tick()
        np.testing.assert_array_equal(bench.sources, [1])
        np.testing.assert_array_equal(heard(result, 2), 1000)
        np.testing.assert_array_equal(heard(bench.tick(), 2), 1000)

    def test_hundred_rooms_in_one_product(self) -> None:
        n_rooms, size = 100, 10
        rooms = [open_room(r, list(range(r * size, (r + 1) * size))) for r in range(n_rooms)]
        bench = Bench(n_rooms * size, rooms)
        talkers = np.arange(n_rooms) * size
        for room, leg in enumerate(talkers):
            bench.talk(int(leg), room + 1)
        result = bench.settle()
        np.testing.assert_array_equal(bench.sources, talkers)
        assert bench.mixer.rebuilds == 1
        assert result.frames.shape == (2 * n_rooms, FRAME)
        assert bench.mixer.matrix.nnz == n_rooms
        listeners = np.setdiff1d(np.arange(n_rooms * size), talkers)
        np.testing.assert_array_equal(
            result.frames[result.listener_mix[listeners], 0], listeners // size + 1
        )
        assert result.silent[result.listener_mix[talkers]].all()


class TestValidation:
    def test_pcm_must_match_sources(self) -> None:
        mixer = Mixer(2, FRAME)
        with pytest.raises(ValueError, match=r"^PCM frames do not match the sources$"):
            mixer.mix(np.array([0, 1]), np.zeros((1, FRAME), np.int16))

    def test_sources_sorted_and_distinct(self) -> None:
        mixer = Mixer(2, FRAME)
        with pytest.raises(ValueError, match=r"^sources are not sorted and distinct$"):
            mixer.mix(np.array([1, 1]), np.zeros((2, FRAME), np.int16))

    def test_levels_cover_capacity(self) -> None:
        with pytest.raises(ValueError, match=r"^levels and activity must cover the capacity$"):
            Mixer(3).select(np.zeros(2, np.float32), np.ones(3, np.bool_))

    def test_leg_in_two_rooms(self) -> None:
        mixer = Mixer(4)
        with pytest.raises(ValueError, match=r"^leg 2 is in more than one room$"):
            mixer.set_rooms([open_room(0, [1, 2]), open_room(1, [2, 3])])

    def test_leg_out_of_range(self) -> None:
        with pytest.raises(ValueError, match=r"^leg 4 is out of range$"):
            Mixer(4).set_rooms([open_room(0, [1, 4])])

    def test_room_twice(self) -> None:
        with pytest.raises(ValueError, match=r"^room 5 appears twice$"):
            Mixer(4).set_rooms([open_room(5, [0]), open_room(5, [1])])

    def test_holder_must_be_member(self) -> None:
        with pytest.raises(ValueError, match=r"^floor holder is not a member of the room$"):
            RoomTopology.uniform(0, RoomMode.PTT, [0, 1], holder=2)

    def test_open_room_has_no_holder(self) -> None:
        with pytest.raises(ValueError, match=r"^only a push-to-talk room has a floor holder$"):
            RoomTopology.uniform(0, RoomMode.OPEN, [0, 1], holder=1)

    def test_topology_lengths(self) -> None:
        with pytest.raises(ValueError, match=r"^room topology arrays differ in length$"):
            RoomTopology(
                room=0,
                mode=RoomMode.OPEN,
                legs=np.array([0, 1]),
                listens=np.ones(1, np.bool_),
                talks=np.ones(2, np.bool_),
                gain=np.ones(2, np.float32),
            )

    def test_bad_topology_keeps_the_old_one(self) -> None:
        bench = Bench(3, [open_room(0, [0, 1, 2])])
        bench.talk(0, 100)
        bench.settle()
        with pytest.raises(ValueError):
            bench.mixer.set_rooms([open_room(0, [0, 1]), open_room(1, [1])])
        np.testing.assert_array_equal(heard(bench.tick(), 2), 100)
