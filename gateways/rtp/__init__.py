"""The plain-RTP gateway: legs that speak bare RTP/RTCP, joined through REST.

Like Janus AudioBridge's ``allow_rtp_participants``: a client names the RTP endpoint
it sends from and receives on, with its codec and payload types; the bridge answers with
the owning media worker's shared RTP (and RTCP) address and the SSRC it will send with.
The media itself never passes through this module: the worker demultiplexes the leg's
packets on its shared port, by source address and then SSRC (RFC 3550, RFC 3551; RFC 4733
telephone-events; symmetric RTP when ``latch`` is set).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.control import Control
from bridge.model import Participant, ParticipantKind, RtpEndpoint

__all__ = ["Endpoint", "RtpJoin", "join"]


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ip: str = Field(pattern=r"^\d{1,3}(\.\d{1,3}){3}$")
    port: int = Field(ge=1, le=65535)


class RtpJoin(BaseModel):
    """A plain-RTP join request."""

    model_config = ConfigDict(extra="forbid")

    kind: ParticipantKind = ParticipantKind.RTP
    name: str = Field(default="", max_length=64)
    address: Endpoint
    codec: str = "PCMU"
    payload_type: int = Field(default=0, ge=0, le=127)
    clock_rate: int | None = None
    dtmf_payload_type: int | None = Field(default=None, ge=96, le=127)
    ssrc: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    #: Symmetric RTP: take packets from another port of the same IP (a phone behind NAT).
    latch: bool = False
    #: Floor control in ptt rooms (TS 24.380): highest priority, MCPTT ID, pre-emption.
    priority: int = Field(default=0, ge=0, le=255)
    user_id: str = Field(default="", max_length=128)
    pre_emptive: bool = False
    receive_only: bool = False
    #: A dispatcher's leg hears monitor-only sources; a monitor-only source (camera audio)
    #: is heard by dispatchers only and never takes the floor.
    dispatcher: bool = False
    monitor_only: bool = False


async def join(control: Control, room: str, request: RtpJoin) -> dict[str, Any]:
    """Join the leg to ``room``; the answer tells it where to send."""
    leg = Participant(
        id="",
        room="",
        kind=request.kind,
        name=request.name,
        codec=request.codec,
        clock_rate=request.clock_rate,
        payload_type=request.payload_type,
        dtmf_payload_type=request.dtmf_payload_type,
        remote=RtpEndpoint(request.address.ip, request.address.port),
        ssrc=request.ssrc,
        latch=request.latch,
        priority=request.priority,
        user_id=request.user_id,
        pre_emptive=request.pre_emptive,
        receive_only=request.receive_only,
        dispatcher=request.dispatcher,
        monitor_only=request.monitor_only,
    )
    participant, media = await control.join(room, leg)
    return {
        "id": participant.id,
        "room": participant.room,
        "rtp": media["rtp"],
        "rtcp": media["rtcp"],
        "ssrc": media["ssrc"],
    }
