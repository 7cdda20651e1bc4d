"""RTP wire format.

- RFC 3550 §5.1: the fixed header, the CSRC list, §5.3.1 the header extension, §5.1 padding.
- RFC 8285: one-byte (0xBEDE) and two-byte (0x100X) header extension elements.
- RFC 6464: the client-to-mixer audio level element.
- RFC 5761 §4: telling RTCP apart from RTP on a shared port.
- RFC 4733 §2.3: the telephone-event payload.

Parsing is strict about framing: a packet whose fixed header, CSRC list, extension block or
padding does not fit in the datagram raises ``ValueError`` with an exact message.  Inside a
well-framed extension block parsing is lenient, as RFC 8285 §4.1.2 asks: the walk stops at the
end of the block, at a one-byte ID of 15, at a one-byte ID of 0 with a non-zero length, or at an
element that overruns the block, and the elements read so far are kept.  The walk also stops after
:data:`MAX_EXTENSION_ITEMS` items (elements or padding octets), which bounds the work for the
vectorised parser in :mod:`bridge.rtpcolumns`; the two parsers apply exactly the same rules.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
CSRC_LENGTH = 4
MAX_CSRC_COUNT = 15
MAX_PAYLOAD_TYPE = 127
MAX_PADDING_SIZE = 255
EXTENSION_HEADER_LENGTH = 4
EXTENSION_WORD_LENGTH = 4

# RFC 5761 §4: a second octet in 192..223 is an RTCP packet type (RTP M=1 with PT 64..95).
RTCP_PACKET_TYPE_MIN = 192
RTCP_PACKET_TYPE_MAX = 223

# RFC 8285 §4.2 (one-byte form) and §4.3 (two-byte form).
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000
TWO_BYTE_PROFILE_MASK = 0xFFF0
ONE_BYTE_HEADER_LENGTH = 1
TWO_BYTE_HEADER_LENGTH = 2
ONE_BYTE_ID_TERMINATE = 15
ONE_BYTE_MAX_ID = 14
ONE_BYTE_MAX_LENGTH = 16
TWO_BYTE_MAX_ID = 255
TWO_BYTE_MAX_LENGTH = 255
EXTENSION_PADDING = 0
# Items (elements or padding octets) read from one extension block; the rest is ignored.
MAX_EXTENSION_ITEMS = 16

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
DEFAULT_AUDIO_LEVEL_ID = 1
DEFAULT_EXTENSION_MAP: Mapping[int, str] = MappingProxyType(
    {DEFAULT_AUDIO_LEVEL_ID: AUDIO_LEVEL_URI}
)

# RFC 6464 §3: one octet, V flag then the level in -dBov.
AUDIO_LEVEL_LENGTH = 1
AUDIO_LEVEL_VAD_FLAG = 0x80
AUDIO_LEVEL_MASK = 0x7F
MAX_AUDIO_LEVEL = 127
ABS_SEND_TIME_LENGTH = 3
MAX_ABS_SEND_TIME = 0xFFFFFF

_FIXED_HEADER = struct.Struct("!BBHLL")
_EXTENSION_HEADER = struct.Struct("!HH")
_VERSION_SHIFT = 6
_PADDING_FLAG = 0x20
_EXTENSION_FLAG = 0x10
_CSRC_COUNT_MASK = 0x0F
_MARKER_FLAG = 0x80
_PAYLOAD_TYPE_MASK = 0x7F
_NIBBLE_SHIFT = 4
_NIBBLE_MASK = 0x0F


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram received on an RTP port is RTCP (RFC 5761 §4).

    The second octet of an RTCP packet is its packet type; on a shared port RTP payload types
    64..95 with the marker set are never used, so 192..223 there means RTCP.
    """
    return (
        len(data) >= 2
        and data[0] >> _VERSION_SHIFT == RTP_VERSION
        and RTCP_PACKET_TYPE_MIN <= data[1] <= RTCP_PACKET_TYPE_MAX
    )


