"""Room recording: a process of its own that writes each room's mix to FLAC or WAV.

DESIGN.md, "Processes": the recorder process takes mixed frames from the media workers
through a bounded channel and writes the files, so that disk I/O never touches a tick.
The channel is one :mod:`bridge.shmring` ring per media worker; a worker pushes
:class:`RecordKind` records into it and never waits for the recorder.

Records, keyed by (ring, room id):

- ``FRAME``: the room's mix for one tick, int16 mono little-endian at the room rate;
  ``t_ns`` is the wall-clock (``time.time_ns()``) time of its first sample.
- ``START``: a :class:`RecordingStart` (the room's name); opens
  ``<out_dir>/<room name>/<room name>-<UTC yyyymmddThhmmssZ>.flac`` (or ``.wav``).
- ``STOP``: closes the room's recording.
- ``BURST_START`` / ``BURST_END``: a :class:`BurstInfo`: one talk burst of a participant
  (3GPP TS 24.380: from Floor Granted to the holder's release or revocation) with its
  alias and call type (TS 24.379: normal, imminent peril, emergency). At the burst's end
  one JSON line is appended to the recording's ``<recording>.bursts.jsonl`` index; a
  burst still open at STOP is closed.

File time is wall time: where a room sends no frames (an idle ``ptt`` room sends nothing)
or frames were lost, the gap is filled with silence, so that an offset into the file is
an offset from the recording's start.

Crash safety. libsndfile 1.2 writes samples straight to the file descriptor, but the
header is only finished at ``sf_close``:

- WAV: the RIFF and ``data`` chunk sizes stay at their placeholders (RIFF size 8 or the
  header's, data size 0). libsndfile's own reader then falls back to the file length, but
  stricter readers (Python's ``wave``) reject the file. Every ``header_interval_s`` we ask
  libsndfile to rewrite the header in place (``SFC_UPDATE_HEADER_NOW``).
- FLAC: STREAMINFO's total-sample count stays 0, "unknown" (RFC 9639 section 8.2).
  libsndfile then reports 2**63 - 1 frames and ``soundfile.read`` fails. libFLAC encodes
  a block once block size + 1 samples are queued, so after ``n`` samples the file holds
  ``(n - 1) // block_size * block_size`` samples in whole frames. Every
  ``header_interval_s`` we patch that count into STREAMINFO through our own descriptor;
  ``sf_close`` rewrites the block with the final count and MD5.

So a SIGKILL of the recorder leaves a file that soundfile reads, missing at most
``header_interval_s`` + one FLAC block (256 ms at 16 kHz) + one poll of audio. Every
``fsync_interval_s`` the file is also flushed to disk, for a crash of the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from .shmring import DEFAULT_CAPACITY, DEFAULT_PAYLOAD_SIZE, Record, RingReader, SharedRing

__all__ = [
    "BurstInfo",
    "RecordKind",
    "Recorder",
    "RecorderConfig",
    "RecorderProcess",
    "RecordingFormat",
    "RecordingInfo",
    "RecordingStart",
    "list_recordings",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
DEFAULT_SAMPLE_RATE = 16000
SAMPLE_DTYPE = np.dtype("<i2")
SUBTYPE = "PCM_16"

#: Records taken off one ring per read.
POP_BATCH = 256
#: An idle room's file is extended with silence in steps of at least this much.
IDLE_FILL_QUANTUM_S = 0.02
#: Frames this far behind the file's end mean the wall clock stepped back.
CLOCK_STEP_BACK_S = 1.0
#: Names tried for one room and second before giving up.
MAX_NAME_ATTEMPTS = 100
MAX_NAME_LENGTH = 100

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP_PATTERN = re.compile(r"-(\d{8}T\d{6}Z)(?:-\d+)?$")
UNSAFE_NAME_CHARS = re.compile(r"[^\w.-]")
SIDECAR_SUFFIX = ".bursts.jsonl"

# libsndfile (sndfile.h): rewrite the header of a file open for writing.
SFC_UPDATE_HEADER_NOW = 0x1060
# libsndfile reports this frame count when a FLAC stream's total is unknown.
SF_COUNT_MAX = 2**63 - 1

# FLAC (RFC 9639 section 8): "fLaC", a 4-byte metadata block header, then STREAMINFO.
FLAC_MARKER = b"fLaC"
FLAC_BLOCK_SIZE_OFFSET = 8  # STREAMINFO minimum block size, u16
FLAC_BLOCK_SIZE_BYTES = 2
FLAC_TOTAL_WORD_OFFSET = 18  # u64: sample rate 20, channels 3, bits 5, total samples 36
FLAC_TOTAL_WORD_BYTES = 8
FLAC_TOTAL_SAMPLES_MASK = (1 << 36) - 1


class RecordKind(IntEnum):
    """The ``kind`` of a ring record bound for the recorder."""

    FRAME = 0
    START = 1
    STOP = 2
    BURST_START = 3
    BURST_END = 4


class RecordingFormat(StrEnum):
    FLAC = "flac"
    WAV = "wav"

    @property
    def major(self) -> str:
        """libsndfile's name of the container."""
        return self.value.upper()

    @property
    def suffix(self) -> str:
        return "." + self.value


