"""Presence over REST: the map as GeoJSON, a Cursor-on-Target stream, and HTTP position fixes.

- ``GET /api/presence`` (any role): every unit as a GeoJSON FeatureCollection (RFC 7946).
- ``GET /api/presence/cot`` (any role): a chunked stream of CoT PLI events (MITRE CoT event
  2.0, :mod:`bridge.cot`), back to back with no separator as TAK streams expect: one
  ``<event>`` per unit every ``interval`` seconds (default :data:`DEFAULT_COT_INTERVAL_S`)
  for ``rounds`` rounds (default: until the client goes away).
- ``POST /api/presence/reports``: many fixes at once (``{"reports": [{"unit": ..., "lat": ...,
  ...}, ...]}``, up to :data:`MAX_BATCH_REPORTS`); each is checked on its own, the good
  ones are kept and the others answered by index (``{"accepted": 9, "rejected": [{"index":
  3, "unit": "car-2", "error": "latitude is out of range"}]}``). Same roles as below.
- ``POST /api/presence/{unit}``: a manual or HTTP-delivered fix. Dispatchers may place any
  unit; an officer may report only its own unit (its user name). A position out of range is
  ``422`` with the reason (``{"error": "latitude is out of range"}``).

The routes are thin: :class:`PresenceFeed` owns the registry and tells its subscribers (the
socket.io fan-out, one :class:`bridge.presence.Coalescer` per console) about every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.cot import cot_stream
from bridge.model import ParticipantKind
from bridge.presence import FixSource, GpsFix, PresenceRegistry, Unit, to_feature

from .app import IDENTITY, json_error, require
from .auth import Identity, Role
from .openapi import operation, read_body, validation_reason

#: Seconds between rounds of a CoT stream, unless the client asks otherwise.
DEFAULT_COT_INTERVAL_S = 5.0
MIN_COT_INTERVAL_S = 0.2
MAX_COT_INTERVAL_S = 3600.0
#: How often silent units are expired from the registry.
EXPIRE_INTERVAL_S = 10.0
COT_CONTENT_TYPE = "application/xml"
#: What a unit id may look like (a handset id, a user name, a camera id).
UNIT_REGEX = r"[A-Za-z0-9_.:@-]{1,64}"
#: Many fixes in one request; ``reports`` is not a unit id there.
BATCH_PATH = "/api/presence/reports"
MAX_BATCH_REPORTS = 1000

#: ``callback(unit_id, unit)``: the unit changed, or went away (``unit`` is None).
UnitListener = Callable[[str, Unit | None], None]


class PresenceFeed:
    """The presence registry of the control process, with change notification."""

    def __init__(self, registry: PresenceRegistry | None = None) -> None:
        self.registry = registry if registry is not None else PresenceRegistry()
        self._listeners: list[UnitListener] = []
        self._expirer: asyncio.Task[None] | None = None

    def subscribe(self, listener: UnitListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, unit_id: str, unit: Unit | None) -> None:
        for listener in list(self._listeners):
            listener(unit_id, unit)

    def report(self, unit_id: str, fix: GpsFix, **changes: Any) -> Unit:
        """A fix for a unit (see :meth:`PresenceRegistry.report`); raises ``ValueError``."""
        unit = self.registry.report(unit_id, fix, **changes)
        self._notify(unit_id, unit)
        return unit

    def update(self, unit_id: str, **changes: Any) -> Unit:
        """A unit's room, alias or status changed (see :meth:`PresenceRegistry.update`)."""
        unit = self.registry.update(unit_id, **changes)
        self._notify(unit_id, unit)
        return unit

    def remove(self, unit_id: str) -> Unit | None:
        unit = self.registry.remove(unit_id)
        if unit is not None:
            self._notify(unit_id, None)
        return unit

    def expire(self) -> list[Unit]:
        removed = self.registry.expire()
        for unit in removed:
            self._notify(unit.id, None)
        return removed

    def feature(self, unit: Unit) -> dict[str, Any]:
        return to_feature(unit, now=self.registry.now())

    def geojson(self, room: str | None = None) -> dict[str, Any]:
        return self.registry.geojson(room=room)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL_S)
            self.expire()

    async def start(self, app: web.Application) -> None:
        self._expirer = asyncio.get_running_loop().create_task(self._expire_loop())

    async def stop(self, app: web.Application) -> None:
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer


