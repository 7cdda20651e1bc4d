"""A JPEG of a camera's latest keyframe, for thumbnails.

Only the requested IDR access unit (with its SPS and PPS, ITU-T H.264 §7.4.1.2.3) is
decoded, by a decoder of its own, and encoded once as baseline JPEG (ITU-T T.81) with
full-range YUV 4:2:0 as JFIF expects. The forwarding path never decodes.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av

#: FFmpeg's MJPEG quantiser scale (2 best .. 31 worst).
JPEG_QSCALE = 4
_JPEG_PIXEL_FORMAT = "yuvj420p"


def jpeg_of_keyframe(access_unit: bytes) -> bytes:
    """Decode one H.264 IDR access unit (Annex B) and return it as a JPEG.

    Raises ``ValueError("keyframe does not decode")`` when the unit yields no picture.
    """
    decoder: Any = av.CodecContext.create("h264", "r")
    try:
        frames = list(decoder.decode(av.Packet(access_unit)))
        frames += list(decoder.decode(None))
    except av.error.FFmpegError:
        raise ValueError("keyframe does not decode") from None
    if not frames:
        raise ValueError("keyframe does not decode")
    frame = frames[0]
    encoder: Any = av.CodecContext.create("mjpeg", "w")
    encoder.width = frame.width
    encoder.height = frame.height
    encoder.pix_fmt = _JPEG_PIXEL_FORMAT
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qscale": str(JPEG_QSCALE)}
    picture = frame.reformat(format=_JPEG_PIXEL_FORMAT)
    packets = list(encoder.encode(picture)) + list(encoder.encode(None))
    return b"".join(bytes(p) for p in packets)
