"""The trunking gateway end to end: simulated LTE PTT handsets on a real ``ucbridge serve``.

Every handset affiliates over HTTP, exchanges MCPT floor control with the media worker's floor
port and Opus RTP with its shared RTP port, all on 127.0.0.1; a plain-RTP leg shares one of the
talkgroups. One server serves every test of the module, each in a talkgroup of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from rtpleg import RATE, RtpLeg, tone
from server import Server, free_port

from bridge.gateways.trunking import mcpt
from bridge.gateways.trunking.handset import (
    AffiliationRefusedError,
    AudioClip,
    EventKind,
    Fleet,
    FloorState,
    Handset,
    HandsetConfig,
)
from bridge.locationinfo import CONTENT_TYPE as LOCATION_INFO
from bridge.web.auth import Role

pytestmark = pytest.mark.timeout(180)

HANDSET_RATE = 48000
#: Distinct tones, one per handset, and one for the plain-RTP leg.
FREQS = (440.0, 620.0, 820.0, 1020.0, 1220.0)
RTP_LEG_FREQ = 1500.0
#: Heard audio is checked from this long after a burst starts (jitter buffer, ramps).
SETTLE_S = 0.3
WAIT_S = 5.0
#: One media tick: the next queued request is granted within it after a release.
TICK_S = 0.020


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    floor_port = free_port(socket.SOCK_DGRAM)
    server = Server(
        tmp_path_factory.mktemp("trunking"), media_toml=f"floor_port_base = {floor_port}"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet() as handsets:
        yield handsets


def spectrum(pcm: npt.NDArray[np.int16], rate: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    return np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(pcm), 1 / rate)


def band_fraction(pcm: npt.NDArray[np.int16], freq: float, rate: int) -> float:
    power, freqs = spectrum(pcm, rate)
    total = float(power.sum())
    return float(power[abs(freqs - freq) < 25].sum()) / total if total else 0.0


def band_energy(pcm: npt.NDArray[np.int16], freq: float, rate: int) -> float:
    power, freqs = spectrum(pcm, rate)
    return float(power[abs(freqs - freq) < 25].sum())


def officer(bridge: Server, user: str) -> str:
    return bridge.token(Role.OFFICER, user)


def handsets(
    bridge: Server, fleet: Fleet, talkgroup: str, count: int, **config: Any
) -> list[Handset]:
    found = []
    for i in range(count):
        user = f"{talkgroup}-unit{i}"
        settings = {"alias": f"Unit {i}", "priority": 5, **config}
        found.append(
            fleet.add(
                HandsetConfig(
                    server=bridge.base,
                    token=officer(bridge, user),
                    talkgroup=talkgroup,
                    user_id=user,
                    **settings,
                ),
                clip=AudioClip.tone(FREQS[i]),
            )
        )
    return found


async def affiliated(hs: list[Handset]) -> None:
    await asyncio.gather(*(h.affiliate() for h in hs))
    for h in hs:
        await h.wait_for(EventKind.IDLE, timeout=WAIT_S)


def events_since(bridge: Server, seq: int) -> list[dict[str, Any]]:
    return list(bridge.get(f"/api/events?after={seq}")["events"])


def last_seq(bridge: Server) -> int:
    events = bridge.get("/api/events")["events"]
    return int(events[-1]["seq"]) if events else 0


def trunking_stats(bridge: Server) -> dict[str, Any]:
    stats: dict[str, Any] = bridge.get("/api/workers")["workers"][0]["plugins"]["trunking"]
    return stats


async def until(predicate: Any, timeout: float = WAIT_S) -> None:
    """Poll a condition on the server (REST has no push) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_five_handsets_contention_priority_and_half_duplex_audio(
    bridge: Server, fleet: Fleet
) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-a", "mode": "ptt"})
    hs = handsets(bridge, fleet, "tg-a", 5)
    hs[3].config.priority = 10
    await affiliated(hs)
    leg = RtpLeg()
    try:
        reply = bridge.ok(
            "POST",
            "/api/rooms/tg-a/participants",
            {"address": {"ip": "127.0.0.1", "port": leg.port}, "name": "radio"},
        )
        leg.remote = (reply["rtp"]["ip"], reply["rtp"]["port"])
        seq = last_seq(bridge)

        # Contention: two press at once; one is granted, the other queued at position 1.
        marks = [h.mark() for h in hs]
        first = await asyncio.gather(hs[0].press(), hs[1].press())
        kinds = sorted(e.kind.value for e in first)
        assert EventKind.GRANTED.value in kinds, kinds
        winner, loser = (hs[0], hs[1]) if first[0].kind is EventKind.GRANTED else (hs[1], hs[0])
        queued = await loser.wait_for(EventKind.QUEUED, since=marks[hs.index(loser)])
        assert isinstance(queued.message, mcpt.FloorQueuePositionInfo)
        assert queued.message.queue_info.position == 1
        for other in hs[2:]:
            taken = await other.wait_for(EventKind.TAKEN, since=marks[hs.index(other)])
            assert isinstance(taken.message, mcpt.FloorTaken)
            assert taken.message.granted_party_identity == winner.config.user_id

        # A higher ordinary priority queues ahead, without cutting the holder off.
        mark_loser = loser.mark()
        ahead = await hs[3].press()
        assert ahead.kind is EventKind.QUEUED, ahead.describe()
        assert isinstance(ahead.message, mcpt.FloorQueuePositionInfo)
        assert (ahead.message.queue_info.position, ahead.message.queue_info.priority) == (1, 10)
        behind = await loser.wait_for(EventKind.QUEUED, since=mark_loser)
        assert isinstance(behind.message, mcpt.FloorQueuePositionInfo)
        assert behind.message.queue_info.position == 2
        assert winner.state is FloorState.PERMISSION
        assert EventKind.REVOKE not in [e.kind for e in winner.events]

        # Only the holder is heard, by every other handset and by the plain-RTP leg; the
        # plain leg talks out of turn and nobody hears it; the holder hears nothing.
        start = time.monotonic()
        await asyncio.to_thread(leg.send_realtime, leg.frames(tone(RTP_LEG_FREQ, int(1.5 * RATE))))
        end = time.monotonic()
        holder_freq = FREQS[hs.index(winner)]
        for other in hs:
            if other is winner:
                continue
            heard = other.heard(start + SETTLE_S, end)
            assert heard.size >= HANDSET_RATE // 2, f"{other.config.user_id} heard too little"
            share = band_fraction(heard, holder_freq, HANDSET_RATE)
            assert share > 0.8, f"{other.config.user_id} hears the holder at {share:.2f}"
            assert band_energy(heard, RTP_LEG_FREQ, HANDSET_RATE) < 1e-3 * band_energy(
                heard, holder_freq, HANDSET_RATE
            ), f"{other.config.user_id} hears the plain leg talking out of turn"
            assert other.sent_packets == 0, "a handset without the floor sent RTP"
        radio = leg.heard(start + SETTLE_S)
        assert band_fraction(radio, holder_freq, RATE) > 0.8, "the plain leg hears the holder"
        assert winner.heard(start + SETTLE_S, end).size == 0, "the holder is sent its own room"
        assert winner.sent_packets > 0

        # The holder releases: the head of the queue is granted within one tick.
        mark3 = hs[3].mark()
        released_at = time.monotonic()
        await winner.release()
        granted = await hs[3].wait_for(EventKind.GRANTED, since=mark3)
        assert granted.t - released_at < 0.5
        events = events_since(bridge, seq)
        released = [e for e in events if e["event"] == "floor_released"]
        regranted = [
            e
            for e in events
            if e["event"] == "floor_granted" and e["participant"] == hs[3].participant
        ]
        assert released and regranted
        assert regranted[-1]["t"] - released[-1]["t"] <= TICK_S
        state = bridge.get("/api/rooms/tg-a/floor")
        assert state["holder"] == hs[3].participant and state["queue"] == [loser.participant]
    finally:
        leg.close()