PRESENCE: web.AppKey[PresenceFeed] = web.AppKey("presence", PresenceFeed)


class FixReport(BaseModel):
    """A position report; times are epoch seconds, lengths metres, angles degrees."""

    model_config = ConfigDict(extra="forbid")

    lat: float
    lon: float
    time: float | None = None
    altitude_m: float | None = None
    accuracy_m: float | None = None
    vertical_accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    source: FixSource = FixSource.MANUAL
    kind: ParticipantKind | None = None
    alias: str | None = Field(default=None, max_length=64)
    room: str | None = Field(default=None, max_length=64)
    status: str | None = None
    interval: float | None = None


class ReportQuery(BaseModel):
    """``/api/presence``'s filter."""

    model_config = ConfigDict(extra="forbid")

    room: str | None = Field(default=None, description="only the units of this room")


class CotQuery(ReportQuery):
    interval: float = Field(
        default=DEFAULT_COT_INTERVAL_S,
        ge=MIN_COT_INTERVAL_S,
        le=MAX_COT_INTERVAL_S,
        description="seconds between rounds (stale time = 2x the unit's report interval)",
    )
    rounds: int | None = Field(default=None, ge=1, description="rounds; none: until closed")


class UnitReport(FixReport):
    """One fix of a batch: a :class:`FixReport` with the unit it is for."""

    unit: str = Field(pattern=f"^{UNIT_REGEX}$")


class BatchReport(BaseModel):
    """Many fixes in one request; each is checked on its own."""

    model_config = ConfigDict(extra="forbid")

    reports: list[Any] = Field(min_length=1, max_length=MAX_BATCH_REPORTS)


