"""The video bus: encoded video from one gateway process to others, never decoded.

The camera gateway serves the bus on a Unix stream socket; the WebRTC gateway subscribes
to one source per connection for its viewers. Frames are access units as the camera sent
them (H.264 Annex-B, RFC 6184 / ITU-T H.264 Annex B byte stream), so forwarding them to a
browser is packetisation only.

Records on the socket are length-prefixed: a 4-byte big-endian payload length, a 1-byte
record type, then the payload. A connection starts with one ``SUBSCRIBE`` (the source
name) answered by ``ACCEPTED`` or ``REFUSED`` (the reason); then the server sends
``FRAME`` records until the source is removed or the bus closes.

- **Late viewers.** RTSP has no PLI (RFC 4585 §6.3.1): a viewer cannot ask the camera for a
  keyframe. The server keeps every frame since the last keyframe of each source (the GOP)
  and sends it to a new subscriber first, so its decoder starts at once.
- **Slow consumers** never block the producer. When a subscriber's socket buffer passes
  :data:`HIGH_WATER`, its frames are dropped (counted) up to the next keyframe that finds
  the buffer below :data:`LOW_WATER`; a decoder restarts cleanly at a keyframe.

All methods of :class:`VideoBusServer` run on its event loop; a producer thread hands
frames over with ``loop.call_soon_threadsafe(server.publish, frame)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

logger = logging.getLogger(__name__)

#: Version of the frame encoding below.
VIDEO_FRAME_VERSION = 1
#: Codecs a frame may carry (RTP MIME subtype names, RFC 6184 and RFC 7741).
VIDEO_CODECS = ("H264", "VP8")
#: Flag bits of a frame.
FLAG_KEYFRAME = 0x01
_KNOWN_FLAGS = FLAG_KEYFRAME
#: Longest source name, in bytes of UTF-8.
MAX_SOURCE_LENGTH = 255
#: Longest record payload; a 4K IDR is well under it.
MAX_RECORD = 16 * 1024 * 1024
#: Bytes waiting in a subscriber's socket buffer above which it drops to the next keyframe:
#: about 2 s of a 4 Mbit/s camera, so that a slow reader falls behind by seconds, not tens.
HIGH_WATER = 1024 * 1024
#: A dropping subscriber resumes at a keyframe once its buffer holds no more than this.
LOW_WATER = 128 * 1024
#: Bounds of the GOP kept per source; past either, the GOP is forgotten until a keyframe.
MAX_GOP_FRAMES = 600
MAX_GOP_BYTES = 32 * 1024 * 1024
#: Seconds a new connection may take to name its source.
SUBSCRIBE_TIMEOUT = 5.0
#: Permissions of the socket file: the owner only.
SOCKET_MODE = 0o600

# version, flags, codec length, source length, pts (90 kHz), captured (epoch seconds)
_FRAME_HEADER = struct.Struct("!BBBBqd")
_RECORD_HEADER = struct.Struct("!IB")


class RecordType(IntEnum):
    SUBSCRIBE = 1
    ACCEPTED = 2
    REFUSED = 3
    FRAME = 4


@dataclass
class EncodedFrame:
    """One access unit of one source.

    ``pts`` is on the 90 kHz RTP video clock (RFC 6184 §8.1); ``captured`` is
    ``time.time()`` when the gateway ingested it, for end-to-end latency figures.
    """

    source: str
    codec: str
    pts: int
    keyframe: bool
    data: bytes
    captured: float

    def __bytes__(self) -> bytes:
        codec = self.codec.encode("ascii")
        source = self.source.encode("utf-8")
        if len(source) > MAX_SOURCE_LENGTH:
            raise ValueError("video frame source is too long")
        flags = FLAG_KEYFRAME if self.keyframe else 0
        header = _FRAME_HEADER.pack(
            VIDEO_FRAME_VERSION, flags, len(codec), len(source), self.pts, self.captured
        )
        return header + codec + source + self.data

    @classmethod
    def parse(cls, data: bytes) -> EncodedFrame:
        if len(data) < _FRAME_HEADER.size:
            raise ValueError("video frame is truncated")
        version, flags, codec_length, source_length, pts, captured = _FRAME_HEADER.unpack_from(data)
        if version != VIDEO_FRAME_VERSION:
            raise ValueError(f"video frame has unsupported version {version}")
        if flags & ~_KNOWN_FLAGS:
            raise ValueError("video frame has reserved flags set")
        start = _FRAME_HEADER.size
        end = start + codec_length + source_length
        if len(data) < end:
            raise ValueError("video frame is truncated")
        try:
            codec = data[start : start + codec_length].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("video frame codec is not ASCII") from None
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video frame has unknown codec {codec!r}")
        try:
            source = data[start + codec_length : end].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("video frame source is not UTF-8") from None
        if not source:
            raise ValueError("video frame has no source")
        if len(data) == end:
            raise ValueError("video frame has no data")
        return cls(
            source=source,
            codec=codec,
            pts=pts,
            keyframe=bool(flags & FLAG_KEYFRAME),
            data=bytes(data[end:]),
            captured=captured,
        )


def encode_record(kind: RecordType, payload: bytes) -> bytes:
    if len(payload) > MAX_RECORD:
        raise ValueError(f"video bus record is too large: {len(payload)} bytes")
    return _RECORD_HEADER.pack(len(payload), kind) + payload


async def read_record(reader: asyncio.StreamReader) -> tuple[RecordType, bytes]:
    """Read one record; ``asyncio.IncompleteReadError`` at end of stream."""
    header = await reader.readexactly(_RECORD_HEADER.size)
    length, kind = _RECORD_HEADER.unpack(header)
    if length > MAX_RECORD:
        raise ValueError(f"video bus record is too large: {length} bytes")
    try:
        record_type = RecordType(kind)
    except ValueError:
        raise ValueError(f"video bus record has unknown type {kind}") from None
    return record_type, await reader.readexactly(length)


class _Subscriber:
    """One connection's share of a source: writes without ever waiting."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting_for_keyframe = False
        self.dropped = 0

    def send(self, record: bytes, keyframe: bool) -> None:
        if self.writer.is_closing():
            return
        buffered = self.writer.transport.get_write_buffer_size()
        if self.waiting_for_keyframe:
            if not keyframe or buffered > LOW_WATER:
                self.dropped += 1
                return
            self.waiting_for_keyframe = False
        elif buffered and buffered + len(record) > HIGH_WATER:
            self.waiting_for_keyframe = True
            self.dropped += 1
            return
        self.writer.write(record)


