"""The adaptive jitter buffers of every leg of a media worker, held as NumPy arrays.

One :class:`JitterArray` holds the jitter buffer of every leg (participant slot
``0..capacity-1``) of a media worker.  Every 20 ms tick the worker hands :meth:`JitterArray.insert`
the whole batch of packets it received, then asks :meth:`JitterArray.pop` for one frame per leg.
Both work on columns; no Python object is made per packet and, on the hot path, no Python loop
runs per packet or per leg (DESIGN.md, "How one audio frame flows: batch first").  The shape
follows aiortc's ``jitterbuffer.py``, one ring of packets indexed by sequence number, but with one
ring per leg in one array and an adaptive playout depth.

**One packet is one frame.**  The bridge requires ``ptime`` equal to ``frame_ms`` (20 ms), so a
frame is addressed by the packet's extended sequence number and one frame plays per tick.  This is
checked on the RTP timestamps (RFC 3550 §5.1, RFC 3551 §4.1): between two consecutive sequence
numbers the timestamp must step by ``samples_per_frame``, or by a whole number of frames across a
silence gap.  Any other step counts as a ptime mismatch (see :attr:`LegStats.ptime_mismatch`);
when marker bits are given, a multi-frame step on a packet whose marker bit is clear (one that
does not start a talk spurt) counts too, which catches a ``ptime`` of 40 ms.

**Sequence numbers** (RFC 3550 §A.1) are extended to 64 bits per leg, across the 16-bit wrap,
relative to the highest one received.  A packet behind the playout point is dropped as
:attr:`~bridge.rtpcolumns.DropReason.LATE`, or as
:attr:`~bridge.rtpcolumns.DropReason.DUPLICATE` when its frame is still in the ring.  A packet
beyond the ring's window (``slots`` frames from the playout point; any jump larger than RFC
3550's ``MAX_DROPOUT`` is) resynchronises the leg: its stream carries on from the highest frame
so far, so that the frames already buffered still play and the jump is not played out as silence.
A jump back by more than ``MAX_MISORDER`` is dropped as late, but as in RFC 3550 §A.1 the packet
that follows it in sequence confirms a restarted source, which resynchronises the leg the same
way.
That probation is the only Python loop over packets, and it runs only for such a leg.

**Depth** adapts per leg.  The interarrival jitter ``J`` is estimated as in RFC 3550 §6.4.1 and
§A.8, over the whole batch at once (several packets of one leg in one batch are folded in arrival
order, in closed form).  The target depth is one frame plus enough frames to cover
``JITTER_MULTIPLIER * J`` beyond ``JITTER_FLOOR_MS`` of timer noise, that is
``clamp(1 + ceil((3 J - 2 ms) / frame_ms))`` frames, between ``min_depth_ms`` and
``max_depth_ms``; for a uniform delay spread of ``W`` ms, ``J`` is about ``W / 3``, so the target
covers the spread.  The target grows at once, and falls by one frame once the jitter has fitted in
one frame fewer, with ``SHRINK_MARGIN_FRAMES`` to spare, for ``TARGET_SHRINK_TICKS`` ticks.

The buffer follows its target through its *level*: the span it would have if its newest frame had
come by the fastest path seen (the least "tick of arrival minus frame number" of its packets).
Unlike the raw span, the level does not move with each packet's delay, so the buffer does not
chase noise.  Under target, and while packets arrive, the buffer grows by holding the playout point
for one tick (the tick conceals, :attr:`PlayoutStatus.LOST`, counted as ``held``); over target it
shrinks by dropping one frame, at most once every ``SHRINK_INTERVAL_TICKS`` (every tick when the
span is over ``max_depth_ms``).

**Playout.**  A leg buffers until its span (newest frame minus oldest, plus one) reaches the
target, or it has waited as many ticks as the target; with the minimum target of one frame the
first packet of a leg plays in the tick it arrives, which keeps late call entry short (3GPP TS
22.179).  A missing frame with later frames buffered is :attr:`PlayoutStatus.LOST` (the decoder
conceals it) and the playout point moves on.  When the buffer runs empty the tick is also LOST,
but the playout point stays where it is: if the missing frame was only late it still plays, and
if it was lost, the ticks already concealed are skipped once the next frames arrive.  After
``MAX_CONCEALED_FRAMES`` concealed ticks in a row an empty leg goes :attr:`PlayoutStatus.IDLE`
(the stream ended, or a talk spurt did) and buffers again to its target when packets come back;
a leg that has frames after a longer gap jumps to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from .rtpcolumns import DropReason

#: RTP sequence numbers are 16 bits (RFC 3550 §5.1).
SEQ_MOD = 1 << 16
_SEQ_HALF = SEQ_MOD // 2
_SEQ_MASK = SEQ_MOD - 1
#: A sequence number more than this far behind the highest one is a jump back (RFC 3550 §A.1).
MAX_MISORDER = 100
#: The interarrival jitter estimator's gain is ``1 / JITTER_DIVISOR`` (RFC 3550 §6.4.1).
JITTER_DIVISOR = 16
#: The target depth covers this many times the interarrival jitter, plus one frame.
JITTER_MULTIPLIER = 3
#: Concealed ticks in a row after which an empty leg goes idle (100 ms at 20 ms frames).
MAX_CONCEALED_FRAMES = 5
#: Jitter margin (``JITTER_MULTIPLIER * J``) below this is timer noise and adds no frame.
JITTER_FLOOR_MS = 2.0
#: The target falls only when the jitter fits one frame fewer with this much to spare.
SHRINK_MARGIN_FRAMES = 0.5
#: ... and has done so for this many ticks in a row (two seconds).
TARGET_SHRINK_TICKS = 100
#: The fastest path's offset forgets by one frame when no packet has matched it this long
#: (five seconds), so that the level follows a slower route or a slower sender clock.
FAST_PATH_FORGET_TICKS = 250
#: At most one frame is dropped to shrink the buffer in this many ticks.
SHRINK_INTERVAL_TICKS = 25

NS_PER_SECOND = 1_000_000_000
MS_PER_SECOND = 1000

#: Extended sequence number given to the first packet of a leg (plus its sequence number), so
#: that extended numbers stay positive when the first packets arrive out of order.
_EXT_ORIGIN = 1 << 32
_EMPTY = -1
_NO_SEQUENCE = -1
_NO_FRAME = np.iinfo(np.int64).max
_UNCLAIMED = np.iinfo(np.int64).max


class PlayoutStatus(IntEnum):
    """What :meth:`JitterArray.pop` produced for a leg this tick."""

    #: A received frame: decode ``payload[:length]``.
    PLAYED = 0
    #: A frame is missing (or the buffer is growing): the decoder conceals it (PLC).
    LOST = 1
    #: Nothing to play: buffering, not talking, or the stream ended.  The leg is silent.
    IDLE = 2


class LegState(IntEnum):
    """Where a leg's buffer is in its life."""

    CLOSED = 0
    #: Open, and waiting for its fill to reach the target depth (at the start of each spurt).
    BUFFERING = 1
    PLAYING = 2


