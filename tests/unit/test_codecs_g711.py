"""G.711 tables: bit-exact with FFmpeg's pcm_mulaw / pcm_alaw (through PyAV), batch shapes, PLC."""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.audio.codeccontext import AudioCodecContext

from bridge.codecs import g711
from bridge.codecs.base import Decoder, Encoder
from bridge.codecs.plc import FADE_FRAMES

Encode = Callable[[npt.NDArray[np.int16]], npt.NDArray[np.uint8]]
Decode = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.int16]]

ALL_LINEAR = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)
RATE = 8000


def pyav_encode(name: str, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    context = av.CodecContext.create(name, "w")
    assert isinstance(context, AudioCodecContext)
    context.sample_rate = RATE
    context.layout = "mono"
    context.format = "s16"
    context.open()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = 0
    packets = [*context.encode(frame), *context.encode(None)]
    return np.frombuffer(b"".join(bytes(p) for p in packets), dtype=np.uint8)


def pyav_decode(name: str, codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    context = av.CodecContext.create(name, "r")
    assert isinstance(context, AudioCodecContext)
    context.sample_rate = RATE
    context.layout = "mono"
    frames = context.decode(av.Packet(codes.tobytes()))
    decoded: npt.NDArray[np.int16] = np.concatenate([f.to_ndarray().ravel() for f in frames])
    return decoded


@pytest.mark.parametrize(
    ("name", "encode", "decode"),
    [
        ("pcm_mulaw", g711.ulaw_encode, g711.ulaw_decode),
        ("pcm_alaw", g711.alaw_encode, g711.alaw_decode),
    ],
)
def test_bit_exact_with_pyav(name: str, encode: Encode, decode: Decode) -> None:
    expected_codes = pyav_encode(name, ALL_LINEAR)
    assert expected_codes.shape == (1 << 16,)
    np.testing.assert_array_equal(encode(ALL_LINEAR), expected_codes)

    expected_linear = pyav_decode(name, ALL_CODES)
    assert expected_linear.dtype == np.int16
    np.testing.assert_array_equal(decode(ALL_CODES), expected_linear)


def test_table_shapes_and_types() -> None:
    assert g711.ULAW_TO_LINEAR.shape == (256,) and g711.ULAW_TO_LINEAR.dtype == np.int16
    assert g711.ALAW_TO_LINEAR.shape == (256,) and g711.ALAW_TO_LINEAR.dtype == np.int16
    assert g711.LINEAR_TO_ULAW.shape == (65536,) and g711.LINEAR_TO_ULAW.dtype == np.uint8
    assert g711.LINEAR_TO_ALAW.shape == (65536,) and g711.LINEAR_TO_ALAW.dtype == np.uint8
    with pytest.raises(ValueError):
        g711.ULAW_TO_LINEAR[0] = 1


def test_known_code_words() -> None:
    # G.711: µ-law 0xFF and A-law 0xD5 are the smallest positive levels; µ-law 0x80 and
    # A-law 0xAA the largest.
    assert g711.ULAW_TO_LINEAR[0xFF] == 0
    assert g711.ULAW_TO_LINEAR[0x80] == 32124
    assert g711.ULAW_TO_LINEAR[0x00] == -32124
    assert g711.ALAW_TO_LINEAR[0xD5] == 8
    assert g711.ALAW_TO_LINEAR[0xAA] == 32256
    assert g711.ALAW_TO_LINEAR[0x2A] == -32256
    assert g711.ulaw_encode(np.array([0], dtype=np.int16))[0] == 0xFF
    assert g711.alaw_encode(np.array([0], dtype=np.int16))[0] == 0xD5


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_decode_encode_is_identity_on_codes(encode: Encode, decode: Decode) -> None:
    # Every code word survives a decode/encode round trip (except µ-law's -0, 0x7F,
    # which encodes as +0).
    codes = encode(decode(ALL_CODES))
    same = codes == ALL_CODES
    assert same.sum() >= 255
    assert set(ALL_CODES[~same].tolist()) <= {0x7F}


def test_batch_any_shape() -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, size=(7, 3, 160), dtype=np.int16)
    codes = g711.ulaw_encode(pcm)
    assert codes.shape == pcm.shape and codes.dtype == np.uint8
    decoded = g711.ulaw_decode(codes)
    assert decoded.shape == pcm.shape and decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded[2, 1], g711.ulaw_decode(g711.ulaw_encode(pcm[2, 1])))
    # Quantisation error of a logarithmic law stays within half a step: under 1/16 of |x|
    # above the first segments.
    large = np.abs(pcm.astype(np.int32)) > 1024
    error = np.abs(decoded.astype(np.int32) - pcm)
    assert np.all(error[large] <= np.abs(pcm.astype(np.int32))[large] / 16)


@pytest.mark.parametrize(
    ("decoder", "encoder", "encode"),
    [
        (g711.PcmuDecoder, g711.PcmuEncoder, g711.ulaw_encode),
        (g711.PcmaDecoder, g711.PcmaEncoder, g711.alaw_encode),
    ],
)
def test_stream_classes_and_plc(
    decoder: type[Decoder], encoder: type[Encoder], encode: Encode
) -> None:
    t = np.arange(160) / RATE
    pcm = (np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16)
    payload = encoder().encode(pcm)
    assert payload == encode(pcm).tobytes()
    dec = decoder()
    frame = dec.decode(payload)
    assert frame.shape == (160,) and frame.dtype == np.int16
    concealed = [dec.decode(None) for _ in range(FADE_FRAMES + 1)]
    assert all(c.shape == (160,) and c.dtype == np.int16 for c in concealed)
    peaks = [int(np.abs(c).max()) for c in concealed]
    assert peaks[0] > peaks[1] > peaks[2] > 0
    assert peaks[3] == 0
    # The first concealed frame starts as the last good one.
    assert abs(int(concealed[0][2]) - int(frame[2])) <= 1 + abs(int(frame[2])) // 100


def test_encoder_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"^PCM frame has the wrong number of samples$"):
        g711.PcmuEncoder().encode(np.zeros(161, dtype=np.int16))
