"""The local channel between the control process and a media worker.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair per worker: message boundaries are kept
by the kernel, and EOF tells the control process at once that a worker died. Commands
go one way with an id and get exactly one reply; events go the other way.

The worker's end never blocks: a message that does not fit into the socket buffer waits
in a bounded queue and is flushed between ticks (when that queue is full, the oldest
event is dropped and counted — a stalled control process must never stall a tick).
"""

from __future__ import annotations

import collections
import errno
import pickle
import socket
from typing import Any

#: Largest single message; SEQPACKET messages must fit the socket buffer.
MAX_MESSAGE = 1 << 20
#: Events a worker keeps while the control process is not reading.
WORKER_BACKLOG = 4096

Message = dict[str, Any]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Return (control end, worker end)."""
    control, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (control, worker):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE * 2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE * 2)
    return control, worker


def encode(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"channel message is too large: {len(data)} bytes")
    return data


def decode(data: bytes) -> Message:
    message = pickle.loads(data)
    if not isinstance(message, dict):
        raise ValueError("channel message is not a mapping")
    return message


class WorkerEnd:
    """The media worker's side: non-blocking receive and send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._backlog: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive_all(self) -> list[Message]:
        """Every command waiting now (empty list if none). Sets ``closed`` on EOF."""
        messages: list[Message] = []
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return messages
            except ConnectionResetError:
                self.closed = True
                return messages
            if not data:
                self.closed = True
                return messages
            messages.append(decode(data))

    def send(self, message: Message) -> None:
        data = encode(message)
        if self._backlog:
            self._enqueue(data)
            self.flush()
            return
        if not self._try_send(data):
            self._enqueue(data)

    def flush(self) -> None:
        while self._backlog:
            if not self._try_send(self._backlog[0]):
                return
            self._backlog.popleft()

    def _enqueue(self, data: bytes) -> None:
        if len(self._backlog) >= WORKER_BACKLOG:
            self._backlog.popleft()
            self.dropped += 1
        self._backlog.append(data)

    def _try_send(self, data: bytes) -> bool:
        try:
            self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self.closed = True
                return True
            if exc.errno == errno.ENOBUFS:
                return False
            raise
        return True
