"""The trunking control channel: LTE PTT handsets affiliate to talkgroups over HTTP.

This is the control-process half of the trunking gateway; the media-worker half is
:mod:`bridge.gateways.trunking.floorport`. It follows a pre-arranged group call (3GPP TS
24.379 §10.1.1) in spirit, on a deliberately light channel: where an MCPTT client sends a SIP
INVITE with an SDP offer to join a group, a handset here sends one JSON offer and gets one JSON
answer, and the floor-control and media planes (TS 24.380) are as in MCPTT.

``POST /api/trunking/affiliate`` (officer for itself; dispatcher or admin for anyone)::

    {"talkgroup": "tac-1", "user_id": "unit7", "alias": "Unit 7", "priority": 5,
     "pre_emptive": false, "codecs": ["opus", "AMR-WB"], "ssrc": 305419896,
     "rtp": {"ip": "10.0.0.7", "port": 5004}, "floor": {"ip": "10.0.0.7", "port": 5006}}

answered with ``201``::

    {"participant": "...", "talkgroup": "tac-1", "room": "...", "codec": "opus",
     "payload_type": 111, "clock_rate": 48000, "ptime": 20, "ssrc": ...,
     "rtp": {"ip", "port"}, "rtcp": {"ip", "port"}, "floor": {"ip", "port"}, "floor_ssrc": ...}

The handset sends RTP from ``rtp`` to the answer's ``rtp`` (SSRC ``ssrc`` of the offer) and
MCPT floor control from ``floor`` to the answer's ``floor``, with the same SSRC; the bridge
answers from those addresses, its media with the answer's ``ssrc`` and its floor messages with
``floor_ssrc``. Codec choice: the first offered codec the bridge can both decode and encode.
AMR-WB from handsets decodes (RFC 4867, through PyAV), but no AMR-WB encoder is available
(PyAV has none), and a leg uses one codec both ways, so an offer of AMR-WB alone is refused
with ``422``. An unknown talkgroup is ``404``; a talkgroup that is not a ``ptt`` room ``409``.
The same user affiliating again to the same talkgroup replaces its earlier affiliation.

``DELETE /api/trunking/affiliate/{participant}`` de-affiliates; ``GET
/api/trunking/affiliations`` lists them (an officer sees its own). ``POST
/api/trunking/location`` takes a location report, either an
``application/vnd.3gpp.mcptt-location-info+xml`` document (TS 24.379 annex F.3,
:mod:`bridge.locationinfo`) or JSON ``{"lat", "lon", ...}``, and feeds the presence registry
(the web app's :class:`~bridge.web.presence_api.PresenceFeed`); the unit is the reporting user
(a dispatcher may name one with ``?user=``).

When a media worker restarts, its legs come back from the state store; the affiliations on it
are registered on its floor port again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bridge.control import ConflictError, Control, NotFoundError, WorkerError
from bridge.locationinfo import CONTENT_TYPE as LOCATION_INFO_CONTENT_TYPE
from bridge.locationinfo import LocationReport
from bridge.model import Participant, ParticipantKind, RoomMode, RtpEndpoint
from bridge.presence import FixSource, GpsFix
from bridge.web.app import IDENTITY, json_error, require
from bridge.web.auth import Identity, Role
from bridge.web.openapi import Empty, operation, read_body
from bridge.web.presence_api import PRESENCE, Feature, PresenceFeed

from .floorport import PLUGIN_NAME

__all__ = [
    "OPUS_PAYLOAD_TYPE",
    "AffiliateRequest",
    "Affiliation",
    "AffiliationError",
    "Trunking",
    "choose_codec",
    "setup",
]

logger = logging.getLogger(__name__)

#: The dynamic payload type the bridge answers for Opus (RFC 7587), as most clients offer it.
OPUS_PAYLOAD_TYPE: Final = 111
OPUS_CLOCK_RATE: Final = 48000
PTIME_MS: Final = 20
#: Codecs offered toward handsets (decoded and encoded), by preference; lower-case MIME names.
SEND_RECEIVE_CODECS: Final = {"opus": ("opus", OPUS_PAYLOAD_TYPE)}
#: Codecs the bridge decodes from handsets but cannot encode toward them.
DECODE_ONLY_CODECS: Final = {"amr-wb": "AMR-WB"}
HTTP_UNPROCESSABLE: Final = 422
HTTP_FORBIDDEN: Final = 403
HTTP_CREATED: Final = 201
HTTP_OK: Final = 200
IPV4_PATTERN: Final = r"^\d{1,3}(\.\d{1,3}){3}$"
TALKGROUP_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
USER_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,64}$"
MAX_SSRC: Final = 0xFFFF_FFFF
MAX_CODECS: Final = 8


class AffiliationError(Exception):
    """An affiliation request the bridge refuses; ``status`` is its HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ------------------------------------------------------------------------------- schemas
