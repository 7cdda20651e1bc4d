"""H.264 access units as the video bus carries them: the Annex B byte stream.

- ITU-T H.264 Annex B: start codes (``00 00 01`` or ``00 00 00 01``) before each NAL unit.
- ITU-T H.264 §7.3.1 / table 7-1: the NAL unit header and its types (5 IDR slice, 7 SPS,
  8 PPS, 9 access unit delimiter).
- ISO/IEC 14496-15 §5.3.3.1: the ``avcC`` decoder configuration record, in which MP4-style
  demuxers hand the SPS and PPS over; RTSP hands them over in Annex B already
  (RFC 6184 §8.2.1, ``sprop-parameter-sets``, which FFmpeg turns into Annex B extradata).

A viewer joining mid-stream can start decoding only at an IDR with the SPS and PPS in
front of it, and RTSP gives no way to ask the camera for one. So every IDR published on
the bus carries its parameter sets: those in band when the camera repeats them, else the
latest seen (in band or from the session description).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

START_CODE = b"\x00\x00\x00\x01"
_SHORT_START_CODE = b"\x00\x00\x01"
NAL_TYPE_MASK = 0x1F
NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
#: avcC: configurationVersion 1, then profile, compatibility, level, lengthSizeMinusOne.
AVCC_VERSION = 1
_AVCC_HEADER_LENGTH = 6
_AVCC_SPS_COUNT_MASK = 0x1F
_LENGTH16 = struct.Struct("!H")


def split_nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream, without their start codes."""
    units: list[bytes] = []
    start = data.find(_SHORT_START_CODE)
    if start < 0:
        return units
    start += len(_SHORT_START_CODE)
    while True:
        following = data.find(_SHORT_START_CODE, start)
        if following < 0:
            unit = data[start:]
        else:
            unit = data[start:following]
            # A four-byte start code's leading zero belongs to it, not to this unit
            # (trailing_zero_8bits, Annex B.2).
            unit = unit.rstrip(b"\x00")
        if unit:
            units.append(unit)
        if following < 0:
            return units
        start = following + len(_SHORT_START_CODE)


def nal_type(unit: bytes) -> int:
    return unit[0] & NAL_TYPE_MASK


def join_nal_units(units: list[bytes]) -> bytes:
    return b"".join(START_CODE + unit for unit in units)


def is_keyframe(data: bytes) -> bool:
    """Whether an access unit holds an IDR slice."""
    return any(nal_type(unit) == NAL_IDR for unit in split_nal_units(data))


def parameter_sets_from_extradata(extradata: bytes | None) -> list[bytes]:
    """SPS and PPS NAL units from a decoder's extradata: Annex B, or an avcC record."""
    if not extradata:
        return []
    if extradata[0] != AVCC_VERSION:
        return [u for u in split_nal_units(extradata) if nal_type(u) in (NAL_SPS, NAL_PPS)]
    return _avcc_parameter_sets(extradata)


def _avcc_parameter_sets(record: bytes) -> list[bytes]:
    if len(record) < _AVCC_HEADER_LENGTH + 1:
        raise ValueError("avcC record is truncated")
    units: list[bytes] = []
    offset = _AVCC_HEADER_LENGTH - 1
    for count_mask in (_AVCC_SPS_COUNT_MASK, 0xFF):
        if offset >= len(record):
            raise ValueError("avcC record is truncated")
        count = record[offset] & count_mask
        offset += 1
        for _ in range(count):
            if offset + _LENGTH16.size > len(record):
                raise ValueError("avcC record is truncated")
            (length,) = _LENGTH16.unpack_from(record, offset)
            offset += _LENGTH16.size
            if offset + length > len(record):
                raise ValueError("avcC record is truncated")
            units.append(record[offset : offset + length])
            offset += length
    return units


@dataclass
class ParameterSets:
    """The latest SPS and PPS of one stream, put in front of IDRs that lack them."""

    sps: bytes = b""
    pps: bytes = b""
    #: IDRs that arrived without parameter sets and were given the remembered ones.
    repaired: int = 0

    def learn(self, units: list[bytes]) -> None:
        for unit in units:
            kind = nal_type(unit)
            if kind == NAL_SPS:
                self.sps = unit
            elif kind == NAL_PPS:
                self.pps = unit

    def prepare(self, data: bytes) -> tuple[bytes, bool]:
        """``(access unit, keyframe)``: learn its parameter sets; an IDR lacking them gets them.

        A keyframe for the bus is an IDR with both parameter sets in front of it; an IDR
        for which none are known yet is not one (a viewer could not start on it).
        """
        units = split_nal_units(data)
        self.learn(units)
        kinds = [nal_type(unit) for unit in units]
        if NAL_IDR not in kinds:
            return data, False
        if NAL_SPS in kinds and NAL_PPS in kinds:
            return data, True
        if not (self.sps and self.pps):
            return data, False
        self.repaired += 1
        # After an access unit delimiter, if any (§7.4.1.2.3: the AUD comes first).
        kept = [u for u in units if nal_type(u) not in (NAL_SPS, NAL_PPS)]
        head = [kept.pop(0)] if kept and nal_type(kept[0]) == NAL_AUD else []
        return join_nal_units([*head, self.sps, self.pps, *kept]), True


