"""A video-bus viewer for tests: subscribes in a thread of its own and keeps what it gets."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.videobus import EncodedFrame, subscribe


@dataclass
class Received:
    frame: EncodedFrame
    at: float  # time.time() on arrival


@dataclass
class BusViewer:
    path: Path
    source: str
    frames: list[Received] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise TimeoutError("the viewer thread did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._view())
        self._ready.set()
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _view(self) -> None:
        try:
            async for frame in subscribe(self.path, self.source):
                self.frames.append(Received(frame, time.time()))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    def wait_frames(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            if self.error is not None:
                raise AssertionError(f"viewer failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.frames)} of {count} frames from {self.source}")
            time.sleep(0.02)
        return list(self.frames)

    def close(self) -> None:
        task = self._task
        if task is not None and not task.done():
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(5)
