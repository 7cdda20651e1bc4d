"""A media worker: a process that owns a shard of rooms, their RTP port and the tick.

DESIGN.md, "Processes": nothing busy in pure Python shares this interpreter, because
every ctypes call and every large NumPy operation hands the GIL back and a busy thread
beside the tick stretches it. The worker waits for the next tick deadline in ``epoll``;
commands from the control process are served between ticks as they arrive.

Run as ``python -m bridge.worker --fd N --index I --config JSON``; ``ucbridge serve``
starts, supervises and restarts it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .channel import Message, WorkerEnd
from .config import FRAME_MS, Config, parse_config
from .engine import AdmissionError, AudioEngine, LegSpec, MonitorSpec
from .floor import CallType, FloorConfig, RevokeCause
from .floorhub import FloorHub
from .mmsg import BatchSocket, rcvbuf_errors, set_receive_buffer
from .model import DEFAULT_DUCK_DB, RoomMode
from .recorder import BurstInfo, RecordingStart, RecordKind
from .rtcpsession import LegCounters, RtcpSession
from .shmring import RingWriter
from .workerplugin import WorkerContext, load_plugins

logger = logging.getLogger("bridge.worker")

TICK_NS = FRAME_MS * 1_000_000
#: How many recent ticks the p50/p99 figures cover (10 s).
WINDOW_TICKS = 500
#: How often the worker looks for RTCP reports that are due (every 200 ms).
RTCP_EVERY_TICKS = 10
#: How often the worker reports its load to the control process.
STATS_EVERY_TICKS = 50
#: Stages reported per tick, in order.
STAGES = ("receive", "parse", "jitter", "decode", "mix", "encode", "send")
#: Events that open and close a talk burst in a recording's index: the floor's in a ptt
#: room (TS 24.380: Floor Granted to release or revoke), talker detection in an open one.
_BURST_RECORDS = {
    RoomMode.PTT: {"floor_granted": RecordKind.BURST_START, "floor_released": RecordKind.BURST_END},
    RoomMode.OPEN: {"talking": RecordKind.BURST_START, "stopped_talking": RecordKind.BURST_END},
}


def _floor_config(data: dict[str, Any] | None) -> FloorConfig:
    return FloorConfig(**data) if data else FloorConfig()


class TickClock:
    """Tick work and lateness over a sliding window, plus lifetime counters.

    Work is the CPU time the tick took on the worker's thread, so that another process
    busy on the same core does not count as this worker's load (admission control asks
    "how much does my shard cost?"); lateness is judged on the wall clock.
    """

    def __init__(self, budget: float) -> None:
        self.budget_ns = int(budget * TICK_NS)
        self.work = np.zeros(WINDOW_TICKS, dtype=np.int64)
        self.stages = np.zeros((WINDOW_TICKS, len(STAGES)), dtype=np.int64)
        self.count = 0
        self.late = 0
        self.missed = 0

    def record(self, work_ns: int, stages: tuple[int, ...], on_time: bool) -> None:
        i = self.count % WINDOW_TICKS
        self.work[i] = work_ns
        self.stages[i] = stages
        self.count += 1
        if not on_time:
            self.late += 1

    def window(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self.work[: min(self.count, WINDOW_TICKS)]

    def p99_ns(self) -> int:
        window = self.window()
        return int(np.percentile(window, 99)) if len(window) else 0

    def over_budget(self) -> bool:
        return self.count >= STATS_EVERY_TICKS and self.p99_ns() > self.budget_ns

    def summary(self) -> dict[str, Any]:
        window = self.window()
        stages = self.stages[: len(window)]
        return {
            "ticks": self.count,
            "late_ticks": self.late,
            "missed_ticks": self.missed,
            "on_time_pct": 100.0 * (1 - self.late / self.count) if self.count else 100.0,
            "work_p50_ms": float(np.percentile(window, 50)) / 1e6 if len(window) else 0.0,
            "work_p99_ms": self.p99_ns() / 1e6,
            "budget_ms": self.budget_ns / 1e6,
            "stages_p50_ms": {
                name: float(np.percentile(stages[:, j], 50)) / 1e6 if len(window) else 0.0
                for j, name in enumerate(STAGES)
            },
        }


class MediaWorker:
    def __init__(self, config: Config, index: int, channel: WorkerEnd) -> None:
        self.config = config
        self.index = index
        self.channel = channel
        media = config.media
        self.rtp_port = media.rtp_port_base + 2 * index
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((media.rtp_host, self.rtp_port))
        sock.setblocking(False)
        set_receive_buffer(sock, media.receive_buffer_bytes)
        self.sock = sock
        self.rtp = BatchSocket(sock, capacity=max(1024, 2 * media.max_legs_per_worker))
        self.ring: RingWriter | None = None
        rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rtcp_sock.bind((media.rtp_host, self.rtp_port + 1))
        self.rtcp = RtcpSession(
            rtcp_sock, cname=f"ucbridge-{os.getpid()}@{media.rtp_host}", events=self.emit
        )
        self.engine = AudioEngine(
            self.rtp,
            capacity=media.max_legs_per_worker,
            room_rate=media.room_rate,
            events=self.emit,
            frames=self._push_frame,
        )
        self.floor = FloorHub(set_holder=self.engine.set_holder, events=self.emit)
        self.clock = TickClock(media.tick_budget)
        self.running = True
        self.started_ns = time.time_ns()
        self.plugins = load_plugins(
            media.worker_plugins,
            WorkerContext(index, config, self.engine, self.floor, self.emit),
        )
        self._plugin_by_name = {plugin.name: plugin for plugin in self.plugins}

    # ----------------------------------------------------------- the channel
    def emit(self, event: dict[str, Any]) -> None:
        room = self.engine.rooms.get(event.get("room", ""))
        if room is not None and room.record and self.ring is not None:
            kind = _BURST_RECORDS[room.mode].get(event["event"])
            if kind is not None and event.get("participant"):
                info = BurstInfo(
                    participant=event["participant"],
                    alias=event.get("alias", ""),
                    call_type=event.get("call_type", "normal"),
                )
                self.ring.push(kind, room.index, time.time_ns(), bytes(info))
        event.setdefault("worker", self.index)
        event.setdefault("t_ns", time.monotonic_ns())
        self.channel.send({"kind": "event", **event})

    def _push_frame(self, room_index: int, t_ns: int, frame: Any) -> None:
        if self.ring is not None:
            self.ring.push(RecordKind.FRAME, room_index, t_ns, frame)

    def _set_record(self, room_id: str, record: bool) -> int:
        """Switch a room's recording; the recorder opens or closes its file in order."""
        room = self.engine.rooms[room_id]
        was = room.record
        self.engine.set_record(room_id, record)
        if self.ring is not None and record != was:
            if record:
                self.ring.push(
                    RecordKind.START, room.index, time.time_ns(), bytes(RecordingStart(room.name))
                )
            else:
                self.ring.push(RecordKind.STOP, room.index, time.time_ns(), b"")
        return room.index

    def serve_commands(self) -> None:
        for message in self.channel.receive_all():
            self._command(message)
        if self.channel.closed:
            logger.info("worker %d: control channel closed, stopping", self.index)
            self.running = False

    def _command(self, message: Message) -> None:
        op = message.get("op")
        reply: dict[str, Any] = {"kind": "reply", "id": message.get("id")}
        try:
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise ValueError(f"unknown worker command: {op}")
            reply["ok"] = True
            reply["result"] = handler(message)
        except (ValueError, KeyError, AdmissionError) as exc:
            reply["ok"] = False
            reply["error"] = str(exc).strip("'\"")
            reply["error_type"] = type(exc).__name__
        except Exception as exc:  # a bad command must never stop the rooms
            logger.exception("worker %d: command %s failed", self.index, op)
            reply["ok"] = False
            reply["error"] = f"internal error: {exc}"
            reply["error_type"] = "InternalError"
        self.channel.send(reply)

    # --------------------------------------------------------------- commands
    def op_ping(self, message: Message) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_stop(self, message: Message) -> None:
        self.running = False

    def op_recorder(self, message: Message) -> None:
        """Attach to the recorder's ring; tell a (re)started recorder what is recording."""
        self.ring = RingWriter.attach(message["ring"])
        for room in self.engine.rooms.values():
            if room.record:
                self.ring.push(
                    RecordKind.START, room.index, time.time_ns(), bytes(RecordingStart(room.name))
                )

    def op_hydrate(self, message: Message) -> dict[str, Any]:
        """Recreate rooms and legs from the state store after a (re)start."""
        legs = 0
        for room in message["rooms"]:
            self.op_add_room(
                {
                    "room": room["id"],
                    "name": room["name"],
                    "mode": room["mode"],
                    "floor": room.get("floor"),
                    "record": room.get("record", False),
                    "monitor_to_mix": room.get("monitor_to_mix", False),
                }
            )
            for participant in room["participants"]:
                self._add_leg(participant)
                legs += 1
        self.op_set_patches({"groups": message.get("patches", [])})
        return {"rooms": len(message["rooms"]), "legs": legs}

    def op_add_room(self, message: Message) -> dict[str, Any]:
        room = self.engine.add_room(
            message["room"],
            message["name"],
            RoomMode(message["mode"]),
            monitor_to_mix=message.get("monitor_to_mix", False),
        )
        if room.mode is RoomMode.PTT:
            self.floor.add_room(room.id, _floor_config(message.get("floor")))
        self._set_record(room.id, message.get("record", False))
        return {"index": room.index}

    def op_remove_room(self, message: Message) -> None:
        if message["room"] in self.engine.rooms:
            self._set_record(message["room"], False)
        self.floor.remove_room(message["room"])
        self.engine.remove_room(message["room"])

    def op_set_record(self, message: Message) -> dict[str, Any]:
        return {"index": self._set_record(message["room"], message["record"])}

    def op_join(self, message: Message) -> dict[str, Any]:
        if self.clock.over_budget():
            p99 = self.clock.p99_ns() / 1e6
            raise AdmissionError(
                f"worker {self.index} is at its tick budget: p99 tick work {p99:.2f} ms is "
                f"over {self.clock.budget_ns / 1e6:.3g} ms "
                f"(media.tick_budget {self.config.media.tick_budget:g} of {FRAME_MS} ms)"
            )
        return self._add_leg(message["participant"])

    def _add_leg(self, p: dict[str, Any]) -> dict[str, Any]:
        remote = p.get("remote") or {"ip": "0.0.0.0", "port": 0}
        leg = self.engine.add_leg(
            LegSpec(
                participant=p["id"],
                room=p["room"],
                codec=p["codec"],
                clock_rate=p.get("clock_rate"),
                payload_type=p["payload_type"],
                dtmf_payload_type=p.get("dtmf_payload_type"),
                remote_ip=remote["ip"],
                remote_port=remote["port"],
                ssrc=p.get("ssrc"),
                gain=p.get("gain", 1.0),
                muted=p.get("muted", False),
                alias=p.get("name", ""),
                latch=p.get("latch", False),
                dispatcher=p.get("dispatcher", False),
                monitor_only=p.get("monitor_only", False),
            )
        )
        self.rtcp.add(p["id"], remote["ip"], remote["port"], leg.ssrc_out)
        if p.get("monitor") or p.get("priority_room"):
            self.op_set_monitor({"participant": p["id"], **p})
        # A monitor-only source (camera audio) never requests or holds the floor.
        if p["room"] in self.floor.servers and not p.get("monitor_only", False):
            self.floor.join(
                p["room"],
                p["id"],
                priority=p.get("priority", 0),
                pre_emptive_allowed=p.get("pre_emptive", False),
                receive_only=p.get("receive_only", False),
                user_id=p.get("user_id") or p["id"],
                alias=p.get("name", ""),
            )
        return {
            "rtp": {"ip": self.config.media.rtp_host, "port": self.rtp_port},
            "rtcp": {"ip": self.config.media.rtp_host, "port": self.rtp_port + 1},
            "ssrc": leg.ssrc_out,
            "slot": leg.slot,
        }

    def _rtcp_counters(self, participant: str) -> LegCounters:
        engine = self.engine
        leg = engine.legs[participant]
        slot = leg.slot
        jitter = engine.jitter.stats(slot)
        sent = int(engine.sent[slot])
        return LegCounters(
            rtp_timestamp=int(engine.ts_out[slot]),
            packets_sent=sent,
            octets_sent=sent * leg.codec.frame_bytes,
            remote_ssrc=int(engine.ssrc_in[slot]) if engine.ssrc_known[slot] else None,
            received=jitter.received,
            lost=jitter.lost,
            highest_sequence=int(engine.last_sequence[slot]),
            jitter=int(jitter.jitter_ms * leg.codec.clock_rate / 1000),
        )

    def op_leave(self, message: Message) -> None:
        participant = message["participant"]
        self.floor.leave(participant)
        for plugin in self.plugins:
            plugin.leg_left(participant)
        self.engine.remove_leg(participant)
        self.rtcp.remove(participant)

    def op_set_leg(self, message: Message) -> None:
        self.engine.set_leg(
            message["participant"], gain=message.get("gain"), muted=message.get("muted")
        )

    def op_set_holder(self, message: Message) -> None:
        self.engine.set_holder(message["room"], message.get("participant"))

    # ---------------------------------------------------------------- routing
    def op_set_patches(self, message: Message) -> dict[str, Any]:
        """Patch groups of this worker's rooms (the control process checked for cycles).

        Every room of a group hears the union of the group (a W edit in the mixer), and
        the group's ptt rooms share one floor, the first ptt room's (see FloorHub).
        """
        groups: list[list[str]] = [list(group) for group in message["groups"]]
        unknown = [r for group in groups for r in group if r not in self.engine.rooms]
        if unknown:
            raise KeyError(f"unknown room: {unknown[0]}")
        self.floor.set_patches(groups)
        self.engine.set_patches(groups)
        return {"groups": len(groups)}

    def op_set_monitor(self, message: Message) -> None:
        """What a dispatcher leg monitors: rooms with gains, a priority room, duck depth."""
        rooms = {str(r): float(g) for r, g in (message.get("monitor") or {}).items()}
        priority = message.get("priority_room")
        if not rooms and priority is None:
            self.engine.set_monitor(message["participant"], None)
            return
        self.engine.set_monitor(
            message["participant"],
            MonitorSpec(rooms, priority, float(message.get("duck_db", DEFAULT_DUCK_DB))),
        )

    # ------------------------------------------------------------------ floor
    def _floor_member(self, participant: str) -> str:
        """A participant a floor action may name: never a monitor-only source."""
        leg = self.engine.legs.get(participant)
        if leg is not None and leg.spec.monitor_only:
            raise ValueError(
                f"participant is a monitor-only source and never takes the floor: {participant}"
            )
        return participant

    def op_floor_request(self, message: Message) -> dict[str, Any]:
        return self.floor.request(
            self._floor_member(message["participant"]),
            priority=message.get("priority"),
            vouched=True,
            call_type=CallType[message.get("call_type", "normal").upper().replace("-", "_")],
        )

    def op_floor_release(self, message: Message) -> None:
        self.floor.release(message["participant"])

    def op_floor_revoke(self, message: Message) -> None:
        self.floor.revoke(message["room"], RevokeCause(message.get("cause", RevokeCause.OTHER)))

    def op_floor_grant_to(self, message: Message) -> None:
        self.floor.grant_to(self._floor_member(message["participant"]))

    def op_floor_override(self, message: Message) -> None:
        call_type = CallType[message.get("call_type", "normal").upper().replace("-", "_")]
        self.floor.override(self._floor_member(message["participant"]), call_type=call_type)

    def op_floor_receive_only(self, message: Message) -> None:
        self.floor.set_receive_only(message["participant"], message["receive_only"])

    def op_floor_state(self, message: Message) -> dict[str, Any]:
        return self.floor.snapshot(message["room"])

    def op_plugin(self, message: Message) -> Any:
        """A command for a worker plugin: ``{"plugin": name, "command": op, ...}``."""
        plugin = self._plugin_by_name.get(message["plugin"])
        if plugin is None:
            raise ValueError(f"no such worker plugin: {message['plugin']}")
        return plugin.command(message["command"], message)

    def op_leg_stats(self, message: Message) -> dict[str, Any]:
        stats = self.engine.leg_stats(message["participant"])
        stats["rtcp"] = self.rtcp.stats(message["participant"])
        return stats

    def op_stats(self, message: Message) -> dict[str, Any]:
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": os.getpid(),
            "rtp_port": self.rtp_port,
            "backend": self.rtp.backend,
            "tick": self.clock.summary(),
            "rcvbuf_errors": rcvbuf_errors(),
            "channel_dropped": self.channel.dropped,
            "recorder_dropped": getattr(self.ring, "dropped", 0),
            "cpu_s": time.process_time(),
            "rtcp": {
                "sent": self.rtcp.sent,
                "malformed": self.rtcp.malformed,
                "unknown": self.rtcp.unknown,
            },
            "plugins": {plugin.name: plugin.stats() for plugin in self.plugins},
            **self.engine.transit_summary(),
            **self.engine.counters(),
        }

    # ------------------------------------------------------------------ loop
    def _serve_floor_timers(self) -> None:
        deadline = self.floor.next_deadline()
        if deadline is not None and deadline <= time.monotonic():
            self.floor.tick()

    def _report_media_to_floor(self) -> None:
        """T1 and media policing: who sent media this tick, per ptt room."""
        for room, participants in self.engine.audible_by_room(self.floor.servers).items():
            self.floor.media_from(room, participants)

    def run(self) -> None:
        poller = select.epoll()
        handlers: dict[int, Callable[[], None]] = {
            self.channel.fileno(): self.serve_commands,
            self.rtcp.fileno(): self.rtcp.receive,
        }
        for plugin in self.plugins:
            for sock in plugin.sockets():
                handlers[sock.fileno()] = functools.partial(plugin.readable, sock)
        for fd in handlers:
            poller.register(fd, select.EPOLLIN)
        deadline = time.monotonic_ns() + TICK_NS
        while self.running:
            now = time.monotonic_ns()
            if now < deadline:
                # Floor messages and commands are served as they arrive, between ticks;
                # floor timers wake the loop too.
                wake = deadline
                floor_deadline = self.floor.next_deadline()
                if floor_deadline is not None:
                    wake = min(wake, max(now, int(floor_deadline * 1e9)))
                for fd, _ in poller.poll((wake - now) / 1e9):
                    handlers[fd]()
                self._serve_floor_timers()
                self.channel.flush()
                continue
            cpu_start = time.thread_time_ns()
            try:
                times = self.engine.tick()
                self._report_media_to_floor()
            except Exception:  # one bad tick must not take the rooms down
                logger.exception("worker %d: tick failed", self.index)
                times = None
            end = time.monotonic_ns()
            work = time.thread_time_ns() - cpu_start
            deadline += TICK_NS
            on_time = end <= deadline
            if times is not None:
                self.clock.record(
                    work,
                    (
                        times.receive,
                        times.parse,
                        times.jitter,
                        times.decode,
                        times.mix,
                        times.encode,
                        times.send,
                    ),
                    on_time,
                )
            if end > deadline:
                behind = (end - deadline) // TICK_NS
                if behind:
                    # Far behind: skip the ticks we cannot make up rather than burst.
                    self.clock.missed += int(behind)
                    deadline += behind * TICK_NS
            if self.clock.count % RTCP_EVERY_TICKS == 0:
                self.rtcp.report(time.monotonic(), self._rtcp_counters)
            if self.clock.count % STATS_EVERY_TICKS == 0:
                self.channel.send({"kind": "stats", "worker": self.index, "stats": self.stats()})
        poller.close()
        for plugin in self.plugins:
            plugin.close()
        self.sock.close()
        self.rtcp.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge.worker")
    parser.add_argument("--fd", type=int, required=True)
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--index", type=int)
    role.add_argument(
        "--standby", action="store_true", help="start, then wait to be given an index (a spare)"
    )
    parser.add_argument("--config", required=True, help="configuration as JSON")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # serve stops us through the channel
    config = parse_config(json.loads(args.config))
    channel = WorkerEnd(socket.socket(fileno=args.fd))
    index = args.index if args.index is not None else _wait_for_index(channel)
    if index is None:
        return 0
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s worker{index} %(levelname)s %(message)s"
    )
    cpus = config.media.pin_cpus
    if cpus:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    _raise_priority(config.media.worker_nice)
    worker = MediaWorker(config, index, channel)

    def _terminate(signum: int, frame: object) -> None:
        worker.running = False

    signal.signal(signal.SIGTERM, _terminate)
    channel.send(
        {"kind": "ready", "worker": index, "pid": os.getpid(), "rtp_port": worker.rtp_port}
    )
    worker.run()
    return 0


def _raise_priority(nice: int) -> None:
    """Run the tick ahead of the control plane and the recorder on a shared core."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        logger.warning("cannot set nice %d (needs CAP_SYS_NICE); running at default", nice)


def _wait_for_index(channel: WorkerEnd) -> int | None:
    """A standby blocks until the control process activates it (None: told to go away)."""
    poller = select.epoll()
    poller.register(channel.fileno(), select.EPOLLIN)
    try:
        while True:
            poller.poll()
            for message in channel.receive_all():
                if message.get("op") == "activate":
                    return int(message["index"])
            if channel.closed:
                return None
    finally:
        poller.close()


if __name__ == "__main__":
    sys.exit(main())
