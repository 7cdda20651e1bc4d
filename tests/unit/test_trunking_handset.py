"""The handset simulator against a scripted floor server on loopback (no bridge, no HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest

from bridge.gateways.trunking import mcpt
from bridge.gateways.trunking.handset import (
    AudioClip,
    EventKind,
    FloorState,
    Handset,
    HandsetConfig,
    HandsetEvent,
    MediaClock,
    Route,
    decode_opus,
    parse_schedule,
)
from bridge.rtp import RtpPacket

SERVER_SSRC = 0x5E2F_0001
WAIT_S = 5.0
PATIENT_S = 5.0


class Peer(asyncio.DatagramProtocol):
    """One UDP endpoint of the scripted server: it keeps what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self._arrived.set()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def wait_for(self, count: int) -> None:
        while len(self.received) < count:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), WAIT_S)

    def messages(self) -> list[mcpt.FloorMessage]:
        return [m for data, _ in self.received for m in mcpt.parse_datagram(data)]

    def send(self, message: mcpt.FloorMessage, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), to)


async def endpoint() -> Peer:
    _, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        Peer, local_addr=("127.0.0.1", 0)
    )
    return peer


class Rig:
    def __init__(self, handset: Handset, floor: Peer, rtp: Peer, clock: MediaClock) -> None:
        self.handset = handset
        self.floor = floor
        self.rtp = rtp
        self.clock = clock

    @property
    def handset_floor(self) -> tuple[str, int]:
        return ("127.0.0.1", self.handset.floor_port)

    def answer(self, message: mcpt.FloorMessage) -> None:
        self.floor.send(message, self.handset_floor)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    floor, rtp = await endpoint(), await endpoint()
    clock = MediaClock()
    clock.start()
    async with aiohttp.ClientSession() as session:
        handset = Handset(
            HandsetConfig(
                server="http://127.0.0.1:9", token="t", talkgroup="tg1", user_id="u1", t101=0.03
            ),
            session=session,
            clock=clock,
        )
        await handset.open()
        handset.attach(
            {
                "participant": "p1",
                "talkgroup": "tg1",
                "payload_type": 111,
                "rtp": {"ip": "127.0.0.1", "port": rtp.port},
                "floor": {"ip": "127.0.0.1", "port": floor.port},
            }
        )
        yield Rig(handset, floor, rtp, clock)
        handset.close()
        await clock.stop()
    for peer in (floor, rtp):
        assert peer.transport is not None
        peer.transport.close()


def granted(ack: bool = False) -> mcpt.FloorGranted:
    return mcpt.FloorGranted(ssrc=SERVER_SSRC, duration=30, ack_requested=ack)


async def test_press_retransmits_until_granted_then_talks_only_while_permitted(rig: Rig) -> None:
    handset = rig.handset
    press = asyncio.create_task(handset.press())
    await rig.floor.wait_for(2)  # T101 expired once: the request went again
    requests = rig.floor.messages()
    assert all(isinstance(m, mcpt.FloorRequest) and m.ssrc == handset.ssrc for m in requests)
    assert rig.rtp.received == [], "no media before the grant"
    rig.answer(granted())
    event = await asyncio.wait_for(press, WAIT_S)
    assert event.kind is EventKind.GRANTED and handset.state is FloorState.PERMISSION
    await rig.rtp.wait_for(5)
    packets = [RtpPacket.parse(data) for data, _ in rig.rtp.received]
    assert packets[0].marker and not packets[1].marker
    assert {p.payload_type for p in packets} == {111} and {p.ssrc for p in packets} == {
        handset.ssrc
    }
    assert [p.sequence_number for p in packets[:5]] == [
        (packets[0].sequence_number + i) & 0xFFFF for i in range(5)
    ]
    assert {p.timestamp - packets[0].timestamp for p in packets[:2]} <= {0, 960, 1920}
    before = len(rig.floor.received)
    release = asyncio.create_task(handset.release())
    await rig.floor.wait_for(before + 1)
    assert isinstance(rig.floor.messages()[-1], mcpt.FloorRelease)
    sent = handset.sent_packets
    rig.answer(mcpt.FloorIdle(ssrc=SERVER_SSRC, message_sequence_number=2))
    await asyncio.wait_for(release, WAIT_S)
    assert handset.state is FloorState.NO_PERMISSION
    assert handset.sent_packets == sent, "no media after the release"
    assert [e.kind for e in handset.events][-3:] == [
        EventKind.GRANTED,
        EventKind.IDLE,
        EventKind.RELEASED,
    ]


