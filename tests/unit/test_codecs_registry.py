"""The codec registry: lookup, exact errors, the numbers of each CodecSpec."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.codecs import (
    CODECS,
    CodecSpec,
    Decoder,
    Encoder,
    get_codec,
    get_decoder,
    get_encoder,
)
from bridge.codecs.amrwb import AmrWbDecoder


@pytest.mark.parametrize(
    ("mime", "clock", "rate", "pt", "stateful", "frame", "step", "rtpmap"),
    [
        ("PCMU", 8000, 8000, 0, False, 160, 160, "PCMU/8000"),
        ("PCMA", 8000, 8000, 8, False, 160, 160, "PCMA/8000"),
        ("G722", 8000, 16000, 9, True, 320, 160, "G722/8000"),
        ("opus", 48000, 48000, None, True, 960, 960, "opus/48000/2"),
        ("AMR-WB", 16000, 16000, None, True, 320, 320, "AMR-WB/16000"),
        ("L16", 16000, 16000, None, False, 320, 320, "L16/16000"),
    ],
)
def test_specs(
    mime: str,
    clock: int,
    rate: int,
    pt: int | None,
    stateful: bool,
    frame: int,
    step: int,
    rtpmap: str,
) -> None:
    spec = get_codec(mime)
    assert spec.mime == mime
    assert spec.clock_rate == clock
    assert spec.sample_rate == rate
    assert spec.channels == 1
    assert spec.static_payload_type == pt
    assert spec.stateful is stateful
    assert spec.frame_samples == frame
    assert spec.rtp_timestamp_step == step
    assert spec.rtpmap == rtpmap
    assert (spec.batch_decode is None) is stateful
    assert (spec.batch_encode is None) is stateful


def test_lookup_is_case_insensitive() -> None:
    assert get_codec("pcmu") is get_codec("PCMU")
    assert get_codec("OPUS") is get_codec("opus")
    assert get_codec("amr-wb") is get_codec("AMR-WB")
    assert get_codec("g722", 8000).mime == "G722"


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_l16_rates(rate: int) -> None:
    spec = get_codec("L16", rate)
    assert (spec.clock_rate, spec.sample_rate, spec.frame_samples) == (rate, rate, rate // 50)
    decoder = get_decoder(spec)
    assert decoder.decode(b"\x00\x01" * spec.frame_samples).shape == (spec.frame_samples,)


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match=r"^unsupported codec: G729$"):
        get_codec("G729")
    with pytest.raises(ValueError, match=r"^unsupported codec: L16/22050$"):
        get_codec("L16", 22050)
    with pytest.raises(ValueError, match=r"^unsupported codec: PCMU/16000$"):
        get_codec("PCMU", 16000)
    with pytest.raises(ValueError, match=r"^unsupported codec: speex$"):
        get_decoder(CodecSpec("speex", 8000, 8000))
    with pytest.raises(ValueError, match=r"^unsupported codec: speex$"):
        get_encoder(CodecSpec("speex", 8000, 8000))


def test_amrwb_cannot_encode() -> None:
    spec = get_codec("AMR-WB")
    assert spec.can_encode is False
    with pytest.raises(ValueError, match=r"^codec cannot encode: AMR-WB$"):
        get_encoder(spec)


def test_every_codec_gives_decoders_and_encoders() -> None:
    for specs in CODECS.values():
        for spec in specs:
            decoder = get_decoder(spec)
            assert isinstance(decoder, Decoder)
            assert decoder is not get_decoder(spec)  # one state per stream
            concealed = decoder.decode(None)
            assert concealed.shape == (spec.frame_samples,) and concealed.dtype == np.int16
            if spec.can_encode:
                encoder = get_encoder(spec)
                assert isinstance(encoder, Encoder)
                payload = encoder.encode(np.zeros(spec.frame_samples, dtype=np.int16))
                assert isinstance(payload, bytes) and payload


def test_batch_functions_match_stream_classes() -> None:
    rng = np.random.default_rng(4)
    for mime in ("PCMU", "PCMA", "L16"):
        spec = get_codec(mime)
        assert spec.batch_encode is not None and spec.batch_decode is not None
        pcm = rng.integers(-30000, 30000, size=(3, spec.frame_samples), dtype=np.int16)
        payloads = spec.batch_encode(pcm)
        assert payloads.dtype == np.uint8 and payloads.shape[0] == 3
        encoder, decoder = get_encoder(spec), get_decoder(spec)
        for row in range(3):
            assert payloads[row].tobytes() == encoder.encode(pcm[row])
            np.testing.assert_array_equal(
                spec.batch_decode(payloads)[row], decoder.decode(payloads[row].tobytes())
            )


def test_amrwb_fmtp() -> None:
    spec = get_codec("AMR-WB")
    decoder = get_decoder(spec, {"octet-align": "1"})
    assert isinstance(decoder, AmrWbDecoder) and decoder.octet_aligned
    plain = get_decoder(spec)
    assert isinstance(plain, AmrWbDecoder) and not plain.octet_aligned
    with pytest.raises(ValueError, match=r"^unsupported AMR-WB parameter: interleaving$"):
        get_decoder(spec, {"interleaving": "4"})
    with pytest.raises(ValueError, match=r"^unsupported AMR-WB parameter: crc$"):
        get_decoder(spec, {"octet-align": "1", "crc": "1"})
    assert isinstance(get_decoder(spec, {"crc": "0", "robust-sorting": "0"}), AmrWbDecoder)
