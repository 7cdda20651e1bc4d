"""Browsers in rooms through the WebRTC gateway: real headless Chromium, a real ``serve``.

Chromium's fake microphone plays a WAV of a 440 Hz tone; a plain-RTP leg in the same
room sends 1000 Hz. Both go through the media worker's mix: the RTP leg hears 440 Hz (FFT
on what it receives), the page hears 1000 Hz (an AnalyserNode on the remote track). In a
``ptt`` room the page's microphone reaches the room only while its leg holds the floor.
A second browser receives the first one's camera, forwarded by the gateway without
transcoding; and a peer connection closed under the console comes back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from console_harness import CHROMIUM, CHROMIUM_FLAGS, chromium_unavailable
from rtpleg import RATE, RtpLeg, band_fraction, tone
from server import Server

from bridge.web.auth import Role

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(chromium_unavailable() is not None, reason=str(chromium_unavailable())),
]

MIC_HZ = 440.0
RTP_HZ = 1000.0
WAIT_S = 15.0
#: The console's peer connection is back, audio flowing, within this (the issue's 2 s).
RECONNECT_BUDGET_S = 2.0
WEBRTC_TOML = '[gateways.webrtc]\nenabled = true\ninterfaces = ["127.0.0.1"]\n'


def write_tone_wav(path: Path, freq: float, seconds: float = 5.0, rate: int = 48000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (9000 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture
def webrtc_server(tmp_path: Path) -> Any:
    server = Server(tmp_path, gateways=["webrtc"], extra_toml=WEBRTC_TOML)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def create_room(server: Server, name: str, mode: str) -> str:
    status, room = server.request("POST", "/api/rooms", {"name": name, "mode": mode})
    assert status == 201, room
    return str(room["id"])


def rtp_leg(server: Server, room: str) -> RtpLeg:
    leg = RtpLeg()
    status, answer = server.request(
        "POST",
        f"/api/rooms/{room}/participants",
        {"name": "radio", "address": {"ip": "127.0.0.1", "port": leg.port}, "codec": "PCMU"},
    )
    assert status == 201, answer
    leg.remote = (answer["rtp"]["ip"], answer["rtp"]["port"])
    return leg


@contextlib.asynccontextmanager
async def console(
    server: Server, tmp: Path, user: str, room_id: str, wav: Path
) -> AsyncIterator[Any]:
    """A console in Chromium, signed in as ``user`` with ``room_id`` selected."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp / f"profile-{user}"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            page = await context.new_page()
            token = server.token(Role.DISPATCHER, user)
            await page.add_init_script(
                f"sessionStorage.setItem('ucb_token', {token!r});"
                f"localStorage.setItem('ucb_selected_room', {room_id!r});"
            )
            await page.goto(f"{server.base}/console")
            await page.wait_for_function(
                "window.ucb && window.ucb.webrtc && window.ucb.webrtc.state === 'connected'",
                timeout=WAIT_S * 1000,
            )
            yield page
        finally:
            await context.close()


def hears(leg: RtpLeg, freq: float, since: float, seconds: float = 0.5) -> float:
    """Share of ``freq`` in the last ``seconds`` the RTP leg heard after ``since``."""
    heard = leg.heard(since)[-int(seconds * RATE) :]
    return band_fraction(heard, freq, RATE, width=40.0) if len(heard) >= RATE // 4 else 0.0