def unpack_header_extensions(profile: int, data: bytes) -> list[tuple[int, bytes]]:
    """Split an RFC 8285 extension block into ``(id, value)`` elements.

    Unknown profiles (RFC 3550 §5.3.1 extensions that are not RFC 8285) give no elements.  The
    walk is lenient (RFC 8285 §4.1.2, §4.2): it ends at the end of the block, at one-byte ID 15,
    at one-byte ID 0 with a non-zero length, at an element that overruns the block, or after
    :data:`MAX_EXTENSION_ITEMS` items; padding octets are skipped.
    """
    two_byte = (profile & TWO_BYTE_PROFILE_MASK) == TWO_BYTE_PROFILE
    if profile != ONE_BYTE_PROFILE and not two_byte:
        return []
    elements: list[tuple[int, bytes]] = []
    end = len(data)
    pos = 0
    for _ in range(MAX_EXTENSION_ITEMS):
        if pos >= end:
            break
        first = data[pos]
        if first == EXTENSION_PADDING:
            pos += 1
            continue
        if two_byte:
            if pos + TWO_BYTE_HEADER_LENGTH > end:
                break
            x_id, x_length = first, data[pos + 1]
            pos += TWO_BYTE_HEADER_LENGTH
        else:
            x_id = first >> _NIBBLE_SHIFT
            if x_id in (EXTENSION_PADDING, ONE_BYTE_ID_TERMINATE):
                break
            x_length = (first & _NIBBLE_MASK) + 1
            pos += ONE_BYTE_HEADER_LENGTH
        if pos + x_length > end:
            break
        elements.append((x_id, data[pos : pos + x_length]))
        pos += x_length
    return elements


def pack_header_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """Serialise elements in the RFC 8285 §4.2 one-byte form, padded to 32 bits.

    Returns the block without its 4-octet profile/length header.
    """
    data = bytearray()
    for x_id, x_value in elements:
        if not 1 <= x_id <= ONE_BYTE_MAX_ID:
            raise ValueError("RTP one-byte header extension id is out of range")
        if not 1 <= len(x_value) <= ONE_BYTE_MAX_LENGTH:
            raise ValueError("RTP one-byte header extension value length is out of range")
        data.append((x_id << _NIBBLE_SHIFT) | (len(x_value) - 1))
        data += x_value
    data += bytes(-len(data) % EXTENSION_WORD_LENGTH)
    return bytes(data)


