"""GPS presence: where every unit is, whether it is still reporting, and GeoJSON for the map.

Dispatchers see units (handsets, phones, browsers, cameras) on a map.  Gateways feed fixes into
a :class:`PresenceRegistry` in the control process; the web layer fans updates out to consoles
through one :class:`Coalescer` per console, and exports the registry as GeoJSON (RFC 7946,
:func:`to_geojson`) or Cursor-on-Target (:mod:`bridge.cot`).  TS 24.379 location reports are
turned into fixes by :mod:`bridge.locationinfo`.

Conventions:

- Positions are WGS-84 degrees; altitude is metres above the WGS-84 ellipsoid, as RFC 7946
  §3.1.1 and CoT's ``hae`` both expect.
- Times are POSIX epoch seconds (UTC) as floats, the unit of :func:`time.time`.  Floats keep the
  registry's columns plain NumPy arrays and make the clock trivially injectable.  Exports render
  them as ISO-8601 with a ``Z`` (:func:`iso_time`).
- A unit is *live* while it keeps reporting and *stale* once nothing has arrived for
  ``STALE_FACTOR`` (2) report intervals; stale units stay on the map, marked, until they expire.
  The interval is configured per unit or learnt from the gaps between its reports.

Queries (:meth:`PresenceRegistry.near`, :meth:`~PresenceRegistry.inside`,
:meth:`~PresenceRegistry.nearest`) run over NumPy columns of all units at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from bridge.model import ParticipantKind

# IUGG mean Earth radius R1 (Moritz, "Geodetic Reference System 1980"), in metres.
EARTH_RADIUS_M = 6_371_008.8

MAX_LATITUDE = 90.0
MAX_LONGITUDE = 180.0
FULL_CIRCLE_DEG = 360.0

# A fix stamped up to this far ahead of our clock is accepted (handset clocks drift).
MAX_CLOCK_SKEW = 5.0

# A unit is stale after STALE_FACTOR report intervals without a report.
STALE_FACTOR = 2.0
DEFAULT_REPORT_INTERVAL = 30.0
MIN_REPORT_INTERVAL = 1.0
MAX_REPORT_INTERVAL = 3600.0
# Weight of the newest gap in the learnt interval (exponential moving average).
INTERVAL_SMOOTHING = 0.25
# A stale unit is removed after this long without a report (never sooner than it goes stale).
DEFAULT_EXPIRY = 900.0

MIN_POLYGON_VERTICES = 3
_INITIAL_CAPACITY = 64
_GROWTH_FACTOR = 2
_ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_MILLI = 1_000


class FixSource(StrEnum):
    """Where a position came from."""

    GNSS = "gnss"
    NETWORK = "network"
    MANUAL = "manual"
    FIXED = "fixed"


class UnitStatus(StrEnum):
    """What a unit is doing, as a dispatcher sees it (TS 22.179 call types for the last two)."""

    IDLE = "idle"
    TALKING = "talking"
    EMERGENCY = "emergency"
    IMMINENT_PERIL = "imminent-peril"


class UnitState(StrEnum):
    """Whether a unit is still reporting."""

    LIVE = "live"
    STALE = "stale"


def _check_finite(value: float, name: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} is not a number")


def check_position(lat: float, lon: float) -> None:
    """Raise ``ValueError`` unless (lat, lon) are finite WGS-84 degrees in range."""
    _check_finite(lat, "latitude")
    _check_finite(lon, "longitude")
    if not -MAX_LATITUDE <= lat <= MAX_LATITUDE:
        raise ValueError("latitude is out of range")
    if not -MAX_LONGITUDE <= lon <= MAX_LONGITUDE:
        raise ValueError("longitude is out of range")


def _check_non_negative(value: float | None, name: str) -> None:
    if value is None:
        return
    _check_finite(value, name)
    if value < 0:
        raise ValueError(f"{name} is negative")


def iso_time(timestamp: float) -> str:
    """An epoch time as ISO-8601 UTC with milliseconds and a ``Z`` (RFC 3339 §5.6).

    Like :meth:`datetime.isoformat`, it rounds to the microsecond and then truncates to the
    millisecond; :func:`time.strftime` does it at a third of the cost.
    """
    seconds = math.floor(timestamp)
    micros = round((timestamp - seconds) * _MICROS_PER_SECOND)
    if micros == _MICROS_PER_SECOND:
        seconds += 1
        micros = 0
    stamp = time.strftime(_ISO_SECONDS, time.gmtime(seconds))
    return f"{stamp}.{micros // _MICROS_PER_MILLI:03d}Z"


@dataclass(frozen=True, slots=True)
class GpsFix:
    """One position report of one unit.

    ``time`` is when the position was measured, in epoch seconds (UTC).  ``accuracy_m`` is the
    horizontal uncertainty radius and ``vertical_accuracy_m`` the vertical one, in metres;
    ``heading_deg`` is the course over ground, clockwise from true north, in [0, 360);
    ``speed_mps`` the ground speed.  ``None`` means unknown.

    The constructor checks every field and raises ``ValueError`` with an exact message; the
    check of ``time`` against a clock is :meth:`validate`.
    """

    lat: float
    lon: float
    time: float
    altitude_m: float | None = None
    accuracy_m: float | None = None
    vertical_accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    source: FixSource = FixSource.GNSS

    def __post_init__(self) -> None:
        check_position(self.lat, self.lon)
        _check_finite(self.time, "fix time")
        if self.time < 0:
            # Before 1970: no clock says so, and times must convert to UTC (ISO 8601, CoT).
            raise ValueError("fix time is before 1970")
        if self.altitude_m is not None:
            _check_finite(self.altitude_m, "altitude")
        _check_non_negative(self.accuracy_m, "accuracy")
        _check_non_negative(self.vertical_accuracy_m, "vertical accuracy")
        _check_non_negative(self.speed_mps, "speed")
        if self.heading_deg is not None:
            _check_finite(self.heading_deg, "heading")
            if not 0 <= self.heading_deg < FULL_CIRCLE_DEG:
                raise ValueError("heading is out of range")
        try:
            source = FixSource(self.source)
        except ValueError:
            raise ValueError("fix source is not valid") from None
        object.__setattr__(self, "source", source)

    def validate(self, now: float | None = None, *, skew: float = MAX_CLOCK_SKEW) -> None:
        """Refuse a fix stamped more than ``skew`` seconds after ``now`` (default: the clock)."""
        if now is None:
            now = time.time()
        if self.time > now + skew:
            raise ValueError("fix time is in the future")

    @property
    def utc(self) -> datetime:
        """``time`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time, UTC)


@dataclass(slots=True)
class Unit:
    """A unit on the map: its identity, its latest fix and how often it reports.

    ``last_seen`` is when the registry last heard from it (its clock), which decides staleness:
    a unit whose clock is wrong still counts as live while it keeps reporting.  The registry
    owns these objects and updates them in place; treat them as read-only.
    """

    id: str
    kind: ParticipantKind
    fix: GpsFix
    alias: str = ""
    room: str | None = None
    status: UnitStatus = UnitStatus.IDLE
    interval: float = DEFAULT_REPORT_INTERVAL
    interval_configured: bool = False
    last_seen: float = 0.0

    @property
    def callsign(self) -> str:
        """The name to show: the alias, or the id when there is none."""
        return self.alias or self.id

    @property
    def stale_after(self) -> float:
        """Seconds without a report after which the unit is stale."""
        return STALE_FACTOR * self.interval

    @property
    def stale_at(self) -> float:
        """When the unit goes stale if nothing more arrives."""
        return self.last_seen + self.stale_after

    def state_at(self, now: float) -> UnitState:
        return UnitState.STALE if now > self.stale_at else UnitState.LIVE


def haversine_m(
    lat: float, lon: float, lats: npt.ArrayLike, lons: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Great-circle distances in metres from one point to many (haversine, spherical Earth).

    The sphere of radius :data:`EARTH_RADIUS_M` is within 0.5 % of the ellipsoid, which is
    far inside GPS accuracy at dispatch ranges.
    """
    phi = np.radians(np.asarray(lats, dtype=np.float64))
    lam = np.radians(np.asarray(lons, dtype=np.float64))
    return _haversine(math.radians(lat), math.radians(lon), phi, lam, np.cos(phi))


def _haversine(
    phi0: float,
    lam0: float,
    phi: npt.NDArray[np.float64],
    lam: npt.NDArray[np.float64],
    cos_phi: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    half_dphi = np.sin((phi - phi0) * 0.5)
    half_dlam = np.sin((lam - lam0) * 0.5)
    a = half_dphi * half_dphi + math.cos(phi0) * cos_phi * half_dlam * half_dlam
    result: npt.NDArray[np.float64] = (2.0 * EARTH_RADIUS_M) * np.arcsin(
        np.sqrt(np.minimum(a, 1.0))
    )
    return result


def points_in_polygon(
    polygon: Sequence[tuple[float, float]], lats: npt.ArrayLike, lons: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Which points lie inside a polygon of (lat, lon) vertices, by the even-odd rule.

    A ray cast east from each point crosses the boundary an odd number of times iff the point
    is inside; the loop runs per edge, vectorised over all points.  Edges are straight in
    latitude/longitude, which suits dispatch-sized areas; a polygon must not cross the
    antimeridian.  The ring may be closed (last vertex equal to the first) or not.
    """
    if len(polygon) < MIN_POLYGON_VERTICES:
        raise ValueError("polygon has fewer than 3 vertices")
    for vertex_lat, vertex_lon in polygon:
        check_position(vertex_lat, vertex_lon)
    y = np.asarray(lats, dtype=np.float64)
    x = np.asarray(lons, dtype=np.float64)
    inside = np.zeros(y.shape, dtype=np.bool_)
    previous_lat, previous_lon = polygon[-1]
    for vertex_lat, vertex_lon in polygon:
        if vertex_lat != previous_lat:
            straddles = (vertex_lat > y) != (previous_lat > y)
            slope = (previous_lon - vertex_lon) / (previous_lat - vertex_lat)
            crossing_lon = vertex_lon + (y - vertex_lat) * slope
            inside ^= straddles & (x < crossing_lon)
        previous_lat, previous_lon = vertex_lat, vertex_lon
    return inside


class PresenceRegistry:
    """The units on the map, with position columns for vectorised queries.

    ``clock`` returns epoch seconds (default :func:`time.time`); tests inject their own.
    ``default_interval`` is the report interval assumed until one is configured or learnt;
    ``expiry`` is how long a silent unit stays (stale) before :meth:`expire` removes it.

    Columns: each unit owns a slot in float64 arrays (latitude, longitude in degrees and in
    radians, cos(latitude), last report, stale-after).  Free slots hold NaN, so every query
    skips them without a mask, and queries scan only the slots used so far.  Removing a unit
    frees its slot for the next new unit.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        default_interval: float = DEFAULT_REPORT_INTERVAL,
        expiry: float = DEFAULT_EXPIRY,
        max_clock_skew: float = MAX_CLOCK_SKEW,
    ) -> None:
        if not MIN_REPORT_INTERVAL <= default_interval <= MAX_REPORT_INTERVAL:
            raise ValueError("report interval is out of range")
        if expiry <= 0:
            raise ValueError("expiry is not positive")
        self._clock = clock
        self.default_interval = default_interval
        self.expiry = expiry
        self.max_clock_skew = max_clock_skew
        self._units: dict[str, Unit] = {}
        self._slots: dict[str, int] = {}
        self._slot_ids: list[str | None] = []
        self._free: list[int] = []
        # Slots at or past _end have never been used: queries look at [:_end] only.
        self._end = 0
        self._lat = np.empty(0)
        self._lon = np.empty(0)
        self._phi = np.empty(0)
        self._lam = np.empty(0)
        self._cos_phi = np.empty(0)
        self._last_seen = np.empty(0)
        self._stale_after = np.empty(0)
        self._grow(_INITIAL_CAPACITY)

    # -- updates -------------------------------------------------------------------------

    def now(self) -> float:
        """The registry's clock, for callers rendering units (:func:`to_feature`)."""
        return self._clock()

    def report(
        self,
        unit_id: str,
        fix: GpsFix,
        *,
        kind: ParticipantKind | str | None = None,
        room: str | None = None,
        alias: str | None = None,
        status: UnitStatus | str | None = None,
        interval: float | None = None,
    ) -> Unit:
        """Take a fix for a unit and return the unit.

        A new unit needs ``kind``; the other keywords change the unit when given and keep the
        current value when ``None``.  ``interval`` configures the report interval (seconds);
        without it the interval is learnt: an exponential moving average of the gaps between
        reports, each gap counted for at most ``STALE_FACTOR`` times the current interval so
        that one outage does not stretch it, while a lasting slower cadence is learnt over a
        few reports.  A fix older than the one held (reordered delivery) leaves the position
        as it is but still counts as a sign of life.
        """
        now = self._clock()
        fix.validate(now, skew=self.max_clock_skew)
        if interval is not None and not MIN_REPORT_INTERVAL <= interval <= MAX_REPORT_INTERVAL:
            raise ValueError("report interval is out of range")
        new_status = None if status is None else _unit_status(status)
        new_kind = None if kind is None else _unit_kind(kind)
        unit = self._units.get(unit_id)
        if unit is None:
            if new_kind is None:
                raise ValueError("unit kind is required for a new unit")
            unit = Unit(
                id=unit_id,
                kind=new_kind,
                fix=fix,
                alias=alias or "",
                room=room,
                status=new_status or UnitStatus.IDLE,
                interval=self.default_interval if interval is None else interval,
                interval_configured=interval is not None,
                last_seen=now,
            )
            self._units[unit_id] = unit
            self._place(unit, self._take_slot(unit_id))
            return unit

        if new_kind is not None:
            unit.kind = new_kind
        if alias is not None:
            unit.alias = alias
        if room is not None:
            unit.room = room
        if new_status is not None:
            unit.status = new_status
        if interval is not None:
            unit.interval = interval
            unit.interval_configured = True
        elif not unit.interval_configured:
            gap = min(max(now - unit.last_seen, MIN_REPORT_INTERVAL), unit.stale_after)
            learnt = unit.interval + INTERVAL_SMOOTHING * (gap - unit.interval)
            unit.interval = min(max(learnt, MIN_REPORT_INTERVAL), MAX_REPORT_INTERVAL)
        unit.last_seen = now
        if fix.time >= unit.fix.time:
            unit.fix = fix
        self._place(unit, self._slots[unit_id])
        return unit

    def update(
        self,
        unit_id: str,
        *,
        room: str | None = None,
        alias: str | None = None,
        status: UnitStatus | str | None = None,
    ) -> Unit:
        """Change a unit's room, alias or status without a fix (floor events, joins).

        This is not a report: it neither refreshes the unit nor teaches its interval.
        Raises ``KeyError`` for an unknown unit.
        """
        unit = self._units[unit_id]
        if status is not None:
            unit.status = _unit_status(status)
        if alias is not None:
            unit.alias = alias
        if room is not None:
            unit.room = room
        return unit

    def remove(self, unit_id: str) -> Unit | None:
        """Forget a unit; return it, or ``None`` if it was not known."""
        unit = self._units.pop(unit_id, None)
        if unit is not None:
            self._free_slot(self._slots.pop(unit_id))
        return unit

    def expire(self) -> list[Unit]:
        """Remove the units silent for longer than ``expiry`` (and stale); return them."""
        now = self._clock()
        end = self._end
        limit = np.maximum(self._stale_after[:end], self.expiry)
        expired = np.flatnonzero(now > self._last_seen[:end] + limit)
        removed = []
        for slot in expired.tolist():
            unit_id = self._slot_ids[slot]
            if unit_id is not None:
                unit = self.remove(unit_id)
                if unit is not None:
                    removed.append(unit)
        return removed

    # -- lookups -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit_id: object) -> bool:
        return unit_id in self._units

    def __iter__(self) -> Iterator[Unit]:
        return iter(list(self._units.values()))

    def get(self, unit_id: str) -> Unit | None:
        return self._units.get(unit_id)

    def state(self, unit_id: str) -> UnitState:
        """Live or stale, now.  Raises ``KeyError`` for an unknown unit."""
        return self._units[unit_id].state_at(self._clock())

    def units(self, *, room: str | None = None, state: UnitState | None = None) -> list[Unit]:
        """The units, optionally only those of one room or in one state."""
        now = self._clock()
        return [
            unit
            for unit in self._units.values()
            if (room is None or unit.room == room)
            and (state is None or unit.state_at(now) == state)
        ]

    def geojson(self, *, room: str | None = None) -> dict[str, Any]:
        """The units as a GeoJSON FeatureCollection (see :func:`to_geojson`)."""
        return to_geojson(self.units(room=room), now=self._clock())

    # -- vectorised queries ----------------------------------------------------------------

    def distances(self, lat: float, lon: float) -> npt.NDArray[np.float64]:
        """Distance in metres from a point to every slot in use so far; free slots are NaN."""
        check_position(lat, lon)
        end = self._end
        return _haversine(
            math.radians(lat),
            math.radians(lon),
            self._phi[:end],
            self._lam[:end],
            self._cos_phi[:end],
        )

    def near(
        self, lat: float, lon: float, radius_m: float, *, live_only: bool = False
    ) -> list[tuple[Unit, float]]:
        """Units within ``radius_m`` of a point, nearest first, with their distances."""
        _check_non_negative(radius_m, "radius")
        distances = self.distances(lat, lon)
        hits = self._filter(np.flatnonzero(distances <= radius_m), live_only)
        hits = hits[np.argsort(distances[hits], kind="stable")]
        return self._with_distances(hits, distances)

    def nearest(
        self, lat: float, lon: float, n: int, *, live_only: bool = False
    ) -> list[tuple[Unit, float]]:
        """The ``n`` units nearest to a point, nearest first, with their distances."""
        if n < 0:
            raise ValueError("n is negative")
        distances = self.distances(lat, lon)
        candidates = self._filter(np.flatnonzero(~np.isnan(distances)), live_only)
        if n < candidates.size:
            candidates = candidates[np.argpartition(distances[candidates], n)[:n]]
        ordered = candidates[np.argsort(distances[candidates], kind="stable")]
        return self._with_distances(ordered, distances)

    def inside(
        self, polygon: Sequence[tuple[float, float]], *, live_only: bool = False
    ) -> list[Unit]:
        """Units inside a polygon of (lat, lon) vertices (even-odd rule)."""
        mask = points_in_polygon(polygon, self._lat[: self._end], self._lon[: self._end])
        return [self._unit_at(slot) for slot in self._filter(np.flatnonzero(mask), live_only)]

    # -- columns ---------------------------------------------------------------------------

    def _filter(self, slots: npt.NDArray[np.intp], live_only: bool) -> npt.NDArray[np.intp]:
        if not live_only:
            return slots
        now = self._clock()
        live = now <= self._last_seen[slots] + self._stale_after[slots]
        return slots[live]

    def _with_distances(
        self, slots: npt.NDArray[np.intp], distances: npt.NDArray[np.float64]
    ) -> list[tuple[Unit, float]]:
        return [
            (self._unit_at(slot), distance)
            for slot, distance in zip(slots.tolist(), distances[slots].tolist(), strict=True)
        ]

    def _unit_at(self, slot: int) -> Unit:
        unit_id = self._slot_ids[slot]
        assert unit_id is not None
        return self._units[unit_id]

    def _place(self, unit: Unit, slot: int) -> None:
        fix = unit.fix
        phi = math.radians(fix.lat)
        self._lat[slot] = fix.lat
        self._lon[slot] = fix.lon
        self._phi[slot] = phi
        self._lam[slot] = math.radians(fix.lon)
        self._cos_phi[slot] = math.cos(phi)
        self._last_seen[slot] = unit.last_seen
        self._stale_after[slot] = unit.stale_after

    def _take_slot(self, unit_id: str) -> int:
        if not self._free:
            self._grow(_GROWTH_FACTOR * len(self._slot_ids))
        slot = self._free.pop()
        self._end = max(self._end, slot + 1)
        self._slots[unit_id] = slot
        self._slot_ids[slot] = unit_id
        return slot

    def _free_slot(self, slot: int) -> None:
        self._slot_ids[slot] = None
        for column in self._columns():
            column[slot] = np.nan
        self._free.append(slot)

    def _columns(self) -> tuple[npt.NDArray[np.float64], ...]:
        return (
            self._lat,
            self._lon,
            self._phi,
            self._lam,
            self._cos_phi,
            self._last_seen,
            self._stale_after,
        )

    def _grow(self, capacity: int) -> None:
        old = len(self._slot_ids)
        grown = []
        for column in self._columns():
            wider = np.full(capacity, np.nan)
            wider[:old] = column
            grown.append(wider)
        (
            self._lat,
            self._lon,
            self._phi,
            self._lam,
            self._cos_phi,
            self._last_seen,
            self._stale_after,
        ) = grown
        self._slot_ids.extend([None] * (capacity - old))
        # Pop from the end: lower slots are reused first, keeping the columns dense.
        self._free.extend(range(capacity - 1, old - 1, -1))


def _unit_kind(kind: ParticipantKind | str) -> ParticipantKind:
    try:
        return ParticipantKind(kind)
    except ValueError:
        raise ValueError("unit kind is not valid") from None


def _unit_status(status: UnitStatus | str) -> UnitStatus:
    try:
        return UnitStatus(status)
    except ValueError:
        raise ValueError("unit status is not valid") from None


# -- GeoJSON (RFC 7946) -------------------------------------------------------------------


def to_feature(unit: Unit, *, now: float) -> dict[str, Any]:
    """One unit as a GeoJSON Feature (RFC 7946 §3.2) with a Point geometry (§3.1.2).

    Coordinates are ``[lon, lat]`` or ``[lon, lat, altitude]`` (§3.1.1).  Properties: ``unit``,
    ``alias``, ``kind``, ``room``, ``status``, ``source``, ``accuracy`` (m), ``heading``
    (degrees from true north), ``speed`` (m/s), ``time`` (ISO-8601 UTC), ``state`` and
    ``stale`` (a bool, for map styling); unknown values are ``null``.
    """
    fix = unit.fix
    coordinates = [fix.lon, fix.lat]
    if fix.altitude_m is not None:
        coordinates.append(fix.altitude_m)
    state = unit.state_at(now)
    return {
        "type": "Feature",
        "id": unit.id,
        "geometry": {"type": "Point", "coordinates": coordinates},
        "properties": {
            "unit": unit.id,
            "alias": unit.alias,
            "kind": unit.kind.value,
            "room": unit.room,
            "status": unit.status.value,
            "source": fix.source.value,
            "accuracy": fix.accuracy_m,
            "heading": fix.heading_deg,
            "speed": fix.speed_mps,
            "time": iso_time(fix.time),
            "state": state.value,
            "stale": state is UnitState.STALE,
        },
    }


def to_geojson(units: Iterable[Unit], *, now: float) -> dict[str, Any]:
    """Units as a GeoJSON FeatureCollection (RFC 7946 §3.3); ``now`` decides staleness."""
    return {
        "type": "FeatureCollection",
        "features": [to_feature(unit, now=now) for unit in units],
    }


# -- fan-out coalescing -------------------------------------------------------------------

PayloadT = TypeVar("PayloadT")

DEFAULT_FANOUT_RATE_HZ = 3.0


class Coalescer(Generic[PayloadT]):
    """Per-console rate limiter for presence updates: the latest payload per unit.

    :meth:`offer` keeps only the newest payload of each unit; :meth:`due` hands them all over
    at most ``rate_hz`` times a second (emits at least ``1 / rate_hz`` apart), so 1,000
    reports a second become at most ``rate_hz + 1`` emits in any one-second window, each
    carrying the latest payload of every unit that reported since the previous emit.  Call
    :meth:`due` whenever convenient (on each offer, or on a timer at :meth:`next_due`).
    """

    def __init__(
        self,
        rate_hz: float = DEFAULT_FANOUT_RATE_HZ,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError("rate is not positive")
        self.period = 1.0 / rate_hz
        self._clock = clock
        self._pending: dict[str, PayloadT] = {}
        self._last_emit = -math.inf

    def __len__(self) -> int:
        """Units waiting for the next emit."""
        return len(self._pending)

    def offer(self, unit_id: str, payload: PayloadT) -> None:
        self._pending[unit_id] = payload

    def discard(self, unit_id: str) -> None:
        """Drop a unit's pending payload (e.g. the unit was removed)."""
        self._pending.pop(unit_id, None)

    def next_due(self) -> float | None:
        """When the next emit may happen, or ``None`` while nothing is pending."""
        return self._last_emit + self.period if self._pending else None

    def due(self, now: float | None = None) -> dict[str, PayloadT] | None:
        """The pending payloads if an emit is allowed at ``now``, else ``None``."""
        if not self._pending:
            return None
        if now is None:
            now = self._clock()
        if now < self._last_emit + self.period:
            return None
        batch, self._pending = self._pending, {}
        self._last_emit = now
        return batch
