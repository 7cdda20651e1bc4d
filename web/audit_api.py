"""The audit log over HTTP: every dispatcher action through REST is audited once, and read back.

:func:`audit_middleware` writes one :class:`bridge.audit.AuditLog` record for each request
to a dispatcher route (:data:`AUDITED_ROUTES`, and any other state-changing ``/api/`` route
but :data:`UNAUDITED_ROUTES`) that carries an identity, whatever its outcome: the final
status decides ``ok``, ``denied`` (401, 403) or ``failed``. Downloads of recordings are
audited too (surveillance). ``GET /api/audit`` lists records and ``GET /api/audit/verify``
checks the chain, both for dispatchers and admins; the log has no route that changes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bridge.audit import DEFAULT_READ_LIMIT, AuditError, AuditLog, Outcome, verify
from bridge.config import Config

from .app import CONTROL, IDENTITY, Handler, json_error, require
from .auth import Identity, Role
from .openapi import operation

#: The audit file's name, beside the recordings folder unless configured.
AUDIT_FILE_NAME = "audit.jsonl"
#: Request bodies larger than this are not copied into the record.
MAX_BODY_IN_RECORD = 4096

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)

#: (method, route) → action name, for the dispatcher routes of ``web/app.py``.
AUDITED_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/rooms"): "room_create",
    ("DELETE", "/api/rooms/{room}"): "room_delete",
    ("POST", "/api/rooms/{room}/participants"): "join",
    ("POST", "/api/rooms/{room}/calls"): "dial",
    ("DELETE", "/api/rooms/{room}/calls/{call}"): "hangup",
    ("DELETE", "/api/rooms/{room}/participants/{participant}"): "kick",
    ("PATCH", "/api/rooms/{room}/participants/{participant}"): "participant_patch",
    ("POST", "/api/rooms/{room}/recording"): "recording",
    ("POST", "/api/rooms/{room}/floor"): "floor",  # floor_<action> by the body's action
    ("POST", "/api/alerts/{alert}/{action}"): "alert",  # alert_acknowledge, alert_clear
    ("GET", "/api/recordings/{recording}"): "recording_download",
    ("GET", "/api/recordings/{recording}/{part}"): "recording_download",
    ("POST", "/api/cameras"): "camera_add",
    ("DELETE", "/api/cameras/{camera}"): "camera_remove",
    ("POST", "/api/cameras/{camera}/views"): "camera_view_start",
    ("DELETE", "/api/cameras/{camera}/views/{view}"): "camera_view_end",
    ("POST", "/api/patches"): "patch",
    ("DELETE", "/api/patches/{patch}"): "unpatch",
    ("PUT", "/api/rooms/{room}/participants/{participant}/monitor"): "monitor",
}
#: A request-body key whose name holds one of these (in any case) is secret: its value
#: never reaches the audit log (a camera's ``password``, an ``api_key``, a ``Token``...).
SECRET_KEY_PARTS = ("pass", "secret", "token", "key")
#: Keys that match :data:`SECRET_KEY_PARTS` but carry nothing secret: the DTMF keys a
#: phone takes and gives the floor with (``[gateways.sip]``).
HARMLESS_KEYS = frozenset({"floor_request_key", "floor_release_key"})
#: Prefixes of harmless keys of the same kind: video keyframe settings and counters.
HARMLESS_KEY_PREFIXES = ("keyframe",)
#: What a secret value is replaced with.
MASK = "***"
#: State-changing routes that are not dispatcher actions (units' own position reports).
UNAUDITED_ROUTES = frozenset(
    {
        ("POST", "/api/presence/{unit}"),
        ("POST", "/api/presence/reports"),
        ("POST", "/api/trunking/location"),
    }
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DENIED_STATUSES = frozenset({401, 403})


def default_path(config: Config) -> Path:
    """``audit.path``, or when the configuration names none: beside the recordings."""
    return config.audit.path or config.recording.dir.parent / AUDIT_FILE_NAME


def _action(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    key = (request.method, resource.canonical)
    if key in AUDITED_ROUTES:
        return AUDITED_ROUTES[key]
    if key in UNAUDITED_ROUTES or request.method in _SAFE_METHODS:
        return None
    if not resource.canonical.startswith("/api/"):
        return None
    return f"{request.method} {resource.canonical}"


async def _request_body(request: web.Request) -> Any:
    if not request.can_read_body and not request.body_exists:
        return None
    if (request.content_length or 0) > MAX_BODY_IN_RECORD:
        return "(too large to record)"
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return "(not JSON)"


def _error_of(response: web.StreamResponse | web.HTTPException) -> str | None:
    body = getattr(response, "text", None)
    if not isinstance(body, str):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("error") if isinstance(data, dict) else None


def is_secret_key(name: Any) -> bool:
    """Whether a body key's value must be masked (see :data:`SECRET_KEY_PARTS`)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    if lowered in HARMLESS_KEYS or lowered.startswith(HARMLESS_KEY_PREFIXES):
        return False
    return any(part in lowered for part in SECRET_KEY_PARTS)


