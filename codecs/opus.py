"""Opus through PyAV (libopus), mono PCM at 48 kHz.

RFC 7587: the RTP clock of Opus is always 48000 Hz (§4.1) and its SDP
rtpmap always says two channels (§7), whatever is actually sent; this bridge
decodes to mono and encodes mono. Each stream has its own decoder and encoder
state.

Concealment uses the decoder's own PLC. RFC 6716 §3.2.1 lets a frame of
length zero stand for a lost one, and libopus conceals such a frame, so a lost
packet is decoded as a lone TOC octet (code 0, one empty frame) of the mode and
bandwidth last received, with a 20 ms frame size. FFmpeg's native Opus decoder
is the fallback when libopus is missing; it conceals only the first lost frame
that way.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from .base import FRAME_MS, AvDecoder, AvEncoder, samples_per_frame

CLOCK_RATE = 48000
SAMPLE_RATE = 48000
DEFAULT_BITRATE = 32000
"""Encoder bit rate, bit/s: wideband speech with room to spare (RFC 7587 §3.1.1)."""

FEC_EXPECTED_LOSS_PERCENT = 10
"""Packet loss the encoder plans for when in-band FEC is on; libopus spends no bits on FEC
at 0 %."""

DECODER_NAMES = ("libopus", "opus")
ENCODER_NAMES = ("libopus",)

TOC_CONFIG_SHIFT = 3
TOC_STEREO = 0x04


class OpusMode(IntEnum):
    """First configuration number of each mode, RFC 6716 §3.1 table 2."""

    SILK = 0
    HYBRID = 12
    CELT = 16


_CONFIGS_PER_BANDWIDTH = {OpusMode.SILK: 4, OpusMode.HYBRID: 2, OpusMode.CELT: 4}
"""Frame sizes per bandwidth: SILK 10/20/40/60 ms, hybrid 10/20, CELT 2.5/5/10/20."""
_TWENTY_MS_INDEX = {OpusMode.SILK: 1, OpusMode.HYBRID: 1, OpusMode.CELT: 3}


def _mode(config: int) -> OpusMode:
    if config >= OpusMode.CELT:
        return OpusMode.CELT
    if config >= OpusMode.HYBRID:
        return OpusMode.HYBRID
    return OpusMode.SILK


def concealment_toc(toc: int) -> int:
    """Return a code-0 TOC octet for one 20 ms frame of the same mode, bandwidth and channels.

    A packet made of this octet alone carries one frame of length zero, which
    the decoder conceals (RFC 6716 §3.1 and §3.2.1).
    """
    config = toc >> TOC_CONFIG_SHIFT
    mode = _mode(config)
    per_bandwidth = _CONFIGS_PER_BANDWIDTH[mode]
    first = mode + (config - mode) // per_bandwidth * per_bandwidth
    return ((first + _TWENTY_MS_INDEX[mode]) << TOC_CONFIG_SHIFT) | (toc & TOC_STEREO)


class OpusDecoder(AvDecoder):
    """Opus decoder for one stream, with the decoder's own packet-loss concealment."""

    mime = "opus"

    def __init__(self) -> None:
        super().__init__(DECODER_NAMES, SAMPLE_RATE)
        self._frame_samples = samples_per_frame(SAMPLE_RATE)
        self._plc_packet: bytes | None = None

    def decode(self, payload: bytes | None) -> npt.NDArray[np.int16]:
        if payload is None:
            if self._plc_packet is None:
                return np.zeros(self._frame_samples, dtype=np.int16)
            pcm = self._decode_packet(self._plc_packet)
            if pcm.shape[0] != self._frame_samples:
                return np.zeros(self._frame_samples, dtype=np.int16)
            return pcm
        if not payload:
            raise ValueError("opus payload is truncated")
        pcm = self._decode_packet(payload)
        self._plc_packet = bytes((concealment_toc(payload[0]),))
        return pcm


class OpusEncoder(AvEncoder):
    """Opus encoder for one stream: 20 ms frames, VoIP application, in-band FEC on request."""

    def __init__(self, bitrate: int = DEFAULT_BITRATE, inband_fec: bool = False) -> None:
        options: dict[str, str] = {
            "application": "voip",
            "frame_duration": str(FRAME_MS),
            "fec": "1" if inband_fec else "0",
        }
        if inband_fec:
            options["packet_loss"] = str(FEC_EXPECTED_LOSS_PERCENT)
        super().__init__(ENCODER_NAMES, SAMPLE_RATE, options, bitrate)
