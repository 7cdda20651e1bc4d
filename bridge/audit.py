"""The audit log: an append-only, hash-chained JSON-lines record of dispatcher actions.

Every action a dispatcher (or admin) takes on rooms, floors, alerts, recordings and
cameras is one line: who (user and role), what (the action), when (epoch seconds, UTC),
where (room and/or camera), and the outcome. Each line also carries ``prev``, the
SHA-256 of the previous line's bytes (the first line carries :data:`GENESIS`), so editing,
reordering or deleting a line in the middle breaks the chain, and :func:`verify` says
where. This is the hash-chain construction of tamper-evident logging (Schneier and
Kelsey, "Secure audit logs to support computer forensics", 1999), without the keyed
part: it proves integrity against edits, not against someone who rewrites the whole
tail; ship :attr:`AuditLog.head` elsewhere to anchor it.

The file is opened with ``O_APPEND`` and each record is written with one ``write``
call, so the kernel puts it at the end of the file whatever else has the file open.
There is no API to rewrite it: :class:`AuditLog` has :meth:`~AuditLog.append` and
:meth:`~AuditLog.read`, nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

#: The ``prev`` of the first line: no line came before it.
GENESIS = "0" * 64
#: Permissions of a new audit file: owner read/write, group read.
FILE_MODE = 0o640
#: Records :meth:`AuditLog.read` returns at most, unless told otherwise.
DEFAULT_READ_LIMIT = 1000
_NEWLINE = b"\n"
_READ_CHUNK = 64 * 1024


class Outcome(StrEnum):
    """How an audited action ended."""

    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


class AuditError(ValueError):
    """The audit file is not a valid chain; the message names the first bad line."""


@dataclass(frozen=True)
class AuditRecord:
    """One audited action (one line of the file).

    ``seq`` counts from 1 in the file; ``time`` is epoch seconds (UTC); ``room`` and
    ``camera`` name what was acted on (``None`` when not applicable); ``detail`` holds the
    action's arguments and result (a floor cause, a queue position, an HTTP status).
    """

    seq: int
    time: float
    user: str
    role: str
    action: str
    outcome: Outcome
    room: str | None = None
    camera: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    prev: str = GENESIS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        return data

    def __bytes__(self) -> bytes:
        """The line as written: compact JSON with sorted keys, without the newline."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, line: bytes) -> AuditRecord:
        try:
            data = json.loads(line)
        except ValueError:
            raise AuditError("audit line is not valid JSON") from None
        if not isinstance(data, dict):
            raise AuditError("audit line is not a JSON object")
        try:
            return cls(
                seq=int(data["seq"]),
                time=float(data["time"]),
                user=str(data["user"]),
                role=str(data["role"]),
                action=str(data["action"]),
                outcome=Outcome(data["outcome"]),
                room=data.get("room"),
                camera=data.get("camera"),
                detail=dict(data.get("detail") or {}),
                prev=str(data["prev"]),
            )
        except KeyError as exc:
            raise AuditError(f"audit line lacks {exc.args[0]}") from None
        except (TypeError, ValueError):
            raise AuditError("audit line has a bad field") from None


def line_hash(line: bytes) -> str:
    """The chain value of one line: hex SHA-256 of its bytes without the newline."""
    return hashlib.sha256(line).hexdigest()


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for raw in f:
            yield raw.rstrip(_NEWLINE)


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path``, read backwards from the end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        buffer = b""
        position = end
        while position > 0:
            step = min(_READ_CHUNK, position)
            position -= step
            f.seek(position)
            buffer = f.read(step) + buffer
            body = buffer.rstrip(_NEWLINE)
            cut = body.rfind(_NEWLINE)
            if cut >= 0:
                return body[cut + 1 :]
        body = buffer.rstrip(_NEWLINE)
        return body or None


def verify(path: Path | str, *, head: str | None = None) -> int:
    """Check the chain of an audit file and return how many records it holds.

    Raises :class:`AuditError` naming the first line (counted from 1) that is not valid
    JSON, is out of sequence, or does not carry the hash of the line before it. The chain
    alone cannot show an edit of the last line or a cut tail; ``head`` (the
    :attr:`AuditLog.head` kept elsewhere) can: the file must end at it.
    """
    prev = GENESIS
    count = 0
    for number, line in enumerate(_lines(Path(path)), start=1):
        try:
            record = AuditRecord.parse(line)
        except AuditError as exc:
            raise AuditError(str(exc).replace("audit line", f"audit line {number}", 1)) from None
        if record.prev != prev:
            raise AuditError(f"audit line {number} does not chain to the line before it")
        if record.seq != number:
            raise AuditError(f"audit line {number} is out of sequence")
        prev = line_hash(line)
        count = number
    if head is not None and head != prev:
        raise AuditError("audit log does not end at the expected head")
    return count


class AuditLog:
    """Appends audit records to one file and reads them back.

    Opening an existing file continues its chain (its last line is the new ``prev``) and
    its numbering. ``durable`` fsyncs each record before :meth:`append` returns.
    """

    def __init__(self, path: Path | str, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._lock = threading.Lock()
        last = _last_line(self.path)
        if last is None:
            self._seq, self.head = 0, GENESIS
        else:
            self._seq, self.head = AuditRecord.parse(last).seq, line_hash(last)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, records={self._seq})"

    def __len__(self) -> int:
        return self._seq

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def append(
        self,
        *,
        user: str,
        role: str,
        action: str,
        outcome: Outcome | str = Outcome.OK,
        room: str | None = None,
        camera: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Write one record at the end of the file and return it."""
        with self._lock:
            if self._fd < 0:
                raise ValueError("audit log is closed")
            record = AuditRecord(
                seq=self._seq + 1,
                time=time.time(),
                user=user,
                role=str(role),
                action=action,
                outcome=Outcome(outcome),
                room=room,
                camera=camera,
                detail=dict(detail or {}),
                prev=self.head,
            )
            line = bytes(record)
            os.write(self._fd, line + _NEWLINE)
            if self.durable:
                os.fsync(self._fd)
            self._seq = record.seq
            self.head = line_hash(line)
            return record

    def read(
        self, *, after: int = 0, limit: int = DEFAULT_READ_LIMIT, action: str | None = None
    ) -> list[AuditRecord]:
        """Records with ``seq`` above ``after`` (oldest first), at most ``limit`` of them."""
        records: list[AuditRecord] = []
        with contextlib.suppress(FileNotFoundError):
            for line in _lines(self.path):
                if not line:
                    continue
                record = AuditRecord.parse(line)
                if record.seq <= after or (action is not None and record.action != action):
                    continue
                records.append(record)
                if len(records) >= limit:
                    break
        return records
