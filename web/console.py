"""The dispatcher console's pages: the single-page app, its static files and the login flow.

- ``GET /`` and ``GET /console``: the console (``static/index.html``); it is plain
  JavaScript with vendored libraries, no build step.
- ``GET /static/...``: its scripts, styles, icons and the vendored socket.io client and
  Leaflet, each with its licence.
- ``GET /console/settings.json``: what the page needs before login: the ``[console]``
  config section (:class:`bridge.config.ConsoleConfig`): the map's tile URL template and
  attribution, none by default, as a console may have no internet (the map then draws a
  graticule), and where the map starts.
- ``GET /login?code=...`` opened by a browser (``Accept: text/html``): the one-time demo
  link sets the login cookie and lands on the console; any other client gets the JSON
  answer of :meth:`bridge.web.app.Api.login` unchanged.
- ``POST /logout``: drops the login cookie (the page cannot: it is ``HttpOnly``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from bridge.config import ConsoleConfig

from .app import Handler
from .openapi import Empty, operation

# resolve(): an editable install links each file, and the static route serves no links.
STATIC_DIR = Path(__file__).resolve().parent / "static"
CONSOLE_PATH = "/console"
#: The login cookie ``GET /login`` sets (``HttpOnly``, ``SameSite=Strict``).
TOKEN_COOKIE = "ucb_token"
_NO_STORE = {"Cache-Control": "no-store"}


#: The map settings (the ``[console]`` config section).
SETTINGS: web.AppKey[ConsoleConfig] = web.AppKey("console_settings", ConsoleConfig)


@operation("The dispatcher console (HTML)", content="text/html", public=True)
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_NO_STORE)


@operation("The console's map settings, before login", response=ConsoleConfig, public=True)
async def settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS].model_dump(mode="json"), headers=_NO_STORE)


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _error_of(response: web.StreamResponse) -> str:
    try:
        return str(json.loads(getattr(response, "text", "") or "{}")["error"])
    except (ValueError, KeyError, TypeError):
        return "login failed"


def login_page(redeem: Handler) -> Handler:
    """Wrap the JSON login handler: a browser is sent on to the console with its cookie."""

    @functools.wraps(redeem)
    async def login(request: web.Request) -> web.StreamResponse:
        response = await redeem(request)
        if not _wants_html(request):
            return response
        location = CONSOLE_PATH
        if response.status != web.HTTPOk.status_code:
            location += "?" + urlencode({"login_error": _error_of(response)})
        redirect = web.Response(status=web.HTTPSeeOther.status_code, headers={"Location": location})
        for name, morsel in response.cookies.items():
            redirect.cookies[name] = morsel
        return redirect

    return login


@operation("Drop the login cookie", response=Empty, public=True)
async def logout(request: web.Request) -> web.Response:
    response = web.json_response({})
    response.del_cookie(TOKEN_COOKIE)
    return response


def setup(app: web.Application, console: ConsoleConfig | None = None) -> None:
    """Serve the console on ``app`` with the map settings of ``console``."""
    app[SETTINGS] = console or ConsoleConfig()
    app.router.add_get("/", index)
    app.router.add_get(CONSOLE_PATH, index)
    app.router.add_get(CONSOLE_PATH + "/settings.json", settings)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static/", STATIC_DIR, name="static")
