"""The control side of the core: rooms, participants and the media workers behind them.

This runs in the control process. It keeps rooms and participants in the state store,
places rooms on media workers, drives the workers over their local channel, restarts a
worker that dies (rehydrating its rooms from the state store) and fans the workers'
events out to subscribers (the web layer). It never touches media itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import channel
from .config import Config, without_secrets
from .gatewayhost import GatewayHost
from .model import Participant, Patch, Room, RoomMode, new_id
from .recording import RecorderService
from .state import MemoryStateStore, StateStore

logger = logging.getLogger("bridge.control")

#: How long a command may wait for a worker's reply.
COMMAND_TIMEOUT_S = 5.0
#: How long a starting worker may take to say it is ready.
START_TIMEOUT_S = 20.0
#: How often the control process checks on the recorder.
SUPERVISE_INTERVAL_S = 1.0
#: Events kept for late readers (/api/events and tests).
EVENT_HISTORY = 1000

Subscriber = Callable[[dict[str, Any]], None]


class NotFoundError(KeyError):
    """An unknown room or participant."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConflictError(ValueError):
    """The request conflicts with the current state."""


class WorkerError(RuntimeError):
    """A media worker refused or failed a command."""

    def __init__(self, message: str, kind: str = "WorkerError") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class WorkerHandle:
    index: int
    state: str = "starting"
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    restarts: int = 0
    rtp_port: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Control:
    """The core's facade for the web layer and the gateways."""

    def __init__(self, config: Config, store: StateStore | None = None) -> None:
        self.config = config
        self.store = store or MemoryStateStore()
        self.workers = [WorkerHandle(index=i) for i in range(config.media.workers)]
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_HISTORY)
        self._subscribers: list[Subscriber] = []
        self._ids = itertools.count(1)
        self._stopping = False
        self._restart_tasks: set[asyncio.Task[None]] = set()
        self.recorder: RecorderService | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._standby: tuple[subprocess.Popen[bytes], socket.socket] | None = None
        self.epoch = new_id()
        self.alerts: dict[str, dict[str, Any]] = {}
        self.sequence = 0
        #: (worker, ip, port) → (room id, participant id) of the leg that declared it.
        self._rtp_remotes: dict[tuple[int, str, int], tuple[str, str]] = {}
        #: The gateway processes (SIP, WebRTC, camera): see bridge.gatewayhost.
        self.gateways = GatewayHost(self)

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.recorder is None:
            self.recorder = RecorderService(self.config)
            self.recorder.start(len(self.workers))
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        await self.gateways.start()
        for room_config in self.config.rooms:
            if await self.find_room(room_config.name) is None:
                await self.create_room(
                    room_config.name,
                    room_config.mode,
                    room_config.record,
                    room_config.floor.model_dump(),
                    monitor_to_mix=room_config.monitor_to_mix,
                )

    async def _supervise(self) -> None:
        """Restart a dead recorder; the workers then re-announce what they record."""
        while not self._stopping:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            if self.recorder is not None and self.recorder.supervise():
                self.publish({"event": "recorder_restarted", "pid": self.recorder.health()["pid"]})
                for worker in self.workers:
                    if worker.state == "running":
                        with contextlib.suppress(WorkerError):
                            await self.command(
                                worker.index, "recorder", ring=self.recorder.ring_name(worker.index)
                            )

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self.gateways.stop()
        for task in list(self._restart_tasks):
            task.cancel()
        for worker in self.workers:
            await self._stop_worker(worker)
        if self._standby is not None:
            process, sock = self._standby
            sock.close()  # EOF: the standby exits
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 5)
            except TimeoutError:
                process.kill()
            self._standby = None
        if self.recorder is not None:
            self.recorder.stop()

    async def _stop_worker(self, worker: WorkerHandle) -> None:
        worker.state = "stopped"
        proc = worker.process
        if worker.sock is not None:
            with contextlib.suppress(OSError):
                worker.sock.send(channel.encode({"op": "stop", "id": 0}))
        if proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 5)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._close_channel(worker)

    def _close_channel(self, worker: WorkerHandle) -> None:
        if worker.sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(worker.sock.fileno())
            worker.sock.close()
            worker.sock = None
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(WorkerError(f"worker {worker.index} went away"))
        worker.pending.clear()

    def _start_process(self, index: int | None) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Start a worker process: for ``index``, or a standby (None) that waits to be told."""
        control_end, worker_end = channel.socket_pair()
        role = ["--standby"] if index is None else ["--index", str(index)]
        process = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "bridge.worker",
                "--fd",
                str(worker_end.fileno()),
                *role,
                "--config",
                json.dumps(without_secrets(self.config)),
                "--log-level",
                logging.getLevelName(logging.getLogger().level),
            ],
            pass_fds=[worker_end.fileno()],
        )
        worker_end.close()
        control_end.setblocking(False)
        return process, control_end

    def _prepare_standby(self) -> None:
        """Keep one worker process started and idle, so a restart skips start-up."""
        if self._standby is None and not self._stopping:
            self._standby = self._start_process(None)

    async def _spawn(self, worker: WorkerHandle) -> None:
        if worker.restarts and self._standby is not None:
            # A standby has paid the interpreter's start-up already: give it the index.
            worker.process, worker.sock = self._standby
            self._standby = None
            worker.sock.send(channel.encode({"op": "activate", "index": worker.index}))
        else:
            worker.process, worker.sock = self._start_process(worker.index)
        worker.ready = asyncio.Event()
        worker.state = "starting"
        worker.started_at = time.time()
        loop = asyncio.get_running_loop()
        loop.add_reader(worker.sock.fileno(), self._readable, worker)
        try:
            await asyncio.wait_for(worker.ready.wait(), START_TIMEOUT_S)
        except TimeoutError:
            raise WorkerError(
                f"worker {worker.index} did not start in {START_TIMEOUT_S} s"
            ) from None
        if self.recorder is not None:
            await self.command(worker.index, "recorder", ring=self.recorder.ring_name(worker.index))
        rooms = await self.store.rooms_of_worker(worker.index)
        await self.command(
            worker.index,
            "hydrate",
            rooms=[r.to_dict() for r in rooms],
            patches=await self._patch_groups(worker.index),
        )
        worker.state = "running"
        self._prepare_standby()

    def _readable(self, worker: WorkerHandle) -> None:
        sock = worker.sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(channel.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._worker_died(worker)
                return
            self._dispatch(worker, channel.decode(data))

    def _dispatch(self, worker: WorkerHandle, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "reply":
            future = worker.pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "ready":
            worker.rtp_port = message["rtp_port"]
            worker.ready.set()
        elif kind == "stats":
            worker.stats = message["stats"]
        elif kind == "event":
            message.pop("kind")
            self.publish(message)
            if message.get("event") == "floor_emergency":
                self._raise_alert(message)

    def _worker_died(self, worker: WorkerHandle) -> None:
        self._close_channel(worker)
        if self._stopping or worker.state == "stopped":
            return
        code = worker.process.poll() if worker.process else None
        logger.error(
            "media worker %d (pid %s) died (exit %s); restarting", worker.index, worker.pid, code
        )
        worker.state = "restarting"
        self.publish(
            {"event": "worker_died", "worker": worker.index, "pid": worker.pid, "exit": code}
        )
        task = asyncio.get_running_loop().create_task(self._restart(worker))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, worker: WorkerHandle) -> None:
        if worker.process is not None:
            await asyncio.to_thread(worker.process.wait)
        worker.restarts += 1
        try:
            await self._spawn(worker)
        except WorkerError:
            logger.exception("media worker %d failed to restart", worker.index)
            worker.state = "failed"
            return
        logger.info("media worker %d restarted as pid %s", worker.index, worker.pid)
        self.publish(
            {
                "event": "worker_restarted",
                "worker": worker.index,
                "pid": worker.pid,
                "restarts": worker.restarts,
            }
        )

    # ----------------------------------------------------------------- events
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: dict[str, Any]) -> None:
        self.sequence += 1
        event = {**event, "epoch": self.epoch, "seq": self.sequence, "time": time.time()}
        self.events.append(event)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber failed")

    # --------------------------------------------------------------- commands
    async def command(self, index: int, op: str, **args: Any) -> Any:
        worker = self.workers[index]
        if worker.sock is None:
            raise WorkerError(f"worker {index} is not running ({worker.state})", "Unavailable")
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[ident] = future
        try:
            worker.sock.send(channel.encode({"op": op, "id": ident, **args}))
            reply = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        except TimeoutError:
            raise WorkerError(f"worker {index} did not answer {op}", "Unavailable") from None
        finally:
            worker.pending.pop(ident, None)
        if not reply["ok"]:
            raise WorkerError(reply["error"], reply.get("error_type", "WorkerError"))
        return reply.get("result")

    async def _running_command(self, index: int, op: str, **args: Any) -> Any:
        """A command for a worker that may be restarting: wait for it a little."""
        worker = self.workers[index]
        if worker.state != "running":
            deadline = time.monotonic() + START_TIMEOUT_S
            while worker.state != "running" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return await self.command(index, op, **args)

    # ------------------------------------------------------------------ rooms
    async def list_rooms(self) -> list[Room]:
        return await self.store.list_rooms()

    async def find_room(self, name_or_id: str) -> Room | None:
        room = await self.store.get_room(name_or_id)
        if room is not None:
            return room
        return await self.store.find_room_by_name(name_or_id)

    async def get_room(self, name_or_id: str) -> Room:
        room = await self.find_room(name_or_id)
        if room is None:
            raise NotFoundError(f"unknown room: {name_or_id}")
        return room

    async def _place(self) -> int:
        """The least loaded running worker: fewest legs, then fewest rooms, then p99 work.

        Legs and rooms are counted in the state store, which is current at once; a
        worker's own figures arrive once a second.
        """
        legs = collections.Counter[int]()
        rooms = collections.Counter[int]()
        for room in await self.store.list_rooms():
            rooms[room.worker] += 1
            legs[room.worker] += len(room.participants)

        def load(w: WorkerHandle) -> tuple[int, int, float]:
            p99 = float(w.stats.get("tick", {}).get("work_p99_ms", 0.0))
            return legs[w.index], rooms[w.index], p99

        candidates = [w for w in self.workers if w.state == "running"] or self.workers
        return min(candidates, key=load).index

    async def create_room(
        self,
        name: str,
        mode: RoomMode = RoomMode.OPEN,
        record: bool = False,
        floor: dict[str, Any] | None = None,
        *,
        monitor_to_mix: bool = False,
    ) -> Room:
        if await self.find_room(name) is not None:
            raise ConflictError(f"room already exists: {name}")
        room = Room(
            id=new_id(),
            name=name,
            mode=mode,
            record=record,
            floor=dict(floor or {}),
            rate=self.config.media.room_rate,
            worker=await self._place(),
            monitor_to_mix=monitor_to_mix,
        )
        await self.store.put_room(room)
        try:
            await self._running_command(
                room.worker,
                "add_room",
                room=room.id,
                name=name,
                mode=str(mode),
                record=record,
                floor=room.floor,
                monitor_to_mix=monitor_to_mix,
            )
        except WorkerError:
            await self.store.delete_room(room.id)
            raise
        self.publish(
            {
                "event": "room_created",
                "room": room.id,
                "name": name,
                "mode": str(mode),
                "record": record,
                "worker": room.worker,
                "monitor_to_mix": monitor_to_mix,
            }
        )
        return room

    async def delete_room(self, name_or_id: str) -> None:
        room = await self.get_room(name_or_id)
        patched = await self._drop_patches_of(room)
        await self.store.delete_room(room.id)
        await self._running_command(room.worker, "remove_room", room=room.id)
        if patched:
            await self._apply_patches(room.worker)
        self.publish({"event": "room_deleted", "room": room.id})

    async def set_recording(self, name_or_id: str, record: bool) -> Room:
        room = await self.get_room(name_or_id)
        room.record = record
        await self.store.put_room(room)
        await self._running_command(room.worker, "set_record", room=room.id, record=record)
        self.publish({"event": "recording", "room": room.id, "recording": record})
        return room

    # ----------------------------------------------------------- participants
    async def join(self, room_name: str, leg: Participant) -> tuple[Participant, dict[str, Any]]:
        """Join a leg to a room: the core call every gateway makes.

        ``leg`` says what the gateway negotiated (kind, codec, payload types, remote
        address); the core gives it an id, places it on the room's worker and keeps it in
        the state store. Returns the stored participant and the worker's media answer
        (its RTP/RTCP address and the SSRC it sends with).
        """
        room = await self.get_room(room_name)
        participant = dataclasses.replace(leg, id=new_id(), room=room.id, worker=room.worker)
        # A worker demultiplexes RTP by source address: two legs declaring one address would
        # leave one of them deaf. Refused, unless both latch (symmetric RTP, RFC 4961): a
        # latching leg is re-pointed to the port its packets really come from.
        remote = leg.remote
        key = (room.worker, remote.ip, remote.port) if remote is not None else None
        if remote is not None and key in self._rtp_remotes:
            room_id, other_id = self._rtp_remotes[(room.worker, remote.ip, remote.port)]
            holder = room if room_id == room.id else await self.store.get_room(room_id)
            other = holder.participants.get(other_id) if holder is not None else None
            if (
                holder is not None
                and other is not None
                and holder.worker == room.worker
                and other.remote == remote
                and not (other.latch and leg.latch)
            ):
                raise ConflictError(
                    f"RTP address {remote.ip}:{remote.port} is already used by participant "
                    f"{other.id} in room {holder.name}"
                )
        if key is not None:
            self._rtp_remotes[key] = (room.id, participant.id)
        try:
            result = await self._running_command(
                room.worker, "join", participant=participant.to_dict()
            )
        except BaseException:
            if key is not None and self._rtp_remotes.get(key) == (room.id, participant.id):
                del self._rtp_remotes[key]
            raise
        await self.store.put_participant(participant)
        self.publish(
            {
                "event": "joined",
                "room": room.id,
                "participant": participant.id,
                "kind": str(participant.kind),
                "name": participant.name,
            }
        )
        return participant, result

    async def leave(self, room_name: str, participant_id: str) -> None:
        room = await self.get_room(room_name)
        if participant_id not in room.participants:
            raise NotFoundError(f"unknown participant: {participant_id}")
        remote = room.participants[participant_id].remote
        if remote is not None:
            key = (room.worker, remote.ip, remote.port)
            if self._rtp_remotes.get(key) == (room.id, participant_id):
                del self._rtp_remotes[key]
        await self.store.delete_participant(room.id, participant_id)
        await self._running_command(room.worker, "leave", participant=participant_id)
        self.publish({"event": "left", "room": room.id, "participant": participant_id})

    async def update_participant(
        self,
        room_name: str,
        participant_id: str,
        *,
        gain: float | None = None,
        muted: bool | None = None,
    ) -> Participant:
        room = await self.get_room(room_name)
        participant = room.participants.get(participant_id)
        if participant is None:
            raise NotFoundError(f"unknown participant: {participant_id}")
        if gain is not None:
            participant.gain = gain
        if muted is not None:
            participant.muted = muted
        await self.store.put_participant(participant)
        await self._running_command(
            room.worker, "set_leg", participant=participant_id, gain=gain, muted=muted
        )
        self.publish(
            {
                "event": "participant_updated",
                "room": room.id,
                "participant": participant_id,
                "gain": participant.gain,
                "muted": participant.muted,
                "receive_only": participant.receive_only,
            }
        )
        return participant

    async def participant_stats(self, room_name: str, participant_id: str) -> dict[str, Any]:
        room = await self.get_room(room_name)
        if participant_id not in room.participants:
            raise NotFoundError(f"unknown participant: {participant_id}")
        result: dict[str, Any] = await self._running_command(
            room.worker, "leg_stats", participant=participant_id
        )
        return result

    # ------------------------------------------------------------------ floor
    async def _floor(self, room_name: str, op: str, **args: Any) -> Any:
        room = await self.get_room(room_name)
        if room.mode is not RoomMode.PTT:
            raise ConflictError(f"room has no floor control (mode {room.mode}): {room.name}")
        participant = args.get("participant")
        if participant is not None and participant not in room.participants:
            raise NotFoundError(f"unknown participant: {participant}")
        return await self._running_command(room.worker, op, room=room.id, **args)

    async def floor_request(
        self,
        room: str,
        participant: str,
        *,
        priority: int | None = None,
        call_type: str = "normal",
    ) -> dict[str, Any]:
        """A floor request (TS 24.380 §6.3): granted, queued (with position) or denied."""
        result: dict[str, Any] = await self._floor(
            room,
            "floor_request",
            participant=participant,
            priority=priority,
            call_type=call_type,
        )
        return result

    async def floor_release(self, room: str, participant: str) -> None:
        await self._floor(room, "floor_release", participant=participant)

    async def floor_revoke(self, room: str, cause: int = 255) -> None:
        await self._floor(room, "floor_revoke", cause=cause)

    async def floor_grant_to(self, room: str, participant: str) -> None:
        await self._floor(room, "floor_grant_to", participant=participant)

    async def floor_override(self, room: str, participant: str, call_type: str = "normal") -> None:
        await self._floor(room, "floor_override", participant=participant, call_type=call_type)

    async def floor_receive_only(self, room: str, participant: str, receive_only: bool) -> None:
        await self._floor(
            room, "floor_receive_only", participant=participant, receive_only=receive_only
        )

    async def floor_state(self, room: str) -> dict[str, Any]:
        state: dict[str, Any] = await self._floor(room, "floor_state")
        return state

    # ------------------------------------------------- patches and monitoring
    # Talkgroup patches and a dispatcher's monitored rooms are edits of the mixing matrix
    # of one media worker (DESIGN.md, "The mix is one sparse matrix"): rooms are sharded
    # by dispatch domain so that both stay inside one worker.

    async def list_patches(self) -> list[Patch]:
        return await self.store.list_patches()

    async def create_patch(self, rooms: list[str], by: str = "") -> Patch:
        """Patch rooms together: audio and floor joined until :meth:`delete_patch`.

        Refused (ConflictError) when a room is named twice, the rooms are on different
        media workers or differ in mode, or the patch would close a cycle in the patch
        graph (DESIGN.md: patches are checked for cycles before they are applied).
        """
        found = [await self.get_room(name) for name in rooms]
        ids = [room.id for room in found]
        if len(found) < 2:
            raise ConflictError("a patch needs at least two rooms")
        twice = next((room for i, room in enumerate(found) if room.id in ids[:i]), None)
        if twice is not None:
            raise ConflictError(f"a room cannot be patched with itself: {twice.name}")
        workers = sorted({room.worker for room in found})
        if len(workers) > 1:
            raise ConflictError(
                "rooms are on different media workers ("
                + ", ".join(f"{room.name} on {room.worker}" for room in found)
                + "); patches stay inside one worker"
            )
        modes = {room.mode for room in found}
        if len(modes) > 1:
            raise ConflictError("rooms of a patch must have the same mode (open or ptt)")
        patches = await self.store.list_patches()
        component = _patch_components(patches)
        for i, a in enumerate(found):
            for b in found[i + 1 :]:
                if component.get(a.id, a.id) == component.get(b.id, b.id):
                    raise ConflictError(
                        f"patch would close a cycle: {a.name} and {b.name} are already patched "
                        "together"
                    )
        patch = Patch(id=new_id(), rooms=ids, worker=workers[0], created=time.time(), created_by=by)
        await self.store.put_patch(patch)
        try:
            await self._apply_patches(patch.worker)
        except WorkerError:
            await self.store.delete_patch(patch.id)
            raise
        self.publish({"event": "patch_created", "room": ids[0], "patch": patch.to_dict()})
        return patch

    async def delete_patch(self, patch_id: str) -> Patch:
        patch = next((p for p in await self.store.list_patches() if p.id == patch_id), None)
        if patch is None:
            raise NotFoundError(f"unknown patch: {patch_id}")
        await self.store.delete_patch(patch_id)
        await self._apply_patches(patch.worker)
        self.publish({"event": "patch_removed", "room": patch.rooms[0], "patch": patch.to_dict()})
        return patch

    async def _patch_groups(self, worker: int) -> list[list[str]]:
        """The patch groups of a worker's rooms; each group's anchor (its first room, whose
        floor settings the group's one floor uses) is the first room of its oldest patch."""
        patches = [p for p in await self.store.list_patches() if p.worker == worker]
        patches.sort(key=lambda p: p.created)
        component = _patch_components(patches)
        groups: dict[str, list[str]] = {}
        for patch in patches:
            group = groups.setdefault(component[patch.rooms[0]], [])
            group.extend(room for room in patch.rooms if room not in group)
        return list(groups.values())

    async def _apply_patches(self, worker: int) -> None:
        await self._running_command(worker, "set_patches", groups=await self._patch_groups(worker))

    async def _drop_patches_of(self, room: Room) -> bool:
        """A room is going away: its patches go with it (True: it had some)."""
        dropped = False
        for patch in await self.store.list_patches():
            if room.id in patch.rooms:
                await self.store.delete_patch(patch.id)
                dropped = True
                self.publish(
                    {"event": "patch_removed", "room": patch.rooms[0], "patch": patch.to_dict()}
                )
        return dropped

    async def set_monitor(
        self,
        room_name: str,
        participant_id: str,
        rooms: dict[str, float],
        priority_room: str | None = None,
        duck_db: float | None = None,
    ) -> Participant:
        """What a dispatcher leg monitors besides its room, at what volume, and which room
        has priority (ducking the others while it has a live source). ``rooms`` maps room
        names or ids to linear gains; its own room may be given to set its volume."""
        room = await self.get_room(room_name)
        participant = room.participants.get(participant_id)
        if participant is None:
            raise NotFoundError(f"unknown participant: {participant_id}")
        if not participant.dispatcher:
            raise ConflictError(f"participant is not a dispatcher leg: {participant_id}")
        monitor: dict[str, float] = {}
        for name, gain in rooms.items():
            other = await self.get_room(name)
            if other.worker != room.worker:
                raise ConflictError(
                    f"room {other.name} is on media worker {other.worker}, the dispatcher's "
                    f"room on {room.worker}; monitoring stays inside one worker"
                )
            monitor[other.id] = float(gain)
        priority = None
        if priority_room is not None:
            priority = (await self.get_room(priority_room)).id
            if priority != room.id and priority not in monitor:
                raise ConflictError(
                    f"priority room is neither the dispatcher's room nor monitored: {priority_room}"
                )
        participant.monitor = monitor
        participant.priority_room = priority
        if duck_db is not None:
            participant.duck_db = duck_db
        await self._running_command(
            room.worker,
            "set_monitor",
            participant=participant_id,
            monitor=monitor,
            priority_room=priority,
            duck_db=participant.duck_db,
        )
        await self.store.put_participant(participant)
        self.publish(
            {
                "event": "monitor_updated",
                "room": room.id,
                "participant": participant_id,
                "monitor": monitor,
                "priority_room": priority,
                "duck_db": participant.duck_db,
            }
        )
        return participant

    # ----------------------------------------------------------------- alerts
    def _raise_alert(self, event: dict[str, Any]) -> None:
        """An emergency or imminent-peril request raises an alert for dispatchers."""
        alert = {
            "id": new_id(),
            "room": event.get("room"),
            "participant": event.get("participant"),
            "alias": event.get("alias", ""),
            "user_id": event.get("user_id", ""),
            "call_type": event.get("call_type", "emergency"),
            "location": event.get("location"),
            "raised": time.time(),
            "state": "active",
        }
        self.alerts[alert["id"]] = alert
        self.publish({"event": "emergency_raised", "alert": dict(alert), "room": alert["room"]})

    def _alert(self, alert_id: str) -> dict[str, Any]:
        try:
            return self.alerts[alert_id]
        except KeyError:
            raise NotFoundError(f"unknown alert: {alert_id}") from None

    def acknowledge_alert(self, alert_id: str, by: str) -> dict[str, Any]:
        alert = self._alert(alert_id)
        if alert["state"] == "cleared":
            raise ConflictError(f"alert is already cleared: {alert_id}")
        alert.update(state="acknowledged", acknowledged_by=by, acknowledged=time.time())
        self.publish(
            {"event": "emergency_acknowledged", "alert": dict(alert), "room": alert["room"]}
        )
        return alert

    def clear_alert(self, alert_id: str, by: str) -> dict[str, Any]:
        alert = self._alert(alert_id)
        if alert["state"] == "cleared":
            raise ConflictError(f"alert is already cleared: {alert_id}")
        alert.update(state="cleared", cleared_by=by, cleared=time.time())
        self.publish({"event": "emergency_cleared", "alert": dict(alert), "room": alert["room"]})
        return alert

    # ----------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        workers = []
        for w in self.workers:
            tick = w.stats.get("tick", {})
            workers.append(
                {
                    "index": w.index,
                    "pid": w.pid,
                    "state": w.state,
                    "restarts": w.restarts,
                    "rtp_port": w.rtp_port,
                    "rooms": w.stats.get("rooms", 0),
                    "legs": w.stats.get("legs", 0),
                    "ticks": tick.get("ticks", 0),
                    "late_ticks": tick.get("late_ticks", 0),
                    "on_time_pct": tick.get("on_time_pct"),
                    "work_p99_ms": tick.get("work_p99_ms"),
                }
            )
        ok = all(w["state"] == "running" for w in workers)
        recorder = self.recorder.health() if self.recorder is not None else None
        return {
            "status": "ok" if ok else "degraded",
            "epoch": self.epoch,
            "control": {"pid": os.getpid(), "state": "running"},
            "workers": workers,
            "recorder": recorder,
            "gateways": self.gateways.health(),
        }


def _patch_components(patches: list[Patch]) -> dict[str, str]:
    """Union-find over the patch graph: each patched room -> its component's root."""
    parent: dict[str, str] = {}

    def root(room: str) -> str:
        parent.setdefault(room, room)
        while parent[room] != room:
            parent[room] = parent[parent[room]]
            room = parent[room]
        return room

    for patch in patches:
        first = root(patch.rooms[0])
        for room in patch.rooms[1:]:
            parent[root(room)] = first
    return {room: root(room) for room in list(parent)}


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