async def test_emergency_pre_empts_with_revoke_cause_4_and_raises_an_alert(
    bridge: Server, fleet: Fleet
) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-b", "mode": "ptt", "floor": {"t3": 1.0}})
    holder, caller, listener = handsets(bridge, fleet, "tg-b", 3)
    await affiliated([holder, caller, listener])
    assert (await holder.press()).kind is EventKind.GRANTED
    mark = holder.mark()
    await caller.press(call_type="emergency")
    revoke = await holder.wait_for(EventKind.REVOKE, since=mark)
    assert isinstance(revoke.message, mcpt.FloorRevoke), "seen as an MCPT Floor Revoke"
    assert revoke.message.reject_cause.cause == mcpt.RevokeCause.PRE_EMPTED == 4
    assert not holder.talking
    granted = await caller.wait_for(EventKind.GRANTED)
    assert isinstance(granted.message, mcpt.FloorGranted)
    taken = await listener.wait_for(
        EventKind.TAKEN, where=lambda e: e.message is not None and e.t >= revoke.t
    )
    assert isinstance(taken.message, mcpt.FloorTaken)
    assert taken.message.floor_indicator is not None
    assert taken.message.floor_indicator & mcpt.FloorIndicator.EMERGENCY_CALL
    state = bridge.get("/api/rooms/tg-b/floor")
    assert state["holder"] == caller.participant and state["call_type"] == "emergency"
    alerts = [
        a for a in bridge.get("/api/alerts")["alerts"] if a["participant"] == caller.participant
    ]
    assert alerts and alerts[0]["call_type"] == "emergency" and alerts[0]["state"] == "active"
    assert alerts[0]["user_id"] == caller.config.user_id


