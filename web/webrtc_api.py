"""WebRTC signalling for consoles (socket.io ``/rooms``) and the gateway's video counters.

Events a console sends on ``/rooms``, each answered in its acknowledgement:

``webrtc_offer`` ``{room, sdp, session, video_sources?}``
    The browser's offer. ``session`` is the console's own id for its media session (kept
    across reconnects): an offer with the same user and session replaces that console's
    old peer connection and leg, so a reconnecting console is never in the room twice.
    ``video_sources`` names, in order, what each recvonly video m-line receives
    (``webrtc:<participant>``, ``camera:<name>``). The answer is
    ``{ok, type: "answer", sdp, participant, room, publishing, views}``; it carries all
    of the bridge's candidates (aiortc gathers before it answers: half-trickle).
``webrtc_candidate`` ``{session, candidate, sdpMid?, sdpMLineIndex?}``
    One of the browser's trickled candidates (RFC 8838); an empty candidate ends them.
``webrtc_hangup`` ``{session}``
    Ends the session; its leg leaves the room (and so releases its floor).

Refusals come back as ``{ok: false, status, error}``: 400 for bad SDP or unsupported
codecs, 404 for an unknown room or video source, 503 for a room at its publisher or
subscriber limit or a gateway that is not running. The identity is the connection's
token: the leg's name is the user, at the floor priority of its role (observers only
listen). Offers and hangups go to the audit log.

``GET /api/webrtc/stats`` returns the gateway's sessions and, per video source, frames
forwarded and transcoded.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from bridge.audit import Outcome
from bridge.gatewaylink import LinkError

from .app import IDENTITY, LINK_ERROR_STATUS, json_error
from .auth import Identity, Role
from .cameras_api import UNIT_PREFIX
from .sio import _ROLE_PRIORITY, ActionError, FloorPriority, Signalling, _Schema, _validate

GATEWAY = "webrtc"
MAX_SDP_CHARS = 64 * 1024


class Offer(_Schema):
    room: str = Field(min_length=1, max_length=64)
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: str = Field(default="offer", pattern="^offer$")
    session: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    video_sources: list[str] = Field(default_factory=list, max_length=16)


class Candidate(_Schema):
    session: str = Field(min_length=1, max_length=64)
    candidate: str | None = Field(default=None, max_length=1024)
    sdpMid: str | None = Field(default=None, max_length=32)  # noqa: N815 (the browser's names)
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=64)  # noqa: N815
    usernameFragment: str | None = Field(default=None, max_length=256)  # noqa: N815


class Hangup(_Schema):
    session: str = Field(min_length=1, max_length=64)


class WebRtcSignalling:
    """The ``webrtc_*`` handlers of ``/rooms``; they reach the gateway through the core."""

    def __init__(self, hub: Signalling) -> None:
        self.hub = hub

    async def _call(
        self, identity: Identity, name: str, op: str, data: Any, schema: type[Any]
    ) -> dict[str, Any]:
        audited = name != "webrtc_candidate"
        room = data.get("room") if isinstance(data, dict) else None
        try:
            request = _validate(schema, data)
            args = request.model_dump(exclude={"type", "usernameFragment"})
            if op == "offer":
                cameras = [s for s in request.video_sources if s.startswith(UNIT_PREFIX)]
                if cameras and not identity.has(Role.DISPATCHER, Role.OBSERVER):
                    # As the REST camera routes: officers do not watch cameras.
                    raise ActionError(
                        403,
                        f"role {identity.role} may not watch {cameras[0]} "
                        f"(needs {Role.DISPATCHER}, {Role.OBSERVER})",
                    )
                args.update(
                    priority=int(_ROLE_PRIORITY.get(identity.role, FloorPriority.OFFICER)),
                    dispatcher=identity.has(Role.DISPATCHER),
                    receive_only=identity.role == Role.OBSERVER,
                )
            result = await self.hub.control.gateways.request(
                GATEWAY, op, user=identity.user, **args
            )
        except ActionError as exc:
            answer = {"ok": False, "status": exc.status, "error": str(exc)}
        except LinkError as exc:
            answer = {"ok": False, "status": LINK_ERROR_STATUS[exc.kind], "error": str(exc)}
        else:
            answer = {"ok": True, **(result or {})}
        if audited:
            detail = {k: v for k, v in answer.items() if k not in ("ok", "sdp")}
            if isinstance(data, dict):
                detail["request"] = {
                    k: v for k, v in data.items() if k in ("session", "video_sources")
                }
            self.hub.audit.append(
                user=identity.user,
                role=str(identity.role),
                action=f"sio:{name}",
                outcome=Outcome.OK if answer["ok"] else Outcome.FAILED,
                room=room if isinstance(room, str) else None,
                detail=detail,
            )
        return answer

    def install(self) -> None:
        """Add the handlers to the ``/rooms`` namespace (``on_<event>`` handlers)."""
        namespace = self.hub.rooms

        def handler(name: str, op: str, schema: type[Any]) -> Any:
            async def on_event(sid: str, data: Any = None) -> dict[str, Any]:
                # The namespace answered already for a connection without a live identity.
                return await self._call(namespace.identities[sid], name, op, data, schema)

            return on_event

        namespace.on_webrtc_offer = handler("webrtc_offer", "offer", Offer)
        namespace.on_webrtc_candidate = handler("webrtc_candidate", "candidate", Candidate)
        namespace.on_webrtc_hangup = handler("webrtc_hangup", "hangup", Hangup)

    async def stats(self, request: web.Request) -> web.Response:
        """GET /api/webrtc/stats: sessions and per-source video counters."""
        identity: Identity | None = request.get(IDENTITY)
        if identity is None:
            return json_error(401, "authentication required")
        if not identity.has(Role.DISPATCHER, Role.OBSERVER):
            return json_error(403, f"role {identity.role} may not do this (needs dispatcher)")
        try:
            stats = await self.hub.control.gateways.request(GATEWAY, "stats")
        except LinkError as exc:
            return json_error(LINK_ERROR_STATUS[exc.kind], str(exc))
        return web.json_response(stats)


def setup(app: web.Application, hub: Signalling) -> WebRtcSignalling:
    """Register the ``webrtc_*`` socket.io events and ``GET /api/webrtc/stats``."""
    signalling = WebRtcSignalling(hub)
    signalling.install()
    app.router.add_get("/api/webrtc/stats", signalling.stats)
    return signalling