async def wait_until(predicate: Any, timeout: float = WAIT_S, step: float = 0.05) -> float:
    """Poll ``predicate`` until true; the time it took."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)
    return time.monotonic() - start


def send_tone(leg: RtpLeg, seconds: float) -> threading.Thread:
    thread = threading.Thread(
        target=leg.send_realtime, args=(leg.frames(tone(RTP_HZ, int(seconds * RATE))),)
    )
    thread.start()
    return thread


async def test_open_room_tones_both_ways_and_reconnect(
    webrtc_server: Server, tmp_path: Path
) -> None:
    wav = tmp_path / "mic.wav"
    write_tone_wav(wav, MIC_HZ)
    room = create_room(webrtc_server, "open-1", "open")
    leg = rtp_leg(webrtc_server, room)
    try:
        async with console(webrtc_server, tmp_path, "disp-a", room, wav) as page:
            # The mic is muted until PTT: the room does not hear 440 Hz.
            start = time.monotonic()
            await asyncio.sleep(1.0)
            assert hears(leg, MIC_HZ, start) < 0.2
            await page.keyboard.down("Space")

            async def rtp_hears_mic() -> bool:
                return hears(leg, MIC_HZ, start) > 0.5

            await wait_until(rtp_hears_mic)

            # The RTP leg's tone reaches the page through the mix.
            sender = send_tone(leg, 4.0)

            async def page_hears_rtp() -> bool:
                return float(await page.evaluate(f"window.ucb.webrtc.toneShare({RTP_HZ})")) > 0.3

            await wait_until(page_hears_rtp)
            sender.join()

            # The peer connection is closed under the console: it reconnects by itself.
            closed_at = time.monotonic()
            await page.evaluate("window.ucb.webrtc.pc.close()")

            async def back() -> bool:
                return hears(leg, MIC_HZ, closed_at + 0.3, 0.3) > 0.5

            took = await wait_until(back, timeout=10.0)
            assert took <= RECONNECT_BUDGET_S + 0.3, f"audio back after {took:.2f} s"

            async def one_leg() -> bool:
                status, info = webrtc_server.request("GET", f"/api/rooms/{room}")
                assert status == 200, info
                names = [p["name"] for p in info["participants"]]
                assert names.count("disp-a") <= 1, names  # replaced, never duplicated
                return names.count("disp-a") == 1

            await wait_until(one_leg)
            await page.keyboard.up("Space")
    finally:
        leg.close()


async def test_ptt_room_mixes_the_browser_only_with_the_floor(
    webrtc_server: Server, tmp_path: Path
) -> None:
    wav = tmp_path / "mic.wav"
    write_tone_wav(wav, MIC_HZ)
    room = create_room(webrtc_server, "ptt-1", "ptt")
    leg = rtp_leg(webrtc_server, room)
    try:
        async with console(webrtc_server, tmp_path, "disp-b", room, wav) as page:
            # Force the track on: the worker still must not mix it without the floor.
            await page.evaluate("window.ucb.webrtc.setMic(true)")
            start = time.monotonic()
            await asyncio.sleep(1.5)
            assert hears(leg, MIC_HZ, start, 1.0) < 0.2
            await page.keyboard.down("Space")
            await page.wait_for_function("window.ucb.ptt.outcome === 'granted'")

            async def rtp_hears_mic() -> bool:
                return hears(leg, MIC_HZ, start) > 0.5

            await wait_until(rtp_hears_mic)
            await page.keyboard.up("Space")
            released = time.monotonic()
            await asyncio.sleep(1.5)
            assert hears(leg, MIC_HZ, released + 0.5, 1.0) < 0.2
    finally:
        leg.close()


async def test_browser_video_reaches_another_browser_forwarded(
    webrtc_server: Server, tmp_path: Path
) -> None:
    wav = tmp_path / "mic.wav"
    write_tone_wav(wav, MIC_HZ)
    room = create_room(webrtc_server, "video-1", "open")
    async with (
        console(webrtc_server, tmp_path, "cam-a", room, wav) as publisher,
        console(webrtc_server, tmp_path, "view-b", room, wav) as viewer,
    ):
        await publisher.evaluate("window.ucb.webrtc.publishVideo(true)")
        await publisher.wait_for_function(
            "window.ucb.webrtc.lastAnswer && window.ucb.webrtc.lastAnswer.publishing"
            " && window.ucb.webrtc.state === 'connected'",
            timeout=WAIT_S * 1000,
        )
        source = await publisher.evaluate("window.ucb.webrtc.lastAnswer.publishing")
        await viewer.evaluate(f"window.ucb.webrtc.view([{source!r}])")

        async def decoded() -> bool:
            stats = await viewer.evaluate("window.ucb.webrtc.stats()")
            return any(v["framesDecoded"] > 10 for v in stats.get("inboundVideo", []))

        await wait_until(decoded, timeout=20.0, step=0.2)
        status, stats = webrtc_server.request("GET", "/api/webrtc/stats")
        assert status == 200, stats
        counters = {s["source"]: s for s in stats["sources"]}[source]
        assert counters["forwarded"] > 10
        assert counters["transcoded"] == 0, counters  # same codec both ways: forwarded
