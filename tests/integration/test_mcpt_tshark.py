"""Wireshark's tshark as an independent check of the MCPT floor-control encoding.

Every message the trunking gateway sends (and Floor Request and Release, as a handset sends
them) goes over 127.0.0.1 to a port that tshark captures on ``lo``; tshark then decodes the
capture as RTCP (``-d udp.port==N,rtcp``) and the test reads its PDML: message names, field IDs
and values.  A second test writes the fixtures into a pcap file with Python, without a live
capture.  Checked against tshark 4.0.17 (Debian 12).

Wireshark 4.0 has two known slips in its TS 24.380 dissector.  Where a test meets one, it says
so and accepts either the correct decoding or exactly that slip; the bytes themselves are pinned
by tests/unit/test_mcpt.py, so our encoding never bends to match.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from bridge.gateways.trunking.mcpt import (
    DenyCause,
    FloorAck,
    FloorDeny,
    FloorGranted,
    FloorIdle,
    FloorIndicator,
    FloorMessage,
    FloorQueuePositionInfo,
    FloorQueuePositionRequest,
    FloorRelease,
    FloorRequest,
    FloorRevoke,
    FloorSource,
    FloorTaken,
    Location,
    LocationType,
    QueueInfo,
    RejectCause,
    RevokeCause,
    TrackInfo,
)

pytestmark = [
    pytest.mark.peer,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("tshark") is None, reason="tshark is not installed (Debian package 'tshark')"
    ),
]

LOOPBACK: Final = "127.0.0.1"
CAPTURE_STARTED: Final = b"Capture started"
CAPTURE_START_TIMEOUT_S: Final = 30.0
CAPTURE_END_TIMEOUT_S: Final = 30.0
FIXTURES: Final = Path(__file__).resolve().parents[1] / "fixtures" / "mcpt"

SERVER_SSRC: Final = 0x5E2F_0001
UNIT_SSRC: Final = 0x0A11_CE07
UNIT_ID: Final = "sip:unit7@pd.example"
OTHER_ID: Final = "sip:unit9@pd.example"
# Geographic coordinates: latitude 0x123456, longitude 0xF00001 (24 bits each, TS 23.032).
COORDINATES: Final = bytes([0x12, 0x34, 0x56, 0xF0, 0x00, 0x01])
LATITUDE: Final = 0x123456
LONGITUDE: Final = 0xF00001 - (1 << 24)

# pcap (libpcap file format) with LINKTYPE_RAW: each frame is a bare IPv4 packet.
PCAP_MAGIC: Final = 0xA1B2C3D4
PCAP_VERSION: Final = (2, 4)
PCAP_SNAPLEN: Final = 65535
LINKTYPE_RAW: Final = 101
PCAP_HEADER: Final = struct.Struct("<IHHiIII")
PCAP_RECORD: Final = struct.Struct("<IIII")
IPV4_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
IPV4_VERSION_IHL: Final = 0x45
IPV4_TTL: Final = 64
IPPROTO_UDP: Final = 17
UDP_HEADER: Final = struct.Struct("!HHHH")
SOURCE_PORT: Final = 40000
FILE_PORT: Final = 5999


@dataclass
class Decoded:
    """One RTCP packet as tshark decodes it: values and display names by field name."""

    values: dict[str, list[str]] = field(default_factory=dict)
    shownames: dict[str, list[str]] = field(default_factory=dict)
    experts: list[str] = field(default_factory=list)

    def value(self, name: str) -> str:
        [value] = self.values[name]
        return value

    def showname(self, name: str) -> str:
        [showname] = self.shownames[name]
        return showname


def decode(pcap: Path, port: int) -> list[list[Decoded]]:
    """tshark's PDML of a capture: per frame, its RTCP packets."""
    pdml = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"udp.port=={port},rtcp", "-T", "pdml"],
        check=True,
        capture_output=True,
        timeout=CAPTURE_END_TIMEOUT_S,
    ).stdout
    frames = []
    for packet in ET.fromstring(pdml).iter("packet"):
        decoded: list[Decoded] = []
        for proto in packet.iter("proto"):
            if proto.get("name") == "_ws.malformed":
                decoded[-1].experts.append("malformed")
            if proto.get("name") != "rtcp":
                continue
            rtcp = Decoded()
            for item in proto.iter("field"):
                name = item.get("name", "")
                if name == "_ws.expert.message":
                    rtcp.experts.append(item.get("show", ""))
                elif name:
                    rtcp.values.setdefault(name, []).append(item.get("show", ""))
                    rtcp.shownames.setdefault(name, []).append(item.get("showname", ""))
            decoded.append(rtcp)
        frames.append(decoded)
    return frames


