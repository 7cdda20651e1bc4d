"""Shared pieces of the benchmarks: a real ``ucbridge serve`` on loopback, ports, the machine.

The server is started the way the integration tests start it (a temporary TOML
configuration, a token-signing secret in the environment, tokens minted locally) and is
stopped by its PID. Its REST API is reached over one keep-alive HTTP connection, so that
joining a few thousand legs costs seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from bridge.web.auth import Role, TokenAuthority

LOOPBACK: Final = "127.0.0.1"
#: Token-signing secret of the benchmark's private servers (never a deployment's).
SECRET: Final = "bench-secret-" + "x" * 40
HTTP_TIMEOUT_S: Final = 10.0
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
HEALTH_POLL_S: Final = 0.05
LOG_TAIL_CHARS: Final = 3000
HTTP_OK: Final = 200
HTTP_OK_LIMIT: Final = 300
#: HTTP status of a refused join: a worker at its tick budget (admission control).
HTTP_UNAVAILABLE: Final = 503
#: Leg ports come from below the kernel's ephemeral range, so that no other program's
#: ``bind(port=0)`` takes one between the bench releasing it and the load generator's bind.
LEG_PORT_FIRST: Final = 10000
LEG_PORT_LAST: Final = 20000
PROC_CPUINFO: Final = Path("/proc/cpuinfo")
PROC_STAT: Final = Path("/proc/stat")
#: /proc/stat's cpu line: user nice system idle iowait irq softirq steal (then guest time,
#: which user already holds). Idle and iowait are the columns at 3 and 4.
_STAT_COLUMNS: Final = 8
_IDLE_COLUMNS: Final = (3, 4)
QUIET_SAMPLE_S: Final = 1.0


class AdmissionRefusedError(RuntimeError):
    """A worker refused a join with 503: it is at its tick budget."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel considers free now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_udp_pair_base() -> int:
    """An even UDP port whose successor is free too (RTP and RTCP of one worker)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM) & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind((LOOPBACK, port))
                b.bind((LOOPBACK, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair")


def reserve_udp_ports(
    count: int, first: int = LEG_PORT_FIRST, last: int = LEG_PORT_LAST
) -> list[socket.socket]:
    """``count`` UDP sockets bound on 127.0.0.1 to ports in ``[first, last)``.

    Legs join from these ports while the sockets stay bound, as a real endpoint listens
    when it joins (a mixer's packets to an unbound port cost it an ICMP error each on
    loopback); close them just before the load generator binds the same ports.
    """
    sockets: list[socket.socket] = []
    try:
        for port in range(first, last):
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
    except BaseException:
        close_all(sockets)
        raise
    if len(sockets) < count:
        close_all(sockets)
        raise RuntimeError(f"only {len(sockets)} free UDP ports in {first}-{last}")
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
    sockets.clear()


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def process_rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def process_cpu_s(pid: int) -> float:
    """User plus system CPU time of a process (all its threads)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a process we started (by PID), then SIGKILL if it lingers."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
            process.wait(timeout)


