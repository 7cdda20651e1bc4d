"""The trunking gateway inside a media worker: MCPT floor control on the worker's floor port.

LTE PTT handsets speak 3GPP TS 24.380 floor control to the bridge: each message is one RTCP
APP packet named "MCPT" (§8.1.2, :mod:`bridge.gateways.trunking.mcpt`) on a UDP port of its
own, beside the RTP media (which goes to the worker's shared RTP port like any other leg).
This plugin owns that port, ``media.floor_port_base + worker index``, and is served by the
worker between ticks as datagrams arrive (DESIGN.md, "Processes"), so floor access never
waits for a tick or for the control process.

Inbound, per wake-up: one ``recvmmsg`` drains up to :data:`READ_BATCH` datagrams into
columns; the source address is matched against the registered handsets as one vectorised
lookup, and two kinds of junk are counted and dropped as columns, before any parsing:
datagrams from addresses nobody registered, and lone Floor Acks from handsets that owe no
Ack (so an Ack flood costs a few array operations, not a parse each). What is left is
parsed with :func:`~bridge.gateways.trunking.mcpt.parse_datagram_lenient` (one datagram may
carry several MCPT packets, §8.1.1), checked against the handset's registered SSRC and
turned into one call on the worker's :class:`~bridge.floorhub.FloorHub` each:

- Floor Request: its Floor Priority, and its Floor Indicator's emergency / imminent peril
  bits as the call type (§8.2.3.15; emergency wins when both are set); a Location field
  with geographic coordinates (§8.2.3.21) travels with the request;
- Floor Release (a Release asking for an Ack gets it first), Floor Queue Position Request;
- Floor Ack, for a message the server asked to be acknowledged.

Anything else is dropped and counted by :class:`DropReason` (``stats()``).

Outbound, :meth:`FloorPort.render` turns each hub message into its MCPT packet
(:func:`to_mcpt`) and sends it to the handset's registered floor address, from the floor
port, with the plugin's SSRC. A broadcast (Floor Taken, Floor Idle) is encoded once and
sent to every handset; the answers to one wake-up's datagrams go out with one ``sendmmsg``.

Handsets are registered by the control process (``register`` after the leg joined,
``unregister``), and forgotten when their leg leaves.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from bridge.floor import CallType
from bridge.floor import FloorMessage as CoreFloorMessage
from bridge.floor import FloorMessageType as CoreMessageType
from bridge.floorhub import FloorHub
from bridge.locationinfo import (
    decode_latitude,
    decode_longitude,
    encode_latitude,
    encode_longitude,
)
from bridge.mmsg import BatchSocket, set_receive_buffer
from bridge.workerplugin import WorkerContext, WorkerPlugin

from .mcpt import (
    ACK_REQUESTED,
    FloorAck,
    FloorDeny,
    FloorGranted,
    FloorIdle,
    FloorIndicator,
    FloorMessage,
    FloorMessageType,
    FloorQueuePositionInfo,
    FloorRequest,
    FloorRevoke,
    FloorSource,
    FloorTaken,
    Location,
    LocationType,
    QueueInfo,
    RejectCause,
    parse_datagram_lenient,
)

__all__ = [
    "PLUGIN_NAME",
    "DropReason",
    "FloorPort",
    "create",
    "location_from_mcpt",
    "location_to_mcpt",
    "to_mcpt",
]

logger = logging.getLogger(__name__)

#: Commands from the control process reach this plugin as ``plugin="trunking"``.
PLUGIN_NAME: Final = "trunking"
#: Datagrams read per wake-up; the rest waits in the kernel, and the worker checks its tick
#: deadline between wake-ups, so a flood delays a tick by one batch at most.
READ_BATCH: Final = 64
#: Receive slot per datagram: an Ethernet MTU. A longer datagram is cut and dropped.
SLOT_SIZE: Final = 1500
RECEIVE_BUFFER_BYTES: Final = 1 << 20
#: Outstanding Floor Acks remembered per handset and acknowledged message type.
MAX_PENDING_ACKS: Final = 16
SSRC_BITS: Final = 32
MAX_SSRC: Final = (1 << SSRC_BITS) - 1
MAX_PORT: Final = 0xFFFF

# RFC 3550 §6.1, §6.7: the common RTCP header of the first packet of a datagram, as columns.
RTCP_HEADER_SIZE: Final = 12
RTCP_APP_TYPE: Final = 204
RTCP_WORD: Final = 4
_SUBTYPE_MASK: Final = 0x1F
_PACKET_TYPE_OFFSET: Final = 1
_LENGTH_HIGH_OFFSET: Final = 2
_LENGTH_LOW_OFFSET: Final = 3
_BYTE_BITS: Final = 8
_PORT_BITS: Final = 16
# TS 24.380 §8.2.3.21: geographic coordinates are a 24-bit latitude, then a 24-bit longitude.
_COORDINATE_OCTETS: Final = 3


class DropReason(StrEnum):
    """Why a floor-port datagram, or one packet of it, was dropped."""

    #: It does not parse as MCPT floor control (TS 24.380 §8), or was cut by the slot size.
    MALFORMED = "malformed"
    #: From an address that no affiliated handset registered.
    UNAFFILIATED = "unaffiliated"
    #: From a registered address, with an SSRC other than the handset's.
    SSRC_MISMATCH = "ssrc_mismatch"
    #: A message that only a floor control server sends (Granted, Taken, ...).
    UNEXPECTED_MESSAGE = "unexpected_message"
    #: A Floor Ack for nothing the server asked to be acknowledged.
    UNSOLICITED_ACK = "unsolicited_ack"
    #: The handset's leg is no longer in a ptt room of this worker.
    NOT_IN_ROOM = "not_in_room"


@dataclass(slots=True)
class Registration:
    """One affiliated handset's floor-control endpoint."""

    participant: str
    slot: int
    ip: str
    ip_int: int
    port: int
    ssrc: int
    user_id: str
    #: Outstanding Ack requests, by the acknowledged message's subtype (Ack bit included).
    pending_acks: dict[int, int] = field(default_factory=dict)


