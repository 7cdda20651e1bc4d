"""Tests for bridge.locationinfo: TS 24.379 location reports with TS 23.032 coordinates.

The documents below are written out by hand from TS 24.379 annex F.3, and their coordinate
codes worked out by hand from the TS 23.032 clause 6.1 formulas, so that they do not agree
with the encoder under test by construction.
"""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET

import pytest

from bridge.locationinfo import (
    CONTENT_TYPE,
    NAMESPACE,
    LocationReport,
    ReportType,
    decode_latitude,
    decode_longitude,
    encode_latitude,
    encode_longitude,
)
from bridge.presence import FixSource, GpsFix

T0 = 1_700_000_000.0
LATITUDE_STEP = 90 / 2**23
LONGITUDE_STEP = 360 / 2**24
NS = {"loc": NAMESPACE}


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def document(location: str, report_attributes: str = 'ReportType="NonEmergency"') -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        f'<location-info xmlns="{NAMESPACE}"><Report {report_attributes}>'
        f"<CurrentLocation>{location}</CurrentLocation></Report></location-info>"
    )


def coordinate(longitude: str, latitude: str) -> str:
    return f"<CurrentCoordinate>{longitude}{latitude}</CurrentCoordinate>"


def three_bytes(tag: str, value: str, protection: str = 'type="Normal"') -> str:
    return f"<{tag} {protection}><threebytes>{value}</threebytes></{tag}>"


# 45 degrees N is 2**23 * 45 / 90 = 2**22 = 4194304, sign bit clear.
# 90 degrees W is 2**24 * -90 / 360 = -2**22, two's complement 2**24 - 2**22 = 12582912.
NORTH_45_WEST_90 = document(
    coordinate(three_bytes("longitude", "12582912"), three_bytes("latitude", "4194304"))
)


def test_content_type_and_namespace() -> None:
    assert CONTENT_TYPE == "application/vnd.3gpp.mcptt-location-info+xml"
    assert NAMESPACE == "urn:3gpp:ns:mcpttLocationInfo:1.0"


@pytest.mark.parametrize(
    ("degrees", "code"),
    [
        (0.0, 0),
        (45.0, 2**22),
        (-45.0, 2**23 | 2**22),  # sign bit set: south
        (90.0, 2**23 - 1),  # N = 2**23 - 1 also covers 90 degrees
        (-90.0, 2**24 - 1),
        (LATITUDE_STEP * 0.999, 0),  # the floor of the formula
        (-LATITUDE_STEP * 0.5, 2**23),  # "south zero"
    ],
)
def test_latitude_codes(degrees: float, code: int) -> None:
    assert encode_latitude(degrees) == code


@pytest.mark.parametrize(
    ("degrees", "code"),
    [
        (0.0, 0),
        (90.0, 2**22),
        (-90.0, 2**24 - 2**22),
        (-180.0, 2**23),
        (180.0, 2**23),  # +180 is -180
        (-LONGITUDE_STEP * 0.5, 2**24 - 1),  # floor towards -infinity: N = -1
        (179.99999, 2**23 - 1),
    ],
)
def test_longitude_codes(degrees: float, code: int) -> None:
    assert encode_longitude(degrees) == code


def test_decoding_returns_the_middle_of_the_step() -> None:
    assert decode_latitude(2**22) == pytest.approx(45.0 + LATITUDE_STEP / 2, abs=1e-12)
    assert decode_latitude(2**23 | 2**22) == pytest.approx(-45.0 - LATITUDE_STEP / 2, abs=1e-12)
    assert decode_longitude(2**24 - 2**22) == pytest.approx(-90.0 + LONGITUDE_STEP / 2, abs=1e-12)
    assert decode_longitude(2**23) == pytest.approx(-180.0 + LONGITUDE_STEP / 2, abs=1e-12)


def test_round_trips_within_half_a_step() -> None:
    rng = random.Random(3)
    for _ in range(5000):
        lat, lon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        assert abs(decode_latitude(encode_latitude(lat)) - lat) <= LATITUDE_STEP / 2 + 1e-12
        assert abs(decode_longitude(encode_longitude(lon)) - lon) <= LONGITUDE_STEP / 2 + 1e-12
    for code in [0, 1, 2**22, 2**23 - 1, 2**23, 2**23 + 1, 2**24 - 2, 2**24 - 1]:
        assert encode_latitude(decode_latitude(code)) == code
        assert encode_longitude(decode_longitude(code)) == code


