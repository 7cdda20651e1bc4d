"""Gateway processes, seen from the control process.

DESIGN.md, "Processes": gateways with media stacks of their own (pjsua2, aiortc, PyAV)
run in processes of their own, never in a media worker and never in the control
process. The host starts one process per enabled gateway
(``python -P -m bridge.gatewayprocess MODULE``), links to it over a socket pair
(:mod:`bridge.gatewaylink`), serves the core calls a gateway makes (join, leave, floor,
publish...), forwards the core events it subscribed to, and restarts it with back-off
when it dies. The web layer reaches a gateway only through :meth:`GatewayHost.request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import SECRET_ENV
from .gatewaylink import GatewayLink, Handler, LinkError
from .gatewayprocess import LINK_FD_ENV
from .model import Participant, ParticipantKind

if TYPE_CHECKING:
    from .control import Control

logger = logging.getLogger("bridge.gatewayhost")

#: The gateway processes, by name, and the module each runs.
GATEWAY_MODULES = {
    "sip": "bridge.gateways.sip.process",
    "webrtc": "bridge.gateways.webrtc.process",
    "camera": "bridge.gateways.camera.process",
}
#: The first restart waits this long; each further one twice as long, up to the config's cap.
FIRST_RESTART_BACKOFF_S = 0.5
#: A process that ran this long before dying starts its back-off afresh.
STABLE_RUN_S = 30.0
#: How long a stopping gateway may take before it is killed.
STOP_TIMEOUT_S = 5.0
#: Participant fields a gateway may set when it joins a leg.
JOIN_FIELDS = frozenset(
    f
    for f in Participant.__dataclass_fields__
    if f not in {"id", "room", "worker", "remote", "kind"}
)


def _translating(handler: Handler) -> Handler:
    """The core's refusals as the link's kinds (NotFound, Conflict, Unavailable, Invalid)."""
    from .control import ConflictError, NotFoundError, WorkerError

    async def translated(**args: Any) -> Any:
        try:
            return await handler(**args)
        except NotFoundError as exc:
            raise LinkError(str(exc), "NotFound") from None
        except ConflictError as exc:
            raise LinkError(str(exc), "Conflict") from None
        except WorkerError as exc:
            busy = exc.kind in ("AdmissionError", "Unavailable")
            raise LinkError(str(exc), "Unavailable" if busy else "Invalid") from None

    return translated


@dataclass
class GatewayProcess:
    name: str
    module: str
    state: str = "starting"
    process: subprocess.Popen[bytes] | None = None
    link: GatewayLink | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = FIRST_RESTART_BACKOFF_S
    #: Core events it asked for (None: all).
    events: frozenset[str] | None = frozenset()
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class GatewayHost:
    """Starts, links and supervises the gateway processes of one control process."""

    def __init__(self, control: Control, modules: dict[str, str] | None = None) -> None:
        """``modules``: gateway name -> module to run (default: the enabled ones of
        :data:`GATEWAY_MODULES`)."""
        self.control = control
        if modules is None:
            settings = control.config.gateways
            modules = {
                name: module
                for name, module in GATEWAY_MODULES.items()
                if getattr(settings, name).enabled
            }
        self.gateways = {name: GatewayProcess(name, module) for name, module in modules.items()}
        self._handlers: dict[str, Handler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._unsubscribe = control.subscribe(self._forward)
        ops: dict[str, Handler] = {
            "join": self._join,
            "leave": self._leave,
            "update_participant": self._update_participant,
            "floor_request": self._floor_request,
            "floor_release": self._floor_release,
            "room": self._room,
            "rooms": self._rooms,
            "publish": self._publish,
        }
        for op, handler in ops.items():
            self.handle(op, handler)

    # -------------------------------------------------------------- interface
    def handle(self, op: str, handler: Handler) -> None:
        """Serve ``op`` to every gateway (the web layer adds ops such as ``audit``)."""
        handler = _translating(handler)
        self._handlers[op] = handler
        for gateway in self.gateways.values():
            if gateway.link is not None:
                gateway.link.serve(op, handler)

    def running(self, name: str) -> bool:
        gateway = self.gateways.get(name)
        return gateway is not None and gateway.state == "running"

    async def request(self, name: str, op: str, **args: Any) -> Any:
        """Ask gateway ``name`` to do ``op``; LinkError when it refuses or is not there."""
        gateway = self.gateways.get(name)
        if gateway is None:
            raise LinkError(f"the {name} gateway is not enabled", "Unavailable")
        if gateway.link is None or gateway.state != "running":
            raise LinkError(f"the {name} gateway is not running ({gateway.state})", "Unavailable")
        return await gateway.link.request(op, **args)

    def health(self) -> list[dict[str, Any]]:
        return [
            {"name": g.name, "pid": g.pid, "state": g.state, "restarts": g.restarts}
            for g in self.gateways.values()
        ]

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        for gateway in self.gateways.values():
            self._start(gateway)

    def _start(self, gateway: GatewayProcess) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        gateway.state = "starting"
        gateway.ready = asyncio.Event()
        gateway.started_at = time.monotonic()
        gateway.events = frozenset()
        gateway.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "bridge.gatewayprocess", gateway.module],
            pass_fds=[theirs.fileno()],
            # Gateways never see the token-signing secret: not in their environment (where
            # a camera's password_env could name it), not in their config (see hello).
            env={
                **{k: v for k, v in os.environ.items() if k != SECRET_ENV},
                LINK_FD_ENV: str(theirs.fileno()),
            },
        )
        theirs.close()
        task = asyncio.get_running_loop().create_task(self._run(gateway, ours))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, gateway: GatewayProcess, sock: socket.socket) -> None:
        link = await GatewayLink.from_socket(sock, gateway.name)
        gateway.link = link

        async def hello(module: str) -> dict[str, Any]:
            config = self.control.config.model_dump(mode="json")
            config["auth"]["secret"] = ""
            return config

        async def ready() -> None:
            gateway.state = "running"
            gateway.ready.set()
            logger.info("gateway %s running (pid %s)", gateway.name, gateway.pid)
            if gateway.restarts:
                self.control.publish(
                    {
                        "event": "gateway_restarted",
                        "gateway": gateway.name,
                        "pid": gateway.pid,
                        "restarts": gateway.restarts,
                    }
                )

        async def subscribe(events: list[str] | None) -> None:
            gateway.events = None if events is None else frozenset(events)

        for op, handler in self._handlers.items():
            link.serve(op, handler)
        link.serve("hello", hello)
        link.serve("ready", ready)
        link.serve("subscribe", subscribe)
        await link.wait_closed()
        gateway.link = None
        process = gateway.process
        code: int | None = None
        if process is not None:
            if not self._stopping:
                gateway.state = "restarting"  # no link: it serves nothing from now on
            try:
                code = await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT_S)
            except TimeoutError:
                # Its link is gone but it lingers (a clean-up that hangs): it is replaced
                # all the same, never left looking alive.
                logger.error("gateway %s lost its link but did not exit; killing it", gateway.name)
                process.kill()
                code = await asyncio.to_thread(process.wait)
        if self._stopping:
            gateway.state = "stopped"
            return
        ran = time.monotonic() - gateway.started_at
        if ran >= STABLE_RUN_S:
            gateway.backoff_s = FIRST_RESTART_BACKOFF_S
        delay = gateway.backoff_s
        gateway.backoff_s = min(delay * 2, self.control.config.gateways.max_restart_backoff_s)
        gateway.state = "restarting"
        logger.error(
            "gateway %s (pid %s) exited with %s after %.1f s; restarting in %.1f s",
            gateway.name,
            gateway.pid,
            code,
            ran,
            delay,
        )
        self.control.publish(
            {"event": "gateway_died", "gateway": gateway.name, "pid": gateway.pid, "exit": code}
        )
        await asyncio.sleep(delay)
        if gateway.state != "restarting":  # stop() came while it waited
            return
        gateway.restarts += 1
        self._start(gateway)  # gateway_restarted is published once it is ready again

    async def stop(self) -> None:
        self._stopping = True
        self._unsubscribe()
        for gateway in self.gateways.values():
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.process.terminate()
        for gateway in self.gateways.values():
            process = gateway.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.error("gateway %s did not stop in time; killing it", gateway.name)
                process.kill()
                await asyncio.to_thread(process.wait)
            gateway.state = "stopped"
            if gateway.link is not None:
                gateway.link.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ----------------------------------------------------------------- events
    def _forward(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        for gateway in self.gateways.values():
            if gateway.link is None or gateway.state != "running":
                continue
            if gateway.events is None or name in gateway.events:
                gateway.link.notify(event)

    # ---------------------------------------------------------- ops served
    async def _join(self, room: str, participant: dict[str, Any]) -> dict[str, Any]:
        from .model import RtpEndpoint

        unknown = set(participant) - JOIN_FIELDS - {"remote", "kind"}
        if unknown:
            raise ValueError(f"unknown participant fields: {', '.join(sorted(unknown))}")
        remote = participant.get("remote")
        leg = Participant(
            id="",
            room="",
            kind=ParticipantKind(participant.get("kind", "rtp")),
            remote=RtpEndpoint(str(remote["ip"]), int(remote["port"])) if remote else None,
            **{k: v for k, v in participant.items() if k in JOIN_FIELDS},
        )
        joined, media = await self.control.join(room, leg)
        return {"participant": joined.to_dict(), "media": media}

    async def _leave(self, room: str, participant: str) -> None:
        await self.control.leave(room, participant)

    async def _update_participant(
        self, room: str, participant: str, gain: float | None = None, muted: bool | None = None
    ) -> dict[str, Any]:
        return (
            await self.control.update_participant(room, participant, gain=gain, muted=muted)
        ).to_dict()

    async def _floor_request(
        self,
        room: str,
        participant: str,
        priority: int | None = None,
        call_type: str = "normal",
    ) -> dict[str, Any]:
        return await self.control.floor_request(
            room, participant, priority=priority, call_type=call_type
        )

    async def _floor_release(self, room: str, participant: str) -> None:
        await self.control.floor_release(room, participant)

    async def _room(self, room: str) -> dict[str, Any]:
        return (await self.control.get_room(room)).to_dict()

    async def _rooms(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await self.control.list_rooms()]

    async def _publish(self, event: dict[str, Any]) -> None:
        if not isinstance(event.get("event"), str):
            raise ValueError("a published event needs an 'event' name")
        self.control.publish(event)
