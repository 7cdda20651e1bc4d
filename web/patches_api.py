"""Talkgroup patches and dispatcher monitoring over REST.

- ``GET /api/patches`` lists the patches; ``POST /api/patches`` ``{"rooms": [a, b]}``
  patches rooms (names or ids) together; ``DELETE /api/patches/{patch}`` unpatches. A
  patch joins the rooms' audio (every listener hears the union of the rooms' live
  sources) and their floor (one floor-control server, TS 24.380, with the settings of
  the group's first room) until it is removed. A patch that names a room twice, spans
  media workers, mixes room modes or would close a cycle in the patch graph is refused
  with 409 and the reason.
- ``GET``/``PUT /api/rooms/{room}/participants/{participant}/monitor``: what a dispatcher
  leg monitors besides its room (room -> linear gain: per-talkgroup volume), its
  priority room and how deep the other rooms duck while the priority room is live.

Changing routes are dispatcher-only; the audit middleware records each of them once.
The core publishes ``patch_created``, ``patch_removed`` and ``monitor_updated`` events,
which socket.io forwards to consoles.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bridge.control import NotFoundError
from bridge.model import Participant, Patch

from .app import CONTROL, IDENTITY, require
from .auth import Identity, Role
from .openapi import operation, read_body

#: Room names or ids of one patch request, at most.
MAX_PATCH_ROOMS = 16
#: Deepest duck a dispatcher may ask for, in dB.
MAX_DUCK_DB = 60.0
#: Loudest per-room volume, as a linear gain (+18 dB).
MAX_MONITOR_GAIN = 8.0


class PatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rooms: list[str] = Field(min_length=2, max_length=MAX_PATCH_ROOMS)


class PatchOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    rooms: list[str] = Field(description="room ids")
    names: list[str] = Field(description="room names, in the order of rooms")
    worker: int
    created: float
    created_by: str


class PatchList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patches: list[PatchOut]


class MonitorSet(BaseModel):
    """A dispatcher leg's monitoring; ``rooms`` maps room names or ids to linear gains."""

    model_config = ConfigDict(extra="forbid")

    rooms: dict[str, float] = Field(default_factory=dict)
    priority_room: str | None = None
    duck_db: float | None = Field(default=None, ge=0.0, le=MAX_DUCK_DB)

    def gains_ok(self) -> str | None:
        for room, gain in self.rooms.items():
            if not 0.0 <= gain <= MAX_MONITOR_GAIN:
                return f"rooms.{room}: gain must be between 0 and {MAX_MONITOR_GAIN:g}"
        return None


class MonitorOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    participant: str
    room: str
    monitor: dict[str, float] = Field(description="room id -> linear gain")
    priority_room: str | None
    duck_db: float


async def _patch_json(request: web.Request, patch: Patch) -> dict[str, Any]:
    control = request.app[CONTROL]
    names = []
    for room_id in patch.rooms:
        room = await control.find_room(room_id)
        names.append(room.name if room is not None else room_id)
    return {**patch.to_dict(), "names": names}


def _monitor_json(participant: Participant) -> dict[str, Any]:
    return {
        "participant": participant.id,
        "room": participant.room,
        "monitor": participant.monitor,
        "priority_room": participant.priority_room,
        "duck_db": participant.duck_db,
    }


class PatchesApi:
    @operation("List talkgroup patches", response=PatchList, tags=("patches",))
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def list_patches(self, request: web.Request) -> web.Response:
        patches = await request.app[CONTROL].list_patches()
        return web.json_response({"patches": [await _patch_json(request, p) for p in patches]})

    @operation(
        "Patch talkgroups together: audio and floor joined until unpatched",
        request=PatchCreate,
        response=PatchOut,
        status=201,
        errors=(404, 409, 503),
        tags=("patches",),
    )
    @require(Role.DISPATCHER)
    async def create_patch(self, request: web.Request) -> web.Response:
        body = await read_body(request, PatchCreate)
        identity: Identity = request[IDENTITY]
        patch = await request.app[CONTROL].create_patch(body.rooms, by=identity.user)
        return web.json_response(await _patch_json(request, patch), status=201)

    @operation("Unpatch", response=PatchOut, errors=(404, 503), tags=("patches",))
    @require(Role.DISPATCHER)
    async def delete_patch(self, request: web.Request) -> web.Response:
        patch = await request.app[CONTROL].delete_patch(request.match_info["patch"])
        return web.json_response(await _patch_json(request, patch))

    @operation(
        "A dispatcher leg's monitored rooms, priority room and duck",
        response=MonitorOut,
        errors=(404,),
        tags=("patches",),
    )
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def get_monitor(self, request: web.Request) -> web.Response:
        room = await request.app[CONTROL].get_room(request.match_info["room"])
        participant = room.participants.get(request.match_info["participant"])
        if participant is None:
            raise NotFoundError(f"unknown participant: {request.match_info['participant']}")
        return web.json_response(_monitor_json(participant))

    @operation(
        "Monitor rooms from a dispatcher leg: per-room volume, priority room, duck depth",
        request=MonitorSet,
        response=MonitorOut,
        errors=(404, 409, 503),
        tags=("patches",),
    )
    @require(Role.DISPATCHER)
    async def set_monitor(self, request: web.Request) -> web.Response:
        body = await read_body(request, MonitorSet)
        problem = body.gains_ok()
        if problem is not None:
            return web.json_response({"error": problem}, status=422)
        participant = await request.app[CONTROL].set_monitor(
            request.match_info["room"],
            request.match_info["participant"],
            body.rooms,
            body.priority_room,
            body.duck_db,
        )
        return web.json_response(_monitor_json(participant))


def setup(app: web.Application) -> None:
    """Register the patch and monitor routes on ``app``."""
    api = PatchesApi()
    app.router.add_get("/api/patches", api.list_patches)
    app.router.add_post("/api/patches", api.create_patch)
    app.router.add_delete("/api/patches/{patch}", api.delete_patch)
    monitor = "/api/rooms/{room}/participants/{participant}/monitor"
    app.router.add_get(monitor, api.get_monitor)
    app.router.add_put(monitor, api.set_monitor)
