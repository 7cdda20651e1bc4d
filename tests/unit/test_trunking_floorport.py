"""The trunking floor port in-process: a FloorHub, the plugin on an ephemeral port, UDP peers.

Handset packets come from the MCPT fixtures (handset SSRC 0x0A11CE07) or are built with the
wire-format module; what the plugin sends back is read off real loopback sockets.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.floor import (
    ALL,
    AllExcept,
    CallType,
    DenyCause,
    FloorConfig,
    FloorIndicator,
    FloorMessageType,
    RevokeCause,
)
from bridge.floor import FloorMessage as CoreMessage
from bridge.floorhub import FloorHub
from bridge.gateways.trunking import mcpt
from bridge.gateways.trunking.floorport import (
    DropReason,
    FloorPort,
    call_type_of,
    location_from_mcpt,
    location_to_mcpt,
    to_mcpt,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mcpt"
UNIT_SSRC = 0x0A11_CE07
SERVER_SSRC = 0x5E2F_0001
ROOM = "tg1"
TIMEOUT_S = 1.0


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


class Peer:
    """A handset's floor socket on 127.0.0.1."""

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT_S)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def receive(self) -> list[mcpt.FloorMessage]:
        data = self.sock.recv(2048)
        return mcpt.parse_datagram(data)

    def receive_one(self) -> mcpt.FloorMessage:
        [message] = self.receive()
        return message

    def nothing(self, wait: float = 0.05) -> bool:
        return not select.select([self.sock], [], [], wait)[0]

    def drain(self) -> list[mcpt.FloorMessage]:
        messages = []
        while not self.nothing():
            messages.extend(self.receive())
        return messages


class Rig:
    """A hub with one ptt room and the floor port; handsets join and register."""

    def __init__(self, config: FloorConfig | None = None) -> None:
        self.holders: list[tuple[str, str | None]] = []
        self.events: list[dict[str, Any]] = []
        self.hub = FloorHub(
            set_holder=lambda room, p: self.holders.append((room, p)), events=self.events.append
        )
        self.hub.add_room(ROOM, config)
        self.port = FloorPort(self.hub, host="127.0.0.1", port=0, ssrc=SERVER_SSRC)
        self.peers: dict[str, Peer] = {}

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.port)

    def join(self, participant: str, ssrc: int, *, priority: int = 0, **extra: Any) -> Peer:
        self.hub.join(ROOM, participant, priority=priority, user_id=f"{participant}@pd", **extra)
        peer = Peer(ssrc)
        self.port.command(
            "register",
            {
                "participant": participant,
                "floor": {"ip": "127.0.0.1", "port": peer.port},
                "ssrc": ssrc,
                "user_id": f"{participant}@pd",
            },
        )
        self.peers[participant] = peer
        return peer

    def send(self, peer: Peer, data: bytes | mcpt.FloorMessage) -> None:
        peer.sock.sendto(bytes(data), self.address)
        self.serve()

    def serve(self) -> None:
        [sock] = self.port.sockets()
        assert select.select([sock], [], [], TIMEOUT_S)[0], "nothing reached the floor port"
        self.port.readable(sock)

    def close(self) -> None:
        self.port.close()
        for peer in self.peers.values():
            peer.sock.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def request(ssrc: int, **fields: Any) -> mcpt.FloorRequest:
    return mcpt.FloorRequest(ssrc=ssrc, **fields)


# ------------------------------------------------------------------- registration
def test_a_registered_handset_is_told_how_the_floor_stands(rig: Rig) -> None:
    a = rig.join("a", 1)
    idle = a.receive_one()
    assert isinstance(idle, mcpt.FloorIdle) and idle.ssrc == SERVER_SSRC
    rig.send(a, request(1))
    assert isinstance(a.receive_one(), mcpt.FloorGranted)
    b = rig.join("b", 2)
    taken = b.receive_one()
    assert isinstance(taken, mcpt.FloorTaken)
    assert taken.granted_party_identity == "a@pd"
    assert rig.hub.server(ROOM).holder == "a", "registering b must not disturb the holder"