@dataclass
class _Source:
    name: str
    gop: list[bytes] = field(default_factory=list)
    gop_bytes: int = 0
    subscribers: set[_Subscriber] = field(default_factory=set)
    frames: int = 0
    dropped: int = 0
    gop_overflows: int = 0


class VideoBusServer:
    """The producer side: one per camera gateway process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.Server | None = None
        self._sources: dict[str, _Source] = {}
        self._callbacks: list[Callable[[str, int], None]] = []
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        #: Frames published for a source the bus does not know (dropped).
        self.unknown_frames = 0
        #: Connections that sent something other than a valid SUBSCRIBE (closed).
        self.bad_requests = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        os.chmod(self.path, SOCKET_MODE)

    def add_source(self, source: str) -> None:
        """Make ``source`` known, so that viewers may subscribe before it sends a frame."""
        if len(source.encode("utf-8")) > MAX_SOURCE_LENGTH:
            raise ValueError("video source name is too long")
        self._sources.setdefault(source, _Source(source))

    def remove_source(self, source: str) -> None:
        """Forget ``source``; its subscribers see the end of their stream."""
        entry = self._sources.pop(source, None)
        if entry is None:
            return
        for subscriber in entry.subscribers:
            subscriber.writer.close()
        entry.subscribers.clear()

    def sources(self) -> list[str]:
        return list(self._sources)

    def subscribers(self, source: str) -> int:
        entry = self._sources.get(source)
        return len(entry.subscribers) if entry else 0

    def clear_gop(self, source: str) -> None:
        """Forget the cached GOP (the stream restarted: old frames no longer decode)."""
        entry = self._sources.get(source)
        if entry is not None:
            entry.gop.clear()
            entry.gop_bytes = 0

    def stats(self, source: str) -> dict[str, int]:
        entry = self._sources.get(source)
        if entry is None:
            raise LookupError(f"unknown video source: {source}")
        return {
            "subscribers": len(entry.subscribers),
            "frames": entry.frames,
            "dropped": entry.dropped + sum(s.dropped for s in entry.subscribers),
            "gop_frames": len(entry.gop),
            "gop_overflows": entry.gop_overflows,
        }

    def on_demand(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(source, subscriber count)`` whenever that count changes."""
        self._callbacks.append(callback)

    def publish(self, frame: EncodedFrame) -> None:
        entry = self._sources.get(frame.source)
        if entry is None:
            self.unknown_frames += 1
            return
        entry.frames += 1
        record = encode_record(RecordType.FRAME, bytes(frame))
        if frame.keyframe:
            entry.gop = [record]
            entry.gop_bytes = len(record)
        elif entry.gop:
            if len(entry.gop) >= MAX_GOP_FRAMES or entry.gop_bytes + len(record) > MAX_GOP_BYTES:
                entry.gop.clear()
                entry.gop_bytes = 0
                entry.gop_overflows += 1
            else:
                entry.gop.append(record)
                entry.gop_bytes += len(record)
        for subscriber in entry.subscribers:
            subscriber.send(record, frame.keyframe)

    async def close(self) -> None:
        for name in list(self._sources):
            self.remove_source(name)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing a connection ends its handler (its next read sees the end); handlers are
        # not cancelled, which Python 3.11's start_server callback would log as an error.
        tasks = list(self._connections.values())
        for writer in list(self._connections):
            writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=SUBSCRIBE_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            kind, payload = await asyncio.wait_for(read_record(reader), SUBSCRIBE_TIMEOUT)
            if kind != RecordType.SUBSCRIBE:
                raise ValueError("video bus connection must start with SUBSCRIBE")
            name = payload.decode("utf-8")
        except (ValueError, TimeoutError) as exc:
            self.bad_requests += 1
            logger.debug("video bus: bad request: %s", exc)
            return
        entry = self._sources.get(name)
        if entry is None:
            writer.write(
                encode_record(RecordType.REFUSED, f"unknown video source: {name}".encode())
            )
            await writer.drain()
            return
        subscriber = _Subscriber(writer)
        writer.write(encode_record(RecordType.ACCEPTED, b""))
        for record in entry.gop:
            writer.write(record)
        entry.subscribers.add(subscriber)
        self._demand(entry)
        try:
            # Nothing more is expected from a subscriber: wait for it to go.
            while await reader.read(4096):
                pass
        finally:
            if subscriber in entry.subscribers:
                entry.subscribers.discard(subscriber)
                entry.dropped += subscriber.dropped
                if self._sources.get(name) is entry:
                    self._demand(entry)

    def _demand(self, entry: _Source) -> None:
        count = len(entry.subscribers)
        for callback in self._callbacks:
            try:
                callback(entry.name, count)
            except Exception:
                logger.exception("video bus demand callback failed")


async def subscribe(path: Path, source: str) -> AsyncIterator[EncodedFrame]:
    """Frames of ``source``: the cached GOP first (from its last keyframe), then live ones.

    Raises ``LookupError("unknown video source: ...")`` for a source the bus does not
    know; the iteration ends when the source is removed or the bus closes.
    """
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_RECORD)
    try:
        writer.write(encode_record(RecordType.SUBSCRIBE, source.encode("utf-8")))
        try:
            kind, payload = await read_record(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the bus went away before it answered (a gateway restarting)
        if kind == RecordType.REFUSED:
            raise LookupError(payload.decode("utf-8", "replace"))
        if kind != RecordType.ACCEPTED:
            raise ValueError(f"video bus answered {kind.name} to SUBSCRIBE")
        while True:
            try:
                kind, payload = await read_record(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind != RecordType.FRAME:
                raise ValueError(f"video bus sent {kind.name} within a stream")
            yield EncodedFrame.parse(payload)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
