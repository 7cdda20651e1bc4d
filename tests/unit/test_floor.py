"""Tests for bridge.floor: the TS 24.380 §6.3 floor control server, on an injected clock."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.floor import (
    ACK_REQUESTED_BIT,
    ALL,
    AllExcept,
    BurstEndReason,
    CallType,
    DenyCause,
    FloorConfig,
    FloorControlServer,
    FloorEvent,
    FloorEventType,
    FloorIndicator,
    FloorMessage,
    FloorMessageType,
    FloorTransition,
    RevokeCause,
)

GRANTED = FloorMessageType.GRANTED
TAKEN = FloorMessageType.TAKEN
DENY = FloorMessageType.DENY
IDLE = FloorMessageType.IDLE
REVOKE = FloorMessageType.REVOKE
QPI = FloorMessageType.QUEUE_POSITION_INFO
ACK = FloorMessageType.ACK

IDLE_STATE = "G: Floor Idle"
TAKEN_STATE = "G: Floor Taken"
REVOKE_STATE = "G: pending Floor Revoke"
U_IDLE = "U: not permitted and Floor Idle"
U_TAKEN = "U: not permitted and Floor Taken"
U_PERMITTED = "U: permitted"
U_REVOKE = "U: pending Floor Revoke"
U_MEDIA = "U: not permitted but sends media"

NOT_QUEUED = 254


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Room:
    """A server, its clock and the events it reported."""

    def __init__(
        self,
        config: FloorConfig | None = None,
        participants: Iterable[str] = ("a", "b", "c"),
        **join: object,
    ) -> None:
        self.clock = Clock()
        self.events: list[FloorEvent] = []
        self.server = FloorControlServer(
            "room-1", config, clock=self.clock, events=self.events.append
        )
        for participant in participants:
            self.server.join(participant, **join)  # type: ignore[arg-type]

    def advance(self, seconds: float, media: Iterable[str] = ()) -> list[FloorMessage]:
        """Move the clock, waking at every timer deadline as the worker's loop would.

        With ``media``, those participants send a packet every 20 ms tick on the way.
        """
        senders = frozenset(media)
        end = self.clock.now + seconds
        out: list[FloorMessage] = []
        while True:
            deadline = self.server.next_deadline()
            step = self.clock.now + 0.02 if senders else end
            wake = min(end, step) if deadline is None else min(end, step, deadline)
            self.clock.now = wake
            out += self.server.tick()
            if senders and wake == step:
                out += self.server.media_from(senders)
            if wake >= end:
                return out

    def kinds(self, kind: FloorEventType) -> list[FloorEvent]:
        return [event for event in self.events if event.kind is kind]


def summary(messages: Iterable[FloorMessage]) -> list[tuple[FloorMessageType, object]]:
    return [(message.kind, message.to) for message in messages]


def only(messages: list[FloorMessage], kind: FloorMessageType) -> FloorMessage:
    found = [message for message in messages if message.kind is kind]
    assert len(found) == 1, messages
    return found[0]


def queue(server: FloorControlServer) -> tuple[str, ...]:
    return server.queue


def transitions(server: FloorControlServer, machine: str) -> list[tuple[str, str, str]]:
    return [(t.from_state, t.to_state, t.cause) for t in server.trace if t.machine == machine]


# --------------------------------------------------------------------- joining
def test_join_initiates_the_call_and_tells_floor_idle() -> None:
    room = Room(participants=())
    server = room.server
    assert server.state == "Start-stop"
    messages = server.join("a", user_id="sip:a@example.org", alias="Unit 1")
    assert summary(messages) == [(IDLE, "a")]
    assert server.state == IDLE_STATE
    assert server.participant_state("a") == U_IDLE
    assert list(server.trace) == [
        FloorTransition(100.0, "G", "Start-stop", IDLE_STATE, "call initialised"),
        FloorTransition(100.0, "U:a", "Start-stop", U_IDLE, "session initiated"),
    ]


def test_join_while_taken_tells_who_talks() -> None:
    room = Room(participants=("a",))
    room.server.join("b", user_id="mcptt-b", alias="Engine 7")
    room.server.request("b")
    messages = room.server.join("c")
    taken = only(messages, TAKEN)
    assert taken.to == "c"
    assert (taken.granted_party, taken.user_id, taken.alias) == ("b", "mcptt-b", "Engine 7")
    assert taken.permission_to_request is True
    assert room.server.participant_state("c") == U_TAKEN


def test_join_twice_and_bad_priority_are_errors() -> None:
    room = Room(participants=("a",))
    with pytest.raises(ValueError, match=r"^participant already joined: a$"):
        room.server.join("a")
    with pytest.raises(ValueError, match=r"^floor priority out of range: 256$"):
        room.server.join("z", priority=256)
    with pytest.raises(ValueError, match=r"^floor priority out of range: -1$"):
        room.server.request("a", priority=-1)
    assert room.server.participants == ("a",)


# -------------------------------------------------------------- grant and queue
def test_two_requests_in_one_tick_grant_one_and_queue_the_other() -> None:
    room = Room()
    server = room.server
    first = server.request("a")
    second = server.request("b")
    assert summary(first) == [(GRANTED, "a"), (TAKEN, AllExcept("a"))]
    granted = only(first, GRANTED)
    assert granted.duration == 30
    assert granted.ack_requested is False
    assert granted.indicator == FloorIndicator.NORMAL_CALL | FloorIndicator.QUEUEING_SUPPORTED
    assert summary(second) == [(QPI, "b")]
    assert second[0].queue_position == 1
    assert server.holder == "a"
    assert queue(server) == ("b",)
    assert server.participant_state("a") == U_PERMITTED
    assert server.participant_state("b") == U_TAKEN
    queued = room.kinds(FloorEventType.QUEUED)
    assert [(e.participant, e.position) for e in queued] == [("b", 1)]


def test_release_grants_the_next_in_the_same_call_with_ack_and_t20() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    room.clock.now += 2.0
    messages = server.release("a")
    assert summary(messages) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert only(messages, GRANTED).ack_requested is True
    assert server.holder == "b"
    assert queue(server) == ()
    member = server.participant("b")
    assert member.t20.running and member.c20 == 1
    assert server.participant_state("a") == U_TAKEN
    released = room.kinds(FloorEventType.RELEASED)
    assert [(e.participant, e.start, e.end, e.reason) for e in released] == [
        ("a", 100.0, 102.0, BurstEndReason.RELEASED.value)
    ]
    taken = room.kinds(FloorEventType.TAKEN)
    assert [(e.participant, e.previous) for e in taken] == [("a", None), ("b", "a")]
    assert room.kinds(FloorEventType.IDLE) == []


def test_release_by_the_last_holder_makes_the_floor_idle() -> None:
    room = Room()
    server = room.server
    server.request("a")
    messages = server.release("a")
    assert summary(messages) == [(IDLE, ALL)]
    assert server.holder is None
    assert server.state == IDLE_STATE
    assert server.participant_state("a") == U_IDLE
    assert server.t7.running and server.c7 == 1
    idle = room.kinds(FloorEventType.IDLE)
    assert [(e.previous, e.t) for e in idle] == [("a", 100.0)]


def test_release_while_queued_cancels_and_moves_the_queue_up() -> None:
    room = Room(participants=("a", "b", "c", "d"))
    server = room.server
    server.request("a")
    server.request("b")
    server.request("c")
    server.request("d")
    assert queue(server) == ("b", "c", "d")
    messages = server.release("b", ack_requested=True)
    assert summary(messages) == [(ACK, "b"), (QPI, "c"), (QPI, "d"), (TAKEN, "b")]
    assert messages[0].message_type is FloorMessageType.RELEASE
    assert [m.queue_position for m in messages[1:3]] == [1, 2]
    assert queue(server) == ("c", "d")
    assert server.holder == "a"
    cancelled = room.kinds(FloorEventType.CANCELLED)
    assert [(e.participant, e.reason) for e in cancelled] == [("b", "cancelled")]
    assert summary(server.release("a")) == [(GRANTED, "c"), (TAKEN, AllExcept("c")), (QPI, "d")]


def test_queue_position_request() -> None:
    room = Room()
    server = room.server
    server.request("a", priority=0)
    server.request("b")
    assert [(m.kind, m.queue_position) for m in server.queue_position_request("b")] == [(QPI, 1)]
    assert [(m.kind, m.queue_position) for m in server.queue_position_request("c")] == [
        (QPI, NOT_QUEUED)
    ]
    # The holder and unknown participants have no such procedure: discarded.
    discarded = server.discarded
    assert server.queue_position_request("a") == []
    assert server.queue_position_request("nobody") == []
    assert server.discarded == discarded + 2


def test_request_again_while_queued_repeats_the_position() -> None:
    room = Room()
    room.server.request("a")
    room.server.request("b")
    again = room.server.request("b")
    assert [(m.kind, m.queue_position) for m in again] == [(QPI, 1)]
    assert queue(room.server) == ("b",)


def test_holder_request_again_repeats_granted_with_what_is_left_of_t2() -> None:
    room = Room()
    room.server.request("a")
    room.advance(10.5, media=["a"])
    messages = room.server.request("a")
    assert summary(messages) == [(GRANTED, "a")]
    assert messages[0].duration == 20  # T2 started with the first media, 10.48 s ago


def test_higher_priority_is_queued_ahead_without_revoking() -> None:
    room = Room(participants=("a", "b", "c", "d"), priority=200)
    server = room.server
    server.request("a", priority=10)
    server.request("b", priority=5)
    server.request("c", priority=5)
    messages = server.request("d", priority=150)
    assert [(m.kind, m.to, m.queue_position) for m in messages] == [
        (QPI, "d", 1),
        (QPI, "b", 2),
        (QPI, "c", 3),
    ]
    assert queue(server) == ("d", "b", "c")
    assert server.holder == "a"
    assert server.state == TAKEN_STATE
    assert not any(m.kind is REVOKE for m in messages)


def test_equal_priority_is_first_come_first_served() -> None:
    room = Room(participants=("a", "b", "c", "d"), priority=50)
    server = room.server
    server.request("a")
    for participant in ("c", "b", "d"):
        server.request(participant, priority=50)
    assert queue(server) == ("c", "b", "d")
    order = []
    for _ in range(3):
        holder = server.holder
        assert holder is not None
        server.release(holder)
        order.append(server.holder)
    assert order == ["c", "b", "d"]


def test_requested_priority_is_capped_by_the_negotiated_one() -> None:
    room = Room(participants=("a", "b", "c"))
    server = room.server
    server.join("d", priority=100)
    server.request("a")
    server.request("b", priority=255)  # negotiated 0: requests at 0
    server.request("d", priority=80)
    assert queue(server) == ("d", "b")
    assert [e.priority for e in room.kinds(FloorEventType.QUEUED)] == [0, 80]


def test_queue_full_denies_with_cause_7() -> None:
    room = Room(FloorConfig(max_queue_size=1))
    server = room.server
    server.request("a")
    server.request("b")
    messages = server.request("c")
    deny = only(messages, DENY)
    assert (deny.to, deny.cause, deny.cause_text) == ("c", DenyCause.QUEUE_FULL, "Queue full")
    assert queue(server) == ("b",)
    assert [(e.participant, e.cause) for e in room.kinds(FloorEventType.DENIED)] == [
        ("c", DenyCause.QUEUE_FULL)
    ]


def test_without_queueing_a_request_is_denied_with_cause_1() -> None:
    room = Room(FloorConfig(queueing=False))
    room.server.request("a")
    deny = only(room.server.request("b"), DENY)
    assert deny.cause is DenyCause.ANOTHER_USER_HAS_PERMISSION
    assert deny.indicator == FloorIndicator.NORMAL_CALL
    assert queue(room.server) == ()


# ------------------------------------------------------------------- refusals
def test_receive_only_is_denied_with_cause_5_idle_or_taken() -> None:
    room = Room(participants=("a", "b"))
    room.server.join("listener", receive_only=True)
    deny = only(room.server.request("listener"), DENY)
    assert (deny.cause, deny.cause_text) == (DenyCause.RECEIVE_ONLY, "Receive only")
    assert room.server.state == IDLE_STATE
    room.server.request("a")
    assert only(room.server.request("listener"), DENY).cause is DenyCause.RECEIVE_ONLY
    assert queue(room.server) == ()


def test_request_from_a_participant_not_joined_is_denied_with_cause_255() -> None:
    room = Room()
    messages = room.server.request("stranger")
    deny = only(messages, DENY)
    assert (deny.to, deny.cause, deny.cause_text) == (
        "stranger",
        DenyCause.OTHER,
        "Not a participant of this call",
    )
    assert room.server.state == IDLE_STATE
    assert room.server.holder is None


def test_only_participant_is_granted_by_default() -> None:
    room = Room(participants=("a",))
    assert summary(room.server.request("a")) == [(GRANTED, "a"), (TAKEN, AllExcept("a"))]


def test_only_participant_is_denied_with_cause_3_when_configured() -> None:
    room = Room(FloorConfig(deny_single_participant=True), participants=("a",))
    deny = only(room.server.request("a"), DENY)
    assert (deny.cause, deny.cause_text) == (DenyCause.ONLY_ONE_PARTICIPANT, "Only one participant")
    room.server.join("b")
    assert summary(room.server.request("a"))[0] == (GRANTED, "a")
    # Left alone with the floor: revoked with cause #1.
    messages = room.server.leave("b")
    revoke = only(messages, REVOKE)
    assert (revoke.to, revoke.cause) == ("a", RevokeCause.ONLY_ONE_PARTICIPANT)


# ---------------------------------------------------------------- leaving
def test_holder_disconnect_releases_the_floor() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    messages = server.leave("a")
    assert summary(messages) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert server.participants == ("b", "c")
    released = room.kinds(FloorEventType.RELEASED)
    assert [(e.participant, e.reason) for e in released] == [("a", "left")]
    assert transitions(server, "U:a") == [
        ("Start-stop", U_IDLE, "session initiated"),
        (U_IDLE, U_PERMITTED, "Floor Granted"),
        (U_PERMITTED, "Releasing", "left"),
        ("Releasing", "Start-stop", "resources released"),
    ]
    assert summary(server.leave("b")) == [(IDLE, ALL)]
    assert server.holder is None
    assert server.leave("b") == []  # already gone: ignored
    with pytest.raises(KeyError, match="unknown participant: a"):
        server.participant_state("a")


def test_queued_participant_leaving_is_cancelled() -> None:
    room = Room()
    room.server.request("a")
    room.server.request("b")
    room.server.request("c")
    assert summary(room.server.leave("b")) == [(QPI, "c")]
    assert queue(room.server) == ("c",)
    assert [e.reason for e in room.kinds(FloorEventType.CANCELLED)] == ["left"]


# ------------------------------------------------------------------ timers
def test_t1_end_of_media_makes_the_floor_idle() -> None:
    room = Room()
    server = room.server
    server.request("a")
    assert server.next_deadline() == 104.0
    out = room.advance(3.0, media=["a"])
    assert out == []
    assert server.next_deadline() == pytest.approx(107.0)
    out = room.advance(4.5)
    assert summary(out) == [(IDLE, ALL)]
    assert server.holder is None
    released = room.kinds(FloorEventType.RELEASED)
    assert [e.reason for e in released] == [BurstEndReason.END_OF_MEDIA.value]
    assert released[0].end == pytest.approx(107.0)
    assert ("G", TAKEN_STATE, IDLE_STATE, "T1 expired") in [
        (t.machine, t.from_state, t.to_state, t.cause) for t in server.trace
    ]


def test_t2_revokes_with_cause_2_and_t3_takes_the_floor_back() -> None:
    room = Room(FloorConfig(t2=5.0, t3=3.0, t8=1.0))
    server = room.server
    server.request("a")
    server.request("b")
    out = room.advance(5.1, media=["a"])
    revoke = only(out, REVOKE)
    assert (revoke.to, revoke.cause, revoke.cause_text) == (
        "a",
        RevokeCause.MEDIA_BURST_TOO_LONG,
        "Media burst too long",
    )
    assert server.state == REVOKE_STATE
    assert ("G", TAKEN_STATE, REVOKE_STATE, "T2 expired") in [
        (t.machine, t.from_state, t.to_state, t.cause) for t in server.trace
    ]
    assert server.participant_state("a") == U_REVOKE
    assert server.holder == "a"  # still heard during the grace
    assert server.request("a") == []  # no procedure in 'U: pending Floor Revoke'
    # T8 repeats the Revoke; T3 then takes the floor and grants the queue.
    out = room.advance(3.0, media=["a"])
    assert [m.kind for m in out] == [REVOKE, REVOKE, GRANTED, TAKEN]
    assert all(m.cause is RevokeCause.MEDIA_BURST_TOO_LONG for m in out[:2])
    assert server.holder == "b"
    released = room.kinds(FloorEventType.RELEASED)
    assert [e.reason for e in released] == [BurstEndReason.REVOKED.value]
    assert server.participant_state("a") == U_TAKEN
    assert not server.participant("a").t8.running


def test_t3_expiring_with_t8_at_the_same_instant_sends_no_extra_revoke() -> None:
    room = Room(FloorConfig(t3=3.0, t8=1.5))
    server = room.server
    server.request("a")
    server.revoke("a")
    out = room.advance(3.0)
    assert [(m.kind, m.to) for m in out] == [(REVOKE, "a"), (IDLE, ALL)]
    assert server.next_deadline() == pytest.approx(104.0)  # only T7 is left


def test_release_and_request_in_the_same_tick() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    # The holder releases and c asks in the same tick: b (queued first) gets the floor.
    assert summary(server.release("a")) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert summary(server.request("c")) == [(QPI, "c")]
    assert server.holder == "b"
    # The old holder's late Floor Release is answered with who talks now.
    assert summary(server.release("a")) == [(TAKEN, "a")]
    assert server.holder == "b"


def test_revoked_holder_releasing_in_time_ends_the_grace() -> None:
    room = Room(FloorConfig(t2=2.0))
    server = room.server
    server.request("a")
    room.advance(2.5, media=["a"])
    assert server.state == REVOKE_STATE
    assert summary(server.release("a")) == [(IDLE, ALL)]
    assert not server.t3.running
    assert server.participant_state("a") == U_IDLE


def test_granted_without_ack_is_repeated_c20_times_then_t1_decides() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    granted = server.release("a")
    assert only(granted, GRANTED).ack_requested
    out = room.advance(3.5)
    assert [(m.kind, m.to, m.ack_requested) for m in out] == [
        (GRANTED, "b", True),
        (GRANTED, "b", True),
    ]
    member = server.participant("b")
    assert member.c20 == 3
    assert not member.t20.running
    assert (U_PERMITTED, U_PERMITTED, "C20 reached its limit") in transitions(server, "U:b")
    assert server.holder == "b"
    out = room.advance(1.0)
    assert summary(out) == [(IDLE, ALL)]
    assert server.holder is None


def test_ack_or_media_stops_t20() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    server.request("c")
    server.release("a")
    assert server.ack("b", GRANTED | ACK_REQUESTED_BIT) == []  # with the Ack bit, as on the wire
    assert not server.participant("b").t20.running
    assert room.advance(2.0, media=["b"]) == []
    server.release("b")
    assert server.participant("c").t20.running
    server.media("c")
    assert not server.participant("c").t20.running
    assert room.advance(2.0, media=["c"]) == []


def test_ack_flood_changes_nothing() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    trace = list(server.trace)
    for message_type in [*range(32), 255, -1, 1000]:
        for participant in ("a", "b", "c", "stranger"):
            assert server.ack(participant, message_type) == []
    assert list(server.trace) == trace
    assert server.holder == "a"
    assert queue(server) == ("b",)
    assert server.state == TAKEN_STATE


def test_t7_repeats_floor_idle_until_c7() -> None:
    room = Room(FloorConfig(c7=3))
    server = room.server
    server.request("a")
    first = server.release("a")
    out = room.advance(10.0)
    assert [(m.kind, m.to, m.sequence) for m in first + out] == [(IDLE, ALL, 2)] * 3
    assert server.c7 == 3
    assert not server.t7.running
    assert server.next_deadline() is None


def test_t7_with_acks_repeats_only_to_those_who_did_not_ack() -> None:
    room = Room(FloorConfig(ack_required=True))
    server = room.server
    server.request("a")
    idle = server.release("a")
    assert only(idle, IDLE).ack_requested
    server.ack("a", IDLE | ACK_REQUESTED_BIT)
    server.ack("b", IDLE)
    room.clock.now += 1.0
    assert summary(server.tick()) == [(IDLE, "c")]
    server.ack("c", IDLE)
    room.clock.now += 1.0
    assert server.tick() == []
    assert not server.t7.running


def test_a_late_tick_never_hides_an_expired_timer() -> None:
    room = Room()
    server = room.server
    server.request("a")
    room.clock.now += 4.5  # T1 expired 0.5 s ago but the worker has not ticked
    messages = server.request("b")
    assert summary(messages) == [(IDLE, ALL), (GRANTED, "b"), (TAKEN, AllExcept("b"))]
    released = room.kinds(FloorEventType.RELEASED)
    assert [e.end for e in released] == [104.0]  # stamped at the deadline


# ----------------------------------------------------------- pre-emption
def test_emergency_pre_empts_with_revoke_4_and_is_granted_on_release() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    messages = server.request("c", call_type=CallType.EMERGENCY, location=(48.85, 2.35))
    assert [(m.kind, m.to) for m in messages] == [(QPI, "c"), (QPI, "b"), (REVOKE, "a")]
    assert messages[0].queue_position == 1
    assert messages[1].queue_position == 2
    revoke = messages[2]
    assert (revoke.cause, revoke.cause_text) == (RevokeCause.PRE_EMPTED, "Media Burst pre-empted")
    assert server.state == REVOKE_STATE
    assert queue(server) == ("c", "b")
    emergencies = room.kinds(FloorEventType.EMERGENCY)
    assert [(e.participant, e.call_type, e.location) for e in emergencies] == [
        ("c", CallType.EMERGENCY, (48.85, 2.35))
    ]
    revoked = room.kinds(FloorEventType.REVOKED)
    assert [(e.participant, e.cause) for e in revoked] == [("a", RevokeCause.PRE_EMPTED)]
    messages = server.release("a")
    assert summary(messages) == [(GRANTED, "c"), (TAKEN, AllExcept("c")), (QPI, "b")]
    taken = only(messages, TAKEN)
    assert taken.indicator == FloorIndicator.EMERGENCY_CALL | FloorIndicator.QUEUEING_SUPPORTED
    assert taken.location == (48.85, 2.35)
    assert server.call_type is CallType.EMERGENCY
    granted = room.kinds(FloorEventType.GRANTED)
    assert [(e.participant, e.call_type.label) for e in granted] == [
        ("a", "normal"),
        ("c", "emergency"),
    ]


def test_pre_empted_holder_that_keeps_talking_loses_the_floor_at_t3() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("c", call_type=CallType.IMMINENT_PERIL)
    out = room.advance(3.0, media=["a"])
    assert [m.kind for m in out] == [REVOKE, REVOKE, GRANTED, TAKEN]
    assert server.holder == "c"
    assert out[2].indicator is not None
    assert out[2].indicator & FloorIndicator.IMMINENT_PERIL_CALL
    assert server.participant_state("a") == U_TAKEN


def test_lower_or_equal_call_type_never_pre_empts() -> None:
    room = Room()
    server = room.server
    server.request("a", call_type=CallType.EMERGENCY)
    server.request("b", call_type=CallType.IMMINENT_PERIL)
    server.request("c", call_type=CallType.EMERGENCY)
    assert server.state == TAKEN_STATE
    assert queue(server) == ("c", "b")  # by call type, then arrival


def test_two_pre_emptors_wait_by_call_type() -> None:
    room = Room(participants=("a", "b", "c", "d"))
    server = room.server
    server.request("a")
    server.request("b")
    server.request("c", call_type=CallType.IMMINENT_PERIL)
    messages = server.request("d", call_type=CallType.EMERGENCY)
    assert not any(m.kind is REVOKE for m in messages)  # one Revoke is enough
    assert queue(server) == ("d", "c", "b")
    server.release("a")
    assert server.holder == "d"


def test_pre_emptive_priority_needs_authorisation_and_the_level() -> None:
    config = FloorConfig(pre_emptive_priority=200)
    room = Room(config, participants=())
    server = room.server
    server.join("holder", priority=100)
    server.join("chief", priority=250, pre_emptive_allowed=True)
    server.join("rookie", priority=250)
    server.request("holder")
    # Authorised, but below the room's pre-emptive level: queued.
    assert summary(server.request("chief", priority=199)) == [(QPI, "chief")]
    # Not authorised, at the level: queued, ahead of the lower priority.
    assert summary(server.request("rookie", priority=250)) == [(QPI, "rookie"), (QPI, "chief")]
    assert server.state == TAKEN_STATE
    assert queue(server) == ("rookie", "chief")
    # Authorised, at the level: pre-empts.
    messages = server.request("chief", priority=200)
    assert only(messages, REVOKE).cause is RevokeCause.PRE_EMPTED
    assert server.queue[0] == "chief"


def test_pre_emptive_priority_does_not_pre_empt_an_equal_holder() -> None:
    room = Room(FloorConfig(pre_emptive_priority=200), participants=())
    room.server.join("x", priority=220, pre_emptive_allowed=True)
    room.server.join("y", priority=220, pre_emptive_allowed=True)
    room.server.request("x")
    assert summary(room.server.request("y")) == [(QPI, "y")]
    assert room.server.state == TAKEN_STATE


def test_pre_emptor_leaving_during_the_grace_leaves_the_floor_idle() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b", call_type=CallType.EMERGENCY)
    server.leave("b")
    assert queue(server) == ()
    out = room.advance(3.0)
    assert summary(out) == [(REVOKE, "a"), (REVOKE, "a"), (IDLE, ALL)]
    assert server.holder is None


# ------------------------------------------------------------- dispatcher
def test_grant_to_while_idle_grants_at_once() -> None:
    room = Room()
    assert summary(room.server.grant_to("b")) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert room.server.holder == "b"
    assert ("G", IDLE_STATE, TAKEN_STATE, "grant_to") in [
        (t.machine, t.from_state, t.to_state, t.cause) for t in room.server.trace
    ]


def test_grant_to_pre_empts_even_an_emergency_and_skips_the_queue() -> None:
    room = Room(participants=("a", "b", "c", "d"))
    server = room.server
    server.request("a", call_type=CallType.EMERGENCY)
    server.request("b", call_type=CallType.EMERGENCY)
    server.request("c")
    messages = server.grant_to("c")
    assert [(m.kind, m.to) for m in messages] == [(QPI, "c"), (QPI, "b"), (REVOKE, "a")]
    assert queue(server) == ("c", "b")
    summary_after = summary(server.release("a"))
    assert summary_after[:2] == [(GRANTED, "c"), (TAKEN, AllExcept("c"))]
    assert server.holder == "c"
    assert server.grant_to("c") == []  # already the holder


def test_override_pre_empts_for_the_dispatcher_itself() -> None:
    room = Room(participants=("a", "b"))
    room.server.join("console", alias="Dispatch")
    room.server.request("a")
    messages = room.server.override("console")
    assert only(messages, REVOKE).cause is RevokeCause.PRE_EMPTED
    room.advance(3.0)
    assert room.server.holder == "console"
    assert ("G", TAKEN_STATE, REVOKE_STATE, "override") in [
        (t.machine, t.from_state, t.to_state, t.cause) for t in room.server.trace
    ]


def test_dispatcher_revoke() -> None:
    room = Room()
    server = room.server
    server.request("a")
    assert server.revoke("b") == []  # not the holder: ignored
    assert server.state == TAKEN_STATE
    messages = server.revoke(cause=RevokeCause.NO_RESOURCES)
    assert [(m.kind, m.to, m.cause) for m in messages] == [(REVOKE, "a", RevokeCause.NO_RESOURCES)]
    assert server.revoke("a") == []  # already pending
    assert summary(server.release("a")) == [(IDLE, ALL)]
    assert server.revoke() == []  # nobody holds the floor


def test_set_receive_only_revokes_the_holder_and_denies_the_queued() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    server.request("c")
    messages = server.set_receive_only("a", True)
    assert [(m.kind, m.to, m.cause) for m in messages] == [(REVOKE, "a", RevokeCause.NO_PERMISSION)]
    messages = server.set_receive_only("b", True)
    assert [(m.kind, m.to, m.cause) for m in messages] == [
        (DENY, "b", DenyCause.RECEIVE_ONLY),
        (QPI, "c", None),
    ]
    assert queue(server) == ("c",)
    assert server.set_receive_only("b", True) == []
    with pytest.raises(ValueError, match=r"^participant is receive-only: b$"):
        server.grant_to("b")
    server.set_receive_only("b", False)
    server.release("a")
    assert summary(server.request("b")) == [(QPI, "b")]
    with pytest.raises(KeyError, match="unknown participant: zed"):
        server.set_receive_only("zed", True)


# ----------------------------------------------------------- media policing
def test_media_without_permission_is_revoked_with_cause_3_when_policed() -> None:
    room = Room(FloorConfig(police_media=True))
    server = room.server
    server.request("a")
    messages = server.media_from({"a", "b"})
    revoke = only(messages, REVOKE)
    assert (revoke.to, revoke.cause) == ("b", RevokeCause.NO_PERMISSION)
    assert server.participant_state("b") == U_MEDIA
    # Still sending at T8: repeated; stopped sending by the next T8: back in the crowd.
    out = room.advance(1.0, media=["a", "b"])
    assert summary(out) == [(REVOKE, "b")]
    out = room.advance(1.0, media=["a"])
    assert summary(out) == [(TAKEN, "b")]
    assert server.participant_state("b") == U_TAKEN
    # A request from a policed participant is discarded (§6.3.5.7).
    server.media("c")
    assert server.request("c") == []
    assert summary(server.release("c")) == [(TAKEN, "c")]
    assert server.participant_state("c") == U_TAKEN


def test_media_without_permission_is_ignored_by_default() -> None:
    room = Room()
    room.server.request("a")
    assert room.server.media_from(["a", "b", "c"]) == []
    assert room.server.participant_state("b") == U_TAKEN


# ------------------------------------------------------------ the trace
def test_transition_trace_of_a_pre_emption() -> None:
    room = Room(participants=("a", "b"))
    server = room.server
    server.request("a")
    room.clock.now += 1.0
    server.request("b", call_type=CallType.EMERGENCY)
    room.clock.now += 0.5
    server.release("a")
    assert [tuple(t) for t in server.trace] == [
        (100.0, "G", "Start-stop", IDLE_STATE, "call initialised"),
        (100.0, "U:a", "Start-stop", U_IDLE, "session initiated"),
        (100.0, "U:b", "Start-stop", U_IDLE, "session initiated"),
        (100.0, "G", IDLE_STATE, TAKEN_STATE, "Floor Request"),
        (100.0, "U:a", U_IDLE, U_PERMITTED, "Floor Granted"),
        (100.0, "U:*", U_IDLE, U_TAKEN, "Floor Taken"),
        (101.0, "G", TAKEN_STATE, REVOKE_STATE, "pre-empted"),
        (101.0, "U:a", U_PERMITTED, U_REVOKE, "Floor Revoke #4"),
        (101.5, "G", REVOKE_STATE, IDLE_STATE, "Floor Release"),
        (101.5, "G", IDLE_STATE, TAKEN_STATE, "queued request granted"),
        (101.5, "U:b", U_TAKEN, U_PERMITTED, "Floor Granted"),
        (101.5, "U:a", U_REVOKE, U_TAKEN, "Floor Taken"),
    ]


def test_trace_is_bounded() -> None:
    server = FloorControlServer("r", clock=Clock(), trace_limit=5)
    for participant in "abcdefgh":
        server.join(participant)
    assert len(server.trace) == 5
    assert server.trace[-1].machine == "U:h"


def test_sequence_numbers_bind_taken_and_idle_announcements() -> None:
    room = Room()
    server = room.server
    taken = only(server.request("a"), TAKEN)
    again = only(server.release("c"), TAKEN)  # c was not queued: told who talks
    assert taken.sequence == again.sequence == 1
    idle = only(server.release("a"), IDLE)
    assert idle.sequence == 2
    assert only(server.join("d"), IDLE).sequence == 2


def test_release_call_returns_everything_to_start_stop() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b")
    assert server.release_call() == []
    assert server.state == "Start-stop"
    assert server.participants == ()
    assert queue(server) == ()
    assert server.next_deadline() is None
    assert [e.reason for e in room.kinds(FloorEventType.RELEASED)] == ["call_released"]
    assert [e.reason for e in room.kinds(FloorEventType.CANCELLED)] == ["call released"]
    assert [t.to_state for t in server.trace][-4:] == [
        "Releasing",
        "Releasing",
        "Start-stop",
        "Start-stop",
    ]
    assert summary(server.join("a")) == [(IDLE, "a")]


# ------------------------------------------------------------ the plumbing
def test_config_fails_closed() -> None:
    with pytest.raises(ValueError, match=r"^floor timer T1 must be a positive duration$"):
        FloorConfig(t1=0)
    with pytest.raises(ValueError, match=r"^floor timer T3 must not be negative$"):
        FloorConfig(t3=-1)
    with pytest.raises(ValueError, match=r"^floor counter C20 must be at least 1$"):
        FloorConfig(c20=0)
    with pytest.raises(ValueError, match=r"^floor queue size must not be negative$"):
        FloorConfig(max_queue_size=-1)
    with pytest.raises(ValueError, match=r"^floor priority out of range: 300$"):
        FloorConfig(pre_emptive_priority=300)


def test_message_recipients() -> None:
    to_one = FloorMessage(IDLE, "a")
    to_all = FloorMessage(IDLE, ALL)
    but_a = FloorMessage(TAKEN, AllExcept("a"))
    assert to_one.reaches("a") and not to_one.reaches("b")
    assert to_all.reaches("a") and to_all.reaches("b")
    assert not but_a.reaches("a") and but_a.reaches("b")
    assert repr(ALL) == "ALL"


def test_event_dict_for_the_control_channel() -> None:
    room = Room(participants=())
    room.server.join("a", user_id="mcptt-a", alias="Unit 1")
    room.server.request("a", call_type=CallType.IMMINENT_PERIL)
    granted = room.kinds(FloorEventType.GRANTED)[0].to_dict()
    assert granted == {
        "event": "floor_granted",
        "t": 100.0,
        "room": "room-1",
        "participant": "a",
        "alias": "Unit 1",
        "user_id": "mcptt-a",
        "call_type": "imminent-peril",
        "priority": 0,
        "start": 100.0,
    }


def test_media_from_accepts_any_iterable() -> None:
    room = Room()
    room.server.request("a")
    room.clock.now += 3.0
    room.server.media_from(iter(["b", "a"]))
    assert room.server.next_deadline() == pytest.approx(107.0)
    room.server.media_from(["a"])
    room.server.media_from({"a": 1}.keys())
    assert room.server.holder == "a"


# ------------------------------------------------------------ more races
def test_grant_to_during_the_grace_waits_at_the_head() -> None:
    room = Room(participants=("a", "b", "c", "d"))
    server = room.server
    server.request("a")
    server.request("b", call_type=CallType.EMERGENCY)
    assert summary(server.grant_to("c")) == [(QPI, "c"), (QPI, "b")]
    assert queue(server) == ("c", "b")
    assert server.grant_to("a") == []  # the revoked holder itself: nothing to do
    server.release("a")
    assert server.holder == "c"


def test_revoked_holder_leaving_during_the_grace() -> None:
    room = Room()
    server = room.server
    server.request("a")
    server.request("b", call_type=CallType.EMERGENCY)
    assert summary(server.leave("a")) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert not server.t3.running
    assert [e.reason for e in room.kinds(FloorEventType.RELEASED)] == ["left"]


def test_t1_expiring_during_the_grace_ends_it() -> None:
    room = Room(FloorConfig(t1=2.0, t3=5.0))
    server = room.server
    server.request("a")
    server.revoke()
    assert not server.t1.running  # stopped on entering the grace
    assert room.advance(0.5, media=["a"]) == []  # media during the grace restarts T1
    out = room.advance(2.5)
    assert [m.kind for m in out] == [REVOKE, REVOKE, IDLE]
    assert not server.t3.running
    assert [e.reason for e in room.kinds(FloorEventType.RELEASED)] == ["end_of_media"]


def test_release_while_idle_is_answered_with_floor_idle() -> None:
    room = Room()
    assert summary(room.server.release("b")) == [(IDLE, "b")]
    assert room.server.release("stranger") == []
    assert room.server.state == IDLE_STATE


def test_policed_participant_granted_from_the_queue() -> None:
    room = Room(FloorConfig(police_media=True))
    server = room.server
    server.request("a")
    server.request("b")
    server.media_from({"a", "b"})
    assert server.participant_state("b") == U_MEDIA
    assert summary(server.release("a")) == [(GRANTED, "b"), (TAKEN, AllExcept("b"))]
    assert server.participant_state("b") == U_PERMITTED
    assert not server.participant("b").t8.running
    assert room.advance(2.0, media=["b"]) == []


def test_override_with_an_emergency_raises_it() -> None:
    room = Room()
    room.server.request("a")
    room.server.override("c", call_type=CallType.EMERGENCY, location="grid 31U")
    emergencies = room.kinds(FloorEventType.EMERGENCY)
    assert [(e.participant, e.call_type, e.location) for e in emergencies] == [
        ("c", CallType.EMERGENCY, "grid 31U")
    ]
    room.server.release("a")
    assert room.server.call_type is CallType.EMERGENCY


def test_release_call_before_any_join_does_nothing() -> None:
    server = FloorControlServer("r", clock=Clock())
    assert server.release_call() == []
    assert list(server.trace) == []


def test_queue_updates_can_be_turned_off() -> None:
    room = Room(FloorConfig(queue_updates=False), participants=("a", "b", "c", "d"))
    server = room.server
    server.request("a")
    server.request("b")
    server.request("c")
    assert summary(server.release("b")) == [(TAKEN, "b")]  # c moved up, unannounced
    assert summary(server.request("d", call_type=CallType.IMMINENT_PERIL)) == [
        (QPI, "d"),
        (REVOKE, "a"),
    ]


def test_queue_positions_past_253_are_reported_as_unknown() -> None:
    names = [f"p{n}" for n in range(256)]
    room = Room(FloorConfig(max_queue_size=300), participants=names)
    server = room.server
    server.request("p0")
    positions = [server.request(name)[0].queue_position for name in names[1:]]
    assert positions[:3] == [1, 2, 3]
    assert positions[252] == 253
    assert positions[253:] == [255, 255]
