"""RFC 4733 digits count once; the demo serve prints a login link that works once."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rtpleg import RtpLeg
from server import Server, free_port, free_udp_pair_base

from bridge.web.auth import Role

TELEPHONE_EVENT = 101


def _event(leg: RtpLeg, digit: int, ts: int, duration: int, end: bool, marker: bool) -> bytes:
    header = struct.pack(
        "!BBHII", 0x80, TELEPHONE_EVENT | (0x80 if marker else 0), leg.seq, ts, leg.ssrc
    )
    leg.seq = (leg.seq + 1) & 0xFFFF
    return header + struct.pack("!BBH", digit, (0x80 if end else 0) | 10, duration)


def test_a_digit_with_three_end_packets_is_one_event(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "keys"})
    leg = RtpLeg()
    try:
        reply = server.ok(
            "POST",
            "/api/rooms/keys/participants",
            {
                "address": {"ip": "127.0.0.1", "port": leg.port},
                "dtmf_payload_type": TELEPHONE_EVENT,
            },
        )
        leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
        after = server.get("/api/events")["events"][-1]["seq"]
        for digit, ts in ((5, 16000), (11, 32000)):  # "5", then "#"
            packets = [_event(leg, digit, ts, 160 * (i + 1), False, i == 0) for i in range(3)]
            packets += [_event(leg, digit, ts, 640, True, False) for _ in range(3)]
            for packet in packets:
                leg.sock.sendto(packet, leg.remote)
        deadline = time.monotonic() + 5
        digits: list[str] = []
        while time.monotonic() < deadline:
            events = server.get(f"/api/events?after={after}")["events"]
            digits = [e["digit"] for e in events if e["event"] == "dtmf"]
            if len(digits) >= 2:
                break
            time.sleep(0.05)
        assert digits == ["5", "#"]
        assert all(e["participant"] == reply["id"] for e in events if e["event"] == "dtmf")
        stats = server.get(f"/api/rooms/keys/participants/{reply['id']}/stats")
        assert stats["dropped"] == {}  # events never reach the jitter buffer as audio
    finally:
        leg.close()


@pytest.mark.slow
def test_demo_serve_answers_health_and_its_login_link_works_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f"[server]\nport = {port}\n[media]\nrtp_port_base = {free_udp_pair_base()}\n"
        f'[recording]\ndir = "{tmp_path / "rec"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "UCBRIDGE_AUTH_SECRET"}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "bridge.cli", "serve", "--demo", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        link = None
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"one-time login: (\S+)", line)
            if match:
                link = match.group(1)
                break
        assert link is not None and link.startswith(f"http://127.0.0.1:{port}/login?code=")

        deadline = time.monotonic() + 20
        health: dict[str, object] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                health = json.load(r)
            if health["status"] == "ok":
                break
            time.sleep(0.1)
        assert health["status"] == "ok"
        [worker] = health["workers"]  # type: ignore[misc]
        assert worker["state"] == "running" and worker["pid"] != proc.pid

        with urllib.request.urlopen(link, timeout=5) as r:
            login = json.load(r)
        assert login["role"] == "dispatcher"
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/rooms",
            headers={"Authorization": f"Bearer {login['token']}"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert [room["name"] for room in json.load(r)["rooms"]] == ["demo"]
        with pytest.raises(urllib.error.HTTPError) as again:
            urllib.request.urlopen(link, timeout=5)
        assert again.value.code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0


def test_serve_without_a_secret_outside_demo_mode_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "UCBRIDGE_AUTH_SECRET"}
    result = subprocess.run(
        [sys.executable, "-P", "-m", "bridge.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "auth.secret is not set" in result.stderr


def test_bad_config_key_fails_at_start_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[media]\nwrokers = 2\n")
    result = subprocess.run(
        [sys.executable, "-P", "-m", "bridge.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "ucbridge: unknown config key: media.wrokers"


def test_metrics_need_a_token_and_count_rooms_legs_and_ticks(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "m1"})
    server.ok("POST", "/api/rooms/m1/participants", {"address": {"ip": "127.0.0.1", "port": 4000}})
    status, _ = server.request("GET", "/metrics", auth=False)
    assert status == 401
    server.wait_health(lambda h: h["workers"][0]["ticks"] >= 50)
    status, body = server.request("GET", "/metrics", role=Role.OBSERVER)
    assert status == 200
    text = body.decode()
    assert "ucbridge_rooms 1.0" in text
    assert 'ucbridge_participants{kind="rtp"} 1.0' in text
    assert 'ucbridge_worker_up{worker="0"} 1.0' in text
    ticks = re.search(r'^ucbridge_worker_ticks_total\{worker="0"\} (\S+)$', text, re.M)
    assert ticks is not None and float(ticks.group(1)) >= 50
    assert 'ucbridge_worker_tick_stage_seconds{stage="mix",worker="0"}' in text
