"""The failed-login table of ``GET /login``: bounded, and emptied as failures age out."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.web import app as web_app
from bridge.web.app import AUTHORITY, LOGIN_WINDOW_S, Api
from bridge.web.auth import Role, TokenAuthority

SECRET = "k" * 40


def _app() -> web.Application:
    app = web.Application()
    app[AUTHORITY] = TokenAuthority(SECRET)
    return app


async def _login(api: Api, app: web.Application, code: str, peer: str) -> int:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", f"/login?code={code}", app=app, transport=transport)
    assert request.remote == peer
    response = await api.login(request)
    return response.status


async def test_a_successful_login_leaves_no_entry_behind() -> None:
    api, app = Api(), _app()
    code = app[AUTHORITY].login_code("demo", Role.DISPATCHER)
    assert await _login(api, app, code, "10.0.0.1") == 200
    assert "10.0.0.1" not in api._login_failures


async def test_failures_that_aged_out_drop_the_address() -> None:
    api, app = Api(), _app()
    assert await _login(api, app, "wrong", "10.0.0.1") == 401
    assert len(api._login_failures["10.0.0.1"]) == 1
    # The failure as it is a window later (the table holds monotonic times).
    api._login_failures["10.0.0.1"] = [time.monotonic() - LOGIN_WINDOW_S]
    code = app[AUTHORITY].login_code("demo", Role.DISPATCHER)
    assert await _login(api, app, code, "10.0.0.1") == 200
    assert "10.0.0.1" not in api._login_failures


async def test_the_table_keeps_the_most_recent_addresses_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web_app, "MAX_LOGIN_FAILURE_PEERS", 3)
    api, app = Api(), _app()
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert await _login(api, app, "wrong", peer) == 401
    # A new failure from the oldest address makes it the most recent again.
    assert await _login(api, app, "wrong", "10.0.0.1") == 401
    assert await _login(api, app, "wrong", "10.0.0.4") == 401
    assert list(api._login_failures) == ["10.0.0.3", "10.0.0.1", "10.0.0.4"]
    assert len(api._login_failures["10.0.0.1"]) == 2
