"""A dispatcher monitors several talkgroups: volume per room, priority ducking, camera audio.

Plain-RTP legs through a real server; levels are measured as band energy of what the
dispatcher's leg receives.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from rtpleg import RATE, RtpLeg, band_energy, tone
from server import Server
from test_patch import documented, join

from bridge.web.auth import Role

PRIORITY_HZ, OTHER_HZ, CAMERA_HZ = 440.0, 1230.0, 2000.0


def talk_together(seconds: float, *talkers: tuple[RtpLeg, float]) -> float:
    """All ``talkers`` send their tone at once, in real time; returns the start."""
    start = time.monotonic()
    threads = [
        threading.Thread(target=leg.send_realtime, args=(leg.frames(tone(f, int(seconds * RATE))),))
        for leg, f in talkers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return start


def level_db(heard: np.ndarray, freq: float) -> float:
    return 10 * float(np.log10(band_energy(heard, freq) + 1e-9))


@pytest.mark.slow
def test_dispatcher_volume_and_priority_ducking(server: Server) -> None:
    for name in ("priority", "other", "console"):
        server.ok("POST", "/api/rooms", {"name": name, "mode": "open"})
    a, b, dispatcher = RtpLeg(), RtpLeg(), RtpLeg()
    try:
        join(server, "priority", a, "a")
        join(server, "other", b, "b")
        leg = join(server, "console", dispatcher, "console", dispatcher=True)
        path = f"/api/rooms/console/participants/{leg}/monitor"
        answer = server.ok("PUT", path, {"rooms": {"priority": 1.0, "other": 1.0}})
        assert len(answer["monitor"]) == 2 and answer["priority_room"] is None

        # Both rooms at unity: the two tones arrive at the same level.
        start = talk_together(1.2, (a, PRIORITY_HZ), (b, OTHER_HZ))
        heard = dispatcher.heard(start + 0.4)
        assert abs(level_db(heard, PRIORITY_HZ) - level_db(heard, OTHER_HZ)) < 1.5

        # Per-talkgroup volume: the other room at half gain is 6 dB down.
        server.ok("PUT", path, {"rooms": {"priority": 1.0, "other": 0.5}})
        start = talk_together(1.2, (a, PRIORITY_HZ), (b, OTHER_HZ))
        heard = dispatcher.heard(start + 0.4)
        assert level_db(heard, PRIORITY_HZ) - level_db(heard, OTHER_HZ) == pytest.approx(6, abs=1.5)

        # Priority: while the priority room is live the other drops by 20 dB more.
        server.ok(
            "PUT",
            path,
            {"rooms": {"priority": 1.0, "other": 1.0}, "priority_room": "priority", "duck_db": 20},
        )
        start = talk_together(1.2, (b, OTHER_HZ))
        alone = level_db(dispatcher.heard(start + 0.4), OTHER_HZ)
        start = talk_together(1.2, (a, PRIORITY_HZ), (b, OTHER_HZ))
        ducked = level_db(dispatcher.heard(start + 0.4), OTHER_HZ)
        assert alone - ducked == pytest.approx(20, abs=2.5)
        kinds = [e["event"] for e in server.get("/api/events")["events"]]
        assert kinds.count("monitor_updated") == 3
    finally:
        for leg_ in (a, b, dispatcher):
            leg_.close()


@pytest.mark.slow
def test_camera_audio_reaches_dispatchers_only(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "scene", "mode": "ptt"})
    server.ok("POST", "/api/rooms", {"name": "plaza", "mode": "open", "monitor_to_mix": True})
    camera, dispatcher, officer = RtpLeg(), RtpLeg(), RtpLeg()
    camera2, listener = RtpLeg(), RtpLeg()
    try:
        cam = join(server, "scene", camera, "cam", kind="camera", monitor_only=True)
        join(server, "scene", dispatcher, "console", dispatcher=True)
        join(server, "scene", officer, "officer")
        join(server, "plaza", camera2, "cam2", kind="camera", monitor_only=True)
        join(server, "plaza", listener, "listener")
        room = server.get("/api/rooms/scene")
        assert {p["id"]: p["monitor_only"] for p in room["participants"]}[cam] is True
        assert server.get("/api/rooms/plaza")["monitor_to_mix"] is True

        # A monitor-only source never requests the floor.
        status, body = server.request(
            "POST", "/api/rooms/scene/floor", {"action": "request", "participant": cam}
        )
        assert status == 400 and "monitor-only" in body["error"]

        start = talk_together(1.2, (camera, CAMERA_HZ), (camera2, CAMERA_HZ))
        assert band_energy(dispatcher.heard(start + 0.4), CAMERA_HZ) > 1e6
        # The ptt room's floor is idle: an officer is sent nothing at all.
        assert officer.heard(start + 0.4).size == 0
        # monitor_to_mix puts an open room's camera into everyone's mix.
        assert band_energy(listener.heard(start + 0.4), CAMERA_HZ) > 1e6
    finally:
        for leg in (camera, dispatcher, officer, camera2, listener):
            leg.close()


def test_monitor_refusals(server: Server) -> None:
    m1 = server.ok("POST", "/api/rooms", {"name": "m1", "mode": "open"})["id"]
    m2 = server.ok("POST", "/api/rooms", {"name": "m2", "mode": "open"})["id"]
    call = documented(server)
    plain, console = RtpLeg(), RtpLeg()
    try:
        officer = join(server, "m1", plain, "officer")
        leg = join(server, "m1", console, "console", dispatcher=True)
        status, body = call(
            "PUT", f"/api/rooms/m1/participants/{officer}/monitor", {"rooms": {"m2": 1.0}}
        )
        assert status == 409 and body["error"] == f"participant is not a dispatcher leg: {officer}"
        path = f"/api/rooms/m1/participants/{leg}/monitor"
        status, body = call("PUT", path, {"rooms": {"m2": 0.5}, "priority_room": "m1"})
        assert status == 200 and body["monitor"] == {m2: 0.5} and body["priority_room"] == m1
        status, body = call("PUT", path, {"rooms": {"m2": 1.0}, "priority_room": "m9"})
        assert status == 404 and body["error"] == "unknown room: m9"
        status, body = call("PUT", path, {"rooms": {"m2": 9.0}})
        assert status == 422 and body["error"] == "rooms.m2: gain must be between 0 and 8"
        status, body = call("PUT", path, {"rooms": {"m2": 1.0}}, role=Role.OBSERVER)
        assert status == 403
        status, body = call("GET", path, role=Role.OBSERVER)
        assert status == 200 and body["monitor"] == {m2: 0.5} and body["duck_db"] == 12.0
    finally:
        plain.close()
        console.close()