async def test_no_answer_after_c101_requests(rig: Rig) -> None:
    event = await rig.handset.press()
    assert event.kind is EventKind.NO_ANSWER
    assert event.detail == "after 3 Floor Requests"
    assert len(rig.floor.messages()) == 3
    assert rig.handset.state is FloorState.NO_PERMISSION and not rig.handset.ptt
    assert rig.rtp.received == []


async def test_taken_then_queued_then_granted_from_the_queue_with_an_ack(rig: Rig) -> None:
    handset = rig.handset
    press = asyncio.create_task(handset.press(priority=5))
    await rig.floor.wait_for(1)
    request = rig.floor.messages()[0]
    assert isinstance(request, mcpt.FloorRequest) and request.floor_priority == 5
    rig.answer(mcpt.FloorTaken(ssrc=SERVER_SSRC, message_sequence_number=1))
    first = await asyncio.wait_for(press, WAIT_S)
    assert first.kind is EventKind.TAKEN
    info = mcpt.FloorQueuePositionInfo(ssrc=SERVER_SSRC, queue_info=mcpt.QueueInfo(1, 5))
    rig.answer(info)
    queued = await handset.wait_for(EventKind.QUEUED)
    assert queued.describe() == "queued at position 1"
    assert handset.state is FloorState.QUEUED
    count = len(rig.floor.received)
    rig.answer(granted(ack=True))
    await handset.wait_for(EventKind.GRANTED)
    await rig.floor.wait_for(count + 1)
    ack = rig.floor.messages()[-1]
    assert isinstance(ack, mcpt.FloorAck)
    assert ack.acknowledged == 17 and ack.source == mcpt.FloorSource.FLOOR_PARTICIPANT
    await rig.rtp.wait_for(1)
    assert handset.talking


async def test_a_revoke_stops_media_and_releases(rig: Rig) -> None:
    handset = rig.handset
    press = asyncio.create_task(handset.press())
    await rig.floor.wait_for(1)
    rig.answer(granted())
    await asyncio.wait_for(press, WAIT_S)
    await rig.rtp.wait_for(2)
    count = len(rig.floor.received)
    rig.answer(mcpt.FloorRevoke(ssrc=SERVER_SSRC, reject_cause=mcpt.RejectCause(4, "pre-empted")))
    revoke = await handset.wait_for(EventKind.REVOKE)
    assert revoke.describe() == "revoke cause 4 (pre-empted)"
    assert not handset.talking
    await rig.floor.wait_for(count + 1)
    assert isinstance(rig.floor.messages()[-1], mcpt.FloorRelease)
    assert handset.state is FloorState.PENDING_RELEASE
    sent = handset.sent_packets
    rig.answer(mcpt.FloorTaken(ssrc=SERVER_SSRC, message_sequence_number=3))
    await handset.wait_for(EventKind.RELEASED)
    assert handset.state is FloorState.NO_PERMISSION and handset.sent_packets == sent


async def test_a_deny_ends_the_request(rig: Rig) -> None:
    press = asyncio.create_task(rig.handset.press(call_type="emergency"))
    await rig.floor.wait_for(1)
    request = rig.floor.messages()[0]
    assert isinstance(request, mcpt.FloorRequest) and request.floor_indicator is not None
    assert request.floor_indicator & mcpt.FloorIndicator.EMERGENCY_CALL
    rig.answer(mcpt.FloorDeny(ssrc=SERVER_SSRC, reject_cause=mcpt.RejectCause(7, "Queue full")))
    event = await asyncio.wait_for(press, WAIT_S)
    assert event.describe() == "deny cause 7 (Queue full)"
    assert rig.handset.state is FloorState.NO_PERMISSION and not rig.handset.ptt
    with pytest.raises(ValueError, match=r"^unknown call type: panic$"):
        await rig.handset.press(call_type="panic")


async def test_letting_go_before_the_answer_withdraws_the_request(rig: Rig) -> None:
    handset = rig.handset
    handset.config.t101 = PATIENT_S
    press = asyncio.create_task(handset.press())
    await rig.floor.wait_for(1)
    with pytest.raises(RuntimeError, match=r"^a Floor Request is already pending$"):
        await handset.press()
    await handset.release()
    event = await asyncio.wait_for(press, WAIT_S)
    assert event.describe() == "released (request withdrawn)"
    await rig.floor.wait_for(2)
    assert isinstance(rig.floor.messages()[-1], mcpt.FloorRelease)
    assert handset.state is FloorState.NO_PERMISSION
    rig.answer(granted())  # too late: it gives the floor straight back
    await handset.wait_for(EventKind.RELEASED, since=handset.mark())
    assert isinstance(rig.floor.messages()[-1], mcpt.FloorRelease)
    assert rig.rtp.received == []


