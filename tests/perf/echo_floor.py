"""The kernel floor: a bare batched RTP echo, against which the mixer's cost is compared.

One process, one UDP port shared by every leg, :class:`bridge.mmsg.BatchSocket` underneath.
Every 20 ms it drains everything pending with ``recvmmsg``, latches each new source address
as a leg, and sends every leg one 172-byte PCMU packet (RFC 3550 header from a per-leg
template, 160 bytes of payload) with ``sendmmsg`` — what a mixer must do at the least, with
no jitter buffer, decoding or mixing. Its CPU per participant-second is the "kernel floor"
row of DESIGN.md's table.

All legs share one payload row, as the mixer's listeners share one room mix: the latest frame
of the first leg that reached the echo. A load generator whose first packet comes from a
talker therefore hears that talker's tone on every leg, which exercises its latency analysis.

Run as a script it also prints what :class:`~bridge.mmsg.BatchSocket` costs per packet::

    python tests/perf/echo_floor.py --legs 1000 --seconds 10 --echo-cpu 0 --load-cpu 1
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import statistics
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Final

import numpy as np
import numpy.typing as npt
import psutil
from rtpload import (
    FRAME_NS,
    PAYLOAD_TYPE_PCMU,
    RTP_HEADER_SIZE,
    SAMPLES_PER_FRAME,
    rtp_headers,
    stamp,
)

from bridge.mmsg import BatchSocket, rcvbuf_errors, set_receive_buffer

LOOPBACK: Final = "127.0.0.1"
#: Receive buffer of the shared port: 2,000 legs' tick is about 2,000 small datagrams.
ECHO_RCVBUF: Final = 32 * 1024 * 1024
#: Datagrams one drain may return: a late tick finds two ticks' worth of packets.
ECHO_CAPACITY: Final = 8192
#: A tick that starts this late counts as late.
LATE_TICK_NS: Final = FRAME_NS // 2
_NS_PER_S: Final = 1_000_000_000
_PORT_SHIFT: Final = 16
_STOP_SIGNAL: Final = signal.SIGTERM
_KILL_SIGNAL: Final = signal.SIGKILL


@dataclass
class EchoReport:
    """What the echo did between its start and :meth:`EchoProcess.stop`."""

    backend: str
    legs: int
    ticks: int
    late_ticks: int
    packets_in: int
    packets_out: int
    wall_s: float
    cpu_s: float
    #: Sum over ticks of the legs served, times 20 ms.
    participant_seconds: float
    #: Datagrams the kernel dropped on a full receive buffer while the echo ran (whole host).
    rcvbuf_errors: int | None

    @property
    def cpu_ms_per_participant_second(self) -> float:
        if self.participant_seconds == 0:
            return 0.0
        return 1000 * self.cpu_s / self.participant_seconds


class EchoProcess:
    """A running echo: its PID, its port, its CPU time; :meth:`stop` ends it by PID."""

    def __init__(
        self,
        process: multiprocessing.process.BaseProcess,
        connection: multiprocessing.connection.Connection,
        port: int,
    ) -> None:
        self.process = process
        self.port = port
        self._connection = connection
        pid = process.pid
        assert pid is not None
        self.pid = pid
        self._psutil = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU the echo has used so far."""
        times = self._psutil.cpu_times()
        return float(times.user + times.system)

    def stop(self, timeout: float = 10.0) -> EchoReport | None:
        """SIGTERM by PID, then the echo's report (None if it had to be killed)."""
        report: EchoReport | None = None
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, _STOP_SIGNAL)
            if self._connection.poll(timeout):
                with contextlib.suppress(EOFError):
                    message = self._connection.recv()
                    if isinstance(message, EchoReport):
                        report = message
        self.process.join(timeout=timeout)
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, _KILL_SIGNAL)
            self.process.join(timeout=timeout)
        self._connection.close()
        return report


