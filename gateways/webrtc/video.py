"""Video: the encoded-frame path around aiortc's receiver, forwarding and keyframes.

aiortc's ``RTCRtpReceiver`` reassembles a complete encoded frame in its jitter buffer and
hands ``(codec, JitterFrame)`` to its decoder thread through a ``queue.Queue``.
:func:`install_tap` replaces that queue with :class:`EncodedFrameTap`, which takes each
complete frame (VP8 frames, or H.264 access units in Annex-B with 4-octet start codes, as
aiortc depayloads them) on the event loop and never decodes it: the decoder thread only
ever sees the stop signal. That is the one private attribute of aiortc this gateway
touches; :func:`install_tap` checks it exists and says so clearly when it does not.

Each source (a browser's camera ``webrtc:<participant>`` or a room camera ``camera:<name>``
from the video bus) is a :class:`VideoSource`. Viewers whose negotiated codec equals the
source's get the frames as pre-encoded ``av.Packet`` through :class:`EncodedTrack`
(aiortc's sender packs them without encoding: ``H264Encoder.pack``, ``Vp8Encoder.pack``).
Viewers that negotiated another codec share one :class:`Transcoder` per (source, codec):
at most one decode and one encode per source, never one per viewer.

Keyframes: a viewer's PLI or FIR (RFC 4585 §6.3.1, RFC 5104 §4.3.1) reaches
:meth:`VideoSource.request_keyframe`, which asks the source (a PLI to the browser, rate
limited); a new viewer first gets the cached group of pictures since the last keyframe,
so it starts at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import logging
import queue
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

logger = logging.getLogger("bridge.gateways.webrtc.video")

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
#: Codecs aiortc can send pre-encoded (its ``pack`` path).
FORWARDABLE = ("VP8", "H264")
#: Encoded frames a viewer may have queued before frames are dropped up to a keyframe.
VIEWER_QUEUE = 25  # one second at 25 frames/s
#: The cached GOP is dropped (the next keyframe starts a new one) beyond these bounds.
GOP_MAX_FRAMES = 150
GOP_MAX_BYTES = 4 * 1024 * 1024
#: A source timestamp that goes back, or forward by more than this, is a new stream (a camera
#: that reconnected, a publisher's new peer connection): the viewer's timeline continues.
PTS_JUMP = 5 * VIDEO_CLOCK_RATE
#: The step a viewer's timeline takes over such a jump (one frame at 30 fps).
PTS_STEP = VIDEO_CLOCK_RATE // 30
#: Keyframe requests sent to one source at most this often.
KEYFRAME_INTERVAL_S = 0.5
#: H.264 NAL unit types (ITU-T H.264 table 7-1): IDR slice, SPS.
H264_NAL_IDR = 5
H264_NAL_SPS = 7
_DECODERS = {"VP8": "vp8", "H264": "h264"}
_ENCODERS = {"VP8": "libvpx", "H264": "libx264"}
#: Name of the decoder queue attribute inside aiortc's RTCRtpReceiver.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether an encoded frame starts a picture without references.

    VP8: bit 0 of the frame tag is 0 on a key frame (RFC 6386 §9.1). H.264: the access
    unit holds an IDR slice (NAL type 5) or a sequence parameter set.
    """
    if codec == "VP8":
        return len(data) >= 3 and not data[0] & 0x01
    if codec == "H264":
        index = data.find(b"\x00\x00\x01")
        while index >= 0 and index + 3 < len(data):
            if data[index + 3] & 0x1F in (H264_NAL_IDR, H264_NAL_SPS):
                return True
            index = data.find(b"\x00\x00\x01", index + 3)
    return False


@dataclass
class VideoUnit:
    """One encoded access unit on its way to viewers."""

    codec: str
    pts: int
    keyframe: bool
    data: bytes
    captured: float