def test_coordinate_code_errors() -> None:
    with pytest.raises(ValueError, match=exactly("latitude is out of range")):
        encode_latitude(90.5)
    with pytest.raises(ValueError, match=exactly("longitude is not a number")):
        encode_longitude(math.nan)
    with pytest.raises(ValueError, match=exactly("threebytes is out of range")):
        decode_latitude(2**24)
    with pytest.raises(ValueError, match=exactly("threebytes is out of range")):
        decode_longitude(-1)


def test_parse_hand_written_report() -> None:
    report = LocationReport.parse(NORTH_45_WEST_90)
    assert report.report_type is ReportType.NON_EMERGENCY
    assert report.latitude == pytest.approx(45.0, abs=LATITUDE_STEP)
    assert report.longitude == pytest.approx(-90.0, abs=LONGITUDE_STEP)
    assert (report.report_id, report.trigger_ids, report.serving_ecgi) == (None, (), None)


def test_parse_full_report_with_prefix_and_unknown_elements() -> None:
    # Another namespace prefix, latitude before longitude, cells, extensions and foreign
    # elements: all allowed by the schema.
    text = (
        f'<loc:location-info xmlns:loc="{NAMESPACE}" xmlns:x="urn:example">'
        '<loc:Report ReportType="Emergency" ReportID="req-17">'
        "<loc:TriggerId>periodic</loc:TriggerId><loc:TriggerId>cell-change</loc:TriggerId>"
        "<loc:CurrentLocation>"
        '<loc:CurrentServingEcgi type="Normal"><loc:Ecgi> 0010100000123 </loc:Ecgi>'
        "</loc:CurrentServingEcgi>"
        '<loc:NeighbouringEcgi type="Normal"><loc:Ecgi>0010100000124</loc:Ecgi>'
        "</loc:NeighbouringEcgi>"
        "<loc:CurrentCoordinate>"
        '<loc:latitude type="Normal"><loc:threebytes>12582912</loc:threebytes></loc:latitude>'
        '<loc:longitude type="Normal"><loc:threebytes> +4194304 </loc:threebytes>'
        "</loc:longitude><x:extra/>"
        "</loc:CurrentCoordinate><loc:anyExt/>"
        "</loc:CurrentLocation></loc:Report></loc:location-info>"
    )
    report = LocationReport.parse(text.encode())
    assert report.report_type is ReportType.EMERGENCY
    assert report.report_id == "req-17"
    assert report.trigger_ids == ("periodic", "cell-change")
    assert report.serving_ecgi == "0010100000123"
    assert report.latitude == pytest.approx(-45.0, abs=LATITUDE_STEP)
    assert report.longitude == pytest.approx(90.0, abs=LONGITUDE_STEP)


def test_report_with_cells_only() -> None:
    text = document(
        '<CurrentServingEcgi type="Normal"><Ecgi>0010100000123</Ecgi></CurrentServingEcgi>'
    )
    report = LocationReport.parse(text)
    assert (report.latitude, report.longitude) == (None, None)
    assert report.serving_ecgi == "0010100000123"
    assert report.to_fix(T0) is None


def test_build_follows_the_schema() -> None:
    report = LocationReport(
        report_type=ReportType.EMERGENCY,
        latitude=45.0,
        longitude=-90.0,
        report_id="req-1",
        trigger_ids=("t1", "t2"),
        serving_ecgi="0010100000123",
    )
    data = bytes(report)
    assert data.startswith(b"<?xml")
    root = ET.fromstring(data)
    assert root.tag == f"{{{NAMESPACE}}}location-info"
    (element,) = root
    assert element.tag == f"{{{NAMESPACE}}}Report"
    assert element.attrib == {"ReportType": "Emergency", "ReportID": "req-1"}
    assert [t.text for t in element.findall("loc:TriggerId", NS)] == ["t1", "t2"]
    serving = element.find("loc:CurrentLocation/loc:CurrentServingEcgi", NS)
    assert serving is not None and serving.get("type") == "Normal"
    assert serving.findtext("loc:Ecgi", namespaces=NS) == "0010100000123"
    point = element.find("loc:CurrentLocation/loc:CurrentCoordinate", NS)
    assert point is not None
    assert [child.tag.split("}")[1] for child in point] == ["longitude", "latitude"]
    assert [child.get("type") for child in point] == ["Normal", "Normal"]
    codes = [child.findtext("loc:threebytes", namespaces=NS) for child in point]
    assert codes == ["12582912", "4194304"]