def start_echo(port: int, cpu: int | None = None, *, backend: str = "auto") -> EchoProcess:
    """Start the echo on ``127.0.0.1:port`` (0: any free port) in a spawned process.

    Returns once the port is bound; ``EchoProcess.port`` is the port in use.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_echo_main, args=(port, cpu, backend, sender), name="echo-floor", daemon=True
    )
    process.start()
    sender.close()
    if not receiver.poll(30.0):
        process.kill()
        raise RuntimeError("echo did not start in time")
    message = receiver.recv()
    if not isinstance(message, int):
        process.join(timeout=10.0)
        raise RuntimeError(f"echo did not start: {message}")
    return EchoProcess(process, receiver, message)


# --- the child process -----------------------------------------------------------------------


class _Echo:
    def __init__(self, sock: socket.socket, backend: str) -> None:
        self.io = BatchSocket(sock, capacity=ECHO_CAPACITY, timestamps=False, backend=backend)
        self.keys = np.zeros(0, dtype=np.int64)  # latched sources, in arrival order
        self.sorted_keys = np.zeros(0, dtype=np.int64)
        self.ips = np.zeros(0, dtype=np.uint32)
        self.ports = np.zeros(0, dtype=np.uint16)
        self.headers = rtp_headers(0, PAYLOAD_TYPE_PCMU, np.zeros(0, dtype=np.uint32))
        self.seq0 = np.zeros(0, dtype=np.uint16)
        self.ts0 = np.zeros(0, dtype=np.uint32)
        self.payload = np.full((1, SAMPLES_PER_FRAME), 0xFF, dtype=np.uint8)  # µ-law zero
        self.rng = np.random.default_rng()
        self.packets_in = 0
        self.packets_out = 0

    def tick(self, tick: int) -> int:
        """Drain, latch, send one packet per leg; returns the number of legs served."""
        batch = self.io.recv()
        if batch.count:
            self.packets_in += batch.count
            keys = (batch.src_ip.astype(np.int64) << _PORT_SHIFT) | batch.src_port
            position = np.searchsorted(self.sorted_keys, keys)
            known = position < len(self.sorted_keys)
            known[known] = self.sorted_keys[position[known]] == keys[known]
            if not known.all():
                self._latch(keys[~known])
            # The shared payload: the newest frame of the first leg that reached us.
            first = np.flatnonzero(keys == self.keys[0])
            if len(first):
                last = int(first[-1])
                end = RTP_HEADER_SIZE + SAMPLES_PER_FRAME
                if batch.length[last] >= end:
                    self.payload[0] = batch.data[last, RTP_HEADER_SIZE:end]
        legs = len(self.keys)
        if legs:
            stamp(self.headers, self.seq0, self.ts0, tick)
            header = self.headers.view(np.uint8).reshape(legs, RTP_HEADER_SIZE)
            rows = np.zeros(legs, dtype=np.intp)
            self.packets_out += self.io.send(
                header, self.payload, rows, SAMPLES_PER_FRAME, self.ips, self.ports
            )
        return legs

    def _latch(self, keys: npt.NDArray[np.int64]) -> None:
        """New sources become legs, in the order they arrived (a rare, slow path)."""
        unique, first_seen = np.unique(keys, return_index=True)
        new = unique[np.argsort(first_seen)]
        count = len(new)
        self.keys = np.concatenate([self.keys, new])
        self.ips = np.concatenate([self.ips, (new >> _PORT_SHIFT).astype(np.uint32)])
        self.ports = np.concatenate([self.ports, (new & 0xFFFF).astype(np.uint16)])
        ssrc = self.rng.integers(1, 1 << 32, count, dtype=np.uint64).astype(np.uint32)
        self.headers = np.concatenate([self.headers, rtp_headers(count, PAYLOAD_TYPE_PCMU, ssrc)])
        self.seq0 = np.concatenate(
            [self.seq0, self.rng.integers(0, 1 << 16, count, dtype=np.uint64).astype(np.uint16)]
        )
        self.ts0 = np.concatenate(
            [self.ts0, self.rng.integers(0, 1 << 32, count, dtype=np.uint64).astype(np.uint32)]
        )
        order = np.argsort(self.keys)
        self.sorted_keys = self.keys[order]


def _echo_main(
    port: int, cpu: int | None, backend: str, connection: multiprocessing.connection.Connection
) -> None:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(_STOP_SIGNAL, stop)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_receive_buffer(sock, ECHO_RCVBUF)
        sock.bind((LOOPBACK, port))
        echo = _Echo(sock, backend)
    except Exception:
        connection.send(traceback.format_exc())
        return
    connection.send(sock.getsockname()[1])

    errors_start = rcvbuf_errors()
    cpu_start = time.process_time()
    start = time.monotonic_ns()
    tick = 0
    late = 0
    participant_ticks = 0
    while not stopping:
        due = start + tick * FRAME_NS
        now = time.monotonic_ns()
        if now < due:
            time.sleep((due - now) / _NS_PER_S)
            continue
        if now - due > LATE_TICK_NS:
            late += 1
        participant_ticks += echo.tick(tick)
        tick += 1
    errors_end = rcvbuf_errors()
    report = EchoReport(
        backend=echo.io.backend,
        legs=len(echo.keys),
        ticks=tick,
        late_ticks=late,
        packets_in=echo.packets_in,
        packets_out=echo.packets_out,
        wall_s=(time.monotonic_ns() - start) / _NS_PER_S,
        cpu_s=time.process_time() - cpu_start,
        participant_seconds=participant_ticks * FRAME_NS / _NS_PER_S,
        rcvbuf_errors=(
            errors_end - errors_start
            if errors_start is not None and errors_end is not None
            else None
        ),
    )
    sock.close()
    connection.send(report)


# --- measurement script ----------------------------------------------------------------------


def measure_batch_socket(
    backend: str, packets: int = 1000, repeats: int = 200
) -> tuple[float, float]:
    """Median µs per packet of ``recv()`` and ``send()`` with ``packets`` 172-byte datagrams."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        set_receive_buffer(receiver, ECHO_RCVBUF)
        receiver.bind((LOOPBACK, 0))
        sender.bind((LOOPBACK, 0))
        rx = BatchSocket(receiver, backend=backend)
        tx = BatchSocket(sender, backend=backend)
        header = np.zeros((packets, RTP_HEADER_SIZE), dtype=np.uint8)
        payload = np.full((1, SAMPLES_PER_FRAME), 0xFF, dtype=np.uint8)
        rows = np.zeros(packets, dtype=np.intp)
        ips = np.full(packets, int.from_bytes(socket.inet_aton(LOOPBACK), "big"), np.uint32)
        ports = np.full(packets, receiver.getsockname()[1], dtype=np.uint16)
        recv_us: list[float] = []
        send_us: list[float] = []
        for _ in range(repeats):
            began = time.perf_counter_ns()
            sent = tx.send(header, payload, rows, SAMPLES_PER_FRAME, ips, ports)
            between = time.perf_counter_ns()
            batch = rx.recv()
            ended = time.perf_counter_ns()
            if sent != packets or batch.count != packets:
                raise RuntimeError(f"sent {sent}, received {batch.count} of {packets}")
            send_us.append((between - began) / packets / 1000)
            recv_us.append((ended - between) / packets / 1000)
        return statistics.median(recv_us), statistics.median(send_us)


