"""The link between the control process and a gateway process.

DESIGN.md, "Processes": gateways with media stacks of their own (pjsua2, aiortc, PyAV)
run in processes of their own. Each talks to the control process over one Unix stream
socket, in frames of a 4-byte big-endian length followed by one JSON object:

- a request: ``{"id": 7, "op": "join", "args": {...}}``;
- its reply: ``{"id": 7, "ok": true, "result": ...}`` or
  ``{"id": 7, "ok": false, "error": "unknown room: x", "kind": "NotFound"}``;
- an event, which has no reply: ``{"event": {...}}``.

Either end may send requests and events. Requests are served concurrently, each in a
task of its own, so a slow handler never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("bridge.gatewaylink")

#: The length prefix of a frame.
HEADER = struct.Struct("!I")
#: Frames above this are refused (a camera snapshot, base64, is well below it).
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: How long a request waits for its reply.
REQUEST_TIMEOUT_S = 10.0
#: A request for an op the other end has not registered yet waits this long for it (a
#: gateway registers its ops as it starts, after it has asked for its configuration).
UNKNOWN_OP_GRACE_S = 5.0

#: The kinds of refusal a handler may answer with, as the web layer maps them to HTTP.
ERROR_KINDS = ("NotFound", "Conflict", "Invalid", "Forbidden", "Busy", "Unavailable", "Error")

Handler = Callable[..., Awaitable[Any]]
EventCallback = Callable[[dict[str, Any]], None]


class LinkError(RuntimeError):
    """A request was refused by the other end, or the link is gone.

    ``kind`` is one of :data:`ERROR_KINDS`.
    """

    def __init__(self, message: str, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind if kind in ERROR_KINDS else "Error"


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length, then the JSON object."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"gateway link frame is too large: {len(body)} bytes")
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next frame's object; IncompleteReadError at the end of the stream."""
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"gateway link frame is too large: {length} bytes")
    message = json.loads(await reader.readexactly(length))
    if not isinstance(message, dict):
        raise ValueError("gateway link frame is not a JSON object")
    return message


class GatewayLink:
    """One end of a gateway link, over a connected stream."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str = ""
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._handlers: dict[str, Handler] = {}
        self._registered = asyncio.Condition()
        self._event_callbacks: list[EventCallback] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._reading = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def from_socket(cls, sock: Any, name: str = "") -> GatewayLink:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME_BYTES)
        return cls(reader, writer, name)

    # ---------------------------------------------------------------- sending
    async def request(self, op: str, **args: Any) -> Any:
        """Ask the other end to do ``op``; its result, or LinkError."""
        if self._closed.is_set():
            raise LinkError(f"gateway link {self.name} is closed", "Unavailable")
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self._writer.write(encode({"id": ident, "op": op, "args": args}))
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise LinkError(f"gateway link {self.name}: no answer to {op}", "Unavailable") from None
        finally:
            self._pending.pop(ident, None)

    def notify(self, event: dict[str, Any]) -> None:
        """Send an event; nothing comes back."""
        if not self._closed.is_set():
            self._writer.write(encode({"event": event}))

    # -------------------------------------------------------------- receiving
    def serve(self, op: str, handler: Handler) -> None:
        """Answer the other end's ``op`` requests with ``handler(**args)``."""
        self._handlers[op] = handler
        asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        async with self._registered:
            self._registered.notify_all()

    async def _handler(self, op: str) -> Handler | None:
        if op not in self._handlers:
            async with self._registered:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._registered.wait_for(lambda: op in self._handlers),
                        UNKNOWN_OP_GRACE_S,
                    )
        return self._handlers.get(op)

    def on_event(self, callback: EventCallback) -> None:
        self._event_callbacks.append(callback)

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await read_frame(self._reader)
                if "event" in message:
                    self._event(message["event"])
                elif "op" in message:
                    task = asyncio.get_running_loop().create_task(self._answer(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    self._reply(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ValueError as exc:
            logger.error("gateway link %s: bad frame, closing: %s", self.name, exc)
        finally:
            self._shut()

    def _event(self, event: Any) -> None:
        for callback in list(self._event_callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("gateway link %s: event callback failed", self.name)

    def _reply(self, message: dict[str, Any]) -> None:
        future = self._pending.get(message.get("id", -1))
        if future is None or future.done():
            return
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            future.set_exception(
                LinkError(str(message.get("error", "")), str(message.get("kind", "Error")))
            )

    async def _answer(self, message: dict[str, Any]) -> None:
        op = str(message["op"])
        reply: dict[str, Any] = {"id": message.get("id")}
        handler = await self._handler(op)
        try:
            if handler is None:
                raise LinkError(f"unknown gateway link op: {op}", "Invalid")
            reply.update(ok=True, result=await handler(**dict(message.get("args") or {})))
        except LinkError as exc:
            reply.update(ok=False, error=str(exc), kind=exc.kind)
        except (ValueError, TypeError) as exc:
            reply.update(ok=False, error=str(exc), kind="Invalid")
        except Exception as exc:
            logger.exception("gateway link %s: %s failed", self.name, op)
            reply.update(ok=False, error=f"{op} failed: {type(exc).__name__}", kind="Error")
        if not self._closed.is_set():
            try:
                self._writer.write(encode(reply))
            except ValueError as exc:
                self._writer.write(
                    encode({"id": reply["id"], "ok": False, "error": str(exc), "kind": "Error"})
                )

    # -------------------------------------------------------------- lifecycle
    def _shut(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkError(f"gateway link {self.name} closed", "Unavailable"))
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        self._reading.cancel()
        self._shut()
