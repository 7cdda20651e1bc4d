"""Drive the console's signalling from Python, and the console itself in real Chromium.

- :class:`ConsoleClient`: a socket.io console as ``web/static/js/app.js`` is one. It
  connects with a token, resumes from its last ``(epoch, seq)``, applies each live event
  once with :class:`bridge.web.sio.ConsoleState`, and resumes again on a gap or a new
  epoch. Tests compare its state with the server's snapshot.
- :func:`chromium_unavailable` and :func:`launch_chromium`: Debian's Chromium through
  Playwright, never a downloaded browser.
- :func:`artifacts_dir`: where screenshots go (``artifacts/`` at the repository root,
  ignored by git).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import socketio
from server import SECRET, Server

from bridge.web.sio import PRESENCE_NAMESPACE, ROOMS_NAMESPACE, ConsoleState

CHROMIUM = Path("/usr/bin/chromium")
#: Flags for headless Chromium on a loopback-only machine (no sandbox as root, no GPU,
#: no background traffic, fake media devices).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
REPO = Path(__file__).resolve().parents[2]
ACK_TIMEOUT_S = 10.0


class DemoServer(Server):
    """``ucbridge serve --demo``: the server prints a one-time login link."""

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, UCBRIDGE_AUTH_SECRET=SECRET)
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "bridge.cli",
                "serve",
                "--demo",
                "--config",
                str(self.config),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_health(lambda h: all(w["state"] == "running" for w in h["workers"]), timeout)

    def login_link(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"one-time login: (\S+)", self.log.read_text())
            if match:
                return match.group(1)
            time.sleep(0.05)
        raise TimeoutError(f"no login link in the log: {self.log.read_text()[-2000:]}")


def artifacts_dir(name: str) -> Path:
    path = REPO / "artifacts" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_unavailable() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return "Debian chromium is not installed (scripts/test installs it)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


async def launch_chromium(playwright: Any, profile: Path) -> Any:
    """A persistent headless Chromium context with a fresh profile, at 1366×768."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1366, "height": 768},
    )


class ConsoleClient:
    """A console on ``/rooms`` (and optionally ``/presence``) that keeps the server's state."""

    def __init__(self, base: str, token: str | None, *, presence: bool = False) -> None:
        self.base = base
        self.token = token
        self.want_presence = presence
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2)
        self.state = ConsoleState()
        self.epoch: str | None = None
        self.seq: int | None = None
        self.applied: list[int] = []
        self.snapshots = 0
        self.replays = 0
        self.presence_batches: list[dict[str, Any]] = []
        self.refusal: str | None = None
        self._resuming = False
        self._pending: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self.sio.on("connect", self._on_connect, namespace=ROOMS_NAMESPACE)
        self.sio.on("connect_error", self._on_refused, namespace=ROOMS_NAMESPACE)
        self.sio.on("*", self._on_event, namespace=ROOMS_NAMESPACE)
        self.sio.on("presence", self._on_presence, namespace=PRESENCE_NAMESPACE)

    async def connect(self) -> None:
        namespaces = [ROOMS_NAMESPACE] + ([PRESENCE_NAMESPACE] if self.want_presence else [])
        auth = {"token": self.token} if self.token else None
        await self.sio.connect(self.base, namespaces=namespaces, auth=auth, wait_timeout=10)
        await self.wait_for(lambda c: c.epoch is not None and not c._resuming)

    async def close(self) -> None:
        await self.sio.disconnect()

    async def drop(self) -> None:
        """Lose the connection without telling the server (as a network cut would)."""
        self.sio.reconnection = False
        await self.sio.eio.disconnect(abort=True)
        await self.wait_for(lambda c: not c.sio.connected)

    async def reconnect(self) -> None:
        self.sio = self._fresh()
        await self.connect()

    def _fresh(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2)
        sio.on("connect", self._on_connect, namespace=ROOMS_NAMESPACE)
        sio.on("connect_error", self._on_refused, namespace=ROOMS_NAMESPACE)
        sio.on("*", self._on_event, namespace=ROOMS_NAMESPACE)
        sio.on("presence", self._on_presence, namespace=PRESENCE_NAMESPACE)
        return sio

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=ROOMS_NAMESPACE, timeout=ACK_TIMEOUT_S)

    async def server_snapshot(self) -> dict[str, Any]:
        answer = await self.call("snapshot", {})
        snapshot: dict[str, Any] = answer["snapshot"]
        return snapshot

    async def subscribe_presence(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.sio.call(
            "subscribe", {}, namespace=PRESENCE_NAMESPACE, timeout=ACK_TIMEOUT_S
        )
        return answer

    async def wait_for(
        self, predicate: Callable[[ConsoleClient], bool], timeout: float = 10.0
    ) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _on_refused(self, data: Any) -> None:
        self.refusal = data.get("message") if isinstance(data, dict) else str(data)
        await self._notify()

    async def _on_connect(self) -> None:
        asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        if self._resuming:
            return
        self._resuming = True
        self._pending = []
        since = {"epoch": self.epoch, "seq": self.seq} if self.epoch else {}
        try:
            answer = await self.call("resume", since)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
            self._resuming = False
            return
        if "snapshot" in answer:
            snapshot = answer["snapshot"]
            self.state = ConsoleState.from_dict(snapshot)
            self.epoch, self.seq = snapshot["epoch"], snapshot["seq"]
            self.snapshots += 1
        else:
            for event in answer["replay"]:
                self._apply(event)
            self.seq = max(self.seq or 0, answer["seq"])
            self.replays += 1
        self._resuming = False
        pending, self._pending = self._pending, []
        for event in pending:
            await self._on_event(event["event"], event)
        await self._notify()

    def _apply(self, event: dict[str, Any]) -> None:
        if self.seq is not None and event["seq"] <= self.seq:
            return
        self.state.apply(event)
        self.seq = event["seq"]
        self.applied.append(event["seq"])

    async def _on_event(self, name: str, event: Any) -> None:
        if not isinstance(event, dict) or "seq" not in event:
            return
        if self._resuming:
            self._pending.append(event)
            return
        if event["epoch"] != self.epoch or event["seq"] > (self.seq or 0) + 1:
            await self._resume()
            return
        self._apply(event)
        await self._notify()

    async def _on_presence(self, batch: dict[str, Any]) -> None:
        self.presence_batches.append(batch)
        await self._notify()


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The part of a snapshot a console's reducer holds (rooms and alerts)."""
    return {"rooms": snapshot["rooms"], "alerts": snapshot["alerts"]}


@contextlib.asynccontextmanager
async def console(base: str, token: str | None, **kwargs: Any) -> Any:
    client = ConsoleClient(base, token, **kwargs)
    await client.connect()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.close()
