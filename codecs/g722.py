"""G.722 through PyAV (FFmpeg's ``g722``), mono PCM at 16 kHz.

ITU-T G.722 is sub-band ADPCM at 64 kbit/s over 16 kHz audio. RFC 3551
§4.5.2 gives it static payload type 9 and, for historical reasons, an RTP
clock of 8000 Hz although it samples at 16000 Hz: a 20 ms packet carries 160
octets and 320 samples and advances the RTP timestamp by 160.

The codec is stateful (its ADPCM predictors adapt), so every frame must be
decoded in order. G.722 has no concealment of its own in FFmpeg; a lost packet
is concealed by :mod:`.plc` and the decoder state carries on.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import AvDecoder, AvEncoder, samples_per_frame
from .plc import FadeConcealer

CLOCK_RATE = 8000
SAMPLE_RATE = 16000
FFMPEG_NAMES = ("g722",)


class G722Decoder(AvDecoder):
    """G.722 decoder for one stream; losses are concealed by :mod:`.plc`."""

    mime = "G722"

    def __init__(self) -> None:
        super().__init__(FFMPEG_NAMES, SAMPLE_RATE)
        self._plc = FadeConcealer(samples_per_frame(SAMPLE_RATE))

    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        if payload is None:
            return self._plc.conceal()
        if not payload:
            raise ValueError("G722 payload is truncated")
        return self._plc.good(self._decode_packet(payload))


class G722Encoder(AvEncoder):
    """G.722 encoder for one stream, 64 kbit/s."""

    def __init__(self) -> None:
        super().__init__(FFMPEG_NAMES, SAMPLE_RATE)
