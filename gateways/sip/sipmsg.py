"""The little of SIP (RFC 3261) that the front needs to route a datagram.

The SIP front (:mod:`.front`) is a stateless proxy (RFC 3261 §16.11): it reads the start
line and the routing headers, pushes or pops its own Via and Route, and forwards the
rest of the message untouched. Everything else of SIP is pjsua2's job in the workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: RFC 3261 §8.1.1.7: a branch starting with the magic cookie is unique per transaction.
BRANCH_MAGIC = "z9hG4bK"
SIP_VERSION = "SIP/2.0"
#: RFC 3261 §7.3.3 compact header forms.
COMPACT_HEADERS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
}
#: Headers that may carry several comma-separated values (the routing ones we split).
MULTI_VALUE = frozenset({"via", "route", "record-route"})
#: Largest datagram accepted (RFC 3261 §18.1.1 keeps UDP under the path MTU; be lenient).
MAX_DATAGRAM = 65535


def _canonical(name: str) -> str:
    lower = name.strip().lower()
    return COMPACT_HEADERS.get(lower, lower)


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@dataclass
class Via:
    """One Via header value: ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        head, *params = [p.strip() for p in value.split(";")]
        protocol, _, sent_by = head.partition(" ")
        pieces = protocol.strip().split("/")
        if len(pieces) != 3 or not sent_by.strip():
            raise ValueError("SIP Via header is malformed")
        host, port = split_hostport(sent_by.strip())
        parsed: dict[str, str | None] = {}
        for param in params:
            if not param:
                continue
            key, eq, val = param.partition("=")
            parsed[key.strip().lower()] = val.strip() if eq else None
        return cls(pieces[2].upper(), host, port, parsed)

    def __str__(self) -> str:
        sent_by = self.host if self.port is None else f"{self.host}:{self.port}"
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"{SIP_VERSION}/{self.transport} {sent_by}{params}"

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""

    def response_address(self) -> tuple[str, int]:
        """Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581 rport)."""
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        if rport:
            return host, int(rport)
        return host, self.port or 5060


def split_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv4 or a name; ``[v6]:port`` too) into its parts."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("SIP host is malformed")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("SIP host is malformed")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("SIP port is malformed")
    return host, int(port_text)


@dataclass
class SipUri:
    """The parts of a ``sip:user@host:port;params`` URI the gateway routes on."""

    scheme: str
    user: str
    host: str
    port: int | None
    params: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        if "<" in text:
            start = text.index("<")
            end = text.find(">", start)
            if end < 0:
                raise ValueError("SIP URI is malformed")
            text = text[start + 1 : end]
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise ValueError("SIP URI has no sip: scheme")
        rest = rest.split("?", 1)[0]
        rest, _, params = rest.partition(";")
        user, at, hostport = rest.rpartition("@")
        if not at:
            user, hostport = "", rest
        host, port = split_hostport(hostport)
        return cls(scheme, user, host, port, params)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        params = f";{self.params}" if self.params else ""
        return f"{self.scheme}:{user}{self.host}{port}{params}"


