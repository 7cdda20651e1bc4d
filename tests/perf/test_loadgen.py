"""The benchmark's own tools: RTP/µ-law helpers, and a short load-generator run on the echo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

import numpy as np
import pytest
import rtpload
from echo_floor import EchoProcess, start_echo
from loadgen import BURST_FRAMES, Leg, room_frequency, run_load

from bridge import mmsg

LOOPBACK: Final = "127.0.0.1"

linux_only = pytest.mark.skipif(not mmsg.mmsg_available(), reason="recvmmsg needs 64-bit Linux")


# --- rtpload ---------------------------------------------------------------------------------


def test_ulaw_reference_codes() -> None:
    """G.711 table 2a: 0 is code 0xFF, the extremes are 0x80 (+) and 0x00 (-)."""
    samples = np.array([0, 32767, -32768, 100, -100], dtype=np.int16)
    assert rtpload.ulaw_encode(samples).tolist() == [0xFF, 0x80, 0x00, 0xF2, 0x72]
    # Decoding gives about the middle of the code's interval: 100 falls in 100..107.
    decoded = rtpload.ULAW_DECODE[[0xFF, 0x7F, 0x80, 0x00, 0xF2]].tolist()
    assert decoded == [0, 0, 32124, -32124, 104]


def test_ulaw_round_trip_error_stays_within_half_a_step() -> None:
    samples = np.arange(-32635, 32636, 7, dtype=np.int16)
    decoded = rtpload.ulaw_decode(rtpload.ulaw_encode(samples)).astype(np.int32)
    error = np.abs(decoded - samples)
    # The largest quantisation step of G.711 µ-law is 1024 (segment 7).
    assert error.max() <= 512
    assert error[np.abs(samples) < 100].max() <= 4


def test_tone_fraction_finds_the_room_tone() -> None:
    frames = np.stack(
        [
            rtpload.tone(room_frequency(3), rtpload.SAMPLES_PER_FRAME, -16.0),
            rtpload.tone(room_frequency(4), rtpload.SAMPLES_PER_FRAME, -16.0),
            rtpload.noise(rtpload.SAMPLES_PER_FRAME, -50.0, np.random.default_rng(7)),
        ]
    ).astype(np.float64)
    share, level = rtpload.tone_fraction(frames, np.full(3, room_frequency(3)))
    assert share[0] > 0.99
    assert share[1] < 0.01
    assert share[2] < 0.1
    np.testing.assert_allclose(level, [-16.0, -16.0, -50.0], atol=1.5)


def test_rtp_payload_offset_skips_csrcs_and_extension() -> None:
    packets = np.zeros((4, 64), dtype=np.uint8)
    packets[0, 0] = 0x80  # plain
    packets[1, 0] = 0x82  # two CSRCs
    packets[2, 0] = 0x90  # extension of 3 words
    packets[2, 14:16] = [0, 3]
    packets[3, 0] = 0x8F  # fifteen CSRCs: longer than the packet
    length = np.array([64, 64, 64, 40], dtype=np.int64)
    assert rtpload.rtp_payload_offset(packets, length).tolist() == [12, 20, 28, -1]


def test_rtp_headers_stamp_sequence_and_timestamp() -> None:
    ssrc = np.array([1, 0xDEADBEEF], dtype=np.uint32)
    headers = rtpload.rtp_headers(2, rtpload.PAYLOAD_TYPE_PCMU, ssrc)
    rtpload.stamp(
        headers, np.array([65535, 7], dtype=np.uint16), np.array([2**32 - 80, 0], np.uint32), 1
    )
    rtpload.set_marker(headers, np.array([True, False]))
    raw = headers.view(np.uint8).reshape(2, rtpload.RTP_HEADER_SIZE)
    assert raw[0].tobytes() == bytes.fromhex("80 80 0000 00000050 00000001".replace(" ", ""))
    assert raw[1].tobytes() == bytes.fromhex("80 00 0008 000000a0 deadbeef".replace(" ", ""))


# --- a short run against the echo floor ------------------------------------------------------


@pytest.fixture
def echo() -> Iterator[EchoProcess]:
    process = start_echo(0)
    yield process
    process.stop()


@linux_only
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_generator_against_the_echo_floor(echo: EchoProcess) -> None:
    """Two rooms of five; the echo sends everyone room 0's talker (its first source)."""
    legs = [
        Leg(0, (LOOPBACK, echo.port), talker=index % 5 == 0, room=index // 5) for index in range(10)
    ]
    duration_s = 4.5
    cpu = sorted(os.sched_getaffinity(0))[-1]

    report = run_load(legs, duration_s, cpu=cpu)
    echo_report = echo.stop()

    ticks = round(duration_s / rtpload.FRAME_S)
    assert report.affinity == [cpu]
    assert report.legs == 10 and report.rooms == 2
    assert len(set(report.local_ports)) == 10
    assert report.send_errors == 0
    assert report.ticks == ticks
    assert report.sent_per_leg == [ticks] * 10
    assert report.cpu_s > 0
    assert isinstance(report.fell_behind, bool)
    # The echo answers every latched leg every tick; it starts one tick after a leg's first packet.
    assert min(report.received_per_leg) > ticks // 2
    assert sum(report.received_per_room.values()) == report.received
    assert report.sampled_listeners == 2
    # Room 0's listener hears the tone bursts that began at 0 s and 2 s; room 1's hears the
    # wrong room and detects nothing.
    assert report.bursts_detected >= 1
    assert report.bursts_expected >= report.bursts_detected
    assert report.latency_samples == report.bursts_detected
    assert report.e2e_latency_ms_p50 is not None
    assert 0 < report.e2e_latency_ms_p50 < BURST_FRAMES * rtpload.FRAME_S * 1000

    assert echo_report is not None
    assert echo_report.legs == 10
    assert echo_report.packets_in == report.sent
    assert echo_report.participant_seconds > 0
