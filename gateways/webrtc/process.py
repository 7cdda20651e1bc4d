"""The WebRTC gateway process (``bridge.gatewayprocess bridge.gateways.webrtc.process``).

Serves ``offer``, ``candidate``, ``hangup`` and ``stats`` to the control process over the
gateway link, and follows the core's ``left`` and ``room_deleted`` events.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.config import Config
from bridge.gatewaylink import GatewayLink

from .gateway import SUBSCRIBED_EVENTS, Settings, WebRtcGateway
from .ice import restrict_host_addresses

logger = logging.getLogger("bridge.gateways.webrtc")


async def main(link: GatewayLink, config: Config) -> None:
    restrict_host_addresses(config.gateways.webrtc.interfaces)
    gateway = WebRtcGateway(link, Settings.from_config(config))
    link.serve("offer", gateway.offer)
    link.serve("candidate", gateway.candidate)
    link.serve("hangup", gateway.hangup)
    link.serve("stats", gateway.stats)
    link.on_event(gateway.on_event)
    gateway.start()
    try:
        await link.request("subscribe", events=SUBSCRIBED_EVENTS)
        await link.request("ready")
        logger.info("WebRTC gateway ready")
        await asyncio.Event().wait()
    finally:
        await gateway.close()
