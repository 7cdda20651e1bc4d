"""Tests for bridge.gateways.trunking.mcpt: 3GPP TS 24.380 clause 8 floor-control messages."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest

from bridge.gateways.trunking.mcpt import (
    ACK_CAPABLE_TYPES,
    ACK_REQUESTED,
    EARLY_FIELD_IDS,
    QUEUE_POSITION_NOT_QUEUED,
    DenyCause,
    FieldId,
    FloorAck,
    FloorDeny,
    FloorGranted,
    FloorIdle,
    FloorIndicator,
    FloorMessage,
    FloorMessageType,
    FloorQueuePositionInfo,
    FloorQueuePositionRequest,
    FloorRelease,
    FloorReleaseMultiTalker,
    FloorRequest,
    FloorRevoke,
    FloorSource,
    FloorTaken,
    Location,
    LocationType,
    QueueInfo,
    QueueingCapability,
    RawField,
    RejectCause,
    RevokeCause,
    TrackInfo,
    parse_datagram,
    parse_datagram_lenient,
    parse_fields,
)
from bridge.rtcp import RtcpAppPacket

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mcpt"
SERVER_SSRC = 0x5E2F_0001
UNIT_SSRC = 0x0A11_CE07
UNIT_ID = "sip:unit7@pd.example"
OTHER_ID = "sip:unit9@pd.example"

REQUEST = FloorRequest(
    ssrc=UNIT_SSRC,
    floor_priority=7,
    user_id=UNIT_ID,
    floor_indicator=FloorIndicator.NORMAL_CALL | FloorIndicator.QUEUEING_SUPPORTED,
)
GRANTED = FloorGranted(
    ssrc=SERVER_SSRC,
    ack_requested=True,
    duration=30,
    floor_priority=7,
    floor_indicator=FloorIndicator.NORMAL_CALL,
)
TAKEN = FloorTaken(
    ssrc=SERVER_SSRC,
    granted_party_identity=OTHER_ID,
    permission_to_request=True,
    message_sequence_number=5,
)
TAKEN_TRACK_INFO = FloorTaken(
    ssrc=SERVER_SSRC,
    message_sequence_number=9,
    track_info=TrackInfo(
        queueing_capability=QueueingCapability.SUPPORTED,
        participant_type=b"ptt1",
        references=[0x1234, 0xBEEF],
    ),
)
DENY = FloorDeny(
    ssrc=SERVER_SSRC, reject_cause=RejectCause(DenyCause.QUEUE_FULL, phrase="queue is full")
)
RELEASE = FloorRelease(ssrc=UNIT_SSRC)
IDLE = FloorIdle(
    ssrc=SERVER_SSRC, message_sequence_number=6, floor_indicator=FloorIndicator.NORMAL_CALL
)
REVOKE = FloorRevoke(ssrc=SERVER_SSRC, reject_cause=RejectCause(RevokeCause.PRE_EMPTED))
QUEUE_POSITION_REQUEST = FloorQueuePositionRequest(ssrc=UNIT_SSRC, user_id=UNIT_ID)
QUEUE_POSITION_INFO = FloorQueuePositionInfo(
    ssrc=SERVER_SSRC, queue_info=QueueInfo(position=2, priority=100)
)
ACK = FloorAck(ssrc=UNIT_SSRC, source=FloorSource.FLOOR_PARTICIPANT, acknowledged=0x11)
RELEASE_MULTI_TALKER = FloorReleaseMultiTalker(ssrc=UNIT_SSRC, user_id=UNIT_ID)


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("floor_request.bin", REQUEST),
        ("floor_granted_ack.bin", GRANTED),
        ("floor_taken.bin", TAKEN),
        ("floor_taken_track_info.bin", TAKEN_TRACK_INFO),
        ("floor_deny.bin", DENY),
        ("floor_release.bin", RELEASE),
        ("floor_idle.bin", IDLE),
        ("floor_revoke.bin", REVOKE),
        ("floor_queue_position_request.bin", QUEUE_POSITION_REQUEST),
        ("floor_queue_position_info.bin", QUEUE_POSITION_INFO),
        ("floor_ack.bin", ACK),
        ("floor_release_multi_talker.bin", RELEASE_MULTI_TALKER),
    ],
)
def test_round_trip(name: str, message: FloorMessage) -> None:
    data = load(name)
    assert parse_datagram(data) == [message]
    assert type(message).parse(data) == message
    assert bytes(message) == data


def test_every_message_type_has_a_class() -> None:
    classes = {
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
    assert set(classes) == set(FloorMessageType)
    assert [int(t) for t in FloorMessageType] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 15]


def test_known_causes_become_enums() -> None:
    deny = FloorDeny.parse(load("floor_deny.bin"))
    assert type(deny.reject_cause.cause) is DenyCause
    revoke = FloorRevoke.parse(load("floor_revoke.bin"))
    assert revoke.reject_cause == RejectCause(RevokeCause.PRE_EMPTED, phrase=None)
    assert type(revoke.reject_cause.cause) is RevokeCause
    # A cause no table names stays a number, and is sent back unchanged.
    odd = FloorDeny(ssrc=1, reject_cause=RejectCause(9))
    parsed = FloorDeny.parse(bytes(odd))
    assert parsed.reject_cause.cause == 9
    assert type(parsed.reject_cause.cause) is int


def test_datagram_with_two_packets_is_split_not_compound() -> None:
    data = load("floor_release_idle.bin")
    messages = parse_datagram(data)
    assert messages == [RELEASE, IDLE]
    assert b"".join(bytes(message) for message in messages) == data


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("floor_granted_truncated.bin", "MCPT field value is truncated"),
        ("floor_packet_truncated.bin", "RTCP packet is truncated"),
        ("floor_granted_invalid.bin", "MCPT Floor Granted is missing the Duration field"),
        ("floor_request_ack_invalid.bin", "MCPT Floor Request cannot request an ack"),
        ("floor_subtype_invalid.bin", "MCPT packet has unsupported subtype 7"),
        ("floor_name_invalid.bin", "RTCP packet has unsupported APP name 'MCPC'"),
        ("floor_priority_invalid.bin", "MCPT Floor Priority field length is invalid"),
        ("floor_user_id_invalid.bin", "MCPT User ID is not valid UTF-8"),
        ("floor_rr_invalid.bin", "RTCP packet type is not APP"),
    ],
)
def test_invalid(name: str, reason: str) -> None:
    data = load(name)
    with pytest.raises(ValueError, match=exactly(reason)):
        parse_datagram(data)
    assert parse_datagram_lenient(data) == ([], [reason])


def test_lenient_keeps_the_good_packets() -> None:
    data = load("floor_release_then_invalid.bin")
    assert parse_datagram_lenient(data) == ([RELEASE], ["MCPT packet has unsupported subtype 7"])
    with pytest.raises(ValueError, match=exactly("MCPT packet has unsupported subtype 7")):
        parse_datagram(data)


def test_other_rtcp_errors_pass_through() -> None:
    assert parse_datagram_lenient(b"\x80") == ([], ["RTCP packet length is less than 4 bytes"])
    name_not_ascii = struct.pack("!BBHL", 0x80, 204, 2, 1) + b"\xffCPT"
    with pytest.raises(ValueError, match=exactly("RTCP APP packet name is not ASCII")):
        parse_datagram(name_not_ascii)


def test_single_message_parse_checks_type_and_count() -> None:
    with pytest.raises(ValueError, match=exactly("MCPT packet is not a Floor Granted")):
        FloorGranted.parse(load("floor_idle.bin"))
    with pytest.raises(ValueError, match=exactly("MCPT datagram holds more than one packet")):
        FloorRelease.parse(load("floor_release_idle.bin"))


@pytest.mark.parametrize(
    "message",
    [
        FloorGranted(ssrc=1, duration=30),
        FloorTaken(ssrc=1, message_sequence_number=1),
        FloorDeny(ssrc=1, reject_cause=RejectCause(DenyCause.OTHER)),
        FloorRelease(ssrc=1),
        FloorIdle(ssrc=1, message_sequence_number=1),
        FloorQueuePositionInfo(ssrc=1, queue_info=QueueInfo(QUEUE_POSITION_NOT_QUEUED, 0)),
    ],
)
def test_ack_bit_on_capable_messages(message: FloorMessage) -> None:
    assert message.message_type in ACK_CAPABLE_TYPES
    message.ack_requested = True
    data = bytes(message)
    assert data[0] & 0x1F == message.message_type | ACK_REQUESTED
    assert parse_datagram(data) == [message]


@pytest.mark.parametrize(
    "message",
    [
        FloorRequest(ssrc=1),
        FloorRevoke(ssrc=1, reject_cause=RejectCause(RevokeCause.OTHER)),
        FloorAck(ssrc=1, source=FloorSource.FLOOR_PARTICIPANT, acknowledged=1),
        FloorQueuePositionRequest(ssrc=1),
        FloorReleaseMultiTalker(ssrc=1),
    ],
)
def test_ack_bit_refused_on_other_messages(message: FloorMessage) -> None:
    assert message.message_type not in ACK_CAPABLE_TYPES
    message.ack_requested = True
    reason = f"MCPT {message.name} cannot request an ack"
    with pytest.raises(ValueError, match=exactly(reason)):
        bytes(message)
    # The same packet from a peer is refused too.
    message.ack_requested = False
    data = bytearray(bytes(message))
    data[0] |= ACK_REQUESTED
    with pytest.raises(ValueError, match=exactly(reason)):
        parse_datagram(bytes(data))


def test_ack_carries_the_full_subtype_of_what_it_acknowledges() -> None:
    ack = FloorAck.for_message(GRANTED, ssrc=UNIT_SSRC, source=FloorSource.FLOOR_PARTICIPANT)
    assert ack.acknowledged == FloorMessageType.GRANTED | ACK_REQUESTED == 0x11
    assert bytes(ack) == load("floor_ack.bin")
    # The Message Type field: the subtype octet, then a spare octet.
    assert bytes(ack)[-4:] == bytes([FieldId.MESSAGE_TYPE, 2, 0x11, 0])
    with pytest.raises(ValueError, match=exactly("MCPT Message Type is out of range")):
        bytes(FloorAck(ssrc=1, source=0, acknowledged=32))


def test_early_release_13_ids_are_read_and_never_sent() -> None:
    [request] = parse_datagram(load("floor_request_rel13.bin"))
    assert request == FloorRequest(
        ssrc=UNIT_SSRC,
        floor_priority=3,
        user_id=UNIT_ID,
        floor_indicator=FloorIndicator.EMERGENCY_CALL,
    )
    sent = parse_fields(RtcpAppPacket.parse(bytes(request)).data)
    assert [f.field_id for f in sent] == [
        FieldId.FLOOR_PRIORITY,
        FieldId.USER_ID,
        FieldId.FLOOR_INDICATOR,
    ]
    assert sorted(set(EARLY_FIELD_IDS.values())) == list(FieldId)[: FieldId.FLOOR_INDICATOR + 1]
    with pytest.raises(ValueError, match=exactly("MCPT field ID 104 is an early Release 13 ID")):
        bytes(RawField(104, b"\x00\x07"))


def test_unknown_and_repeated_fields_are_kept_aside_and_not_sent() -> None:
    [request] = parse_datagram(load("floor_request_unknown.bin"))
    assert isinstance(request, FloorRequest)
    assert request.floor_priority == 9
    assert request.unknown == [
        RawField(99, b"\x01\x02\x03"),
        RawField(200, bytes(range(5))),
        RawField(FieldId.FLOOR_PRIORITY, b"\x01\x00"),
        RawField(FieldId.DURATION, b"\x00\x1e"),
    ]
    assert bytes(request) == bytes(FloorRequest(ssrc=UNIT_SSRC, floor_priority=9))


def test_field_ids_of_192_and_above_take_a_16_bit_length() -> None:
    value = bytes(range(256)) + bytes(44)
    data = bytes(RawField(200, value))
    assert data[:3] == bytes([200, 0x01, 0x2C])
    assert len(data) == 304  # 3 + 300, padded to 32 bits
    assert data[303] == 0
    assert parse_fields(data + bytes(RawField(6, b"ab"))) == [
        RawField(200, value),
        RawField(6, b"ab"),
    ]
    assert RawField.parse(data) == RawField(200, value)
    with pytest.raises(ValueError, match=exactly("MCPT data does not hold exactly one field")):
        RawField.parse(data + data)
    with pytest.raises(ValueError, match=exactly("MCPT field value is too long")):
        bytes(RawField(191, bytes(256)))
    with pytest.raises(ValueError, match=exactly("MCPT field value is too long")):
        bytes(RawField(192, bytes(0x10000)))
    with pytest.raises(ValueError, match=exactly("MCPT field ID is out of range")):
        bytes(RawField(256))


def test_field_walk_errors() -> None:
    with pytest.raises(ValueError, match=exactly("MCPT field header is truncated")):
        parse_fields(b"\x06")
    with pytest.raises(ValueError, match=exactly("MCPT field header is truncated")):
        parse_fields(b"\xc8\x00")
    with pytest.raises(ValueError, match=exactly("MCPT field value is truncated")):
        parse_fields(b"\xc8\x00\x02\x00")
    # A last field whose padding was cut (a padded APP packet) is still read.
    assert parse_fields(b"\x06\x01a") == [RawField(6, b"a")]


def test_value_layouts() -> None:
    def fields(message: FloorMessage) -> bytes:
        return RtcpAppPacket.parse(bytes(message)).data

    # Floor Priority: priority octet, spare octet.
    assert fields(FloorRequest(ssrc=1, floor_priority=200)) == bytes([0, 2, 200, 0])
    # Queue Info: position octet, priority octet.
    assert fields(FloorQueuePositionInfo(ssrc=1, queue_info=QueueInfo(3, 250))) == bytes(
        [3, 2, 3, 250]
    )
    # SSRC: length 6, a 32-bit SSRC and a 16-bit spare.
    assert fields(FloorGranted(ssrc=1, duration=2, granted_ssrc=0xAABBCCDD)) == bytes(
        [1, 2, 0, 2, 14, 6, 0xAA, 0xBB, 0xCC, 0xDD, 0, 0]
    )
    # Reject Cause: a 16-bit cause, then the phrase, padded.
    assert fields(FloorDeny(ssrc=1, reject_cause=RejectCause(255, "no"))) == bytes(
        [2, 4, 0, 255, ord("n"), ord("o"), 0, 0]
    )
    # Floor Indicator: a 16-bit map, reserved bits kept.
    indicator = FloorIndicator(0x8001)
    idle = FloorIdle(ssrc=1, message_sequence_number=0, floor_indicator=indicator)
    assert fields(idle)[-4:] == bytes([13, 2, 0x80, 0x01])
    assert FloorIdle.parse(bytes(idle)).floor_indicator == 0x8001


def test_track_info_pads_the_participant_type() -> None:
    def track_field(participant_type: bytes) -> bytes:
        info = TrackInfo(participant_type=participant_type, references=[7])
        data = RtcpAppPacket.parse(bytes(FloorRelease(ssrc=1, track_info=info))).data
        assert FloorRelease.parse(bytes(FloorRelease(ssrc=1, track_info=info))).track_info == info
        return data

    # Five octets take three of padding; four take none (Wireshark 4.0 adds four).
    assert track_field(b"typeA") == bytes([11, 14, 0, 5]) + b"typeA\x00\x00\x00" + bytes(
        [0, 0, 0, 7]
    )
    assert track_field(b"type") == bytes([11, 10, 0, 4]) + b"type" + bytes([0, 0, 0, 7])
    bad = RtcpAppPacket(subtype=4, ssrc=1, name="MCPT", data=bytes([11, 5, 0, 1, 0x61, 0, 0, 0]))
    with pytest.raises(ValueError, match=exactly("MCPT Track Info field length is invalid")):
        parse_datagram(bytes(bad))


def test_mandatory_fields_and_ranges_on_build() -> None:
    no_duration: dict[str, Any] = {"duration": None}
    missing = FloorGranted(ssrc=1, **no_duration)
    with pytest.raises(
        ValueError, match=exactly("MCPT Floor Granted is missing the Duration field")
    ):
        bytes(missing)
    with pytest.raises(ValueError, match=exactly("MCPT Floor Priority is out of range")):
        bytes(FloorRequest(ssrc=1, floor_priority=256))
    with pytest.raises(ValueError, match=exactly("MCPT Duration is out of range")):
        bytes(FloorGranted(ssrc=1, duration=0x10000))
    with pytest.raises(ValueError, match=exactly("MCPT SSRC is out of range")):
        bytes(FloorRelease(ssrc=1 << 32))
    with pytest.raises(ValueError, match=exactly("MCPT Queue Info position is out of range")):
        bytes(FloorQueuePositionInfo(ssrc=1, queue_info=QueueInfo(256, 0)))


def test_permission_location_and_granted_users() -> None:
    taken = FloorTaken(
        ssrc=SERVER_SSRC,
        message_sequence_number=1,
        permission_to_request=False,
        granted_users=[UNIT_ID, "b"],
        location=Location(LocationType.GEOGRAPHIC_COORDINATES, bytes(range(6))),
    )
    assert FloorTaken.parse(bytes(taken)) == taken
    with pytest.raises(ValueError, match=exactly("MCPT Location value length is invalid")):
        bytes(FloorRequest(ssrc=1, location=Location(LocationType.ECGI, b"\x01")))
    bad_permission = RtcpAppPacket(
        subtype=2, ssrc=1, name="MCPT", data=bytes([8, 2, 0, 1, 5, 2, 0, 2])
    )
    with pytest.raises(
        ValueError, match=exactly("MCPT Permission to Request the Floor value is invalid")
    ):
        parse_datagram(bytes(bad_permission))
    bad_users = RtcpAppPacket(subtype=2, ssrc=1, name="MCPT", data=bytes([8, 2, 0, 1, 15, 2, 1, 5]))
    with pytest.raises(
        ValueError, match=exactly("MCPT List of Granted Users field length is invalid")
    ):
        parse_datagram(bytes(bad_users))
