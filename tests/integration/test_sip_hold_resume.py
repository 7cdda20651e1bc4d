"""The SIP gateway with a real SIP phone (baresip) that puts its call on hold and resumes
it: each re-INVITE (RFC 3264 §8.4: ``a=sendonly``, then ``a=sendrecv``) makes pjsua
replace the call's stream and conference slot, and the phone must be heard in the room
after the resume.

Only the phone-to-room direction is checked: baresip 1.0's decoder dump (``sndfile``),
which the other tests read for what the phone heard, stops at the hold and is not
reopened at the resume, so what the phone hears afterwards cannot be read from it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from rtpleg import RtpLeg, band_fraction
from server import Server
from sip_peers import Baresip
from test_sip_baresip import (
    PHONE_HZ,
    join_rtp,
    last_seq,
    sip_server,  # noqa: F401 (fixture)
    wait_event,
)

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="needs baresip-core"),
]

#: How long the call stays on hold, and how long after the resume the audio is checked.
HOLD_S = 1.5
SETTLE_S = 1.0
#: Seconds of the room's audio (8 kHz) checked for the phone's tone.
LISTEN_S = 2.0
RATE = 8000


def test_the_phone_is_heard_in_the_room_after_a_hold_and_resume(
    sip_server: tuple[Server, int],  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    server, port = sip_server
    server.ok("POST", "/api/rooms", {"name": "conf"})
    leg = RtpLeg()
    phone = Baresip(tmp_path, PHONE_HZ)
    try:
        join_rtp(server, "conf", leg)
        after = last_seq(server)
        phone.start(seconds=25, dial=f"sip:conf@127.0.0.1:{port}")
        wait_event(server, lambda e: e["event"] == "joined" and e.get("kind") == "sip", after=after)
        time.sleep(SETTLE_S)
        phone.command("/hold")
        time.sleep(HOLD_S)
        phone.command("/resume")
        time.sleep(SETTLE_S)
        log = phone.log.read_text(errors="replace").lower()
        assert "hold" in log and "resume" in log, log[-2000:]
        since = time.monotonic()
        time.sleep(LISTEN_S + 0.5)
        assert [c["state"] for c in server.get("/api/rooms/conf/calls")["calls"]] == ["answered"]
        heard = leg.heard(since)
        assert len(heard) >= RATE * LISTEN_S, "the room was silent after the resume"
        tail = heard[-int(RATE * LISTEN_S) :]
        assert band_fraction(tail, PHONE_HZ) > 0.5, "the phone was not heard after the resume"
    finally:
        phone.stop()
        leg.close()
