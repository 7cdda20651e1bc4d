"""Receiving RFC 4733 DTMF digits, each exactly once.

Telephone events travel on the audio stream's SSRC and sequence numbers (RFC 4733 §2.1), every
packet of one event carries the event's start as its RTP timestamp (§2.3), and the final packet
is sent three times (§2.5.1.4).  So one key press arrives as many packets; counting each would
turn one ``*`` into several floor requests.  :class:`DtmfReceiver` reports a digit once per
event timestamp.
"""

from __future__ import annotations

from bridge.rtp import TelephoneEvent

# RFC 4733 §3.2: event codes 0-15 are the DTMF digits, in this order.
DTMF_EVENTS = "0123456789*#ABCD"

TIMESTAMP_MODULUS = 1 << 32
TIMESTAMP_HALF_RANGE = 1 << 31


def event_digit(event: int) -> str | None:
    """The DTMF digit of an event code, or ``None`` for other events (flash, tones)."""
    return DTMF_EVENTS[event] if 0 <= event < len(DTMF_EVENTS) else None


def _is_newer(timestamp: int, than: int) -> bool:
    """RTP timestamp order modulo 2**32 (RFC 3550 §5.1, serial-number arithmetic)."""
    return 0 < (timestamp - than) % TIMESTAMP_MODULUS < TIMESTAMP_HALF_RANGE


class DtmfReceiver:
    """Turns the telephone-event packets of one stream into digits, each reported once.

    Feed it the RTP timestamp and payload of every telephone-event packet of one SSRC, in
    arrival order.  Rules:

    - An event is identified by its RTP timestamp.  Its digit is reported on its first packet
      with the E bit; the retransmitted end packets and any late packet of it report nothing.
    - When every end packet is lost, the digit is reported when the next event (a newer
      timestamp) arrives, or when the owner calls :meth:`flush`, e.g. on a timer or when the
      stream ends.  That first packet of the next event reports the previous digit, and the
      next event's own digit then follows on its next end packet.
    - A packet older than the current event (serial-number order) is a straggler of an event
      already settled and reports nothing, so reordering never repeats a digit.
    - A long event is sent as segments with new timestamps, every segment but the last without
      the E bit and with its duration at the maximum (RFC 4733 §2.5.1.3).  A new timestamp
      with the same event code after such a segment continues the press: one digit in all.
    - Events that are not DTMF digits (codes 16 and up) follow the same rules but report
      ``None``.

    A malformed payload raises ``ValueError`` (from :meth:`TelephoneEvent.parse`) and leaves
    the state unchanged.
    """

    def __init__(self) -> None:
        self._timestamp: int | None = None
        self._event = 0
        self._duration = 0
        self._reported = True

    @property
    def pending(self) -> str | None:
        """The digit of the current event if it has not been reported yet."""
        return None if self._reported else event_digit(self._event)

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """Take one telephone-event packet; return a digit when one is complete."""
        block = TelephoneEvent.parse(payload)
        timestamp %= TIMESTAMP_MODULUS
        if self._timestamp is not None and timestamp == self._timestamp:
            self._event = block.event
            self._duration = max(self._duration, block.duration)
            if block.end and not self._reported:
                self._reported = True
                return event_digit(block.event)
            return None
        if self._timestamp is not None and not _is_newer(timestamp, self._timestamp):
            return None

        continues_press = (
            not self._reported
            and self._event == block.event
            and self._duration == TelephoneEvent.MAX_DURATION
        )
        previous = None if continues_press else self.flush()
        self._timestamp = timestamp
        self._event = block.event
        self._duration = block.duration
        self._reported = False
        if block.end and previous is None:
            return self.flush()
        return previous

    def flush(self) -> str | None:
        """Report the current event now if it has not been reported (its end packets lost)."""
        digit = self.pending
        self._reported = True
        return digit
