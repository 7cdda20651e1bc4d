"""MCPTT floor-control messages: the "MCPT" wire format of 3GPP TS 24.380 clause 8.

Each floor-control message is one RTCP APP packet (RFC 3550 §6.7, TS 24.380 §8.1.2) named
"MCPT", whose 5-bit subtype is the message type (table 8.2.2-1).  The leading subtype bit asks
the receiver for a Floor Ack; only Floor Granted, Taken, Deny, Release, Idle and Queue Position
Info may set it.

The packets are not compound RTCP (§8.1.1): one datagram may carry several of them, and
:func:`parse_datagram` only splits it by the length fields.  The application data is a run of
floor-control fields (§8.2.3.1): an 8-bit field ID, a length (8 bits, or 16 bits for IDs of
192 and above), the value, and padding to a 32-bit boundary.  Fields are table-driven: each
message class lists the fields it carries (``_layout``), and ``_CODECS`` holds one value coding
per field ID.  On parse, the early Release 13 IDs 102 to 116 are read as the fields they became;
they are never sent.  Fields a message does not use, unknown IDs and repeats are skipped and kept
in the message's ``unknown`` list for diagnostics; they are never sent again.  The
multi-talker List of SSRCs and List of Functional Aliases (§8.2.3.18, §8.2.3.20) and the List
of Locations are kept there too: this bridge grants one talker at a time.

One dataclass per message (§8.2.4) has ``__bytes__`` and a ``parse`` classmethod.  Mandatory
fields are enforced on parse and on build, with exact ``ValueError`` messages.  Which floor
control state the messages drive is not this module's business: the floor server lives in the
core, and the gateway turns these messages into its calls.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Self

# The message types, causes and Floor Indicator are the core's (TS 24.380 clause 8 values).
from bridge.floor import DenyCause as DenyCause
from bridge.floor import FloorIndicator as FloorIndicator
from bridge.floor import FloorMessageType as FloorMessageType
from bridge.floor import RevokeCause as RevokeCause
from bridge.rtcp import RtcpAppPacket, parse_rtcp

APP_NAME = "MCPT"

# TS 24.380 table 8.2.2-1: the subtype's leading bit asks for a Floor Ack.
ACK_REQUESTED = 0x10
MESSAGE_TYPE_MASK = 0x0F
MAX_SUBTYPE = 0x1F

# TS 24.380 §8.2.3.1: field header, long lengths and 32-bit alignment.
FIELD_ALIGNMENT = 4
SHORT_HEADER_LENGTH = 2
LONG_HEADER_LENGTH = 3
LONG_LENGTH_FIELD_ID = 192
MAX_FIELD_ID = 255
MAX_SHORT_LENGTH = 0xFF
MAX_LONG_LENGTH = 0xFFFF

UINT8_MAX = 0xFF
UINT16_MAX = 0xFFFF
UINT32_MAX = 0xFFFF_FFFF
SPARE = 0

# TS 24.380 §8.2.3.5: special queue positions.
QUEUE_POSITION_NOT_QUEUED = 254
QUEUE_POSITION_UNKNOWN = 255

_OCTET_SPARE = struct.Struct("!BB")
_UINT16 = struct.Struct("!H")
_SSRC_SPARE = struct.Struct("!LH")
_UINT32 = struct.Struct("!L")
_LONG_HEADER = struct.Struct("!BH")
_TRACK_INFO_HEADER = struct.Struct("!BB")


#: Message types whose subtype may carry the ack-request bit (TS 24.380 table 8.2.2-1).
ACK_CAPABLE_TYPES = frozenset(
    {
        FloorMessageType.GRANTED,
        FloorMessageType.TAKEN,
        FloorMessageType.DENY,
        FloorMessageType.RELEASE,
        FloorMessageType.IDLE,
        FloorMessageType.QUEUE_POSITION_INFO,
    }
)


class FieldId(IntEnum):
    """Floor-control specific field IDs (TS 24.380 table 8.2.3.1-2)."""

    FLOOR_PRIORITY = 0
    DURATION = 1
    REJECT_CAUSE = 2
    QUEUE_INFO = 3
    GRANTED_PARTYS_IDENTITY = 4
    PERMISSION_TO_REQUEST_THE_FLOOR = 5
    USER_ID = 6
    QUEUE_SIZE = 7
    MESSAGE_SEQUENCE_NUMBER = 8
    QUEUED_USER_ID = 9
    SOURCE = 10
    TRACK_INFO = 11
    MESSAGE_TYPE = 12
    FLOOR_INDICATOR = 13
    SSRC = 14
    LIST_OF_GRANTED_USERS = 15
    LIST_OF_SSRCS = 16
    FUNCTIONAL_ALIAS = 17
    LIST_OF_FUNCTIONAL_ALIASES = 18
    LOCATION = 19
    LIST_OF_LOCATIONS = 20


#: Field names as the clause spells them, for error messages.
FIELD_NAMES: dict[FieldId, str] = {
    FieldId.FLOOR_PRIORITY: "Floor Priority",
    FieldId.DURATION: "Duration",
    FieldId.REJECT_CAUSE: "Reject Cause",
    FieldId.QUEUE_INFO: "Queue Info",
    FieldId.GRANTED_PARTYS_IDENTITY: "Granted Party's Identity",
    FieldId.PERMISSION_TO_REQUEST_THE_FLOOR: "Permission to Request the Floor",
    FieldId.USER_ID: "User ID",
    FieldId.QUEUE_SIZE: "Queue Size",
    FieldId.MESSAGE_SEQUENCE_NUMBER: "Message Sequence Number",
    FieldId.QUEUED_USER_ID: "Queued User ID",
    FieldId.SOURCE: "Source",
    FieldId.TRACK_INFO: "Track Info",
    FieldId.MESSAGE_TYPE: "Message Type",
    FieldId.FLOOR_INDICATOR: "Floor Indicator",
    FieldId.SSRC: "SSRC",
    FieldId.LIST_OF_GRANTED_USERS: "List of Granted Users",
    FieldId.LIST_OF_SSRCS: "List of SSRCs",
    FieldId.FUNCTIONAL_ALIAS: "Functional Alias",
    FieldId.LIST_OF_FUNCTIONAL_ALIASES: "List of Functional Aliases",
    FieldId.LOCATION: "Location",
    FieldId.LIST_OF_LOCATIONS: "List of Locations",
}

#: The field IDs of early Release 13 versions of TS 24.380 (102 to 116; 107 was never used),
#: still sent by some clients.  They are read as the fields they became and never sent.
EARLY_FIELD_IDS: dict[int, FieldId] = {
    102: FieldId.FLOOR_PRIORITY,
    103: FieldId.DURATION,
    104: FieldId.REJECT_CAUSE,
    105: FieldId.QUEUE_INFO,
    106: FieldId.GRANTED_PARTYS_IDENTITY,
    108: FieldId.PERMISSION_TO_REQUEST_THE_FLOOR,
    109: FieldId.USER_ID,
    110: FieldId.QUEUE_SIZE,
    111: FieldId.MESSAGE_SEQUENCE_NUMBER,
    112: FieldId.QUEUED_USER_ID,
    113: FieldId.SOURCE,
    114: FieldId.TRACK_INFO,
    115: FieldId.MESSAGE_TYPE,
    116: FieldId.FLOOR_INDICATOR,
}
EARLY_FIELD_ID_MIN = 102
EARLY_FIELD_ID_MAX = 116


class FloorSource(IntEnum):
    """<Source> values: who sent a Floor Ack (TS 24.380 §8.2.3.12)."""

    FLOOR_PARTICIPANT = 0
    PARTICIPATING_FUNCTION = 1
    CONTROLLING_FUNCTION = 2
    NON_CONTROLLING_FUNCTION = 3


class QueueingCapability(IntEnum):
    """<Queueing Capability> values of the Track Info field (TS 24.380 §8.2.3.13)."""

    NOT_SUPPORTED = 0
    SUPPORTED = 1


class LocationType(IntEnum):
    """<Location Type> values of the Location field (TS 24.380 §8.2.3.21)."""

    NOT_PROVIDED = 0
    ECGI = 1
    TRACKING_AREA = 2
    PLMN_ID = 3
    MBMS_SERVICE_AREA = 4
    MBSFN_AREA_ID = 5
    GEOGRAPHIC_COORDINATES = 6


#: Value length of each location type (TS 24.380 §8.2.3.21).
LOCATION_VALUE_LENGTHS: dict[int, int] = {
    LocationType.NOT_PROVIDED: 0,
    LocationType.ECGI: 7,
    LocationType.TRACKING_AREA: 5,
    LocationType.PLMN_ID: 3,
    LocationType.MBMS_SERVICE_AREA: 2,
    LocationType.MBSFN_AREA_ID: 1,
    LocationType.GEOGRAPHIC_COORDINATES: 6,
}


def _known(enum: type[IntEnum], value: int) -> int:
    """``value`` as a member of ``enum`` when it names one, else the bare number."""
    try:
        return enum(value)
    except ValueError:
        return value


def _check_uint(value: int, maximum: int, what: str) -> int:
    if not 0 <= value <= maximum:
        raise ValueError(f"MCPT {what} is out of range")
    return value


def _pad_length(length: int) -> int:
    return -length % FIELD_ALIGNMENT


# ---------------------------------------------------------------------------------------------
# Field values with structure (TS 24.380 §8.2.3).


@dataclass
class RejectCause:
    """The Reject Cause field: a 16-bit cause and an optional phrase (TS 24.380 §8.2.3.4).

    ``cause`` is a :class:`DenyCause` or :class:`RevokeCause` when it names one.
    """

    cause: int
    phrase: str | None = None


@dataclass
class QueueInfo:
    """The Queue Info field: queue position and queued priority (TS 24.380 §8.2.3.5).

    ``position`` is :data:`QUEUE_POSITION_NOT_QUEUED` or :data:`QUEUE_POSITION_UNKNOWN` when
    the server cannot or will not tell.
    """

    position: int
    priority: int


@dataclass
class TrackInfo:
    """The Track Info field of a non-controlling function's path (TS 24.380 §8.2.3.13).

    The <Participant Type> value is padded to a 32-bit boundary before the 32-bit floor
    participant references; a multiple of four octets takes no padding.
    """

    queueing_capability: int = QueueingCapability.NOT_SUPPORTED
    participant_type: bytes = b""
    references: list[int] = field(default_factory=list)


@dataclass
class Location:
    """The Location field: a location type and its value (TS 24.380 §8.2.3.21)."""

    location_type: int = LocationType.NOT_PROVIDED
    value: bytes = b""


@dataclass
class RawField:
    """One floor-control field as it travels (TS 24.380 §8.2.3.1): ID and raw value.

    IDs of 192 and above take a 16-bit length; the field is padded to 32 bits.  Early
    Release 13 IDs are refused on build: they are accepted, never sent.
    """

    field_id: int
    value: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RawField:
        """Parse data that holds exactly one field, padding included."""
        fields = parse_fields(data)
        if len(fields) != 1:
            raise ValueError("MCPT data does not hold exactly one field")
        return fields[0]

    def __bytes__(self) -> bytes:
        if not 0 <= self.field_id <= MAX_FIELD_ID:
            raise ValueError("MCPT field ID is out of range")
        if self.field_id in EARLY_FIELD_IDS:
            raise ValueError(f"MCPT field ID {self.field_id} is an early Release 13 ID")
        if self.field_id >= LONG_LENGTH_FIELD_ID:
            if len(self.value) > MAX_LONG_LENGTH:
                raise ValueError("MCPT field value is too long")
            header = _LONG_HEADER.pack(self.field_id, len(self.value))
        else:
            if len(self.value) > MAX_SHORT_LENGTH:
                raise ValueError("MCPT field value is too long")
            header = bytes([self.field_id, len(self.value)])
        data = header + self.value
        return data + bytes(_pad_length(len(data)))


def parse_fields(data: bytes) -> list[RawField]:
    """Split APP data into floor-control fields (TS 24.380 §8.2.3.1).

    A last field whose padding was stripped (the packet's P bit) is still read.
    """
    fields = []
    pos = 0
    while pos < len(data):
        field_id = data[pos]
        header = LONG_HEADER_LENGTH if field_id >= LONG_LENGTH_FIELD_ID else SHORT_HEADER_LENGTH
        if len(data) < pos + header:
            raise ValueError("MCPT field header is truncated")
        if header == LONG_HEADER_LENGTH:
            _, length = _LONG_HEADER.unpack_from(data, pos)
        else:
            length = data[pos + 1]
        start = pos + header
        end = start + length
        if len(data) < end:
            raise ValueError("MCPT field value is truncated")
        fields.append(RawField(field_id, bytes(data[start:end])))
        pos = end + _pad_length(header + length)
    return fields


# ---------------------------------------------------------------------------------------------
# Value codings, one per field ID (TS 24.380 §8.2.3.2 to §8.2.3.21).


def _check_length(value: bytes, length: int, name: str) -> None:
    if len(value) != length:
        raise ValueError(f"MCPT {name} field length is invalid")


def _decode_text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"MCPT {name} is not valid UTF-8") from None


def _encode_text(text: str, name: str) -> bytes:
    return text.encode("utf-8")


def _decode_octet(value: bytes, name: str) -> int:
    """An 8-bit value and a spare octet (Floor Priority §8.2.3.2, Message Type §8.2.3.14)."""
    _check_length(value, _OCTET_SPARE.size, name)
    return value[0]


def _encode_octet(number: int, name: str) -> bytes:
    return _OCTET_SPARE.pack(_check_uint(number, UINT8_MAX, name), SPARE)


def _decode_uint16(value: bytes, name: str) -> int:
    _check_length(value, _UINT16.size, name)
    number: int = _UINT16.unpack(value)[0]
    return number


def _encode_uint16(number: int, name: str) -> bytes:
    return _UINT16.pack(_check_uint(number, UINT16_MAX, name))


def _decode_permission(value: bytes, name: str) -> bool:
    """Permission to Request the Floor: 0 not permitted, 1 permitted (§8.2.3.7)."""
    number = _decode_uint16(value, name)
    if number > 1:
        raise ValueError(f"MCPT {name} value is invalid")
    return bool(number)


def _encode_permission(permitted: bool, name: str) -> bytes:
    return _UINT16.pack(int(permitted))


def _decode_source(value: bytes, name: str) -> int:
    return _known(FloorSource, _decode_uint16(value, name))


def _decode_indicator(value: bytes, name: str) -> FloorIndicator:
    return FloorIndicator(_decode_uint16(value, name))


def _decode_message_type(value: bytes, name: str) -> int:
    """The acknowledged message's full 5-bit subtype, ack bit included (§8.2.3.14)."""
    number = _decode_octet(value, name)
    if number > MAX_SUBTYPE:
        raise ValueError(f"MCPT {name} is out of range")
    return number


def _encode_message_type(subtype: int, name: str) -> bytes:
    return _OCTET_SPARE.pack(_check_uint(subtype, MAX_SUBTYPE, name), SPARE)


def _decode_ssrc(value: bytes, name: str) -> int:
    """A 32-bit SSRC and a 16-bit spare (§8.2.3.16)."""
    _check_length(value, _SSRC_SPARE.size, name)
    ssrc: int = _SSRC_SPARE.unpack(value)[0]
    return ssrc


def _encode_ssrc(ssrc: int, name: str) -> bytes:
    return _SSRC_SPARE.pack(_check_uint(ssrc, UINT32_MAX, name), SPARE)


def _decode_reject_cause(value: bytes, name: str) -> RejectCause:
    if len(value) < _UINT16.size:
        raise ValueError(f"MCPT {name} field length is invalid")
    (cause,) = _UINT16.unpack_from(value)
    phrase = _decode_text(value[_UINT16.size :], name) if len(value) > _UINT16.size else None
    return RejectCause(cause=cause, phrase=phrase)


def _encode_reject_cause(reject: RejectCause, name: str) -> bytes:
    data = _encode_uint16(reject.cause, name)
    return data + (reject.phrase.encode("utf-8") if reject.phrase else b"")


def _decode_queue_info(value: bytes, name: str) -> QueueInfo:
    _check_length(value, _OCTET_SPARE.size, name)
    return QueueInfo(position=value[0], priority=value[1])


def _encode_queue_info(info: QueueInfo, name: str) -> bytes:
    return bytes(
        [
            _check_uint(info.position, UINT8_MAX, f"{name} position"),
            _check_uint(info.priority, UINT8_MAX, f"{name} priority"),
        ]
    )


def _decode_track_info(value: bytes, name: str) -> TrackInfo:
    if len(value) < _TRACK_INFO_HEADER.size:
        raise ValueError(f"MCPT {name} field length is invalid")
    capability, type_length = _TRACK_INFO_HEADER.unpack_from(value)
    type_end = _TRACK_INFO_HEADER.size + type_length
    references_start = type_end + _pad_length(type_length)
    if len(value) < references_start or (len(value) - references_start) % _UINT32.size:
        raise ValueError(f"MCPT {name} field length is invalid")
    count = (len(value) - references_start) // _UINT32.size
    return TrackInfo(
        queueing_capability=_known(QueueingCapability, capability),
        participant_type=value[_TRACK_INFO_HEADER.size : type_end],
        references=list(struct.unpack_from(f"!{count}L", value, references_start)),
    )


def _encode_track_info(info: TrackInfo, name: str) -> bytes:
    if len(info.participant_type) > UINT8_MAX:
        raise ValueError(f"MCPT {name} participant type is too long")
    data = _TRACK_INFO_HEADER.pack(
        _check_uint(info.queueing_capability, UINT8_MAX, f"{name} queueing capability"),
        len(info.participant_type),
    )
    data += info.participant_type + bytes(_pad_length(len(info.participant_type)))
    return data + b"".join(
        _UINT32.pack(_check_uint(reference, UINT32_MAX, f"{name} reference"))
        for reference in info.references
    )


def _decode_user_list(value: bytes, name: str) -> list[str]:
    """A count, then length-prefixed MCPTT IDs (List of Granted Users, §8.2.3.17)."""
    if not value:
        raise ValueError(f"MCPT {name} field length is invalid")
    users = []
    pos = 1
    for _ in range(value[0]):
        if pos >= len(value) or len(value) < pos + 1 + value[pos]:
            raise ValueError(f"MCPT {name} field length is invalid")
        users.append(_decode_text(value[pos + 1 : pos + 1 + value[pos]], name))
        pos += 1 + value[pos]
    if pos != len(value):
        raise ValueError(f"MCPT {name} field length is invalid")
    return users


def _encode_user_list(users: Sequence[str], name: str) -> bytes:
    data = bytes([_check_uint(len(users), UINT8_MAX, f"{name} count")])
    for user in users:
        encoded = user.encode("utf-8")
        data += bytes([_check_uint(len(encoded), UINT8_MAX, f"{name} entry length")]) + encoded
    return data


def _decode_location(value: bytes, name: str) -> Location:
    if not value:
        raise ValueError(f"MCPT {name} field length is invalid")
    expected = LOCATION_VALUE_LENGTHS.get(value[0])
    if expected is not None:
        _check_length(value[1:], expected, name)
    return Location(location_type=_known(LocationType, value[0]), value=value[1:])


def _encode_location(location: Location, name: str) -> bytes:
    expected = LOCATION_VALUE_LENGTHS.get(location.location_type)
    if expected is not None and len(location.value) != expected:
        raise ValueError(f"MCPT {name} value length is invalid")
    return bytes([_check_uint(location.location_type, UINT8_MAX, f"{name} type")]) + location.value


@dataclass(frozen=True)
class _Codec:
    """How one field's value is read and written; ``name`` goes into error messages."""

    decode: Callable[[bytes, str], Any]
    encode: Callable[[Any, str], bytes]


_CODECS: dict[FieldId, _Codec] = {
    FieldId.FLOOR_PRIORITY: _Codec(_decode_octet, _encode_octet),
    FieldId.DURATION: _Codec(_decode_uint16, _encode_uint16),
    FieldId.REJECT_CAUSE: _Codec(_decode_reject_cause, _encode_reject_cause),
    FieldId.QUEUE_INFO: _Codec(_decode_queue_info, _encode_queue_info),
    FieldId.GRANTED_PARTYS_IDENTITY: _Codec(_decode_text, _encode_text),
    FieldId.PERMISSION_TO_REQUEST_THE_FLOOR: _Codec(_decode_permission, _encode_permission),
    FieldId.USER_ID: _Codec(_decode_text, _encode_text),
    FieldId.QUEUE_SIZE: _Codec(_decode_uint16, _encode_uint16),
    FieldId.MESSAGE_SEQUENCE_NUMBER: _Codec(_decode_uint16, _encode_uint16),
    FieldId.QUEUED_USER_ID: _Codec(_decode_text, _encode_text),
    FieldId.SOURCE: _Codec(_decode_source, _encode_uint16),
    FieldId.TRACK_INFO: _Codec(_decode_track_info, _encode_track_info),
    FieldId.MESSAGE_TYPE: _Codec(_decode_message_type, _encode_message_type),
    FieldId.FLOOR_INDICATOR: _Codec(_decode_indicator, _encode_uint16),
    FieldId.SSRC: _Codec(_decode_ssrc, _encode_ssrc),
    FieldId.LIST_OF_GRANTED_USERS: _Codec(_decode_user_list, _encode_user_list),
    FieldId.FUNCTIONAL_ALIAS: _Codec(_decode_text, _encode_text),
    FieldId.LOCATION: _Codec(_decode_location, _encode_location),
}


@dataclass(frozen=True)
class _Slot:
    """One field a message carries: its attribute, its field ID and whether it is mandatory."""

    attribute: str
    field_id: FieldId
    mandatory: bool = False


# ---------------------------------------------------------------------------------------------
# Messages (TS 24.380 §8.2.4).


@dataclass(kw_only=True)
class FloorMessage:
    """The base of every floor-control message (TS 24.380 §8.1.2, §8.2.2).

    ``ssrc`` is the sender's SSRC; ``ack_requested`` sets the subtype's leading bit, which only
    :data:`ACK_CAPABLE_TYPES` may carry; ``unknown`` holds the fields skipped on parse.
    """

    message_type: ClassVar[FloorMessageType]
    name: ClassVar[str]
    _layout: ClassVar[tuple[_Slot, ...]]

    ssrc: int
    ack_requested: bool = False
    unknown: list[RawField] = field(default_factory=list)

    @property
    def subtype(self) -> int:
        """The 5-bit subtype on the wire, ack-request bit included."""
        return self.message_type | (ACK_REQUESTED if self.ack_requested else 0)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a datagram that holds exactly one message of this type."""
        messages = parse_datagram(data)
        if len(messages) != 1:
            raise ValueError("MCPT datagram holds more than one packet")
        message = messages[0]
        if not isinstance(message, cls):
            raise ValueError(f"MCPT packet is not a {cls.name}")
        return message

    @classmethod
    def _from_fields(cls, ssrc: int, ack_requested: bool, fields: list[RawField]) -> Self:
        slots: dict[int, _Slot] = {slot.field_id: slot for slot in cls._layout}
        values: dict[str, Any] = {}
        unknown = []
        for raw in fields:
            field_id = EARLY_FIELD_IDS.get(raw.field_id, raw.field_id)
            slot = slots.get(field_id)
            if slot is None or slot.attribute in values:
                unknown.append(raw)
                continue
            name = FIELD_NAMES[slot.field_id]
            values[slot.attribute] = _CODECS[slot.field_id].decode(raw.value, name)
        for slot in cls._layout:
            if slot.mandatory and slot.attribute not in values:
                raise ValueError(
                    f"MCPT {cls.name} is missing the {FIELD_NAMES[slot.field_id]} field"
                )
        return cls(ssrc=ssrc, ack_requested=ack_requested, unknown=unknown, **values)

    def __bytes__(self) -> bytes:
        if self.ack_requested and self.message_type not in ACK_CAPABLE_TYPES:
            raise ValueError(f"MCPT {self.name} cannot request an ack")
        _check_uint(self.ssrc, UINT32_MAX, "SSRC")
        data = b""
        for slot in self._layout:
            value = getattr(self, slot.attribute)
            name = FIELD_NAMES[slot.field_id]
            if value is None:
                if slot.mandatory:
                    raise ValueError(f"MCPT {self.name} is missing the {name} field")
                continue
            data += bytes(RawField(slot.field_id, _CODECS[slot.field_id].encode(value, name)))
        return bytes(RtcpAppPacket(subtype=self.subtype, ssrc=self.ssrc, name=APP_NAME, data=data))


@dataclass(kw_only=True)
class FloorRequest(FloorMessage):
    """Floor Request, participant to server: asks for permission to send media (§8.2.4).

    ``floor_priority`` is only sent when the participant wants other than its default
    priority; ``user_id`` is used off-network and by the non-controlling function.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.REQUEST
    name: ClassVar[str] = "Floor Request"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("floor_priority", FieldId.FLOOR_PRIORITY),
        _Slot("user_id", FieldId.USER_ID),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
        _Slot("functional_alias", FieldId.FUNCTIONAL_ALIAS),
        _Slot("location", FieldId.LOCATION),
    )

    floor_priority: int | None = None
    user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None
    functional_alias: str | None = None
    location: Location | None = None