@dataclass
class HeaderExtensions:
    """The header extension values ucbridge understands.

    ``audio_level`` is RFC 6464's ``(voice activity, level)`` with the level in -dBov, 0..127;
    ``abs_send_time`` is the 24-bit 6.18 fixed-point send time; ``mid`` is RFC 8843's MID.
    Elements with other IDs, or of the wrong length, are ignored; when an ID repeats, the first
    well-formed element wins.
    """

    audio_level: tuple[bool, int] | None = None
    abs_send_time: int | None = None
    mid: str | None = None

    @classmethod
    def parse(
        cls, profile: int, data: bytes, extension_map: Mapping[int, str] | None = None
    ) -> HeaderExtensions:
        """Decode an extension block; ``extension_map`` maps negotiated IDs to URIs."""
        ids = DEFAULT_EXTENSION_MAP if extension_map is None else extension_map
        values = cls()
        for x_id, x_value in unpack_header_extensions(profile, data):
            uri = ids.get(x_id)
            if uri == AUDIO_LEVEL_URI:
                if values.audio_level is None and len(x_value) == AUDIO_LEVEL_LENGTH:
                    octet = x_value[0]
                    values.audio_level = (
                        bool(octet & AUDIO_LEVEL_VAD_FLAG),
                        octet & AUDIO_LEVEL_MASK,
                    )
            elif uri == ABS_SEND_TIME_URI:
                if values.abs_send_time is None and len(x_value) == ABS_SEND_TIME_LENGTH:
                    values.abs_send_time = int.from_bytes(x_value, "big")
            elif uri == MID_URI and values.mid is None:
                with contextlib.suppress(UnicodeDecodeError):
                    values.mid = x_value.decode("utf-8")
        return values

    def serialize(self, extension_map: Mapping[int, str] | None = None) -> bytes:
        """Encode the values that are set as a one-byte extension block (RFC 8285 §4.2)."""
        ids = DEFAULT_EXTENSION_MAP if extension_map is None else extension_map
        by_uri = {uri: x_id for x_id, uri in ids.items()}
        values: list[tuple[str, bytes]] = []
        if self.audio_level is not None:
            voice, level = self.audio_level
            if not 0 <= level <= MAX_AUDIO_LEVEL:
                raise ValueError("RTP audio level is out of range")
            values.append(
                (AUDIO_LEVEL_URI, bytes([(AUDIO_LEVEL_VAD_FLAG if voice else 0) | level]))
            )
        if self.abs_send_time is not None:
            if not 0 <= self.abs_send_time <= MAX_ABS_SEND_TIME:
                raise ValueError("RTP abs-send-time is out of range")
            values.append((ABS_SEND_TIME_URI, self.abs_send_time.to_bytes(3, "big")))
        if self.mid is not None:
            values.append((MID_URI, self.mid.encode("utf-8")))
        elements: list[tuple[int, bytes]] = []
        for uri, value in values:
            if uri not in by_uri:
                raise ValueError(f"RTP header extension {uri} has no id")
            elements.append((by_uri[uri], value))
        return pack_header_extensions(elements)


