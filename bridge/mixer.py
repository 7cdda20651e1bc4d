"""The mix of every room in a media worker, as one sparse product ``out = W @ S``.

Each tick the worker asks :meth:`Mixer.select` which legs are live sources, decodes
and resamples only those, and hands their frames to :meth:`Mixer.mix`, which mixes
all rooms at once.

``S`` holds one frame per leg slot; only the rows of this tick's sources are
written and read.  ``W`` is a sparse matrix, distinct mixes x leg slots, and each
listener maps to one of its rows:

- every listen profile has a shared row; today a profile is a room, and its row is
  the room mix that all its non-talking listeners share;
- every listener that is itself a live source has its own N-1 row ("mix-minus"):
  the shared row with its own column removed, as a mixer does in RFC 7667 section 3.6
  (Topo-Mixer), so that nobody hears themselves.

Every routing feature is an edit of ``W``, never new mixing code:

- open rooms: the few loudest talkers have their column set (:meth:`Mixer.select`);
- push-to-talk rooms: only the floor holder's column is set.  With the floor idle the
  room sends nothing, and the holder hears nothing, as the media distributor does in
  3GPP TS 24.380 clause 6.3.4 ('G: Floor Idle' and 'G: Floor Taken');
- mute (``talks``) and per-leg input gain are column values.

- monitor-only sources (camera audio) are columns of their room's *monitor* row of
  ``B`` (see below), which only dispatcher legs hear, and the whole room too when an
  ``open`` room sets ``monitor_to_mix``;
- talkgroup patches (:meth:`Mixer.set_routing`): every room of a patch group hears
  the union of the group's rooms;
- a dispatcher who monitors several rooms (:class:`Monitor`) has a profile of its own,
  one entry per room at its own volume; while its priority room has a live source the
  other entries are ducked.

The two hooks are :meth:`Mixer._listen_profiles` (which rooms a listener hears, and
how loud: patches, monitoring, per-room volume; all-call next) and
:meth:`Mixer._source_gains` (who is heard at all: whisper, emergency override next).
Shared rows are ``profiles @ B``, where ``B`` holds, per room, the gains of its
sources: one row per room, and when a room has monitor-only sources one more row per
room for them.  With no patch, no monitor and no monitor-only source ``profiles`` is
the identity and the product is skipped, so the plain mix costs what it always did.

``W`` is data.  It is rebuilt only when the topology or the set of sources changes,
and a change is ramped over one frame, sample by sample, from the old matrix to the
new one, so that a new talker, a dropped talker or a gain step never clicks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import sparse

from .levels import SILENCE_DBOV, TalkerDetector
from .model import DEFAULT_DUCK_DB, RoomMode

#: ``RoomTopology.holder`` of a push-to-talk room whose floor is idle.
NO_HOLDER = -1

#: ``MixResult.listener_mix`` of a leg that is sent nothing this tick.
NO_MIX = -1

#: Default number of simultaneous talkers mixed in an open room.
DEFAULT_MAX_TALKERS = 3

#: 20 ms at the 16 kHz room rate.
DEFAULT_FRAME_SAMPLES = 320

#: A new talker must be this much louder than the quietest current one to displace it.
DEFAULT_DISPLACE_MARGIN_DB = 6.0

#: The soft clipper is linear up to this magnitude (-2.5 dBFS), then bends towards
#: full scale along a tanh curve, whose slope is 1 at the knee.
SOFT_KNEE = 24576.0
INT16_CEILING = 32767.0

_NO_ROOM = -1
_ArrayT = TypeVar("_ArrayT", bound=npt.NDArray[Any])
_SIGNATURE_SEED = 6464
#: Row key codes of monitor profiles start here (rooms are >= 0, N-1 rows negative).
_MONITOR_CODE_BASE = 1 << 40


class MixKind(StrEnum):
    """The first half of a row key in ``MixResult.keys``."""

    #: A listen profile's shared mix; the second half is the room.
    ROOM = "room"
    #: A live source's own N-1 mix; the second half is the leg.
    OWN = "n-1"
    #: A dispatcher's own monitor mix (its rooms at its volumes); the second half is the leg.
    MONITOR = "monitor"


@dataclass(frozen=True, eq=False)
class RoomTopology:
    """The membership and routing of one room, as the control plane sees it.

    ``legs``, ``listens``, ``talks`` and ``gain`` are parallel arrays, one entry per
    member.  A send-only camera has ``listens`` False; a muted or receive-only leg has
    ``talks`` False.  ``monitor_only`` sources (camera audio) are heard only by the
    room's ``dispatcher`` legs, and by everyone in an ``open`` room with
    ``monitor_to_mix``; they never hold the floor.  None stands for all False.
    """

    room: int
    mode: RoomMode
    legs: npt.NDArray[np.intp]
    listens: npt.NDArray[np.bool_]
    talks: npt.NDArray[np.bool_]
    gain: npt.NDArray[np.float32]
    holder: int = NO_HOLDER
    max_talkers: int = DEFAULT_MAX_TALKERS
    monitor_only: npt.NDArray[np.bool_] | None = None
    dispatcher: npt.NDArray[np.bool_] | None = None
    monitor_to_mix: bool = False

    def __post_init__(self) -> None:
        shape = self.legs.shape
        columns = [self.listens, self.talks, self.gain]
        columns += [c for c in (self.monitor_only, self.dispatcher) if c is not None]
        if len(shape) != 1 or any(column.shape != shape for column in columns):
            raise ValueError("room topology arrays differ in length")
        if not np.all(np.isfinite(self.gain)) or np.any(self.gain < 0):
            raise ValueError("gain must be finite and not negative")
        if self.max_talkers < 0:
            raise ValueError("max_talkers must not be negative")
        if self.holder != NO_HOLDER:
            if self.mode is not RoomMode.PTT:
                raise ValueError("only a push-to-talk room has a floor holder")
            if not np.any(self.legs == self.holder):
                raise ValueError("floor holder is not a member of the room")
            if self.monitor_only is not None and np.any(
                self.monitor_only[self.legs == self.holder]
            ):
                raise ValueError("a monitor-only source cannot hold the floor")

    @classmethod
    def uniform(
        cls,
        room: int,
        mode: RoomMode,
        legs: Sequence[int] | npt.NDArray[np.intp],
        *,
        holder: int = NO_HOLDER,
        max_talkers: int = DEFAULT_MAX_TALKERS,
    ) -> RoomTopology:
        """A room whose members all listen and talk at unity gain."""
        members = np.asarray(legs, dtype=np.intp)
        return cls(
            room=room,
            mode=mode,
            legs=members,
            listens=np.ones(members.shape, dtype=np.bool_),
            talks=np.ones(members.shape, dtype=np.bool_),
            gain=np.ones(members.shape, dtype=np.float32),
            holder=holder,
            max_talkers=max_talkers,
        )


@dataclass(frozen=True)
class Monitor:
    """A dispatcher's listening: several rooms, each at its own volume, one with priority.

    ``leg`` hears its own room at ``rooms.get(own room, 1.0)`` and every other room of
    ``rooms`` at its gain: what a dispatcher in that room hears, monitor-only sources
    included.  While ``priority`` (a room) has a live source, every other entry is
    multiplied by ``duck`` (a linear gain, 0..1).  A room that is not in the topology is
    skipped, so topology and routing may be updated in either order.
    """

    leg: int
    rooms: Mapping[int, float] = field(default_factory=dict)
    priority: int | None = None
    duck: float = float(10 ** (-DEFAULT_DUCK_DB / 20))

    def __post_init__(self) -> None:
        gains = list(self.rooms.values())
        if not all(np.isfinite(g) and g >= 0 for g in gains):
            raise ValueError("monitor gain must be finite and not negative")
        if not 0.0 <= self.duck <= 1.0:
            raise ValueError("duck must be a gain between 0 and 1")


@dataclass
class MixResult:
    """The mixes of one tick.

    Cached arrays and ``keys`` are shared between ticks while ``W`` is unchanged and
    must not be modified.
    """

    #: ``(n_mixes, frame_samples)``: one row per distinct mix, soft-clipped to int16.
    frames: npt.NDArray[np.int16]
    #: ``(capacity,)``: the row of ``frames`` each leg hears, or ``NO_MIX`` to send nothing.
    listener_mix: npt.NDArray[np.int32]
    #: ``(n_mixes,)``: the row has no live source; send shared silence or comfort noise.
    silent: npt.NDArray[np.bool_]
    #: A stable identity per row, e.g. ``("room", 7)`` or ``("n-1", 42)``, for encoder state.
    keys: list[tuple[str, int]]


@dataclass(frozen=True)
class _Rows:
    """A sparse matrix as bare CSR arrays.

    ``W`` is assembled from these with plain NumPy, and handed to scipy only once it
    is complete, so that a rebuild costs a few array operations and no validation.
    """

    data: npt.NDArray[np.float32]
    indices: npt.NDArray[np.intp]
    indptr: npt.NDArray[np.intp]
    n_cols: int

    @classmethod
    def empty(cls, n_rows: int, n_cols: int) -> _Rows:
        return cls(
            np.zeros(0, dtype=np.float32),
            np.zeros(0, dtype=np.intp),
            np.zeros(n_rows + 1, dtype=np.intp),
            n_cols,
        )

    @classmethod
    def from_entries(
        cls,
        rows: npt.NDArray[np.intp],
        cols: npt.NDArray[np.intp],
        data: npt.NDArray[np.float32],
        n_rows: int,
        n_cols: int,
    ) -> _Rows:
        """Build from entries; ``(row, col)`` pairs must be distinct."""
        order = np.lexsort((cols, rows))
        indptr = np.zeros(n_rows + 1, dtype=np.intp)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return cls(data[order], cols[order], indptr, n_cols)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> npt.NDArray[np.intp]:
        return np.diff(self.indptr)

    def row_of_entry(self) -> npt.NDArray[np.intp]:
        return np.repeat(np.arange(self.n_rows, dtype=np.intp), self.lengths())

    def take(self, rows: npt.NDArray[np.intp]) -> _Rows:
        """Gather rows; a row index of -1 gives an empty row."""
        # Index n_rows stands for "no row": it starts at the end and is empty.
        lengths = np.append(self.lengths(), 0)
        safe = np.where(rows >= 0, rows, self.n_rows)
        starts = self.indptr[safe]
        counts = lengths[safe]
        indptr = np.zeros(len(rows) + 1, dtype=np.intp)
        np.cumsum(counts, out=indptr[1:])
        positions = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return _Rows(self.data[positions], self.indices[positions], indptr, self.n_cols)

    def combine(self, parts: _Rows) -> _Rows:
        """The product ``self @ parts``, where the rows of ``parts`` share no column.

        Row ``i`` of the result is the sum of the rows ``j`` of ``parts`` weighted by
        ``self[i, j]``; since no two rows of ``parts`` share a column, that sum is a
        concatenation.
        """
        picked = parts.take(self.indices)
        scale = np.repeat(self.data, picked.lengths())
        return _Rows(picked.data * scale, picked.indices, picked.indptr[self.indptr], parts.n_cols)

    def without(self, column_of_row: npt.NDArray[np.intp]) -> _Rows:
        """Drop from each row ``i`` its entry in column ``column_of_row[i]``, if any."""
        keep = self.indices != np.repeat(column_of_row, self.lengths())
        kept = np.zeros(len(keep) + 1, dtype=np.intp)
        np.cumsum(keep, out=kept[1:])
        return _Rows(self.data[keep], self.indices[keep], kept[self.indptr], self.n_cols)

    def stack(self, below: _Rows) -> _Rows:
        return _Rows(
            np.concatenate([self.data, below.data]),
            np.concatenate([self.indices, below.indices]),
            np.concatenate([self.indptr, below.indptr[1:] + self.indptr[-1]]),
            self.n_cols,
        )

    def to_scipy(self) -> Any:
        return sparse.csr_array(
            (self.data, self.indices, self.indptr), shape=(self.n_rows, self.n_cols)
        )


@dataclass
class _Routing:
    """The topology as per-leg and per-room columns, derived once per ``set_rooms``."""

    leg_room: npt.NDArray[np.intp]  # (capacity,) room slot, _NO_ROOM if none
    listens: npt.NDArray[np.bool_]  # (capacity,)
    talks: npt.NDArray[np.bool_]  # (capacity,)
    gain: npt.NDArray[np.float32]  # (capacity,)
    in_open: npt.NDArray[np.bool_]  # (capacity,) member of an open room
    by_level: npt.NDArray[np.bool_]  # (capacity,) selected by level: open or monitor-only
    monitor_only: npt.NDArray[np.bool_]  # (capacity,)
    dispatcher: npt.NDArray[np.bool_]  # (capacity,)
    #: (capacity,) the row of B a leg's column sits in: its room's slot, or for a
    #: monitor-only source n_rooms + its room's slot.
    source_slot: npt.NDArray[np.intp]
    ptt_legs: npt.NDArray[np.intp]  # the members of push-to-talk rooms
    is_holder: npt.NDArray[np.bool_]  # (capacity,) holds the floor of its room
    holders: npt.NDArray[np.intp]  # the floor holders of all ptt rooms
    room_ids: npt.NDArray[np.intp]  # (n_rooms,) RoomTopology.room per slot
    room_open: npt.NDArray[np.bool_]  # (n_rooms,)
    room_monitor_to_mix: npt.NDArray[np.bool_]  # (n_rooms,)
    room_max_talkers: npt.NDArray[np.intp]  # (2 n_rooms,) by source slot


@dataclass
class _Profiles:
    """Listen profiles: which rooms a listener hears, with what gain.

    ``gains`` is profiles x room slots; every profile is one shared row of ``W``.
    """

    gains: _Rows
    profile_of: npt.NDArray[np.intp]  # (capacity,) a listener's profile, -1 if none
    codes: npt.NDArray[np.int64]  # (n_profiles,) row key codes
    keys: list[tuple[str, int]]
    #: Profile i is room slot i at unity gain, so ``gains @ B`` is ``B`` itself.
    one_per_room: bool = False
    #: Ducking, if any profile has a priority room: see :class:`_Ducking`.
    ducking: _Ducking | None = None


@dataclass
class _Ducking:
    """Which entries of ``_Profiles.gains`` drop while their profile's priority is live."""

    entry: npt.NDArray[np.bool_]  # (n_entries,) this entry is ducked
    entry_profile: npt.NDArray[np.intp]  # (n_entries,) the profile of each entry
    gain: npt.NDArray[np.float32]  # (n_profiles,) linear duck gain
    priority_profile: npt.NDArray[np.intp]  # pairs (profile, row of B) that make
    priority_row: npt.NDArray[np.intp]  # the profile's priority room live

    def apply(self, gains: _Rows, live_rows: npt.NDArray[np.bool_]) -> _Rows:
        """``gains`` with the entries of profiles whose priority room is live ducked."""
        live = np.zeros(len(self.gain), dtype=np.bool_)
        live[self.priority_profile[live_rows[self.priority_row]]] = True
        ducked = self.entry & live[self.entry_profile]
        if not ducked.any():
            return gains
        data = gains.data.copy()
        data[ducked] *= self.gain[self.entry_profile[ducked]]
        return _Rows(data, gains.indices, gains.indptr, gains.n_cols)