def test_the_newest_registration_of_an_address_wins(rig: Rig) -> None:
    a = rig.join("a", 1)
    a.drain()
    rig.hub.join(ROOM, "b", user_id="b@pd")
    rig.port.command(
        "register", {"participant": "b", "floor": {"ip": "127.0.0.1", "port": a.port}, "ssrc": 2}
    )
    assert isinstance(a.receive_one(), mcpt.FloorIdle), "b is told, at the address it took"
    assert rig.port.stats()["evicted"] == 1 and rig.port.stats()["registered"] == 1
    rig.send(a, request(2))
    assert isinstance(a.receive_one(), mcpt.FloorGranted)
    assert rig.hub.server(ROOM).holder == "b"
    rig.send(a, request(1))  # the old handset's SSRC from that address is no longer anybody
    assert rig.port.drops[DropReason.SSRC_MISMATCH] == 1


def test_register_refuses_what_it_cannot_serve(rig: Rig) -> None:
    rig.hub.join(ROOM, "b")
    with pytest.raises(KeyError, match="participant is not in a ptt room: ghost"):
        rig.port.command(
            "register", {"participant": "ghost", "floor": {"ip": "127.0.0.1", "port": 9}, "ssrc": 3}
        )
    with pytest.raises(ValueError, match=r"^not an IPv4 address: nowhere$"):
        rig.port.command(
            "register", {"participant": "b", "floor": {"ip": "nowhere", "port": 9}, "ssrc": 2}
        )
    with pytest.raises(ValueError, match=r"^SSRC is out of range: 4294967296$"):
        rig.port.command(
            "register",
            {"participant": "b", "floor": {"ip": "127.0.0.1", "port": 9}, "ssrc": 1 << 32},
        )
    with pytest.raises(KeyError, match="participant is not registered: b"):
        rig.port.command("unregister", {"participant": "b"})
    with pytest.raises(ValueError, match=r"^unknown trunking command: dance$"):
        rig.port.command("dance", {})


def test_an_unbindable_port_leaves_the_plugin_closed_with_the_reason() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    hub = FloorHub(set_holder=lambda room, p: None, events=lambda e: None)
    hub.add_room(ROOM)
    hub.join(ROOM, "a")
    try:
        port = FloorPort(hub, host="127.0.0.1", port=taken)
        assert port.sockets() == []
        assert port.error is not None and port.error.startswith(
            f"cannot bind the floor port 127.0.0.1:{taken}:"
        )
        assert port.stats()["error"] == port.error
        with pytest.raises(ValueError, match=r"^cannot bind the floor port"):
            port.command("register", {"participant": "a", "floor": {"ip": "127.0.0.1", "port": 9}})
    finally:
        holder.close()


# ----------------------------------------------------------------- the floor itself
def test_request_grant_taken_release_idle_with_one_sendmmsg_per_wakeup(rig: Rig) -> None:
    peers = [rig.join(p, ssrc) for p, ssrc in (("a", 1), ("b", 2), ("c", 3))]
    for peer in peers:
        peer.drain()
    rig.send(peers[0], request(1, floor_priority=0))
    granted = peers[0].receive_one()
    assert isinstance(granted, mcpt.FloorGranted)
    assert granted.duration == 30 and granted.floor_priority == 0
    assert granted.floor_indicator is not None
    assert granted.floor_indicator & mcpt.FloorIndicator.NORMAL_CALL
    for peer in peers[1:]:
        taken = peer.receive_one()
        assert isinstance(taken, mcpt.FloorTaken) and taken.granted_party_identity == "a@pd"
    assert rig.holders[-1] == (ROOM, "a")
    sent = rig.port.sent
    rig.send(peers[0], mcpt.FloorRelease(ssrc=1))
    assert rig.port.sent == sent + 3
    for peer in peers:
        assert isinstance(peer.receive_one(), mcpt.FloorIdle)
    assert rig.holders[-1] == (ROOM, None)
    assert rig.port.stats()["handled"] == {"Floor Request": 1, "Floor Release": 1}


