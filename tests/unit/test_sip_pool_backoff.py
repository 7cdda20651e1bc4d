"""The SIP worker pool's restart back-off: a worker that fails to start (a registrar URI
without ``sip:``, a busy port) or dies is restarted after a delay of its own index's that
doubles up to a ceiling and resets once a worker stays up, and while no worker can start
an INVITE is refused 503 (RFC 3261 §21.5.4) rather than held for one that never comes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from bridge.config import SipGatewayConfig
from bridge.gateways.sip import pool as pool_module
from bridge.gateways.sip.front import SipFront
from bridge.gateways.sip.pool import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    BACKOFF_RESET_S,
    SipWorker,
    WorkerPool,
)
from bridge.gateways.sip.ratelimit import RateLimiter
from bridge.gateways.sip.sipmsg import SipMessage

#: What pjsua says when account.create() gets a registrar URI without a scheme.
BAD_URI = "start failed: Account.create() error: Invalid URI (PJSIP_EINVALIDURI)"
PHONE = ("10.0.0.1", 5080)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


class Clock:
    """The pool's ``time`` module: a monotonic clock moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[SipMessage, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((SipMessage.parse(data), addr))


def failing_pool(
    monkeypatch: pytest.MonkeyPatch, **config: Any
) -> tuple[WorkerPool, Clock, list[SipWorker]]:
    """A pool whose workers (no processes) stay ``starting`` until the test says."""
    clock = Clock()
    monkeypatch.setattr(pool_module, "time", clock)
    settings = {"spare_calls": 0, "min_workers": 1, "max_workers": 1, **config}
    sip = SipGatewayConfig(listen_port=5060, worker_port_base=5070, **settings)
    pool = WorkerPool(sip, lambda i, e: None)
    spawned: list[SipWorker] = []

    def spawn() -> SipWorker:
        index = pool._free_index()
        assert index >= 0
        worker = SipWorker(index=index, sip_port=5070 + index, rtp_port=46000)
        pool.workers[index] = worker
        pool.started += 1
        spawned.append(worker)
        return worker

    monkeypatch.setattr(pool, "_spawn", spawn)
    return pool, clock, spawned


def fail(pool: WorkerPool, worker: SipWorker, reason: str = BAD_URI) -> float:
    """The worker says its start failed and exits; the delay its index got."""
    worker.failure = reason
    pool._gone(worker)
    return pool.backoff[worker.index].delay


def invite(call_id: str) -> bytes:
    head = (
        "INVITE sip:open@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKinv1;rport\r\n"
        "From: <sip:5551234@10.0.0.1>;tag=a\r\nTo: <sip:open@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
    )
    return (head + f"Content-Length: {len(SDP)}\r\n\r\n").encode() + SDP


async def test_a_worker_that_keeps_failing_is_restarted_with_a_doubling_back_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pool, clock, spawned = failing_pool(monkeypatch)
    caplog.set_level(logging.ERROR, logger="bridge.gateways.sip.pool")
    pool.ensure_spare()
    assert len(spawned) == 1
    delays = []
    for _ in range(9):
        delays.append(fail(pool, spawned[-1]))
        started = len(spawned)
        # No tight loop: nothing starts again before the index's back-off is over ...
        pool.ensure_spare()
        clock.now += delays[-1] - 0.01
        pool.ensure_spare()
        assert len(spawned) == started and not pool.workers
        assert pool._retry is not None  # ... when a timer starts it again
        clock.now += 0.01
        pool._retry_due()
        assert len(spawned) == started + 1
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert delays[0] == BACKOFF_FIRST_S and delays[-1] == BACKOFF_MAX_S
    failures = [r.getMessage() for r in caplog.records]
    assert len(failures) == 9  # once per failure, with the reason
    assert all("PJSIP_EINVALIDURI" in line for line in failures)
    assert "retried in 0.5 s" in failures[0] and "retried in 30 s" in failures[-1]
    await pool.stop()
    assert pool._retry is None


