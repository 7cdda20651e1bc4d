"""A SIP worker: one pjsua2 endpoint in a process of its own.

``python -P -m bridge.gateways.sip.worker`` is started by the SIP gateway process
(:mod:`.pool`) with one end of a ``SOCK_SEQPACKET`` socket pair on the descriptor named by
``$UCBRIDGE_SIP_WORKER_FD``. pjsua is a singleton per process and the pjsua2-python wheel
is built with PJSUA_MAX_CALLS = 4, so the gateway runs as many workers as it needs.

Threading: pjsua2 is created with ``threadCnt = 0`` and ``mainThreadOnly = True``; the
main thread polls ``libHandleEvents`` and, between polls, the command socket. Every
pjsua2 call is made from that thread. The conference bridge's clock thread (the null
sound device) calls the legs' :class:`LegPort` callbacks, which touch only their
:class:`~.media.LoopbackLeg` (its own socket and deque), never pjsua2 itself.

Messages are JSON objects. Commands (gateway -> worker): ``answer``, ``hangup``,
``attach``, ``detach``, ``play``, ``stop_play``, ``dial``, ``register``, ``stop``.
Events (worker -> gateway): ``ready``, ``incoming``, ``state``, ``media``, ``dtmf``,
``played``, ``reg``, ``error``, ``stats``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pjsua2 as pj

from .media import LoopbackLeg, Prompt
from .protocol import MAX_MESSAGE, SOURCE_HEADER, WORKER_FD_ENV

logger = logging.getLogger("bridge.gateways.sip.worker")

#: How long one libHandleEvents poll may block. SIP traffic ends the poll at once, and
#: so does a command: the pool follows each with a CRLF datagram on the SIP port. What
#: waits for the poll's end is work queued to this thread from the others: DTMF digits
#: (pjsua2's main-thread-only callbacks) and a prompt's end. Each wake-up costs ~0.25 ms
#: of CPU (pjsip's select() poll and the loop's Python); at 5 ms the polling alone was
#: 2 % of a core per worker, at 20 ms 0.8 %.
POLL_MS = 100
#: How long a stopping worker waits for its calls to end before destroying the library.
SHUTDOWN_S = 2.0
#: pjsua media quality (pjsua_media_config.quality): 4 is the cheapest that keeps a
#: filtering resampler in the conference bridge (below 3 it resamples linearly).
MEDIA_QUALITY = 4
#: Seconds between two stats events.
STATS_INTERVAL_S = 1.0
#: The legs' conference ports: 20 ms frames (microseconds) of 16-bit mono PCM.
FRAME_USEC = 20000
BITS_PER_SAMPLE = 16
#: pjsua2 codec ids of the codecs the gateway may offer (the rest are disabled).
CODEC_IDS = {
    "PCMU": ("PCMU/8000/1",),
    "PCMA": ("PCMA/8000/1",),
    "G722": ("G722/16000/1",),
    "L16": ("L16/16000/1", "L16/8000/1"),
}


# ------------------------------------------------------------ ByteVector access
def _vector_begin(vector: Any) -> int:
    """The data pointer of a SWIG ``std::vector<unsigned char>`` (libstdc++ layout:
    begin, end, capacity pointers). Reading it element by element costs 600 µs a frame."""
    return int(ctypes.c_void_p.from_address(int(vector.this)).value or 0)


def _check_vector_layout() -> bool:
    probe = pj.ByteVector(b"\x01\x02\x03\x04")
    return _vector_begin(probe) != 0 and ctypes.string_at(_vector_begin(probe), 4) == (
        b"\x01\x02\x03\x04"
    )


FAST_VECTORS = _check_vector_layout()


def read_vector(vector: Any, size: int) -> bytes:
    if FAST_VECTORS:
        size = min(size, int(vector.size()))
        return ctypes.string_at(_vector_begin(vector), size) if size else b""
    return bytes(vector[0:size])


def write_vector(vector: Any, data: bytes) -> None:
    if FAST_VECTORS:
        vector.resize(len(data))
        ctypes.memmove(_vector_begin(vector), data, len(data))
    else:
        vector.assign(data)


# ----------------------------------------------------------------- the worker
class LegPort(pj.AudioMediaPort):  # type: ignore[misc]
    """The conference-bridge port of one call: its audio out to the leg, the room's in."""

    def __init__(self, leg: LoopbackLeg) -> None:
        super().__init__()
        self.leg = leg

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802 (pjsua2 API)
        data = self.leg.next_frame()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        write_vector(frame.buf, data)
        frame.size = len(data)

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2 API)
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
            self.leg.send_frame(read_vector(frame.buf, frame.size))


