"""Talkgroup patches through a real server with plain-RTP legs: audio, floor and refusals."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_check import Checker
from rtpleg import RATE, RtpLeg, band_energy, band_fraction, tone
from server import Server

from bridge.web.auth import Role

TONE = 440.0


def join(server: Server, room: str, leg: RtpLeg, name: str = "", **extra: Any) -> str:
    reply = server.ok(
        "POST",
        f"/api/rooms/{room}/participants",
        {"address": {"ip": "127.0.0.1", "port": leg.port}, "name": name, **extra},
    )
    leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
    return str(reply["id"])


def talk(leg: RtpLeg, seconds: float, freq: float = TONE) -> float:
    """Send a tone in real time from ``leg``; returns when it started (monotonic)."""
    start = time.monotonic()
    leg.send_realtime(leg.frames(tone(freq, int(seconds * RATE))))
    return start


def hears_tone(listener: RtpLeg, since: float, freq: float = TONE) -> bool:
    heard = listener.heard(since)
    return heard.size > RATE // 4 and band_fraction(heard, freq) > 0.8


def documented(server: Server) -> Any:
    """``server.request`` whose every answer is checked against the OpenAPI document."""
    checker = Checker(server.get("/api/openapi.json", auth=False))

    def call(method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, reply = server.request(method, path, body, **kw)
        checker.check(method, path, status, reply)
        return status, reply

    return call


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition never held")


@pytest.mark.slow
def test_patched_rooms_hear_each_other_until_unpatched(server: Server) -> None:
    for name in ("north", "south"):
        server.ok("POST", "/api/rooms", {"name": name, "mode": "open"})
    talker, listener = RtpLeg(), RtpLeg()
    try:
        join(server, "north", talker, "talker")
        join(server, "south", listener, "listener")
        start = talk(talker, 1.0)
        assert band_energy(listener.heard(start + 0.3), TONE) < 1e3, "heard before the patch"

        patch = server.ok("POST", "/api/patches", {"rooms": ["north", "south"]})
        assert patch["names"] == ["north", "south"]
        [listed] = server.get("/api/patches")["patches"]
        assert listed["id"] == patch["id"]
        start = talk(talker, 1.2)
        assert hears_tone(listener, start + 0.3), "the patch does not carry the tone"

        server.ok("DELETE", f"/api/patches/{patch['id']}")
        assert server.get("/api/patches")["patches"] == []
        start = talk(talker, 1.0)
        assert band_energy(listener.heard(start + 0.3), TONE) < 1e3, "heard after unpatch"

        kinds = [e["event"] for e in server.get("/api/events")["events"]]
        assert kinds.count("patch_created") == 1 and kinds.count("patch_removed") == 1
        actions = [r["action"] for r in server.get("/api/audit")["records"]]
        assert actions.count("rest:patch") == 1
        assert actions.count("rest:unpatch") == 1
    finally:
        talker.close()
        listener.close()


@pytest.mark.slow
def test_one_floor_across_the_patch(server: Server) -> None:
    for name in ("ptt1", "ptt2"):
        server.ok("POST", "/api/rooms", {"name": name, "mode": "ptt"})
    a, b = RtpLeg(), RtpLeg()
    try:
        id_a = join(server, "ptt1", a, "a")
        id_b = join(server, "ptt2", b, "b")
        server.ok("POST", "/api/patches", {"rooms": ["ptt1", "ptt2"]})
        granted = server.ok(
            "POST", "/api/rooms/ptt1/floor", {"action": "request", "participant": id_a}
        )
        assert granted == {"result": "granted"}
        # A request in the other room meets the same floor: it is queued behind a.
        queued = server.ok(
            "POST", "/api/rooms/ptt2/floor", {"action": "request", "participant": id_b}
        )
        assert queued == {"result": "queued", "position": 1}
        state = server.get("/api/rooms/ptt2/floor")
        assert state["holder"] == id_a and state["queue"] == [id_b]

        start = talk(a, 1.2)
        assert hears_tone(b, start + 0.3), "the holder is not heard in the other patched room"

        server.ok("POST", "/api/rooms/ptt1/floor", {"action": "release", "participant": id_a})
        assert wait_for(lambda: server.get("/api/rooms/ptt1/floor")["holder"] == id_b)
        events = server.get("/api/events")["events"]
        granted_rooms = {e["room"] for e in events if e["event"] == "floor_granted"}
        assert len(granted_rooms) == 2, "each patched room's consoles see the one floor"
    finally:
        a.close()
        b.close()


def test_patch_refusals(server: Server) -> None:
    for name, mode in (("r1", "open"), ("r2", "open"), ("r3", "open"), ("p1", "ptt")):
        server.ok("POST", "/api/rooms", {"name": name, "mode": mode})
    call = documented(server)
    status, body = call("POST", "/api/patches", {"rooms": ["r1", "r1"]})
    assert status == 409 and body["error"] == "a room cannot be patched with itself: r1"
    call("POST", "/api/patches", {"rooms": ["r1", "r2"]})
    call("POST", "/api/patches", {"rooms": ["r2", "r3"]})
    status, body = call("POST", "/api/patches", {"rooms": ["r3", "r1"]})
    assert status == 409
    assert body["error"] == "patch would close a cycle: r3 and r1 are already patched together"
    status, body = call("POST", "/api/patches", {"rooms": ["r1", "p1"]})
    assert status == 409 and "same mode" in body["error"]
    status, body = call("POST", "/api/patches", {"rooms": ["r1", "nowhere"]})
    assert status == 404 and body["error"] == "unknown room: nowhere"
    status, body = call("POST", "/api/patches", {"rooms": ["r1"]})
    assert status == 422

    # Observers and officers may look, never patch; nobody without a token may look.
    [first, _second] = call("GET", "/api/patches")[1]["patches"]
    for role in (Role.OBSERVER, Role.OFFICER):
        status, body = call("POST", "/api/patches", {"rooms": ["r1", "p1"]}, role=role)
        assert status == 403 and "may not do this" in body["error"]
        status, _ = call("DELETE", f"/api/patches/{first['id']}", role=role)
        assert status == 403
    status, _ = call("GET", "/api/patches", role=Role.OBSERVER)
    assert status == 200
    status, _ = call("GET", "/api/patches", auth=False)
    assert status == 401
    assert len(call("GET", "/api/patches")[1]["patches"]) == 2

    # Deleting a patched room takes its patches with it.
    assert call("DELETE", "/api/rooms/r2")[0] == 200
    assert call("GET", "/api/patches")[1]["patches"] == []


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, workers=2)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_patch_across_workers_is_refused(two_workers: Server) -> None:
    server = two_workers
    rooms = [server.ok("POST", "/api/rooms", {"name": n, "mode": "open"}) for n in ("w0", "w1")]
    assert {r["worker"] for r in rooms} == {0, 1}
    status, body = server.request("POST", "/api/patches", {"rooms": ["w0", "w1"]})
    assert status == 409
    assert body["error"].endswith("; patches stay inside one worker")


@pytest.mark.slow
def test_patch_survives_a_worker_restart(server: Server) -> None:
    for name in ("east", "west"):
        server.ok("POST", "/api/rooms", {"name": name, "mode": "open"})
    talker, listener = RtpLeg(), RtpLeg()
    try:
        join(server, "east", talker)
        join(server, "west", listener)
        server.ok("POST", "/api/patches", {"rooms": ["east", "west"]})
        pid = server.get("/health")["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        server.wait_health(
            lambda h: h["workers"][0]["restarts"] == 1 and h["workers"][0]["state"] == "running"
        )
        start = talk(talker, 1.5)
        assert hears_tone(listener, start + 0.4), "the restarted worker lost the patch"
    finally:
        talker.close()
        listener.close()