def test_build_then_parse() -> None:
    report = LocationReport(latitude=-33.8688, longitude=151.2093, trigger_ids=("t",))
    parsed = LocationReport.parse(bytes(report))
    assert parsed.latitude == pytest.approx(report.latitude, abs=LATITUDE_STEP / 2)
    assert parsed.longitude == pytest.approx(report.longitude, abs=LONGITUDE_STEP / 2)
    assert (parsed.report_type, parsed.trigger_ids) == (ReportType.NON_EMERGENCY, ("t",))
    assert bytes(parsed) == bytes(report)
    empty = LocationReport()
    assert LocationReport.parse(bytes(empty)) == empty


def test_fix_conversions() -> None:
    source = GpsFix(51.5074, -0.1278, T0, accuracy_m=5.0)
    report = LocationReport.from_fix(source, report_id="r9")
    assert (report.latitude, report.longitude, report.report_id) == (51.5074, -0.1278, "r9")
    fix = LocationReport.parse(bytes(report)).to_fix(T0 + 2, source=FixSource.NETWORK)
    assert fix is not None
    assert fix.lat == pytest.approx(51.5074, abs=LATITUDE_STEP)
    assert fix.lon == pytest.approx(-0.1278, abs=LONGITUDE_STEP)
    assert (fix.time, fix.source, fix.accuracy_m) == (T0 + 2, FixSource.NETWORK, None)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match=exactly("latitude and longitude must be given together")):
        LocationReport(latitude=1.0)
    with pytest.raises(ValueError, match=exactly("longitude is out of range")):
        LocationReport(latitude=1.0, longitude=200.0)
    with pytest.raises(ValueError, match=exactly("ReportType is not valid")):
        LocationReport(report_type="Urgent")  # type: ignore[arg-type]


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    f'<location-info xmlns="{NAMESPACE}">&lol2;</location-info>'
)
EXTERNAL_ENTITY = (
    '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    f'<location-info xmlns="{NAMESPACE}">&x;</location-info>'
)
LONGITUDE_OK = three_bytes("longitude", "0")
LATITUDE_OK = three_bytes("latitude", "0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "location-info must not contain a DOCTYPE"),
        (EXTERNAL_ENTITY, "location-info must not contain a DOCTYPE"),
        ("<location-info", "location-info is not well-formed XML"),
        ("", "location-info is not well-formed XML"),
        ("<location-info/>", "root element is not location-info"),
        (f'<mcpttinfo xmlns="{NAMESPACE}"/>', "root element is not location-info"),
        (
            f'<location-info xmlns="{NAMESPACE}"><Request/></location-info>',
            "location-info has no Report",
        ),
        (document("", report_attributes=""), "Report has no ReportType"),
        (document("", report_attributes='ReportType="Urgent"'), "ReportType is not valid"),
        (
            f'<location-info xmlns="{NAMESPACE}"><Report ReportType="Emergency"/></location-info>',
            "Report has no CurrentLocation",
        ),
        (document(coordinate(LONGITUDE_OK, "")), "CurrentCoordinate has no latitude"),
        (document(coordinate("", LATITUDE_OK)), "CurrentCoordinate has no longitude"),
        (
            document(coordinate(three_bytes("longitude", "0", 'type="Encrypted"'), LATITUDE_OK)),
            "encrypted location is not supported",
        ),
        (
            document(coordinate(three_bytes("longitude", "0", 'type="Secret"'), LATITUDE_OK)),
            "protection type is not valid",
        ),
        (
            document(coordinate(LONGITUDE_OK, '<latitude type="Normal"/>')),
            "latitude has no threebytes",
        ),
        (
            document(coordinate(LONGITUDE_OK, three_bytes("latitude", "-5"))),
            "threebytes is not an integer",
        ),
        (
            document(coordinate(LONGITUDE_OK, three_bytes("latitude", "1.5"))),
            "threebytes is not an integer",
        ),
        (
            document(coordinate(LONGITUDE_OK, three_bytes("latitude", ""))),
            "threebytes is not an integer",
        ),
        (
            document(coordinate(LONGITUDE_OK, three_bytes("latitude", "0x10"))),
            "threebytes is not an integer",
        ),
        (
            document(coordinate(LONGITUDE_OK, three_bytes("latitude", "16777216"))),
            "threebytes is out of range",
        ),
        (document("<!--" + "x" * 70_000 + "-->"), "location-info is too large"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        LocationReport.parse(text)
