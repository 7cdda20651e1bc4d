"""The state store: where rooms and participants live, so that a process can die.

The control process writes every room and participant here before it tells a media
worker; a restarted worker is rehydrated from it. The interface is async and keyed by
room, so a Redis implementation can take over across nodes without touching callers.
The in-memory store is the embedded default: one node needs no Redis.
"""

from __future__ import annotations

import abc
import copy

from .model import Participant, Patch, Room


class StateStore(abc.ABC):
    """Rooms with their participants."""

    @abc.abstractmethod
    async def put_room(self, room: Room) -> None:
        """Create or replace a room (its participants are kept as they are)."""

    @abc.abstractmethod
    async def get_room(self, room_id: str) -> Room | None: ...

    @abc.abstractmethod
    async def delete_room(self, room_id: str) -> None: ...

    @abc.abstractmethod
    async def list_rooms(self) -> list[Room]: ...

    @abc.abstractmethod
    async def put_participant(self, participant: Participant) -> None: ...

    @abc.abstractmethod
    async def delete_participant(self, room_id: str, participant_id: str) -> None: ...

    # Talkgroup patches: kept beside the rooms, so that a restarted worker rehydrates them.
    @abc.abstractmethod
    async def put_patch(self, patch: Patch) -> None: ...

    @abc.abstractmethod
    async def delete_patch(self, patch_id: str) -> None: ...

    @abc.abstractmethod
    async def list_patches(self) -> list[Patch]:
        """Every patch, oldest first."""

    async def rooms_of_worker(self, worker: int) -> list[Room]:
        return [room for room in await self.list_rooms() if room.worker == worker]

    async def find_room_by_name(self, name: str) -> Room | None:
        for room in await self.list_rooms():
            if room.name == name:
                return room
        return None


class MemoryStateStore(StateStore):
    """Process-local state; returns copies so callers never alias the store."""

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self._patches: dict[str, Patch] = {}

    async def put_room(self, room: Room) -> None:
        kept = self._rooms.get(room.id)
        stored = copy.deepcopy(room)
        if kept is not None:
            stored.participants = kept.participants
        self._rooms[room.id] = stored

    async def get_room(self, room_id: str) -> Room | None:
        room = self._rooms.get(room_id)
        return copy.deepcopy(room) if room is not None else None

    async def delete_room(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    async def list_rooms(self) -> list[Room]:
        return [copy.deepcopy(room) for room in self._rooms.values()]

    async def find_room_by_name(self, name: str) -> Room | None:
        # Copy only the room asked for: a join must not copy every room of the node.
        for room in self._rooms.values():
            if room.name == name:
                return copy.deepcopy(room)
        return None

    async def put_participant(self, participant: Participant) -> None:
        room = self._rooms.get(participant.room)
        if room is None:
            raise KeyError(f"unknown room: {participant.room}")
        room.participants[participant.id] = copy.deepcopy(participant)

    async def delete_participant(self, room_id: str, participant_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.participants.pop(participant_id, None)

    async def put_patch(self, patch: Patch) -> None:
        self._patches[patch.id] = copy.deepcopy(patch)

    async def delete_patch(self, patch_id: str) -> None:
        self._patches.pop(patch_id, None)

    async def list_patches(self) -> list[Patch]:
        return [copy.deepcopy(patch) for patch in self._patches.values()]