@dataclass
class SourceCounters:
    frames_in: int = 0
    keyframes_in: int = 0
    #: Frames delivered to viewers without decoding (one per viewer and frame).
    forwarded: int = 0
    #: Frames encoded by this source's transcoders (once per source and codec).
    transcoded: int = 0
    #: Frames a slow viewer did not take (dropped up to its next keyframe).
    dropped: int = 0
    keyframe_requests: int = 0
    keyframe_requests_sent: int = 0
    transcode_ns: int = 0
    #: Video bus subscriptions that failed or ended while the source had viewers.
    bus_errors: int = 0


class EncodedTrack(MediaStreamTrack):
    """A viewer's video: pre-encoded ``av.Packet`` that aiortc's sender packs as they are."""

    kind = "video"

    def __init__(self, codec: str) -> None:
        super().__init__()
        self.codec = codec
        self._queue: collections.deque[VideoUnit] = collections.deque()
        self._ready = asyncio.Event()
        self._need_keyframe = True
        self._last_pts: int | None = None
        self._offset = 0
        self.sent = 0
        self.dropped = 0
        #: Source timestamp jumps smoothed over (see :data:`PTS_JUMP`).
        self.restarts = 0

    def put(self, unit: VideoUnit) -> bool:
        """Queue a frame; False when it was dropped (waiting for a keyframe, or too slow)."""
        if self._need_keyframe and not unit.keyframe:
            self.dropped += 1
            return False
        if len(self._queue) >= VIEWER_QUEUE:
            self.dropped += len(self._queue)
            self._queue.clear()
            self._need_keyframe = not unit.keyframe
            if self._need_keyframe:
                self.dropped += 1
                return False
        self._need_keyframe = False
        self._queue.append(unit)
        self._ready.set()
        return True

    def _timeline(self, pts: int) -> int:
        """The source's 90 kHz timestamp on this viewer's timeline, which never goes back.

        A browser's jitter buffer drops frames whose RTP timestamps run backwards (RFC 3550
        §5.1: the timestamp is monotonic within an SSRC), so a restarted source is joined
        to the timeline one frame after the last one sent.
        """
        if self._last_pts is not None:
            out = pts + self._offset
            if not 0 <= out - self._last_pts <= PTS_JUMP:
                self._offset = self._last_pts + PTS_STEP - pts
                self.restarts += 1
        self._last_pts = pts + self._offset
        return self._last_pts

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        unit = self._queue.popleft()
        packet = av.Packet(unit.data)
        packet.pts = self._timeline(unit.pts)
        packet.time_base = VIDEO_TIME_BASE
        self.sent += 1
        return packet


