"""Configuration: embedded defaults, an optional TOML file, validated at start.

Every key is checked before anything starts. An unknown or bad key fails with the
key named, so that a typo never silently falls back to a default (the HBlink3
habit of validating routing rules at start-up and failing closed).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


class AuditConfig(_Section):
    #: The append-only audit log (JSONL); none: ``audit.jsonl`` beside the recordings folder.
    path: Path | None = None

    @field_validator("path")
    @classmethod
    def _a_file(cls, path: Path | None) -> Path | None:
        if path is not None and (str(path) in ("", ".") or path.is_dir()):
            raise ValueError(f"must name a file, not a directory: {path}")
        return path


#: Presence batches a second per console: an 8 Hz batch period (125 ms) leaves half of the
#: 250 ms delivery target for the report's trip in and the batch's trip out.
DEFAULT_PRESENCE_RATE_HZ = 8.0

#: A Leaflet tile URL template: http(s) or a path on this server, with {z}, {x} and {y}.
TILE_URL_REGEX = r"^(https?://[^\s]+|/[^\s]*)$"


class ConsoleConfig(_Section):
    """The dispatcher console's map. No tile URL (the default): a graticule, no internet."""

    tile_url: str | None = Field(default=None, pattern=TILE_URL_REGEX)
    tile_attribution: str = Field(default="", max_length=512)
    tile_max_zoom: int = Field(default=19, ge=0, le=24)
    center_lat: float = Field(default=0.0, ge=-90.0, le=90.0)
    center_lon: float = Field(default=0.0, ge=-180.0, le=180.0)
    zoom: int = Field(default=2, ge=0, le=24)
    #: Presence batches a second to each console. A fix waits up to one period for its
    #: batch, so the period is what most of the delivery p99 is made of (target 250 ms).
    presence_rate_hz: float = Field(default=DEFAULT_PRESENCE_RATE_HZ, gt=0.0, le=50.0)

    @field_validator("tile_url")
    @classmethod
    def _template(cls, url: str | None) -> str | None:
        missing = [p for p in ("{z}", "{x}", "{y}") if url is not None and p not in url]
        if missing:
            raise ValueError(f"a tile URL template needs {', '.join(missing)}")
        return url


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
    #: An ``open`` room also mixes its monitor-only sources (camera audio) for everyone.
    monitor_to_mix: bool = False


