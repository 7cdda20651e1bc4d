"""The SIP gateway's logic without pjsua2: calls (admission, PIN, DTMF floor, dial-out,
registration back-off), the front (routing by Call-ID, refusals) and the worker pool
(capacity, spare slots, a worker's exit), with fakes for the link, the pool and the
transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.config import SipAccountConfig, SipGatewayConfig
from bridge.gatewaylink import LinkError
from bridge.gateways.sip import pool as pool_module
from bridge.gateways.sip.calls import LEG_CODEC, LEG_RATE, CallManager, GatewayError
from bridge.gateways.sip.front import OUR_BRANCH, SipFront
from bridge.gateways.sip.pool import SipWorker, WorkerPool
from bridge.gateways.sip.protocol import SOURCE_HEADER
from bridge.gateways.sip.ratelimit import RateLimiter
from bridge.gateways.sip.sipmsg import SipMessage, Via

ROOMS = {
    "open": {"id": "r-open", "name": "open", "mode": "open"},
    "ptt": {"id": "r-ptt", "name": "ptt", "mode": "ptt"},
}
MEDIA = {"rtp": {"ip": "127.0.0.1", "port": 40000}, "rtcp": {"ip": "127.0.0.1", "port": 40001}}


class FakeLink:
    """The core's side of the gateway link: rooms, joins and the floor."""

    def __init__(self, floor: str = "granted") -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.floor = floor
        self.joined = 0

    async def request(self, op: str, **args: Any) -> Any:
        self.requests.append((op, args))
        if op == "room":
            for room in ROOMS.values():
                if args["room"] in (room["id"], room["name"]):
                    return room
            raise LinkError(f"unknown room: {args['room']}", "NotFound")
        if op == "join":
            self.joined += 1
            return {"participant": {"id": f"p{self.joined}"}, "media": MEDIA}
        if op == "floor_request":
            return {"result": self.floor}
        return None

    def ops(self, name: str) -> list[dict[str, Any]]:
        return [args for op, args in self.requests if op == name]


class FakePool:
    """The worker pool's face to the call manager: commands are recorded."""

    def __init__(self, workers: int = 1) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.bound: dict[str, int] = {}
        self.ready = [SipWorker(index=i, sip_port=5070 + i, rtp_port=46000) for i in range(workers)]

    def send(self, index: int, command: dict[str, Any]) -> bool:
        self.sent.append((index, command))
        return True

    def bind_call(self, index: int, call: str, sip_call_id: str = "") -> None:
        self.bound[call] = index

    def unbind_call(self, index: int, call: str) -> None:
        self.bound.pop(call, None)

    def choose(self) -> SipWorker | None:
        return self.ready[0] if self.ready else None

    def can_grow(self) -> bool:
        return False

    def free_slots(self, include_starting: bool = True) -> int:
        return 0

    def commands(self, call: str) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in c.items() if k != "call"} for _, c in self.sent if c["call"] == call
        ]


def sip_config(**extra: Any) -> SipGatewayConfig:
    return SipGatewayConfig(listen_port=5060, worker_port_base=5070, **extra)


async def settle() -> None:
    """Let the manager's tasks (link requests) run to their end."""
    for _ in range(20):
        await asyncio.sleep(0)


def incoming(manager: CallManager, room: str, call: str = "w0-1") -> None:
    manager.on_worker_event(
        0,
        {
            "event": "incoming",
            "call": call,
            "request_uri": f"sip:{room}@127.0.0.1:5060",
            "from": '"Unit 7" <sip:5551234@10.0.0.1>',
            "source": "10.0.0.1:5080",
            "sip_call_id": f"{call}@x",
            "leg_port": 41000,
        },
    )


