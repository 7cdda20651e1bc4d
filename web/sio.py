"""Socket.io signalling for dispatcher consoles: room state, floor, alerts and presence.

A python-socketio ``AsyncServer`` on the aiohttp app, with two namespaces:

``/rooms``
    Every event the core publishes (:meth:`bridge.control.Control.publish`), each under its
    own name (``joined``, ``talking``, ``floor_granted``, ``emergency_raised``, ...) and
    each carrying ``room``, ``epoch``, ``seq`` and ``time``; plus the console's actions
    (``ptt_press``, ``ptt_release``, ``floor_revoke``, ``emergency_ack``, ...), each
    answered in its acknowledgement.
``/presence``
    Unit positions, coalesced to ``console.presence_rate_hz`` updates a second per console:
    ``presence`` events carry a GeoJSON FeatureCollection (RFC 7946) of the units that
    moved, and ``removed`` unit ids. Each period's batch is serialised once and the same
    packet goes to every subscribed console.

Connecting needs a token: ``auth={"token": ...}``, or the login cookie the console's demo
link set. No token or a bad one: the connection is refused with the reason. The token
counts for as long as it lasts, not just at connect: once it has expired, whatever the
console asks is refused (``{"ok": false, "status": 401, "error": "token has expired"}``,
actions audited as denied) and the connection is closed; the console connects again with
a new token.

**Resume.** A console calls ``resume`` with the last ``(epoch, seq)`` it applied (nothing
on its first connect). With the same epoch and the missed events still in the history the
answer is ``{"replay": [...]}``; otherwise (the control process restarted, or the events
fell out of the history) it is ``{"snapshot": {...}}``: rooms with participants, floor
state and queue, talkers, alerts and presence, at a ``seq``. Only then does the console
receive live events, and it applies each ``seq`` once: events at or below its ``seq`` are
dropped, and a gap makes it resume again. :class:`ConsoleState` is the reducer both sides
run, so a console ends with exactly the server's state.

**Floor.** ``ptt_press`` asks for the floor (TS 24.380 §6.3.5.3, Floor Request) for the
console's own leg in a room, at the role's floor priority (a dispatcher's above an
officer's); ``override`` and ``emergency`` pre-empt the holder (§6.3.4.4, Revoke cause #4)
and are for dispatchers only. The acknowledgement carries the result in the same round
trip: ``granted``, ``queued`` with ``position``, or ``denied`` with ``cause``.

Every dispatcher action taken here is written to the audit log once, refusals included.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum, StrEnum
from http.cookies import SimpleCookie
from typing import Any, ClassVar

import socketio
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.audit import AuditLog, Outcome
from bridge.control import EVENT_HISTORY, ConflictError, Control, NotFoundError, WorkerError
from bridge.presence import Coalescer, Unit

from .audit_api import without_secrets
from .auth import EXPIRED, AuthError, Identity, Role, TokenAuthority
from .console import TOKEN_COOKIE
from .openapi import validation_reason
from .presence_api import PresenceFeed

logger = logging.getLogger("bridge.web.sio")

ROOMS_NAMESPACE = "/rooms"
PRESENCE_NAMESPACE = "/presence"
#: The socket.io room every resumed console of ``/rooms`` is in.
LIVE = "live"
#: The socket.io room of ``/presence`` consoles that subscribed.
PRESENCE_SUBSCRIBERS = "subscribers"
#: Fields of worker events that mean nothing outside the worker.
_WORKER_FIELDS = frozenset({"t_ns", "t"})


class FloorPriority(IntEnum):
    """Floor priority (TS 24.380 §8.2.3.2, 0-255) of a console's ordinary request, by role."""

    OFFICER = 100
    DISPATCHER = 200


class CallType(StrEnum):
    """The call types of TS 24.379, as the floor events name them."""

    NORMAL = "normal"
    IMMINENT_PERIL = "imminent-peril"
    EMERGENCY = "emergency"


class FloorState(StrEnum):
    """The floor as the console shows it."""

    IDLE = "idle"
    TAKEN = "taken"
    REVOKING = "revoking"


class AlertState(StrEnum):
    """An alert's state, as ``Control.alerts`` keeps it; consoles drop cleared alerts."""

    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


