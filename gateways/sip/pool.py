"""The SIP workers: pjsua2 processes started, counted and stopped by the gateway process.

One pjsua2 endpoint per process, and the pjsua2-python wheel carries at most 4 calls per
endpoint (PJSUA_MAX_CALLS), so capacity comes from processes: the pool keeps
``spare_calls`` call slots started ahead of demand, up to ``max_workers``, and a call
that finds no slot is refused with a clear 503, never dropped silently.

A worker that exits on its own or fails to start (a bad account URI, a busy port) is
restarted after a back-off of its own index's, doubling from :data:`BACKOFF_FIRST_S` to
:data:`BACKOFF_MAX_S` and reset once a worker has stayed up :data:`BACKOFF_RESET_S`. An
index that is backing off is not started, and a worker restarted after a failure is no
promised capacity: while no worker can start, :meth:`WorkerPool.can_grow` is false and
:meth:`WorkerPool.free_slots` counts nothing, so the front refuses INVITEs with a 503
(RFC 3261 §21.5.4) instead of holding them for a worker that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.config import SipGatewayConfig

from .prompts import ASSETS
from .protocol import MAX_MESSAGE, WORKER_FD_ENV

logger = logging.getLogger("bridge.gateways.sip.pool")

#: How long a starting worker may take to say it is ready.
START_TIMEOUT_S = 15.0
#: How long a stopping worker may take before it is killed.
STOP_TIMEOUT_S = 5.0
#: A slot the front reserved for an INVITE that never became a call is freed after this
#: (RFC 3261 timer B, 64 * T1).
RESERVATION_TTL_S = 32.0

#: A failed worker index waits this long before it is started again ...
BACKOFF_FIRST_S = 0.5
#: ... twice as long after each further failure, up to this ...
BACKOFF_MAX_S = 30.0
#: ... and starts from the first delay again once a worker of it stayed up this long.
BACKOFF_RESET_S = 60.0

#: What wakes a worker's SIP poll (see :meth:`WorkerPool._wake`).
WAKE = b"\r\n\r\n"

EventHandler = Callable[[int, dict[str, Any]], None]


@dataclass
class Backoff:
    """The restart back-off of one worker index, after its worker failed."""

    #: Failures since the index last had a worker that stayed up.
    failures: int
    #: The delay the last failure imposed (seconds).
    delay: float
    #: Monotonic time before which the index is not started.
    until: float
    #: Why its last worker failed.
    reason: str


@dataclass
class SipWorker:
    index: int
    sip_port: int
    rtp_port: int
    state: str = "starting"
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Calls it carries (gateway call ids) and slots the front reserved (SIP Call-IDs).
    calls: set[str] = field(default_factory=set)
    reserved: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    #: Monotonic time of its ``ready`` event (0.0: not ready yet).
    ready_at: float = 0.0
    #: Why it failed to start, as it said (an ``error`` event before ``ready``).
    failure: str = ""

    @property
    def load(self) -> int:
        return len(self.calls) + len(self.reserved)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WorkerPool:
    def __init__(
        self,
        config: SipGatewayConfig,
        on_event: EventHandler,
        accounts: list[dict[str, Any]] | None = None,
        log_level: int = 1,
    ) -> None:
        self.config = config
        self.on_event = on_event
        self.accounts = accounts or []
        self.log_level = log_level
        self.workers: dict[int, SipWorker] = {}
        self.started = 0
        self.refused = 0
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._waker: socket.socket | None = None
        #: Worker index -> its restart back-off (only indices whose worker failed).
        self.backoff: dict[int, Backoff] = {}
        self._retry: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------- capacity
    @property
    def capacity(self) -> int:
        return self.config.calls_per_worker

    def free_slots(self, include_starting: bool = True) -> int:
        """Free call slots of ready workers, and of starting ones if ``include_starting``:
        but not of a worker restarted after a failure, which may well fail again."""
        return sum(
            max(0, self.capacity - w.load)
            for w in self.workers.values()
            if w.state == "ready"
            or (include_starting and w.state == "starting" and w.index not in self.backoff)
        )

    def can_grow(self) -> bool:
        """Whether a worker may be started now: fewer than ``max_workers`` run and some
        free index is not backing off after a failure."""
        return not self.stopping and self._free_index() >= 0

    def choose(self) -> SipWorker | None:
        """The least loaded ready worker with a free slot (None: none has one now)."""
        ready = [w for w in self.workers.values() if w.state == "ready" and w.load < self.capacity]
        self.ensure_spare(extra=0 if ready else 1)
        return min(ready, key=lambda w: (w.load, w.index)) if ready else None

    def reserve(self, worker: SipWorker, sip_call_id: str) -> None:
        worker.reserved[sip_call_id] = time.monotonic() + RESERVATION_TTL_S
        self.ensure_spare()

    def release_reservation(self, sip_call_id: str) -> None:
        for worker in self.workers.values():
            worker.reserved.pop(sip_call_id, None)

    def bind_call(self, index: int, call: str, sip_call_id: str = "") -> None:
        worker = self.workers.get(index)
        if worker is not None:
            worker.reserved.pop(sip_call_id, None)
            worker.calls.add(call)

    def unbind_call(self, index: int, call: str) -> None:
        worker = self.workers.get(index)
        if worker is not None:
            worker.calls.discard(call)

    def expire_reservations(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            for key in [k for k, until in worker.reserved.items() if until < now]:
                del worker.reserved[key]

    def ensure_spare(self, extra: int = 0) -> None:
        """Start workers until ``spare_calls`` (+``extra``) slots are free or started."""
        self.expire_reservations()
        self._forget_backoffs()
        want = max(self.config.spare_calls + extra, 0)
        while self.can_grow() and (
            self.free_slots() < want
            or len(self.workers) < self.config.min_workers
            or self._registrar_missing()
        ):
            self._spawn()

    def _registrar_missing(self) -> bool:
        """Worker 0 registers the accounts: it is started again once its back-off ends,
        even when the other workers have the spare slots covered."""
        registers = any(account.get("register", False) for account in self.accounts)
        return registers and 0 not in self.workers and self._free_index() == 0

    def worker_at(self, addr: tuple[str, int]) -> SipWorker | None:
        if addr[0] != self.config.listen_host:
            return None
        index = addr[1] - self.config.worker_port_base
        worker = self.workers.get(index)
        return worker if worker is not None and worker.sip_port == addr[1] else None

    # ------------------------------------------------------------ processes
    async def start(self) -> None:
        self.ensure_spare()
        await self.wait_ready()

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        waits = [w.ready.wait() for w in self.workers.values() if w.state == "starting"]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def _free_index(self) -> int:
        """The lowest index below ``max_workers`` with no worker and no back-off under
        way (-1: none)."""
        now = time.monotonic()
        for index in range(self.config.max_workers):
            backoff = self.backoff.get(index)
            if index not in self.workers and (backoff is None or backoff.until <= now):
                return index
        return -1

    def _spawn(self) -> SipWorker:
        index = self._free_index()
        if index < 0:
            raise RuntimeError("no SIP worker index is free to start")
        cfg = self.config
        worker = SipWorker(
            index=index,
            sip_port=cfg.worker_port_base + index,
            rtp_port=cfg.rtp_port_base + index * cfg.rtp_ports_per_worker,
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, **{WORKER_FD_ENV: str(theirs.fileno())})
        worker.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "bridge.gateways.sip.worker"],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        init = {
            "op": "init",
            "index": index,
            "host": cfg.listen_host,
            "sip_port": worker.sip_port,
            "rtp_port": worker.rtp_port,
            "rtp_ports": cfg.rtp_ports_per_worker,
            "max_calls": cfg.calls_per_worker,
            "codecs": list(cfg.codecs),
            "user_agent": cfg.user_agent,
            "assets": str(ASSETS),
            "pj_log_level": self.log_level,
            # Only the first worker registers; every worker may dial out with the creds.
            "accounts": [
                dict(a, register=a.get("register", False) and index == 0) for a in self.accounts
            ],
        }
        ours.send(json.dumps(init).encode())
        ours.setblocking(False)
        worker.sock = ours
        self.workers[index] = worker
        self.started += 1
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, worker)
        self._watch(worker)
        logger.info(
            "SIP worker %d starting (pid %s, SIP port %d)", index, worker.pid, worker.sip_port
        )
        return worker

    def _watch(self, worker: SipWorker) -> None:
        async def ready_or_kill() -> None:
            try:
                await asyncio.wait_for(worker.ready.wait(), START_TIMEOUT_S)
            except TimeoutError:
                worker.failure = f"did not start in {START_TIMEOUT_S:g} s"
                self._gone(worker)

        task = asyncio.get_running_loop().create_task(ready_or_kill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _readable(self, worker: SipWorker) -> None:
        sock = worker.sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._gone(worker)
                return
            try:
                event = json.loads(data)
            except ValueError:
                logger.warning("SIP worker %d sent a bad message", worker.index)
                continue
            name = event.get("event")
            if name == "ready":
                worker.state = "ready"
                worker.ready_at = time.monotonic()
                worker.ready.set()
            elif name == "error" and worker.state == "starting":
                # Its start failed: logged once, with its exit (see _gone).
                worker.failure = str(event.get("message", ""))
                continue
            elif name == "stats":
                worker.stats = event
                continue
            self.on_event(worker.index, event)

    def _gone(self, worker: SipWorker) -> None:
        """A worker exited (or failed to start): its calls end, and it is replaced as
        :meth:`ensure_spare` wants, once its index's back-off is over."""
        if worker.state == "stopped":
            return  # already gone (a start timeout, then its socket's end)
        if worker.sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(worker.sock.fileno())
            worker.sock.close()
            worker.sock = None
        if worker.process is not None and worker.process.poll() is None:
            worker.process.kill()
        was = worker.state
        worker.state = "stopped"
        self.workers.pop(worker.index, None)
        worker.ready.set()
        for call in list(worker.calls):
            self.on_event(
                worker.index,
                {
                    "event": "state",
                    "call": call,
                    "state": "disconnected",
                    "code": 500,
                    "reason": "SIP worker exited",
                },
            )
        if not self.stopping:
            if was != "stopping":
                self._failed(worker)
            self.on_event(worker.index, {"event": "worker_exited", "index": worker.index})
            self.ensure_spare()

    def _failed(self, worker: SipWorker) -> None:
        """Back its index off (logged once, with the reason) and plan the retry."""
        now = time.monotonic()
        previous = self.backoff.get(worker.index)
        stayed_up = worker.ready_at > 0.0 and now - worker.ready_at >= BACKOFF_RESET_S
        if previous is None or stayed_up:
            failures, delay = 1, BACKOFF_FIRST_S
        else:
            failures, delay = previous.failures + 1, min(previous.delay * 2, BACKOFF_MAX_S)
        reason = worker.failure or _exit_reason(worker.process)
        self.backoff[worker.index] = Backoff(failures, delay, now + delay, reason)
        logger.error(
            "SIP worker %d (pid %s) %s: %s; index %d is retried in %g s (failure %d)",
            worker.index,
            worker.pid,
            "exited" if worker.ready_at else "failed to start",
            reason,
            worker.index,
            delay,
            failures,
        )
        self._plan_retry()

    def _plan_retry(self) -> None:
        """Call :meth:`ensure_spare` when the next back-off ends (one timer for all)."""
        now = time.monotonic()
        pending = [b.until for b in self.backoff.values() if b.until > now]
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if pending and not self.stopping:
            self._retry = asyncio.get_running_loop().call_later(min(pending) - now, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        if not self.stopping:
            self.ensure_spare()
            self._plan_retry()

    def _forget_backoffs(self) -> None:
        """Reset the back-off of an index whose worker has stayed up
        :data:`BACKOFF_RESET_S`, or that has had no failure for as long."""
        now = time.monotonic()
        for index, backoff in list(self.backoff.items()):
            worker = self.workers.get(index)
            if worker is not None and worker.ready_at:
                done = now - worker.ready_at >= BACKOFF_RESET_S
            else:
                done = worker is None and now - backoff.until >= BACKOFF_RESET_S
            if done:
                del self.backoff[index]

    def send(self, index: int, command: dict[str, Any]) -> bool:
        worker = self.workers.get(index)
        if worker is None or worker.sock is None:
            return False
        try:
            worker.sock.send(json.dumps(command).encode())
        except OSError:
            return False
        self._wake(worker)
        return True

    def _wake(self, worker: SipWorker) -> None:
        """End the worker's ``libHandleEvents`` poll now, so that it reads the command
        at once rather than at the end of its poll: RFC 5626 §3.5.1's double-CRLF
        keep-alive, sent as a datagram to its SIP port, which pjsip drops unanswered."""
        if self._waker is None:
            self._waker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._waker.setblocking(False)
            self._waker.bind((self.config.listen_host, 0))
        with contextlib.suppress(OSError):
            self._waker.sendto(WAKE, (self.config.listen_host, worker.sip_port))

    async def stop(self) -> None:
        self.stopping = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for worker in list(self.workers.values()):
            worker.state = "stopping"
            self.send(worker.index, {"op": "stop"})
        for worker in list(self.workers.values()):
            process = worker.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.error("SIP worker %d did not stop; killing it", worker.index)
                process.kill()
                await asyncio.to_thread(process.wait)
            self._gone(worker)
        for task in list(self._tasks):
            task.cancel()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def health(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "state": w.state,
                    "sip_port": w.sip_port,
                    "calls": len(w.calls),
                    "reserved": len(w.reserved),
                }
                for w in sorted(self.workers.values(), key=lambda w: w.index)
            ],
            "started": self.started,
            "free_slots": self.free_slots(include_starting=False),
        }


def _exit_reason(process: subprocess.Popen[bytes] | None) -> str:
    """How a worker process ended, for the log."""
    code = process.poll() if process is not None else None
    if code is None:
        return "its channel closed"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"
