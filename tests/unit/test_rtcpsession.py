from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.rtcp import (
    RtcpByePacket,
    RtcpReportBlock,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    SdesItemType,
    parse_rtcp,
)
from bridge.rtcpsession import REPORT_INTERVAL_S, LegCounters, RtcpSession

OUR_SSRC = 0x11111111
THEIR_SSRC = 0x22222222


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[RtcpSession, socket.socket, list[dict[str, Any]], Clock]]:
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs.bind(("127.0.0.1", 0))
    events: list[dict[str, Any]] = []
    clock = Clock()
    session = RtcpSession(ours, cname="test@127.0.0.1", events=events.append, clock=clock)
    # The leg's RTP port is one below its RTCP socket, as RFC 3550 expects.
    session.add("p1", "127.0.0.1", theirs.getsockname()[1] - 1, OUR_SSRC)
    yield session, theirs, events, clock
    ours.close()
    theirs.close()


def counters(**over: Any) -> LegCounters:
    values: dict[str, Any] = dict(
        rtp_timestamp=1234,
        packets_sent=50,
        octets_sent=8000,
        remote_ssrc=THEIR_SSRC,
        received=90,
        lost=10,
        highest_sequence=777,
        jitter=40,
    )
    values.update(over)
    return LegCounters(**values)


def wait_readable(sock: socket.socket, timeout: float = 1.0) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def test_sender_report_goes_out_when_due_with_our_view_of_their_stream(pair: Any) -> None:
    session, theirs, _, clock = pair
    session.report(clock.now, lambda _p: counters())
    assert not wait_readable(theirs, 0.05), "a report went out before it was due"
    clock.now += REPORT_INTERVAL_S + 1
    session.report(clock.now, lambda _p: counters())
    assert wait_readable(theirs)
    sr, sdes = parse_rtcp(theirs.recv(1500))
    assert isinstance(sr, RtcpSrPacket) and isinstance(sdes, RtcpSdesPacket)
    assert (sr.ssrc, sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (
        OUR_SSRC,
        1234,
        50,
        8000,
    )
    [block] = sr.reports
    assert block.ssrc == THEIR_SSRC
    assert block.packets_lost == 10
    assert block.fraction_lost == 10 * 256 // 100
    assert (block.highest_sequence, block.jitter) == (777, 40)
    assert sdes.chunks[0].items == [(SdesItemType.CNAME, b"test@127.0.0.1")]


def test_their_reports_are_kept_and_lsr_dlsr_follow(pair: Any) -> None:
    session, theirs, _, clock = pair
    ours = session.sock.getsockname()
    their_sr = RtcpSrPacket(
        ssrc=THEIR_SSRC,
        ntp_timestamp=0x0123456789ABCDEF,
        reports=[RtcpReportBlock(ssrc=OUR_SSRC, fraction_lost=3, jitter=7)],
    )
    theirs.sendto(bytes(their_sr), ours)
    assert wait_readable(session.sock)
    session.receive()
    assert session.stats("p1") == {
        "reports_received": 1,
        "remote_view": {"fraction_lost": 3, "packets_lost": 0, "jitter": 7},
    }
    clock.now += REPORT_INTERVAL_S + 2
    session.report(clock.now, lambda _p: counters())
    assert wait_readable(theirs)
    sr = parse_rtcp(theirs.recv(1500))[0]
    assert isinstance(sr, RtcpSrPacket)
    assert sr.reports[0].lsr == 0x456789AB
    assert sr.reports[0].dlsr == (REPORT_INTERVAL_S + 2) * 65536


def test_bye_becomes_an_event_and_garbage_is_counted(pair: Any) -> None:
    session, theirs, events, _ = pair
    ours = session.sock.getsockname()
    theirs.sendto(
        bytes(RtcpRrPacket(ssrc=THEIR_SSRC))
        + bytes(RtcpByePacket(sources=[THEIR_SSRC], reason="bye")),
        ours,
    )
    theirs.sendto(b"\x00\x01garbage", ours)
    theirs.sendto(bytes(RtcpRrPacket(ssrc=0x999)), ("127.0.0.1", ours[1]))
    # Loopback queues a datagram before sendto returns; one receive drains all three.
    assert wait_readable(session.sock)
    session.receive()
    assert events == [{"event": "rtcp_bye", "participant": "p1", "reason": "bye"}]
    assert session.malformed == 1
    assert session.unknown == 1


def test_no_report_block_before_anything_was_received(pair: Any) -> None:
    session, theirs, _, clock = pair
    clock.now += REPORT_INTERVAL_S + 1
    session.report(clock.now, lambda _p: counters(received=0, remote_ssrc=None))
    assert wait_readable(theirs)
    sr = parse_rtcp(theirs.recv(1500))[0]
    assert isinstance(sr, RtcpSrPacket) and sr.reports == []