def _ip_to_int(ip: str) -> int:
    try:
        return int.from_bytes(socket.inet_aton(ip), "big")
    except OSError:
        raise ValueError(f"not an IPv4 address: {ip}") from None


def _address_keys(
    ip: npt.NDArray[np.uint32], port: npt.NDArray[np.uint16]
) -> npt.NDArray[np.uint64]:
    return (ip.astype(np.uint64) << np.uint64(_PORT_BITS)) | port.astype(np.uint64)


# ---------------------------------------------------------------------------------------------
# Location (TS 24.380 §8.2.3.21, coordinates coded as in 3GPP TS 23.032 clause 6.1).


def location_from_mcpt(location: Location | None) -> dict[str, float] | None:
    """A Location field's geographic coordinates as ``{"lat", "lon"}`` degrees, else None."""
    if (
        location is None
        or location.location_type != LocationType.GEOGRAPHIC_COORDINATES
        or len(location.value) != 2 * _COORDINATE_OCTETS
    ):
        return None
    value = location.value
    try:
        lat = decode_latitude(int.from_bytes(value[:_COORDINATE_OCTETS], "big"))
        lon = decode_longitude(int.from_bytes(value[_COORDINATE_OCTETS:], "big"))
    except ValueError:
        return None
    return {"lat": lat, "lon": lon}


def location_to_mcpt(location: object) -> Location | None:
    """A ``{"lat", "lon"}`` mapping as a Location field with geographic coordinates."""
    if not isinstance(location, dict):
        return None
    try:
        lat = encode_latitude(float(location["lat"]))
        lon = encode_longitude(float(location["lon"]))
    except (KeyError, TypeError, ValueError):
        return None
    return Location(
        location_type=LocationType.GEOGRAPHIC_COORDINATES,
        value=lat.to_bytes(_COORDINATE_OCTETS, "big") + lon.to_bytes(_COORDINATE_OCTETS, "big"),
    )


# ---------------------------------------------------------------------------------------------
# The floor server's protocol-neutral messages as MCPT packets (TS 24.380 §8.2.4).


def _reject_cause(message: CoreFloorMessage) -> RejectCause:
    if message.cause is None:
        raise ValueError(f"floor message {message.kind.name} has no cause")
    return RejectCause(int(message.cause), message.cause_text or None)


