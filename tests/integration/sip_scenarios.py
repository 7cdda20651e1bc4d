"""SIPp scenarios for the SIP gateway's tests (written to a temp folder, run by ``sipp``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from server import free_port, stop_process

_INVITE_HEAD = """INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]
"""

_ACK_NON2XX = """ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
"""

GOOD_SDP = """v=0
o=sipp 1 1 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

#: An SDP that parses but offers only a codec nobody has.
UNSUPPORTED_SDP = GOOD_SDP.replace("RTP/AVP 0", "RTP/AVP 99").replace(
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:99 NOPE/8000"
)
#: An SDP that does not parse.
MALFORMED_SDP = "v=0\nthis is not an SDP body\nm=audio\n"


def _scenario(name: str, body: str) -> str:
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>'
    return f'{head}\n<scenario name="{name}">\n{body}\n</scenario>\n'


def _send(text: str, retrans: bool = False) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"<send{attr}><![CDATA[\n{text}\n]]></send>"


def rejected_invite(sdp: str, status: int) -> str:
    """UAC: an INVITE with ``sdp`` must be answered ``status`` (then ACKed)."""
    return _scenario(
        f"invite answered {status}",
        _send(_INVITE_HEAD + "\n" + sdp, retrans=True)
        + '\n<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n'
        + f'<recv response="{status}"/>\n'
        + _send(_ACK_NON2XX),
    )


def cancelled_uas() -> str:
    """UAS: ring, take the CANCEL, answer it 200 and the INVITE 487 (RFC 3261 §9.2)."""
    ringing = """SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Length: 0
"""
    ok_cancel = """SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0
"""
    terminated = """SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$cseq] INVITE
Content-Length: 0
"""
    return _scenario(
        "cancel during ringing",
        '<recv request="INVITE" crlf="true"/>\n'
        + _send(ringing)
        + '\n<recv request="CANCEL"><action><ereg regexp="([0-9]+) CANCEL" search_in="hdr"'
        ' header="CSeq:" assign_to="all,cseq"/></action></recv>\n'
        + _send(ok_cancel)
        + "\n"
        + _send(terminated)
        + '\n<recv request="ACK"/>\n<Reference variables="all"/>',
    )


def bye_glare_uac() -> str:
    """UAC: call in, and when the bridge's BYE comes, send a BYE of its own before
    answering it, so that both BYE transactions are open at once."""
    ack = """ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
"""
    bye = """BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0
"""
    ok_bye = """SIP/2.0 200 OK
Via:[$via]
From:[$from]
To:[$to]
Call-ID: [call_id]
CSeq:[$cseq]
Content-Length: 0
"""
    return _scenario(
        "bye glare",
        _send(_INVITE_HEAD + "\n" + GOOD_SDP, retrans=True)
        + '\n<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n'
        + '<recv response="200" rrs="true"/>\n'
        + _send(ack)
        + '\n<recv request="BYE"><action>'
        + "".join(
            f'<ereg regexp=".*" search_in="hdr" header="{h}:" assign_to="{v}"/>'
            for h, v in (("Via", "via"), ("From", "from"), ("To", "to"), ("CSeq", "cseq"))
        )
        + "</action></recv>\n"
        + _send(bye, retrans=True)
        + '\n<recv response="200" optional="true" next="answer"/>\n<recv response="481"/>\n'
        + '<label id="answer"/>\n'
        + _send(ok_bye),
    )


_IN_DIALOG = """{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: {cseq} {method}
Max-Forwards: 70
"""


def _in_dialog(method: str, cseq: int, content_type: str = "", body: str = "") -> str:
    head = _IN_DIALOG.format(method=method, cseq=cseq)
    if content_type:
        head += f"Content-Type: {content_type}\n"
    return head + "Content-Length: [len]\n" + (f"\n{body}" if body else "")


def info_dtmf_uac(keys: str, gap_ms: int = 1500) -> str:
    """UAC: call in, then key ``keys`` one by one as SIP INFO ``application/dtmf-relay``
    (the de-facto format of Cisco and most PBXs), ``gap_ms`` apart, then hang up."""
    steps = ""
    cseq = 2
    for key in keys:
        steps += f'<pause milliseconds="{gap_ms}"/>\n'
        steps += _send(
            _in_dialog("INFO", cseq, "application/dtmf-relay", f"Signal={key}\nDuration=160\n"),
            retrans=True,
        )
        steps += '\n<recv response="200"/>\n'
        cseq += 1
    return _scenario(
        "sip info dtmf",
        _send(_INVITE_HEAD + "\n" + GOOD_SDP, retrans=True)
        + '\n<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n'
        + '<recv response="200" rrs="true"/>\n'
        + _send(_in_dialog("ACK", 1))
        + "\n"
        + steps
        + f'<pause milliseconds="{gap_ms}"/>\n'
        + _send(_in_dialog("BYE", cseq), retrans=True)
        + '\n<recv response="200"/>',
    )