def _parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{what} payload is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} payload is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class RecordingStart:
    """Payload of a START record: the name of the room to record."""

    room_name: str

    def __bytes__(self) -> bytes:
        return json.dumps({"room_name": self.room_name}).encode()

    @classmethod
    def parse(cls, data: bytes) -> RecordingStart:
        value = _parse_json_object(data, "START")
        room_name = value.get("room_name")
        if not isinstance(room_name, str) or not room_name:
            raise ValueError("START payload has no room name")
        return cls(room_name=room_name)


@dataclass(frozen=True, slots=True)
class BurstInfo:
    """Payload of a BURST_START or BURST_END record: one participant's talk burst."""

    participant: str
    alias: str = ""
    call_type: str = "normal"

    def __bytes__(self) -> bytes:
        return json.dumps(
            {"participant": self.participant, "alias": self.alias, "call_type": self.call_type}
        ).encode()

    @classmethod
    def parse(cls, data: bytes) -> BurstInfo:
        value = _parse_json_object(data, "burst")
        participant = value.get("participant")
        if not isinstance(participant, str | int) or isinstance(participant, bool):
            raise ValueError("burst payload has no participant")
        return cls(
            participant=str(participant),
            alias=str(value.get("alias") or ""),
            call_type=str(value.get("call_type") or "normal"),
        )


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    out_dir: Path
    format: RecordingFormat = RecordingFormat.FLAC
    sample_rate: int = DEFAULT_SAMPLE_RATE
    #: How often the process drains its rings.
    poll_interval_s: float = 0.025
    #: How often an open file's header is brought up to date (survives a killed recorder).
    header_interval_s: float = 0.5
    #: How often an open file is flushed to disk (survives a crash of the host).
    fsync_interval_s: float = 5.0
    #: An idle room's silence is written up to this long before now, so that frames
    #: still in the ring land after it.
    silence_lag_s: float = 0.5
    #: A longer gap is taken for a step of the wall clock, not filled.
    max_gap_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """A recording on disk, as listed for the REST API."""

    room: str
    name: str
    path: Path
    size: int
    #: None while the file holds no complete, counted audio yet.
    duration_s: float | None
    started: datetime | None
    has_bursts: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "duration_s": self.duration_s,
            "started": self.started.isoformat() if self.started else None,
            "has_bursts": self.has_bursts,
        }


def _iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / NS_PER_S, tz=UTC).isoformat(timespec="milliseconds")


def _path_component(name: str) -> str:
    """A room name made safe as one path component."""
    safe = UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")[:MAX_NAME_LENGTH]
    if not safe:
        raise ValueError("room name is empty")
    return safe


def sidecar_path(recording: Path) -> Path:
    """The talk-burst index next to a recording."""
    return recording.with_suffix(SIDECAR_SUFFIX)


def _create_exclusive(directory: Path, stem: str, suffix: str) -> tuple[Path, int]:
    for attempt in range(MAX_NAME_ATTEMPTS):
        name = stem if attempt == 0 else f"{stem}-{attempt + 1}"
        path = directory / (name + suffix)
        try:
            return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free recording name for {stem}")


@dataclass(slots=True)
class _OpenBurst:
    info: BurstInfo
    start_ns: int


