"""The console's dial box, in real headless Chromium, against a real SIP gateway and SIPp.

A dispatcher dials a SIPp phone into the selected talkgroup from the Phone calls card,
sees it ringing, hangs it up, and sees it failed (487: cancelled while ringing).
Screenshots go to ``artifacts/sip-console/``.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from console_harness import DemoServer, artifacts_dir, chromium_unavailable, launch_chromium
from sip_peers import sip_toml, wait_sip
from sip_scenarios import Sipp, cancelled_uas

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable())),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="needs sip-tester"),
]

WAIT_MS = 15_000


async def test_a_dispatcher_dials_a_phone_and_hangs_up_from_the_console(tmp_path: Path) -> None:
    shots = artifacts_dir("sip-console")
    toml, port = sip_toml()
    server = DemoServer(tmp_path, extra_toml=toml, gateways=("sip",))
    server.start()
    sipp = Sipp(tmp_path, "console", cancelled_uas())
    try:
        await asyncio.to_thread(wait_sip, port)
        status, _ = await asyncio.to_thread(
            server.request, "POST", "/api/rooms", {"name": "north", "mode": "ptt"}
        )
        assert status == 201
        sipp.start()
        await _scenario(server, tmp_path, shots, f"sip:unit7@127.0.0.1:{sipp.port}")
        assert await asyncio.to_thread(sipp.wait) == 0, sipp.errors() or sipp.log.read_text()
    finally:
        sipp.stop()
        server.stop()


async def _scenario(server: DemoServer, tmp_path: Path, shots: Path, uri: str) -> None:
    from playwright.async_api import async_playwright

    link = server.login_link()
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
            await page.wait_for_selector("#calls-card:not([hidden])", timeout=WAIT_MS)

            await page.fill("#dial-uri", uri)
            await page.get_by_role("button", name="Dial", exact=True).click()
            call = page.locator("#calls .call", has_text="unit7")
            await call.locator(".call-state", has_text="Ringing").wait_for(timeout=WAIT_MS)
            assert await page.input_value("#dial-uri") == ""
            await page.screenshot(path=str(shots / "ringing.png"))

            await call.get_by_role("button", name="Hang up").click()
            await call.locator(".call-state", has_text="Failed").wait_for(timeout=WAIT_MS)
            assert await call.get_by_role("button", name="Hang up").count() == 0
            assert "487" in (await call.locator(".call-state").get_attribute("title") or "")
            await page.screenshot(path=str(shots / "failed.png"))
        finally:
            await context.close()
    assert errors == []
