"""The SIP gateway against SIPp: bad SDP, unknown rooms, CANCEL while ringing (both ways),
BYE glare, SIP INFO DTMF, dial-out over socket.io, an INVITE flood from one source, and
upstream registration with a digest challenge and a retry."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_harness import console
from server import Server
from sip_peers import sip_toml, wait_sip
from sip_scenarios import (
    GOOD_SDP,
    MALFORMED_SDP,
    UNSUPPORTED_SDP,
    Sipp,
    bye_glare_uac,
    cancelled_uas,
    cancelling_uac,
    info_dtmf_uac,
    registrar_uas,
    rejected_invite,
)
from test_sip_baresip import last_seq, wait_event

from bridge.web.auth import Role

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="needs sip-tester"),
]


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    toml, port = sip_toml(extra="invite_rate = 2.0\ninvite_burst = 3\n")
    server = Server(tmp_path, extra_toml=toml, gateways=("sip",))
    server.start()
    wait_sip(port)
    server.ok("POST", "/api/rooms", {"name": "room"})
    server.ok("POST", "/api/rooms", {"name": "radio", "mode": "ptt"})
    try:
        yield server, port
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("sdp", "status"),
    [(UNSUPPORTED_SDP, 488), (MALFORMED_SDP, 488)],
    ids=["unsupported-codec", "malformed"],
)
def test_bad_sdp_is_answered_488(
    sip_server: tuple[Server, int], tmp_path: Path, sdp: str, status: int
) -> None:
    server, port = sip_server
    sipp = Sipp(tmp_path, "badsdp", rejected_invite(sdp, status))
    sipp.start(f"127.0.0.1:{port}", service="room")
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()
    assert server.get("/api/rooms/room")["participants"] == []


def test_unknown_room_is_answered_404(sip_server: tuple[Server, int], tmp_path: Path) -> None:
    _, port = sip_server
    sipp = Sipp(tmp_path, "unknown", rejected_invite(GOOD_SDP, 404))
    sipp.start(f"127.0.0.1:{port}", service="nosuchroom")
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()


def test_cancel_while_ringing_ends_the_dial_out_as_failed(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, _ = sip_server
    sipp = Sipp(tmp_path, "cancel", cancelled_uas())
    sipp.start()
    after = last_seq(server)
    call = server.ok("POST", "/api/rooms/room/calls", {"uri": f"sip:x@127.0.0.1:{sipp.port}"})
    wait_event(server, lambda e: e["event"] == "call_state" and e["state"] == "ringing",
               after=after)  # fmt: skip
    status, _ = server.request("DELETE", f"/api/rooms/room/calls/{call['id']}")
    assert status == 204
    failed = wait_event(
        server,
        lambda e: e["event"] == "call_state" and e["state"] in ("failed", "ended"),
        after=after,
    )
    assert failed["state"] == "failed" and failed["code"] == 487
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()
    assert server.get("/api/rooms/room")["participants"] == []


def test_bye_glare_both_sides_clean_up(sip_server: tuple[Server, int], tmp_path: Path) -> None:
    server, port = sip_server
    sipp = Sipp(tmp_path, "glare", bye_glare_uac())
    after = last_seq(server)
    sipp.start(f"127.0.0.1:{port}", service="room")
    answered = wait_event(
        server, lambda e: e["event"] == "call_state" and e["state"] == "answered", after=after
    )
    status, _ = server.request("DELETE", f"/api/rooms/room/calls/{answered['call']}")
    assert status == 204
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()
    wait_event(server, lambda e: e["event"] == "call_state" and e["state"] == "ended",
               after=after)  # fmt: skip
    wait_event(server, lambda e: e["event"] == "left", after=after)
    assert server.get("/api/rooms/room")["participants"] == []
    assert server.get("/api/rooms/room/calls")["calls"][0]["state"] == "ended"


def test_an_invite_flood_from_one_source_is_rate_limited(sip_server: tuple[Server, int]) -> None:
    _, port = sip_server
    answers: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        local = s.getsockname()[1]
        for i in range(20):
            s.sendto(
                (
                    f"INVITE sip:nosuchroom@127.0.0.1:{port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKflood{i};rport\r\n"
                    f"From: <sip:f@127.0.0.1>;tag=f{i}\r\nTo: <sip:nosuchroom@127.0.0.1>\r\n"
                    f"Call-ID: flood-{i}@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                    f"Contact: <sip:f@127.0.0.1:{local}>\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                answers.append(s.recv(4096))
            except TimeoutError:
                if any(b" 503 " in a for a in answers):
                    break
    limited = [a for a in answers if a.startswith(b"SIP/2.0 503 Rate Limited")]
    assert len(limited) >= 15  # burst 3, 2/s
    assert b"Retry-After: 5" in limited[0]


def test_an_inbound_call_cancelled_while_ringing_is_answered_487_and_leaves_nothing(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = sip_server
    sipp = Sipp(tmp_path, "incancel", cancelling_uac())
    after = last_seq(server)
    sipp.start(f"127.0.0.1:{port}", service="room")
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()
    failed = wait_event(
        server,
        lambda e: e["event"] == "call_state" and e["state"] in ("failed", "ended"),
        after=after,
    )
    assert failed["state"] == "failed" and failed["code"] == 487
    assert server.get("/api/rooms/room")["participants"] == []


def test_sip_info_dtmf_requests_and_releases_the_floor_in_a_ptt_room(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = sip_server
    sipp = Sipp(tmp_path, "info", info_dtmf_uac("*#"))
    after = last_seq(server)
    sipp.start(f"127.0.0.1:{port}", service="radio")
    answered = wait_event(
        server, lambda e: e["event"] == "call_state" and e["state"] == "answered", after=after
    )
    phone = answered["participant"]
    granted = wait_event(
        server, lambda e: e["event"] == "floor_granted" and e.get("participant") == phone,
        after=after,
    )  # fmt: skip
    wait_event(
        server, lambda e: e["event"] in ("floor_released", "floor_idle"), after=granted["seq"]
    )
    assert sipp.wait() == 0, sipp.errors() or sipp.log.read_text()
    wait_event(server, lambda e: e["event"] == "call_state" and e["state"] == "ended",
               after=after)  # fmt: skip


async def test_a_dispatcher_dials_and_hangs_up_over_socketio(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, _ = sip_server
    sipp = Sipp(tmp_path, "siodial", cancelled_uas())
    sipp.start()
    after = last_seq(server)
    async with console(server.base, server.token(Role.DISPATCHER, "disp1")) as client:
        bad = await client.call("dial", {"room": "room", "uri": "sip:"})
        assert bad["ok"] is False and bad["status"] == 400
        answer = await client.call(
            "dial", {"room": "room", "uri": f"sip:unit@127.0.0.1:{sipp.port}"}
        )
        assert answer["ok"], answer
        call = answer["call"]
        assert call["state"] == "dialling" and call["by"] == "disp1"
        await asyncio.to_thread(
            wait_event,
            server,
            lambda e: e["event"] == "call_state" and e["state"] == "ringing",
            after=after,
        )
        hung = await client.call("call_hangup", {"room": "room", "call": call["id"]})
        assert hung["ok"], hung
    failed = await asyncio.to_thread(
        wait_event,
        server,
        lambda e: e["event"] == "call_state" and e["state"] == "failed",
        after=after,
    )
    assert failed["code"] == 487 and failed["call"] == call["id"]
    assert await asyncio.to_thread(sipp.wait) == 0, sipp.errors() or sipp.log.read_text()


PBX_PASSWORD = "pbx-secret-7f3a"


def test_upstream_registration_retries_after_a_failure_and_answers_the_digest_challenge(
    tmp_path: Path,
) -> None:
    sipp = Sipp(tmp_path, "registrar", registrar_uas("1000", PBX_PASSWORD))
    sipp.start(timeout_s=30, calls=2)
    toml, _ = sip_toml()
    toml += (
        "\n[[gateways.sip.accounts]]\n"
        'name = "pbx"\nuri = "sip:1000@127.0.0.1"\n'
        f'registrar = "sip:127.0.0.1:{sipp.port}"\n'
        f'username = "1000"\npassword = "{PBX_PASSWORD}"\nretry_min_s = 1.0\n'
    )
    server = Server(tmp_path, extra_toml=toml, gateways=("sip",))
    server.start()
    try:
        assert sipp.wait(timeout=30) == 0, sipp.errors() or sipp.log.read_text()
        deadline = time.monotonic() + 10
        while "SIP account pbx registered" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.1)
        log = server.log.read_text()
        assert "SIP account pbx registration failed (503" in log
        assert PBX_PASSWORD not in log
    finally:
        server.stop()
