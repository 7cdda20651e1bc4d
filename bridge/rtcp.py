"""RTCP wire format (RFC 3550 §6).

One dataclass per packet type, each with ``parse`` (one whole packet, common header included)
and ``__bytes__``: SR (§6.4.1), RR (§6.4.2), SDES (§6.5), BYE (§6.6) and APP (§6.7).
:func:`parse_rtcp` splits a datagram into packets by their length fields.  As a compound packet
(§6.1, appendix A.2) it must start with SR or RR and only its last packet may be padded; the
3GPP TS 24.380 §8.1.1 floor-control packets are not compound, so ``compound=False`` only
splits.  Packet types this module does not know come back as :class:`RtcpUnknownPacket`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, TypeAlias, TypeVar

RTCP_VERSION = 2
RTCP_HEADER_LENGTH = 4
RTCP_WORD_LENGTH = 4
MAX_COUNT = 31
REPORT_BLOCK_LENGTH = 24
SENDER_INFO_LENGTH = 20
SSRC_LENGTH = 4
APP_NAME_LENGTH = 4
MAX_SDES_ITEM_LENGTH = 255

# RFC 3550 §4: seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800
NTP_SECONDS_SHIFT = 32
NTP_FRACTION = 1 << NTP_SECONDS_SHIFT
# RFC 3550 §6.4.1: LSR is the middle 32 bits of the NTP timestamp, DLSR is in 1/65536 s.
COMPACT_NTP_SHIFT = 16
COMPACT_NTP_UNITS = 1 << 16
UINT32_MASK = 0xFFFF_FFFF
# RFC 3550 §6.4.1: the cumulative number of packets lost is a signed 24-bit field.
PACKETS_LOST_MIN = -(1 << 23)
PACKETS_LOST_MAX = (1 << 23) - 1
FRACTION_LOST_SHIFT = 8

_VERSION_SHIFT = 6
_PADDING_FLAG = 0x20
_COUNT_MASK = 0x1F
_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!L")
_SENDER_INFO = struct.Struct("!QLLL")
_REPORT_BLOCK = struct.Struct("!LB3sLLLL")
_PACKETS_LOST_BYTES = 3


class RtcpPacketType(IntEnum):
    """RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2)."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204
    RTPFB = 205
    PSFB = 206
    XR = 207


