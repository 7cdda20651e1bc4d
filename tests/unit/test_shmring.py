from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from bridge.shmring import Record, RingReader, RingWriter, SharedRing

FRAME = 0


@pytest.fixture
def ring() -> Iterator[SharedRing]:
    ring = SharedRing.create(capacity=8, payload_size=64)
    yield ring
    ring.close()
    ring.unlink()


@pytest.fixture
def ends(ring: SharedRing) -> Iterator[tuple[RingWriter, RingReader]]:
    writer = RingWriter.attach(ring.name)
    reader = RingReader.attach(ring.name)
    yield writer, reader
    writer.close()
    reader.close()


def test_round_trip_of_bytes_and_arrays(ends: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ends
    samples = np.array([1, -2, 32767, -32768], dtype=np.int16)
    assert writer.push(3, 42, 1_700_000_000_123_456_789, b"hello")
    assert writer.push(FRAME, -1, 5, samples)
    assert writer.push(FRAME, 7, 6, b"")

    records = reader.pop_many(10)

    assert records == [
        Record(3, 42, 1_700_000_000_123_456_789, b"hello"),
        Record(FRAME, -1, 5, samples.tobytes()),
        Record(FRAME, 7, 6, b""),
    ]
    assert np.array_equal(np.frombuffer(records[1].payload, np.int16), samples)
    assert reader.pop_many(10) == []


def test_non_contiguous_array_is_stored_as_its_values(
    ends: tuple[RingWriter, RingReader],
) -> None:
    writer, reader = ends
    matrix = np.arange(12, dtype=np.int16).reshape(3, 4)
    column = matrix[:, 1]
    assert not column.flags.c_contiguous

    assert writer.push(FRAME, 1, 1, column)

    (record,) = reader.pop_many(1)
    assert np.array_equal(np.frombuffer(record.payload, np.int16), [1, 5, 9])


def test_wrap_around_keeps_order_and_content(ends: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ends
    sequence = 0
    for _ in range(7):  # 7 rounds of 5 records through 8 slots: every slot is reused
        for _ in range(5):
            assert writer.push(FRAME, sequence, sequence * 10, sequence.to_bytes(4, "little"))
            sequence += 1
        records = reader.pop_many(3) + reader.pop_many(100)
        assert [r.room for r in records] == list(range(sequence - 5, sequence))
        assert [int.from_bytes(r.payload, "little") for r in records] == [r.room for r in records]
        assert [r.t_ns for r in records] == [r.room * 10 for r in records]
    assert writer.dropped == 0


def test_full_ring_drops_and_counts(ring: SharedRing, ends: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ends
    for i in range(8):
        assert writer.push(FRAME, i, i, b"x")
    assert writer.pending == 8 and reader.pending == 8 and ring.pending == 8

    assert writer.push(FRAME, 8, 8, b"x") is False
    assert writer.push(FRAME, 9, 9, b"x") is False

    assert writer.dropped == 2
    assert reader.dropped == 2  # mirrored into the shared block
    assert ring.dropped == 2
    assert [r.room for r in reader.pop_many(1)] == [0]
    assert writer.push(FRAME, 10, 10, b"x")  # room again once the consumer moved on
    assert [r.room for r in reader.pop_many(100)] == [1, 2, 3, 4, 5, 6, 7, 10]
    assert writer.dropped == 2


def test_push_many_fills_the_free_slots_and_drops_the_rest(
    ring: SharedRing, ends: tuple[RingWriter, RingReader]
) -> None:
    writer, reader = ends
    assert writer.push(FRAME, 99, 0, b"first")
    frames = np.arange(10 * 4, dtype=np.int16).reshape(10, 4)
    rooms = np.arange(100, 110, dtype=np.int64)

    accepted = writer.push_many(FRAME, rooms, 1234, frames)

    assert accepted == 7
    assert writer.dropped == 3 and ring.dropped == 3
    records = reader.pop_many(100)
    assert [r.room for r in records] == [99, *range(100, 107)]
    assert all(r.t_ns == 1234 for r in records[1:])
    for row, record in enumerate(records[1:]):
        assert np.array_equal(np.frombuffer(record.payload, np.int16), frames[row])


def test_push_many_takes_per_row_timestamps(ends: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ends
    stamps = np.array([5, 6, 7], dtype=np.int64)

    writer.push_many(FRAME, np.array([1, 2, 3], dtype=np.int64), stamps, np.zeros((3, 2), np.int16))

    assert [r.t_ns for r in reader.pop_many(10)] == [5, 6, 7]


def test_errors(ring: SharedRing, ends: tuple[RingWriter, RingReader]) -> None:
    writer, _ = ends
    with pytest.raises(
        ValueError, match=r"^record payload is larger than the ring's payload size$"
    ):
        writer.push(FRAME, 1, 1, bytes(65))
    with pytest.raises(ValueError, match=r"^record kind is out of range$"):
        writer.push(-1, 1, 1, b"")
    with pytest.raises(ValueError, match=r"^rooms and payloads differ in length$"):
        writer.push_many(FRAME, np.zeros(2, np.int64), 0, np.zeros((3, 2), np.int16))
    with pytest.raises(ValueError, match=r"^ring capacity must be a power of two$"):
        SharedRing.create(capacity=6)
    with pytest.raises(ValueError, match=r"^ring payload size must be positive$"):
        SharedRing.create(capacity=4, payload_size=0)
    assert writer.dropped == 0 and ring.pending == 0


def test_attach_rejects_a_block_that_is_not_a_ring() -> None:
    block = SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match=r"^shared memory block is not a ring$"):
            RingReader.attach(block.name)
    finally:
        block.close()
        block.unlink()


def test_a_new_writer_resumes_after_the_last_one(ring: SharedRing) -> None:
    reader = RingReader.attach(ring.name)
    first = RingWriter.attach(ring.name)
    for i in range(6):
        first.push(FRAME, i, i, b"")
    first.close()
    assert [r.room for r in reader.pop_many(4)] == [0, 1, 2, 3]

    second = RingWriter.attach(ring.name)
    for i in range(6, 12):
        assert second.push(FRAME, i, i, b"")
    assert not second.push(FRAME, 12, 12, b"")  # 2 left + 6 new fill the 8 slots

    assert [r.room for r in reader.pop_many(100)] == list(range(4, 12))
    assert second.dropped == 1
    second.close()
    reader.close()


PRODUCER = """
import sys
import numpy as np
from bridge.shmring import RingWriter

writer = RingWriter.attach(sys.argv[1])
count = int(sys.argv[2])
frame = np.empty(160, dtype=np.int16)
full = 0
for sequence in range(count):
    frame[:] = sequence % 30000
    while not writer.push(0, sequence, sequence, frame):
        full += 1  # the test's consumer is slower: wait for it, unlike a media worker
print(full)
writer.close()
"""


def test_two_processes_transfer_every_record_in_order() -> None:
    count = 20_000
    ring = SharedRing.create(capacity=64, payload_size=320)
    reader = RingReader.attach(ring.name)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, ring.name, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received: list[Record] = []
        deadline = time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            received += reader.pop_many(32)
        stdout, stderr = producer.communicate(timeout=30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()

    assert producer.returncode == 0, stderr
    assert [r.room for r in received] == list(range(count))
    assert [r.t_ns for r in received] == list(range(count))
    for record in received[:: count // 50]:
        assert np.all(np.frombuffer(record.payload, np.int16) == record.room % 30000)
    # The ring wrapped hundreds of times, and the producer had to wait for room.
    assert int(stdout) > 0
    assert reader.pending == 0
    # The producer exited without unlinking the block it only attached to.
    assert "leaked" not in stderr
    again = RingWriter.attach(ring.name)
    assert again.push(0, 1, 1, b"still here")
    assert reader.pop_many(1)[0].payload == b"still here"
    again.close()
    reader.close()
    ring.close()
    ring.unlink()