class _Counter(IntEnum):
    """Columns of the per-leg counter array."""

    RECEIVED = 0
    PLAYED = 1
    LOST = 2
    LATE = 3
    DUPLICATE = 4
    TOO_LARGE = 5
    RESYNCS = 6
    HELD = 7
    DROPPED = 8
    PTIME_MISMATCH = 9


# The counter each insert reason adds to (UNKNOWN_SOURCE has no leg to count on, and is never
# looked up).
_REASON_COUNTER = {
    DropReason.OK: _Counter.RECEIVED,
    DropReason.LATE: _Counter.LATE,
    DropReason.DUPLICATE: _Counter.DUPLICATE,
    DropReason.TOO_LARGE: _Counter.TOO_LARGE,
}
_REASON_TO_COUNTER = np.zeros(max(DropReason) + 1, dtype=np.intp)
_REASON_TO_COUNTER[list(_REASON_COUNTER)] = list(_REASON_COUNTER.values())


@dataclass
class InsertResult:
    """The outcome of one :meth:`JitterArray.insert`.

    ``reason[i]`` is :attr:`~bridge.rtpcolumns.DropReason.OK` when packet ``i`` was buffered, or
    why it was dropped: ``LATE`` (behind the playout point, or far behind on probation),
    ``DUPLICATE``, ``TOO_LARGE`` (longer than ``payload_size``) or ``UNKNOWN_SOURCE`` (its leg is
    not open).  The values are those of the worker's drop counters.
    """

    reason: npt.NDArray[np.uint8]
    accepted: int
    late: int
    duplicate: int
    too_large: int
    unknown_leg: int
    #: Legs resynchronised by this batch (a sequence jump or a packet beyond the window).
    resyncs: int
    #: Buffered packets whose timestamp step shows a ptime other than ``frame_ms``.
    ptime_mismatch: int


@dataclass
class Playout:
    """One frame per leg asked of :meth:`JitterArray.pop`, in the order asked.

    ``payload[i, :length[i]]`` is the frame of a PLAYED leg; other rows have ``length`` 0, and
    bytes past ``length[i]`` are unspecified.  ``payload`` is a view of a buffer that the next
    :meth:`JitterArray.pop` reuses, as the receive batch of ``bridge.mmsg`` is.
    ``arrival_ns[i]`` is when a played frame was received (0 otherwise).
    """

    payload: npt.NDArray[np.uint8]
    length: npt.NDArray[np.int32]
    status: npt.NDArray[np.uint8]
    arrival_ns: npt.NDArray[np.int64]


@dataclass(frozen=True)
class LegStats:
    """Counters and gauges of one leg since it was opened."""

    state: LegState
    #: Packets buffered.
    received: int
    #: Frames played.
    played: int
    #: Ticks concealed because a frame was missing.
    lost: int
    #: Packets dropped because they came after their frame's playout.
    late: int
    #: Packets dropped because their frame was already buffered or played.
    duplicate: int
    #: Packets dropped because they were longer than ``payload_size``.
    too_large: int
    #: Times the leg's sequence was resynchronised.
    resyncs: int
    #: Ticks concealed on purpose, to grow the buffer.
    held: int
    #: Buffered frames dropped to shrink the buffer.
    dropped: int
    #: Packets whose timestamp step shows a ptime other than ``frame_ms``.
    ptime_mismatch: int
    #: The target playout depth.
    depth_ms: int
    #: The span of frames now buffered, from the playout point to the newest frame.
    fill_ms: int
    #: The interarrival jitter estimate (RFC 3550 §6.4.1).
    jitter_ms: float


