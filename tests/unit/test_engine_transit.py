"""The engine's transit figures: packet in -> mix out, with and without the jitter buffer.

A talker on 127.0.0.1 sends two G.711 frames just before every other tick, paced in real
time as a worker ticks, so a frame waits neither in the socket nor in the tick's work for
long: whatever the transit has beyond that is the time the jitter buffer held it, which
must be whole ticks (DESIGN.md, "Bridge transit latency, jitter buffer excluded").
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from bridge.codecs.g711 import ulaw_encode
from bridge.engine import AudioEngine, LegSpec
from bridge.mmsg import BatchSocket
from bridge.model import RoomMode
from bridge.rtp import RtpPacket

LOOPBACK = "127.0.0.1"
TICK_S = 0.020
SAMPLES = 160
PCMU = 0
#: Ticks run: the jitter buffer settles within the first few.
TICKS = 60


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    made = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in made:
        s.bind((LOOPBACK, 0))
    try:
        yield made[0], made[1], made[2]
    finally:
        for s in made:
            s.close()


def test_time_in_the_jitter_buffer_is_taken_out_exactly(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    bridge_sock, talker, listener = sockets
    engine = AudioEngine(BatchSocket(bridge_sock), capacity=8)
    engine.add_room("r", "r", RoomMode.OPEN)
    for name, sock in (("talker", talker), ("listener", listener)):
        engine.add_leg(
            LegSpec(
                participant=name,
                room="r",
                codec="PCMU",
                clock_rate=8000,
                payload_type=PCMU,
                dtmf_payload_type=None,
                remote_ip=LOOPBACK,
                remote_port=sock.getsockname()[1],
            )
        )
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(SAMPLES) / 8000)).astype(np.int16)
    payload = ulaw_encode(tone).tobytes()
    target = bridge_sock.getsockname()
    next_tick = time.monotonic()
    for n in range(TICKS):
        # Two frames every other tick: the second of each pair waits a tick in the buffer.
        for seq in (n, n + 1) if n % 2 == 0 else ():
            packet = RtpPacket(
                payload_type=PCMU,
                sequence_number=seq,
                timestamp=seq * SAMPLES,
                ssrc=0x1234,
                payload=payload,
            )
            talker.sendto(bytes(packet), target)
        engine.tick()
        next_tick += TICK_S
        time.sleep(max(0.0, next_tick - time.monotonic()))

    n = min(engine.transit_count, len(engine.transit_ns))
    assert n > TICKS // 2, "the talker's frames were mixed"
    transit = engine.transit_ns[:n] / 1e6
    held = engine.transit_held_ns[:n] / 1e6
    excluded = transit - held
    # Out of the jitter buffer, a frame only waited for its tick's receive and work.
    assert excluded.min() >= 0.0
    assert np.median(excluded) < TICK_S * 1000 / 2
    # It held frames for whole ticks (about 20 ms apart), at least the second of each pair.
    ticks_held = held / (TICK_S * 1000)
    assert np.mean(ticks_held >= 0.9) >= 0.4
    assert np.median(np.abs(ticks_held - np.round(ticks_held))) < 0.25
    summary = engine.transit_summary()
    assert summary["transit_excl_jb_p50_ms"] == pytest.approx(float(np.median(excluded)))