def to_mcpt(message: CoreFloorMessage, ssrc: int) -> FloorMessage:
    """The MCPT packet for one floor-server message, sent with ``ssrc`` (TS 24.380 §8.2.4).

    - Floor Granted: Duration (T2 left, §8.2.3.3), Floor Priority, Floor Indicator;
    - Floor Taken: Granted Party's Identity (the holder's MCPTT ID, its user id), Functional
      Alias, Permission to Request the Floor, Message Sequence Number, Location;
    - Floor Deny and Floor Revoke: Reject Cause with its phrase;
    - Floor Idle: Message Sequence Number; Floor Queue Position Info: Queue Info;
    - Floor Ack: Source (controlling function) and the acknowledged Message Type with its
      Ack bit (§8.2.3.14; only a message that asked for an Ack is acknowledged).
    """
    kind = message.kind
    ack = message.ack_requested
    indicator = FloorIndicator(int(message.indicator)) if message.indicator is not None else None
    if kind is CoreMessageType.GRANTED:
        return FloorGranted(
            ssrc=ssrc,
            ack_requested=ack,
            duration=message.duration or 0,
            floor_priority=message.priority,
            floor_indicator=indicator,
        )
    if kind is CoreMessageType.TAKEN:
        return FloorTaken(
            ssrc=ssrc,
            ack_requested=ack,
            message_sequence_number=message.sequence or 0,
            granted_party_identity=message.user_id or message.granted_party,
            permission_to_request=message.permission_to_request,
            functional_alias=message.alias or None,
            floor_indicator=indicator,
            location=location_to_mcpt(message.location),
        )
    if kind is CoreMessageType.DENY:
        return FloorDeny(
            ssrc=ssrc,
            ack_requested=ack,
            reject_cause=_reject_cause(message),
            floor_indicator=indicator,
        )
    if kind is CoreMessageType.REVOKE:
        return FloorRevoke(
            ssrc=ssrc, reject_cause=_reject_cause(message), floor_indicator=indicator
        )
    if kind is CoreMessageType.IDLE:
        return FloorIdle(
            ssrc=ssrc,
            ack_requested=ack,
            message_sequence_number=message.sequence or 0,
            floor_indicator=indicator,
        )
    if kind is CoreMessageType.QUEUE_POSITION_INFO:
        return FloorQueuePositionInfo(
            ssrc=ssrc,
            ack_requested=ack,
            queue_info=QueueInfo(message.queue_position or 0, message.queue_priority or 0),
            floor_indicator=indicator,
        )
    if kind is CoreMessageType.ACK:
        if message.message_type is None:
            raise ValueError("floor message ACK has no message type")
        return FloorAck(
            ssrc=ssrc,
            source=FloorSource.CONTROLLING_FUNCTION,
            acknowledged=int(message.message_type) | ACK_REQUESTED,
        )
    raise ValueError(f"no MCPT packet for floor message {kind.name}")


def call_type_of(indicator: int | None) -> CallType:
    """The call type a Floor Request's Floor Indicator asks for (TS 24.380 §8.2.3.15)."""
    if indicator is None:
        return CallType.NORMAL
    if indicator & FloorIndicator.EMERGENCY_CALL:
        return CallType.EMERGENCY
    if indicator & FloorIndicator.IMMINENT_PERIL_CALL:
        return CallType.IMMINENT_PERIL
    return CallType.NORMAL


# ---------------------------------------------------------------------------------------------


