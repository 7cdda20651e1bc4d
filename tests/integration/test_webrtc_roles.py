"""Who may do what over WebRTC signalling: the roles of the REST twins hold on socket.io."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from console_harness import console
from server import Server

from bridge.web.auth import Role

#: Any SDP: the role is checked before the offer goes to the gateway.
SDP = "v=0\r\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("webrtc-roles"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_an_officer_may_not_watch_a_camera_over_webrtc(srv: Server) -> None:
    room = srv.ok("POST", "/api/rooms", {"name": "tac-cam", "mode": "open"})["id"]
    offer = {"room": room, "sdp": SDP, "session": "s1", "video_sources": ["camera:gate"]}
    async with console(srv.base, srv.token(Role.OFFICER, "officer-1")) as officer:
        answer = await officer.call("webrtc_offer", {**offer, "type": "offer"})
    assert answer == {
        "ok": False,
        "status": 403,
        "error": "role officer may not watch camera:gate (needs dispatcher, observer)",
    }
    # A dispatcher's offer passes the role check and reaches the (disabled) gateway.
    async with console(srv.base, srv.token(Role.DISPATCHER, "disp-1")) as dispatcher:
        answer = await dispatcher.call("webrtc_offer", {**offer, "type": "offer"})
    assert answer["ok"] is False and answer["status"] != 403
