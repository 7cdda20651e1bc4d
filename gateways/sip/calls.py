"""The SIP gateway's calls: room admission, PIN, dial-out, DTMF floor, clean-up.

This runs on the gateway process's event loop. It talks to the core through the
gateway link (``join``, ``leave``, ``floor_request``, ``publish`` ...) and to the pjsua2
workers through the pool's commands; it never calls pjsua2 itself.

Inbound (issue 6 §1): the request URI (or a DID) names the room; an unknown room is
answered 404, a full one 486; a room with a PIN answers first and asks for it by voice,
three wrong PINs end the call. The caller's identity goes to the console as the
participant's name, masked or hidden if configured.
Outbound (§2): a dispatcher dials a URI or number into a room; ``call_state`` events
tell the console ``dialling``, ``ringing``, ``answered``, ``failed`` or ``ended``.
Floor (§4): in a ``ptt`` room the request and release keys call the room's floor
server (3GPP TS 24.380), and the phone hears a grant, queued, deny or revoke tone.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.config import SipAccountConfig, SipGatewayConfig

from .dialplan import Dialplan, caller_id, dial_target
from .pool import WorkerPool

logger = logging.getLogger("bridge.gateways.sip.calls")

#: The loopback leg's codec towards the media worker (RFC 3551 §4.5.11).
LEG_CODEC = "L16"
LEG_PAYLOAD_TYPE = 96
LEG_RATE = 16000
#: How long a dial-out waits for a SIP worker to start: less than the gateway link's
#: request timeout (10 s), so that a dial the dispatcher was told failed is never placed.
WORKER_WAIT_S = 8.0
#: Where the calls' loopback legs are bound (``media.LoopbackLeg``): the media worker sends
#: each call's mix there and takes the leg's packets from there, whatever ``listen_host``.
LEG_HOST = "127.0.0.1"
#: Seconds an ended call stays listed (``GET /calls``).
ENDED_KEPT_S = 60.0
#: Core events the gateway listens to.
CORE_EVENTS = ["floor_granted", "floor_revoked", "left", "room_deleted"]
#: SIP answers to a refused join, by the link error's kind.
JOIN_REFUSALS = {"Busy": (486, "Busy Here"), "Unavailable": (503, "Service Unavailable")}
#: Seconds to let the goodbye prompt play before hanging up.
GOODBYE_S = 2.0


class Link(Protocol):
    async def request(self, op: str, **args: Any) -> Any: ...


class GatewayError(Exception):
    """A refusal for the web layer; ``kind`` as in the gateway link."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SipCall:
    id: str
    worker: int
    direction: str  # "in" or "out"
    remote: str  # the URI dialled, or the caller's From
    shown: str  # what dispatchers see
    state: str = "new"
    room: str = ""  # room id
    room_name: str = ""
    mode: str = "open"
    sip_call_id: str = ""
    leg_port: int = 0
    participant: str | None = None
    code: int = 0
    reason: str = ""
    by: str = ""
    codec: str = ""
    created: float = field(default_factory=time.time)
    answered: float | None = None
    pin: str | None = None
    digits: str = ""
    pin_failures: int = 0
    floor: str = "idle"  # idle, queued, granted
    media_up: bool = False
    ending: bool = False
    timer: asyncio.TimerHandle | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "room_name": self.room_name,
            "direction": self.direction,
            "remote": self.shown,
            "state": self.state,
            "participant": self.participant,
            "code": self.code,
            "reason": self.reason,
            "codec": self.codec,
            "by": self.by,
            "created": self.created,
            "answered": self.answered,
        }


