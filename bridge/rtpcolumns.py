"""Vectorised RTP header parsing: one batch of datagrams in, one set of columns out.

This is step 2 of the media path ("Parse as columns"): the datagrams a tick drained with
``recvmmsg`` sit one per row of a ``(n, slot_size)`` uint8 buffer, and every header field of
every row is parsed at once with NumPy (RFC 3550 §5.1, RFC 8285, RFC 6464, RFC 5761 §4).  There
is no Python loop over packets; the only loop walks RFC 8285 extension elements, at most
:data:`bridge.rtp.MAX_EXTENSION_ITEMS` steps, each over the rows still walking.

A row that :meth:`bridge.rtp.RtpPacket.parse` would reject gets the :class:`DropReason` that
matches its ``ValueError`` (see :data:`RTP_ERROR_REASONS`), and a valid row gets the same field
values; the unit tests check this on every fixture and on random and mutated packets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.rtp import (
    AUDIO_LEVEL_LENGTH,
    AUDIO_LEVEL_MASK,
    AUDIO_LEVEL_VAD_FLAG,
    CSRC_LENGTH,
    EXTENSION_HEADER_LENGTH,
    EXTENSION_PADDING,
    EXTENSION_WORD_LENGTH,
    MAX_EXTENSION_ITEMS,
    ONE_BYTE_HEADER_LENGTH,
    ONE_BYTE_ID_TERMINATE,
    ONE_BYTE_PROFILE,
    RTCP_PACKET_TYPE_MAX,
    RTCP_PACKET_TYPE_MIN,
    RTP_HEADER_LENGTH,
    RTP_VERSION,
    TWO_BYTE_HEADER_LENGTH,
    TWO_BYTE_MAX_ID,
    TWO_BYTE_PROFILE,
    TWO_BYTE_PROFILE_MASK,
)

NO_AUDIO_LEVEL = -1


class DropReason(IntEnum):
    """Why a received datagram was not played out; one enum for every drop counter.

    The first group is found by :func:`parse_rtp_columns`; the second is reserved for the media
    engine (source demultiplexing, payload-type checks, the jitter buffer).
    """

    OK = 0
    TOO_SHORT = 1
    BAD_VERSION = 2
    BAD_CSRC = 3
    BAD_EXTENSION = 4
    BAD_PADDING = 5
    UNKNOWN_SOURCE = 6
    UNEXPECTED_PAYLOAD_TYPE = 7
    LATE = 8
    DUPLICATE = 9
    TOO_LARGE = 10
    RTCP_ON_RTP_PORT = 11
    #: The codec could not decode the payload (engine).
    BAD_PAYLOAD = 12


# The ValueError message of RtpPacket.parse for each reason the column parser reports.
RTP_ERROR_REASONS: Mapping[str, DropReason] = MappingProxyType(
    {
        "RTP packet has RTCP packet type": DropReason.RTCP_ON_RTP_PORT,
        f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes": DropReason.TOO_SHORT,
        "RTP packet has invalid version": DropReason.BAD_VERSION,
        "RTP packet has truncated CSRC": DropReason.BAD_CSRC,
        "RTP packet has truncated extension": DropReason.BAD_EXTENSION,
        "RTP packet padding length is invalid": DropReason.BAD_PADDING,
    }
)

_VERSION_SHIFT = 6
_PADDING_FLAG = 0x20
_EXTENSION_FLAG = 0x10
_CSRC_COUNT_MASK = 0x0F
_MARKER_SHIFT = 7
_PAYLOAD_TYPE_MASK = 0x7F
_NIBBLE_SHIFT = 4
_NIBBLE_MASK = 0x0F
_HEADER_WORDS = RTP_HEADER_LENGTH // 4
_WIDE_HEADER_LENGTH = RTP_HEADER_LENGTH + EXTENSION_HEADER_LENGTH
_HALF_WORD_SHIFT = 16
_HALF_WORD_MASK = 0xFFFF
_BIG_ENDIAN_WEIGHTS = np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.intp)


@dataclass
class RtpColumns:
    """Parsed headers of a batch, one entry per row of the receive buffer.

    Only ``reason`` is meaningful on every row.  Rows with ``reason != OK`` have
    ``payload_length == 0`` and ``audio_level == -1``; their other columns are unspecified.
    ``payload_offset``/``payload_length`` locate the payload inside the row, without padding.
    ``audio_level`` is the RFC 6464 level in -dBov (0..127), or -1 when the packet has none.
    """

    reason: npt.NDArray[np.uint8]
    marker: npt.NDArray[np.bool_]
    payload_type: npt.NDArray[np.uint8]
    sequence: npt.NDArray[np.uint16]
    timestamp: npt.NDArray[np.uint32]
    ssrc: npt.NDArray[np.uint32]
    payload_offset: npt.NDArray[np.int32]
    payload_length: npt.NDArray[np.int32]
    audio_level: npt.NDArray[np.int16]
    voice_activity: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.reason)

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        """Rows that parsed as RTP."""
        valid: npt.NDArray[np.bool_] = self.reason == DropReason.OK
        return valid

    @property
    def is_rtcp(self) -> npt.NDArray[np.bool_]:
        """Rows that are RTCP multiplexed onto the RTP port (RFC 5761 §4)."""
        rtcp: npt.NDArray[np.bool_] = self.reason == DropReason.RTCP_ON_RTP_PORT
        return rtcp


def parse_rtp_columns(
    buf: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.int32],
    audio_level_id: int = 1,
) -> RtpColumns:
    """Parse the RTP headers of every row of ``buf`` at once.

    ``buf[i, :lengths[i]]`` is datagram ``i``; ``buf`` should be C-contiguous (a receive buffer
    is), or it is copied.  A length above the slot size (a datagram the kernel truncated) gives
    ``TOO_LARGE``; otherwise the first failing check, in the order of
    :meth:`bridge.rtp.RtpPacket.parse`, gives the reason.  ``audio_level_id`` is the negotiated
    RFC 8285 ID of the RFC 6464 element, in either the one-byte or the two-byte form.
    """
    if buf.ndim != 2 or buf.dtype != np.uint8:
        raise ValueError("RTP buffer must be a 2-D uint8 array")
    if lengths.shape != (buf.shape[0],):
        raise ValueError("RTP lengths must have one entry per buffer row")
    if buf.shape[1] < RTP_HEADER_LENGTH:
        raise ValueError(f"RTP buffer slot is smaller than {RTP_HEADER_LENGTH} bytes")
    if not 1 <= audio_level_id <= TWO_BYTE_MAX_ID:
        raise ValueError("RTP audio level extension id is out of range")

    count, slot_size = buf.shape
    flat = buf.reshape(-1)
    row_start = np.arange(count, dtype=np.intp) * slot_size
    length = lengths.astype(np.intp)

    # Fixed header (RFC 3550 §5.1) plus the next word, where the extension header sits when
    # there is no CSRC: one copy of 16 octets per row, read as big-endian 32-bit words.
    header = np.zeros((count, _WIDE_HEADER_LENGTH), dtype=np.uint8)
    header[:, : min(slot_size, _WIDE_HEADER_LENGTH)] = buf[:, :_WIDE_HEADER_LENGTH]
    words = header.view(">u4")
    first = header[:, 0]
    second = header[:, 1]
    version_ok = (first >> _VERSION_SHIFT) == RTP_VERSION
    has_padding = (first & _PADDING_FLAG) != 0
    has_extension = (first & _EXTENSION_FLAG) != 0
    csrc_count = first & _CSRC_COUNT_MASK
    csrc_end = RTP_HEADER_LENGTH + CSRC_LENGTH * csrc_count.astype(np.intp)

    # Extension header (RFC 3550 §5.3.1): profile and length in words.  Rows with CSRCs have
    # it further on and are gathered one by one from the flat buffer (rare on real streams).
    ext_word = words[:, _HEADER_WORDS].astype(np.intp)
    shifted = np.flatnonzero(has_extension & (csrc_count != 0))
    if shifted.size:
        at = np.minimum(row_start[shifted] + csrc_end[shifted], flat.size - EXTENSION_HEADER_LENGTH)
        octets = flat[at[:, None] + np.arange(EXTENSION_HEADER_LENGTH)].astype(np.intp)
        ext_word[shifted] = (octets * _BIG_ENDIAN_WEIGHTS).sum(axis=1)
    profile = ext_word >> _HALF_WORD_SHIFT
    ext_start = csrc_end + EXTENSION_HEADER_LENGTH
    ext_end = ext_start + EXTENSION_WORD_LENGTH * (ext_word & _HALF_WORD_MASK)
    payload_offset = np.where(has_extension, ext_end, csrc_end)

    # Padding (RFC 3550 §5.1): the last octet counts the padding, itself included.
    padding = np.zeros(count, dtype=np.intp)
    padded = np.flatnonzero(has_padding & (length > 0) & (length <= slot_size))
    padding[padded] = flat[row_start[padded] + length[padded] - 1]

    checks = (
        (length > slot_size, DropReason.TOO_LARGE),
        (
            (length >= 2)
            & version_ok
            & (second >= RTCP_PACKET_TYPE_MIN)
            & (second <= RTCP_PACKET_TYPE_MAX),
            DropReason.RTCP_ON_RTP_PORT,
        ),
        (length < RTP_HEADER_LENGTH, DropReason.TOO_SHORT),
        (~version_ok, DropReason.BAD_VERSION),
        (length < csrc_end, DropReason.BAD_CSRC),
        (has_extension & (length < ext_end), DropReason.BAD_EXTENSION),
        (
            has_padding & ((padding == 0) | (padding > length - payload_offset)),
            DropReason.BAD_PADDING,
        ),
    )
    invalid = np.logical_or.reduce([failed for failed, _ in checks])
    reason = np.zeros(count, dtype=np.uint8)
    bad = np.flatnonzero(invalid)
    if bad.size:
        # The first failing check wins; only the (rare) bad rows are sorted out.
        reason[bad] = np.select(
            [failed[bad] for failed, _ in checks], [int(code) for _, code in checks]
        )
    valid = ~invalid

    level_octet = np.full(count, -1, dtype=np.intp)
    walking = valid & has_extension & (ext_start < ext_end)
    forms = (
        (profile == ONE_BYTE_PROFILE, False),
        ((profile & TWO_BYTE_PROFILE_MASK) == TWO_BYTE_PROFILE, True),
    )
    for form, two_byte in forms:
        rows = np.flatnonzero(walking & form)
        if rows.size:
            found, octets = _walk_extensions(
                flat,
                row_start[rows] + ext_start[rows],
                row_start[rows] + ext_end[rows],
                two_byte,
                audio_level_id,
            )
            level_octet[rows[found]] = octets

    has_level = level_octet >= 0
    return RtpColumns(
        reason=reason,
        marker=(second >> _MARKER_SHIFT).astype(np.bool_),
        payload_type=(second & _PAYLOAD_TYPE_MASK).astype(np.uint8),
        sequence=(words[:, 0] & _HALF_WORD_MASK).astype(np.uint16),
        timestamp=words[:, 1].astype(np.uint32),
        ssrc=words[:, 2].astype(np.uint32),
        payload_offset=payload_offset.astype(np.int32),
        payload_length=np.where(valid, length - payload_offset - padding, 0).astype(np.int32),
        audio_level=np.where(has_level, level_octet & AUDIO_LEVEL_MASK, NO_AUDIO_LEVEL).astype(
            np.int16
        ),
        voice_activity=has_level & ((level_octet & AUDIO_LEVEL_VAD_FLAG) != 0),
    )


def _walk_extensions(
    flat: npt.NDArray[np.uint8],
    pos: npt.NDArray[np.intp],
    end: npt.NDArray[np.intp],
    two_byte: bool,
    audio_level_id: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
    """Find the RFC 6464 octet in extension blocks of one RFC 8285 form, all rows at once.

    ``pos`` and ``end`` bound each block in ``flat``.  Each step reads one item (an element or a
    padding octet) of every block still walking, with the stopping rules of
    :func:`bridge.rtp.unpack_header_extensions`; a block stops once it finds the first element
    with ``audio_level_id`` and a one-octet value.  Returns the indices (into ``pos``) of the
    blocks with a level, and their level octets.
    """
    walking = np.arange(len(pos))
    found: list[npt.NDArray[np.intp]] = []
    octets: list[npt.NDArray[np.uint8]] = []
    x_id: npt.NDArray[np.integer[Any]]
    for _ in range(MAX_EXTENSION_ITEMS):
        octet = flat[pos]
        padding = octet == EXTENSION_PADDING
        if two_byte:
            x_id = octet
            # A header cut by the block end reads a stray length, but then overruns the block.
            value_length = flat[np.minimum(pos + 1, flat.size - 1)].astype(np.intp)
            value_start = pos + TWO_BYTE_HEADER_LENGTH
            ends_walk = np.zeros_like(padding)
        else:
            x_id = octet >> _NIBBLE_SHIFT
            value_length = (octet & _NIBBLE_MASK).astype(np.intp) + 1
            value_start = pos + ONE_BYTE_HEADER_LENGTH
            # RFC 8285 §4.1.2 and §4.2: ID 0 with a length, or ID 15, ends processing.
            ends_walk = (x_id == EXTENSION_PADDING) | (x_id == ONE_BYTE_ID_TERMINATE)
        next_pos = np.where(padding, pos + 1, value_start + value_length)
        stop = ~padding & (ends_walk | (next_pos > end))
        hit = ~padding & ~stop & (x_id == audio_level_id) & (value_length == AUDIO_LEVEL_LENGTH)
        if hit.any():
            found.append(walking[hit])
            octets.append(flat[value_start[hit]])
        keep = np.flatnonzero(~stop & ~hit & (next_pos < end))
        if keep.size == 0:
            break
        walking, pos, end = walking[keep], next_pos[keep], end[keep]
    if not found:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint8)
    return np.concatenate(found), np.concatenate(octets)