class WorkerCall(pj.Call):  # type: ignore[misc]
    def __init__(self, worker: Worker, account: pj.Account, tag: str, call_id: int) -> None:
        super().__init__(account, call_id)
        self.worker = worker
        self.tag = tag
        self.leg = LoopbackLeg(worker.clock_rate)
        self.port: LegPort | None = None
        #: The codec the last ``media`` event named (None: no event yet).
        self.codec: str | None = None
        self.ended = False

    @property
    def connected(self) -> bool:
        """The call's audio has been linked to its leg at least once."""
        return self.codec is not None

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        info = self.getInfo()
        state = STATE_NAMES.get(info.state, "unknown")
        self.worker.emit(
            {
                "event": "state",
                "call": self.tag,
                "state": state,
                "code": int(info.lastStatusCode),
                "reason": str(info.lastReason),
                "sip_call_id": str(info.callIdString),
            }
        )
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ended = True
            self.worker.dead.append(self)

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        """Link the call's audio to its leg on every active media state, not only the first.

        Each offer/answer exchange (RFC 3264 §8: a re-INVITE or UPDATE that puts the call
        on hold with ``a=sendonly`` and resumes it with ``a=sendrecv``, RFC 3264 §8.4, or
        that moves the media to another address or codec, §8.3) makes pjsua 2.15 stop
        the stream, remove its conference slot and add a new one: the old slot's links
        are gone with it. The leg's port is created once and linked again each time
        (linking two slots already linked leaves them as they are). The ``media`` event
        goes out once per call, and again only when the codec changed.
        """
        info = self.getInfo()
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue  # on hold or inactive: relinked when it is active again
            audio = self.getAudioMedia(media.index)
            port = self._leg_port()
            audio.startTransmit(port)
            port.startTransmit(audio)
            codec = ""
            try:
                stream = self.getStreamInfo(media.index)
                codec = f"{stream.codecName}/{stream.codecClockRate}"
            except pj.Error:
                pass
            if codec != self.codec:
                self.codec = codec
                self.worker.emit(
                    {"event": "media", "call": self.tag, "codec": codec, "leg_port": self.leg.port}
                )

    def _leg_port(self) -> LegPort:
        """The leg's conference port, created on the call's first active media."""
        if self.port is None:
            port = LegPort(self.leg)
            fmt = pj.MediaFormatAudio()
            fmt.init(pj.PJMEDIA_FORMAT_PCM, self.worker.clock_rate, 1, FRAME_USEC, BITS_PER_SAMPLE)
            port.createPort(f"leg-{self.tag}", fmt)
            self.port = port
        return self.port

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.worker.emit({"event": "dtmf", "call": self.tag, "digit": prm.digit, "method": method})


STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "null",
    pj.PJSIP_INV_STATE_CALLING: "calling",
    pj.PJSIP_INV_STATE_INCOMING: "incoming",
    pj.PJSIP_INV_STATE_EARLY: "early",
    pj.PJSIP_INV_STATE_CONNECTING: "connecting",
    pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
    pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected",
}


class WorkerAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, worker: Worker, name: str) -> None:
        super().__init__()
        self.worker = worker
        self.name = name

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self.worker.incoming(self, prm)

    def onRegState(self, prm: Any) -> None:  # noqa: N802
        info = self.getInfo()
        self.worker.emit(
            {
                "event": "reg",
                "account": self.name,
                "code": int(prm.code),
                "reason": str(prm.reason),
                "active": bool(info.regIsActive),
                "expires": int(prm.expiration),
            }
        )


