"""A camera tile in the console: real headless Chromium, a real RTSP camera, a real ``serve``.

GStreamer's RTSP server streams H.264 + PCMU; ``ucbridge serve`` runs the camera gateway
and the WebRTC gateway in processes of their own. A dispatcher holds the floor of a ``ptt``
talkgroup and opens the camera's tile: the browser decodes the camera's frames (getStats
``framesDecoded``), the camera gateway transcodes nothing, the WebRTC gateway counts the
frames it forwarded for ``camera:<name>``, and the dispatcher keeps the floor while its
console renegotiates (the new peer connection takes over the audio leg). The RTSP server is
then stopped and restarted: the tile shows offline, then online, and frames are decoded
again without a page reload. Closing the tile puts the view in the audit log. Screenshots
go to ``artifacts/camera-console/``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_harness import artifacts_dir, chromium_unavailable
from rtsp_camera import RtspCamera, available
from server import Server, free_port
from test_camera_gateway import CAMERA, SOURCE, camera_toml
from test_webrtc_console import MIC_HZ, WEBRTC_TOML, console, write_tone_wav

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="GStreamer RTSP server (Debian) is missing"),
    pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable())),
]

ROOM = "tg-cam"
USER = "disp-cam"
WAIT_S = 20.0
#: The camera gateway's back-off tops out at 2 s (camera_toml): it is back well within this.
RECOVERY_S = 30.0


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[RtspCamera]:
    camera = RtspCamera(free_port(), log=tmp_path / "rtsp.log")
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()


@pytest.fixture
def server(tmp_path: Path, rtsp: RtspCamera) -> Iterator[Server]:
    rooms = f'[[rooms]]\nname = "{ROOM}"\nmode = "ptt"\n'
    srv = Server(
        tmp_path,
        gateways=("camera", "webrtc"),
        extra_toml=WEBRTC_TOML + camera_toml(rtsp.url()) + rooms,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def rest(srv: Server, method: str, path: str) -> Any:
    status, reply = await asyncio.to_thread(srv.request, method, path)
    assert status < 300, f"{method} {path}: {status} {reply}"
    return reply


async def frames_decoded(page: Any) -> int:
    stats = await page.evaluate("window.ucb.webrtc.stats()")
    return max((v["framesDecoded"] for v in stats.get("inboundVideo", [])), default=0)


async def wait_decoded(page: Any, more_than: int, timeout: float = WAIT_S) -> int:
    deadline = time.monotonic() + timeout
    decoded = await frames_decoded(page)
    while decoded <= more_than:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the browser decoded {decoded} frames, not more than {more_than}")
        await asyncio.sleep(0.2)
        decoded = await frames_decoded(page)
    return decoded


async def tile_state(page: Any, state: str) -> None:
    await page.wait_for_selector(
        f'figure.camera-tile[data-camera="{CAMERA}"] [data-state="{state}"]',
        timeout=RECOVERY_S * 1000,
    )


async def own_leg(srv: Server, room: str) -> list[str]:
    info = await rest(srv, "GET", f"/api/rooms/{room}")
    return [p["id"] for p in info["participants"] if p["name"] == USER]


async def test_camera_tile_decodes_keeps_the_floor_and_survives_a_camera_restart(
    server: Server, rtsp: RtspCamera, tmp_path: Path
) -> None:
    srv = server
    shots = artifacts_dir("camera-console")
    wav = tmp_path / "mic.wav"
    write_tone_wav(wav, MIC_HZ)
    room = str((await rest(srv, "GET", f"/api/rooms/{ROOM}"))["id"])
    async with console(srv, tmp_path, USER, room, wav) as page:
        # The dispatcher holds the floor.
        await page.keyboard.down("Space")
        await page.wait_for_function("window.ucb.ptt.outcome === 'granted'")
        legs = await own_leg(srv, room)
        assert len(legs) == 1, legs
        floor = await rest(srv, "GET", f"/api/rooms/{room}/floor")
        assert floor["holder"] == legs[0], floor
        mark = int((await rest(srv, "GET", "/api/events"))["events"][-1]["seq"])

        # It clicks the camera's view cone on the map: a tile, a view, and a new peer
        # connection with the camera's video.
        await page.click(f'path.camera-cone[data-camera="{CAMERA}"]', timeout=WAIT_S * 1000)
        await page.wait_for_selector(f'figure.camera-tile[data-camera="{CAMERA}"] video')
        decoded = await wait_decoded(page, 10)
        await page.screenshot(path=str(shots / "1-camera-tile.png"))

        # The floor stayed with the same leg: it never left the room.
        assert await own_leg(srv, room) == legs
        floor = await rest(srv, "GET", f"/api/rooms/{room}/floor")
        assert floor["holder"] == legs[0], floor
        events = (await rest(srv, "GET", f"/api/events?after={mark}"))["events"]
        gone = [e for e in events if e.get("participant") == legs[0]]
        assert not [e for e in gone if e["event"] in ("left", "floor_idle", "floor_released")]
        assert await page.evaluate("window.ucb.ptt.outcome") == "granted"

        starts = (await rest(srv, "GET", "/api/audit?action=rest:camera_view_start"))["records"]
        assert [(r["user"], r["camera"]) for r in starts] == [(USER, CAMERA)]

        # Forwarded without transcoding, end to end.
        camera = await rest(srv, "GET", f"/api/cameras/{CAMERA}")
        assert camera["frames_transcoded"] == 0 and camera["transcoding"] is False
        assert camera["frames_forwarded"] > 0
        stats = await rest(srv, "GET", "/api/webrtc/stats")
        counters = {s["source"]: s for s in stats["sources"]}[SOURCE]
        assert counters["forwarded"] > 0 and counters["transcoded"] == 0, counters
        assert counters["transcoding_to"] == []
        views = [v for s in stats["sessions"] if s["user"] == USER for v in s["viewing"]]
        assert views == [SOURCE]
        await page.keyboard.up("Space")

        # The camera goes away: the tile says so.
        rtsp.stop()
        await tile_state(page, "offline")
        await page.screenshot(path=str(shots / "2-camera-offline.png"))
        stalled = await frames_decoded(page)
        assert stalled >= decoded

        # It comes back: online again, and the same page decodes new frames.
        rtsp.start()
        await tile_state(page, "online")
        resumed = await wait_decoded(page, stalled + 10, timeout=RECOVERY_S)
        await page.screenshot(path=str(shots / "3-camera-online-again.png"))
        assert resumed > stalled
        camera = await rest(srv, "GET", f"/api/cameras/{CAMERA}")
        assert camera["outages"] == 1 and camera["frames_transcoded"] == 0

        # Closing the tile ends the view: one audit record, who and from when to when.
        await page.evaluate(f"window.ucb.cameras.close({CAMERA!r})")
        deadline = time.monotonic() + WAIT_S
        records: list[dict[str, Any]] = []
        while not records and time.monotonic() < deadline:
            records = (await rest(srv, "GET", "/api/audit?action=camera_view"))["records"]
            await asyncio.sleep(0.1)
    assert len(records) == 1, records
    record = records[0]
    assert (record["user"], record["camera"]) == (USER, CAMERA)
    assert record["detail"]["seconds"] > 0 and record["detail"]["ended_by"] == "viewer"