def without_secrets(body: Any) -> Any:
    """``body`` with secret keys' values masked and URL credentials cut (rtsp://u:p@h)."""
    if isinstance(body, dict):
        return {k: MASK if is_secret_key(k) else without_secrets(v) for k, v in body.items()}
    if isinstance(body, list):
        return [without_secrets(v) for v in body]
    if isinstance(body, str) and "://" in body and "@" in body:
        scheme, _, rest = body.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            return f"{scheme}://{MASK}@{authority.rpartition('@')[2]}{slash}{path}"
    return body


def _outcome(status: int) -> Outcome:
    if status < 400:
        return Outcome.OK
    return Outcome.DENIED if status in _DENIED_STATUSES else Outcome.FAILED


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Audit dispatcher routes once each; the outermost middleware, so it sees final statuses."""
    action = _action(request)
    if action is None:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record(request, action, exc.status, _error_of(exc), await _request_body(request))
        raise
    error = _error_of(response) if response.status >= 400 else None
    _record(request, action, response.status, error, await _request_body(request))
    return response


def _record(request: web.Request, action: str, status: int, error: str | None, body: Any) -> None:
    identity: Identity | None = request.get(IDENTITY)
    if identity is None:
        return
    if action == "floor" and isinstance(body, dict) and isinstance(body.get("action"), str):
        action = f"floor_{body['action']}"
    elif action == "alert":
        action = f"alert_{request.match_info.get('action', '')}"
    detail: dict[str, Any] = {"method": request.method, "path": request.path, "status": status}
    if error is not None:
        detail["error"] = error
    if body is not None:
        detail["request"] = without_secrets(body)
    request.app[AUDIT].append(
        user=identity.user,
        role=str(identity.role),
        action=f"rest:{action}",
        outcome=_outcome(status),
        room=request.match_info.get("room"),
        camera=request.match_info.get("camera"),
        detail=detail,
    )


class AuditRecordOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int
    time: float
    user: str
    role: str
    action: str
    outcome: Outcome
    room: str | None
    camera: str | None
    detail: dict[str, Any]
    prev: str = Field(description="SHA-256 of the previous line (the chain)")


class AuditList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[AuditRecordOut]
    count: int
    head: str


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, description="records after this sequence number")
    limit: int = Field(default=DEFAULT_READ_LIMIT, ge=1, le=DEFAULT_READ_LIMIT)
    action: str | None = None


class AuditVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    records: int | None = None
    head: str | None = None
    error: str | None = None


class AuditApi:
    """Read-only routes over the audit log."""

    @operation("Audit records (read-only)", query=AuditQuery, response=AuditList)
    @require(Role.DISPATCHER)
    async def list(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", str(DEFAULT_READ_LIMIT)))
        except ValueError:
            return json_error(400, "after and limit must be integers")
        if not 1 <= limit <= DEFAULT_READ_LIMIT:
            return json_error(400, f"limit must be 1 to {DEFAULT_READ_LIMIT}")
        log = request.app[AUDIT]
        records = log.read(after=after, limit=limit, action=request.query.get("action"))
        return web.json_response(
            {"records": [r.to_dict() for r in records], "count": len(log), "head": log.head}
        )

    @operation("Check the audit log's hash chain", response=AuditVerdict)
    @require(Role.DISPATCHER)
    async def verify(self, request: web.Request) -> web.Response:
        log = request.app[AUDIT]
        try:
            count = verify(log.path, head=log.head)
        except AuditError as exc:
            return web.json_response({"ok": False, "error": str(exc)})
        return web.json_response({"ok": True, "records": count, "head": log.head})


def setup(app: web.Application, log: AuditLog) -> AuditLog:
    """Register the audit routes and keep ``log`` on the app (closed at cleanup)."""
    app[AUDIT] = log
    api = AuditApi()
    app.router.add_get("/api/audit", api.list)
    app.router.add_get("/api/audit/verify", api.verify)

    async def close(app: web.Application) -> None:
        log.close()

    async def gateway_audit(
        user: str,
        role: str,
        action: str,
        outcome: str = "ok",
        room: str | None = None,
        camera: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """A gateway's audit record (a camera view, a dial-out answered): its sequence."""
        record = log.append(
            user=user,
            role=role,
            action=action,
            outcome=outcome,
            room=room,
            camera=camera,
            detail=detail,
        )
        return record.seq

    if CONTROL in app:
        app[CONTROL].gateways.handle("audit", gateway_audit)
    app.on_cleanup.append(close)
    return log