def test_fixture_request_and_queue_position_request(rig: Rig) -> None:
    unit = rig.join("unit7", UNIT_SSRC, priority=7)
    other = rig.join("other", 9)
    rig.send(other, request(9))
    unit.drain()
    rig.send(unit, fixture("floor_request"))
    info = unit.receive_one()
    assert isinstance(info, mcpt.FloorQueuePositionInfo)
    assert (info.queue_info.position, info.queue_info.priority) == (1, 7)
    rig.send(unit, fixture("floor_queue_position_request"))
    again = unit.receive_one()
    assert isinstance(again, mcpt.FloorQueuePositionInfo) and again.queue_info.position == 1


def test_emergency_indicator_pre_empts_with_revoke_cause_4(rig: Rig) -> None:
    holder = rig.join("a", 1)
    unit = rig.join("unit7", UNIT_SSRC)
    rig.send(holder, request(1))
    holder.drain()
    unit.drain()
    rig.send(unit, fixture("floor_request_rel13"))  # early Release 13 IDs, emergency call
    revoke = holder.receive_one()
    assert isinstance(revoke, mcpt.FloorRevoke)
    assert revoke.reject_cause.cause == mcpt.RevokeCause.PRE_EMPTED
    assert revoke.reject_cause.phrase == "Media Burst pre-empted"
    emergency = [e for e in rig.events if e["event"] == "floor_emergency"]
    assert emergency and emergency[0]["participant"] == "unit7"
    assert emergency[0]["call_type"] == "emergency"
    rig.send(holder, mcpt.FloorRelease(ssrc=1))
    granted = unit.drain()
    assert any(isinstance(m, mcpt.FloorGranted) for m in granted)
    assert rig.hub.server(ROOM).holder == "unit7"
    assert rig.hub.server(ROOM).call_type is CallType.EMERGENCY


def test_a_location_in_the_request_travels_to_floor_taken(rig: Rig) -> None:
    a = rig.join("a", 1)
    b = rig.join("b", 2)
    b.drain()
    where = location_to_mcpt({"lat": 48.8566, "lon": 2.3522})
    rig.send(a, request(1, location=where))
    taken = b.drain()[-1]
    assert isinstance(taken, mcpt.FloorTaken)
    position = location_from_mcpt(taken.location)
    assert position is not None
    assert position["lat"] == pytest.approx(48.8566, abs=1e-4)
    assert position["lon"] == pytest.approx(2.3522, abs=1e-4)


def test_release_asking_for_an_ack_gets_it_first(rig: Rig) -> None:
    a = rig.join("a", 1)
    rig.send(a, request(1))
    a.drain()
    packet = mcpt.FloorRelease(ssrc=1, ack_requested=True)
    rig.send(a, packet)
    ack, idle = a.receive_one(), a.receive_one()
    assert isinstance(ack, mcpt.FloorAck)
    assert ack.acknowledged == packet.subtype == 20
    assert ack.source == mcpt.FloorSource.CONTROLLING_FUNCTION
    assert isinstance(idle, mcpt.FloorIdle)


def test_acks_pass_only_when_the_server_asked_for_them() -> None:
    rig = Rig(FloorConfig(ack_required=True))
    try:
        a = rig.join("a", 1)
        idle = a.receive_one()
        assert isinstance(idle, mcpt.FloorIdle) and idle.ack_requested
        rig.send(a, request(1))
        granted = a.receive_one()
        assert isinstance(granted, mcpt.FloorGranted) and granted.ack_requested
        ack = mcpt.FloorAck.for_message(granted, ssrc=1, source=mcpt.FloorSource.FLOOR_PARTICIPANT)
        rig.send(a, ack)
        rig.send(a, ack)  # a second Ack for the same Granted is owed nothing
        assert rig.port.handled["Floor Ack"] == 1
        assert rig.port.drops[DropReason.UNSOLICITED_ACK] == 1
        member = rig.hub.server(ROOM).participant("a")
        assert not member.t20.running, "the Ack stopped T20"
    finally:
        rig.close()


