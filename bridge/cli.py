"""The ``ucbridge`` command.

``ucbridge serve`` starts the control process (this one: the aiohttp app), the media
workers and the recorder, and stops them all together on SIGINT or SIGTERM.
``ucbridge token`` issues a signed token for a user and role.
``ucbridge handset`` simulates LTE PTT handsets (see ``ucbridge handset --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path

from .config import Config, ConfigError, RoomConfig, load_config
from .model import RoomMode

logger = logging.getLogger("bridge")

#: The room that demo mode creates when the configuration names none.
DEMO_ROOM = "demo"


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    media = config.media.model_copy(
        update={"workers": args.workers} if getattr(args, "workers", None) else {}
    )
    updates: dict[str, object] = {"media": media}
    if getattr(args, "demo", False):
        updates["auth"] = config.auth.model_copy(update={"demo": True})
        if not config.rooms:
            updates["rooms"] = [RoomConfig(name=DEMO_ROOM, mode=RoomMode.OPEN)]
    server = config.server
    if getattr(args, "host", None):
        server = server.model_copy(update={"host": args.host})
    if getattr(args, "port", None):
        server = server.model_copy(update={"port": args.port})
    if getattr(args, "tls_cert", None) or getattr(args, "tls_key", None):
        server = server.model_copy(update={"tls_cert": args.tls_cert, "tls_key": args.tls_key})
    updates["server"] = server
    return config.model_copy(update=updates)


async def _serve(config: Config) -> int:
    from aiohttp import web

    from bridge.web.app import create_app
    from bridge.web.auth import Role, TokenAuthority, new_secret

    from .control import Control, install_signal_handlers

    secret = config.auth_secret()
    if not secret:
        if not config.auth.demo:
            raise ConfigError(
                "auth.secret is not set: set it in the config file or in "
                "UCBRIDGE_AUTH_SECRET, or run with --demo"
            )
        secret = new_secret()
    authority = TokenAuthority(secret, config.auth.token_ttl_s)
    control = Control(config)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await control.start()
    app = create_app(control, authority)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = None
    if config.server.tls_cert is not None and config.server.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        await control.stop()
        raise ConfigError(
            f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}"
        ) from None
    scheme = "https" if context else "http"
    base = f"{scheme}://{config.server.host}:{config.server.port}"
    print(f"ucbridge: listening on {base}", flush=True)
    if config.auth.demo:
        code = authority.login_code("demo-dispatcher", Role.DISPATCHER)
        print(f"ucbridge: demo mode; one-time login: {base}/login?code={code}", flush=True)
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await runner.cleanup()
        await control.stop()
    return 0


def _token(config: Config, user: str, role: str, ttl: int | None) -> int:
    from bridge.web.auth import Role, TokenAuthority

    secret = config.auth_secret()
    if not secret:
        raise ConfigError(
            "auth.secret is not set: set it in the config file or in UCBRIDGE_AUTH_SECRET"
        )
    print(TokenAuthority(secret).issue(user, Role(role), ttl))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ucbridge", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bridge (control process + media workers)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--workers", type=int, help="media-worker processes (default 1)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate for HTTPS/WSS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for HTTPS/WSS")
    serve.add_argument(
        "--demo", action="store_true", help="demo mode: a demo room and a one-time login link"
    )

    token = sub.add_parser("token", help="issue a signed access token")
    token.add_argument("--config", type=Path)
    token.add_argument("--user", required=True)
    token.add_argument(
        "--role", required=True, choices=["dispatcher", "officer", "observer", "admin"]
    )
    token.add_argument("--ttl", type=int, help="lifetime in seconds")

    # The simulator parses its own options (``ucbridge handset --help``), so that the other
    # commands never import it.
    sub.add_parser("handset", help="simulate LTE PTT handsets on a talkgroup", add_help=False)

    args, extra = parser.parse_known_args(argv)
    if args.command != "handset" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "handset":
        from bridge.gateways.trunking.handset import main as handset_main

        return handset_main(extra)
    try:
        config = _load(args)
        if args.command == "serve":
            return asyncio.run(_serve(config))
        return _token(config, args.user, args.role, args.ttl)
    except ConfigError as exc:
        print(f"ucbridge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