async def test_worker_0_comes_back_after_its_back_off_to_register_the_accounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, clock, spawned = failing_pool(monkeypatch, max_workers=4)
    pool.accounts = [{"name": "pbx", "register": True}]
    pool.ensure_spare()
    assert [w.index for w in spawned] == [0]
    delay = fail(pool, spawned[0], "start failed: Address already in use")
    pool.ensure_spare()
    assert [w.index for w in spawned] == [0, 1]  # min_workers, while 0 backs off
    spawned[1].state = "ready"
    clock.now += delay
    pool._retry_due()
    # Worker 1 has the spare slots covered, but only worker 0 registers the accounts.
    assert [w.index for w in spawned] == [0, 1, 0]
    await pool.stop()


async def test_the_back_off_resets_once_a_worker_has_stayed_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, clock, spawned = failing_pool(monkeypatch)
    pool.ensure_spare()
    for _ in range(4):
        fail(pool, spawned[-1])
        clock.now = pool.backoff[0].until
        pool._retry_due()
    assert pool.backoff[0].delay == 4.0 and pool.backoff[0].failures == 4
    worker = spawned[-1]
    worker.state, worker.ready_at = "ready", clock.now  # it came up ...
    clock.now += BACKOFF_RESET_S / 2
    assert fail(pool, worker, "") == 8.0  # ... but not for long: it counts on
    assert "exit" in pool.backoff[0].reason or "closed" in pool.backoff[0].reason
    clock.now = pool.backoff[0].until
    pool._retry_due()
    worker = spawned[-1]
    worker.state, worker.ready_at = "ready", clock.now
    clock.now += BACKOFF_RESET_S
    pool.ensure_spare()
    assert 0 not in pool.backoff  # up long enough: forgotten
    assert fail(pool, worker, "") == BACKOFF_FIRST_S
    await pool.stop()


async def test_a_start_failure_is_read_from_the_worker_and_not_passed_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[dict[str, Any]] = []
    pool, _, spawned = failing_pool(monkeypatch)
    pool.on_event = lambda i, e: events.append(e)
    caplog.set_level(logging.ERROR, logger="bridge.gateways.sip.pool")
    pool.ensure_spare()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    spawned[0].sock = ours
    theirs.send(json.dumps({"event": "error", "call": None, "message": BAD_URI}).encode())
    theirs.close()
    pool._readable(spawned[0])
    assert events == [{"event": "worker_exited", "index": 0}]
    ((line,),) = [[r.getMessage() for r in caplog.records]]
    assert "failed to start" in line and "PJSIP_EINVALIDURI" in line
    await pool.stop()


async def test_an_invite_is_refused_503_while_no_worker_can_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, clock, spawned = failing_pool(monkeypatch, max_workers=2, spare_calls=1)
    sip = SipFront("127.0.0.1", 5060, pool, RateLimiter(100.0, 100))
    transport = FakeTransport()
    sip.connection_made(transport)  # type: ignore[arg-type]
    pool.ensure_spare()
    # A worker is starting: the INVITE is held (its retransmission will find it) ...
    sip.datagram_received(invite("c1@x"), PHONE)
    assert transport.sent == [] and "c1@x" in sip.held
    fail(pool, spawned[0])  # ... it fails, the other index is tried at once ...
    assert [w.index for w in spawned] == [0, 1] and pool.can_grow() is False
    sip.datagram_received(invite("c1@x"), PHONE)
    assert transport.sent == []  # ... still held: that one may come up ...
    fail(pool, spawned[1])  # ... it fails too: no worker can start now
    assert pool.can_grow() is False and pool.free_slots() == 0
    sip.datagram_received(invite("c1@x"), PHONE)
    ((answer, addr),) = transport.sent
    assert (answer.status, addr) == (503, PHONE)
    assert answer.header("retry-after")
    # A retried worker is no promised capacity: the next INVITE is refused too.
    clock.now = pool.backoff[0].until
    pool._retry_due()
    assert spawned[-1].state == "starting" and pool.free_slots() == 0
    sip.datagram_received(invite("c2@x"), PHONE)
    assert [m.status for m, _ in transport.sent] == [503, 503]
    # Once it is up, calls go to it again.
    spawned[-1].state = "ready"
    sip.datagram_received(invite("c3@x"), PHONE)
    assert transport.sent[-1][1] == ("127.0.0.1", spawned[-1].sip_port)
    await pool.stop()
    await asyncio.sleep(0)
