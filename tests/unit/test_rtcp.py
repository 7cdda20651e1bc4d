"""Tests for bridge.rtcp: RFC 3550 §6 packets, compound and non-compound datagrams."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bridge.rtcp import (
    RtcpAppPacket,
    RtcpByePacket,
    RtcpPacket,
    RtcpPacketType,
    RtcpReportBlock,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSourceDescription,
    RtcpSrPacket,
    RtcpUnknownPacket,
    SdesItemType,
    clamp_packets_lost,
    compact_ntp,
    dlsr_units,
    fraction_lost,
    ntp_timestamp,
    parse_rtcp,
    round_trip_time,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rtp"
REPORT = RtcpReportBlock(
    ssrc=0x11223344,
    fraction_lost=0x40,
    packets_lost=-3,
    highest_sequence=0x0001_1234,
    jitter=57,
    lsr=0xC0DE1234,
    dlsr=0x0002_8000,
)
RR = RtcpRrPacket(ssrc=0x55667788, reports=[REPORT])
SDES = RtcpSdesPacket(
    chunks=[
        RtcpSourceDescription(ssrc=0x55667788, items=[(SdesItemType.CNAME, b"unit-7@bridge")]),
        RtcpSourceDescription(
            ssrc=0x99AABBCC, items=[(SdesItemType.CNAME, b"x"), (SdesItemType.TOOL, b"ucb")]
        ),
    ]
)
BYE = RtcpByePacket(sources=[0x55667788, 0x99AABBCC], reason="shift over")
FLOOR_REQUEST = RtcpAppPacket(subtype=0, ssrc=0x55667788, name="MCPT", data=bytes([0, 2, 7, 0]))
FLOOR_RELEASE = RtcpAppPacket(subtype=4, ssrc=0x55667788, name="MCPT")


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_parse_rr() -> None:
    assert parse_rtcp(load("rtcp_rr.bin")) == [RR]
    assert RtcpRrPacket.parse(load("rtcp_rr.bin")) == RR
    assert bytes(RR) == load("rtcp_rr.bin")


def test_parse_sr() -> None:
    sr = RtcpSrPacket(
        ssrc=0x11223344,
        ntp_timestamp=0xE8E1_2F6A_8000_0000,
        rtp_timestamp=160_000,
        packet_count=1000,
        octet_count=160_000,
        reports=[REPORT],
    )
    assert parse_rtcp(load("rtcp_sr.bin")) == [sr]
    assert bytes(sr) == load("rtcp_sr.bin")


def test_parse_ffmpeg_sr() -> None:
    data = load("rtcp_sr_ffmpeg.bin")
    [sr] = parse_rtcp(data)
    assert isinstance(sr, RtcpSrPacket)
    assert sr.ssrc == 0x11223344
    assert sr.reports == []
    assert sr.packet_count == 0
    # The NTP time is 1970 or later (the era-0 seconds are past the Unix epoch offset).
    assert sr.ntp_timestamp >> 32 > 2_208_988_800
    assert bytes(sr) == data


def test_parse_compound() -> None:
    data = load("rtcp_rr_sdes_bye.bin")
    packets = parse_rtcp(data)
    assert packets == [RR, SDES, BYE]
    assert b"".join(bytes(packet) for packet in packets) == data


def test_padding_on_last_packet_of_compound() -> None:
    rr, sdes = parse_rtcp(load("rtcp_rr_sdes_padding.bin"))
    assert rr == RR
    assert sdes == RtcpSdesPacket(chunks=SDES.chunks[:1])


def test_unknown_packet_type_is_kept() -> None:
    data = load("rtcp_rr_psfb.bin")
    rr, pli = parse_rtcp(data)
    assert pli == RtcpUnknownPacket(
        packet_type=RtcpPacketType.PSFB, count=1, body=struct.pack("!LL", 0x55667788, 0x11223344)
    )
    assert bytes(rr) + bytes(pli) == data


def test_parse_app() -> None:
    data = load("rtcp_app.bin")
    assert RtcpAppPacket.parse(data) == FLOOR_REQUEST
    assert bytes(FLOOR_REQUEST) == data


def test_non_compound_datagram_is_split() -> None:
    data = load("rtcp_app_pair.bin")
    assert parse_rtcp(data, compound=False) == [FLOOR_REQUEST, FLOOR_RELEASE]
    with pytest.raises(
        ValueError, match=exactly("RTCP compound packet does not start with SR or RR")
    ):
        parse_rtcp(data)


def test_non_compound_allows_padding_anywhere() -> None:
    padded = bytes([0xA4, 204, 0, 3]) + struct.pack("!L", 1) + b"MCPT" + b"\x00\x00\x00\x04"
    packets = parse_rtcp(padded + bytes(FLOOR_RELEASE), compound=False)
    assert packets == [RtcpAppPacket(subtype=4, ssrc=1, name="MCPT"), FLOOR_RELEASE]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rtcp_header_truncated.bin", "RTCP packet length is less than 4 bytes"),
        ("rtcp_truncated.bin", "RTCP packet is truncated"),
        ("rtcp_version_invalid.bin", "RTCP packet has invalid version"),
        ("rtcp_padding_invalid.bin", "RTCP packet padding length is invalid"),
        ("rtcp_compound_invalid.bin", "RTCP compound packet does not start with SR or RR"),
        (
            "rtcp_compound_padding_invalid.bin",
            "RTCP compound packet has padding before its last packet",
        ),
        ("rtcp_sr_truncated.bin", "RTCP sender report length is invalid"),
        ("rtcp_sdes_truncated.bin", "RTCP SDES item is truncated"),
        ("rtcp_bye_truncated.bin", "RTCP bye reason is truncated"),
    ],
)
def test_parse_invalid(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        parse_rtcp(load(name))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP packet length is less than 4 bytes"),
        (load("rtcp_rr.bin") + b"\x80\xc9", "RTCP packet length is less than 4 bytes"),
        (bytes([0x81, 201, 0, 1, 0, 0, 0, 1]), "RTCP receiver report length is invalid"),
        (bytes([0x81, 202, 0, 0]), "RTCP SDES chunk is truncated"),
        (bytes([0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, 0x61, 0x62]), "RTCP SDES chunk is truncated"),
        (load("rtcp_app_truncated.bin"), "RTCP APP packet length is invalid"),
        (bytes([0x82, 203, 0, 1, 0, 0, 0, 1]), "RTCP bye length is invalid"),
        (
            bytes([0x80, 204, 0, 2, 0, 0, 0, 1, 0xFF, 0x43, 0x50, 0x54]),
            "RTCP APP packet name is not ASCII",
        ),
    ],
)
def test_parse_invalid_non_compound(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        parse_rtcp(data, compound=False)


def test_single_packet_parse_checks_type_and_count() -> None:
    with pytest.raises(ValueError, match=exactly("RTCP packet type is not APP")):
        RtcpAppPacket.parse(load("rtcp_rr.bin"))
    with pytest.raises(ValueError, match=exactly("RTCP datagram holds more than one packet")):
        RtcpAppPacket.parse(load("rtcp_app_pair.bin"))


def test_report_block_packets_lost_is_signed_24_bit() -> None:
    block = RtcpReportBlock(ssrc=1, packets_lost=-(1 << 23))
    assert bytes(block)[5:8] == b"\x80\x00\x00"
    assert RtcpReportBlock.parse(bytes(block)) == block
    with pytest.raises(ValueError, match=exactly("RTCP cumulative packets lost is out of range")):
        bytes(RtcpReportBlock(ssrc=1, packets_lost=1 << 23))
    with pytest.raises(ValueError, match=exactly("RTCP report block length is invalid")):
        RtcpReportBlock.parse(bytes(23))


def test_sdes_chunk_with_no_items_and_aligned_end() -> None:
    # A chunk of 4 + 2 + 2 octets needs a whole word of nulls to end (RFC 3550 §6.5).
    packet = RtcpSdesPacket(
        chunks=[RtcpSourceDescription(ssrc=1, items=[(SdesItemType.NOTE, b"ab")])]
    )
    data = bytes(packet)
    assert data == bytes([0x81, 202, 0, 3, 0, 0, 0, 1, 7, 2, 0x61, 0x62, 0, 0, 0, 0])
    assert RtcpSdesPacket.parse(data) == packet
    empty = RtcpSdesPacket(chunks=[RtcpSourceDescription(ssrc=2)])
    assert bytes(empty) == bytes([0x81, 202, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0])
    assert RtcpSdesPacket.parse(bytes(empty)) == empty


def test_sdes_next_chunk_starts_on_a_word_boundary() -> None:
    first = RtcpSourceDescription(ssrc=1, items=[(SdesItemType.NOTE, b"ab")])
    second = RtcpSourceDescription(ssrc=2, items=[(SdesItemType.CNAME, b"c")])
    data = bytes(RtcpSdesPacket(chunks=[first, second]))
    assert data[4:16] == bytes([0, 0, 0, 1, 7, 2, 0x61, 0x62, 0, 0, 0, 0])
    assert RtcpSdesPacket.parse(data) == RtcpSdesPacket(chunks=[first, second])


def test_bye_without_reason() -> None:
    bye = RtcpByePacket(sources=[7])
    assert bytes(bye) == bytes([0x81, 203, 0, 1, 0, 0, 0, 7])
    assert RtcpByePacket.parse(bytes(bye)) == bye
    # A zero-length reason followed by null padding is no reason.
    assert RtcpByePacket.parse(bytes([0x81, 203, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0])) == bye


def test_rr_extension_round_trip() -> None:
    rr = RtcpRrPacket(ssrc=9, extension=b"\x01\x02\x03\x04")
    assert RtcpRrPacket.parse(bytes(rr)) == rr


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (RtcpAppPacket(subtype=32, ssrc=1, name="MCPT"), "RTCP APP packet subtype is out of range"),
        (
            RtcpAppPacket(subtype=0, ssrc=1, name="MCP"),
            "RTCP APP packet name must be 4 ASCII characters",
        ),
        (
            RtcpAppPacket(subtype=0, ssrc=1, name="MCPÉ"),
            "RTCP APP packet name must be 4 ASCII characters",
        ),
        (
            RtcpAppPacket(subtype=0, ssrc=1, name="MCPT", data=b"\x01"),
            "RTCP APP packet data length must be a multiple of 4 bytes",
        ),
        (RtcpRrPacket(ssrc=1, reports=[REPORT] * 32), "RTCP packet has too many report blocks"),
        (RtcpByePacket(sources=list(range(32))), "RTCP packet has too many BYE sources"),
        (RtcpByePacket(sources=[1], reason="x" * 256), "RTCP bye reason is too long"),
        (
            RtcpSdesPacket(chunks=[RtcpSourceDescription(1, [(SdesItemType.CNAME, bytes(256))])]),
            "RTCP SDES item is too long",
        ),
    ],
)
def test_serialize_errors(packet: RtcpPacket, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        bytes(packet)


def test_ntp_helpers() -> None:
    ntp = ntp_timestamp(1.5)
    assert ntp == ((2_208_988_800 + 1) << 32) | (1 << 31)
    assert compact_ntp(ntp) == ((2_208_988_801 & 0xFFFF) << 16) | 0x8000
    assert dlsr_units(0.5) == 0x8000
    assert dlsr_units(-1.0) == 0


def test_round_trip_time() -> None:
    # RFC 3550 §6.4.1 example: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000.
    arrival = 0xB710_8000 << 16
    assert round_trip_time(arrival, 0xB705_2000, 0x0005_4000) == pytest.approx(6.125)
    assert round_trip_time(arrival, 0, 0) is None


def test_fraction_lost_and_clamp() -> None:
    assert fraction_lost(expected=100, received=75) == 64
    assert fraction_lost(expected=100, received=110) == 0
    assert fraction_lost(expected=0, received=0) == 0
    assert clamp_packets_lost(1 << 30) == (1 << 23) - 1
    assert clamp_packets_lost(-(1 << 30)) == -(1 << 23)


def write_pcap(path: Path, datagrams: list[bytes], port: int) -> None:
    """A raw-IPv4 pcap of UDP datagrams from 127.0.0.1 to 127.0.0.1:port."""
    linktype_raw = 101
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype_raw)
    for index, data in enumerate(datagrams):
        udp = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
        loopback = bytes([127, 0, 0, 1])
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index, 0, 64, 17, 0, loopback, loopback
        )
        out += struct.pack("<IIII", index, 0, len(ip) + len(udp), len(ip) + len(udp)) + ip + udp
    path.write_bytes(out)


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs Wireshark's tshark")
def test_tshark_decodes_our_encoding(tmp_path: Path) -> None:
    sr = RtcpSrPacket(ssrc=0x11223344, ntp_timestamp=ntp_timestamp(1e9), reports=[REPORT])
    datagrams = [
        bytes(sr) + bytes(SDES) + bytes(BYE),
        bytes(FLOOR_REQUEST) + bytes(FLOOR_RELEASE),
    ]
    capture = tmp_path / "rtcp.pcap"
    write_pcap(capture, datagrams, port=5005)
    fields = ["rtcp.pt", "rtcp.ssrc.cum_nr", "rtcp.sdes.text", "rtcp.app.name", "rtcp.app.subtype"]
    result = subprocess.run(
        ["tshark", "-r", str(capture), "-d", "udp.port==5005,rtcp", "-T", "fields"]
        + [arg for name in fields for arg in ("-e", name)]
        + ["-e", "_ws.expert.message"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["200,202,203", "-3", "unit-7@bridge,x,ucb,shift over"]
    assert rows[1][3:5] == ["MCPT,MCPT", "0,4"]
    assert all(row[-1] == "" for row in rows), rows
