"""One camera: its pull (a thread running :class:`~.ingest.RtspSession`), its state and events.

The pull runs only while the camera's video source has subscribers on the bus, and
:attr:`CameraGatewayConfig.linger_s` beyond the last one, so all viewers share one pull
and a tile reopened at once does not reconnect. A failed or dropped session is retried
with exponential back-off (``reconnect_min_s`` doubling up to ``reconnect_max_s``); the
console is told once per outage (``camera_offline``) and once on recovery
(``camera_online``, on the first frame). After a reconnect nothing is published before a
keyframe, and the bus's cached GOP is forgotten, so viewers' decoders restart cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

from bridge.config import CameraConfig, CameraGatewayConfig
from bridge.videobus import EncodedFrame, VideoBusServer

from .audio import MonitorAudio
from .ingest import IngestCounters, IngestError, Redactor, RtspSession, StreamInfo

logger = logging.getLogger("bridge.gateways.camera")

#: How long stopping a pull may wait for its thread (a blocked read ends at read_timeout).
STOP_JOIN_S = 1.0


class CameraState(StrEnum):
    #: Nobody watches: not pulling.
    IDLE = "idle"
    CONNECTING = "connecting"
    ONLINE = "online"
    #: The camera failed or dropped; retrying with back-off.
    OFFLINE = "offline"


def source_of(name: str) -> str:
    return f"camera:{name}"


def url_with_credentials(url: str, username: str, password: str) -> str:
    """The URL FFmpeg opens: credentials percent-encoded into its userinfo (RFC 3986 §3.2.1)."""
    if not username and not password:
        return url
    parts = urlsplit(url)
    userinfo = quote(username, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    return parts._replace(netloc=f"{userinfo}@{parts.netloc}").geturl()


class Camera:
    """Runtime state of one configured camera; every method runs on the event loop."""

    def __init__(
        self,
        config: CameraConfig,
        settings: CameraGatewayConfig,
        *,
        bus: VideoBusServer,
        publish: Callable[[dict[str, Any]], None],
        audio: MonitorAudio | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.source = source_of(config.name)
        self.bus = bus
        self._publish = publish
        self.audio = audio
        self.state = CameraState.IDLE
        self.viewers = 0
        self.info: StreamInfo | None = None
        self.last_error: str | None = None
        self.online_since: float | None = None
        self.last_frame_at: float | None = None
        self.last_keyframe: bytes | None = None
        self.last_keyframe_at: float | None = None
        self.reconnects = 0
        self.outages = 0
        self._totals = IngestCounters()
        self._session: RtspSession | None = None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        password = config.secret()
        self._url = url_with_credentials(config.url, config.username, password)
        secrets = (password, quote(password, safe=""), config.username) if password else ()
        self.redact = Redactor(self._url, config.url, secrets)

    # ------------------------------------------------------------------ demand
    def set_viewers(self, count: int) -> None:
        """The bus's subscriber count for this camera changed."""
        self.viewers = count
        if count > 0:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self.start()
        elif self.pulling and self._linger is None:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(
                self.settings.linger_s, lambda: loop.create_task(self._linger_expired())
            )

    async def _linger_expired(self) -> None:
        self._linger = None
        if self.viewers == 0:
            await self.stop()

    @property
    def pulling(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self.state = CameraState.CONNECTING
        self._thread = threading.Thread(
            target=self._pull_loop,
            args=(self._stop,),
            name=f"camera-{self.config.name}",
            daemon=True,
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop pulling (its thread ends within the read timeout) and leave the audio legs."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        thread, stop = self._thread, self._stop
        self._thread = self._stop = None
        if thread is not None and stop is not None:
            stop.set()
            # The thread may be in av.open (up to the open timeout) before its next read.
            timeout = self.settings.open_timeout_s + self.settings.read_timeout_s + STOP_JOIN_S
            await asyncio.to_thread(thread.join, timeout)
            if self.pulling:
                return  # a viewer started a new run meanwhile: the camera is its now
        self._fold_session()
        if self.audio is not None:
            await self.audio.leave()
        self.state = CameraState.IDLE
        self.online_since = None
        self.bus.clear_gop(self.source)

    # ------------------------------------------------------------ pull thread
    def _pull_loop(self, stop: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        backoff = self.settings.reconnect_min_s
        while not stop.is_set():
            session = RtspSession(
                self._url,
                source=self.source,
                transport=self.config.transport,
                open_timeout=self.settings.open_timeout_s,
                read_timeout=self.settings.read_timeout_s,
                audio=self.config.audio and self.audio is not None,
                redact=self.redact,
                on_open=lambda info: loop.call_soon_threadsafe(self._opened, info, stop),
                on_frame=lambda frame: loop.call_soon_threadsafe(self._frame, frame, stop),
                on_audio=lambda pcm: loop.call_soon_threadsafe(self._audio, pcm, stop),
            )
            loop.call_soon_threadsafe(self._new_session, session, stop)
            try:
                session.run(stop)
            except IngestError as exc:
                reason = str(exc)
            except Exception as exc:  # a PyAV surprise must not kill the pull for good
                reason = self.redact(f"the camera pull failed: {type(exc).__name__}: {exc}")
            else:
                return
            if session.counters.keyframes:
                backoff = self.settings.reconnect_min_s
            loop.call_soon_threadsafe(self._failed, reason, backoff, stop)
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    # ------------------------------------------------- handed over to the loop
    # Each call carries its run's stop event: a stopped run's thread may still be ending
    # (in av.open) while a new run has started, and must not act on the new one.
    def _current(self, stop: threading.Event) -> bool:
        return self._thread is not None and self._stop is stop

    def _new_session(self, session: RtspSession, stop: threading.Event) -> None:
        if not self._current(stop):
            return
        self._fold_session()
        self._session = session

    def _fold_session(self) -> None:
        """Add a finished session's counters to the totals."""
        session, self._session = self._session, None
        if session is None:
            return
        for name, value in vars(session.counters).items():
            if isinstance(value, int):
                setattr(self._totals, name, getattr(self._totals, name) + value)

    def _opened(self, info: StreamInfo, stop: threading.Event) -> None:
        if not self._current(stop):
            return
        self.info = info
        if info.transcoding:
            logger.info(
                "camera %s sends %s: transcoding to H.264 while viewed",
                self.config.name,
                info.video_codec,
            )
        if info.audio_codec is not None and self.audio is not None:
            asyncio.get_running_loop().create_task(self.audio.join())

    def _frame(self, frame: EncodedFrame, stop: threading.Event) -> None:
        if not self._current(stop):
            return
        now = time.time()
        if self.state is not CameraState.ONLINE:
            was_offline = self.state is CameraState.OFFLINE
            self.state = CameraState.ONLINE
            self.online_since = now
            self.last_error = None
            logger.info("camera %s online", self.config.name)
            self._publish(
                {
                    "event": "camera_online",
                    "camera": self.config.name,
                    "source": self.source,
                    "codec": self.info.video_codec if self.info else None,
                    "transcoding": bool(self.info and self.info.transcoding),
                    "recovered": was_offline,
                }
            )
        self.last_frame_at = now
        if frame.keyframe:
            self.last_keyframe = frame.data
            self.last_keyframe_at = now
        self.bus.publish(frame)

    def _audio(self, pcm: bytes, stop: threading.Event) -> None:
        if self._current(stop) and self.audio is not None:
            self.audio.feed(pcm)

    def _failed(self, reason: str, retry_in: float, stop: threading.Event) -> None:
        if not self._current(stop):
            return
        self.reconnects += 1
        self.last_error = reason
        self.bus.clear_gop(self.source)
        if self.audio is not None:
            self.audio.reset()
        if self.state is CameraState.OFFLINE:
            return
        self.state = CameraState.OFFLINE
        self.online_since = None
        self.outages += 1
        logger.warning(
            "camera %s offline: %s (retrying in %.1f s)", self.config.name, reason, retry_in
        )
        self._publish(
            {
                "event": "camera_offline",
                "camera": self.config.name,
                "source": self.source,
                "reason": reason,
            }
        )

    # ------------------------------------------------------------------ views
    def counters(self) -> IngestCounters:
        totals = IngestCounters(**{k: v for k, v in vars(self._totals).items() if k != "extra"})
        if self._session is not None:
            for name, value in vars(self._session.counters).items():
                if isinstance(value, int):
                    setattr(totals, name, getattr(totals, name) + value)
        return totals

    def to_dict(self) -> dict[str, Any]:
        """The camera as consoles and REST see it: never a credential."""
        c = self.config
        counters = self.counters()
        info = self.info
        return {
            "name": c.name,
            "source": self.source,
            "url": c.url,
            "has_credentials": bool(c.username or c.secret()),
            "transport": c.transport,
            "lat": c.lat,
            "lon": c.lon,
            "heading": c.heading,
            "fov": c.fov,
            "rooms": list(c.rooms),
            "audio": c.audio,
            "state": str(self.state),
            "viewers": self.viewers,
            "codec": info.video_codec if info else None,
            "width": info.width if info else None,
            "height": info.height if info else None,
            "audio_codec": info.audio_codec if info else None,
            "transcoding": bool(info and info.transcoding),
            "frames_forwarded": counters.forwarded,
            "frames_transcoded": counters.transcoded,
            "keyframes": counters.keyframes,
            "parts_joined": counters.parts_joined,
            "audio_frames": counters.audio_frames,
            "audio_legs": self.audio.joined if self.audio is not None else [],
            "reconnects": self.reconnects,
            "outages": self.outages,
            "last_error": self.last_error,
            "online_since": self.online_since,
            "last_frame_at": self.last_frame_at,
            "snapshot_at": self.last_keyframe_at,
            "capabilities": ["snapshot", *(["audio"] if c.audio else [])],
        }
