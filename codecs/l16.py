"""L16: uncompressed 16-bit linear PCM, batch first.

RFC 3551 §4.5.11: L16 samples are signed 16-bit two's complement, sent in
network byte order (big-endian). The rate is the RTP clock rate; this bridge
offers mono L16 at 8000, 16000 and 48000 Hz, all with dynamic payload types.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import Decoder, Encoder, samples_per_frame
from .plc import FadeConcealer

SAMPLE_BYTES = 2
NETWORK_INT16 = np.dtype(">i2")
"""Signed 16-bit in network byte order."""


def l16_decode(payload: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Decode L16 payloads, shape ``(..., 2 * n)`` octets, into native int16 ``(..., n)``."""
    if payload.shape[-1] % SAMPLE_BYTES:
        raise ValueError("L16 payload has an odd number of octets")
    return np.ascontiguousarray(payload).view(NETWORK_INT16).astype(np.int16)


def l16_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Encode native int16 samples, shape ``(..., n)``, into L16 octets ``(..., 2 * n)``."""
    return np.ascontiguousarray(pcm.astype(NETWORK_INT16)).view(np.uint8)


class L16Decoder(Decoder):
    """L16 decoder for one stream; losses are concealed by :mod:`.plc`."""

    def __init__(self, sample_rate: int) -> None:
        self._plc = FadeConcealer(samples_per_frame(sample_rate))

    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        if payload is None:
            return self._plc.conceal()
        return self._plc.good(l16_decode(np.frombuffer(payload, dtype=np.uint8)))


class L16Encoder(Encoder):
    """L16 encoder for one stream."""

    def __init__(self, sample_rate: int) -> None:
        self._frame_samples = samples_per_frame(sample_rate)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.shape != (self._frame_samples,):
            raise ValueError("PCM frame has the wrong number of samples")
        return pcm.astype(NETWORK_INT16).tobytes()
