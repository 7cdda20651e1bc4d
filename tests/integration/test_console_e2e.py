"""The dispatcher console in real headless Chromium, against a real ``ucbridge serve --demo``.

A dispatcher opens the one-time login link, sees a talkgroup with units moving on the map,
talks with the space bar (the floor is granted, then idle again), sees an emergency alert
from a unit, acknowledges and clears it. Screenshots go to ``artifacts/console-e2e/``.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from console_harness import (
    ConsoleClient,
    DemoServer,
    artifacts_dir,
    chromium_unavailable,
    comparable,
    launch_chromium,
)

from bridge.web.auth import Role

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable())),
]

DISPATCHER = "demo-dispatcher"  # the user of the demo login link
ROOM = "tac-1"
#: (name, kind, start lat, start lon): the legs of the talkgroup; all but the console move.
LEGS = [
    (DISPATCHER, "webrtc", None, None),
    ("unit-12", "trunk", 52.5200, 13.4050),
    ("unit-7", "trunk", 52.5235, 13.4120),
    ("desk-phone", "sip", 52.5185, 13.4160),
    ("cam-north", "camera", 52.5262, 13.4005),
    ("node-b", "node", 52.5150, 13.3960),
]
STEP_DEG = 0.0006
WAIT_MS = 10_000


async def rest(server: DemoServer, method: str, path: str, body: Any = None) -> Any:
    status, reply = await asyncio.to_thread(server.request, method, path, body)
    assert status < 300, f"{method} {path}: {status} {reply}"
    return reply


async def move_units(server: DemoServer, step: int) -> dict[str, tuple[float, float]]:
    where = {}
    for name, _kind, lat, lon in LEGS:
        if lat is None or lon is None:
            continue
        position = (lat + step * STEP_DEG, lon + step * STEP_DEG * 1.5)
        await rest(
            server,
            "POST",
            f"/api/presence/{name}",
            {
                "lat": position[0],
                "lon": position[1],
                "alias": name,
                "room": ROOM,
                "source": "gnss",
                "speed_mps": 9.5,
                "heading_deg": 56.0,
                "accuracy_m": 4.0,
            },
        )
        where[name] = position
    return where


async def page_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("window.ucb.state()")
    return state


async def test_a_dispatcher_talks_and_handles_an_emergency(tmp_path: Path) -> None:
    shots = artifacts_dir("console-e2e")
    print(f"\nconsole screenshots: {shots}")
    server = DemoServer(tmp_path)
    server.start()
    try:
        await _scenario(server, tmp_path, shots)
    finally:
        server.stop()


async def _scenario(server: DemoServer, tmp_path: Path, shots: Path) -> None:
    from playwright.async_api import async_playwright

    link = server.login_link()
    room_id = (
        await rest(server, "POST", "/api/rooms", {"name": ROOM, "mode": "ptt", "record": True})
    )["id"]
    await rest(server, "POST", "/api/rooms", {"name": "fire-ops", "mode": "ptt"})
    ports = itertools.count(33000, 2)
    legs = {}
    for name, kind, _lat, _lon in LEGS:
        reply = await rest(
            server,
            "POST",
            f"/api/rooms/{ROOM}/participants",
            {"address": {"ip": "127.0.0.1", "port": next(ports)}, "name": name, "kind": kind},
        )
        legs[name] = reply["id"]
    await move_units(server, 0)
    field = ConsoleClient(server.base, server.token(Role.DISPATCHER, "field-simulator"))
    await field.connect()
    errors: list[str] = []
    async with async_playwright() as playwright:
        context = await launch_chromium(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Log in with the one-time link: it sets the cookie and lands on the console.
            await page.goto(link)
            assert page.url.endswith("/console")
            await page.wait_for_function("window.ucb && window.ucb.connection === 'live'")
            assert await page.evaluate("window.ucb.user") == {
                "user": DISPATCHER,
                "role": "dispatcher",
            }
            room_card = page.locator(".room", has=page.locator(".room-name", has_text=ROOM))
            await room_card.locator(".room-select").click()
            await page.wait_for_function(
                f"document.getElementById('ptt-room').textContent === {ROOM!r}"
            )

            # Units move; the map follows their latest fixes.
            for step in (1, 2, 3):
                where = await move_units(server, step)
            await page.wait_for_function(
                "([id, lat]) => (window.ucb.units()[id] || {}).lat === lat",
                arg=["unit-12", where["unit-12"][0]],
            )
            units = await page.evaluate("window.ucb.units()")
            assert {u: (v["lat"], v["lon"]) for u, v in units.items()} == where
            assert await page.locator(".unit-marker").count() == len(where)
            await page.screenshot(path=str(shots / "1-console.png"))

            # Push to talk with the space bar: held (auto-repeat is one press), then released.
            await page.keyboard.down("Space")
            await page.keyboard.down("Space")  # a repeat, as a held key sends
            await page.wait_for_function(
                f"window.ucb.state().rooms[{room_id!r}].floor.holder === {legs[DISPATCHER]!r}",
                timeout=WAIT_MS,
            )
            await page.wait_for_selector("#ptt.granted")
            assert "permit" in await page.evaluate("window.ucb.tones")
            assert "unit-12" not in await _talking_units(page)
            await page.screenshot(path=str(shots / "2-talking.png"))
            await page.keyboard.up("Space")
            await page.wait_for_function(
                f"window.ucb.state().rooms[{room_id!r}].floor.state === 'idle'"
            )
            # The page renders the state on its next frame: wait for the text, then check it.
            await page.wait_for_function(
                "document.querySelector('#floor-state').innerText === 'IDLE'"
            )
            assert await page.locator("#floor-state").inner_text() == "IDLE"

            # A unit's talk burst is highlighted on the map.
            answer = await field.call("ptt_press", {"room": ROOM, "participant": legs["unit-7"]})
            assert answer["result"] == "granted"
            await page.wait_for_function("window.ucb.units()['unit-7'].status === 'talking'")
            await field.call("ptt_release", {"room": ROOM, "participant": legs["unit-7"]})

            # A unit calls an emergency: the alert shows, the unit turns red on the map.
            answer = await field.call(
                "ptt_press", {"room": ROOM, "participant": legs["unit-12"], "emergency": True}
            )
            assert answer["result"] == "granted"
            alert = page.locator("#alerts .alert")
            await alert.wait_for()
            assert "unit-12" in await alert.inner_text()
            await page.wait_for_function("window.ucb.units()['unit-12'].status === 'emergency'")
            await page.wait_for_function("window.ucb.tones.includes('alert')")
            await page.screenshot(path=str(shots / "3-emergency.png"))
            await alert.get_by_role("button", name="Acknowledge the alert from unit-12").click()
            await page.wait_for_selector("#alerts .alert.acknowledged")
            await page.screenshot(path=str(shots / "4-acknowledged.png"))
            await alert.get_by_role("button", name="Clear the alert from unit-12").click()
            await page.wait_for_selector("#alerts .alert", state="detached")
            await field.call("ptt_release", {"room": ROOM, "participant": legs["unit-12"]})
            await page.wait_for_function(
                f"window.ucb.state().rooms[{room_id!r}].floor.state === 'idle'"
            )

            # The console ends with exactly the server's state, and so does a reloaded one.
            server_state = comparable(await field.server_snapshot())
            assert await page_state(page) == server_state
            await page.screenshot(path=str(shots / "5-final.png"))
            await page.reload()
            await page.wait_for_function("window.ucb && window.ucb.connection === 'live'")
            assert await page_state(page) == server_state
            await _check_keyboard_access(page)
        finally:
            await context.close()
            await field.close()
    assert errors == [], f"the page threw: {errors}"

    # Every dispatcher action of the console is in the audit log exactly once.
    records = (await rest(server, "GET", "/api/audit"))["records"]
    mine = [(r["action"], r["outcome"]) for r in records if r["user"] == DISPATCHER]
    assert mine == [
        ("sio:ptt_press", "ok"),
        ("sio:ptt_release", "ok"),
        ("sio:emergency_ack", "ok"),
        ("sio:emergency_clear", "ok"),
    ]
    simulator = [r["action"] for r in records if r["user"] == "field-simulator"]
    assert simulator == ["sio:ptt_press", "sio:ptt_release"] * 2
    assert (await rest(server, "GET", "/api/audit/verify"))["ok"] is True


async def _talking_units(page: Any) -> list[str]:
    units: dict[str, dict[str, Any]] = await page.evaluate("window.ucb.units()")
    return [u for u, v in units.items() if v["status"] == "talking"]


async def _check_keyboard_access(page: Any) -> None:
    """Every visible control has a name, and Tab reaches the PTT button from the top."""
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll('button, input, a[href], textarea')]
            .filter((e) => e.offsetParent !== null)
            .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim()
                || (e.labels && e.labels.length) || e.getAttribute('title')))
            .map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to push-to-talk"
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.id")
    assert focused in ("ptt", "opt-override"), focused