_ROLE_PRIORITY = {
    Role.DISPATCHER: FloorPriority.DISPATCHER,
    Role.ADMIN: FloorPriority.DISPATCHER,
    Role.OFFICER: FloorPriority.OFFICER,
}


# ------------------------------------------------------------------------ the reducer
def _idle_floor() -> dict[str, Any]:
    return {
        "state": FloorState.IDLE,
        "holder": None,
        "user_id": "",
        "alias": "",
        "call_type": CallType.NORMAL,
        "priority": None,
        "cause": None,
        "queue": [],
    }


class ConsoleState:
    """What a console knows: rooms, participants, floor, talkers and alerts.

    A pure reducer over the core's events (:meth:`apply`), JSON in and out. The server keeps
    one (its snapshots are :meth:`to_dict`) and every console runs the same rules (the
    console's ``app.js`` mirrors this class), so both end in the same state. Applying an
    event twice leaves the state as applying it once.
    """

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, Any]] = {}
        self.alerts: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsoleState:
        state = cls()
        state.rooms = copy.deepcopy(data.get("rooms", {}))
        state.alerts = copy.deepcopy(data.get("alerts", {}))
        return state

    def to_dict(self) -> dict[str, Any]:
        return {"rooms": copy.deepcopy(self.rooms), "alerts": copy.deepcopy(self.alerts)}

    def seed_room(self, room: Any) -> None:
        """Take a :class:`bridge.model.Room` from the state store (at start-up)."""
        entry = self._room(room.id, name=room.name, mode=str(room.mode), record=room.record)
        for p in room.participants.values():
            entry["participants"][p.id] = _participant(
                p.id, str(p.kind), p.name, gain=p.gain, muted=p.muted
            )

    def _room(self, room_id: str, **fields: Any) -> dict[str, Any]:
        room = self.rooms.get(room_id)
        if room is None:
            room = {
                "id": room_id,
                "name": room_id,
                "mode": "open",
                "record": False,
                "participants": {},
                "floor": _idle_floor(),
                "talking": [],
            }
            self.rooms[room_id] = room
        room.update({k: v for k, v in fields.items() if v is not None})
        return room

    def apply(self, event: dict[str, Any]) -> None:
        handler = self._HANDLERS.get(str(event.get("event", "")))
        room_id = event.get("room")
        if handler is None or not isinstance(room_id, str):
            return
        if event["event"] != "room_created" and room_id not in self.rooms:
            return
        handler(self, room_id, event)

    # Rooms and participants.
    def _room_created(self, room_id: str, e: dict[str, Any]) -> None:
        self._room(room_id, name=e.get("name"), mode=e.get("mode"), record=e.get("record"))

    def _room_deleted(self, room_id: str, e: dict[str, Any]) -> None:
        del self.rooms[room_id]
        for alert_id in [a for a, alert in self.alerts.items() if alert.get("room") == room_id]:
            del self.alerts[alert_id]

    def _recording(self, room_id: str, e: dict[str, Any]) -> None:
        self.rooms[room_id]["record"] = bool(e.get("recording"))

    def _joined(self, room_id: str, e: dict[str, Any]) -> None:
        pid = str(e["participant"])
        participants = self.rooms[room_id]["participants"]
        if pid not in participants:
            participants[pid] = _participant(
                pid, str(e.get("kind") or ""), str(e.get("name") or "")
            )

    def _left(self, room_id: str, e: dict[str, Any]) -> None:
        room = self.rooms[room_id]
        pid = e.get("participant")
        room["participants"].pop(pid, None)
        if pid in room["talking"]:
            room["talking"].remove(pid)

    def _participant_updated(self, room_id: str, e: dict[str, Any]) -> None:
        p = self.rooms[room_id]["participants"].get(e.get("participant"))
        if p is not None:
            for key in ("gain", "muted", "receive_only", "alias", "name"):
                if e.get(key) is not None:
                    p[key] = e[key]

    # Talkers.
    def _talking(self, room_id: str, e: dict[str, Any]) -> None:
        talking: list[str] = self.rooms[room_id]["talking"]
        pid = e.get("participant")
        if isinstance(pid, str) and pid not in talking:
            talking.append(pid)
            talking.sort()

    def _stopped_talking(self, room_id: str, e: dict[str, Any]) -> None:
        talking: list[str] = self.rooms[room_id]["talking"]
        if e.get("participant") in talking:
            talking.remove(e["participant"])

    # Floor (TS 24.380 §6.3.4 as bridge.floor publishes it).
    def _floor_taken(self, room_id: str, e: dict[str, Any]) -> None:
        floor = self.rooms[room_id]["floor"]
        floor.update(
            state=FloorState.TAKEN,
            holder=e.get("participant"),
            user_id=e.get("user_id") or "",
            alias=e.get("alias") or "",
            call_type=e.get("call_type") or CallType.NORMAL,
            priority=e.get("priority"),
            cause=None,
        )
        floor["queue"] = [q for q in floor["queue"] if q["participant"] != e.get("participant")]

    def _floor_idle(self, room_id: str, e: dict[str, Any]) -> None:
        queue = self.rooms[room_id]["floor"]["queue"]
        self.rooms[room_id]["floor"] = {**_idle_floor(), "queue": queue}

    def _floor_released(self, room_id: str, e: dict[str, Any]) -> None:
        floor = self.rooms[room_id]["floor"]
        if floor["holder"] == e.get("participant"):
            self._floor_idle(room_id, e)

    def _floor_revoked(self, room_id: str, e: dict[str, Any]) -> None:
        floor = self.rooms[room_id]["floor"]
        if floor["holder"] is not None:
            floor["state"] = FloorState.REVOKING
            floor["cause"] = e.get("cause")

    def _floor_queued(self, room_id: str, e: dict[str, Any]) -> None:
        floor = self.rooms[room_id]["floor"]
        pid = e.get("participant")
        queue = [q for q in floor["queue"] if q["participant"] != pid]
        queue.append(
            {
                "participant": pid,
                "user_id": e.get("user_id") or "",
                "alias": e.get("alias") or "",
                "position": e.get("position"),
                "call_type": e.get("call_type") or CallType.NORMAL,
                "priority": e.get("priority"),
            }
        )
        queue.sort(key=lambda q: (q["position"] is None, q["position"] or 0, q["participant"]))
        floor["queue"] = queue

    def _floor_dequeued(self, room_id: str, e: dict[str, Any]) -> None:
        floor = self.rooms[room_id]["floor"]
        floor["queue"] = [q for q in floor["queue"] if q["participant"] != e.get("participant")]

    # Emergency alerts: each event carries the whole alert, as Control keeps it.
    def _alert_changed(self, room_id: str, e: dict[str, Any]) -> None:
        alert = e.get("alert")
        if isinstance(alert, dict) and "id" in alert:
            self.alerts[str(alert["id"])] = copy.deepcopy(alert)

    def _alert_cleared(self, room_id: str, e: dict[str, Any]) -> None:
        alert = e.get("alert")
        if isinstance(alert, dict):
            self.alerts.pop(str(alert.get("id")), None)

    _HANDLERS: ClassVar[dict[str, Callable[[ConsoleState, str, dict[str, Any]], None]]] = {
        "room_created": _room_created,
        "room_deleted": _room_deleted,
        "recording": _recording,
        "joined": _joined,
        "left": _left,
        "participant_updated": _participant_updated,
        "talking": _talking,
        "stopped_talking": _stopped_talking,
        "floor_granted": _floor_taken,
        "floor_taken": _floor_taken,
        "floor_idle": _floor_idle,
        "floor_released": _floor_released,
        "floor_revoked": _floor_revoked,
        "floor_queued": _floor_queued,
        "floor_queue_cancelled": _floor_dequeued,
        "floor_denied": _floor_dequeued,
        "emergency_raised": _alert_changed,
        "emergency_acknowledged": _alert_changed,
        "emergency_cleared": _alert_cleared,
    }