class CallManager:
    def __init__(self, link: Link, pool: WorkerPool, config: SipGatewayConfig) -> None:
        self.link = link
        self.pool = pool
        self.config = config
        self.dialplan = Dialplan(
            dict(config.dids), frozenset(account.name for account in config.accounts)
        )
        self.calls: dict[str, SipCall] = {}
        self._dial_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The front's ``forget(call_id)`` and ``adopt(call_id, worker)``, set by the process.
        self.forget_dialog: Callable[[str], None] | None = None
        self.adopt_dialog: Callable[[str, int], None] | None = None
        self.registrations = Registrations(pool, config.accounts)

    # ------------------------------------------------------------ plumbing
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("SIP call task failed: %r", task.exception())

    def _command(self, call: SipCall, op: str, **args: Any) -> None:
        self.pool.send(call.worker, {"op": op, "call": call.id, **args})

    def _publish(self, call: SipCall) -> None:
        event = {"event": "call_state", **call.to_dict(), "call": call.id}
        self._spawn(self._safe("publish", event=event))

    async def _safe(self, op: str, **args: Any) -> Any:
        try:
            return await self.link.request(op, **args)
        except Exception as exc:  # a lost event must not break a call
            logger.warning("gateway link %s failed: %s", op, exc)
            return None

    def active(self) -> list[SipCall]:
        return [c for c in self.calls.values() if c.state not in ("ended", "failed")]

    def in_room(self, room: str) -> list[SipCall]:
        return [c for c in self.active() if room in (c.room, c.room_name)]

    # ---------------------------------------------------------- worker events
    def on_worker_event(self, index: int, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "reg":
            self.registrations.on_reg(event)
            return
        if name == "error":
            logger.warning("SIP worker %d: %s", index, event.get("message"))
            call_id = event.get("call")
            if call_id in self.calls:
                self._end(self.calls[call_id], 500, str(event.get("message")))
            return
        call_id = str(event.get("call"))
        if name == "incoming":
            self._incoming(index, event)
            return
        call = self.calls.get(call_id)
        if call is None:
            return
        if name == "state":
            self._state(call, event)
        elif name == "dialling":
            call.leg_port = int(event.get("leg_port", 0))
        elif name == "media":
            call.leg_port = int(event.get("leg_port", call.leg_port))
            call.codec = str(event.get("codec", ""))
            call.media_up = True
            if call.state == "pin" and call.pin is not None and not call.digits:
                self._command(call, "play", asset="enter_pin")
        elif name == "dtmf":
            self._dtmf(call, str(event.get("digit", "")))
        elif name == "played" and event.get("asset") == "goodbye" and call.state == "pin":
            self.hangup_call(call, 403, "PIN Failed")

    def _incoming(self, index: int, event: dict[str, Any]) -> None:
        call = SipCall(
            id=str(event["call"]),
            worker=index,
            direction="in",
            remote=str(event.get("from", "")),
            shown=caller_id(str(event.get("from", "")), self.config.caller_id),
            sip_call_id=str(event.get("sip_call_id", "")),
            leg_port=int(event.get("leg_port", 0)),
            state="incoming",
        )
        self.calls[call.id] = call
        self.pool.bind_call(index, call.id, call.sip_call_id)
        if len(self.active()) > self.config.max_calls:
            self._refuse(call, 503, "Too Many Calls")
            return
        self._spawn(self._admit(call, str(event.get("request_uri", "")), str(event.get("to", ""))))

    def _refuse(self, call: SipCall, code: int, reason: str) -> None:
        call.code, call.reason = code, reason
        self._command(call, "answer", code=code, reason=reason)

    async def _admit(self, call: SipCall, request_uri: str, to: str = "") -> None:
        from bridge.gatewaylink import LinkError

        room_key = self.dialplan.room_for(request_uri, to)
        if room_key is None:
            self._refuse(call, 404, "Not Found")
            return
        try:
            room = await self.link.request("room", room=room_key)
        except LinkError as exc:
            if exc.kind == "NotFound":
                self._refuse(call, 404, "Room Not Found")
            else:
                self._refuse(call, 503, "Service Unavailable")
            return
        call.room, call.room_name, call.mode = room["id"], room["name"], room["mode"]
        if call.ending:  # cancelled (RFC 3261 §9.2) while the room was looked up
            self._publish(call)
            return
        if len(self.in_room(call.room)) > self.config.max_calls_per_room:
            self._refuse(call, 486, "Busy Here")
            return
        pin = self.config.pins.get(call.room_name)
        if pin:
            call.pin = pin
            call.state = "pin"
            self._command(call, "answer", code=200)
            call.timer = asyncio.get_running_loop().call_later(
                self.config.pin_timeout_s, self._pin_timeout, call
            )
            self._publish(call)
            return
        self._command(call, "answer", code=180)
        if await self._join(call):
            self._command(call, "answer", code=200)

    async def _join(self, call: SipCall) -> bool:
        """Join the call's loopback leg to its room; False if the room refused it."""
        from bridge.gatewaylink import LinkError

        participant = {
            "kind": "sip",
            "name": call.shown,
            "codec": LEG_CODEC,
            "clock_rate": LEG_RATE,
            "payload_type": LEG_PAYLOAD_TYPE,
            "remote": {"ip": LEG_HOST, "port": call.leg_port},
            "latch": False,
            "user_id": call.shown,
        }
        try:
            result = await self.link.request("join", room=call.room, participant=participant)
        except LinkError as exc:
            # A full room is the callee being busy (RFC 3261 §21.4.24); a media worker at
            # its tick budget is the service, for now (§21.5.4).
            code, reason = JOIN_REFUSALS.get(exc.kind, (500, str(exc)))
            logger.warning("SIP call %s could not join %s: %s", call.id, call.room_name, exc)
            if call.direction == "in" and call.state not in ("pin", "answered"):
                self._refuse(call, code, reason)
            else:
                self.hangup_call(call, code, reason)
            return False
        call.participant = str(result["participant"]["id"])
        rtp = result["media"]["rtp"]
        if call.ending:  # hung up while joining
            await self._safe("leave", room=call.room, participant=call.participant)
            return False
        self._command(call, "attach", ip=rtp["ip"], port=int(rtp["port"]))
        return True

    def _state(self, call: SipCall, event: dict[str, Any]) -> None:
        state = event.get("state")
        call.code = int(event.get("code") or call.code)
        call.reason = str(event.get("reason") or call.reason)
        if event.get("sip_call_id") and call.sip_call_id != event["sip_call_id"]:
            call.sip_call_id = str(event["sip_call_id"])
            if call.direction == "out" and self.adopt_dialog is not None:
                # The far end's BYE or re-INVITE may come through the front (RFC 3261
                # §12.2.1.1: to our Contact, the front's for a registered account).
                self.adopt_dialog(call.sip_call_id, call.worker)
        if state == "early" and call.direction == "out" and call.state != "ringing":
            call.state = "ringing"
            self._publish(call)
        elif state == "confirmed" and call.answered is None:
            call.answered = time.time()
            if call.direction == "out":
                call.state = "answered"
                if call.timer is not None:
                    call.timer.cancel()
                self._spawn(self._join_answered(call))
            elif call.state != "pin":
                call.state = "answered"
            self._publish(call)
        elif state == "disconnected":
            self._end(call, call.code, call.reason)

    async def _join_answered(self, call: SipCall) -> None:
        await self._join(call)

    def _end(self, call: SipCall, code: int, reason: str) -> None:
        if call.state in ("ended", "failed"):
            return
        call.ending = True
        if call.timer is not None:
            call.timer.cancel()
        call.state = "ended" if call.answered is not None else "failed"
        call.code, call.reason = code, reason
        self.pool.unbind_call(call.worker, call.id)
        if self.forget_dialog is not None and call.sip_call_id:
            self.forget_dialog(call.sip_call_id)
        if call.participant is not None:
            self._spawn(self._safe("leave", room=call.room, participant=call.participant))
        if call.room:
            self._publish(call)
        # Keep ended calls a little for GET /calls, then forget them (unless a new call
        # has the id by then: a restarted worker numbers its calls from 1 again).
        asyncio.get_running_loop().call_later(ENDED_KEPT_S, self._drop, call)

    def _drop(self, call: SipCall) -> None:
        if self.calls.get(call.id) is call:
            del self.calls[call.id]

    def hangup_call(self, call: SipCall, code: int = 200, reason: str = "") -> None:
        call.ending = True
        self._command(
            call,
            "hangup",
            code=code if code >= 300 or call.answered is None else 200,
            reason=reason,
        )

    # ----------------------------------------------------------------- PIN
    def _pin_timeout(self, call: SipCall) -> None:
        if call.state == "pin":
            self._pin_wrong(call)

    def _pin_wrong(self, call: SipCall) -> None:
        call.pin_failures += 1
        call.digits = ""
        if call.pin_failures >= self.config.pin_attempts:
            self._command(call, "play", asset="goodbye")
            asyncio.get_running_loop().call_later(GOODBYE_S * 2, self._pin_give_up, call)
            return
        self._command(call, "play", asset="pin_wrong")
        if call.timer is not None:
            call.timer.cancel()
        call.timer = asyncio.get_running_loop().call_later(
            self.config.pin_timeout_s, self._pin_timeout, call
        )

    def _pin_give_up(self, call: SipCall) -> None:
        if call.state == "pin":
            self.hangup_call(call, 403, "PIN Failed")

    def _pin_digit(self, call: SipCall, digit: str) -> None:
        assert call.pin is not None
        if call.pin_failures >= self.config.pin_attempts:
            return
        if digit == "#" and not call.digits:
            # The "#" the prompt asks for, after a PIN already judged at its last digit.
            return
        if digit != "#":
            call.digits += digit
            if len(call.digits) < len(call.pin):
                return
        if hmac.compare_digest(call.digits.encode(), call.pin.encode()):
            if call.timer is not None:
                call.timer.cancel()
            call.state = "joining"
            self._command(call, "stop_play")
            self._spawn(self._join_after_pin(call))
        else:
            self._pin_wrong(call)

    async def _join_after_pin(self, call: SipCall) -> None:
        if await self._join(call):
            call.state = "answered"
            self._command(call, "play", asset="joined")
            self._publish(call)

    # ---------------------------------------------------------------- DTMF
    def _dtmf(self, call: SipCall, digit: str) -> None:
        if call.state == "pin":
            self._pin_digit(call, digit)
            return
        if call.mode != "ptt" or call.participant is None or call.state != "answered":
            return
        if digit == self.config.floor_request_key:
            self._spawn(self._floor_request(call))
        elif digit == self.config.floor_release_key:
            self._spawn(self._floor_release(call))

    async def _floor_request(self, call: SipCall) -> None:
        from bridge.gatewaylink import LinkError

        try:
            result = await self.link.request(
                "floor_request", room=call.room, participant=call.participant
            )
        except LinkError as exc:
            logger.warning("floor request of SIP call %s failed: %s", call.id, exc)
            self._command(call, "play", asset="floor_denied")
            return
        outcome = result.get("result") if isinstance(result, dict) else None
        if outcome == "granted":
            if call.floor != "granted":
                call.floor = "granted"
                self._command(call, "play", asset="floor_granted")
        elif outcome == "queued":
            call.floor = "queued"
            self._command(call, "play", asset="floor_queued")
        elif outcome == "denied":
            call.floor = "idle"
            self._command(call, "play", asset="floor_denied")

    async def _floor_release(self, call: SipCall) -> None:
        from bridge.gatewaylink import LinkError

        try:
            await self.link.request("floor_release", room=call.room, participant=call.participant)
        except LinkError as exc:
            logger.warning("floor release of SIP call %s failed: %s", call.id, exc)
            return
        call.floor = "idle"
        self._command(call, "play", asset="floor_released")

    # ----------------------------------------------------------- core events
    def on_core_event(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        participant = event.get("participant")
        for call in self.active():
            if name == "room_deleted" and event.get("room") == call.room:
                self.hangup_call(call, 410, "Room Deleted")
            elif call.participant is None or participant != call.participant:
                continue
            elif name == "left" and not call.ending:
                call.participant = None  # removed from the room by someone else
                self.hangup_call(call)
            elif name == "floor_granted" and call.floor != "granted":
                call.floor = "granted"
                self._command(call, "play", asset="floor_granted")
            elif name == "floor_revoked":
                call.floor = "idle"
                self._command(call, "play", asset="floor_revoked")

    # -------------------------------------------------------------- dial-out
    async def dial(
        self, room: str, uri: str, by: str = "", account: str | None = None
    ) -> dict[str, Any]:
        from bridge.gatewaylink import LinkError

        if not isinstance(uri, str) or not uri:
            raise GatewayError("uri is required", "Invalid")
        chosen = self._account(account)
        try:
            target = dial_target(uri, chosen.registrar if chosen else None)
        except ValueError as exc:
            raise GatewayError(str(exc), "Invalid") from None
        try:
            info = await self.link.request("room", room=room)
        except LinkError as exc:
            raise GatewayError(str(exc), exc.kind) from None
        if len(self.active()) >= self.config.max_calls:
            raise GatewayError("too many SIP calls", "Busy")
        if len(self.in_room(info["id"])) >= self.config.max_calls_per_room:
            raise GatewayError(f"room is full: {info['name']}", "Busy")
        worker = self.pool.choose()
        deadline = time.monotonic() + WORKER_WAIT_S
        while worker is None and (self.pool.can_grow() or self.pool.free_slots() > 0):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
            worker = self.pool.choose()
        if worker is None:
            raise GatewayError("every SIP worker is busy", "Busy")
        call = SipCall(
            id=f"d{next(self._dial_ids)}",
            worker=worker.index,
            direction="out",
            remote=target,
            shown=target
            if self.config.caller_id == "show"
            else caller_id(target, self.config.caller_id),
            state="dialling",
            room=info["id"],
            room_name=info["name"],
            mode=info["mode"],
            by=by,
        )
        self.calls[call.id] = call
        self.pool.bind_call(worker.index, call.id)
        self._command(call, "dial", uri=target, account=chosen.name if chosen else None)
        call.timer = asyncio.get_running_loop().call_later(
            self.config.ring_timeout_s, self._ring_timeout, call
        )
        self._publish(call)
        return call.to_dict()

    def _account(self, name: str | None) -> SipAccountConfig | None:
        accounts = {a.name: a for a in self.config.accounts}
        if name:
            if name not in accounts:
                raise GatewayError(f"unknown SIP account: {name}", "Invalid")
            return accounts[name]
        return None

    def _ring_timeout(self, call: SipCall) -> None:
        if call.answered is None and call.state not in ("ended", "failed"):
            self.hangup_call(call, 408, "Request Timeout")

    def list(self, room: str) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.calls.values() if room in (c.room, c.room_name)]

    def hangup(self, room: str, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or room not in (call.room, call.room_name):
            raise GatewayError(f"unknown call: {call_id}", "NotFound")
        if call.state in ("ended", "failed"):
            raise GatewayError(f"call already ended: {call_id}", "Conflict")
        self.hangup_call(call, 487 if call.answered is None else 200, "Hung Up By Dispatcher")

    async def stop(self) -> None:
        self.registrations.stop()
        for task in list(self._tasks):
            task.cancel()


class Registrations:
    """Upstream registrations (issue 6 §3): re-register after a failure, backing off."""

    def __init__(self, pool: WorkerPool, accounts: list[SipAccountConfig]) -> None:
        self.pool = pool
        self.accounts = {a.name: a for a in accounts}
        self.state: dict[str, dict[str, Any]] = {
            a.name: {"registered": False, "code": 0, "failures": 0} for a in accounts
        }
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def backoff(self, name: str) -> float:
        account = self.accounts[name]
        failures = self.state[name]["failures"]
        return float(min(account.retry_max_s, account.retry_min_s * 2 ** max(0, failures - 1)))

    def on_reg(self, event: dict[str, Any]) -> None:
        name = str(event.get("account"))
        if name not in self.state:
            return
        state = self.state[name]
        code = int(event.get("code", 0))
        state["code"] = code
        if 200 <= code < 300 and int(event.get("expires", 0)) > 0:
            state.update(registered=True, failures=0)
            logger.info("SIP account %s registered", name)
            return
        if 200 <= code < 300:  # unregistered on purpose
            state["registered"] = False
            return
        state["registered"] = False
        state["failures"] += 1
        delay = self.backoff(name)
        logger.warning(
            "SIP account %s registration failed (%d %s); retry in %.0f s",
            name,
            code,
            event.get("reason", ""),
            delay,
        )
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(
            delay, lambda: self.pool.send(0, {"op": "register", "account": name})
        )

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
