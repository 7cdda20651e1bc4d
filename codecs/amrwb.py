"""AMR-WB decoding: the RTP payload format of RFC 4867 and PyAV's AMR-WB decoder.

AMR-WB (3GPP TS 26.171, ITU-T G.722.2) codes 16 kHz speech in 20 ms frames
at one of nine modes (6.60 to 23.85 kbit/s) plus comfort-noise SID frames.
RFC 4867 carries it on RTP with a 16000 Hz clock (§4.1) in one of two
layouts, chosen by the SDP parameter ``octet-align``:

- bandwidth-efficient (the default, §4.3): a 4-bit CMR, then 6-bit
  table-of-contents entries (F, FT, Q), then the speech bits of every frame
  end to end, then zero padding to an octet;
- octet-aligned (``octet-align=1``, §4.4): a CMR octet, then one octet per
  table-of-contents entry (F, FT, Q and two padding bits), then each frame's
  speech bits padded to an octet.

Both are read into storage-format frames (§5.3: a header octet ``0 FT Q 0 0``,
then the speech bits padded to an octet), which is what FFmpeg's decoders
take. The interleaving, CRC and robust-sorting options are not supported.

Decoding prefers ``libopencore_amrwb`` (the 3GPP reference decoder, with its
own concealment and comfort noise): a lost packet is decoded as one
SPEECH_LOST frame (FT 14). FFmpeg's native ``amrwb`` decoder is the fallback;
it supports neither SID frames nor concealment, so those frames are concealed
by :mod:`.plc` instead.

Encoding is not available: this PyAV build (and FFmpeg 5.1 as Debian 12
ships it) has AMR-WB decoders only, ``amrwb`` and ``libopencore_amrwb``, and no
AMR-WB encoder; the VisualOn encoder ``libvo_amrwbenc`` is not compiled in.
So AMR-WB legs are receive-only towards the bridge, or get another codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from .base import AvDecoder, samples_per_frame
from .plc import FadeConcealer

CLOCK_RATE = 16000
SAMPLE_RATE = 16000
STORAGE_MAGIC = b"#!AMR-WB\n"
"""Magic number of the single-channel AMR-WB storage format, RFC 4867 §5.1."""

DECODER_NAMES = ("libopencore_amrwb", "amrwb")
REFERENCE_DECODER = "libopencore_amrwb"

CMR_NO_REQUEST = 15
"""Codec Mode Request meaning "no mode request", RFC 4867 §4.3.1."""

OCTET_BITS = 8
CMR_BITS = 4
TOC_BITS = 6
"""Bandwidth-efficient ToC entry: F (1 bit), FT (4 bits), Q (1 bit)."""
FT_BITS = 4
FT_MASK = 0x0F
TOC_FOLLOW_BIT = 0x20
"""F bit of a 6-bit ToC entry: another entry follows."""
TOC_FT_SHIFT = 1
TOC_QUALITY_BIT = 0x01
OCTET_FOLLOW_BIT = 0x80
OCTET_FT_SHIFT = 3
OCTET_QUALITY_BIT = 0x04
CMR_SHIFT = 4

UNSUPPORTED_PARAMETERS = ("interleaving", "crc", "robust-sorting")
"""SDP parameters of RFC 4867 §8.1 that this implementation does not support when set."""


class AmrWbFrameType(IntEnum):
    """Frame types of AMR-WB, RFC 4867 §3.6 and 3GPP TS 26.201 table 1a."""

    MODE_6_60 = 0
    MODE_8_85 = 1
    MODE_12_65 = 2
    MODE_14_25 = 3
    MODE_15_85 = 4
    MODE_18_25 = 5
    MODE_19_85 = 6
    MODE_23_05 = 7
    MODE_23_85 = 8
    SID = 9
    SPEECH_LOST = 14
    NO_DATA = 15


FRAME_BITS: dict[AmrWbFrameType, int] = {
    AmrWbFrameType.MODE_6_60: 132,
    AmrWbFrameType.MODE_8_85: 177,
    AmrWbFrameType.MODE_12_65: 253,
    AmrWbFrameType.MODE_14_25: 285,
    AmrWbFrameType.MODE_15_85: 317,
    AmrWbFrameType.MODE_18_25: 365,
    AmrWbFrameType.MODE_19_85: 397,
    AmrWbFrameType.MODE_23_05: 461,
    AmrWbFrameType.MODE_23_85: 477,
    AmrWbFrameType.SID: 40,
    AmrWbFrameType.SPEECH_LOST: 0,
    AmrWbFrameType.NO_DATA: 0,
}
"""Number of speech (or SID) bits of each frame type, 3GPP TS 26.201 table 1a."""


def _frame_type(value: int) -> AmrWbFrameType:
    try:
        return AmrWbFrameType(value)
    except ValueError:
        raise ValueError(f"AMR-WB frame type {value} is reserved") from None


def _octets(bits: int) -> int:
    return -(-bits // OCTET_BITS)


@dataclass
class AmrWbFrame:
    """One AMR-WB frame: its type, its quality bit and its speech bits padded to an octet."""

    frame_type: AmrWbFrameType
    quality: bool = True
    data: bytes = b""

    @property
    def bits(self) -> int:
        """Number of speech bits the frame type carries."""
        return FRAME_BITS[self.frame_type]

    def to_storage(self) -> bytes:
        """Return the frame in the storage format of RFC 4867 §5.3: header octet, then data."""
        header = (self.frame_type << OCTET_FT_SHIFT) | (OCTET_QUALITY_BIT if self.quality else 0)
        return bytes((header,)) + self.data


def parse_storage(data: bytes) -> list[AmrWbFrame]:
    """Read the frames of a single-channel AMR-WB storage file (RFC 4867 §5.1 and §5.3)."""
    if not data.startswith(STORAGE_MAGIC):
        raise ValueError("AMR-WB storage magic is missing")
    frames = []
    pos = len(STORAGE_MAGIC)
    while pos < len(data):
        header = data[pos]
        frame_type = _frame_type((header >> OCTET_FT_SHIFT) & FT_MASK)
        size = _octets(FRAME_BITS[frame_type])
        if pos + 1 + size > len(data):
            raise ValueError("AMR-WB storage frame is truncated")
        frames.append(
            AmrWbFrame(frame_type, bool(header & OCTET_QUALITY_BIT), data[pos + 1 : pos + 1 + size])
        )
        pos += 1 + size
    return frames


@dataclass
class AmrWbPayload:
    """One RTP payload of AMR-WB, RFC 4867 §4: a mode request and a list of frames."""

    cmr: int = CMR_NO_REQUEST
    frames: list[AmrWbFrame] = field(default_factory=list)
    octet_aligned: bool = False

    @classmethod
    def parse(cls, data: bytes, octet_aligned: bool = False) -> AmrWbPayload:
        """Parse a payload in the bandwidth-efficient (§4.3) or octet-aligned (§4.4) mode."""
        if octet_aligned:
            return cls._parse_octet_aligned(data)
        return cls._parse_bandwidth_efficient(data)

    @classmethod
    def _parse_octet_aligned(cls, data: bytes) -> AmrWbPayload:
        if len(data) < 2:
            raise ValueError("AMR-WB payload is truncated")
        cmr = data[0] >> CMR_SHIFT
        toc = []
        pos = 1
        while True:
            if pos >= len(data):
                raise ValueError("AMR-WB payload is truncated")
            entry = data[pos]
            pos += 1
            toc.append(entry)
            if not entry & OCTET_FOLLOW_BIT:
                break
        frames = []
        for entry in toc:
            frame_type = _frame_type((entry >> OCTET_FT_SHIFT) & FT_MASK)
            size = _octets(FRAME_BITS[frame_type])
            if pos + size > len(data):
                raise ValueError("AMR-WB payload is truncated")
            frames.append(
                AmrWbFrame(frame_type, bool(entry & OCTET_QUALITY_BIT), data[pos : pos + size])
            )
            pos += size
        return cls(cmr, frames, octet_aligned=True)

    @classmethod
    def _parse_bandwidth_efficient(cls, data: bytes) -> AmrWbPayload:
        total_bits = len(data) * OCTET_BITS
        if total_bits < CMR_BITS + TOC_BITS:
            raise ValueError("AMR-WB payload is truncated")
        value = int.from_bytes(data, "big")

        def read(pos: int, count: int) -> int:
            return (value >> (total_bits - pos - count)) & ((1 << count) - 1)

        cmr = read(0, CMR_BITS)
        pos = CMR_BITS
        toc = []
        while True:
            if pos + TOC_BITS > total_bits:
                raise ValueError("AMR-WB payload is truncated")
            entry = read(pos, TOC_BITS)
            pos += TOC_BITS
            toc.append(entry)
            if not entry & TOC_FOLLOW_BIT:
                break
        frames = []
        for entry in toc:
            frame_type = _frame_type((entry >> TOC_FT_SHIFT) & FT_MASK)
            bits = FRAME_BITS[frame_type]
            if pos + bits > total_bits:
                raise ValueError("AMR-WB payload is truncated")
            padding = _octets(bits) * OCTET_BITS - bits
            speech = read(pos, bits) << padding
            frames.append(
                AmrWbFrame(
                    frame_type,
                    bool(entry & TOC_QUALITY_BIT),
                    speech.to_bytes(_octets(bits), "big"),
                )
            )
            pos += bits
        return cls(cmr, frames, octet_aligned=False)

    def __bytes__(self) -> bytes:
        if not self.frames:
            raise ValueError("AMR-WB payload has no frames")
        if any(len(frame.data) != _octets(frame.bits) for frame in self.frames):
            raise ValueError("AMR-WB frame data has the wrong length")
        last = len(self.frames) - 1
        if self.octet_aligned:
            out = bytearray((self.cmr << CMR_SHIFT,))
            for index, frame in enumerate(self.frames):
                out.append(
                    (OCTET_FOLLOW_BIT if index < last else 0)
                    | (frame.frame_type << OCTET_FT_SHIFT)
                    | (OCTET_QUALITY_BIT if frame.quality else 0)
                )
            for frame in self.frames:
                out += frame.data
            return bytes(out)
        value = self.cmr
        bits = CMR_BITS
        for index, frame in enumerate(self.frames):
            value = (
                (value << TOC_BITS)
                | (TOC_FOLLOW_BIT if index < last else 0)
                | (frame.frame_type << TOC_FT_SHIFT)
                | (TOC_QUALITY_BIT if frame.quality else 0)
            )
            bits += TOC_BITS
        for frame in self.frames:
            padding = _octets(frame.bits) * OCTET_BITS - frame.bits
            speech = int.from_bytes(frame.data, "big") >> padding
            value = (value << frame.bits) | speech
            bits += frame.bits
        padding = -bits % OCTET_BITS
        return (value << padding).to_bytes((bits + padding) // OCTET_BITS, "big")


_LOST_FRAME = AmrWbFrame(AmrWbFrameType.SPEECH_LOST, quality=False).to_storage()
_SPEECH_TYPES = frozenset(t for t in AmrWbFrameType if t < AmrWbFrameType.SID)


class AmrWbDecoder(AvDecoder):
    """AMR-WB decoder for one stream, taking RTP payloads of RFC 4867."""

    mime = "AMR-WB"

    def __init__(self, octet_aligned: bool = False) -> None:
        super().__init__(DECODER_NAMES, SAMPLE_RATE)
        self.octet_aligned = octet_aligned
        self.cmr = CMR_NO_REQUEST
        """The last Codec Mode Request received (15: none)."""
        self._frame_samples = samples_per_frame(SAMPLE_RATE)
        self._reference = self.codec_name == REFERENCE_DECODER
        self._plc = FadeConcealer(self._frame_samples)

    @classmethod
    def from_fmtp(cls, fmtp: Mapping[str, str]) -> AmrWbDecoder:
        """Build a decoder from the SDP format parameters of RFC 4867 §8.1."""
        for name in UNSUPPORTED_PARAMETERS:
            if fmtp.get(name, "0") != "0":
                raise ValueError(f"unsupported AMR-WB parameter: {name}")
        return cls(octet_aligned=fmtp.get("octet-align", "0") == "1")

    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        if payload is None:
            return self._decode_frame(_LOST_FRAME, AmrWbFrameType.SPEECH_LOST)
        parsed = AmrWbPayload.parse(payload, self.octet_aligned)
        self.cmr = parsed.cmr
        pcm = [self._decode_frame(frame.to_storage(), frame.frame_type) for frame in parsed.frames]
        return pcm[0] if len(pcm) == 1 else np.concatenate(pcm).astype(np.int16)

    def _decode_frame(self, storage: bytes, frame_type: AmrWbFrameType) -> npt.NDArray[np.int16]:
        if not self._reference and frame_type not in _SPEECH_TYPES:
            return self._plc.conceal()
        return self._plc.good(self._decode_packet(storage))
