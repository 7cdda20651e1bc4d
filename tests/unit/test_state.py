from __future__ import annotations

import pytest

from bridge.model import Participant, ParticipantKind, Room, RoomMode, RtpEndpoint
from bridge.state import MemoryStateStore


async def test_rooms_and_participants_round_trip() -> None:
    store = MemoryStateStore()
    await store.put_room(Room(id="r1", name="tac-1", mode=RoomMode.PTT, worker=1))
    p = Participant(
        id="p1", room="r1", kind=ParticipantKind.RTP, remote=RtpEndpoint("127.0.0.1", 5004)
    )
    await store.put_participant(p)
    room = await store.get_room("r1")
    assert room is not None and room.participants["p1"].remote == RtpEndpoint("127.0.0.1", 5004)
    # Replacing a room keeps its participants; callers never alias stored objects.
    room.name = "renamed"
    await store.put_room(room)
    again = await store.get_room("r1")
    assert again is not None and again.name == "renamed" and "p1" in again.participants
    again.participants.clear()
    assert (await store.get_room("r1")).participants  # type: ignore[union-attr]
    assert [r.id for r in await store.rooms_of_worker(1)] == ["r1"]
    assert await store.rooms_of_worker(0) == []
    await store.delete_participant("r1", "p1")
    await store.delete_room("r1")
    assert await store.list_rooms() == []


async def test_participant_needs_a_room() -> None:
    store = MemoryStateStore()
    with pytest.raises(KeyError, match="unknown room: nope"):
        await store.put_participant(Participant(id="p", room="nope", kind=ParticipantKind.SIP))


def test_room_dict_round_trip() -> None:
    room = Room(id="r", name="n", mode=RoomMode.OPEN)
    room.participants["p"] = Participant(
        id="p", room="r", kind=ParticipantKind.TRUNK, remote=RtpEndpoint("127.0.0.1", 1)
    )
    assert Room.from_dict(room.to_dict()) == room


async def test_find_by_name_copies_only_the_room_asked_for() -> None:
    store = MemoryStateStore()
    await store.put_room(Room(id="r1", name="tac-1"))
    await store.put_room(Room(id="r2", name="tac-2"))
    found = await store.find_room_by_name("tac-2")
    assert found is not None and found.id == "r2"
    found.name = "changed"
    assert (await store.get_room("r2")).name == "tac-2"  # type: ignore[union-attr]
    assert await store.find_room_by_name("nope") is None
