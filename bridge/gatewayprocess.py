"""A gateway process: ``python -P -m bridge.gatewayprocess MODULE``.

The control process (:mod:`bridge.gatewayhost`) starts it with one end of a socket pair
on the file descriptor named by ``$UCBRIDGE_LINK_FD``. The process asks the control
process for the validated configuration over that link (so that secrets never appear in
argv or in the environment), imports ``MODULE`` and runs ``await MODULE.main(link,
config)``. Once ``main`` serves its ops and has bound what it listens on, it says so with
``await link.request("ready")``: only then does the control process list the gateway as
running and send it requests. On SIGTERM or SIGINT, or when the link closes because the
control process is gone, ``main`` is cancelled and must clean up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys

from .config import parse_config
from .gatewaylink import GatewayLink

#: The environment variable that names the link's file descriptor.
LINK_FD_ENV = "UCBRIDGE_LINK_FD"

logger = logging.getLogger("bridge.gatewayprocess")


async def run(module_name: str, fd: int) -> int:
    sock = socket.socket(fileno=fd)
    link = await GatewayLink.from_socket(sock, module_name)
    config = parse_config(await link.request("hello", module=module_name))
    module = importlib.import_module(module_name)
    main = getattr(module, "main", None)
    if main is None:
        raise SystemExit(f"gateway module has no main(link, config): {module_name}")
    task = asyncio.get_running_loop().create_task(main(link, config))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    closed = asyncio.ensure_future(link.wait_closed())
    await asyncio.wait({task, closed, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    closed.cancel()
    link.close()
    exc = task.exception() if not task.cancelled() else None
    if exc is not None:
        logger.error("gateway %s failed: %r", module_name, exc)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge.gatewayprocess")
    parser.add_argument("module", help="the gateway module, e.g. bridge.gateways.sip.process")
    args = parser.parse_args(argv)
    fd = os.environ.get(LINK_FD_ENV)
    if fd is None:
        parser.error(f"${LINK_FD_ENV} is not set: gateway processes are started by ucbridge serve")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.module} %(levelname)s %(message)s"
    )
    return asyncio.run(run(args.module, int(fd)))


if __name__ == "__main__":
    sys.exit(main())
