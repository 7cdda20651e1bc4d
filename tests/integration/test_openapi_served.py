"""The served OpenAPI document against a real server: every answer of a walk matches it."""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

from openapi_check import JSON, Checker
from openapi_spec_validator import validate
from server import Server, free_port

from bridge.web.auth import Role

#: Routes other modules' tests walk (patches, cameras, WebRTC, calls, monitoring).
WALKED_ELSEWHERE = re.compile(r"^/api/(patches|cameras|webrtc|calls)\b|/(calls|monitor)\b")


def _call(
    server: Server, checker: Checker, method: str, path: str, body: Any = None, **kw: Any
) -> Any:
    status, reply = server.request(method, path, body, **kw)
    checker.check(method, path, status, reply)
    return reply


def test_the_served_document_is_valid_and_public(server: Server) -> None:
    status, document = server.request("GET", "/api/openapi.json", auth=False)
    assert status == 200
    validate(document)
    assert "/api/presence/reports" in document["paths"]


def test_every_answer_of_a_walk_through_the_api_matches_the_document(server: Server) -> None:
    status, document = server.request("GET", "/api/openapi.json", auth=False)
    assert status == 200
    checker = Checker(document)
    call = lambda method, path, body=None, **kw: _call(  # noqa: E731
        server, checker, method, path, body, **kw
    )

    call("GET", "/health", auth=False)
    call("GET", "/console/settings.json", auth=False)
    call("POST", "/logout", auth=False)
    call("GET", "/login?code=wrong", auth=False)
    call("POST", "/api/rooms", {"name": "walk", "mode": "ptt", "record": True})
    call("POST", "/api/rooms", {"name": "walk"})  # 409
    call("POST", "/api/rooms", {"name": "bad name!"})  # 422
    call("POST", "/api/rooms", {"name": "x"}, role=Role.OBSERVER)  # 403
    call("GET", "/api/rooms", auth=False)  # 401
    call("GET", "/api/rooms")
    call("GET", "/api/rooms/walk")
    call("GET", "/api/rooms/nowhere")  # 404
    leg = call(
        "POST",
        "/api/rooms/walk/participants",
        {"address": {"ip": "127.0.0.1", "port": free_port()}, "name": "walker"},
    )
    other = call(
        "POST",
        "/api/rooms/walk/participants",
        {"address": {"ip": "127.0.0.1", "port": free_port()}, "priority": 9},
    )
    call("GET", "/api/rooms/walk")  # with participants
    call("PATCH", f"/api/rooms/walk/participants/{leg['id']}", {"gain": 0.5, "muted": False})
    call("GET", f"/api/rooms/walk/participants/{leg['id']}/stats")
    call("POST", "/api/rooms/walk/recording", {"recording": True})
    call("GET", "/api/rooms/walk/floor")
    call("POST", "/api/rooms/walk/floor", {"action": "request", "participant": leg["id"]})
    call("POST", "/api/rooms/walk/floor", {"action": "request", "participant": other["id"]})
    call("GET", "/api/rooms/walk/floor")  # holder and queue
    call(
        "POST",
        "/api/rooms/walk/floor",
        {"action": "override", "participant": other["id"], "call_type": "emergency"},
    )
    call("POST", "/api/rooms/walk/floor", {"action": "release", "participant": other["id"]})
    call("POST", "/api/rooms/walk/floor", {"action": "revoke"})
    call("POST", "/api/rooms/walk/floor", {"action": "grant"})  # 422: no participant
    alerts = call("GET", "/api/alerts")["alerts"]
    assert alerts, "the emergency override raised no alert"
    call("POST", f"/api/alerts/{alerts[0]['id']}/acknowledge")
    call("POST", f"/api/alerts/{alerts[0]['id']}/clear")
    call("POST", f"/api/alerts/{alerts[0]['id']}/clear")  # 409
    call("GET", "/api/recordings")
    call("GET", "/api/recordings/nope")  # 404
    call("GET", "/api/recordings/nope/bursts")  # 404
    call("GET", "/api/events?after=0")
    call("GET", "/api/events?after=x")  # 400
    call("GET", "/api/workers")
    call("GET", "/metrics", role=Role.OFFICER)  # 403 (metrics itself is text)

    call("POST", "/api/presence/car-1", {"lat": 48.85, "lon": 2.35, "altitude_m": 35.0})
    call("POST", "/api/presence/car-1", {"lat": 48.86, "lon": 2.35})
    call("POST", "/api/presence/car-1", {"lat": 91, "lon": 2.35})  # 422
    call(
        "POST",
        "/api/presence/reports",
        {"reports": [{"unit": "car-2", "lat": 1, "lon": 2}, {"unit": "car-3", "lat": 99}]},
    )
    call("POST", "/api/presence/reports", {"reports": []})  # 422
    call("POST", "/api/presence/car-9", {"lat": 1, "lon": 2}, role=Role.OBSERVER)  # 403
    call("GET", "/api/presence")
    call("GET", "/api/presence?room=walk")
    call("GET", "/api/presence/cot?interval=0")  # 400 (the stream itself is XML)

    call("POST", "/api/rooms", {"name": "tg", "mode": "ptt"})
    floor_port, rtp_port = free_port(), free_port()
    affiliation = call(
        "POST",
        "/api/trunking/affiliate",
        {
            "talkgroup": "tg",
            "user_id": "unit-7",
            "alias": "Seven",
            "rtp": {"ip": "127.0.0.1", "port": rtp_port},
            "floor": {"ip": "127.0.0.1", "port": floor_port},
            "ssrc": 1234,
        },
        role=Role.OFFICER,
        token=server.token(Role.OFFICER, "unit-7"),
    )
    call("GET", "/api/trunking/affiliations")
    call(
        "POST",
        "/api/trunking/location",
        {"lat": 48.0, "lon": 2.0},
        token=server.token(Role.OFFICER, "unit-7"),
    )
    call("DELETE", f"/api/trunking/affiliate/{affiliation['participant']}")
    call("GET", "/api/audit?limit=5")
    call("GET", "/api/audit/verify")
    call("DELETE", f"/api/rooms/walk/participants/{leg['id']}")
    call("DELETE", "/api/rooms/walk")
    call("DELETE", "/api/rooms/walk")  # 404

    json_operations = {
        (method, path)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if any(JSON in answer.get("content", {}) for answer in op["responses"].values())
    }
    not_walked = {("get", "/api/openapi.json")}  # itself: checked by the validator above
    missed = json_operations - checker.seen - not_walked
    assert sorted(op for op in missed if not WALKED_ELSEWHERE.search(op[1])) == []
    assert checker.checked >= 55


def test_a_browser_login_and_a_download_are_described(server: Server) -> None:
    # The recordings list is empty until a room records a burst: wait for one file.
    server.ok("POST", "/api/rooms", {"name": "rec", "record": True})
    deadline = time.monotonic() + 10
    recordings: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not recordings:
        recordings = server.get("/api/recordings")["recordings"]
        time.sleep(0.05)
    assert recordings
    document = server.get("/api/openapi.json", auth=False)
    download = document["paths"]["/api/recordings/{recording}"]["get"]
    assert "application/octet-stream" in download["responses"]["200"]["content"]
    req = urllib.request.Request(
        f"{server.base}/api/recordings/{recordings[0]['id']}",
        headers={"Authorization": f"Bearer {server.token()}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
