"""The audit log: append-only, hash-chained, and every kind of tampering is found."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from bridge.audit import GENESIS, AuditError, AuditLog, AuditRecord, Outcome, line_hash, verify


def _log(path: Path, count: int = 3) -> AuditLog:
    log = AuditLog(path, durable=False)
    for i in range(count):
        log.append(
            user="alice",
            role="dispatcher",
            action=f"action-{i}",
            room="tac-1",
            detail={"i": i},
        )
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_records_are_numbered_chained_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path)
    records = log.read()
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.action for r in records] == ["action-0", "action-1", "action-2"]
    assert records[0].prev == GENESIS
    lines = _lines(path)
    assert records[1].prev == line_hash(lines[0])
    assert records[2].prev == line_hash(lines[1])
    assert log.head == line_hash(lines[2])
    assert records[0].user == "alice" and records[0].role == "dispatcher"
    assert records[0].room == "tac-1" and records[0].outcome is Outcome.OK
    assert verify(path, head=log.head) == 3
    assert [r.seq for r in log.read(after=1, limit=1)] == [2]
    assert [r.seq for r in log.read(action="action-2")] == [3]


def test_each_line_is_the_record_as_compact_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    record = _log(path, 1).read()[0]
    line = _lines(path)[0]
    assert line == bytes(record)
    assert AuditRecord.parse(line) == record
    data = json.loads(line)
    assert set(data) == {
        "seq", "time", "user", "role", "action", "outcome", "room", "camera", "detail", "prev"
    }  # fmt: skip


def test_reopening_continues_the_chain_and_the_numbering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = _log(path, 2)
    first.close()
    second = AuditLog(path, durable=False)
    assert len(second) == 2 and second.head == first.head
    record = second.append(user="bob", role="admin", action="room_delete", outcome="denied")
    assert record.seq == 3 and record.prev == first.head
    assert record.outcome is Outcome.DENIED
    assert verify(path) == 3


def test_the_file_is_opened_for_append_only(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.jsonl", 1)
    flags = fcntl.fcntl(log._fd, fcntl.F_GETFL)
    assert flags & os.O_APPEND
    assert flags & os.O_ACCMODE == os.O_WRONLY


def test_the_only_ways_in_are_append_and_read() -> None:
    public = {name for name in dir(AuditLog) if not name.startswith("_")}
    assert public == {"append", "read", "close"}


def test_a_closed_log_refuses_to_append(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.jsonl", 1)
    log.close()
    with pytest.raises(ValueError, match=r"^audit log is closed$"):
        log.append(user="alice", role="dispatcher", action="x")


def test_an_edited_line_breaks_the_chain_at_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    lines = _lines(path)
    edited = json.loads(lines[1])
    edited["user"] = "mallory"
    lines[1] = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(AuditError, match=r"^audit line 3 does not chain to the line before it$"):
        verify(path)


def test_a_deleted_line_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    lines = _lines(path)
    path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    with pytest.raises(AuditError, match=r"^audit line 2 does not chain to the line before it$"):
        verify(path)


def test_reordered_lines_break_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    lines = _lines(path)
    path.write_bytes(b"\n".join([lines[1], lines[0], lines[2]]) + b"\n")
    with pytest.raises(AuditError, match=r"^audit line 1 does not chain to the line before it$"):
        verify(path)


def test_a_renumbered_line_is_out_of_sequence(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 1)
    record = json.loads(_lines(path)[0])
    record["seq"] = 7
    path.write_bytes(json.dumps(record).encode() + b"\n")
    with pytest.raises(AuditError, match=r"^audit line 1 is out of sequence$"):
        verify(path)


def test_a_garbled_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 2)
    with path.open("ab") as f:
        f.write(b"{not json\n")
    with pytest.raises(AuditError, match=r"^audit line 3 is not valid JSON$"):
        verify(path)
    path.write_bytes(b'{"seq": 1}\n')
    with pytest.raises(AuditError, match=r"^audit line 1 lacks time$"):
        verify(path)


def test_an_edited_or_cut_tail_is_found_against_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path)
    lines = _lines(path)
    last = json.loads(lines[2])
    last["outcome"] = "failed"
    path.write_bytes(
        b"\n".join([*lines[:2], json.dumps(last, separators=(",", ":")).encode()]) + b"\n"
    )
    assert verify(path) == 3  # the chain alone cannot see it ...
    with pytest.raises(AuditError, match=r"^audit log does not end at the expected head$"):
        verify(path, head=log.head)  # ... the head kept elsewhere can
    path.write_bytes(b"\n".join(lines[:2]) + b"\n")
    with pytest.raises(AuditError, match=r"^audit log does not end at the expected head$"):
        verify(path, head=log.head)