@dataclass(kw_only=True)
class FloorGranted(FloorMessage):
    """Floor Granted, server to the granted participant (§8.2.4).

    ``duration`` (seconds the holder may talk, timer T2) is mandatory.  ``granted_ssrc`` and
    ``user_id`` are used off-network.  Off-network grants may also list the queued
    participants as repeated SSRC, Queued User ID and Queue Info fields; this on-network
    bridge keeps those in ``unknown``.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.GRANTED
    name: ClassVar[str] = "Floor Granted"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("duration", FieldId.DURATION, mandatory=True),
        _Slot("granted_ssrc", FieldId.SSRC),
        _Slot("floor_priority", FieldId.FLOOR_PRIORITY),
        _Slot("user_id", FieldId.USER_ID),
        _Slot("queue_size", FieldId.QUEUE_SIZE),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
        _Slot("functional_alias", FieldId.FUNCTIONAL_ALIAS),
        _Slot("granted_users", FieldId.LIST_OF_GRANTED_USERS),
    )

    duration: int
    granted_ssrc: int | None = None
    floor_priority: int | None = None
    user_id: str | None = None
    queue_size: int | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None
    functional_alias: str | None = None
    granted_users: list[str] | None = None


@dataclass(kw_only=True)
class FloorTaken(FloorMessage):
    """Floor Taken, server to the other participants: someone holds the floor (§8.2.4).

    ``message_sequence_number`` is mandatory.  ``granted_party_identity`` is left out when the
    holder asked for privacy; ``permission_to_request`` tells whether listeners may ask.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.TAKEN
    name: ClassVar[str] = "Floor Taken"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("granted_party_identity", FieldId.GRANTED_PARTYS_IDENTITY),
        _Slot("permission_to_request", FieldId.PERMISSION_TO_REQUEST_THE_FLOOR),
        _Slot("user_id", FieldId.USER_ID),
        _Slot("message_sequence_number", FieldId.MESSAGE_SEQUENCE_NUMBER, mandatory=True),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
        _Slot("granted_ssrc", FieldId.SSRC),
        _Slot("functional_alias", FieldId.FUNCTIONAL_ALIAS),
        _Slot("granted_users", FieldId.LIST_OF_GRANTED_USERS),
        _Slot("location", FieldId.LOCATION),
    )

    message_sequence_number: int
    granted_party_identity: str | None = None
    permission_to_request: bool | None = None
    user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None
    granted_ssrc: int | None = None
    functional_alias: str | None = None
    granted_users: list[str] | None = None
    location: Location | None = None


