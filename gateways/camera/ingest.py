"""One RTSP session through PyAV, run in a thread of its own (PyAV blocks).

- RTSP 1.0 (RFC 2326) with RTP over TCP interleaving (§10.12) or UDP; FFmpeg's demuxer
  depacketises H.264 (RFC 6184) into whole access units in Annex B.
- H.264 is forwarded as it came (:mod:`.h264`): no decode, no encode.
- Any other video codec is decoded and encoded to H.264 (libx264, zero latency): a pull
  runs only while someone watches, so this happens only while a viewer needs it; every
  such frame is counted as transcoded.
- Audio (PCMU, PCMA, AAC...) is decoded and resampled to 16-bit mono at
  :data:`AUDIO_RATE` for the camera's monitor leg.

The session reports through callbacks, from its thread; the caller hands them over to its
event loop. Failures raise :class:`IngestError` with a message that never holds the URL's
credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av

from bridge.videobus import EncodedFrame

from .h264 import AccessUnitJoiner, ParameterSets, parameter_sets_from_extradata

logger = logging.getLogger("bridge.gateways.camera")

#: The RTP video clock (RFC 6184 §8.1).
VIDEO_CLOCK = 90000
#: Camera audio goes to the monitor leg at this rate (G.711's, RFC 3551 §4.5.14).
AUDIO_RATE = 8000
#: The codec forwarded untouched; anything else is transcoded to it.
FORWARD_CODEC = "h264"
#: Encoder settings for the transcoding path: one IDR a second at 25 fps, no B-frames.
TRANSCODE_GOP = 25
TRANSCODE_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
TRANSCODE_FALLBACK_RATE = 25


class IngestError(RuntimeError):
    """The session failed or ended; the message is safe to show (no credentials)."""


@dataclass
class StreamInfo:
    """What the camera sends, once the session is open."""

    video_codec: str
    width: int
    height: int
    audio_codec: str | None
    transcoding: bool


@dataclass
class IngestCounters:
    forwarded: int = 0
    transcoded: int = 0
    keyframes: int = 0
    #: Frames dropped while waiting for the session's first keyframe.
    waiting: int = 0
    audio_frames: int = 0
    bad_packets: int = 0
    parameter_sets_repaired: int = 0
    #: Demuxed parts joined into one access unit (see :class:`.h264.AccessUnitJoiner`).
    parts_joined: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Redactor:
    """Removes a URL's credentials from text (FFmpeg's errors may quote the URL)."""

    def __init__(self, secret_url: str, safe_url: str, secrets: tuple[str, ...]) -> None:
        self._replacements = [(secret_url, safe_url)]
        self._replacements += [(s, "***") for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret, shown in self._replacements:
            text = text.replace(secret, shown)
        return text


class RtspSession:
    """Pulls one camera until ``stop`` is set or the camera fails."""

    def __init__(
        self,
        url: str,
        *,
        source: str,
        transport: str,
        open_timeout: float,
        read_timeout: float,
        audio: bool,
        redact: Callable[[str], str],
        on_open: Callable[[StreamInfo], object],
        on_frame: Callable[[EncodedFrame], object],
        on_audio: Callable[[bytes], object],
    ) -> None:
        self._url = url
        self.source = source
        self.transport = transport
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.audio = audio
        self._redact = redact
        self._on_open = on_open
        self._on_frame = on_frame
        self._on_audio = on_audio
        self.counters = IngestCounters()
        self._parameter_sets = ParameterSets()
        self._joiner = AccessUnitJoiner()
        self._started = False
        self._last_pts = 0
        self._clock_start = 0.0

    def run(self, stop: threading.Event) -> None:
        """Open, pull until ``stop`` or failure; raise :class:`IngestError` on failure."""
        try:
            container = av.open(
                self._url,
                options={"rtsp_transport": self.transport},
                timeout=(self.open_timeout, self.read_timeout),
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise IngestError(self._redact(f"cannot open the camera: {exc}")) from None
        try:
            self._pull(container, stop)
        finally:
            container.close()

    # ---------------------------------------------------------------- internals
    def _pull(self, container: Any, stop: threading.Event) -> None:
        if not container.streams.video:
            raise IngestError("the camera sends no video")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if self.audio and container.streams.audio else None
        codec = video.codec_context.name
        transcoder = None if codec == FORWARD_CODEC else _Transcoder(video)
        if transcoder is None:
            self._parameter_sets.learn(parameter_sets_from_extradata(video.codec_context.extradata))
        resampler = (
            av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE) if audio else None
        )
        self._on_open(
            StreamInfo(
                video_codec=codec,
                width=video.codec_context.width,
                height=video.codec_context.height,
                audio_codec=audio.codec_context.name if audio is not None else None,
                transcoding=transcoder is not None,
            )
        )
        self._clock_start = time.monotonic()
        streams = [video] if audio is None else [video, audio]
        try:
            for packet in container.demux(streams):
                if stop.is_set():
                    return
                if packet.size == 0:
                    continue
                if packet.stream is video:
                    if transcoder is None:
                        self._forward(packet)
                    else:
                        for data, pts in transcoder.transcode(packet):
                            self.counters.transcoded += 1
                            self._publish(data, pts)
                elif resampler is not None:
                    self._audio(packet, resampler)
        except (av.error.FFmpegError, OSError) as exc:
            raise IngestError(self._redact(f"the camera stream failed: {exc}")) from None
        if not stop.is_set():
            raise IngestError("the camera ended the stream")

    def _pts90k(self, pts: int | None, time_base: Any) -> int:
        if pts is None or time_base is None:
            # FFmpeg gives the first access unit no pts before RTCP sync: take the clock.
            return self._last_pts or int((time.monotonic() - self._clock_start) * VIDEO_CLOCK)
        return int(pts * time_base * VIDEO_CLOCK)

    def _forward(self, packet: Any) -> None:
        for data, pts in self._joiner.push(bytes(packet), packet.pts):
            self.counters.forwarded += 1
            self.counters.parts_joined = self._joiner.joined
            self._publish(data, self._pts90k(pts, packet.time_base))

    def _publish(self, data: bytes, pts: int) -> None:
        data, keyframe = self._parameter_sets.prepare(data)
        self.counters.parameter_sets_repaired = self._parameter_sets.repaired
        if not self._started:
            if not keyframe:
                self.counters.waiting += 1
                return
            self._started = True
        self._last_pts = pts
        if keyframe:
            self.counters.keyframes += 1
        self._on_frame(EncodedFrame(self.source, "H264", pts, keyframe, data, time.time()))

    def _audio(self, packet: Any, resampler: Any) -> None:
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            self.counters.bad_packets += 1
            return
        for frame in frames:
            for out in resampler.resample(frame):
                self.counters.audio_frames += 1
                self._on_audio(bytes(out.planes[0])[: out.samples * 2])


class _Transcoder:
    """Any decodable video to H.264 (Annex B), for cameras whose codec browsers lack."""

    def __init__(self, stream: Any) -> None:
        self._decoder = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or TRANSCODE_FALLBACK_RATE
        self._rate = Fraction(rate).limit_denominator(1000)
        self._encoder: Any = None
        self._index = 0

    def transcode(self, packet: Any) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        for frame in self._decoder.decode(packet):
            encoder = self._encoder_for(frame)
            if (frame.format.name, frame.width, frame.height) != (
                "yuv420p",
                encoder.width,
                encoder.height,
            ):
                frame = frame.reformat(width=encoder.width, height=encoder.height, format="yuv420p")
            frame.pts = self._index
            frame.time_base = encoder.time_base
            self._index += 1
            for encoded in encoder.encode(frame):
                pts = int(encoded.pts * encoder.time_base * VIDEO_CLOCK)
                out.append((bytes(encoded), pts))
        return out

    def _encoder_for(self, frame: Any) -> Any:
        if self._encoder is None:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width = frame.width - frame.width % 2
            encoder.height = frame.height - frame.height % 2
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = 1 / self._rate
            encoder.framerate = self._rate
            encoder.gop_size = TRANSCODE_GOP
            encoder.max_b_frames = 0
            encoder.options = dict(TRANSCODE_OPTIONS)
            encoder.open()
            self._encoder = encoder
        return self._encoder
