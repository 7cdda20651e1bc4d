"""Real SIP peers for the SIP gateway's tests: baresip (Debian ``baresip-core``) and the
gateway's settings for a ``Server``. Everything on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import glob
import random
import shutil
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
from server import stop_process

RATE = 8000


#: SIP and RTP ports of the gateway under test come from this band, below the kernel's
#: ephemeral range (32768 up): a pjsua2 worker binds a call's RTP ports only when the
#: call comes, and a ``bind(port=0)`` meanwhile (the gateway's loopback legs, SIPp's
#: sockets, any other program) must not take one. Other tests use 10000 up.
PORT_BAND = (6000, 10000)
#: baresip's own SIP, console and RTP ports: a band of their own, so that they never take
#: one the gateway under test has planned for a call but not bound yet.
PEER_PORT_BAND = (24000, 30000)


def free_sip_ports(count: int, band: tuple[int, int] = PORT_BAND, *, tcp_too: bool = False) -> int:
    """A base port with ``count`` consecutive free UDP ports (in ``band``, from a random
    start so that tests running at once rarely meet); free for TCP too if ``tcp_too``."""
    first, last = band
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp_too else (socket.SOCK_DGRAM,)
    for _ in range(200):
        base = random.randrange(first, last - count)
        socks = []
        try:
            for i in range(count):
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


def free_udp_tcp_port() -> int:
    """A port in :data:`PEER_PORT_BAND` free for both UDP and TCP: baresip listens on both
    for SIP (and its console), and a port from ``bind(port=0)`` is in the kernel's
    ephemeral range, where another program's outgoing TCP connection may take it meanwhile
    (a clean-clone run met "tcp: sock_bind: Address already in use")."""
    return free_sip_ports(1, PEER_PORT_BAND, tcp_too=True)


def sip_toml(
    *, workers: int = 4, extra: str = "", min_workers: int = 1, spare: int = 0
) -> tuple[str, int]:
    """A ``[gateways.sip]`` section on free ports; returns it and the front's port."""
    base = free_sip_ports(workers + 1 + workers * 8)  # one block: no range meets another
    rtp = base + workers + 1
    toml = (
        "[gateways.sip]\nenabled = true\n"
        f"listen_port = {base}\nworker_port_base = {base + 1}\n"
        f"max_workers = {workers}\nmin_workers = {min_workers}\nspare_calls = {spare}\n"
        f"rtp_port_base = {rtp}\nrtp_ports_per_worker = 8\n" + extra
    )
    return toml, base


def wait_sip(port: int, timeout: float = 15.0) -> None:
    """Until the SIP front on ``port`` answers an OPTIONS (RFC 3261 §11) with 200."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        local = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s.sendto(
                (
                    f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKping{n}\r\n"
                    f"From: <sip:t@127.0.0.1>;tag=p{n}\r\nTo: <sip:127.0.0.1>\r\n"
                    f"Call-ID: ping-{n}@t\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
            try:
                if s.recv(4096).startswith(b"SIP/2.0 200"):
                    return
            except (TimeoutError, ConnectionRefusedError):
                continue
    raise AssertionError(f"the SIP front on port {port} never answered OPTIONS")


def write_tone(path: Path, freq: float, seconds: float, rate: int = RATE) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (9000 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


class Baresip:
    """baresip with a tone as its microphone, recording what it hears, answering calls."""

    def __init__(self, tmp: Path, tone_hz: float, name: str = "a") -> None:
        if shutil.which("baresip") is None:
            raise RuntimeError("baresip is not installed (Debian package baresip-core)")
        self.dir = tmp / f"baresip-{name}"
        self.rec = self.dir / "rec"
        self.rec.mkdir(parents=True)
        self.port = free_udp_tcp_port()
        self.cons_port = free_udp_tcp_port()
        rtp = free_sip_ports(12, PEER_PORT_BAND)
        tone = self.dir / "tone.wav"
        write_tone(tone, tone_hz, 60.0)
        (self.dir / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen 127.0.0.1:{self.port}\n"
            "net_interface 127.0.0.1\n"
            f"audio_source aufile,{tone}\n"
            f"audio_alert aufile,{tone}\n"
            "audio_channels 1\n"
            f"rtp_ports {rtp}-{rtp + 11}\n"
            "module_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule cons.so\n"
            f"cons_listen 127.0.0.1:{self.cons_port}\n"
            "module_app account.so\nmodule_app menu.so\n"
            f"snd_path {self.rec}\n"
        )
        (self.dir / "accounts").write_text(
            f"<sip:{name}@127.0.0.1:{self.port}>;regint=0;answermode=auto\n"
        )
        self.uri = f"sip:{name}@127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "baresip.log"

    def start(self, seconds: int = 30, dial: str | None = None) -> None:
        args = ["baresip", "-f", str(self.dir), "-t", str(seconds)]
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        if dial:
            # Dial once it is ready, through its console: a `-e /dial` given at start
            # could run before its user agent was up, and the call then never left it.
            self.wait_ready()
            self.command(f"/dial {dial}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until baresip says it is ready (its SIP port is bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "baresip is ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise AssertionError(f"baresip did not start: {self.log.read_text()[-2000:]}")

    def keys(self, text: str) -> None:
        """Type keys into baresip's console (in a call, digits are sent as DTMF)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), ("127.0.0.1", self.cons_port))

    def command(self, line: str) -> None:
        self.keys(line + "\n")

    def recording(self) -> tuple[npt.NDArray[np.int16], int]:
        """What baresip heard (its decoder's dump), waiting for the file to appear."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            files = sorted(glob.glob(str(self.rec / "dump-*-dec.wav")))
            if files and Path(files[-1]).stat().st_size > 44:
                return read_wav(Path(files[-1]))
            time.sleep(0.05)
        raise AssertionError(f"baresip recorded nothing; log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        self._log.close()
        self.process = None
