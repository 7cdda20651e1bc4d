"""Opus and G.722 through PyAV: round-trip fidelity, frame lengths, concealment."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal

from bridge.codecs import get_codec, get_decoder, get_encoder
from bridge.codecs.base import Decoder
from bridge.codecs.g722 import G722Decoder
from bridge.codecs.opus import OpusDecoder, OpusEncoder, concealment_toc

FRAMES = 50


def tone(rate: int, frequency: float, count: int = FRAMES) -> npt.NDArray[np.int16]:
    t = np.arange(rate // 50 * count) / rate
    return (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)


def chirp(rate: int) -> npt.NDArray[np.int16]:
    t = np.arange(rate // 50 * FRAMES) / rate
    return (np.sin(2 * np.pi * (300 * t + 750 * t**2)) * 8000).astype(np.int16)


def round_trip(mime: str, pcm: npt.NDArray[np.int16]) -> tuple[list[bytes], list[np.ndarray]]:
    spec = get_codec(mime)
    encoder, decoder = get_encoder(spec), get_decoder(spec)
    n = spec.frame_samples
    payloads = [encoder.encode(pcm[k * n : (k + 1) * n]) for k in range(len(pcm) // n)]
    return payloads, [decoder.decode(p) for p in payloads]


def codec_delay(mime: str) -> int:
    """The codec's delay in samples, found by cross-correlating a chirp."""
    pcm = chirp(get_codec(mime).sample_rate)
    _, frames = round_trip(mime, pcm)
    out = np.concatenate(frames).astype(float)
    correlation = signal.correlate(out, pcm[: len(pcm) // 2].astype(float), "valid", "fft")
    return int(np.argmax(correlation))


def snr_db(reference: npt.NDArray[np.int16], out: npt.NDArray[np.int16], delay: int) -> float:
    start = len(reference) // 4  # past the codec's start-up
    a = reference[start : len(reference) - delay].astype(float)
    b = out[start + delay : start + delay + len(a)].astype(float)
    return float(10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)))


@pytest.mark.parametrize(
    ("mime", "frequency", "minimum_snr", "payload_octets"),
    [
        ("G722", 1000, 35.0, {160}),
        ("G722", 440, 40.0, {160}),
        ("opus", 440, 15.0, None),
    ],
)
def test_round_trip_snr(
    mime: str, frequency: float, minimum_snr: float, payload_octets: set[int] | None
) -> None:
    spec = get_codec(mime)
    pcm = tone(spec.sample_rate, frequency)
    payloads, frames = round_trip(mime, pcm)
    assert len(payloads) == FRAMES
    if payload_octets is not None:
        assert {len(p) for p in payloads} == payload_octets
    assert all(f.shape == (spec.frame_samples,) and f.dtype == np.int16 for f in frames)
    assert snr_db(pcm, np.concatenate(frames), codec_delay(mime)) >= minimum_snr


def test_opus_keeps_a_1khz_tone_pure() -> None:
    pcm = tone(48000, 1000)
    payloads, frames = round_trip("opus", pcm)
    assert max(len(p) for p in payloads) < 32000 // 8 // 50 * 2  # about the 32 kbit/s target
    out = np.concatenate(frames)[48000 // 2 :].astype(float)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out)))) ** 2
    freqs = np.fft.rfftfreq(len(out), 1 / 48000)
    near = np.abs(freqs - 1000) < 50
    assert 10 * np.log10(spectrum[~near].sum() / spectrum[near].sum()) < -25
    assert abs(20 * np.log10(out.std() / pcm.std())) < 1.0


@pytest.mark.parametrize("mime", ["opus", "G722"])
def test_concealment_keeps_frame_length_and_fades(mime: str) -> None:
    spec = get_codec(mime)
    pcm = tone(spec.sample_rate, 440)
    encoder, decoder = get_encoder(spec), get_decoder(spec)
    n = spec.frame_samples
    for k in range(20):
        decoder.decode(encoder.encode(pcm[k * n : (k + 1) * n]))
    concealed = [decoder.decode(None) for _ in range(8)]
    assert all(c.shape == (n,) and c.dtype == np.int16 for c in concealed)
    levels = [float(np.abs(c.astype(float)).mean()) for c in concealed]
    assert levels[0] > 1000  # the first lost frame is filled, not silent
    assert levels[-1] < levels[0] / 4  # and the concealment dies away
    # Decoding carries on after the loss.
    after = decoder.decode(encoder.encode(pcm[20 * n : 21 * n]))
    assert after.shape == (n,)


def test_opus_uses_its_own_plc() -> None:
    decoder = OpusDecoder()
    assert decoder.codec_name == "libopus"
    assert np.all(decoder.decode(None) == 0)  # nothing received yet
    pcm = tone(48000, 440)
    encoder = OpusEncoder()
    last = np.zeros(0, dtype=np.int16)
    for k in range(10):
        last = decoder.decode(encoder.encode(pcm[k * 960 : (k + 1) * 960]))
    concealed = decoder.decode(None)
    # libopus extrapolates the waveform: the concealed frame continues the last one
    # without a jump, unlike a repeated frame.
    assert abs(int(concealed[0]) - int(last[-1])) < 1500


@pytest.mark.parametrize(
    ("toc", "expected"),
    [
        (0b01111_0_00, 0b01111_0_00),  # CELT NB 20 ms stays
        (0b11100_1_11, 0b11111_1_00),  # CELT FB 2.5 ms stereo, code 3 → FB 20 ms stereo, code 0
        (0b00010_0_01, 0b00001_0_00),  # SILK NB 40 ms → SILK NB 20 ms
        (0b01011_0_00, 0b01001_0_00),  # SILK WB 60 ms → SILK WB 20 ms
        (0b01110_0_00, 0b01111_0_00),  # Hybrid FB 10 ms → Hybrid FB 20 ms
    ],
)
def test_concealment_toc(toc: int, expected: int) -> None:
    assert concealment_toc(toc) == expected


def test_payload_errors() -> None:
    decoders: list[Decoder] = [OpusDecoder(), G722Decoder()]
    with pytest.raises(ValueError, match=r"^opus payload is truncated$"):
        decoders[0].decode(b"")
    with pytest.raises(ValueError, match=r"^G722 payload is truncated$"):
        decoders[1].decode(b"")
    with pytest.raises(ValueError, match=r"^opus payload is invalid$"):
        decoders[0].decode(bytes([0x7B]) + b"\xff" * 3)  # code 3 with an impossible count
    with pytest.raises(ValueError, match=r"^PCM frame has the wrong number of samples$"):
        OpusEncoder().encode(np.zeros(480, dtype=np.int16))


def test_opus_fmtp_sets_bitrate_and_fec() -> None:
    spec = get_codec("opus")
    pcm = chirp(48000)
    low = get_encoder(spec, {"maxaveragebitrate": "12000", "useinbandfec": "1"})
    high = get_encoder(spec)
    low_sizes = [len(low.encode(pcm[k * 960 : (k + 1) * 960])) for k in range(FRAMES)]
    high_sizes = [len(high.encode(pcm[k * 960 : (k + 1) * 960])) for k in range(FRAMES)]
    assert sum(low_sizes) * 8 / (FRAMES / 50) < 16000  # about 12 kbit/s
    assert sum(high_sizes) > 1.8 * sum(low_sizes)
