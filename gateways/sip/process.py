"""The SIP gateway process: ``main(link, config)`` for :mod:`bridge.gatewayprocess`.

It starts the pjsua2 worker pool, the SIP front on the listen address and the call
manager, and serves the control process's ops: ``dial``, ``calls``, ``hangup``,
``status``. Without the pjsua2-python wheel it stays up and answers every op with
"Unavailable", rather than dying and being restarted over and over.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

from bridge.config import Config
from bridge.gatewaylink import GatewayLink, LinkError

from .calls import CORE_EVENTS, CallManager, GatewayError
from .front import SipFront
from .pool import WorkerPool
from .ratelimit import RateLimiter

logger = logging.getLogger("bridge.gateways.sip")

#: How often the front forgets ended dialogs and the pool tops up its spare slots.
HOUSEKEEPING_S = 5.0
#: How long an op waits for the gateway to finish starting (its workers start in ~0.3 s
#: each, in parallel); under the link's 10 s request timeout, so the caller hears why.
START_WAIT_S = 8.0
#: What the gateway says when the pjsua2 wheel is missing.
NO_PJSUA2 = "pjsua2 is not installed (pip install 'ucbridge[sip]')"


def _accounts(config: Config) -> list[dict[str, Any]]:
    """Account specs for the workers; the front's address is the registered contact."""
    sip = config.gateways.sip
    specs = []
    for account in sip.accounts:
        specs.append(
            {
                "name": account.name,
                "uri": account.uri,
                "registrar": account.registrar,
                "register": bool(account.registrar),
                "username": account.username,
                "password": account.secret(),
                "realm": account.realm,
                "expires": account.expires_s,
                "contact": f"<sip:{account.name}@{sip.listen_host}:{sip.listen_port}>",
            }
        )
    return specs


def _translate(handler: Any) -> Any:
    async def translated(**args: Any) -> Any:
        try:
            return await handler(**args)
        except GatewayError as exc:
            raise LinkError(str(exc), exc.kind) from None

    return translated


async def _unavailable(**args: Any) -> Any:
    raise LinkError(NO_PJSUA2, "Unavailable")


async def main(link: GatewayLink, config: Config) -> None:
    sip = config.gateways.sip
    if importlib.util.find_spec("pjsua2") is None:
        logger.error("SIP gateway disabled: %s", NO_PJSUA2)
        for op in ("dial", "calls", "hangup", "status"):
            link.serve(op, _unavailable)
        await link.request("ready")
        await asyncio.Event().wait()
        return
    loop = asyncio.get_running_loop()
    manager: CallManager | None = None

    def on_worker_event(index: int, event: dict[str, Any]) -> None:
        if manager is not None:
            manager.on_worker_event(index, event)

    pool = WorkerPool(sip, on_worker_event, _accounts(config))
    manager = CallManager(link, pool, sip)
    limiter = RateLimiter(sip.invite_rate, sip.invite_burst)
    front = SipFront(sip.listen_host, sip.listen_port, pool, limiter)
    manager.forget_dialog = front.forget
    manager.adopt_dialog = front.adopt
    transport: asyncio.BaseTransport | None = None
    housekeeping: asyncio.Task[None] | None = None
    started = asyncio.Event()

    def when_started(handler: Any) -> Any:
        """Ops are served from the start of main (the control process's requests wait
        for them); until the front is bound and the first workers are up they wait."""

        async def waiting(**args: Any) -> Any:
            try:
                await asyncio.wait_for(started.wait(), START_WAIT_S)
            except TimeoutError:
                raise LinkError("the SIP gateway is still starting", "Unavailable") from None
            return await handler(**args)

        return waiting

    async def dial(room: str, uri: str, by: str = "", account: str | None = None) -> Any:
        assert manager is not None
        return await manager.dial(room, uri, by=by, account=account)

    async def calls(room: str) -> Any:
        assert manager is not None
        return manager.list(room)

    async def hangup(room: str, call: str) -> None:
        assert manager is not None
        manager.hangup(room, call)

    async def status() -> Any:
        assert manager is not None
        return {
            "front": front.stats(),
            "pool": pool.health(),
            "calls": len(manager.active()),
            "registrations": manager.registrations.state,
        }

    link.serve("dial", when_started(_translate(dial)))
    link.serve("calls", when_started(_translate(calls)))
    link.serve("hangup", when_started(_translate(hangup)))
    link.serve("status", when_started(_translate(status)))
    try:
        # The front first: INVITEs that come while the first worker starts are held
        # (their retransmissions find it), none is lost to a closed port.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: front, local_addr=(sip.listen_host, sip.listen_port)
        )
        await pool.start()
        link.on_event(manager.on_core_event)
        await link.request("subscribe", events=CORE_EVENTS)
        started.set()
        await link.request("ready")
        logger.info(
            "SIP gateway on %s:%d (%d worker(s), %d calls each)",
            sip.listen_host,
            sip.listen_port,
            len(pool.workers),
            sip.calls_per_worker,
        )

        async def keep() -> None:
            while True:
                await asyncio.sleep(HOUSEKEEPING_S)
                front.sweep()
                pool.ensure_spare()

        housekeeping = loop.create_task(keep())
        await asyncio.Event().wait()
    finally:
        if housekeeping is not None:
            housekeeping.cancel()
        await manager.stop()
        await pool.stop()  # the workers' BYEs still go out through the front
        if transport is not None:
            transport.close()
