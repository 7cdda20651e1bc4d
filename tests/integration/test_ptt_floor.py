"""A ptt room over REST with plain-RTP legs: only the floor holder is heard."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from rtpleg import RATE, RtpLeg, band_energy, band_fraction, tone
from server import Server

FREQS = {"a": 440.0, "b": 770.0, "c": 1230.0}


def join(server: Server, leg: RtpLeg, name: str, **extra: Any) -> str:
    reply = server.ok(
        "POST",
        "/api/rooms/tg1/participants",
        {"address": {"ip": "127.0.0.1", "port": leg.port}, "name": name, **extra},
    )
    leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
    return str(reply["id"])


def floor(server: Server, **body: Any) -> Any:
    return server.ok("POST", "/api/rooms/tg1/floor", body)


def talk(legs: dict[str, RtpLeg], names: list[str], seconds: float) -> float:
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=legs[n].send_realtime,
            args=(legs[n].frames(tone(FREQS[n], int(seconds * RATE))),),
        )
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return start


def events_since(server: Server, after: int) -> list[dict[str, Any]]:
    return list(server.get(f"/api/events?after={after}")["events"])


@pytest.mark.slow
def test_only_the_holder_is_heard_and_the_queue_moves_on_release(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tg1", "mode": "ptt", "floor": {"t1": 1.0}})
    legs = {n: RtpLeg() for n in FREQS}
    try:
        ids = {n: join(server, legs[n], n, priority=10 if n == "b" else 5) for n in legs}
        mark = server.get("/api/events")["events"][-1]["seq"]
        assert floor(server, action="request", participant=ids["a"]) == {"result": "granted"}
        # b asks while a holds: a higher ordinary priority queues, it does not cut a off.
        assert floor(server, action="request", participant=ids["b"]) == {
            "result": "queued",
            "position": 1,
        }
        assert floor(server, action="request", participant=ids["c"]) == {
            "result": "queued",
            "position": 2,
        }

        start = talk(legs, ["a", "c"], 1.5)  # c talks out of turn: nobody may hear it
        for name in ("b", "c"):
            heard = legs[name].heard(start + 0.3)
            assert band_fraction(heard, FREQS["a"]) > 0.8, f"{name} does not hear the holder"
        heard_b = legs["b"].heard(start + 0.3)
        assert band_energy(heard_b, FREQS["c"]) < 1e-3 * band_energy(heard_b, FREQS["a"])
        assert legs["a"].heard(start + 0.3).size == 0, "the holder is sent its own room"

        released_at = time.monotonic()
        state = floor(server, action="release", participant=ids["a"])
        assert state["holder"] == ids["b"] and state["queue"] == [ids["c"]]
        assert time.monotonic() - released_at < 0.5

        # b never talks: T1 (1 s here) hands the floor to the next in the queue.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            state = server.get("/api/rooms/tg1/floor")
            if state["holder"] == ids["c"]:
                break
            time.sleep(0.05)
        assert state["holder"] == ids["c"]
        kinds = [e["event"] for e in events_since(server, mark)]
        assert kinds.count("floor_granted") == 3
        assert "floor_released" in kinds
    finally:
        for leg in legs.values():
            leg.close()


def test_emergency_pre_empts_and_raises_an_alert_dispatchers_clear(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tg1", "mode": "ptt", "floor": {"t3": 0.2}})
    legs = {n: RtpLeg() for n in ("a", "b")}
    try:
        ids = {n: join(server, legs[n], n) for n in legs}
        mark = server.get("/api/events")["events"][-1]["seq"]
        assert floor(server, action="request", participant=ids["a"])["result"] == "granted"
        outcome = floor(server, action="request", participant=ids["b"], call_type="emergency")
        assert outcome["result"] in ("granted", "queued")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if server.get("/api/rooms/tg1/floor")["holder"] == ids["b"]:
                break
            time.sleep(0.05)
        assert server.get("/api/rooms/tg1/floor")["holder"] == ids["b"]
        events = events_since(server, mark)
        revoked = [e for e in events if e["event"] == "floor_revoked"]
        assert revoked and revoked[0]["participant"] == ids["a"] and revoked[0]["cause"] == 4

        [alert] = server.get("/api/alerts")["alerts"]
        assert alert["participant"] == ids["b"] and alert["state"] == "active"
        acked = server.ok("POST", f"/api/alerts/{alert['id']}/acknowledge")
        assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "tester"
        cleared = server.ok("POST", f"/api/alerts/{alert['id']}/clear")
        assert cleared["state"] == "cleared"
        status, body = server.request("POST", f"/api/alerts/{alert['id']}/clear")
        assert status == 409 and body["error"].startswith("alert is already cleared")
    finally:
        for leg in legs.values():
            leg.close()


def test_floor_actions_in_an_open_room_are_refused(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "conf", "mode": "open"})
    status, body = server.request("GET", "/api/rooms/conf/floor")
    assert (status, body) == (409, {"error": "room has no floor control (mode open): conf"})


@pytest.mark.slow
def test_a_recorded_ptt_room_indexes_bursts_from_floor_grant_to_release(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tg1", "mode": "ptt", "record": True})
    legs = {n: RtpLeg() for n in ("a", "b")}
    try:
        ids = {n: join(server, legs[n], n) for n in legs}
        assert floor(server, action="request", participant=ids["a"]) == {"result": "granted"}
        talk(legs, ["a"], 1.0)
        floor(server, action="release", participant=ids["a"])
        server.ok("POST", "/api/rooms/tg1/recording", {"recording": False})
        deadline = time.monotonic() + 10
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not lines:
            items = server.get("/api/recordings")["recordings"]
            if items and items[0]["has_bursts"]:
                status, body = server.request("GET", f"/api/recordings/{items[0]['id']}/bursts")
                assert status == 200
                lines = [json.loads(line) for line in body.decode().splitlines()]
            time.sleep(0.1)
        assert [(b["participant"], b["alias"], b["call_type"]) for b in lines] == [
            (ids["a"], "a", "normal")
        ]
        assert 0.9 < lines[0]["end_offset_s"] - lines[0]["start_offset_s"] < 2.0
    finally:
        for leg in legs.values():
            leg.close()


def test_a_vouched_dispatcher_priority_queues_ahead_without_cutting_off(server: Server) -> None:
    """The control process vouches for a dispatcher's priority (above an officer's)."""
    server.ok("POST", "/api/rooms", {"name": "tg1", "mode": "ptt"})
    legs = {n: RtpLeg() for n in ("officer1", "officer2", "dispatcher")}
    try:
        ids = {n: join(server, legs[n], n, priority=100) for n in legs}
        assert floor(server, action="request", participant=ids["officer1"])["result"] == "granted"
        assert floor(server, action="request", participant=ids["officer2"], priority=100) == {
            "result": "queued",
            "position": 1,
        }
        assert floor(server, action="request", participant=ids["dispatcher"], priority=200) == {
            "result": "queued",
            "position": 1,
        }
        state = server.get("/api/rooms/tg1/floor")
        assert state["holder"] == ids["officer1"]
        assert state["queue"] == [ids["dispatcher"], ids["officer2"]]
    finally:
        for leg in legs.values():
            leg.close()


def test_metrics_count_floor_grants_queued_requests_and_denies(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tg1", "mode": "ptt", "floor": {"max_queue_size": 1}})
    legs = [RtpLeg() for _ in range(3)]
    try:
        ids = [join(server, leg, f"u{i}") for i, leg in enumerate(legs)]
        assert floor(server, action="request", participant=ids[0]) == {"result": "granted"}
        assert floor(server, action="request", participant=ids[1])["result"] == "queued"
        assert floor(server, action="request", participant=ids[2])["result"] == "denied"
        status, body = server.request("GET", "/metrics")
        assert status == 200
        text = body.decode()
        assert 'ucbridge_floor_events_total{outcome="grants"} 1.0' in text
        assert 'ucbridge_floor_events_total{outcome="queued"} 1.0' in text
        assert 'ucbridge_floor_events_total{outcome="denies"} 1.0' in text
        assert "ucbridge_socketio_clients 0.0" in text
    finally:
        for leg in legs:
            leg.close()
