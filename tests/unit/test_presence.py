"""Tests for bridge.presence: fixes, the registry, vectorised queries, GeoJSON, coalescing."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from bridge.model import ParticipantKind
from bridge.presence import (
    EARTH_RADIUS_M,
    MAX_CLOCK_SKEW,
    Coalescer,
    FixSource,
    GpsFix,
    PresenceRegistry,
    Unit,
    UnitState,
    UnitStatus,
    haversine_m,
    iso_time,
    points_in_polygon,
    to_geojson,
)

T0 = 1_700_000_000.0
PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)
# One metre as degrees of latitude on the sphere the registry uses.
METRE_DEG = 180.0 / (math.pi * EARTH_RADIUS_M)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fix(lat: float = 0.0, lon: float = 0.0, at: float = T0, **kwargs: Any) -> GpsFix:
    return GpsFix(lat, lon, at, **kwargs)


def north_of(lat: float, lon: float, metres: float) -> tuple[float, float]:
    return lat + metres * METRE_DEG, lon


def ids(units: list[Unit]) -> list[str]:
    return [unit.id for unit in units]


# -- GpsFix ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lat": 90.0001}, "latitude is out of range"),
        ({"lat": -90.0001}, "latitude is out of range"),
        ({"lon": 180.0001}, "longitude is out of range"),
        ({"lon": -180.0001}, "longitude is out of range"),
        ({"lat": math.nan}, "latitude is not a number"),
        ({"lat": math.inf}, "latitude is not a number"),
        ({"lon": -math.inf}, "longitude is not a number"),
        ({"at": math.nan}, "fix time is not a number"),
        ({"altitude_m": math.nan}, "altitude is not a number"),
        ({"accuracy_m": -1.0}, "accuracy is negative"),
        ({"accuracy_m": math.inf}, "accuracy is not a number"),
        ({"vertical_accuracy_m": -0.5}, "vertical accuracy is negative"),
        ({"speed_mps": -0.1}, "speed is negative"),
        ({"speed_mps": math.nan}, "speed is not a number"),
        ({"heading_deg": 360.0}, "heading is out of range"),
        ({"heading_deg": -0.1}, "heading is out of range"),
        ({"heading_deg": math.nan}, "heading is not a number"),
        ({"source": "psychic"}, "fix source is not valid"),
    ],
)
def test_fix_rejects_bad_fields(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        fix(**kwargs)


def test_fix_accepts_edges_and_converts_source() -> None:
    edge = fix(lat=-90.0, lon=180.0, heading_deg=0.0, speed_mps=0.0, accuracy_m=0.0)
    assert edge.lat == -90.0
    assert fix(lat=90.0, lon=-180.0, heading_deg=359.999).heading_deg == 359.999
    assert fix(source="manual").source is FixSource.MANUAL
    assert fix().utc == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_fix_time_in_the_future() -> None:
    fix(at=T0 + MAX_CLOCK_SKEW).validate(T0)
    with pytest.raises(ValueError, match=exactly("fix time is in the future")):
        fix(at=T0 + MAX_CLOCK_SKEW + 0.01).validate(T0)
    with pytest.raises(ValueError, match=exactly("fix time is in the future")):
        fix(at=T0 + 1.0).validate(T0, skew=0.5)


def test_fix_time_before_1970() -> None:
    assert fix(at=0.0).time == 0.0
    with pytest.raises(ValueError, match=exactly("fix time is before 1970")):
        fix(at=-1e20)


def test_iso_time_is_utc_with_z() -> None:
    assert iso_time(T0) == "2023-11-14T22:13:20.000Z"
    assert iso_time(T0 + 0.25) == "2023-11-14T22:13:20.250Z"
    assert iso_time(T0 + 0.9999996) == "2023-11-14T22:13:21.000Z"
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"


def test_iso_time_agrees_with_datetime() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        moment = rng.uniform(0, 4e9)
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert iso_time(moment) == expected.replace("+00:00", "Z")


# -- distances and polygons -----------------------------------------------------------------


def test_haversine_paris_london() -> None:
    (distance,) = haversine_m(*PARIS, [LONDON[0]], [LONDON[1]])
    assert distance == pytest.approx(343_500, abs=500)


def test_haversine_known_arcs() -> None:
    quarter, zero, half = haversine_m(0.0, 0.0, [90.0, 0.0, 0.0], [0.0, 0.0, 180.0])
    assert quarter == pytest.approx(math.pi / 2 * EARTH_RADIUS_M)
    assert zero == 0.0
    assert half == pytest.approx(math.pi * EARTH_RADIUS_M)


SQUARE = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
# A "C" open to the east: its notch (0.4..0.6 lat, 0.3..1 lon) is outside.
C_SHAPE = [
    (0.0, 0.0),
    (1.0, 0.0),
    (1.0, 1.0),
    (0.6, 1.0),
    (0.6, 0.3),
    (0.4, 0.3),
    (0.4, 1.0),
    (0.0, 1.0),
]


def test_points_in_square_and_concave_polygon() -> None:
    lats = [0.5, 0.5, 1.5, 0.5, 0.2, 0.8, 0.5, math.nan]
    lons = [0.5, 1.5, 0.5, 0.8, 0.8, 0.8, 0.1, 0.5]
    assert points_in_polygon(SQUARE, lats, lons).tolist() == [
        True, False, False, True, True, True, True, False,
    ]  # fmt: skip
    assert points_in_polygon(C_SHAPE, lats, lons).tolist() == [
        False, False, False, False, True, True, True, False,
    ]  # fmt: skip


def test_even_odd_rule_makes_a_hole() -> None:
    # Outer square, then the inner square through a zero-width cut: the inner one is a hole.
    ring = [(0, 0), (0, 4), (4, 4), (4, 0), (0, 0), (1, 1), (3, 1), (3, 3), (1, 3), (1, 1)]
    inside = points_in_polygon([(float(a), float(b)) for a, b in ring], [2.0, 0.5], [2.0, 2.0])
    assert inside.tolist() == [False, True]


def test_closed_ring_equals_open_ring() -> None:
    rng = np.random.default_rng(7)
    lats, lons = rng.uniform(-0.5, 1.5, 500), rng.uniform(-0.5, 1.5, 500)
    closed = [*C_SHAPE, C_SHAPE[0]]
    assert np.array_equal(
        points_in_polygon(C_SHAPE, lats, lons), points_in_polygon(closed, lats, lons)
    )


def test_polygon_errors() -> None:
    with pytest.raises(ValueError, match=exactly("polygon has fewer than 3 vertices")):
        points_in_polygon([(0.0, 0.0), (1.0, 1.0)], [0.5], [0.5])
    with pytest.raises(ValueError, match=exactly("latitude is out of range")):
        points_in_polygon([(0.0, 0.0), (91.0, 1.0), (1.0, 0.0)], [0.5], [0.5])


# -- the registry ---------------------------------------------------------------------------


def test_report_creates_and_updates_a_unit() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    unit = registry.report(
        "u1", fix(*PARIS), kind="trunk", alias="Alpha 1", room="tg1", status="talking"
    )
    assert unit.kind is ParticipantKind.TRUNK
    assert (unit.alias, unit.room, unit.status) == ("Alpha 1", "tg1", UnitStatus.TALKING)
    assert unit.last_seen == T0
    assert "u1" in registry and len(registry) == 1
    clock.now += 5
    later = fix(*LONDON, at=T0 + 5)
    assert registry.report("u1", later, status=UnitStatus.IDLE) is unit
    assert unit.fix is later
    assert (unit.alias, unit.room, unit.status) == ("Alpha 1", "tg1", UnitStatus.IDLE)
    assert unit.last_seen == T0 + 5


def test_report_errors_leave_the_registry_unchanged() -> None:
    registry = PresenceRegistry(clock=Clock())
    with pytest.raises(ValueError, match=exactly("unit kind is required for a new unit")):
        registry.report("u1", fix())
    with pytest.raises(ValueError, match=exactly("unit kind is not valid")):
        registry.report("u1", fix(), kind="pigeon")
    with pytest.raises(ValueError, match=exactly("unit status is not valid")):
        registry.report("u1", fix(), kind="sip", status="asleep")
    with pytest.raises(ValueError, match=exactly("fix time is in the future")):
        registry.report("u1", fix(at=T0 + 60), kind="sip")
    with pytest.raises(ValueError, match=exactly("report interval is out of range")):
        registry.report("u1", fix(), kind="sip", interval=0.1)
    assert len(registry) == 0
    registry.report("u1", fix(), kind="sip", alias="a")
    with pytest.raises(ValueError, match=exactly("unit kind is not valid")):
        registry.report("u1", fix(lat=1.0), kind="pigeon", alias="b")
    unit = registry.get("u1")
    assert unit is not None
    assert (unit.kind, unit.alias, unit.fix.lat) == (ParticipantKind.SIP, "a", 0.0)


def test_older_fix_keeps_position_but_refreshes_the_unit() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    newer = fix(lat=1.0, at=T0)
    unit = registry.report("u1", newer, kind="sip")
    clock.now += 10
    registry.report("u1", fix(lat=2.0, at=T0 - 5))
    assert unit.fix is newer
    assert unit.last_seen == T0 + 10
    assert ids([hit for hit, _ in registry.near(1.0, 0.0, 1.0)]) == ["u1"]


def test_update_changes_status_without_refreshing() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    registry.report("u1", fix(), kind="trunk")
    clock.now += 7
    unit = registry.update("u1", status="emergency", room="tg9", alias="Bravo")
    assert (unit.status, unit.room, unit.alias) == (UnitStatus.EMERGENCY, "tg9", "Bravo")
    assert unit.last_seen == T0
    with pytest.raises(KeyError):
        registry.update("nobody", status="idle")


def test_stale_after_two_configured_intervals() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    unit = registry.report("u1", fix(), kind="trunk", interval=10.0)
    assert unit.stale_after == 20.0
    clock.now = T0 + 20.0
    assert registry.state("u1") is UnitState.LIVE
    assert ids(registry.units(state=UnitState.LIVE)) == ["u1"]
    clock.now = T0 + 20.01
    assert registry.state("u1") is UnitState.STALE
    assert ids(registry.units(state=UnitState.STALE)) == ["u1"]
    assert registry.near(0.0, 0.0, 10.0, live_only=True) == []
    assert ids([unit for unit, _ in registry.near(0.0, 0.0, 10.0)]) == ["u1"]
    clock.now += 1
    registry.report("u1", fix(at=clock.now))
    assert registry.state("u1") is UnitState.LIVE
    assert unit.interval == 10.0


def test_default_interval_applies_until_learnt() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock, default_interval=15.0)
    unit = registry.report("u1", fix(), kind="webrtc")
    assert (unit.interval, unit.stale_at) == (15.0, T0 + 30.0)


def test_interval_is_learnt_from_gaps() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    unit = registry.report("u1", fix(), kind="trunk")
    assert unit.interval == 30.0
    for _ in range(40):
        clock.now += 5.0
        registry.report("u1", fix(at=clock.now))
    assert unit.interval == pytest.approx(5.0, abs=0.01)
    # A ten-minute outage counts as at most two intervals, not as a new cadence.
    clock.now += 600.0
    assert registry.state("u1") is UnitState.STALE
    registry.report("u1", fix(at=clock.now))
    assert registry.state("u1") is UnitState.LIVE
    assert unit.interval == pytest.approx(5.0 + 0.25 * (10.0 - 5.0), abs=0.01)
    # A lasting slower cadence is learnt after a few reports.
    for _ in range(30):
        clock.now += 60.0
        registry.report("u1", fix(at=clock.now))
    assert unit.interval == pytest.approx(60.0, rel=0.01)


def test_bursts_do_not_shrink_the_interval_below_the_minimum() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    unit = registry.report("u1", fix(), kind="trunk")
    for _ in range(100):
        registry.report("u1", fix())
    assert unit.interval == pytest.approx(1.0, abs=0.01)


def test_expire_removes_only_long_silent_units() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock, expiry=300.0)
    registry.report("quiet", fix(lat=1.0), kind="camera")
    registry.report("slow", fix(lat=2.0), kind="camera", interval=600.0)
    clock.now = T0 + 200.0
    registry.report("chatty", fix(lat=3.0, at=clock.now), kind="sip")
    clock.now = T0 + 301.0
    assert ids(registry.expire()) == ["quiet"]
    assert "quiet" not in registry
    assert registry.get("quiet") is None
    assert sorted(ids(list(registry))) == ["chatty", "slow"]
    # "slow" stays stale on the map until its own two intervals are over.
    clock.now = T0 + 1200.5
    assert sorted(ids(registry.expire())) == ["chatty", "slow"]
    assert len(registry) == 0
    assert registry.nearest(0.0, 0.0, 5) == []


def test_remove_frees_the_slot_for_the_next_unit() -> None:
    registry = PresenceRegistry(clock=Clock())
    registry.report("a", fix(lat=1.0), kind="sip")
    registry.report("b", fix(lat=2.0), kind="sip")
    removed = registry.remove("a")
    assert removed is not None and removed.id == "a"
    assert registry.remove("a") is None
    assert ids([unit for unit, _ in registry.nearest(1.0, 0.0, 5)]) == ["b"]
    registry.report("c", fix(lat=1.0), kind="sip")
    assert ids([unit for unit, _ in registry.nearest(1.0, 0.0, 5)]) == ["c", "b"]


def test_registry_parameter_errors() -> None:
    with pytest.raises(ValueError, match=exactly("report interval is out of range")):
        PresenceRegistry(default_interval=0.0)
    with pytest.raises(ValueError, match=exactly("expiry is not positive")):
        PresenceRegistry(expiry=0.0)
    registry = PresenceRegistry(clock=Clock())
    with pytest.raises(ValueError, match=exactly("radius is negative")):
        registry.near(0.0, 0.0, -1.0)
    with pytest.raises(ValueError, match=exactly("latitude is out of range")):
        registry.near(95.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=exactly("n is negative")):
        registry.nearest(0.0, 0.0, -1)


# -- queries ----------------------------------------------------------------------------------


def test_near_one_kilometre_circle() -> None:
    registry = PresenceRegistry(clock=Clock())
    centre = PARIS
    for name, metres in [("in500", 500.0), ("in999", 999.0), ("out1001", 1001.0), ("far", 5e3)]:
        registry.report(name, fix(*north_of(*centre, metres)), kind="trunk")
    registry.report("south", fix(*north_of(*centre, -700.0)), kind="trunk")
    hits = registry.near(*centre, 1000.0)
    assert ids([unit for unit, _ in hits]) == ["in500", "south", "in999"]
    assert [distance for _, distance in hits] == pytest.approx([500.0, 700.0, 999.0], abs=0.01)
    assert ids([unit for unit, _ in registry.near(*centre, 0.0)]) == []


def test_near_paris_finds_london_at_the_right_range() -> None:
    registry = PresenceRegistry(clock=Clock())
    registry.report("london", fix(*LONDON), kind="node")
    assert registry.near(*PARIS, 343_000.0) == []
    ((unit, distance),) = registry.near(*PARIS, 344_000.0)
    assert unit.id == "london"
    assert distance == pytest.approx(343_500, abs=500)


def test_nearest_orders_and_limits() -> None:
    registry = PresenceRegistry(clock=Clock())
    for name, metres in [("c", 300.0), ("a", 100.0), ("d", 400.0), ("b", 200.0)]:
        registry.report(name, fix(*north_of(0.0, 0.0, metres)), kind="sip")
    assert ids([unit for unit, _ in registry.nearest(0.0, 0.0, 2)]) == ["a", "b"]
    assert ids([unit for unit, _ in registry.nearest(0.0, 0.0, 10)]) == ["a", "b", "c", "d"]
    assert registry.nearest(0.0, 0.0, 0) == []


def test_inside_polygon() -> None:
    registry = PresenceRegistry(clock=Clock())
    registry.report("notch", fix(0.5, 0.8), kind="camera")
    registry.report("arm", fix(0.2, 0.8), kind="camera")
    registry.report("spine", fix(0.5, 0.1), kind="camera")
    registry.report("away", fix(5.0, 5.0), kind="camera")
    assert sorted(ids(registry.inside(C_SHAPE))) == ["arm", "spine"]
    assert sorted(ids(registry.inside(SQUARE))) == ["arm", "notch", "spine"]


def test_queries_match_brute_force_across_growth_and_removal() -> None:
    rng = random.Random(1)
    registry = PresenceRegistry(clock=Clock())
    positions = {}
    for index in range(300):  # grows the columns past their initial capacity
        lat, lon = rng.uniform(48.7, 49.0), rng.uniform(2.2, 2.5)
        registry.report(f"u{index}", fix(lat, lon), kind="trunk")
        positions[f"u{index}"] = (lat, lon)
    for index in range(0, 300, 3):
        registry.remove(f"u{index}")
        del positions[f"u{index}"]
    centre, radius = (48.85, 2.35), 8_000.0

    def distance(unit_id: str) -> float:
        lat, lon = positions[unit_id]
        return float(haversine_m(*centre, [lat], [lon])[0])

    expected = sorted((u for u in positions if distance(u) <= radius), key=distance)
    assert ids([unit for unit, _ in registry.near(*centre, radius)]) == expected
    assert (
        ids([unit for unit, _ in registry.nearest(*centre, 7)])
        == sorted(positions, key=distance)[:7]
    )
    box = [(48.8, 2.3), (48.8, 2.4), (48.9, 2.4), (48.9, 2.3)]
    inside = [u for u, (lat, lon) in positions.items() if 48.8 < lat < 48.9 and 2.3 < lon < 2.4]
    assert sorted(ids(registry.inside(box))) == sorted(inside)


# -- GeoJSON ----------------------------------------------------------------------------------


def test_geojson_feature_collection() -> None:
    clock = Clock()
    registry = PresenceRegistry(clock=clock)
    registry.report(
        "u1",
        fix(*PARIS, altitude_m=35.5, accuracy_m=4.0, heading_deg=270.0, speed_mps=1.25),
        kind="trunk",
        alias="Alpha 1",
        room="tg1",
        status="emergency",
        interval=10.0,
    )
    registry.report("u2", fix(*LONDON, source=FixSource.NETWORK), kind="sip", room="tg2")
    clock.now = T0 + 25.0
    collection = json.loads(json.dumps(registry.geojson()))
    assert collection["type"] == "FeatureCollection"
    first, second = collection["features"]
    assert first["type"] == "Feature"
    assert first["id"] == "u1"
    assert first["geometry"] == {"type": "Point", "coordinates": [PARIS[1], PARIS[0], 35.5]}
    assert first["properties"] == {
        "unit": "u1",
        "alias": "Alpha 1",
        "kind": "trunk",
        "room": "tg1",
        "status": "emergency",
        "source": "gnss",
        "accuracy": 4.0,
        "heading": 270.0,
        "speed": 1.25,
        "time": "2023-11-14T22:13:20.000Z",
        "state": "stale",
        "stale": True,
    }
    assert second["geometry"]["coordinates"] == [LONDON[1], LONDON[0]]
    assert second["properties"]["stale"] is False
    assert second["properties"]["source"] == "network"
    assert second["properties"]["accuracy"] is None
    assert [f["id"] for f in registry.geojson(room="tg2")["features"]] == ["u2"]


def test_to_geojson_of_no_units() -> None:
    assert to_geojson([], now=T0) == {"type": "FeatureCollection", "features": []}


# -- coalescing -------------------------------------------------------------------------------


def test_coalescer_turns_1000_reports_into_at_most_4_emits() -> None:
    coalescer: Coalescer[int] = Coalescer(rate_hz=3)
    latest: dict[str, int] = {}
    emits: list[tuple[float, dict[str, int]]] = []
    for sequence in range(1000):
        now = T0 + sequence / 1000.0
        unit = f"u{sequence % 50}"
        coalescer.offer(unit, sequence)
        latest[unit] = sequence
        batch = coalescer.due(now)
        if batch is not None:
            # Each emit carries the latest payload of every unit offered since the last one.
            assert all(batch[name] == latest[name] for name in batch)
            emits.append((now, batch))
    assert 3 <= len(emits) <= 4
    times = [at for at, _ in emits]
    assert all(later - earlier >= 1 / 3 for earlier, later in itertools.pairwise(times))
    assert coalescer.due(T0 + 0.999) is None
    final = coalescer.due(T0 + 2.0)
    assert final is not None
    delivered = {name: payload for _, batch in emits for name, payload in batch.items()}
    delivered.update(final)
    assert delivered == latest
    assert len(coalescer) == 0


def test_coalescer_keeps_only_the_latest_payload_per_unit() -> None:
    clock = Clock(0.0)
    coalescer: Coalescer[str] = Coalescer(rate_hz=2, clock=clock)
    assert coalescer.due() is None
    assert coalescer.next_due() is None
    coalescer.offer("a", "a1")
    assert coalescer.due() == {"a": "a1"}
    coalescer.offer("a", "a2")
    coalescer.offer("b", "b1")
    coalescer.offer("a", "a3")
    assert len(coalescer) == 2
    assert coalescer.next_due() == 0.5
    clock.now = 0.49
    assert coalescer.due() is None
    coalescer.discard("b")
    clock.now = 0.5
    assert coalescer.due() == {"a": "a3"}
    assert coalescer.due(10.0) is None


@pytest.mark.parametrize("rate", [0.0, -3.0, math.inf, math.nan])
def test_coalescer_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match=exactly("rate is not positive")):
        Coalescer(rate_hz=rate)
