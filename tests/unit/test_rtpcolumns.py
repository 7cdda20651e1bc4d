"""Tests for bridge.rtpcolumns: the vectorised parser must agree with RtpPacket.parse."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bridge.rtp import AUDIO_LEVEL_URI, MAX_EXTENSION_ITEMS, RtpPacket
from bridge.rtpcolumns import RTP_ERROR_REASONS, DropReason, RtpColumns, parse_rtp_columns

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rtp"
SLOT_SIZE = 1500


def batch(
    datagrams: list[bytes], slot_size: int = SLOT_SIZE, seed: int = 1
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    """A receive buffer whose bytes past each datagram are stale noise, as after recvmmsg.

    A datagram longer than the slot is cut to it, with its full length kept, like MSG_TRUNC.
    """
    rng = np.random.default_rng(seed)
    buf = rng.integers(0, 256, size=(len(datagrams), slot_size), dtype=np.uint8)
    for row, data in enumerate(datagrams):
        kept = data[:slot_size]
        buf[row, : len(kept)] = np.frombuffer(kept, dtype=np.uint8)
    return buf, np.array([len(data) for data in datagrams], dtype=np.int32)


def assert_agree(
    datagrams: list[bytes],
    buf: npt.NDArray[np.uint8],
    columns: RtpColumns,
    audio_level_id: int,
) -> None:
    """Row by row, the columns say what RtpPacket.parse says."""
    extension_map = {audio_level_id: AUDIO_LEVEL_URI}
    for row, data in enumerate(datagrams):
        where = f"row {row}: {data[:48].hex()} (length {len(data)}, id {audio_level_id})"
        try:
            packet = RtpPacket.parse(data, extension_map)
        except ValueError as error:
            assert columns.reason[row] == RTP_ERROR_REASONS[str(error)], where
            assert columns.payload_length[row] == 0, where
            assert columns.audio_level[row] == -1, where
            continue
        assert columns.reason[row] == DropReason.OK, where
        assert columns.marker[row] == packet.marker, where
        assert columns.payload_type[row] == packet.payload_type, where
        assert columns.sequence[row] == packet.sequence_number, where
        assert columns.timestamp[row] == packet.timestamp, where
        assert columns.ssrc[row] == packet.ssrc, where
        offset, length = int(columns.payload_offset[row]), int(columns.payload_length[row])
        assert length == len(packet.payload), where
        assert buf[row, offset : offset + length].tobytes() == packet.payload, where
        if packet.extensions.audio_level is None:
            assert columns.audio_level[row] == -1, where
            assert not columns.voice_activity[row], where
        else:
            voice, level = packet.extensions.audio_level
            assert columns.audio_level[row] == level, where
            assert columns.voice_activity[row] == voice, where


def test_fixtures_agree() -> None:
    names = sorted(path.name for path in FIXTURES.glob("*.bin"))
    datagrams = [(FIXTURES / name).read_bytes() for name in names]
    buf, lengths = batch(datagrams)
    columns = parse_rtp_columns(buf, lengths)
    assert_agree(datagrams, buf, columns, audio_level_id=1)

    reasons = dict(zip(names, columns.reason.tolist(), strict=True))
    assert reasons["rtp_pcmu_ffmpeg.bin"] == DropReason.OK
    assert reasons["rtp_truncated.bin"] == DropReason.TOO_SHORT
    assert reasons["rtp_version_invalid.bin"] == DropReason.BAD_VERSION
    assert reasons["rtp_csrc_truncated.bin"] == DropReason.BAD_CSRC
    assert reasons["rtp_extension_truncated.bin"] == DropReason.BAD_EXTENSION
    assert reasons["rtp_extension_length_truncated.bin"] == DropReason.BAD_EXTENSION
    assert reasons["rtp_padding_zero_invalid.bin"] == DropReason.BAD_PADDING
    assert reasons["rtp_padding_length_invalid.bin"] == DropReason.BAD_PADDING
    assert reasons["rtp_rtcp_mux.bin"] == DropReason.RTCP_ON_RTP_PORT
    # Every RTCP fixture that starts with a version-2 header is caught by the RFC 5761 rule.
    assert reasons["rtcp_rr_sdes_bye.bin"] == DropReason.RTCP_ON_RTP_PORT
    assert reasons["rtcp_app_pair.bin"] == DropReason.RTCP_ON_RTP_PORT

    levels = dict(zip(names, columns.audio_level.tolist(), strict=True))
    assert levels["rtp_audio_level.bin"] == 42
    assert levels["rtp_audio_level_not_first.bin"] == 5
    assert levels["rtp_audio_level_two_byte.bin"] == 127
    assert levels["rtp_opus_aiortc.bin"] == 127
    assert levels["rtp_extension_id15.bin"] == -1
    assert levels["rtp_pcmu_ffmpeg.bin"] == -1


def test_columns_of_one_packet() -> None:
    data = (FIXTURES / "rtp_extension_csrc_padding.bin").read_bytes()
    buf, lengths = batch([data])
    columns = parse_rtp_columns(buf, lengths)
    assert columns.reason.dtype == np.uint8
    assert columns.sequence.dtype == np.uint16
    assert columns.timestamp.dtype == np.uint32
    assert columns.audio_level.dtype == np.int16
    assert columns.payload_offset.dtype == np.int32
    assert columns.valid.tolist() == [True]
    assert columns.is_rtcp.tolist() == [False]
    assert columns.sequence.tolist() == [0x1234]
    assert columns.timestamp.tolist() == [0x89ABCDEF]
    assert columns.ssrc.tolist() == [0x11223344]
    assert columns.payload_offset.tolist() == [12 + 4 + 8]
    assert columns.payload_length.tolist() == [160]
    assert columns.audio_level.tolist() == [42]
    assert columns.voice_activity.tolist() == [True]
    assert len(columns) == 1


def test_audio_level_id_is_configurable() -> None:
    data = (FIXTURES / "rtp_audio_level_not_first.bin").read_bytes()
    buf, lengths = batch([data, data])
    assert parse_rtp_columns(buf, lengths, audio_level_id=3).audio_level.tolist() == [-1, -1]
    assert parse_rtp_columns(buf, lengths, audio_level_id=1).audio_level.tolist() == [5, 5]


def test_datagram_longer_than_slot_is_too_large() -> None:
    data = (FIXTURES / "rtp_csrc.bin").read_bytes()
    buf, lengths = batch([data, data[:64]], slot_size=64)
    assert lengths.tolist() == [180, 64]
    columns = parse_rtp_columns(buf, lengths)
    assert columns.reason.tolist() == [DropReason.TOO_LARGE, DropReason.OK]


def test_negative_length_is_too_short() -> None:
    buf, _ = batch([(FIXTURES / "rtp_minimal.bin").read_bytes()])
    columns = parse_rtp_columns(buf, np.array([-1], dtype=np.int32))
    assert columns.reason.tolist() == [DropReason.TOO_SHORT]


def test_empty_batch() -> None:
    columns = parse_rtp_columns(np.zeros((0, 1500), np.uint8), np.zeros(0, np.int32))
    assert len(columns) == 0
    assert columns.audio_level.dtype == np.int16


def test_walk_is_bounded_like_the_object_parser() -> None:
    # Elements of id 2 then the audio level: the 16th item is read, the 17th is not.
    items = bytes([0x20, 0x00]) * MAX_EXTENSION_ITEMS
    header = struct.pack("!BBHLL", 0x90, 0, 1, 2, 3)
    near = items[:-2] + bytes([0x10, 0x07])
    far = items + bytes([0x10, 0x07, 0x00, 0x00])
    datagrams = [
        header + struct.pack("!HH", 0xBEDE, len(block) // 4) + block for block in (near, far)
    ]
    buf, lengths = batch(datagrams)
    columns = parse_rtp_columns(buf, lengths)
    assert columns.audio_level.tolist() == [7, -1]
    assert_agree(datagrams, buf, columns, audio_level_id=1)


@pytest.mark.parametrize(
    ("buf", "lengths", "audio_level_id", "message"),
    [
        (
            np.zeros(1500, np.uint8),
            np.zeros(1, np.int32),
            1,
            "RTP buffer must be a 2-D uint8 array",
        ),
        (
            np.zeros((2, 1500), np.int16),
            np.zeros(2, np.int32),
            1,
            "RTP buffer must be a 2-D uint8 array",
        ),
        (
            np.zeros((2, 1500), np.uint8),
            np.zeros(3, np.int32),
            1,
            "RTP lengths must have one entry per buffer row",
        ),
        (
            np.zeros((2, 11), np.uint8),
            np.zeros(2, np.int32),
            1,
            "RTP buffer slot is smaller than 12 bytes",
        ),
        (
            np.zeros((2, 1500), np.uint8),
            np.zeros(2, np.int32),
            0,
            "RTP audio level extension id is out of range",
        ),
    ],
)
def test_argument_errors(
    buf: npt.NDArray[np.uint8], lengths: npt.NDArray[np.int32], audio_level_id: int, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_rtp_columns(buf, lengths, audio_level_id)


def random_extension(rng: np.random.Generator, audio_level_id: int) -> bytes:
    """An extension block, often RFC 8285-shaped, with padding, odd IDs and bad lengths."""
    profile = int(rng.choice([0xBEDE, 0xBEDE, 0x1000, 0x100F, 0xBEDF, 0x2000]))
    two_byte = profile & 0xFFF0 == 0x1000
    block = bytearray()
    for _ in range(int(rng.integers(0, 6))):
        kind = rng.random()
        if kind < 0.15:
            block += bytes(int(rng.integers(1, 4)))
            continue
        if kind < 0.55:
            x_id = audio_level_id
        elif kind < 0.6:
            x_id = int(rng.choice([0, 15])) if not two_byte else 0
        else:
            x_id = int(rng.integers(1, 15 if not two_byte else 256))
        length = 1 if rng.random() < 0.6 else int(rng.integers(1, 5))
        value = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
        if two_byte:
            block += bytes([x_id, length]) + value
        else:
            block += bytes([((x_id & 0x0F) << 4) | (length - 1)]) + value
    cut = rng.random()
    if cut < 0.15:
        # No padding: the block ends inside the last element, whose tail becomes payload.
        words = len(block) // 4
    else:
        block += bytes(-len(block) % 4)
        words = len(block) // 4
        if cut < 0.25:
            words = int(rng.integers(0, words + 3))
    return struct.pack("!HH", profile, words) + bytes(block)


def random_packet(rng: np.random.Generator, audio_level_id: int) -> bytes:
    version = 2 if rng.random() < 0.9 else int(rng.integers(0, 4))
    csrc_count = int(rng.integers(0, 16)) if rng.random() < 0.3 else 0
    extension = rng.random() < 0.6
    padding = rng.random() < 0.3
    marker = rng.random() < 0.3
    payload_type = int(rng.integers(0, 128))
    first = (version << 6) | (padding << 5) | (extension << 4) | csrc_count
    data = bytearray(
        struct.pack(
            "!BBHLL",
            first,
            (marker << 7) | payload_type,
            int(rng.integers(0, 1 << 16)),
            int(rng.integers(0, 1 << 32)),
            int(rng.integers(0, 1 << 32)),
        )
    )
    data += rng.integers(0, 256, size=4 * csrc_count, dtype=np.uint8).tobytes()
    if extension:
        data += random_extension(rng, audio_level_id)
    data += rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
    if padding:
        count = int(rng.integers(0, 12))
        data += bytes(max(count - 1, 0)) + bytes([count])
    mutation = rng.random()
    if mutation < 0.15:
        data = data[: int(rng.integers(0, len(data) + 1))]
    elif mutation < 0.3 and data:
        for _ in range(int(rng.integers(1, 4))):
            position = int(rng.integers(0, min(len(data), 32)))
            data[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


@pytest.mark.parametrize("seed", range(8))
def test_random_packets_agree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    audio_level_id = [1, 2, 14, 200][seed % 4]
    datagrams = [random_packet(rng, audio_level_id) for _ in range(500)]
    buf, lengths = batch(datagrams, slot_size=512, seed=seed)
    columns = parse_rtp_columns(buf, lengths, audio_level_id)
    assert_agree(datagrams, buf, columns, audio_level_id)
    # The generator reaches every check of the parser, and levels are found on valid rows.
    assert set(columns.reason.tolist()) == set(RTP_ERROR_REASONS.values()) | {DropReason.OK}
    assert np.count_nonzero(columns.audio_level >= 0) > 20


def test_mutated_fixtures_agree() -> None:
    rng = np.random.default_rng(99)
    sources = [
        (FIXTURES / name).read_bytes()
        for name in (
            "rtp_audio_level.bin",
            "rtp_audio_level_not_first.bin",
            "rtp_audio_level_two_byte.bin",
            "rtp_extension_csrc_padding.bin",
            "rtp_opus_aiortc.bin",
            "rtp_csrc.bin",
        )
    ]
    datagrams = []
    for _ in range(2000):
        data = bytearray(sources[int(rng.integers(0, len(sources)))])
        for _ in range(int(rng.integers(1, 4))):
            position = int(rng.integers(0, min(len(data), 40)))
            data[position] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data) + 1))]
        datagrams.append(bytes(data))
    buf, lengths = batch(datagrams, seed=7)
    columns = parse_rtp_columns(buf, lengths)
    assert_agree(datagrams, buf, columns, audio_level_id=1)
    assert np.count_nonzero(columns.valid) > 200
    assert np.count_nonzero(columns.audio_level >= 0) > 100