class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Endpoint(_Schema):
    ip: str = Field(pattern=IPV4_PATTERN)
    port: int = Field(ge=1, le=65535)


class AffiliateRequest(_Schema):
    """A handset's offer: who it is, what it speaks and where it listens."""

    talkgroup: str = Field(pattern=TALKGROUP_PATTERN)
    user_id: str = Field(pattern=USER_PATTERN)
    alias: str = Field(default="", max_length=64)
    priority: int = Field(default=0, ge=0, le=255)
    pre_emptive: bool = False
    codecs: list[str] = Field(default_factory=lambda: ["opus"], min_length=1, max_length=MAX_CODECS)
    rtp: Endpoint
    floor: Endpoint
    ssrc: int = Field(ge=0, le=MAX_SSRC)


class LocationJson(_Schema):
    """A position in JSON: degrees, metres, metres per second; ``time`` in epoch seconds."""

    lat: float
    lon: float
    time: float | None = None
    altitude_m: float | None = None
    accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None


class AffiliateAnswer(_Schema):
    """Where the handset sends media and floor control, and what it was answered."""

    participant: str
    talkgroup: str
    room: str
    codec: str
    payload_type: int
    clock_rate: int
    ptime: int
    ssrc: int
    rtp: Endpoint
    rtcp: Endpoint
    floor: Endpoint
    floor_ssrc: int


class AffiliationOut(_Schema):
    participant: str
    room: str
    talkgroup: str
    user_id: str
    alias: str
    worker: int
    floor: Endpoint
    ssrc: int
    codec: str
    payload_type: int


class AffiliationList(_Schema):
    affiliations: list[AffiliationOut]


class LocationQuery(_Schema):
    user: str | None = Field(default=None, description="the unit (default: the token's user)")


@dataclass
class Affiliation:
    """One handset in one talkgroup."""

    participant: str
    room: str
    talkgroup: str
    user_id: str
    alias: str
    worker: int
    floor: dict[str, Any]
    ssrc: int
    codec: str
    payload_type: int


def choose_codec(offered: Sequence[str]) -> tuple[str, int]:
    """The codec and payload type to answer: the first offered that works both ways."""
    for name in offered:
        choice = SEND_RECEIVE_CODECS.get(name.lower())
        if choice is not None:
            return choice
    decode_only = [
        DECODE_ONLY_CODECS[n.lower()] for n in offered if n.lower() in DECODE_ONLY_CODECS
    ]
    if decode_only:
        raise AffiliationError(
            HTTP_UNPROCESSABLE,
            f"codec {decode_only[0]} is decoded only: no {decode_only[0]} encoder is available "
            "toward handsets; offer opus too",
        )
    raise AffiliationError(
        HTTP_UNPROCESSABLE, f"no common codec: offered {', '.join(offered)}; the bridge has opus"
    )


