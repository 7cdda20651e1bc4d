"""A gateway module for the host's tests: ``main(link, config)`` like a real gateway."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from bridge.config import SECRET_ENV, Config
from bridge.gatewaylink import GatewayLink

#: How long ``drop_link`` keeps the process from exiting (the host kills it long before).
HANG_S = 300.0


async def main(link: GatewayLink, config: Config) -> None:
    async def echo(**args: Any) -> dict[str, Any]:
        return {"args": args, "rate": config.media.room_rate}

    async def join(room: str) -> Any:
        return await link.request("join", room=room, participant={"kind": "sip", "name": "p"})

    async def secrets() -> dict[str, str]:
        return {"env": os.environ.get(SECRET_ENV, ""), "config": config.auth.secret}

    async def drop_link() -> None:
        # The link goes, the process stays: a gateway whose clean-up hangs (here a thread
        # the interpreter waits for at exit).
        threading.Thread(target=time.sleep, args=(HANG_S,)).start()
        asyncio.get_running_loop().call_soon(link.close)

    async def die(code: int) -> None:
        os._exit(code)

    tasks: set[asyncio.Future[Any]] = set()

    def seen(event: dict[str, Any]) -> None:
        task = asyncio.ensure_future(
            link.request("publish", event={"event": "probe_seen", "of": event})
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    link.serve("echo", echo)
    link.serve("join_room", join)
    link.serve("die", die)
    link.serve("secrets", secrets)
    link.serve("drop_link", drop_link)
    link.on_event(seen)
    await link.request("subscribe", events=["probe"])
    await link.request("ready")
    await asyncio.Event().wait()
