"""Batched UDP receive and send: Linux ``recvmmsg(2)``/``sendmmsg(2)`` through ctypes.

The media worker drains every pending datagram of its shared port once per tick and sends
every leg's packet with as few system calls as possible (DESIGN.md, "How one audio frame
flows: batch first"). :class:`BatchSocket` does both into preallocated NumPy buffers:

* ``recv()`` reads with ``recvmmsg`` in chunks of at most :data:`MAX_VLEN` messages (the
  kernel's ``UIO_MAXIOV`` cap) until a call returns fewer than asked or the capacity is
  reached, and returns the datagrams as columns (:class:`RecvBatch`).
* ``send()`` writes with ``sendmmsg``; each message has two ``iovec`` entries, a per-message
  header row and a shared payload row, so that many listeners send one encoded mix without
  copying it.

The ``mmsghdr``/``iovec``/``sockaddr_in`` arrays handed to the kernel are NumPy structured
arrays whose layout comes from the ctypes declarations of ``<sys/socket.h>``; they are
filled column-wise, never with a Python loop per packet. Kernel receive timestamps come from
``SO_TIMESTAMPNS`` (socket(7)) as ``SCM_TIMESTAMPNS`` control messages.

Where ``recvmmsg`` is not available (another OS, a 32-bit ABI, a seccomp filter answering
``ENOSYS``) a per-packet fallback with ``recvmsg_into``/``sendmsg`` (or, where even those
are missing, ``recvfrom_into``/``sendto``) produces the same :class:`RecvBatch`.

Limitations: IPv4 only (``AF_INET``); an IPv6 socket needs ``sockaddr_in6`` names and is
rejected. Only the first control message of a datagram is examined for the timestamp.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

#: Messages per ``recvmmsg``/``sendmmsg`` call; Linux caps ``vlen`` at ``UIO_MAXIOV``.
MAX_VLEN: Final = 1024
#: Default number of datagrams one ``recv()`` may return.
DEFAULT_CAPACITY: Final = 4096
#: Default bytes per receive slot: an Ethernet MTU datagram fits.
DEFAULT_SLOT_SIZE: Final = 1536

#: ``sizeof(struct msghdr)`` and ``sizeof(struct mmsghdr)`` on 64-bit Linux, padding included.
MSGHDR_SIZE: Final = 56
MMSGHDR_SIZE: Final = 64
_LINUX_64_SIZES: Final = {"iovec": 16, "sockaddr_in": 16, "SCM_TIMESTAMPNS control message": 32}

#: ``<asm-generic/socket.h>`` option numbers, shared by the architectures listed below.
SO_RCVBUFFORCE: Final = 33
SO_TIMESTAMPNS: Final = 35
SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
_GENERIC_SOCKET_ABI_MACHINES: Final = frozenset(
    {"x86_64", "aarch64", "arm64", "riscv64", "ppc64", "ppc64le", "s390x"}
)

#: Where Linux counts UDP datagrams dropped for a full receive buffer.
SNMP_PATH: Final = Path("/proc/net/snmp")

_NS_PER_S: Final = 1_000_000_000


class Backend(enum.StrEnum):
    """How a :class:`BatchSocket` talks to the kernel."""

    AUTO = "auto"
    MMSG = "mmsg"
    FALLBACK = "fallback"


# --- C layouts -------------------------------------------------------------------------------


class _Iovec(ctypes.Structure):
    """``struct iovec``, readv(2)."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    """``struct msghdr``, recvmsg(2)."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    """``struct mmsghdr``, recvmmsg(2)."""

    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


class _SockaddrIn(ctypes.Structure):
    """``struct sockaddr_in``, ip(7); port and address in network byte order."""

    _fields_ = (
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_uint32),
        ("sin_zero", ctypes.c_uint8 * 8),
    )


class _Timespec(ctypes.Structure):
    """``struct timespec`` as carried by ``SCM_TIMESTAMPNS``, socket(7)."""

    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _CmsgHdr(ctypes.Structure):
    """``struct cmsghdr``, cmsg(3)."""

    _fields_ = (
        ("cmsg_len", ctypes.c_size_t),
        ("cmsg_level", ctypes.c_int),
        ("cmsg_type", ctypes.c_int),
    )


def _offset(struct_type: type[ctypes.Structure], name: str) -> int:
    return int(getattr(struct_type, name).offset)


_MSG_HDR_AT = _offset(_MMsgHdr, "msg_hdr")

#: One ``struct mmsghdr`` with the ``msghdr`` fields flattened into it.
MMSGHDR_DTYPE: Final = np.dtype(
    {
        "names": [
            "msg_name",
            "msg_namelen",
            "msg_iov",
            "msg_iovlen",
            "msg_control",
            "msg_controllen",
            "msg_flags",
            "msg_len",
        ],
        "formats": [
            np.uintp,
            np.uint32,
            np.uintp,
            np.uintp,
            np.uintp,
            np.uintp,
            np.int32,
            np.uint32,
        ],
        "offsets": [
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_name"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_namelen"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_iov"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_iovlen"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_control"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_controllen"),
            _MSG_HDR_AT + _offset(_MsgHdr, "msg_flags"),
            _offset(_MMsgHdr, "msg_len"),
        ],
        "itemsize": ctypes.sizeof(_MMsgHdr),
    }
)

IOVEC_DTYPE: Final = np.dtype(
    {
        "names": ["iov_base", "iov_len"],
        "formats": [np.uintp, np.uintp],
        "offsets": [_offset(_Iovec, "iov_base"), _offset(_Iovec, "iov_len")],
        "itemsize": ctypes.sizeof(_Iovec),
    }
)

SOCKADDR_IN_SIZE: Final = ctypes.sizeof(_SockaddrIn)
SOCKADDR_IN_DTYPE: Final = np.dtype(
    {
        "names": ["sin_family", "sin_port", "sin_addr"],
        "formats": [np.uint16, ">u2", ">u4"],
        "offsets": [
            _offset(_SockaddrIn, "sin_family"),
            _offset(_SockaddrIn, "sin_port"),
            _offset(_SockaddrIn, "sin_addr"),
        ],
        "itemsize": SOCKADDR_IN_SIZE,
    }
)

_TIMESPEC_SIZE: Final = ctypes.sizeof(_Timespec)
#: Control bytes per receive slot: room for one ``SCM_TIMESTAMPNS`` message.
TIMESTAMP_CMSG_SPACE: Final = socket.CMSG_SPACE(_TIMESPEC_SIZE)
_TIMESTAMP_CMSG_LEN: Final = socket.CMSG_LEN(_TIMESPEC_SIZE)
_CMSG_DATA_AT: Final = socket.CMSG_LEN(0)
CMSG_TIMESTAMP_DTYPE: Final = np.dtype(
    {
        "names": ["cmsg_len", "cmsg_level", "cmsg_type", "tv_sec", "tv_nsec"],
        "formats": [np.uintp, np.int32, np.int32, np.int64, np.int64],
        "offsets": [
            _offset(_CmsgHdr, "cmsg_len"),
            _offset(_CmsgHdr, "cmsg_level"),
            _offset(_CmsgHdr, "cmsg_type"),
            _CMSG_DATA_AT + _offset(_Timespec, "tv_sec"),
            _CMSG_DATA_AT + _offset(_Timespec, "tv_nsec"),
        ],
        "itemsize": TIMESTAMP_CMSG_SPACE,
    }
)
_TIMESPEC: Final = struct.Struct("@ll")

_LINUX_64: Final = sys.platform == "linux" and ctypes.sizeof(ctypes.c_void_p) == 8
_GENERIC_SOCKET_ABI: Final = (
    sys.platform == "linux" and platform.machine() in _GENERIC_SOCKET_ABI_MACHINES
)


def _check_layout() -> None:
    """Refuse to import where the kernel would read our arrays with another layout."""
    if not _LINUX_64:
        return
    if ctypes.sizeof(_MsgHdr) != MSGHDR_SIZE:
        raise ImportError(f"struct msghdr is {ctypes.sizeof(_MsgHdr)} bytes, not {MSGHDR_SIZE}")
    if ctypes.sizeof(_MMsgHdr) != MMSGHDR_SIZE or MMSGHDR_DTYPE.itemsize != MMSGHDR_SIZE:
        raise ImportError(f"struct mmsghdr is {MMSGHDR_DTYPE.itemsize} bytes, not {MMSGHDR_SIZE}")
    if _offset(_MMsgHdr, "msg_len") != MSGHDR_SIZE:
        raise ImportError("mmsghdr.msg_len does not follow the msghdr")
    sizes = {
        "iovec": IOVEC_DTYPE.itemsize,
        "sockaddr_in": SOCKADDR_IN_SIZE,
        "SCM_TIMESTAMPNS control message": TIMESTAMP_CMSG_SPACE,
    }
    for name, size in sizes.items():
        if size != _LINUX_64_SIZES[name]:
            raise ImportError(f"{name} is {size} bytes, not {_LINUX_64_SIZES[name]}")


_check_layout()


# --- libc ------------------------------------------------------------------------------------

_RecvMMsg = Callable[[int, int, int, int, int | None], int]
_SendMMsg = Callable[[int, int, int, int], int]


def _load_libc() -> tuple[_RecvMMsg, _SendMMsg] | None:
    if not _LINUX_64:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


#: ``(recvmmsg, sendmmsg)`` from libc, or None where the mmsg backend cannot be used.
_LIBC_MMSG: tuple[_RecvMMsg, _SendMMsg] | None = _load_libc()
#: Whether the per-packet fallback can use ``recvmsg_into``/``sendmsg`` (POSIX) rather
#: than ``recvfrom_into``/``sendto``.
_HAVE_RECVMSG: bool = hasattr(socket.socket, "recvmsg_into") and hasattr(socket.socket, "sendmsg")
#: Linux's recvfrom(2) reports a truncated datagram's real length when asked with MSG_TRUNC.
_RECVFROM_FLAGS: Final = socket.MSG_TRUNC if sys.platform == "linux" else 0

_WOULD_BLOCK: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
_SEND_DROP: Final = _WOULD_BLOCK | {errno.ENOBUFS}


def mmsg_available() -> bool:
    """Whether ``recvmmsg``/``sendmmsg`` can be used on this platform."""
    return _LIBC_MMSG is not None


# --- public helpers --------------------------------------------------------------------------


def set_receive_buffer(sock: socket.socket, nbytes: int) -> int:
    """Raise the socket's receive buffer to ``nbytes`` and return the size now in effect.

    Tries ``SO_RCVBUFFORCE`` first, which ignores ``net.core.rmem_max`` but needs
    ``CAP_NET_ADMIN``, then falls back to ``SO_RCVBUF`` (capped at ``rmem_max``), socket(7).
    Linux doubles the value for its own bookkeeping, so the result is about ``2 * nbytes``.
    """
    if nbytes <= 0:
        raise ValueError("receive buffer size must be positive")
    forced = False
    if _GENERIC_SOCKET_ABI:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, nbytes)
            forced = True
        except OSError:
            forced = False
    if not forced:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def rcvbuf_errors(path: Path = SNMP_PATH) -> int | None:
    """``Udp: RcvbufErrors`` from /proc/net/snmp: datagrams dropped for a full receive buffer.

    Returns None where the counter is not available (not Linux, or no procfs).
    """
    try:
        text = path.read_text()
    except OSError:
        return None
    rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        return None
    column = rows[0].index("RcvbufErrors")
    try:
        return int(rows[1][column])
    except (IndexError, ValueError):
        return None


@dataclass
class RecvBatch:
    """The datagrams one :meth:`BatchSocket.recv` drained, as columns.

    Every array is a view of a buffer the socket reuses: it is valid until the next
    ``recv()``. Copy what must outlive the tick.
    """

    count: int
    #: ``(count, slot_size)``; datagram ``i`` is ``data[i, :length[i]]``.
    data: npt.NDArray[np.uint8]
    #: Bytes received per datagram (at most ``slot_size``).
    length: npt.NDArray[np.int32]
    #: The datagram was longer than a slot (``MSG_TRUNC``); its tail is lost.
    truncated: npt.NDArray[np.bool_]
    #: IPv4 source address, host byte order.
    src_ip: npt.NDArray[np.uint32]
    src_port: npt.NDArray[np.uint16]
    #: Kernel receive time (``SO_TIMESTAMPNS``, CLOCK_REALTIME) in ns, or the time of the drain.
    rx_ns: npt.NDArray[np.int64]

    def datagram(self, index: int) -> bytes:
        """One datagram's bytes, for slow paths."""
        return self.data[index, : self.length[index]].tobytes()


