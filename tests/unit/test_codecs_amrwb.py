"""AMR-WB: the RTP payload format of RFC 4867 and decoding of the fixture stream."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.audio.codeccontext import AudioCodecContext

from bridge.codecs.amrwb import (
    FRAME_BITS,
    AmrWbDecoder,
    AmrWbFrame,
    AmrWbFrameType,
    AmrWbPayload,
    parse_storage,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "codecs"
SID_DATA = bytes.fromhex("123456789a")


def storage_frames() -> list[AmrWbFrame]:
    return parse_storage((FIXTURES / "amrwb.awb").read_bytes())


def reference_bits(payload: AmrWbPayload) -> bytes:
    """Bandwidth-efficient packing written out as a string of bits (RFC 4867 §4.3)."""
    bits = format(payload.cmr, "04b")
    for index, frame in enumerate(payload.frames):
        follow = "1" if index < len(payload.frames) - 1 else "0"
        bits += follow + format(frame.frame_type, "04b") + ("1" if frame.quality else "0")
    for frame in payload.frames:
        bits += "".join(format(octet, "08b") for octet in frame.data)[: frame.bits]
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def test_storage_fixture() -> None:
    frames = storage_frames()
    assert len(frames) == 25
    assert [f.frame_type for f in frames[:18:2]] == list(AmrWbFrameType)[:9]
    assert frames[18].frame_type == AmrWbFrameType.SID
    assert frames[19].frame_type == AmrWbFrameType.NO_DATA and frames[19].data == b""
    assert all(f.quality for f in frames)
    for frame in frames:
        assert len(frame.data) == -(-FRAME_BITS[frame.frame_type] // 8)


def test_storage_errors() -> None:
    with pytest.raises(ValueError, match=r"^AMR-WB storage magic is missing$"):
        parse_storage(b"#!AMR\n")
    data = (FIXTURES / "amrwb.awb").read_bytes()
    with pytest.raises(ValueError, match=r"^AMR-WB storage frame is truncated$"):
        parse_storage(data[:-1])


def test_hand_computed_sid_payloads() -> None:
    sid = AmrWbFrame(AmrWbFrameType.SID, True, SID_DATA)
    # CMR 1111 | F 0, FT 1001, Q 1 | 40 SID bits | 6 padding bits
    efficient = bytes.fromhex("f4c48d159e2680")
    assert bytes(AmrWbPayload(15, [sid])) == efficient
    # CMR octet 1111 0000 | ToC octet 0 1001 1 00 | 5 SID octets
    aligned = bytes.fromhex("f04c123456789a")
    assert bytes(AmrWbPayload(15, [sid], octet_aligned=True)) == aligned
    for data, octet in ((efficient, False), (aligned, True)):
        parsed = AmrWbPayload.parse(data, octet_aligned=octet)
        assert parsed.cmr == 15
        assert parsed.frames == [sid]
        assert parsed.octet_aligned is octet


@pytest.mark.parametrize("octet_aligned", [False, True])
def test_fixture_payloads(octet_aligned: bool) -> None:
    name = "amrwb_oa_2frames.bin" if octet_aligned else "amrwb_be_2frames.bin"
    data = (FIXTURES / name).read_bytes()
    parsed = AmrWbPayload.parse(data, octet_aligned)
    assert parsed.frames == storage_frames()[16:18]
    assert bytes(parsed) == data


def test_bandwidth_efficient_matches_bit_string_reference() -> None:
    frames = storage_frames()
    for start in range(0, len(frames) - 3, 3):
        payload = AmrWbPayload(cmr=start % 9, frames=frames[start : start + 3])
        data = bytes(payload)
        assert data == reference_bits(payload)
        assert AmrWbPayload.parse(data).frames == payload.frames


@pytest.mark.parametrize(
    ("name", "octet_aligned", "message"),
    [
        ("amrwb_be_truncated.bin", False, "AMR-WB payload is truncated"),
        ("amrwb_oa_truncated.bin", True, "AMR-WB payload is truncated"),
        ("amrwb_oa_invalid.bin", True, "AMR-WB frame type 10 is reserved"),
    ],
)
def test_payload_errors(name: str, octet_aligned: bool, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        AmrWbPayload.parse((FIXTURES / name).read_bytes(), octet_aligned)


def test_short_payload_errors() -> None:
    for data, octet in ((b"", False), (b"\xf0", False), (b"\xf0", True), (b"\xf0\xcc", True)):
        with pytest.raises(ValueError, match=r"^AMR-WB payload is truncated$"):
            AmrWbPayload.parse(data, octet)
    with pytest.raises(ValueError, match=r"^AMR-WB payload has no frames$"):
        bytes(AmrWbPayload())
    short = AmrWbFrame(AmrWbFrameType.SID, True, SID_DATA[:4])
    with pytest.raises(ValueError, match=r"^AMR-WB frame data has the wrong length$"):
        bytes(AmrWbPayload(frames=[short]))


def decode_file_with_pyav(codec_name: str) -> npt.NDArray[np.int16]:
    """Decode the fixture file through PyAV's own AMR demuxer, independently of our parser."""
    with av.open(str(FIXTURES / "amrwb.awb")) as container:
        stream = container.streams.audio[0]
        context = av.CodecContext.create(codec_name, "r")
        assert isinstance(context, AudioCodecContext)
        context.sample_rate = 16000
        context.layout = "mono"
        out = []
        for packet in container.demux(stream):
            if packet.size:
                for frame in context.decode(packet):
                    out.append(frame.to_ndarray().ravel())
    decoded: npt.NDArray[np.int16] = np.concatenate(out)
    return decoded


@pytest.mark.parametrize("octet_aligned", [False, True])
def test_decode_fixture_through_rtp(octet_aligned: bool) -> None:
    frames = storage_frames()
    decoder = AmrWbDecoder(octet_aligned=octet_aligned)
    assert decoder.codec_name == "libopencore_amrwb"
    pcm = []
    # One frame per packet for the first 20 frames, then packets of two and three.
    packets = [[f] for f in frames[:20]] + [frames[20:22], frames[22:25]]
    for group in packets:
        out = decoder.decode(bytes(AmrWbPayload(15, group, octet_aligned)))
        assert out.shape == (320 * len(group),) and out.dtype == np.int16
        pcm.append(out)
    decoded = np.concatenate(pcm)
    assert decoded.shape == (25 * 320,)
    assert np.abs(decoded[: 18 * 320]).max() > 1000  # speech frames give sound
    expected = decode_file_with_pyav(decoder.codec_name)
    assert expected.dtype == np.int16
    np.testing.assert_array_equal(decoded, expected)


def test_cmr_is_kept() -> None:
    decoder = AmrWbDecoder()
    decoder.decode(bytes(AmrWbPayload(cmr=2, frames=storage_frames()[:1])))
    assert decoder.cmr == 2


def test_lost_packets_are_concealed() -> None:
    frames = storage_frames()
    decoder = AmrWbDecoder()
    for frame in frames[20:24]:
        decoder.decode(bytes(AmrWbPayload(15, [frame])))
    last = decoder.decode(bytes(AmrWbPayload(15, [frames[24]])))
    concealed = [decoder.decode(None) for _ in range(6)]
    assert all(c.shape == (320,) and c.dtype == np.int16 for c in concealed)
    levels = [float(np.abs(c.astype(float)).mean()) for c in concealed]
    assert levels[0] > float(np.abs(last.astype(float)).mean()) / 10  # filled, not silent
    assert levels[-1] < levels[0] / 4  # and muted progressively (3GPP TS 26.191)
