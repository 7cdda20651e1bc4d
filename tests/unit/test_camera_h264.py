from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import CameraConfig
from bridge.gateways.camera import h264
from bridge.gateways.camera.camera import url_with_credentials
from bridge.gateways.camera.ingest import Redactor
from bridge.gateways.camera.snapshot import jpeg_of_keyframe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "video"


def gop() -> list[bytes]:
    return list(h264.iter_access_units((FIXTURES / "h264_gop.bin").read_bytes()))


def kinds(access_unit: bytes) -> list[int]:
    return [h264.nal_type(u) for u in h264.split_nal_units(access_unit)]


def test_access_units_of_the_x264_fixture() -> None:
    units = gop()
    assert [kinds(u) for u in units] == [[7, 8, 6, 5], [1], [1], [1], [1]]
    assert [h264.is_keyframe(u) for u in units] == [True, False, False, False, False]


def test_idr_without_parameter_sets_gets_the_remembered_ones() -> None:
    idr_au, delta = gop()[0], gop()[1]
    units = h264.split_nal_units(idr_au)
    sps_pps = [u for u in units if h264.nal_type(u) in (h264.NAL_SPS, h264.NAL_PPS)]
    bare_idr = h264.join_nal_units([b"\x09\xf0"] + [u for u in units if h264.nal_type(u) == 5])
    params = h264.ParameterSets()
    assert params.prepare(bare_idr) == (bare_idr, False), "no SPS/PPS known: not a start point"
    params.learn(sps_pps)
    repaired, keyframe = params.prepare(bare_idr)
    assert keyframe and params.repaired == 1
    assert kinds(repaired) == [9, 7, 8, 5], "after the AUD, before the slice"
    assert params.prepare(delta) == (delta, False)
    assert jpeg_of_keyframe(repaired)[:2] == b"\xff\xd8"


def test_parameter_sets_from_avcc_and_annex_b_extradata() -> None:
    sps, pps = b"\x67\x42\x00\x1f\xaa", b"\x68\xce\x3c\x80"
    avcc = bytes([1, 0x42, 0, 0x1F, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
    avcc += bytes([1]) + len(pps).to_bytes(2, "big") + pps
    assert h264.parameter_sets_from_extradata(avcc) == [sps, pps]
    assert h264.parameter_sets_from_extradata(h264.join_nal_units([sps, pps])) == [sps, pps]
    with pytest.raises(ValueError, match="avcC record is truncated"):
        h264.parameter_sets_from_extradata(avcc[:-2])


def test_snapshot_of_a_delta_frame_fails_cleanly() -> None:
    with pytest.raises(ValueError, match="keyframe does not decode"):
        jpeg_of_keyframe(gop()[1])


def test_credentials_leave_the_url_and_are_redacted() -> None:
    config = CameraConfig(name="gate", url="rtsp://adm%40in:p%3Ass@10.0.0.1:554/s1")
    assert (config.url, config.username, config.secret()) == (
        "rtsp://10.0.0.1:554/s1",
        "adm@in",
        "p:ss",
    )
    assert "p:ss" not in repr(config)
    secret_url = url_with_credentials(config.url, config.username, config.secret())
    assert secret_url == "rtsp://adm%40in:p%3Ass@10.0.0.1:554/s1"
    redact = Redactor(secret_url, config.url, ("p:ss", "p%3Ass"))
    message = f"cannot open the camera: 401 Unauthorized: '{secret_url}' (p:ss)"
    assert (
        redact(message)
        == "cannot open the camera: 401 Unauthorized: 'rtsp://10.0.0.1:554/s1' (***)"
    )


def test_credentials_with_a_bare_slash_are_refused_not_shown() -> None:
    # urlsplit ends the host part at the "/": nothing would be taken out of the URL.
    with pytest.raises(ValueError, match="credentials must be percent-encoded"):
        CameraConfig(name="gate", url="rtsp://admin:pa/ss@10.0.0.1/stream")


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_GATE_PASSWORD", "from-env")
    config = CameraConfig(name="gate", url="rtsp://h/s", password_env="CAM_GATE_PASSWORD")
    assert config.secret() == "from-env"


def test_split_access_units_are_joined_without_delay_for_whole_ones() -> None:
    # As GStreamer (config-interval=-1, two slices a picture) through FFmpeg's parser: the
    # IDR comes in two packets of one timestamp, each part led by SPS/PPS; P-frames whole.
    aud, sps, pps = b"\x09\xf0", b"\x67\x42\xc0\x1e", b"\x68\xce\x3c\x80"
    idr_top, idr_bottom = b"\x65\x88\x84", b"\x65\x00\x0a\x84"  # first_mb 0, then not 0
    p_top, p_bottom = b"\x41\x9a\x02", b"\x41\x00\x26\x9a"

    def annexb(*units: bytes) -> bytes:
        return h264.join_nal_units(list(units))

    joiner = h264.AccessUnitJoiner()
    assert joiner.push(annexb(aud, sps, pps, idr_top), None) == []
    assert joiner.push(annexb(sps, pps, idr_bottom), 3600) == []
    # The later timestamp ends the IDR; learned, the whole P-frame goes on at once too.
    assert joiner.push(annexb(aud, p_top, p_bottom), 7200) == [
        (annexb(aud, sps, pps, idr_top, idr_bottom), 3600),
        (annexb(aud, p_top, p_bottom), 7200),
    ]
    assert joiner.slices == 2 and joiner.flush() == []
    assert joiner.push(annexb(aud, p_top, p_bottom), 10800) == [
        (annexb(aud, p_top, p_bottom), 10800)
    ]
    assert joiner.push(annexb(aud, sps, pps, idr_top), 14400) == []
    assert joiner.push(annexb(sps, pps, idr_bottom), 14400) == [
        (annexb(aud, sps, pps, idr_top, idr_bottom), 14400)
    ]
    assert (joiner.joined, joiner.late_parts) == (2, 0)
    assert h264.is_keyframe(annexb(aud, sps, pps, idr_top, idr_bottom))
