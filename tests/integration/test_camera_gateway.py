"""The camera gateway against a real RTSP camera (GStreamer's RTSP server, H.264 + PCMU).

``ucbridge serve`` runs the camera gateway in a process of its own; the tests watch its
video bus as the WebRTC gateway does, and reach everything else over REST.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from camera_viewer import BusViewer
from rtpleg import RATE, RtpLeg, band_energy, tone
from rtsp_camera import RtspCamera, available
from server import Server, free_port

from bridge.web.auth import Role

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="GStreamer RTSP server (Debian) is missing"),
]

CAMERA = "gate"
SOURCE = f"camera:{CAMERA}"
PASSWORD = "s3cret-Pa55"
TONE_HZ = 1000.0
HANDSET_HZ = 440.0


def camera_toml(url: str, rooms: tuple[str, ...] = ()) -> str:
    room_list = ", ".join(f'"{r}"' for r in rooms)
    return (
        "[gateways.camera]\nenabled = true\nlinger_s = 0.5\nreconnect_min_s = 0.5\n"
        "reconnect_max_s = 2.0\nread_timeout_s = 2.0\nopen_timeout_s = 3.0\n"
        "[[gateways.camera.cameras]]\n"
        f'name = "{CAMERA}"\nurl = "{url}"\nusername = "admin"\npassword = "{PASSWORD}"\n'
        f"lat = 48.137\nlon = 11.575\nheading = 135.0\nrooms = [{room_list}]\n"
    )


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspCamera]:
    camera = RtspCamera(free_port(), tone=TONE_HZ, log=tmp_path / "rtsp.log")
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()


def start_server(tmp_path: Path, rtsp: RtspCamera, rooms: tuple[str, ...] = ()) -> Server:
    rooms_toml = "".join(f'[[rooms]]\nname = "{r}"\nmode = "ptt"\n' for r in rooms)
    srv = Server(
        tmp_path, gateways=("camera",), extra_toml=camera_toml(rtsp.url(), rooms) + rooms_toml
    )
    srv.start()
    # The gateway answers once its video bus is up.
    assert [c["name"] for c in srv.get("/api/cameras")["cameras"]] == [CAMERA]
    return srv


@pytest.fixture
def camera_server(tmp_path: Path, rtsp: RtspCamera) -> Iterator[Server]:
    srv = start_server(tmp_path, rtsp)
    try:
        yield srv
    finally:
        srv.stop()


def bus_path(srv: Server) -> Path:
    return srv.tmp / "run" / "video.sock"


def wait_event(srv: Server, name: str, after: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in srv.get(f"/api/events?after={after}")["events"]:
            if event["event"] == name and event.get("camera") == CAMERA:
                return dict(event)
        time.sleep(0.05)
    raise TimeoutError(f"no {name} event")


def last_seq(srv: Server) -> int:
    events = srv.get("/api/events")["events"]
    return int(events[-1]["seq"]) if events else 0


def wait_state(srv: Server, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    camera: dict[str, Any] = {}
    while time.monotonic() < deadline:
        camera = srv.get(f"/api/cameras/{CAMERA}")
        if camera["state"] == state:
            return camera
        time.sleep(0.05)
    raise TimeoutError(f"camera stayed {camera.get('state')}, never {state}")


def test_h264_is_forwarded_without_transcoding(camera_server: Server) -> None:
    srv = camera_server
    listed = srv.get("/api/cameras")["cameras"]
    assert listed[0]["state"] == "idle", "a camera nobody watches is not pulled"
    assert listed[0]["has_credentials"] is True
    assert PASSWORD not in json.dumps(listed) and "admin" not in listed[0]["url"]

    mark = last_seq(srv)
    viewer = BusViewer(bus_path(srv), SOURCE)
    try:
        frames = viewer.wait_frames(75)
        camera = srv.get(f"/api/cameras/{CAMERA}")
    finally:
        viewer.close()
    assert frames[0].frame.keyframe, "a viewer starts at a keyframe"
    assert all(r.frame.codec == "H264" for r in frames)
    assert sum(r.frame.keyframe for r in frames) >= 2
    pts = [r.frame.pts for r in frames]
    assert pts == sorted(pts)
    assert camera["frames_transcoded"] == 0
    assert camera["frames_forwarded"] >= 75
    assert camera["transcoding"] is False
    assert (camera["codec"], camera["width"], camera["height"]) == ("h264", 320, 240)
    online = wait_event(srv, "camera_online", mark)
    assert online["transcoding"] is False

    status, jpeg = srv.request("GET", f"/api/cameras/{CAMERA}/snapshot.jpg", role=Role.OBSERVER)
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    picture = next(av.open(io.BytesIO(jpeg)).decode(video=0))
    assert (picture.width, picture.height) == (320, 240)

    # The last viewer left: the pull stops after linger_s.
    wait_state(srv, "idle")
    assert PASSWORD not in srv.log.read_text()
    assert PASSWORD not in json.dumps(srv.get("/api/events")["events"])


def test_late_viewer_starts_at_once(camera_server: Server) -> None:
    srv = camera_server
    first = BusViewer(bus_path(srv), SOURCE)
    try:
        first.wait_frames(40)
        start = time.monotonic()
        late = BusViewer(bus_path(srv), SOURCE)
        try:
            frames = late.wait_frames(1, timeout=5)
            waited = time.monotonic() - start
        finally:
            late.close()
    finally:
        first.close()
    assert frames[0].frame.keyframe
    # The GOP cache answers at once, not at the camera's next IDR (up to 1 s away).
    assert waited < 0.5, f"late viewer waited {waited:.3f} s"


def test_views_are_audited(camera_server: Server) -> None:
    srv = camera_server
    view = srv.ok("POST", f"/api/cameras/{CAMERA}/views")
    assert view["source"] == SOURCE
    status, _ = srv.request(
        "DELETE",
        f"/api/cameras/{CAMERA}/views/{view['view']}",
        token=srv.token(Role.DISPATCHER, user="someone-else"),
    )
    assert status == 403, "another user's view"
    ended = srv.ok("DELETE", f"/api/cameras/{CAMERA}/views/{view['view']}")
    assert ended["seconds"] >= 0
    records = srv.get("/api/audit?action=camera_view")["records"]
    assert len(records) == 1
    record = records[0]
    assert record["camera"] == CAMERA
    assert record["user"] and record["role"] == "dispatcher"
    assert record["detail"]["from"] == view["from"]
    assert record["detail"]["to"] == ended["to"]
    starts = srv.get("/api/audit?action=rest:camera_view_start")["records"]
    assert [r["camera"] for r in starts] == [CAMERA]
    status, _ = srv.request("DELETE", f"/api/cameras/{CAMERA}/views/{view['view']}")
    assert status == 404


def test_cameras_added_over_rest_are_on_the_map(camera_server: Server, rtsp: RtspCamera) -> None:
    srv = camera_server
    url = rtsp.url().replace("rtsp://", "rtsp://viewer:" + PASSWORD + "@")
    body = {"name": "dock", "url": url, "lat": 48.2, "lon": 11.6, "heading": 270, "fov": 90}
    status, _ = srv.request("POST", "/api/cameras", body, role=Role.OBSERVER)
    assert status == 403
    added = srv.ok("POST", "/api/cameras", body)
    assert added["url"] == rtsp.url() and added["has_credentials"]
    assert PASSWORD not in json.dumps(added)
    status, reply = srv.request("POST", "/api/cameras", body)
    assert (status, reply["error"]) == (409, "camera already exists: dock")
    status, reply = srv.request("POST", "/api/cameras", {**body, "name": "x", "heading": 400})
    assert status == 422 and reply["error"].startswith("bad camera key heading:")
    # password_env names a variable of the gateway's environment: config file only.
    stolen = {"name": "y", "url": rtsp.url(), "username": "u", "password_env": "HOME"}
    status, reply = srv.request("POST", "/api/cameras", stolen)
    assert (status, reply["error"]) == (422, "password_env may be set in the config file only")

    deadline = time.monotonic() + 10
    units: dict[str, Any] = {}
    while time.monotonic() < deadline and not {"camera:dock", "camera:gate"} <= set(units):
        units = {f["id"]: f for f in srv.get("/api/presence")["features"]}
        time.sleep(0.05)
    assert units["camera:dock"]["properties"]["heading"] == 270
    assert units["camera:dock"]["properties"]["kind"] == "camera"
    assert units["camera:gate"]["geometry"]["coordinates"] == [11.575, 48.137]

    audit = json.dumps(srv.get("/api/audit?action=rest:camera_add")["records"])
    assert "camera_add" in audit and PASSWORD not in audit

    srv.ok("DELETE", "/api/cameras/dock")
    units = {f["id"]: f for f in srv.get("/api/presence")["features"]}
    assert "camera:dock" not in units
    assert [c["name"] for c in srv.get("/api/cameras")["cameras"]] == [CAMERA]


def join_leg(srv: Server, room: str, leg: RtpLeg, name: str, **extra: Any) -> str:
    reply = srv.ok(
        "POST",
        f"/api/rooms/{room}/participants",
        {"address": {"ip": "127.0.0.1", "port": leg.port}, "name": name, **extra},
    )
    leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
    return str(reply["id"])


def test_camera_audio_reaches_dispatchers_not_ptt_handsets(
    tmp_path: Path, rtsp: RtspCamera
) -> None:
    srv = start_server(tmp_path, rtsp, rooms=("tg1",))
    legs = {n: RtpLeg() for n in ("dispatcher", "talker", "handset")}
    viewer = None
    try:
        ids = {
            "dispatcher": join_leg(srv, "tg1", legs["dispatcher"], "dispatcher", dispatcher=True),
            "talker": join_leg(srv, "tg1", legs["talker"], "talker"),
            "handset": join_leg(srv, "tg1", legs["handset"], "handset"),
        }
        viewer = BusViewer(bus_path(srv), SOURCE)  # someone watches: the camera is pulled
        viewer.wait_frames(10)
        deadline = time.monotonic() + 10
        camera: dict[str, Any] = {}
        while time.monotonic() < deadline and not camera.get("audio_legs"):
            camera = srv.get(f"/api/cameras/{CAMERA}")
            time.sleep(0.05)
        assert [leg["room"] for leg in camera["audio_legs"]] == ["tg1"]
        room = srv.get("/api/rooms/tg1")
        cam_legs = [p for p in room["participants"] if p["kind"] == "camera"]
        assert len(cam_legs) == 1 and cam_legs[0]["monitor_only"] is True

        # A handset holds the floor and talks, so the room's handsets do hear something.
        floor = srv.ok(
            "POST", "/api/rooms/tg1/floor", {"action": "request", "participant": ids["talker"]}
        )
        assert floor["result"] == "granted"
        since = time.monotonic()
        talker = threading.Thread(
            target=legs["talker"].send_realtime,
            args=(legs["talker"].frames(tone(HANDSET_HZ, 3 * RATE)),),
        )
        talker.start()
        talker.join(10)
        time.sleep(0.3)  # the last frames' transit through the mix
        heard = {n: legs[n].heard(since) for n in ("dispatcher", "handset")}
    finally:
        if viewer is not None:
            viewer.close()
        for leg in legs.values():
            leg.close()
        srv.stop()
    dispatcher, handset = heard["dispatcher"], heard["handset"]
    assert len(dispatcher) > RATE and len(handset) > RATE
    ref = band_energy(tone(TONE_HZ, len(dispatcher)), TONE_HZ)
    assert band_energy(dispatcher, TONE_HZ) > 0.02 * ref, "the dispatcher hears the camera"
    assert band_energy(handset, HANDSET_HZ) > 0.02 * ref, "the handset hears the talker"
    assert band_energy(handset, TONE_HZ) < 0.01 * band_energy(handset, HANDSET_HZ), (
        "a ptt handset must not hear the camera"
    )
    assert np.any(handset != 0)


def test_camera_drop_and_recovery(camera_server: Server, rtsp: RtspCamera) -> None:
    srv = camera_server
    viewer = BusViewer(bus_path(srv), SOURCE)
    try:
        viewer.wait_frames(25)
        mark = last_seq(srv)
        rtsp.stop()
        offline = wait_event(srv, "camera_offline", mark)
        assert PASSWORD not in json.dumps(offline)
        assert wait_state(srv, "offline")["last_error"]
        count = len(viewer.frames)
        rtsp.start()
        online = wait_event(srv, "camera_online", offline["seq"], timeout=30)
        assert online["recovered"] is True
        frames = viewer.wait_frames(count + 25, timeout=20)
    finally:
        viewer.close()
    resumed = frames[count:]
    assert resumed[0].frame.keyframe, "viewing resumes at a keyframe"
    camera = srv.get(f"/api/cameras/{CAMERA}")
    assert camera["state"] == "online" and camera["outages"] == 1
    assert camera["frames_transcoded"] == 0


def test_rest_cameras_survive_a_camera_gateway_restart(
    camera_server: Server, rtsp: RtspCamera
) -> None:
    srv = camera_server
    url = rtsp.url().replace("rtsp://", "rtsp://viewer:" + PASSWORD + "@")
    srv.ok("POST", "/api/cameras", {"name": "dock", "url": url, "lat": 48.2, "lon": 11.6})
    (before,) = [g for g in srv.get("/health")["gateways"] if g["name"] == "camera"]
    os.kill(before["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 30
    names: list[str] = []
    gateway: dict[str, Any] = before
    while time.monotonic() < deadline:
        (gateway,) = [g for g in srv.get("/health")["gateways"] if g["name"] == "camera"]
        if gateway["state"] == "running" and gateway["pid"] != before["pid"]:
            status, reply = srv.request("GET", "/api/cameras")
            names = sorted(c["name"] for c in reply["cameras"]) if status == 200 else []
            if names == ["dock", CAMERA]:
                break
        time.sleep(0.1)
    assert gateway["restarts"] == before["restarts"] + 1, gateway
    assert names == ["dock", CAMERA], "the REST camera is back after the restart"
    dock = srv.get("/api/cameras/dock")
    assert dock["has_credentials"] is True and PASSWORD not in json.dumps(dock)
    # It is a working camera again: a viewer gets its frames.
    viewer = BusViewer(bus_path(srv), "camera:dock")
    try:
        assert viewer.wait_frames(5)[0].frame.keyframe
    finally:
        viewer.close()
    # Removed over REST, it stays removed.
    srv.ok("DELETE", "/api/cameras/dock")
    assert [c["name"] for c in srv.get("/api/cameras")["cameras"]] == [CAMERA]
    assert PASSWORD not in srv.log.read_text()