@dataclass(kw_only=True)
class FloorDeny(FloorMessage):
    """Floor Deny, server to the requester (§8.2.4); the Reject Cause is mandatory.

    A known cause is read as a :class:`DenyCause`.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.DENY
    name: ClassVar[str] = "Floor Deny"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("reject_cause", FieldId.REJECT_CAUSE, mandatory=True),
        _Slot("user_id", FieldId.USER_ID),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
        _Slot("functional_alias", FieldId.FUNCTIONAL_ALIAS),
    )

    reject_cause: RejectCause
    user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None
    functional_alias: str | None = None

    def __post_init__(self) -> None:
        self.reject_cause.cause = _known(DenyCause, self.reject_cause.cause)


@dataclass(kw_only=True)
class FloorRelease(FloorMessage):
    """Floor Release, the holder to the server: it stops talking (§8.2.4)."""

    message_type: ClassVar[FloorMessageType] = FloorMessageType.RELEASE
    name: ClassVar[str] = "Floor Release"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("user_id", FieldId.USER_ID),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
    )

    user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None


@dataclass(kw_only=True)
class FloorIdle(FloorMessage):
    """Floor Idle, server to all: nobody holds the floor (§8.2.4).

    ``message_sequence_number`` is mandatory; it shares its counter with Floor Taken.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.IDLE
    name: ClassVar[str] = "Floor Idle"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("message_sequence_number", FieldId.MESSAGE_SEQUENCE_NUMBER, mandatory=True),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
    )

    message_sequence_number: int
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None


