"""Smoke check of the Janus AudioBridge anchor: rooms, plain-RTP legs and a mixed PCMU tone."""

from __future__ import annotations

import selectors
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from typing import Final

import numpy as np
import numpy.typing as npt
import psutil
import pytest
from janus import PAYLOAD_TYPE_PCMU, JanusAudioBridge

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        shutil.which("janus") is None, reason="janus is not installed (Debian package 'janus')"
    ),
]

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
FRAME_S: Final = 0.020
TONE_HZ: Final = 1000.0
TONE_AMPLITUDE: Final = 8000
SEND_FRAMES: Final = 100  # 2 s
DRAIN_S: Final = 0.5  # Janus's probation and pre-buffer delay the mix by about 150 ms
RTP_VERSION: Final = 2
RTP_HEADER: Final = struct.Struct("!BBHII")
MULAW_SILENCE: Final = 0xFF
MIN_PACKETS: Final = 50
#: Share of the spectrum's energy within TONE_BAND_HZ of the tone.
TONE_BAND_HZ: Final = 50.0
MIN_TONE_SHARE: Final = 0.9

# ITU-T G.711 mu-law.
MULAW_BIAS: Final = 0x84
MULAW_CLIP: Final = 32635
MULAW_SEGMENT_ENDS: Final = np.array([256, 512, 1024, 2048, 4096, 8192, 16384])


def mulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), MULAW_CLIP) + MULAW_BIAS
    exponent = np.searchsorted(MULAW_SEGMENT_ENDS, magnitude, side="right")
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code: npt.NDArray[np.uint8] = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return code.tobytes()


def _mulaw_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


MULAW_DECODE: Final = _mulaw_table()


def mulaw_decode(payload: bytes) -> npt.NDArray[np.int16]:
    return MULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def rtp_packet(payload: bytes, sequence: int, ssrc: int) -> bytes:
    """An RFC 3550 header (no CSRC, no extension) with payload type 0 (PCMU)."""
    first = RTP_VERSION << 6
    timestamp = sequence * FRAME_SAMPLES
    return RTP_HEADER.pack(first, PAYLOAD_TYPE_PCMU, sequence, timestamp, ssrc) + payload


def rtp_payload(packet: bytes) -> tuple[int, int, bytes]:
    """(payload type, sequence, payload) of an RFC 3550 packet."""
    first, second, sequence, _, _ = RTP_HEADER.unpack_from(packet)
    assert first >> 6 == RTP_VERSION
    offset = RTP_HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        (words,) = struct.unpack_from("!H", packet, offset + 2)
        offset += 4 + 4 * words
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    return second & 0x7F, sequence, packet[offset:end]


def tone_share(samples: npt.NDArray[np.int16]) -> float:
    """Share of the signal's energy near TONE_HZ."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)
    total = float(spectrum.sum())
    return float(spectrum[np.abs(freqs - TONE_HZ) <= TONE_BAND_HZ].sum()) / total if total else 0.0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def legs() -> Iterator[list[socket.socket]]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    yield socks
    for sock in socks:
        sock.close()


def test_janus_mixes_a_pcmu_tone_to_the_other_plain_rtp_legs(legs: list[socket.socket]) -> None:
    janus = JanusAudioBridge(http_port=free_tcp_port())
    with janus:
        pid = janus.pid
        assert janus.version_string.startswith("1.")
        rooms = janus.create_rooms(2)
        assert len(set(rooms)) == 2

        remotes = [janus.join_rtp(rooms[0], *sock.getsockname()) for sock in legs]
        assert all(ip == "127.0.0.1" for ip, _ in remotes)
        assert len({port for _, port in remotes}) == 3
        janus.assert_loopback_only()

        t = np.arange(SEND_FRAMES * FRAME_SAMPLES) / SAMPLE_RATE
        tone = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        tone_frames = mulaw_encode(tone)
        silence = bytes([MULAW_SILENCE]) * FRAME_SAMPLES
        received: list[list[tuple[int, int, bytes]]] = [[] for _ in legs]
        senders: list[set[tuple[str, int]]] = [set() for _ in legs]

        selector = selectors.DefaultSelector()
        for index, sock in enumerate(legs):
            selector.register(sock, selectors.EVENT_READ, index)

        def drain(until: float) -> None:
            while (left := until - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    while True:
                        try:
                            data, address = legs[key.data].recvfrom(2048)
                        except BlockingIOError:
                            break
                        received[key.data].append(rtp_payload(data))
                        senders[key.data].add(address)

        # Every leg sends at the real pace (Janus sends a leg the mix only once it has heard from
        # it): leg 0 the tone, legs 1 and 2 mu-law silence.
        start = time.monotonic()
        for frame in range(SEND_FRAMES):
            tone_frame = tone_frames[frame * FRAME_SAMPLES : (frame + 1) * FRAME_SAMPLES]
            for index, (sock, remote) in enumerate(zip(legs, remotes, strict=True)):
                payload = tone_frame if index == 0 else silence
                sock.sendto(rtp_packet(payload, frame, ssrc=0x1000 + index), remote)
            drain(start + (frame + 1) * FRAME_S)
        drain(time.monotonic() + DRAIN_S)
        selector.close()

        cpu_seconds = janus.cpu_seconds()
        assert cpu_seconds > 0
        assert janus.rss_bytes() > 0

    for index in (1, 2):
        assert len(received[index]) >= MIN_PACKETS
        assert senders[index] == {remotes[index]}  # symmetric RTP from the joined port
        assert {pt for pt, _, _ in received[index]} == {PAYLOAD_TYPE_PCMU}
        assert {len(payload) for _, _, payload in received[index]} == {FRAME_SAMPLES}
        audio = mulaw_decode(b"".join(payload for _, _, payload in received[index]))
        assert tone_share(audio) >= MIN_TONE_SHARE

    # N-1: the talker does not hear its own tone back.
    own = b"".join(payload for _, _, payload in received[0])
    assert not own or tone_share(mulaw_decode(own)) < MIN_TONE_SHARE

    assert not psutil.pid_exists(pid)
