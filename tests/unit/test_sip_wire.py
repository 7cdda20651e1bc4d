"""The SIP front's parsing, the dialplan, caller-ID masking and the INVITE rate limit."""

from __future__ import annotations

import pytest

from bridge.gateways.sip.dialplan import Dialplan, caller_id, dial_target
from bridge.gateways.sip.ratelimit import RateLimiter
from bridge.gateways.sip.sipmsg import SipMessage, Via, make_response, sdp_problem

INVITE = (
    b"INVITE sip:conf@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKabc;rport\r\n"
    b"v: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKdef\r\n"
    b'From: "Unit 7" <sip:5551234@10.0.0.1>;tag=1\r\nTo: <sip:conf@127.0.0.1>\r\n'
    b"Call-ID: abc@x\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\r\ntrailing"
)


def test_a_request_parses_and_round_trips_with_compact_headers() -> None:
    msg = SipMessage.parse(INVITE)
    assert (msg.method, msg.call_id, msg.cseq_method) == ("INVITE", "abc@x", "INVITE")
    assert [v.host for v in msg.vias()] == ["10.0.0.1", "10.0.0.2"]
    assert msg.body == b"v=0\r"
    again = SipMessage.parse(bytes(msg))
    assert again.values("via") == msg.values("via") and again.body == msg.body


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (INVITE.split(b"\r\n\r\n")[0], "SIP message has no end of headers"),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 99"), "SIP message is truncated"),
        (INVITE.replace(b"Call-ID: abc@x\r\n", b""), "SIP message has no call-id header"),
        (
            INVITE.replace(b" SIP/2.0\r\nVia", b" SIP/3.0\r\nVia", 1),
            "SIP request line is malformed",
        ),
    ],
)
def test_bad_messages_are_refused_with_exact_errors(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{error}$"):
        SipMessage.parse(data)


def test_rport_and_received_pick_the_response_address() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKx;rport=6000;received=1.2.3.4")
    assert via.response_address() == ("1.2.3.4", 6000)


def test_a_final_response_gets_a_to_tag() -> None:
    response = make_response(SipMessage.parse(INVITE), 488, "Not Acceptable Here")
    assert response.status == 488 and response.to_tag()
    assert response.values("via") == SipMessage.parse(INVITE).values("via")


@pytest.mark.parametrize(
    ("sdp", "problem"),
    [
        (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n", None),
        (b"hello", "SDP does not start with v=0"),
        (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 4000 RTP/AVP 96\r\n", "SDP offers no audio stream"),
        (b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "SDP has no connection address"),
        (b"v=0\r\nthis is not sdp\r\n", "SDP line is malformed"),
    ],
)
def test_offers_that_cannot_be_negotiated_are_named(sdp: bytes, problem: str | None) -> None:
    assert sdp_problem(sdp) == problem


def test_the_dialplan_maps_dids_then_room_names() -> None:
    plan = Dialplan({"5550100": "dispatch"})
    assert plan.room_for("sip:5550100@pbx") == "dispatch"
    assert plan.room_for("sip:+5550100@pbx") == "dispatch"
    assert plan.room_for("sip:tg1@bridge") == "tg1"
    assert plan.room_for("sip:bad%20room@bridge") is None
    assert plan.room_for("tel:123") is None


def test_a_call_retargeted_to_an_accounts_contact_is_routed_by_its_to_user() -> None:
    plan = Dialplan({"5550100": "dispatch"}, frozenset({"pbx"}))
    # The registrar sent it to the Contact the account "pbx" registered.
    assert plan.room_for("sip:pbx@127.0.0.1:5060", '"Desk" <sip:5550100@pbx.example>') == (
        "dispatch"
    )
    assert plan.room_for("sip:pbx@127.0.0.1:5060", "<sip:tg1@pbx.example>") == "tg1"
    assert plan.room_for("sip:tg1@127.0.0.1:5060", "<sip:5550100@pbx.example>") == "tg1"


def test_caller_id_is_shown_masked_or_hidden() -> None:
    header = '"Unit 7" <sip:5551234@10.0.0.1>;tag=1'
    assert caller_id(header, "show") == "Unit 7 <5551234>"
    assert caller_id(header, "mask") == "•••1234"
    assert caller_id(header, "hide") == "anonymous"


def test_dial_targets() -> None:
    assert dial_target("sip:a@b", None) == "sip:a@b"
    assert dial_target("+4912345", "sip:pbx.example.net") == "sip:+4912345@pbx.example.net"
    with pytest.raises(ValueError, match="needs an upstream SIP account"):
        dial_target("12345", None)


def test_the_rate_limit_is_per_source_and_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    now[0] = 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.limited == 2
