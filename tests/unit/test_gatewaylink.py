"""The gateway link: framing, requests both ways, refusals by kind, events, close."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge import gatewaylink
from bridge.gatewaylink import MAX_FRAME_BYTES, GatewayLink, LinkError, encode


@pytest.fixture
async def pair() -> AsyncIterator[tuple[GatewayLink, GatewayLink]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = await GatewayLink.from_socket(a, "left")
    right = await GatewayLink.from_socket(b, "right")
    yield left, right
    left.close()
    right.close()


async def test_request_and_reply_both_ways(pair: tuple[GatewayLink, GatewayLink]) -> None:
    left, right = pair

    async def add(a: int, b: int) -> int:
        return a + b

    async def greet(name: str) -> dict[str, str]:
        return {"hello": name}

    right.serve("add", add)
    left.serve("greet", greet)
    assert await left.request("add", a=2, b=3) == 5
    assert await right.request("greet", name="x") == {"hello": "x"}


async def test_requests_are_served_concurrently(pair: tuple[GatewayLink, GatewayLink]) -> None:
    left, right = pair
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "slow"

    async def fast() -> str:
        release.set()
        return "fast"

    right.serve("slow", slow)
    right.serve("fast", fast)
    slow_task = asyncio.ensure_future(left.request("slow"))
    assert await left.request("fast") == "fast"
    assert await slow_task == "slow"


async def test_refusals_keep_their_kind(
    pair: tuple[GatewayLink, GatewayLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    left, right = pair
    monkeypatch.setattr(gatewaylink, "UNKNOWN_OP_GRACE_S", 0.05)

    async def missing() -> None:
        raise LinkError("unknown room: nowhere", "NotFound")

    async def invalid(x: int) -> None:
        raise ValueError(f"x out of range: {x}")

    async def broken() -> None:
        raise RuntimeError("secret detail")

    right.serve("missing", missing)
    right.serve("invalid", invalid)
    right.serve("broken", broken)
    with pytest.raises(LinkError, match="unknown room: nowhere") as caught:
        await left.request("missing")
    assert caught.value.kind == "NotFound"
    with pytest.raises(LinkError, match="x out of range: 7") as caught:
        await left.request("invalid", x=7)
    assert caught.value.kind == "Invalid"
    with pytest.raises(LinkError, match="unknown gateway link op: nope") as caught:
        await left.request("nope")
    assert caught.value.kind == "Invalid"
    with pytest.raises(LinkError, match=r"^broken failed: RuntimeError$") as caught:
        await left.request("broken")
    assert caught.value.kind == "Error"
    with pytest.raises(LinkError) as caught:
        await left.request("invalid", y=1)  # a bad argument name is the caller's fault
    assert caught.value.kind == "Invalid"


async def test_an_op_registered_late_is_still_served(
    pair: tuple[GatewayLink, GatewayLink],
) -> None:
    left, right = pair

    async def late() -> str:
        return "late"

    pending = asyncio.ensure_future(left.request("late"))
    await asyncio.sleep(0.05)  # the request is waiting at the other end
    assert not pending.done()
    right.serve("late", late)
    assert await asyncio.wait_for(pending, 2) == "late"


async def test_events_flow_without_replies(pair: tuple[GatewayLink, GatewayLink]) -> None:
    left, right = pair
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    right.on_event(got.put_nowait)
    left.notify({"event": "floor_granted", "room": "r1"})
    left.notify({"event": "floor_idle", "room": "r1"})
    assert (await asyncio.wait_for(got.get(), 2))["event"] == "floor_granted"
    assert (await asyncio.wait_for(got.get(), 2))["event"] == "floor_idle"


async def test_close_fails_pending_requests(pair: tuple[GatewayLink, GatewayLink]) -> None:
    left, right = pair
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()

    right.serve("hang", hang)
    pending = asyncio.ensure_future(left.request("hang"))
    await asyncio.sleep(0)
    right.close()
    with pytest.raises(LinkError) as caught:
        await asyncio.wait_for(pending, 2)
    assert caught.value.kind == "Unavailable"
    await asyncio.wait_for(left.wait_closed(), 2)
    with pytest.raises(LinkError, match="is closed"):
        await left.request("hang")


async def test_oversized_frame_closes_the_link() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = await GatewayLink.from_socket(a, "victim")
    b.sendall(struct.pack("!I", MAX_FRAME_BYTES + 1))
    await asyncio.wait_for(link.wait_closed(), 2)
    assert link.closed
    b.close()


def test_encode_refuses_oversized_messages() -> None:
    with pytest.raises(ValueError, match="gateway link frame is too large"):
        encode({"blob": "x" * (MAX_FRAME_BYTES + 1)})
    frame = encode({"event": {"a": 1}})
    assert struct.unpack("!I", frame[:4])[0] == len(frame) - 4