class Transcoder:
    """One decode and one encode for a source whose viewers want another codec."""

    def __init__(self, source: VideoSource, codec: str) -> None:
        self.source = source
        self.codec = codec
        self.viewers: set[EncodedTrack] = set()
        self._decoder: Any = None
        self._decoder_codec = ""
        self._encoder: Any = None
        self._queue: asyncio.Queue[VideoUnit | None] = asyncio.Queue(maxsize=VIEWER_QUEUE)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._force_keyframe = True
        self._need_keyframe = True

    def put(self, unit: VideoUnit) -> None:
        """Queue a source frame; the decoder starts at a keyframe (and again after an error)."""
        if self._need_keyframe and not unit.keyframe:
            return
        self._need_keyframe = False
        try:
            self._queue.put_nowait(unit)
        except asyncio.QueueFull:
            # The frames after this one reference it: the decoder waits for a keyframe.
            self.source.counters.dropped += 1
            self._need_keyframe = True
            self.source.request_keyframe()

    def request_keyframe(self) -> None:
        self._force_keyframe = True

    def _transcode(self, unit: VideoUnit) -> list[VideoUnit]:
        if self._decoder is None or self._decoder_codec != unit.codec:
            self._decoder = av.CodecContext.create(_DECODERS[unit.codec], "r")
            self._decoder_codec = unit.codec
        out: list[VideoUnit] = []
        for frame in self._decoder.decode(av.Packet(unit.data)):
            if self._encoder is None or (self._encoder.width, self._encoder.height) != (
                frame.width,
                frame.height,
            ):
                self._encoder = self._new_encoder(frame.width, frame.height)
            frame = frame.reformat(format="yuv420p")
            frame.pts = unit.pts
            frame.time_base = VIDEO_TIME_BASE
            if self._force_keyframe:
                frame.pict_type = av.video.frame.PictureType.I
                self._force_keyframe = False
            for packet in self._encoder.encode(frame):
                data = bytes(packet)
                out.append(
                    VideoUnit(
                        codec=self.codec,
                        pts=unit.pts,
                        keyframe=is_keyframe(self.codec, data),
                        data=data,
                        captured=unit.captured,
                    )
                )
        return out

    def _new_encoder(self, width: int, height: int) -> Any:
        encoder: Any = av.CodecContext.create(_ENCODERS[self.codec], "w")
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = VIDEO_TIME_BASE
        encoder.bit_rate = 1_000_000
        if self.codec == "H264":
            encoder.options = {"tune": "zerolatency", "preset": "ultrafast", "profile": "baseline"}
        else:
            encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        return encoder

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            unit = await self._queue.get()
            if unit is None:
                return
            started = time.perf_counter_ns()
            try:
                units = await loop.run_in_executor(None, self._transcode, unit)
            except (av.FFmpegError, ValueError) as exc:
                logger.warning("transcoding %s to %s failed: %s", self.source.name, self.codec, exc)
                self._need_keyframe = True
                self.source.request_keyframe()
                continue
            self.source.counters.transcode_ns += time.perf_counter_ns() - started
            for out in units:
                self.source.counters.transcoded += 1
                for viewer in self.viewers:
                    if not viewer.put(out):
                        self._force_keyframe = True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class VideoSource:
    """One video source and its viewers, with counters and a cached GOP for late joiners."""

    def __init__(
        self,
        name: str,
        room: str,
        keyframe_sender: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.room = room
        self.codec: str | None = None
        self.counters = SourceCounters()
        self.viewers: set[EncodedTrack] = set()
        self.transcoders: dict[str, Transcoder] = {}
        self.keyframe_sender = keyframe_sender
        self._gop: list[VideoUnit] = []
        self._gop_bytes = 0
        self._last_request = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def add_viewer(self, track: EncodedTrack) -> None:
        """A viewer starts: it gets the cached GOP at once, and the source a keyframe request."""
        if self.codec is not None and track.codec != self.codec:
            self._transcoder(track.codec).viewers.add(track)
            self._transcoder(track.codec).request_keyframe()
        else:
            self.viewers.add(track)
            for unit in self._gop:
                if track.put(unit):
                    self.counters.forwarded += 1
        self.request_keyframe()

    def remove_viewer(self, track: EncodedTrack) -> None:
        self.viewers.discard(track)
        for codec, transcoder in list(self.transcoders.items()):
            transcoder.viewers.discard(track)
            if not transcoder.viewers:
                del self.transcoders[codec]
                self._spawn(transcoder.close())

    @property
    def viewer_count(self) -> int:
        return len(self.viewers) + sum(len(t.viewers) for t in self.transcoders.values())

    def _transcoder(self, codec: str) -> Transcoder:
        transcoder = self.transcoders.get(codec)
        if transcoder is None:
            transcoder = self.transcoders[codec] = Transcoder(self, codec)
            for unit in self._gop:
                transcoder.put(unit)
        return transcoder

    def publish(self, unit: VideoUnit) -> None:
        """An encoded frame from the source: forward to same-codec viewers, else transcode."""
        if self.codec != unit.codec:
            self._codec_changed(unit.codec)
        counters = self.counters
        counters.frames_in += 1
        if unit.keyframe:
            counters.keyframes_in += 1
            self._gop = []
            self._gop_bytes = 0
        if self._gop or unit.keyframe:
            self._gop.append(unit)
            self._gop_bytes += len(unit.data)
            if len(self._gop) > GOP_MAX_FRAMES or self._gop_bytes > GOP_MAX_BYTES:
                self._gop = []
                self._gop_bytes = 0
        starved = False
        for viewer in self.viewers:
            if viewer.put(unit):
                counters.forwarded += 1
            else:
                counters.dropped += 1
                starved = True
        for transcoder in self.transcoders.values():
            transcoder.put(unit)
        if starved:
            self.request_keyframe()

    def _codec_changed(self, codec: str) -> None:
        """The source's codec is known (or changed): move viewers to forwarding or transcoding."""
        self.codec = codec
        viewers = list(self.viewers) + [v for t in self.transcoders.values() for v in t.viewers]
        self.viewers.clear()
        for transcoder in self.transcoders.values():
            self._spawn(transcoder.close())
        self.transcoders.clear()
        for viewer in viewers:
            if viewer.codec == codec:
                self.viewers.add(viewer)
            else:
                self._transcoder(viewer.codec).viewers.add(viewer)

    def request_keyframe(self) -> None:
        """Ask the source for a keyframe (a viewer's PLI/FIR, a new or starved viewer)."""
        self.counters.keyframe_requests += 1
        now = time.monotonic()
        if self.keyframe_sender is None or now - self._last_request < KEYFRAME_INTERVAL_S:
            return
        self._last_request = now
        self.counters.keyframe_requests_sent += 1
        self._spawn(self.keyframe_sender())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "source": self.name,
            "room": self.room,
            "codec": self.codec,
            "viewers": self.viewer_count,
            "frames_in": c.frames_in,
            "keyframes_in": c.keyframes_in,
            "forwarded": c.forwarded,
            "transcoded": c.transcoded,
            "dropped": c.dropped,
            "keyframe_requests": c.keyframe_requests,
            "keyframe_requests_sent": c.keyframe_requests_sent,
            "transcode_ms": round(c.transcode_ns / 1e6, 3),
            "bus_errors": c.bus_errors,
            "transcoding_to": sorted(self.transcoders),
        }

    async def close(self) -> None:
        for viewer in list(self.viewers):
            viewer.stop()
        for transcoder in self.transcoders.values():
            for viewer in transcoder.viewers:
                viewer.stop()
            await transcoder.close()
        self.viewers.clear()
        self.transcoders.clear()
        for task in list(self._tasks):
            task.cancel()