class SdesItemType(IntEnum):
    """SDES item types (RFC 3550 §6.5)."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


def _pack_packet(packet_type: int, count: int, body: bytes) -> bytes:
    """Prefix ``body`` (a multiple of 32 bits) with the common header (RFC 3550 §6.4.1)."""
    return (
        _HEADER.pack(
            (RTCP_VERSION << _VERSION_SHIFT) | count,
            packet_type,
            len(body) // RTCP_WORD_LENGTH,
        )
        + body
    )


def _check_count(count: int, what: str) -> None:
    if count > MAX_COUNT:
        raise ValueError(f"RTCP packet has too many {what}")


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % RTCP_WORD_LENGTH)


@dataclass
class RtcpReportBlock:
    """A reception report block (RFC 3550 §6.4.1).

    ``fraction_lost`` is 8-bit fixed point, ``packets_lost`` the signed 24-bit cumulative count,
    ``highest_sequence`` the extended highest sequence number received, ``jitter`` the
    interarrival jitter in timestamp units, ``lsr`` the middle 32 bits of the last SR's NTP
    timestamp and ``dlsr`` the delay since that SR in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtcpReportBlock:
        if len(data) != REPORT_BLOCK_LENGTH:
            raise ValueError("RTCP report block length is invalid")
        ssrc, fraction_lost, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack(data)
        return cls(
            ssrc=ssrc,
            fraction_lost=fraction_lost,
            packets_lost=int.from_bytes(lost, "big", signed=True),
            highest_sequence=highest,
            jitter=jitter,
            lsr=lsr,
            dlsr=dlsr,
        )

    def __bytes__(self) -> bytes:
        if not PACKETS_LOST_MIN <= self.packets_lost <= PACKETS_LOST_MAX:
            raise ValueError("RTCP cumulative packets lost is out of range")
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            self.packets_lost.to_bytes(_PACKETS_LOST_BYTES, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_reports(data: bytes, pos: int, count: int) -> list[RtcpReportBlock]:
    return [
        RtcpReportBlock.parse(data[offset : offset + REPORT_BLOCK_LENGTH])
        for offset in range(pos, pos + count * REPORT_BLOCK_LENGTH, REPORT_BLOCK_LENGTH)
    ]


@dataclass
class RtcpSrPacket:
    """Sender report (RFC 3550 §6.4.1); ``extension`` is the profile-specific tail."""

    packet_type: ClassVar[int] = RtcpPacketType.SR

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtcpSrPacket:
        return _parse_one(cls, data)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpSrPacket:
        reports_start = SSRC_LENGTH + SENDER_INFO_LENGTH
        reports_end = reports_start + count * REPORT_BLOCK_LENGTH
        if len(body) < reports_end:
            raise ValueError("RTCP sender report length is invalid")
        (ssrc,) = _SSRC.unpack_from(body)
        ntp, rtp, packets, octets = _SENDER_INFO.unpack_from(body, SSRC_LENGTH)
        return cls(
            ssrc=ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=rtp,
            packet_count=packets,
            octet_count=octets,
            reports=_parse_reports(body, reports_start, count),
            extension=body[reports_end:],
        )

    def __bytes__(self) -> bytes:
        _check_count(len(self.reports), "report blocks")
        body = _SSRC.pack(self.ssrc) + _SENDER_INFO.pack(
            self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        body += b"".join(bytes(report) for report in self.reports)
        return _pack_packet(self.packet_type, len(self.reports), _pad(body + self.extension))


@dataclass
class RtcpRrPacket:
    """Receiver report (RFC 3550 §6.4.2); ``extension`` is the profile-specific tail."""

    packet_type: ClassVar[int] = RtcpPacketType.RR

    ssrc: int
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtcpRrPacket:
        return _parse_one(cls, data)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpRrPacket:
        reports_end = SSRC_LENGTH + count * REPORT_BLOCK_LENGTH
        if len(body) < reports_end:
            raise ValueError("RTCP receiver report length is invalid")
        (ssrc,) = _SSRC.unpack_from(body)
        return cls(
            ssrc=ssrc,
            reports=_parse_reports(body, SSRC_LENGTH, count),
            extension=body[reports_end:],
        )

    def __bytes__(self) -> bytes:
        _check_count(len(self.reports), "report blocks")
        body = _SSRC.pack(self.ssrc) + b"".join(bytes(report) for report in self.reports)
        return _pack_packet(self.packet_type, len(self.reports), _pad(body + self.extension))


@dataclass
class RtcpSourceDescription:
    """One SDES chunk: a source and its ``(item type, value)`` items (RFC 3550 §6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class RtcpSdesPacket:
    """Source description (RFC 3550 §6.5)."""

    packet_type: ClassVar[int] = RtcpPacketType.SDES

    chunks: list[RtcpSourceDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> RtcpSdesPacket:
        return _parse_one(cls, data)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpSdesPacket:
        pos = 0
        chunks = []
        for _ in range(count):
            if len(body) < pos + SSRC_LENGTH:
                raise ValueError("RTCP SDES chunk is truncated")
            (ssrc,) = _SSRC.unpack_from(body, pos)
            pos += SSRC_LENGTH
            items = []
            while True:
                if pos >= len(body):
                    raise ValueError("RTCP SDES chunk is truncated")
                item_type = body[pos]
                if item_type == SdesItemType.END:
                    # The list ends with null octets up to the next 32-bit boundary.
                    pos += 1
                    pos += -pos % RTCP_WORD_LENGTH
                    break
                if len(body) < pos + 2 or len(body) < pos + 2 + body[pos + 1]:
                    raise ValueError("RTCP SDES item is truncated")
                end = pos + 2 + body[pos + 1]
                items.append((item_type, body[pos + 2 : end]))
                pos = end
            chunks.append(RtcpSourceDescription(ssrc=ssrc, items=items))
        return cls(chunks=chunks)

    def __bytes__(self) -> bytes:
        _check_count(len(self.chunks), "SDES chunks")
        body = b""
        for chunk in self.chunks:
            data = _SSRC.pack(chunk.ssrc)
            for item_type, value in chunk.items:
                if len(value) > MAX_SDES_ITEM_LENGTH:
                    raise ValueError("RTCP SDES item is too long")
                data += bytes([item_type, len(value)]) + value
            # At least one null octet ends the item list (RFC 3550 §6.5).
            body += _pad(data + bytes([SdesItemType.END]))
        return _pack_packet(self.packet_type, len(self.chunks), body)


@dataclass
class RtcpByePacket:
    """Goodbye (RFC 3550 §6.6) with an optional UTF-8 reason."""

    packet_type: ClassVar[int] = RtcpPacketType.BYE

    sources: list[int] = field(default_factory=list)
    reason: str | None = None

    @classmethod
    def parse(cls, data: bytes) -> RtcpByePacket:
        return _parse_one(cls, data)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpByePacket:
        pos = SSRC_LENGTH * count
        if len(body) < pos:
            raise ValueError("RTCP bye length is invalid")
        sources = list(struct.unpack_from(f"!{count}L", body))
        reason = None
        if pos < len(body) and body[pos]:
            end = pos + 1 + body[pos]
            if len(body) < end:
                raise ValueError("RTCP bye reason is truncated")
            reason = body[pos + 1 : end].decode("utf-8", errors="replace")
        return cls(sources=sources, reason=reason)

    def __bytes__(self) -> bytes:
        _check_count(len(self.sources), "BYE sources")
        body = b"".join(_SSRC.pack(ssrc) for ssrc in self.sources)
        if self.reason is not None:
            text = self.reason.encode("utf-8")
            if len(text) > MAX_SDES_ITEM_LENGTH:
                raise ValueError("RTCP bye reason is too long")
            body += bytes([len(text)]) + text
        return _pack_packet(self.packet_type, len(self.sources), _pad(body))


@dataclass
class RtcpAppPacket:
    """Application-defined packet (RFC 3550 §6.7).

    ``subtype`` is the 5-bit count field, ``name`` four ASCII characters (3GPP TS 24.380 floor
    control uses "MCPT"), and ``data`` a multiple of 32 bits.
    """

    packet_type: ClassVar[int] = RtcpPacketType.APP

    subtype: int
    ssrc: int
    name: str
    data: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtcpAppPacket:
        return _parse_one(cls, data)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpAppPacket:
        if len(body) < SSRC_LENGTH + APP_NAME_LENGTH:
            raise ValueError("RTCP APP packet length is invalid")
        (ssrc,) = _SSRC.unpack_from(body)
        try:
            name = body[SSRC_LENGTH : SSRC_LENGTH + APP_NAME_LENGTH].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("RTCP APP packet name is not ASCII") from None
        return cls(subtype=count, ssrc=ssrc, name=name, data=body[SSRC_LENGTH + APP_NAME_LENGTH :])

    def __bytes__(self) -> bytes:
        if not 0 <= self.subtype <= MAX_COUNT:
            raise ValueError("RTCP APP packet subtype is out of range")
        if len(self.name) != APP_NAME_LENGTH or not self.name.isascii():
            raise ValueError(f"RTCP APP packet name must be {APP_NAME_LENGTH} ASCII characters")
        if len(self.data) % RTCP_WORD_LENGTH:
            raise ValueError("RTCP APP packet data length must be a multiple of 4 bytes")
        body = _SSRC.pack(self.ssrc) + self.name.encode("ascii") + self.data
        return _pack_packet(self.packet_type, self.subtype, body)


@dataclass
class RtcpUnknownPacket:
    """A packet of a type this module does not decode (RFC 3550 §6.1: ignore, or relay)."""

    packet_type: int
    count: int
    body: bytes = b""

    @classmethod
    def parse_body(cls, packet_type: int, count: int, body: bytes) -> RtcpUnknownPacket:
        return cls(packet_type=packet_type, count=count, body=body)

    def __bytes__(self) -> bytes:
        return _pack_packet(self.packet_type, self.count, _pad(self.body))


RtcpPacket: TypeAlias = (
    RtcpSrPacket | RtcpRrPacket | RtcpSdesPacket | RtcpByePacket | RtcpAppPacket | RtcpUnknownPacket
)
_KnownPacket: TypeAlias = (
    type[RtcpSrPacket]
    | type[RtcpRrPacket]
    | type[RtcpSdesPacket]
    | type[RtcpByePacket]
    | type[RtcpAppPacket]
)
_PACKET_CLASSES: dict[int, _KnownPacket] = {
    RtcpPacketType.SR: RtcpSrPacket,
    RtcpPacketType.RR: RtcpRrPacket,
    RtcpPacketType.SDES: RtcpSdesPacket,
    RtcpPacketType.BYE: RtcpByePacket,
    RtcpPacketType.APP: RtcpAppPacket,
}


@dataclass
class _Frame:
    """One packet cut out of a datagram: header fields and its body, padding removed."""

    packet_type: int
    count: int
    padded: bool
    body: bytes


def _split(data: bytes) -> list[_Frame]:
    """Cut a datagram into packets by their length fields (RFC 3550 §6.4.1)."""
    if len(data) < RTCP_HEADER_LENGTH:
        raise ValueError(f"RTCP packet length is less than {RTCP_HEADER_LENGTH} bytes")
    frames = []
    pos = 0
    while pos < len(data):
        if len(data) < pos + RTCP_HEADER_LENGTH:
            raise ValueError(f"RTCP packet length is less than {RTCP_HEADER_LENGTH} bytes")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> _VERSION_SHIFT != RTCP_VERSION:
            raise ValueError("RTCP packet has invalid version")
        start = pos + RTCP_HEADER_LENGTH
        pos = start + RTCP_WORD_LENGTH * words
        if len(data) < pos:
            raise ValueError("RTCP packet is truncated")
        body = bytes(data[start:pos])
        padded = bool(first & _PADDING_FLAG)
        if padded:
            if not body or not body[-1] or body[-1] > len(body):
                raise ValueError("RTCP packet padding length is invalid")
            body = body[: -body[-1]]
        frames.append(_Frame(packet_type, first & _COUNT_MASK, padded, body))
    return frames


def _parse_frame(frame: _Frame) -> RtcpPacket:
    packet_class = _PACKET_CLASSES.get(frame.packet_type)
    if packet_class is None:
        return RtcpUnknownPacket.parse_body(frame.packet_type, frame.count, frame.body)
    return packet_class.parse_body(frame.count, frame.body)


_Known = TypeVar("_Known", RtcpSrPacket, RtcpRrPacket, RtcpSdesPacket, RtcpByePacket, RtcpAppPacket)


def _parse_one(packet_class: type[_Known], data: bytes) -> _Known:
    """Parse a datagram that holds exactly one packet of ``packet_class``."""
    frames = _split(data)
    if len(frames) != 1:
        raise ValueError("RTCP datagram holds more than one packet")
    if frames[0].packet_type != packet_class.packet_type:
        name = RtcpPacketType(packet_class.packet_type).name
        raise ValueError(f"RTCP packet type is not {name}")
    return packet_class.parse_body(frames[0].count, frames[0].body)


def parse_rtcp(data: bytes, *, compound: bool = True) -> list[RtcpPacket]:
    """Parse a datagram of RTCP packets.

    With ``compound`` the RFC 3550 §6.1 / appendix A.2 rules apply: the first packet is an SR or
    RR and only the last packet may carry padding.  Without it the datagram is only split, as
    for 3GPP TS 24.380 §8.1.1 floor-control packets, several of which may share a datagram.
    """
    frames = _split(data)
    if compound:
        if frames[0].packet_type not in (RtcpPacketType.SR, RtcpPacketType.RR):
            raise ValueError("RTCP compound packet does not start with SR or RR")
        if any(frame.padded for frame in frames[:-1]):
            raise ValueError("RTCP compound packet has padding before its last packet")
    return [_parse_frame(frame) for frame in frames]


def ntp_timestamp(unix_time: float) -> int:
    """The 64-bit NTP timestamp of a Unix time (RFC 3550 §4)."""
    seconds = int(unix_time // 1)
    fraction = min(round((unix_time - seconds) * NTP_FRACTION), NTP_FRACTION - 1)
    return (((seconds + NTP_UNIX_OFFSET) & UINT32_MASK) << NTP_SECONDS_SHIFT) | fraction


def compact_ntp(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as LSR carries it (RFC 3550 §6.4.1)."""
    return (ntp >> COMPACT_NTP_SHIFT) & UINT32_MASK


def dlsr_units(seconds: float) -> int:
    """A delay since the last SR in the DLSR field's 1/65536 s units (RFC 3550 §6.4.1)."""
    return min(max(round(seconds * COMPACT_NTP_UNITS), 0), UINT32_MASK)


def round_trip_time(arrival_ntp: int, lsr: int, dlsr: int) -> float | None:
    """Round-trip time in seconds from a report block received at ``arrival_ntp`` (§6.4.1).

    ``None`` when the report carries no SR timing (an LSR of zero).
    """
    if lsr == 0:
        return None
    delay = (compact_ntp(arrival_ntp) - lsr - dlsr) & UINT32_MASK
    return delay / COMPACT_NTP_UNITS


def fraction_lost(expected: int, received: int) -> int:
    """The 8-bit fraction lost over an interval (RFC 3550 appendix A.3); 0 on duplicates."""
    lost = expected - received
    if expected <= 0 or lost <= 0:
        return 0
    return (lost << FRACTION_LOST_SHIFT) // expected


def clamp_packets_lost(lost: int) -> int:
    """Clamp a cumulative loss count to the signed 24-bit field (RFC 3550 §6.4.1)."""
    return max(PACKETS_LOST_MIN, min(lost, PACKETS_LOST_MAX))
