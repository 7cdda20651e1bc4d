"""Tests of the array-based adaptive jitter buffer (bridge.jitterbuffer)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from bridge.jitterbuffer import (
    MAX_CONCEALED_FRAMES,
    JitterArray,
    LegState,
    PlayoutStatus,
)
from bridge.rtpcolumns import DropReason

CLOCK_RATE = 8000
STEP = 160  # RTP timestamp units per 20 ms frame at 8 kHz
FRAME_MS = 20
HEADER = 12
PAYLOAD = 160
PLAYED, LOST, IDLE = PlayoutStatus.PLAYED, PlayoutStatus.LOST, PlayoutStatus.IDLE
NO_FRAME = -1
UNDELIVERED = 255  # reason of a packet that did not arrive within the ticks driven


@dataclass
class Stream:
    """Packets to deliver: one row per packet, ``frame`` identifies its payload."""

    leg: npt.NDArray[np.intp]
    seq: npt.NDArray[np.uint16]
    ts: npt.NDArray[np.uint32]
    arrival_ms: npt.NDArray[np.float64]
    frame: npt.NDArray[np.int64]
    length: npt.NDArray[np.int32]
    header: npt.NDArray[np.int32]
    marker: npt.NDArray[np.bool_]

    def __add__(self, other: Stream) -> Stream:
        return Stream(
            *(
                np.concatenate([getattr(self, f), getattr(other, f)])
                for f in self.__dataclass_fields__
            )
        )

    def take(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Stream:
        return Stream(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def stream(
    n: int,
    *,
    leg: int = 0,
    seq0: int = 0,
    ts0: int = 0,
    first_frame: int = 0,
    start_ms: float = 0.0,
    delay_ms: float | npt.NDArray[np.float64] = 5.0,
    step: int = STEP,
    marker_first: bool = False,
) -> Stream:
    """``n`` frames sent every 20 ms from ``start_ms``, each arriving ``delay_ms`` later."""
    i = np.arange(n)
    marker = np.zeros(n, dtype=np.bool_)
    marker[0] = marker_first
    return Stream(
        leg=np.full(n, leg, dtype=np.intp),
        seq=((seq0 + i) % 65536).astype(np.uint16),
        ts=((ts0 + i * step) % (1 << 32)).astype(np.uint32),
        arrival_ms=np.asarray(start_ms + FRAME_MS * i + delay_ms, dtype=np.float64),
        frame=first_frame + i,
        length=np.full(n, PAYLOAD, dtype=np.int32),
        header=np.full(n, HEADER, dtype=np.int32),
        marker=marker,
    )


@dataclass
class Run:
    """What a driven buffer produced: status and frame per tick and leg, reason per packet."""

    status: npt.NDArray[np.uint8]
    frame: npt.NDArray[np.int64]
    reason: npt.NDArray[np.uint8]
    resyncs: int = 0

    def played(self, leg: int = 0) -> npt.NDArray[np.int64]:
        """The frames a leg played, in order."""
        frames: npt.NDArray[np.int64] = self.frame[self.status[:, leg] == PLAYED, leg]
        return frames


_PATTERN = bytes(range(251)) * 8


def encode(frame: int, leg: int, length: int) -> bytes:
    """A payload that names its frame and leg, so playout can be checked byte for byte."""
    head = int(frame).to_bytes(4, "little") + int(leg).to_bytes(2, "little")
    start = frame % 251
    return (head + _PATTERN[start : start + length])[:length]


def longest_run(mask: npt.NDArray[np.bool_]) -> int:
    best = run = 0
    for value in mask.tolist():
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def drive(
    jb: JitterArray,
    packets: Stream,
    ticks: int,
    *,
    legs: int = 1,
    phase_ms: float = 10.0,
    with_marker: bool = False,
    tick0: int = 0,
) -> Run:
    """Tick ``ticks`` times: tick ``k`` (at ``(tick0 + k) * 20 + phase_ms``) inserts what arrived
    since the previous tick, in arrival order, then pops every leg."""
    n = len(packets.seq)
    width = int((packets.header + packets.length).max()) if n else HEADER
    data = np.zeros((max(n, 1), width), dtype=np.uint8)
    for i in range(n):
        h, ln = int(packets.header[i]), int(packets.length[i])
        data[i, h : h + ln] = np.frombuffer(
            encode(int(packets.frame[i]), int(packets.leg[i]), ln), dtype=np.uint8
        )
    status = np.zeros((ticks, legs), dtype=np.uint8)
    frames = np.full((ticks, legs), NO_FRAME, dtype=np.int64)
    reason = np.full(n, UNDELIVERED, dtype=np.uint8)
    all_legs = np.arange(legs, dtype=np.intp)
    resyncs = 0
    for k in range(ticks):
        now = (tick0 + k) * FRAME_MS + phase_ms
        due = np.flatnonzero((packets.arrival_ms <= now) & (packets.arrival_ms > now - FRAME_MS))
        due = due[np.argsort(packets.arrival_ms[due], kind="stable")]
        if len(due):
            result = jb.insert(
                packets.leg[due],
                packets.seq[due],
                packets.ts[due],
                data,
                due.astype(np.intp),
                packets.header[due],
                packets.length[due],
                (packets.arrival_ms[due] * 1e6).astype(np.int64),
                marker=packets.marker[due] if with_marker else None,
            )
            reason[due] = result.reason
            resyncs += result.resyncs
        out = jb.pop(all_legs)
        status[k] = out.status
        played = out.status == PLAYED
        for j in np.flatnonzero(played):
            ln = int(out.length[j])
            got = bytes(out.payload[j, :ln])
            frame = int.from_bytes(got[:4], "little")
            assert int.from_bytes(got[4:6], "little") == j
            assert got == encode(frame, int(j), ln)
            frames[k, j] = frame
        assert (out.length[~played] == 0).all()
        assert (out.arrival_ns[played] > 0).all()
    return Run(status=status, frame=frames, reason=reason, resyncs=resyncs)


def new_buffer(capacity: int = 1, **kwargs: int) -> JitterArray:
    jb = JitterArray(capacity, **kwargs)
    for leg in range(capacity):
        jb.open(leg, CLOCK_RATE, STEP)
    return jb


def assert_contiguous(frames: npt.NDArray[np.int64]) -> None:
    assert (np.diff(frames) == 1).all(), frames


# ---------------------------------------------------------------------------- playout
def test_in_order_stream_plays_every_frame_from_the_first_tick() -> None:
    jb = new_buffer()
    run = drive(jb, stream(100), 110)
    # The first frame plays in the tick it arrives: nothing is held back for late call entry.
    assert (run.status[:100, 0] == PLAYED).all()
    np.testing.assert_array_equal(run.frame[:100, 0], np.arange(100))
    assert (run.reason == DropReason.OK).all()
    s = jb.stats(0)
    assert (s.received, s.played, s.late, s.duplicate, s.held, s.dropped) == (100, 100, 0, 0, 0, 0)
    assert s.depth_ms == FRAME_MS
    assert s.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_stream_stop_conceals_up_to_the_cap_then_goes_idle() -> None:
    jb = new_buffer()
    run = drive(jb, stream(50), 70)
    tail = run.status[50:, 0]
    assert (tail[:MAX_CONCEALED_FRAMES] == LOST).all()
    assert (tail[MAX_CONCEALED_FRAMES:] == IDLE).all()
    assert jb.stats(0).lost == MAX_CONCEALED_FRAMES
    assert jb.stats(0).state == LegState.BUFFERING


def test_talk_spurt_restart_after_silence_plays_again() -> None:
    # Silence suppression (RFC 3551 §4.1): sequence numbers run on, the timestamp jumps, and the
    # marker bit starts the new spurt.
    jb = new_buffer()
    first = stream(30, marker_first=True)
    second = stream(30, seq0=30, ts0=(30 + 100) * STEP, first_frame=30, start_ms=130 * FRAME_MS)
    second.marker[0] = True
    run = drive(jb, first + second, 170, with_marker=True)
    assert (run.status[40:130, 0] == IDLE).all()
    # The first frame of the new spurt plays as soon as it arrives (the target is one frame).
    assert run.status[130, 0] == PLAYED
    assert run.frame[130, 0] == 30
    assert_contiguous(run.played())
    assert len(run.played()) == 60
    assert jb.stats(0).ptime_mismatch == 0
    assert jb.stats(0).resyncs == 0


def test_reordered_pairs_are_repaired() -> None:
    # Even frames are delayed 25 ms, so every pair arrives swapped, one packet per tick.
    n = 400
    delay = np.where(np.arange(n) % 2 == 0, 25.0, 0.0)
    jb = new_buffer()
    run = drive(jb, stream(n, delay_ms=delay), n + 10)
    played = run.played()
    assert (np.diff(played) > 0).all()
    # Once the depth has grown, every frame plays, in order, and none is late.
    settled = 100
    assert (run.status[settled:n, 0] == PLAYED).all()
    assert_contiguous(run.frame[settled:n, 0])
    assert (run.reason[settled:] == DropReason.OK).all()
    assert jb.stats(0).depth_ms >= 2 * FRAME_MS


def test_reordering_inside_one_batch_loses_nothing() -> None:
    # Pairs arrive swapped within one tick: frame 2k 22 ms late, frame 2k+1 on time.
    n = 200
    delay = np.where(np.arange(n) % 2 == 0, 22.0, 0.0)
    jb = new_buffer()
    run = drive(jb, stream(n, delay_ms=delay), n + 10)
    assert (run.reason == DropReason.OK).all()
    assert_contiguous(run.played())
    assert len(run.played()) == n
    assert jb.stats(0).lost == MAX_CONCEALED_FRAMES  # only the end of the stream


def test_duplicates_are_dropped_and_counted() -> None:
    n = 100
    original = stream(n)
    # Even frames are duplicated within the batch, odd frames one tick later.
    copy = stream(n, delay_ms=np.where(np.arange(n) % 2 == 0, 6.0, 25.0))
    jb = new_buffer()
    run = drive(jb, original + copy, n + 10)
    assert (run.reason[:n] == DropReason.OK).all()
    assert (run.reason[n:] == DropReason.DUPLICATE).all()
    s = jb.stats(0)
    assert (s.received, s.duplicate, s.played) == (n, n, n)
    np.testing.assert_array_equal(run.played(), np.arange(n))


def test_random_loss_is_concealed_frame_for_frame() -> None:
    n = 1000
    rng = np.random.default_rng(7)
    lost = rng.random(n) < 0.10
    lost[[0, -1]] = False
    assert longest_run(lost) < MAX_CONCEALED_FRAMES  # the precondition of "never IDLE"
    jb = new_buffer()
    run = drive(jb, stream(n).take(~lost), n + 10)
    active = run.status[:n, 0]
    assert not (active == IDLE).any()
    assert int((active == LOST).sum()) == int(lost.sum())
    np.testing.assert_array_equal(run.played(), np.flatnonzero(~lost))
    assert jb.stats(0).lost == int(lost.sum()) + MAX_CONCEALED_FRAMES


def test_late_packets_are_dropped_and_counted() -> None:
    n = 200
    delay = np.full(n, 5.0)
    delay[[50, 120]] = 75.0
    jb = new_buffer()
    run = drive(jb, stream(n, delay_ms=delay), n)
    late = np.flatnonzero(run.reason == DropReason.LATE)
    np.testing.assert_array_equal(late, [50, 120])
    s = jb.stats(0)
    assert s.late == 2
    assert s.lost == 2
    played = run.played()
    assert 50 not in played and 120 not in played
    assert (np.diff(played) > 0).all()


def test_a_late_frame_after_an_empty_buffer_still_plays() -> None:
    # Frame 20 comes one tick late; the buffer had run empty, so the playout point waited.
    delay = np.full(60, 5.0)
    delay[20] = 25.0
    jb = new_buffer()
    run = drive(jb, stream(60, delay_ms=delay), 70)
    assert (run.reason == DropReason.OK).all()
    assert run.status[20, 0] == LOST
    np.testing.assert_array_equal(run.played(), np.arange(60))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_jittery_arrival_grows_the_depth_and_stops_underruns(seed: int) -> None:
    n, settle = 1500, 500
    rng = np.random.default_rng(seed)
    packets = stream(n, delay_ms=rng.uniform(0, 60, n))
    jb = new_buffer()
    first = drive(jb, packets, settle)
    before = jb.stats(0)
    assert before.depth_ms > 3 * FRAME_MS
    assert before.held > 0  # the buffer grew by holding its playout point
    second = drive(jb, packets, n - settle, tick0=settle)
    after = jb.stats(0)
    # After convergence no frame is missing at its playout point, and none comes late.
    assert (after.lost, after.late) == (before.lost, before.late)
    assert np.isin(second.reason, [DropReason.OK, UNDELIVERED]).all()
    played = np.concatenate([first.played(), second.played()])
    assert (np.diff(played) > 0).all()
    # J is about a third of the 60 ms spread, and the depth covers the spread.
    assert 15 <= after.jitter_ms <= 27
    assert 4 * FRAME_MS <= after.depth_ms <= 7 * FRAME_MS


def test_steady_arrival_shrinks_the_depth_back() -> None:
    rng = np.random.default_rng(5)
    jittery, steady = 500, 1000
    packets = stream(jittery + steady, delay_ms=np.r_[rng.uniform(0, 60, jittery), [5.0] * steady])
    jb = new_buffer()
    drive(jb, packets, jittery)
    assert jb.stats(0).depth_ms >= 4 * FRAME_MS
    run = drive(jb, packets, steady, tick0=jittery)
    s = jb.stats(0)
    assert s.depth_ms == FRAME_MS
    assert s.fill_ms == 0  # each frame plays in the tick it arrives, again
    assert s.dropped >= 3
    assert s.jitter_ms < 1.0
    assert (run.status[-300:, 0] == PLAYED).all()
    assert (np.diff(run.played()) > 0).all()


def test_a_new_talk_spurt_buffers_to_the_target_depth() -> None:
    rng = np.random.default_rng(4)
    spurt = stream(300, delay_ms=rng.uniform(0, 60, 300))
    again = stream(50, seq0=300, ts0=400 * STEP, first_frame=300, start_ms=400 * FRAME_MS)
    jb = new_buffer()
    first = drive(jb, spurt + again, 399)
    assert first.status[-1, 0] == IDLE
    target = jb.stats(0).depth_ms // FRAME_MS
    assert target >= 3
    run = drive(jb, spurt + again, 60, tick0=399)
    # Frame 300 arrives in tick 400 and waits until the spurt spans the target depth.
    starts = np.flatnonzero(run.status[:, 0] == PLAYED)[0] + 399
    assert starts == 400 + target - 1
    assert run.frame[starts - 399, 0] == 300


def test_depth_ms_of_many_legs() -> None:
    jb = new_buffer(3)
    np.testing.assert_array_equal(jb.depth_ms(np.array([0, 2], dtype=np.intp)), [20, 20])


@pytest.mark.parametrize("period_ms", [19.8, 20.2])
def test_sender_clock_skew_is_absorbed(period_ms: float) -> None:
    # A sender 1 % fast or slow: one frame in a hundred is too many, or missing.
    n = 1500
    packets = stream(n)
    packets.arrival_ms = np.arange(n, dtype=np.float64) * period_ms + 5.0
    jb = new_buffer()
    run = drive(jb, packets, int(n * period_ms / FRAME_MS) - 2)
    s = jb.stats(0)
    assert not (run.status[:, 0] == IDLE).any()
    assert (s.late, s.held) == (0, 0)
    skew = round(n * abs(period_ms - FRAME_MS) / FRAME_MS)
    if period_ms < FRAME_MS:
        assert s.dropped == pytest.approx(skew, abs=2)  # the buffer stays one frame deep
        assert s.lost == 0
    else:
        assert s.lost == pytest.approx(skew, abs=2)  # concealed, and the frame after still plays
        assert s.dropped == 0
    assert (np.diff(run.played()) > 0).all()


def test_sequence_and_timestamp_wrap() -> None:
    jb = new_buffer()
    run = drive(jb, stream(40, seq0=65530, ts0=(1 << 32) - 3 * STEP), 40)
    np.testing.assert_array_equal(run.played(), np.arange(40))
    s = jb.stats(0)
    assert (s.resyncs, s.late, s.ptime_mismatch) == (0, 0, 0)
    assert s.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_reordering_across_the_wrap() -> None:
    order = stream(20, seq0=65526)
    order.arrival_ms[9] = order.arrival_ms[10] + 1.0  # 65535 comes just after 0
    jb = new_buffer()
    run = drive(jb, order, 22)
    assert (run.reason == DropReason.OK).all()
    np.testing.assert_array_equal(run.played(), np.arange(20))


def test_large_forward_jump_resyncs() -> None:
    jb = new_buffer()
    first = stream(50)
    second = stream(50, seq0=5050, ts0=90_000, first_frame=50, start_ms=50 * FRAME_MS)
    run = drive(jb, first + second, 100)
    assert run.resyncs == 1
    assert jb.stats(0).resyncs == 1
    np.testing.assert_array_equal(run.played(), np.arange(100))


def test_packet_beyond_the_window_resyncs_instead_of_overwriting() -> None:
    jb = new_buffer()
    lead = stream(10)
    ahead = stream(10, seq0=40, ts0=40 * STEP, first_frame=40, start_ms=10 * FRAME_MS)
    run = drive(jb, lead + ahead, 20)
    assert jb.stats(0).resyncs == 1
    np.testing.assert_array_equal(run.played(), np.r_[np.arange(10), np.arange(40, 50)])


def test_a_jump_keeps_the_frames_already_buffered() -> None:
    # Frames 0-9 arrive in one burst, then the sender restarts its sequence numbers.
    jb = new_buffer()
    burst = stream(10, delay_ms=np.linspace(200, 20, 10))
    restart = stream(20, seq0=20_000, ts0=7, first_frame=10, start_ms=10 * FRAME_MS, delay_ms=20)
    run = drive(jb, burst + restart, 40)
    assert run.resyncs == 1
    assert (run.reason == DropReason.OK).all()
    played = run.played()
    assert (np.diff(played) > 0).all()
    assert len(played) + jb.stats(0).dropped == 30
    assert jb.stats(0).ptime_mismatch == 0  # the seam between the streams is not checked


def test_a_batch_wider_than_the_window_keeps_the_newest_frames() -> None:
    jb = new_buffer()
    run = drive(jb, stream(20, delay_ms=np.linspace(400, 20, 20)), 45)
    np.testing.assert_array_equal(np.flatnonzero(run.reason == DropReason.LATE), np.arange(4))
    assert (run.reason[4:] == DropReason.OK).all()
    played = run.played()
    assert played[0] >= 4 and played[-1] == 19
    assert (np.diff(played) > 0).all()
    # 16 frames are over the 200 ms maximum depth: a frame is dropped each tick (and one played)
    # until the span is back within it.
    assert jb.stats(0).dropped == (16 - 200 // FRAME_MS) // 2


def test_stray_old_packet_is_late_but_a_restarted_source_resyncs() -> None:
    jb = new_buffer()
    base = stream(40, seq0=10_000)
    stray = stream(1, seq0=2_000, first_frame=999, start_ms=20 * FRAME_MS)
    restart = stream(20, seq0=3_000, ts0=5_000, first_frame=40, start_ms=40 * FRAME_MS)
    run = drive(jb, base + stray + restart, 60)
    assert run.reason[40] == DropReason.LATE  # the stray one: on probation, then forgotten
    assert run.reason[41] == DropReason.LATE  # the restart's first packet is on probation
    assert (run.reason[42:] == DropReason.OK).all()  # its successor confirms it
    assert jb.stats(0).resyncs == 1
    played = run.played()
    np.testing.assert_array_equal(played[:40], np.arange(40))
    np.testing.assert_array_equal(played[40:], np.arange(41, 60))


# ------------------------------------------------------------------------- many legs
def test_a_thousand_legs_in_one_insert_and_pop() -> None:
    legs, n = 1000, 30
    rng = np.random.default_rng(11)
    parts = []
    for leg in range(legs):
        s = stream(n, leg=leg, seq0=int(rng.integers(0, 65536)), delay_ms=rng.uniform(0, 9))
        s.length[:] = rng.integers(8, PAYLOAD + 1, n)
        s.header[:] = rng.choice([12, 16, 20], n)
        parts.append(s)
    packets = parts[0]
    for s in parts[1:]:
        packets = packets + s
    lost = (rng.random(len(packets.seq)) < 0.05) & (packets.frame != 0)
    jb = new_buffer(legs)
    run = drive(jb, packets.take(~lost), n + 10, legs=legs)
    assert (run.status[:n] != IDLE).all()
    for leg in range(0, legs, 97):
        mine = (packets.leg == leg) & ~lost
        np.testing.assert_array_equal(run.played(leg), packets.frame[mine])
    assert int((run.status[:n] == LOST).sum()) == int(lost.sum())


def test_several_packets_of_one_leg_in_one_batch() -> None:
    # A burst: nothing for 3 ticks, then 4 frames at once.
    delay = np.full(40, 5.0)
    delay[10:14] = [65.0, 45.0, 25.0, 5.0]
    jb = new_buffer()
    run = drive(jb, stream(40, delay_ms=delay), 45)
    assert (run.reason == DropReason.OK).all()
    assert (run.status[10:13, 0] == LOST).all()
    assert run.frame[13, 0] == 10  # the late frames were waited for, not skipped
    played = run.played()
    assert (np.diff(played) > 0).all()
    assert len(played) + jb.stats(0).dropped == 40


# ---------------------------------------------------------------------- estimators
@pytest.mark.parametrize("ticks_per_batch", [1, 2])
def test_jitter_matches_rfc3550_packet_by_packet(ticks_per_batch: int) -> None:
    legs, n = 5, 60
    rng = np.random.default_rng(3)
    jb = new_buffer(legs)
    packets = None
    for leg in range(legs):
        s = stream(n, leg=leg, seq0=leg * 1000, delay_ms=rng.uniform(0, 30, n))
        packets = s if packets is None else packets + s
    assert packets is not None
    # With two ticks per batch a leg often has several packets in one batch.
    window = ticks_per_batch * FRAME_MS
    data = np.zeros((len(packets.seq), HEADER + PAYLOAD), dtype=np.uint8)
    arrival_ns = (packets.arrival_ms * 1e6).astype(np.int64)
    for k in range(n // ticks_per_batch + 4):
        now = k * window
        due = np.flatnonzero((packets.arrival_ms <= now) & (packets.arrival_ms > now - window))
        due = due[rng.permutation(len(due))]  # batch order is not arrival order
        result = jb.insert(
            packets.leg[due],
            packets.seq[due],
            packets.ts[due],
            data,
            due.astype(np.intp),
            packets.header[due],
            packets.length[due],
            arrival_ns[due],
        )
        assert np.isin(result.reason, [DropReason.OK, DropReason.LATE]).all()
        for _ in range(ticks_per_batch):
            jb.pop(np.arange(legs, dtype=np.intp))
    for leg in range(legs):
        mine = np.flatnonzero(packets.leg == leg)
        mine = mine[np.argsort(arrival_ns[mine], kind="stable")]
        jitter = 0.0
        for a, b in itertools.pairwise(mine):
            d = (arrival_ns[b] - arrival_ns[a]) * CLOCK_RATE / 1e9 - (
                int(packets.ts[b]) - int(packets.ts[a])
            )
            jitter += (abs(d) - jitter) / 16
        assert jb.stats(leg).jitter_ms == pytest.approx(jitter * 1000 / CLOCK_RATE, rel=1e-9)


def test_ptime_mismatch_is_detected_from_timestamps() -> None:
    jb = new_buffer(3)
    ten_ms = stream(20, leg=0, step=STEP // 2)
    forty_ms = stream(20, leg=1, step=2 * STEP)
    right = stream(20, leg=2)
    drive(jb, ten_ms + forty_ms + right, 25, legs=3, with_marker=True)
    assert jb.stats(0).ptime_mismatch == 19
    assert jb.stats(1).ptime_mismatch == 19  # a 2-frame step with no marker bit
    assert jb.stats(2).ptime_mismatch == 0


def test_forty_ms_steps_pass_as_gaps_without_marker_bits() -> None:
    jb = new_buffer()
    drive(jb, stream(20, step=2 * STEP), 25)
    assert jb.stats(0).ptime_mismatch == 0


# ------------------------------------------------------------------------ reasons
def test_too_large_closed_and_unknown_legs() -> None:
    jb = new_buffer(3)
    jb.close(1)
    data = np.zeros((4, 1400), dtype=np.uint8)
    result = jb.insert(
        np.array([0, 0, 1, 7], dtype=np.intp),
        np.array([1, 2, 1, 1], dtype=np.uint16),
        np.array([0, 160, 0, 0], dtype=np.uint32),
        data,
        np.arange(4, dtype=np.intp),
        np.full(4, HEADER, dtype=np.int32),
        np.array([160, 1300, 160, 160], dtype=np.int32),
        np.zeros(4, dtype=np.int64),
    )
    np.testing.assert_array_equal(
        result.reason,
        [DropReason.OK, DropReason.TOO_LARGE, DropReason.UNKNOWN_SOURCE, DropReason.UNKNOWN_SOURCE],
    )
    assert (result.accepted, result.too_large, result.unknown_leg) == (1, 1, 2)
    assert jb.stats(0).too_large == 1
    out = jb.pop(np.array([0, 1, 2], dtype=np.intp))
    np.testing.assert_array_equal(out.status, [PLAYED, IDLE, IDLE])


def test_reopen_resets_the_leg() -> None:
    jb = new_buffer()
    drive(jb, stream(20), 20)
    assert jb.stats(0).played == 20
    jb.open(0, CLOCK_RATE, STEP)
    assert jb.stats(0).played == 0
    run = drive(jb, stream(10, seq0=30_000), 10)
    np.testing.assert_array_equal(run.played(), np.arange(10))
    assert jb.stats(0).resyncs == 0


def test_empty_insert_and_pop() -> None:
    jb = new_buffer()
    empty = np.zeros(0, dtype=np.intp)
    result = jb.insert(
        empty,
        empty.astype(np.uint16),
        empty.astype(np.uint32),
        np.zeros((0, 10), dtype=np.uint8),
        empty,
        empty.astype(np.int32),
        empty.astype(np.int32),
        empty.astype(np.int64),
    )
    assert result.accepted == 0 and len(result.reason) == 0
    assert len(jb.pop(empty).status) == 0
    np.testing.assert_array_equal(jb.pop(np.array([0], dtype=np.intp)).status, [IDLE])


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"^slots must exceed max_depth_ms / frame_ms$"):
        JitterArray(4, slots=8, max_depth_ms=200)
    with pytest.raises(ValueError, match=r"^capacity must be positive$"):
        JitterArray(0)
    jb = JitterArray(2)
    with pytest.raises(ValueError, match=r"^samples_per_frame does not last frame_ms$"):
        jb.open(0, 8000, 80)
    with pytest.raises(ValueError, match=r"^leg is out of range$"):
        jb.open(2, 8000, 160)
    jb.open(0, 8000, 160)
    one = np.zeros(1, dtype=np.intp)
    with pytest.raises(ValueError, match=r"^packet columns differ in length$"):
        jb.insert(
            one,
            np.zeros(2, dtype=np.uint16),
            np.zeros(1, dtype=np.uint32),
            np.zeros((1, 200), dtype=np.uint8),
            one,
            np.zeros(1, dtype=np.int32),
            np.zeros(1, dtype=np.int32),
            np.zeros(1, dtype=np.int64),
        )
    with pytest.raises(ValueError, match=r"^payload lies outside the packet buffer$"):
        jb.insert(
            one,
            np.zeros(1, dtype=np.uint16),
            np.zeros(1, dtype=np.uint32),
            np.zeros((1, 200), dtype=np.uint8),
            one,
            np.full(1, 12, dtype=np.int32),
            np.full(1, 189, dtype=np.int32),
            np.zeros(1, dtype=np.int64),
        )
    with pytest.raises(ValueError, match=r"^legs must be distinct$"):
        jb.pop(np.array([0, 0], dtype=np.intp))
    with pytest.raises(ValueError, match=r"^leg is out of range$"):
        jb.pop(np.array([5], dtype=np.intp))