async def test_t2_revokes_a_burst_that_goes_on_too_long(bridge: Server, fleet: Fleet) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-c", "mode": "ptt", "floor": {"t2": 1.0}})
    talker, listener = handsets(bridge, fleet, "tg-c", 2)
    await affiliated([talker, listener])
    granted = await talker.press()
    assert isinstance(granted.message, mcpt.FloorGranted) and granted.message.duration == 1
    revoke = await talker.wait_for(EventKind.REVOKE, timeout=4.0)
    assert isinstance(revoke.message, mcpt.FloorRevoke)
    assert revoke.message.reject_cause.cause == mcpt.RevokeCause.MEDIA_BURST_TOO_LONG
    assert revoke.t - granted.t >= 0.9
    await talker.wait_for(EventKind.RELEASED)
    await listener.wait_for(EventKind.IDLE, where=lambda e: e.t > revoke.t)
    assert bridge.get("/api/rooms/tg-c/floor")["holder"] is None


async def test_t1_ends_the_burst_when_the_holder_stops_sending(
    bridge: Server, fleet: Fleet
) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-d", "mode": "ptt", "floor": {"t1": 0.6}})
    talker, listener = handsets(bridge, fleet, "tg-d", 2)
    await affiliated([talker, listener])
    seq = last_seq(bridge)
    assert (await talker.press()).kind is EventKind.GRANTED
    await asyncio.sleep(0.5)  # talk a little, then the microphone dies
    assert listener.received, "the listener heard the burst"
    talker.stop_media()
    silent_from = time.monotonic()
    idle = await talker.wait_for(EventKind.IDLE, where=lambda e: e.t > silent_from, timeout=4.0)
    assert idle.t - silent_from >= 0.5
    assert talker.state is FloorState.NO_PERMISSION
    ended = [e for e in events_since(bridge, seq) if e["event"] == "floor_released"]
    assert ended and ended[-1]["reason"] == "end_of_media"


