"""The floor control server of one room: 3GPP TS 24.380 §6.3 (on-network, controlling role).

Each ``ptt`` room (talkgroup) has one :class:`FloorControlServer`. It lives in the media
worker that owns the room, beside the media it gates, so it is a plain synchronous object:
no asyncio, no threads, an injectable clock, and its timers exposed as :meth:`next_deadline`
plus :meth:`tick`, which the worker's event loop wakes for. Every gateway turns its protocol
(MCPT RTCP APP packets, socket.io events, DTMF digits) into calls on it and renders what comes
back; the server never sees a wire format.

Two kinds of state machine, one class per 3GPP state (the State pattern), with timers and
counters as attributes and every state change appended to :attr:`FloorControlServer.trace`:

- the *general* machine of the call, TS 24.380 §6.3.4: 'Start-stop', 'G: Floor Idle',
  'G: Floor Taken', 'G: pending Floor Revoke' and 'Releasing' (:class:`GeneralState`),
  with timers T1 (end of RTP media), T2 (stop talking), T3 (stop talking grace) and
  T7 (Floor Idle) and counter C7;
- one machine *towards each floor participant*, §6.3.5: 'Start-stop',
  'U: not permitted and Floor Idle', 'U: not permitted and Floor Taken', 'U: permitted',
  'U: pending Floor Revoke', 'U: not permitted but sends media' and 'Releasing'
  (:class:`ParticipantState`), with timers T8 (Floor Revoke) and T20 (Floor Granted) and
  counter C20 on :class:`FloorParticipant`.

Every input method returns the :class:`FloorMessage` list it produced, each addressed to one
participant, to :data:`ALL`, or to :class:`AllExcept` one participant; room-level
:class:`FloorEvent` values (granted, taken, idle, denied, revoked, queued, released,
emergency) go to the ``events`` callback with a monotonic timestamp. :attr:`holder` is the
participant whose media the mixing matrix carries; it changes only inside these calls.

Every input first fires the timers that expired by its own time, so a late worker tick can
never let a request see a floor that has in fact gone idle; a timer's expiry is traced and
time-stamped at its deadline.

Broadcast messages are one message, not one per participant: the participants whose machine
is in one of the two 'U: not permitted and Floor Idle/Taken' states ("the crowd") move
together when Floor Idle or Floor Taken goes to all of them, and that move is traced once, as
machine ``"U:*"``. Participants in any other state are traced one by one as ``"U:<id>"``;
the general machine is ``"G"``. So a grant costs the same in a room of five or of five
thousand.

Arbitration, as DESIGN.md asks:

- Call types rank normal < imminent peril < emergency, then floor priority 0-255. A request
  revokes the holder (Revoke cause #4, "Media Burst pre-empted") only when it is of a higher
  call type; or of the same call type, at or above the room's pre-emptive priority, from a
  participant authorised for pre-emption, and above the holder's priority; or when a
  dispatcher calls :meth:`~FloorControlServer.override` or
  :meth:`~FloorControlServer.grant_to`. The pre-empting request waits at the head of the
  queue and is granted when the holder releases, falls silent (T1) or T3 expires (§6.3.4.4,
  §6.3.4.5).
- Any other request while the floor is taken is queued by call type, then priority, then
  arrival (first come, first served within a priority), and never cuts the holder off.
  A full queue denies with cause #7; a room without queueing with cause #1.
- A release from a queued participant cancels its request. When the holder releases, the
  head of the queue is granted in the same call, with the Ack bit set and T20 running.

Implementation options taken where TS 24.380 leaves the choice to the implementation:

- A Floor Ack for Floor Granted stops T20, as media from the holder does. When C20 reaches
  its limit, Floor Granted is no longer repeated and the floor stays taken: T1 takes it back
  if the holder never sends media.
- T7 repeats Floor Idle while the floor stays idle, at most C7 times in all. Where the room
  asks for acknowledgements, the repeat goes only to the participants that have not
  acknowledged that Floor Idle, and stops once all have.
- Floor Revoke is repeated on T8 while the revoked holder stays in 'U: pending Floor
  Revoke' (T3 bounds that). Policing media from participants without permission (Revoke
  cause #3) is a room option, off by default because SIP legs send media all the time; a
  policed participant that has stopped sending by the next T8 expiry rejoins the crowd.
- Pre-empting requests are always accepted, even past the queue's size or where the room
  does not queue; the size bounds ordinary requests.
- Queue Position Info is also sent, unasked, to queued participants whose position changed.

Not implemented: dual floor control and audio cut-in (§6.3.6), temporary group sessions
('G: Floor Initialising', 'U: not permitted and initiating'), implicit floor requests at call
set-up, broadcast group calls, and T4 (inactivity), which belongs to call control.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from bisect import insort
from collections import deque
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from typing import Any, ClassVar, Final, NamedTuple

__all__ = [
    "ALL",
    "AllExcept",
    "AllParticipants",
    "BurstEndReason",
    "CallType",
    "DenyCause",
    "FloorConfig",
    "FloorControlServer",
    "FloorEvent",
    "FloorEventType",
    "FloorIndicator",
    "FloorMessage",
    "FloorMessageType",
    "FloorParticipant",
    "FloorTransition",
    "GeneralState",
    "ParticipantState",
    "QueuedRequest",
    "Recipient",
    "RevokeCause",
    "Timer",
]

logger = logging.getLogger(__name__)

#: TS 24.380 §8.2.3.2: floor priority runs 0 (lowest) to 255 (highest).
MIN_PRIORITY = 0
MAX_PRIORITY = 255

#: TS 24.380 §8.2.3.5 Queue Info: position values with a meaning of their own.
QUEUE_POSITION_NOT_QUEUED = 254
QUEUE_POSITION_UNKNOWN = 255
MAX_QUEUE_POSITION = 253

#: TS 24.380 §8.2.3.10: the Message Sequence Number runs 0-65535, then wraps to 0.
SEQUENCE_MODULUS = 1 << 16
#: TS 24.380 §8.2.3.3: the Duration is a 16-bit count of seconds.
MAX_DURATION = 0xFFFF

#: TS 24.380 §8.2.2: the subtype's leading bit asks for a Floor Ack; the rest is the type.
ACK_REQUESTED_BIT = 0x10
SUBTYPE_MASK = 0x0F

# TS 24.380 table 11.1.3-1, timers in the floor control server (seconds).
DEFAULT_T1 = 4.0  # End of RTP media
DEFAULT_T2 = 30.0  # Stop talking: the longest burst
DEFAULT_T3 = 3.0  # Stop talking grace
DEFAULT_T7 = 1.0  # Floor Idle
DEFAULT_T8 = 1.0  # Floor Revoke
DEFAULT_T20 = 1.0  # Floor Granted
# TS 24.380 clause 11.2, counters in the floor control server: upper limits.
DEFAULT_C7 = 10  # Floor Idle
DEFAULT_C20 = 3  # Floor Granted

DEFAULT_MAX_QUEUE_SIZE = 16
DEFAULT_TRACE_LIMIT = 1024

#: The machine name of the general machine in the trace, and of the crowd (every
#: participant in a 'U: not permitted and Floor Idle/Taken' state at once).
GENERAL_MACHINE = "G"
CROWD_MACHINE = "U:*"
PARTICIPANT_MACHINE_PREFIX = "U:"

ParticipantId = str


class CallType(IntEnum):
    """TS 24.379 call types, in pre-emption order: a higher value pre-empts a lower one."""

    NORMAL = 0
    IMMINENT_PERIL = 1
    EMERGENCY = 2

    @property
    def label(self) -> str:
        """The name the talk-burst log and recordings use: normal, imminent-peril, emergency."""
        return self.name.lower().replace("_", "-")


class FloorMessageType(IntEnum):
    """TS 24.380 §8.2.2, table 8.2.2-1: floor control messages by MCPT subtype (no Ack bit)."""

    REQUEST = 0
    GRANTED = 1
    TAKEN = 2
    DENY = 3
    RELEASE = 4
    IDLE = 5
    REVOKE = 6
    QUEUE_POSITION_REQUEST = 8
    QUEUE_POSITION_INFO = 9
    ACK = 10
    #: Multi-talker control (TS 24.380 §8.2.2); the wire format knows it, this server does not.
    RELEASE_MULTI_TALKER = 15


class DenyCause(IntEnum):
    """TS 24.380 §8.2.6.2: Reject Cause values of Floor Deny."""

    ANOTHER_USER_HAS_PERMISSION = 1
    INTERNAL_ERROR = 2
    ONLY_ONE_PARTICIPANT = 3
    RETRY_AFTER_TIMER = 4
    RECEIVE_ONLY = 5
    NO_RESOURCES = 6
    QUEUE_FULL = 7
    OTHER = 255


class RevokeCause(IntEnum):
    """TS 24.380 §8.2.10.2: Reject Cause values of Floor Revoke."""

    ONLY_ONE_PARTICIPANT = 1
    MEDIA_BURST_TOO_LONG = 2
    NO_PERMISSION = 3
    PRE_EMPTED = 4
    NO_RESOURCES = 6
    OTHER = 255


#: The Reject Phrase sent with each cause (TS 24.380 §8.2.3.4 allows any text).
DENY_CAUSE_TEXT: Final[dict[DenyCause, str]] = {
    DenyCause.ANOTHER_USER_HAS_PERMISSION: "Another MCPTT client has permission",
    DenyCause.INTERNAL_ERROR: "Internal floor control server error",
    DenyCause.ONLY_ONE_PARTICIPANT: "Only one participant",
    DenyCause.RETRY_AFTER_TIMER: "Retry-after timer has not expired",
    DenyCause.RECEIVE_ONLY: "Receive only",
    DenyCause.NO_RESOURCES: "No resources available",
    DenyCause.QUEUE_FULL: "Queue full",
    DenyCause.OTHER: "Other reason",
}
REVOKE_CAUSE_TEXT: Final[dict[RevokeCause, str]] = {
    RevokeCause.ONLY_ONE_PARTICIPANT: "Only one MCPTT client",
    RevokeCause.MEDIA_BURST_TOO_LONG: "Media burst too long",
    RevokeCause.NO_PERMISSION: "No permission to send a Media Burst",
    RevokeCause.PRE_EMPTED: "Media Burst pre-empted",
    RevokeCause.NO_RESOURCES: "No resources available",
    RevokeCause.OTHER: "Other reason",
}
NOT_A_PARTICIPANT_TEXT = "Not a participant of this call"


class FloorIndicator(IntFlag):
    """TS 24.380 §8.2.3.15: the Floor Indicator bit map (A is the most significant bit)."""

    NORMAL_CALL = 0x8000
    BROADCAST_GROUP_CALL = 0x4000
    SYSTEM_CALL = 0x2000
    EMERGENCY_CALL = 0x1000
    IMMINENT_PERIL_CALL = 0x0800
    QUEUEING_SUPPORTED = 0x0400
    DUAL_FLOOR = 0x0200
    TEMPORARY_GROUP_CALL = 0x0100
    MULTI_TALKER = 0x0080


_CALL_TYPE_INDICATOR: Final[dict[CallType, FloorIndicator]] = {
    CallType.NORMAL: FloorIndicator.NORMAL_CALL,
    CallType.IMMINENT_PERIL: FloorIndicator.IMMINENT_PERIL_CALL,
    CallType.EMERGENCY: FloorIndicator.EMERGENCY_CALL,
}


# ----------------------------------------------------------------------- recipients
class AllParticipants:
    """Every participant of the call; use the :data:`ALL` instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ALL"


