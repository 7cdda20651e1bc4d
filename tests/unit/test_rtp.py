"""Tests for bridge.rtp: RFC 3550 RTP, RFC 8285 extensions, RFC 6464 level, RFC 4733 events."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.rtp import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MAX_EXTENSION_ITEMS,
    MID_URI,
    HeaderExtensions,
    RtpPacket,
    TelephoneEvent,
    is_rtcp,
    pack_header_extensions,
    unpack_header_extensions,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rtp"
PAYLOAD = bytes(range(0x10, 0x10 + 160))
WEBRTC_MAP = {1: AUDIO_LEVEL_URI, 3: ABS_SEND_TIME_URI, 4: MID_URI}


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_parse_ffmpeg_pcmu() -> None:
    packet = RtpPacket.parse(load("rtp_pcmu_ffmpeg.bin"))
    assert packet.version == 2
    assert packet.payload_type == 0
    assert packet.marker is False
    assert packet.ssrc == 0x11223344
    assert packet.csrc == []
    assert packet.extensions == HeaderExtensions()
    assert packet.padding_size == 0
    assert len(packet.payload) == 1024
    assert bytes(packet) == load("rtp_pcmu_ffmpeg.bin")


def test_parse_minimal() -> None:
    packet = RtpPacket.parse(load("rtp_minimal.bin"))
    assert packet == RtpPacket(
        payload_type=8, sequence_number=0x1234, timestamp=0x89ABCDEF, ssrc=0x11223344
    )
    assert bytes(packet) == load("rtp_minimal.bin")


def test_parse_csrc() -> None:
    packet = RtpPacket.parse(load("rtp_csrc.bin"))
    assert packet.marker is True
    assert packet.csrc == [0xCAFEBABE, 0x0BADF00D]
    assert packet.payload == PAYLOAD
    assert bytes(packet) == load("rtp_csrc.bin")


def test_parse_padding() -> None:
    packet = RtpPacket.parse(load("rtp_padding.bin"))
    assert packet.padding_size == 4
    assert packet.payload == PAYLOAD
    assert bytes(packet) == load("rtp_padding.bin")


def test_parse_audio_level() -> None:
    packet = RtpPacket.parse(load("rtp_audio_level.bin"))
    assert packet.payload_type == 111
    assert packet.extensions.audio_level == (True, 42)
    assert packet.payload == PAYLOAD
    assert bytes(packet) == load("rtp_audio_level.bin")


def test_audio_level_needs_its_negotiated_id() -> None:
    packet = RtpPacket.parse(load("rtp_audio_level.bin"), extension_map={2: AUDIO_LEVEL_URI})
    assert packet.extensions.audio_level is None
    assert packet.payload == PAYLOAD


def test_parse_audio_level_not_first() -> None:
    packet = RtpPacket.parse(load("rtp_audio_level_not_first.bin"), WEBRTC_MAP)
    assert packet.extensions == HeaderExtensions(audio_level=(False, 5), abs_send_time=0x010203)


def test_parse_two_byte_extension() -> None:
    packet = RtpPacket.parse(load("rtp_audio_level_two_byte.bin"), WEBRTC_MAP)
    assert packet.extensions == HeaderExtensions(audio_level=(False, 127), mid="a0")
    assert packet.payload == PAYLOAD


def test_parse_aiortc_extensions() -> None:
    packet = RtpPacket.parse(load("rtp_opus_aiortc.bin"), WEBRTC_MAP)
    assert packet.marker is True
    assert packet.sequence_number == 65535
    assert packet.timestamp == 4294967000
    assert packet.extensions == HeaderExtensions(
        audio_level=(False, 127), abs_send_time=0x123456, mid="0"
    )
    assert packet.payload == b"\xfc\xff\xfe"
    # Our serialiser orders elements differently; the decoded values survive a round trip.
    assert RtpPacket.parse(packet.serialize(WEBRTC_MAP), WEBRTC_MAP) == packet


@pytest.mark.parametrize(
    "name",
    ["rtp_extension_id15.bin", "rtp_extension_overrun.bin", "rtp_extension_other_profile.bin"],
)
def test_extension_walk_stops_without_error(name: str) -> None:
    packet = RtpPacket.parse(load(name))
    assert packet.extensions.audio_level is None
    assert packet.payload == PAYLOAD


def test_parse_empty_extension() -> None:
    packet = RtpPacket.parse(load("rtp_extension_empty.bin"))
    assert packet.extensions == HeaderExtensions()
    assert packet.payload == PAYLOAD


def test_parse_csrc_extension_padding() -> None:
    data = load("rtp_extension_csrc_padding.bin")
    packet = RtpPacket.parse(data)
    assert packet.csrc == [7]
    assert packet.extensions.audio_level == (True, 42)
    assert packet.padding_size == 2
    assert packet.payload == PAYLOAD
    assert bytes(packet) == data


def test_parse_dtmf_packets() -> None:
    start = RtpPacket.parse(load("rtp_dtmf_start.bin"))
    end = RtpPacket.parse(load("rtp_dtmf_end.bin"))
    assert (start.payload_type, start.marker, start.timestamp) == (101, True, 48000)
    assert (end.payload_type, end.marker, end.timestamp) == (101, False, 48000)
    assert TelephoneEvent.parse(start.payload) == TelephoneEvent(10, False, 10, 400)
    assert TelephoneEvent.parse(end.payload) == TelephoneEvent(10, True, 10, 1600)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rtp_truncated.bin", "RTP packet length is less than 12 bytes"),
        ("rtp_version_invalid.bin", "RTP packet has invalid version"),
        ("rtp_csrc_truncated.bin", "RTP packet has truncated CSRC"),
        ("rtp_extension_truncated.bin", "RTP packet has truncated extension"),
        ("rtp_extension_length_truncated.bin", "RTP packet has truncated extension"),
        ("rtp_padding_zero_invalid.bin", "RTP packet padding length is invalid"),
        ("rtp_padding_length_invalid.bin", "RTP packet padding length is invalid"),
        ("rtp_rtcp_mux.bin", "RTP packet has RTCP packet type"),
    ],
)
def test_parse_invalid(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        RtpPacket.parse(load(name))


def test_parse_empty_datagram() -> None:
    with pytest.raises(ValueError, match=exactly("RTP packet length is less than 12 bytes")):
        RtpPacket.parse(b"")


def test_padding_may_fill_the_whole_payload() -> None:
    data = bytes([0xA0, 0]) + bytes(10) + bytes([0, 0, 0, 4])
    packet = RtpPacket.parse(data)
    assert (packet.padding_size, packet.payload) == (4, b"")
    with pytest.raises(ValueError, match=exactly("RTP packet padding length is invalid")):
        RtpPacket.parse(data[:-4] + bytes([0, 0, 0, 5]))


def test_is_rtcp() -> None:
    assert is_rtcp(load("rtp_rtcp_mux.bin"))
    assert is_rtcp(bytes([0x80, 223]))
    assert not is_rtcp(bytes([0x80, 224]))
    assert not is_rtcp(bytes([0x80, 191]))
    assert not is_rtcp(bytes([0x40, 200]))
    assert not is_rtcp(bytes([0x80]))
    assert not is_rtcp(load("rtp_csrc.bin"))


def test_unpack_one_byte_elements_skip_padding() -> None:
    data = bytes([0x00, 0x10, 0xAA, 0x00, 0x21, 0x01, 0x02, 0x00])
    assert unpack_header_extensions(0xBEDE, data) == [(1, b"\xaa"), (2, b"\x01\x02")]


def test_unpack_one_byte_id0_with_length_ends_walk() -> None:
    # RFC 8285 §4.1.2: ID 0 with a non-zero length ends processing.
    data = bytes([0x10, 0xAA, 0x01, 0x20, 0xBB, 0x00])
    assert unpack_header_extensions(0xBEDE, data) == [(1, b"\xaa")]


def test_unpack_two_byte_elements() -> None:
    data = bytes([0x01, 0x00, 0x00, 0xC8, 0x02, 0xAB, 0xCD, 0x05])
    # Zero-length element, a padding octet, then id 200; the lone last octet is cut off.
    assert unpack_header_extensions(0x1000, data) == [(1, b""), (200, b"\xab\xcd")]


def test_unpack_unknown_profile() -> None:
    assert unpack_header_extensions(0x1010, bytes([0x10, 0xAA, 0, 0])) == []


def test_unpack_stops_after_max_items() -> None:
    elements = [(id_ % 14 + 1, bytes([id_])) for id_ in range(MAX_EXTENSION_ITEMS + 1)]
    data = pack_header_extensions(elements)
    assert unpack_header_extensions(0xBEDE, data) == elements[:MAX_EXTENSION_ITEMS]


def test_pack_header_extensions_pads_to_words() -> None:
    assert pack_header_extensions([(1, b"\x2a")]) == bytes([0x10, 0x2A, 0, 0])
    assert pack_header_extensions([]) == b""
    with pytest.raises(
        ValueError, match=exactly("RTP one-byte header extension id is out of range")
    ):
        pack_header_extensions([(15, b"x")])
    with pytest.raises(
        ValueError, match=exactly("RTP one-byte header extension value length is out of range")
    ):
        pack_header_extensions([(1, bytes(17))])


def test_first_well_formed_audio_level_wins() -> None:
    # A two-octet element with the audio level id is ignored; the next one counts.
    data = bytes([0x11, 0x01, 0x02, 0x10, 0x85, 0x10, 0x06, 0x00])
    extensions = HeaderExtensions.parse(0xBEDE, data)
    assert extensions.audio_level == (True, 5)


def test_serialize_all_extensions() -> None:
    packet = RtpPacket(
        payload_type=111,
        extensions=HeaderExtensions(audio_level=(True, 0), abs_send_time=0xABCDEF, mid="audio"),
        payload=b"\x01",
    )
    data = packet.serialize(WEBRTC_MAP)
    assert data[12:16] == bytes([0xBE, 0xDE, 0, 3])
    assert data[16:29] == bytes([0x10, 0x80, 0x32, 0xAB, 0xCD, 0xEF, 0x44]) + b"audio" + b"\x01"
    assert RtpPacket.parse(data, WEBRTC_MAP) == packet


def test_serialize_errors() -> None:
    with pytest.raises(ValueError, match=exactly("RTP payload type is out of range")):
        bytes(RtpPacket(payload_type=128))
    with pytest.raises(ValueError, match=exactly("RTP packet has too many CSRC")):
        bytes(RtpPacket(csrc=list(range(16))))
    with pytest.raises(ValueError, match=exactly("RTP packet padding length is out of range")):
        bytes(RtpPacket(padding_size=256))
    with pytest.raises(ValueError, match=exactly(f"RTP header extension {MID_URI} has no id")):
        bytes(RtpPacket(extensions=HeaderExtensions(mid="0")))
    with pytest.raises(ValueError, match=exactly("RTP audio level is out of range")):
        bytes(RtpPacket(extensions=HeaderExtensions(audio_level=(False, 128))))
    with pytest.raises(ValueError, match=exactly("RTP abs-send-time is out of range")):
        RtpPacket(extensions=HeaderExtensions(abs_send_time=1 << 24)).serialize(WEBRTC_MAP)


def test_telephone_event_round_trip() -> None:
    event = TelephoneEvent(event=11, end=True, volume=63, duration=0xFFFF)
    assert bytes(event) == bytes([11, 0xBF, 0xFF, 0xFF])
    assert TelephoneEvent.parse(bytes(event)) == event


def test_telephone_event_ignores_reserved_bit() -> None:
    assert TelephoneEvent.parse(bytes([5, 0x40 | 7, 0, 160])) == TelephoneEvent(5, False, 7, 160)


def test_telephone_event_packed_blocks_read_first() -> None:
    data = bytes([1, 0x80, 0, 160, 2, 0, 0, 80])
    assert TelephoneEvent.parse(data) == TelephoneEvent(1, True, 0, 160)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "Telephone event payload length is less than 4 bytes"),
        (b"\x01\x80\x00", "Telephone event payload length is less than 4 bytes"),
        (b"\x01\x80\x00\xa0\x00", "Telephone event payload length is not a multiple of 4 bytes"),
    ],
)
def test_telephone_event_invalid(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        TelephoneEvent.parse(data)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (TelephoneEvent(event=256), "Telephone event code is out of range"),
        (TelephoneEvent(event=1, volume=64), "Telephone event volume is out of range"),
        (TelephoneEvent(event=1, duration=-1), "Telephone event duration is out of range"),
    ],
)
def test_telephone_event_serialize_errors(event: TelephoneEvent, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        bytes(event)
