"""The audit log through a real server: each dispatcher REST action once, read-only over HTTP."""

from __future__ import annotations

import json
from collections import Counter

from server import Server

from bridge.web.auth import Role


def _records(server: Server, after: int = 0) -> list[dict[str, object]]:
    records: list[dict[str, object]] = server.get(f"/api/audit?after={after}")["records"]
    return records


def test_every_dispatcher_rest_action_is_audited_once(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "aud", "mode": "ptt"})
    leg = server.ok(
        "POST", "/api/rooms/aud/participants", {"address": {"ip": "127.0.0.1", "port": 30002}}
    )
    server.ok("PATCH", f"/api/rooms/aud/participants/{leg['id']}", {"muted": True})
    server.ok("POST", "/api/rooms/aud/floor", {"action": "request", "participant": leg["id"]})
    server.ok("POST", "/api/rooms/aud/floor", {"action": "revoke"})
    status, _ = server.request("POST", "/api/alerts/nope/acknowledge")
    assert status == 404
    server.ok("POST", "/api/rooms/aud/recording", {"recording": True})
    server.ok("POST", "/api/rooms/aud/recording", {"recording": False})
    server.ok("DELETE", f"/api/rooms/aud/participants/{leg['id']}")
    status, _ = server.request("DELETE", "/api/rooms/nowhere")
    assert status == 404
    status, _ = server.request("POST", "/api/rooms", {"name": "x"}, role=Role.OBSERVER)
    assert status == 403
    status, _ = server.request("POST", "/api/rooms", {"name": "bad name!"})
    assert status == 422
    server.ok("DELETE", "/api/rooms/aud")
    server.get("/api/rooms")  # reads are not audited
    server.request("POST", "/api/presence/car-9", {"lat": 1.0, "lon": 2.0})  # nor fixes

    records = _records(server)
    actions = [(r["action"], r["outcome"]) for r in records]
    assert actions == [
        ("rest:room_create", "ok"),
        ("rest:join", "ok"),
        ("rest:participant_patch", "ok"),
        ("rest:floor_request", "ok"),
        ("rest:floor_revoke", "ok"),
        ("rest:alert_acknowledge", "failed"),
        ("rest:recording", "ok"),
        ("rest:recording", "ok"),
        ("rest:kick", "ok"),
        ("rest:room_delete", "failed"),
        ("rest:room_create", "denied"),
        ("rest:room_create", "failed"),
        ("rest:room_delete", "ok"),
    ]
    assert Counter(r["seq"] for r in records) == Counter(range(1, len(records) + 1))
    denied = records[10]
    assert denied["role"] == "observer" and denied["detail"]["status"] == 403  # type: ignore[index]
    patch = records[2]
    assert patch["room"] == "aud" and patch["user"] == "tester"
    assert patch["detail"]["request"] == {"muted": True}  # type: ignore[index]
    assert records[11]["detail"]["error"].startswith("name: ")  # type: ignore[index]
    assert server.get("/api/audit/verify") == {
        "ok": True,
        "records": len(records),
        "head": server.get("/api/audit?limit=1")["head"],
    }


def test_the_audit_log_cannot_be_changed_through_the_api(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "keep"})
    path = server.tmp / "audit.jsonl"
    before = path.read_bytes()
    for role in (Role.DISPATCHER, Role.ADMIN):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for route in ("/api/audit", "/api/audit/verify", "/api/audit/1"):
                status, _ = server.request(method, route, {"records": []}, role=role)
                assert status in (404, 405), (method, route, status)
    after = path.read_bytes()
    assert after.startswith(before)  # only ever appended to
    assert server.get("/api/audit/verify")["ok"] is True


def test_the_audit_log_is_for_dispatchers_and_admins(server: Server) -> None:
    for role in (Role.OBSERVER, Role.OFFICER):
        status, body = server.request("GET", "/api/audit", role=role)
        assert status == 403 and body["error"].startswith(f"role {role} may not")
    status, _ = server.request("GET", "/api/audit", auth=False)
    assert status == 401
    status, body = server.request("GET", "/api/audit", role=Role.ADMIN)
    assert status == 200 and "records" in body
    status, body = server.request("GET", "/api/audit?limit=0")
    assert status == 400 and body == {"error": "limit must be 1 to 1000"}


def test_verify_finds_a_line_edited_on_disk(server: Server) -> None:
    for name in ("t1", "t2", "t3"):
        server.ok("POST", "/api/rooms", {"name": name})
    path = server.tmp / "audit.jsonl"
    lines = path.read_bytes().splitlines()
    record = json.loads(lines[1])
    record["user"] = "somebody-else"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    with path.open("r+b") as f:  # an editor behind the server's back
        f.write(b"\n".join(lines) + b"\n")
    assert server.get("/api/audit/verify") == {
        "ok": False,
        "error": "audit line 3 does not chain to the line before it",
    }


def test_patches_and_monitors_are_named_actions_and_batched_fixes_are_not_audited(
    server: Server,
) -> None:
    for name in ("pa", "pb"):
        server.ok("POST", "/api/rooms", {"name": name})
    patch = server.ok("POST", "/api/patches", {"rooms": ["pa", "pb"]})
    server.ok("DELETE", f"/api/patches/{patch['id']}")
    leg = server.ok(
        "POST",
        "/api/rooms/pa/participants",
        {"address": {"ip": "127.0.0.1", "port": 30004}, "dispatcher": True},
    )
    server.ok("PUT", f"/api/rooms/pa/participants/{leg['id']}/monitor", {"rooms": {"pb": 0.5}})
    server.ok("POST", "/api/presence/reports", {"reports": [{"unit": "car-1", "lat": 1, "lon": 2}]})
    actions = [r["action"] for r in _records(server)]
    assert actions[2:] == ["rest:patch", "rest:unpatch", "rest:join", "rest:monitor"]
