"""RTP and G.711 helpers shared by the benchmark's load generator and its kernel-floor echo.

Deliberately independent of the bridge's codecs and RTP parser, so that the benchmark cannot
agree with a bug in what it measures. Everything works on whole arrays of packets:

- RTP fixed headers (RFC 3550 section 5.1) as a NumPy structured array, one row per leg;
- G.711 µ-law (ITU-T G.711, table 2a) encode and decode by arithmetic and a 256-entry table;
- levels in dBov, where 0 dBov is the RMS of a full-scale sine (ITU-T G.100.1);
- a single-bin DFT (Goertzel's bin) per frame, to find a room's tone in what a leg hears.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 8000
FRAME_S: Final = 0.020
FRAME_NS: Final = 20_000_000
SAMPLES_PER_FRAME: Final = 160
RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12
PACKET_SIZE: Final = RTP_HEADER_SIZE + SAMPLES_PER_FRAME
PAYLOAD_TYPE_PCMU: Final = 0

#: RTP fixed header, RFC 3550 section 5.1: V/P/X/CC, M/PT, sequence, timestamp, SSRC.
RTP_HEADER_DTYPE: Final = np.dtype(
    [("vpxcc", np.uint8), ("mpt", np.uint8), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4")]
)
_VERSION_SHIFT: Final = 6
_MARKER: Final = 0x80
_CSRC_COUNT_MASK: Final = 0x0F
_EXTENSION_BIT: Final = 0x10
_CSRC_SIZE: Final = 4
_EXTENSION_HEADER_SIZE: Final = 4
_SEQ_MODULO: Final = 1 << 16
_TS_MODULO: Final = 1 << 32

#: RMS of a full-scale sine in 16-bit linear PCM: the 0 dBov reference.
FULL_SCALE_RMS: Final = 32767 / math.sqrt(2)

# G.711 µ-law, ITU-T G.711 table 2a, on 16-bit linear samples.
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 32635
_ULAW_SEGMENT_SHIFT: Final = 7
_ULAW_MANTISSA_MASK: Final = 0x0F
_ULAW_SIGN: Final = 0x80


def dbov_to_rms(dbov: float) -> float:
    """The RMS of a signal at ``dbov``, in 16-bit sample units."""
    return FULL_SCALE_RMS * 10 ** (dbov / 20)


def rms_to_dbov(rms: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore"):
        return np.asarray(20 * np.log10(rms / FULL_SCALE_RMS), dtype=np.float64)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Encode 16-bit linear samples to µ-law codes (G.711 table 2a), any shape."""
    samples = pcm.astype(np.int32)
    sign = np.where(samples < 0, _ULAW_SIGN, 0).astype(np.int32)
    magnitude = np.minimum(np.abs(samples), _ULAW_CLIP) + _ULAW_BIAS
    # The segment is the position of the highest set bit above bit 7 (0..7).
    segment = np.floor(np.log2(magnitude)).astype(np.int32) - _ULAW_SEGMENT_SHIFT
    mantissa = (magnitude >> (segment + 3)) & _ULAW_MANTISSA_MASK
    code: npt.NDArray[np.int32] = ~(sign | (segment << 4) | mantissa) & 0xFF
    return code.astype(np.uint8)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (code >> 4) & 0x07
    mantissa = code & _ULAW_MANTISSA_MASK
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << segment) - _ULAW_BIAS
    return np.where(code & _ULAW_SIGN, -magnitude, magnitude).astype(np.int16)


#: µ-law code -> 16-bit linear sample.
ULAW_DECODE: Final = _ulaw_decode_table()


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    return ULAW_DECODE[codes]


def tone(freq: float, samples: int, dbov: float) -> npt.NDArray[np.int16]:
    """A sine at ``dbov``, starting at phase 0."""
    amplitude = dbov_to_rms(dbov) * math.sqrt(2)
    t = np.arange(samples) / SAMPLE_RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def noise(samples: int, dbov: float, rng: np.random.Generator) -> npt.NDArray[np.int16]:
    """White Gaussian noise at ``dbov``: a quiet line, not digital silence."""
    return np.round(rng.normal(0.0, dbov_to_rms(dbov), samples)).astype(np.int16)


def rtp_headers(
    count: int, payload_type: npt.NDArray[np.uint8] | int, ssrc: npt.NDArray[np.uint32]
) -> npt.NDArray[np.void]:
    """``count`` RTP headers (version 2, no CSRC, no extension); set seq/ts per packet."""
    headers = np.zeros(count, dtype=RTP_HEADER_DTYPE)
    headers["vpxcc"] = RTP_VERSION << _VERSION_SHIFT
    headers["mpt"] = payload_type
    headers["ssrc"] = ssrc
    return headers


def set_marker(headers: npt.NDArray[np.void], marker: npt.NDArray[np.bool_] | bool) -> None:
    headers["mpt"] = (headers["mpt"] & ~np.uint8(_MARKER)) | np.where(marker, _MARKER, 0)


def stamp(
    headers: npt.NDArray[np.void],
    seq0: npt.NDArray[np.uint16],
    ts0: npt.NDArray[np.uint32],
    frame: int,
) -> None:
    """Sequence and timestamp of the ``frame``-th packet of every stream (RFC 3550 5.1)."""
    headers["seq"] = (seq0.astype(np.int64) + frame) % _SEQ_MODULO
    headers["ts"] = (ts0.astype(np.int64) + frame * SAMPLES_PER_FRAME) % _TS_MODULO


def rtp_payload_offset(
    packets: npt.NDArray[np.uint8], length: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Where each packet's payload starts: after CSRCs and a header extension (RFC 3550 5.3.1).

    ``packets`` is ``(n, slot)``; returns -1 for a packet too short for its own header.
    """
    first = packets[:, 0].astype(np.int64)
    offset = RTP_HEADER_SIZE + _CSRC_SIZE * (first & _CSRC_COUNT_MASK)
    has_extension = (first & _EXTENSION_BIT) != 0
    slot = packets.shape[1]
    at = np.minimum(offset + 2, slot - 2)
    rows = np.arange(len(packets))
    words = packets[rows, at].astype(np.int64) << 8 | packets[rows, at + 1]
    offset = np.where(has_extension, offset + _EXTENSION_HEADER_SIZE + 4 * words, offset)
    return np.where(offset <= length, offset, -1)


def tone_fraction(
    frames: npt.NDArray[np.float64], freqs: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per frame: the share of its power at ``freqs[i]`` and its level in dBov.

    One DFT bin per frame (what Goertzel's recursion computes), evaluated as a dot product
    with the bin's complex exponential so that all frames are done at once. A pure tone at the
    bin's frequency gives a share of about 1; noise gives about 2/N.
    """
    n = frames.shape[1]
    t = np.arange(n) / SAMPLE_RATE
    basis = np.exp(-2j * np.pi * freqs[:, None] * t[None, :])
    spectrum = np.einsum("kn,kn->k", frames, basis)
    tone_power = 2 * np.abs(spectrum) ** 2 / n**2
    power = np.mean(frames**2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(power > 0, tone_power / power, 0.0)
    return share, rms_to_dbov(np.sqrt(power))