@dataclass
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    ``padding_size`` counts the padding octets including the final count octet; serialising
    writes zero-valued padding.
    """

    version: ClassVar[int] = RTP_VERSION

    payload_type: int = 0
    marker: bool = False
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrc: list[int] = field(default_factory=list)
    extensions: HeaderExtensions = field(default_factory=HeaderExtensions)
    padding_size: int = 0
    payload: bytes = b""

    @classmethod
    def parse(cls, data: bytes, extension_map: Mapping[int, str] | None = None) -> RtpPacket:
        """Parse one datagram; ``extension_map`` maps negotiated extension IDs to URIs.

        The checks run in this order, and :func:`bridge.rtpcolumns.parse_rtp_columns` reports
        the same first failure as a ``DropReason``.
        """
        if is_rtcp(data):
            raise ValueError("RTP packet has RTCP packet type")
        if len(data) < RTP_HEADER_LENGTH:
            raise ValueError(f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes")
        first, second, sequence_number, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
        if first >> _VERSION_SHIFT != RTP_VERSION:
            raise ValueError("RTP packet has invalid version")

        csrc_count = first & _CSRC_COUNT_MASK
        pos = RTP_HEADER_LENGTH + CSRC_LENGTH * csrc_count
        if len(data) < pos:
            raise ValueError("RTP packet has truncated CSRC")
        csrc = list(struct.unpack_from(f"!{csrc_count}L", data, RTP_HEADER_LENGTH))

        extensions = HeaderExtensions()
        if first & _EXTENSION_FLAG:
            if len(data) < pos + EXTENSION_HEADER_LENGTH:
                raise ValueError("RTP packet has truncated extension")
            profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            pos += EXTENSION_HEADER_LENGTH
            end = pos + EXTENSION_WORD_LENGTH * words
            if len(data) < end:
                raise ValueError("RTP packet has truncated extension")
            extensions = HeaderExtensions.parse(profile, bytes(data[pos:end]), extension_map)
            pos = end

        padding_size = 0
        if first & _PADDING_FLAG:
            padding_size = data[-1]
            if padding_size == 0 or padding_size > len(data) - pos:
                raise ValueError("RTP packet padding length is invalid")

        return cls(
            payload_type=second & _PAYLOAD_TYPE_MASK,
            marker=bool(second & _MARKER_FLAG),
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc=csrc,
            extensions=extensions,
            padding_size=padding_size,
            payload=bytes(data[pos : len(data) - padding_size]),
        )

    def serialize(self, extension_map: Mapping[int, str] | None = None) -> bytes:
        """Encode the packet; extensions use the one-byte form with IDs from ``extension_map``."""
        if not 0 <= self.payload_type <= MAX_PAYLOAD_TYPE:
            raise ValueError("RTP payload type is out of range")
        if len(self.csrc) > MAX_CSRC_COUNT:
            raise ValueError("RTP packet has too many CSRC")
        if not 0 <= self.padding_size <= MAX_PADDING_SIZE:
            raise ValueError("RTP packet padding length is out of range")
        extension = self.extensions.serialize(extension_map)
        first = (
            (RTP_VERSION << _VERSION_SHIFT)
            | (_PADDING_FLAG if self.padding_size else 0)
            | (_EXTENSION_FLAG if extension else 0)
            | len(self.csrc)
        )
        second = (_MARKER_FLAG if self.marker else 0) | self.payload_type
        data = bytearray(
            _FIXED_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)
        )
        for csrc in self.csrc:
            data += struct.pack("!L", csrc)
        if extension:
            data += _EXTENSION_HEADER.pack(
                ONE_BYTE_PROFILE, len(extension) // EXTENSION_WORD_LENGTH
            )
            data += extension
        data += self.payload
        if self.padding_size:
            data += bytes(self.padding_size - 1)
            data.append(self.padding_size)
        return bytes(data)

    def __bytes__(self) -> bytes:
        return self.serialize()


@dataclass
class TelephoneEvent:
    """One RFC 4733 §2.3 telephone-event block.

    ``event`` is the event code (0-15 are the DTMF digits, §3.2), ``end`` the E bit, ``volume``
    the power in -dBm0 (0..63) and ``duration`` the event's length so far in timestamp units.
    The R bit is ignored on receipt and sent as zero (§2.3.3).
    """

    LENGTH: ClassVar[int] = 4
    MAX_VOLUME: ClassVar[int] = 63
    MAX_DURATION: ClassVar[int] = 0xFFFF
    MAX_EVENT: ClassVar[int] = 255

    event: int
    end: bool = False
    volume: int = 0
    duration: int = 0

    _STRUCT: ClassVar[struct.Struct] = struct.Struct("!BBH")
    _END_FLAG: ClassVar[int] = 0x80
    _VOLUME_MASK: ClassVar[int] = 0x3F

    @classmethod
    def parse(cls, data: bytes) -> TelephoneEvent:
        """Parse the first block of a telephone-event payload.

        A payload may pack several 4-octet blocks (RFC 4733 §2.5.1.5); only the first is read.
        """
        if len(data) < cls.LENGTH:
            raise ValueError(f"Telephone event payload length is less than {cls.LENGTH} bytes")
        if len(data) % cls.LENGTH:
            raise ValueError(
                f"Telephone event payload length is not a multiple of {cls.LENGTH} bytes"
            )
        event, flags, duration = cls._STRUCT.unpack_from(data)
        return cls(
            event=event,
            end=bool(flags & cls._END_FLAG),
            volume=flags & cls._VOLUME_MASK,
            duration=duration,
        )

    def __bytes__(self) -> bytes:
        if not 0 <= self.event <= self.MAX_EVENT:
            raise ValueError("Telephone event code is out of range")
        if not 0 <= self.volume <= self.MAX_VOLUME:
            raise ValueError("Telephone event volume is out of range")
        if not 0 <= self.duration <= self.MAX_DURATION:
            raise ValueError("Telephone event duration is out of range")
        flags = (self._END_FLAG if self.end else 0) | self.volume
        return self._STRUCT.pack(self.event, flags, self.duration)
