"""A plain-RTP participant for tests: sends a tone at real-time pace, keeps what it hears.

It is deliberately independent of the bridge's own RTP code: headers are packed with
``struct``, so a bug in the bridge's parser cannot hide behind the same bug here.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bridge.codecs.g711 import ulaw_decode, ulaw_encode

RATE = 8000
FRAME = 160
PCMU = 0


def tone(
    freq: float, samples: int, start: int = 0, amplitude: float = 8000.0
) -> npt.NDArray[np.int16]:
    t = (np.arange(samples) + start) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _spectrum(
    pcm: npt.NDArray[np.int16], rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    return np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(pcm), 1 / rate)


def band_energy(
    pcm: npt.NDArray[np.int16], freq: float, rate: int = RATE, width: float = 25.0
) -> float:
    """Energy of ``pcm`` within ``width`` Hz of ``freq`` (Hann-windowed FFT)."""
    spectrum, freqs = _spectrum(pcm, rate)
    return float(spectrum[(freqs > freq - width) & (freqs < freq + width)].sum())


def band_fraction(
    pcm: npt.NDArray[np.int16], freq: float, rate: int = RATE, width: float = 25.0
) -> float:
    """Share of the whole spectrum's energy within ``width`` Hz of ``freq``."""
    spectrum, freqs = _spectrum(pcm, rate)
    total = float(spectrum.sum())
    band = float(spectrum[(freqs > freq - width) & (freqs < freq + width)].sum())
    return band / total if total else 0.0


@dataclass
class Received:
    seq: int
    ts: int
    ssrc: int
    pt: int
    marker: bool
    payload: bytes
    at: float


@dataclass
class RtpLeg:
    """One UDP socket on 127.0.0.1 acting as a plain-RTP phone."""

    sock: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self._stop = threading.Event()
        self._rx = threading.Thread(target=self._receive, daemon=True)
        self._rx.start()
        self.remote: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def packet(self, payload: bytes, pt: int = PCMU, marker: bool = False) -> bytes:
        header = struct.pack(
            "!BBHII", 0x80, pt | (0x80 if marker else 0), self.seq, self.ts, self.ssrc
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + FRAME) & 0xFFFFFFFF
        return header + payload

    def frames(self, pcm: npt.NDArray[np.int16]) -> list[bytes]:
        usable = len(pcm) // FRAME * FRAME
        return [bytes(ulaw_encode(pcm[i : i + FRAME])) for i in range(0, usable, FRAME)]

    def send_realtime(
        self,
        payloads: list[bytes],
        *,
        order: list[int] | None = None,
        drop: set[int] | None = None,
        duplicate: set[int] | None = None,
    ) -> None:
        """Send one packet per 20 ms; optional reordering, loss and duplication by index."""
        assert self.remote is not None
        packets = [self.packet(p, marker=(i == 0)) for i, p in enumerate(payloads)]
        order = order or list(range(len(packets)))
        start = time.perf_counter()
        for n, i in enumerate(order):
            due = start + n * 0.020
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if drop and i in drop:
                continue
            self.sock.sendto(packets[i], self.remote)
            if duplicate and i in duplicate:
                self.sock.sendto(packets[i], self.remote)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) < 12:
                continue
            _b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
            self.received.append(
                Received(seq, ts, ssrc, b1 & 0x7F, bool(b1 & 0x80), data[12:], time.monotonic())
            )

    def heard(self, since: float = 0.0) -> npt.NDArray[np.int16]:
        """What this leg received after ``since`` (monotonic), decoded, in sequence order."""
        packets = sorted((r for r in self.received if r.at >= since), key=lambda r: r.at)
        if not packets:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([ulaw_decode(np.frombuffer(r.payload, np.uint8)) for r in packets])

    def close(self) -> None:
        self._stop.set()
        self._rx.join(1)
        self.sock.close()