async def test_bad_input_is_dropped_or_denied_and_the_room_goes_on(
    bridge: Server, fleet: Fleet
) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-e", "mode": "ptt", "floor": {"queueing": False}})
    bridge.ok("POST", "/api/rooms", {"name": "conf-e", "mode": "open"})
    a, b = handsets(bridge, fleet, "tg-e", 2)

    # Affiliation refusals, with the reason.
    refusals = {
        "nope": (404, "unknown talkgroup: nope"),
        "conf-e": (409, "talkgroup is not a ptt room: conf-e"),
    }
    for talkgroup, expected in refusals.items():
        stray = fleet.add(
            HandsetConfig(
                server=bridge.base,
                token=officer(bridge, "stray"),
                talkgroup=talkgroup,
                user_id="stray",
            )
        )
        with pytest.raises(AffiliationRefusedError) as err:
            await stray.affiliate()
        assert (err.value.status, err.value.reason) == expected
    amr = fleet.add(
        HandsetConfig(
            server=bridge.base,
            token=officer(bridge, "amr"),
            talkgroup="tg-e",
            user_id="amr",
            codecs=("AMR-WB",),
        )
    )
    with pytest.raises(AffiliationRefusedError) as err:
        await amr.affiliate()
    assert err.value.status == 422 and err.value.reason.startswith("codec AMR-WB is decoded only")
    impostor = fleet.add(
        HandsetConfig(
            server=bridge.base, token=officer(bridge, "someone"), talkgroup="tg-e", user_id="x"
        )
    )
    with pytest.raises(AffiliationRefusedError) as err:
        await impostor.affiliate()
    assert (err.value.status, err.value.reason) == (403, "an officer may affiliate only itself")

    await affiliated([a, b])
    stats = trunking_stats(bridge)
    before, acks_handled = stats["dropped"], stats["handled"].get("Floor Ack", 0)

    # Malformed, mismatched and server-only packets from an affiliated handset.
    a.send_floor_raw(b"\x80\xcc\x00")
    a.send_floor_raw(bytes(mcpt.FloorRequest(ssrc=a.ssrc ^ 1)))
    a.send_floor_raw(bytes(mcpt.FloorGranted(ssrc=a.ssrc, duration=9)))
    # A request from an address nobody affiliated gets nothing back.
    assert a.answer is not None
    floor_address = (a.answer["floor"]["ip"], a.answer["floor"]["port"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.settimeout(0.3)
        stranger.sendto(bytes(mcpt.FloorRequest(ssrc=77)), floor_address)
        with pytest.raises(TimeoutError):
            stranger.recv(2048)
    # An Ack flood for a Floor Granted nobody sent.
    flood = bytes(mcpt.FloorAck(ssrc=b.ssrc, source=0, acknowledged=17))
    for _ in range(10):
        for _ in range(100):
            b.send_floor_raw(flood)
        await asyncio.sleep(0.01)  # pace the flood so that the kernel keeps all of it

    def counted() -> bool:
        dropped = trunking_stats(bridge)["dropped"]
        return all(
            dropped.get(reason, 0) - before.get(reason, 0) >= n
            for reason, n in {
                "malformed": 1,
                "ssrc_mismatch": 1,
                "unexpected_message": 1,
                "unaffiliated": 1,
                "unsolicited_ack": 1000,
            }.items()
        )

    await until(counted)
    assert trunking_stats(bridge)["handled"].get("Floor Ack", 0) == acks_handled
    assert a.floor_messages["Floor Granted"] == 0 and a.state is FloorState.NO_PERMISSION

    # Without queueing, a request while the floor is taken is denied (cause 1).
    mark = b.mark()
    assert (await a.press()).kind is EventKind.GRANTED
    await b.wait_for(EventKind.TAKEN, since=mark)  # so that this Taken cannot answer b's request
    deny = await b.press()
    assert isinstance(deny.message, mcpt.FloorDeny), deny.describe()
    assert deny.message.reject_cause.cause == mcpt.DenyCause.ANOTHER_USER_HAS_PERMISSION
    await a.release()
    assert (await b.press()).kind is EventKind.GRANTED, "the room goes on"
    await b.release()

    # After de-affiliation, the handset's requests are unaffiliated and go unanswered.
    unaffiliated = trunking_stats(bridge)["dropped"].get("unaffiliated", 0)
    path = f"/api/trunking/affiliate/{a.participant}"
    token = officer(bridge, a.config.user_id)
    assert bridge.request("DELETE", path, token=officer(bridge, "someone"))[0] == 403
    assert bridge.request("DELETE", path, token=token) == (200, {})
    assert bridge.request("DELETE", path, token=token) == (
        404,
        {"error": f"unknown affiliation: {a.participant}"},
    )
    a.send_floor_raw(bytes(mcpt.FloorRequest(ssrc=a.ssrc)))  # it goes on regardless
    await until(lambda: trunking_stats(bridge)["dropped"].get("unaffiliated", 0) > unaffiliated)


async def test_location_reports_feed_presence(bridge: Server, fleet: Fleet) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-f", "mode": "ptt"})
    [unit] = handsets(bridge, fleet, "tg-f", 1)
    await affiliated([unit])
    status, feature = await unit.report_location(48.8566, 2.3522)
    assert status == 201, feature
    lon, lat = feature["geometry"]["coordinates"][:2]
    assert (lat, lon) == pytest.approx((48.8566, 2.3522), abs=1e-4)
    assert feature["properties"]["room"] == "tg-f" and feature["properties"]["kind"] == "trunk"
    status, _ = await unit.report_location(48.8570, 2.3530)
    assert status == 200
    units = {f["id"]: f for f in bridge.get("/api/presence")["features"]}
    assert units[unit.config.user_id]["geometry"]["coordinates"][1] == pytest.approx(
        48.857, abs=1e-4
    )

    token = officer(bridge, unit.config.user_id)
    status, own = bridge.request("GET", "/api/trunking/affiliations", token=token)
    assert status == 200
    assert [(a["user_id"], a["talkgroup"]) for a in own["affiliations"]] == [
        (unit.config.user_id, "tg-f")
    ]
    everyone = bridge.get("/api/trunking/affiliations")["affiliations"]
    assert unit.participant in {a["participant"] for a in everyone}
    status, body = bridge.request(
        "POST", "/api/trunking/location", {"lat": 48.9, "lon": 2.4, "speed_mps": 1.5}, token=token
    )
    assert status == 200 and body["properties"]["speed"] == 1.5
    status, body = bridge.request(
        "POST", "/api/trunking/location?user=other", {"lat": 1, "lon": 1}, token=token
    )
    assert (status, body) == (403, {"error": "an officer may report only its own location"})
    status, body = bridge.request(
        "POST", "/api/trunking/location", {"lat": 91, "lon": 1}, token=token
    )
    assert (status, body) == (422, {"error": "latitude is out of range"})
    status, body = await unit._http(
        "POST", "/api/trunking/location", data=b"<nope/>", headers={"Content-Type": LOCATION_INFO}
    )
    assert (status, body) == (422, {"error": "root element is not location-info"})


@pytest.mark.slow
async def test_a_late_entrant_hears_the_burst_in_progress(bridge: Server, fleet: Fleet) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-g", "mode": "ptt"})
    talker, late = handsets(bridge, fleet, "tg-g", 2)
    await affiliated([talker])
    assert (await talker.press()).kind is EventKind.GRANTED
    await asyncio.sleep(0.3)
    joined = time.monotonic()
    await late.affiliate()
    taken = await late.wait_for(EventKind.TAKEN)
    assert isinstance(taken.message, mcpt.FloorTaken)
    assert taken.message.granted_party_identity == talker.config.user_id
    await until(lambda: len(late.received) >= 25, timeout=3.0)
    first = late.first_audio_after(joined)
    assert first is not None
    heard = late.heard(first + SETTLE_S)
    assert band_fraction(heard, FREQS[0], HANDSET_RATE) > 0.8


@pytest.mark.slow
async def test_a_restarted_worker_gets_the_handsets_floor_endpoints_back(
    bridge: Server, fleet: Fleet
) -> None:
    bridge.ok("POST", "/api/rooms", {"name": "tg-h", "mode": "ptt"})
    a, b = handsets(bridge, fleet, "tg-h", 2)
    await affiliated([a, b])
    before = bridge.get("/health")["workers"][0]
    os.kill(before["pid"], signal.SIGKILL)
    await asyncio.to_thread(
        bridge.wait_health,
        lambda h: (
            h["workers"][0]["restarts"] == before["restarts"] + 1
            and h["workers"][0]["state"] == "running"
        ),
        10,
    )
    await until(lambda: trunking_stats(bridge)["registered"] >= 2)
    granted = await a.press()
    assert granted.kind is EventKind.GRANTED, granted.describe()
    await b.wait_for(EventKind.TAKEN, where=lambda e: e.t >= granted.t - 1.0)
    await until(lambda: len(b.received) >= 10, timeout=3.0)
    await a.release()


@pytest.mark.slow
def test_the_handset_command_runs_a_schedule(bridge: Server, tmp_path: Path) -> None:
    import subprocess
    import sys

    bridge.ok("POST", "/api/rooms", {"name": "tg-i", "mode": "ptt"})
    route = tmp_path / "route.geojson"
    route.write_text('{"type": "LineString", "coordinates": [[2.35, 48.85], [2.36, 48.86]]}')
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "bridge.cli",
            "handset",
            "--server",
            bridge.base,
            "--token",
            bridge.token(Role.DISPATCHER),
            "--talkgroup",
            "tg-i",
            "--user",
            "cli",
            "--count",
            "2",
            "--ptt-schedule",
            "0.3:0.6",
            "--route",
            str(route),
            "--location-interval",
            "0.5",
            "--record",
            str(tmp_path / "heard"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("cli-1: affiliated to tg-i" in line for line in lines), result.stdout
    assert any(": granted (duration 30 s" in line for line in lines), result.stdout
    assert any(": queued at position 1" in line for line in lines), result.stdout
    assert sorted(p.name for p in (tmp_path / "heard").iterdir()) == ["cli-1.wav", "cli-2.wav"]
    units = {f["id"] for f in bridge.get("/api/presence")["features"]}
    assert {"cli-1", "cli-2"} <= units