ALL: Final = AllParticipants()


@dataclass(frozen=True, slots=True)
class AllExcept:
    """Every participant of the call but one (Floor Taken goes to all but the new holder)."""

    participant: ParticipantId


Recipient = ParticipantId | AllParticipants | AllExcept


# ---------------------------------------------------------------------- the outputs
class FloorMessage(NamedTuple):
    """One floor control message from the server, in protocol-neutral form (immutable: one
    broadcast message is shared by every gateway that renders it).

    The fields follow the message contents of TS 24.380 §8.2.4 to §8.2.17; a field is
    ``None`` (or empty) where the message does not carry it:

    - ``duration``: Floor Granted, seconds left of T2 (§8.2.3.3);
    - ``priority``: Floor Granted, the granted floor priority (§8.2.3.2);
    - ``cause``/``cause_text``: Floor Deny and Floor Revoke, Reject Cause and phrase;
    - ``granted_party``/``user_id``/``alias``/``location``: Floor Taken, who holds the floor
      (its participant id, MCPTT ID, functional alias and last reported location);
    - ``queue_position``/``queue_priority``: Floor Queue Position Info (§8.2.3.5): position
      1 is next; :data:`QUEUE_POSITION_NOT_QUEUED` means not queued;
    - ``permission_to_request``: Floor Taken (§8.2.3.7);
    - ``sequence``: Floor Taken and Floor Idle only, the Message Sequence Number that binds
      the copies of one announcement together (§8.2.3.10): a repeat keeps the number;
    - ``indicator``: the Floor Indicator (§8.2.3.15);
    - ``message_type``: Floor Ack, the type acknowledged (the gateway adds the Ack bit the
      acknowledged message carried, §8.2.3.14);
    - ``ack_requested``: the receiver must answer with a Floor Ack (the subtype's Ack bit).
    """

    kind: FloorMessageType
    to: Recipient
    ack_requested: bool = False
    duration: int | None = None
    priority: int | None = None
    cause: DenyCause | RevokeCause | None = None
    cause_text: str = ""
    granted_party: ParticipantId | None = None
    user_id: str = ""
    alias: str = ""
    location: object | None = None
    queue_position: int | None = None
    queue_priority: int | None = None
    permission_to_request: bool | None = None
    sequence: int | None = None
    indicator: FloorIndicator | None = None
    message_type: FloorMessageType | None = None

    def reaches(self, participant: ParticipantId) -> bool:
        """Whether this message is addressed to ``participant``."""
        to = self.to
        if isinstance(to, AllParticipants):
            return True
        if isinstance(to, AllExcept):
            return to.participant != participant
        return to == participant


class FloorEventType(StrEnum):
    """Room-level floor events, for the media worker, the talk-burst log and the console."""

    GRANTED = "floor_granted"  # a talk burst starts: participant, call type, priority
    TAKEN = "floor_taken"  # the holder changed: participant is the new one, previous the old
    IDLE = "floor_idle"  # nobody holds the floor
    DENIED = "floor_denied"  # a request was refused: cause
    REVOKED = "floor_revoked"  # the holder was told to stop: cause
    QUEUED = "floor_queued"  # a request waits: position, priority, call type
    CANCELLED = "floor_queue_cancelled"  # a queued request left the queue ungranted: reason
    RELEASED = "floor_released"  # a talk burst ended: start, end, reason
    EMERGENCY = "floor_emergency"  # an emergency or imminent peril request arrived


class BurstEndReason(StrEnum):
    """Why a talk burst ended (the ``reason`` of :attr:`FloorEventType.RELEASED`)."""

    RELEASED = "released"  # Floor Release from the holder
    END_OF_MEDIA = "end_of_media"  # T1: the holder fell silent
    REVOKED = "revoked"  # T3: the revoked holder did not release in time
    LEFT = "left"  # the holder left the call
    CALL_RELEASED = "call_released"  # the call ended