@dataclass(slots=True)
class _Recording:
    """One room's open file, its header upkeep and its talk-burst index."""

    path: Path
    origin_ns: int
    config: RecorderConfig
    fd: int
    sound: Any  # soundfile.SoundFile
    written: int = 0
    bursts: dict[str, _OpenBurst] = field(default_factory=dict)
    sidecar: IO[str] | None = None
    next_header_ns: int = 0
    next_fsync_ns: int = 0
    header_samples: int = 0
    flac_block_size: int = 0

    @classmethod
    def open(cls, start: RecordingStart, t_ns: int, config: RecorderConfig) -> _Recording:
        room_dir = Path(config.out_dir) / _path_component(start.room_name)
        room_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(t_ns / NS_PER_S, tz=UTC).strftime(STAMP_FORMAT)
        stem = f"{_path_component(start.room_name)}-{stamp}"
        path, fd = _create_exclusive(room_dir, stem, config.format.suffix)
        try:
            sound = sf.SoundFile(
                fd,
                "w",
                samplerate=config.sample_rate,
                channels=1,
                format=config.format.major,
                subtype=SUBTYPE,
                closefd=False,
            )
            # Written into the header (FLAC Vorbis comment, WAV LIST/INFO) on first write.
            sound.title = start.room_name
            sound.date = _iso(t_ns)
        except BaseException:
            os.close(fd)
            path.unlink()
            raise
        header_ns = int(config.header_interval_s * NS_PER_S)
        fsync_ns = int(config.fsync_interval_s * NS_PER_S)
        return cls(
            path=path,
            origin_ns=t_ns,
            config=config,
            fd=fd,
            sound=sound,
            next_header_ns=t_ns + header_ns,
            next_fsync_ns=t_ns + fsync_ns,
        )

    # ------------------------------------------------------------------ audio
    def position(self, t_ns: int) -> int:
        """The sample index of wall-clock time ``t_ns`` in this file."""
        return (t_ns - self.origin_ns) * self.config.sample_rate // NS_PER_S

    def advance_to(self, target: int, min_gap: int) -> None:
        """Write silence up to sample ``target`` when it is at least ``min_gap`` ahead."""
        gap = target - self.written
        if gap > self.config.max_gap_s * self.config.sample_rate:
            self._rebase(gap)
            return
        while gap >= min_gap and gap > 0:
            chunk = min(gap, self.config.sample_rate)
            self._write(np.zeros(chunk, dtype=SAMPLE_DTYPE))
            gap -= chunk
            min_gap = 1

    def write_frame(self, t_ns: int, samples: npt.NDArray[np.int16]) -> None:
        position = self.position(t_ns)
        if position < self.written - CLOCK_STEP_BACK_S * self.config.sample_rate:
            self._rebase(position - self.written)
        # Less than a frame of difference is tick jitter, not a lost frame.
        self.advance_to(position, min_gap=len(samples))
        self._write(samples)

    def _rebase(self, gap: int) -> None:
        """Take a jump of ``gap`` samples for a step of the wall clock: move the origin."""
        logger.warning(
            "%s: a jump of %.1f s is taken for a step of the wall clock, not filled",
            self.path.name,
            gap / self.config.sample_rate,
        )
        self.origin_ns += gap * NS_PER_S // self.config.sample_rate

    def _write(self, samples: npt.NDArray[np.int16]) -> None:
        self.sound.write(samples)
        self.written += len(samples)

    # ----------------------------------------------------------------- bursts
    def burst_start(self, info: BurstInfo, t_ns: int) -> None:
        previous = self.bursts.get(info.participant)
        if previous is not None:
            logger.warning(
                "%s: burst of %s started twice; closing the first",
                self.path.name,
                info.participant,
            )
            self._append_burst(previous, t_ns)
        self.bursts[info.participant] = _OpenBurst(info, t_ns)

    def burst_end(self, info: BurstInfo, t_ns: int) -> None:
        burst = self.bursts.pop(info.participant, None)
        if burst is None:
            logger.warning(
                "%s: end of a burst of %s that never started", self.path.name, info.participant
            )
            return
        self._append_burst(burst, t_ns)

    def _append_burst(self, burst: _OpenBurst, end_ns: int) -> None:
        if self.sidecar is None:
            self.sidecar = sidecar_path(self.path).open("a", encoding="utf-8")
        line = {
            "participant": burst.info.participant,
            "alias": burst.info.alias,
            "call_type": burst.info.call_type,
            "start": _iso(burst.start_ns),
            "end": _iso(end_ns),
            "start_offset_s": round((burst.start_ns - self.origin_ns) / NS_PER_S, 3),
            "end_offset_s": round((end_ns - self.origin_ns) / NS_PER_S, 3),
        }
        self.sidecar.write(json.dumps(line) + "\n")
        self.sidecar.flush()

    # ----------------------------------------------------------------- upkeep
    def sync(self, now_ns: int) -> None:
        """Bring the header up to date and flush to disk when they are due."""
        if now_ns >= self.next_header_ns:
            self.update_header()
            self.next_header_ns = now_ns + int(self.config.header_interval_s * NS_PER_S)
        if now_ns >= self.next_fsync_ns:
            self.sound.flush()  # sf_write_sync: fsync of the audio file
            if self.sidecar is not None:
                os.fsync(self.sidecar.fileno())
            self.next_fsync_ns = now_ns + int(self.config.fsync_interval_s * NS_PER_S)

    def update_header(self) -> None:
        """Make the header count the audio already in the file (see the module notes)."""
        if self.config.format is RecordingFormat.WAV:
            if self.header_samples != self.written:
                sf._snd.sf_command(self.sound._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)
                self.header_samples = self.written
            return
        if self.written == 0:
            return  # libsndfile writes the FLAC header with the first samples
        if self.flac_block_size == 0:
            if os.pread(self.fd, len(FLAC_MARKER), 0) != FLAC_MARKER:
                return
            raw = os.pread(self.fd, FLAC_BLOCK_SIZE_BYTES, FLAC_BLOCK_SIZE_OFFSET)
            self.flac_block_size = int.from_bytes(raw, "big")
        block = self.flac_block_size
        encoded = (self.written - 1) // block * block
        if encoded <= self.header_samples:
            return
        raw = os.pread(self.fd, FLAC_TOTAL_WORD_BYTES, FLAC_TOTAL_WORD_OFFSET)
        word = int.from_bytes(raw, "big") & ~FLAC_TOTAL_SAMPLES_MASK | encoded
        os.pwrite(self.fd, word.to_bytes(FLAC_TOTAL_WORD_BYTES, "big"), FLAC_TOTAL_WORD_OFFSET)
        self.header_samples = encoded

    def close(self, end_ns: int) -> None:
        """Fill to ``end_ns``, close open bursts there and finish the file."""
        try:
            self.advance_to(self.position(end_ns), min_gap=1)
            for burst in list(self.bursts.values()):
                self._append_burst(burst, end_ns)
            self.bursts.clear()
        finally:
            try:
                self.sound.close()
            finally:
                os.close(self.fd)
                if self.sidecar is not None:
                    self.sidecar.close()