def iter_access_units(stream: bytes) -> Iterator[bytes]:
    """Access units of a raw Annex B stream, split at access unit delimiters or at the
    first slice after one (§7.4.1.2.3); for tests and tools, not for RTSP (whose demuxer
    hands over whole access units)."""
    current: list[bytes] = []
    has_slice = False
    for unit in split_nal_units(stream):
        kind = nal_type(unit)
        starts_new = kind in (NAL_AUD, NAL_SPS, NAL_PPS, NAL_SEI) or (
            kind in (NAL_SLICE, NAL_IDR) and len(unit) > 1 and unit[1] & 0x80
        )
        if has_slice and starts_new:
            yield join_nal_units(current)
            current, has_slice = [], False
        current.append(unit)
        has_slice = has_slice or kind in (NAL_SLICE, NAL_IDR)
    if current:
        yield join_nal_units(current)


def _vcl_units(units: list[bytes]) -> list[bytes]:
    return [u for u in units if nal_type(u) in (NAL_SLICE, NAL_IDR)]


def _starts_picture(unit: bytes) -> bool:
    """A slice whose first_mb_in_slice is 0 (§7.3.3: ue(v), a lone 1 bit) starts a picture."""
    return len(unit) > 1 and bool(unit[1] & 0x80)


class AccessUnitJoiner:
    """Joins the parts FFmpeg's H.264 parser splits one access unit into.

    The parser starts a new packet at an SPS or PPS (§7.4.1.2.3: they begin an access
    unit), so a camera that repeats them before every IDR slice of a multi-slice picture
    (GStreamer's ``rtph264pay config-interval=-1`` with x264's sliced threads does) arrives
    as several packets of one timestamp. Forwarded apart, a browser decodes each as a
    picture of its own, with all but one slice missing. A part is a continuation when its
    timestamp equals the held one's or its first slice does not start the picture; the
    repeated parameter sets and delimiters in it are dropped.

    An access unit is handed on once it has as many slices as the last one completed by a
    later timestamp (learned; encoders keep their slice count), else when that later
    timestamp arrives, so whole pictures cost no extra delay.
    """

    def __init__(self) -> None:
        self._units: list[bytes] = []
        self._pts: int | None = None
        self._held = False
        self._last_pts: int | None = None
        #: Slices per picture, learned from access units ended by a later timestamp.
        self.slices = 0
        #: Parts joined onto a held access unit.
        self.joined = 0
        #: Parts of an access unit already handed on (the learned count was too low).
        self.late_parts = 0

    def push(self, data: bytes, pts: int | None) -> list[tuple[bytes, int | None]]:
        """Take one demuxed packet; the access units now complete, in order."""
        units = split_nal_units(data)
        vcl = _vcl_units(units)
        out: list[tuple[bytes, int | None]] = []
        continues = bool(vcl) and not _starts_picture(vcl[0])
        if self._held and (continues or pts is None or self._pts is None or pts == self._pts):
            self._units += [u for u in units if nal_type(u) not in (NAL_AUD, NAL_SPS, NAL_PPS)]
            self._pts = self._pts if self._pts is not None else pts
            self.joined += 1
        else:
            if self._held:
                self.slices = len(_vcl_units(self._units))
                out.append(self._take())
            elif pts is not None and pts == self._last_pts and continues:
                self.late_parts += 1
                self.slices += len(vcl)
            self._units, self._pts, self._held = units, pts, True
        if self.slices and len(_vcl_units(self._units)) >= self.slices:
            out.append(self._take())
        return out

    def flush(self) -> list[tuple[bytes, int | None]]:
        return [self._take()] if self._held else []

    def _take(self) -> tuple[bytes, int | None]:
        unit = (join_nal_units(self._units), self._pts)
        self._last_pts = self._pts
        self._units, self._pts, self._held = [], None, False
        return unit
