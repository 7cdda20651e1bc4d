"""The floor-control servers of one media worker, wired to its mixer and its gateways.

DESIGN.md, "How one floor request flows": a request from any gateway becomes one call
into the room's :class:`~bridge.floor.FloorControlServer`; its answers are rendered by
the gateway that owns each participant, and its holder changes edit the mixing matrix,
so the holder is heard from the next tick on. This hub does that plumbing for every
``ptt`` room of a worker:

- each participant may have a *renderer*: the gateway plugin that speaks its floor
  protocol (MCPT for LTE handsets). Messages for participants without one (browsers,
  consoles, phones) are not lost: the room-level floor events carry the same news to the
  control process, which renders them over socket.io;
- every call returns after the holder is applied to the engine and the messages are
  handed to their renderers, so floor access never waits for a tick;
- timers of all rooms are served through :meth:`next_deadline` and :meth:`tick`;
- a talkgroup patch joins the floors of its rooms (:meth:`set_patches`): one server,
  that of the group's first room (its *anchor*), serves every member of the group with
  the anchor's floor settings; the holder's own room gets the holder in the mixing
  matrix, and the patch makes every room of the group hear it. Each floor event is
  reported once per room of the group, so each room's consoles see the one floor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .floor import (
    CallType,
    FloorConfig,
    FloorControlServer,
    FloorEvent,
    FloorMessage,
    FloorMessageType,
    RevokeCause,
)

logger = logging.getLogger(__name__)


class FloorRenderer(Protocol):
    """A gateway that speaks some participants' floor protocol."""

    def render(self, room: str, participant: str, message: FloorMessage) -> None: ...


@dataclass
class _Member:
    room: str
    renderer: FloorRenderer | None
    #: What it joined with (priority, pre-emption, receive-only, ids), to move it between
    #: servers when a patch joins or splits its room's floor.
    terms: dict[str, Any] = field(default_factory=dict)


