"""A single-producer/single-consumer ring of fixed-size records in shared memory.

A media worker hands the recorder process its mixed room frames and recording events
through one such ring, so that disk I/O never touches a tick (DESIGN.md, "Processes").
The producer side never blocks, never takes a lock and makes no system call: a push is
a handful of stores into a mapping that both processes share.

Layout of the shared block (little-endian, every field 8-byte aligned)::

    offset   0  magic "UCBRING1", layout version, capacity, payload size  (u64 each)
    offset  64  head     u64, stored by the producer only
    offset 128  tail     u64, stored by the consumer only
    offset 192  dropped  u64, stored by the producer only
    offset 256  capacity slots of: kind u32, length u32, room i64, t_ns i64,
                reserved u64, then payload_size bytes (rounded up to 8)

``head`` and ``tail`` are free-running record counters on their own cache lines; a
record lives in slot ``counter & (capacity - 1)``. The ring is full when
``head - tail == capacity``.

Publication order: the producer writes the whole record, then stores the new ``head``;
the consumer loads ``head``, copies the records out, then stores the new ``tail``. Each
counter is a single aligned 8-byte store. x86-64 keeps stores in program order and loads
in program order (TSO), which is all this protocol needs. A weakly ordered CPU (aarch64)
would need a release fence before each counter store and an acquire fence after each
counter load, which Python cannot issue without a lock or a system call.

Lifecycle: the parent process creates the block with :class:`SharedRing` and passes its
:attr:`SharedRing.name` to the children. The producer attaches with
:meth:`RingWriter.attach`, the consumer with :meth:`RingReader.attach`; both ``close()``
their mapping, and the parent finally ``close()``-s and ``unlink()``-s the block.
Attaching never registers the block with the attaching process's resource tracker, so a
child started with ``subprocess`` (as media workers are) does not unlink the ring when it
exits (CPython gh-82300).
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
import struct
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_PAYLOAD_SIZE",
    "Record",
    "RingReader",
    "RingWriter",
    "SharedRing",
    "ring_size",
]

#: Records a ring holds by default: 4096 records of 20 ms are 80 room-seconds of audio.
DEFAULT_CAPACITY = 4096
#: Payload bytes per record by default: a 20 ms frame of 16 kHz int16 is 640 bytes.
DEFAULT_PAYLOAD_SIZE = 1024

MAGIC = int.from_bytes(b"UCBRING1", "little")
LAYOUT_VERSION = 1

WORD_SIZE = 8
CACHE_LINE = 64
# Word indexes into the control block.
MAGIC_WORD = 0
VERSION_WORD = 1
CAPACITY_WORD = 2
PAYLOAD_SIZE_WORD = 3
HEAD_WORD = CACHE_LINE // WORD_SIZE
TAIL_WORD = 2 * CACHE_LINE // WORD_SIZE
DROPPED_WORD = 3 * CACHE_LINE // WORD_SIZE
CONTROL_SIZE = 4 * CACHE_LINE
_RING_HEADER = struct.Struct("<QQQQ")  # magic, version, capacity, payload size: words 0-3

RECORD_HEADER_SIZE = 32
KIND_OFFSET = 0
LENGTH_OFFSET = 4
ROOM_OFFSET = 8
T_NS_OFFSET = 16
_RECORD_HEADER = struct.Struct("<IIqq")  # kind, length, room, t_ns at the offsets above

MAX_KIND = 0xFFFFFFFF
SHM_MODE = 0o600


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _slot_dtype(payload_size: int) -> np.dtype[np.void]:
    return np.dtype(
        {
            "names": ["kind", "length", "room", "t_ns", "payload"],
            "formats": ["<u4", "<u4", "<i8", "<i8", ("u1", (payload_size,))],
            "offsets": [KIND_OFFSET, LENGTH_OFFSET, ROOM_OFFSET, T_NS_OFFSET, RECORD_HEADER_SIZE],
            "itemsize": RECORD_HEADER_SIZE + _round_up(payload_size, WORD_SIZE),
        }
    )


def ring_size(capacity: int, payload_size: int) -> int:
    """Bytes of shared memory that a ring of this shape needs."""
    return CONTROL_SIZE + capacity * _slot_dtype(payload_size).itemsize


def _buffer_of(shm: SharedMemory) -> memoryview:
    buffer = shm.buf
    if buffer is None:
        raise ValueError("shared memory block is closed")
    return buffer


@dataclass(frozen=True, slots=True)
class Record:
    """One record taken off a ring."""

    kind: int
    room: int
    t_ns: int
    payload: bytes


class _RingView:
    """NumPy views of a ring's control words and slots over one shared mapping."""

    def __init__(self, buffer: memoryview) -> None:
        # Checked before any view exists, so that a failed attach can unmap at once.
        if len(buffer) < CONTROL_SIZE:
            raise ValueError("shared memory block is too small for a ring")
        magic, version, capacity, payload_size = map(int, _RING_HEADER.unpack_from(buffer))
        if magic != MAGIC:
            raise ValueError("shared memory block is not a ring")
        if version != LAYOUT_VERSION:
            raise ValueError("ring layout version is not supported")
        if len(buffer) < ring_size(capacity, payload_size):
            raise ValueError("shared memory block is too small for its ring")
        control: npt.NDArray[np.uint64] = np.ndarray(
            (CONTROL_SIZE // WORD_SIZE,), dtype="<u8", buffer=buffer
        )
        slots = np.ndarray(
            (capacity,), dtype=_slot_dtype(payload_size), buffer=buffer, offset=CONTROL_SIZE
        )
        self.capacity = capacity
        self.payload_size = payload_size
        self.mask = capacity - 1
        self.slot_size = slots.dtype.itemsize
        self.control = control
        self.kind: npt.NDArray[np.uint32] = slots["kind"]
        self.length: npt.NDArray[np.uint32] = slots["length"]
        self.room: npt.NDArray[np.int64] = slots["room"]
        self.t_ns: npt.NDArray[np.int64] = slots["t_ns"]
        self.payload: npt.NDArray[np.uint8] = slots["payload"]

    @property
    def head(self) -> int:
        return int(self.control[HEAD_WORD])

    @property
    def tail(self) -> int:
        return int(self.control[TAIL_WORD])

    @property
    def dropped(self) -> int:
        return int(self.control[DROPPED_WORD])

    def release(self) -> None:
        """Drop every view so that the mapping can be closed."""
        del self.control, self.kind, self.length, self.room, self.t_ns, self.payload


class _Attachment:
    """A mapping of an existing block that is never registered with a resource tracker."""

    def __init__(self, name: str) -> None:
        fd = int(_posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=SHM_MODE))
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.name = name
        self.buf = memoryview(self._mmap)

    @classmethod
    def open(cls, name: str) -> _Attachment:
        """Map the block and check that it holds a ring."""
        attachment = cls(name)
        try:
            _RingView(attachment.buf).release()
        except ValueError:
            attachment.close()
            raise
        return attachment

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


