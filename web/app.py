"""The control process's aiohttp app: REST for rooms, participants and recordings.

It talks to the core (:class:`bridge.control.Control`) and never to a gateway's
internals, and it never does media work. Every error is a JSON body
``{"error": reason}`` with a 4xx status (5xx only for the server's own faults).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from bridge.audit import AuditLog
from bridge.config import FloorSettings
from bridge.control import ConflictError, Control, NotFoundError, WorkerError
from bridge.gatewaylink import LinkError
from bridge.gateways import rtp as rtp_gateway
from bridge.gateways.rtp import RtpJoin
from bridge.model import RoomMode

from . import metrics
from .auth import AuthError, Identity, Role, TokenAuthority
from .openapi import TOKEN_COOKIE, Empty, mark_roles, operation, read_body

logger = logging.getLogger("bridge.web")

CONTROL: web.AppKey[Control] = web.AppKey("control", Control)
AUTHORITY: web.AppKey[TokenAuthority] = web.AppKey("authority", TokenAuthority)
IDENTITY = "identity"
#: Failed logins allowed per client address per minute.
LOGIN_ATTEMPTS_PER_MINUTE = 10
#: The window, in seconds, :data:`LOGIN_ATTEMPTS_PER_MINUTE` counts failures in.
LOGIN_WINDOW_S = 60.0
#: Client addresses the failed-login table keeps at most; the least recent go first.
MAX_LOGIN_FAILURE_PEERS = 10_000
#: How the ``Authorization`` header carries a token.
BEARER_PREFIX = "Bearer "

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Method = Callable[[Any, web.Request], Awaitable[web.StreamResponse]]


#: A gateway's refusal (bridge.gatewaylink.LinkError kind) as an HTTP status.
LINK_ERROR_STATUS = {
    "NotFound": 404,
    "Conflict": 409,
    "Invalid": 400,
    "Forbidden": 403,
    "Busy": 503,  # a limit reached: calls, room size, publishers
    "Unavailable": 503,
    "Error": 502,
}


def json_error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoomCreate(_Schema):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    mode: RoomMode = RoomMode.OPEN
    record: bool = False
    floor: FloorSettings = FloorSettings()
    #: An ``open`` room also mixes its monitor-only sources (camera audio) for everyone.
    monitor_to_mix: bool = False


class FloorAction(StrEnum):
    REQUEST = "request"
    RELEASE = "release"
    REVOKE = "revoke"
    GRANT = "grant"
    OVERRIDE = "override"
    RECEIVE_ONLY = "receive_only"


class FloorCommand(_Schema):
    """A floor action in a ptt room (3GPP TS 24.380); dispatcher actions are audited."""

    action: FloorAction
    participant: str | None = None
    priority: int | None = Field(default=None, ge=0, le=255)
    call_type: Literal["normal", "imminent-peril", "emergency"] = "normal"
    receive_only: bool = True
    cause: int = Field(default=255, ge=0, le=255)


class ParticipantPatch(_Schema):
    gain: float | None = Field(default=None, ge=0.0, le=8.0)
    muted: bool | None = None


class RecordingSwitch(_Schema):
    recording: bool


# ----------------------------------------------------------- answers (OpenAPI)
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Endpoint(_Answer):
    ip: str
    port: int


class ParticipantOut(_Answer):
    id: str
    kind: str
    name: str
    codec: str
    payload_type: int
    gain: float
    muted: bool
    dispatcher: bool
    monitor_only: bool


class RoomOut(_Answer):
    id: str
    name: str
    mode: RoomMode
    rate: int
    record: bool
    worker: int
    monitor_to_mix: bool
    participants: list[ParticipantOut]


class RoomList(_Answer):
    rooms: list[RoomOut]


class JoinAnswer(_Answer):
    """Where the leg sends RTP and RTCP, and the SSRC the bridge sends it with."""

    id: str
    room: str
    rtp: Endpoint
    rtcp: Endpoint
    ssrc: int


class ParticipantState(_Answer):
    id: str
    gain: float
    muted: bool


class ParticipantStats(BaseModel):
    """A leg's counters from its media worker (more fields may follow)."""

    model_config = ConfigDict(extra="allow")

    received: int
    sent: int
    dropped: dict[str, int]
    latched: bool
    remote: str | None


class RecordingState(_Answer):
    room: str
    recording: bool


