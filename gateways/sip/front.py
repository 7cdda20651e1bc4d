"""The SIP front: one UDP address for phones and PBXs, in front of the pjsua2 workers.

A stateless proxy (RFC 3261 §16.11) that routes by Call-ID. A new INVITE goes to the
least loaded worker with a free call slot (the pool starts more workers ahead of
demand); everything else of that dialog follows it, because the front Record-Routes
itself (§16.6 step 4) and remembers which worker owns each Call-ID. Responses are routed
back by the Via the front pushed (§16.7 step 9, RFC 3581 ``rport``).

Refused here, before pjsua2 sees them: INVITE floods (per source token bucket, 503 with
Retry-After), unparsable messages (counted and dropped), requests for unknown dialogs
(481), INVITEs when every worker slot is taken and no more workers may start (503).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

from .pool import WorkerPool
from .protocol import SOURCE_HEADER
from .ratelimit import RateLimiter
from .sipmsg import (
    SipMessage,
    SipUri,
    Via,
    make_branch,
    make_response,
    sdp_problem,
    split_hostport,
)

logger = logging.getLogger("bridge.gateways.sip.front")

#: Dialogs routed at once; the least recently used is forgotten beyond this.
MAX_DIALOGS = 65536
#: A dialog's route is kept this long after its end, for retransmissions (64 * T1).
LINGER_S = 32.0
#: Seconds a refused caller is told to wait (RFC 3261 §20.33).
RETRY_AFTER_S = 5
#: Our branches start with this, so a response's Via is recognised as ours.
OUR_BRANCH = "z9hG4bKuc"


@dataclass
class Route:
    """Where a dialog's requests go, and for how long."""

    #: The worker that owns the dialog.
    worker: int
    #: Monotonic time after which the route is dropped; 0.0 while the dialog lives.
    until: float = 0.0
    #: A 2xx answered the initial INVITE: a later INVITE's failure is a failed re-INVITE,
    #: which leaves the dialog as it was (RFC 3261 §14.1), not the end of the call.
    established: bool = False