class SharedRing:
    """The shared block of one ring, created (and finally unlinked) by the parent process.

    The parent keeps this handle for the ring's lifetime; it can watch the ring's fill
    level and the producer's drop counter, but never pushes or pops.
    """

    def __init__(self, shm: SharedMemory) -> None:
        self._shm = shm
        self._view = _RingView(_buffer_of(shm))

    @classmethod
    def create(
        cls,
        capacity: int = DEFAULT_CAPACITY,
        payload_size: int = DEFAULT_PAYLOAD_SIZE,
        name: str | None = None,
    ) -> SharedRing:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError("ring capacity must be a power of two")
        if payload_size <= 0:
            raise ValueError("ring payload size must be positive")
        shm = SharedMemory(name=name, create=True, size=ring_size(capacity, payload_size))
        control: npt.NDArray[np.uint64] = np.ndarray(
            (CONTROL_SIZE // WORD_SIZE,), dtype="<u8", buffer=_buffer_of(shm)
        )
        control[:] = 0
        control[VERSION_WORD] = LAYOUT_VERSION
        control[CAPACITY_WORD] = capacity
        control[PAYLOAD_SIZE_WORD] = payload_size
        control[MAGIC_WORD] = MAGIC
        del control
        return cls(shm)

    @property
    def name(self) -> str:
        """The name children attach by."""
        return self._shm.name

    @property
    def capacity(self) -> int:
        return self._view.capacity

    @property
    def payload_size(self) -> int:
        return self._view.payload_size

    @property
    def pending(self) -> int:
        """Records pushed and not yet popped."""
        return self._view.head - self._view.tail

    @property
    def dropped(self) -> int:
        """Records the producer dropped because the ring was full."""
        return self._view.dropped

    def close(self) -> None:
        """Unmap the block from this process; the block itself stays until unlinked."""
        self._view.release()
        self._shm.close()

    def unlink(self) -> None:
        """Remove the block's name; it is freed once every process has closed it."""
        self._shm.unlink()

    def __enter__(self) -> SharedRing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        self.unlink()


class RingWriter:
    """The producer end of a ring; used inside the media worker's tick.

    :meth:`push` and :meth:`push_many` never block: when the ring is full they drop the
    record, count it in :attr:`dropped` (mirrored into the shared block for the consumer
    and the parent) and return without waiting.
    """

    def __init__(self, attachment: _Attachment) -> None:
        self._attachment = attachment
        self._view = _RingView(attachment.buf)
        view = self._view
        self.capacity = view.capacity
        self.payload_size = view.payload_size
        self._mask = view.mask
        self._slot_size = view.slot_size
        self._buf = attachment.buf
        # Bound once: the hot path reaches its arrays without attribute chains.
        self._control = view.control
        self._kind = view.kind
        self._length = view.length
        self._room = view.room
        self._t_ns = view.t_ns
        self._payload = view.payload
        # A restarted producer resumes where the last one stopped.
        self._head = view.head
        self._tail_seen = view.tail
        self.dropped = view.dropped

    @classmethod
    def attach(cls, name: str) -> RingWriter:
        return cls(_Attachment.open(name))

    @property
    def name(self) -> str:
        return self._attachment.name

    @property
    def pending(self) -> int:
        """Records pushed and not yet popped by the consumer."""
        return self._head - int(self._control[TAIL_WORD])

    def _free(self, wanted: int) -> int:
        free = self.capacity - (self._head - self._tail_seen)
        if free < wanted:
            # Only read the consumer's counter again when the cached one says too full.
            self._tail_seen = int(self._control[TAIL_WORD])
            free = self.capacity - (self._head - self._tail_seen)
        return free

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._control[DROPPED_WORD] = self.dropped

    def push(self, kind: int, room: int, t_ns: int, payload: bytes | npt.NDArray[Any]) -> bool:
        """Append one record; False (and ``dropped += 1``) when the ring is full.

        ``payload`` is bytes or an array, stored as its raw bytes.
        """
        if isinstance(payload, np.ndarray):
            if not payload.flags.c_contiguous:
                payload = np.ascontiguousarray(payload)
            data = payload.data.cast("B")
        else:
            data = memoryview(payload).cast("B")
        length = data.nbytes
        if length > self.payload_size:
            raise ValueError("record payload is larger than the ring's payload size")
        if not 0 <= kind <= MAX_KIND:
            raise ValueError("record kind is out of range")
        if self._free(1) < 1:
            self._drop(1)
            return False
        head = self._head
        offset = CONTROL_SIZE + (head & self._mask) * self._slot_size
        _RECORD_HEADER.pack_into(self._buf, offset, kind, length, room, t_ns)
        start = offset + RECORD_HEADER_SIZE
        self._buf[start : start + length] = data
        # Publish: the record is complete before the consumer can see the new head, which
        # is one aligned 8-byte store.
        self._head = head + 1
        self._control[HEAD_WORD] = self._head
        return True

    def push_many(
        self,
        kind: int,
        rooms: npt.NDArray[np.int64],
        t_ns: int | npt.NDArray[np.int64],
        payloads: npt.NDArray[Any],
    ) -> int:
        """Append one record per row of ``payloads`` in one batch; returns how many fit.

        ``rooms[i]`` and ``payloads[i]`` (its raw bytes) make record ``i``; ``t_ns`` is
        shared or per row. Rows past the free space are dropped and counted.
        """
        count = len(rooms)
        if len(payloads) != count:
            raise ValueError("rooms and payloads differ in length")
        if not 0 <= kind <= MAX_KIND:
            raise ValueError("record kind is out of range")
        data = np.ascontiguousarray(payloads).reshape(count, -1).view(np.uint8)
        length = data.shape[1]
        if length > self.payload_size:
            raise ValueError("record payload is larger than the ring's payload size")
        accepted = min(count, max(self._free(count), 0))
        if accepted < count:
            self._drop(count - accepted)
        if accepted == 0:
            return 0
        head = self._head
        slots = (head + np.arange(accepted, dtype=np.int64)) & self._mask
        self._kind[slots] = kind
        self._length[slots] = length
        self._room[slots] = rooms[:accepted]
        self._t_ns[slots] = t_ns if isinstance(t_ns, int) else t_ns[:accepted]
        self._payload[slots, :length] = data[:accepted]
        self._head = head + accepted
        self._control[HEAD_WORD] = self._head
        return accepted

    def close(self) -> None:
        """Unmap the ring from this process."""
        del self._control, self._kind, self._length, self._room, self._t_ns, self._payload
        del self._buf
        self._view.release()
        self._attachment.close()


class RingReader:
    """The consumer end of a ring."""

    def __init__(self, attachment: _Attachment) -> None:
        self._attachment = attachment
        self._view = _RingView(attachment.buf)
        self.capacity = self._view.capacity
        self.payload_size = self._view.payload_size
        self._tail = self._view.tail

    @classmethod
    def attach(cls, name: str) -> RingReader:
        return cls(_Attachment.open(name))

    @property
    def name(self) -> str:
        return self._attachment.name

    @property
    def pending(self) -> int:
        """Records waiting to be popped."""
        return self._view.head - self._tail

    @property
    def dropped(self) -> int:
        """Records the producer dropped because the ring was full."""
        return self._view.dropped

    def pop_many(self, max_records: int) -> list[Record]:
        """Take up to ``max_records`` records, oldest first; an empty list when none wait."""
        view = self._view
        tail = self._tail
        count = min(view.head - tail, max_records)
        if count <= 0:
            return []
        slots = (tail + np.arange(count, dtype=np.int64)) & view.mask
        kinds = view.kind[slots].tolist()
        lengths = view.length[slots].tolist()
        rooms = view.room[slots].tolist()
        stamps = view.t_ns[slots].tolist()
        payloads = view.payload[slots]
        records = [
            Record(kind, room, t_ns, payloads[i, :length].tobytes())
            for i, (kind, length, room, t_ns) in enumerate(
                zip(kinds, lengths, rooms, stamps, strict=True)
            )
        ]
        # Release the slots only once they are copied out.
        self._tail = tail + count
        view.control[TAIL_WORD] = self._tail
        return records

    def close(self) -> None:
        """Unmap the ring from this process."""
        self._view.release()
        self._attachment.close()
