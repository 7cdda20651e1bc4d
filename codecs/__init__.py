"""Audio codecs, registered by MIME subtype as in aiortc: G.711, L16, Opus, G.722 and AMR-WB.

:func:`get_codec` finds a :class:`CodecSpec` by its MIME subtype (and RTP
clock rate where a subtype has several), and :func:`get_decoder` and
:func:`get_encoder` give a per-stream :class:`~.base.Decoder` or
:class:`~.base.Encoder` for it. Stateless codecs (G.711, L16) also carry
``batch_decode`` and ``batch_encode``: functions over NumPy arrays of any
number of streams at once, the worker's hot path.

Rates follow RFC 3551 §4.5 and table 4 (PCMU, PCMA, G722, L16), RFC 7587
(opus) and RFC 4867 (AMR-WB). Note that G.722's RTP clock is 8000 Hz while it
samples at 16000 Hz (RFC 3551 §4.5.2), and that Opus always runs its RTP
clock at 48000 Hz (RFC 7587 §4.1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from . import amrwb, g711, g722, l16, opus
from .base import Decoder, Encoder, samples_per_frame

__all__ = [
    "CODECS",
    "BatchDecode",
    "BatchEncode",
    "CodecSpec",
    "Decoder",
    "Encoder",
    "get_codec",
    "get_decoder",
    "get_encoder",
]

BatchDecode = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.int16]]
"""Decodes the payloads of many streams at once: (streams, octets) → (streams, samples)."""
BatchEncode = Callable[[npt.NDArray[np.int16]], npt.NDArray[np.uint8]]
"""Encodes the frames of many streams at once: (streams, samples) → (streams, octets)."""

OPUS_RTPMAP_CHANNELS = 2
"""RFC 7587 §7: the rtpmap of opus always says two channels."""


@dataclass(frozen=True)
class CodecSpec:
    """What the bridge knows of one audio codec at one RTP clock rate."""

    mime: str
    """MIME subtype as written in SDP: "PCMU", "PCMA", "L16", "opus", "G722", "AMR-WB"."""
    clock_rate: int
    """RTP clock rate, Hz."""
    sample_rate: int
    """Rate of the decoder's output and the encoder's input PCM, Hz."""
    channels: int = 1
    """PCM channels in and out of the codec (the bridge is mono)."""
    static_payload_type: int | None = None
    """Payload type of RFC 3551 table 4, or None for a dynamic one."""
    stateful: bool = False
    """Whether every frame must be decoded in order (no skipping of silent frames)."""
    can_encode: bool = True
    """Whether :func:`get_encoder` can give an encoder."""
    batch_decode: BatchDecode | None = field(default=None, compare=False, repr=False)
    """For stateless codecs: decode the payloads of many streams at once."""
    batch_encode: BatchEncode | None = field(default=None, compare=False, repr=False)
    """For stateless codecs: encode the frames of many streams at once."""
    bytes_per_sample: int = 0
    """Octets per sample of a fixed-rate payload (G.711 1, L16 2); 0 for variable-rate codecs."""

    @property
    def frame_samples(self) -> int:
        """PCM samples in a 20 ms frame, at ``sample_rate``."""
        return samples_per_frame(self.sample_rate)

    @property
    def frame_bytes(self) -> int:
        """Payload octets of a 20 ms frame of a fixed-rate codec (0 when variable)."""
        return self.frame_samples * self.bytes_per_sample

    @property
    def rtp_timestamp_step(self) -> int:
        """RTP timestamp increment of a 20 ms packet, at ``clock_rate``."""
        return samples_per_frame(self.clock_rate)

    @property
    def rtpmap(self) -> str:
        """The encoding name, clock rate and (for opus) channels of SDP's a=rtpmap."""
        if self.mime == "opus":
            return f"{self.mime}/{self.clock_rate}/{OPUS_RTPMAP_CHANNELS}"
        return f"{self.mime}/{self.clock_rate}"