# ----------------------------------------------------------------- calls
async def test_an_inbound_call_rings_joins_as_l16_and_is_answered() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    assert pool.commands("w0-1") == [
        {"op": "answer", "code": 180},
        {"op": "attach", "ip": "127.0.0.1", "port": 40000},
        {"op": "answer", "code": 200},
    ]
    (join,) = link.ops("join")
    participant = join["participant"]
    assert join["room"] == "r-open"
    assert (participant["codec"], participant["clock_rate"]) == (LEG_CODEC, LEG_RATE)
    assert participant["remote"] == {"ip": "127.0.0.1", "port": 41000}
    assert participant["latch"] is False and participant["name"] == "Unit 7 <5551234>"
    manager.on_worker_event(0, {"event": "state", "call": "w0-1", "state": "confirmed"})
    await settle()
    assert manager.calls["w0-1"].state == "answered"
    states = [e["event"]["state"] for e in link.ops("publish")]
    assert states[-1] == "answered"
    manager.on_worker_event(
        0, {"event": "state", "call": "w0-1", "state": "disconnected", "code": 200}
    )
    await settle()
    assert link.ops("leave") == [{"room": "r-open", "participant": "p1"}]
    assert manager.calls["w0-1"].state == "ended" and "w0-1" not in pool.bound


@pytest.mark.parametrize(
    ("room", "config", "code"),
    [
        ("nosuch", {}, 404),
        ("open", {"max_calls_per_room": 1}, 486),
        ("open", {"max_calls": 1}, 503),
    ],
    ids=["unknown-room", "room-full", "gateway-full"],
)
async def test_an_inbound_call_that_cannot_join_is_refused(
    room: str, config: dict[str, Any], code: int
) -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config(**config))  # type: ignore[arg-type]
    if config:
        incoming(manager, "open", call="w0-0")  # the one that fills the room or the gateway
        await settle()
    incoming(manager, room)
    await settle()
    assert pool.commands("w0-1")[-1]["op"] == "answer"
    assert pool.commands("w0-1")[-1]["code"] == code
    assert len(link.ops("join")) == (1 if config else 0)


@pytest.mark.parametrize(("kind", "code"), [("Unavailable", 503), ("Busy", 486), ("Error", 500)])
async def test_a_join_refused_by_the_core_is_answered_by_its_kind(kind: str, code: int) -> None:
    link, pool = FakeLink(), FakePool()

    async def refuse(op: str, **args: Any) -> Any:
        if op == "join":
            raise LinkError("worker 0 is at its tick budget", kind)
        return await FakeLink.request(link, op, **args)

    link.request = refuse  # type: ignore[method-assign]
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    assert pool.commands("w0-1")[-1]["op"] == "answer"
    assert pool.commands("w0-1")[-1]["code"] == code


async def test_three_wrong_pins_play_goodbye_and_hang_up_403() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config(pins={"open": "1234"}))  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    assert pool.commands("w0-1") == [{"op": "answer", "code": 200}]
    manager.on_worker_event(0, {"event": "media", "call": "w0-1", "codec": "PCMU/8000"})
    for _ in range(3):
        for digit in "9999":
            manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": digit})
    plays = [c["asset"] for c in pool.commands("w0-1") if c["op"] == "play"]
    assert plays == ["enter_pin", "pin_wrong", "pin_wrong", "goodbye"]
    manager.on_worker_event(0, {"event": "played", "call": "w0-1", "asset": "goodbye"})
    assert pool.commands("w0-1")[-1] == {"op": "hangup", "code": 403, "reason": "PIN Failed"}
    assert link.ops("join") == []


async def test_the_right_pin_joins_the_room() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config(pins={"open": "42"}))  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    for digit in "42":
        manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": digit})
    await settle()
    assert len(link.ops("join")) == 1
    assert manager.calls["w0-1"].state == "answered"
    assert pool.commands("w0-1")[-1] == {"op": "play", "asset": "joined"}


async def test_the_hash_after_a_wrong_pin_is_not_a_second_failure() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config(pins={"open": "42"}))  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    for digit in "99#42#":  # a wrong PIN, its "#", the right PIN, its "#"
        manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": digit})
    await settle()
    assert manager.calls["w0-1"].pin_failures == 1
    assert len(link.ops("join")) == 1