@dataclass(kw_only=True)
class FloorRevoke(FloorMessage):
    """Floor Revoke, server to the holder (§8.2.4); the Reject Cause is mandatory.

    A known cause is read as a :class:`RevokeCause`; a pre-empted talker gets
    :attr:`RevokeCause.PRE_EMPTED`.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.REVOKE
    name: ClassVar[str] = "Floor Revoke"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("reject_cause", FieldId.REJECT_CAUSE, mandatory=True),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
    )

    reject_cause: RejectCause
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None

    def __post_init__(self) -> None:
        self.reject_cause.cause = _known(RevokeCause, self.reject_cause.cause)


@dataclass(kw_only=True)
class FloorQueuePositionRequest(FloorMessage):
    """Floor Queue Position Request, a queued participant to the server (§8.2.4)."""

    message_type: ClassVar[FloorMessageType] = FloorMessageType.QUEUE_POSITION_REQUEST
    name: ClassVar[str] = "Floor Queue Position Request"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("user_id", FieldId.USER_ID),
        _Slot("track_info", FieldId.TRACK_INFO),
    )

    user_id: str | None = None
    track_info: TrackInfo | None = None


@dataclass(kw_only=True)
class FloorQueuePositionInfo(FloorMessage):
    """Floor Queue Position Info, server to a queued participant (§8.2.4).

    ``queue_info`` is mandatory; ``queued_ssrc`` and ``queued_user_id`` are used off-network.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.QUEUE_POSITION_INFO
    name: ClassVar[str] = "Floor Queue Position Info"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("user_id", FieldId.USER_ID),
        _Slot("queued_ssrc", FieldId.SSRC),
        _Slot("queued_user_id", FieldId.QUEUED_USER_ID),
        _Slot("queue_info", FieldId.QUEUE_INFO, mandatory=True),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
    )

    queue_info: QueueInfo
    user_id: str | None = None
    queued_ssrc: int | None = None
    queued_user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None