class Rejected(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    unit: str | None
    error: str


class BatchResult(BaseModel):
    """How many fixes were kept, and why each other one was not (by its index)."""

    model_config = ConfigDict(extra="forbid")

    accepted: int
    rejected: list[Rejected]


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["Point"]
    coordinates: list[float] = Field(min_length=2, max_length=3, description="lon, lat[, alt]")


class UnitProperties(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit: str
    alias: str
    kind: str
    room: str | None
    status: str
    source: str
    accuracy: float | None
    heading: float | None
    speed: float | None
    time: str
    state: str
    stale: bool


class Feature(BaseModel):
    """A unit as a GeoJSON Feature (RFC 7946 §3.2)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["Feature"]
    id: str
    geometry: Point
    properties: UnitProperties


class FeatureCollection(BaseModel):
    """Units as a GeoJSON FeatureCollection (RFC 7946 §3.3)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["FeatureCollection"]
    features: list[Feature]


def _apply(feed: PresenceFeed, unit_id: str, body: FixReport) -> tuple[Unit, bool]:
    """Apply one report; returns the unit and whether it is new. Raises ``ValueError``."""
    known = unit_id in feed.registry
    fix = GpsFix(
        lat=body.lat,
        lon=body.lon,
        time=time.time() if body.time is None else body.time,
        altitude_m=body.altitude_m,
        accuracy_m=body.accuracy_m,
        vertical_accuracy_m=body.vertical_accuracy_m,
        heading_deg=body.heading_deg,
        speed_mps=body.speed_mps,
        source=body.source,
    )
    unit = feed.report(
        unit_id,
        fix,
        kind=body.kind or (None if known else ParticipantKind.TRUNK),
        alias=body.alias,
        room=body.room,
        status=body.status,
        interval=body.interval,
    )
    return unit, not known


class PresenceApi:
    """Route handlers; one instance per app."""

    @operation("Every unit as GeoJSON", query=ReportQuery, response=FeatureCollection)
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def geojson(self, request: web.Request) -> web.Response:
        feed = request.app[PRESENCE]
        return web.json_response(feed.geojson(room=request.query.get("room") or None))

    @operation(
        "A Cursor-on-Target stream of PLI events (a-f-G-U-C)",
        query=CotQuery,
        content=COT_CONTENT_TYPE,
    )
    @require(Role.DISPATCHER, Role.OFFICER, Role.OBSERVER)
    async def cot(self, request: web.Request) -> web.StreamResponse:
        try:
            interval = float(request.query.get("interval", DEFAULT_COT_INTERVAL_S))
            rounds = int(request.query["rounds"]) if "rounds" in request.query else None
        except ValueError:
            return json_error(400, "interval must be a number and rounds an integer")
        if not MIN_COT_INTERVAL_S <= interval <= MAX_COT_INTERVAL_S:
            return json_error(
                400, f"interval must be {MIN_COT_INTERVAL_S} to {MAX_COT_INTERVAL_S} seconds"
            )
        feed = request.app[PRESENCE]
        room = request.query.get("room") or None
        response = web.StreamResponse(headers={"Content-Type": COT_CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        done = 0
        with contextlib.suppress(ConnectionResetError):
            while rounds is None or done < rounds:
                transport = request.transport
                if transport is None or transport.is_closing():
                    # The client went away; a round with nothing to write would not notice.
                    break
                started = time.monotonic()
                chunk = b"".join(cot_stream(feed.registry.units(room=room)))
                if chunk:
                    await response.write(chunk)
                done += 1
                if rounds is not None and done >= rounds:
                    break
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
            await response.write_eof()
        return response

    @operation(
        "Report one unit's fix (dispatchers: any unit; officers: their own)",
        request=FixReport,
        response=Feature,
        responses={201: Feature},
    )
    @require(Role.DISPATCHER, Role.OFFICER)
    async def report(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        unit_id = request.match_info["unit"]
        if identity.role == Role.OFFICER and unit_id != identity.user:
            return json_error(403, "an officer may report only its own unit")
        body = await read_body(request, FixReport)
        feed = request.app[PRESENCE]
        try:
            unit, new = _apply(feed, unit_id, body)
        except ValueError as exc:
            return json_error(422, str(exc))
        return web.json_response(feed.feature(unit), status=201 if new else 200)

    @operation(
        "Report many fixes at once; bad ones are listed by index, good ones kept",
        request=BatchReport,
        response=BatchResult,
    )
    @require(Role.DISPATCHER, Role.OFFICER)
    async def report_batch(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        batch = await read_body(request, BatchReport)
        feed = request.app[PRESENCE]
        accepted = 0
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(batch.reports):
            unit_id = item.get("unit") if isinstance(item, dict) else None
            unit_id = unit_id if isinstance(unit_id, str) else None
            try:
                report = UnitReport.model_validate(item)
            except ValidationError as exc:
                rejected.append(
                    {"index": index, "unit": unit_id, "error": validation_reason(exc, "report")}
                )
                continue
            if identity.role == Role.OFFICER and report.unit != identity.user:
                error = "an officer may report only its own unit"
                rejected.append({"index": index, "unit": report.unit, "error": error})
                continue
            try:
                _apply(feed, report.unit, report)
            except ValueError as exc:
                rejected.append({"index": index, "unit": report.unit, "error": str(exc)})
                continue
            accepted += 1
        return web.json_response({"accepted": accepted, "rejected": rejected})


def setup(app: web.Application, feed: PresenceFeed | None = None) -> PresenceFeed:
    """Register the presence routes on ``app`` and return its feed."""
    feed = feed if feed is not None else PresenceFeed()
    app[PRESENCE] = feed
    api = PresenceApi()
    app.router.add_get("/api/presence", api.geojson)
    app.router.add_get("/api/presence/cot", api.cot)
    # Before the unit route, which would take "reports" for a unit id.
    app.router.add_post(BATCH_PATH, api.report_batch)
    app.router.add_post("/api/presence/{unit:" + UNIT_REGEX + "}", api.report)
    app.on_startup.append(feed.start)
    app.on_cleanup.append(feed.stop)
    return feed