async def test_a_call_kept_after_its_end_does_not_drop_a_new_call_of_the_same_id() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    old = manager.calls["w0-1"]
    manager._end(old, 200, "Bye")
    incoming(manager, "open")  # a restarted worker numbers its calls from 1 again
    await settle()
    new = manager.calls["w0-1"]
    assert new is not old
    manager._drop(old)
    assert manager.calls["w0-1"] is new
    await manager.stop()


@pytest.mark.parametrize(
    ("floor", "tone"),
    [("granted", "floor_granted"), ("queued", "floor_queued"), ("denied", "floor_denied")],
)
async def test_dtmf_keys_request_and_release_the_floor_in_a_ptt_room(floor: str, tone: str) -> None:
    link, pool = FakeLink(floor=floor), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    incoming(manager, "ptt")
    await settle()
    manager.on_worker_event(0, {"event": "state", "call": "w0-1", "state": "confirmed"})
    manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": "*"})
    await settle()
    assert link.ops("floor_request") == [{"room": "r-ptt", "participant": "p1"}]
    assert pool.commands("w0-1")[-1] == {"op": "play", "asset": tone}
    manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": "#"})
    await settle()
    assert link.ops("floor_release") == [{"room": "r-ptt", "participant": "p1"}]
    assert pool.commands("w0-1")[-1] == {"op": "play", "asset": "floor_released"}


async def test_dtmf_keys_do_nothing_in_an_open_room() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    incoming(manager, "open")
    await settle()
    manager.on_worker_event(0, {"event": "state", "call": "w0-1", "state": "confirmed"})
    manager.on_worker_event(0, {"event": "dtmf", "call": "w0-1", "digit": "*"})
    await settle()
    assert link.ops("floor_request") == []


async def test_a_dial_out_rings_is_answered_joins_and_ends() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    call = await manager.dial("open", "sip:unit9@10.0.0.9", by="disp1")
    assert (call["state"], call["room"], call["by"]) == ("dialling", "r-open", "disp1")
    assert pool.commands(call["id"]) == [
        {"op": "dial", "uri": "sip:unit9@10.0.0.9", "account": None}
    ]
    for state in ("early", "confirmed"):
        manager.on_worker_event(0, {"event": "state", "call": call["id"], "state": state})
    await settle()
    states = [e["event"]["state"] for e in link.ops("publish")]
    assert states == ["dialling", "ringing", "answered"]
    assert pool.commands(call["id"])[-1] == {"op": "attach", "ip": "127.0.0.1", "port": 40000}
    manager.hangup("open", call["id"])
    assert pool.commands(call["id"])[-1]["op"] == "hangup"
    assert pool.commands(call["id"])[-1]["code"] == 200
    manager.on_worker_event(0, {"event": "state", "call": call["id"], "state": "disconnected"})
    await settle()
    assert link.ops("leave") == [{"room": "r-open", "participant": "p1"}]
    with pytest.raises(GatewayError, match="call already ended") as ended:
        manager.hangup("open", call["id"])
    assert ended.value.kind == "Conflict"


async def test_a_dial_outs_dialog_is_handed_to_the_front_for_the_far_ends_requests() -> None:
    link, pool = FakeLink(), FakePool()
    manager = CallManager(link, pool, sip_config())  # type: ignore[arg-type]
    sip, _, transport = front()
    manager.adopt_dialog = sip.adopt
    call = await manager.dial("open", "sip:unit9@10.0.0.9", by="disp1")
    event = {"event": "state", "call": call["id"], "state": "early", "sip_call_id": "out1@w"}
    manager.on_worker_event(0, event)
    # The far end hangs up through the front (the account's Contact): to the worker.
    sip.datagram_received(request("BYE", call_id="out1@w"), PHONE)
    assert transport.sent[-1][1] == ("127.0.0.1", 5070)
    await manager.stop()