@dataclass(kw_only=True)
class FloorAck(FloorMessage):
    """Floor Ack: answers a message whose subtype asked for one (§8.2.4).

    ``acknowledged`` is the Message Type field: the acknowledged message's full 5-bit
    subtype, ack-request bit included.  ``source`` says who acknowledges.
    """

    message_type: ClassVar[FloorMessageType] = FloorMessageType.ACK
    name: ClassVar[str] = "Floor Ack"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("source", FieldId.SOURCE, mandatory=True),
        _Slot("acknowledged", FieldId.MESSAGE_TYPE, mandatory=True),
        _Slot("track_info", FieldId.TRACK_INFO),
    )

    source: int
    acknowledged: int
    track_info: TrackInfo | None = None

    @classmethod
    def for_message(cls, message: FloorMessage, *, ssrc: int, source: int) -> FloorAck:
        """The Floor Ack answering ``message``, sent with ``ssrc`` by ``source``."""
        return cls(ssrc=ssrc, source=source, acknowledged=message.subtype)


@dataclass(kw_only=True)
class FloorReleaseMultiTalker(FloorMessage):
    """Floor Release Multi-talker: a talker leaves a multi-talker floor (§8.2.4)."""

    message_type: ClassVar[FloorMessageType] = FloorMessageType.RELEASE_MULTI_TALKER
    name: ClassVar[str] = "Floor Release Multi-talker"
    _layout: ClassVar[tuple[_Slot, ...]] = (
        _Slot("user_id", FieldId.USER_ID),
        _Slot("track_info", FieldId.TRACK_INFO),
        _Slot("floor_indicator", FieldId.FLOOR_INDICATOR),
    )

    user_id: str | None = None
    track_info: TrackInfo | None = None
    floor_indicator: FloorIndicator | None = None


