"""Presence over REST through a real server: fixes in, GeoJSON and a CoT stream out."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from server import Server

from bridge.cot import CotEvent
from bridge.web.auth import Role


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("presence"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_fixes_show_up_as_geojson(srv: Server) -> None:
    status, feature = srv.request(
        "POST",
        "/api/presence/engine-3",
        {"lat": 52.52, "lon": 13.405, "alias": "Engine 3", "room": "fire", "speed_mps": 12.5},
    )
    assert status == 201
    assert feature["geometry"] == {"type": "Point", "coordinates": [13.405, 52.52]}
    status, again = srv.request("POST", "/api/presence/engine-3", {"lat": 52.53, "lon": 13.41})
    assert status == 200 and again["properties"]["alias"] == "Engine 3"
    collection = srv.get("/api/presence")
    assert collection["type"] == "FeatureCollection"
    [unit] = [f for f in collection["features"] if f["id"] == "engine-3"]
    assert unit["geometry"]["coordinates"] == [13.41, 52.53]
    assert unit["properties"]["room"] == "fire" and unit["properties"]["kind"] == "trunk"
    assert [f["id"] for f in srv.get("/api/presence?room=fire")["features"]] == ["engine-3"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"lat": 91, "lon": 0}, "latitude is out of range"),
        ({"lat": 0, "lon": -180.5}, "longitude is out of range"),
        ({"lat": float("nan"), "lon": 0}, "latitude is not a number"),
        ({"lat": 0, "lon": 0, "heading_deg": 360}, "heading is out of range"),
        ({"lat": 0, "lon": 0, "accuracy_m": -1}, "accuracy is negative"),
        ({"lat": 0, "lon": 0, "time": time.time() + 3600}, "fix time is in the future"),
        ({"lat": 0, "lon": 0, "time": -1e20}, "fix time is before 1970"),
        ({"lat": 0}, "lon: Field required"),
        (
            {"lat": "north", "lon": 0},
            "lat: Input should be a valid number, unable to parse string as a number",
        ),
        (
            {"lat": 0, "lon": 0, "kind": "bicycle"},
            "kind: Input should be 'rtp', 'sip', 'trunk', 'webrtc', 'camera' or 'node'",
        ),
    ],
)
def test_a_bad_fix_is_422_with_the_reason(
    srv: Server, body: dict[str, object], reason: str
) -> None:
    status, reply = srv.request("POST", "/api/presence/bad-unit", body)
    assert (status, reply) == (422, {"error": reason})
    assert not any(f["id"] == "bad-unit" for f in srv.get("/api/presence")["features"])


def test_an_officer_reports_only_its_own_unit_and_an_observer_none(srv: Server) -> None:
    fix = {"lat": 48.1, "lon": 11.5}
    officer = srv.token(Role.OFFICER, "unit-42")
    status, _ = srv.request("POST", "/api/presence/unit-42", fix, token=officer)
    assert status == 201
    status, body = srv.request("POST", "/api/presence/unit-43", fix, token=officer)
    assert (status, body) == (403, {"error": "an officer may report only its own unit"})
    status, body = srv.request("POST", "/api/presence/unit-43", fix, role=Role.OBSERVER)
    assert status == 403 and body["error"].startswith("role observer may not")
    status, _ = srv.request("GET", "/api/presence", role=Role.OBSERVER)
    assert status == 200
    status, _ = srv.request("POST", "/api/presence/unit-43", fix, auth=False)
    assert status == 401


def test_the_cot_stream_sends_one_event_per_unit_per_interval(srv: Server) -> None:
    for unit, lat in (("cot-1", 10.0), ("cot-2", 10.5)):
        srv.ok("POST", f"/api/presence/{unit}", {"lat": lat, "lon": 20.0, "room": "cot"})
    request = urllib.request.Request(
        f"{srv.base}/api/presence/cot?room=cot&rounds=3&interval=0.2",
        headers={"Authorization": f"Bearer {srv.token(Role.OBSERVER)}"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert response.headers["Content-Type"].startswith("application/xml")
        body = response.read()
    assert time.monotonic() - started >= 0.4  # three rounds, two intervals apart
    documents = [b"<event" + part for part in body.split(b"<event")[1:]]
    events = [CotEvent.parse(doc) for doc in documents]
    assert [e.uid for e in events] == ["ucbridge-cot-1", "ucbridge-cot-2"] * 3
    assert [e.lat for e in events[:2]] == [10.0, 10.5] and events[0].room == "cot"
    assert events[0].how == "h-e"  # an HTTP fix is human-entered unless it says otherwise


def test_the_cot_stream_refuses_a_silly_interval(srv: Server) -> None:
    status, body = srv.request("GET", "/api/presence/cot?interval=0")
    assert status == 400 and body["error"].startswith("interval must be")
    status, body = srv.request("GET", "/api/presence/cot?rounds=x")
    assert status == 400
