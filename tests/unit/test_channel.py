from __future__ import annotations

import pytest

from bridge import channel


def test_messages_keep_their_boundaries() -> None:
    control, worker_sock = channel.socket_pair()
    worker = channel.WorkerEnd(worker_sock)
    control.send(channel.encode({"op": "a", "id": 1}))
    control.send(channel.encode({"op": "b", "id": 2}))
    assert [m["op"] for m in worker.receive_all()] == ["a", "b"]
    assert worker.receive_all() == []
    worker.send({"kind": "reply", "id": 1})
    assert channel.decode(control.recv(channel.MAX_MESSAGE)) == {"kind": "reply", "id": 1}
    control.close()
    worker.receive_all()
    assert worker.closed


def test_worker_never_blocks_and_bounds_its_backlog() -> None:
    control, worker_sock = channel.socket_pair()
    worker = channel.WorkerEnd(worker_sock)
    blob = "x" * 60_000
    for i in range(channel.WORKER_BACKLOG + 200):
        worker.send({"i": i, "blob": blob})  # nobody reads: must not block
    assert worker.dropped > 0
    # Whatever is kept arrives in order once the reader drains.
    seen = []
    control.setblocking(False)
    for _ in range(10_000):
        try:
            seen.append(channel.decode(control.recv(channel.MAX_MESSAGE))["i"])
        except BlockingIOError:
            worker.flush()
            if not worker._backlog:
                break
    assert seen == sorted(seen)


def test_oversized_message_is_refused() -> None:
    with pytest.raises(ValueError, match="channel message is too large"):
        channel.encode({"blob": b"x" * (channel.MAX_MESSAGE + 1)})