class FloorStateOut(_Answer):
    """The general floor state machine (TS 24.380 §6.3.4) of a ptt room."""

    state: str
    holder: str | None
    call_type: str
    queue: list[str]


class FloorOutcome(_Answer):
    """A floor request's or a revoke's result: granted, queued (position), denied (cause)."""

    result: Literal["granted", "queued", "denied", "pending", "revoked"]
    position: int | None = None
    cause: int | None = None
    reason: str | None = None


class FloorAnswer(RootModel[FloorOutcome | FloorStateOut]):
    """``request`` and ``revoke`` answer the outcome; the other actions the floor state."""


class Alert(_Answer):
    id: str
    room: str | None
    participant: str | None
    alias: str
    user_id: str
    call_type: str
    location: Any = None
    raised: float
    state: Literal["active", "acknowledged", "cleared"]
    acknowledged_by: str | None = None
    acknowledged: float | None = None
    cleared_by: str | None = None
    cleared: float | None = None


class AlertList(_Answer):
    alerts: list[Alert]


class RecordingOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    room: str
    name: str
    size: int
    duration_s: float | None
    started: str
    has_bursts: bool


class RecordingList(_Answer):
    recordings: list[RecordingOut]


class EventsQuery(_Answer):
    after: int = Field(default=0, description="the last sequence number seen")


class EventList(_Answer):
    epoch: str
    events: list[dict[str, Any]]


class WorkerStats(_Answer):
    workers: list[dict[str, Any]]


class Health(BaseModel):
    """The control process, each media worker, the recorder and each gateway process."""

    model_config = ConfigDict(extra="allow")

    status: str
    epoch: str
    control: dict[str, Any]
    workers: list[dict[str, Any]]
    recorder: dict[str, Any] | None


class LoginQuery(_Answer):
    code: str = Field(description="the one-time code of the demo login link")


class LoginAnswer(_Answer):
    user: str
    role: Role
    token: str


#: The JSON-body helper (400 / 422 with the reason) every route module shares.
_body = read_body


