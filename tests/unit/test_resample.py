"""StreamResampler and ResamplerBank: exact frame lengths, no seams between frames, spectra."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from scipy import signal

from bridge.codecs.resample import (
    ResamplerBank,
    StreamResampler,
    design_filter,
    plan_blocks,
)

PAIRS = [(8000, 16000), (16000, 8000), (48000, 16000), (16000, 48000)]
FRAMES = 200


def tone(rate: int, frequency: float, frames: int = FRAMES) -> npt.NDArray[np.int16]:
    t = np.arange(rate // 50 * frames) / rate
    return (np.sin(2 * np.pi * frequency * t) * 10000).astype(np.int16)


def stream(in_rate: int, out_rate: int, pcm: npt.NDArray[np.int16]) -> list[np.ndarray]:
    resampler = StreamResampler(in_rate, out_rate)
    n = in_rate // 50
    return [resampler.process(pcm[k * n : (k + 1) * n]) for k in range(len(pcm) // n)]


def out_of_band_db(pcm: np.ndarray, rate: int, frequency: float) -> float:
    """Energy outside ±60 Hz of the tone, relative to the tone, over the last half."""
    segment = pcm[len(pcm) // 2 :].astype(float)
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)))) ** 2
    near = np.abs(np.fft.rfftfreq(len(segment), 1 / rate) - frequency) < 60
    return float(10 * np.log10(spectrum[~near].sum() / spectrum[near].sum()))


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@pytest.mark.parametrize("frequency", [1000, 3400])
def test_exact_length_and_clean_spectrum(in_rate: int, out_rate: int, frequency: float) -> None:
    frames = stream(in_rate, out_rate, tone(in_rate, frequency))
    expected = in_rate // 50 * out_rate // in_rate
    assert [len(f) for f in frames] == [expected] * FRAMES
    assert all(f.dtype == np.int16 for f in frames)
    assert out_of_band_db(np.concatenate(frames), out_rate, frequency) < -40


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frames_join_without_seams(in_rate: int, out_rate: int) -> None:
    # Frame-by-frame output equals filtering the whole signal at once with the same filter,
    # so nothing happens at frame boundaries.
    rng = np.random.default_rng(5)
    pcm = (rng.standard_normal(in_rate // 50 * 20) * 4000).astype(np.int16)
    out = np.concatenate(stream(in_rate, out_rate, pcm)).astype(float)
    flt = design_filter(in_rate, out_rate)
    whole = signal.upfirdn(flt.taps, pcm.astype(float), flt.up, flt.down)[: len(out)]
    assert np.max(np.abs(out - np.clip(np.rint(whole), -32768, 32767))) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 48000)])
def test_agrees_with_soxr_after_the_constant_delay(in_rate: int, out_rate: int) -> None:
    # An independent resampler: soxr's one-shot, delay-compensated conversion.
    pcm = tone(in_rate, 1000, 50)
    out = np.concatenate(stream(in_rate, out_rate, pcm)).astype(float)
    resampler = StreamResampler(in_rate, out_rate)
    delay = resampler.latency * out_rate
    assert delay == int(delay)
    reference = soxr.resample(pcm.astype(np.float64), in_rate, out_rate, quality="VHQ")
    a = reference[out_rate // 10 : len(reference) - int(delay) - out_rate // 10]
    b = out[out_rate // 10 + int(delay) : out_rate // 10 + int(delay) + len(a)]
    assert 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)) > 40


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_latency_is_small_and_constant(in_rate: int, out_rate: int) -> None:
    resampler = StreamResampler(in_rate, out_rate)
    assert 0 < resampler.latency < 0.002
    # An impulse comes out after exactly the stated delay, whatever frame it falls in.
    n = in_rate // 50
    for position in (0, n // 2, n - 1):
        pcm = np.zeros(n * 4, dtype=np.int16)
        pcm[n + position] = 20000
        out = np.concatenate(stream(in_rate, out_rate, pcm)).astype(float)
        peak = np.argmax(out)
        expected = (n + position) * out_rate / in_rate + resampler.latency * out_rate
        assert abs(peak - expected) <= 1


def test_downsampling_rejects_aliases() -> None:
    for in_rate, out_rate, frequency in ((16000, 8000, 6000), (48000, 16000, 12000)):
        out = np.concatenate(stream(in_rate, out_rate, tone(in_rate, frequency, 50)))
        level = 20 * np.log10(out[len(out) // 2 :].std() / (10000 / np.sqrt(2)))
        assert level < -50


def test_full_scale_saturates() -> None:
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)].astype(np.int16), 40)
    out = np.concatenate(stream(8000, 16000, square))
    assert out.max() == 32767 and out.min() == -32768  # clipped, not wrapped
    assert np.all(np.abs(np.diff(out.astype(np.int32))) < 40000)


def test_identity() -> None:
    resampler = StreamResampler(16000, 16000)
    frame = np.arange(320, dtype=np.int16)
    assert resampler.process(frame) is frame
    assert resampler.latency == 0.0
    bank = ResamplerBank(16000, 16000, 4)
    frames = np.zeros((2, 320), dtype=np.int16)
    assert bank.process(np.array([0, 1]), frames) is frames


def test_errors() -> None:
    with pytest.raises(
        ValueError, match=r"^frame length is not a multiple of the resampling period$"
    ):
        StreamResampler(48000, 16000).process(np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError, match=r"^sample rates must be positive$"):
        StreamResampler(0, 16000)
    with pytest.raises(
        ValueError, match=r"^frame length is not a multiple of the resampling period$"
    ):
        plan_blocks(48000, 16000, 0)


def test_frame_length_may_change() -> None:
    resampler = StreamResampler(8000, 16000)
    pcm = tone(8000, 1000, 4)
    first = resampler.process(pcm[:160])
    second = resampler.process(pcm[160:480])  # a 40 ms frame
    third = resampler.process(pcm[480:])
    assert (len(first), len(second), len(third)) == (320, 640, 320)
    whole = np.concatenate(stream(8000, 16000, pcm))
    np.testing.assert_array_equal(np.concatenate([first, second, third]), whole)


def test_reset_forgets_history() -> None:
    resampler = StreamResampler(8000, 16000)
    pcm = tone(8000, 1000, 2)
    first = resampler.process(pcm[:160])
    resampler.process(pcm[160:])
    resampler.reset()
    np.testing.assert_array_equal(resampler.process(pcm[:160]), first)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_bank_matches_stream_resamplers(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(6)
    n = in_rate // 50
    streams = 5
    pcm = (rng.standard_normal((streams, n * 6)) * 5000).astype(np.int16)
    singles = [StreamResampler(in_rate, out_rate) for _ in range(streams)]
    bank = ResamplerBank(in_rate, out_rate, capacity=8)
    rows = np.array([7, 0, 3, 5, 1])
    for k in range(6):
        # Streams take turns: a different subset and order on every call.
        chosen = rng.permutation(streams)[: 3 + k % 3]
        frames = pcm[chosen, k * n : (k + 1) * n]
        out = bank.process(rows[chosen], frames)
        assert out.shape == (len(chosen), n * out_rate // in_rate) and out.dtype == np.int16
        for index, stream_id in enumerate(chosen):
            expected = singles[stream_id].process(frames[index])
            np.testing.assert_array_equal(out[index], expected)
    bank.reset(rows[:2])
    assert bank.capacity == 8 and bank.latency == singles[0].latency
