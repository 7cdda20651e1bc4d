"""Gateways that must live inside a media worker, beside the media and floor they serve.

DESIGN.md: "Floor and command sockets are served between ticks as packets arrive, so
floor access never waits for the next tick or for the control process." A gateway whose
protocol is floor control (MCPT for LTE handsets) therefore runs in the worker process,
as a plugin: the worker polls the plugin's sockets between ticks and routes commands
named after the plugin to it. The core never imports a gateway: plugins are named in
the configuration (``media.worker_plugins``) and loaded by module name; each module
provides ``create(context) -> WorkerPlugin``.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .engine import AudioEngine
    from .floorhub import FloorHub


@dataclass
class WorkerContext:
    """What a plugin may use of its worker."""

    index: int
    config: Config
    engine: AudioEngine
    floor: FloorHub
    emit: Callable[[dict[str, Any]], None]


class WorkerPlugin:
    """A gateway's part inside a media worker."""

    #: Commands ``<name>.<op>`` from the control process are routed to :meth:`command`.
    name: str = ""

    def sockets(self) -> list[socket.socket]:
        """Sockets the worker polls between ticks for this plugin."""
        return []

    def readable(self, sock: socket.socket) -> None:
        """``sock`` has data; read what is there without blocking."""

    def command(self, op: str, message: dict[str, Any]) -> Any:
        """A command for this plugin; unknown ones raise ValueError."""
        raise ValueError(f"unknown {self.name} command: {op}")

    def leg_left(self, participant: str) -> None:
        """A leg left its room (the plugin forgets what it knew of it)."""

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()


def load_plugins(names: list[str], context: WorkerContext) -> list[WorkerPlugin]:
    """Import each plugin module and create its plugin for this worker."""
    plugins = []
    for name in names:
        module = importlib.import_module(name)
        create = getattr(module, "create", None)
        if create is None:
            raise ValueError(f"worker plugin module has no create(): {name}")
        plugin = create(context)
        if not isinstance(plugin, WorkerPlugin):
            raise ValueError(f"worker plugin is not a WorkerPlugin: {name}")
        plugins.append(plugin)
    return plugins
