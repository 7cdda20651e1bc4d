"""Rooms and participants: the domain objects every gateway turns its protocol into.

These are plain data. They are what the state store keeps, what the control process
sends to a media worker, and what a restarted worker rehydrates from.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class RoomMode(StrEnum):
    """How a room mixes: ``open`` is full duplex, ``ptt`` mixes the floor holder only."""

    OPEN = "open"
    PTT = "ptt"


class ParticipantKind(StrEnum):
    """Which gateway a participant came through."""

    RTP = "rtp"
    SIP = "sip"
    TRUNK = "trunk"
    WEBRTC = "webrtc"
    CAMERA = "camera"
    NODE = "node"


#: How far a dispatcher's other monitored rooms drop while its priority room is live.
DEFAULT_DUCK_DB = 12.0


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class RtpEndpoint:
    """Where a leg's RTP comes from and goes to (IPv4)."""

    ip: str
    port: int


@dataclass
class Participant:
    """One leg of a room.

    ``codec`` is a MIME name from :mod:`bridge.codecs`; ``payload_type`` the RTP payload
    type the leg sends and expects; ``dtmf_payload_type`` the RFC 4733 telephone-event type
    (None: not negotiated).
    """

    id: str
    room: str
    kind: ParticipantKind
    name: str = ""
    codec: str = "PCMU"
    clock_rate: int | None = None
    payload_type: int = 0
    dtmf_payload_type: int | None = None
    remote: RtpEndpoint | None = None
    ssrc: int | None = None
    gain: float = 1.0
    muted: bool = False
    latch: bool = False
    #: Floor control (ptt rooms): highest priority it may ask for (0-255), its MCPTT ID,
    #: authorised for the room's pre-emptive priority, may only listen.
    priority: int = 0
    user_id: str = ""
    pre_emptive: bool = False
    receive_only: bool = False
    worker: int = 0
    #: Monitor routing. A ``dispatcher`` leg hears its room's monitor-only sources and may
    #: monitor other rooms of its worker, each at a gain (``monitor``: room id -> linear
    #: gain); while ``priority_room`` has a live source the other rooms it hears are
    #: ducked by ``duck_db``. A ``monitor_only`` source (camera audio) is heard only by
    #: dispatcher legs (and by an ``open`` room with ``monitor_to_mix``) and never holds
    #: or requests the floor.
    dispatcher: bool = False
    monitor_only: bool = False
    monitor: dict[str, float] = field(default_factory=dict)
    priority_room: str | None = None
    duck_db: float = DEFAULT_DUCK_DB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Participant:
        data = dict(data)
        remote = data.pop("remote", None)
        kind = ParticipantKind(data.pop("kind"))
        return cls(kind=kind, remote=RtpEndpoint(**remote) if remote else None, **data)


@dataclass
class Patch:
    """Talkgroups patched together by a dispatcher until unpatched.

    The listeners of every room of a patch hear the union of the rooms' live sources, and
    the rooms share one floor. Patches that share a room form one patch group; the patch
    graph must stay a forest (no cycles), and a patch stays inside one media worker.
    """

    id: str
    rooms: list[str]
    worker: int = 0
    created: float = 0.0
    created_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Patch:
        return cls(**data)


@dataclass
class Room:
    """A conference room (a talkgroup, for PTT users)."""

    id: str
    name: str
    mode: RoomMode = RoomMode.OPEN
    rate: int = 16000
    record: bool = False
    #: Floor-control settings of a ptt room (keys of bridge.floor.FloorConfig).
    floor: dict[str, Any] = field(default_factory=dict)
    worker: int = 0
    #: An ``open`` room also mixes its monitor-only sources (camera audio) for everyone.
    monitor_to_mix: bool = False
    participants: dict[str, Participant] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["participants"] = [p.to_dict() for p in self.participants.values()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Room:
        data = dict(data)
        parts = [Participant.from_dict(p) for p in data.pop("participants", [])]
        mode = RoomMode(data.pop("mode"))
        room = cls(mode=mode, **data)
        room.participants = {p.id: p for p in parts}
        return room