# ------------------------------------------------------------------------ bad input
def test_malformed_packets_are_counted_and_the_good_ones_kept(rig: Rig) -> None:
    unit = rig.join("unit7", UNIT_SSRC)
    unit.drain()
    bad = [
        "floor_packet_truncated",
        "floor_name_invalid",
        "floor_subtype_invalid",
        "floor_request_ack_invalid",
        "floor_priority_invalid",
        "floor_user_id_invalid",
    ]
    for name in bad:
        rig.send(unit, fixture(name))
    rig.send(unit, b"\x00" * 3)
    assert rig.port.drops[DropReason.MALFORMED] == len(bad) + 1
    assert rig.port.last_error
    assert unit.nothing(), "malformed packets get no answer"
    rig.send(unit, fixture("floor_release_then_invalid"))  # the Release counts, the rest not
    assert rig.port.drops[DropReason.MALFORMED] == len(bad) + 2
    assert rig.port.handled["Floor Release"] == 1
    unit.drain()
    rig.send(unit, fixture("floor_request"))
    assert isinstance(unit.receive_one(), mcpt.FloorGranted), "the room goes on"


def test_unaffiliated_mismatched_and_unexpected_senders_are_dropped(rig: Rig) -> None:
    a = rig.join("a", 1)
    a.drain()
    stranger = Peer(77)
    try:
        rig.send(stranger, request(77))
        assert stranger.nothing(), "an unaffiliated address gets no answer"
        rig.send(a, request(999))
        rig.send(a, mcpt.FloorGranted(ssrc=1, duration=5))  # only a server sends it
        assert a.nothing()
    finally:
        stranger.sock.close()
    assert rig.port.drops[DropReason.UNAFFILIATED] == 1
    assert rig.port.drops[DropReason.SSRC_MISMATCH] == 1
    assert rig.port.drops[DropReason.UNEXPECTED_MESSAGE] == 1
    assert rig.port.stats()["dropped"] == {
        "unaffiliated": 1,
        "ssrc_mismatch": 1,
        "unexpected_message": 1,
    }
    assert rig.hub.server(ROOM).holder is None


def test_an_ack_flood_is_dropped_as_columns_without_parsing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = rig.join("a", 1)
    b = rig.join("b", 2)
    a.drain()
    b.drain()
    parsed: list[bytes] = []
    real = rig.port._datagram
    monkeypatch.setattr(
        rig.port, "_datagram", lambda reg, data: (parsed.append(data), real(reg, data))
    )
    flood = bytes(mcpt.FloorAck(ssrc=1, source=0, acknowledged=17))
    for _ in range(500):
        a.sock.sendto(flood, rig.address)
    [sock] = rig.port.sockets()
    while select.select([sock], [], [], 0.05)[0]:
        rig.port.readable(sock)
    assert rig.port.drops[DropReason.UNSOLICITED_ACK] == 500
    assert parsed == []
    rig.send(b, request(2))
    assert isinstance(b.receive_one(), mcpt.FloorGranted), "the room goes on"


def test_a_request_from_a_leg_that_left_is_unaffiliated(rig: Rig) -> None:
    a = rig.join("a", 1)
    a.drain()
    rig.hub.leave("a")
    rig.port.leg_left("a")
    rig.send(a, request(1))
    assert rig.port.drops[DropReason.UNAFFILIATED] == 1
    assert rig.port.stats()["registered"] == 0


def test_a_registered_handset_whose_room_went_is_counted_not_in_room(rig: Rig) -> None:
    a = rig.join("a", 1)
    a.drain()
    rig.hub.remove_room(ROOM)
    rig.send(a, request(1))
    assert rig.port.drops[DropReason.NOT_IN_ROOM] == 1


# -------------------------------------------------------------------- rendering
def core(kind: FloorMessageType, **fields: Any) -> CoreMessage:
    return CoreMessage(kind, "a", **fields)


