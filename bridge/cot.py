"""Cursor-on-Target (CoT) events for presence, for TAK clients and servers.

A CoT event (MITRE CoT base schema, event version 2.0) is one XML document::

    <event version="2.0" uid="..." type="a-f-G-U-C" time="..." start="..." stale="..." how="m-g">
      <point lat="..." lon="..." hae="..." ce="..." le="..."/>
      <detail>
        <contact callsign="..."/>
        <track course="..." speed="..."/>
        <ucbridge room="..." status="..." kind="..."/>
      </detail>
    </event>

- ``type`` is the MIL-STD-2525 derived atom type; every unit is a friendly ground unit,
  ``a-f-G-U-C``, unless the caller says otherwise.
- ``time`` and ``start`` are the fix time (when the position was observed, rather than when
  the event was written) and ``stale`` is the fix time plus ``STALE_FACTOR`` (2) report
  intervals, so a unit that stops reporting ages out on the TAK map as it turns stale on the
  console.  The event depends on the unit only, never on the clock: re-sending an unchanged
  unit gives the same bytes.
- ``how`` is ``m-g`` (machine, GPS) for machine fixes (GNSS and network positions, whose
  accuracy travels in ``ce``) and ``h-e`` (human entered) for manual and fixed positions.
- ``hae`` is metres above the WGS-84 ellipsoid, ``ce`` and ``le`` the horizontal and vertical
  uncertainty in metres; ``9999999`` means unknown.
- ``track`` carries course (degrees from true north) and speed (m/s) when known; ``ucbridge``
  is our own detail (room, status, kind), which other consumers ignore.

TAK streaming endpoints read events back to back with no separator: :func:`cot_stream`
yields one serialised event per unit for such a stream.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from bridge.presence import STALE_FACTOR, FixSource, Unit, iso_time
from bridge.xmlsafe import parse_untrusted

COT_VERSION = "2.0"
# CoT's value for an unknown hae, ce or le.
UNKNOWN = 9999999.0
TYPE_FRIENDLY_GROUND_UNIT = "a-f-G-U-C"
HOW_MACHINE_GPS = "m-g"
HOW_HUMAN_ENTERED = "h-e"
UID_PREFIX = "ucbridge-"
MAX_EVENT_SIZE = 64 * 1024

_HOW_BY_SOURCE = {
    FixSource.GNSS: HOW_MACHINE_GPS,
    FixSource.NETWORK: HOW_MACHINE_GPS,
    FixSource.MANUAL: HOW_HUMAN_ENTERED,
    FixSource.FIXED: HOW_HUMAN_ENTERED,
}
# Seven decimals of a degree are about 1 cm; tenths suffice for metres, degrees of course, m/s.
_DEGREE_FORMAT = ".7f"
_TENTHS_FORMAT = ".1f"
_EVENT_NAMES = ("uid", "type", "how")
_EVENT_TIMES = ("time", "start", "stale")
_DETAIL_TAG = "ucbridge"


# XML 1.0 §3.3.3: escape what attribute normalisation or markup would change; drop the C0
# controls XML 1.0 cannot carry at all (§2.2).
_ATTRIBUTE_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
        **{chr(code): None for code in range(0x20) if chr(code) not in "\t\n\r"},
    }
)


def _quote(value: str) -> str:
    """A double-quoted, escaped attribute value."""
    return f'"{value.translate(_ATTRIBUTE_ESCAPES)}"'


def _format(value: float | None) -> str:
    return format(UNKNOWN if value is None else value, _TENTHS_FORMAT)


def _unknown_or(value: float) -> float | None:
    return None if value >= UNKNOWN else value


def _float(element: ET.Element, name: str) -> float:
    text = element.get(name)
    if text is None:
        raise ValueError(f"CoT {element.tag} has no {name}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"CoT {element.tag} {name} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"CoT {element.tag} {name} is not a number")
    return value


def _optional_float(element: ET.Element | None, name: str) -> float | None:
    if element is None or element.get(name) is None:
        return None
    return _float(element, name)


def _text(element: ET.Element, name: str) -> str:
    text = element.get(name)
    if not text:
        raise ValueError(f"CoT event has no {name}")
    return text


def _time(element: ET.Element, name: str) -> float:
    text = _text(element, name)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"CoT event {name} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"CoT event {name} is not an ISO-8601 time")
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class CotEvent:
    """One CoT position event (the subset presence uses).  Times are epoch seconds."""

    uid: str
    type: str
    time: float
    start: float
    stale: float
    how: str
    lat: float
    lon: float
    hae: float | None = None
    ce: float | None = None
    le: float | None = None
    callsign: str | None = None
    course: float | None = None
    speed: float | None = None
    room: str | None = None
    status: str | None = None
    kind: str | None = None

    @classmethod
    def from_unit(
        cls, unit: Unit, *, cot_type: str = TYPE_FRIENDLY_GROUND_UNIT, uid_prefix: str = UID_PREFIX
    ) -> CotEvent:
        fix = unit.fix
        return cls(
            uid=uid_prefix + unit.id,
            type=cot_type,
            time=fix.time,
            start=fix.time,
            stale=fix.time + STALE_FACTOR * unit.interval,
            how=_HOW_BY_SOURCE[fix.source],
            lat=fix.lat,
            lon=fix.lon,
            hae=fix.altitude_m,
            ce=fix.accuracy_m,
            le=fix.vertical_accuracy_m,
            callsign=unit.callsign,
            course=fix.heading_deg,
            speed=fix.speed_mps,
            room=unit.room,
            status=unit.status.value,
            kind=unit.kind.value,
        )

    def __bytes__(self) -> bytes:
        # Formatted directly: ElementTree's serialiser costs several times as much, which a
        # stream of every unit would feel.  Free text goes through _quote; numbers and times
        # need no escaping.
        detail = []
        if self.callsign is not None:
            detail.append(f"<contact callsign={_quote(self.callsign)}/>")
        track = "".join(
            f' {name}="{value:{_TENTHS_FORMAT}}"'
            for name, value in (("course", self.course), ("speed", self.speed))
            if value is not None
        )
        if track:
            detail.append(f"<track{track}/>")
        ours = "".join(
            f" {name}={_quote(value)}"
            for name, value in (("room", self.room), ("status", self.status), ("kind", self.kind))
            if value is not None
        )
        if ours:
            detail.append(f"<{_DETAIL_TAG}{ours}/>")
        text = (
            f'<event version="{COT_VERSION}" uid={_quote(self.uid)} type={_quote(self.type)}'
            f' time="{iso_time(self.time)}" start="{iso_time(self.start)}"'
            f' stale="{iso_time(self.stale)}" how={_quote(self.how)}>'
            f'<point lat="{self.lat:{_DEGREE_FORMAT}}" lon="{self.lon:{_DEGREE_FORMAT}}"'
            f' hae="{_format(self.hae)}" ce="{_format(self.ce)}" le="{_format(self.le)}"/>'
            f"<detail>{''.join(detail)}</detail></event>"
        )
        return text.encode()

    @classmethod
    def parse(cls, data: bytes | str) -> CotEvent:
        """Parse one CoT event.  Refuses a DOCTYPE (no entity expansion) and oversize input."""
        root = parse_untrusted(data, "CoT event", MAX_EVENT_SIZE)
        if root.tag != "event":
            raise ValueError("root element is not event")
        point = root.find("point")
        if point is None:
            raise ValueError("CoT event has no point")
        uid, cot_type, how = (_text(root, name) for name in _EVENT_NAMES)
        event_time, start, stale = (_time(root, name) for name in _EVENT_TIMES)
        detail = root.find("detail")
        contact = None if detail is None else detail.find("contact")
        track = None if detail is None else detail.find("track")
        ours = None if detail is None else detail.find(_DETAIL_TAG)
        return cls(
            uid=uid,
            type=cot_type,
            time=event_time,
            start=start,
            stale=stale,
            how=how,
            lat=_float(point, "lat"),
            lon=_float(point, "lon"),
            hae=_unknown_or(_float(point, "hae")),
            ce=_unknown_or(_float(point, "ce")),
            le=_unknown_or(_float(point, "le")),
            callsign=None if contact is None else contact.get("callsign"),
            course=_optional_float(track, "course"),
            speed=_optional_float(track, "speed"),
            room=None if ours is None else ours.get("room"),
            status=None if ours is None else ours.get("status"),
            kind=None if ours is None else ours.get("kind"),
        )


def cot_event(
    unit: Unit, *, cot_type: str = TYPE_FRIENDLY_GROUND_UNIT, uid_prefix: str = UID_PREFIX
) -> bytes:
    """One unit as one serialised CoT event (UTF-8, no XML declaration)."""
    return bytes(CotEvent.from_unit(unit, cot_type=cot_type, uid_prefix=uid_prefix))


def cot_stream(
    units: Iterable[Unit],
    *,
    cot_type: str = TYPE_FRIENDLY_GROUND_UNIT,
    uid_prefix: str = UID_PREFIX,
) -> Iterator[bytes]:
    """One serialised event per unit, to be written back to back on a TAK stream."""
    for unit in units:
        yield cot_event(unit, cot_type=cot_type, uid_prefix=uid_prefix)