def info_column(pcap: Path, port: int) -> list[str]:
    command = ["tshark", "-r", str(pcap), "-d", f"udp.port=={port},rtcp"]
    command += ["-T", "fields", "-e", "_ws.col.Info"]
    result = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=CAPTURE_END_TIMEOUT_S
    )
    return result.stdout.splitlines()


def tshark_version() -> str:
    """The version number tshark reports, such as "4.0.17"."""
    banner = subprocess.run(["tshark", "--version"], check=True, capture_output=True, text=True)
    match = re.search(r"\b(\d+\.\d+\.\d+)\b", banner.stdout)
    assert match is not None, banner.stdout
    return match.group(1)


# What the gateway sends, then what a handset sends, one datagram each; the last datagram
# carries two messages, as TS 24.380 §8.1.1 allows.
RELEASE_WITH_ACK = FloorRelease(ssrc=UNIT_SSRC, user_id=UNIT_ID, ack_requested=True)
SENT: Final[list[list[FloorMessage]]] = [
    [
        FloorGranted(
            ssrc=SERVER_SSRC,
            ack_requested=True,
            duration=30,
            granted_ssrc=UNIT_SSRC,
            floor_priority=200,
            floor_indicator=FloorIndicator.NORMAL_CALL | FloorIndicator.QUEUEING_SUPPORTED,
        )
    ],
    [
        FloorDeny(
            ssrc=SERVER_SSRC,
            reject_cause=RejectCause(DenyCause.QUEUE_FULL, "queue is full"),
            user_id=UNIT_ID,
        )
    ],
    [
        FloorTaken(
            ssrc=SERVER_SSRC,
            granted_party_identity=OTHER_ID,
            permission_to_request=True,
            message_sequence_number=42,
            floor_indicator=FloorIndicator.EMERGENCY_CALL,
            location=Location(LocationType.GEOGRAPHIC_COORDINATES, COORDINATES),
        )
    ],
    [FloorIdle(ssrc=SERVER_SSRC, message_sequence_number=43)],
    [FloorRevoke(ssrc=SERVER_SSRC, reject_cause=RejectCause(RevokeCause.PRE_EMPTED))],
    [FloorQueuePositionInfo(ssrc=SERVER_SSRC, ack_requested=True, queue_info=QueueInfo(2, 100))],
    [
        FloorAck.for_message(
            RELEASE_WITH_ACK, ssrc=SERVER_SSRC, source=FloorSource.CONTROLLING_FUNCTION
        )
    ],
    [
        FloorRequest(
            ssrc=UNIT_SSRC,
            floor_priority=7,
            user_id=UNIT_ID,
            functional_alias="engine-12",
            floor_indicator=FloorIndicator.IMMINENT_PERIL_CALL,
        )
    ],
    [RELEASE_WITH_ACK],
    [
        FloorQueuePositionRequest(
            ssrc=UNIT_SSRC,
            track_info=TrackInfo(participant_type=b"typeA", references=[0x0102_0304]),
        )
    ],
    [
        FloorIdle(ssrc=SERVER_SSRC, message_sequence_number=44),
        FloorTaken(ssrc=SERVER_SSRC, message_sequence_number=45, user_id=OTHER_ID),
    ],
]


