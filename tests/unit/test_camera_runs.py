"""A stopped pull's thread, still ending, never acts on the camera's next run."""

from __future__ import annotations

import threading
from typing import Any

from bridge.config import CameraConfig, CameraGatewayConfig
from bridge.gateways.camera.camera import Camera, CameraState
from bridge.gateways.camera.ingest import StreamInfo


class FakeBus:
    def __init__(self) -> None:
        self.cleared: list[str] = []

    def clear_gop(self, source: str) -> None:
        self.cleared.append(source)


def test_an_old_runs_callbacks_are_ignored() -> None:
    bus = FakeBus()
    events: list[dict[str, Any]] = []
    camera = Camera(
        CameraConfig(name="gate", url="rtsp://127.0.0.1:1/x"),
        CameraGatewayConfig(),
        bus=bus,  # type: ignore[arg-type]
        publish=events.append,
    )
    old, new = threading.Event(), threading.Event()
    camera._thread = threading.Thread(target=lambda: None)  # the new run (not started)
    camera._stop = new
    camera.state = CameraState.CONNECTING
    camera._failed("the old pull timed out", 1.0, old)
    camera._opened(StreamInfo.__new__(StreamInfo), old)
    assert camera.state is CameraState.CONNECTING and camera.info is None
    assert not events and not bus.cleared and camera.reconnects == 0
    camera._failed("refused", 1.0, new)
    assert camera.state is CameraState.OFFLINE
    assert [e["event"] for e in events] == ["camera_offline"] and bus.cleared == ["camera:gate"]
