"""RTCP for a media worker's legs: reports in, sender reports out (RFC 3550 section 6).

A worker has one RTCP port beside its RTP port (``rtp_port + 1``). RTCP is a few packets
a second, so it is served between ticks as it arrives, never inside the tick:

- Incoming compound packets are validated (RFC 3550 section 6.1 / A.2) and attributed to
  a leg by sender SSRC, or else by source IP address. SR timestamps are kept for the
  LSR/DLSR of our own reports; report blocks about our stream are kept for statistics;
  a BYE becomes an event. Malformed packets are counted and dropped.
- Every :data:`REPORT_INTERVAL_S` (RFC 3550's minimum of 5 s), each leg we send to gets
  one compound SR + SDES (CNAME) to its RTCP address: the port the leg's RTCP came from,
  or else its RTP port + 1. The legs are spread over the interval, a few per tick.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .rtcp import (
    RtcpByePacket,
    RtcpReportBlock,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSourceDescription,
    RtcpSrPacket,
    SdesItemType,
    clamp_packets_lost,
    compact_ntp,
    dlsr_units,
    fraction_lost,
    ntp_timestamp,
    parse_rtcp,
)

logger = logging.getLogger(__name__)

#: Seconds between two reports to one leg (RFC 3550 section 6.2 minimum).
REPORT_INTERVAL_S = 5.0
#: Largest RTCP datagram read.
MAX_RTCP_SIZE = 1500
#: Datagrams read per call, so a flood cannot hold the worker between ticks.
MAX_READS = 64


@dataclass(frozen=True)
class LegCounters:
    """A leg's figures at report time, from the engine (RFC 3550 section 6.4)."""

    rtp_timestamp: int
    packets_sent: int
    octets_sent: int
    remote_ssrc: int | None
    received: int
    lost: int
    highest_sequence: int
    jitter: int


@dataclass
class LegRtcp:
    """What RTCP knows of one leg."""

    participant: str
    remote_ip: str
    remote_rtp_port: int
    ssrc_out: int
    rtcp_port: int | None = None
    remote_ssrc: int | None = None
    last_sr: int = 0
    last_sr_at: float = 0.0
    received_reports: int = 0
    remote_view: dict[str, int] = field(default_factory=dict)
    next_report: float = 0.0
    prev_expected: int = 0
    prev_received: int = 0

    @property
    def rtcp_address(self) -> tuple[str, int]:
        return self.remote_ip, self.rtcp_port or self.remote_rtp_port + 1


class RtcpSession:
    """The RTCP socket of one worker and the state of its legs."""

    def __init__(
        self,
        sock: socket.socket,
        cname: str,
        events: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.cname = cname.encode()
        self.events = events
        self.clock = clock
        self.legs: dict[str, LegRtcp] = {}
        self.malformed = 0
        self.unknown = 0
        self.sent = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def add(self, participant: str, remote_ip: str, remote_rtp_port: int, ssrc_out: int) -> None:
        leg = LegRtcp(participant, remote_ip, remote_rtp_port, ssrc_out)
        # Spread first reports over the interval, by arrival order.
        leg.next_report = self.clock() + 1.0 + (len(self.legs) % 50) * REPORT_INTERVAL_S / 50
        self.legs[participant] = leg

    def remove(self, participant: str) -> None:
        self.legs.pop(participant, None)

    def _leg_for(self, ssrc: int, ip: str) -> LegRtcp | None:
        by_ip = None
        for leg in self.legs.values():
            if leg.remote_ssrc == ssrc:
                return leg
            if leg.remote_ip == ip and leg.remote_ssrc is None:
                by_ip = leg
        return by_ip

    def receive(self) -> None:
        """Read what is waiting (bounded), attribute it and keep what it says."""
        for _ in range(MAX_READS):
            try:
                data, (ip, port) = self.sock.recvfrom(MAX_RTCP_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            try:
                packets = parse_rtcp(data)
            except ValueError:
                self.malformed += 1
                continue
            for packet in packets:
                self._handle(packet, ip, port)

    def _handle(self, packet: object, ip: str, port: int) -> None:
        if isinstance(packet, RtcpSrPacket | RtcpRrPacket):
            leg = self._leg_for(packet.ssrc, ip)
            if leg is None:
                self.unknown += 1
                return
            leg.remote_ssrc = packet.ssrc
            leg.rtcp_port = port
            leg.received_reports += 1
            if isinstance(packet, RtcpSrPacket):
                leg.last_sr = compact_ntp(packet.ntp_timestamp)
                leg.last_sr_at = self.clock()
            for block in packet.reports:
                if block.ssrc == leg.ssrc_out:
                    leg.remote_view = {
                        "fraction_lost": block.fraction_lost,
                        "packets_lost": block.packets_lost,
                        "jitter": block.jitter,
                    }
        elif isinstance(packet, RtcpByePacket):
            for ssrc in packet.sources:
                leg = self._leg_for(ssrc, ip)
                if leg is not None and leg.remote_ssrc == ssrc:
                    self.events(
                        {
                            "event": "rtcp_bye",
                            "participant": leg.participant,
                            "reason": packet.reason,
                        }
                    )

    def report(self, now: float, sender: Callable[[str], LegCounters]) -> None:
        """Send the reports that are due; ``sender`` gives a leg's counters."""
        for leg in self.legs.values():
            if now < leg.next_report:
                continue
            leg.next_report = now + REPORT_INTERVAL_S
            counters = sender(leg.participant)
            reports = []
            if counters.received and counters.remote_ssrc is not None:
                expected = counters.received + counters.lost
                block = RtcpReportBlock(
                    ssrc=counters.remote_ssrc,
                    fraction_lost=fraction_lost(
                        expected - leg.prev_expected, counters.received - leg.prev_received
                    ),
                    packets_lost=clamp_packets_lost(counters.lost),
                    highest_sequence=counters.highest_sequence,
                    jitter=counters.jitter,
                )
                leg.prev_expected, leg.prev_received = expected, counters.received
                if leg.last_sr_at:
                    block.lsr = leg.last_sr
                    block.dlsr = dlsr_units(now - leg.last_sr_at)
                reports.append(block)
            sr = RtcpSrPacket(
                ssrc=leg.ssrc_out,
                ntp_timestamp=ntp_timestamp(time.time()),
                rtp_timestamp=counters.rtp_timestamp,
                packet_count=counters.packets_sent,
                octet_count=counters.octets_sent,
                reports=reports,
            )
            sdes = RtcpSdesPacket(
                chunks=[
                    RtcpSourceDescription(
                        ssrc=leg.ssrc_out, items=[(SdesItemType.CNAME, self.cname)]
                    )
                ]
            )
            try:
                self.sock.sendto(bytes(sr) + bytes(sdes), leg.rtcp_address)
                self.sent += 1
            except OSError as exc:
                logger.debug("RTCP to %s failed: %s", leg.rtcp_address, exc)

    def stats(self, participant: str) -> dict[str, Any]:
        leg = self.legs.get(participant)
        if leg is None:
            return {}
        return {"reports_received": leg.received_reports, "remote_view": leg.remote_view}