PCMU = CodecSpec(
    "PCMU",
    g711.CLOCK_RATE,
    g711.CLOCK_RATE,
    static_payload_type=0,
    batch_decode=g711.ulaw_decode,
    batch_encode=g711.ulaw_encode,
    bytes_per_sample=1,
)
PCMA = CodecSpec(
    "PCMA",
    g711.CLOCK_RATE,
    g711.CLOCK_RATE,
    static_payload_type=8,
    batch_decode=g711.alaw_decode,
    batch_encode=g711.alaw_encode,
    bytes_per_sample=1,
)
L16_RATES = (16000, 8000, 48000)
"""Offered L16 rates; the first is the default of ``get_codec("L16")``."""
OPUS = CodecSpec("opus", opus.CLOCK_RATE, opus.SAMPLE_RATE, stateful=True)
G722 = CodecSpec("G722", g722.CLOCK_RATE, g722.SAMPLE_RATE, static_payload_type=9, stateful=True)
AMR_WB = CodecSpec("AMR-WB", amrwb.CLOCK_RATE, amrwb.SAMPLE_RATE, stateful=True, can_encode=False)


def _l16(rate: int) -> CodecSpec:
    return CodecSpec(
        "L16",
        rate,
        rate,
        batch_decode=l16.l16_decode,
        batch_encode=l16.l16_encode,
        bytes_per_sample=l16.SAMPLE_BYTES,
    )


CODECS: dict[str, tuple[CodecSpec, ...]] = {
    "pcmu": (PCMU,),
    "pcma": (PCMA,),
    "l16": tuple(_l16(rate) for rate in L16_RATES),
    "opus": (OPUS,),
    "g722": (G722,),
    "amr-wb": (AMR_WB,),
}
"""Every codec, by lower-case MIME subtype; the first spec of each is its default."""


def get_codec(mime: str, clock_rate: int | None = None) -> CodecSpec:
    """Return the codec with this MIME subtype (any case) and, if given, RTP clock rate.

    Raises ``ValueError("unsupported codec: X")`` for an unknown subtype, and
    ``ValueError("unsupported codec: X/rate")`` for a known one at a rate not offered.
    """
    specs = CODECS.get(mime.lower())
    if specs is None:
        raise ValueError(f"unsupported codec: {mime}")
    if clock_rate is None:
        return specs[0]
    for spec in specs:
        if spec.clock_rate == clock_rate:
            return spec
    raise ValueError(f"unsupported codec: {mime}/{clock_rate}")


def get_decoder(spec: CodecSpec, fmtp: Mapping[str, str] | None = None) -> Decoder:
    """Return a new decoder for one stream of ``spec``.

    ``fmtp`` holds the SDP format parameters where they change the payload
    format: for AMR-WB, ``octet-align`` (RFC 4867 §8.1).
    """
    mime = spec.mime.lower()
    if mime == "pcmu":
        return g711.PcmuDecoder()
    if mime == "pcma":
        return g711.PcmaDecoder()
    if mime == "l16":
        return l16.L16Decoder(spec.sample_rate)
    if mime == "opus":
        return opus.OpusDecoder()
    if mime == "g722":
        return g722.G722Decoder()
    if mime == "amr-wb":
        return amrwb.AmrWbDecoder.from_fmtp(fmtp or {})
    raise ValueError(f"unsupported codec: {spec.mime}")


def get_encoder(spec: CodecSpec, fmtp: Mapping[str, str] | None = None) -> Encoder:
    """Return a new encoder for one stream of ``spec``.

    ``fmtp`` holds the SDP format parameters the encoder honours: for opus,
    ``maxaveragebitrate`` and ``useinbandfec`` (RFC 7587 §6.1). Raises
    ``ValueError("codec cannot encode: X")`` for a codec without an encoder.
    """
    params = fmtp or {}
    mime = spec.mime.lower()
    if not spec.can_encode:
        raise ValueError(f"codec cannot encode: {spec.mime}")
    if mime == "pcmu":
        return g711.PcmuEncoder()
    if mime == "pcma":
        return g711.PcmaEncoder()
    if mime == "l16":
        return l16.L16Encoder(spec.sample_rate)
    if mime == "opus":
        bitrate = int(params.get("maxaveragebitrate", opus.DEFAULT_BITRATE))
        return opus.OpusEncoder(
            bitrate=min(bitrate, opus.DEFAULT_BITRATE),
            inband_fec=params.get("useinbandfec", "0") == "1",
        )
    if mime == "g722":
        return g722.G722Encoder()
    raise ValueError(f"unsupported codec: {spec.mime}")
