"""The REST API's description: an OpenAPI 3.1 document built from the app's own router.

Handlers declare what they take and give with :func:`operation`::

    @operation("Create a room", request=RoomCreate, response=RoomOut, status=201,
               errors=(409,))
    @require(Role.DISPATCHER)
    async def create_room(self, request): ...

and read their JSON body with :func:`read_body`, which answers ``400`` for a body that is
not JSON and ``422`` naming the first bad field (``{"error": "name: String should ..."}``).

:func:`document` walks ``app.router`` (so every route any module registers is listed) and
turns each declaration into an OpenAPI 3.1 operation (OpenAPI Specification 3.1.0, §4.8):
pydantic models become JSON Schema 2020-12 components (§4.8.24, request bodies in
validation mode, responses in serialisation mode), the roles :func:`bridge.web.app.require`
records become the security requirement and the ``401``/``403`` answers, and a request body
adds the ``400``/``422`` answers. A route that declares nothing is still listed, with
``x-undocumented: true`` and a description saying so. Static files and the socket.io
endpoint are not REST and are left out.

``GET /api/openapi.json`` serves the document to anyone, without a token: it describes the
shape of the API (which any client of it must know, and which the source shows anyway),
never state or secrets, and a client needs it before it has a token to learn how to get one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = "/api/openapi.json"
TITLE = "ucbridge"
API_VERSION = "0.1.0"
#: The login cookie (see bridge.web.console.TOKEN_COOKIE); a bearer token works everywhere.
TOKEN_COOKIE = "ucb_token"
JSON = "application/json"
#: Where a declaration and the required roles are kept on a handler function.
OPERATION_ATTRIBUTE = "__openapi_operation__"
ROLES_ATTRIBUTE = "__openapi_roles__"
UNDOCUMENTED = (
    "Undocumented: this route declares no schema (bridge.web.openapi.operation); "
    "its answers are not described."
)
_SCHEMA_REF = "#/components/schemas/{model}"
_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE"})
_SKIPPED_PREFIXES = ("/socket.io",)
_DEFAULT_SEGMENT = "[^{}/]+"
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    303: "See Other",
    400: "Bad request: the body is not JSON, or a query parameter is malformed",
    401: "Not authenticated: no token, or a bad or expired one",
    403: "Forbidden: the token's role may not do this",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    422: "Unprocessable: the body does not match the schema (the first bad field is named)",
    429: "Too many requests",
    502: "A gateway failed",
    503: "Unavailable: a media worker or gateway cannot take it now",
}

F = TypeVar("F", bound=Callable[..., Any])
ModelType = type[BaseModel]


class Error(BaseModel):
    """Every error answer: ``{"error": reason}`` (maybe with more fields)."""

    model_config = ConfigDict(extra="allow")

    error: str


class Empty(BaseModel):
    """An empty JSON object."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Operation:
    """What a handler declares: its summary, body, query and answers."""

    summary: str
    description: str = ""
    request: ModelType | None = None
    query: ModelType | None = None
    #: status → JSON model of the answer; None: the answer is not JSON (see ``content``).
    responses: Mapping[int, ModelType | None] = field(default_factory=dict)
    #: Media type of non-JSON success answers (a file, a stream, Prometheus text).
    content: str | None = None
    tags: tuple[str, ...] = ()
    public: bool = False


def operation(
    summary: str,
    *,
    request: ModelType | None = None,
    response: ModelType | None = None,
    status: int = 200,
    responses: Mapping[int, ModelType | None] | None = None,
    errors: Iterable[int] = (),
    query: ModelType | None = None,
    content: str | None = None,
    description: str = "",
    tags: Iterable[str] = (),
    public: bool = False,
) -> Callable[[F], F]:
    """Declare a handler's request and response models for the OpenAPI document.

    ``response`` is the JSON model of the ``status`` answer (or give several in
    ``responses``); ``errors`` are further statuses answered with :class:`Error`;
    ``content`` names the media type of a success answer that is not JSON; ``public``
    says the route needs no token even though it is not guarded by ``require``.
    """
    answers: dict[int, ModelType | None] = {status: response}
    answers.update(responses or {})
    for code in errors:
        answers.setdefault(code, Error)
    declared = Operation(
        summary=summary,
        description=description,
        request=request,
        query=query,
        responses=answers,
        content=content,
        tags=tuple(tags),
        public=public,
    )

    def mark(handler: F) -> F:
        setattr(handler, OPERATION_ATTRIBUTE, declared)
        return handler

    return mark


def mark_roles(handler: F, roles: Iterable[Any]) -> F:
    """Record the roles a guarded handler needs (called by ``require``)."""
    setattr(handler, ROLES_ATTRIBUTE, tuple(str(role) for role in roles))
    return handler


def declared(handler: Any) -> Operation | None:
    """The handler's declaration, if it made one (bound methods included)."""
    value = getattr(handler, OPERATION_ATTRIBUTE, None)
    return value if isinstance(value, Operation) else None


def _roles(handler: Any) -> tuple[str, ...] | None:
    value = getattr(handler, ROLES_ATTRIBUTE, None)
    return value if isinstance(value, tuple) else None


# ------------------------------------------------------------------ request bodies
def _json_error(error: type[web.HTTPException], reason: str) -> web.HTTPException:
    return error(text=web.json_response({"error": reason}).text, content_type=JSON)


def validation_reason(exc: ValidationError, whole: str = "body") -> str:
    """The first problem of a pydantic error as ``"field.path: message"`` (``whole``: the
    name of the validated value itself)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    return f"{where}: {first['msg']}"


M = TypeVar("M", bound=BaseModel)


def parse_body(data: Any, schema: type[M]) -> M:
    """Validate decoded JSON against ``schema``; raise 422 naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _json_error(web.HTTPUnprocessableEntity, validation_reason(exc)) from None


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; raise 400 when it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "request body is not valid JSON") from None


