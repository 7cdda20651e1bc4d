"""MCPTT location reports: ``application/vnd.3gpp.mcptt-location-info+xml`` (3GPP TS 24.379).

An MCPTT client sends its location to the participating function in a SIP MESSAGE carrying
this body (TS 24.379 clause 13.3).  The document (annex F.3, namespace
``urn:3gpp:ns:mcpttLocationInfo:1.0``) is a ``<location-info>`` root holding one of
``<Configuration>``, ``<Request>`` or ``<Report>``; this module reads and writes reports::

    <location-info xmlns="urn:3gpp:ns:mcpttLocationInfo:1.0">
      <Report ReportType="NonEmergency" ReportID="...">
        <TriggerId>...</TriggerId>
        <CurrentLocation>
          <CurrentServingEcgi type="Normal"><Ecgi>...</Ecgi></CurrentServingEcgi>
          <CurrentCoordinate>
            <longitude type="Normal"><threebytes>...</threebytes></longitude>
            <latitude type="Normal"><threebytes>...</threebytes></latitude>
          </CurrentCoordinate>
        </CurrentLocation>
      </Report>
    </location-info>

Coordinates are not decimal degrees: each ``<threebytes>`` holds a 24-bit unsigned integer
coded as the ellipsoid point of 3GPP TS 23.032 clause 6.1:

- latitude: a sign bit (1 = south) above a 23-bit N with N <= 2**23 * X / 90 < N + 1, X the
  absolute latitude (N = 2**23 - 1 also covers 90 degrees);
- longitude: a 24-bit two's complement N with N <= 2**24 * X / 360 < N + 1, X in [-180, 180).

Encoding takes the floor, as the formulas say; decoding returns the middle of the range N
stands for, so a round trip moves a point by at most half a step (0.5 m north-south, 1.1 m
east-west at the equator).

Other elements the schema allows (neighbouring cells, MBMS areas, extensions) are skipped.
A coordinate sent encrypted (``type="Encrypted"``, XML encryption) is refused.  Parsing uses
:mod:`xml.etree.ElementTree` and refuses any DOCTYPE, so no entity is ever declared or
expanded, and refuses oversize documents.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum

from bridge.presence import FULL_CIRCLE_DEG, MAX_LATITUDE, FixSource, GpsFix, check_position
from bridge.xmlsafe import parse_untrusted

CONTENT_TYPE = "application/vnd.3gpp.mcptt-location-info+xml"
NAMESPACE = "urn:3gpp:ns:mcpttLocationInfo:1.0"
MAX_DOCUMENT_SIZE = 64 * 1024

# 3GPP TS 23.032 clause 6.1.
LATITUDE_BITS = 23
LATITUDE_SIGN = 1 << LATITUDE_BITS
LATITUDE_MAX_N = LATITUDE_SIGN - 1
LATITUDE_SCALE = (1 << LATITUDE_BITS) / MAX_LATITUDE
LONGITUDE_BITS = 24
LONGITUDE_MODULUS = 1 << LONGITUDE_BITS
LONGITUDE_HALF = LONGITUDE_MODULUS >> 1
LONGITUDE_SCALE = LONGITUDE_MODULUS / FULL_CIRCLE_DEG
THREE_BYTES_MAX = LONGITUDE_MODULUS - 1
_HALF_STEP = 0.5

_UNSIGNED_INTEGER = re.compile(r"\+?[0-9]+")


class ReportType(StrEnum):
    """The ``ReportType`` attribute of ``<Report>`` (TS 24.379 annex F.3)."""

    EMERGENCY = "Emergency"
    NON_EMERGENCY = "NonEmergency"


class ProtectionType(StrEnum):
    """The ``type`` attribute of a protected element (TS 24.379 annex F.3)."""

    NORMAL = "Normal"
    ENCRYPTED = "Encrypted"


def encode_latitude(lat: float) -> int:
    """Latitude in degrees to its TS 23.032 three-byte code (sign bit and 23-bit N)."""
    check_position(lat, 0.0)
    n = min(math.floor(abs(lat) * LATITUDE_SCALE), LATITUDE_MAX_N)
    return (LATITUDE_SIGN if lat < 0 else 0) | n


def decode_latitude(code: int) -> float:
    """The latitude in the middle of the range a TS 23.032 three-byte code stands for."""
    _check_three_bytes(code)
    magnitude = ((code & LATITUDE_MAX_N) + _HALF_STEP) / LATITUDE_SCALE
    return -magnitude if code & LATITUDE_SIGN else magnitude


def encode_longitude(lon: float) -> int:
    """Longitude in degrees to its TS 23.032 three-byte code (24-bit two's complement)."""
    check_position(0.0, lon)
    n = math.floor(lon * LONGITUDE_SCALE)
    # +180 degrees is -180 degrees: 2**23 wraps to -2**23, as two's complement does.
    return n % LONGITUDE_MODULUS


def decode_longitude(code: int) -> float:
    """The longitude in the middle of the range a TS 23.032 three-byte code stands for."""
    _check_three_bytes(code)
    n = code - LONGITUDE_MODULUS if code >= LONGITUDE_HALF else code
    return (n + _HALF_STEP) / LONGITUDE_SCALE


def _check_three_bytes(code: int) -> None:
    if not 0 <= code <= THREE_BYTES_MAX:
        raise ValueError("threebytes is out of range")


def _report_type(value: ReportType | str) -> ReportType:
    try:
        return ReportType(value)
    except ValueError:
        raise ValueError("ReportType is not valid") from None


def _qualified(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def _child(parent: ET.Element, tag: str) -> ET.Element | None:
    return parent.find(_qualified(tag))


def _read_coordinate(coordinate: ET.Element, tag: str) -> int:
    element = _child(coordinate, tag)
    if element is None:
        raise ValueError(f"CurrentCoordinate has no {tag}")
    protection = element.get("type", ProtectionType.NORMAL)
    if protection == ProtectionType.ENCRYPTED:
        raise ValueError("encrypted location is not supported")
    if protection != ProtectionType.NORMAL:
        raise ValueError("protection type is not valid")
    three_bytes = _child(element, "threebytes")
    if three_bytes is None:
        raise ValueError(f"{tag} has no threebytes")
    text = (three_bytes.text or "").strip()
    if not _UNSIGNED_INTEGER.fullmatch(text):
        raise ValueError("threebytes is not an integer")
    code = int(text)
    _check_three_bytes(code)
    return code


def _read_ecgi(location: ET.Element) -> str | None:
    serving = _child(location, "CurrentServingEcgi")
    if serving is None or serving.get("type", ProtectionType.NORMAL) != ProtectionType.NORMAL:
        return None
    ecgi = _child(serving, "Ecgi")
    return None if ecgi is None or not ecgi.text else ecgi.text.strip()


def _protected(parent: ET.Element, tag: str) -> ET.Element:
    return ET.SubElement(parent, tag, {"type": ProtectionType.NORMAL.value})


@dataclass(frozen=True, slots=True)
class LocationReport:
    """A ``<location-info>`` document carrying a ``<Report>`` (TS 24.379 annex F.3).

    ``latitude`` and ``longitude`` are degrees, both present or both ``None`` (a report may
    carry only cell information).  ``report_id`` echoes the ``RequestID`` of the request that
    asked for the report; ``trigger_ids`` name the configured triggers that fired.
    """

    report_type: ReportType = ReportType.NON_EMERGENCY
    latitude: float | None = None
    longitude: float | None = None
    report_id: str | None = None
    trigger_ids: tuple[str, ...] = ()
    serving_ecgi: str | None = None

    def __post_init__(self) -> None:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude must be given together")
        if self.latitude is not None and self.longitude is not None:
            check_position(self.latitude, self.longitude)
        object.__setattr__(self, "report_type", _report_type(self.report_type))

    @classmethod
    def parse(cls, data: bytes | str) -> LocationReport:
        root = parse_untrusted(data, "location-info", MAX_DOCUMENT_SIZE)
        if root.tag != _qualified("location-info"):
            raise ValueError("root element is not location-info")
        report = _child(root, "Report")
        if report is None:
            raise ValueError("location-info has no Report")
        report_type = report.get("ReportType")
        if report_type is None:
            raise ValueError("Report has no ReportType")
        location = _child(report, "CurrentLocation")
        if location is None:
            raise ValueError("Report has no CurrentLocation")
        latitude = longitude = None
        coordinate = _child(location, "CurrentCoordinate")
        if coordinate is not None:
            longitude = decode_longitude(_read_coordinate(coordinate, "longitude"))
            latitude = decode_latitude(_read_coordinate(coordinate, "latitude"))
        return cls(
            report_type=_report_type(report_type),
            latitude=latitude,
            longitude=longitude,
            report_id=report.get("ReportID"),
            trigger_ids=tuple(
                (trigger.text or "").strip() for trigger in report.findall(_qualified("TriggerId"))
            ),
            serving_ecgi=_read_ecgi(location),
        )

    def __bytes__(self) -> bytes:
        # Written with plain tags under an explicit default namespace declaration: ElementTree
        # cannot combine its default_namespace option with unqualified attributes.
        root = ET.Element("location-info", {"xmlns": NAMESPACE})
        attributes = {"ReportType": self.report_type.value}
        if self.report_id is not None:
            attributes["ReportID"] = self.report_id
        report = ET.SubElement(root, "Report", attributes)
        for trigger_id in self.trigger_ids:
            ET.SubElement(report, "TriggerId").text = trigger_id
        location = ET.SubElement(report, "CurrentLocation")
        if self.serving_ecgi is not None:
            serving = _protected(location, "CurrentServingEcgi")
            ET.SubElement(serving, "Ecgi").text = self.serving_ecgi
        if self.latitude is not None and self.longitude is not None:
            coordinate = ET.SubElement(location, "CurrentCoordinate")
            codes = (
                ("longitude", encode_longitude(self.longitude)),
                ("latitude", encode_latitude(self.latitude)),
            )
            for tag, code in codes:
                ET.SubElement(_protected(coordinate, tag), "threebytes").text = str(code)
        document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return document

    @classmethod
    def from_fix(
        cls,
        fix: GpsFix,
        *,
        report_type: ReportType = ReportType.NON_EMERGENCY,
        report_id: str | None = None,
        trigger_ids: tuple[str, ...] = (),
    ) -> LocationReport:
        return cls(
            report_type=report_type,
            latitude=fix.lat,
            longitude=fix.lon,
            report_id=report_id,
            trigger_ids=trigger_ids,
        )

    def to_fix(self, time: float, *, source: FixSource = FixSource.GNSS) -> GpsFix | None:
        """The reported point as a fix taken at ``time`` (the report carries no time of its
        own), or ``None`` when the report has no coordinate."""
        if self.latitude is None or self.longitude is None:
            return None
        return GpsFix(self.latitude, self.longitude, time, source=source)
