"""L16: network byte order (RFC 3551 §4.5.11), batch shapes, stream classes."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.codecs import l16


def test_big_endian_on_the_wire() -> None:
    pcm = np.array([0x0102, -2, 0x7FFF, -32768], dtype=np.int16)
    payload = l16.l16_encode(pcm)
    assert payload.dtype == np.uint8
    assert payload.tobytes() == bytes.fromhex("0102fffe7fff8000")
    decoded = l16.l16_decode(payload)
    assert decoded.dtype == np.int16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, pcm)


def test_batch_round_trip() -> None:
    rng = np.random.default_rng(2)
    pcm = rng.integers(-32768, 32767, size=(5, 320), dtype=np.int16)
    payload = l16.l16_encode(pcm)
    assert payload.shape == (5, 640)
    np.testing.assert_array_equal(l16.l16_decode(payload), pcm)
    # A non-contiguous batch (every other stream) decodes too.
    np.testing.assert_array_equal(l16.l16_decode(payload[::2]), pcm[::2])


def test_odd_length_rejected() -> None:
    with pytest.raises(ValueError, match=r"^L16 payload has an odd number of octets$"):
        l16.l16_decode(np.zeros(3, dtype=np.uint8))


def test_stream_classes() -> None:
    pcm = np.arange(-160, 160, dtype=np.int16)
    payload = l16.L16Encoder(16000).encode(pcm)
    assert len(payload) == 640
    decoder = l16.L16Decoder(16000)
    np.testing.assert_array_equal(decoder.decode(payload), pcm)
    concealed = decoder.decode(None)
    assert concealed.shape == (320,) and concealed.dtype == np.int16
    assert concealed[0] == pcm[0]
    with pytest.raises(ValueError, match=r"^PCM frame has the wrong number of samples$"):
        l16.L16Encoder(8000).encode(pcm)