class SipAccountConfig(_Section):
    """An upstream PBX account: registered with digest auth, used for dial-out through it."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    #: The account's address of record, e.g. ``sip:1000@pbx.example.net``.
    uri: str
    #: The registrar, e.g. ``sip:pbx.example.net``; empty: never register (dial-out only).
    registrar: str = ""
    username: str = ""
    #: The digest password; empty: taken from the environment variable ``password_env``.
    password: str = Field(default="", repr=False)
    password_env: str = ""
    realm: str = "*"
    expires_s: int = Field(default=300, ge=30, le=86400)
    #: Re-registration after a failure backs off from the first to the second, doubling.
    retry_min_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)

    def secret(self) -> str:
        return self.password or (os.environ.get(self.password_env, "") if self.password_env else "")


SipCodec = Literal["PCMU", "PCMA", "G722", "L16"]
#: Codecs the SIP gateway offers, in order of preference.
DEFAULT_SIP_CODECS: tuple[SipCodec, ...] = ("G722", "PCMU", "PCMA", "L16")


class SipGatewayConfig(_Section):
    """The SIP gateway (pjsua2), in a gateway process of its own."""

    enabled: bool = True
    #: The SIP front (UDP) that phones and PBXs reach; it relays to the pjsua2 workers.
    listen_host: str = "127.0.0.1"
    listen_port: Port = 5060
    #: SIP worker i listens on ``worker_port_base + i`` (on ``listen_host``).
    worker_port_base: Port = 5070
    #: SIP worker i takes RTP ports from ``rtp_port_base + i * rtp_ports_per_worker``.
    rtp_port_base: Port = 46000
    rtp_ports_per_worker: int = Field(default=40, ge=4, le=1000)
    #: Calls one pjsua2 process may carry; the pjsua2-python wheel is built with
    #: PJSUA_MAX_CALLS = 4, so more calls mean more SIP workers.
    calls_per_worker: int = Field(default=4, ge=1, le=32)
    min_workers: int = Field(default=1, ge=0, le=256)
    max_workers: int = Field(default=32, ge=1, le=256)
    #: Idle call slots kept started ahead of demand (a worker starts in about 0.3 s).
    spare_calls: int = Field(default=4, ge=0, le=1024)
    max_calls: int = Field(default=128, ge=1, le=8192)
    max_calls_per_room: int = Field(default=64, ge=1, le=8192)
    #: New INVITEs one source address may send per second (token bucket) and in a burst.
    invite_rate: float = Field(default=20.0, gt=0)
    invite_burst: int = Field(default=40, ge=1)
    codecs: list[SipCodec] = Field(default_factory=lambda: list(DEFAULT_SIP_CODECS))
    #: What dispatchers see of a caller's number: all of it, its last 4 digits, nothing.
    caller_id: Literal["show", "mask", "hide"] = "show"
    #: DTMF keys of a phone in a ptt room: request and release the floor.
    floor_request_key: Annotated[str, Field(pattern=r"^[0-9*#A-D]$")] = "*"
    floor_release_key: Annotated[str, Field(pattern=r"^[0-9*#A-D]$")] = "#"
    #: Dialled number -> room (name or id); otherwise the request URI's user is the room.
    dids: dict[str, str] = Field(default_factory=dict)
    #: Room name -> PIN (digits) that a caller must key in before joining.
    pins: dict[str, Annotated[str, Field(pattern=r"^[0-9]{1,16}$")]] = Field(
        default_factory=dict, repr=False
    )
    pin_attempts: int = Field(default=3, ge=1, le=10)
    pin_timeout_s: float = Field(default=15.0, gt=0)
    #: Unanswered dial-out calls are given up after this.
    ring_timeout_s: float = Field(default=60.0, gt=0)
    accounts: list[SipAccountConfig] = Field(default_factory=list)
    user_agent: str = "ucbridge"

    @field_validator("listen_host")
    @classmethod
    def _one_address(cls, host: str) -> str:
        # The front Record-Routes itself with this address (RFC 3261 §16.6 step 4) and
        # tells its workers' packets by it: a wildcard is neither routable nor theirs.
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"must be one IP address of this host, not {host!r}") from None
        if address.is_unspecified:
            raise ValueError(f"must be one IP address of this host, not the wildcard {host}")
        return host

    @model_validator(mode="after")
    def _workers(self) -> SipGatewayConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        if self.floor_request_key == self.floor_release_key:
            raise ValueError("floor_request_key and floor_release_key must differ")
        return self


class WebRtcGatewayConfig(_Section):
    """The WebRTC gateway (aiortc), in a gateway process of its own."""

    enabled: bool = True
    #: Host candidates only on these interfaces (names such as ``eth0``, or IPv4/IPv6
    #: addresses; ``127.0.0.1`` is allowed here). Empty: every address but loopback.
    interfaces: list[str] = Field(default_factory=list)
    #: STUN servers, ``stun:host:port``.
    stun_urls: list[str] = Field(default_factory=list)
    #: TURN servers, ``turn:host:port`` (``?transport=tcp`` allowed), and their credentials.
    turn_urls: list[str] = Field(default_factory=list)
    turn_username: str = ""
    turn_credential: str = Field(default="", repr=False)
    #: Per room: browsers that may publish video, and legs that may view video.
    max_publishers: int = Field(default=4, ge=0, le=64)
    max_subscribers: int = Field(default=32, ge=0, le=1024)
    #: WebRTC sessions the gateway takes in all.
    max_sessions: int = Field(default=200, ge=1, le=10000)
    #: Encode each distinct 20 ms mix to Opus once and send it to every browser that hears
    #: it; false: aiortc encodes every browser's mix on its own.
    shared_encode: bool = True


#: A camera's name; also its video source (``camera:<name>``) and its unit on the map.
CAMERA_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class CameraConfig(_Section):
    """One IP camera: RTSP (RFC 7826 / RFC 2326; ONVIF Profile S devices expose RTSP).

    Credentials in ``url`` (``rtsp://user:pass@host/...``) are moved to ``username`` and
    ``password``, so that the URL itself is safe to show; ``password`` may instead come
    from the environment variable named by ``password_env``. Neither is ever logged.
    """

    name: Annotated[str, Field(pattern=CAMERA_NAME_PATTERN)]
    url: Annotated[str, Field(pattern=r"^rtsps?://[^\s/@]+(/\S*)?$", max_length=2048)]
    username: str = Field(default="", max_length=256)
    password: str = Field(default="", max_length=256, repr=False)
    password_env: str = Field(default="", max_length=256)
    transport: Literal["tcp", "udp"] = "tcp"
    #: Fixed position (WGS-84 degrees) and view direction (degrees clockwise from true
    #: north) with the horizontal field of view, for the dispatcher map.
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    heading: float | None = Field(default=None, ge=0, lt=360)
    fov: float = Field(default=60.0, gt=0, le=360)
    #: Rooms the camera belongs to; its audio (when ``audio``) joins each as a monitor source.
    rooms: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] = Field(
        default_factory=list
    )
    audio: bool = True

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(data["url"])
        if "@" not in parts.netloc:
            return data
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        data = dict(data)
        data["url"] = parts._replace(netloc=host).geturl()
        if not data.get("username"):
            data["username"] = unquote(user)
        if not data.get("password") and password:
            data["password"] = unquote(password)
        return data

    @model_validator(mode="after")
    def _position_pair(self) -> CameraConfig:
        if "@" in self.url:
            # rtsp://user:pa/ss@host/...: the host part ends at the first "/", so these
            # credentials were not taken out, and would be shown with the URL.
            raise ValueError("a camera URL's credentials must be percent-encoded")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self

    def secret(self) -> str:
        """The password: ``password``, else ``$password_env`` (empty when neither)."""
        if self.password or not self.password_env:
            return self.password
        return os.environ.get(self.password_env, "")


class CameraGatewayConfig(_Section):
    """The camera gateway (RTSP through PyAV), in a gateway process of its own."""

    enabled: bool = True
    cameras: list[CameraConfig] = Field(default_factory=list)
    #: Reconnection back-off after a camera drops: doubles from min to max.
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    #: Opening an RTSP session, and waiting for the next packet, give up after these.
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    #: A pull goes on this long after its last viewer left (a tile reopened at once).
    linger_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _unique_names(self) -> CameraGatewayConfig:
        names = [camera.name for camera in self.cameras]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"camera names must be unique: {', '.join(duplicates)}")
        return self


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
    audit: AuditConfig = AuditConfig()
    console: ConsoleConfig = ConsoleConfig()
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


def without_secrets(model: BaseModel) -> dict[str, Any]:
    """``model`` as JSON-ready data with every secret field (``repr=False``) emptied.

    For processes that need the settings but not the secrets, whose configuration may
    show in a process list (media workers take theirs on the command line).
    """
    data: dict[str, Any] = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if info.repr is False:
            data[name] = type(value)()
        elif isinstance(value, BaseModel):
            data[name] = without_secrets(value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            data[name] = [without_secrets(item) for item in value]
    return data


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
