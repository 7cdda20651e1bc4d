"""SIGKILL the media worker: serve restarts it, /health shows it, the room is heard again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rtpleg import FRAME, RATE, RtpLeg, band_energy, tone
from server import Server
from test_three_tones import FREQS, join


@pytest.mark.slow
def test_killed_worker_is_restarted_and_room_heard_again(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tones", "mode": "open"})
    legs = [RtpLeg() for _ in FREQS]
    seconds = 6.0
    try:
        for leg in legs:
            join(server, "tones", leg)
        threads = [
            threading.Thread(
                target=leg.send_realtime, args=(leg.frames(tone(f, int(seconds * RATE))),)
            )
            for leg, f in zip(legs, FREQS, strict=True)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = server.get("/health")["workers"][0]
        old_ssrc = {leg.received[-1].ssrc for leg in legs}
        killed_at = time.monotonic()
        os.kill(before["pid"], signal.SIGKILL)

        after = server.wait_health(
            lambda h: h["workers"][0]["restarts"] == 1 and h["workers"][0]["state"] == "running",
            timeout=5,
        )
        assert after["workers"][0]["pid"] != before["pid"]

        # Each leg hears both other tones again, from a new SSRC, within 2 s of the kill.
        for i, leg in enumerate(legs):
            deadline = killed_at + 2.0
            while time.monotonic() < deadline:
                fresh = [r for r in leg.received if r.at > killed_at and r.ssrc not in old_ssrc]
                if len(fresh) >= 10:
                    break
                time.sleep(0.02)
            fresh = [r for r in leg.received if r.at > killed_at and r.ssrc not in old_ssrc]
            assert len(fresh) >= 10, f"leg {i} heard nothing new within 2 s of the kill"
            first_back = fresh[0].at - killed_at
            assert first_back < 2.0
            heard = leg.heard(fresh[0].at)[: 10 * FRAME]
            for j, f in enumerate(FREQS):
                if j != i:
                    assert band_energy(heard, f) > 1e3, f"leg {i} lost {f} Hz after restart"
        for t in threads:
            t.join()

        events = server.get("/api/events")["events"]
        kinds = [e["event"] for e in events]
        assert "worker_died" in kinds and "worker_restarted" in kinds
    finally:
        for leg in legs:
            leg.close()


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, workers=2)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_rooms_go_to_the_least_loaded_worker_and_each_worker_has_its_port(
    two_workers: Server,
) -> None:
    health = two_workers.get("/health")
    assert [w["state"] for w in health["workers"]] == ["running", "running"]
    assert len({w["pid"] for w in health["workers"]}) == 2
    ports = [w["rtp_port"] for w in health["workers"]]
    assert ports == [two_workers.rtp_base, two_workers.rtp_base + 2]
    placed = []
    for name in ("r1", "r2", "r3", "r4"):
        placed.append(two_workers.ok("POST", "/api/rooms", {"name": name})["worker"])
    assert sorted(placed) == [0, 0, 1, 1]
    # A leg joins the worker of its room and is told that worker's port.
    room = next(n for n, w in zip(("r1", "r2", "r3", "r4"), placed, strict=True) if w == 1)
    reply = two_workers.ok(
        "POST", f"/api/rooms/{room}/participants", {"address": {"ip": "127.0.0.1", "port": 4000}}
    )
    assert reply["rtp"]["port"] == ports[1]
