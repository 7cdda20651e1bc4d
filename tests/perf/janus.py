"""Janus AudioBridge on loopback: the side-by-side performance anchor.

The benchmark drives ucbridge and the Janus AudioBridge plugin with the same load generator in the
same run, and compares CPU per participant-second and RSS per participant. This module starts a
private Janus process on a configuration written from scratch (never the stock one, which listens
on every interface), creates AudioBridge rooms through the Janus HTTP REST API and joins plain-RTP
participants to them.

API used (Janus 1.1, ``janus.plugin.audiobridge``):

- ``POST /janus`` ``{"janus": "create"}`` opens a session; ``POST /janus/<session>``
  ``{"janus": "attach", "plugin": "janus.plugin.audiobridge"}`` opens a handle. One handle is one
  participant, so every leg has its own handle.
- ``{"janus": "message", "body": {"request": "create", "allow_rtp_participants": true, ...}}`` is
  synchronous and answers ``"audiobridge": "created"``.
- ``{"janus": "message", "body": {"request": "join", "codec": "pcmu", "rtp": {"ip", "port"}}}`` is
  asynchronous: Janus acks it, and the ``"audiobridge": "joined"`` event, carrying the ``rtp``
  object with the address to send to, arrives on the session's long poll,
  ``GET /janus/<session>?maxev=N``.

Plain-RTP legs (RTP is RFC 3550; PCMU and PCMA are payload types 0 and 8 of RFC 3551):

- Janus connects its socket to the leg's address, so a leg must send from the address it joined
  with (symmetric RTP); packets from anywhere else never reach the plugin.
- Janus sends the mix to a leg only after it received one valid RTP packet from it.
- It drops the first packets of a stream (sequence probation) and pre-buffers six more before
  mixing, so audio comes out about 150 ms after the first packet.
- Janus sends every leg a packet each 20 ms once it has heard from it, digital silence included.
- Every leg costs Janus three threads: the handle's event loop, the plugin's RTP receive thread and
  its per-participant encoder. Every room adds a mixer thread, which sleeps while the room is
  empty and mixes every 20 ms as soon as anyone joined, silent or not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psutil

JANUS_BINARY: Final = "janus"
TASKSET_BINARY: Final = "taskset"
STOCK_CONFIG_DIR: Final = Path("/etc/janus")
LOOPBACK_IP: Final = "127.0.0.1"
LOOPBACK_INTERFACE: Final = "lo"

AUDIOBRIDGE_PLUGIN: Final = "janus.plugin.audiobridge"
AUDIOBRIDGE_LIBRARY: Final = "libjanus_audiobridge.so"
HTTP_TRANSPORT_LIBRARY: Final = "libjanus_http.so"
SHARED_LIBRARY_SUFFIX: Final = ".so"
API_BASE_PATH: Final = "/janus"

#: Janus closes a session after this many seconds without a request. The benchmark holds one
#: session for the whole run and sends no keepalives, so the timeout is set past any run.
SESSION_TIMEOUT_S: Final = 24 * 3600
#: Janus's log level for INFO: one line per join, nothing per packet.
DEBUG_LEVEL_INFO: Final = 4
#: A long poll returns a keepalive after 30 s without events; wait a little longer than that.
LONG_POLL_TIMEOUT_S: Final = 35.0
#: Events fetched per long poll.
LONG_POLL_MAX_EVENTS: Final = 100
HTTP_TIMEOUT_S: Final = 10.0
START_TIMEOUT_S: Final = 15.0
JOIN_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.05
LOG_TAIL_CHARS: Final = 2000

#: RFC 3551 static payload types, and the AudioBridge codec names that carry them.
PAYLOAD_TYPE_PCMU: Final = 0
PAYLOAD_TYPE_PCMA: Final = 8
G711_CODECS: Final = {PAYLOAD_TYPE_PCMU: "pcmu", PAYLOAD_TYPE_PCMA: "pcma"}
OPUS_CODEC: Final = "opus"
#: RFC 3551 section 3: the dynamic payload-type range, which Opus uses.
DYNAMIC_PAYLOAD_TYPES: Final = range(96, 128)
MAX_PORT: Final = 65535
#: JanusError code for an answer that is well-formed but not the one the request calls for.
UNEXPECTED_ANSWER: Final = 0


def _no_core_dumps() -> None:
    """In the child before exec: Janus 1.1.2 can crash while it shuts down with hundreds of
    participants (seen once after a 500-leg row), and its core was 13 GB."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class JanusError(RuntimeError):
    """An error answered by the Janus core or by the AudioBridge plugin."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"Janus error {code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _Folders:
    """Where the Janus package keeps its shared objects (read from the stock configuration)."""

    plugins: Path
    transports: Path
    events: Path
    loggers: Path

    @classmethod
    def from_stock_config(cls, path: Path) -> _Folders:
        text = path.read_text()

        def folder(key: str) -> Path:
            match = re.search(rf'^\s*{key}\s*=\s*"([^"]+)"', text, re.MULTILINE)
            if match is None:
                raise RuntimeError(f"Janus configuration has no {key}: {path}")
            return Path(match.group(1))

        return cls(
            plugins=folder("plugins_folder"),
            transports=folder("transports_folder"),
            events=folder("events_folder"),
            loggers=folder("loggers_folder"),
        )


def _libraries_except(folder: Path, keep: set[str]) -> str:
    """The comma-separated ``disable`` list: every Janus module in *folder* except *keep*.

    Janus loads every file whose name ends in ``.so``; listing all of them but the wanted ones
    keeps a module added by a later package version disabled too.
    """
    if not folder.is_dir():
        return ""
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.name.endswith(SHARED_LIBRARY_SUFFIX) and p.name not in keep
    )
    return ",".join(names)


_Section = dict[str, str | int | bool]


def _render_jcfg(sections: dict[str, _Section]) -> str:
    """Janus's libconfig-style ``.jcfg`` text: ``name: { key = value }`` per section."""
    lines = []
    for name, items in sections.items():
        lines.append(f"{name}: {{")
        for key, value in items.items():
            # JSON spells strings, integers and booleans the way libconfig does.
            lines.append(f"\t{key} = {json.dumps(value)}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _raise_on_core_error(answer: dict[str, Any]) -> None:
    """Raise the Janus core's ``{"janus": "error", "error": {"code", "reason"}}`` answer."""
    if answer.get("janus") == "error":
        error = answer.get("error", {})
        code = int(error.get("code", UNEXPECTED_ANSWER))
        raise JanusError(code, str(error.get("reason", "")))


class JanusAudioBridge:
    """A private Janus process with only the AudioBridge plugin and the HTTP API, on loopback.

    Use it as a context manager: entering starts Janus, leaving stops it by its PID. Not
    thread-safe: one thread drives it.
    """

    def __init__(
        self,
        http_port: int,
        rtp_port_range: tuple[int, int] = (20000, 40000),
        cpu: int | None = None,
        *,
        event_loops: int | None = None,
        debug_level: int = DEBUG_LEVEL_INFO,
    ) -> None:
        """Prepare, without starting, a Janus on ``127.0.0.1:http_port``.

        *rtp_port_range* bounds the AudioBridge's plain-RTP sockets; *cpu* pins the process to
        one core; *event_loops* replaces Janus's one event-loop thread per handle with a fixed
        pool (Janus's own default when ``None``).
        """
        if not 0 < http_port <= MAX_PORT:
            raise ValueError("HTTP port is out of range")
        low, high = rtp_port_range
        if not 0 < low < high <= MAX_PORT:
            raise ValueError("RTP port range is invalid")
        if cpu is not None and cpu < 0:
            raise ValueError("CPU index is negative")
        if event_loops is not None and event_loops < 1:
            raise ValueError("event loop count must be positive")
        self.http_port = http_port
        self.rtp_port_range = rtp_port_range
        self.cpu = cpu
        self.event_loops = event_loops
        self.debug_level = debug_level
        self._process: subprocess.Popen[bytes] | None = None
        self._psutil: psutil.Process | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._session: int | None = None
        self._admin_handle: int | None = None
        self._transactions = itertools.count(1)
        self._info: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> JanusAudioBridge:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The Janus process's PID."""
        return self._require_process().pid

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK_IP}:{self.http_port}{API_BASE_PATH}"

    @property
    def config_dir(self) -> Path:
        """The temporary configuration folder (it holds ``janus.log`` too)."""
        if self._workdir is None:
            raise RuntimeError("Janus is not started")
        return Path(self._workdir.name)

    @property
    def log_path(self) -> Path:
        return self.config_dir / "janus.log"

    @property
    def version_string(self) -> str:
        """Janus's version as ``/janus/info`` reports it, such as ``"1.1.2"``."""
        return str(self._info.get("version_string", ""))

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Write a loopback configuration, start Janus and wait until its HTTP API answers.

        Fails (and stops Janus) if the process exits, the API stays silent past *timeout*, or
        Janus holds a socket on anything but loopback.
        """
        if self._process is not None:
            raise RuntimeError("Janus is already started")
        binary = shutil.which(JANUS_BINARY)
        if binary is None:
            raise FileNotFoundError("janus is not installed")
        self._workdir = tempfile.TemporaryDirectory(prefix="janus-")
        try:
            self._launch(binary)
            self._info = self._wait_until_ready(timeout)
            self.assert_loopback_only()
            self._session = self._create_session()
            self._admin_handle = self._attach()
        except BaseException:
            self.stop()
            raise

    def _launch(self, binary: str) -> None:
        config_dir = self.config_dir
        self._write_config(config_dir)
        argv = [
            binary,
            "--config",
            str(config_dir / "janus.jcfg"),
            "--configs-folder",
            str(config_dir),
            "--log-file",
            str(self.log_path),
            "--disable-stdout",
        ]
        if self.cpu is not None:
            taskset = shutil.which(TASKSET_BINARY)
            if taskset is None:
                raise FileNotFoundError("taskset is not installed")
            argv = [taskset, "--cpu-list", str(self.cpu), *argv]  # taskset execs janus: same PID
        with (config_dir / "stderr.log").open("wb") as stderr:
            self._process = subprocess.Popen(
                argv,
                cwd=config_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_no_core_dumps,
            )
        self._psutil = psutil.Process(self._process.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGINT to Janus's PID, wait up to *timeout*, then SIGKILL; remove the temp folder."""
        process, self._process = self._process, None
        self._psutil = None
        self._session = None
        self._admin_handle = None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    # -- measurement ----------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the Janus process, all threads, in seconds."""
        times = self._require_psutil().cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        """Resident set size of the Janus process.

        It includes the session's undelivered notifications (each leg's first RTP packet tells the
        rest of its room), a few hundred bytes per leg and room-mate, which nobody polls for.
        """
        return int(self._require_psutil().memory_info().rss)

    def thread_count(self) -> int:
        return int(self._require_psutil().num_threads())

    def assert_loopback_only(self) -> None:
        """Raise if Janus holds an inet socket bound to anything but a loopback address."""
        exposed = sorted(
            f"{conn.laddr.ip}:{conn.laddr.port}"
            for conn in self._require_psutil().net_connections(kind="inet")
            if conn.laddr and not ipaddress.ip_address(conn.laddr.ip).is_loopback
        )
        if exposed:
            raise RuntimeError(f"Janus is bound beyond loopback: {', '.join(exposed)}")

    # -- AudioBridge ----------------------------------------------------------------------------

    def create_rooms(self, n_rooms: int, sampling_rate: int = 16000) -> list[int]:
        """Create *n_rooms* AudioBridge rooms that accept plain-RTP participants; their ids."""
        if n_rooms < 0:
            raise ValueError("room count is negative")
        rooms = []
        for _ in range(n_rooms):
            data = self._plugin_request(
                self._require_admin_handle(),
                {
                    "request": "create",
                    "sampling_rate": sampling_rate,
                    "allow_rtp_participants": True,
                    "record": False,
                },
            )
            rooms.append(int(data["room"]))
        return rooms

    def join_rtp(
        self, room: int, local_ip: str, local_port: int, payload_type: int = PAYLOAD_TYPE_PCMU
    ) -> tuple[str, int]:
        """Join one plain-RTP leg at ``local_ip:local_port``; the address Janus expects RTP on."""
        return self.join_rtp_many(room, [(local_ip, local_port)], payload_type)[0]

    def join_rtp_many(
        self,
        room: int,
        legs: Sequence[tuple[str, int]],
        payload_type: int = PAYLOAD_TYPE_PCMU,
        timeout: float = JOIN_TIMEOUT_S,
    ) -> list[tuple[str, int]]:
        """Join plain-RTP legs to *room*: all joins are sent, then all answers collected.

        Each leg is ``(ip, port)``, the address it sends from and receives on. Returns, in the
        same order, the ``(ip, port)`` Janus expects each leg's RTP on.
        """
        codec, rtp = self._codec_for(payload_type)
        pending: dict[str, int] = {}
        for index, (ip, port) in enumerate(legs):
            handle = self._attach()
            body = {
                "request": "join",
                "room": room,
                "display": f"rtp-{ip}:{port}",
                "muted": False,
                "codec": codec,
                "rtp": {"ip": ip, "port": port, **rtp},
            }
            transaction = self._next_transaction()
            answer = self._post(
                f"/{self._require_session()}/{handle}",
                {"janus": "message", "transaction": transaction, "body": body},
            )
            if answer.get("janus") != "ack":
                self._plugin_data(answer)  # raises on an error answer
                kind = answer.get("janus")
                raise JanusError(UNEXPECTED_ANSWER, f"unexpected answer to join: {kind}")
            pending[transaction] = index
        events = self._collect_events(set(pending), timeout)
        answers: list[tuple[str, int]] = [("", 0)] * len(legs)
        for transaction, event in events.items():
            data = self._plugin_data(event)
            if data.get("audiobridge") != "joined" or "rtp" not in data:
                raise JanusError(UNEXPECTED_ANSWER, f"unexpected join event: {data}")
            answers[pending[transaction]] = (str(data["rtp"]["ip"]), int(data["rtp"]["port"]))
        return answers

    def info(self) -> dict[str, Any]:
        """The answer of ``GET /janus/info``."""
        info = self._get("/info")
        if not isinstance(info, dict):
            raise JanusError(UNEXPECTED_ANSWER, "unexpected answer to info")
        return info

    # -- configuration --------------------------------------------------------------------------

    def _write_config(self, config_dir: Path) -> None:
        """Write a minimal loopback configuration: AudioBridge over the HTTP API, nothing else.

        Written from scratch rather than edited from the stock files, so that no stock setting
        (a 0.0.0.0 listener, an admin secret, the demo room and its mixer) comes along.
        """
        folders = _Folders.from_stock_config(STOCK_CONFIG_DIR / "janus.jcfg")
        low, high = self.rtp_port_range
        port_range = f"{low}-{high}"
        general: _Section = {
            "configs_folder": str(config_dir),
            "plugins_folder": str(folders.plugins),
            "transports_folder": str(folders.transports),
            "events_folder": str(folders.events),
            "loggers_folder": str(folders.loggers),
            "debug_level": self.debug_level,
            "session_timeout": SESSION_TIMEOUT_S,
            "interface": LOOPBACK_IP,
            "hide_dependencies": True,
        }
        if self.event_loops is not None:
            general["event_loops"] = self.event_loops
        configs: dict[str, dict[str, _Section]] = {
            "janus.jcfg": {
                "general": general,
                "media": {"rtp_port_range": port_range},
                "nat": {"ice_enforce_list": LOOPBACK_INTERFACE, "ignore_mdns": True},
                "plugins": {"disable": _libraries_except(folders.plugins, {AUDIOBRIDGE_LIBRARY})},
                "transports": {
                    "disable": _libraries_except(folders.transports, {HTTP_TRANSPORT_LIBRARY})
                },
                "loggers": {"disable": _libraries_except(folders.loggers, set())},
                "events": {
                    "broadcast": False,
                    "disable": _libraries_except(folders.events, set()),
                },
            },
            "janus.transport.http.jcfg": {
                "general": {
                    "json": "compact",
                    "base_path": API_BASE_PATH,
                    "http": True,
                    "port": self.http_port,
                    "ip": LOOPBACK_IP,
                    "https": False,
                },
                "admin": {"admin_http": False, "admin_https": False},
            },
            # Disabled above; written anyway so that enabling it never listens beyond loopback.
            "janus.transport.websockets.jcfg": {
                "general": {"ws": False, "ws_ip": LOOPBACK_IP, "wss": False},
                "admin": {"admin_ws": False, "admin_wss": False},
            },
            # No room sections: the stock demo room would run a mixer of its own.
            "janus.plugin.audiobridge.jcfg": {
                "general": {"rtp_port_range": port_range, "local_ip": LOOPBACK_IP, "events": False},
            },
        }
        for name, sections in configs.items():
            (config_dir / name).write_text(_render_jcfg(sections))

    # -- Janus API ------------------------------------------------------------------------------

    def _wait_until_ready(self, timeout: float) -> dict[str, Any]:
        process = self._require_process()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"janus exited with status {process.returncode}: {self._log_tail()}"
                )
            if self._listens_on_http_port():
                with contextlib.suppress(OSError):
                    return self.info()
            if time.monotonic() > deadline:
                raise TimeoutError(f"Janus HTTP API did not answer: {self._log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    def _listens_on_http_port(self) -> bool:
        """Whether the HTTP port is Janus's own, not another process's that answers alike."""
        return any(
            conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.http_port
            for conn in self._require_psutil().net_connections(kind="tcp")
        )

    def _create_session(self) -> int:
        answer = self._post("", {"janus": "create", "transaction": self._next_transaction()})
        return int(self._success_data(answer)["id"])

    def _attach(self) -> int:
        answer = self._post(
            f"/{self._require_session()}",
            {
                "janus": "attach",
                "plugin": AUDIOBRIDGE_PLUGIN,
                "transaction": self._next_transaction(),
            },
        )
        return int(self._success_data(answer)["id"])

    def _plugin_request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous AudioBridge request; the plugin's answer data."""
        answer = self._post(
            f"/{self._require_session()}/{handle}",
            {"janus": "message", "transaction": self._next_transaction(), "body": body},
        )
        return self._plugin_data(answer)

    def _collect_events(self, transactions: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Long-poll the session until an event answered each transaction.

        Other events (such as other participants' ``joined`` notifications) are dropped.
        """
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(transactions):
            if time.monotonic() > deadline:
                missing = len(transactions) - len(found)
                raise TimeoutError(f"Janus did not answer {missing} requests")
            batch = self._get(
                f"/{self._require_session()}?maxev={LONG_POLL_MAX_EVENTS}",
                timeout=LONG_POLL_TIMEOUT_S,
            )
            for event in batch if isinstance(batch, list) else [batch]:
                transaction = event.get("transaction")
                if event.get("janus") == "event" and transaction in transactions:
                    found[transaction] = event
        return found

    @staticmethod
    def _success_data(answer: dict[str, Any]) -> dict[str, Any]:
        _raise_on_core_error(answer)
        if answer.get("janus") != "success":
            raise JanusError(UNEXPECTED_ANSWER, f"unexpected answer: {answer.get('janus')}")
        data: dict[str, Any] = answer["data"]
        return data

    @staticmethod
    def _plugin_data(answer: dict[str, Any]) -> dict[str, Any]:
        _raise_on_core_error(answer)
        data: dict[str, Any] = answer.get("plugindata", {}).get("data", {})
        if "error_code" in data:
            raise JanusError(int(data["error_code"]), str(data.get("error", "")))
        return data

    @staticmethod
    def _codec_for(payload_type: int) -> tuple[str, dict[str, Any]]:
        """The AudioBridge codec name for an RTP payload type, and extra ``rtp`` fields."""
        if payload_type in G711_CODECS:
            return G711_CODECS[payload_type], {}
        if payload_type in DYNAMIC_PAYLOAD_TYPES:
            return OPUS_CODEC, {"payload_type": payload_type}
        raise ValueError("payload type is not PCMU, PCMA or dynamic (Opus)")

    def _post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(message).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        answer = self._send(request, HTTP_TIMEOUT_S)
        if not isinstance(answer, dict):
            raise JanusError(UNEXPECTED_ANSWER, "unexpected answer: not an object")
        return answer

    def _get(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
        return self._send(urllib.request.Request(self.base_url + path, method="GET"), timeout)

    @staticmethod
    def _send(request: urllib.request.Request, timeout: float) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # Janus answers errors as JSON too
            with error:
                body = error.read()
            try:
                return json.loads(body)
            except ValueError:
                raise JanusError(error.code, body.decode(errors="replace")) from error

    def _next_transaction(self) -> str:
        return f"ucb-{next(self._transactions)}"

    def _log_tail(self) -> str:
        if self._workdir is None:
            return ""
        parts = []
        for name in ("stderr.log", "janus.log"):
            path = self.config_dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-LOG_TAIL_CHARS:])
        return "\n".join(parts)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("Janus is not started")
        return self._process

    def _require_psutil(self) -> psutil.Process:
        if self._psutil is None:
            raise RuntimeError("Janus is not started")
        return self._psutil

    def _require_session(self) -> int:
        if self._session is None:
            raise RuntimeError("Janus is not started")
        return self._session

    def _require_admin_handle(self) -> int:
        if self._admin_handle is None:
            raise RuntimeError("Janus is not started")
        return self._admin_handle
