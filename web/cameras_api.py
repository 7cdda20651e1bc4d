"""Cameras over REST, their views in the audit log, and their places on the map.

The camera gateway runs in a process of its own; these routes reach it only through
:meth:`bridge.gatewayhost.GatewayHost.request` (ops in ``bridge.gateways.camera.gateway``).

- ``GET /api/cameras`` (dispatcher, observer): every camera, never with a credential.
- ``POST /api/cameras`` (dispatcher): add one (keys of :class:`bridge.config.CameraConfig`);
  ``201``, ``409`` if the name is taken, ``422`` naming a bad key.
- ``GET /api/cameras/{camera}``; ``DELETE /api/cameras/{camera}`` (dispatcher).
- ``GET /api/cameras/{camera}/snapshot.jpg`` (dispatcher, observer): the latest keyframe as
  a JPEG; ``503`` before the camera has sent one (nobody watched yet).
- ``POST /api/cameras/{camera}/views`` (dispatcher, observer): a console starts watching;
  the answer names the view and the video source to put in the WebRTC offer's
  ``video_sources``. ``DELETE /api/cameras/{camera}/views/{view}`` ends it. Each view is one
  ``camera_view`` audit record: who, which camera, from when to when (views still open at
  shutdown are closed then, and say so).

Cameras added over REST live in the camera gateway's process; the registry keeps what was
posted (in memory: credentials included, never logged) and adds them again when that
process restarts (``gateway_restarted``), so they survive it as configured cameras do.

Cameras with a position are units of kind ``camera`` in the presence registry (unit id
``camera:<name>``, heading = view direction), kept in step with the gateway: on its
``camera_added``/``camera_removed`` events, when it (re)starts, and every
:data:`SYNC_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web

from bridge.control import Control
from bridge.gatewaylink import LinkError
from bridge.model import ParticipantKind
from bridge.presence import MAX_REPORT_INTERVAL, FixSource, GpsFix, iso_time

from .app import CONTROL, IDENTITY, json_error, require
from .audit_api import AUDIT
from .auth import Identity, Role
from .presence_api import PRESENCE, PresenceFeed

logger = logging.getLogger("bridge.web.cameras")

GATEWAY = "camera"
#: Cameras are re-read from the gateway this often (fixed units never go stale on the map).
SYNC_INTERVAL_S = 600.0
#: Until the gateway first answers, it is asked this often.
SYNC_RETRY_S = 1.0
#: Views one identity may hold open at once (a console opens a handful of tiles).
MAX_VIEWS_PER_USER = 64
UNIT_PREFIX = "camera:"
_CAMERA_EVENTS = frozenset({"camera_added", "camera_removed", "gateway_restarted"})


@dataclass
class View:
    id: str
    camera: str
    user: str
    role: str
    started: float


class CameraRegistry:
    """The web layer's side of cameras: open views and the cameras' units on the map."""

    def __init__(self, control: Control, presence: PresenceFeed) -> None:
        self.control = control
        self.presence = presence
        self.views: dict[str, View] = {}
        #: Cameras added over REST, as posted: added again after a gateway restart.
        self.added: dict[str, dict[str, Any]] = {}
        #: Cameras added again after a restart (counted for tests and metrics).
        self.readded = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe = control.subscribe(self._on_event)

    # ------------------------------------------------------------------ map
    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name in _CAMERA_EVENTS and (
            name != "gateway_restarted" or event.get("gateway") == GATEWAY
        ):
            self._wake.set()

    async def _sync_loop(self) -> None:
        while True:
            try:
                synced = await self.sync()
            except LinkError:
                synced = False
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), SYNC_INTERVAL_S if synced else SYNC_RETRY_S
                )

    async def sync(self) -> bool:
        """Put every positioned camera on the map and take off the ones gone; False if the
        gateway is not running (nothing changes then)."""
        if not self.control.gateways.running(GATEWAY):
            return False
        cameras = await self.control.gateways.request(GATEWAY, "cameras")
        cameras += await self._readd({str(c["name"]) for c in cameras})
        seen = set()
        for camera in cameras:
            if camera.get("lat") is None or camera.get("lon") is None:
                continue
            unit_id = UNIT_PREFIX + str(camera["name"])
            seen.add(unit_id)
            self.place(unit_id, camera)
        for unit in list(self.presence.registry):
            if unit.kind is ParticipantKind.CAMERA and unit.id not in seen:
                self.presence.remove(unit.id)
        return True

    async def _readd(self, present: set[str]) -> list[dict[str, Any]]:
        """Add the REST cameras a restarted gateway has lost; the ones it now refuses are
        dropped (logged by name only)."""
        readded = []
        for name, body in list(self.added.items()):
            if name in present:
                continue
            try:
                camera = await self.control.gateways.request(GATEWAY, "add_camera", camera=body)
            except LinkError as exc:
                if exc.kind == "Conflict":
                    continue
                if exc.kind != "Invalid":
                    raise
                logger.warning("camera %s is not added again: %s", name, exc)
                del self.added[name]
                continue
            self.readded += 1
            readded.append(camera)
        return readded

    def place(self, unit_id: str, camera: dict[str, Any]) -> None:
        rooms = camera.get("rooms") or []
        self.presence.report(
            unit_id,
            GpsFix(
                lat=float(camera["lat"]),
                lon=float(camera["lon"]),
                time=time.time(),
                heading_deg=camera.get("heading"),
                source=FixSource.FIXED,
            ),
            kind=ParticipantKind.CAMERA,
            alias=str(camera["name"]),
            room=str(rooms[0]) if rooms else None,
            interval=MAX_REPORT_INTERVAL,
        )

    # ---------------------------------------------------------------- views
    def open_view(self, camera: str, identity: Identity) -> View:
        mine = sum(1 for v in self.views.values() if v.user == identity.user)
        if mine >= MAX_VIEWS_PER_USER:
            raise ValueError(f"too many open camera views (at most {MAX_VIEWS_PER_USER})")
        view = View(secrets.token_hex(8), camera, identity.user, str(identity.role), time.time())
        self.views[view.id] = view
        return view

    def close_view(self, view: View, app: web.Application, reason: str) -> dict[str, Any]:
        self.views.pop(view.id, None)
        ended = time.time()
        detail = {
            "view": view.id,
            "from": iso_time(view.started),
            "to": iso_time(ended),
            "seconds": round(ended - view.started, 3),
            "ended_by": reason,
        }
        app[AUDIT].append(
            user=view.user,
            role=view.role,
            action="camera_view",
            camera=view.camera,
            detail=detail,
        )
        return detail

    # ------------------------------------------------------------ lifecycle
    async def start(self, app: web.Application) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def stop(self, app: web.Application) -> None:
        self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for view in list(self.views.values()):
            self.close_view(view, app, "shutdown")


CAMERAS: web.AppKey[CameraRegistry] = web.AppKey("cameras", CameraRegistry)


class CamerasApi:
    @require(Role.DISPATCHER, Role.OBSERVER)
    async def list(self, request: web.Request) -> web.Response:
        cameras = await request.app[CONTROL].gateways.request(GATEWAY, "cameras")
        return web.json_response({"cameras": cameras})

    @require(Role.DISPATCHER, Role.OBSERVER)
    async def get(self, request: web.Request) -> web.Response:
        name = request.match_info["camera"]
        camera = await request.app[CONTROL].gateways.request(GATEWAY, "camera", camera=name)
        return web.json_response(camera)

    @require(Role.DISPATCHER)
    async def add(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "body is not JSON")
        if not isinstance(body, dict):
            return json_error(422, "body must be a JSON object")
        if body.get("password_env"):
            # It names a variable of the gateway's environment, whose value would go to
            # whatever server the URL names: the config file's business, not a request's.
            return json_error(422, "password_env may be set in the config file only")
        try:
            camera = await request.app[CONTROL].gateways.request(GATEWAY, "add_camera", camera=body)
        except LinkError as exc:
            if exc.kind == "Invalid":
                return json_error(422, str(exc))
            raise
        registry = request.app[CAMERAS]
        registry.added[str(camera["name"])] = body
        if camera.get("lat") is not None and camera.get("lon") is not None:
            registry.place(UNIT_PREFIX + str(camera["name"]), camera)
        return web.json_response(camera, status=201)

    @require(Role.DISPATCHER)
    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["camera"]
        registry = request.app[CAMERAS]
        posted = registry.added.pop(name, None)
        try:
            await request.app[CONTROL].gateways.request(GATEWAY, "remove_camera", camera=name)
        except LinkError as exc:
            # A restarted gateway that has not got it back yet: removed all the same.
            if posted is None or exc.kind != "NotFound":
                if posted is not None:
                    registry.added[name] = posted
                raise
        registry.presence.remove(UNIT_PREFIX + name)
        for view in [v for v in registry.views.values() if v.camera == name]:
            registry.close_view(view, request.app, "camera removed")
        return web.json_response({"removed": name})

    @require(Role.DISPATCHER, Role.OBSERVER)
    async def snapshot(self, request: web.Request) -> web.Response:
        name = request.match_info["camera"]
        answer = await request.app[CONTROL].gateways.request(GATEWAY, "snapshot", camera=name)
        try:
            jpeg = base64.b64decode(answer["jpeg"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            return json_error(502, "the camera gateway sent a bad snapshot")
        return web.Response(
            body=jpeg,
            content_type="image/jpeg",
            headers={
                "Cache-Control": "no-store",
                "Last-Modified": formatdate(float(answer.get("time", 0.0)), usegmt=True),
            },
        )

    @require(Role.DISPATCHER, Role.OBSERVER)
    async def open_view(self, request: web.Request) -> web.Response:
        name = request.match_info["camera"]
        camera = await request.app[CONTROL].gateways.request(GATEWAY, "camera", camera=name)
        identity: Identity = request[IDENTITY]
        try:
            view = request.app[CAMERAS].open_view(name, identity)
        except ValueError as exc:
            return json_error(429, str(exc))
        return web.json_response(
            {
                "view": view.id,
                "camera": name,
                "source": camera["source"],
                "from": iso_time(view.started),
                "state": camera["state"],
                "transcoding": camera["transcoding"],
            },
            status=201,
        )

    @require(Role.DISPATCHER, Role.OBSERVER)
    async def close_view(self, request: web.Request) -> web.Response:
        registry = request.app[CAMERAS]
        identity: Identity = request[IDENTITY]
        view = registry.views.get(request.match_info["view"])
        if view is None or view.camera != request.match_info["camera"]:
            return json_error(404, f"unknown camera view: {request.match_info['view']}")
        if view.user != identity.user and identity.role is not Role.ADMIN:
            return json_error(403, "this view belongs to another user")
        return web.json_response(registry.close_view(view, request.app, "viewer"))


def setup(app: web.Application) -> CameraRegistry:
    """Register the camera routes; needs the audit log and presence set up first."""
    registry = CameraRegistry(app[CONTROL], app[PRESENCE])
    app[CAMERAS] = registry
    api = CamerasApi()
    camera = "/api/cameras/{camera:[A-Za-z0-9_.-]{1,64}}"
    app.router.add_get("/api/cameras", api.list)
    app.router.add_post("/api/cameras", api.add)
    app.router.add_get(camera, api.get)
    app.router.add_delete(camera, api.remove)
    app.router.add_get(camera + "/snapshot.jpg", api.snapshot)
    app.router.add_post(camera + "/views", api.open_view)
    app.router.add_delete(camera + "/views/{view:[0-9a-f]{16}}", api.close_view)
    app.on_startup.append(registry.start)
    app.on_cleanup.append(registry.stop)
    return registry