class JitterArray:
    """The jitter buffers of ``capacity`` legs, one ring of ``slots`` frames each.

    :param capacity: the number of leg slots.
    :param slots: frames per ring; it bounds reordering and must exceed the maximum depth.
    :param payload_size: the largest payload kept per frame, in bytes.
    :param frame_ms: the duration of one frame, which must be the ``ptime`` of every leg.
    :param min_depth_ms: the smallest target depth (one frame at least).
    :param max_depth_ms: the largest target depth.
    """

    def __init__(
        self,
        capacity: int,
        *,
        slots: int = 16,
        payload_size: int = 1280,
        frame_ms: int = 20,
        min_depth_ms: int = 20,
        max_depth_ms: int = 200,
    ) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        if payload_size <= 0:
            raise ValueError("payload_size must be positive")
        if frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        min_frames = max(1, -(-min_depth_ms // frame_ms))
        max_frames = max_depth_ms // frame_ms
        if max_frames < min_frames:
            raise ValueError("max_depth_ms must be at least min_depth_ms and one frame")
        if slots <= max_frames:
            raise ValueError("slots must exceed max_depth_ms / frame_ms")

        self._capacity = capacity
        self._slots = slots
        self._payload_size = payload_size
        self._frame_ms = frame_ms
        self._min_frames = min_frames
        self._max_frames = max_frames

        # Per-leg state.
        self._state = np.zeros(capacity, dtype=np.uint8)
        self._clock_rate = np.ones(capacity, dtype=np.float64)
        self._units_per_ns = np.zeros(capacity, dtype=np.float64)
        self._ms_per_unit = np.zeros(capacity, dtype=np.float64)
        self._step = np.ones(capacity, dtype=np.uint32)
        self._synced = np.zeros(capacity, dtype=np.bool_)
        self._max_ext = np.zeros(capacity, dtype=np.int64)
        # PLAYING: the next frame to play.  BUFFERING: the oldest frame that may still play.
        self._playout = np.zeros(capacity, dtype=np.int64)
        self._min_ext = np.full(capacity, _NO_FRAME, dtype=np.int64)
        self._buffered = np.zeros(capacity, dtype=np.bool_)
        self._buffer_ticks = np.zeros(capacity, dtype=np.int64)
        self._target = np.full(capacity, min_frames, dtype=np.int64)
        # The depths the jitter asks for: grow up to ``_up``, shrink while over ``_down``.
        self._up = np.full(capacity, min_frames, dtype=np.int64)
        self._down = np.full(capacity, min_frames, dtype=np.int64)
        self._target_age = np.zeros(capacity, dtype=np.int64)
        self._since_drop = np.zeros(capacity, dtype=np.int64)
        self._pops = np.zeros(capacity, dtype=np.int64)
        self._fast = np.full(capacity, _NO_FRAME, dtype=np.int64)
        self._fast_age = np.zeros(capacity, dtype=np.int64)
        self._stall = np.zeros(capacity, dtype=np.int64)
        self._lost_run = np.zeros(capacity, dtype=np.int64)
        self._arrivals = np.zeros(capacity, dtype=np.int64)
        self._bad_seq = np.full(capacity, _NO_SEQUENCE, dtype=np.int32)
        self._shift = np.zeros(capacity, dtype=np.int64)
        # The first frame after a resync, whose predecessor belongs to the old stream.
        self._seam = np.full(capacity, _NO_FRAME, dtype=np.int64)
        self._jitter = np.zeros(capacity, dtype=np.float64)
        self._has_transit = np.zeros(capacity, dtype=np.bool_)
        self._last_arrival = np.zeros(capacity, dtype=np.int64)
        self._last_ts = np.zeros(capacity, dtype=np.uint32)
        self._counters = np.zeros((capacity, len(_Counter)), dtype=np.int64)

        # The rings: frame ``ext`` of leg ``l`` lives in slot ``ext % slots``.
        self._slot_ext = np.full((capacity, slots), _EMPTY, dtype=np.int64)
        self._slot_len = np.zeros((capacity, slots), dtype=np.int32)
        self._slot_ts = np.zeros((capacity, slots), dtype=np.uint32)
        self._slot_arrival = np.zeros((capacity, slots), dtype=np.int64)
        self._payload = np.zeros((capacity, slots, payload_size), dtype=np.uint8)
        # Playout's payloads, reused by every pop.
        self._out = np.zeros((capacity, payload_size), dtype=np.uint8)
        # Scratch for finding duplicates inside one batch; always left all-unclaimed.
        self._claim = np.full(capacity * slots, _UNCLAIMED, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def payload_size(self) -> int:
        return self._payload_size

    def open(self, leg: int, clock_rate: int, samples_per_frame: int) -> None:
        """Start (or restart) a leg: its buffer is emptied and its counters zeroed.

        ``samples_per_frame`` is the RTP timestamp step of one frame (RFC 3551 §4.1), which
        must last ``frame_ms`` at ``clock_rate``.
        """
        self._check_leg(leg)
        if clock_rate <= 0 or samples_per_frame <= 0:
            raise ValueError("clock_rate and samples_per_frame must be positive")
        if samples_per_frame * MS_PER_SECOND != clock_rate * self._frame_ms:
            raise ValueError("samples_per_frame does not last frame_ms")
        self._state[leg] = LegState.BUFFERING
        self._clock_rate[leg] = clock_rate
        self._units_per_ns[leg] = clock_rate / NS_PER_SECOND
        self._ms_per_unit[leg] = MS_PER_SECOND / clock_rate
        self._step[leg] = samples_per_frame
        self._synced[leg] = False
        self._max_ext[leg] = 0
        self._playout[leg] = 0
        self._min_ext[leg] = _NO_FRAME
        self._buffered[leg] = False
        self._buffer_ticks[leg] = 0
        self._target[leg] = self._min_frames
        self._up[leg] = self._min_frames
        self._down[leg] = self._min_frames
        self._target_age[leg] = 0
        self._since_drop[leg] = 0
        self._pops[leg] = 0
        self._fast[leg] = _NO_FRAME
        self._fast_age[leg] = 0
        self._stall[leg] = 0
        self._lost_run[leg] = 0
        self._arrivals[leg] = 0
        self._bad_seq[leg] = _NO_SEQUENCE
        self._seam[leg] = _NO_FRAME
        self._jitter[leg] = 0.0
        self._has_transit[leg] = False
        self._counters[leg] = 0
        self._slot_ext[leg] = _EMPTY

    def close(self, leg: int) -> None:
        """Stop a leg: its packets are refused and it pops IDLE.  Its stats stay readable."""
        self._check_leg(leg)
        self._state[leg] = LegState.CLOSED
        self._slot_ext[leg] = _EMPTY

    def insert(
        self,
        leg: npt.NDArray[np.intp],
        sequence: npt.NDArray[np.uint16],
        timestamp: npt.NDArray[np.uint32],
        data: npt.NDArray[np.uint8],
        row: npt.NDArray[np.intp],
        offset: npt.NDArray[np.int32],
        length: npt.NDArray[np.int32],
        arrival_ns: npt.NDArray[np.int64],
        marker: npt.NDArray[np.bool_] | None = None,
    ) -> InsertResult:
        """Buffer one batch of packets, already demultiplexed to legs.

        Packet ``i`` belongs to ``leg[i]``, carries RTP ``sequence[i]`` and ``timestamp[i]``
        (RFC 3550 §5.1) and arrived at ``arrival_ns[i]``; its payload is
        ``data[row[i], offset[i]:offset[i] + length[i]]``.  ``marker``, when given, is the RTP
        marker bit, which sharpens the ptime check.  Packets of one leg may come in any order.
        """
        leg = np.asarray(leg, dtype=np.intp)
        sequence = np.asarray(sequence, dtype=np.uint16)
        timestamp = np.asarray(timestamp, dtype=np.uint32)
        row = np.asarray(row, dtype=np.intp)
        offset = np.asarray(offset, dtype=np.int32)
        length = np.asarray(length, dtype=np.int32)
        arrival_ns = np.asarray(arrival_ns, dtype=np.int64)
        shapes = [c.shape for c in (sequence, timestamp, row, offset, length, arrival_ns)]
        if marker is not None:
            marker = np.asarray(marker, dtype=np.bool_)
            shapes.append(marker.shape)
        n = len(leg)
        if leg.ndim != 1 or any(shape != (n,) for shape in shapes):
            raise ValueError("packet columns differ in length")
        if data.ndim != 2:
            raise ValueError("packet buffer must have two dimensions")
        reason = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return self._result(reason, 0, 0)
        if (
            row.min() < 0
            or row.max() >= data.shape[0]
            or offset.min() < 0
            or length.min() < 0
            or (offset.astype(np.int64) + length).max() > data.shape[1]
        ):
            raise ValueError("payload lies outside the packet buffer")

        in_range = (leg >= 0) & (leg < self._capacity)
        known = in_range & (self._state[np.where(in_range, leg, 0)] != LegState.CLOSED)
        reason[~known] = DropReason.UNKNOWN_SOURCE
        reason[known & (length > self._payload_size)] = DropReason.TOO_LARGE

        # Work on the known packets sorted by leg, then by arrival (RFC 3550 §A.8 order).
        known_idx = np.flatnonzero(known)
        if len(known_idx) == 0:
            return self._result(reason, 0, 0)
        k_arrival, k_legs = arrival_ns[known_idx], leg[known_idx]
        if (k_arrival[1:] >= k_arrival[:-1]).all():
            # Already in arrival order, as a receive batch is: a stable (radix) sort by leg.
            key = k_legs.astype(np.uint16) if self._capacity <= SEQ_MOD else k_legs
            idx = known_idx[np.argsort(key, kind="stable")]
        else:
            idx = known_idx[np.lexsort((k_arrival, k_legs))]
        m = len(idx)
        legs = leg[idx]
        seq = sequence[idx].astype(np.int64)
        rs = reason[idx]
        first = np.empty(m, dtype=np.bool_)
        first[0] = True
        np.not_equal(legs[1:], legs[:-1], out=first[1:])
        # ``single``: no leg has two packets in this batch, the common case, which is cheaper.
        single = bool(first.all())
        if single:
            group = starts = np.arange(m)
            first_seq = seq
        else:
            group = np.cumsum(first) - 1
            starts = np.flatnonzero(first)
            first_seq = seq[starts][group]

        # Extended sequence numbers (RFC 3550 §A.1), relative to the highest one so far; a new
        # leg's are relative to its first packet.  ``ext - shift`` unwraps the sequence number.
        synced = self._synced[legs]
        self._shift[legs[~synced]] = _EXT_ORIGIN
        ref_ext = np.where(synced, self._max_ext[legs], _EXT_ORIGIN + first_seq)
        ref_seq = np.where(synced, ref_ext - self._shift[legs], first_seq)
        ext = ref_ext + ((seq - ref_seq + _SEQ_HALF) & _SEQ_MASK) - _SEQ_HALF
        probation = np.zeros(m, dtype=np.bool_)
        rebased = np.zeros(self._capacity, dtype=np.bool_)
        back = (rs == DropReason.OK) & (ext < ref_ext - MAX_MISORDER)
        resyncs = 0
        if back.any():
            groups = np.unique(group[back])
            resyncs += self._jump_back(
                groups, starts, legs, seq, ref_ext, ref_seq, ext, rs, probation, rebased
            )
        candidate = rs == DropReason.OK
        if not synced.all():
            self._place(legs[~synced & candidate], ext[~synced & candidate])

        # A packet beyond the window: the stream jumped, so it carries on from the highest frame.
        beyond = candidate & (ext >= self._playout[legs] + self._slots)
        if beyond.any():
            resyncs += self._rebase(rebased, beyond, candidate, legs, ext)
            # Only a batch wider than the window can still overflow; it cannot be buffered.
            rs[candidate & (ext >= self._playout[legs] + self._slots)] = DropReason.LATE
            candidate = rs == DropReason.OK

        playout = self._playout[legs]
        slot = ext % self._slots
        flat = legs * self._slots + slot
        stored = self._slot_ext.reshape(-1)[flat] == ext
        old = candidate & (ext < playout)
        rs[old] = np.where(stored[old], DropReason.DUPLICATE, DropReason.LATE)
        rs[candidate & ~old & stored] = DropReason.DUPLICATE
        ok = np.flatnonzero(candidate & ~old & ~stored)
        if not single and len(ok):
            # Of several copies in this batch, the first to arrive wins.
            claim, o_flat = self._claim, flat[ok]
            np.minimum.at(claim, o_flat, ok.astype(np.int64))
            winner = claim[o_flat] == ok
            claim[o_flat] = _UNCLAIMED
            rs[ok[~winner]] = DropReason.DUPLICATE
            ok = ok[winner]
        mismatch = self._store(
            ok,
            idx[ok],
            single,
            legs,
            ext,
            slot,
            data,
            row,
            offset,
            length,
            timestamp,
            arrival_ns,
            marker,
        )
        self._estimate_jitter(single, legs, rs, rebased, probation, idx, timestamp, arrival_ns)

        counter = legs * len(_Counter) + _REASON_TO_COUNTER[rs]
        if single:
            self._counters.reshape(-1)[counter] += 1
        else:
            np.add.at(self._counters.reshape(-1), counter, 1)
        reason[idx] = rs
        return self._result(reason, resyncs, mismatch)

    def pop(self, legs: npt.NDArray[np.intp]) -> Playout:
        """Play out one frame for each of ``legs`` (distinct), for this tick."""
        legs = np.asarray(legs, dtype=np.intp)
        n = len(legs)
        if n and (legs.min() < 0 or legs.max() >= self._capacity):
            raise ValueError("leg is out of range")
        if n and np.bincount(legs, minlength=self._capacity).max() > 1:
            raise ValueError("legs must be distinct")
        slots = self._slots
        state = self._state[legs]
        target = self._update_target(legs)

        # A buffering leg starts once its span reaches the target or it has waited as long.
        buffering = (state == LegState.BUFFERING) & self._buffered[legs]
        buffer_ticks = self._buffer_ticks[legs] + buffering
        min_ext = self._min_ext[legs]
        max_ext = self._max_ext[legs]
        start = buffering & ((max_ext - min_ext + 1 >= target) | (buffer_ticks >= target))
        playing = (state == LegState.PLAYING) | start
        playout = np.where(start, min_ext, self._playout[legs])
        stall = np.where(start, 0, self._stall[legs])
        lost_run = np.where(start, 0, self._lost_run[legs])

        span = max_ext - playout + 1
        ring = self._slot_ext.reshape(-1)
        base = legs * slots
        at_point = playing & (ring[base + playout % slots] == playout)
        # Where the frame at the playout point is missing (rare), find the first one buffered.
        any_present = at_point.copy()
        lead = np.zeros(n, dtype=np.int64)
        missing = np.flatnonzero(playing & ~at_point)
        if len(missing):
            ahead = playout[missing, None] + np.arange(slots)
            present = ring[base[missing, None] + ahead % slots] == ahead
            found = present.any(axis=1)
            any_present[missing] = found
            lead[missing] = np.where(found, present.argmax(axis=1), slots)

        # Frames missing at the playout point while the buffer stalled empty were concealed
        # already, one per stalled tick: skip them now that later frames are here.
        skip = np.where(any_present, np.minimum(stall, lead), 0)
        playout += skip
        lead -= skip
        span -= skip
        stall[any_present] = 0
        at_point = any_present & (lead == 0)
        following = ring[base + (playout + 1) % slots] == playout + 1

        capped = lost_run >= MAX_CONCEALED_FRAMES
        # The level: the span the buffer would have if the newest frame had come by the fastest
        # path seen.  Unlike the span, it does not move with each packet's delay.
        fast = self._fast[legs]
        level = np.where(fast != _NO_FRAME, self._pops[legs] - fast - playout + 1, span)
        since_drop = self._since_drop[legs] + 1
        arrived = self._arrivals[legs] > 0
        hold = playing & ~start & arrived & (level < target) & ~capped
        rest = playing & ~hold
        shrink = (level > target) & (since_drop >= SHRINK_INTERVAL_TICKS)
        drop = rest & at_point & following & (shrink | (span > self._max_frames))
        jump = rest & ~at_point & any_present & capped
        play = (rest & at_point) | jump
        gap = rest & ~at_point & any_present & ~capped
        underrun = rest & ~any_present & ~capped
        to_idle = rest & ~any_present & capped

        play_ext = playout + drop + np.where(jump, lead, 0)
        status = np.full(n, PlayoutStatus.IDLE, dtype=np.uint8)
        status[play] = PlayoutStatus.PLAYED
        concealed = hold | gap | underrun
        status[concealed] = PlayoutStatus.LOST

        self._playout[legs] = np.where(play, play_ext + 1, playout + gap)
        self._stall[legs] = np.where(to_idle, 0, stall + underrun)
        self._lost_run[legs] = np.where(play | to_idle, 0, lost_run + concealed)
        self._since_drop[legs] = np.where(drop, 0, since_drop)
        self._pops[legs] += 1
        fast_age = self._fast_age[legs] + 1
        forget = fast_age >= FAST_PATH_FORGET_TICKS
        self._fast[legs] = np.where(forget & (fast != _NO_FRAME), fast + 1, fast)
        self._fast[legs[to_idle]] = _NO_FRAME
        self._fast_age[legs] = np.where(forget, 0, fast_age)
        self._arrivals[legs] = 0
        new_state = np.where(start, LegState.PLAYING, state)
        new_state[to_idle] = LegState.BUFFERING
        self._state[legs] = new_state
        leaving = start | to_idle
        self._buffered[legs[leaving]] = False
        self._min_ext[legs[leaving]] = _NO_FRAME
        self._buffer_ticks[legs] = np.where(leaving, 0, buffer_ticks)

        # Legs are distinct, so one fancy increment counts each leg's outcome of this tick.
        outcome = np.full(n, _Counter.PLAYED, dtype=np.intp)
        outcome[gap | underrun] = _Counter.LOST
        outcome[hold] = _Counter.HELD
        counted = np.flatnonzero(play | concealed)
        self._counters.reshape(-1)[legs[counted] * len(_Counter) + outcome[counted]] += 1
        if drop.any():
            self._counters[legs[drop], _Counter.DROPPED] += 1

        # The payloads go to a buffer that every pop reuses, as wide as the widest one played.
        payload = self._out[:n]
        size = np.zeros(n, dtype=np.int32)
        arrival = np.zeros(n, dtype=np.int64)
        played = np.flatnonzero(play)
        if len(played):
            flat = base[played] + play_ext[played] % slots
            size[played] = self._slot_len.reshape(-1)[flat]
            arrival[played] = self._slot_arrival.reshape(-1)[flat]
            width = int(size.max())
            frames = self._payload.reshape(-1, self._payload_size)
            payload[played, :width] = frames[flat, :width]
        return Playout(payload=payload, length=size, status=status, arrival_ns=arrival)

    def depth_ms(self, legs: npt.NDArray[np.intp]) -> npt.NDArray[np.int32]:
        """The target playout depth of ``legs``, in milliseconds."""
        depth: npt.NDArray[np.int32] = (self._target[legs] * self._frame_ms).astype(np.int32)
        return depth

    def stats(self, leg: int) -> LegStats:
        """The counters and gauges of one leg."""
        self._check_leg(leg)
        c = self._counters[leg]
        state = LegState(int(self._state[leg]))
        if state == LegState.PLAYING:
            fill = max(0, int(self._max_ext[leg] - self._playout[leg] + 1))
        elif self._buffered[leg]:
            fill = int(self._max_ext[leg] - self._min_ext[leg] + 1)
        else:
            fill = 0
        return LegStats(
            state=state,
            received=int(c[_Counter.RECEIVED]),
            played=int(c[_Counter.PLAYED]),
            lost=int(c[_Counter.LOST]),
            late=int(c[_Counter.LATE]),
            duplicate=int(c[_Counter.DUPLICATE]),
            too_large=int(c[_Counter.TOO_LARGE]),
            resyncs=int(c[_Counter.RESYNCS]),
            held=int(c[_Counter.HELD]),
            dropped=int(c[_Counter.DROPPED]),
            ptime_mismatch=int(c[_Counter.PTIME_MISMATCH]),
            depth_ms=int(self._target[leg]) * self._frame_ms,
            fill_ms=fill * self._frame_ms,
            jitter_ms=float(self._jitter[leg]) * MS_PER_SECOND / float(self._clock_rate[leg]),
        )

    # ------------------------------------------------------------------ helpers
    def _check_leg(self, leg: int) -> None:
        if not 0 <= leg < self._capacity:
            raise ValueError("leg is out of range")

    def _result(self, reason: npt.NDArray[np.uint8], resyncs: int, mismatch: int) -> InsertResult:
        counts = np.bincount(reason, minlength=len(DropReason))
        return InsertResult(
            reason=reason,
            accepted=int(counts[DropReason.OK]),
            late=int(counts[DropReason.LATE]),
            duplicate=int(counts[DropReason.DUPLICATE]),
            too_large=int(counts[DropReason.TOO_LARGE]),
            unknown_leg=int(counts[DropReason.UNKNOWN_SOURCE]),
            resyncs=resyncs,
            ptime_mismatch=mismatch,
        )

    def _jump_back(
        self,
        groups: npt.NDArray[np.intp],
        starts: npt.NDArray[np.intp],
        legs: npt.NDArray[np.intp],
        seq: npt.NDArray[np.int64],
        ref_ext: npt.NDArray[np.int64],
        ref_seq: npt.NDArray[np.int64],
        ext: npt.NDArray[np.int64],
        rs: npt.NDArray[np.uint8],
        probation: npt.NDArray[np.bool_],
        rebased: npt.NDArray[np.bool_],
    ) -> int:
        """Slow path for the rare leg with a packet far behind: RFC 3550 §A.1 probation.

        Such a packet is dropped as late and remembered.  If the next one in sequence follows
        it, the source has restarted: the stream carries on from the highest frame so far, and
        the leg is counted as resynchronised.  Returns how many legs were.
        """
        ends = np.append(starts[1:], len(legs))
        restarted = 0
        for g in groups.tolist():
            lo, hi = int(starts[g]), int(ends[g])
            leg = int(legs[lo])
            r_ext, r_seq = int(ref_ext[lo]), int(ref_seq[lo])
            top = r_ext
            bad = int(self._bad_seq[leg])
            for i in range(lo, hi):
                if rs[i] != DropReason.OK:
                    continue
                s = int(seq[i])
                d = ((s - r_seq + _SEQ_HALF) & _SEQ_MASK) - _SEQ_HALF
                if d >= -MAX_MISORDER:
                    ext[i] = r_ext + d
                    top = max(top, r_ext + d)
                elif s == bad:
                    r_ext, r_seq = top + 1, s
                    ext[i] = top = r_ext
                    bad = _NO_SEQUENCE
                    self._shift[leg] = r_ext - s
                    self._seam[leg] = r_ext
                    self._counters[leg, _Counter.RESYNCS] += 1
                    self._restart_timing(np.array([leg], dtype=np.intp))
                    rebased[leg] = True
                    restarted += 1
                else:
                    bad = (s + 1) & _SEQ_MASK
                    rs[i] = DropReason.LATE
                    probation[i] = True
            self._bad_seq[leg] = bad
        return restarted

    def _place(self, legs: npt.NDArray[np.intp], ext: npt.NDArray[np.int64]) -> None:
        """Start new legs at the oldest frame of their first batch that fits the window."""
        floor = np.full(self._capacity, _NO_FRAME, dtype=np.int64)
        np.minimum.at(floor, legs, ext)
        newest = np.full(self._capacity, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(newest, legs, ext)
        new = np.flatnonzero(floor != _NO_FRAME)
        floor[new] = np.maximum(floor[new], newest[new] - self._slots + 1)
        self._synced[new] = True
        self._playout[new] = floor[new]
        self._max_ext[new] = floor[new] - 1

    def _rebase(
        self,
        rebased: npt.NDArray[np.bool_],
        beyond: npt.NDArray[np.bool_],
        candidate: npt.NDArray[np.bool_],
        legs: npt.NDArray[np.intp],
        ext: npt.NDArray[np.int64],
    ) -> int:
        """Carry the packets beyond the window on from each leg's highest frame; count legs.

        The frames already buffered still play; the jump itself (a restarted sender, or a gap
        longer than the window) is not played out as silence.  A leg whose new packets overflow
        even so starts over on them, with its ring flushed.
        """
        r = np.unique(legs[beyond])
        rebased[r] = True
        low = np.full(self._capacity, _NO_FRAME, dtype=np.int64)
        np.minimum.at(low, legs[beyond], ext[beyond])
        top = self._max_ext.copy()
        below = candidate & ~beyond
        np.maximum.at(top, legs[below], ext[below])
        move = top + 1 - low
        ext[beyond] += move[legs[beyond]]
        self._shift[r] += move[r]
        self._seam[r] = top[r] + 1
        self._counters[r, _Counter.RESYNCS] += 1
        self._restart_timing(r)
        over = beyond & (ext >= self._playout[legs] + self._slots)
        if over.any():
            f = np.unique(legs[over])
            self._slot_ext[f] = _EMPTY
            self._state[f] = LegState.BUFFERING
            self._playout[f] = top[f] + 1
            self._min_ext[f] = _NO_FRAME
            self._buffered[f] = False
            self._buffer_ticks[f] = 0
            self._stall[f] = 0
            self._lost_run[f] = 0
        return len(r)

    def _restart_timing(self, legs: npt.NDArray[np.intp]) -> None:
        """A new stream on these legs: its arrival times start new references."""
        self._has_transit[legs] = False
        self._fast[legs] = _NO_FRAME
        self._bad_seq[legs] = _NO_SEQUENCE

    def _store(
        self,
        ok: npt.NDArray[np.intp],
        packets: npt.NDArray[np.intp],
        single: bool,
        legs: npt.NDArray[np.intp],
        ext: npt.NDArray[np.int64],
        slot: npt.NDArray[np.int64],
        data: npt.NDArray[np.uint8],
        row: npt.NDArray[np.intp],
        offset: npt.NDArray[np.int32],
        length: npt.NDArray[np.int32],
        timestamp: npt.NDArray[np.uint32],
        arrival_ns: npt.NDArray[np.int64],
        marker: npt.NDArray[np.bool_] | None,
    ) -> int:
        """Copy the accepted packets into their rings; return how many mismatch the ptime.

        ``single`` says that no leg has two packets in the batch, so that plain fancy
        assignment can stand in for the slower ``ufunc.at``.
        """
        if len(ok) == 0:
            return 0
        o_legs, o_ext = legs[ok], ext[ok]
        o_len, o_off, o_ts = length[packets], offset[packets], timestamp[packets]
        flat = o_legs * self._slots + slot[ok]
        self._slot_ext.reshape(-1)[flat] = o_ext
        self._slot_len.reshape(-1)[flat] = o_len
        self._slot_ts.reshape(-1)[flat] = o_ts
        self._slot_arrival.reshape(-1)[flat] = arrival_ns[packets]
        # Gather the payloads by row, one block per distinct header length (usually one).
        frames = self._payload.reshape(-1, self._payload_size)
        rows = row[packets]
        first_off, last_off = int(o_off.min()), int(o_off.max())
        offsets = [first_off] if first_off == last_off else np.unique(o_off).tolist()
        for off in offsets:
            same = slice(None) if first_off == last_off else o_off == off
            width = int(o_len[same].max())
            if width:
                frames[flat[same], :width] = data[rows[same], off : off + width]

        # The fastest path: the least of (tick of arrival - frame number) over the packets.
        fastest = self._pops[o_legs] - o_ext
        waiting = self._state[o_legs] == LegState.BUFFERING
        if single:
            self._max_ext[o_legs] = np.maximum(self._max_ext[o_legs], o_ext)
            w_legs = o_legs[waiting]
            self._min_ext[w_legs] = np.minimum(self._min_ext[w_legs], o_ext[waiting])
            self._arrivals[o_legs] += 1
            hit = fastest <= self._fast[o_legs]
            self._fast[o_legs[hit]] = fastest[hit]
            self._fast_age[o_legs[hit]] = 0
        else:
            np.maximum.at(self._max_ext, o_legs, o_ext)
            np.minimum.at(self._min_ext, o_legs[waiting], o_ext[waiting])
            self._arrivals += np.bincount(o_legs, minlength=self._capacity)
            least = np.full(self._capacity, _NO_FRAME, dtype=np.int64)
            np.minimum.at(least, o_legs, fastest)
            hit_legs = np.flatnonzero(least <= self._fast)
            self._fast[hit_legs] = least[hit_legs]
            self._fast_age[hit_legs] = 0
        self._buffered[o_legs[waiting]] = True

        # One packet, one frame: the timestamp steps by one frame per sequence number, or by
        # whole frames across a silence gap, which a marker bit starts (RFC 3551 §4.1).
        prev = o_ext - 1
        p_flat = o_legs * self._slots + prev % self._slots
        follows = self._slot_ext.reshape(-1)[p_flat] == prev
        step = o_ts - self._slot_ts.reshape(-1)[p_flat]
        frame = self._step[o_legs]
        odd = step != frame
        wrong = odd & ((step % frame != 0) | (step == 0))
        if marker is not None:
            wrong |= odd & ~marker[packets]
        wrong &= follows & (o_ext != self._seam[o_legs])
        if not wrong.any():
            return 0
        counters = self._counters.reshape(-1)
        np.add.at(counters, o_legs[wrong] * len(_Counter) + _Counter.PTIME_MISMATCH, 1)
        return int(np.count_nonzero(wrong))

    def _estimate_jitter(
        self,
        single: bool,
        legs: npt.NDArray[np.intp],
        rs: npt.NDArray[np.uint8],
        rebased: npt.NDArray[np.bool_],
        probation: npt.NDArray[np.bool_],
        idx: npt.NDArray[np.intp],
        timestamp: npt.NDArray[np.uint32],
        arrival_ns: npt.NDArray[np.int64],
    ) -> None:
        """Fold this batch into each leg's interarrival jitter (RFC 3550 §6.4.1, §A.8).

        ``J += (|D| - J) / 16`` per packet, in arrival order.  For the ``m`` packets of one leg
        in a batch this is ``J_m = a^m J_0 + sum_k a^(m-1-k) |D_k| / 16`` with ``a = 15/16``,
        which is computed for all legs at once.  Packets buffered or late count, but not those on
        probation, nor late ones in a batch that resynchronised their leg; a leg's first packet
        (and the first after a resync) only sets the reference.
        """
        used = rs == DropReason.OK
        late = rs == DropReason.LATE
        if late.any():
            used |= late & ~rebased[legs] & ~probation
        j = np.flatnonzero(used)
        if len(j) == 0:
            return
        j_legs = legs[j]
        arr = arrival_ns[idx[j]]
        ts = timestamp[idx[j]]
        if single:
            first = last = np.ones(len(j), dtype=np.bool_)
            prev_arr = self._last_arrival[j_legs]
            prev_ts = self._last_ts[j_legs]
        else:
            first = np.empty(len(j), dtype=np.bool_)
            first[0] = True
            np.not_equal(j_legs[1:], j_legs[:-1], out=first[1:])
            last = np.empty(len(j), dtype=np.bool_)
            last[-1] = True
            last[:-1] = first[1:]
            prev_arr = np.empty_like(arr)
            prev_arr[1:] = arr[:-1]
            prev_arr[first] = self._last_arrival[j_legs[first]]
            prev_ts = np.empty_like(ts)
            prev_ts[1:] = ts[:-1]
            prev_ts[first] = self._last_ts[j_legs[first]]
        has_prev = ~first | self._has_transit[j_legs]

        # D = (R_j - R_i) - (S_j - S_i), in timestamp units; S wraps at 32 bits.
        ts_step = (ts - prev_ts).view(np.int32)
        d = np.abs((arr - prev_arr) * self._units_per_ns[j_legs] - ts_step)
        decay = 1.0 - 1.0 / JITTER_DIVISOR
        if single:
            g_legs = j_legs
            jitter = self._jitter[g_legs]
            self._jitter[g_legs] = np.where(
                has_prev, jitter + (d - jitter) / JITTER_DIVISOR, jitter
            )
        else:
            contrib = has_prev.astype(np.float64)
            group = np.cumsum(first) - 1
            n_groups = int(group[-1]) + 1
            count = np.bincount(group, weights=contrib, minlength=n_groups)
            rank = np.cumsum(contrib)
            rank -= (rank - contrib)[first][group]
            weight = decay ** (count[group] - rank) / JITTER_DIVISOR * contrib
            added = np.bincount(group, weights=weight * d, minlength=n_groups)
            g_legs = j_legs[first]
            self._jitter[g_legs] = self._jitter[g_legs] * decay**count + added
        self._last_arrival[j_legs[last]] = arr[last]
        self._last_ts[j_legs[last]] = ts[last]
        self._has_transit[g_legs] = True
        self._want_depth(g_legs)

    def _want_depth(self, legs: npt.NDArray[np.intp]) -> None:
        """The depth each leg's jitter asks for: to grow to, and to shrink below.

        One frame, plus enough frames to cover ``JITTER_MULTIPLIER * J`` beyond
        ``JITTER_FLOOR_MS``; the target shrinks only below the depth that covers it with
        ``SHRINK_MARGIN_FRAMES`` to spare (or to one frame when the jitter is negligible).
        """
        jitter_ms = self._jitter[legs] * self._ms_per_unit[legs]
        margin_ms = np.maximum(JITTER_MULTIPLIER * jitter_ms - JITTER_FLOOR_MS, 0.0)
        extra = margin_ms / self._frame_ms
        up = np.clip(1 + np.ceil(extra), self._min_frames, self._max_frames)
        down = np.where(extra > 0, 1 + np.ceil(extra + SHRINK_MARGIN_FRAMES), 1)
        self._up[legs] = up
        self._down[legs] = down

    def _update_target(self, legs: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """Move each leg's target depth towards what its jitter asks: up at once, down slowly.

        It falls by one frame once the jitter has fitted in one frame fewer, with
        ``SHRINK_MARGIN_FRAMES`` to spare, for ``TARGET_SHRINK_TICKS`` ticks in a row.
        """
        target = self._target[legs]
        age = np.where(self._down[legs] < target, self._target_age[legs] + 1, 0)
        shrink = age >= TARGET_SHRINK_TICKS
        target = np.where(self._up[legs] > target, self._up[legs], target - shrink)
        age[shrink] = 0
        self._target[legs] = target
        self._target_age[legs] = age
        return target
