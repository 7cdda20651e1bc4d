"""Browser sessions: one ``RTCPeerConnection`` each, its room leg, its video.

The gateway answers the control process's link ops (``offer``, ``candidate``,
``hangup``, ``stats``) and turns each browser session into core calls over the link:
``join``/``leave`` for its audio leg, ``publish`` for its events. A session is keyed by
``(user, session id)``: a console that comes back with the same pair (a new peer
connection after a network change, or one that changes what video it publishes or
views; aiortc has no ICE restart and no renegotiation of added m-lines) replaces its old
peer connection. In the same room the new peer connection takes over the old one's audio
leg: the participant never leaves, so it keeps its floor, its talker state and its place
in the floor queue. The room never holds the same console twice.

A session ends on hangup, when its leg leaves the room (kicked) or the room is deleted,
and when its peer connection fails: ICE fails, DTLS fails, or consent freshness (RFC 7675;
aioice checks every ~5 s and gives up after 6 failures, about 30 s) is lost. Its leg then
leaves the room, which releases its floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from bridge.config import Config
from bridge.gatewaylink import LinkError

from .audio import L16_PAYLOAD_TYPE, L16_RATE, AudioLeg, shorten_receive_buffer
from .ice import rtc_configuration
from .mixencode import MixEncoder
from .video import (
    FORWARDABLE,
    EncodedTrack,
    VideoSource,
    VideoUnit,
    install_tap,
    is_keyframe,
    on_keyframe_request,
    send_pli,
)

logger = logging.getLogger("bridge.gateways.webrtc")

#: Longest SDP offer taken.
MAX_SDP_BYTES = 64 * 1024
#: Video sources one session may view.
MAX_VIEWS = 16
#: How often the video counters are published while there are sources.
STATS_INTERVAL_S = 5.0
#: Back-off of a camera's video bus subscription (the bus not up yet, the camera gateway
#: restarting, a camera not re-added yet): first and longest wait.
BUS_RETRY_MIN_S = 0.05
BUS_RETRY_MAX_S = 2.0
#: Longest video source name an offer may ask for.
MAX_SOURCE_NAME = 128
#: How long after its answer a peer connection has to connect (aioice reports failure only
#: after the browser's end-of-candidates, which a closed tab never sends).
CONNECT_DEADLINE_S = 30.0
#: Core events the gateway subscribes to.
SUBSCRIBED_EVENTS = ["left", "room_deleted"]
WEBRTC_PREFIX = "webrtc:"
CAMERA_PREFIX = "camera:"
UNSUPPORTED_CODECS = "unsupported codecs in SDP: audio needs opus/48000, video VP8 or H264"
BAD_CANDIDATE = "bad ICE candidate"
SESSION_CLOSED = "session closed during negotiation"
SESSION_REPLACED = "session replaced by a concurrent offer"
NOT_CONNECTED = "peer connection not connected in time"
#: How much of a refused candidate its error quotes.
MAX_QUOTED_CANDIDATE = 100
_SENDING = ("sendonly", "sendrecv")


class Link(Protocol):
    """The part of :class:`bridge.gatewaylink.GatewayLink` the gateway uses."""

    async def request(self, op: str, **args: Any) -> Any: ...


@dataclass(frozen=True)
class Settings:
    """``gateways.webrtc`` and what the gateway needs of the rest of the config."""

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_username: str = ""
    turn_credential: str = field(default="", repr=False)
    max_publishers: int = 4
    max_subscribers: int = 32
    max_sessions: int = 200
    video_bus: Path | None = None
    #: Where the loopback legs towards the media worker are bound.
    leg_host: str = "127.0.0.1"
    #: One Opus encode per distinct mix and tick, shared by its listeners (:mod:`.mixencode`).
    shared_encode: bool = True

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        section = config.gateways.webrtc
        return cls(
            stun_urls=tuple(section.stun_urls),
            turn_urls=tuple(section.turn_urls),
            turn_username=section.turn_username,
            turn_credential=section.turn_credential,
            max_publishers=section.max_publishers,
            max_subscribers=section.max_subscribers,
            max_sessions=section.max_sessions,
            video_bus=config.gateways.runtime_dir / "video.sock",
            shared_encode=section.shared_encode,
        )


@dataclass
class View:
    """One video source a session receives, on one of its m-lines."""

    source: VideoSource
    track: EncodedTrack
    mid: str | None = None


@dataclass
class Session:
    user: str
    session_id: str
    room: str
    room_name: str
    pc: RTCPeerConnection
    leg: AudioLeg
    participant: str = ""
    publish: VideoSource | None = None
    views: list[View] = field(default_factory=list)
    state: str = "new"
    created: float = field(default_factory=time.time)
    closing: bool = False
    deadline: asyncio.TimerHandle | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.session_id)

    @property
    def where(self) -> dict[str, str]:
        """What a refusal's event names the session by."""
        return {"room": self.room, "user": self.user, "session": self.session_id}

    def stats(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "session": self.session_id,
            "room": self.room,
            "participant": self.participant,
            "state": self.state,
            "publishing": self.publish.name if self.publish else None,
            "viewing": [v.source.name for v in self.views],
            "audio": self.leg.stats(),
        }


