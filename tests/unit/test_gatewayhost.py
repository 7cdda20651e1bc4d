"""The gateway host: a real gateway process linked, served, forwarded to and restarted.

The control process here is a stand-in with the host's few needs (config, events, join):
the host and the gateway process are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import SECRET_ENV, parse_config
from bridge.control import NotFoundError
from bridge.gatewayhost import GatewayHost
from bridge.gatewaylink import LinkError
from bridge.model import Participant


class StubControl:
    def __init__(self) -> None:
        self.config = parse_config(
            {
                "media": {"room_rate": 48000},
                "gateways": {"max_restart_backoff_s": 0.2},
                "auth": {"secret": "from-the-config-file"},
            }
        )
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.joined: list[Participant] = []

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: dict[str, Any]) -> None:
        self.events.put_nowait(event)
        for callback in list(self._subscribers):
            callback(event)

    async def join(self, room: str, leg: Participant) -> tuple[Participant, dict[str, Any]]:
        if room != "r1":
            raise NotFoundError(f"unknown room: {room}")
        joined = dataclasses.replace(leg, id="p1", room="r1")
        self.joined.append(joined)
        return joined, {"rtp": {"ip": "127.0.0.1", "port": 40000}, "ssrc": 7}

    async def next_event(self, name: str) -> dict[str, Any]:
        while True:
            event = await asyncio.wait_for(self.events.get(), 10)
            if event["event"] == name:
                return event


@pytest.fixture
async def host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[GatewayHost, StubControl]]:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    control = StubControl()
    gateways = GatewayHost(control, {"probe": "gateway_probe"})  # type: ignore[arg-type]
    await gateways.start()
    await asyncio.wait_for(gateways.gateways["probe"].ready.wait(), 20)
    yield gateways, control
    await gateways.stop()


async def test_gateway_gets_the_config_and_answers(
    host: tuple[GatewayHost, StubControl],
) -> None:
    gateways, _ = host
    assert gateways.running("probe")
    reply = await gateways.request("probe", "echo", x=1)
    assert reply == {"args": {"x": 1}, "rate": 48000}
    assert gateways.health()[0]["state"] == "running"
    with pytest.raises(LinkError, match="the sip gateway is not enabled"):
        await gateways.request("sip", "dial")


async def test_a_gateway_never_sees_the_token_signing_secret(
    host: tuple[GatewayHost, StubControl],
) -> None:
    gateways, control = host
    assert control.config.auth.secret == "from-the-config-file"
    assert await gateways.request("probe", "secrets") == {"env": "", "config": ""}


async def test_gateway_joins_through_the_core(host: tuple[GatewayHost, StubControl]) -> None:
    gateways, control = host
    reply = await gateways.request("probe", "join_room", room="r1")
    assert reply["participant"]["kind"] == "sip"
    assert reply["media"]["ssrc"] == 7
    assert control.joined[0].name == "p"
    with pytest.raises(LinkError, match="unknown room: nowhere") as caught:
        await gateways.request("probe", "join_room", room="nowhere")
    assert caught.value.kind == "NotFound"


async def test_only_subscribed_events_are_forwarded(
    host: tuple[GatewayHost, StubControl],
) -> None:
    gateways, control = host

    async def subscribed() -> None:  # the probe subscribes as it starts
        while gateways.gateways["probe"].events != {"probe"}:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(subscribed(), 10)
    control.publish({"event": "other"})
    control.publish({"event": "probe", "n": 1})
    seen = await control.next_event("probe_seen")
    assert seen["of"] == {"event": "probe", "n": 1}
    assert control.events.empty()  # "other" was not echoed


async def test_a_gateway_that_lost_its_link_but_lingers_is_killed_and_restarted(
    host: tuple[GatewayHost, StubControl],
) -> None:
    gateways, control = host
    first = gateways.gateways["probe"].pid
    await gateways.request("probe", "drop_link")
    died = await control.next_event("gateway_died")
    assert died["exit"] == -signal.SIGKILL and died["pid"] == first
    restarted = await control.next_event("gateway_restarted")
    assert restarted["pid"] != first


async def test_a_dead_gateway_is_restarted(host: tuple[GatewayHost, StubControl]) -> None:
    gateways, control = host
    first = gateways.gateways["probe"].pid
    with pytest.raises(LinkError):
        await gateways.request("probe", "die", code=3)
    died = await control.next_event("gateway_died")
    assert died["exit"] == 3
    restarted = await control.next_event("gateway_restarted")
    assert restarted["restarts"] == 1 and restarted["pid"] != first
    await asyncio.wait_for(gateways.gateways["probe"].ready.wait(), 20)
    assert (await gateways.request("probe", "echo"))["rate"] == 48000
