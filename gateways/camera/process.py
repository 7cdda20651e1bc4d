"""The camera gateway process, run as ``bridge.gatewayprocess bridge.gateways.camera.process``.

Started by the control process (:mod:`bridge.gatewayhost`); see :mod:`.gateway`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import Config

from .gateway import CameraGateway


async def main(link: Any, config: Config) -> None:
    gateway = CameraGateway(link, config.gateways.camera, config.gateways.runtime_dir)
    await gateway.start()
    await link.request("ready")
    try:
        await asyncio.Event().wait()  # until cancelled: SIGTERM or the link closing
    finally:
        await gateway.close()
