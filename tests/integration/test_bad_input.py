"""Bad input gets a clear error and loses nothing; the room goes on."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rtpleg import RATE, RtpLeg, band_fraction, tone
from server import Server
from test_three_tones import join

from bridge.web.auth import Role

FREQ = 880.0


def _rtp(pt: int, seq: int, payload: bytes, *, first: int = 0x80, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", first, pt, seq, seq * 160, ssrc) + payload


@pytest.mark.slow
def test_malformed_packets_are_counted_by_reason_and_the_room_goes_on(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "rough", "mode": "open"})
    talker, listener = RtpLeg(), RtpLeg()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    try:
        join(server, "rough", talker)
        join(server, "rough", listener)
        assert talker.remote is not None
        sender = threading.Thread(
            target=talker.send_realtime, args=(talker.frames(tone(FREQ, int(2.0 * RATE))),)
        )
        start = time.monotonic()
        sender.start()
        bad = [
            b"\x80\x00\x01",  # shorter than an RTP header
            _rtp(0, 1, bytes(160), first=0x40),  # version 1
            _rtp(8, 2, bytes(160), ssrc=talker.ssrc),  # PCMA on a PCMU leg
            _rtp(0, 3, b"", first=0x8F),  # 15 CSRCs announced, none there
            _rtp(0, 4, bytes(8), first=0xA0),  # padding count 0
        ]
        for packet in bad:
            talker.sock.sendto(packet, talker.remote)
            stranger.sendto(_rtp(0, 9, bytes(160)), talker.remote)
        sender.join()

        heard = listener.heard(start + 0.5)
        assert band_fraction(heard, FREQ) > 0.9, "the room stopped hearing the talker"
        room = server.get("/api/rooms/rough")
        pid = next(p["id"] for p in room["participants"] if p["name"] == f"leg{talker.port}")
        stats = server.get(f"/api/rooms/rough/participants/{pid}/stats")
        assert stats["dropped"] == {
            "too_short": 1,
            "bad_version": 1,
            "unexpected_payload_type": 1,
            "bad_csrc": 1,
            "bad_padding": 1,
        }
        [worker] = server.get("/api/workers")["workers"]
        assert worker["dropped"]["unknown_source"] == len(bad)
    finally:
        talker.close()
        listener.close()
        stranger.close()


def test_bad_requests_get_4xx_json_with_the_reason(server: Server) -> None:
    status, body = server.request("POST", "/api/rooms", {"name": "bad name!"})
    assert status == 422 and body["error"].startswith("name: String should match pattern")
    status, body = server.request("POST", "/api/rooms", {"name": "ok", "colour": "red"})
    assert status == 422 and body["error"].startswith("colour: Extra inputs are not permitted")
    server.ok("POST", "/api/rooms", {"name": "ok"})
    status, body = server.request("POST", "/api/rooms", {"name": "ok"})
    assert (status, body) == (409, {"error": "room already exists: ok"})
    status, body = server.request("GET", "/api/rooms/nope")
    assert (status, body) == (404, {"error": "unknown room: nope"})
    status, body = server.request(
        "POST",
        "/api/rooms/ok/participants",
        {"address": {"ip": "127.0.0.1", "port": 4000}, "codec": "G729"},
    )
    assert (status, body) == (400, {"error": "unsupported codec: G729"})
    status, body = server.request(
        "POST",
        "/api/rooms/ok/participants",
        {"address": {"ip": "127.0.0.1", "port": 4000}, "codec": "AMR-WB", "payload_type": 100},
    )
    assert (status, body) == (
        400,
        {"error": "codec cannot encode: AMR-WB; a leg must also receive"},
    )
    status, body = server.request(
        "POST", "/api/rooms/ok/participants", {"address": {"ip": "127.0.0.1", "port": 0}}
    )
    assert status == 422 and body["error"].startswith("address.port: ")
    status, body = server.request("DELETE", "/api/rooms/ok/participants/nobody")
    assert (status, body) == (404, {"error": "unknown participant: nobody"})
    status, body = server.request("GET", "/api/rooms", token="not-a-token")
    assert (status, body) == (401, {"error": "token is invalid"})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/rooms", {"name": "x"}),
        ("DELETE", "/api/rooms/ok", None),
        ("POST", "/api/rooms/ok/participants", {"address": {"ip": "127.0.0.1", "port": 4000}}),
        ("POST", "/api/rooms/ok/recording", {"recording": True}),
        ("GET", "/api/recordings", None),
    ],
)
def test_observers_are_refused_dispatcher_actions(
    server: Server, method: str, path: str, body: object
) -> None:
    server.ok("POST", "/api/rooms", {"name": "ok"})
    status, reply = server.request(method, path, body, role=Role.OBSERVER)
    assert status == 403
    assert reply == {"error": "role observer may not do this (needs dispatcher)"}


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[Server]:
    # A budget of 1 µs per tick: any real tick is over it, so admission must refuse.
    srv = Server(tmp_path, media_toml="tick_budget = 0.00005")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_worker_over_its_tick_budget_refuses_new_legs(busy_server: Server) -> None:
    busy_server.ok("POST", "/api/rooms", {"name": "full"})
    # The worker judges its p99 over at least a second of ticks.
    busy_server.wait_health(lambda h: h["workers"][0]["ticks"] >= 60, timeout=10)
    status, body = busy_server.request(
        "POST", "/api/rooms/full/participants", {"address": {"ip": "127.0.0.1", "port": 4000}}
    )
    assert status == 503
    assert body["error"].startswith("worker 0 is at its tick budget: p99 tick work ")
    assert body["error"].endswith("ms (media.tick_budget 5e-05 of 20 ms)")