def check_sent(frames: list[list[Decoded]]) -> None:
    """What Wireshark must read in the datagrams of SENT."""
    assert [len(frame) for frame in frames] == [len(datagram) for datagram in SENT]
    (
        [granted],
        [deny],
        [taken],
        [idle],
        [revoke],
        [queue_info],
        [ack],
        [request],
        [release],
        [queue_request],
        [idle_again, taken_again],
    ) = frames
    for frame in frames:
        for rtcp in frame:
            assert rtcp.value("rtcp.pt") == "204"
            assert rtcp.value("rtcp.app.name") == "MCPT"
            assert rtcp.experts == []
        # Wireshark checks the lengths once per datagram, on its last packet.
        assert frame[-1].value("rtcp.length_check") == "1"

    def subtype(rtcp: Decoded) -> str:
        return rtcp.showname("rtcp.app.subtype").split("Subtype: ", 1)[1]

    assert subtype(granted) == "17 Floor Granted(ack req)"
    assert granted.value("rtcp.ssrc.identifier") == f"0x{SERVER_SSRC:08x}"
    assert granted.value("rtcp.app_data.mcptt.duration") == "30"
    assert granted.value("rtcp.app_data.mcptt.priority") == "200"
    assert granted.value("rtcp.app_data.mcptt.rtcp") == str(UNIT_SSRC)  # the SSRC field
    assert granted.value("rtcp.app_data.mcptt.floor_ind") == "33792"
    assert granted.values["rtcp.mcptt.fld_id"] == ["1", "14", "0", "13"]

    assert subtype(deny) == "3 Floor Deny"
    assert deny.value("rtcp.app_data.mcptt.rej_cause.floor_deny") == "7"
    assert "Queue full" in deny.showname("rtcp.app_data.mcptt.rej_cause.floor_deny")
    assert deny.value("rtcp.mcptt.rej_phrase") == "queue is full"
    assert deny.value("rtcp.app_data.mcptt.user_id") == UNIT_ID

    assert subtype(taken) == "2 Floor Taken"
    assert taken.value("rtcp.mcptt.granted_partys_id") == OTHER_ID
    assert taken.value("rtcp.app_data.mcptt.perm_to_req_floor") == "1"
    assert taken.value("rtcp.app_data.mcptt.msg_seq_num") == "42"
    assert taken.value("rtcp.app_data.mcptt.floor_ind") == str(int(FloorIndicator.EMERGENCY_CALL))
    assert "Emergency call" in taken.showname("rtcp.app_data.mcptt.floor_ind")
    assert taken.value("rtcp.app_data.mcptt.loc_type") == str(
        int(LocationType.GEOGRAPHIC_COORDINATES)
    )
    assert taken.value("rtcp.app_data.mcptt.lat") == str(LATITUDE)
    assert taken.value("rtcp.app_data.mcptt.long") == str(LONGITUDE)

    assert subtype(idle) == "5 Floor Idle"
    assert idle.value("rtcp.app_data.mcptt.msg_seq_num") == "43"

    assert subtype(revoke) == "6 Floor Revoke"
    assert revoke.value("rtcp.app_data.mcptt.rej_cause.floor_revoke") == "4"
    assert "Media Burst pre-empted" in revoke.showname("rtcp.app_data.mcptt.rej_cause.floor_revoke")

    assert subtype(queue_info) == "25 Floor Queue Position Info(ack req)"
    assert queue_info.value("rtcp.app_data.mcptt.queue_pos_inf") == "2"
    assert queue_info.value("rtcp.app_data.mcptt.queue_pri_lev") == "100"

    # The Ack's Message Type is the full subtype of what it acknowledges, ack bit included.
    assert subtype(ack) == "10 Floor Ack"
    assert ack.value("rtcp.app_data.mcptt.source") == "2"
    assert ack.value("rtcp.app_data.mcptt.msg_type") == "20"
    assert "Floor Release(ack req)" in ack.showname("rtcp.app_data.mcptt.msg_type")

    assert subtype(request) == "0 Floor Request"
    assert request.value("rtcp.ssrc.identifier") == f"0x{UNIT_SSRC:08x}"
    assert request.value("rtcp.app_data.mcptt.priority") == "7"
    assert request.value("rtcp.app_data.mcptt.user_id") == UNIT_ID
    assert request.value("rtcp.mcptt.func_alias") == "engine-12"
    assert "Imminent peril call" in request.showname("rtcp.app_data.mcptt.floor_ind")

    assert subtype(release) == "20 Floor Release(ack req)"
    assert release.value("rtcp.app_data.mcptt.user_id") == UNIT_ID

    # A participant type of five octets takes three of padding: Wireshark reads it right.
    assert subtype(queue_request) == "8 Floor Queue Position Request"
    assert queue_request.value("rtcp.mcptt.participant_type") == "typeA"
    assert queue_request.value("rtcp.app_data.mcptt.floor_participant_ref") == str(0x0102_0304)

    assert subtype(idle_again) == "5 Floor Idle"
    assert idle_again.value("rtcp.app_data.mcptt.msg_seq_num") == "44"
    assert subtype(taken_again) == "2 Floor Taken"
    assert taken_again.value("rtcp.app_data.mcptt.msg_seq_num") == "45"
    assert taken_again.value("rtcp.app_data.mcptt.user_id") == OTHER_ID


