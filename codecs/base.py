"""The two small abstract classes every codec implements, as in aiortc.

A :class:`Decoder` turns one RTP payload into PCM and a :class:`Encoder` turns
PCM into one RTP payload. PCM is always mono, signed 16-bit, at the codec's
``sample_rate``, in frames of :data:`FRAME_MS` milliseconds (the usual packet
time of RFC 3551 §4.5 and of RFC 7587 §4.2).

:class:`AvDecoder` and :class:`AvEncoder` are the shared base of the stateful
codecs that run an FFmpeg codec through PyAV (Opus, G.722, AMR-WB), one codec
context per stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

FRAME_MS = 20
"""Duration of one media frame, in milliseconds."""

MS_PER_SECOND = 1000


def samples_per_frame(rate: int) -> int:
    """Return the number of samples in one :data:`FRAME_MS` frame at ``rate`` Hz."""
    return rate * FRAME_MS // MS_PER_SECOND


class Decoder(ABC):
    """Decodes the RTP payloads of one stream. Stateful codecs keep their state here."""

    @abstractmethod
    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        """Decode one RTP payload into mono int16 PCM at the codec's sample rate.

        A 20 ms payload gives exactly one frame (``frame_samples`` samples); a
        payload that carries several 20 ms frames gives as many frames, end to
        end. ``payload=None`` means that the packet was lost: the decoder then
        conceals one frame, with the codec's own concealment where it has one.

        Raises ``ValueError`` for a malformed payload; the caller may then
        conceal with ``decode(None)``.
        """


class Encoder(ABC):
    """Encodes the PCM of one stream. Stateful codecs keep their state here."""

    @abstractmethod
    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """Encode one frame of mono int16 PCM (``frame_samples`` samples) into one RTP payload.

        Raises ``ValueError`` when the frame does not have ``frame_samples`` samples.
        """


INT16_SCALE = 32768.0
"""Full scale of int16 samples, for FFmpeg's float sample formats."""
INT16_MIN = np.float64(np.iinfo(np.int16).min)
INT16_MAX = np.float64(np.iinfo(np.int16).max)
MONO = "mono"
PACKED_INT16 = "s16"
PLANAR_INT16 = "s16p"


def frame_to_int16(frame: av.AudioFrame) -> npt.NDArray[np.int16]:
    """Return the first channel of a decoded PyAV frame as int16 samples.

    Float formats are scaled and rounded the way FFmpeg's swresample converts
    them (``lrintf(x * 32768)``, clipped).
    """
    samples = frame.to_ndarray()[0, : frame.samples]
    if frame.format.name in (PACKED_INT16, PLANAR_INT16):
        return np.ascontiguousarray(samples, dtype=np.int16)
    scaled: npt.NDArray[np.float64] = np.rint(samples * INT16_SCALE)
    saturated = np.minimum(np.maximum(scaled, INT16_MIN), INT16_MAX)
    return saturated.astype(np.int16)


def open_audio_context(
    names: Sequence[str],
    mode: Literal["r", "w"],
    sample_rate: int,
    options: Mapping[str, str] | None = None,
    bit_rate: int | None = None,
) -> AudioCodecContext:
    """Open the first of ``names`` that this PyAV build has, as a mono codec context.

    ``mode`` is ``"r"`` for a decoder or ``"w"`` for an encoder. Raises
    ``ValueError("no FFmpeg codec among: ...")`` when the build has none of them.
    """
    for name in names:
        try:
            codec = av.Codec(name, mode)
        except av.codec.codec.UnknownCodecError:
            continue
        context = av.CodecContext.create(codec)
        assert isinstance(context, AudioCodecContext)
        context.sample_rate = sample_rate
        context.layout = MONO
        if mode == "w":
            context.format = PACKED_INT16
            if bit_rate is not None:
                context.bit_rate = bit_rate
        if options:
            context.options = dict(options)
        context.open()
        return context
    raise ValueError(f"no FFmpeg codec among: {', '.join(names)}")


class AvDecoder(Decoder):
    """Base of the decoders that run an FFmpeg decoder through PyAV, one context per stream."""

    mime: str = ""
    """MIME subtype of the codec, for error messages."""

    def __init__(self, names: Sequence[str], sample_rate: int) -> None:
        self._context = open_audio_context(names, "r", sample_rate)

    @property
    def codec_name(self) -> str:
        """Name of the FFmpeg decoder in use."""
        return self._context.codec.name

    def _decode_packet(self, data: bytes) -> npt.NDArray[np.int16]:
        """Decode one packet; empty if the FFmpeg decoder held its output back."""
        try:
            frames = self._context.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise ValueError(f"{self.mime} payload is invalid") from exc
        if len(frames) == 1:
            return frame_to_int16(frames[0])
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([frame_to_int16(frame) for frame in frames]).astype(np.int16)


class AvEncoder(Encoder):
    """Base of the encoders that run an FFmpeg encoder through PyAV, one context per stream."""

    def __init__(
        self,
        names: Sequence[str],
        sample_rate: int,
        options: Mapping[str, str] | None = None,
        bit_rate: int | None = None,
    ) -> None:
        self._context = open_audio_context(names, "w", sample_rate, options, bit_rate)
        self._sample_rate = sample_rate
        self._frame_samples = samples_per_frame(sample_rate)
        self._pts = 0

    @property
    def codec_name(self) -> str:
        """Name of the FFmpeg encoder in use."""
        return self._context.codec.name

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.shape != (self._frame_samples,):
            raise ValueError("PCM frame has the wrong number of samples")
        frame = av.AudioFrame.from_ndarray(
            pcm.astype(np.int16, copy=False).reshape(1, -1), format=PACKED_INT16, layout=MONO
        )
        frame.sample_rate = self._sample_rate
        frame.pts = self._pts
        self._pts += self._frame_samples
        return b"".join(bytes(packet) for packet in self._context.encode(frame))
