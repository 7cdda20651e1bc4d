"""Three plain-RTP phones each send a tone into one room; each hears the other two only."""

from __future__ import annotations

import threading
import time

import pytest
from rtpleg import RATE, RtpLeg, band_energy, band_fraction, tone
from server import Server

FREQS = (440.0, 770.0, 1230.0)
SECONDS = 3.0


def join(server: Server, room: str, leg: RtpLeg) -> None:
    reply = server.ok(
        "POST",
        f"/api/rooms/{room}/participants",
        {
            "address": {"ip": "127.0.0.1", "port": leg.port},
            "codec": "PCMU",
            "payload_type": 0,
            "name": f"leg{leg.port}",
        },
    )
    leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])


def send_all(legs: list[RtpLeg], freqs: tuple[float, ...], seconds: float) -> None:
    samples = int(seconds * RATE)
    threads = [
        threading.Thread(target=leg.send_realtime, args=(leg.frames(tone(f, samples)),))
        for leg, f in zip(legs, freqs, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def assert_hears_others(legs: list[RtpLeg], freqs: tuple[float, ...], since: float) -> None:
    for i, leg in enumerate(legs):
        heard = leg.heard(since)
        assert len(heard) > RATE, f"leg {i} heard only {len(heard)} samples"
        own = band_energy(heard, freqs[i])
        for j, f in enumerate(freqs):
            if j == i:
                continue
            assert band_fraction(heard, f) > 0.3, f"leg {i} does not hear {f} Hz"
            # N-1: the leg's own tone is absent (more than 30 dB below each other tone).
            assert own < band_energy(heard, f) * 1e-3, f"leg {i} hears itself at {freqs[i]} Hz"


@pytest.mark.slow
def test_each_leg_hears_the_other_two(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "tones", "mode": "open"})
    legs = [RtpLeg() for _ in FREQS]
    try:
        for leg in legs:
            join(server, "tones", leg)
        start = time.monotonic()
        send_all(legs, FREQS, SECONDS)
        assert_hears_others(legs, FREQS, since=start + 0.5)
        # Every leg's packets were taken, none dropped.
        room = server.get("/api/rooms/tones")
        for p in room["participants"]:
            stats = server.get(f"/api/rooms/tones/participants/{p['id']}/stats")
            assert stats["received"] >= SECONDS * 50 * 0.95
            assert stats["dropped"] == {}
    finally:
        for leg in legs:
            leg.close()


def test_latching_follows_a_nat_port_only_when_asked(server: Server) -> None:
    """A phone behind NAT sends from another port than it declared (symmetric RTP)."""
    server.ok("POST", "/api/rooms", {"name": "nat", "mode": "open"})
    talker, natted = RtpLeg(), RtpLeg()
    try:
        join(server, "nat", talker)
        declared = natted.port + 1000  # what the phone thinks its port is
        for latch in (False, True):
            reply = server.ok(
                "POST",
                "/api/rooms/nat/participants",
                {
                    "address": {"ip": "127.0.0.1", "port": declared},
                    "latch": latch,
                    "name": f"natted-{latch}",
                },
            )
            natted.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
            natted.received.clear()
            start = time.monotonic()
            threads = [
                threading.Thread(
                    target=leg.send_realtime, args=(leg.frames(tone(f, int(1.0 * RATE))),)
                )
                for leg, f in ((talker, 440.0), (natted, 770.0))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            heard = natted.heard(start + 0.3)
            if latch:
                assert band_fraction(heard, 440.0) > 0.5, "the latched leg hears nothing"
            else:
                assert len(heard) == 0, "an unlatched leg was taken over from another port"
            server.ok("DELETE", f"/api/rooms/nat/participants/{reply['id']}")
    finally:
        talker.close()
        natted.close()