@dataclass
class _Matrix:
    """One built ``W`` and everything derived from it."""

    rows: _Rows  # W, (n_mixes, capacity)
    audible: npt.NDArray[np.intp]  # the rows that are not silent
    w_audible: Any  # scipy.sparse.csr_array of those rows of W, for the product
    codes: npt.NDArray[np.int64]  # (n_mixes,) row key codes
    code_order: npt.NDArray[np.intp]  # argsort of codes
    sorted_codes: npt.NDArray[np.int64]
    signature: npt.NDArray[np.float64]  # (n_mixes,) a random linear sketch of each row
    keys: list[tuple[str, int]]
    listener_row: npt.NDArray[np.intp]  # (capacity,) before push-to-talk silencing
    silent: npt.NDArray[np.bool_]
    listener_mix: npt.NDArray[np.int32]


@dataclass
class _Ramp:
    """How the first tick after a rebuild fades the changed rows from old ``W`` to new."""

    rows: npt.NDArray[np.intp]  # the rows of the new W that changed
    audible: npt.NDArray[np.bool_]  # which of them are audible in the new W
    audible_index: npt.NDArray[np.intp]  # and their index among the audible rows
    w_old: Any  # scipy.sparse.csr_array: the old weights of the changed rows
    silent: npt.NDArray[np.bool_]
    listener_mix: npt.NDArray[np.int32]


