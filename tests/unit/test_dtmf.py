"""Tests for bridge.dtmf: RFC 4733 digits reported once per event."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.dtmf import DtmfReceiver, event_digit
from bridge.rtp import RtpPacket, TelephoneEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rtp"
STAR = 10


def block(event: int, duration: int, end: bool = False) -> bytes:
    return bytes(TelephoneEvent(event=event, end=end, volume=10, duration=duration))


def press(
    receiver: DtmfReceiver, timestamp: int, event: int, updates: int = 3, ends: int = 3
) -> list[str | None]:
    """Feed a whole event as a sender emits it: start, updates, then its end packets."""
    results = [receiver.feed(timestamp, block(event, 160 * (n + 1))) for n in range(updates)]
    results += [
        receiver.feed(timestamp, block(event, 160 * updates, end=True)) for _ in range(ends)
    ]
    return results


def test_event_digits() -> None:
    assert [event_digit(code) for code in range(16)] == list("0123456789*#ABCD")
    assert event_digit(16) is None
    assert event_digit(-1) is None


def test_fixture_packets_give_one_star() -> None:
    receiver = DtmfReceiver()
    start = RtpPacket.parse((FIXTURES / "rtp_dtmf_start.bin").read_bytes())
    end = RtpPacket.parse((FIXTURES / "rtp_dtmf_end.bin").read_bytes())
    assert receiver.feed(start.timestamp, start.payload) is None
    assert receiver.pending == "*"
    results = [receiver.feed(end.timestamp, end.payload) for _ in range(3)]
    assert results == ["*", None, None]
    assert receiver.pending is None


def test_three_end_packets_give_one_digit() -> None:
    receiver = DtmfReceiver()
    assert press(receiver, 8000, STAR) == [None, None, None, "*", None, None]


def test_two_events_give_two_digits() -> None:
    receiver = DtmfReceiver()
    assert press(receiver, 8000, 1) == [None, None, None, "1", None, None]
    assert press(receiver, 9600, 2) == [None, None, None, "2", None, None]


def test_same_digit_twice_with_distinct_timestamps() -> None:
    receiver = DtmfReceiver()
    digits = press(receiver, 8000, 5) + press(receiver, 9600, 5)
    assert [digit for digit in digits if digit] == ["5", "5"]


def test_retransmitted_start_packets_give_one_digit() -> None:
    receiver = DtmfReceiver()
    results = [receiver.feed(8000, block(STAR, 0)) for _ in range(3)]
    results += [receiver.feed(8000, block(STAR, 480, end=True)) for _ in range(3)]
    assert results == [None, None, None, "*", None, None]


def test_lost_end_packets_reported_by_next_event() -> None:
    receiver = DtmfReceiver()
    assert press(receiver, 8000, 1, ends=0) == [None, None, None]
    assert receiver.pending == "1"
    assert press(receiver, 9600, 2) == ["1", None, None, "2", None, None]


def test_lost_end_packets_reported_by_flush() -> None:
    receiver = DtmfReceiver()
    press(receiver, 8000, 9, ends=0)
    assert receiver.flush() == "9"
    assert receiver.flush() is None
    # A late end packet of the flushed event does not repeat it.
    assert receiver.feed(8000, block(9, 480, end=True)) is None


def test_next_event_seen_only_by_its_end_after_lost_ends() -> None:
    receiver = DtmfReceiver()
    press(receiver, 8000, 1, ends=0)
    # Only the end packets of the next event arrive: the first reports "1", the second "2".
    results = [receiver.feed(9600, block(2, 480, end=True)) for _ in range(3)]
    assert results == ["1", "2", None]


def test_late_packet_of_an_earlier_event_is_ignored() -> None:
    receiver = DtmfReceiver()
    press(receiver, 8000, 1)
    assert receiver.feed(9600, block(2, 160)) is None
    # A delayed end packet of the first event must neither repeat "1" nor flush "2".
    assert receiver.feed(8000, block(1, 480, end=True)) is None
    assert receiver.pending == "2"
    assert receiver.feed(9600, block(2, 480, end=True)) == "2"


def test_timestamps_wrap_around() -> None:
    receiver = DtmfReceiver()
    first = (1 << 32) - 800
    assert [d for d in press(receiver, first, 3) if d] == ["3"]
    assert [d for d in press(receiver, 800, 4) if d] == ["4"]
    # Before the wrap in serial-number order: an older event.
    assert receiver.feed(first, block(3, 480, end=True)) is None


def test_long_event_segments_give_one_digit() -> None:
    receiver = DtmfReceiver()
    maximum = TelephoneEvent.MAX_DURATION
    assert receiver.feed(8000, block(0, 40000)) is None
    assert receiver.feed(8000, block(0, maximum)) is None
    # RFC 4733 §2.5.1.3: the next segment starts at a new timestamp, same event code.
    assert receiver.feed(8000 + maximum, block(0, 800)) is None
    results = [receiver.feed(8000 + maximum, block(0, 1600, end=True)) for _ in range(3)]
    assert results == ["0", None, None]


def test_repeated_digit_with_lost_ends_is_not_a_continuation() -> None:
    receiver = DtmfReceiver()
    press(receiver, 8000, 5, ends=0)
    # Same code at a new timestamp, but the first press never reached the maximum duration.
    assert press(receiver, 9600, 5) == ["5", None, None, "5", None, None]


def test_new_event_after_maximum_duration_with_other_code_reports_both() -> None:
    receiver = DtmfReceiver()
    receiver.feed(8000, block(0, TelephoneEvent.MAX_DURATION))
    assert receiver.feed(8000 + TelephoneEvent.MAX_DURATION, block(7, 160)) == "0"


def test_non_dtmf_events_report_nothing() -> None:
    receiver = DtmfReceiver()
    flash = 16
    assert press(receiver, 8000, flash) == [None] * 6
    assert press(receiver, 9600, 14) == [None, None, None, "C", None, None]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "Telephone event payload length is less than 4 bytes"),
        (b"\x0a\x80", "Telephone event payload length is less than 4 bytes"),
        (
            b"\x0a\x80\x01\xe0\x00\x00",
            "Telephone event payload length is not a multiple of 4 bytes",
        ),
    ],
)
def test_malformed_payload_raises_and_keeps_state(payload: bytes, message: str) -> None:
    receiver = DtmfReceiver()
    assert receiver.feed(8000, block(STAR, 160)) is None
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        receiver.feed(8000, payload)
    assert receiver.pending == "*"
    assert receiver.feed(8000, block(STAR, 320, end=True)) == "*"