async def read_body(request: web.Request, schema: type[M]) -> M:
    """The request's JSON body validated against ``schema`` (400 / 422 with the reason)."""
    return parse_body(await read_json(request), schema)


# ------------------------------------------------------------------ the document
def _group_patterns(pattern: str) -> dict[str, str]:
    """``{name: regex}`` of each named group of an aiohttp route pattern."""
    found: dict[str, str] = {}
    for match in re.finditer(r"\(\?P<(\w+)>", pattern):
        depth, start = 1, match.end()
        i = start
        while i < len(pattern) and depth:
            if pattern[i] == "\\":
                i += 2
                continue
            depth += {"(": 1, ")": -1}.get(pattern[i], 0)
            i += 1
        found[match.group(1)] = pattern[start : i - 1]
    return found


def _parameters(resource: web.AbstractResource, query: ModelType | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    info = resource.get_info()
    compiled = info.get("pattern")
    patterns = _group_patterns(compiled.pattern) if compiled is not None else {}
    for name in re.findall(r"\{(\w+)", resource.canonical):
        schema: dict[str, Any] = {"type": "string"}
        pattern = patterns.get(name, _DEFAULT_SEGMENT)
        if pattern != _DEFAULT_SEGMENT:
            schema["pattern"] = f"^{pattern}$"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if query is not None:
        schema = query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            entry: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
            }
            if "description" in prop:
                entry["description"] = prop["description"]
            params.append(entry)
    return params


@dataclass
class _Schemas:
    """Collects models and renders them as components with one reference each."""

    wanted: list[tuple[ModelType, JsonSchemaMode]] = field(default_factory=list)

    def ref(self, model: ModelType, mode: JsonSchemaMode) -> tuple[ModelType, JsonSchemaMode]:
        key = (model, mode)
        if key not in self.wanted:
            self.wanted.append(key)
        return key

    def render(self) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
        if not self.wanted:
            return {}, {}
        refs, defs = models_json_schema(self.wanted, ref_template=_SCHEMA_REF)
        return dict(refs), dict(defs.get("$defs", {}))


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{words}" if words else method.lower()


def _answer(
    status: int, model: ModelType | None, content: str | None, schemas: _Schemas
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Answer")}
    if model is not None:
        answer["content"] = {JSON: {"schema": schemas.ref(model, "serialization")}}
    elif content is not None and status < 300:
        answer["content"] = {content: {"schema": {"type": "string"}}}
    return answer


def _describe(
    method: str,
    resource: web.AbstractResource,
    handler: Any,
    schemas: _Schemas,
) -> dict[str, Any]:
    declaration = declared(handler)
    roles = _roles(handler)
    path = resource.canonical
    op: dict[str, Any] = {"operationId": _operation_id(method, path)}
    if declaration is None:
        op["summary"] = getattr(handler, "__name__", "handler").replace("_", " ")
        op["description"] = UNDOCUMENTED
        op["x-undocumented"] = True
        op["parameters"] = _parameters(resource, None)
        op["responses"] = {"default": {"description": UNDOCUMENTED}}
    else:
        op["summary"] = declaration.summary
        if declaration.description:
            op["description"] = declaration.description
        if declaration.tags:
            op["tags"] = list(declaration.tags)
        op["parameters"] = _parameters(resource, declaration.query)
        answers = dict(declaration.responses)
        if declaration.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": schemas.ref(declaration.request, "validation")}},
            }
            answers.setdefault(400, Error)
            answers.setdefault(422, Error)
        if declaration.query is not None:
            answers.setdefault(400, Error)
        if roles is not None:
            answers.setdefault(401, Error)
            answers.setdefault(403, Error)
        op["responses"] = {
            str(status): _answer(status, model, declaration.content, schemas)
            for status, model in sorted(answers.items())
        }
    if not op["parameters"]:
        del op["parameters"]
    if roles is not None:
        op["security"] = [{"bearer": []}, {"cookie": []}]
        op["x-roles"] = sorted({*roles, "admin"})
        note = f"Roles: {', '.join(op['x-roles'])}."
        op["description"] = f"{op.get('description', '')}\n\n{note}".strip()
    elif declaration is not None and declaration.public:
        op["security"] = []
    return op


def _resolve(value: Any, refs: Mapping[Any, dict[str, Any]]) -> Any:
    """Replace the (model, mode) placeholders by their ``$ref`` schemas."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], type):
        return refs[value]
    if isinstance(value, dict):
        return {k: _resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, refs) for v in value]
    return value


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route registered on ``app``."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        method = route.method.upper()
        if resource is None or method not in _METHODS:
            continue
        if isinstance(resource, web.StaticResource):
            continue
        path = resource.canonical
        if path.startswith(_SKIPPED_PREFIXES):
            continue
        paths.setdefault(path, {})[method.lower()] = _describe(
            method, resource, route.handler, schemas
        )
    refs, components = schemas.render()
    components.setdefault(Error.__name__, Error.model_json_schema())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": (__doc__ or "").split("\n\n")[0],
        },
        "paths": _resolve(paths, refs),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE},
            },
        },
    }


def setup(app: web.Application) -> None:
    """Serve :func:`document` at :data:`DOCUMENT_PATH`, built once on the first request."""
    built: list[dict[str, Any]] = []

    @operation("This OpenAPI 3.1 document", content=JSON, public=True, tags=("meta",))
    async def openapi_document(request: web.Request) -> web.Response:
        if not built:  # the router is frozen once the app serves
            built.append(document(request.app))
        return web.json_response(built[0])

    app.router.add_get(DOCUMENT_PATH, openapi_document)