def _participant(
    pid: str, kind: str, name: str, *, gain: float = 1.0, muted: bool = False
) -> dict[str, Any]:
    return {
        "id": pid,
        "kind": kind,
        "name": name,
        "alias": "",
        "gain": gain,
        "muted": muted,
        "receive_only": False,
    }


# ---------------------------------------------------------------- action payloads
class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoomRef(_Schema):
    room: str = Field(min_length=1, max_length=64)


class PttPress(RoomRef):
    participant: str | None = None
    override: bool = False
    emergency: bool = False
    imminent_peril: bool = False


class PttRelease(RoomRef):
    participant: str | None = None


class FloorRevoke(RoomRef):
    cause: int = Field(default=255, ge=0, le=255)


class ParticipantRef(RoomRef):
    participant: str = Field(min_length=1)


class ReceiveOnly(ParticipantRef):
    receive_only: bool


class ParticipantPatch(ParticipantRef):
    gain: float | None = Field(default=None, ge=0.0, le=8.0)
    muted: bool | None = None


class AlertRef(_Schema):
    alert: str = Field(min_length=1)
    room: str | None = None


class RecordingSwitch(RoomRef):
    recording: bool


class ResumeFrom(_Schema):
    epoch: str | None = None
    seq: int | None = None


class ActionError(Exception):
    """An action failed; ``status`` is the HTTP status the REST twin would answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _validate(schema: type[BaseModel], data: Any) -> Any:
    try:
        return schema.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ActionError(422, validation_reason(exc)) from None


def identity_from(authority: TokenAuthority, environ: dict[str, Any], auth: Any) -> Identity:
    """The identity of a connecting client: the ``auth`` token, else the login cookie.

    Raises :class:`socketio.exceptions.ConnectionRefusedError` with the reason.
    """
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        cookie: SimpleCookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        morsel = cookie.get(TOKEN_COOKIE)
        token = morsel.value if morsel is not None else None
    if not token or not isinstance(token, str):
        raise socketio.exceptions.ConnectionRefusedError("authentication required")
    try:
        return authority.verify(token)
    except AuthError as exc:
        raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None


Action = Callable[[Identity, Any], Awaitable[dict[str, Any]]]


class RoomsNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """``/rooms``: resume, snapshots, and the console's actions."""

    def __init__(self, hub: Signalling) -> None:
        super().__init__(ROOMS_NAMESPACE)
        self.hub = hub
        self.identities: dict[str, Identity] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.identities[sid] = identity_from(self.hub.authority, environ, auth)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.identities.pop(sid, None)

    def _close_expired(self, sid: str) -> None:
        """Disconnect ``sid``, whose token has expired, once its current answer is sent."""
        # A task: the acknowledgement is queued as soon as the handler returns, before
        # this runs, so the console reads why before it sees the disconnect.
        self.hub.spawn(self.disconnect(sid))

    async def on_resume(self, sid: str, data: Any = None) -> dict[str, Any]:
        identity = self.identities[sid]
        try:
            since: ResumeFrom = _validate(ResumeFrom, data)
        except ActionError as exc:
            return {"ok": False, "error": str(exc), "status": exc.status}
        # Computed and joined with no await in between: the next live event follows it.
        answer = self.hub.resume(since.epoch, since.seq)
        await self.enter_room(sid, LIVE)
        return {"ok": True, "user": identity.user, "role": str(identity.role), **answer}

    async def on_snapshot(self, sid: str, data: Any = None) -> dict[str, Any]:
        return {"ok": True, "snapshot": self.hub.snapshot()}

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in _LIFECYCLE_EVENTS:
            return await super().trigger_event(event, *args)
        sid = args[0]
        identity = self.identities.get(sid)
        if identity is None:
            return dict(_UNAUTHENTICATED_ANSWER)
        action = self.hub.actions.get(event)
        if action is None:
            # resume, snapshot and the webrtc_* handlers: none of them for an expired token.
            if identity.expired():
                self._close_expired(sid)
                return dict(_EXPIRED_ANSWER)
            return await super().trigger_event(event, *args)
        data = args[1] if len(args) > 1 else None
        answer = await self.hub.act(identity, event, action, data)
        if identity.expired():
            self._close_expired(sid)
        return answer


class PresenceNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """``/presence``: a GeoJSON snapshot on ``subscribe``, then coalesced updates.

    One :class:`bridge.presence.Coalescer` serves every subscribed console: each period's
    batch (the latest fix of every unit that moved) is built and serialised once and the
    same packet goes to all of them (socket.io room :data:`PRESENCE_SUBSCRIBERS`), so the
    cost of a fix does not grow with the number of consoles.
    """

    def __init__(self, hub: Signalling) -> None:
        super().__init__(PRESENCE_NAMESPACE)
        self.hub = hub
        self.coalescer: Coalescer[dict[str, Any] | None] = Coalescer(
            hub.control.config.console.presence_rate_hz
        )
        self.subscribers: set[str] = set()
        self.identities: dict[str, Identity] = {}
        self.timer: asyncio.TimerHandle | None = None

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.identities[sid] = identity_from(self.hub.authority, environ, auth)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.subscribers.discard(sid)
        self.identities.pop(sid, None)

    async def on_subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        identity = self.identities.get(sid)
        if identity is None:
            return dict(_UNAUTHENTICATED_ANSWER)
        if identity.expired():
            self.hub.spawn(self.disconnect(sid))  # after the answer, as on /rooms
            return dict(_EXPIRED_ANSWER)
        # The snapshot answers at once; later changes come in the shared batches.
        await self.enter_room(sid, PRESENCE_SUBSCRIBERS)
        self.subscribers.add(sid)
        return {"ok": True, "epoch": self.hub.control.epoch, **self.hub.presence.geojson()}

    def offer(self, unit_id: str, feature: dict[str, Any] | None) -> None:
        """A unit moved (``feature``) or went away (None): queue it for the next batch."""
        if not self.subscribers:
            return
        self.coalescer.offer(unit_id, feature)
        if self.timer is None:
            self._flush()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _flush(self) -> None:
        self.timer = None
        batch = self.coalescer.due()
        if batch is not None and self.subscribers:
            features = [f for f in batch.values() if f is not None]
            removed = [unit for unit, f in batch.items() if f is None]
            payload = {
                "type": "FeatureCollection",
                "features": features,
                "removed": removed,
                "epoch": self.hub.control.epoch,
                "time": time.time(),
            }
            self.hub.spawn(self.emit("presence", payload, room=PRESENCE_SUBSCRIBERS))
        due = self.coalescer.next_due()
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(delay, self._flush)