def _request_line(whole: str) -> tuple[str, str]:
    """The request URI and the front's source header of a received INVITE's text."""
    lines = whole.split("\r\n") if "\r\n" in whole else whole.split("\n")
    parts = lines[0].split(" ") if lines else []
    uri = parts[1] if len(parts) == 3 else ""
    source = ""
    prefix = SOURCE_HEADER.lower() + ":"
    for line in lines[1:]:
        if not line.strip():
            break
        if line.lower().startswith(prefix):
            source = line.split(":", 1)[1].strip()
    return uri, source


def load_asset(path: Path, rate: int) -> npt.NDArray[np.int16]:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != rate:
            raise ValueError(f"prompt {path.name} is not mono 16-bit PCM at {rate} Hz")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


class Worker:
    def __init__(self, sock: socket.socket, init: dict[str, Any]) -> None:
        self.sock = sock
        self.index = int(init["index"])
        self.host = str(init["host"])
        self.sip_port = int(init["sip_port"])
        self.clock_rate = int(init.get("clock_rate", 16000))
        self.assets = Path(init["assets"])
        self.init = init
        self.calls: dict[str, WorkerCall] = {}
        self.accounts: dict[str, WorkerAccount] = {}
        self.dead: list[WorkerCall] = []
        self.prompts: dict[str, npt.NDArray[np.int16]] = {}
        self.backlog: collections.deque[bytes] = collections.deque(maxlen=4096)
        self.stopping = False
        self.incoming_seq = 0
        self.ep = pj.Endpoint()

    # ------------------------------------------------------------ channel
    def emit(self, event: dict[str, Any]) -> None:
        self.backlog.append(json.dumps(event).encode())
        self._flush()

    def _flush(self) -> None:
        while self.backlog:
            try:
                self.sock.send(self.backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self.stopping = True
                self.backlog.clear()
                return
            self.backlog.popleft()

    def _commands(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stopping = True  # the gateway process is gone
                return
            try:
                command = json.loads(data)
                handler = getattr(self, "cmd_" + str(command.get("op")), None)
                if handler is None:
                    raise ValueError(f"unknown SIP worker command: {command.get('op')}")
                handler(command)
            except pj.Error as exc:
                self.emit({"event": "error", "call": command.get("call"), "message": exc.info()})
            except (ValueError, KeyError, TypeError) as exc:
                self.emit({"event": "error", "call": None, "message": str(exc)})

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        ep = self.ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = int(self.init["max_calls"])
        cfg.uaConfig.userAgent = str(self.init.get("user_agent", "ucbridge"))
        cfg.logConfig.level = int(self.init.get("pj_log_level", 1))
        cfg.logConfig.consoleLevel = int(self.init.get("pj_log_level", 1))
        cfg.logConfig.msgLogging = False  # SIP messages carry digest credentials
        cfg.medConfig.clockRate = self.clock_rate
        cfg.medConfig.sndClockRate = self.clock_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.audioFramePtime = 20
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        # 3..4: the conference bridge resamples G.711's 8 kHz with the small filter
        # table (PJMEDIA_CONF_SMALL_FILTER) instead of the large one of the default 8.
        cfg.medConfig.quality = MEDIA_QUALITY
        ep.libInit(cfg)
        tc = pj.TransportConfig()
        tc.port = self.sip_port
        tc.boundAddress = self.host
        tc.publicAddress = self.host
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        ep.libStart()
        ep.audDevManager().setNullDev()
        self._codecs([str(c) for c in self.init.get("codecs", ["PCMU", "PCMA", "G722", "L16"])])
        self._account("local", {"uri": f"sip:ucbridge@{self.host}:{self.sip_port}"}, True)
        for account in self.init.get("accounts", []):
            self._account(str(account["name"]), account, False)
        self.emit({"event": "ready", "index": self.index, "sip_port": self.sip_port})

    def _codecs(self, wanted: list[str]) -> None:
        priorities: dict[str, int] = {}
        for rank, name in enumerate(wanted):
            for codec_id in CODEC_IDS[name]:
                priorities[codec_id] = 250 - rank * 10
        for codec in self.ep.codecEnum2():
            self.ep.codecSetPriority(codec.codecId, priorities.get(codec.codecId, 0))

    def _account(self, name: str, spec: dict[str, Any], default: bool) -> None:
        cfg = pj.AccountConfig()
        cfg.idUri = str(spec["uri"])
        rtp = cfg.mediaConfig.transportConfig
        rtp.port = int(self.init["rtp_port"])
        rtp.portRange = int(self.init["rtp_ports"])
        rtp.boundAddress = self.host
        rtp.publicAddress = self.host
        cfg.natConfig.sdpNatRewriteUse = 0
        cfg.natConfig.viaRewriteUse = 0
        cfg.natConfig.contactRewriteUse = 0
        cfg.natConfig.sipOutboundUse = 0
        if spec.get("registrar"):
            cfg.regConfig.registrarUri = str(spec["registrar"])
            cfg.regConfig.registerOnAdd = bool(spec.get("register", False))
            cfg.regConfig.timeoutSec = int(spec.get("expires", 300))
            cfg.regConfig.retryIntervalSec = 0  # the gateway backs off itself
            if spec.get("contact"):
                cfg.sipConfig.contactForced = str(spec["contact"])
        if spec.get("username"):
            cred = pj.AuthCredInfo(
                "digest", str(spec.get("realm", "*")), str(spec["username"]), 0, spec["password"]
            )
            cfg.sipConfig.authCreds.append(cred)
        account = WorkerAccount(self, name)
        account.create(cfg, default)
        self.accounts[name] = account

    def run(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self.stopping:
            self.ep.libHandleEvents(POLL_MS)
            self._commands()
            self._reap()
            self._played()
            if time.monotonic() >= next_stats:
                next_stats += STATS_INTERVAL_S
                self._stats()
            self._flush()
        self.shutdown()

    def _played(self) -> None:
        for call in self.calls.values():
            while call.leg.finished:
                self.emit({"event": "played", "call": call.tag, "asset": call.leg.finished.pop(0)})

    def _stats(self) -> None:
        legs = {tag: vars(call.leg.stats) for tag, call in self.calls.items() if call.connected}
        self.emit({"event": "stats", "calls": len(self.calls), "legs": legs})

    def _reap(self) -> None:
        while self.dead:
            call = self.dead.pop()
            self.calls.pop(call.tag, None)
            self._release(call)

    def _release(self, call: WorkerCall) -> None:
        call.leg.close()
        if call.port is not None:
            port, call.port = call.port, None
            del port  # unregisters the conference port (pjsua2 thread)

    def shutdown(self) -> None:
        """Hang up, let the BYEs go out, then destroy the library with no object left."""
        with contextlib.suppress(pj.Error):
            self.ep.hangupAllCalls()
        deadline = time.monotonic() + SHUTDOWN_S
        while self.calls and time.monotonic() < deadline:
            self.ep.libHandleEvents(20)
            self._reap()
        # No pjsua2 object may outlive libDestroy (their destructors call into pjsua):
        # pop them one by one so no loop variable keeps one alive.
        self.dead.clear()
        while self.calls:
            self._release(self.calls.popitem()[1])
        while self.accounts:
            self.accounts.popitem()[1].shutdown()
        self.ep.libDestroy()

    # ------------------------------------------------------------- events
    def incoming(self, account: WorkerAccount, prm: Any) -> None:
        self.incoming_seq += 1
        # The process id keeps tags apart across a restart of worker ``index``.
        tag = f"w{self.index}.{os.getpid()}-{self.incoming_seq}"
        call = WorkerCall(self, account, tag, prm.callId)
        self.calls[tag] = call
        info = call.getInfo()
        uri, source = _request_line(str(prm.rdata.wholeMsg))
        self.emit(
            {
                "event": "incoming",
                "call": tag,
                "request_uri": uri,
                "from": str(info.remoteUri),
                "to": str(info.localUri),
                "source": source or str(prm.rdata.srcAddress),
                "sip_call_id": str(info.callIdString),
                "leg_port": call.leg.port,
            }
        )

    # ----------------------------------------------------------- commands
    def _call(self, command: dict[str, Any]) -> WorkerCall:
        call = self.calls.get(str(command.get("call")))
        if call is None or call.ended:
            raise ValueError(f"unknown call: {command.get('call')}")
        return call

    def cmd_answer(self, command: dict[str, Any]) -> None:
        call = self._call(command)
        prm = pj.CallOpParam()
        prm.statusCode = int(command["code"])
        if command.get("reason"):
            prm.reason = str(command["reason"])
        call.answer(prm)

    def cmd_hangup(self, command: dict[str, Any]) -> None:
        call = self._call(command)
        prm = pj.CallOpParam()
        prm.statusCode = int(command.get("code") or 603)
        if command.get("reason"):
            prm.reason = str(command["reason"])
        call.hangup(prm)

    def cmd_attach(self, command: dict[str, Any]) -> None:
        self._call(command).leg.attach(str(command["ip"]), int(command["port"]))

    def cmd_detach(self, command: dict[str, Any]) -> None:
        self._call(command).leg.detach()

    def cmd_play(self, command: dict[str, Any]) -> None:
        call = self._call(command)
        name = str(command["asset"])
        samples = self.prompts.get(name)
        if samples is None:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"bad prompt name: {name}")
            samples = self.prompts[name] = load_asset(self.assets / f"{name}.wav", self.clock_rate)
        call.leg.prompt = Prompt(name, samples, bool(command.get("loop", False)))

    def cmd_stop_play(self, command: dict[str, Any]) -> None:
        self._call(command).leg.prompt = None

    def cmd_dial(self, command: dict[str, Any]) -> None:
        tag = str(command["call"])
        account = self.accounts.get(str(command.get("account") or "local"))
        if account is None:
            raise ValueError(f"unknown SIP account: {command.get('account')}")
        call = WorkerCall(self, account, tag, pj.PJSUA_INVALID_ID)
        self.calls[tag] = call
        try:
            call.makeCall(str(command["uri"]), pj.CallOpParam(True))
        except pj.Error as exc:
            self.calls.pop(tag, None)
            call.leg.close()
            self.emit(
                {
                    "event": "state",
                    "call": tag,
                    "state": "disconnected",
                    "code": 500,
                    "reason": exc.reason or "dial failed",
                }
            )
            return
        self.emit({"event": "dialling", "call": tag, "leg_port": call.leg.port})

    def cmd_register(self, command: dict[str, Any]) -> None:
        account = self.accounts.get(str(command["account"]))
        if account is None:
            raise ValueError(f"unknown SIP account: {command['account']}")
        account.setRegistration(bool(command.get("active", True)))

    def cmd_stop(self, command: dict[str, Any]) -> None:
        self.stopping = True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sip-worker %(message)s")
    fd = os.environ.get(WORKER_FD_ENV)
    if fd is None:
        print(f"${WORKER_FD_ENV} is not set: SIP workers are started by the SIP gateway")
        return 2
    sock = socket.socket(fileno=int(fd))
    init = json.loads(sock.recv(MAX_MESSAGE))
    sock.setblocking(False)
    worker = Worker(sock, init)

    def _stop(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        worker.start()
    except (pj.Error, ValueError, KeyError, TypeError, OSError) as exc:
        # Said to the pool, which logs it once and backs the restart off.
        reason = exc.info() if isinstance(exc, pj.Error) else f"{type(exc).__name__}: {exc}"
        worker.emit({"event": "error", "call": None, "message": f"start failed: {reason}"})
        worker._flush()
        return 1
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
