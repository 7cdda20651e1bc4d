"""Tests for bridge.cot: Cursor-on-Target events, read back with xml.etree."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest

from bridge.cot import UNKNOWN, CotEvent, cot_event, cot_stream
from bridge.presence import FixSource, GpsFix, PresenceRegistry, Unit

T0 = 1_700_000_000.0
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def registry() -> PresenceRegistry:
    return PresenceRegistry(clock=lambda: T0 + 1.0)


def alpha(presence: PresenceRegistry) -> Unit:
    return presence.report(
        "u1",
        GpsFix(
            48.8566,
            2.3522,
            T0,
            altitude_m=35.0,
            accuracy_m=4.5,
            vertical_accuracy_m=9.0,
            heading_deg=271.5,
            speed_mps=1.2,
        ),
        kind="trunk",
        alias="Alpha 1",
        room="tg1",
        status="emergency",
        interval=15.0,
    )


def parse_time(text: str) -> datetime:
    assert ISO_Z.fullmatch(text), text
    return datetime.fromisoformat(text)


def test_event_attributes_and_point() -> None:
    event = ET.fromstring(cot_event(alpha(registry())))
    assert event.tag == "event"
    assert event.get("version") == "2.0"
    assert event.get("uid") == "ucbridge-u1"
    assert event.get("type") == "a-f-G-U-C"
    assert event.get("how") == "m-g"
    time, start, stale = (parse_time(event.get(name, "")) for name in ("time", "start", "stale"))
    assert time.timestamp() == T0
    assert start == time
    assert stale - time == timedelta(seconds=30)  # two report intervals
    point = event.find("point")
    assert point is not None
    assert float(point.get("lat", "")) == pytest.approx(48.8566, abs=1e-7)
    assert float(point.get("lon", "")) == pytest.approx(2.3522, abs=1e-7)
    assert (point.get("hae"), point.get("ce"), point.get("le")) == ("35.0", "4.5", "9.0")


def test_event_detail() -> None:
    event = ET.fromstring(cot_event(alpha(registry())))
    contact = event.find("detail/contact")
    assert contact is not None and contact.get("callsign") == "Alpha 1"
    track = event.find("detail/track")
    assert track is not None
    assert (track.get("course"), track.get("speed")) == ("271.5", "1.2")
    ours = event.find("detail/ucbridge")
    assert ours is not None
    assert ours.attrib == {"room": "tg1", "status": "emergency", "kind": "trunk"}


def test_unknown_values_are_9999999_and_callsign_falls_back_to_id() -> None:
    unit = registry().report("cam-7", GpsFix(1.0, 2.0, T0, source=FixSource.FIXED), kind="camera")
    event = ET.fromstring(cot_event(unit))
    point = event.find("point")
    assert point is not None
    assert [float(point.get(name, "")) for name in ("hae", "ce", "le")] == [9999999.0] * 3
    assert event.get("how") == "h-e"
    contact = event.find("detail/contact")
    assert contact is not None and contact.get("callsign") == "cam-7"
    assert event.find("detail/track") is None
    # Default interval (30 s): stale one minute after the fix.
    stale = parse_time(event.get("stale", "")) - parse_time(event.get("time", ""))
    assert stale == timedelta(seconds=60)


def test_free_text_is_escaped_and_control_characters_dropped() -> None:
    unit = registry().report(
        'a"b', GpsFix(1.0, 2.0, T0), kind="sip", alias='Car "7"\n<north>\t&\x01\x1f end'
    )
    event = ET.fromstring(cot_event(unit))
    assert event.get("uid") == 'ucbridge-a"b'
    contact = event.find("detail/contact")
    assert contact is not None
    assert contact.get("callsign") == 'Car "7"\n<north>\t& end'


def test_type_and_uid_prefix_can_be_chosen() -> None:
    unit = registry().report("cam-7", GpsFix(1.0, 2.0, T0), kind="camera")
    event = ET.fromstring(cot_event(unit, cot_type="a-f-G-E-S", uid_prefix="node2."))
    assert (event.get("type"), event.get("uid")) == ("a-f-G-E-S", "node2.cam-7")


def test_same_fix_gives_the_same_bytes() -> None:
    presence = registry()
    unit = alpha(presence)
    first = cot_event(unit)
    presence.update("u1", status="emergency")
    assert cot_event(unit) == first


def test_stream_yields_one_event_per_unit_back_to_back() -> None:
    presence = registry()
    alpha(presence)
    presence.report("u2", GpsFix(-33.9, 151.2, T0), kind="sip")
    presence.report("u3", GpsFix(0.0, 0.0, T0), kind="webrtc", alias="Console & <3>")
    chunks = list(cot_stream(presence))
    assert len(chunks) == 3
    assert not any(chunk.startswith(b"<?xml") for chunk in chunks)
    # A TAK reader sees the events concatenated; wrapped, they parse as siblings.
    stream = ET.fromstring(b"<stream>" + b"".join(chunks) + b"</stream>")
    events = stream.findall("event")
    assert [event.get("uid") for event in events] == ["ucbridge-u1", "ucbridge-u2", "ucbridge-u3"]
    contact = events[2].find("detail/contact")
    assert contact is not None and contact.get("callsign") == "Console & <3>"


def test_parse_round_trip() -> None:
    unit = alpha(registry())
    event = CotEvent.parse(cot_event(unit))
    assert event == CotEvent(
        uid="ucbridge-u1",
        type="a-f-G-U-C",
        time=T0,
        start=T0,
        stale=T0 + 30.0,
        how="m-g",
        lat=48.8566,
        lon=2.3522,
        hae=35.0,
        ce=4.5,
        le=9.0,
        callsign="Alpha 1",
        course=271.5,
        speed=1.2,
        room="tg1",
        status="emergency",
        kind="trunk",
    )
    bare = CotEvent("x", "a-f-G", T0, T0, T0 + 1, "h-e", 1.0, 2.0)
    assert CotEvent.parse(bytes(bare)) == bare
    assert f"{UNKNOWN:.1f}" in bytes(bare).decode()


def test_parse_a_foreign_event() -> None:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<event version="2.0" uid="ANDROID-1" type="a-f-G-U-C" how="m-g"'
        ' time="2023-11-14T22:13:20Z" start="2023-11-14T22:13:20Z"'
        ' stale="2023-11-14T22:19:20+00:00">'
        '<point lat="37.7749" lon="-122.4194" hae="10" ce="9999999.0" le="9999999"/>'
        '<detail><contact callsign="Bravo" endpoint="*:-1:stcp"/><takv device="x"/></detail>'
        "</event>"
    )
    event = CotEvent.parse(text)
    assert (event.uid, event.callsign, event.lat, event.hae, event.ce) == (
        "ANDROID-1",
        "Bravo",
        37.7749,
        10.0,
        None,
    )
    assert (event.time, event.stale) == (T0, T0 + 360.0)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    "<event>&lol2;</event>"
)
GOOD_POINT = '<point lat="1" lon="2" hae="0" ce="0" le="0"/>'
TIMES = 'time="2023-11-14T22:13:20Z" start="2023-11-14T22:13:20Z" stale="2023-11-14T22:13:20Z"'


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (BILLION_LAUGHS, "CoT event must not contain a DOCTYPE"),
        ("<event", "CoT event is not well-formed XML"),
        ("<point/>", "root element is not event"),
        (f'<event uid="a" type="t" how="m-g" {TIMES}/>', "CoT event has no point"),
        (f'<event type="t" how="m-g" {TIMES}>{GOOD_POINT}</event>', "CoT event has no uid"),
        (f'<event uid="a" type="t" {TIMES}>{GOOD_POINT}</event>', "CoT event has no how"),
        (
            f'<event uid="a" type="t" how="m-g">{GOOD_POINT}</event>',
            "CoT event has no time",
        ),
        (
            '<event uid="a" type="t" how="m-g" time="yesterday" start="x" stale="x">'
            f"{GOOD_POINT}</event>",
            "CoT event time is not an ISO-8601 time",
        ),
        (
            '<event uid="a" type="t" how="m-g" time="2023-11-14T22:13:20" start="x" stale="x">'
            f"{GOOD_POINT}</event>",
            "CoT event time is not an ISO-8601 time",
        ),
        (
            f'<event uid="a" type="t" how="m-g" {TIMES}><point lat="1" hae="0" ce="0" le="0"/>'
            "</event>",
            "CoT point has no lon",
        ),
        (
            f'<event uid="a" type="t" how="m-g" {TIMES}>'
            '<point lat="nan" lon="2" hae="0" ce="0" le="0"/></event>',
            "CoT point lat is not a number",
        ),
        ("<event>" + " " * 70_000 + "</event>", "CoT event is too large"),
    ],
)
def test_parse_errors(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        CotEvent.parse(document)