async def test_floor_messages_overtaking_the_answer_are_kept() -> None:
    floor = await endpoint()
    async with aiohttp.ClientSession() as session:
        handset = Handset(
            HandsetConfig(server="http://127.0.0.1:9", token="t", talkgroup="tg", user_id="u"),
            session=session,
            clock=MediaClock(),
        )
        await handset.open()
        floor.send(
            mcpt.FloorIdle(ssrc=SERVER_SSRC, message_sequence_number=0),
            (
                "127.0.0.1",
                handset.floor_port,
            ),
        )
        while not handset._early_floor:
            await asyncio.sleep(0.005)
        handset.attach(
            {
                "talkgroup": "tg",
                "payload_type": 111,
                "rtp": {"ip": "127.0.0.1", "port": 9},
                "floor": {"ip": "127.0.0.1", "port": floor.port},
            }
        )
        assert [e.kind for e in handset.events] == [EventKind.AFFILIATED, EventKind.IDLE]
        handset.close()
    assert floor.transport is not None
    floor.transport.close()


async def test_wait_for_reports_what_it_saw() -> None:
    async with aiohttp.ClientSession() as session:
        handset = Handset(
            HandsetConfig(server="http://x", token="t", talkgroup="tg", user_id="u7"),
            session=session,
            clock=MediaClock(),
        )
        with pytest.raises(TimeoutError, match=r"^u7: no granted in 0.01 s \(saw nothing\)$"):
            await handset.wait_for(EventKind.GRANTED, timeout=0.01)


# ------------------------------------------------------------------------- pieces
def test_parse_schedule() -> None:
    assert parse_schedule("10:3, 2:5") == [(2.0, 5.0), (10.0, 3.0)]
    assert parse_schedule("") == []
    for bad in ("2", "a:1", "2:0", "-1:2"):
        with pytest.raises(ValueError, match=r"^PTT schedule item is not START:SECONDS: "):
            parse_schedule(bad)


def test_route_walks_back_and_forth(tmp_path: Path) -> None:
    line = {"type": "LineString", "coordinates": [[2.0, 48.0], [2.0, 48.01], [2.01, 48.01]]}
    feature: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}},
            {"type": "Feature", "geometry": line},
        ],
    }
    path = tmp_path / "route.geojson"
    path.write_text(json.dumps(feature))
    route = Route.load(path)
    assert route.length_m == pytest.approx(1112 + 744, rel=0.01)
    assert route.position(0) == (48.0, 2.0)
    lat, lon = route.position(556)
    assert lat == pytest.approx(48.005, abs=1e-4) and lon == pytest.approx(2.0)
    assert route.position(route.length_m) == pytest.approx((48.01, 2.01))
    assert route.position(2 * route.length_m - 556) == pytest.approx((48.005, 2.0), abs=1e-4)
    points = Route.from_geojson(
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]}
    )
    assert points.position(100) == (2.0, 1.0)
    with pytest.raises(ValueError, match=r"^GeoJSON has no LineString or Point$"):
        Route.from_geojson({"type": "FeatureCollection", "features": []})
    with pytest.raises(ValueError, match=r"^GeoJSON coordinates are invalid$"):
        Route.from_geojson({"type": "LineString", "coordinates": [[1]]})


def test_a_tone_clip_is_encoded_once_and_decodes_to_its_tone() -> None:
    clip = AudioClip.tone(700.0)
    assert AudioClip.tone(700.0) is clip
    assert len(clip.packets) == 50
    pcm = decode_opus(clip.packets)[4800:]
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 48000)
    band = spectrum[(freqs > 675) & (freqs < 725)].sum()
    assert band / spectrum.sum() > 0.9


def test_wav_clips_are_resampled(tmp_path: Path) -> None:
    import soundfile

    t = np.arange(16000) / 16000
    path = tmp_path / "voice.wav"
    soundfile.write(str(path), (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), 16000)
    clip = AudioClip.from_wav(path)
    assert len(clip.packets) == 50
    with pytest.raises(ValueError, match=r"^audio clip is shorter than one 20 ms frame$"):
        AudioClip(np.zeros(100, dtype=np.int16))


def test_events_describe_themselves() -> None:
    taken = mcpt.FloorTaken(
        ssrc=1, message_sequence_number=4, granted_party_identity="u2", functional_alias="Unit 2"
    )
    assert HandsetEvent(0.0, EventKind.TAKEN, taken).describe() == "taken by Unit 2 (seq 4)"
    grant = mcpt.FloorGranted(ssrc=1, duration=30, floor_priority=3)
    assert (
        HandsetEvent(0.0, EventKind.GRANTED, grant).describe()
        == "granted (duration 30 s, priority 3)"
    )
    assert (
        HandsetEvent(0.0, EventKind.AFFILIATED, detail="to tg1").describe() == "affiliated to tg1"
    )
