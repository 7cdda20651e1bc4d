"""Fade-out concealment: shapes, gain ramp, batch over streams."""

from __future__ import annotations

import numpy as np

from bridge.codecs.plc import FADE_FRAMES, FadeConcealer, fade_out


def test_gain_ramps_down_across_frames_without_steps() -> None:
    last = np.full(160, 10000, dtype=np.int16)
    frames = [fade_out(last, k) for k in range(1, FADE_FRAMES + 2)]
    joined = np.concatenate(frames).astype(np.int32)
    assert joined[0] == 10000
    assert np.all(np.diff(joined) <= 0)  # never rises
    assert np.max(np.abs(np.diff(joined))) <= 10000 // (160 * FADE_FRAMES) + 1  # no step
    assert np.all(frames[-1] == 0)
    assert all(f.shape == (160,) and f.dtype == np.int16 for f in frames)


def test_batch_over_streams() -> None:
    rng = np.random.default_rng(3)
    last = rng.integers(-20000, 20000, size=(4, 320), dtype=np.int16)
    lost = np.array([1, 2, 3, 4])
    out = fade_out(last, lost)
    assert out.shape == (4, 320) and out.dtype == np.int16
    for row in range(4):
        np.testing.assert_array_equal(out[row], fade_out(last[row], int(lost[row])))
    assert np.all(out[3] == 0)


def test_concealer_resets_on_good_frame() -> None:
    plc = FadeConcealer(160)
    assert np.all(plc.conceal() == 0)  # nothing heard yet: silence
    good = np.full(160, 5000, dtype=np.int16)
    assert plc.good(good) is good
    first = plc.conceal()
    second = plc.conceal()
    assert plc.lost == 2
    assert first[0] == 5000 and second[0] < first[-1] + 2
    plc.good(good)
    assert plc.lost == 0
    assert plc.conceal()[0] == 5000