class FloorEvent(NamedTuple):
    """One room-level floor event; ``t`` is the server clock (monotonic seconds)."""

    kind: FloorEventType
    t: float
    room: str
    participant: ParticipantId | None = None
    alias: str = ""
    user_id: str = ""
    call_type: CallType = CallType.NORMAL
    priority: int | None = None
    position: int | None = None
    location: object | None = None
    cause: DenyCause | RevokeCause | None = None
    reason: str = ""
    start: float | None = None
    end: float | None = None
    previous: ParticipantId | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for the control channel (``event`` names the kind)."""
        data: dict[str, Any] = {
            "event": self.kind.value,
            "t": self.t,
            "room": self.room,
            "participant": self.participant,
            "alias": self.alias,
            "user_id": self.user_id,
            "call_type": self.call_type.label,
        }
        optional = {
            "priority": self.priority,
            "position": self.position,
            "location": self.location,
            "cause": int(self.cause) if self.cause is not None else None,
            "reason": self.reason or None,
            "start": self.start,
            "end": self.end,
            "previous": self.previous,
        }
        data.update({key: value for key, value in optional.items() if value is not None})
        return data


class FloorTransition(NamedTuple):
    """One state change of one machine: ``machine`` is ``"G"``, ``"U:*"`` or ``"U:<id>"``."""

    t: float
    machine: str
    from_state: str
    to_state: str
    cause: str


# -------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class FloorConfig:
    """Floor control settings of one room; invalid values fail at construction.

    Timers are in seconds, defaults from TS 24.380 table 11.1.3-1; counters are upper limits
    (clause 11.2). ``pre_emptive_priority`` is the room's pre-emptive level: an authorised
    participant's request at or above it pre-empts a lower-priority holder of the same call
    type. ``max_queue_size`` 0 or ``queueing`` False: no queue, Floor Deny cause #1.
    ``deny_single_participant``: the only participant of the call is refused the floor
    (Deny cause #3) and a holder left alone is revoked (cause #1); off by default.
    ``ack_required``: Floor Taken, Idle, Deny and Queue Position Info ask for a Floor Ack, as
    does every Floor Granted (one granted from the queue always does). ``police_media``:
    media from a participant without permission is answered with Floor Revoke cause #3.
    ``queue_updates``: queued participants whose position changed are sent Floor Queue
    Position Info unasked.
    """

    t1: float = DEFAULT_T1
    t2: float = DEFAULT_T2
    t3: float = DEFAULT_T3
    t7: float = DEFAULT_T7
    t8: float = DEFAULT_T8
    t20: float = DEFAULT_T20
    c7: int = DEFAULT_C7
    c20: int = DEFAULT_C20
    queueing: bool = True
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    pre_emptive_priority: int = MAX_PRIORITY
    deny_single_participant: bool = False
    ack_required: bool = False
    police_media: bool = False
    queue_updates: bool = True

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t7", "t8", "t20"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"floor timer {name.upper()} must be a positive duration")
        if not (math.isfinite(self.t3) and self.t3 >= 0):
            raise ValueError("floor timer T3 must not be negative")
        for name in ("c7", "c20"):
            if getattr(self, name) < 1:
                raise ValueError(f"floor counter {name.upper()} must be at least 1")
        if self.max_queue_size < 0:
            raise ValueError("floor queue size must not be negative")
        _check_priority(self.pre_emptive_priority)

    @property
    def queue_enabled(self) -> bool:
        return self.queueing and self.max_queue_size > 0


def _check_priority(priority: int) -> int:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"floor priority out of range: {priority}")
    return priority


# --------------------------------------------------------------------------- timers
class _TimerQueue:
    """Deadlines of all running timers of one server, in a heap.

    A stopped timer's entry is dropped lazily, when it surfaces. A running timer moved later
    (T1 on every tick of the holder's media) only changes its deadline; its entry is pushed
    again when it surfaces, so restarting T1 costs no heap operation.
    """

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Timer]] = []
        self._order = itertools.count()

    def push(self, timer: Timer, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), timer.generation, timer))

    def _settle(self) -> None:
        heap = self._heap
        while heap:
            deadline, _, generation, timer = heap[0]
            if generation != timer.generation or timer.deadline is None:
                heapq.heappop(heap)
            elif timer.deadline != deadline:
                heapq.heapreplace(
                    heap, (timer.deadline, next(self._order), timer.generation, timer)
                )
            else:
                return

    def next_deadline(self) -> float | None:
        self._settle()
        return self._heap[0][0] if self._heap else None

    def pop_expired(self, now: float) -> Timer | None:
        """The running timer with the earliest deadline not after ``now``, now stopped."""
        self._settle()
        if not self._heap or self._heap[0][0] > now:
            return None
        timer = heapq.heappop(self._heap)[3]
        return timer


class Timer:
    """One TS 24.380 timer: its configured duration, its deadline while running, its expiry.

    ``generation`` changes on every start and stop, which invalidates older heap entries.
    """

    __slots__ = ("_expire", "_queue", "deadline", "duration", "generation", "name")

    def __init__(
        self, name: str, duration: float, queue: _TimerQueue, expire: Callable[[], None]
    ) -> None:
        self.name = name
        self.duration = duration
        self.deadline: float | None = None
        self.generation = 0
        self._queue = queue
        self._expire = expire

    @property
    def running(self) -> bool:
        return self.deadline is not None

    def start(self, now: float) -> None:
        """Start (or restart from now) the timer."""
        self.generation += 1
        self.deadline = now + self.duration
        self._queue.push(self, self.deadline)

    def restart(self, now: float) -> None:
        """Start the timer again from now; cheap when that only moves its deadline later."""
        deadline = now + self.duration
        if self.deadline is not None and deadline >= self.deadline:
            self.deadline = deadline
        else:
            self.start(now)

    def stop(self) -> None:
        if self.deadline is not None:
            self.generation += 1
            self.deadline = None

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - now)

    def fire(self) -> None:
        """Called by the server when the deadline passed: stop, then run the expiry."""
        self.stop()
        self._expire()


# ---------------------------------------------------------------------- participants
class QueuedRequest:
    """A floor request: as it arrives, and as it waits in the queue (§6.3.4.4, queueing).

    Queue order is ``tier`` (dispatcher, then pre-emptor, then ordinary), then call type,
    then priority, then arrival: first come, first served within a priority.
    """

    ORDINARY: ClassVar[int] = 0
    PRE_EMPTIVE: ClassVar[int] = 1
    DISPATCHER: ClassVar[int] = 2

    __slots__ = ("arrival", "call_type", "location", "participant", "priority", "tier")

    def __init__(
        self,
        participant: ParticipantId,
        call_type: CallType,
        priority: int,
        location: object | None,
        tier: int = ORDINARY,
        arrival: int = 0,
    ) -> None:
        self.participant = participant
        self.call_type = call_type
        self.priority = priority
        self.location = location
        self.tier = tier
        self.arrival = arrival

    def sort_key(self) -> tuple[int, int, int, int]:
        return (-self.tier, -self.call_type, -self.priority, self.arrival)

    def __repr__(self) -> str:
        return (
            f"QueuedRequest({self.participant!r}, {self.call_type.name}, "
            f"priority={self.priority}, tier={self.tier})"
        )


@dataclass(slots=True)
class _Burst:
    """The talk burst in progress: who holds the floor, how, and since when."""

    participant: ParticipantId
    call_type: CallType
    priority: int
    location: object | None
    start: float
    user_id: str
    alias: str


@dataclass(slots=True, eq=False)
class FloorParticipant:
    """The server's side of one floor participant (§6.3.5: "the associated floor participant").

    ``priority`` is the highest floor priority negotiated at join (a request asks for at most
    that, §6.2.1); ``state`` is set only while the participant's machine is in a state of its
    own, and is None while it follows the crowd ('U: not permitted and Floor Idle/Taken').
    """

    id: ParticipantId
    priority: int
    pre_emptive_allowed: bool
    receive_only: bool
    user_id: str
    alias: str
    t8: Timer
    t20: Timer
    c20: int = 0
    state: ParticipantState | None = None
    revoke_cause: RevokeCause = RevokeCause.OTHER
    #: Message Sequence Number of the last Floor Idle it acknowledged.
    idle_acked: int | None = None

    @property
    def machine(self) -> str:
        return PARTICIPANT_MACHINE_PREFIX + self.id


# ============================================================ the general machine (§6.3.4)
class GeneralState:
    """A state of the general floor control machine (TS 24.380 §6.3.4).

    §6.3.4.1: an input with no procedure in the current state is discarded and the machine
    stays where it is; these defaults do exactly that.
    """

    name: ClassVar[str] = ""

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        srv._discard(self, "Floor Request", member.id)

    def dispatch(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest, cause: str
    ) -> None:
        srv._discard(self, cause, member.id)

    def release(self, srv: FloorControlServer) -> None:
        srv._discard(self, "Floor Release", srv.holder)

    def media(self, srv: FloorControlServer) -> None:
        """RTP media from the holder."""

    def holder_left(self, srv: FloorControlServer) -> None:
        srv._discard(self, "holder left", srv.holder)

    def revoke(self, srv: FloorControlServer, cause: RevokeCause, why: str) -> None:
        srv._discard(self, why, srv.holder)

    def expire_t1(self, srv: FloorControlServer) -> None:
        """T1 (end of RTP media) expired."""

    def expire_t2(self, srv: FloorControlServer) -> None:
        """T2 (stop talking) expired."""

    def expire_t3(self, srv: FloorControlServer) -> None:
        """T3 (stop talking grace) expired."""

    def expire_t7(self, srv: FloorControlServer) -> None:
        """T7 (Floor Idle) expired."""


class GStartStop(GeneralState):
    """'Start-stop' (§6.3.4.2): before the call is initiated and after it is released."""

    name = "Start-stop"

    def initialise(self, srv: FloorControlServer) -> None:
        """§6.3.4.2.2, MCPTT call initialisation: enter 'G: Floor Idle'.

        Nobody is told yet: each joining participant gets Floor Idle from its own machine
        (§6.3.5.2.2), so there is nothing for T7 to repeat.
        """
        srv._set_state(G_FLOOR_IDLE, "call initialised")


class GFloorIdle(GeneralState):
    """'G: Floor Idle' (§6.3.4.3): nobody holds the floor."""

    name = "G: Floor Idle"

    def enter(self, srv: FloorControlServer, cause: str) -> None:
        """§6.3.4.3.2: grant the head of the queue, if any; else Floor Idle to all, T7, C7."""
        srv._set_state(self, cause)
        if srv._queue:
            before = srv._positions()
            head = srv._queue.pop(0)
            srv._grant(srv._members[head.participant], head, from_queue=True)
            srv._notify_moved(before)
            return
        srv._broadcast_idle()
        srv.c7 = 1
        srv.t7.start(srv._now)
        srv._emit(FloorEventType.IDLE, previous=srv._previous_holder)
        srv._previous_holder = None

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        """§6.3.4.3.3: deny the only participant (#3) or a receive-only one (#5), else grant."""
        if srv.config.deny_single_participant and len(srv._members) == 1:
            srv._deny(member, DenyCause.ONLY_ONE_PARTICIPANT, req)
        elif member.receive_only:
            srv._deny(member, DenyCause.RECEIVE_ONLY, req)
        else:
            srv.t7.stop()
            srv._grant(member, req, from_queue=False)

    def dispatch(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest, cause: str
    ) -> None:
        srv.t7.stop()
        srv._grant(member, req, from_queue=False, cause=cause)

    def expire_t7(self, srv: FloorControlServer) -> None:
        """§6.3.4.3.4: repeat Floor Idle, same sequence number, until C7 reaches its limit."""
        if srv.c7 >= srv.config.c7:
            return
        if srv._repeat_idle():
            srv.c7 += 1
            srv.t7.start(srv._now)


class GFloorTaken(GeneralState):
    """'G: Floor Taken' (§6.3.4.4): the holder has permission to send media."""

    name = "G: Floor Taken"

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        """§6.3.4.4: a request from the holder repeats Floor Granted with what is left of T2;
        one from anyone else reaches here only when it pre-empts the holder."""
        if member.id == srv.holder:
            srv._send_granted(member, ack_requested=member.t20.running)
        else:
            self._pre_empt(srv, req, QueuedRequest.PRE_EMPTIVE, "pre-empted")

    def dispatch(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest, cause: str
    ) -> None:
        if member.id != srv.holder:
            self._pre_empt(srv, req, QueuedRequest.DISPATCHER, cause)

    @staticmethod
    def _pre_empt(srv: FloorControlServer, req: QueuedRequest, tier: int, cause: str) -> None:
        """§6.3.4.4, pre-emptive request: stop T1, T2 and T20, queue the request at the head,
        tell it its position, and revoke the holder with cause #4."""
        srv.t1.stop()
        srv.t2.stop()
        srv._holder_member().t20.stop()
        srv._enqueue_pre_emptor(req, tier)
        G_PENDING_FLOOR_REVOKE.enter(srv, RevokeCause.PRE_EMPTED, cause)

    def media(self, srv: FloorControlServer) -> None:
        """§6.3.4.4: media from the holder starts T2 if idle, restarts T1 and stops T20."""
        now = srv._now
        if srv.t2.deadline is None:
            srv.t2.start(now)
        srv.t1.restart(now)
        holder = srv._holder_member()
        if holder.t20.deadline is not None:
            holder.t20.stop()

    def release(self, srv: FloorControlServer) -> None:
        """§6.3.4.4: Floor Release from the holder: stop T1, T2, T20; enter 'G: Floor Idle'."""
        srv._end_burst(BurstEndReason.RELEASED)
        G_FLOOR_IDLE.enter(srv, "Floor Release")

    def holder_left(self, srv: FloorControlServer) -> None:
        """§6.3.4.6: the holder's call leg is released: the floor is released with it."""
        srv._end_burst(BurstEndReason.LEFT)
        G_FLOOR_IDLE.enter(srv, "holder left")

    def revoke(self, srv: FloorControlServer, cause: RevokeCause, why: str) -> None:
        """Revoke the holder (T2 expiry, dispatcher, receive-only, left alone)."""
        srv.t1.stop()
        srv.t2.stop()
        srv._holder_member().t20.stop()
        G_PENDING_FLOOR_REVOKE.enter(srv, cause, why)

    def expire_t1(self, srv: FloorControlServer) -> None:
        """§6.3.4.4: T1 expired, the holder fell silent: stop T2, T20; 'G: Floor Idle'."""
        srv._end_burst(BurstEndReason.END_OF_MEDIA)
        G_FLOOR_IDLE.enter(srv, "T1 expired")

    def expire_t2(self, srv: FloorControlServer) -> None:
        """§6.3.4.4: T2 expired, the burst is too long: revoke with cause #2."""
        self.revoke(srv, RevokeCause.MEDIA_BURST_TOO_LONG, "T2 expired")


class GPendingFloorRevoke(GeneralState):
    """'G: pending Floor Revoke' (§6.3.4.5): the holder was told to stop and has T3 to do so."""

    name = "G: pending Floor Revoke"

    def enter(self, srv: FloorControlServer, cause: RevokeCause, why: str) -> None:
        """§6.3.4.5.2: Floor Revoke to the holder with the cause, start T3."""
        srv._set_state(self, why)
        holder = srv._holder_member()
        srv._participant_state(holder).revoked(srv, holder, cause)
        srv.t3.start(srv._now)
        srv._emit_burst(FloorEventType.REVOKED, cause=cause)

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        """A further pre-empting request waits at the head beside the first; no new Revoke."""
        srv._enqueue_pre_emptor(req, QueuedRequest.PRE_EMPTIVE)

    def dispatch(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest, cause: str
    ) -> None:
        if member.id != srv.holder:
            srv._enqueue_pre_emptor(req, QueuedRequest.DISPATCHER)

    def media(self, srv: FloorControlServer) -> None:
        """§6.3.4.5: media from the revoked holder (still forwarded) restarts T1."""
        srv.t1.restart(srv._now)

    def release(self, srv: FloorControlServer) -> None:
        """§6.3.4.5: Floor Release: stop T1 and T3, enter 'G: Floor Idle'."""
        srv._end_burst(BurstEndReason.RELEASED)
        G_FLOOR_IDLE.enter(srv, "Floor Release")

    def holder_left(self, srv: FloorControlServer) -> None:
        srv._end_burst(BurstEndReason.LEFT)
        G_FLOOR_IDLE.enter(srv, "holder left")

    def expire_t3(self, srv: FloorControlServer) -> None:
        """§6.3.4.5: T3 expired: the floor is taken back; 'G: Floor Idle'."""
        srv._end_burst(BurstEndReason.REVOKED)
        G_FLOOR_IDLE.enter(srv, "T3 expired")

    def expire_t1(self, srv: FloorControlServer) -> None:
        """§6.3.4.5: T1 expired: stop T3; 'G: Floor Idle'."""
        srv._end_burst(BurstEndReason.END_OF_MEDIA)
        G_FLOOR_IDLE.enter(srv, "T1 expired")


class GReleasing(GeneralState):
    """'Releasing' (§6.3.4.7): the call is being released; every input is discarded."""

    name = "Releasing"


G_START_STOP: Final = GStartStop()
G_FLOOR_IDLE: Final = GFloorIdle()
G_FLOOR_TAKEN: Final = GFloorTaken()
G_PENDING_FLOOR_REVOKE: Final = GPendingFloorRevoke()
G_RELEASING: Final = GReleasing()


# ============================================ the machine towards a participant (§6.3.5)
class ParticipantState:
    """A state of the machine towards one floor participant (TS 24.380 §6.3.5).

    Its inputs are the participant's floor messages and media, its timers, and the
    arbitration logic's directives (``granted``, ``revoked``, ``floor_idle``,
    ``floor_taken``). Inputs with no procedure are discarded (§6.3.5.1).
    """

    name: ClassVar[str] = ""

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        srv._discard(self, "Floor Request", member.id)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        srv._discard(self, "Floor Release", member.id)

    def queue_position_request(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        srv._discard(self, "Floor Queue Position Request", member.id)

    def media(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """RTP media from this participant; without permission, discarded by the mixer."""

    def ack(
        self, srv: FloorControlServer, member: FloorParticipant, kind: FloorMessageType
    ) -> None:
        srv._discard(self, f"Floor Ack ({kind.name})", member.id)

    def expire_t8(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """T8 (Floor Revoke) expired."""

    def expire_t20(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """T20 (Floor Granted) expired."""

    # Directives from the arbitration logic.
    def granted(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Floor Granted was sent: enter 'U: permitted'."""
        srv._set_own(member, U_PERMITTED, "Floor Granted")

    def revoked(
        self, srv: FloorControlServer, member: FloorParticipant, cause: RevokeCause
    ) -> None:
        srv._discard(self, "revoke", member.id)

    def floor_idle(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Floor Idle went to everyone; a participant with a state of its own may leave it."""

    def floor_taken(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Floor Taken went to everyone but the new holder."""


class _NotPermitted(ParticipantState):
    """Common procedures of the two crowd states (§6.3.5.3 and §6.3.5.4)."""

    def media(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.3/§6.3.5.4: media without permission: Floor Revoke cause #3 (if policed)."""
        if srv.config.police_media:
            U_NOT_PERMITTED_SENDS_MEDIA.enter(srv, member)

    def ack(
        self, srv: FloorControlServer, member: FloorParticipant, kind: FloorMessageType
    ) -> None:
        if kind is FloorMessageType.IDLE:
            member.idle_acked = srv._sequence


class UNotPermittedFloorIdle(_NotPermitted):
    """'U: not permitted and Floor Idle' (§6.3.5.3)."""

    name = "U: not permitted and Floor Idle"

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        """§6.3.5.3: forward the request to the arbitration logic."""
        srv._state.request(srv, member, req)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.3: nothing to release; tell the participant again that the floor is idle."""
        srv._send_idle_to(member.id)


class UNotPermittedFloorTaken(_NotPermitted):
    """'U: not permitted and Floor Taken' (§6.3.5.4): someone else holds the floor."""

    name = "U: not permitted and Floor Taken"

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        """§6.3.5.4: receive-only: Deny #5; pre-emptive: to the arbitration logic; else queue
        (Queue Position Info), Deny #7 when the queue is full, #1 without queueing."""
        if member.receive_only:
            srv._deny(member, DenyCause.RECEIVE_ONLY, req)
        elif srv._pre_empts(member, req):
            srv._state.request(srv, member, req)
        else:
            srv._enqueue(member, req)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.4: a Floor Release cancels a queued request; Floor Taken tells who talks."""
        srv._cancel_queued(member.id, "cancelled")
        srv._send_taken_to(member.id)

    def queue_position_request(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.4: answer with Floor Queue Position Info (254: not queued)."""
        srv._send_queue_position(member.id)


class UPermitted(ParticipantState):
    """'U: permitted' (§6.3.5.5): the participant holds the floor."""

    name = "U: permitted"

    def request(
        self, srv: FloorControlServer, member: FloorParticipant, req: QueuedRequest
    ) -> None:
        srv._state.request(srv, member, req)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.5: forward the Floor Release to the arbitration logic."""
        srv._state.release(srv)

    def media(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        srv._state.media(srv)

    def ack(
        self, srv: FloorControlServer, member: FloorParticipant, kind: FloorMessageType
    ) -> None:
        """A Floor Ack for Floor Granted stops T20 (an implementation option)."""
        if kind is FloorMessageType.GRANTED:
            member.t20.stop()

    def granted(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Floor Granted again (the holder asked again): stay."""

    def expire_t20(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.4.4: T20 expired: repeat Floor Granted until C20 reaches its limit, then stop
        repeating and stay: T1 takes the floor back if no media ever comes."""
        if member.c20 >= srv.config.c20:
            srv._trace_note(member.machine, self.name, "C20 reached its limit")
            return
        member.c20 += 1
        srv._send_granted(member, ack_requested=True)
        member.t20.start(srv._now)

    def revoked(
        self, srv: FloorControlServer, member: FloorParticipant, cause: RevokeCause
    ) -> None:
        """Floor Revoke to the holder; enter 'U: pending Floor Revoke' and start T8."""
        member.t20.stop()
        U_PENDING_FLOOR_REVOKE.enter(srv, member, cause)

    def floor_idle(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        member.t20.stop()
        srv._leave_own(member, "Floor Idle")

    def floor_taken(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        member.t20.stop()
        srv._leave_own(member, "Floor Taken")


class UPendingFloorRevoke(ParticipantState):
    """'U: pending Floor Revoke' (§6.3.5.6): the holder was sent Floor Revoke."""

    name = "U: pending Floor Revoke"

    def enter(self, srv: FloorControlServer, member: FloorParticipant, cause: RevokeCause) -> None:
        member.revoke_cause = cause
        srv._send_revoke(member.id, cause)
        srv._set_own(member, self, f"Floor Revoke #{int(cause)}")
        member.t8.start(srv._now)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        srv._state.release(srv)

    def media(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        srv._state.media(srv)

    def expire_t8(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.6: T8 expired: repeat Floor Revoke with the same cause, restart T8."""
        srv._send_revoke(member.id, member.revoke_cause)
        member.t8.start(srv._now)

    def floor_idle(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        member.t8.stop()
        srv._leave_own(member, "Floor Idle")

    def floor_taken(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        member.t8.stop()
        srv._leave_own(member, "Floor Taken")


class UNotPermittedSendsMedia(ParticipantState):
    """'U: not permitted but sends media' (§6.3.5.7): media without permission.

    Media that keeps coming is noted for the whole room at once, by
    :meth:`FloorControlServer.media_from`, so this state has no per-participant media input.
    """

    name = "U: not permitted but sends media"

    def enter(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Floor Revoke cause #3 to the participant; start T8."""
        member.revoke_cause = RevokeCause.NO_PERMISSION
        srv._send_revoke(member.id, RevokeCause.NO_PERMISSION)
        srv._set_own(member, self, "media without permission")
        srv._policed.add(member.id)
        member.t8.start(srv._now)

    def release(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """§6.3.5.7: Floor Release: back to the crowd, told the floor's state."""
        self._leave(srv, member, "Floor Release")

    def granted(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Granted from the queue or by a dispatcher while still being policed."""
        self._leave(srv, member, "Floor Granted", tell=False)
        srv._set_own(member, U_PERMITTED, "Floor Granted")

    def expire_t8(self, srv: FloorControlServer, member: FloorParticipant) -> None:
        """Repeat Floor Revoke while media keeps coming; once it stopped, rejoin the crowd."""
        if member.id in srv._media_seen:
            srv._media_seen.discard(member.id)
            srv._send_revoke(member.id, RevokeCause.NO_PERMISSION)
            member.t8.start(srv._now)
        else:
            self._leave(srv, member, "media stopped")

    @staticmethod
    def _leave(
        srv: FloorControlServer, member: FloorParticipant, cause: str, *, tell: bool = True
    ) -> None:
        member.t8.stop()
        srv._policed.discard(member.id)
        srv._media_seen.discard(member.id)
        srv._leave_own(member, cause)
        if tell:
            srv._send_floor_state_to(member.id)


class UStartStop(ParticipantState):
    """'Start-stop' (§6.3.5.2): before the participant's session and after it ends."""

    name = "Start-stop"


class UReleasing(ParticipantState):
    """'Releasing' (§6.3.5.9): the participant's session is being released."""

    name = "Releasing"


U_START_STOP: Final = UStartStop()
U_NOT_PERMITTED_FLOOR_IDLE: Final = UNotPermittedFloorIdle()
U_NOT_PERMITTED_FLOOR_TAKEN: Final = UNotPermittedFloorTaken()
U_PERMITTED: Final = UPermitted()
U_PENDING_FLOOR_REVOKE: Final = UPendingFloorRevoke()
U_NOT_PERMITTED_SENDS_MEDIA: Final = UNotPermittedSendsMedia()
U_RELEASING: Final = UReleasing()


# ======================================================================== the server
class FloorControlServer:
    """The floor control server of one call (room): both machines, the queue and timers.

    ``clock`` gives monotonic seconds and is read once per input; :meth:`tick` may be given
    the time instead. ``events`` receives every :class:`FloorEvent`. Every input returns the
    messages it produced, in order.
    """

    def __init__(
        self,
        room: str = "",
        config: FloorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        events: Callable[[FloorEvent], None] | None = None,
        trace_limit: int = DEFAULT_TRACE_LIMIT,
    ) -> None:
        self.room = room
        self.config = config if config is not None else FloorConfig()
        self._clock = clock
        self._events = events
        #: Every state change, oldest first (bounded: the oldest are dropped).
        self.trace: deque[FloorTransition] = deque(maxlen=trace_limit)
        #: Inputs discarded because their state has no procedure for them (§6.3.4.1).
        self.discarded = 0
        cfg = self.config
        self._timers = _TimerQueue()
        self.t1 = Timer("T1", cfg.t1, self._timers, self._expire_t1)
        self.t2 = Timer("T2", cfg.t2, self._timers, self._expire_t2)
        self.t3 = Timer("T3", cfg.t3, self._timers, self._expire_t3)
        self.t7 = Timer("T7", cfg.t7, self._timers, self._expire_t7)
        self.c7 = 0
        self._state: GeneralState = G_START_STOP
        self._crowd: ParticipantState = U_NOT_PERMITTED_FLOOR_IDLE
        self._members: dict[ParticipantId, FloorParticipant] = {}
        self._own: dict[ParticipantId, FloorParticipant] = {}
        self._policed: set[ParticipantId] = set()
        self._media_seen: set[ParticipantId] = set()
        self._queue: list[QueuedRequest] = []
        self._burst: _Burst | None = None
        self._previous_holder: ParticipantId | None = None
        self._sequence = 0
        self._arrivals = 0
        self._now = 0.0
        self._out: list[FloorMessage] = []
        queueing = FloorIndicator.QUEUEING_SUPPORTED if cfg.queue_enabled else FloorIndicator(0)
        self._indicators = {
            call_type: indicator | queueing for call_type, indicator in _CALL_TYPE_INDICATOR.items()
        }

    # ------------------------------------------------------------------ observation
    @property
    def state(self) -> str:
        """The general machine's state name."""
        return self._state.name

    @property
    def holder(self) -> ParticipantId | None:
        """Who holds the floor (also while being revoked): the mix carries only this one."""
        return self._burst.participant if self._burst is not None else None

    @property
    def call_type(self) -> CallType:
        """The call type of the burst in progress (normal while idle)."""
        return self._burst.call_type if self._burst is not None else CallType.NORMAL

    @property
    def queue(self) -> tuple[ParticipantId, ...]:
        """Queued participants, next first."""
        return tuple(entry.participant for entry in self._queue)

    @property
    def participants(self) -> tuple[ParticipantId, ...]:
        return tuple(self._members)

    def participant(self, participant: ParticipantId) -> FloorParticipant:
        """The server's record of a participant (its timers, counters and state)."""
        try:
            return self._members[participant]
        except KeyError:
            raise KeyError(f"unknown participant: {participant}") from None

    def participant_state(self, participant: ParticipantId) -> str:
        """The state name of the machine towards ``participant``."""
        return self._participant_state(self.participant(participant)).name

    def queue_position(self, participant: ParticipantId) -> int | None:
        """1-based position in the queue, or None when not queued."""
        for index, entry in enumerate(self._queue):
            if entry.participant == participant:
                return index + 1
        return None

    def next_deadline(self) -> float | None:
        """When the earliest running timer expires (clock seconds), or None."""
        return self._timers.next_deadline()

    # ----------------------------------------------------------------------- inputs
    def join(
        self,
        participant: ParticipantId,
        *,
        priority: int = MIN_PRIORITY,
        pre_emptive_allowed: bool = False,
        receive_only: bool = False,
        user_id: str = "",
        alias: str = "",
    ) -> list[FloorMessage]:
        """A participant joins the call (§6.3.5.2.2): it is told Floor Idle or Floor Taken.

        ``priority`` is the highest floor priority it may request; ``pre_emptive_allowed``
        authorises it for the room's pre-emptive priority. The first join initiates the
        call (§6.3.4.2.2).
        """
        if participant in self._members:
            raise ValueError(f"participant already joined: {participant}")
        _check_priority(priority)
        self._begin()
        if self._state is G_START_STOP:
            G_START_STOP.initialise(self)
        member = self._new_member(participant, priority, pre_emptive_allowed, receive_only)
        member.user_id = user_id
        member.alias = alias
        self._members[participant] = member
        self._trace(member.machine, U_START_STOP.name, self._crowd.name, "session initiated")
        self._send_floor_state_to(participant)
        return self._finish()

    def leave(self, participant: ParticipantId) -> list[FloorMessage]:
        """A participant leaves or disconnects (§6.3.5.8, §6.3.4.6).

        A holder's floor is released with it and the next queued request granted; a queued
        request is cancelled. Unknown participants are ignored.
        """
        self._begin()
        member = self._members.get(participant)
        if member is None:
            return self._finish()
        was_holder = participant == self.holder
        member.t8.stop()
        member.t20.stop()
        self._trace(member.machine, self._participant_state(member).name, U_RELEASING.name, "left")
        member.state = U_RELEASING
        self._own.pop(participant, None)
        self._policed.discard(participant)
        self._media_seen.discard(participant)
        del self._members[participant]
        self._cancel_queued(participant, "left")
        if was_holder:
            self._state.holder_left(self)
        self._trace(member.machine, U_RELEASING.name, U_START_STOP.name, "resources released")
        holder = self.holder
        if (
            self.config.deny_single_participant
            and len(self._members) == 1
            and holder is not None
            and self._state is G_FLOOR_TAKEN
        ):
            self._state.revoke(self, RevokeCause.ONLY_ONE_PARTICIPANT, "only one participant")
        return self._finish()

    def request(
        self,
        participant: ParticipantId,
        *,
        priority: int | None = None,
        call_type: CallType = CallType.NORMAL,
        location: object | None = None,
    ) -> list[FloorMessage]:
        """Floor Request (§6.3.5.3, §6.3.5.4, §6.3.4.3, §6.3.4.4).

        ``priority`` defaults to the participant's negotiated priority and is capped by it
        (§6.2.1). A participant that has not joined is denied with cause #255.
        """
        if priority is not None:
            _check_priority(priority)
        self._begin()
        member = self._members.get(participant)
        if member is None:
            self._send(
                FloorMessage(
                    FloorMessageType.DENY,
                    participant,
                    cause=DenyCause.OTHER,
                    cause_text=NOT_A_PARTICIPANT_TEXT,
                )
            )
            self._emit(FloorEventType.DENIED, participant=participant, cause=DenyCause.OTHER)
            return self._finish()
        granted_priority = member.priority if priority is None else min(priority, member.priority)
        req = QueuedRequest(participant, CallType(call_type), granted_priority, location)
        if req.call_type is not CallType.NORMAL:
            self._emit_member(FloorEventType.EMERGENCY, member, req)
        self._participant_state(member).request(self, member, req)
        return self._finish()

    def release(
        self, participant: ParticipantId, *, ack_requested: bool = False
    ) -> list[FloorMessage]:
        """Floor Release: the holder ends its burst; a queued participant cancels its request.

        ``ack_requested``: the Release asked for a Floor Ack, which is sent first.
        """
        self._begin()
        member = self._members.get(participant)
        if member is None:
            self._discard(self._state, "Floor Release", participant)
            return self._finish()
        if ack_requested:
            self._send(
                FloorMessage(
                    FloorMessageType.ACK, participant, message_type=FloorMessageType.RELEASE
                )
            )
        self._participant_state(member).release(self, member)
        return self._finish()

    def queue_position_request(self, participant: ParticipantId) -> list[FloorMessage]:
        """Floor Queue Position Request (§6.3.5.4): answered with Queue Position Info."""
        self._begin()
        member = self._members.get(participant)
        if member is None:
            self._discard(self._state, "Floor Queue Position Request", participant)
        else:
            self._participant_state(member).queue_position_request(self, member)
        return self._finish()

    def ack(
        self, participant: ParticipantId, message_type: FloorMessageType | int
    ) -> list[FloorMessage]:
        """Floor Ack; ``message_type`` may carry the Ack bit (§8.2.3.14). Never fails."""
        self._begin()
        member = self._members.get(participant)
        try:
            kind = FloorMessageType(int(message_type) & SUBTYPE_MASK)
        except ValueError:
            kind = None
        if member is None or kind is None:
            self._discard(self._state, "Floor Ack", participant)
        else:
            self._participant_state(member).ack(self, member, kind)
        return self._finish()

    def media(self, participant: ParticipantId) -> list[FloorMessage]:
        """RTP media seen from one participant (restarts T1 for the holder)."""
        return self.media_from((participant,))

    def media_from(self, participants: Iterable[ParticipantId]) -> list[FloorMessage]:
        """RTP media seen this tick from these participants; the worker calls it once a tick.

        The holder's case is a set lookup; other senders are looked at only when the room
        polices media, and then only those not already being policed.
        """
        self._begin()
        burst = self._burst
        senders = participants if isinstance(participants, Set) else frozenset(participants)
        if burst is not None and burst.participant in senders:
            holder = self._members[burst.participant]
            self._participant_state(holder).media(self, holder)
        if self.config.police_media and senders:
            self._police(senders)
        return self._finish()

    def tick(self, now: float | None = None) -> list[FloorMessage]:
        """Fire the timers that expired by ``now`` (default: the clock).

        The worker calls it when :meth:`next_deadline` has passed; calling it early or often
        is harmless. Also available as :meth:`fire`.
        """
        self._begin(now)
        return self._finish()

    fire = tick

    # ---------------------------------------------------------- dispatcher actions
    def revoke(
        self, participant: ParticipantId | None = None, cause: RevokeCause = RevokeCause.OTHER
    ) -> list[FloorMessage]:
        """Revoke the holder (``participant`` None: whoever holds it) with ``cause``.

        Naming someone who does not hold the floor (it changed meanwhile) does nothing.
        """
        self._begin()
        holder = self.holder
        if holder is None or (participant is not None and participant != holder):
            self._discard(self._state, "revoke", participant)
        else:
            self._state.revoke(self, RevokeCause(cause), "dispatcher revoke")
        return self._finish()

    def grant_to(self, participant: ParticipantId) -> list[FloorMessage]:
        """Give the floor to ``participant``, pre-empting the holder if needed (cause #4)."""
        return self._dispatch(participant, None, "grant_to")

    def override(
        self,
        participant: ParticipantId,
        *,
        call_type: CallType = CallType.NORMAL,
        location: object | None = None,
    ) -> list[FloorMessage]:
        """A dispatcher takes the floor for ``participant`` (itself), pre-empting the holder."""
        return self._dispatch(participant, (CallType(call_type), location), "override")

    def set_receive_only(
        self, participant: ParticipantId, receive_only: bool
    ) -> list[FloorMessage]:
        """Make a participant receive-only (or not): its holder burst is revoked (cause #3)
        and its queued request denied (cause #5)."""
        member = self.participant(participant)
        self._begin()
        if member.receive_only == receive_only:
            return self._finish()
        member.receive_only = receive_only
        if receive_only:
            if participant == self.holder:
                self._state.revoke(self, RevokeCause.NO_PERMISSION, "receive only")
            before = self._positions()
            entry = self._remove_queued(participant)
            if entry is not None:
                self._deny(member, DenyCause.RECEIVE_ONLY, entry)
                self._notify_moved(before)
        return self._finish()

    def release_call(self) -> list[FloorMessage]:
        """The call ends (§6.3.4.7, §6.3.5.9): both machines go through 'Releasing' to
        'Start-stop', timers stop, the queue empties; no messages are sent."""
        self._begin()
        if self._state is G_START_STOP:
            return self._finish()
        if self._burst is not None:
            self._end_burst(BurstEndReason.CALL_RELEASED)
        for timer in (self.t1, self.t2, self.t3, self.t7):
            timer.stop()
        self._set_state(G_RELEASING, "call released")
        for member in self._own.values():
            member.t8.stop()
            member.t20.stop()
            self._trace(
                member.machine, self._own_state(member).name, U_RELEASING.name, "call released"
            )
        self._trace(CROWD_MACHINE, self._crowd.name, U_RELEASING.name, "call released")
        for entry in self._queue:
            self._emit(
                FloorEventType.CANCELLED, participant=entry.participant, reason="call released"
            )
        self._queue.clear()
        self._own.clear()
        self._policed.clear()
        self._media_seen.clear()
        self._members.clear()
        self._trace(CROWD_MACHINE, U_RELEASING.name, U_START_STOP.name, "resources released")
        self._set_state(G_START_STOP, "resources released")
        self._crowd = U_NOT_PERMITTED_FLOOR_IDLE
        self._previous_holder = None
        return self._finish()

    # ------------------------------------------------------------ input plumbing
    def _begin(self, now: float | None = None) -> None:
        """Start an input: read the clock, then fire every timer that expired by then."""
        now = self._clock() if now is None else now
        while (timer := self._timers.pop_expired(now)) is not None:
            self._now = timer.deadline if timer.deadline is not None else now
            timer.fire()
        self._now = now

    def _finish(self) -> list[FloorMessage]:
        out, self._out = self._out, []
        return out

    def _dispatch(
        self,
        participant: ParticipantId,
        how: tuple[CallType, object | None] | None,
        cause: str,
    ) -> list[FloorMessage]:
        member = self.participant(participant)
        if member.receive_only:
            raise ValueError(f"participant is receive-only: {participant}")
        self._begin()
        queued = next((e for e in self._queue if e.participant == participant), None)
        if how is not None:
            call_type, location = how
        elif queued is not None:
            call_type, location = queued.call_type, queued.location
        else:
            call_type, location = CallType.NORMAL, None
        req = QueuedRequest(participant, call_type, member.priority, location)
        if call_type is not CallType.NORMAL:
            self._emit_member(FloorEventType.EMERGENCY, member, req)
        self._state.dispatch(self, member, req, cause)
        return self._finish()

    def _police(self, senders: Set[ParticipantId]) -> None:
        """Media from participants without permission (§6.3.5.3, §6.3.5.4, §6.3.5.7).

        Set operations only, but for participants seen sending for the first time: those
        already policed are marked in one union.
        """
        offenders = self._members.keys() & senders
        holder = self.holder
        if holder is not None:
            offenders.discard(holder)
        if not offenders:
            return
        self._media_seen |= offenders & self._policed
        for participant in sorted(offenders - self._policed):
            member = self._members[participant]
            self._participant_state(member).media(self, member)

    # ----------------------------------------------------------------- machines
    def _participant_state(self, member: FloorParticipant) -> ParticipantState:
        return member.state if member.state is not None else self._crowd

    @staticmethod
    def _own_state(member: FloorParticipant) -> ParticipantState:
        assert member.state is not None
        return member.state

    def _new_member(
        self, participant: ParticipantId, priority: int, pre_emptive: bool, receive_only: bool
    ) -> FloorParticipant:
        cfg = self.config

        def expire_t8() -> None:
            self._participant_state(member).expire_t8(self, member)

        def expire_t20() -> None:
            self._participant_state(member).expire_t20(self, member)

        member = FloorParticipant(
            id=participant,
            priority=priority,
            pre_emptive_allowed=pre_emptive,
            receive_only=receive_only,
            user_id="",
            alias="",
            t8=Timer("T8", cfg.t8, self._timers, expire_t8),
            t20=Timer("T20", cfg.t20, self._timers, expire_t20),
        )
        return member

    def _holder_member(self) -> FloorParticipant:
        assert self._burst is not None
        return self._members[self._burst.participant]

    def _set_state(self, state: GeneralState, cause: str) -> None:
        if state is not self._state:
            self._trace(GENERAL_MACHINE, self._state.name, state.name, cause)
            self._state = state

    def _set_crowd(self, state: ParticipantState, cause: str) -> None:
        if state is not self._crowd:
            self._trace(CROWD_MACHINE, self._crowd.name, state.name, cause)
            self._crowd = state

    def _set_own(self, member: FloorParticipant, state: ParticipantState, cause: str) -> None:
        current = self._participant_state(member)
        if state is not current:
            self._trace(member.machine, current.name, state.name, cause)
        member.state = state
        self._own[member.id] = member

    def _leave_own(self, member: FloorParticipant, cause: str) -> None:
        """Back to the crowd: 'U: not permitted and Floor Idle/Taken', as everyone else."""
        if member.state is not None:
            self._trace(member.machine, member.state.name, self._crowd.name, cause)
            member.state = None
        self._own.pop(member.id, None)

    def _trace(self, machine: str, from_state: str, to_state: str, cause: str) -> None:
        self.trace.append(FloorTransition(self._now, machine, from_state, to_state, cause))
        logger.debug("floor %s %s: %s -> %s (%s)", self.room, machine, from_state, to_state, cause)

    def _trace_note(self, machine: str, state: str, cause: str) -> None:
        """A traced event that leaves the machine in its state (a counter's limit)."""
        self._trace(machine, state, state, cause)

    def _discard(self, state: GeneralState | ParticipantState, what: str, who: str | None) -> None:
        """§6.3.4.1, §6.3.5.1: no procedure in this state: discard, stay."""
        self.discarded += 1
        logger.debug("floor %s: %s from %s discarded in %r", self.room, what, who, state.name)

    # --------------------------------------------------------------- arbitration
    def _pre_empts(self, member: FloorParticipant, req: QueuedRequest) -> bool:
        """Whether ``req`` revokes the burst in progress (see the module docstring)."""
        burst = self._burst
        if burst is None or burst.participant == member.id:
            return False
        if req.call_type != burst.call_type:
            return req.call_type > burst.call_type
        return (
            member.pre_emptive_allowed
            and req.priority >= self.config.pre_emptive_priority
            and req.priority > burst.priority
        )

    def _grant(
        self,
        member: FloorParticipant,
        req: QueuedRequest,
        *,
        from_queue: bool,
        cause: str | None = None,
    ) -> None:
        """Enter 'G: Floor Taken' (§6.3.4.4.2): Floor Granted to the new holder (with the Ack
        bit and T20 when granted from the queue), Floor Taken to everyone else, start T1."""
        if cause is None:
            cause = "queued request granted" if from_queue else "Floor Request"
        self._set_state(G_FLOOR_TAKEN, cause)
        self._burst = _Burst(
            participant=member.id,
            call_type=req.call_type,
            priority=req.priority,
            location=req.location,
            start=self._now,
            user_id=member.user_id,
            alias=member.alias,
        )
        ack = from_queue or self.config.ack_required
        self._send_granted(member, ack_requested=ack)
        self._participant_state(member).granted(self, member)
        if ack:
            member.c20 = 1
            member.t20.start(self._now)
        self._broadcast_taken()
        self.t1.start(self._now)
        self._emit_burst(FloorEventType.GRANTED)
        self._emit_burst(FloorEventType.TAKEN, previous=self._previous_holder)

    def _end_burst(self, reason: BurstEndReason) -> None:
        """The burst is over: stop T1, T2, T3 and the holder's T20; report its span."""
        burst = self._burst
        assert burst is not None
        self.t1.stop()
        self.t2.stop()
        self.t3.stop()
        holder = self._members.get(burst.participant)
        if holder is not None:
            holder.t20.stop()
        self._emit_burst(FloorEventType.RELEASED, reason=reason.value, end=self._now)
        self._previous_holder = burst.participant
        self._burst = None

    def _enqueue(self, member: FloorParticipant, req: QueuedRequest) -> None:
        """Queue an ordinary request (§6.3.5.4): Deny #1 without queueing, #7 when full;
        a participant already queued is told its position again."""
        if not self.config.queue_enabled:
            self._deny(member, DenyCause.ANOTHER_USER_HAS_PERMISSION, req)
            return
        if self.queue_position(member.id) is not None:
            self._send_queue_position(member.id)
            return
        ordinary = sum(1 for entry in self._queue if entry.tier == QueuedRequest.ORDINARY)
        if ordinary >= self.config.max_queue_size:
            self._deny(member, DenyCause.QUEUE_FULL, req)
            return
        self._insert(req, QueuedRequest.ORDINARY)

    def _enqueue_pre_emptor(self, req: QueuedRequest, tier: int) -> None:
        """Queue a pre-empting request ahead of every ordinary one (§6.3.4.4)."""
        self._insert(req, tier)

    def _insert(self, req: QueuedRequest, tier: int) -> None:
        """Put ``req`` in its place (moving it if it was queued): Queue Position Info to it,
        and to every other entry whose position changed."""
        before = self._positions()
        self._remove_queued(req.participant)
        self._arrivals += 1
        req.tier = tier
        req.arrival = self._arrivals
        insort(self._queue, req, key=QueuedRequest.sort_key)
        self._send_queue_position(req.participant)
        member = self._members[req.participant]
        position = self._queue.index(req) + 1
        self._emit_member(FloorEventType.QUEUED, member, req, position=position)
        self._notify_moved(before, skip=req.participant)

    def _remove_queued(self, participant: ParticipantId) -> QueuedRequest | None:
        for index, entry in enumerate(self._queue):
            if entry.participant == participant:
                del self._queue[index]
                return entry
        return None

    def _cancel_queued(self, participant: ParticipantId, reason: str) -> None:
        """Take a request out of the queue ungranted (released, left)."""
        if not self._queue:
            return
        before = self._positions()
        entry = self._remove_queued(participant)
        if entry is not None:
            self._emit(
                FloorEventType.CANCELLED,
                participant=participant,
                call_type=entry.call_type,
                priority=entry.priority,
                reason=reason,
            )
            self._notify_moved(before)

    def _positions(self) -> dict[ParticipantId, int]:
        return {entry.participant: index for index, entry in enumerate(self._queue)}

    def _notify_moved(
        self, before: dict[ParticipantId, int], *, skip: ParticipantId | None = None
    ) -> None:
        """Queue Position Info, unasked, to queued participants whose position changed."""
        if not self.config.queue_updates:
            return
        for index, entry in enumerate(self._queue):
            participant = entry.participant
            if participant != skip and before.get(participant, index) != index:
                self._send_queue_position(participant)

    # ----------------------------------------------------------------- messages
    def _send(self, message: FloorMessage) -> None:
        self._out.append(message)

    def _indicator(self) -> FloorIndicator:
        return self._indicators[self.call_type]

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULUS
        return self._sequence

    def _send_granted(self, member: FloorParticipant, *, ack_requested: bool) -> None:
        burst = self._burst
        assert burst is not None
        left = self.t2.remaining(self._now)
        seconds = self.config.t2 if left is None else left
        self._send(
            FloorMessage(
                FloorMessageType.GRANTED,
                member.id,
                ack_requested=ack_requested,
                duration=min(MAX_DURATION, math.ceil(seconds)),
                priority=burst.priority,
                indicator=self._indicator(),
            )
        )

    def _taken_message(self, to: Recipient) -> FloorMessage:
        burst = self._burst
        assert burst is not None
        return FloorMessage(
            FloorMessageType.TAKEN,
            to,
            ack_requested=self.config.ack_required,
            granted_party=burst.participant,
            user_id=burst.user_id,
            alias=burst.alias,
            location=burst.location,
            permission_to_request=True,
            sequence=self._sequence,
            indicator=self._indicator(),
        )

    def _idle_message(self, to: Recipient) -> FloorMessage:
        return FloorMessage(
            FloorMessageType.IDLE,
            to,
            ack_requested=self.config.ack_required,
            sequence=self._sequence,
            indicator=self._indicator(),
        )

    def _broadcast_taken(self) -> None:
        """Floor Taken to all but the holder; the crowd and the previous holder follow."""
        burst = self._burst
        assert burst is not None
        self._next_sequence()
        self._send(self._taken_message(AllExcept(burst.participant)))
        self._set_crowd(U_NOT_PERMITTED_FLOOR_TAKEN, "Floor Taken")
        for member in list(self._own.values()):
            if member.id != burst.participant:
                self._own_state(member).floor_taken(self, member)

    def _broadcast_idle(self) -> None:
        """Floor Idle to all (§6.3.4.3.2); the crowd and the previous holder follow."""
        self._next_sequence()
        self._send(self._idle_message(ALL))
        self._set_crowd(U_NOT_PERMITTED_FLOOR_IDLE, "Floor Idle")
        for member in list(self._own.values()):
            self._own_state(member).floor_idle(self, member)

    def _repeat_idle(self) -> bool:
        """T7: Floor Idle again, same sequence number; to those yet to acknowledge it when
        the room asks for acknowledgements. False when nobody needs it any more."""
        if not self.config.ack_required:
            self._send(self._idle_message(ALL))
            return True
        sequence = self._sequence
        pending = [p for p, member in self._members.items() if member.idle_acked != sequence]
        for participant in pending:
            self._send(self._idle_message(participant))
        return bool(pending)

    def _send_idle_to(self, participant: ParticipantId) -> None:
        self._send(self._idle_message(participant))

    def _send_taken_to(self, participant: ParticipantId) -> None:
        self._send(self._taken_message(participant))

    def _send_floor_state_to(self, participant: ParticipantId) -> None:
        """Floor Idle or Floor Taken, as the floor stands (§6.3.5.2.2)."""
        if self._burst is None:
            self._send_idle_to(participant)
        elif self._burst.participant != participant:
            self._send_taken_to(participant)

    def _send_revoke(self, participant: ParticipantId, cause: RevokeCause) -> None:
        self._send(
            FloorMessage(
                FloorMessageType.REVOKE,
                participant,
                cause=cause,
                cause_text=REVOKE_CAUSE_TEXT[cause],
                indicator=self._indicator(),
            )
        )

    def _send_queue_position(self, participant: ParticipantId) -> None:
        position: int | None = None
        priority = MIN_PRIORITY
        for index, entry in enumerate(self._queue):
            if entry.participant == participant:
                position, priority = index + 1, entry.priority
                break
        if position is None:
            position = QUEUE_POSITION_NOT_QUEUED
        elif position > MAX_QUEUE_POSITION:
            position = QUEUE_POSITION_UNKNOWN
        self._send(
            FloorMessage(
                FloorMessageType.QUEUE_POSITION_INFO,
                participant,
                ack_requested=self.config.ack_required,
                queue_position=position,
                queue_priority=priority,
                indicator=self._indicator(),
            )
        )

    def _deny(self, member: FloorParticipant, cause: DenyCause, req: QueuedRequest) -> None:
        self._send(
            FloorMessage(
                FloorMessageType.DENY,
                member.id,
                ack_requested=self.config.ack_required,
                cause=cause,
                cause_text=DENY_CAUSE_TEXT[cause],
                indicator=self._indicator(),
            )
        )
        self._emit_member(FloorEventType.DENIED, member, req, cause=cause)

    # ------------------------------------------------------------------- events
    def _emit(self, kind: FloorEventType, **fields: Any) -> None:
        if self._events is not None:
            self._events(FloorEvent(kind, self._now, self.room, **fields))

    def _emit_member(
        self, kind: FloorEventType, member: FloorParticipant, req: QueuedRequest, **fields: Any
    ) -> None:
        if self._events is not None:
            self._emit(
                kind,
                participant=member.id,
                alias=member.alias,
                user_id=member.user_id,
                call_type=req.call_type,
                priority=req.priority,
                location=req.location,
                **fields,
            )

    def _emit_burst(self, kind: FloorEventType, **fields: Any) -> None:
        burst = self._burst
        if self._events is not None and burst is not None:
            self._emit(
                kind,
                participant=burst.participant,
                alias=burst.alias,
                user_id=burst.user_id,
                call_type=burst.call_type,
                priority=burst.priority,
                location=burst.location,
                start=burst.start,
                **fields,
            )

    # ------------------------------------------------------------------- timers
    def _expire_t1(self) -> None:
        self._state.expire_t1(self)

    def _expire_t2(self) -> None:
        self._state.expire_t2(self)

    def _expire_t3(self) -> None:
        self._state.expire_t3(self)

    def _expire_t7(self) -> None:
        self._state.expire_t7(self)