class FloorHub:
    """Every ``ptt`` room's floor-control server in one worker."""

    def __init__(
        self,
        *,
        set_holder: Callable[[str, str | None], None],
        events: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set_holder = set_holder
        self._events = events
        self._clock = clock
        self.servers: dict[str, FloorControlServer] = {}
        self._members: dict[str, _Member] = {}
        self._holders: dict[str, str | None] = {}
        #: Patched rooms: room -> the anchor room whose server serves its floor, and
        #: anchor -> every room of its group (itself first).
        self._anchor: dict[str, str] = {}
        self._group: dict[str, list[str]] = {}
        #: The room in which each server's holder was put into the mixing matrix.
        self._holder_room: dict[str, str] = {}

    # ------------------------------------------------------------------ rooms
    def add_room(self, room: str, config: FloorConfig | None = None) -> None:
        if room in self.servers:
            return
        self.servers[room] = FloorControlServer(
            room, config, clock=self._clock, events=self._on_event
        )
        self._holders[room] = None

    def remove_room(self, room: str) -> None:
        if room not in self.servers:
            return
        if room in self._anchor:
            self.set_patches([[r for r in g if r != room] for g in self._group.values()])
        server = self.servers.pop(room)
        for participant in list(server.participants):
            self._members.pop(participant, None)
        self._holders.pop(room, None)
        self._holder_room.pop(room, None)

    def server(self, room: str) -> FloorControlServer:
        """The server that serves ``room``'s floor: its own, or its patch group's."""
        try:
            return self.servers[self._anchor.get(room, room)]
        except KeyError:
            raise KeyError(f"room has no floor control (not a ptt room): {room}") from None

    # ---------------------------------------------------------------- patches
    def set_patches(self, groups: Iterable[Iterable[str]]) -> None:
        """Join the floors of each group of ptt rooms; rooms left out get their own back.

        The first room of a group is its anchor: its server and floor settings serve the
        whole group. Members whose server changes leave the old one (a holder among them
        loses the floor, as on leaving: TS 24.380 clause 6.3.5.4) and join the new one in
        their current state, as on a late entry (clause 6.3.5.2.2: Floor Taken or Idle).
        """
        anchor: dict[str, str] = {}
        group: dict[str, list[str]] = {}
        for rooms in groups:
            members = [r for r in dict.fromkeys(rooms) if r in self.servers]
            if len(members) < 2:
                continue
            if any(r in anchor for r in members):
                raise ValueError(f"a room is in more than one patch group: {members}")
            group[members[0]] = members
            for r in members:
                anchor[r] = members[0]
        moving = [
            (participant, member)
            for participant, member in self._members.items()
            if anchor.get(member.room, member.room) != self._anchor.get(member.room, member.room)
        ]
        for participant, _member in moving:
            self.leave(participant)
        self._anchor, self._group = anchor, group
        for participant, member in moving:
            self.join(member.room, participant, renderer=member.renderer, **member.terms)

    def patch_of(self, room: str) -> list[str]:
        """The rooms whose floor is joined with ``room``'s (itself alone if unpatched)."""
        return list(self._group.get(self._anchor.get(room, room), [room]))

    def room_of(self, participant: str) -> str:
        try:
            return self._members[participant].room
        except KeyError:
            raise KeyError(f"participant is not in a ptt room: {participant}") from None

    # ------------------------------------------------------------- membership
    def join(
        self,
        room: str,
        participant: str,
        *,
        priority: int = 0,
        pre_emptive_allowed: bool = False,
        receive_only: bool = False,
        user_id: str = "",
        alias: str = "",
        renderer: FloorRenderer | None = None,
    ) -> None:
        server = self.server(room)
        terms: dict[str, Any] = {
            "priority": priority,
            "pre_emptive_allowed": pre_emptive_allowed,
            "receive_only": receive_only,
            "user_id": user_id,
            "alias": alias,
        }
        self._members[participant] = _Member(room, renderer, terms)
        self._deliver(server.room, server.join(participant, **terms))

    def set_renderer(self, participant: str, renderer: FloorRenderer | None) -> None:
        self._members[participant].renderer = renderer

    def leave(self, participant: str) -> None:
        member = self._members.pop(participant, None)
        if member is None:
            return
        server = self.servers.get(self._anchor.get(member.room, member.room))
        if server is not None:
            self._deliver(server.room, server.leave(participant))

    # ----------------------------------------------------------------- inputs
    def request(
        self,
        participant: str,
        *,
        priority: int | None = None,
        call_type: CallType = CallType.NORMAL,
        location: object | None = None,
        vouched: bool = False,
    ) -> dict[str, Any]:
        """A floor request; returns the participant's outcome (granted/queued/denied).

        A request asks for at most the priority negotiated at join (TS 24.380 §6.2.1).
        ``vouched`` requests come from the control process, which has authenticated the
        user and chosen the priority by role (a dispatcher above an officer): they may
        raise the participant's negotiated priority to what they ask.
        """
        server = self._server_of(participant)
        if vouched and priority is not None:
            member = server.participant(participant)
            member.priority = max(member.priority, priority)
        messages = server.request(
            participant, priority=priority, call_type=call_type, location=location
        )
        self._deliver(server.room, messages)
        return self._outcome(server.room, participant, messages)

    def release(self, participant: str, *, ack_requested: bool = False) -> None:
        server = self._server_of(participant)
        self._deliver(server.room, server.release(participant, ack_requested=ack_requested))

    def queue_position_request(self, participant: str) -> None:
        server = self._server_of(participant)
        self._deliver(server.room, server.queue_position_request(participant))

    def ack(self, participant: str, message_type: FloorMessageType | int) -> None:
        server = self._server_of(participant)
        self._deliver(server.room, server.ack(participant, message_type))

    def revoke(self, room: str, cause: RevokeCause = RevokeCause.OTHER) -> None:
        server = self.server(room)
        self._deliver(server.room, server.revoke(None, cause))

    def grant_to(self, participant: str) -> None:
        server = self._server_of(participant)
        self._deliver(server.room, server.grant_to(participant))

    def override(self, participant: str, *, call_type: CallType = CallType.NORMAL) -> None:
        server = self._server_of(participant)
        self._deliver(server.room, server.override(participant, call_type=call_type))

    def set_receive_only(self, participant: str, receive_only: bool) -> None:
        server = self._server_of(participant)
        self._members[participant].terms["receive_only"] = receive_only
        self._deliver(server.room, server.set_receive_only(participant, receive_only))

    def media_from(self, room: str, participants: Iterable[str]) -> None:
        """Participants of ``room`` whose RTP was played this tick (T1, media policing)."""
        server = self.servers.get(self._anchor.get(room, room))
        if server is not None:
            self._deliver(server.room, server.media_from(participants))

    def _server_of(self, participant: str) -> FloorControlServer:
        return self.server(self.room_of(participant))

    # ----------------------------------------------------------------- timers
    def next_deadline(self) -> float | None:
        deadlines = [d for s in self.servers.values() if (d := s.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        for room, server in self.servers.items():
            deadline = server.next_deadline()
            if deadline is not None and deadline <= now:
                self._deliver(room, server.tick(now))

    # ---------------------------------------------------------------- outputs
    def snapshot(self, room: str) -> dict[str, Any]:
        server = self.server(room)
        return {
            "state": server.state,
            "holder": server.holder,
            "call_type": server.call_type.name.lower(),
            "queue": list(server.queue),
        }

    def _deliver(self, room: str, messages: list[FloorMessage]) -> None:
        server = self.servers.get(room)
        if server is not None and server.holder != self._holders.get(room):
            holder = server.holder
            self._holders[room] = holder
            # The holder is put into the matrix in its own room (in a patch group, maybe
            # not the anchor's); the room of the previous holder is cleared.
            before = self._holder_room.pop(room, None)
            member = self._members.get(holder) if holder is not None else None
            now = member.room if member is not None else room
            if before is not None and before != now:
                self._set_holder(before, None)
            if holder is not None:
                self._holder_room[room] = now
            self._set_holder(now, holder)
        if not messages or server is None:
            return
        rendered = [
            (participant, member.renderer)
            for participant in server.participants
            if (member := self._members.get(participant)) is not None
            and member.renderer is not None
        ]
        for message in messages:
            for participant, renderer in rendered:
                if message.reaches(participant):
                    try:
                        renderer.render(room, participant, message)
                    except Exception:  # one bad leg must not stop the room's floor
                        logger.exception("floor renderer failed for %s", participant)

    def _outcome(self, room: str, participant: str, messages: list[FloorMessage]) -> dict[str, Any]:
        server = self.server(room)
        if server.holder == participant:
            return {"result": "granted"}
        for message in messages:
            if not message.reaches(participant):
                continue
            if message.kind == FloorMessageType.DENY:
                cause = message.cause
                return {
                    "result": "denied",
                    "cause": int(cause) if cause is not None else None,
                    "reason": message.cause_text,
                }
        position = server.queue_position(participant)
        if position is not None:
            return {"result": "queued", "position": position}
        return {"result": "pending"}

    def _on_event(self, event: FloorEvent) -> None:
        data = event.to_dict()
        rooms = self._group.get(event.room)
        if rooms is None:
            self._events(data)
            return
        for room in rooms:
            self._events({**data, "room": room, "patch": rooms})