class SipFront(asyncio.DatagramProtocol):
    def __init__(self, host: str, port: int, pool: WorkerPool, limiter: RateLimiter) -> None:
        self.host = host
        self.port = port
        self.pool = pool
        self.limiter = limiter
        self.transport: asyncio.DatagramTransport | None = None
        #: SIP Call-ID -> its route.
        self.dialogs: OrderedDict[str, Route] = OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        #: INVITEs held unanswered while a worker starts: Call-ID -> forget-after time.
        self.held: OrderedDict[str, float] = OrderedDict()
        #: Name resolutions under way for workers' requests (kept so that none is lost).
        self.resolving: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _send(self, message: SipMessage, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(bytes(message), addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip() == b"":  # RFC 5626 keep-alive
            return
        try:
            message = SipMessage.parse(data)
        except ValueError as exc:
            self.counters["malformed"] += 1
            logger.debug("malformed SIP from %s: %s", addr, exc)
            return
        try:
            if message.is_request:
                self._request(message, addr)
            else:
                self._response(message, addr)
        except ValueError as exc:
            self.counters["malformed"] += 1
            logger.debug("unroutable SIP from %s: %s", addr, exc)

    # ------------------------------------------------------------- dialogs
    def _remember(self, call_id: str, index: int) -> None:
        self.dialogs[call_id] = Route(index)
        self.dialogs.move_to_end(call_id)
        while len(self.dialogs) > MAX_DIALOGS:
            self.dialogs.popitem(last=False)

    def adopt(self, call_id: str, index: int) -> None:
        """A dialog a worker started itself (a dial-out): its in-dialog requests can come
        here, since a registered account's Contact is the front's, so route them to it."""
        if call_id not in self.dialogs:
            self._remember(call_id, index)
            self.dialogs[call_id].established = True

    def forget(self, call_id: str) -> None:
        """The dialog ended: keep its route a little for retransmissions, then drop it."""
        route = self.dialogs.get(call_id)
        if route is not None and route.until == 0.0:
            route.until = time.monotonic() + LINGER_S

    def sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, r in self.dialogs.items() if r.until and r.until < now]:
            del self.dialogs[key]
        for key in [k for k, until in self.held.items() if until < now]:
            del self.held[key]

    # ------------------------------------------------------------- requests
    def _ours(self, uri: str) -> bool:
        try:
            parsed = SipUri.parse(uri)
        except ValueError:
            return False
        return parsed.host == self.host and (parsed.port or 5060) == self.port

    def _reply(
        self,
        request: SipMessage,
        addr: tuple[str, int],
        status: int,
        reason: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if request.method == "ACK":
            return
        self._send(make_response(request, status, reason, extra), addr)

    def _request(self, message: SipMessage, addr: tuple[str, int]) -> None:
        worker = self.pool.worker_at(addr)
        vias = message.values("via")
        if not vias:
            raise ValueError("request without a Via")
        top = Via.parse(vias[0])
        incoming_branch = top.branch
        max_forwards = message.header("max-forwards")
        if max_forwards is not None and max_forwards.isdigit():
            if int(max_forwards) <= 0:
                self._reply(message, addr, 483, "Too Many Hops")
                return
            message.set_header("Max-Forwards", str(int(max_forwards) - 1))
        routes = message.values("route")
        if routes and self._ours(routes[0]):
            routes = routes[1:]
            message.set_values("route", routes)
        if worker is not None:
            self._from_worker(message, addr, routes, incoming_branch)
            return
        # RFC 3261 §18.2.1 / RFC 3581: where this really came from.
        if top.host != addr[0]:
            top.params["received"] = addr[0]
        if "rport" in top.params:
            top.params["rport"] = str(addr[1])
        vias[0] = str(top)
        message.headers = [(n, v) for n, v in message.headers if n.lower() != SOURCE_HEADER.lower()]
        method = message.method
        call_id = message.call_id
        route = self.dialogs.get(call_id)
        index = route.worker if route is not None else None
        if method == "INVITE" and not message.to_tag() and route is not None and route.until:
            # A new initial INVITE on the Call-ID of a call that failed (after a 422 or
            # 488, RFC 3261 §8.1.3.5): the route lives again, with the same worker.
            route.until, route.established = 0.0, False
        if method == "INVITE" and not message.to_tag() and index is None:
            # A held INVITE's retransmissions are the same request: charged once.
            if call_id not in self.held and not self.limiter.allow(addr[0]):
                self.counters["rate_limited"] += 1
                self._reply(
                    message, addr, 503, "Rate Limited", [("Retry-After", str(RETRY_AFTER_S))]
                )
                return
            content_type = (message.header("content-type") or "").lower()
            problem = sdp_problem(message.body) if "application/sdp" in content_type else None
            if problem is None and message.body and "application/sdp" not in content_type:
                problem = f"unsupported offer type: {content_type or 'none'}"
            if problem is not None:
                self.counters["bad_sdp"] += 1
                self._reply(
                    message,
                    addr,
                    488,
                    "Not Acceptable Here",
                    [("Warning", f'399 ucbridge "{problem}"')],
                )
                return
            chosen = self.pool.choose()
            if chosen is None:
                if self.pool.can_grow() or self.pool.free_slots() > 0:
                    # A worker is starting: the caller retransmits (timer A, RFC 3261
                    # §17.1.1.2) and finds it; a 100 Trying would stop the retransmission.
                    self.counters["held_for_worker"] += 1
                    self.held[call_id] = time.monotonic() + LINGER_S
                    while len(self.held) > MAX_DIALOGS:
                        self.held.popitem(last=False)
                    return
                self.counters["at_capacity"] += 1
                self.pool.refused += 1
                logger.warning("SIP front: every worker slot is taken; INVITE refused")
                self._reply(
                    message,
                    addr,
                    503,
                    "SIP Gateway At Capacity",
                    [("Retry-After", str(RETRY_AFTER_S))],
                )
                return
            index = chosen.index
            self.held.pop(call_id, None)
            self.pool.reserve(chosen, call_id)
            self._remember(call_id, index)
        if index is None:
            if method == "OPTIONS":
                self._reply(
                    message, addr, 200, "OK", [("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")]
                )
            elif method in ("BYE", "CANCEL", "INFO", "UPDATE", "PRACK", "INVITE"):
                self.counters["no_dialog"] += 1
                self._reply(message, addr, 481, "Call/Transaction Does Not Exist")
            elif method != "ACK":
                self._reply(
                    message,
                    addr,
                    405,
                    "Method Not Allowed",
                    [("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")],
                )
            return
        target = self.pool.workers.get(index)
        if target is None:
            self.counters["worker_gone"] += 1
            self._reply(message, addr, 481, "Call/Transaction Does Not Exist")
            return
        if method == "INVITE" and not message.to_tag():
            message.set_values(
                "record-route",
                [f"<sip:{self.host}:{self.port};lr>", *message.values("record-route")],
            )
            message.headers.append((SOURCE_HEADER, f"{addr[0]}:{addr[1]}"))
        branch = make_branch(
            incoming_branch,
            f"{addr[0]}:{addr[1]}",
            message.method if message.method not in ("ACK", "CANCEL") else "INVITE",
        )
        our = Via("UDP", self.host, self.port, {"branch": branch})
        message.set_values("via", [str(our), *vias])
        self.counters["forwarded"] += 1
        self._send(message, (self.host, target.sip_port))

    def _from_worker(
        self, message: SipMessage, addr: tuple[str, int], routes: list[str], incoming_branch: str
    ) -> None:
        """A worker's in-dialog request to a phone: loose routing (RFC 3261 §16.12)."""
        destination = routes[0] if routes else message.request_uri
        uri = SipUri.parse(destination)
        host, port = uri.host, uri.port or 5060
        vias = message.values("via")
        branch = make_branch(incoming_branch, f"{addr[0]}:{addr[1]}", "w")
        our = Via("UDP", self.host, self.port, {"branch": branch, "rport": None})
        message.set_values("via", [str(our), *vias])
        self.counters["forwarded"] += 1
        if message.method == "BYE":
            self.forget(message.call_id)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            task = asyncio.get_running_loop().create_task(
                self._resolve_and_send(message, host, port)
            )
            self.resolving.add(task)
            task.add_done_callback(self.resolving.discard)
            return
        self._send(message, (host, port))

    async def _resolve_and_send(self, message: SipMessage, host: str, port: int) -> None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=2)
        except OSError:
            self.counters["unresolved"] += 1
            return
        self._send(message, (str(infos[0][4][0]), int(infos[0][4][1])))

    # ------------------------------------------------------------ responses
    def _response(self, message: SipMessage, addr: tuple[str, int]) -> None:
        vias = message.values("via")
        if not vias:
            raise ValueError("response without a Via")
        top = Via.parse(vias[0])
        if not top.branch.startswith(OUR_BRANCH) or len(vias) < 2:
            self.counters["stray_response"] += 1
            return
        rest = vias[1:]
        message.set_values("via", rest)
        status = message.status
        method = message.cseq_method
        if self.pool.worker_at(addr) is not None:
            route = self.dialogs.get(message.call_id)
            if method == "INVITE" and 200 <= status < 300 and route is not None:
                route.established = True
            elif method == "INVITE" and status >= 300 and not (route and route.established):
                # The initial INVITE failed: the call is over. A failed re-INVITE is not.
                self.pool.release_reservation(message.call_id)
                self.forget(message.call_id)
            elif method == "BYE" and status >= 200:
                self.forget(message.call_id)
        # A response goes back to the address its request came from, which the request's
        # Via holds as an IP address (the front added "received" where it was a name):
        # a name here is not ours to look up for whoever sent this datagram.
        host, port = Via.parse(rest[0]).response_address()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self.counters["unroutable_response"] += 1
            return
        self.counters["responses"] += 1
        self._send(message, (host, port))

    def stats(self) -> dict[str, Any]:
        return {"dialogs": len(self.dialogs), **dict(self.counters)}


def parse_hostport(text: str) -> tuple[str, int]:
    host, port = split_hostport(text)
    return host, port or 5060