@dataclass
class SipMessage:
    """A SIP request or response: start line, ordered headers, body (RFC 3261 §7)."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        if len(data) > MAX_DATAGRAM:
            raise ValueError("SIP message is too large")
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("SIP message has no end of headers")
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("SIP message headers are not UTF-8") from None
        lines = text.split("\r\n")
        start = lines[0].strip()
        if not start:
            raise ValueError("SIP message has no start line")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # RFC 3261 §7.3.1 line folding
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise ValueError("SIP header line is malformed")
            headers.append((name.strip(), value.strip()))
        message = cls(start, headers, body)
        if message.is_request:
            parts = start.split(" ")
            if len(parts) != 3 or parts[2] != SIP_VERSION:
                raise ValueError("SIP request line is malformed")
        else:
            parts = start.split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError("SIP status line is malformed")
        for required in ("via", "call-id", "cseq"):
            if message.header(required) is None:
                raise ValueError(f"SIP message has no {required} header")
        length = message.header("content-length")
        if length is not None:
            if not length.isdigit():
                raise ValueError("SIP Content-Length is malformed")
            if int(length) > len(body):
                raise ValueError("SIP message is truncated")
            message.body = body[: int(length)]
        return message

    def __bytes__(self) -> bytes:
        lines = [self.start]
        # Content-Length is rewritten last so a body edit never leaves it stale.
        lines += [f"{n}: {v}" for n, v in self.headers if _canonical(n) != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    # ------------------------------------------------------------ start line
    @property
    def is_request(self) -> bool:
        return not self.start.startswith(SIP_VERSION)

    @property
    def method(self) -> str:
        """The request's method (for a response: the CSeq's method)."""
        if self.is_request:
            return self.start.split(" ", 1)[0].upper()
        return self.cseq_method

    @property
    def request_uri(self) -> str:
        return self.start.split(" ")[1]

    @request_uri.setter
    def request_uri(self, uri: str) -> None:
        method, _, version = self.start.split(" ")
        self.start = f"{method} {uri} {version}"

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1]) if not self.is_request else 0

    @property
    def cseq_method(self) -> str:
        cseq = self.header("cseq") or ""
        return cseq.split()[-1].upper() if cseq.split() else ""

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    # --------------------------------------------------------------- headers
    def header(self, name: str) -> str | None:
        key = _canonical(name)
        for n, v in self.headers:
            if _canonical(n) == key:
                return v
        return None

    def values(self, name: str) -> list[str]:
        """Every value of a header, comma lists split (Via, Route, Record-Route)."""
        key = _canonical(name)
        out: list[str] = []
        for n, v in self.headers:
            if _canonical(n) == key:
                out.extend(_split_commas(v) if key in MULTI_VALUE else [v])
        return out

    def set_values(self, name: str, values: list[str]) -> None:
        """Replace a header by ``values`` where its first line was: one comma-separated
        line (RFC 3261 §7.3.1), or nothing when ``values`` is empty."""
        key = _canonical(name)
        index = next((i for i, (n, _) in enumerate(self.headers) if _canonical(n) == key), 0)
        self.headers = [(n, v) for n, v in self.headers if _canonical(n) != key]
        display = "-".join(p.capitalize() for p in key.split("-")).replace("Id", "ID")
        if values:
            self.headers.insert(index, (display, ", ".join(values)))

    def set_header(self, name: str, value: str) -> None:
        self.set_values(name, [value])

    def to_tag(self) -> str:
        to = self.header("to") or ""
        for param in to.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "tag":
                return value.strip()
        return ""

    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.values("via")]


def make_branch(*parts: str) -> str:
    """A stateless proxy's branch: a hash of what identifies the incoming transaction
    (RFC 3261 §16.11), so a retransmission gets the same branch."""
    digest = hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:20]
    return f"{BRANCH_MAGIC}uc{digest}"


def make_response(
    request: SipMessage, status: int, reason: str, extra: list[tuple[str, str]] | None = None
) -> SipMessage:
    """A response built from a request (RFC 3261 §8.2.6.2): same Via, From, To, Call-ID,
    CSeq; a To tag is added for a final response that has none."""
    headers: list[tuple[str, str]] = [("Via", v) for v in request.values("via")]
    to = request.header("to") or ""
    if status >= 200 and request.to_tag() == "":
        to = f"{to};tag={make_branch(request.call_id, 'tag')[-10:]}"
    headers += [
        ("From", request.header("from") or ""),
        ("To", to),
        ("Call-ID", request.call_id),
        ("CSeq", request.header("cseq") or ""),
    ]
    headers += extra or []
    return SipMessage(f"{SIP_VERSION} {status} {reason}", headers)


#: SDP lines are ``<type>=<value>`` with a one-letter type (RFC 8866 §5).
_SDP_LINE_TYPES = frozenset("vosiuepcbtrzkam")


def sdp_problem(body: bytes) -> str | None:
    """Why an offer cannot be negotiated (RFC 8866 syntax, an audio stream with an
    address), or None. The gateway answers such an INVITE 488 (RFC 3261 §21.4.26)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "SDP is not UTF-8"
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        return "SDP does not start with v=0"
    connection = False
    audio = False
    for line in lines:
        if len(line) < 2 or line[1] != "=" or line[0] not in _SDP_LINE_TYPES:
            return "SDP line is malformed"
        if line.startswith("c="):
            connection = len(line[2:].split()) == 3
        elif line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                return "SDP media line is malformed"
            audio = audio or parts[0] == "audio"
    if not audio:
        return "SDP offers no audio stream"
    if not connection:
        return "SDP has no connection address"
    return None
