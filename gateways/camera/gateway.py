"""The camera gateway: its cameras, the video bus it serves, and the ops it answers.

Ops served to the control process over the gateway link (the web layer calls them):

| op | args | result |
|---|---|---|
| ``cameras`` | — | ``[camera, ...]`` (:meth:`Camera.to_dict`: no credentials) |
| ``camera`` | camera (name) | camera |
| ``add_camera`` | camera: dict (:class:`bridge.config.CameraConfig`) | camera; Conflict if taken |
| ``remove_camera`` | camera (name) | null |
| ``snapshot`` | camera (name) | ``{"jpeg": base64, "time": epoch s}``; Unavailable: no keyframe |

Events published (``publish``): ``camera_online``, ``camera_offline``, ``camera_added``,
``camera_removed``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from bridge.config import CameraConfig, CameraGatewayConfig
from bridge.gatewaylink import LinkError
from bridge.videobus import VideoBusServer

from .audio import MonitorAudio
from .camera import Camera, source_of
from .snapshot import jpeg_of_keyframe

logger = logging.getLogger("bridge.gateways.camera")

#: The video bus's socket, in the gateways' runtime folder.
VIDEO_BUS_FILE = "video.sock"


class Link(Protocol):
    async def request(self, op: str, **args: Any) -> Any: ...

    def serve(self, op: str, handler: Any) -> None: ...


def config_error(exc: ValidationError) -> str:
    """A camera config's first error, naming the key (never echoing the value: a password)."""
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "camera"
    if first["type"] == "extra_forbidden":
        return f"unknown camera key: {key}"
    return f"bad camera key {key}: {first['msg']}"


class CameraGateway:
    def __init__(self, link: Link, settings: CameraGatewayConfig, runtime_dir: Path) -> None:
        self.link = link
        self.settings = settings
        self.bus = VideoBusServer(runtime_dir / VIDEO_BUS_FILE)
        self.cameras: dict[str, Camera] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.bus.start()
        self.bus.on_demand(self._demand)
        for config in self.settings.cameras:
            self._add(config)
        for op, handler in {
            "cameras": self.list_cameras,
            "camera": self.get_camera,
            "add_camera": self.add_camera,
            "remove_camera": self.remove_camera,
            "snapshot": self.snapshot,
        }.items():
            self.link.serve(op, handler)
        logger.info("camera gateway: %d cameras, video bus at %s", len(self.cameras), self.bus.path)

    async def close(self) -> None:
        await asyncio.gather(*(camera.stop() for camera in self.cameras.values()))
        await self.bus.close()

    # ------------------------------------------------------------------- ops
    async def list_cameras(self) -> list[dict[str, Any]]:
        return [camera.to_dict() for camera in self.cameras.values()]

    async def get_camera(self, camera: str) -> dict[str, Any]:
        return self._camera(camera).to_dict()

    async def add_camera(self, camera: dict[str, Any]) -> dict[str, Any]:
        try:
            config = CameraConfig.model_validate(camera)
        except ValidationError as exc:
            raise LinkError(config_error(exc), "Invalid") from None
        if config.name in self.cameras:
            raise LinkError(f"camera already exists: {config.name}", "Conflict")
        added = self._add(config)
        self.publish({"event": "camera_added", "camera": added.to_dict()})
        return added.to_dict()

    async def remove_camera(self, camera: str) -> None:
        gone = self._camera(camera)
        del self.cameras[camera]
        self.bus.remove_source(gone.source)
        await gone.stop()
        self.publish({"event": "camera_removed", "camera": camera, "source": gone.source})

    async def snapshot(self, camera: str) -> dict[str, Any]:
        shot = self._camera(camera)
        keyframe, taken = shot.last_keyframe, shot.last_keyframe_at
        if keyframe is None or taken is None:
            raise LinkError(f"no picture from camera {camera} yet", "Unavailable")
        try:
            jpeg = await asyncio.to_thread(jpeg_of_keyframe, keyframe)
        except ValueError as exc:
            raise LinkError(f"camera {camera}: {exc}", "Unavailable") from None
        return {"jpeg": base64.b64encode(jpeg).decode("ascii"), "time": taken}

    # -------------------------------------------------------------- internals
    def _camera(self, name: str) -> Camera:
        camera = self.cameras.get(name)
        if camera is None:
            raise LinkError(f"unknown camera: {name}", "NotFound")
        return camera

    def _add(self, config: CameraConfig) -> Camera:
        audio = (
            MonitorAudio(self.link, config.name, config.rooms)
            if config.audio and config.rooms
            else None
        )
        camera = Camera(config, self.settings, bus=self.bus, publish=self.publish, audio=audio)
        self.cameras[config.name] = camera
        self.bus.add_source(camera.source)
        return camera

    def _demand(self, source: str, count: int) -> None:
        for camera in self.cameras.values():
            if camera.source == source:
                camera.set_viewers(count)
                return

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to consoles through the control process (without waiting)."""
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self.link.request("publish", event=event)
        except Exception as exc:
            logger.warning("camera gateway: cannot publish %s: %s", event.get("event"), exc)


__all__ = ["VIDEO_BUS_FILE", "CameraGateway", "source_of"]