_MESSAGE_CLASSES: dict[int, type[FloorMessage]] = {
    cls.message_type: cls
    for cls in (
        FloorRequest,
        FloorGranted,
        FloorTaken,
        FloorDeny,
        FloorRelease,
        FloorIdle,
        FloorRevoke,
        FloorQueuePositionRequest,
        FloorQueuePositionInfo,
        FloorAck,
        FloorReleaseMultiTalker,
    )
}


def message_from_app(packet: RtcpAppPacket) -> FloorMessage:
    """The floor-control message one RTCP APP packet carries (TS 24.380 §8.1.2, §8.2.2)."""
    if packet.name != APP_NAME:
        raise ValueError(f"RTCP packet has unsupported APP name {packet.name!r}")
    message_class = _MESSAGE_CLASSES.get(packet.subtype & MESSAGE_TYPE_MASK)
    if message_class is None:
        raise ValueError(f"MCPT packet has unsupported subtype {packet.subtype}")
    ack_requested = bool(packet.subtype & ACK_REQUESTED)
    if ack_requested and message_class.message_type not in ACK_CAPABLE_TYPES:
        raise ValueError(f"MCPT {message_class.name} cannot request an ack")
    return message_class._from_fields(packet.ssrc, ack_requested, parse_fields(packet.data))


