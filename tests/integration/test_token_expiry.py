"""An expired token against a real ``ucbridge serve``: the login cookie and socket.io."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import socketio
from console_harness import ACK_TIMEOUT_S, DemoServer
from server import Server

from bridge.web.auth import Role
from bridge.web.console import TOKEN_COOKIE
from bridge.web.sio import PRESENCE_NAMESPACE, ROOMS_NAMESPACE

#: The default ``auth.token_ttl_s``: the login cookie lives as long as its token.
DEFAULT_TOKEN_TTL_S = 12 * 3600
#: A token that must outlive its connection by this little (seconds).
SHORT_TTL_S = 4


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("expiry"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _http(
    server: Server, method: str, path: str, headers: dict[str, str]
) -> tuple[int, bytes, list[str]]:
    """Status, body and the ``Set-Cookie`` headers of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.headers.get_all("Set-Cookie") or []
    finally:
        connection.close()


def _cookie(set_cookies: list[str]) -> Any:
    """The login cookie's morsel among ``Set-Cookie`` headers."""
    for header in set_cookies:
        jar: SimpleCookie = SimpleCookie(header)
        if TOKEN_COOKIE in jar:
            return jar[TOKEN_COOKIE]
    raise AssertionError(f"no {TOKEN_COOKIE} in {set_cookies}")


def _expired_cookie(server: Server) -> dict[str, str]:
    return {"Cookie": f"{TOKEN_COOKIE}={server.authority.issue('old', Role.DISPATCHER, -60)}"}


def test_an_expired_login_cookie_leaves_the_public_pages_working_and_is_dropped(
    srv: Server,
) -> None:
    cookie = _expired_cookie(srv)
    for path in ("/", "/console", "/console/settings.json", "/static/js/app.js"):
        status, _, set_cookies = _http(srv, "GET", path, cookie)
        assert status == 200, path
        dropped = _cookie(set_cookies)
        assert (dropped.value, dropped["max-age"]) == ("", "0"), path
    status, body, set_cookies = _http(srv, "POST", "/logout", cookie)
    assert (status, json.loads(body)) == (200, {})
    assert _cookie(set_cookies).value == ""
    # A protected route answers as it does to anyone without a token.
    status, body, set_cookies = _http(srv, "GET", "/api/rooms", cookie)
    assert (status, json.loads(body)) == (401, {"error": "authentication required"})
    assert _cookie(set_cookies).value == ""
    # A good cookie is left alone.
    good = {"Cookie": f"{TOKEN_COOKIE}={srv.token(Role.OBSERVER)}"}
    status, _, set_cookies = _http(srv, "GET", "/api/rooms", good)
    assert (status, set_cookies) == (200, [])


def test_an_expired_bearer_token_is_still_refused(srv: Server) -> None:
    expired = srv.authority.issue("old", Role.DISPATCHER, -60)
    status, body, _ = _http(srv, "GET", "/console", {"Authorization": f"Bearer {expired}"})
    assert (status, json.loads(body)) == (401, {"error": "token has expired"})


async def test_an_expired_cookie_with_a_fresh_token_connects_socket_io(srv: Server) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        srv.base,
        namespaces=[ROOMS_NAMESPACE],
        headers=_expired_cookie(srv),
        auth={"token": srv.token(Role.OBSERVER, "fresh")},
        wait_timeout=5,
    )
    try:
        answer = await sio.call("resume", {}, namespace=ROOMS_NAMESPACE, timeout=ACK_TIMEOUT_S)
        assert answer["ok"] and answer["user"] == "fresh"
    finally:
        await sio.disconnect()


async def test_the_demo_login_sets_a_cookie_as_long_lived_as_its_token(tmp_path: Path) -> None:
    server = DemoServer(tmp_path)
    server.start()
    try:
        link = urlsplit(server.login_link())
        headers = {**_expired_cookie(server), "Accept": "text/html"}
        status, _, set_cookies = await asyncio.to_thread(
            _http, server, "GET", f"{link.path}?{link.query}", headers
        )
    finally:
        server.stop()
    assert status == 303
    cookie = _cookie(set_cookies)
    assert cookie["max-age"] == str(DEFAULT_TOKEN_TTL_S) and cookie["httponly"]
    assert server.authority.verify(cookie.value).role is Role.DISPATCHER


async def _wait_until(deadline: float) -> None:
    """Until the wall clock (which token expiry reads) passes ``deadline``."""
    while time.time() < deadline:
        await asyncio.sleep(0.05)


async def test_a_socket_whose_token_expires_is_refused_and_disconnected(srv: Server) -> None:
    token = srv.authority.issue("brief", Role.DISPATCHER, SHORT_TTL_S)
    expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    before = srv.ok("GET", "/api/audit?limit=1")["count"]
    sio = socketio.AsyncClient(reconnection=False)
    gone = asyncio.Event()
    sio.on("disconnect", gone.set, namespace=ROOMS_NAMESPACE)
    await sio.connect(srv.base, namespaces=[ROOMS_NAMESPACE], auth={"token": token}, wait_timeout=5)
    try:
        # While the token lasts, the dispatcher's action gets its ordinary answer.
        answer = await sio.call(
            "floor_revoke", {"room": "nowhere"}, namespace=ROOMS_NAMESPACE, timeout=ACK_TIMEOUT_S
        )
        assert answer["ok"] is False and answer["status"] == 404
        await _wait_until(expires)
        answer = await sio.call(
            "floor_revoke", {"room": "nowhere"}, namespace=ROOMS_NAMESPACE, timeout=ACK_TIMEOUT_S
        )
        assert answer == {"ok": False, "status": 401, "error": "token has expired"}
        await asyncio.wait_for(gone.wait(), ACK_TIMEOUT_S)
    finally:
        await sio.disconnect()
    records = srv.ok("GET", f"/api/audit?after={before}")["records"]
    assert [(r["user"], r["action"], r["outcome"]) for r in records] == [
        ("brief", "sio:floor_revoke", "failed"),
        ("brief", "sio:floor_revoke", "denied"),
    ]
    assert records[1]["detail"] == {"status": 401, "error": "token has expired"}


async def test_resume_and_presence_are_refused_once_the_token_expired(srv: Server) -> None:
    token = srv.authority.issue("brief", Role.OBSERVER, SHORT_TTL_S)
    expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    sio = socketio.AsyncClient(reconnection=False)
    gone = {ROOMS_NAMESPACE: asyncio.Event(), PRESENCE_NAMESPACE: asyncio.Event()}
    for namespace, event in gone.items():
        sio.on("disconnect", event.set, namespace=namespace)
    await sio.connect(
        srv.base,
        namespaces=[ROOMS_NAMESPACE, PRESENCE_NAMESPACE],
        auth={"token": token},
        wait_timeout=5,
    )
    try:
        await _wait_until(expires)
        refused = {"ok": False, "status": 401, "error": "token has expired"}
        for event, namespace in (("resume", ROOMS_NAMESPACE), ("subscribe", PRESENCE_NAMESPACE)):
            answer = await sio.call(event, {}, namespace=namespace, timeout=ACK_TIMEOUT_S)
            assert answer == refused, event
            await asyncio.wait_for(gone[namespace].wait(), ACK_TIMEOUT_S)
    finally:
        await sio.disconnect()