class EncodedFrameTap(queue.Queue[Any]):
    """Stands in for aiortc's decoder queue: complete encoded frames go to ``on_frame``.

    ``put`` is called on the event loop by ``RTCRtpReceiver._handle_rtp_packet`` with
    ``(codec, JitterFrame)``; the stop signal (None) goes to the idle decoder thread.
    """

    def __init__(self, on_frame: Callable[[str, bytes, int], None]) -> None:
        super().__init__()
        self._on_frame = on_frame
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None, block, timeout)
            return
        codec, frame = item
        self.frames += 1
        self._on_frame(str(codec.name), bytes(frame.data), int(frame.timestamp))


def install_tap(receiver: RTCRtpReceiver, on_frame: Callable[[str, bytes, int], None]) -> None:
    """Take a receiver's complete encoded frames before its decoder (call before it starts)."""
    current = getattr(receiver, _DECODER_QUEUE, None)
    if not isinstance(current, queue.Queue):
        raise RuntimeError(
            "aiortc's RTCRtpReceiver has no decoder queue: the encoded-frame tap needs "
            "aiortc 1.9 to 1.16"
        )
    setattr(receiver, _DECODER_QUEUE, EncodedFrameTap(on_frame))


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` on each PLI or FIR a viewer sends for this sender's stream.

    aiortc's sender only sets a flag for its own encoder on these, which pre-encoded
    packets never read; the request has to reach the source instead.
    """
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            callback()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


async def send_pli(receiver: RTCRtpReceiver) -> None:
    """Ask a browser for a keyframe: a PLI (RFC 4585 §6.3.1) for each SSRC it sends."""
    for source in receiver.getSynchronizationSources():
        await receiver._send_rtcp_pli(source.source)