def require(*roles: Role) -> Callable[[Method], Method]:
    """Only identities with one of ``roles`` (or admin) may call the handler method."""

    def wrap(handler: Method) -> Method:
        async def guarded(api: Any, request: web.Request) -> web.StreamResponse:
            identity: Identity | None = request.get(IDENTITY)
            if identity is None:
                return json_error(401, "authentication required")
            if not identity.has(*roles):
                allowed = ", ".join(str(r) for r in roles)
                return json_error(403, f"role {identity.role} may not do this (needs {allowed})")
            return await handler(api, request)

        functools.update_wrapper(guarded, handler)
        return mark_roles(guarded, roles)

    return wrap


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except NotFoundError as exc:
        return json_error(404, str(exc))
    except ConflictError as exc:
        return json_error(409, str(exc))
    except WorkerError as exc:
        status = 503 if exc.kind in ("AdmissionError", "Unavailable") else 400
        return json_error(status, str(exc))
    except LinkError as exc:
        return json_error(LINK_ERROR_STATUS[exc.kind], str(exc))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the identity from a bearer token, else from the login cookie.

    A bad bearer token is refused (401 with the reason). A bad login cookie (one whose
    token expired, most often) is not: the request goes on without an identity, so the
    public routes (the console, login, logout, socket.io) still work and the protected
    ones answer their own 401, and the response drops the cookie.
    """
    header = request.headers.get("Authorization", "")
    if header.startswith(BEARER_PREFIX):
        bearer = header[len(BEARER_PREFIX) :]
        if bearer:
            try:
                request[IDENTITY] = request.app[AUTHORITY].verify(bearer)
            except AuthError as exc:
                return json_error(401, str(exc))
        return await handler(request)
    cookie = request.cookies.get(TOKEN_COOKIE)
    if not cookie:
        return await handler(request)
    try:
        request[IDENTITY] = request.app[AUTHORITY].verify(cookie)
    except AuthError:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _drop_token_cookie(exc)
            raise
        _drop_token_cookie(response)
        return response
    return await handler(request)


def _drop_token_cookie(response: web.StreamResponse) -> None:
    """Tell the browser to forget its login cookie, unless ``response`` sets a new one."""
    if not response.prepared and TOKEN_COOKIE not in response.cookies:
        response.del_cookie(TOKEN_COOKIE)


def _room_json(room: Any) -> dict[str, Any]:
    return {
        "id": room.id,
        "name": room.name,
        "mode": str(room.mode),
        "rate": room.rate,
        "record": room.record,
        "worker": room.worker,
        "monitor_to_mix": room.monitor_to_mix,
        "participants": [
            {
                "id": p.id,
                "kind": str(p.kind),
                "name": p.name,
                "codec": p.codec,
                "payload_type": p.payload_type,
                "gain": p.gain,
                "muted": p.muted,
                "dispatcher": p.dispatcher,
                "monitor_only": p.monitor_only,
            }
            for p in room.participants.values()
        ],
    }


class Api:
    """Route handlers; one instance per app."""

    def __init__(self) -> None:
        #: Recent failed logins per client address, least recently failed first.
        self._login_failures: OrderedDict[str, list[float]] = OrderedDict()

    @operation(
        "Health of the control process, media workers, recorder and gateways",
        response=Health,
        public=True,
    )
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(request.app[CONTROL].health())

    @operation("Prometheus metrics", content="text/plain")
    @require(Role.OBSERVER, Role.DISPATCHER)
    async def metrics(self, request: web.Request) -> web.Response:
        body = await metrics.render(request.app[CONTROL], request.app.get(metrics.COUNTS))
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    @operation(
        "Redeem a one-time login code for a token (rate-limited per client)",
        query=LoginQuery,
        response=LoginAnswer,
        responses={303: None},
        errors=(401, 429),
        public=True,
    )
    async def login(self, request: web.Request) -> web.Response:
        """Redeem a one-time login code (demo mode) for a token; rate-limited per client."""
        peer = request.remote or "?"
        now = time.monotonic()
        recent = self._recent_failures(peer, now)
        if len(recent) >= LOGIN_ATTEMPTS_PER_MINUTE:
            return json_error(429, "too many failed logins; try again in a minute")
        code = request.query.get("code", "")
        authority = request.app[AUTHORITY]
        try:
            identity, token = authority.redeem(code)
        except AuthError as exc:
            self._login_failed(peer, recent, now)
            return json_error(401, str(exc))
        response = web.json_response(
            {"user": identity.user, "role": str(identity.role), "token": token}
        )
        response.set_cookie(
            TOKEN_COOKIE, token, httponly=True, samesite="Strict", max_age=authority.ttl_s
        )
        return response

    def _recent_failures(self, peer: str, now: float) -> list[float]:
        """``peer``'s failed logins within the window; a peer with none leaves the table."""
        recent = [t for t in self._login_failures.get(peer, []) if now - t < LOGIN_WINDOW_S]
        if recent:
            self._login_failures[peer] = recent
        else:
            self._login_failures.pop(peer, None)
        return recent

    def _login_failed(self, peer: str, recent: list[float], now: float) -> None:
        """Count a failed login; past :data:`MAX_LOGIN_FAILURE_PEERS` the stalest peer goes."""
        self._login_failures[peer] = [*recent, now]
        self._login_failures.move_to_end(peer)
        while len(self._login_failures) > MAX_LOGIN_FAILURE_PEERS:
            self._login_failures.popitem(last=False)

    @operation("List rooms with their participants", response=RoomList)
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def list_rooms(self, request: web.Request) -> web.Response:
        rooms = await request.app[CONTROL].list_rooms()
        return web.json_response({"rooms": [_room_json(r) for r in rooms]})

    @operation("One room, by name or id", response=RoomOut, errors=(404,))
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def get_room(self, request: web.Request) -> web.Response:
        room = await request.app[CONTROL].get_room(request.match_info["room"])
        return web.json_response(_room_json(room))

    @operation("Create a room", request=RoomCreate, response=RoomOut, status=201, errors=(409, 503))
    @require(Role.DISPATCHER)
    async def create_room(self, request: web.Request) -> web.Response:
        body: RoomCreate = await _body(request, RoomCreate)
        room = await request.app[CONTROL].create_room(
            body.name,
            body.mode,
            body.record,
            body.floor.model_dump(),
            monitor_to_mix=body.monitor_to_mix,
        )
        return web.json_response(_room_json(room), status=201)

    @operation("Delete a room", response=Empty, errors=(404,))
    @require(Role.DISPATCHER)
    async def delete_room(self, request: web.Request) -> web.Response:
        await request.app[CONTROL].delete_room(request.match_info["room"])
        return web.json_response({}, status=200)

    @operation(
        "Join a plain-RTP leg",
        request=RtpJoin,
        response=JoinAnswer,
        status=201,
        errors=(404, 409, 503),
    )
    @require(Role.DISPATCHER)
    async def join(self, request: web.Request) -> web.Response:
        body: RtpJoin = await _body(request, RtpJoin)
        answer = await rtp_gateway.join(request.app[CONTROL], request.match_info["room"], body)
        return web.json_response(answer, status=201)

    @operation("Remove (kick) a participant", response=Empty, errors=(404,))
    @require(Role.DISPATCHER)
    async def leave(self, request: web.Request) -> web.Response:
        await request.app[CONTROL].leave(
            request.match_info["room"], request.match_info["participant"]
        )
        return web.json_response({})

    @operation(
        "Change a participant's gain or mute",
        request=ParticipantPatch,
        response=ParticipantState,
        errors=(404,),
    )
    @require(Role.DISPATCHER)
    async def patch_participant(self, request: web.Request) -> web.Response:
        body: ParticipantPatch = await _body(request, ParticipantPatch)
        participant = await request.app[CONTROL].update_participant(
            request.match_info["room"],
            request.match_info["participant"],
            gain=body.gain,
            muted=body.muted,
        )
        return web.json_response(
            {"id": participant.id, "gain": participant.gain, "muted": participant.muted}
        )

    @operation("A participant's media counters", response=ParticipantStats, errors=(404,))
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def participant_stats(self, request: web.Request) -> web.Response:
        stats = await request.app[CONTROL].participant_stats(
            request.match_info["room"], request.match_info["participant"]
        )
        return web.json_response(stats)

    @operation(
        "Start or stop recording a room",
        request=RecordingSwitch,
        response=RecordingState,
        errors=(404,),
    )
    @require(Role.DISPATCHER)
    async def set_recording(self, request: web.Request) -> web.Response:
        body: RecordingSwitch = await _body(request, RecordingSwitch)
        room = await request.app[CONTROL].set_recording(request.match_info["room"], body.recording)
        return web.json_response({"room": room.id, "recording": room.record})

    @operation("A ptt room's floor state and queue", response=FloorStateOut, errors=(404,))
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def floor_state(self, request: web.Request) -> web.Response:
        state = await request.app[CONTROL].floor_state(request.match_info["room"])
        return web.json_response(state)

    @operation(
        "A floor action (TS 24.380): request, release, revoke, grant, override, receive_only",
        request=FloorCommand,
        response=FloorAnswer,
        errors=(404, 409),
    )
    @require(Role.DISPATCHER)
    async def floor(self, request: web.Request) -> web.Response:
        body: FloorCommand = await _body(request, FloorCommand)
        control = request.app[CONTROL]
        room = request.match_info["room"]
        if body.action is FloorAction.REVOKE:
            await control.floor_revoke(room, body.cause)
            return web.json_response({"result": "revoked"})
        if body.participant is None:
            return json_error(422, f"participant: required for {body.action}")
        if body.action is FloorAction.REQUEST:
            outcome = await control.floor_request(
                room, body.participant, priority=body.priority, call_type=body.call_type
            )
            return web.json_response(outcome)
        if body.action is FloorAction.RELEASE:
            await control.floor_release(room, body.participant)
        elif body.action is FloorAction.GRANT:
            await control.floor_grant_to(room, body.participant)
        elif body.action is FloorAction.OVERRIDE:
            await control.floor_override(room, body.participant, body.call_type)
        else:
            await control.floor_receive_only(room, body.participant, body.receive_only)
        return web.json_response(await control.floor_state(room))

    @operation("Emergency alerts", response=AlertList)
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def list_alerts(self, request: web.Request) -> web.Response:
        return web.json_response({"alerts": list(request.app[CONTROL].alerts.values())})

    @operation("Acknowledge or clear an emergency alert", response=Alert, errors=(404, 409))
    @require(Role.DISPATCHER)
    async def alert_action(self, request: web.Request) -> web.Response:
        control = request.app[CONTROL]
        identity: Identity = request[IDENTITY]
        alert_id, action = request.match_info["alert"], request.match_info["action"]
        if action == "acknowledge":
            return web.json_response(control.acknowledge_alert(alert_id, identity.user))
        if action == "clear":
            return web.json_response(control.clear_alert(alert_id, identity.user))
        return json_error(404, f"unknown alert action: {action}")

    @operation("Recordings", response=RecordingList)
    @require(Role.DISPATCHER)
    async def list_recordings(self, request: web.Request) -> web.Response:
        control = request.app[CONTROL]
        items = control.recorder.list() if control.recorder is not None else []
        return web.json_response({"recordings": items})

    @operation(
        "Download a recording (audio, or its burst index)",
        content="application/octet-stream",
        errors=(404,),
    )
    @require(Role.DISPATCHER)
    async def download_recording(self, request: web.Request) -> web.StreamResponse:
        control = request.app[CONTROL]
        if control.recorder is None:
            return json_error(404, "recording is disabled")
        path: Path | None = control.recorder.path_of(
            request.match_info["recording"], request.match_info.get("part", "audio")
        )
        if path is None:
            return json_error(404, f"unknown recording: {request.match_info['recording']}")
        return web.FileResponse(
            path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'}
        )

    @operation("Core events after a sequence number", query=EventsQuery, response=EventList)
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def events(self, request: web.Request) -> web.Response:
        control = request.app[CONTROL]
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return json_error(400, "after must be an integer sequence number")
        events = [e for e in control.events if e["seq"] > after]
        return web.json_response({"epoch": control.epoch, "events": events})

    @operation("Each media worker's statistics", response=WorkerStats)
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def worker_stats(self, request: web.Request) -> web.Response:
        control = request.app[CONTROL]
        stats = []
        for worker in control.workers:
            try:
                stats.append(await control.command(worker.index, "stats"))
            except WorkerError as exc:
                stats.append({"index": worker.index, "error": str(exc)})
        return web.json_response({"workers": stats})


