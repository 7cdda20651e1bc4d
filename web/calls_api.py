"""Dial-out over REST: a dispatcher calls a phone into a room through the SIP gateway.

The SIP gateway runs in a process of its own; these routes reach it only through
:meth:`bridge.gatewayhost.GatewayHost.request` (ops of ``bridge.gateways.sip.process``).
Every call's progress reaches consoles as ``call_state`` events (``dialling``,
``ringing``, ``answered``, ``failed``, ``ended``; inbound calls also ``incoming``, ``pin``).

- ``POST /api/rooms/{room}/calls`` ``{"uri": "sip:...", "account": null}`` (dispatcher):
  ``201`` with the call; ``400`` for a bad target, ``404`` for an unknown room, ``409``
  when the room or the gateway is full, ``503`` when the SIP gateway is not running.
- ``GET /api/rooms/{room}/calls`` (dispatcher, observer): the room's SIP calls.
- ``DELETE /api/rooms/{room}/calls/{call}`` (dispatcher): hang up; ``204``.

The POST and DELETE are audited by the audit middleware (actions ``dial``, ``hangup``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bridge.control import Control

from .app import CONTROL, IDENTITY, _body, _Schema, require
from .auth import Identity, Role
from .openapi import operation

GATEWAY = "sip"


class DialRequest(_Schema):
    """A dial-out target: a SIP URI, or a number dialled through ``account``."""

    uri: str = Field(min_length=1, max_length=256)
    account: str | None = Field(default=None, max_length=64)


class CallOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    room: str
    room_name: str
    direction: str = Field(description="in or out")
    remote: str = Field(description="the caller or callee, as dispatchers may see it")
    state: str = Field(description="dialling, ringing, answered, failed, ended, ...")
    participant: str | None
    code: int
    reason: str


class CallList(BaseModel):
    calls: list[CallOut]


async def dial(control: Control, room: str, body: dict[str, Any], user: str) -> Any:
    """The dial path of socket.io's ``dial`` (the body is validated already)."""
    request = DialRequest.model_validate(body)
    return await control.gateways.request(
        GATEWAY, "dial", room=room, uri=request.uri, by=user, account=request.account
    )


class CallsApi:
    @operation(
        "Dial a phone into a room through the SIP gateway",
        request=DialRequest,
        response=CallOut,
        status=201,
        errors=(404, 409, 503),
        tags=("sip",),
    )
    @require(Role.DISPATCHER)
    async def dial(self, request: web.Request) -> web.StreamResponse:
        body: DialRequest = await _body(request, DialRequest)
        identity: Identity = request[IDENTITY]
        call = await request.app[CONTROL].gateways.request(
            GATEWAY,
            "dial",
            room=request.match_info["room"],
            uri=body.uri,
            by=identity.user,
            account=body.account,
        )
        return web.json_response(call, status=201)

    @operation("The room's SIP calls", response=CallList, errors=(404, 503), tags=("sip",))
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def list(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await request.app[CONTROL].get_room(room)  # 404 for an unknown room
        calls = await request.app[CONTROL].gateways.request(GATEWAY, "calls", room=room)
        return web.json_response({"calls": calls})

    @operation("Hang up a SIP call", responses={204: None}, errors=(404, 409, 503), tags=("sip",))
    @require(Role.DISPATCHER)
    async def hangup(self, request: web.Request) -> web.Response:
        await request.app[CONTROL].gateways.request(
            GATEWAY, "hangup", room=request.match_info["room"], call=request.match_info["call"]
        )
        return web.Response(status=204)


def setup(app: web.Application) -> None:
    api = CallsApi()
    app.router.add_post("/api/rooms/{room}/calls", api.dial)
    app.router.add_get("/api/rooms/{room}/calls", api.list)
    app.router.add_delete("/api/rooms/{room}/calls/{call}", api.hangup)