@pytest.mark.parametrize(
    ("room", "uri", "account", "message", "kind"),
    [
        ("nosuch", "sip:a@10.0.0.1", None, "unknown room: nosuch", "NotFound"),
        ("open", "", None, "uri is required", "Invalid"),
        ("open", "sip:a@10.0.0.1", "pbx9", "unknown SIP account: pbx9", "Invalid"),
    ],
)
async def test_a_bad_dial_is_refused_with_its_kind(
    room: str, uri: str, account: str | None, message: str, kind: str
) -> None:
    manager = CallManager(FakeLink(), FakePool(), sip_config())  # type: ignore[arg-type]
    with pytest.raises(GatewayError, match=message) as refused:
        await manager.dial(room, uri, account=account)
    assert refused.value.kind == kind


async def test_a_dial_with_every_worker_busy_is_refused_busy() -> None:
    manager = CallManager(FakeLink(), FakePool(workers=0), sip_config())  # type: ignore[arg-type]
    with pytest.raises(GatewayError, match="every SIP worker is busy") as refused:
        await manager.dial("open", "sip:a@10.0.0.1")
    assert refused.value.kind == "Busy"


async def test_a_failed_registration_is_retried_with_a_doubling_back_off() -> None:
    account = SipAccountConfig(
        name="pbx", uri="sip:1000@pbx", registrar="sip:pbx", retry_min_s=5, retry_max_s=15
    )
    pool = FakePool()
    manager = CallManager(FakeLink(), pool, sip_config(accounts=[account]))  # type: ignore[arg-type]
    regs = manager.registrations
    delays = []
    for _ in range(4):
        regs.on_reg({"account": "pbx", "code": 401, "reason": "Unauthorized", "expires": 0})
        delays.append(regs.backoff("pbx"))
    assert delays == [5.0, 10.0, 15.0, 15.0]
    assert regs.state["pbx"] == {"registered": False, "code": 401, "failures": 4}
    regs.on_reg({"account": "pbx", "code": 200, "reason": "OK", "expires": 300})
    assert regs.state["pbx"] == {"registered": True, "code": 200, "failures": 0}
    assert len(regs._timers) == 1  # one pending retry at a time, never a pile
    await manager.stop()


