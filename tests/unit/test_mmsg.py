"""Batched UDP I/O: recvmmsg/sendmmsg and the per-packet fallback, on 127.0.0.1."""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bridge import mmsg
from bridge.mmsg import BatchSocket, RecvBatch, rcvbuf_errors, set_receive_buffer

LOCALHOST = "127.0.0.1"
LOCALHOST_INT = 0x7F000001
BIG_BUFFER = 16 * 1024 * 1024

linux_only = pytest.mark.skipif(not mmsg.mmsg_available(), reason="recvmmsg needs 64-bit Linux")

BACKENDS = [
    pytest.param("mmsg", marks=linux_only),
    "fallback",
    "fallback-recvfrom",
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "fallback-recvfrom":
        # The portable path for platforms without recvmsg/sendmsg.
        monkeypatch.setattr(mmsg, "_HAVE_RECVMSG", False)
        return "fallback"
    return name


@pytest.fixture
def udp() -> Iterator[list[socket.socket]]:
    """Sockets bound to 127.0.0.1, closed after the test; call ``open_udp(udp)``."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def open_udp(sockets: list[socket.socket], rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        set_receive_buffer(sock, rcvbuf)
    sock.bind((LOCALHOST, 0))
    sockets.append(sock)
    return sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def datagram(index: int, size: int) -> bytes:
    """A datagram whose every byte tells where it came from."""
    head = struct.pack("!I", index)
    return (head + bytes([index % 251]) * size)[:size]


def sizes_for(count: int) -> list[int]:
    return [4 + (index * 37) % 1200 for index in range(count)]


def drain(batch_socket: BatchSocket, expected: int) -> RecvBatch:
    """One recv(): on loopback a datagram is queued by the time sendto() returns."""
    batch = batch_socket.recv()
    assert batch.count == expected
    return batch


# --- layout ----------------------------------------------------------------------------------


@linux_only
def test_layout_matches_64_bit_linux() -> None:
    assert mmsg.MMSGHDR_DTYPE.itemsize == 64
    assert ctypes.sizeof(mmsg._MsgHdr) == 56
    assert ctypes.sizeof(mmsg._MMsgHdr) == 64
    fields = mmsg.MMSGHDR_DTYPE.fields
    assert fields is not None
    assert {name: fields[name][1] for name in ("msg_namelen", "msg_iov", "msg_len")} == {
        "msg_namelen": 8,
        "msg_iov": 16,
        "msg_len": 56,
    }
    assert fields["msg_flags"][1] == 48
    assert mmsg.IOVEC_DTYPE.itemsize == 16
    assert mmsg.SOCKADDR_IN_DTYPE.itemsize == 16
    assert mmsg.TIMESTAMP_CMSG_SPACE == 32


@linux_only
def test_layout_check_refuses_a_foreign_abi(monkeypatch: pytest.MonkeyPatch) -> None:
    mmsg._check_layout()
    monkeypatch.setattr(mmsg, "MMSGHDR_SIZE", 48)
    with pytest.raises(ImportError, match=r"^struct mmsghdr is 64 bytes, not 48$"):
        mmsg._check_layout()


# --- receive ---------------------------------------------------------------------------------


def test_burst_drained_in_one_recv(backend: str, udp: list[socket.socket]) -> None:
    receiver = open_udp(udp, BIG_BUFFER)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, backend=backend)
    assert batch_socket.backend == backend
    errors_before = rcvbuf_errors()
    sizes = sizes_for(3000)
    for index, size in enumerate(sizes):
        sender.sendto(datagram(index, size), (LOCALHOST, port_of(receiver)))
    errors_after = rcvbuf_errors()

    batch = batch_socket.recv()

    assert batch.count == 3000, f"RcvbufErrors went from {errors_before} to {errors_after}"

    assert batch.data.shape == (3000, mmsg.DEFAULT_SLOT_SIZE)
    np.testing.assert_array_equal(batch.length, sizes)
    assert not batch.truncated.any()
    assert (batch.src_ip == LOCALHOST_INT).all()
    assert (batch.src_port == port_of(sender)).all()
    # In order: the first four bytes carry the index, the rest a byte derived from it.
    order = batch.data[:, :4].copy().view(">u4").ravel()
    np.testing.assert_array_equal(order, np.arange(3000))
    for index in (0, 1, 1023, 1024, 2047, 2048, 2999):
        assert batch.datagram(index) == datagram(index, sizes[index])
    assert batch_socket.recv().count == 0


@linux_only
def test_calls_stay_within_the_kernel_vlen_cap(
    monkeypatch: pytest.MonkeyPatch, udp: list[socket.socket]
) -> None:
    libc = mmsg._LIBC_MMSG
    assert libc is not None
    recv_vlens: list[int] = []
    send_vlens: list[int] = []

    def recvmmsg(fd: int, msgvec: int, vlen: int, flags: int, timeout: int | None) -> int:
        recv_vlens.append(vlen)
        return libc[0](fd, msgvec, vlen, flags, timeout)

    def sendmmsg(fd: int, msgvec: int, vlen: int, flags: int) -> int:
        send_vlens.append(vlen)
        return libc[1](fd, msgvec, vlen, flags)

    monkeypatch.setattr(mmsg, "_LIBC_MMSG", (recvmmsg, sendmmsg))
    receiver = open_udp(udp, BIG_BUFFER)
    receiver_io = BatchSocket(receiver, backend="mmsg")
    sender_io = BatchSocket(open_udp(udp), backend="mmsg")

    assert sender_io.send(*send_columns([port_of(receiver)], 2500)) == 2500
    assert receiver_io.recv().count == 2500

    assert send_vlens == [1024, 1024, 452]
    # Three full or partial chunks; a short one ends the drain without another call.
    assert recv_vlens == [1024, 1024, 1024]


def test_buffers_are_allocated_once(backend: str, udp: list[socket.socket]) -> None:
    """The kernel holds pointers into the receive buffer: batches are views of it."""
    receiver = open_udp(udp)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, capacity=16, slot_size=32, backend=backend)
    for count in (3, 16, 1):
        for index in range(count):
            sender.sendto(datagram(index, 8), (LOCALHOST, port_of(receiver)))
        batch = drain(batch_socket, count)
        assert batch.data.ctypes.data == batch_socket._data.ctypes.data
        assert np.shares_memory(batch.length, batch_socket._length)
        assert np.shares_memory(batch.rx_ns, batch_socket._rx_ns)
    assert batch_socket._data.shape == (16, 32)


def test_empty_recv_returns_nothing_without_blocking(
    backend: str, udp: list[socket.socket]
) -> None:
    receiver = open_udp(udp)
    batch_socket = BatchSocket(receiver, backend=backend)
    assert receiver.gettimeout() == 0.0
    batch = batch_socket.recv()
    assert batch.count == 0
    assert batch.data.shape == (0, mmsg.DEFAULT_SLOT_SIZE)
    assert batch.src_ip.shape == (0,)


def test_capacity_bounds_one_recv(backend: str, udp: list[socket.socket]) -> None:
    receiver = open_udp(udp, BIG_BUFFER)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, capacity=100, slot_size=64, backend=backend)
    for index in range(250):
        sender.sendto(datagram(index, 20), (LOCALHOST, port_of(receiver)))

    first = [int(value) for value in batch_socket.recv().data[:, :4].copy().view(">u4").ravel()]
    assert first == list(range(100))
    assert batch_socket.recv().count == 100
    last = batch_socket.recv()
    assert last.count == 50
    assert last.datagram(49) == datagram(249, 20)
    assert batch_socket.recv().count == 0


def test_truncated_datagram_flagged(backend: str, udp: list[socket.socket]) -> None:
    receiver = open_udp(udp)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, slot_size=64, backend=backend)
    for index, size in enumerate((100, 64, 10)):
        sender.sendto(datagram(index, size), (LOCALHOST, port_of(receiver)))

    batch = drain(batch_socket, 3)

    assert batch.truncated.tolist() == [True, False, False]
    assert batch.length.tolist() == [64, 64, 10]
    assert batch.datagram(0) == datagram(0, 100)[:64]
    assert batch.datagram(2) == datagram(2, 10)


def test_slots_are_reused_after_truncation(backend: str, udp: list[socket.socket]) -> None:
    """The kernel rewrote msg_len/msg_namelen/msg_controllen: the next drain is still right."""
    receiver = open_udp(udp)
    senders = [open_udp(udp), open_udp(udp)]
    batch_socket = BatchSocket(receiver, slot_size=64, backend=backend)
    senders[0].sendto(b"x" * 100, (LOCALHOST, port_of(receiver)))
    assert drain(batch_socket, 1).truncated.tolist() == [True]

    senders[1].sendto(b"short", (LOCALHOST, port_of(receiver)))
    senders[0].sendto(b"y" * 64, (LOCALHOST, port_of(receiver)))
    batch = drain(batch_socket, 2)
    assert batch.length.tolist() == [5, 64]
    assert batch.truncated.tolist() == [False, False]
    assert batch.src_port.tolist() == [port_of(senders[1]), port_of(senders[0])]
    assert batch.datagram(0) == b"short"


def test_kernel_timestamps_monotone_and_current(backend: str, udp: list[socket.socket]) -> None:
    receiver = open_udp(udp, BIG_BUFFER)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, backend=backend)
    before = time.time_ns()
    for index in range(200):
        sender.sendto(datagram(index, 172), (LOCALHOST, port_of(receiver)))
    after = time.time_ns()

    batch = drain(batch_socket, 200)

    if batch_socket.kernel_timestamps:
        assert (batch.rx_ns >= before).all()
        assert (batch.rx_ns <= after).all()
        assert (np.diff(batch.rx_ns) >= 0).all()
        assert len(np.unique(batch.rx_ns)) > 1  # per datagram, not one drain time
    else:
        assert (batch.rx_ns >= after).all()
        assert (batch.rx_ns <= time.time_ns()).all()


@linux_only
def test_kernel_timestamps_on_linux(udp: list[socket.socket]) -> None:
    assert BatchSocket(open_udp(udp)).kernel_timestamps


def test_drain_time_without_timestamps(backend: str, udp: list[socket.socket]) -> None:
    receiver = open_udp(udp)
    sender = open_udp(udp)
    batch_socket = BatchSocket(receiver, timestamps=False, backend=backend)
    assert not batch_socket.kernel_timestamps
    sender.sendto(b"a", (LOCALHOST, port_of(receiver)))
    sender.sendto(b"b", (LOCALHOST, port_of(receiver)))
    sent = time.time_ns()

    batch = drain(batch_socket, 2)

    assert sent <= batch.rx_ns[0] <= time.time_ns()
    assert batch.rx_ns[0] == batch.rx_ns[1]


# --- send ------------------------------------------------------------------------------------


def receive_all(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    received: list[bytes] = []
    while True:
        try:
            received.append(sock.recv(4096))
        except BlockingIOError:
            return received


def send_columns(
    ports: list[int], count: int
) -> tuple[
    npt.NDArray[np.uint8],
    npt.NDArray[np.uint8],
    npt.NDArray[np.intp],
    npt.NDArray[np.int32],
    npt.NDArray[np.uint32],
    npt.NDArray[np.uint16],
]:
    """Message i: a 12-byte header carrying i, then one of three shared payload rows."""
    header = np.zeros((count, 12), dtype=np.uint8)
    header[:, :4] = np.arange(count, dtype=">u4").view(np.uint8).reshape(count, 4)
    payload = np.zeros((3, 160), dtype=np.uint8)
    payload[0, :] = 0xAA
    payload[1, :] = np.arange(160)
    payload[2, :] = 0x55
    rows = (np.arange(count) % 3).astype(np.intp)
    lengths = np.array([160, 80, 1], dtype=np.int32)[rows]
    dest_ip = np.full(count, LOCALHOST_INT, dtype=np.uint32)
    dest_port = np.array(ports, dtype=np.uint16)[np.arange(count) % len(ports)]
    return header, payload, rows, lengths, dest_ip, dest_port


def expected_message(
    header: npt.NDArray[np.uint8],
    payload: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.intp],
    lengths: npt.NDArray[np.int32],
    index: int,
) -> bytes:
    row, length = int(rows[index]), int(lengths[index])
    return header[index, :].tobytes() + payload[row, :length].tobytes()


def test_send_to_many_destinations_sharing_payload_rows(
    backend: str, udp: list[socket.socket]
) -> None:
    listeners = [open_udp(udp, BIG_BUFFER) for _ in range(20)]
    batch_socket = BatchSocket(open_udp(udp), backend=backend)
    count = 2500  # three sendmmsg chunks
    columns = send_columns([port_of(sock) for sock in listeners], count)
    header, payload, rows, lengths, _, _ = columns

    assert batch_socket.send(*columns) == count

    assert batch_socket.send_dropped == 0
    for slot, listener in enumerate(listeners):
        expected = [
            expected_message(header, payload, rows, lengths, index)
            for index in range(slot, count, len(listeners))
        ]
        assert receive_all(listener) == expected


def test_send_scalar_length_and_strided_header(backend: str, udp: list[socket.socket]) -> None:
    listener = open_udp(udp)
    batch_socket = BatchSocket(open_udp(udp), backend=backend)
    wide = np.arange(4 * 20, dtype=np.uint8).reshape(4, 20)
    header = wide[:, 2:14]  # rows are contiguous, the array is not
    payload = np.frombuffer(b"0123456789", dtype=np.uint8).reshape(1, 10)

    sent = batch_socket.send(
        header,
        payload,
        np.zeros(4, dtype=np.intp),
        4,
        np.full(4, LOCALHOST_INT, dtype=np.uint32),
        np.full(4, port_of(listener), dtype=np.uint16),
    )

    assert sent == 4
    assert receive_all(listener) == [wide[index, 2:14].tobytes() + b"0123" for index in range(4)]

    reversed_rows = batch_socket.send(
        header[::-1],
        payload,
        np.zeros(4, dtype=np.intp),
        np.array([1, 2, 3, 4], dtype=np.int32),
        np.full(4, LOCALHOST_INT, dtype=np.uint32),
        np.full(4, port_of(listener), dtype=np.uint16),
    )
    assert reversed_rows == 4
    assert receive_all(listener) == [
        wide[3 - index, 2:14].tobytes() + b"0123"[: index + 1] for index in range(4)
    ]


def test_send_skips_a_refused_destination(backend: str, udp: list[socket.socket]) -> None:
    listener = open_udp(udp)
    batch_socket = BatchSocket(open_udp(udp), backend=backend)
    header = np.frombuffer(b"abc", dtype=np.uint8).reshape(3, 1)
    payload = np.zeros((1, 0), dtype=np.uint8)

    sent = batch_socket.send(
        header,
        payload,
        np.zeros(3, dtype=np.intp),
        0,
        np.full(3, LOCALHOST_INT, dtype=np.uint32),
        np.array([port_of(listener), 0, port_of(listener)], dtype=np.uint16),  # port 0: EINVAL
    )

    assert sent == 2
    assert batch_socket.send_errors == 1
    assert receive_all(listener) == [b"a", b"c"]


class WouldBlockSocket(socket.socket):
    """Takes ``room`` datagrams, then answers EAGAIN."""

    room = 3

    def sendmsg(self, *args: object, **kwargs: object) -> int:
        if self.room == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.room -= 1
        return 0

    def sendto(self, *args: object, **kwargs: object) -> int:
        return self.sendmsg()


def test_send_drops_the_rest_when_the_kernel_has_no_room(
    backend: str, monkeypatch: pytest.MonkeyPatch, udp: list[socket.socket]
) -> None:
    if backend == "mmsg":
        calls: list[int] = []

        def sendmmsg(fd: int, msgvec: int, vlen: int, flags: int) -> int:
            calls.append(vlen)
            if len(calls) == 1:
                return 3
            ctypes.set_errno(errno.EAGAIN)
            return -1

        libc = mmsg._LIBC_MMSG
        assert libc is not None
        monkeypatch.setattr(mmsg, "_LIBC_MMSG", (libc[0], sendmmsg))
        sock = open_udp(udp)
    else:
        sock = WouldBlockSocket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.append(sock)
    batch_socket = BatchSocket(sock, backend=backend)
    columns = send_columns([9], 10)

    assert batch_socket.send(*columns) == 3
    assert batch_socket.send_dropped == 7
    if backend == "mmsg":
        assert calls == [10, 7]


def test_send_validates_columns(udp: list[socket.socket]) -> None:
    batch_socket = BatchSocket(open_udp(udp))
    header, payload, rows, lengths, ips, ports = send_columns([9], 4)
    with pytest.raises(ValueError, match=r"^payload_row is out of range$"):
        batch_socket.send(header, payload, rows + 3, lengths, ips, ports)
    with pytest.raises(ValueError, match=r"^payload_row is out of range$"):
        batch_socket.send(header, payload, rows - 1, lengths, ips, ports)
    with pytest.raises(ValueError, match=r"^payload_len is out of range$"):
        batch_socket.send(header, payload, rows, lengths + 200, ips, ports)
    with pytest.raises(ValueError, match=r"^payload_len is out of range$"):
        batch_socket.send(header, payload, rows, 161, ips, ports)
    with pytest.raises(ValueError, match=r"^send arrays differ in length$"):
        batch_socket.send(header, payload, rows[:3], lengths, ips, ports)
    with pytest.raises(ValueError, match=r"^header must be a 2-D uint8 array$"):
        batch_socket.send(header.ravel(), payload, rows, lengths, ips, ports)
    with pytest.raises(ValueError, match=r"^payload must be a 2-D uint8 array$"):
        batch_socket.send(header, payload.astype(np.int16), rows, lengths, ips, ports)
    assert batch_socket.send(header[:0], payload, rows[:0], lengths[:0], ips[:0], ports[:0]) == 0


# --- construction and helpers ----------------------------------------------------------------


def test_backend_selection(udp: list[socket.socket]) -> None:
    expected = "mmsg" if mmsg.mmsg_available() else "fallback"
    assert BatchSocket(open_udp(udp)).backend == expected
    assert BatchSocket(open_udp(udp), backend="fallback").backend == "fallback"
    with pytest.raises(ValueError, match=r"^unknown backend 'epoll'$"):
        BatchSocket(open_udp(udp), backend="epoll")


def test_rejects_other_sockets() -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock6,
        pytest.raises(ValueError, match=r"^only IPv4 sockets are supported$"),
    ):
        BatchSocket(sock6)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream,
        pytest.raises(ValueError, match=r"^only datagram sockets are supported$"),
    ):
        BatchSocket(stream)


@linux_only
def test_auto_switches_to_fallback_on_enosys(
    monkeypatch: pytest.MonkeyPatch, udp: list[socket.socket]
) -> None:
    def unavailable(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(mmsg, "_LIBC_MMSG", (unavailable, unavailable))
    receiver = open_udp(udp)
    batch_socket = BatchSocket(receiver)
    assert batch_socket.backend == "mmsg"
    open_udp(udp).sendto(b"hello", (LOCALHOST, port_of(receiver)))

    batch = drain(batch_socket, 1)

    assert batch_socket.backend == "fallback"
    assert batch.datagram(0) == b"hello"


@linux_only
def test_auto_send_switches_to_fallback_on_enosys(
    monkeypatch: pytest.MonkeyPatch, udp: list[socket.socket]
) -> None:
    def unavailable(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    libc = mmsg._LIBC_MMSG
    assert libc is not None
    monkeypatch.setattr(mmsg, "_LIBC_MMSG", (libc[0], unavailable))
    listener = open_udp(udp)
    batch_socket = BatchSocket(open_udp(udp))
    columns = send_columns([port_of(listener)], 5)
    header, payload, rows, lengths, _, _ = columns

    assert batch_socket.send(*columns) == 5

    assert batch_socket.backend == "fallback"
    expected = [expected_message(header, payload, rows, lengths, index) for index in range(5)]
    assert receive_all(listener) == expected


@linux_only
def test_mmsg_backend_surfaces_other_errors(
    monkeypatch: pytest.MonkeyPatch, udp: list[socket.socket]
) -> None:
    def broken(*args: object) -> int:
        ctypes.set_errno(errno.EBADF)
        return -1

    monkeypatch.setattr(mmsg, "_LIBC_MMSG", (broken, broken))
    batch_socket = BatchSocket(open_udp(udp), backend="mmsg")
    with pytest.raises(OSError) as raised:
        batch_socket.recv()
    assert raised.value.errno == errno.EBADF


def test_set_receive_buffer(udp: list[socket.socket]) -> None:
    sock = open_udp(udp)
    default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    size = set_receive_buffer(sock, 8 * 1024 * 1024)
    assert size > default
    assert size == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with pytest.raises(ValueError, match=r"^receive buffer size must be positive$"):
        set_receive_buffer(sock, 0)


SNMP_SAMPLE = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1234
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
Udp: 5000 3 17 4000 17 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
UdpLite: 0 0 0 0 99 0 0
"""


def test_rcvbuf_errors_parses_snmp(tmp_path: Path) -> None:
    sample = tmp_path / "snmp"
    sample.write_text(SNMP_SAMPLE)
    assert rcvbuf_errors(sample) == 17
    sample.write_text("Udp: InDatagrams\nUdp: 5\n")
    assert rcvbuf_errors(sample) is None
    assert rcvbuf_errors(tmp_path / "missing") is None


@pytest.mark.skipif(not mmsg.SNMP_PATH.exists(), reason="no /proc/net/snmp")
def test_rcvbuf_errors_counts_real_drops(udp: list[socket.socket]) -> None:
    before = rcvbuf_errors()
    assert before is not None
    receiver = open_udp(udp)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum
    sender = open_udp(udp)
    for _ in range(200):
        sender.sendto(b"z" * 1000, (LOCALHOST, port_of(receiver)))
    after = rcvbuf_errors()
    assert after is not None
    assert after > before
