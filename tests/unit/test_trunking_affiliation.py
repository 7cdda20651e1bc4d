"""Affiliation in the control process, against a stand-in for the core's Control."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, cast

import pytest

from bridge.control import ConflictError, Control, NotFoundError, WorkerError
from bridge.gateways.trunking.affiliation import (
    OPUS_PAYLOAD_TYPE,
    AffiliateRequest,
    AffiliationError,
    Trunking,
    choose_codec,
)
from bridge.model import Participant, ParticipantKind, Room, RoomMode
from bridge.presence import GpsFix
from bridge.web.presence_api import PresenceFeed

FLOOR_ANSWER = {"floor": {"ip": "127.0.0.1", "port": 42000}, "ssrc": 99}


class FakeControl:
    """What Trunking uses of Control: rooms, join/leave, worker commands, events."""

    def __init__(self) -> None:
        self.rooms = {
            "tg1": Room(id="r1", name="tg1", mode=RoomMode.PTT, worker=1),
            "conf": Room(id="r2", name="conf", mode=RoomMode.OPEN),
        }
        self.joined: list[Participant] = []
        self.left: list[tuple[str, str]] = []
        self.commands: list[tuple[int, str, dict[str, Any]]] = []
        self.published: list[dict[str, Any]] = []
        self.subscribers: list[Any] = []
        self.refuse_register: str | None = None

    async def find_room(self, name: str) -> Room | None:
        return self.rooms.get(name)

    async def join(self, room: str, leg: Participant) -> tuple[Participant, dict[str, Any]]:
        participant = dataclasses.replace(leg, id=f"p{len(self.joined) + 1}", room=room, worker=1)
        self.joined.append(participant)
        media = {
            "rtp": {"ip": "127.0.0.1", "port": 40000},
            "rtcp": {"ip": "127.0.0.1", "port": 40001},
        }
        return participant, {**media, "ssrc": 1234}

    async def leave(self, room: str, participant: str) -> None:
        self.left.append((room, participant))

    async def command(self, worker: int, op: str, **args: Any) -> Any:
        self.commands.append((worker, op, args))
        if self.refuse_register is not None:
            raise WorkerError(self.refuse_register)
        return FLOOR_ANSWER

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def publish(self, event: dict[str, Any]) -> None:
        self.published.append(event)
        for callback in list(self.subscribers):
            callback(event)


def offer(**changes: Any) -> AffiliateRequest:
    data: dict[str, Any] = {
        "talkgroup": "tg1",
        "user_id": "unit7",
        "alias": "Unit 7",
        "priority": 5,
        "codecs": ["AMR-WB", "opus"],
        "rtp": {"ip": "127.0.0.1", "port": 5004},
        "floor": {"ip": "127.0.0.1", "port": 5006},
        "ssrc": 0x0A11CE07,
    }
    data.update(changes)
    return AffiliateRequest.model_validate(data)


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def trunking(control: FakeControl) -> Trunking:
    return Trunking(cast(Control, control), PresenceFeed())


def test_codec_choice() -> None:
    assert choose_codec(["AMR-WB", "opus"]) == ("opus", OPUS_PAYLOAD_TYPE)
    assert choose_codec(["OPUS"]) == ("opus", 111)
    with pytest.raises(AffiliationError) as err:
        choose_codec(["AMR-WB"])
    assert err.value.status == 422
    assert err.value.reason == (
        "codec AMR-WB is decoded only: no AMR-WB encoder is available toward handsets; "
        "offer opus too"
    )
    with pytest.raises(AffiliationError, match=r"^no common codec: offered PCMU, G722; the bridge"):
        choose_codec(["PCMU", "G722"])


async def test_affiliation_joins_the_leg_and_registers_its_floor_endpoint(
    control: FakeControl, trunking: Trunking
) -> None:
    answer = await trunking.affiliate(offer())
    assert answer == {
        "participant": "p1",
        "talkgroup": "tg1",
        "room": "r1",
        "codec": "opus",
        "payload_type": 111,
        "clock_rate": 48000,
        "ptime": 20,
        "ssrc": 1234,
        "rtp": {"ip": "127.0.0.1", "port": 40000},
        "rtcp": {"ip": "127.0.0.1", "port": 40001},
        "floor": {"ip": "127.0.0.1", "port": 42000},
        "floor_ssrc": 99,
    }
    [leg] = control.joined
    assert leg.kind is ParticipantKind.TRUNK and leg.codec == "opus" and leg.payload_type == 111
    assert leg.remote is not None and (leg.remote.ip, leg.remote.port) == ("127.0.0.1", 5004)
    assert (leg.ssrc, leg.priority, leg.user_id, leg.name) == (0x0A11CE07, 5, "unit7", "Unit 7")
    assert control.commands == [
        (
            1,
            "plugin",
            {
                "plugin": "trunking",
                "command": "register",
                "participant": "p1",
                "floor": {"ip": "127.0.0.1", "port": 5006},
                "ssrc": 0x0A11CE07,
                "user_id": "unit7",
            },
        )
    ]
    assert control.published[-1]["event"] == "affiliated"
    assert [a["user_id"] for a in trunking.listing()] == ["unit7"]
    assert trunking.listing(user="someone-else") == []


async def test_refusals(control: FakeControl, trunking: Trunking) -> None:
    with pytest.raises(NotFoundError, match="unknown talkgroup: nope"):
        await trunking.affiliate(offer(talkgroup="nope"))
    with pytest.raises(ConflictError, match=r"^talkgroup is not a ptt room: conf$"):
        await trunking.affiliate(offer(talkgroup="conf"))
    with pytest.raises(AffiliationError, match=r"^codec AMR-WB is decoded only"):
        await trunking.affiliate(offer(codecs=["AMR-WB"]))
    assert control.joined == []
    control.refuse_register = "no such worker plugin: trunking"
    with pytest.raises(WorkerError) as err:
        await trunking.affiliate(offer())
    assert str(err.value) == (
        "floor control for handsets is not available on worker 1: no such worker plugin: trunking"
    )
    assert err.value.kind == "Unavailable"
    assert control.left == [("r1", "p1")], "the half-made leg is taken out again"
    assert trunking.affiliations == {}


async def test_re_affiliation_replaces_and_only_the_owner_de_affiliates(
    control: FakeControl, trunking: Trunking
) -> None:
    await trunking.affiliate(offer())
    await trunking.affiliate(offer())
    assert control.left == [("r1", "p1")]
    assert list(trunking.affiliations) == ["p2"]
    with pytest.raises(AffiliationError, match=r"^an officer may de-affiliate only itself$"):
        await trunking.deaffiliate("p2", acting_user="unit9")
    await trunking.deaffiliate("p2", acting_user="unit7")
    assert trunking.affiliations == {}
    with pytest.raises(NotFoundError, match="unknown affiliation: p2"):
        await trunking.deaffiliate("p2")


async def test_it_follows_leaves_deleted_rooms_and_restarted_workers(
    control: FakeControl, trunking: Trunking
) -> None:
    await trunking.affiliate(offer())
    await trunking.affiliate(offer(user_id="unit8", floor={"ip": "127.0.0.1", "port": 5008}))
    control.publish({"event": "left", "room": "r1", "participant": "p1"})
    assert list(trunking.affiliations) == ["p2"]
    control.commands.clear()
    control.publish({"event": "worker_restarted", "worker": 1})
    await asyncio.gather(*trunking._tasks)
    assert [(c[2]["participant"], c[2]["floor"]["port"]) for c in control.commands] == [
        ("p2", 5008)
    ]
    control.publish({"event": "room_deleted", "room": "r1"})
    assert trunking.affiliations == {}
    trunking.close()
    assert control.subscribers == []


async def test_locations_feed_presence_with_the_talkgroup(trunking: Trunking) -> None:
    await trunking.affiliate(offer())
    feature, new = trunking.report_location("unit7", GpsFix(48.85, 2.35, time.time()))
    assert new
    assert feature["geometry"]["coordinates"][:2] == [2.35, 48.85]
    assert trunking.presence is not None
    unit = trunking.presence.registry.get("unit7")
    assert unit is not None
    assert (unit.kind, unit.room, unit.alias) == (ParticipantKind.TRUNK, "tg1", "Unit 7")
    _, new = trunking.report_location("unit7", GpsFix(48.86, 2.35, time.time()))
    assert not new
    bare = Trunking(cast(Control, FakeControl()))
    with pytest.raises(AffiliationError, match=r"^presence is not enabled$"):
        bare.report_location("unit7", GpsFix(0.0, 0.0, time.time()))


def test_the_offer_is_validated() -> None:
    with pytest.raises(ValueError, match="ssrc"):
        offer(ssrc=1 << 32)
    with pytest.raises(ValueError, match="user_id"):
        offer(user_id="bad user")
    with pytest.raises(ValueError, match="codecs"):
        offer(codecs=[])
