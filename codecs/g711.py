"""G.711 µ-law (PCMU) and A-law (PCMA) by lookup table, batch first.

ITU-T G.711 (11/88) tables 1 and 2 define the 256 code words of each law and
their decision levels; RFC 3551 §4.5.14 puts them on RTP as PCMU (static
payload type 0) and PCMA (8), one octet per sample at 8000 Hz.

Decoding is one gather (``take``) from a (256,) table and encoding one gather
from a (65536,) table indexed by the int16 sample seen as uint16, so a whole
worker's frames, of any shape, convert in a single NumPy operation: about
0.2 ms each way for 1,000 streams of 20 ms, measured on a small two-core VM.

The tables are bit-exact with FFmpeg's ``pcm_mulaw`` and ``pcm_alaw`` (and so
with PyAV): linear values are G.711's reconstruction levels scaled to 16 bits
(µ-law's 14-bit levels times 4, A-law's 13-bit levels times 8), and a linear
sample encodes to the code whose level is nearest, decided on the sample
truncated to 14 bits, the decision level between two codes being their
midpoint rounded to 14 bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import Decoder, Encoder, samples_per_frame
from .plc import FadeConcealer

CLOCK_RATE = 8000

SIGN_BIT = 0x80
QUANT_MASK = 0x0F
SEG_MASK = 0x70
SEG_SHIFT = 4
ULAW_BIAS = 0x84
"""µ-law bias (132 in 16-bit units, 33 in G.711's 14-bit units)."""
ULAW_INVERSION = 0xFF
"""µ-law code words are sent with every bit inverted (G.711 table 2, note)."""
ALAW_INVERSION = 0x55
"""A-law code words are sent with the even bits inverted (G.711 table 1, note)."""
ULAW_POSITIVE_ZERO = ULAW_INVERSION
"""µ-law code word of the smallest positive level (+0)."""
ALAW_POSITIVE_ZERO = ALAW_INVERSION | SIGN_BIT
"""A-law code word of the smallest positive level (+8 in 16-bit units)."""

_CODES = np.arange(256, dtype=np.int32)
_MAGNITUDES = 128
_DECISION_SHIFT = 2
"""The encoder decides on 14 bits: the 16-bit sample shifted right by 2."""
_DECISION_CENTRE = 1 << (16 - _DECISION_SHIFT - 1)


def _ulaw_levels() -> npt.NDArray[np.int16]:
    code = _CODES ^ ULAW_INVERSION
    magnitude = (((code & QUANT_MASK) << 3) + ULAW_BIAS) << ((code & SEG_MASK) >> SEG_SHIFT)
    return np.where(code & SIGN_BIT, ULAW_BIAS - magnitude, magnitude - ULAW_BIAS).astype(np.int16)


def _alaw_levels() -> npt.NDArray[np.int16]:
    code = _CODES ^ ALAW_INVERSION
    quant = code & QUANT_MASK
    segment = (code & SEG_MASK) >> SEG_SHIFT
    magnitude = np.where(
        segment > 0,
        (2 * quant + 1 + 32) << (segment + 2),
        (2 * quant + 1) << 3,
    )
    return np.where(code & SIGN_BIT, magnitude, -magnitude).astype(np.int16)


def _encode_table(levels: npt.NDArray[np.int16], positive_zero: int) -> npt.NDArray[np.uint8]:
    """Build the (65536,) encoder table from the decoder's levels.

    ``positive_zero`` is the code word of the smallest positive level; the
    i-th positive level is ``i ^ positive_zero`` and the i-th negative one
    ``i ^ positive_zero ^ SIGN_BIT``.
    """
    magnitudes = np.arange(_MAGNITUDES)
    positive = levels[magnitudes ^ positive_zero].astype(np.int32)
    decisions = (positive[:-1] + positive[1:] + 4) >> 3
    linear = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    offset = (linear >> _DECISION_SHIFT) + _DECISION_CENTRE
    index = np.searchsorted(decisions, np.abs(offset - _DECISION_CENTRE), side="right")
    code: npt.NDArray[np.int64] = np.where(
        offset >= _DECISION_CENTRE, index ^ positive_zero, index ^ positive_zero ^ SIGN_BIT
    )
    return code.astype(np.uint8)


ULAW_TO_LINEAR: npt.NDArray[np.int16] = _ulaw_levels()
"""µ-law code word → linear sample, shape (256,)."""
ALAW_TO_LINEAR: npt.NDArray[np.int16] = _alaw_levels()
"""A-law code word → linear sample, shape (256,)."""
LINEAR_TO_ULAW: npt.NDArray[np.uint8] = _encode_table(ULAW_TO_LINEAR, ULAW_POSITIVE_ZERO)
"""Linear sample (as uint16) → µ-law code word, shape (65536,)."""
LINEAR_TO_ALAW: npt.NDArray[np.uint8] = _encode_table(ALAW_TO_LINEAR, ALAW_POSITIVE_ZERO)
"""Linear sample (as uint16) → A-law code word, shape (65536,)."""

for _table in (ULAW_TO_LINEAR, ALAW_TO_LINEAR, LINEAR_TO_ULAW, LINEAR_TO_ALAW):
    _table.flags.writeable = False


def ulaw_decode(payload: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Decode µ-law code words of any shape into int16 samples of the same shape."""
    return ULAW_TO_LINEAR.take(payload)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Encode int16 samples of any shape into µ-law code words of the same shape."""
    return LINEAR_TO_ULAW.take(pcm.view(np.uint16))


def alaw_decode(payload: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Decode A-law code words of any shape into int16 samples of the same shape."""
    return ALAW_TO_LINEAR.take(payload)


def alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Encode int16 samples of any shape into A-law code words of the same shape."""
    return LINEAR_TO_ALAW.take(pcm.view(np.uint16))


class _G711Decoder(Decoder):
    _table: npt.NDArray[np.int16]

    def __init__(self) -> None:
        self._plc = FadeConcealer(samples_per_frame(CLOCK_RATE))

    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        if payload is None:
            return self._plc.conceal()
        return self._plc.good(self._table.take(np.frombuffer(payload, dtype=np.uint8)))


class _G711Encoder(Encoder):
    _table: npt.NDArray[np.uint8]

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.shape != (samples_per_frame(CLOCK_RATE),):
            raise ValueError("PCM frame has the wrong number of samples")
        return self._table.take(pcm.astype(np.int16, copy=False).view(np.uint16)).tobytes()


class PcmuDecoder(_G711Decoder):
    """PCMU decoder for one stream; losses are concealed by :mod:`.plc`."""

    _table = ULAW_TO_LINEAR


class PcmaDecoder(_G711Decoder):
    """PCMA decoder for one stream; losses are concealed by :mod:`.plc`."""

    _table = ALAW_TO_LINEAR


class PcmuEncoder(_G711Encoder):
    """PCMU encoder for one stream."""

    _table = LINEAR_TO_ULAW


class PcmaEncoder(_G711Encoder):
    """PCMA encoder for one stream."""

    _table = LINEAR_TO_ALAW
