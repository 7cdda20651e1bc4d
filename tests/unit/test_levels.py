import numpy as np
import pytest

from bridge.levels import (
    SILENCE_DBOV,
    TalkerDetector,
    frame_level_dbov,
    level_from_rfc6464,
)

FRAME = 320
RATE = 16000


def sine(amplitude: float, hz: float = 1000.0) -> np.ndarray:
    t = np.arange(FRAME) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class TestFrameLevel:
    def test_reference_levels(self) -> None:
        pcm = np.stack(
            [
                np.where(np.arange(FRAME) % 2, 32767, -32768).astype(np.int16),  # square
                sine(32767),
                sine(3277),  # 20 dB below full-scale sine
                np.zeros(FRAME, dtype=np.int16),
            ]
        )
        level = frame_level_dbov(pcm)
        assert level.dtype == np.float32
        assert level.shape == (4,)
        np.testing.assert_allclose(level[:3], [0.0, -3.01, -23.01], atol=0.01)
        assert level[3] == SILENCE_DBOV

    def test_clamped_to_rfc6464_range(self) -> None:
        pcm = np.stack([np.full(FRAME, -32768, np.int16), np.full(FRAME, 1, np.int16)])
        level = frame_level_dbov(pcm)
        assert level[0] == 0.0
        assert SILENCE_DBOV < level[1] < -90.0

    def test_batch_matches_rows(self) -> None:
        rng = np.random.default_rng(7)
        pcm = (rng.standard_normal((50, FRAME)) * rng.uniform(1, 5000, (50, 1))).astype(np.int16)
        batch = frame_level_dbov(pcm)
        single = np.concatenate([frame_level_dbov(row[None, :]) for row in pcm])
        np.testing.assert_allclose(batch, single, atol=1e-4)
        rms = np.sqrt(np.mean(pcm.astype(np.float64) ** 2, axis=1))
        np.testing.assert_allclose(batch, 20 * np.log10(rms / 32768), atol=1e-3)

    def test_empty_batch(self) -> None:
        assert frame_level_dbov(np.zeros((0, FRAME), np.int16)).shape == (0,)

    def test_rejects_1d(self) -> None:
        with pytest.raises(ValueError, match=r"^PCM must be a 2-D array of frames$"):
            frame_level_dbov(np.zeros(FRAME, np.int16))

    def test_rejects_empty_frames(self) -> None:
        with pytest.raises(ValueError, match=r"^PCM frames are empty$"):
            frame_level_dbov(np.zeros((3, 0), np.int16))


class TestRfc6464:
    def test_levels(self) -> None:
        level = level_from_rfc6464(np.array([0, 30, 127, -1], dtype=np.int16))
        assert level.dtype == np.float32
        np.testing.assert_array_equal(level[:3], [0.0, -30.0, -127.0])
        assert np.isnan(level[3])

    @pytest.mark.parametrize("bad", [128, -2])
    def test_out_of_range(self, bad: int) -> None:
        with pytest.raises(ValueError, match=r"^RFC 6464 level is out of range$"):
            level_from_rfc6464(np.array([0, bad], dtype=np.int16))


def levels(capacity: int, **by_leg: float) -> tuple[np.ndarray, np.ndarray]:
    legs = np.array([int(k[1:]) for k in by_leg], dtype=np.intp)
    return legs, np.array(list(by_leg.values()), dtype=np.float32)


class TestTalkerDetector:
    def test_starts_on_the_on_level_only(self) -> None:
        detector = TalkerDetector(4, on_dbov=-40, off_dbov=-50)
        started, stopped = detector.update(*levels(4, l0=-45.0, l1=-40.0, l2=-20.0))
        np.testing.assert_array_equal(started, [1, 2])
        assert stopped.size == 0
        np.testing.assert_array_equal(detector.talking, [False, True, True, False])

    def test_hysteresis_and_hang(self) -> None:
        detector = TalkerDetector(2, on_dbov=-40, off_dbov=-50, hang_ms=100, frame_ms=20)
        detector.update(*levels(2, l0=-30.0))
        # Between the off and on levels: keeps talking without a hang count-down.
        for _ in range(20):
            started, stopped = detector.update(*levels(2, l0=-45.0))
            assert started.size == 0 and stopped.size == 0
        # Quiet: still talking for 100 ms (5 frames), reported stopped on the fifth.
        for _ in range(4):
            _, stopped = detector.update(*levels(2, l0=-60.0))
            assert stopped.size == 0
            assert detector.talking[0]
        _, stopped = detector.update(*levels(2, l0=-60.0))
        np.testing.assert_array_equal(stopped, [0])
        assert not detector.talking[0]

    def test_loud_frame_restarts_the_hang(self) -> None:
        detector = TalkerDetector(1, hang_ms=60, frame_ms=20)
        detector.update(*levels(1, l0=-20.0))
        for _ in range(10):
            detector.update(*levels(1, l0=-60.0))
            detector.update(*levels(1, l0=-60.0))
            _, stopped = detector.update(*levels(1, l0=-48.0))  # above off: hang restarts
            assert stopped.size == 0
        assert detector.talking[0]

    def test_missing_and_nan_count_as_silence(self) -> None:
        detector = TalkerDetector(2, hang_ms=0)
        detector.update(*levels(2, l0=-20.0, l1=-20.0))
        _, stopped = detector.update(
            np.array([1], dtype=np.intp), np.array([np.nan], dtype=np.float32)
        )
        np.testing.assert_array_equal(stopped, [0, 1])

    def test_reset_forgets_without_event(self) -> None:
        detector = TalkerDetector(2)
        detector.update(*levels(2, l0=-20.0))
        detector.reset(0)
        assert not detector.talking[0]
        started, stopped = detector.update(*levels(2, l0=-60.0))
        assert started.size == 0 and stopped.size == 0

    def test_rejects_off_above_on(self) -> None:
        with pytest.raises(ValueError, match=r"^off level must not be above the on level$"):
            TalkerDetector(1, on_dbov=-50, off_dbov=-40)

    def test_rejects_mismatched_levels(self) -> None:
        with pytest.raises(ValueError, match=r"^legs and levels differ in shape$"):
            TalkerDetector(2).update(np.array([0, 1]), np.array([-20.0], dtype=np.float32))
