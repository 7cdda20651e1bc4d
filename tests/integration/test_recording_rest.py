"""A recorded room through the real server: file, burst index, and who may fetch them."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import soundfile as sf
from rtpleg import RATE, RtpLeg, band_fraction, tone
from server import Server
from test_three_tones import join

from bridge.web.auth import Role

FREQ = 500.0


@pytest.mark.slow
def test_recorded_room_lists_and_serves_file_and_bursts(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "rec", "mode": "open", "record": True})
    talker, listener = RtpLeg(), RtpLeg()
    try:
        join(server, "rec", talker)
        join(server, "rec", listener)
        talker.send_realtime(talker.frames(tone(FREQ, int(2.0 * RATE))))
        server.ok("POST", "/api/rooms/rec/recording", {"recording": False})

        deadline = time.monotonic() + 10
        items: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            items = server.get("/api/recordings")["recordings"]
            if items and items[0]["has_bursts"] and items[0]["duration_s"]:
                break
            time.sleep(0.1)
        assert len(items) == 1, items
        item = items[0]
        assert item["room"] == "rec"
        assert "path" not in item  # the server's file layout is not the client's business

        status, audio = server.request("GET", f"/api/recordings/{item['id']}")
        assert status == 200
        data, rate = sf.read(io.BytesIO(audio), dtype="int16")
        assert rate == 16000
        loud = data[np.abs(data) > 1000]
        assert len(loud) > 1.5 * rate * 0.5, "the tone is not in the recording"
        assert band_fraction(data, FREQ, rate=rate) > 0.8

        status, bursts = server.request("GET", f"/api/recordings/{item['id']}/bursts")
        assert status == 200
        lines = [json.loads(line) for line in bursts.decode().splitlines()]
        room = server.get("/api/rooms/rec")
        talker_id = next(p["id"] for p in room["participants"] if p["name"] == f"leg{talker.port}")
        assert [b["participant"] for b in lines] == [talker_id]
        assert 1.5 < lines[0]["end_offset_s"] - lines[0]["start_offset_s"] < 2.6

        # Only dispatchers (and admins) may list or fetch recordings.
        for role in (Role.OBSERVER, Role.OFFICER):
            status, body = server.request("GET", "/api/recordings", role=role)
            assert status == 403 and "may not" in body["error"]
            status, _ = server.request("GET", f"/api/recordings/{item['id']}", role=role)
            assert status == 403
        status, body = server.request("GET", "/api/recordings", auth=False)
        assert status == 401 and body == {"error": "authentication required"}
        status, body = server.request("GET", "/api/recordings/nope")
        assert status == 404 and body == {"error": "unknown recording: nope"}
    finally:
        talker.close()
        listener.close()