def _frame_samples(payload: bytes) -> npt.NDArray[np.int16]:
    if len(payload) % SAMPLE_DTYPE.itemsize:
        raise ValueError("frame payload has an odd number of bytes")
    return np.frombuffer(payload, dtype=SAMPLE_DTYPE)


class Recorder:
    """Writes the recordings described by a stream of ring records.

    This is the recorder process's engine, usable in-process: :meth:`handle` takes the
    records of one ring, :meth:`poll` fills idle rooms with silence and keeps headers up
    to date, :meth:`close` finishes every file. A failure in one room is logged and ends
    that room's recording only; a record with a bad payload is logged and skipped.
    """

    def __init__(self, config: RecorderConfig, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self._clock = clock
        self._recordings: dict[tuple[int, int], _Recording] = {}
        self._idle_quantum = max(1, int(IDLE_FILL_QUANTUM_S * config.sample_rate))
        #: Frames of rooms with no open recording (e.g. after a recorder restart).
        self.orphan_frames = 0
        self.errors = 0

    @property
    def active(self) -> dict[tuple[int, int], Path]:
        """Open recordings by (ring, room)."""
        return {key: rec.path for key, rec in self._recordings.items()}

    def handle(self, source: int, records: Iterable[Record]) -> None:
        """Apply the records of ring ``source``, oldest first."""
        for record in records:
            key = (source, record.room)
            try:
                self._apply(key, record)
            except ValueError as exc:
                self.errors += 1
                logger.warning("ring %d room %d: bad record %d: %s", *key, record.kind, exc)
            except Exception:
                self.errors += 1
                logger.exception("ring %d room %d: recording failed", *key)
                self._abandon(key)

    def _apply(self, key: tuple[int, int], record: Record) -> None:
        kind = record.kind
        if kind == RecordKind.FRAME:
            recording = self._recordings.get(key)
            if recording is None:
                self.orphan_frames += 1
                return
            recording.write_frame(record.t_ns, _frame_samples(record.payload))
        elif kind == RecordKind.START:
            start = RecordingStart.parse(record.payload)
            if key in self._recordings:
                logger.warning("ring %d room %d: START while recording; restarting", *key)
                self._finish(key, record.t_ns)
            self._recordings[key] = _Recording.open(start, record.t_ns, self.config)
            logger.info("ring %d room %d: recording to %s", *key, self._recordings[key].path)
        elif kind == RecordKind.STOP:
            self._finish(key, record.t_ns)
        elif kind in (RecordKind.BURST_START, RecordKind.BURST_END):
            info = BurstInfo.parse(record.payload)
            recording = self._recordings.get(key)
            if recording is None:
                return
            if kind == RecordKind.BURST_START:
                recording.burst_start(info, record.t_ns)
            else:
                recording.burst_end(info, record.t_ns)
        else:
            raise ValueError("unknown record kind")

    def poll(self) -> None:
        """Fill idle rooms with silence up to now, less the lag; update headers when due."""
        now = self._clock()
        lag_ns = int(self.config.silence_lag_s * NS_PER_S)
        for key, recording in list(self._recordings.items()):
            try:
                recording.advance_to(recording.position(now - lag_ns), self._idle_quantum)
                recording.sync(now)
            except Exception:
                self.errors += 1
                logger.exception("ring %d room %d: recording failed", *key)
                self._abandon(key)

    def _finish(self, key: tuple[int, int], end_ns: int) -> None:
        recording = self._recordings.pop(key, None)
        if recording is not None:
            recording.close(end_ns)
            logger.info("ring %d room %d: recording %s closed", *key, recording.path)

    def _abandon(self, key: tuple[int, int]) -> None:
        recording = self._recordings.pop(key, None)
        if recording is None:
            return
        try:
            recording.close(self._clock())
        except Exception:
            logger.exception("ring %d room %d: closing %s failed", *key, recording.path)

    def close(self) -> None:
        """Finish every open recording at the current time."""
        now = self._clock()
        for key in list(self._recordings):
            try:
                self._finish(key, now)
            except Exception:
                self.errors += 1
                logger.exception("ring %d room %d: closing failed", *key)


# ---------------------------------------------------------------------- process
def _drain(readers: Sequence[RingReader], recorder: Recorder) -> None:
    for source, reader in enumerate(readers):
        while True:
            records = reader.pop_many(POP_BATCH)
            if records:
                recorder.handle(source, records)
            if len(records) < POP_BATCH:
                break


def _serve(
    ring_names: Sequence[str],
    config: RecorderConfig,
    stop: Connection,
    log_level: int,
) -> None:
    """The recorder process: drain the rings until stopped, then finish every file.

    It stops on a message or end of file on ``stop`` (the parent asked, or the parent is
    gone) and on SIGTERM or SIGINT. A pipe rather than a ``multiprocessing.Event``: the
    parent's ``Event.set()`` hangs forever if this process is killed while waiting on it.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=log_level, format="%(asctime)s recorder %(levelname)s %(name)s: %(message)s"
        )
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    readers = [RingReader.attach(name) for name in ring_names]
    recorder = Recorder(config)
    dropped = [reader.dropped for reader in readers]
    try:
        while not stopping:
            _drain(readers, recorder)
            recorder.poll()
            for source, reader in enumerate(readers):
                total = reader.dropped
                if total != dropped[source]:
                    logger.warning(
                        "ring %d: the worker dropped %d records (%d in all): ring full",
                        source,
                        total - dropped[source],
                        total,
                    )
                    dropped[source] = total
            if stop.poll(config.poll_interval_s):
                break
        _drain(readers, recorder)
    finally:
        recorder.close()
        for reader in readers:
            reader.close()


class RecorderProcess:
    """Parent-side handle of the recorder process and of its rings, one per media worker.

    The rings are created here, so their names can be handed to the media workers
    (:meth:`ring_name`) before or after the process starts; they outlive a restart of
    the recorder and are unlinked by :meth:`close`.
    """

    def __init__(
        self,
        config: RecorderConfig,
        workers: int = 1,
        *,
        ring_capacity: int = DEFAULT_CAPACITY,
        payload_size: int = DEFAULT_PAYLOAD_SIZE,
        log_level: int = logging.INFO,
    ) -> None:
        self.config = config
        self.log_level = log_level
        self._rings = [SharedRing.create(ring_capacity, payload_size) for _ in range(workers)]
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._stop: Connection | None = None

    def ring_name(self, worker: int) -> str:
        return self._rings[worker].name

    @property
    def ring_names(self) -> list[str]:
        return [ring.name for ring in self._rings]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        """Start the recorder process, or start it again after it died."""
        if self.is_alive():
            return
        self._close_stop_pipe()
        stop_reader, self._stop = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=_serve,
            args=(self.ring_names, self.config, stop_reader, self.log_level),
            name="ucbridge-recorder",
            daemon=True,
        )
        self._process.start()
        stop_reader.close()  # the child holds the only reading end

    def _close_stop_pipe(self) -> None:
        if self._stop is not None:
            self._stop.close()
            self._stop = None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Ask the process to drain its rings and finish its files; its exit code."""
        process = self._process
        if process is None:
            return None
        if self._stop is not None:
            with contextlib.suppress(OSError):  # BrokenPipeError: the process is gone
                self._stop.send_bytes(b"stop")
        process.join(timeout_s)
        if process.is_alive():
            logger.error(
                "recorder pid %s did not stop in %.1f s; killing it", process.pid, timeout_s
            )
            process.kill()
            process.join()
        self._close_stop_pipe()
        return process.exitcode

    def close(self) -> None:
        """Stop the process and remove the rings."""
        self.stop()
        for ring in self._rings:
            ring.close()
            with contextlib.suppress(FileNotFoundError):
                ring.unlink()
        self._rings = []

    def health(self) -> dict[str, Any]:
        process = self._process
        return {
            "pid": self.pid,
            "alive": self.is_alive(),
            "exitcode": process.exitcode if process is not None else None,
            "rings": [
                {"name": ring.name, "pending": ring.pending, "dropped": ring.dropped}
                for ring in self._rings
            ],
        }

    def __enter__(self) -> RecorderProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------- listing
def _describe(path: Path) -> RecordingInfo:
    size = path.stat().st_size
    duration: float | None = None
    title = date = ""
    try:
        with sf.SoundFile(path) as sound:
            if 0 < sound.frames < SF_COUNT_MAX:
                duration = sound.frames / sound.samplerate
            title, date = sound.title, sound.date
    except (sf.LibsndfileError, RuntimeError, OSError):
        pass  # not readable yet: no samples written
    started: datetime | None = None
    with contextlib.suppress(ValueError):
        started = datetime.fromisoformat(date) if date else None
    if started is None and (match := STAMP_PATTERN.search(path.stem)):
        started = datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    sidecar = sidecar_path(path)
    return RecordingInfo(
        room=title or path.parent.name,
        name=path.stem,
        path=path,
        size=size,
        duration_s=duration,
        started=started,
        has_bursts=sidecar.is_file() and sidecar.stat().st_size > 0,
    )


def list_recordings(out_dir: Path | str) -> list[RecordingInfo]:
    """The recordings under ``out_dir``, by room, oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    suffixes = {fmt.suffix for fmt in RecordingFormat}
    found: list[RecordingInfo] = []
    for path in root.glob("*/*"):
        if path.suffix in suffixes and path.is_file():
            try:
                found.append(_describe(path))
            except OSError:
                continue  # removed while listing
    epoch = datetime.fromtimestamp(0, tz=UTC)
    found.sort(key=lambda info: (info.room, info.started or epoch, info.name))
    return found