# ------------------------------------------------------------------------------- service
class Trunking:
    """Affiliations of the control process, kept in step with the rooms and the workers."""

    def __init__(self, control: Control, presence: PresenceFeed | None = None) -> None:
        self.control = control
        self.presence = presence
        self.affiliations: dict[str, Affiliation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = control.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()

    async def affiliate(self, offer: AffiliateRequest) -> dict[str, Any]:
        """Join the handset's leg to its talkgroup and register its floor endpoint."""
        control = self.control
        room = await control.find_room(offer.talkgroup)
        if room is None:
            raise NotFoundError(f"unknown talkgroup: {offer.talkgroup}")
        if room.mode is not RoomMode.PTT:
            raise ConflictError(f"talkgroup is not a ptt room: {room.name}")
        codec, payload_type = choose_codec(offer.codecs)
        for earlier in list(self.affiliations.values()):
            if earlier.user_id == offer.user_id and earlier.room == room.id:
                await self._leave(earlier)
        leg = Participant(
            id="",
            room="",
            kind=ParticipantKind.TRUNK,
            name=offer.alias,
            codec=codec,
            payload_type=payload_type,
            remote=RtpEndpoint(offer.rtp.ip, offer.rtp.port),
            ssrc=offer.ssrc,
            priority=offer.priority,
            user_id=offer.user_id,
            pre_emptive=offer.pre_emptive,
        )
        participant, media = await control.join(room.id, leg)
        floor = offer.floor.model_dump()
        try:
            registered = await self._register(participant.worker, participant.id, floor, offer)
        except WorkerError as exc:
            with contextlib.suppress(WorkerError, NotFoundError):
                await control.leave(room.id, participant.id)
            raise WorkerError(
                f"floor control for handsets is not available on worker {participant.worker}: "
                f"{exc}",
                "Unavailable",
            ) from None
        self.affiliations[participant.id] = Affiliation(
            participant=participant.id,
            room=room.id,
            talkgroup=room.name,
            user_id=offer.user_id,
            alias=offer.alias,
            worker=participant.worker,
            floor=floor,
            ssrc=offer.ssrc,
            codec=codec,
            payload_type=payload_type,
        )
        if self.presence is not None and offer.user_id in self.presence.registry:
            self.presence.update(offer.user_id, room=room.name, alias=offer.alias or None)
        control.publish(
            {
                "event": "affiliated",
                "room": room.id,
                "talkgroup": room.name,
                "participant": participant.id,
                "user_id": offer.user_id,
                "alias": offer.alias,
            }
        )
        return {
            "participant": participant.id,
            "talkgroup": room.name,
            "room": room.id,
            "codec": codec,
            "payload_type": payload_type,
            "clock_rate": OPUS_CLOCK_RATE,
            "ptime": PTIME_MS,
            "ssrc": media["ssrc"],
            "rtp": media["rtp"],
            "rtcp": media["rtcp"],
            "floor": registered["floor"],
            "floor_ssrc": registered["ssrc"],
        }

    async def deaffiliate(self, participant: str, *, acting_user: str | None = None) -> None:
        """Leave the talkgroup; ``acting_user`` (an officer) may only end its own affiliation."""
        affiliation = self.affiliations.get(participant)
        if affiliation is None:
            raise NotFoundError(f"unknown affiliation: {participant}")
        if acting_user is not None and affiliation.user_id != acting_user:
            raise AffiliationError(HTTP_FORBIDDEN, "an officer may de-affiliate only itself")
        await self._leave(affiliation)

    def listing(self, *, user: str | None = None) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.affiliations.values() if user is None or a.user_id == user]

    def talkgroup_of(self, user: str) -> Affiliation | None:
        """The user's latest affiliation, if any."""
        found = None
        for affiliation in self.affiliations.values():
            if affiliation.user_id == user:
                found = affiliation
        return found

    async def _register(
        self, worker: int, participant: str, floor: dict[str, Any], offer: AffiliateRequest
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.control.command(
            worker,
            "plugin",
            plugin=PLUGIN_NAME,
            command="register",
            participant=participant,
            floor=floor,
            ssrc=offer.ssrc,
            user_id=offer.user_id,
        )
        return result

    async def _leave(self, affiliation: Affiliation) -> None:
        self.affiliations.pop(affiliation.participant, None)
        with contextlib.suppress(NotFoundError):
            await self.control.leave(affiliation.room, affiliation.participant)

    # ------------------------------------------------------------ keeping in step
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "left":
            self.affiliations.pop(str(event.get("participant")), None)
        elif kind == "room_deleted":
            for key in [k for k, a in self.affiliations.items() if a.room == event.get("room")]:
                del self.affiliations[key]
        elif kind == "worker_restarted":
            task = asyncio.get_running_loop().create_task(self._reregister(int(event["worker"])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reregister(self, worker: int) -> None:
        """A restarted worker rehydrated the legs; give it their floor endpoints again."""
        for affiliation in [a for a in self.affiliations.values() if a.worker == worker]:
            try:
                await self.control.command(
                    worker,
                    "plugin",
                    plugin=PLUGIN_NAME,
                    command="register",
                    participant=affiliation.participant,
                    floor=affiliation.floor,
                    ssrc=affiliation.ssrc,
                    user_id=affiliation.user_id,
                )
            except WorkerError as exc:
                logger.error(
                    "handset %s lost its floor control on worker %d: %s",
                    affiliation.user_id,
                    worker,
                    exc,
                )

    # ------------------------------------------------------------------- location
    def report_location(self, unit: str, fix: GpsFix) -> tuple[dict[str, Any], bool]:
        """Feed one fix to the presence registry; returns the unit's feature and whether new."""
        if self.presence is None:
            raise AffiliationError(HTTP_UNPROCESSABLE, "presence is not enabled")
        known = unit in self.presence.registry
        affiliation = self.talkgroup_of(unit)
        updated = self.presence.report(
            unit,
            fix,
            kind=None if known else ParticipantKind.TRUNK,
            room=affiliation.talkgroup if affiliation is not None else None,
            alias=(affiliation.alias or None) if affiliation is not None else None,
        )
        return self.presence.feature(updated), not known


# ------------------------------------------------------------------------------- routes
TRUNKING: web.AppKey[Trunking] = web.AppKey("trunking", Trunking)


def _acting_user(identity: Identity) -> str | None:
    """An officer acts only for itself; dispatchers and admins for anyone (None)."""
    return identity.user if identity.role == Role.OFFICER else None


class TrunkingApi:
    """Route handlers; one instance per app."""

    @operation(
        "Affiliate a handset to a talkgroup (offer/answer)",
        request=AffiliateRequest,
        response=AffiliateAnswer,
        status=HTTP_CREATED,
        errors=(404, 409, 503),
    )
    @require(Role.OFFICER, Role.DISPATCHER)
    async def affiliate(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        offer: AffiliateRequest = await read_body(request, AffiliateRequest)
        acting = _acting_user(identity)
        if acting is not None and offer.user_id != acting:
            return json_error(HTTP_FORBIDDEN, "an officer may affiliate only itself")
        try:
            answer = await request.app[TRUNKING].affiliate(offer)
        except AffiliationError as exc:
            return json_error(exc.status, exc.reason)
        return web.json_response(answer, status=HTTP_CREATED)

    @operation("End an affiliation", response=Empty, errors=(404,))
    @require(Role.OFFICER, Role.DISPATCHER)
    async def deaffiliate(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        try:
            await request.app[TRUNKING].deaffiliate(
                request.match_info["participant"], acting_user=_acting_user(identity)
            )
        except AffiliationError as exc:
            return json_error(exc.status, exc.reason)
        return web.json_response({})

    @operation("Affiliations (an officer sees its own)", response=AffiliationList)
    @require(Role.OFFICER, Role.DISPATCHER, Role.OBSERVER)
    async def affiliations(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        listing = request.app[TRUNKING].listing(user=_acting_user(identity))
        return web.json_response({"affiliations": listing})

    @operation(
        "A handset's location: JSON, or TS 24.379 location-info XML "
        f"({LOCATION_INFO_CONTENT_TYPE})",
        request=LocationJson,
        query=LocationQuery,
        response=Feature,
        responses={HTTP_CREATED: Feature},
    )
    @require(Role.OFFICER, Role.DISPATCHER)
    async def location(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        unit = request.query.get("user") or identity.user
        if _acting_user(identity) not in (None, unit):
            return json_error(HTTP_FORBIDDEN, "an officer may report only its own location")
        now = time.time()
        if request.content_type == LOCATION_INFO_CONTENT_TYPE:
            try:
                report = LocationReport.parse(await request.read())
            except ValueError as exc:
                return json_error(HTTP_UNPROCESSABLE, str(exc))
            fix = report.to_fix(now)
            if fix is None:
                return json_error(HTTP_UNPROCESSABLE, "location report has no coordinate")
        else:
            body: LocationJson = await read_body(request, LocationJson)
            try:
                fix = GpsFix(
                    lat=body.lat,
                    lon=body.lon,
                    time=now if body.time is None else body.time,
                    altitude_m=body.altitude_m,
                    accuracy_m=body.accuracy_m,
                    heading_deg=body.heading_deg,
                    speed_mps=body.speed_mps,
                    source=FixSource.GNSS,
                )
            except ValueError as exc:
                return json_error(HTTP_UNPROCESSABLE, str(exc))
        try:
            feature, new = request.app[TRUNKING].report_location(unit, fix)
        except AffiliationError as exc:
            return json_error(exc.status, exc.reason)
        except ValueError as exc:
            return json_error(HTTP_UNPROCESSABLE, str(exc))
        return web.json_response(feature, status=HTTP_CREATED if new else HTTP_OK)


def setup(app: web.Application, control: Control, presence: PresenceFeed | None = None) -> Trunking:
    """Register the trunking routes on ``app``; presence goes to the app's presence feed."""
    if presence is None:
        presence = app.get(PRESENCE)
    trunking = Trunking(control, presence)
    app[TRUNKING] = trunking
    api = TrunkingApi()
    app.router.add_post("/api/trunking/affiliate", api.affiliate)
    app.router.add_delete("/api/trunking/affiliate/{participant}", api.deaffiliate)
    app.router.add_get("/api/trunking/affiliations", api.affiliations)
    app.router.add_post("/api/trunking/location", api.location)

    async def _close(app: web.Application) -> None:
        trunking.close()

    app.on_cleanup.append(_close)
    return trunking
