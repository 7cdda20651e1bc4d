"""The control process's side of recording: the recorder process, its rings, the listing.

The media workers push into the rings (:mod:`bridge.shmring`) and the recorder process
(:mod:`bridge.recorder`) writes the files; this service starts that process, restarts it
when it dies, and answers the REST API's listing and download questions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import Config
from .recorder import (
    RecorderConfig,
    RecorderProcess,
    RecordingFormat,
    list_recordings,
    sidecar_path,
)

logger = logging.getLogger("bridge.recording")

#: Frames a worker may have in flight to the recorder: 8 s of one room, or 80 ms of 100.
RING_CAPACITY = 4096


class RecorderService:
    def __init__(self, config: Config) -> None:
        self.out_dir = Path(config.recording.dir).resolve()
        self.format = RecordingFormat(config.recording.format)
        self.sample_rate = config.media.room_rate
        self.process: RecorderProcess | None = None
        self.restarts = 0

    def start(self, workers: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.process = RecorderProcess(
            RecorderConfig(out_dir=self.out_dir, format=self.format, sample_rate=self.sample_rate),
            workers,
            ring_capacity=RING_CAPACITY,
        )
        self.process.start()

    def supervise(self) -> bool:
        """Start the recorder again if it died; True if it was restarted.

        The rings outlive the process, so what the workers pushed meanwhile is kept.
        """
        if self.process is None or self.process.is_alive():
            return False
        logger.error(
            "recorder process died (exit %s); restarting", self.process.health()["exitcode"]
        )
        self.restarts += 1
        self.process.start()
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None

    def ring_name(self, worker: int) -> str:
        assert self.process is not None
        return self.process.ring_name(worker)

    def health(self) -> dict[str, Any]:
        if self.process is None:
            return {"state": "stopped"}
        health = self.process.health()
        return {
            "state": "running" if health["alive"] else "restarting",
            "restarts": self.restarts,
            **health,
        }

    def list(self) -> list[dict[str, Any]]:
        items = []
        for info in list_recordings(self.out_dir):
            item = info.as_dict()
            item.pop("path")
            item["id"] = info.name
            items.append(item)
        return items

    def path_of(self, recording_id: str, part: str = "audio") -> Path | None:
        """The file of a recording (``part="bursts"``: its talk-burst index), or None."""
        for info in list_recordings(self.out_dir):
            if info.name == recording_id:
                if part == "audio":
                    return info.path
                if part == "bursts":
                    sidecar = sidecar_path(info.path)
                    return sidecar if sidecar.is_file() else None
                return None
        return None
