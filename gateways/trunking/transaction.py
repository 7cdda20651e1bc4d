"""Retransmission on the floor participant's side: T101/C101 and T100/C100 (3GPP TS 24.380).

A floor participant that sends a Floor Request starts T101 (Floor Request) with counter C101
(TS 24.380 §6.2.4, the floor participant's state machine). Each expiry of T101 sends the
request again and counts it, until the counter reaches its upper limit: then the participant
gives up, and the user is told that the floor could not be reached. T101 stops on Floor
Granted, Floor Taken, Floor Deny or Floor Queue Position Info (table 11.1.1-1). Floor Release
works the same way with T100 and C100, stopped by Floor Idle or by media of the next talker
(table 11.1.1-1); this module also stops it on Floor Taken, which tells the releasing
participant as surely that the floor has moved on.

The counters start at 1 with the first transmission (clause 11.2), so an upper limit of 3 sends
a message at most three times. Both timers default to 40 ms (TS 24.483 leaves the value to the
configuration; DESIGN.md takes 40 ms).

The shape is aioice's ``Transaction`` (``stun.py``): one :class:`asyncio.Future` resolved by
the first answer that stops the timer, plus one ``loop.call_later`` handle for the timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .mcpt import FloorMessage, FloorMessageType

__all__ = [
    "DEFAULT_C100",
    "DEFAULT_C101",
    "DEFAULT_T100",
    "DEFAULT_T101",
    "T100_STOPPED_BY",
    "T101_STOPPED_BY",
    "Transaction",
    "TransactionTimeoutError",
    "floor_release_transaction",
    "floor_request_transaction",
]

#: T101 (Floor Request) and T100 (Floor Release), seconds.
DEFAULT_T101 = 0.040
DEFAULT_T100 = 0.040
#: Upper limits of C101 and C100: transmissions in all, the first one included.
DEFAULT_C101 = 3
DEFAULT_C100 = 3

#: TS 24.380 table 11.1.1-1: the messages that stop T101.
T101_STOPPED_BY = frozenset(
    {
        FloorMessageType.GRANTED,
        FloorMessageType.TAKEN,
        FloorMessageType.DENY,
        FloorMessageType.QUEUE_POSITION_INFO,
    }
)
#: The messages that stop T100: Floor Idle (table 11.1.1-1) and Floor Taken (see above).
T100_STOPPED_BY = frozenset({FloorMessageType.IDLE, FloorMessageType.TAKEN})


class TransactionTimeoutError(Exception):
    """The counter reached its upper limit without an answer."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"no answer after {sent} transmissions")
        self.sent = sent


class Transaction:
    """One message sent and resent until an answer of ``stopped_by`` arrives.

    ``send`` puts the encoded message on the wire; it is called once at :meth:`run` and once
    per expiry of the timer while the counter is below ``limit``. :meth:`run` returns the
    answer (or ``None`` when :meth:`stop` ended it without one, as media does for T100) and
    raises :class:`TransactionTimeoutError` when the timer expires with the counter at its limit.
    """

    def __init__(
        self,
        message: bytes,
        send: Callable[[bytes], None],
        *,
        stopped_by: frozenset[FloorMessageType],
        interval: float,
        limit: int,
    ) -> None:
        if interval <= 0:
            raise ValueError("transaction timer must be a positive duration")
        if limit < 1:
            raise ValueError("transaction counter limit must be at least 1")
        self.message = message
        self.stopped_by = stopped_by
        self.interval = interval
        self.limit = limit
        #: Transmissions so far: the counter C101 or C100.
        self.sent = 0
        self._send = send
        self._future: asyncio.Future[FloorMessage | None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        return self._future is not None and self._future.done()

    async def run(self) -> FloorMessage | None:
        """Send, resend on every expiry, and return the answer that stopped the timer."""
        if self._future is not None:
            raise RuntimeError("transaction is already running")
        self._future = asyncio.get_running_loop().create_future()
        try:
            self._transmit()
            return await self._future
        finally:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def response_received(self, message: FloorMessage) -> bool:
        """Offer an incoming message; True when it stopped the timer (and ends :meth:`run`)."""
        future = self._future
        if future is None or future.done() or message.message_type not in self.stopped_by:
            return False
        future.set_result(message)
        return True

    def stop(self) -> None:
        """Stop the timer without an answer (T100: the next talker's media arrived)."""
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def cancel(self) -> None:
        """Abandon the transaction; :meth:`run` raises :class:`asyncio.CancelledError`."""
        if self._future is not None and not self._future.done():
            self._future.cancel()

    def _transmit(self) -> None:
        assert self._future is not None
        if self._future.done():
            return
        if self.sent >= self.limit:
            self._future.set_exception(TransactionTimeoutError(self.sent))
            return
        self.sent += 1
        self._send(self.message)
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._transmit)


def floor_request_transaction(
    message: bytes,
    send: Callable[[bytes], None],
    *,
    t101: float = DEFAULT_T101,
    c101: int = DEFAULT_C101,
) -> Transaction:
    """A Floor Request under T101/C101 (TS 24.380 §6.2.4, table 11.1.1-1)."""
    return Transaction(message, send, stopped_by=T101_STOPPED_BY, interval=t101, limit=c101)


def floor_release_transaction(
    message: bytes,
    send: Callable[[bytes], None],
    *,
    t100: float = DEFAULT_T100,
    c100: int = DEFAULT_C100,
) -> Transaction:
    """A Floor Release under T100/C100 (TS 24.380 §6.2.4, table 11.1.1-1)."""
    return Transaction(message, send, stopped_by=T100_STOPPED_BY, interval=t100, limit=c100)