class Api:
    """A keep-alive JSON client of one ucbridge node's REST API."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        for attempt in range(2):  # one retry on a connection the server closed
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    LOOPBACK, self.port, timeout=HTTP_TIMEOUT_S
                )
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                raw = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.request(method, path, body)
        if status == HTTP_UNAVAILABLE:
            raise AdmissionRefusedError(f"{method} {path}: {status} {reply}")
        if status >= HTTP_OK_LIMIT:
            raise RuntimeError(f"{method} {path}: {status} {reply}")
        return reply

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class UcbridgeServer:
    """``ucbridge serve`` on 127.0.0.1 with a temporary configuration, stopped by its PID."""

    def __init__(
        self,
        tmp: Path,
        *,
        workers: int = 1,
        pin_cpus: list[int] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.port = free_port()
        self.rtp_base = free_udp_pair_base()
        self.tmp = tmp
        self.config = tmp / "ucbridge.toml"
        pins = f"pin_cpus = {json.dumps(pin_cpus)}\n" if pin_cpus else ""
        self.config.write_text(
            f'[server]\nhost = "{LOOPBACK}"\nport = {self.port}\n'
            f'[media]\nworkers = {workers}\nrtp_host = "{LOOPBACK}"\n'
            f"rtp_port_base = {self.rtp_base}\n{pins}"
            f'[recording]\ndir = "{tmp / "recordings"}"\n'
            # A benchmark that does not configure gateway processes runs none: they would
            # only add their idle cost to its figures.
            + (
                ""
                if "[gateways" in extra_toml
                else f'[gateways]\nruntime_dir = "{tmp / "run"}"\n'
                + "".join(
                    f"[gateways.{name}]\nenabled = false\n" for name in ("sip", "webrtc", "camera")
                )
            )
            + extra_toml
        )
        self.authority = TokenAuthority(SECRET)
        self.api = Api(self.port, self.authority.issue("bench", Role.DISPATCHER))
        self.log = tmp / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._child_pids: list[int] = []

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server is not started")
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Start and wait until every worker runs; returns ``/health``."""
        env = dict(os.environ, UCBRIDGE_AUTH_SECRET=SECRET)
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "bridge.cli", "serve", "--config", str(self.config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        health = self.wait_health(
            lambda h: bool(h["workers"]) and all(w["state"] == "running" for w in h["workers"]),
            timeout,
        )
        self._child_pids = self.descendants()
        return health

    def descendants(self) -> list[int]:
        """PIDs of every process serve started (workers, a standby, the recorder, helpers)."""
        if self.process is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.pid for c in psutil.Process(self.process.pid).children(recursive=True)]
        return []

    def health(self) -> dict[str, Any]:
        status, body = self.api.request("GET", "/health")
        if status != HTTP_OK or not isinstance(body, dict):
            raise RuntimeError(f"GET /health: {status} {body}")
        return body

    def wait_health(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                print(self.log_tail(), file=sys.stderr)
                code = self.process.returncode
                raise RuntimeError(f"serve exited with status {code}: {self.last_log_line()}")
            with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
                last = self.health()
                if predicate(last):
                    return dict(last)
            time.sleep(HEALTH_POLL_S)
        print(self.log_tail(), file=sys.stderr)
        raise TimeoutError(f"health never matched; last: {last}; log: {self.last_log_line()}")

    def workers(self) -> list[dict[str, Any]]:
        """``GET /api/workers``: each worker's own figures."""
        reply = self.api.ok("GET", "/api/workers")
        return list(reply["workers"])

    def last_log_line(self) -> str:
        lines = [line for line in self.log_tail().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the serve process by PID (it stops its children), then make sure they went."""
        self.api.close()
        self._child_pids = sorted(set(self._child_pids) | set(self.descendants()))
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in self._child_pids:  # only if serve could not stop them itself
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).is_running():
                    stop_pid(pid)
        self._child_pids = []
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    nproc: int
    cpu_model: str
    kernel: str
    python: str
    date: str
    load_before: tuple[float, float, float]

    @classmethod
    def probe(cls) -> Machine:
        model = "unknown"
        with contextlib.suppress(OSError):
            for line in PROC_CPUINFO.read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        return cls(
            nproc=os.cpu_count() or 0,
            cpu_model=model,
            kernel=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            load_before=os.getloadavg(),
        )


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot, from /proc/stat (steal counts as busy)."""
    columns = PROC_STAT.read_text().splitlines()[0].split()[1 : 1 + _STAT_COLUMNS]
    values = [int(v) for v in columns]
    idle = sum(values[i] for i in _IDLE_COLUMNS)
    return sum(values) - idle, sum(values)


def host_busy_cores(sample_s: float = QUIET_SAMPLE_S) -> float:
    """How many CPUs' worth of time the whole host was busy over the next ``sample_s``."""
    busy_a, total_a = host_jiffies()
    time.sleep(sample_s)
    busy_b, total_b = host_jiffies()
    return cpu_cores(busy_b - busy_a, total_b - total_a)


def cpu_cores(busy: int, total: int) -> float:
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def wait_for_quiet(max_wait_s: float, threshold_cores: float) -> float:
    """Wait (at most ``max_wait_s``) until the host is busy below ``threshold_cores``.

    Returns the last reading; the caller records it, quiet or not.
    """
    deadline = time.monotonic() + max_wait_s
    busy = host_busy_cores()
    while busy > threshold_cores and time.monotonic() < deadline:
        busy = host_busy_cores()
    return busy


@dataclass(frozen=True)
class CpuSnapshot:
    busy_jiffies: int
    total_jiffies: int
    #: CPU seconds of the processes the benchmark knows (the system under test, the generator).
    known_cpu_s: float


def cpu_snapshot(pids: list[int]) -> CpuSnapshot:
    known = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            known += process_cpu_s(pid)
    busy, total = host_jiffies()
    return CpuSnapshot(busy, total, known)


def other_cores(before: CpuSnapshot, after: CpuSnapshot, wall_s: float) -> float:
    """CPUs' worth of time used by everything else on the host between two snapshots.

    The host's busy time minus the known processes' CPU time; kernel work done for them
    outside their own context (softirqs of loopback delivery) counts as other, so a few
    percent are expected even on an idle host.
    """
    host = cpu_cores(
        after.busy_jiffies - before.busy_jiffies, after.total_jiffies - before.total_jiffies
    )
    return max(0.0, host - (after.known_cpu_s - before.known_cpu_s) / wall_s)


def reproduce_command(
    script: str,
    argv: Sequence[str],
    output_options: frozenset[str],
    output_flags: frozenset[str],
    python: str = ".venv/bin/python",
) -> str:
    """The command line that measures the same as ``argv``, without the options (with their
    values) and flags that only name where figures go."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in output_options:
            skip = "=" not in arg
            continue
        if name in output_flags:
            continue
        kept.append(arg)
    return shlex.join([python, script, *kept])


def write_section(path: Path, text: str, start_mark: str, end_mark: str) -> None:
    """Replace the text between the markers in ``path``, or append the section; keep the rest."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = old.find(start_mark), old.find(end_mark)
    if start != -1 and end > start:
        new = old[:start] + text.rstrip("\n") + old[end + len(end_mark) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new if new.endswith("\n") else new + "\n")
