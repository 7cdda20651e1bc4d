"""The SIP gateway with a real SIP phone, baresip: calls in and out, audio both ways (FFT),
DTMF floor control in a ptt room."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rtpleg import RtpLeg, band_fraction, tone
from server import Server
from sip_peers import Baresip, sip_toml, wait_sip

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="needs baresip-core"),
]

PHONE_HZ = 440.0
RTP_HZ = 1000.0


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    toml, port = sip_toml(extra='pins = { locked = "4321" }\npin_timeout_s = 4.0\n')
    server = Server(tmp_path, extra_toml=toml, gateways=("sip",))
    server.start()
    wait_sip(port)
    try:
        yield server, port
    finally:
        server.stop()


def wait_event(
    server: Server, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0, after: int = 0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = server.get(f"/api/events?after={after}")["events"]
        for event in seen:
            if match(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no matching event; last: {seen[-10:]}")


def last_seq(server: Server) -> int:
    events = server.get("/api/events")["events"]
    return int(events[-1]["seq"]) if events else 0


def wait_media(server: Server, room: str, timeout: float = 10.0) -> None:
    """Until the room's SIP call has its media up (its codec is known)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = server.get(f"/api/rooms/{room}/calls")["calls"]
        if calls and calls[0]["codec"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"the call's media never came up: {calls}")


def join_rtp(server: Server, room: str, leg: RtpLeg, **extra: Any) -> str:
    reply = server.ok(
        "POST",
        f"/api/rooms/{room}/participants",
        {"address": {"ip": "127.0.0.1", "port": leg.port}, "name": "radio", **extra},
    )
    leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
    return str(reply["id"])


def talk(leg: RtpLeg, seconds: float) -> threading.Thread:
    pcm = tone(RTP_HZ, int(seconds * 8000))
    thread = threading.Thread(target=leg.send_realtime, args=(leg.frames(pcm),), daemon=True)
    thread.start()
    return thread


def assert_two_way(server: Server, leg: RtpLeg, phone: Baresip, since: float) -> None:
    heard = leg.heard(since)
    assert len(heard) > 8000, "the plain-RTP participant heard nothing"
    assert band_fraction(heard[-16000:], PHONE_HZ) > 0.5, "baresip's tone did not reach RTP"
    phone.stop()
    pcm, rate = phone.recording()
    tail = pcm[-rate * 2 :]
    assert band_fraction(tail.astype(np.int16), RTP_HZ, rate) > 0.5, (
        "the RTP participant's tone did not reach baresip"
    )


def test_inbound_call_joins_the_room_and_audio_flows_both_ways(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = sip_server
    server.ok("POST", "/api/rooms", {"name": "conf"})
    leg = RtpLeg()
    phone = Baresip(tmp_path, PHONE_HZ)
    try:
        join_rtp(server, "conf", leg)
        after = last_seq(server)
        phone.start(seconds=20, dial=f"sip:conf@127.0.0.1:{port}")
        answered = wait_event(
            server, lambda e: e["event"] == "call_state" and e["state"] == "answered", after=after
        )
        assert answered["direction"] == "in" and answered["room_name"] == "conf"
        joined = wait_event(
            server, lambda e: e["event"] == "joined" and e.get("kind") == "sip", after=after
        )
        assert joined["name"] == "a"  # caller ID shown to dispatchers
        since = time.monotonic() + 1.0
        talk(leg, 4.0).join()
        calls = server.get("/api/rooms/conf/calls")
        assert [c["state"] for c in calls["calls"]] == ["answered"]
        assert_two_way(server, leg, phone, since)
        wait_event(
            server, lambda e: e["event"] == "call_state" and e["state"] == "ended", after=after
        )
        wait_event(server, lambda e: e["event"] == "left", after=after)
    finally:
        phone.stop()
        leg.close()


def test_dial_out_reaches_baresip_and_audio_flows_both_ways(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, _ = sip_server
    server.ok("POST", "/api/rooms", {"name": "out"})
    leg = RtpLeg()
    phone = Baresip(tmp_path, PHONE_HZ, name="b")
    try:
        join_rtp(server, "out", leg)
        phone.start(seconds=20)
        phone.wait_ready()
        after = last_seq(server)
        call = server.ok("POST", "/api/rooms/out/calls", {"uri": phone.uri})
        assert call["state"] == "dialling"
        wait_event(
            server,
            lambda e: (
                e["event"] == "call_state" and e["state"] == "answered" and e["call"] == call["id"]
            ),
            after=after,
        )
        since = time.monotonic() + 1.0
        talk(leg, 4.0).join()
        heard = leg.heard(since)
        assert band_fraction(heard[-16000:], PHONE_HZ) > 0.5
        status, _ = server.request("DELETE", f"/api/rooms/out/calls/{call['id']}")
        assert status == 204
        wait_event(
            server,
            lambda e: (
                e["event"] == "call_state" and e["state"] == "ended" and e["call"] == call["id"]
            ),
            after=after,
        )
        pcm, rate = phone.recording()
        assert band_fraction(pcm[-rate * 2 :].astype(np.int16), RTP_HZ, rate) > 0.5
    finally:
        phone.stop()
        leg.close()


def test_dtmf_star_requests_and_hash_releases_the_floor_in_a_ptt_room(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = sip_server
    server.ok("POST", "/api/rooms", {"name": "tg", "mode": "ptt", "floor": {"t1": 30.0}})
    leg = RtpLeg()
    phone = Baresip(tmp_path, PHONE_HZ)
    try:
        join_rtp(server, "tg", leg)
        after = last_seq(server)
        phone.start(seconds=20, dial=f"sip:tg@127.0.0.1:{port}")
        joined = wait_event(
            server, lambda e: e["event"] == "joined" and e.get("kind") == "sip", after=after
        )
        wait_event(
            server, lambda e: e["event"] == "call_state" and e["state"] == "answered", after=after
        )
        wait_media(server, "tg")
        phone.keys("*")
        granted = wait_event(server, lambda e: e["event"] == "floor_granted", after=after)
        assert granted["participant"] == joined["participant"]
        since = time.monotonic() + 0.5
        time.sleep(2.0)  # the holder talks for 2 s
        assert band_fraction(leg.heard(since), PHONE_HZ) > 0.5
        phone.keys("#")
        released = wait_event(server, lambda e: e["event"] == "floor_released", after=after)
        assert released["participant"] == joined["participant"]
    finally:
        phone.stop()
        leg.close()


def test_room_pin_three_wrong_entries_hang_up(
    sip_server: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = sip_server
    server.ok("POST", "/api/rooms", {"name": "locked"})
    phone = Baresip(tmp_path, PHONE_HZ)
    try:
        after = last_seq(server)
        phone.start(seconds=30, dial=f"sip:locked@127.0.0.1:{port}")
        wait_event(
            server, lambda e: e["event"] == "call_state" and e["state"] == "pin", after=after
        )
        phone.keys("1111#1111#1111#")
        ended = wait_event(
            server,
            lambda e: e["event"] == "call_state" and e["state"] in ("ended", "failed"),
            after=after,
            timeout=15,
        )
        assert ended["code"] == 403
        assert not [
            e for e in server.get(f"/api/events?after={after}")["events"] if e["event"] == "joined"
        ]
    finally:
        phone.stop()
