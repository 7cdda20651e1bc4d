"""A call's audio leg between a SIP worker and a media worker: loopback L16 RTP.

pjsua2's conference bridge hands the worker one 20 ms frame of the call's audio at a
time (little-endian PCM at the bridge's clock) and asks for one frame to play to the
phone. The leg sends the first to the media worker as L16 (RFC 3551 §4.5.11: network
byte order) and keeps the room's mix that comes back in a shallow queue, one packet per
frame: the pjsua2 clock and the media worker's tick both run at 20 ms, so a few frames
of depth absorb their drift; beyond that the oldest frame is dropped (a slip, counted).

Prompts and floor tones are mixed into what the phone hears here too.
"""

from __future__ import annotations

import array
import collections
import random
import socket
import struct
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
#: The dynamic payload type of the loopback L16 leg (RFC 3551 §6).
L16_PAYLOAD_TYPE = 96
#: Frames of the room's mix kept for the phone; more is a slip and the oldest goes.
MAX_QUEUED_FRAMES = 4
#: Packets read from the leg's socket per frame request at most.
MAX_READS = 16
#: Whether pjmedia's PCM (host order) must be byte-swapped to and from network order.
SWAP = sys.byteorder == "little"


def swap16(data: bytes) -> bytes:
    """16-bit samples between little-endian and network order (``array.byteswap`` is
    four times faster than numpy for one 20 ms frame, which matters 100 times a second
    per call in the conference clock's thread)."""
    if not SWAP:
        return data
    samples = array.array("h", data)
    samples.byteswap()
    return samples.tobytes()


@dataclass
class LegStats:
    sent: int = 0
    received: int = 0
    bad: int = 0
    slips: int = 0
    underruns: int = 0
    send_errors: int = 0


class Prompt:
    """Samples being played to the phone, mixed over the room (or alone before joining)."""

    def __init__(self, name: str, samples: npt.NDArray[np.int16], loop: bool = False) -> None:
        self.name = name
        self.samples = samples
        self.loop = loop
        self.position = 0

    def take(self, count: int) -> tuple[npt.NDArray[np.int16], bool]:
        """The next ``count`` samples (zero-padded) and whether the prompt has ended."""
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count:
            chunk = self.samples[self.position : self.position + count - filled]
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self.position += len(chunk)
            if self.position >= len(self.samples):
                if not self.loop or len(self.samples) == 0:
                    return out, True
                self.position = 0
        return out, False


class LoopbackLeg:
    """One call's L16 leg: a UDP socket on 127.0.0.1, its RTP state and its queues."""

    def __init__(self, rate: int, frame_ms: int = 20, host: str = "127.0.0.1") -> None:
        self.rate = rate
        self.samples = rate * frame_ms // 1000
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.remote: tuple[str, int] | None = None
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.queue: collections.deque[bytes] = collections.deque()
        self.prompt: Prompt | None = None
        self.stats = LegStats()
        self.finished: list[str] = []
        self._silence = bytes(self.samples * 2)

    def attach(self, ip: str, port: int) -> None:
        self.remote = (ip, port)

    def detach(self) -> None:
        self.remote = None
        self.queue.clear()

    def close(self) -> None:
        self.remote = None
        self.sock.close()

    # ------------------------------------------------------- phone -> room
    def send_frame(self, pcm_le: bytes) -> None:
        """Send one frame of the call's audio (little-endian PCM) as an L16 packet."""
        if self.remote is None:
            return
        if len(pcm_le) != self.samples * 2:
            pcm_le = (pcm_le + self._silence)[: self.samples * 2]
        header = RTP_HEADER.pack(
            RTP_VERSION << 6, L16_PAYLOAD_TYPE, self.seq, self.timestamp, self.ssrc
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.samples) & 0xFFFFFFFF
        try:
            self.sock.sendto(header + swap16(pcm_le), self.remote)
            self.stats.sent += 1
        except OSError:
            self.stats.send_errors += 1

    # ------------------------------------------------------- room -> phone
    def _drain(self) -> None:
        for _ in range(MAX_READS):
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.bad += 1
                return
            if len(data) < RTP_HEADER.size or data[0] >> 6 != RTP_VERSION:
                self.stats.bad += 1
                continue
            first = data[0]
            offset = RTP_HEADER.size + 4 * (first & 0x0F)
            if first & 0x10:  # header extension (RFC 3550 §5.3.1)
                if len(data) < offset + 4:
                    self.stats.bad += 1
                    continue
                offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
            end = len(data)
            if first & 0x20 and end > offset:  # padding
                end -= data[-1]
            payload = data[offset:end]
            if len(payload) != self.samples * 2:
                self.stats.bad += 1
                continue
            self.stats.received += 1
            self.queue.append(payload)
            if len(self.queue) > MAX_QUEUED_FRAMES:
                self.queue.popleft()
                self.stats.slips += 1

    def next_frame(self) -> bytes:
        """The next frame for the phone (little-endian PCM): the room's mix plus a prompt."""
        self._drain()
        payload = self.queue.popleft() if self.queue else None
        if payload is None and self.remote is not None and self.stats.received:
            self.stats.underruns += 1
        prompt = self.prompt
        if prompt is None:  # the common case: the room's mix alone, no numpy
            return self._silence if payload is None else swap16(payload)
        samples, ended = prompt.take(self.samples)
        if ended:
            self.prompt = None
            self.finished.append(prompt.name)
        if payload is not None:
            mix = np.frombuffer(payload, dtype=">i2").astype(np.int32) + samples
            samples = np.clip(mix, -32768, 32767).astype(np.int16)
        return samples.astype("=i2").tobytes()
