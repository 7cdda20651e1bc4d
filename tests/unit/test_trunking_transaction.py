"""T101/C101 and T100/C100 retransmission (TS 24.380 §6.2.4, table 11.1.1-1)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.gateways.trunking import mcpt
from bridge.gateways.trunking.transaction import (
    DEFAULT_C101,
    DEFAULT_T101,
    T100_STOPPED_BY,
    T101_STOPPED_BY,
    Transaction,
    TransactionTimeoutError,
    floor_release_transaction,
    floor_request_transaction,
)

REQUEST = bytes(mcpt.FloorRequest(ssrc=1))
#: Long enough that no retransmission happens while a test answers the first send.
PATIENT_S = 5.0

GRANTED = mcpt.FloorGranted(ssrc=9, duration=30)
TAKEN = mcpt.FloorTaken(ssrc=9, message_sequence_number=1)
DENY = mcpt.FloorDeny(ssrc=9, reject_cause=mcpt.RejectCause(1))
QUEUED = mcpt.FloorQueuePositionInfo(ssrc=9, queue_info=mcpt.QueueInfo(1, 0))
IDLE = mcpt.FloorIdle(ssrc=9, message_sequence_number=2)
REVOKE = mcpt.FloorRevoke(ssrc=9, reject_cause=mcpt.RejectCause(4))


class Wire:
    """Records what a transaction sends and wakes whoever waits for the n-th send."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self._changed = asyncio.Event()

    def send(self, data: bytes) -> None:
        self.sent.append((time.monotonic(), data))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.sent) < count:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), PATIENT_S)


def test_defaults_are_the_designs() -> None:
    assert (DEFAULT_T101, DEFAULT_C101) == (0.040, 3)
    assert {
        mcpt.FloorMessageType.GRANTED,
        mcpt.FloorMessageType.TAKEN,
        mcpt.FloorMessageType.DENY,
        mcpt.FloorMessageType.QUEUE_POSITION_INFO,
    } == T101_STOPPED_BY
    assert {mcpt.FloorMessageType.IDLE, mcpt.FloorMessageType.TAKEN} == T100_STOPPED_BY


async def test_t101_resends_until_c101_reaches_its_limit() -> None:
    wire = Wire()
    transaction = floor_request_transaction(REQUEST, wire.send, t101=0.02, c101=3)
    started = time.monotonic()
    with pytest.raises(TransactionTimeoutError, match=r"^no answer after 3 transmissions$") as err:
        await transaction.run()
    assert err.value.sent == transaction.sent == 3
    assert [data for _, data in wire.sent] == [REQUEST] * 3
    gaps = [b[0] - a[0] for a, b in zip(wire.sent, wire.sent[1:], strict=False)]
    assert all(gap >= 0.015 for gap in gaps), gaps
    assert time.monotonic() - started >= 0.055, "the last T101 runs out before giving up"


@pytest.mark.parametrize("answer", [GRANTED, TAKEN, DENY, QUEUED], ids=lambda m: m.name)
async def test_each_answer_of_table_11_1_1_1_stops_t101(answer: mcpt.FloorMessage) -> None:
    wire = Wire()
    transaction = floor_request_transaction(REQUEST, wire.send, t101=PATIENT_S)
    task = asyncio.create_task(transaction.run())
    await wire.wait_for(1)
    assert not transaction.response_received(IDLE)
    assert not transaction.response_received(REVOKE)
    assert transaction.response_received(answer)
    assert await task is answer
    assert transaction.done and transaction.sent == 1
    assert transaction._handle is None, "the timer is cancelled"
    assert not transaction.response_received(answer), "one answer only"


async def test_a_late_answer_after_retransmissions_is_still_the_answer() -> None:
    wire = Wire()
    transaction = floor_request_transaction(REQUEST, wire.send, t101=0.01, c101=10)
    task = asyncio.create_task(transaction.run())
    await wire.wait_for(3)
    transaction.response_received(GRANTED)
    assert await task is GRANTED
    assert 3 <= transaction.sent < 10


async def test_t100_stops_on_idle_taken_or_media() -> None:
    for answer in (IDLE, TAKEN):
        wire = Wire()
        release = floor_release_transaction(b"release", wire.send, t100=PATIENT_S)
        task = asyncio.create_task(release.run())
        await wire.wait_for(1)
        assert not release.response_received(GRANTED)
        assert release.response_received(answer)
        assert await task is answer
    wire = Wire()
    release = floor_release_transaction(b"release", wire.send, t100=PATIENT_S)
    task = asyncio.create_task(release.run())
    await wire.wait_for(1)
    release.stop()  # the next talker's media arrived
    assert await task is None


async def test_cancel_and_misuse() -> None:
    wire = Wire()
    transaction = floor_request_transaction(REQUEST, wire.send, t101=PATIENT_S)
    task = asyncio.create_task(transaction.run())
    await wire.wait_for(1)
    with pytest.raises(RuntimeError, match=r"^transaction is already running$"):
        await transaction.run()
    transaction.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not transaction.response_received(GRANTED)
    with pytest.raises(ValueError, match=r"^transaction timer must be a positive duration$"):
        Transaction(REQUEST, wire.send, stopped_by=T101_STOPPED_BY, interval=0, limit=3)
    with pytest.raises(ValueError, match=r"^transaction counter limit must be at least 1$"):
        Transaction(REQUEST, wire.send, stopped_by=T101_STOPPED_BY, interval=1, limit=0)