def test_to_mcpt_renders_every_server_message() -> None:
    normal = FloorIndicator.NORMAL_CALL | FloorIndicator.QUEUEING_SUPPORTED
    granted = to_mcpt(core(FloorMessageType.GRANTED, duration=30, priority=7, indicator=normal), 5)
    assert granted == mcpt.FloorGranted(
        ssrc=5, duration=30, floor_priority=7, floor_indicator=mcpt.FloorIndicator(int(normal))
    )
    taken = to_mcpt(
        CoreMessage(
            FloorMessageType.TAKEN,
            AllExcept("a"),
            ack_requested=True,
            granted_party="a",
            user_id="sip:a@pd",
            alias="Unit A",
            permission_to_request=True,
            sequence=9,
        ),
        5,
    )
    assert isinstance(taken, mcpt.FloorTaken) and taken.ack_requested
    assert (taken.granted_party_identity, taken.functional_alias) == ("sip:a@pd", "Unit A")
    assert (taken.message_sequence_number, taken.permission_to_request) == (9, True)
    deny = to_mcpt(
        core(FloorMessageType.DENY, cause=DenyCause.QUEUE_FULL, cause_text="Queue full"), 5
    )
    assert isinstance(deny, mcpt.FloorDeny)
    assert deny.reject_cause == mcpt.RejectCause(mcpt.DenyCause.QUEUE_FULL, "Queue full")
    revoke = to_mcpt(core(FloorMessageType.REVOKE, cause=RevokeCause.MEDIA_BURST_TOO_LONG), 5)
    assert isinstance(revoke, mcpt.FloorRevoke) and revoke.reject_cause.cause == 2
    idle = to_mcpt(CoreMessage(FloorMessageType.IDLE, ALL, sequence=4), 5)
    assert idle == mcpt.FloorIdle(ssrc=5, message_sequence_number=4)
    info = to_mcpt(
        core(FloorMessageType.QUEUE_POSITION_INFO, queue_position=2, queue_priority=100), 5
    )
    assert isinstance(info, mcpt.FloorQueuePositionInfo)
    assert info.queue_info == mcpt.QueueInfo(2, 100)
    ack = to_mcpt(core(FloorMessageType.ACK, message_type=FloorMessageType.RELEASE), 5)
    assert ack == mcpt.FloorAck(ssrc=5, source=2, acknowledged=20)
    for message in (granted, taken, deny, revoke, idle, info, ack):
        assert mcpt.parse_datagram(bytes(message)) == [message], "round trip"
    with pytest.raises(ValueError, match=r"^no MCPT packet for floor message REQUEST$"):
        to_mcpt(core(FloorMessageType.REQUEST), 5)
    with pytest.raises(ValueError, match=r"^floor message DENY has no cause$"):
        to_mcpt(core(FloorMessageType.DENY), 5)


def test_call_type_from_the_floor_indicator() -> None:
    assert call_type_of(None) is CallType.NORMAL
    assert call_type_of(mcpt.FloorIndicator.NORMAL_CALL) is CallType.NORMAL
    assert call_type_of(mcpt.FloorIndicator.IMMINENT_PERIL_CALL) is CallType.IMMINENT_PERIL
    both = mcpt.FloorIndicator.EMERGENCY_CALL | mcpt.FloorIndicator.IMMINENT_PERIL_CALL
    assert call_type_of(both) is CallType.EMERGENCY


def test_locations_other_than_coordinates_are_not_positions() -> None:
    assert location_from_mcpt(None) is None
    assert location_from_mcpt(mcpt.Location(mcpt.LocationType.ECGI, bytes(7))) is None
    assert location_to_mcpt("somewhere") is None
    assert location_to_mcpt({"lat": "north"}) is None
    south_west = location_from_mcpt(location_to_mcpt({"lat": -33.8688, "lon": -151.2093}))
    assert south_west is not None
    assert south_west["lat"] == pytest.approx(-33.8688, abs=1e-4)
    assert south_west["lon"] == pytest.approx(-151.2093, abs=1e-4)
