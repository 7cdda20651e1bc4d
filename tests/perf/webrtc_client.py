"""aiortc clients of the WebRTC gateway, as the benchmarks' load processes run them.

A client connects to socket.io ``/rooms`` with its token, makes an aiortc peer connection
and sends it as a ``webrtc_offer`` (``video_sources`` names what each recvonly video m-line
receives), then waits for ICE and DTLS. Imported only inside load processes (aiortc and
socketio are heavy to import and are not needed by the measuring parent).

:class:`FrameClock` receives video without decoding it: it replaces the receiver's decoder
queue with the gateway's own encoded-frame tap (so aiortc's decoder thread never runs), and
times each frame when its last RTP packet (the marker bit, RFC 6184 §5.1) reaches the
receiver, after SRTP. That is the moment a browser's jitter buffer could have the frame
complete; aiortc's own jitter buffer hands a frame on only when the next frame's first
packet arrives, one frame interval later, so its output is not used for timing.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import time
from collections.abc import Iterable
from typing import Any, Final

import av
import numpy as np
import socketio
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamTrack

from bridge.gateways.webrtc.video import install_tap

CONNECT_TIMEOUT_S: Final = 60.0
OFFER_TIMEOUT_S: Final = 30.0
SIO_WAIT_S: Final = 10.0
POLL_S: Final = 0.1
AUDIO_RATE: Final = 48000
AUDIO_FRAME: Final = 960
#: Frames whose last packet never came (a loss) are forgotten past this many open frames.
MAX_OPEN_FRAMES: Final = 64
DIGEST_SIZE: Final = 8
#: RTP sequence numbers are 16 bits (RFC 3550 §5.1).
SEQUENCE_MASK: Final = 0xFFFF


class QuietTrack(MediaStreamTrack):
    """Silence at 48 kHz in 20 ms frames, paced in real time: a muted console microphone."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pts = 0
        self.start = time.monotonic()

    async def recv(self) -> Any:
        await asyncio.sleep(max(0.0, self.start + self.pts / AUDIO_RATE - time.monotonic()))
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, AUDIO_FRAME), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = AUDIO_RATE, self.pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.pts += AUDIO_FRAME
        return frame


async def connect(base: str, token: str) -> socketio.AsyncClient:
    """A socket.io client on ``/rooms``, authenticated by ``token``."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(base, namespaces=["/rooms"], auth={"token": token}, wait_timeout=SIO_WAIT_S)
    return sio


async def offer_answer(
    sio: socketio.AsyncClient, pc: RTCPeerConnection, room: str, session: str, sources: list[str]
) -> dict[str, Any]:
    """Send ``pc``'s offer as ``webrtc_offer`` and apply the answer; returns the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    answer: dict[str, Any] = await sio.call(
        "webrtc_offer",
        {"room": room, "sdp": pc.localDescription.sdp, "session": session,
         "video_sources": sources},
        namespace="/rooms",
        timeout=OFFER_TIMEOUT_S,
    )  # fmt: skip
    if not answer.get("ok"):
        raise RuntimeError(f"offer {session} refused: {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return answer


async def wait_connected(pcs: Iterable[RTCPeerConnection], timeout: float) -> int:
    """Wait until every peer connection is connected (or the timeout); how many are."""
    pcs = list(pcs)
    deadline = time.monotonic() + timeout
    while True:
        up = sum(1 for pc in pcs if pc.connectionState == "connected")
        if up == len(pcs) or time.monotonic() >= deadline:
            return up
        await asyncio.sleep(POLL_S)


def frame_digest(annexb: bytes) -> str:
    """A digest of an H.264 access unit's NAL units, whatever their start codes.

    The camera gateway's access units and what a viewer reassembles from RTP (RFC 6184
    STAP-A and FU-A, with 4-octet start codes) hold the same NAL units; the split is
    aiortc's own, the one its sender packs by.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for nal in H264Encoder._split_bitstream(annexb):
        digest.update(len(nal).to_bytes(4, "big"))
        digest.update(nal)
    return digest.hexdigest()


class FrameClock:
    """A video receiver's frames, timed at their last RTP packet and never decoded.

    ``arrivals`` holds ``(digest, time.time())`` per complete frame (see
    :func:`frame_digest`); ``frames`` counts them, ``lost`` the frames whose packets stopped
    short of the last one, ``complete`` the frames aiortc's jitter buffer reassembled
    (through the tap that stands in for its decoder).
    """

    def __init__(self, receiver: RTCRtpReceiver, keep: bool = True) -> None:
        self.keep = keep
        self.frames = 0
        self.complete = 0
        self.lost = 0
        self.arrivals: list[tuple[str, float]] = []
        self._open: dict[int, list[tuple[int, bytes]]] = {}
        install_tap(receiver, self._on_complete)
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            now = time.time()
            await original(packet, arrival_time_ms)
            data = getattr(packet, "_data", None)  # depayloaded by aiortc (None: not media)
            if data is None:
                return
            parts = self._open.setdefault(packet.timestamp, [])
            parts.append((packet.sequence_number, data))
            if not packet.marker:
                if len(self._open) > MAX_OPEN_FRAMES:
                    del self._open[next(iter(self._open))]
                    self.lost += 1
                return
            # Frames begun before this one and still open lost a packet (loopback keeps order).
            while (oldest := next(iter(self._open))) != packet.timestamp:
                del self._open[oldest]
                self.lost += 1
            del self._open[packet.timestamp]
            self.frames += 1
            if self.keep:
                first = parts[0][0]
                parts.sort(key=lambda part: (part[0] - first) & SEQUENCE_MASK)
                self.arrivals.append((frame_digest(b"".join(d for _, d in parts)), now))

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def _on_complete(self, codec: str, data: bytes, timestamp: int) -> None:
        self.complete += 1
