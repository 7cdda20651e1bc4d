"""Configuration: embedded defaults, an optional TOML file, validated at start.

Every key is checked before anything starts. An unknown or bad key fails with the
key named, so that a typo never silently falls back to a default (the HBlink3
habit of validating routing rules at start-up and failing closed).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .model import RoomMode

#: Environment variable that carries the token-signing secret (never logged).
SECRET_ENV = "UCBRIDGE_AUTH_SECRET"
#: The media tick, in milliseconds. Every leg is packetised at this ptime.
FRAME_MS = 20
#: Share of the tick a worker may spend working before it refuses new legs (DESIGN.md).
DEFAULT_TICK_BUDGET = 0.6

Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class MediaConfig(_Section):
    workers: int = Field(default=1, ge=1, le=64)
    rtp_host: str = "127.0.0.1"
    #: Worker i listens for RTP on ``rtp_port_base + 2 * i`` and for RTCP one above.
    rtp_port_base: Port = 40000
    room_rate: Literal[8000, 16000, 48000] = 16000
    max_legs_per_worker: int = Field(default=4096, ge=1, le=65536)
    tick_budget: float = Field(default=DEFAULT_TICK_BUDGET, gt=0.0, le=1.0)
    receive_buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=65536)
    #: Pin worker i to this CPU list entry (``[0]`` pins every worker to CPU 0).
    pin_cpus: list[int] = Field(default_factory=list)
    #: Nice value media workers ask for (negative: ahead of the control plane on a shared
    #: core); needs CAP_SYS_NICE, and without it the worker runs at the default priority.
    worker_nice: int = Field(default=-10, ge=-20, le=19)
    #: Worker i serves MCPT floor control (TS 24.380) on ``floor_port_base + i``.
    floor_port_base: Port = 42000
    #: Gateways that run inside each media worker, by module (see bridge.workerplugin).
    worker_plugins: list[str] = Field(
        default_factory=lambda: ["bridge.gateways.trunking.floorport"]
    )


class RecordingConfig(_Section):
    dir: Path = Path("var/recordings")
    format: Literal["flac", "wav"] = "flac"


class AuthConfig(_Section):
    #: HMAC secret for tokens. Taken from $UCBRIDGE_AUTH_SECRET when empty.
    secret: str = Field(default="", repr=False)
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    #: Demo mode prints a one-time login link; there are no credentials otherwise.
    demo: bool = False


class StateConfig(_Section):
    backend: Literal["memory"] = "memory"


class FloorSettings(_Section):
    """A ptt room's floor control (3GPP TS 24.380 clause 11 timers and counters)."""

    t1: float = Field(default=4.0, gt=0, description="end of RTP media, s")
    t2: float = Field(default=30.0, gt=0, description="stop talking (longest burst), s")
    t3: float = Field(default=3.0, ge=0, description="stop talking grace after revoke, s")
    t7: float = Field(default=1.0, gt=0, description="Floor Idle repeat, s")
    t20: float = Field(default=1.0, gt=0, description="Floor Granted repeat, s")
    c20: int = Field(default=3, ge=1, description="Floor Granted repeats")
    queueing: bool = True
    max_queue_size: int = Field(default=16, ge=0)
    pre_emptive_priority: int = Field(default=255, ge=0, le=255)
    deny_single_participant: bool = False
    ack_required: bool = False


class RoomConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    mode: RoomMode = RoomMode.OPEN
    record: bool = False
    floor: FloorSettings = FloorSettings()


class SipGatewayConfig(_Section):
    """The SIP gateway (pjsua2), in a gateway process of its own."""

    enabled: bool = False


class WebRtcGatewayConfig(_Section):
    """The WebRTC gateway (aiortc), in a gateway process of its own."""

    enabled: bool = False


class CameraGatewayConfig(_Section):
    """The camera gateway (RTSP through PyAV), in a gateway process of its own."""

    enabled: bool = False


class GatewaysConfig(_Section):
    """Gateway processes (DESIGN.md, "Processes"): one per enabled gateway."""

    #: Where gateway processes keep their Unix sockets (the video bus).
    runtime_dir: Path = Path("var/run")
    #: Restarts of a gateway that keeps dying are spaced up to this.
    max_restart_backoff_s: float = Field(default=30.0, gt=0)
    sip: SipGatewayConfig = SipGatewayConfig()
    webrtc: WebRtcGatewayConfig = WebRtcGatewayConfig()
    camera: CameraGatewayConfig = CameraGatewayConfig()


class Config(_Section):
    server: ServerConfig = ServerConfig()
    media: MediaConfig = MediaConfig()
    recording: RecordingConfig = RecordingConfig()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    gateways: GatewaysConfig = GatewaysConfig()
    rooms: list[RoomConfig] = Field(default_factory=list)

    def auth_secret(self) -> str:
        return self.auth.secret or os.environ.get(SECRET_ENV, "")


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(item)
    return ".".join(parts) or "(top level)"


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a configuration mapping; raise ConfigError naming the first bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _key_path(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown config key: {key}") from None
        raise ConfigError(f"bad config key {key}: {first['msg']}") from None


def load_config(path: Path | None) -> Config:
    """Load the TOML file at ``path`` over the embedded defaults (None: defaults only)."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data)