def _parse_each(data: bytes) -> list[FloorMessage | ValueError]:
    """Every packet of a datagram, as a message or as the reason it was refused."""
    try:
        packets = parse_rtcp(data, compound=False)
    except ValueError as exc:
        return [exc]
    results: list[FloorMessage | ValueError] = []
    for packet in packets:
        try:
            if not isinstance(packet, RtcpAppPacket):
                raise ValueError("RTCP packet type is not APP")
            results.append(message_from_app(packet))
        except ValueError as exc:
            results.append(exc)
    return results


def parse_datagram(data: bytes) -> list[FloorMessage]:
    """Parse a floor-port datagram: one or more MCPT packets, not compound (TS 24.380 §8.1.1).

    The first malformed packet raises ``ValueError`` with its reason.
    """
    messages = []
    for result in _parse_each(data):
        if isinstance(result, ValueError):
            raise result
        messages.append(result)
    return messages


def parse_datagram_lenient(data: bytes) -> tuple[list[FloorMessage], list[str]]:
    """Parse a floor-port datagram, keeping the good packets and the reasons for the bad ones.

    A datagram that cannot be split at all gives one reason and no messages; a packet that
    splits but does not parse is dropped alone.
    """
    messages: list[FloorMessage] = []
    errors: list[str] = []
    for result in _parse_each(data):
        if isinstance(result, ValueError):
            errors.append(str(result))
        else:
            messages.append(result)
    return messages, errors