def check_info_column(info: list[str]) -> None:
    # Wireshark names the Floor Indicator as one value, not as a bit map, so the Granted's
    # normal call + queueing supported shows as Unknown; the tree has the right number.
    assert info[0].startswith("(MCPT) Floor Granted(ack req)")
    assert info[1] == "(MCPT) Floor Deny - Queue full"
    assert info[2] == "(MCPT) Floor Taken - Emergency call"
    # Wireshark 4.0 slip: the Info column names Revoke causes from the Deny table, so cause 4
    # (media burst pre-empted) shows as Deny cause 4.  The tree above has the right name.
    assert info[4] in {
        "(MCPT) Floor Revoke - Media Burst pre-empted",
        "(MCPT) Floor Revoke - Retry-after timer has not expired",
    }


@pytest.fixture
def capture_port() -> Iterator[tuple[socket.socket, int]]:
    """A bound receiver on 127.0.0.1 and its port, so that nothing else takes the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOOPBACK, 0))
        yield receiver, receiver.getsockname()[1]


def start_capture(pcap: Path, port: int, count: int) -> subprocess.Popen[bytes]:
    """Start tshark on ``lo`` and return once it reports that the capture is running.

    tshark stops by itself after ``count`` packets.
    """
    command = ["tshark", "-i", "lo", "-f", f"udp port {port}", "-c", str(count), "-w", str(pcap)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
        while CAPTURE_STARTED not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                stop(process)
                pytest.fail(f"tshark did not start capturing: {output.decode(errors='replace')}")
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk:
                pytest.fail(f"tshark exited: {output.decode(errors='replace')}")
            output += chunk
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=CAPTURE_END_TIMEOUT_S)


def test_live_capture_on_loopback(
    tmp_path: Path,
    capture_port: tuple[socket.socket, int],
    record_property: Callable[[str, object], None],
) -> None:
    receiver, port = capture_port
    record_property("tshark_version", tshark_version())
    datagrams = [b"".join(bytes(message) for message in datagram) for datagram in SENT]
    pcap = tmp_path / "mcpt.pcap"
    process = start_capture(pcap, port, len(datagrams))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for datagram in datagrams:
                sender.sendto(datagram, (LOOPBACK, port))
                assert receiver.recv(2048) == datagram
        process.wait(timeout=CAPTURE_END_TIMEOUT_S)
    finally:
        stop(process)
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == 0
    check_sent(decode(pcap, port))
    check_info_column(info_column(pcap, port))


def write_pcap(path: Path, datagrams: list[bytes], port: int) -> None:
    """A pcap file of UDP datagrams from 127.0.0.1:SOURCE_PORT to 127.0.0.1:``port``."""
    data = PCAP_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, PCAP_SNAPLEN, LINKTYPE_RAW)
    loopback = socket.inet_aton(LOOPBACK)
    for number, payload in enumerate(datagrams):
        udp = UDP_HEADER.pack(SOURCE_PORT, port, UDP_HEADER.size + len(payload), 0) + payload
        total = IPV4_HEADER.size + len(udp)
        ip = IPV4_HEADER.pack(
            IPV4_VERSION_IHL, 0, total, number, 0, IPV4_TTL, IPPROTO_UDP, 0, loopback, loopback
        )
        data += PCAP_RECORD.pack(number, 0, total, total) + ip + udp
    path.write_bytes(data)


def test_written_pcap(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    record_property("tshark_version", tshark_version())
    datagrams = [b"".join(bytes(message) for message in datagram) for datagram in SENT]
    pcap = tmp_path / "mcpt.pcap"
    write_pcap(pcap, datagrams, FILE_PORT)
    check_sent(decode(pcap, FILE_PORT))
    check_info_column(info_column(pcap, FILE_PORT))


VALID_FIXTURES: Final = [
    ("floor_request.bin", ["0 Floor Request"]),
    ("floor_granted_ack.bin", ["17 Floor Granted(ack req)"]),
    ("floor_taken.bin", ["2 Floor Taken"]),
    ("floor_taken_track_info.bin", ["2 Floor Taken"]),
    ("floor_deny.bin", ["3 Floor Deny"]),
    ("floor_release.bin", ["4 Floor Release"]),
    ("floor_idle.bin", ["5 Floor Idle"]),
    ("floor_revoke.bin", ["6 Floor Revoke"]),
    ("floor_queue_position_request.bin", ["8 Floor Queue Position Request"]),
    ("floor_queue_position_info.bin", ["9 Floor Queue Position Info"]),
    ("floor_ack.bin", ["10 Floor Ack"]),
    ("floor_release_multi_talker.bin", ["15 Floor Release Multi Talker"]),
    ("floor_release_idle.bin", ["4 Floor Release", "5 Floor Idle"]),
    ("floor_request_rel13.bin", ["0 Floor Request"]),
]


def test_fixtures(tmp_path: Path) -> None:
    pcap = tmp_path / "fixtures.pcap"
    write_pcap(pcap, [(FIXTURES / name).read_bytes() for name, _ in VALID_FIXTURES], FILE_PORT)
    frames = decode(pcap, FILE_PORT)
    names = [
        [rtcp.showname("rtcp.app.subtype").split("Subtype: ", 1)[1] for rtcp in frame]
        for frame in frames
    ]
    assert names == [expected for _, expected in VALID_FIXTURES]
    by_name = {name: frame for (name, _), frame in zip(VALID_FIXTURES, frames, strict=True)}
    for name, frame in by_name.items():
        if name not in {"floor_taken_track_info.bin", "floor_request_rel13.bin"}:
            assert all(rtcp.experts == [] for rtcp in frame), name

    [track] = by_name["floor_taken_track_info.bin"]
    assert track.value("rtcp.mcptt.participant_type") == "ptt1"
    references = track.values["rtcp.app_data.mcptt.floor_participant_ref"]
    if references == [str(0x1234), str(0xBEEF)]:
        assert track.experts == []
    else:
        # Wireshark 4.0 slip: a participant type whose length is a multiple of 4 takes no
        # padding (TS 24.380 §8.2.3.13), but Wireshark skips four octets, reads the first
        # reference as non-zero padding and the second as the only reference.
        assert references == [str(0xBEEF)]
        assert track.values["rtcp.app_data.padding"] == [str(0x1234)]
        assert track.experts == ["Non zero padding detected, faulty encoding?"]

    [ack] = by_name["floor_ack.bin"]
    assert ack.value("rtcp.app_data.mcptt.msg_type") == "17"
    # Wireshark names the early Release 13 IDs but decodes only 106's value; the others are
    # flagged as unknown fields.
    [rel13] = by_name["floor_request_rel13.bin"]
    assert rel13.values["rtcp.mcptt.fld_id"] == ["102", "109", "116"]
    assert [name.split(": ", 1)[1] for name in rel13.shownames["rtcp.mcptt.fld_id"]] == [
        "Floor Priority (102)",
        "User ID (109)",
        "Floor Indicator (116)",
    ]
    assert rel13.experts == ["Unknown field"] * 3
    [granted] = by_name["floor_granted_ack.bin"]
    assert granted.value("rtcp.app_data.mcptt.duration") == "30"