def main() -> None:
    from loadgen import Leg, run_load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, default=1000)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--echo-cpu", type=int, default=None)
    parser.add_argument("--load-cpu", type=int, default=None)
    parser.add_argument("--backend", default="auto")
    arguments = parser.parse_args()

    for backend in ("mmsg", "fallback"):
        recv_us, send_us = measure_batch_socket(backend)
        print(
            f"BatchSocket {backend:8s}: recv {recv_us:.2f} µs/packet, "
            f"send {send_us:.2f} µs/packet (1,000 × 172 B on loopback, median of 200)"
        )

    echo = start_echo(0, arguments.echo_cpu, backend=arguments.backend)
    try:
        legs = [
            Leg(
                0,
                (LOOPBACK, echo.port),
                index % arguments.room_size == 0,
                index // arguments.room_size,
            )
            for index in range(arguments.legs)
        ]
        cpu_before = echo.cpu_seconds()
        load = run_load(legs, arguments.seconds, arguments.load_cpu)
        cpu_during = echo.cpu_seconds() - cpu_before
    finally:
        report = echo.stop()
    floor_ms = 1000 * cpu_during / (arguments.legs * load.wall_s)
    print(
        f"echo floor ({report.backend if report else '?'}), {arguments.legs} legs, "
        f"{load.wall_s:.1f} s: {floor_ms:.3f} ms CPU per participant-second "
        f"({100 * cpu_during / load.wall_s:.0f} % of a core); "
        f"late ticks {report.late_ticks if report else '?'}, "
        f"rcvbuf errors {report.rcvbuf_errors if report else '?'}"
    )
    print(
        f"load generator: {load.cpu_fraction:.0%} of a core, fell behind: {load.fell_behind} "
        f"(late ticks {load.late_ticks}, max lag {load.max_lag_ms:.1f} ms), "
        f"sent {load.sent}, received {load.received} ({load.received_share:.1%} of ticks), "
        f"e2e latency p50/p99 {load.e2e_latency_ms_p50}/{load.e2e_latency_ms_p99} ms "
        f"({load.latency_samples} samples)"
    )


if __name__ == "__main__":
    main()
