"""Patching and monitoring from the console, in real headless Chromium.

A dispatcher patches two talkgroups from the Patches panel, sees both marked in the room
list, sets a priority talkgroup for its own leg, and unpatches. Screenshots go to
``artifacts/patch-console/``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from console_harness import DemoServer, artifacts_dir, chromium_unavailable, launch_chromium

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable())),
]

DISPATCHER = "demo-dispatcher"  # the user of the demo login link
WAIT_MS = 10_000


async def rest(server: DemoServer, method: str, path: str, body: Any = None) -> Any:
    status, reply = await asyncio.to_thread(server.request, method, path, body)
    assert status < 300, f"{method} {path}: {status} {reply}"
    return reply


async def test_a_dispatcher_patches_and_monitors_from_the_console(tmp_path: Path) -> None:
    shots = artifacts_dir("patch-console")
    server = DemoServer(tmp_path)
    server.start()
    try:
        await _scenario(server, tmp_path, shots)
    finally:
        server.stop()


async def _scenario(server: DemoServer, tmp_path: Path, shots: Path) -> None:
    from playwright.async_api import async_playwright

    link = server.login_link()
    north = (await rest(server, "POST", "/api/rooms", {"name": "north", "mode": "ptt"}))["id"]
    south = (await rest(server, "POST", "/api/rooms", {"name": "south", "mode": "ptt"}))["id"]
    leg = await rest(
        server,
        "POST",
        "/api/rooms/north/participants",
        {
            "address": {"ip": "127.0.0.1", "port": 33100},
            "name": DISPATCHER,
            "kind": "webrtc",
            "dispatcher": True,
        },
    )
    errors: list[str] = []
    async with async_playwright() as playwright:
        context = await launch_chromium(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(link)
            await page.wait_for_function("window.ucb && window.ucb.connection === 'live'")
            card = page.locator(".room", has=page.locator(".room-name", has_text="north"))
            await card.locator(".room-select").click()

            # Patch north with south from the panel: both rooms are marked.
            await page.select_option("#patch-a", north)
            await page.select_option("#patch-b", south)
            await page.get_by_role("button", name="Patch", exact=True).click()
            await page.wait_for_function(
                "document.querySelectorAll('.room.patched').length === 2", timeout=WAIT_MS
            )
            assert "south" in await card.locator(".room-patch").inner_text()
            [patch] = (await rest(server, "GET", "/api/patches"))["patches"]
            assert patch["rooms"] == [north, south]
            await page.screenshot(path=str(shots / "1-patched.png"))

            # Monitoring: south becomes the console leg's priority talkgroup.
            await page.select_option("#monitor-priority", south)
            await page.get_by_role("button", name="Monitor", exact=True).click()
            path = f"/api/rooms/north/participants/{leg['id']}/monitor"
            for _ in range(100):
                monitor = await rest(server, "GET", path)
                if monitor["priority_room"] == south:
                    break
                await asyncio.sleep(0.05)
            assert monitor["priority_room"] == south

            # Unpatch: the marks go.
            await page.get_by_role("button", name="Unpatch north and south").click()
            await page.wait_for_function(
                "document.querySelectorAll('.room.patched').length === 0", timeout=WAIT_MS
            )
            assert (await rest(server, "GET", "/api/patches"))["patches"] == []
            await page.screenshot(path=str(shots / "2-unpatched.png"))
            assert errors == []
        finally:
            await context.close()