def create_app(
    control: Control, authority: TokenAuthority, *, audit_log: AuditLog | None = None
) -> web.Application:
    # These modules use this one's helpers, so they are imported once it is complete.
    from bridge.gateways.trunking import affiliation as trunking

    from . import (
        audit_api,
        calls_api,
        cameras_api,
        console,
        openapi,
        patches_api,
        presence_api,
        sio,
    )

    app = web.Application(
        middlewares=[audit_api.audit_middleware, errors_middleware, auth_middleware]
    )
    app[CONTROL] = control
    app[AUTHORITY] = authority
    api = Api()
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/login", console.login_page(api.login))
    app.router.add_get("/api/rooms", api.list_rooms)
    app.router.add_post("/api/rooms", api.create_room)
    app.router.add_get("/api/rooms/{room}", api.get_room)
    app.router.add_delete("/api/rooms/{room}", api.delete_room)
    app.router.add_post("/api/rooms/{room}/participants", api.join)
    app.router.add_delete("/api/rooms/{room}/participants/{participant}", api.leave)
    app.router.add_patch("/api/rooms/{room}/participants/{participant}", api.patch_participant)
    app.router.add_get("/api/rooms/{room}/participants/{participant}/stats", api.participant_stats)
    app.router.add_post("/api/rooms/{room}/recording", api.set_recording)
    app.router.add_get("/api/rooms/{room}/floor", api.floor_state)
    app.router.add_post("/api/rooms/{room}/floor", api.floor)
    app.router.add_get("/api/alerts", api.list_alerts)
    app.router.add_post("/api/alerts/{alert}/{action}", api.alert_action)
    app.router.add_get("/api/recordings", api.list_recordings)
    app.router.add_get("/api/recordings/{recording}", api.download_recording)
    app.router.add_get("/api/recordings/{recording}/{part}", api.download_recording)
    app.router.add_get("/api/events", api.events)
    app.router.add_get("/api/workers", api.worker_stats)
    audit = audit_api.setup(app, audit_log or AuditLog(audit_api.default_path(control.config)))
    presence = presence_api.setup(app)
    patches_api.setup(app)
    trunking.setup(app, control, presence)
    cameras_api.setup(app)
    calls_api.setup(app)
    hub = sio.setup(app, control, authority, audit, presence)
    metrics.setup(app, control, lambda: len(hub.server.eio.sockets))
    console.setup(app, control.config.console)
    openapi.setup(app)
    return app