def _ip_to_int(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


def _int_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


class BatchSocket:
    """Batched, never-blocking receive and send on one IPv4 UDP socket.

    The socket is switched to non-blocking mode and stays owned by the caller. All
    buffers are allocated here, once: their addresses go to the kernel, so they are never
    resized. ``backend`` is ``"mmsg"`` (``recvmmsg``/``sendmmsg``), ``"fallback"`` (one
    system call per datagram) or ``"auto"`` (mmsg where available; a kernel answering
    ``ENOSYS`` switches it to the fallback for good).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        capacity: int = DEFAULT_CAPACITY,
        slot_size: int = DEFAULT_SLOT_SIZE,
        timestamps: bool = True,
        backend: str = Backend.AUTO,
    ) -> None:
        if sock.family != socket.AF_INET:
            raise ValueError("only IPv4 sockets are supported")
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("only datagram sockets are supported")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if slot_size < 1:
            raise ValueError("slot size must be at least 1")
        try:
            requested = Backend(backend)
        except ValueError:
            raise ValueError(f"unknown backend {backend!r}") from None
        if requested is Backend.MMSG and _LIBC_MMSG is None:
            raise ValueError("recvmmsg/sendmmsg are not available on this platform")

        sock.setblocking(False)
        self.sock = sock
        self.capacity = capacity
        self.slot_size = slot_size
        self._auto = requested is Backend.AUTO
        #: Messages ``send()`` dropped because the kernel had no room (EAGAIN/ENOBUFS).
        self.send_dropped = 0
        #: Messages ``send()`` skipped because the kernel refused them (e.g. EINVAL).
        self.send_errors = 0

        use_mmsg = requested is not Backend.FALLBACK and _LIBC_MMSG is not None

        #: Whether rx_ns comes from the kernel (SO_TIMESTAMPNS) rather than the drain time.
        self.kernel_timestamps = False
        if timestamps and _GENERIC_SOCKET_ABI and (use_mmsg or _HAVE_RECVMSG):
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_timestamps = True
            except OSError:
                self.kernel_timestamps = False

        # Receive slots and the output columns RecvBatch views.
        self._data = np.zeros((capacity, slot_size), dtype=np.uint8)
        self._length = np.zeros(capacity, dtype=np.int32)
        self._truncated = np.zeros(capacity, dtype=np.bool_)
        self._src_ip = np.zeros(capacity, dtype=np.uint32)
        self._src_port = np.zeros(capacity, dtype=np.uint16)
        self._rx_ns = np.zeros(capacity, dtype=np.int64)
        self._data_view = self._data.reshape(-1).data

        self.backend: str = Backend.FALLBACK
        self._recvmmsg: _RecvMMsg | None = None
        self._sendmmsg: _SendMMsg | None = None
        if use_mmsg and _LIBC_MMSG is not None:
            self._recvmmsg, self._sendmmsg = _LIBC_MMSG
            self._allocate_mmsg()
            self.backend = Backend.MMSG

    def _allocate_mmsg(self) -> None:
        capacity = self.capacity
        control_size = TIMESTAMP_CMSG_SPACE if self.kernel_timestamps else 0
        self._control_size = control_size

        self._rx_iov = np.zeros(capacity, dtype=IOVEC_DTYPE)
        self._rx_iov["iov_base"] = self._data.ctypes.data + np.arange(capacity) * self.slot_size
        self._rx_iov["iov_len"] = self.slot_size
        self._rx_names = np.zeros(capacity, dtype=SOCKADDR_IN_DTYPE)
        self._rx_control = np.zeros(capacity, dtype=CMSG_TIMESTAMP_DTYPE)
        self._rx_hdrs = np.zeros(capacity, dtype=MMSGHDR_DTYPE)
        slots = np.arange(capacity)
        self._rx_hdrs["msg_name"] = self._rx_names.ctypes.data + slots * SOCKADDR_IN_SIZE
        self._rx_hdrs["msg_iov"] = self._rx_iov.ctypes.data + slots * IOVEC_DTYPE.itemsize
        self._rx_hdrs["msg_iovlen"] = 1
        if control_size:
            self._rx_hdrs["msg_control"] = (
                self._rx_control.ctypes.data + slots * CMSG_TIMESTAMP_DTYPE.itemsize
            )
        self._rx_hdrs_at = int(self._rx_hdrs.ctypes.data)
        # Column views, made once: a structured field lookup costs more than its copy.
        self._rx_namelen = self._rx_hdrs["msg_namelen"]
        self._rx_controllen = self._rx_hdrs["msg_controllen"]
        self._rx_msg_len = self._rx_hdrs["msg_len"]
        self._rx_flags = self._rx_hdrs["msg_flags"]
        self._rx_addr = self._rx_names["sin_addr"]
        self._rx_port = self._rx_names["sin_port"]
        self._rx_cmsg_level = self._rx_control["cmsg_level"]
        self._rx_cmsg_type = self._rx_control["cmsg_type"]
        self._rx_tv_sec = self._rx_control["tv_sec"]
        self._rx_tv_nsec = self._rx_control["tv_nsec"]
        self._reset_rx(capacity)

        # Send: two iovecs per message (header row, payload row), one name per message.
        self._tx_iov = np.zeros(2 * MAX_VLEN, dtype=IOVEC_DTYPE)
        self._tx_names = np.zeros(MAX_VLEN, dtype=SOCKADDR_IN_DTYPE)
        self._tx_names["sin_family"] = socket.AF_INET
        self._tx_hdrs = np.zeros(MAX_VLEN, dtype=MMSGHDR_DTYPE)
        messages = np.arange(MAX_VLEN)
        self._tx_hdrs["msg_name"] = self._tx_names.ctypes.data + messages * SOCKADDR_IN_SIZE
        self._tx_hdrs["msg_iov"] = self._tx_iov.ctypes.data + messages * 2 * IOVEC_DTYPE.itemsize
        self._tx_hdrs["msg_iovlen"] = 2
        self._tx_hdrs_at = int(self._tx_hdrs.ctypes.data)
        self._tx_index = messages
        self._tx_header_base = self._tx_iov["iov_base"][0::2]
        self._tx_header_len = self._tx_iov["iov_len"][0::2]
        self._tx_payload_base = self._tx_iov["iov_base"][1::2]
        self._tx_payload_len = self._tx_iov["iov_len"][1::2]
        self._tx_addr = self._tx_names["sin_addr"]
        self._tx_port = self._tx_names["sin_port"]
        self._tx_namelen = self._tx_hdrs["msg_namelen"]
        self._tx_msg_len = self._tx_hdrs["msg_len"]

    def _switch_to_fallback(self) -> None:
        self.backend = Backend.FALLBACK
        self._recvmmsg = None
        self._sendmmsg = None
        if not _HAVE_RECVMSG:  # recvfrom_into carries no control messages
            self.kernel_timestamps = False

    # --- receive ---------------------------------------------------------------------------

    def recv(self) -> RecvBatch:
        """Drain every pending datagram, up to ``capacity``; never blocks.

        Returns a batch with ``count == 0`` when nothing is pending. Datagrams beyond
        ``capacity`` stay queued in the kernel for the next call.
        """
        if self._recvmmsg is not None:
            count = self._recv_mmsg(self._recvmmsg)
        else:
            count = self._recv_fallback(0)
        return RecvBatch(
            count=count,
            data=self._data[:count],
            length=self._length[:count],
            truncated=self._truncated[:count],
            src_ip=self._src_ip[:count],
            src_port=self._src_port[:count],
            rx_ns=self._rx_ns[:count],
        )

    def _recv_mmsg(self, recvmmsg: _RecvMMsg) -> int:
        fd = self.sock.fileno()
        base = self._rx_hdrs_at
        count = 0
        while count < self.capacity:
            want = min(MAX_VLEN, self.capacity - count)
            got = recvmmsg(fd, base + count * MMSGHDR_SIZE, want, socket.MSG_DONTWAIT, None)
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                if err in _WOULD_BLOCK:
                    break
                self._columns_mmsg(count)
                # Also the header the call failed on, in case the kernel wrote to it.
                self._reset_rx(min(count + 1, self.capacity))
                if err == errno.ENOSYS and self._auto:
                    self._switch_to_fallback()
                    return self._recv_fallback(count)
                raise OSError(err, os.strerror(err))
            count += got
            if got < want:
                break
        self._columns_mmsg(count)
        self._reset_rx(count)
        return count

    def _reset_rx(self, count: int) -> None:
        """The kernel rewrote msg_namelen, msg_controllen and msg_len: reset them for reuse."""
        if count:
            self._rx_namelen[:count] = SOCKADDR_IN_SIZE
            self._rx_controllen[:count] = self._control_size
            self._rx_msg_len[:count] = 0

    def _columns_mmsg(self, count: int) -> None:
        """Turn the first ``count`` filled headers into the output columns."""
        if count == 0:
            return
        self._length[:count] = self._rx_msg_len[:count]
        self._truncated[:count] = (self._rx_flags[:count] & socket.MSG_TRUNC) != 0
        self._src_ip[:count] = self._rx_addr[:count]
        self._src_port[:count] = self._rx_port[:count]
        now = time.time_ns()
        rx_ns = self._rx_ns[:count]
        if not self.kernel_timestamps:
            rx_ns[:] = now
            return
        rx_ns[:] = self._rx_tv_sec[:count] * _NS_PER_S + self._rx_tv_nsec[:count]
        unstamped = (
            (self._rx_controllen[:count] < _TIMESTAMP_CMSG_LEN)
            | (self._rx_cmsg_level[:count] != socket.SOL_SOCKET)
            | (self._rx_cmsg_type[:count] != SCM_TIMESTAMPNS)
        )
        if unstamped.any():
            rx_ns[unstamped] = now

    def _recv_fallback(self, start: int) -> int:
        """One system call per datagram; fills the columns from ``start`` on."""
        slot = self.slot_size
        view = self._data_view
        lengths: list[int] = []
        truncated: list[bool] = []
        ips: list[int] = []
        ports: list[int] = []
        stamps: list[int] = []
        control_size = TIMESTAMP_CMSG_SPACE if self.kernel_timestamps else 0
        index = start
        while index < self.capacity:
            buffer = view[index * slot : (index + 1) * slot]
            try:
                if _HAVE_RECVMSG:
                    nbytes, ancdata, flags, address = self.sock.recvmsg_into([buffer], control_size)
                    stamp = self._fallback_stamp(ancdata)
                    truncated.append(bool(flags & socket.MSG_TRUNC))
                else:
                    nbytes, address = self.sock.recvfrom_into(buffer, slot, _RECVFROM_FLAGS)
                    stamp = 0
                    truncated.append(nbytes > slot)
                    nbytes = min(nbytes, slot)
            except BlockingIOError:
                break
            lengths.append(nbytes)
            ips.append(_ip_to_int(address[0]))
            ports.append(address[1])
            stamps.append(stamp)
            index += 1
        if index > start:
            window = slice(start, index)
            self._length[window] = lengths
            self._truncated[window] = truncated
            self._src_ip[window] = ips
            self._src_port[window] = ports
            received = np.array(stamps, dtype=np.int64)
            received[received == 0] = time.time_ns()
            self._rx_ns[window] = received
        return index

    @staticmethod
    def _fallback_stamp(ancdata: list[tuple[int, int, bytes]]) -> int:
        for level, kind, data in ancdata:
            if (
                level == socket.SOL_SOCKET
                and kind == SCM_TIMESTAMPNS
                and len(data) >= _TIMESPEC.size
            ):
                seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                return int(seconds) * _NS_PER_S + int(nanoseconds)
        return 0

    # --- send ------------------------------------------------------------------------------

    def send(
        self,
        header: npt.NDArray[np.uint8],
        payload: npt.NDArray[np.uint8],
        payload_row: npt.NDArray[np.intp],
        payload_len: npt.NDArray[np.int32] | int,
        dest_ip: npt.NDArray[np.uint32],
        dest_port: npt.NDArray[np.uint16],
    ) -> int:
        """Send ``n`` datagrams; never blocks. Returns how many the kernel took.

        Message ``i`` is ``header[i, :]`` followed by ``payload[payload_row[i],
        :payload_len[i]]``, sent to ``(dest_ip[i], dest_port[i])`` (host byte order).
        ``payload_len`` may be one int for all. When the kernel has no room (EAGAIN,
        ENOBUFS) the rest is dropped and counted in ``send_dropped``; a message the kernel
        refuses (EINVAL for port 0, EMSGSIZE, ...) is skipped and counted in ``send_errors``.
        """
        header = np.asarray(header)
        payload = np.asarray(payload)
        rows = np.asarray(payload_row, dtype=np.intp)
        ips = np.asarray(dest_ip)
        ports = np.asarray(dest_port)
        if header.ndim != 2 or header.dtype != np.uint8:
            raise ValueError("header must be a 2-D uint8 array")
        if payload.ndim != 2 or payload.dtype != np.uint8:
            raise ValueError("payload must be a 2-D uint8 array")
        count = header.shape[0]
        if rows.shape != (count,) or ips.shape != (count,) or ports.shape != (count,):
            raise ValueError("send arrays differ in length")
        lengths: npt.NDArray[np.intp] | int
        if isinstance(payload_len, int | np.integer):
            lengths = int(payload_len)
            if not 0 <= lengths <= payload.shape[1]:
                raise ValueError("payload_len is out of range")
        else:
            lengths = np.asarray(payload_len, dtype=np.intp)
            if lengths.shape != (count,):
                raise ValueError("send arrays differ in length")
            if count and (lengths.min() < 0 or lengths.max() > payload.shape[1]):
                raise ValueError("payload_len is out of range")
        if count == 0:
            return 0
        if rows.min() < 0 or rows.max() >= payload.shape[0]:
            raise ValueError("payload_row is out of range")
        # The kernel reads rows through raw pointers: each row's bytes must be contiguous.
        if header.shape[1] > 1 and header.strides[1] != 1:
            header = np.ascontiguousarray(header)
        if payload.shape[1] > 1 and payload.strides[1] != 1:
            payload = np.ascontiguousarray(payload)

        if self._sendmmsg is not None:
            return self._send_mmsg(self._sendmmsg, header, payload, rows, lengths, ips, ports)
        return self._send_fallback(header, payload, rows, lengths, ips, ports, 0)

    def _send_mmsg(
        self,
        sendmmsg: _SendMMsg,
        header: npt.NDArray[np.uint8],
        payload: npt.NDArray[np.uint8],
        rows: npt.NDArray[np.intp],
        lengths: npt.NDArray[np.intp] | int,
        ips: npt.NDArray[np.uint32],
        ports: npt.NDArray[np.uint16],
    ) -> int:
        fd = self.sock.fileno()
        count = header.shape[0]
        header_at = header.ctypes.data
        header_stride = header.strides[0]
        payload_at = payload.ctypes.data
        payload_stride = payload.strides[0]
        base = self._tx_hdrs_at
        sent = 0
        for start in range(0, count, MAX_VLEN):
            stop = min(start + MAX_VLEN, count)
            size = stop - start
            # Addresses of each message's header row and payload row (int64, never negative).
            first_row_at = header_at + start * header_stride
            self._tx_header_base[:size] = self._tx_index[:size] * header_stride + first_row_at
            self._tx_header_len[:size] = header.shape[1]
            self._tx_payload_base[:size] = rows[start:stop] * payload_stride + payload_at
            self._tx_payload_len[:size] = (
                lengths if isinstance(lengths, int) else lengths[start:stop]
            )
            self._tx_addr[:size] = ips[start:stop]
            self._tx_port[:size] = ports[start:stop]
            self._tx_namelen[:size] = SOCKADDR_IN_SIZE
            self._tx_msg_len[:size] = 0
            done = 0
            while done < size:
                got = sendmmsg(fd, base + done * MMSGHDR_SIZE, size - done, socket.MSG_DONTWAIT)
                if got > 0:
                    done += got
                    sent += got
                    continue
                err = ctypes.get_errno() if got < 0 else errno.EAGAIN
                if err == errno.EINTR:
                    continue
                if err in _SEND_DROP:
                    self.send_dropped += count - start - done
                    return sent
                if err == errno.ENOSYS and self._auto:
                    self._switch_to_fallback()
                    return sent + self._send_fallback(
                        header, payload, rows, lengths, ips, ports, start + done
                    )
                # The kernel refused message `done` alone (sendmmsg(2) reports the first
                # failure); skip it and go on with the rest.
                self.send_errors += 1
                done += 1
        return sent

    def _send_fallback(
        self,
        header: npt.NDArray[np.uint8],
        payload: npt.NDArray[np.uint8],
        rows: npt.NDArray[np.intp],
        lengths: npt.NDArray[np.intp] | int,
        ips: npt.NDArray[np.uint32],
        ports: npt.NDArray[np.uint16],
        start: int,
    ) -> int:
        """One system call per datagram, from message ``start`` on."""
        count = header.shape[0]
        header_bytes = np.ascontiguousarray(header).tobytes()
        header_size = header.shape[1]
        payload_view = np.ascontiguousarray(payload).reshape(-1).data
        payload_stride = payload.shape[1]
        row_list = rows.tolist()
        length_list = [lengths] * count if isinstance(lengths, int) else lengths.tolist()
        port_list = ports.tolist()
        addresses: dict[int, str] = {}
        ip_list = ips.tolist()
        sent = 0
        for index in range(start, count):
            ip = ip_list[index]
            address = addresses.get(ip)
            if address is None:
                address = addresses[ip] = _int_to_ip(ip)
            head = header_bytes[index * header_size : (index + 1) * header_size]
            row_at = row_list[index] * payload_stride
            body = payload_view[row_at : row_at + length_list[index]]
            destination = (address, port_list[index])
            try:
                if _HAVE_RECVMSG:
                    self.sock.sendmsg([head, body], (), 0, destination)
                else:
                    self.sock.sendto(head + bytes(body), destination)
            except OSError as exc:
                if isinstance(exc, BlockingIOError) or exc.errno in _SEND_DROP:
                    self.send_dropped += count - index
                    return sent
                self.send_errors += 1
                continue
            sent += 1
        return sent