class Signalling:
    """The socket.io server, its console state and its actions; one per app."""

    def __init__(
        self,
        control: Control,
        authority: TokenAuthority,
        audit: AuditLog,
        presence: PresenceFeed,
    ) -> None:
        self.control = control
        self.authority = authority
        self.audit = audit
        self.presence = presence
        self.server = socketio.AsyncServer(
            async_mode="aiohttp", logger=False, engineio_logger=False
        )
        self.state = ConsoleState()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_HISTORY)
        self.seq = 0
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.rooms = RoomsNamespace(self)
        self.positions = PresenceNamespace(self)
        self.server.register_namespace(self.rooms)
        self.server.register_namespace(self.positions)
        self.actions: dict[str, Action] = {
            "ptt_press": self._ptt_press,
            "ptt_release": self._ptt_release,
            "floor_revoke": self._floor_revoke,
            "floor_grant": self._floor_grant,
            "receive_only": self._receive_only,
            "emergency_ack": self._emergency_ack,
            "emergency_clear": self._emergency_clear,
            "kick": self._kick,
            "participant_patch": self._participant_patch,
            "recording": self._recording,
            "dial": self._dial,
            "call_hangup": self._call_hangup,
        }

    # ------------------------------------------------------------- lifecycle
    def attach(self, app: web.Application) -> None:
        self.server.attach(app)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._stop)

    async def _shutdown(self, app: web.Application) -> None:
        # Open websockets would hold the server's graceful shutdown for its whole timeout.
        # Close the transports without a goodbye, as a lost connection would: consoles
        # then reconnect and resume by themselves (after a goodbye they would not).
        for socket in list(self.server.eio.sockets.values()):
            await socket.close(wait=False, abort=True)
            await socket.queue.put(None)  # ends the websocket writer, which closes it
        await self.server.shutdown()

    async def _start(self, app: web.Application) -> None:
        # Subscribe first: what happens while the rooms load waits in the outbox, and
        # applying an event the loaded rooms already show changes nothing.
        self.seq = self.control.sequence
        self._unsubscribe.append(self.control.subscribe(self._on_event))
        self._unsubscribe.append(self.presence.subscribe(self._on_unit))
        for room in await self.control.list_rooms():
            self.state.seed_room(room)
        for alert in self.control.alerts.values():
            if alert.get("state") != AlertState.CLEARED:
                self.state.alerts[str(alert["id"])] = copy.deepcopy(alert)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def _stop(self, app: web.Application) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for task in [self._sender, *self._tasks]:
            if task is not None:
                task.cancel()
        self.positions.cancel()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- events
    def _on_event(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(event)

    async def _send_loop(self) -> None:
        """Each core event in order: complete it, fold it into the state, keep it, send it.

        State, history and ``seq`` change together between two awaits, so a resume (which
        reads all three with no await) always sees them agree; events still in the outbox
        reach a resumed console live.
        """
        while True:
            event = await self._outbox.get()
            try:
                event = await self._complete(event)
                self.state.apply(event)
                self.history.append(event)
                self.seq = int(event["seq"])
                await self.server.emit(
                    str(event["event"]), event, room=LIVE, namespace=ROOMS_NAMESPACE
                )
            except Exception:
                logger.exception("could not forward %s", event.get("event"))

    async def _complete(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy fit for consoles: without worker-local fields, with a new room's mode."""
        event = {key: value for key, value in event.items() if key not in _WORKER_FIELDS}
        if event.get("event") == "room_created" and "mode" not in event:
            room = await self.control.find_room(str(event.get("room")))
            if room is not None:
                event["mode"] = str(room.mode)
                event.setdefault("record", room.record)
        return event

    def _on_unit(self, unit_id: str, unit: Unit | None) -> None:
        feature = None if unit is None else self.presence.feature(unit)
        self.positions.offer(unit_id, feature)

    def snapshot(self) -> dict[str, Any]:
        """The whole console state at ``seq``, with presence as GeoJSON."""
        return {
            "epoch": self.control.epoch,
            "seq": self.seq,
            "time": time.time(),
            **self.state.to_dict(),
            "presence": self.presence.geojson(),
        }

    def resume(self, epoch: str | None, seq: int | None) -> dict[str, Any]:
        """Replay after ``(epoch, seq)`` if the history still holds it, else a snapshot."""
        if epoch == self.control.epoch and seq is not None and seq <= self.seq:
            if seq == self.seq:
                return {"epoch": epoch, "seq": seq, "replay": []}
            if self.history and self.history[0]["seq"] <= seq + 1:
                missed = [e for e in self.history if e["seq"] > seq]
                return {"epoch": epoch, "seq": self.seq, "replay": missed}
        return {"epoch": self.control.epoch, "seq": self.seq, "snapshot": self.snapshot()}

    # --------------------------------------------------------------- actions
    async def act(self, identity: Identity, name: str, action: Action, data: Any) -> dict[str, Any]:
        """Run one console action: check the token and role, call the core, audit, answer."""
        dispatcher_only = name not in ("ptt_press", "ptt_release") or _flagged(data, _OVERRIDES)
        allowed = (Role.DISPATCHER,) if dispatcher_only else (Role.DISPATCHER, Role.OFFICER)
        audited = dispatcher_only or identity.has(Role.DISPATCHER) or _flagged(data, _PRE_EMPTIONS)
        room = data.get("room") if isinstance(data, dict) else None
        if identity.expired():
            self._audit(identity, name, Outcome.DENIED, room, {"status": 401, "error": EXPIRED})
            return dict(_EXPIRED_ANSWER)
        if not identity.has(*allowed):
            needs = ", ".join(str(r) for r in allowed)
            reason = f"role {identity.role} may not do this (needs {needs})"
            self._audit(identity, name, Outcome.DENIED, room, {"status": 403, "error": reason})
            return {"ok": False, "status": 403, "error": reason}
        try:
            result = await action(identity, data)
        except ActionError as exc:
            answer = {"ok": False, "status": exc.status, "error": str(exc)}
        except NotFoundError as exc:
            answer = {"ok": False, "status": 404, "error": str(exc)}
        except ConflictError as exc:
            answer = {"ok": False, "status": 409, "error": str(exc)}
        except WorkerError as exc:
            status = 503 if exc.kind in ("AdmissionError", "Unavailable") else 400
            answer = {"ok": False, "status": status, "error": str(exc)}
        else:
            answer = {"ok": True, **result}
        if audited:
            if not answer["ok"]:
                outcome = Outcome.FAILED
            elif answer.get("result") == "denied":
                outcome = Outcome.DENIED
            else:
                outcome = Outcome.OK
            detail = {k: v for k, v in answer.items() if k != "ok"}
            if isinstance(data, dict):
                detail["request"] = without_secrets({k: v for k, v in data.items() if k != "room"})
            self._audit(identity, name, outcome, room, detail)
        return answer

    def _audit(
        self,
        identity: Identity,
        action: str,
        outcome: Outcome,
        room: Any,
        detail: dict[str, Any],
    ) -> None:
        self.audit.append(
            user=identity.user,
            role=str(identity.role),
            action=f"sio:{action}",
            outcome=outcome,
            room=room if isinstance(room, str) else None,
            detail=detail,
        )

    async def _room_id(self, name_or_id: str) -> str:
        room = await self.control.get_room(name_or_id)
        return room.id

    def _own_leg(self, identity: Identity, room_id: str, explicit: str | None) -> str:
        """The console's own participant in a room: its name is the console's user."""
        participants = self.state.rooms.get(room_id, {}).get("participants", {})
        if explicit is not None:
            if explicit not in participants:
                raise ActionError(404, f"unknown participant: {explicit}")
            if participants[explicit]["name"] != identity.user and not identity.has(
                Role.DISPATCHER
            ):
                raise ActionError(403, "an officer may only use its own leg")
            return explicit
        for pid, p in participants.items():
            if p["name"] == identity.user:
                return str(pid)
        raise ActionError(409, f"{identity.user} has no leg in room {room_id}")

    async def _ptt_press(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: PttPress = _validate(PttPress, data)
        room = await self._room_id(req.room)
        participant = self._own_leg(identity, room, req.participant)
        call_type = (
            CallType.EMERGENCY
            if req.emergency
            else CallType.IMMINENT_PERIL
            if req.imminent_peril
            else CallType.NORMAL
        )
        if req.override:
            await self.control.floor_override(room, participant, call_type=call_type)
            result = _override_result(await self.control.floor_state(room), participant)
        else:
            result = await self.control.floor_request(
                room,
                participant,
                priority=int(_ROLE_PRIORITY.get(identity.role, FloorPriority.OFFICER)),
                call_type=call_type,
            )
        return {"room": room, "participant": participant, **_floor_result(result)}

    async def _ptt_release(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: PttRelease = _validate(PttRelease, data)
        room = await self._room_id(req.room)
        participant = self._own_leg(identity, room, req.participant)
        await self.control.floor_release(room, participant)
        return {"room": room, "participant": participant, "result": "released"}

    async def _floor_revoke(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: FloorRevoke = _validate(FloorRevoke, data)
        room = await self._room_id(req.room)
        await self.control.floor_revoke(room, req.cause)
        return {"room": room, "cause": req.cause}

    async def _floor_grant(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: ParticipantRef = _validate(ParticipantRef, data)
        room = await self._room_id(req.room)
        await self.control.floor_grant_to(room, req.participant)
        return {"room": room, "participant": req.participant}

    async def _receive_only(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: ReceiveOnly = _validate(ReceiveOnly, data)
        room = await self._room_id(req.room)
        await self.control.floor_receive_only(room, req.participant, req.receive_only)
        return {"room": room, "participant": req.participant, "receive_only": req.receive_only}

    async def _emergency_ack(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: AlertRef = _validate(AlertRef, data)
        alert = self.control.acknowledge_alert(req.alert, identity.user)
        return {"alert": req.alert, "room": alert.get("room"), "state": alert.get("state")}

    async def _emergency_clear(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: AlertRef = _validate(AlertRef, data)
        alert = self.control.clear_alert(req.alert, identity.user)
        return {"alert": req.alert, "room": alert.get("room"), "state": alert.get("state")}

    async def _kick(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: ParticipantRef = _validate(ParticipantRef, data)
        room = await self._room_id(req.room)
        await self.control.leave(room, req.participant)
        return {"room": room, "participant": req.participant}

    async def _participant_patch(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: ParticipantPatch = _validate(ParticipantPatch, data)
        room = await self._room_id(req.room)
        participant = await self.control.update_participant(
            room, req.participant, gain=req.gain, muted=req.muted
        )
        return {
            "room": room,
            "participant": participant.id,
            "gain": participant.gain,
            "muted": participant.muted,
        }

    async def _recording(self, identity: Identity, data: Any) -> dict[str, Any]:
        req: RecordingSwitch = _validate(RecordingSwitch, data)
        room = await self.control.set_recording(req.room, req.recording)
        return {"room": room.id, "recording": room.record}

    async def _dial(self, identity: Identity, data: Any) -> dict[str, Any]:
        """Dial a phone into a room (the SIP gateway; REST twin: POST /api/rooms/{room}/calls)."""
        from bridge.gatewaylink import LinkError

        from .app import LINK_ERROR_STATUS
        from .calls_api import DialRequest, dial

        if not isinstance(data, dict):
            raise ActionError(422, "body must be an object")
        req: RoomRef = _validate(RoomRef, {"room": data.get("room")})
        body = {k: v for k, v in data.items() if k != "room"}
        _validate(DialRequest, body)
        try:
            call = await dial(self.control, req.room, body, identity.user)
        except LinkError as exc:
            raise ActionError(LINK_ERROR_STATUS.get(exc.kind, 502), str(exc)) from None
        return {"room": call["room"], "call": call}

    async def _call_hangup(self, identity: Identity, data: Any) -> dict[str, Any]:
        """Hang up a SIP call (REST twin: DELETE /api/rooms/{room}/calls/{call})."""
        from bridge.gatewaylink import LinkError

        from .app import LINK_ERROR_STATUS

        room = data.get("room") if isinstance(data, dict) else None
        call = data.get("call") if isinstance(data, dict) else None
        if not isinstance(room, str) or not isinstance(call, str):
            raise ActionError(422, "room and call are required")
        try:
            await self.control.gateways.request("sip", "hangup", room=room, call=call)
        except LinkError as exc:
            raise ActionError(LINK_ERROR_STATUS.get(exc.kind, 502), str(exc)) from None
        return {"room": room, "call": call}


#: socket.io's own events, which are not a console's requests.
_LIFECYCLE_EVENTS = frozenset({"connect", "disconnect"})
#: The answer to anything a console asks once its token has expired.
_EXPIRED_ANSWER: dict[str, Any] = {"ok": False, "status": 401, "error": EXPIRED}
#: The answer to a request on a connection that has no identity (it never had one).
_UNAUTHENTICATED_ANSWER: dict[str, Any] = {
    "ok": False,
    "status": 401,
    "error": "authentication required",
}
#: PTT flags only a dispatcher may set.
_OVERRIDES = ("override", "emergency")
#: PTT flags that may pre-empt the holder, and so are audited whoever sets them.
_PRE_EMPTIONS = ("override", "emergency", "imminent_peril")


def _flagged(data: Any, flags: tuple[str, ...]) -> bool:
    return isinstance(data, dict) and any(bool(data.get(flag)) for flag in flags)


def _override_result(state: dict[str, Any], participant: str) -> dict[str, Any]:
    """An override's outcome: granted at once, or queued at the head until T3 (§6.3.4.4)."""
    if state.get("holder") == participant:
        return {"result": "granted"}
    queue = list(state.get("queue") or [])
    if participant in queue:
        return {"result": "queued", "position": queue.index(participant) + 1}
    return {"result": "pending"}


def _floor_result(result: Any) -> dict[str, Any]:
    """A floor call's answer as the acknowledgement carries it (``result`` and details)."""
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "ok"}
    if result is None:
        return {}
    return {"result": str(result)}


SIGNALLING: web.AppKey[Signalling] = web.AppKey("signalling", Signalling)


def setup(
    app: web.Application,
    control: Control,
    authority: TokenAuthority,
    audit: AuditLog,
    presence: PresenceFeed,
) -> Signalling:
    """Attach the socket.io server to ``app`` (at ``/socket.io/``) and return it."""
    from . import webrtc_api  # it builds on this module

    hub = Signalling(control, authority, audit, presence)
    hub.attach(app)
    app[SIGNALLING] = hub
    webrtc_api.setup(app, hub)
    return hub
