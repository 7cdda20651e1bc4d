"""Start a real ``ucbridge serve`` on 127.0.0.1 for a test, and stop it by its PID."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bridge.web.auth import Role, TokenAuthority

SECRET = "test-secret-" + "x" * 40


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_pair_base() -> int:
    """An even UDP port whose successor is free too (RTP + RTCP of one worker)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM) & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair")


#: How long a stopping server has to end its workers and gateways before SIGKILL.
SERVER_STOP_S = 15.0


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM a process a test started, then SIGKILL it if it is still there after
    ``timeout`` seconds; either way, wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: ``media.tick_budget`` of test servers: admission control never refuses a leg.
TEST_TICK_BUDGET = 1.0


class Server:
    def __init__(
        self,
        tmp: Path,
        *,
        workers: int = 1,
        media_toml: str = "",
        extra_toml: str = "",
        gateways: tuple[str, ...] | list[str] = (),
    ) -> None:
        """``gateways``: the gateway processes to run ("sip", "webrtc", "camera"); the
        others are disabled. A gateway's settings may go in ``extra_toml`` under
        ``[gateways.NAME]``; that section then says ``enabled`` itself."""
        self.gateways = tuple(gateways)
        self.port = free_port()
        self.rtp_base = free_udp_pair_base()
        if "floor_port_base" not in media_toml:
            # Not the default 42000: test servers running at the same time would share it.
            media_toml = f"floor_port_base = {free_port(socket.SOCK_DGRAM)}\n{media_toml}"
        if "tick_budget" not in media_toml:
            # Admission control is tested on its own (test_bad_input); elsewhere a test's few
            # legs must not be refused because a busy CI host stretched a handful of ticks
            # (a clean-clone run saw p99 tick work of 12.9 ms with three legs).
            media_toml = f"tick_budget = {TEST_TICK_BUDGET}\n{media_toml}"
        self.tmp = tmp
        self.recordings = tmp / "recordings"
        self.config = tmp / "ucbridge.toml"
        self.config.write_text(
            f"[server]\nport = {self.port}\n"
            f"[media]\nworkers = {workers}\nrtp_port_base = {self.rtp_base}\n{media_toml}\n"
            f'[recording]\ndir = "{self.recordings}"\n'
            f'[gateways]\nruntime_dir = "{tmp / "run"}"\n'
            + "".join(
                f"[gateways.{name}]\nenabled = {'true' if name in self.gateways else 'false'}\n"
                for name in ("sip", "webrtc", "camera")
                if f"[gateways.{name}]" not in extra_toml
            )
            + extra_toml
        )
        self.authority = TokenAuthority(SECRET)
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "serve.log"

    def token(self, role: Role = Role.DISPATCHER, user: str = "tester") -> str:
        return self.authority.issue(user, role)

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, UCBRIDGE_AUTH_SECRET=SECRET)
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "bridge.cli", "serve", "--config", str(self.config)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_health(
            lambda h: (
                all(w["state"] == "running" for w in h["workers"])
                and all(g["state"] == "running" for g in h.get("gateways", []))
            ),
            timeout,
        )

    def wait_health(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-3000:]}")
            try:
                last = self.get("/health", auth=False)
                if predicate(last):
                    return last
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise TimeoutError(
            f"health never matched; last: {last}; log: {self.log.read_text()[-3000:]}"
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        role: Role = Role.DISPATCHER,
        auth: bool = True,
        token: str | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {token or self.token(role)}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(raw) if "json" in ctype else raw
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    def get(self, path: str, auth: bool = True) -> Any:
        status, body = self.request("GET", path, auth=auth)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.request(method, path, body)
        if status >= 300:
            raise AssertionError(f"{method} {path}: {status} {reply}")
        return reply

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, SERVER_STOP_S)
        self._log.close()
        self.process = None