class FloorPort(WorkerPlugin):
    """The floor port of one media worker and the handsets registered on it.

    A port that cannot be bound (another process holds it) leaves the plugin closed: the
    worker still serves media, ``register`` fails with the reason and ``stats()`` shows it.
    """

    name = PLUGIN_NAME

    def __init__(self, floor: FloorHub, *, host: str, port: int, ssrc: int | None = None) -> None:
        self._floor = floor
        self.host = host
        self.port = 0
        #: The SSRC of this floor control server's packets.
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(SSRC_BITS)
        #: Why the floor port is closed, or None while it is open.
        self.error: str | None = None
        self._sock: socket.socket | None = None
        self._batch: BatchSocket | None = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            self.error = f"cannot bind the floor port {host}:{port}: {exc.strerror}"
            logger.error("%s; handsets cannot affiliate on this worker", self.error)
        else:
            set_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
            self._sock = sock
            self._batch = BatchSocket(
                sock, capacity=READ_BATCH, slot_size=SLOT_SIZE, timestamps=False
            )
            self.port = int(sock.getsockname()[1])

        self._by_participant: dict[str, Registration] = {}
        self._slots: list[Registration | None] = []
        self._free_slots: list[int] = []
        self._keys = np.zeros(0, dtype=np.uint64)
        self._key_slots = np.zeros(0, dtype=np.intp)
        self._awaiting_ack = np.zeros(0, dtype=np.bool_)

        #: Datagrams read, packets sent, packets the kernel would not take.
        self.received = 0
        self.sent = 0
        self.send_dropped = 0
        self.drops: Counter[DropReason] = Counter()
        #: Messages handled, by MCPT message name.
        self.handled: Counter[str] = Counter()
        #: The reason the last malformed packet was refused.
        self.last_error = ""
        #: Registrations replaced by a newer one from the same floor address.
        self.evicted = 0
        self._out: list[tuple[bytes, Registration]] | None = None
        self._last_message: CoreFloorMessage | None = None
        self._last_packet = b""
        self._handlers: dict[FloorMessageType, Callable[[Registration, Any], bool]] = {
            FloorMessageType.REQUEST: self._on_request,
            FloorMessageType.RELEASE: self._on_release,
            FloorMessageType.QUEUE_POSITION_REQUEST: self._on_queue_position_request,
            FloorMessageType.ACK: self._on_ack,
        }

    # ------------------------------------------------------------------ plugin
    def sockets(self) -> list[socket.socket]:
        return [self._sock] if self._sock is not None else []

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._batch = None

    def command(self, op: str, message: dict[str, Any]) -> Any:
        if op == "register":
            return self._register(message)
        if op == "unregister":
            self._unregister(str(message["participant"]))
            return None
        if op == "stats":
            return self.stats()
        return super().command(op, message)

    def leg_left(self, participant: str) -> None:
        self._forget(participant)

    def stats(self) -> dict[str, Any]:
        return {
            "floor_port": self.port or None,
            "error": self.error,
            "ssrc": self.ssrc,
            "registered": len(self._by_participant),
            "received": self.received,
            "sent": self.sent,
            "send_dropped": self.send_dropped,
            "evicted": self.evicted,
            "handled": dict(self.handled),
            "dropped": {reason.value: n for reason, n in self.drops.items() if n},
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------ registration
    def _register(self, message: dict[str, Any]) -> dict[str, Any]:
        """A handset's leg joined a ptt room: where its floor messages come from and go to."""
        if self._sock is None:
            raise ValueError(self.error or "the floor port is closed")
        participant = str(message["participant"])
        floor = message["floor"]
        ip = str(floor["ip"])
        ip_int = _ip_to_int(ip)
        port = int(floor["port"])
        if not 0 < port <= MAX_PORT:
            raise ValueError(f"floor port is out of range: {port}")
        ssrc = int(message["ssrc"])
        if not 0 <= ssrc <= MAX_SSRC:
            raise ValueError(f"SSRC is out of range: {ssrc}")
        room = self._floor.room_of(participant)
        owner = self._owner((ip_int << _PORT_BITS) | port)
        if owner is not None and owner.participant != participant:
            # The address moved on to another handset (the old one went away without
            # de-affiliating, and its port was given out again): the newest affiliation wins.
            logger.warning(
                "floor address %s:%d moves from %s to %s", ip, port, owner.participant, participant
            )
            self._unregister(owner.participant)
            self.evicted += 1
        self._forget(participant)
        slot = self._free_slots.pop() if self._free_slots else len(self._slots)
        registration = Registration(
            participant=participant,
            slot=slot,
            ip=ip,
            ip_int=ip_int,
            port=port,
            ssrc=ssrc,
            user_id=str(message.get("user_id") or ""),
        )
        if slot == len(self._slots):
            self._slots.append(registration)
            self._awaiting_ack = np.append(self._awaiting_ack, False)
        else:
            self._slots[slot] = registration
            self._awaiting_ack[slot] = False
        self._by_participant[participant] = registration
        self._rebuild_keys()
        self._announce(room, participant)
        return {"floor": {"ip": self.host, "port": self.port}, "ssrc": self.ssrc}

    def _announce(self, room: str, participant: str) -> None:
        """Tell a newly registered handset how the floor stands (TS 24.380 §6.3.5.2.2).

        The leg joined its room before the handset's floor address was known, so the Floor
        Idle or Floor Taken of its join went nowhere. Its floor machine is initialised again,
        now with this plugin as its renderer, which sends that message. Where leaving even
        for a moment would change the floor (it holds or waits for the floor, or the room
        revokes a holder left alone), the renderer is only attached.
        """
        server = self._floor.server(room)
        member = server.participant(participant)
        if (
            server.holder == participant
            or server.queue_position(participant) is not None
            or (server.config.deny_single_participant and server.holder is not None)
        ):
            self._floor.set_renderer(participant, self)
            return
        self._floor.leave(participant)
        self._floor.join(
            room,
            participant,
            priority=member.priority,
            pre_emptive_allowed=member.pre_emptive_allowed,
            receive_only=member.receive_only,
            user_id=member.user_id,
            alias=member.alias,
            renderer=self,
        )

    def _unregister(self, participant: str) -> None:
        if self._forget(participant) is None:
            raise KeyError(f"participant is not registered: {participant}")
        with contextlib.suppress(KeyError):  # its leg left its ptt room already
            self._floor.set_renderer(participant, None)

    def _forget(self, participant: str) -> Registration | None:
        registration = self._by_participant.pop(participant, None)
        if registration is not None:
            self._slots[registration.slot] = None
            self._awaiting_ack[registration.slot] = False
            self._free_slots.append(registration.slot)
            self._rebuild_keys()
        return registration

    def _rebuild_keys(self) -> None:
        live = [r for r in self._slots if r is not None]
        keys = np.fromiter(
            ((r.ip_int << _PORT_BITS) | r.port for r in live), dtype=np.uint64, count=len(live)
        )
        slots = np.fromiter((r.slot for r in live), dtype=np.intp, count=len(live))
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._key_slots = slots[order]

    def _owner(self, key: int) -> Registration | None:
        slots = self._lookup(np.array([key], dtype=np.uint64))
        return self._slots[int(slots[0])] if slots[0] >= 0 else None

    def _lookup(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """The registration slot of each address key, or -1."""
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.intp)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._key_slots[pos], -1)

    # ----------------------------------------------------------------- inbound
    def readable(self, sock: socket.socket) -> None:
        """Read one batch of floor datagrams and act on each (see the module docstring)."""
        if self._batch is None:
            return
        batch = self._batch.recv()
        n = batch.count
        if not n:
            return
        self.received += n
        slots = self._lookup(_address_keys(batch.src_ip, batch.src_port))
        known = slots >= 0
        self.drops[DropReason.UNAFFILIATED] += int(n - np.count_nonzero(known))
        cut = known & batch.truncated
        self.drops[DropReason.MALFORMED] += int(np.count_nonzero(cut))
        wanted = known & ~cut & ~self._unsolicited_acks(batch.data, batch.length, slots, known)
        self._out = []
        try:
            for row in np.flatnonzero(wanted):
                registration = self._slots[int(slots[row])]
                if registration is not None:
                    self._datagram(registration, batch.datagram(int(row)))
        finally:
            out, self._out = self._out, None
            self._flush(out)

    def _unsolicited_acks(
        self,
        data: npt.NDArray[np.uint8],
        length: npt.NDArray[np.int32],
        slots: npt.NDArray[np.intp],
        known: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """Datagrams that are one MCPT Floor Ack from a handset that owes no Ack, counted.

        Read as columns from the first packet's RTCP header (RFC 3550 §6.7): packet type APP,
        subtype Floor Ack (TS 24.380 table 8.2.2-1) and a length field spanning the datagram.
        """
        header = data[:, :RTCP_HEADER_SIZE]
        words = (header[:, _LENGTH_HIGH_OFFSET].astype(np.int32) << _BYTE_BITS) | header[
            :, _LENGTH_LOW_OFFSET
        ]
        lone_ack = (
            known
            & (length >= RTCP_HEADER_SIZE)
            & (header[:, _PACKET_TYPE_OFFSET] == RTCP_APP_TYPE)
            & ((header[:, 0] & _SUBTYPE_MASK) == FloorMessageType.ACK)
            & ((words + 1) * RTCP_WORD == length)
        )
        unsolicited: npt.NDArray[np.bool_] = (
            lone_ack & ~self._awaiting_ack[np.where(known, slots, 0)]
        )
        self.drops[DropReason.UNSOLICITED_ACK] += int(np.count_nonzero(unsolicited))
        return unsolicited

    def _datagram(self, registration: Registration, data: bytes) -> None:
        messages, errors = parse_datagram_lenient(data)
        if errors:
            self.drops[DropReason.MALFORMED] += len(errors)
            self.last_error = errors[-1]
        for message in messages:
            if message.ssrc != registration.ssrc:
                self.drops[DropReason.SSRC_MISMATCH] += 1
                continue
            handler = self._handlers.get(message.message_type)
            if handler is None:
                self.drops[DropReason.UNEXPECTED_MESSAGE] += 1
                continue
            try:
                if handler(registration, message):
                    self.handled[message.name] += 1
            except KeyError:
                self.drops[DropReason.NOT_IN_ROOM] += 1

    def _on_request(self, registration: Registration, message: FloorRequest) -> bool:
        self._floor.request(
            registration.participant,
            priority=message.floor_priority,
            call_type=call_type_of(message.floor_indicator),
            location=location_from_mcpt(message.location),
        )
        return True

    def _on_release(self, registration: Registration, message: FloorMessage) -> bool:
        if message.ack_requested:
            ack = FloorAck.for_message(
                message, ssrc=self.ssrc, source=FloorSource.CONTROLLING_FUNCTION
            )
            self._send(bytes(ack), registration)
        self._floor.release(registration.participant)
        return True

    def _on_queue_position_request(self, registration: Registration, message: FloorMessage) -> bool:
        self._floor.queue_position_request(registration.participant)
        return True

    def _on_ack(self, registration: Registration, message: FloorAck) -> bool:
        acknowledged = message.acknowledged | ACK_REQUESTED
        pending = registration.pending_acks
        count = pending.get(acknowledged, 0)
        if not count:
            self.drops[DropReason.UNSOLICITED_ACK] += 1
            return False
        if count > 1:
            pending[acknowledged] = count - 1
        else:
            del pending[acknowledged]
            self._awaiting_ack[registration.slot] = bool(pending)
        self._floor.ack(registration.participant, acknowledged)
        return True

    # ---------------------------------------------------------------- outbound
    def render(self, room: str, participant: str, message: CoreFloorMessage) -> None:
        """Send one hub message to a registered handset as its MCPT packet."""
        registration = self._by_participant.get(participant)
        if registration is None:
            return
        if message is not self._last_message:
            self._last_packet = bytes(to_mcpt(message, self.ssrc))
            self._last_message = message
        if message.ack_requested:
            subtype = int(message.kind) | ACK_REQUESTED
            pending = registration.pending_acks
            pending[subtype] = min(pending.get(subtype, 0) + 1, MAX_PENDING_ACKS)
            self._awaiting_ack[registration.slot] = True
        self._send(self._last_packet, registration)

    def _send(self, packet: bytes, registration: Registration) -> None:
        if self._out is not None:
            self._out.append((packet, registration))
            return
        if self._sock is None:
            return
        try:
            self._sock.sendto(packet, (registration.ip, registration.port))
        except OSError:
            self.send_dropped += 1
        else:
            self.sent += 1

    def _flush(self, out: list[tuple[bytes, Registration]]) -> None:
        """Send what one wake-up produced with one ``sendmmsg``."""
        if not out or self._batch is None:
            return
        count = len(out)
        width = max(len(packet) for packet, _ in out)
        payload = np.zeros((count, width), dtype=np.uint8)
        lengths = np.empty(count, dtype=np.int32)
        ips = np.empty(count, dtype=np.uint32)
        ports = np.empty(count, dtype=np.uint16)
        for i, (packet, registration) in enumerate(out):
            payload[i, : len(packet)] = np.frombuffer(packet, dtype=np.uint8)
            lengths[i] = len(packet)
            ips[i] = registration.ip_int
            ports[i] = registration.port
        sent = self._batch.send(
            np.zeros((count, 0), dtype=np.uint8),
            payload,
            np.arange(count, dtype=np.intp),
            lengths,
            ips,
            ports,
        )
        self.sent += sent
        self.send_dropped += count - sent


def create(context: WorkerContext) -> FloorPort:
    """The worker plugin: floor port ``media.floor_port_base + index`` on ``media.rtp_host``."""
    media = context.config.media
    return FloorPort(context.floor, host=media.rtp_host, port=media.floor_port_base + context.index)