# ----------------------------------------------------------------- front
class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[SipMessage, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((SipMessage.parse(data), addr))


class FrontPool:
    """The pool's face to the front: worker i on port 5070 + i."""

    def __init__(self, workers: int = 2, grow: bool = False) -> None:
        self.config = sip_config()
        self.workers = {
            i: SipWorker(index=i, sip_port=5070 + i, rtp_port=46000, state="ready")
            for i in range(workers)
        }
        self.grow = grow
        self.refused = 0
        self.reserved: list[str] = []

    def worker_at(self, addr: tuple[str, int]) -> SipWorker | None:
        return next((w for w in self.workers.values() if w.sip_port == addr[1]), None)

    def choose(self) -> SipWorker | None:
        free = [w for w in self.workers.values() if w.load < 4]
        return min(free, key=lambda w: w.load) if free else None

    def reserve(self, worker: SipWorker, call_id: str) -> None:
        worker.reserved[call_id] = 0.0
        self.reserved.append(call_id)

    def release_reservation(self, call_id: str) -> None:
        for worker in self.workers.values():
            worker.reserved.pop(call_id, None)

    def can_grow(self) -> bool:
        return self.grow

    def free_slots(self, include_starting: bool = True) -> int:
        return 0


PHONE = ("10.0.0.1", 5080)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def request(method: str, call_id: str = "c1@x", extra: str = "", body: bytes = b"") -> bytes:
    to_tag = ";tag=w" if method not in ("INVITE", "OPTIONS") else ""
    head = (
        f"{method} sip:open@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bK{method}1;rport\r\n"
        f"From: <sip:5551234@10.0.0.1>;tag=a\r\nTo: <sip:open@127.0.0.1>{to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def front(**kw: Any) -> tuple[SipFront, FrontPool, FakeTransport]:
    pool = FrontPool(**kw)
    limiter = RateLimiter(100.0, 100)
    sip = SipFront("127.0.0.1", 5060, pool, limiter)  # type: ignore[arg-type]
    transport = FakeTransport()
    sip.connection_made(transport)  # type: ignore[arg-type]
    return sip, pool, transport


def test_options_outside_a_dialog_is_answered_by_the_front() -> None:
    sip, _, transport = front()
    sip.datagram_received(request("OPTIONS"), PHONE)
    ((answer, addr),) = transport.sent
    assert (answer.status, addr) == (200, PHONE)
    assert "INVITE" in (answer.header("allow") or "")


def test_an_invite_goes_to_the_least_loaded_worker_and_its_dialog_follows() -> None:
    sip, pool, transport = front()
    pool.workers[0].calls.add("busy")
    spoofed = f"{SOURCE_HEADER}: 6.6.6.6:1\r\n"
    sip.datagram_received(request("INVITE", extra=spoofed, body=SDP), PHONE)
    ((invite, addr),) = transport.sent
    assert addr == ("127.0.0.1", 5071)  # worker 1 carries nothing
    assert invite.values("record-route")[0] == "<sip:127.0.0.1:5060;lr>"
    assert invite.values(SOURCE_HEADER.lower()) == ["10.0.0.1:5080"]
    top = Via.parse(invite.values("via")[0])
    assert top.branch.startswith(OUR_BRANCH) and (top.host, top.port) == ("127.0.0.1", 5060)
    assert Via.parse(invite.values("via")[1]).params["rport"] == "5080"
    assert invite.header("max-forwards") == "69"
    assert pool.reserved == ["c1@x"]
    # The worker's answer goes back to the phone with the front's Via removed.
    answer = bytes(invite).decode().split("\r\n")
    response = [
        "SIP/2.0 200 OK",
        *[h for h in answer[1:] if h.lower().startswith(("via", "from", "to", "call-id", "cseq"))],
    ]
    sip.datagram_received(
        ("\r\n".join(response) + "\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", 5071)
    )
    back, to = transport.sent[1]
    assert (back.status, to) == (200, PHONE) and len(back.values("via")) == 1
    sip.datagram_received(request("BYE"), PHONE)
    assert transport.sent[2][1] == ("127.0.0.1", 5071)


def test_requests_outside_any_dialog_are_answered_481() -> None:
    sip, _, transport = front()
    sip.datagram_received(request("BYE", call_id="nosuch"), PHONE)
    ((answer, _),) = transport.sent
    assert answer.status == 481 and sip.counters["no_dialog"] == 1


def test_an_invite_is_refused_503_when_every_slot_is_taken_and_none_can_start() -> None:
    sip, pool, transport = front(workers=1)
    pool.workers[0].calls.update({"a", "b", "c", "d"})
    sip.datagram_received(request("INVITE", body=SDP), PHONE)
    ((answer, _),) = transport.sent
    assert (answer.status, answer.header("retry-after")) == (503, "5")
    assert sip.counters["at_capacity"] == 1 and pool.refused == 1


def test_an_invite_is_held_unanswered_while_a_worker_starts() -> None:
    sip, pool, transport = front(workers=1, grow=True)
    pool.workers[0].calls.update({"a", "b", "c", "d"})
    sip.datagram_received(request("INVITE", body=SDP), PHONE)
    assert transport.sent == [] and sip.counters["held_for_worker"] == 1


def test_a_held_invites_retransmissions_are_charged_once_to_the_rate_limit() -> None:
    sip, pool, transport = front(workers=1, grow=True)
    sip.limiter = RateLimiter(0.001, 1)
    pool.workers[0].calls.update({"a", "b", "c", "d"})
    for _ in range(3):  # the INVITE and two retransmissions, while a worker starts
        sip.datagram_received(request("INVITE", body=SDP), PHONE)
    assert transport.sent == [] and sip.counters["held_for_worker"] == 3
    pool.workers[0].calls.clear()  # the worker is up
    sip.datagram_received(request("INVITE", body=SDP), PHONE)
    assert [addr for _, addr in transport.sent] == [("127.0.0.1", 5070)]
    assert sip.counters["rate_limited"] == 0 and sip.held == {}


def test_an_invite_with_a_bad_offer_is_answered_488_with_a_warning() -> None:
    sip, _, transport = front()
    sip.datagram_received(request("INVITE", body=b"v=0\r\nnot sdp\r\n"), PHONE)
    ((answer, _),) = transport.sent
    assert answer.status == 488 and (answer.header("warning") or "").startswith("399 ucbridge")


def test_an_invite_flood_is_refused_503_rate_limited() -> None:
    sip, _, transport = front()
    sip.limiter = RateLimiter(1.0, 2)
    for n in range(4):
        sip.datagram_received(request("INVITE", call_id=f"f{n}", body=SDP), PHONE)
    statuses = [m.status for m, _ in transport.sent if not m.is_request]
    assert statuses == [503, 503] and sip.counters["rate_limited"] == 2


def test_max_forwards_zero_is_answered_483_and_garbage_is_counted() -> None:
    sip, _, transport = front()
    sip.datagram_received(
        request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), PHONE
    )
    sip.datagram_received(b"\x00\x01 not sip", PHONE)
    ((answer, _),) = transport.sent
    assert answer.status == 483 and sip.counters["malformed"] == 1


def worker_answer(invite: SipMessage, status: int, reason: str) -> bytes:
    """A worker's response to a request the front forwarded to it."""
    lines = bytes(invite).decode().split("\r\n")
    kept = [h for h in lines[1:] if h.lower().startswith(("via", "from", "to", "call-id", "cseq"))]
    head = "\r\n".join([f"SIP/2.0 {status} {reason}", *kept])
    return (head + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_failed_reinvite_keeps_the_dialog_and_a_failed_invite_ends_it() -> None:
    sip, _, transport = front()
    sip.datagram_received(request("INVITE", body=SDP), PHONE)
    invite, worker = transport.sent[-1]
    sip.datagram_received(worker_answer(invite, 200, "OK"), worker)
    # A re-INVITE (in the dialog: it has a To tag) refused 491 by the worker.
    reinvite = request("INVITE", body=SDP).replace(
        b"To: <sip:open@127.0.0.1>", b"To: <sip:open@127.0.0.1>;tag=w"
    )
    sip.datagram_received(reinvite, PHONE)
    sip.datagram_received(worker_answer(transport.sent[-1][0], 491, "Request Pending"), worker)
    assert sip.dialogs["c1@x"].until == 0.0, "the call goes on"
    # Another call whose initial INVITE fails: its route lingers, then goes.
    sip.datagram_received(request("INVITE", call_id="c2@x", body=SDP), PHONE)
    invite2, worker2 = transport.sent[-1]
    sip.datagram_received(worker_answer(invite2, 488, "Not Acceptable Here"), worker2)
    assert sip.dialogs["c2@x"].until > 0.0
    # A new initial INVITE on that Call-ID (RFC 3261 §8.1.3.5) makes the route live again.
    sip.datagram_received(request("INVITE", call_id="c2@x", body=SDP), PHONE)
    assert transport.sent[-1][1] == worker2 and sip.dialogs["c2@x"].until == 0.0


def test_no_via_is_counted_and_a_response_to_a_name_is_not_looked_up() -> None:
    sip, _, transport = front()
    no_via = b"\r\n".join(
        line for line in request("OPTIONS").split(b"\r\n") if not line.startswith(b"Via")
    )
    sip.datagram_received(no_via, PHONE)
    forged = (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={OUR_BRANCH}x\r\n"
        "Via: SIP/2.0/UDP victim.example.org:5060;branch=z9hG4bKv\r\n"
        "From: <sip:a@x>;tag=a\r\nTo: <sip:b@x>;tag=b\r\nCall-ID: f@x\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sip.datagram_received(forged, PHONE)
    assert transport.sent == [] and not sip.resolving
    assert sip.counters["malformed"] == 1 and sip.counters["unroutable_response"] == 1


# ------------------------------------------------------------------ pool
def started_pool(monkeypatch: pytest.MonkeyPatch, **config: Any) -> WorkerPool:
    events: list[tuple[int, dict[str, Any]]] = []
    pool = WorkerPool(sip_config(**config), lambda i, e: events.append((i, e)))
    pool.events = events  # type: ignore[attr-defined]

    def spawn() -> SipWorker:  # a worker that is ready at once, no process
        index = pool._free_index()
        worker = SipWorker(index=index, sip_port=5070 + index, rtp_port=46000, state="ready")
        pool.workers[index] = worker
        pool.started += 1
        return worker

    monkeypatch.setattr(pool, "_spawn", spawn)
    return pool


def test_the_pool_keeps_spare_slots_started_up_to_max_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = started_pool(monkeypatch, spare_calls=4, min_workers=1, max_workers=3)
    pool.ensure_spare()
    assert len(pool.workers) == 1 and pool.free_slots() == 4
    first = pool.choose()
    assert first is not None
    for n in range(4):
        pool.reserve(first, f"c{n}")
    assert len(pool.workers) == 2  # full: one more worker started for the spare slots
    second = pool.choose()
    assert second is not None and second.index == 1
    for n in range(4, 12):
        worker = pool.choose()
        if worker is not None:
            pool.reserve(worker, f"c{n}")
    assert len(pool.workers) == 3 and pool.choose() is None and not pool.can_grow()


def test_reservations_expire_and_bound_calls_count(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = started_pool(monkeypatch, spare_calls=0, min_workers=1)
    pool.ensure_spare()
    worker = pool.workers[0]
    pool.reserve(worker, "sip-1")
    pool.bind_call(0, "w0-1", "sip-1")
    assert (worker.calls, worker.reserved) == ({"w0-1"}, {})
    pool.reserve(worker, "sip-2")
    monkeypatch.setattr(pool_module.time, "monotonic", lambda: 1e12)
    pool.expire_reservations()
    assert worker.load == 1
    assert pool.worker_at(("127.0.0.1", 5070)) is worker
    assert pool.worker_at(("10.0.0.1", 5070)) is None


async def test_a_worker_that_exits_ends_its_calls_and_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = started_pool(monkeypatch, spare_calls=4, min_workers=1)
    pool.ensure_spare()
    pool.bind_call(0, "w0-1")
    pool._gone(pool.workers[0])
    events = pool.events  # type: ignore[attr-defined]
    assert events[0] == (
        0,
        {
            "event": "state",
            "call": "w0-1",
            "state": "disconnected",
            "code": 500,
            "reason": "SIP worker exited",
        },
    )
    assert events[1] == (0, {"event": "worker_exited", "index": 0})
    assert pool.free_slots() == 4 and pool.started == 2


def test_a_command_is_followed_by_a_datagram_that_ends_the_workers_sip_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import socket

    pool = started_pool(monkeypatch, spare_calls=0, min_workers=1)
    pool.ensure_spare()
    sip_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip_port.bind(("127.0.0.1", 0))
    sip_port.settimeout(5)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = pool.workers[0]
    worker.sock, worker.sip_port = ours, sip_port.getsockname()[1]
    try:
        assert pool.send(0, {"op": "hangup", "call": "w0-1"})
        assert json.loads(theirs.recv(1024)) == {"op": "hangup", "call": "w0-1"}
        assert sip_port.recv(64) == pool_module.WAKE == b"\r\n\r\n"
        assert not pool.send(7, {"op": "stop"})  # no such worker
    finally:
        for s in (sip_port, ours, theirs):
            s.close()
        if pool._waker is not None:
            pool._waker.close()