def _room_code(room: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    return room.astype(np.int64)


def _own_code(leg: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    return -1 - leg.astype(np.int64)


def _read_only(array: _ArrayT) -> _ArrayT:
    """Mark an array that ``MixResult`` shares between ticks as read only."""
    array.flags.writeable = False
    return array


def _soft_clip(mix: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Round to int16, bending peaks above ``SOFT_KNEE`` smoothly below full scale."""
    if mix.size and max(float(mix.max()), -float(mix.min())) > SOFT_KNEE:
        magnitude = np.abs(mix)
        hot = magnitude > SOFT_KNEE
        headroom = INT16_CEILING - SOFT_KNEE
        bent = SOFT_KNEE + headroom * np.tanh((magnitude[hot] - SOFT_KNEE) / headroom)
        mix[hot] = np.copysign(bent, mix[hot])
    np.rint(mix, out=mix)
    return mix.astype(np.int16)


class Mixer:
    """Selects and mixes the sources of all rooms of one media worker.

    Legs are slots ``0 .. capacity-1``.  Frames are ``frame_samples`` long at the room
    rate.  ``rebuilds`` counts how often ``W`` was rebuilt.  After :meth:`select`,
    ``live`` holds the legs selected this tick, ``fading`` the legs that were just
    dropped and are mixed once more while they ramp out, and ``started`` / ``stopped``
    the legs that started or stopped talking (see :class:`TalkerDetector`).
    """

    def __init__(
        self,
        capacity: int,
        frame_samples: int = DEFAULT_FRAME_SAMPLES,
        *,
        on_dbov: float = -40.0,
        off_dbov: float = -50.0,
        hang_ms: int = 300,
        frame_ms: int = 20,
        displace_margin_db: float = DEFAULT_DISPLACE_MARGIN_DB,
    ) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.capacity = capacity
        self.frame_samples = frame_samples
        self.detector = TalkerDetector(
            capacity, on_dbov=on_dbov, off_dbov=off_dbov, hang_ms=hang_ms, frame_ms=frame_ms
        )
        self.displace_margin_db = np.float32(displace_margin_db)
        self.rebuilds = 0

        self.live: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=np.bool_)
        self.fading: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=np.bool_)
        self.started: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self.stopped: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)

        self._own_keys = [(MixKind.OWN, leg) for leg in range(capacity)]
        # Row signatures weigh each column by a fixed random number in (0, 1]: two rows
        # with equal signatures are equal, except with negligible probability.
        self._column_hash = 1.0 - np.random.default_rng(_SIGNATURE_SEED).random(capacity)
        self._patches: list[tuple[int, ...]] = []
        self._monitors: list[Monitor] = []
        self._routing = self._derive_routing([])
        self._profiles = self._listen_profiles(self._routing)
        self._stale = True
        # S: one row per leg slot; only this tick's sources are written and read.
        self._frames = np.zeros((capacity, frame_samples), dtype=np.float32)
        # Fraction of the old mix left at each sample of a ramp: 1 - (k + 1) / N.
        self._fade_out = (
            1.0 - np.arange(1, frame_samples + 1, dtype=np.float32) / np.float32(frame_samples)
        ).astype(np.float32)
        # The sources and fading flags of the last mix, and those W was built for.
        self._sources = np.zeros(0, dtype=np.intp)
        self._sources_fading = np.zeros(0, dtype=np.bool_)
        self._built_sources = self._sources
        self._built_fading = self._sources_fading
        no_rows = _Rows.empty(0, capacity)
        self._matrix = _Matrix(
            rows=no_rows,
            audible=np.zeros(0, dtype=np.intp),
            w_audible=no_rows.to_scipy(),
            codes=np.zeros(0, dtype=np.int64),
            code_order=np.zeros(0, dtype=np.intp),
            sorted_codes=np.zeros(0, dtype=np.int64),
            signature=np.zeros(0, dtype=np.float64),
            keys=[],
            listener_row=np.full(capacity, NO_MIX, dtype=np.intp),
            silent=np.zeros(0, dtype=np.bool_),
            listener_mix=np.full(capacity, NO_MIX, dtype=np.int32),
        )
        # Set by a rebuild for the next mix: how to ramp from the old W to the new one.
        self._ramp: _Ramp | None = None

    @property
    def matrix(self) -> Any:
        """A copy of the current ``W``, a ``scipy.sparse.csr_array`` (mixes x leg slots)."""
        return self._matrix.rows.to_scipy().copy()

    def set_rooms(self, rooms: Sequence[RoomTopology]) -> None:
        """Replace the topology of all rooms; ``W`` is rebuilt at the next :meth:`mix`.

        A bad topology raises ``ValueError`` and leaves the previous one in force.
        """
        routing = self._derive_routing(rooms)
        profiles = self._listen_profiles(routing)
        moved = routing.leg_room != self._routing.leg_room
        self.live &= ~moved
        self.fading &= ~moved
        self._routing = routing
        self._profiles = profiles
        self._stale = True

    def set_routing(
        self, patches: Sequence[Sequence[int]] = (), monitors: Sequence[Monitor] = ()
    ) -> None:
        """Replace the routing across rooms; ``W`` is rebuilt at the next :meth:`mix`.

        ``patches`` are patch groups, each the rooms (``RoomTopology.room``) whose
        listeners all hear the union of the group; the control plane has checked them
        for cycles, so a room is in one group at most.  ``monitors`` give dispatchers
        their rooms and volumes, one per leg.  A bad routing raises ``ValueError`` and
        leaves the previous one in force.
        """
        groups = [tuple(int(room) for room in group) for group in patches]
        rooms = [room for group in groups for room in group]
        if len(set(rooms)) != len(rooms):
            raise ValueError("a room is in more than one patch group")
        legs = [monitor.leg for monitor in monitors]
        if len(set(legs)) != len(legs):
            raise ValueError("a leg has more than one monitor")
        if any(not 0 <= leg < self.capacity for leg in legs):
            raise ValueError("monitor leg is out of range")
        before = self._patches, self._monitors
        self._patches, self._monitors = [g for g in groups if len(g) > 1], list(monitors)
        try:
            self._profiles = self._listen_profiles(self._routing)
        except ValueError:
            self._patches, self._monitors = before
            raise
        self._stale = True

    def select(
        self, level_dbov: npt.NDArray[np.float32], active: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.intp]:
        """Return this tick's sources, sorted: the legs to decode, resample and mix.

        ``level_dbov`` and ``active`` cover the whole capacity; ``active`` marks the legs
        with a frame this tick, and NaN levels count as silence.

        - A push-to-talk room's source is its floor holder, if active.
        - An open room's sources are up to ``max_talkers`` of its talking legs (see
          :class:`TalkerDetector`), loudest first, where a current talker counts
          ``displace_margin_db`` louder than it is, so that a newcomer must beat it by
          that margin to take its place.
        - A room's monitor-only sources are chosen the same way, in any room mode, and
          apart from its other talkers.

        A leg that was a source last tick and is dropped now is returned once more, if
        active, so that :meth:`mix` can ramp it out; ``fading`` marks those.
        """
        shape = (self.capacity,)
        if level_dbov.shape != shape or active.shape != shape:
            raise ValueError("levels and activity must cover the capacity")
        routing = self._routing
        level = np.fmax(level_dbov, np.float32(SILENCE_DBOV))
        heard = np.flatnonzero(active)
        self.started, self.stopped = self.detector.update(heard, level[heard])

        live = np.zeros(self.capacity, dtype=np.bool_)
        candidates = np.flatnonzero(
            active & routing.talks & routing.by_level & self.detector.talking
        )
        if candidates.size:
            # Ranked per row of B: a room's monitor-only sources do not displace its talkers.
            room = routing.source_slot[candidates]
            score = level[candidates] + self.displace_margin_db * self.live[candidates]
            order = np.lexsort((candidates, -score, room))
            room = room[order]
            positions = np.arange(len(order))
            first = np.ones(len(order), dtype=np.bool_)
            first[1:] = room[1:] != room[:-1]
            rank = positions - np.maximum.accumulate(np.where(first, positions, 0))
            live[candidates[order[rank < routing.room_max_talkers[room]]]] = True
        holders = routing.holders
        live[holders[active[holders] & routing.talks[holders]]] = True

        self.fading = self.live & ~live & active
        self.live = live
        return np.flatnonzero(live | self.fading)

    def mix(self, sources: npt.NDArray[np.intp], pcm: npt.NDArray[np.int16]) -> MixResult:
        """Mix all rooms at once: ``out = W @ S``, soft-clipped to int16.

        ``sources`` are sorted, distinct legs (normally what :meth:`select` returned) and
        ``pcm`` their frames at the room rate, one row each.
        """
        if pcm.shape != (len(sources), self.frame_samples):
            raise ValueError("PCM frames do not match the sources")
        fading = self.fading[sources]
        if not (
            np.array_equal(sources, self._sources) and np.array_equal(fading, self._sources_fading)
        ):
            if sources.ndim != 1 or np.any(sources[1:] <= sources[:-1]):
                raise ValueError("sources are not sorted and distinct")
            if self._stale or not self._still_fits(sources, fading):
                self._rebuild(sources, fading)
            self._sources = sources.copy()
            self._sources_fading = fading.copy()
        elif self._stale:
            self._rebuild(sources, fading)

        frames = self._frames
        frames[sources] = pcm
        matrix = self._matrix
        mixed: npt.NDArray[np.float32] = matrix.w_audible @ frames
        # Silent rows are never sent: they stay zero and skip the clipper.
        out = np.zeros((len(matrix.keys), self.frame_samples), dtype=np.int16)
        ramp = self._ramp
        if ramp is None:
            out[matrix.audible] = _soft_clip(mixed)
            return MixResult(
                frames=out, listener_mix=matrix.listener_mix, silent=matrix.silent, keys=matrix.keys
            )

        # The first tick after a rebuild: sample k of each changed row is
        # new + (old - new) * (1 - (k + 1) / N).
        self._ramp = None
        ramped = np.zeros((len(ramp.rows), self.frame_samples), dtype=np.float32)
        ramped[ramp.audible] = mixed[ramp.audible_index]
        before: npt.NDArray[np.float32] = ramp.w_old @ frames
        before -= ramped
        before *= self._fade_out
        ramped += before
        out[matrix.audible] = _soft_clip(mixed)
        out[ramp.rows] = _soft_clip(ramped)
        return MixResult(
            frames=out, listener_mix=ramp.listener_mix, silent=ramp.silent, keys=matrix.keys
        )

    # -- topology -------------------------------------------------------------------

    def _derive_routing(self, rooms: Sequence[RoomTopology]) -> _Routing:
        """Validate the topology and turn it into columns indexed by leg and room slot."""
        capacity = self.capacity
        room_ids = np.array([room.room for room in rooms], dtype=np.intp)
        values, counts = np.unique(room_ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"room {values[counts > 1][0]} appears twice")
        legs = np.concatenate([np.zeros(0, dtype=np.intp)] + [room.legs for room in rooms])
        legs = legs.astype(np.intp, copy=False)
        outside = (legs < 0) | (legs >= capacity)
        if np.any(outside):
            raise ValueError(f"leg {legs[outside][0]} is out of range")
        memberships = np.bincount(legs, minlength=capacity)
        if np.any(memberships > 1):
            raise ValueError(f"leg {np.flatnonzero(memberships > 1)[0]} is in more than one room")

        def column(name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
            out = np.zeros(capacity, dtype=dtype)
            out[legs] = np.concatenate([np.zeros(0, dtype)] + [getattr(r, name) for r in rooms])
            return out

        def flags(name: str) -> npt.NDArray[np.bool_]:
            out = np.zeros(capacity, dtype=np.bool_)
            for room in rooms:
                values = getattr(room, name)
                if values is not None:
                    out[room.legs] = values
            return out

        leg_room = np.full(capacity, _NO_ROOM, dtype=np.intp)
        leg_room[legs] = np.repeat(np.arange(len(rooms)), [len(room.legs) for room in rooms])
        room_open = np.array([room.mode is RoomMode.OPEN for room in rooms], dtype=np.bool_)
        monitor_only = flags("monitor_only")
        holders = np.array(
            [room.holder for room in rooms if room.holder != NO_HOLDER], dtype=np.intp
        )
        is_holder = np.zeros(capacity, dtype=np.bool_)
        is_holder[holders] = True
        member = leg_room != _NO_ROOM
        # Slot _NO_ROOM (-1) picks the appended False: a leg outside rooms is in none.
        in_open = np.append(room_open, False)[leg_room]
        max_talkers = np.array([room.max_talkers for room in rooms], dtype=np.intp)
        return _Routing(
            leg_room=leg_room,
            listens=column("listens", np.bool_),
            talks=column("talks", np.bool_),
            gain=column("gain", np.float32),
            in_open=in_open,
            by_level=in_open | monitor_only,
            monitor_only=monitor_only,
            dispatcher=flags("dispatcher"),
            source_slot=np.where(monitor_only, leg_room + len(rooms), leg_room),
            ptt_legs=np.flatnonzero(member & ~in_open),
            is_holder=is_holder,
            holders=holders,
            room_ids=room_ids,
            room_open=room_open,
            room_monitor_to_mix=np.array([room.monitor_to_mix for room in rooms], np.bool_),
            room_max_talkers=np.concatenate([max_talkers, max_talkers]),
        )

    def _listen_profiles(self, routing: _Routing) -> _Profiles:
        """Which rows of ``B`` each listener hears, as a (profiles x rows of B) gain matrix.

        With no patch, no monitor and no monitor-only source, every room is one profile
        heard at unity gain by its listening members and ``B`` has one row per room.
        Otherwise ``B`` has two rows per room slot ``s``: ``s`` for its sources and
        ``n_rooms + s`` for its monitor-only sources, and:

        - a room's profile is its patch group: the union of the group's rooms, plus the
          monitor rows of those of them that are ``open`` and set ``monitor_to_mix``;
        - a dispatcher leg (or a leg with a :class:`Monitor`) has a profile of its own:
          its room's profile plus the room's monitor row, and the same for every room it
          monitors, each at the room's gain; where rooms overlap the larger gain wins;
        - entries outside the priority room's profile are ducked while it is live (see
          :class:`_Ducking`).

        Patch groups arrive checked for cycles (the control plane refuses a patch that
        would close one), so a room is in one group at most.
        """
        n_rooms = len(routing.room_ids)
        room_ids = routing.room_ids.tolist()
        profile_of = np.where(routing.listens, routing.leg_room, _NO_ROOM).astype(np.intp)
        room_keys: list[tuple[str, int]] = [(MixKind.ROOM, room) for room in room_ids]
        if not (self._patches or self._monitors or routing.monitor_only.any()):
            slots = np.arange(n_rooms, dtype=np.intp)
            return _Profiles(
                gains=_Rows(
                    np.ones(n_rooms, dtype=np.float32),
                    slots,
                    np.arange(n_rooms + 1, dtype=np.intp),
                    n_rooms,
                ),
                profile_of=profile_of,
                codes=_room_code(routing.room_ids),
                keys=room_keys,
                one_per_room=True,
            )

        slot_of = {room: slot for slot, room in enumerate(room_ids)}
        group: dict[int, list[int]] = {}
        for patch in self._patches:
            members = [slot_of[room] for room in patch if room in slot_of]
            for slot in members:
                group[slot] = members
        mixed_monitor = routing.room_open & routing.room_monitor_to_mix

        def hears(slot: int) -> dict[int, float]:
            rows: dict[int, float] = {}
            for member in group.get(slot, [slot]):
                rows[member] = 1.0
                if mixed_monitor[member]:
                    rows[n_rooms + member] = 1.0
            return rows

        rows: list[int] = []
        cols: list[int] = []
        data: list[float] = []
        for slot in range(n_rooms):
            for row, gain in hears(slot).items():
                rows.append(slot)
                cols.append(row)
                data.append(gain)

        # Dispatchers: one profile each, after the rooms'.
        monitors = {monitor.leg: monitor for monitor in self._monitors}
        own = routing.listens & (routing.leg_room != _NO_ROOM)
        legs = np.flatnonzero(own & routing.dispatcher).tolist()
        legs = sorted(set(legs) | {leg for leg in monitors if own[leg]})
        ducked: list[bool] = [False] * len(data)
        duck_gain = np.ones(n_rooms + len(legs), dtype=np.float32)
        priority_profile: list[int] = []
        priority_row: list[int] = []
        for i, leg in enumerate(legs):
            profile = n_rooms + i
            home = int(routing.leg_room[leg])
            monitor = monitors.get(leg, Monitor(leg))
            heard: dict[int, float] = {}
            wanted = {room_ids[home]: monitor.rooms.get(room_ids[home], 1.0)}
            wanted.update({r: g for r, g in monitor.rooms.items() if r != room_ids[home]})
            for room, volume in wanted.items():
                monitored = slot_of.get(room)
                if monitored is None:
                    continue
                for row in [*hears(monitored), n_rooms + monitored]:
                    heard[row] = max(heard.get(row, 0.0), float(volume))
            priority: set[int] = set()
            if monitor.priority is not None and monitor.priority in slot_of:
                priority = set(hears(slot_of[monitor.priority]))
                priority_profile += [profile] * len(priority)
                priority_row += sorted(priority)
                duck_gain[profile] = monitor.duck
            for row, gain in heard.items():
                rows.append(profile)
                cols.append(row)
                data.append(gain)
                ducked.append(bool(priority) and row not in priority)
            profile_of[leg] = profile

        n_profiles = n_rooms + len(legs)
        order = np.lexsort((np.array(cols, dtype=np.intp), np.array(rows, dtype=np.intp)))
        gains = _Rows.from_entries(
            np.array(rows, dtype=np.intp),
            np.array(cols, dtype=np.intp),
            np.array(data, dtype=np.float32),
            n_profiles,
            2 * n_rooms,
        )
        ducking = None
        if priority_profile:
            ducking = _Ducking(
                entry=np.array(ducked, dtype=np.bool_)[order],
                entry_profile=gains.row_of_entry(),
                gain=duck_gain,
                priority_profile=np.array(priority_profile, dtype=np.intp),
                priority_row=np.array(priority_row, dtype=np.intp),
            )
        leg_codes = np.array(legs, dtype=np.int64) + _MONITOR_CODE_BASE
        return _Profiles(
            gains=gains,
            profile_of=profile_of,
            codes=np.concatenate([_room_code(routing.room_ids), leg_codes]),
            keys=room_keys + [(MixKind.MONITOR, leg) for leg in legs],
            ducking=ducking,
        )

    def _source_gains(
        self, routing: _Routing, sources: npt.NDArray[np.intp], fading: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float32]:
        """The gain at which each source is heard in its room (0: not heard).

        Mute, input gain, push-to-talk gating and ramping out a dropped source are all
        made here; so would whisper and emergency override be.
        """
        gated = routing.by_level[sources] | routing.is_holder[sources]
        heard = gated & routing.talks[sources] & ~fading
        return np.where(heard, routing.gain[sources], np.float32(0.0)).astype(np.float32)

    def _rebuild(self, sources: npt.NDArray[np.intp], fading: npt.NDArray[np.bool_]) -> None:
        """Build ``W`` for these sources and prepare the ramp from the previous ``W``."""
        if sources.size and (sources[0] < 0 or sources[-1] >= self.capacity):
            raise ValueError("source is out of range")
        routing = self._routing
        profiles = self._profiles

        # B: rooms x legs, the gain of each source in its room.  Shared rows: profiles @ B.
        gain = self._source_gains(routing, sources, fading)
        heard = gain != 0
        by_room = _Rows.from_entries(
            routing.source_slot[sources[heard]],
            sources[heard],
            gain[heard],
            profiles.gains.n_cols,
            self.capacity,
        )
        if profiles.one_per_room:
            shared = by_room
        else:
            gains = profiles.gains
            if profiles.ducking is not None:
                gains = profiles.ducking.apply(gains, by_room.lengths() > 0)
            shared = gains.combine(by_room)

        # N-1 rows: a listening source that is heard, or ramping out, gets its profile's
        # row without its own column.
        owners = sources[(heard | fading) & (profiles.profile_of[sources] >= 0)]
        rows = shared.stack(shared.take(profiles.profile_of[owners]).without(owners))

        listener_row = profiles.profile_of.copy()
        listener_row[owners] = shared.n_rows + np.arange(len(owners), dtype=np.intp)
        silent = _read_only(rows.lengths() == 0)
        audible = np.flatnonzero(~silent)
        codes = np.concatenate([profiles.codes, _own_code(owners)])
        code_order = np.argsort(codes)
        new = _Matrix(
            rows=rows,
            audible=audible,
            w_audible=rows.take(audible).to_scipy(),
            codes=codes,
            code_order=code_order,
            sorted_codes=codes[code_order],
            signature=np.bincount(
                rows.row_of_entry(),
                weights=rows.data * self._column_hash[rows.indices],
                minlength=rows.n_rows,
            ).astype(np.float64, copy=False),
            keys=profiles.keys + [self._own_keys[leg] for leg in owners.tolist()],
            listener_row=listener_row,
            silent=silent,
            listener_mix=self._listener_mix(routing, listener_row, silent),
        )
        self._ramp = self._prepare_ramp(new, owners)

        # Rows of S that the old W may still read this tick must not hold stale frames.
        self._frames[self._built_sources] = 0.0
        self._matrix = new
        self._built_sources = sources.copy()
        self._built_fading = fading.copy()
        self._stale = False
        self.rebuilds += 1

    def _still_fits(self, sources: npt.NDArray[np.intp], fading: npt.NDArray[np.bool_]) -> bool:
        """Whether ``W`` is still right after sources that had faded out have left.

        A faded source has no entry left in ``W``; its N-1 row now equals its shared row
        and serves until the next rebuild, which saves a rebuild after every fade-out.
        """
        built, built_fading = self._built_sources, self._built_fading
        if not sources.size:
            return bool(np.all(built_fading))
        if not built.size:
            return False
        position = np.minimum(np.searchsorted(built, sources), len(built) - 1)
        if np.any(built[position] != sources) or np.any(built_fading[position] != fading):
            return False
        gone = np.ones(len(built), dtype=np.bool_)
        gone[position] = False
        return bool(np.all(built_fading[gone]))

    @staticmethod
    def _listener_mix(
        routing: _Routing, listener_row: npt.NDArray[np.intp], silent: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.int32]:
        """Map listeners to rows; a push-to-talk listener with nothing to hear gets none."""
        mix = listener_row.astype(np.int32)
        legs = routing.ptt_legs
        # Row NO_MIX (-1) picks the appended False: a non-listener stays as it is.
        mix[legs[np.append(silent, False)[listener_row[legs]]]] = NO_MIX
        return _read_only(mix)

    def _prepare_ramp(self, new: _Matrix, owners: npt.NDArray[np.intp]) -> _Ramp | None:
        """Find the rows whose mix changed and the old weights they fade from.

        A row's old mix is the row of the same key; a new N-1 row starts from the row
        its owner heard before, and a new shared row from silence.
        """
        old = self._matrix
        n_old = old.rows.n_rows
        # Old row n_old stands for silence.
        row_map = np.full(len(new.codes), n_old, dtype=np.intp)
        if n_old:
            position = np.minimum(np.searchsorted(old.sorted_codes, new.codes), n_old - 1)
            found = old.sorted_codes[position] == new.codes
            row_map[found] = old.code_order[position[found]]
        own_map = row_map[len(new.codes) - len(owners) :]
        unmatched = own_map == n_old
        heard_before = old.listener_row[owners[unmatched]]
        own_map[unmatched] = np.where(heard_before >= 0, heard_before, n_old)

        changed = np.flatnonzero(np.append(old.signature, 0.0)[row_map] != new.signature)
        if not changed.size:
            return None
        source_rows = row_map[changed]
        silent = new.silent.copy()
        silent[changed] &= np.append(old.silent, True)[source_rows]
        _read_only(silent)
        if np.array_equal(silent, new.silent):
            listener_mix = new.listener_mix
        else:
            listener_mix = self._listener_mix(self._routing, new.listener_row, silent)
        position = np.searchsorted(new.audible, changed)
        audible = ~new.silent[changed]
        return _Ramp(
            rows=changed,
            audible=audible,
            audible_index=position[audible],
            w_old=old.rows.take(np.where(source_rows < n_old, source_rows, NO_MIX)).to_scipy(),
            silent=silent,
            listener_mix=listener_mix,
        )