def cancelling_uac() -> str:
    """UAC: call in and CANCEL on the first provisional response (pjsua's 100, before the
    gateway has looked the room up); the CANCEL is answered 200 and the INVITE 487
    (RFC 3261 §9.2), which is ACKed."""
    cancel = """CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-2];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0
"""
    return _scenario(
        "cancel an inbound call",
        _send(_INVITE_HEAD + "\n" + GOOD_SDP, retrans=True)
        + '\n<recv response="100"/>\n'
        + _send(cancel, retrans=True)
        # A 180 may cross the CANCEL on the wire: before or after the CANCEL's 200.
        + '\n<recv response="180" optional="true"/>\n<recv response="200"/>\n'
        + '<recv response="180" optional="true"/>\n'
        + '<recv response="487"/>\n'
        + _send(_ACK_NON2XX.replace("[branch]", "[branch-6]")),
    )


def registrar_uas(username: str, password: str, realm: str = "ucbridge.test") -> str:
    """UAS for two registrations (run with ``calls=2``): the first REGISTER is refused 503,
    so the gateway must retry with back-off (a new Call-ID: pjsua starts a new client);
    the retry is challenged (401, RFC 3261 §22.2 digest), its credentials are checked and
    it is registered. Wrong credentials are answered 403 and fail the run."""

    def answer(status: str, extra: str = "") -> str:
        return _send(
            f"SIP/2.0 {status}\n[last_Via:]\n[last_From:]\n"
            "[last_To:];tag=[pid]SIPpTag01[call_number]\n[last_Call-ID:]\n[last_CSeq:]\n"
            f"{extra}Content-Length: 0\n"
        )

    challenge = f'WWW-Authenticate: Digest realm="{realm}", nonce="5e1f0c2a9d", algorithm=MD5\n'
    return _scenario(
        "registrar with digest",
        '<recv request="REGISTER" crlf="true"/>\n'
        '<nop hide="true"><action><assignstr assign_to="n" value="[call_number]"/>'
        '<todouble assign_to="num" variable="n"/>'
        '<test assign_to="first" variable="num" compare="equal" value="1"/></action></nop>\n'
        '<nop hide="true" test="first" next="unavailable"/>\n'
        + answer("401 Unauthorized", challenge)
        + '\n<recv request="REGISTER"><action><verifyauth assign_to="authvalid"'
        + f' username="{username}" password="{password}"/></action></recv>\n'
        + '<nop hide="true" test="authvalid" next="good"/>\n'
        + answer("403 Forbidden")
        + '\n<recv request="NEVER" timeout="100"/>\n'
        + '<label id="good"/>\n'
        + answer("200 OK", "[last_Contact:];expires=60\nExpires: 60\n")
        + '\n<nop hide="true" next="end"/>\n'
        + '<label id="unavailable"/>\n'
        + answer("503 Service Unavailable")
        + '\n<label id="end"/>',
    )


class Sipp:
    """One ``sipp`` run on 127.0.0.1, stopped by its PID."""

    def __init__(self, tmp: Path, name: str, xml: str) -> None:
        if shutil.which("sipp") is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        self.dir = tmp / f"sipp-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scenario = self.dir / f"{name}.xml"
        self.scenario.write_text(xml)
        self.port = free_port(socket.SOCK_DGRAM)
        self.media_port = free_port(socket.SOCK_DGRAM)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "sipp.log"

    def start(
        self,
        target: str | None = None,
        service: str = "room",
        timeout_s: int = 20,
        calls: int = 1,
    ) -> None:
        args = [
            "sipp", *([target] if target else []),
            "-sf", str(self.scenario), "-s", service,
            "-i", "127.0.0.1", "-p", str(self.port), "-mi", "127.0.0.1",
            "-mp", str(self.media_port), "-m", str(calls), "-nostdin",
            "-timeout", f"{timeout_s}s", "-timeout_error",
            "-trace_err", "-trace_msg",
        ]  # fmt: skip
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def messages(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.dir.glob("*_messages.log"))

    def errors(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.dir.glob("*_errors.log"))

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        self._log.close()