def _m_lines(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction) of each m-line of an offer; ValueError when it does not parse."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise ValueError(f"SDP offer does not parse: {exc}") from None
    return [(m.kind, m.direction or "sendrecv") for m in description.media]


class WebRtcGateway:
    """All browser sessions of this gateway process."""

    def __init__(self, link: Link, settings: Settings) -> None:
        self.link = link
        self.settings = settings
        self.sessions: dict[tuple[str, str], Session] = {}
        self.sources: dict[str, VideoSource] = {}
        self._cameras: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stats_task: asyncio.Task[None] | None = None
        self.refused: dict[str, int] = {}
        self.encoder = MixEncoder() if settings.shared_encode else None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._stats_task = asyncio.get_running_loop().create_task(self._publish_stats())

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        for session in list(self.sessions.values()):
            await self._close(session, "gateway stopping", leave=True)
        for task in list(self._cameras.values()) + list(self._tasks):
            task.cancel()
        for source in list(self.sources.values()):
            await source.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self, event: dict[str, Any]) -> None:
        self._spawn(self._send_event(event))

    async def _send_event(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(LinkError):
            await self.link.request("publish", event=event)

    def _refuse(self, message: str, kind: str, **event: Any) -> LinkError:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        self._publish({"event": "webrtc_error", "error": message, "kind": kind, **event})
        return LinkError(message, kind)

    # -------------------------------------------------------------- link ops
    async def offer(
        self,
        *,
        user: str,
        room: str,
        sdp: str,
        session: str,
        video_sources: list[str] | None = None,
        priority: int = 0,
        dispatcher: bool = False,
        receive_only: bool = False,
    ) -> dict[str, Any]:
        """Answer a browser's offer: join its leg to ``room`` and return the answer SDP.

        The answer carries all of the bridge's candidates (half-trickle, see the package
        docstring); the browser trickles its own with :meth:`candidate`.
        """
        if len(sdp.encode()) > MAX_SDP_BYTES:
            raise ValueError(f"SDP offer is longer than {MAX_SDP_BYTES} bytes")
        sources = list(video_sources or [])
        lines = _m_lines(sdp)
        audio = [d for k, d in lines if k == "audio"]
        publishes = [d for k, d in lines if k == "video" and d in _SENDING]
        views = [d for k, d in lines if k == "video" and d == "recvonly"]
        if len(audio) != 1:
            raise ValueError("SDP offer needs exactly one audio m-line")
        if len(publishes) > 1:
            raise ValueError("SDP offer may send one video stream only")
        if len(views) != len(sources):
            raise ValueError(
                f"SDP offer has {len(views)} recvonly video m-lines for "
                f"{len(sources)} video_sources"
            )
        if len(sources) > MAX_VIEWS:
            raise ValueError(f"at most {MAX_VIEWS} video_sources")
        if any(len(name) > MAX_SOURCE_NAME for name in sources):
            raise ValueError(f"video source names are at most {MAX_SOURCE_NAME} characters")
        room_info = await self.link.request("room", room=room)
        room_id, room_name = str(room_info["id"]), str(room_info["name"])

        old = self.sessions.get((user, session))
        kept: Session | None = None
        if old is not None and old.room == room_id and old.participant and not old.closing:
            kept = old
            await self._retire(old)
        elif old is not None:
            await self._close(old, "replaced by a new peer connection", leave=True)
        try:
            if (user, session) in self.sessions:  # a concurrent offer of the same session
                raise self._refuse(
                    SESSION_REPLACED, "Conflict", room=room_id, user=user, session=session
                )
            self._check_limits(room_id, room_name, user, session, bool(publishes), sources)
        except LinkError:
            if kept is not None:
                await self._end_leg(kept, "offer refused")
            raise

        pc = RTCPeerConnection(
            rtc_configuration(
                self.settings.stun_urls,
                self.settings.turn_urls,
                self.settings.turn_username,
                self.settings.turn_credential,
            )
        )
        if kept is not None:
            # The same console in the same room: the new peer connection takes over the
            # leg (and the participant, its floor and its published video source).
            leg = kept.leg
            leg.renew_mix()
            state = Session(user, session, room_id, room_name, pc, leg, kept.participant)
            state.publish = kept.publish if publishes else None
            state.created = kept.created
            if kept.publish is not None and state.publish is None:
                self.sources.pop(kept.publish.name, None)
                await kept.publish.close()
            kept.publish = None
        else:
            leg = AudioLeg(self.settings.leg_host, self.encoder)
            state = Session(user, session, room_id, room_name, pc, leg)
        self.sessions[state.key] = state
        try:
            return await self._negotiate(
                state, sdp, lines, sources, priority, dispatcher, receive_only
            )
        except BaseException:
            await self._close(state, "offer failed", leave=True)
            await self._discard(state, sources)
            raise

    def _check_limits(
        self,
        room_id: str,
        room_name: str,
        user: str,
        session: str,
        publishes: bool,
        sources: list[str],
    ) -> None:
        where = {"room": room_id, "user": user, "session": session}
        if len(self.sessions) >= self.settings.max_sessions:
            raise self._refuse(
                f"the WebRTC gateway has its maximum of {self.settings.max_sessions} sessions",
                "Busy",
                **where,
            )
        in_room = [s for s in self.sessions.values() if s.room == room_id]
        if publishes and sum(1 for s in in_room if s.publish) >= self.settings.max_publishers:
            raise self._refuse(
                f"room {room_name} has its maximum of {self.settings.max_publishers} "
                "video publishers",
                "Busy",
                **where,
            )
        if sources and sum(1 for s in in_room if s.views) >= self.settings.max_subscribers:
            raise self._refuse(
                f"room {room_name} has its maximum of {self.settings.max_subscribers} "
                "video subscribers",
                "Busy",
                **where,
            )
        for name in sources:
            if name.startswith(WEBRTC_PREFIX):
                source = self.sources.get(name)
                if source is None or source.room != room_id:
                    raise self._refuse(f"unknown video source: {name}", "NotFound", **where)
            elif not name.startswith(CAMERA_PREFIX):
                raise self._refuse(f"unknown video source: {name}", "NotFound", **where)
            elif self.settings.video_bus is None:
                raise self._refuse("room cameras are not available", "Unavailable", **where)

    async def _negotiate(
        self,
        session: Session,
        sdp: str,
        lines: list[tuple[str, str]],
        sources: list[str],
        priority: int,
        dispatcher: bool,
        receive_only: bool,
    ) -> dict[str, Any]:
        pc, leg = session.pc, session.leg
        if not leg.opened:
            await leg.open()
        self._check_open(session)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                leg.start(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self._connection_state(session)

        # Transceivers in the offer's m-line order: aiortc matches each m-line to the
        # first unassigned transceiver of its kind.
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        pending_views = list(sources)
        view_transceivers = []
        for kind, direction in lines:
            if kind == "audio":
                transceiver = pc.addTransceiver(leg.mix, direction="sendrecv")
                transceiver.setCodecPreferences(opus)
                shorten_receive_buffer(transceiver.receiver)
            elif kind == "video" and direction in _SENDING:
                transceiver = pc.addTransceiver("video", direction="recvonly")
                install_tap(transceiver.receiver, self._publisher_frames(session))
                if session.publish is not None:  # kept across the new peer connection
                    session.publish.keyframe_sender = _pli_sender(transceiver.receiver)
                else:
                    session.publish = VideoSource(
                        "",  # named once the leg has its participant id
                        session.room,
                        keyframe_sender=_pli_sender(transceiver.receiver),
                    )
            elif kind == "video" and direction == "recvonly":
                name = pending_views.pop(0)
                source = self._source(name, session.room)
                track = EncodedTrack(source.codec or "VP8")
                transceiver = pc.addTransceiver(track, direction="sendonly")
                # Cameras come off the video bus as H.264 (its ingest forwards or transcodes
                # to it): prefer it before the first frame tells.
                codec = source.codec or ("H264" if name.startswith(CAMERA_PREFIX) else None)
                self._prefer(transceiver, codec)
                view_transceivers.append((transceiver, View(source, track)))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except OperationError:
            raise self._refuse(UNSUPPORTED_CODECS, "Invalid", **session.where) from None
        except (InternalError, InvalidStateError, ValueError) as exc:
            self._check_open(session)
            raise ValueError(f"SDP offer refused: {exc}") from None
        self._check_open(session)

        if not session.participant:
            await self._join(session, priority, dispatcher, receive_only)
        if session.publish is not None and not session.publish.name:
            session.publish.name = f"{WEBRTC_PREFIX}{session.participant}"
            self.sources[session.publish.name] = session.publish

        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except InvalidStateError:  # closed meanwhile
            self._check_open(session)
            raise
        # A hangup, a newer offer or the room's end may have closed the session during ICE
        # gathering: its views are not registered, or nothing would ever remove them.
        self._check_open(session)
        local = SessionDescription.parse(pc.localDescription.sdp)
        for transceiver, view in view_transceivers:
            media = local.media[transceiver._get_mline_index() or 0]
            codecs = [c.name for c in media.rtp.codecs if c.name in FORWARDABLE]
            view.track.codec = codecs[0] if codecs else "VP8"
            view.mid = transceiver.mid
            if view.source.name.startswith(CAMERA_PREFIX):
                # A failed offer of the same camera may have dropped it meanwhile.
                view.source = self._source(view.source.name, session.room)
            source = view.source
            on_keyframe_request(transceiver.sender, source.request_keyframe)
            source.add_viewer(view.track)
            session.views.append(view)
            if source.name.startswith(CAMERA_PREFIX):
                self._watch_camera(source)
        session.state = "answered"
        session.deadline = asyncio.get_running_loop().call_later(
            CONNECT_DEADLINE_S, self._connect_deadline, session
        )
        self._publish(
            {
                "event": "webrtc_session",
                "room": session.room,
                "participant": session.participant,
                "user": session.user,
                "session": session.session_id,
                "state": "answered",
            }
        )
        return {
            "type": "answer",
            "sdp": pc.localDescription.sdp,
            "session": session.session_id,
            "room": session.room,
            "participant": session.participant,
            "publishing": session.publish.name if session.publish else None,
            "views": [
                {"source": v.source.name, "codec": v.track.codec, "mid": v.mid}
                for v in session.views
            ],
        }

    async def _join(
        self, session: Session, priority: int, dispatcher: bool, receive_only: bool
    ) -> None:
        """Join the session's loopback leg to its room (L16 towards the media worker)."""
        leg = session.leg
        joined = await self.link.request(
            "join",
            room=session.room,
            participant={
                "kind": "webrtc",
                "name": session.user,
                "user_id": session.user,
                "codec": "L16",
                "clock_rate": L16_RATE,
                "payload_type": L16_PAYLOAD_TYPE,
                "remote": {"ip": self.settings.leg_host, "port": leg.port},
                "latch": False,
                "priority": priority,
                "dispatcher": dispatcher,
                "receive_only": receive_only,
            },
        )
        session.participant = str(joined["participant"]["id"])
        if session.closing:
            # Closed while the join was under way: the close saw no participant to leave.
            with contextlib.suppress(LinkError):
                await self.link.request("leave", room=session.room, participant=session.participant)
            self._closed_event(session, SESSION_CLOSED)
            self._check_open(session)
        rtp = joined["media"]["rtp"]
        leg.connect(str(rtp["ip"]), int(rtp["port"]))

    def _check_open(self, session: Session) -> None:
        """Refuse an offer whose session was closed while it awaited."""
        if session.closing:
            raise self._refuse(SESSION_CLOSED, "Conflict", **session.where)

    def _connect_deadline(self, session: Session) -> None:
        session.deadline = None
        if not session.closing and session.state != "connected":
            self._spawn(self._close(session, NOT_CONNECTED, leave=True))

    async def _discard(self, session: Session, names: list[str]) -> None:
        """What a failed offer made and no one else uses: its unnamed published source, the
        camera sources it asked for that no view watches."""
        publish = session.publish
        if publish is not None and self.sources.get(publish.name) is not publish:
            session.publish = None
            await publish.close()
        for name in names:
            if name.startswith(CAMERA_PREFIX):
                source = self.sources.get(name)
                if source is not None and source.viewer_count == 0:
                    await self._drop_camera(source)

    async def _drop_camera(self, source: VideoSource) -> None:
        """A camera source that has no viewers left: its bus subscription ends, it goes."""
        if self._forget_camera(source):
            await source.close()

    def _forget_camera(self, source: VideoSource) -> bool:
        """Take a camera source out of :attr:`sources` and end its bus subscription, unless
        a newer source of that name has taken its place; whether it did."""
        if self.sources.get(source.name) is not source:
            return False
        del self.sources[source.name]
        task = self._cameras.pop(source.name, None)
        if task is not None:
            task.cancel()
        return True

    @staticmethod
    def _prefer(transceiver: Any, codec: str | None) -> None:
        """Offer the source's own codec first, so the viewer can take it forwarded."""
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        if codec is None:
            return
        first = [c for c in capabilities if c.mimeType.lower() == f"video/{codec.lower()}"]
        rest = [c for c in capabilities if c not in first]
        transceiver.setCodecPreferences(first + rest)

    def _source(self, name: str, room: str) -> VideoSource:
        source = self.sources.get(name)
        if source is None:  # a camera: fed from the video bus while it has viewers
            source = self.sources[name] = VideoSource(name, room)
        return source

    def _publisher_frames(self, session: Session) -> Callable[[str, bytes, int], None]:
        def on_frame(codec: str, data: bytes, timestamp: int) -> None:
            source = session.publish
            if source is None or not source.name:
                return
            unit = VideoUnit(codec, timestamp, is_keyframe(codec, data), data, time.time())
            source.publish(unit)

        return on_frame

    def _watch_camera(self, source: VideoSource) -> None:
        task = self._cameras.get(source.name)
        if task is None or task.done():
            self._cameras[source.name] = asyncio.get_running_loop().create_task(
                self._camera_feed(source)
            )

    async def _camera_feed(self, source: VideoSource) -> None:
        """A room camera's encoded frames from the video bus, never transcoded.

        Runs while the source has viewers. The bus may not be up yet (the camera gateway
        reports running before its socket exists), may go away (the camera gateway
        restarts) or may not know the camera yet (a camera added over REST is re-added
        after such a restart): the subscription is retried with back-off, and the console
        is told once per outage.
        """
        from bridge import videobus

        assert self.settings.video_bus is not None
        backoff = BUS_RETRY_MIN_S
        reported = False
        while source.viewer_count > 0:
            try:
                async for frame in videobus.subscribe(self.settings.video_bus, source.name):
                    backoff = BUS_RETRY_MIN_S
                    reported = False
                    source.publish(
                        VideoUnit(
                            frame.codec, frame.pts, frame.keyframe, frame.data, frame.captured
                        )
                    )
            except (LookupError, OSError, ValueError) as exc:
                source.counters.bus_errors += 1
                if not reported:
                    reported = True
                    logger.warning("video source %s: %s (retrying)", source.name, exc)
                    self._publish(
                        {
                            "event": "webrtc_error",
                            "room": source.room,
                            "source": source.name,
                            "error": str(exc),
                            "kind": "NotFound" if isinstance(exc, LookupError) else "Unavailable",
                        }
                    )
            else:
                source.counters.bus_errors += 1  # the stream ended: the bus went away
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BUS_RETRY_MAX_S)

    def _connection_state(self, session: Session) -> None:
        state = session.pc.connectionState
        if session.closing:
            return
        if state == "connected" and session.state != "connected":
            session.state = "connected"
            self._publish(
                {
                    "event": "webrtc_session",
                    "room": session.room,
                    "participant": session.participant,
                    "user": session.user,
                    "session": session.session_id,
                    "state": "connected",
                }
            )
        elif state in ("failed", "closed"):
            self._spawn(self._close(session, f"peer connection {state}", leave=True))

    async def candidate(
        self,
        *,
        user: str,
        session: str,
        candidate: str | None = None,
        sdpMid: str | None = None,  # noqa: N803 (the browser's names)
        sdpMLineIndex: int | None = None,  # noqa: N803
    ) -> None:
        """A candidate the browser trickled (RFC 8838); empty or None: end of candidates."""
        state = self.sessions.get((user, session))
        if state is None:
            raise LinkError(f"unknown WebRTC session: {session}", "NotFound")
        if not candidate:
            await state.pc.addIceCandidate(None)
            return
        text = candidate.removeprefix("a=").removeprefix("candidate:")
        try:
            parsed = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError):
            # aiortc asserts the field count (an AssertionError, an IndexError under -O)
            # and int()s the numeric fields: all of them are the browser's bad candidate.
            raise ValueError(f"{BAD_CANDIDATE}: {candidate[:MAX_QUOTED_CANDIDATE]}") from None
        parsed.sdpMid = sdpMid
        parsed.sdpMLineIndex = sdpMLineIndex if sdpMid is None else None
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        await state.pc.addIceCandidate(parsed)

    async def hangup(self, *, user: str, session: str) -> None:
        state = self.sessions.get((user, session))
        if state is None:
            raise LinkError(f"unknown WebRTC session: {session}", "NotFound")
        await self._close(state, "hangup", leave=True)

    async def stats(self) -> dict[str, Any]:
        return {
            "sessions": [s.stats() for s in self.sessions.values()],
            "sources": [s.stats() for s in self.sources.values()],
            "refused": dict(self.refused),
            "audio_encode": self.encoder.stats() if self.encoder is not None else None,
        }

    # ------------------------------------------------------------ endings
    def on_event(self, event: dict[str, Any]) -> None:
        """Core events: a leg that left (kicked) or a deleted room ends its sessions."""
        name = event.get("event")
        for session in list(self.sessions.values()):
            if (name == "left" and event.get("participant") == session.participant) or (
                name == "room_deleted" and event.get("room") == session.room
            ):
                self._spawn(self._close(session, str(name), leave=False))

    async def _retire(self, session: Session) -> None:
        """Close a session's peer connection and its views, keeping its leg for a new one.

        The leg stays joined (no ``leave``): the participant keeps its floor. Its published
        video source stays too, for the new peer connection to feed if it still publishes.
        """
        self._unregister(session)
        self._end_views(session)
        await session.pc.close()

    def _unregister(self, session: Session) -> None:
        """The session is closing: no connect deadline, out of :attr:`sessions`."""
        session.closing = True
        if session.deadline is not None:
            session.deadline.cancel()
            session.deadline = None
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    async def _end_leg(self, session: Session, reason: str) -> None:
        """The end of a retired session whose successor was refused: its leg leaves."""
        if session.publish is not None:
            self.sources.pop(session.publish.name, None)
            await session.publish.close()
        await session.leg.close()
        with contextlib.suppress(LinkError):
            await self.link.request("leave", room=session.room, participant=session.participant)
        self._closed_event(session, reason)

    async def _close(self, session: Session, reason: str, *, leave: bool) -> None:
        if session.closing:
            return
        self._unregister(session)
        if session.publish is not None and self.sources.get(session.publish.name) is (
            session.publish
        ):
            self.sources.pop(session.publish.name, None)
            await session.publish.close()
        self._end_views(session)
        await session.pc.close()
        await session.leg.close()
        if leave and session.participant:
            with contextlib.suppress(LinkError):
                await self.link.request("leave", room=session.room, participant=session.participant)
        if session.participant:
            self._closed_event(session, reason)

    def _end_views(self, session: Session) -> None:
        for view in session.views:
            view.source.remove_viewer(view.track)
            view.track.stop()
            if view.source.viewer_count == 0 and view.source.name.startswith(CAMERA_PREFIX):
                self._forget_camera(view.source)
        session.views = []

    def _closed_event(self, session: Session, reason: str) -> None:
        self._publish(
            {
                "event": "webrtc_session",
                "room": session.room,
                "participant": session.participant,
                "user": session.user,
                "session": session.session_id,
                "state": "closed",
                "reason": reason,
            }
        )

    async def _publish_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.sources:
                for room in {s.room for s in self.sources.values()}:
                    self._publish(
                        {
                            "event": "webrtc_stats",
                            "room": room,
                            "sources": [s.stats() for s in self.sources.values() if s.room == room],
                        }
                    )


def _pli_sender(receiver: Any) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        with contextlib.suppress(ConnectionError, InvalidStateError):
            await send_pli(receiver)

    return send
