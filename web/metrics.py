"""Prometheus metrics (prometheus-client) for the control process and its media workers.

Figures come from what the core already keeps: the state store (rooms, participants by
kind), each worker's last stats report (ticks, late ticks, tick work by stage, packets
dropped by reason), the gateway processes' states, the core's floor events (grants,
denies, revokes, queued requests, counted as they are published) and the socket.io
server's connected clients. Nothing here touches a tick.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.control import Control
from bridge.model import ParticipantKind, Room

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Floor events counted, by the name of their metric.
FLOOR_EVENTS = {
    "floor_granted": "grants",
    "floor_denied": "denies",
    "floor_revoked": "revokes",
    "floor_queued": "queued",
}


class EventCounts:
    """Floor events counted as the core publishes them, and the socket.io clients."""

    def __init__(self, clients: Callable[[], int] | None = None) -> None:
        self.floor: Counter[str] = Counter()
        self.clients = clients or (lambda: 0)

    def count(self, event: dict[str, Any]) -> None:
        outcome = FLOOR_EVENTS.get(event.get("event", ""))
        if outcome is not None:
            self.floor[outcome] += 1


COUNTS: web.AppKey[EventCounts] = web.AppKey("metrics_counts", EventCounts)


def setup(app: web.Application, control: Control, clients: Callable[[], int]) -> EventCounts:
    """Count the core's floor events for ``/metrics``; ``clients`` counts socket.io clients."""
    counts = EventCounts(clients)
    unsubscribe = control.subscribe(counts.count)

    async def stop(app: web.Application) -> None:
        unsubscribe()

    app.on_cleanup.append(stop)
    app[COUNTS] = counts
    return counts


class _Snapshot(Collector):
    def __init__(self, control: Control, rooms: list[Room], counts: EventCounts | None) -> None:
        self.control = control
        self.rooms = rooms
        self.counts = counts or EventCounts()

    def collect(self) -> Iterator[Metric]:
        rooms = GaugeMetricFamily("ucbridge_rooms", "Rooms (talkgroups)")
        rooms.add_metric([], len(self.rooms))
        yield rooms
        kinds = Counter(p.kind for room in self.rooms for p in room.participants.values())
        participants = GaugeMetricFamily(
            "ucbridge_participants", "Participants by kind", labels=["kind"]
        )
        for kind in ParticipantKind:
            participants.add_metric([str(kind)], kinds.get(kind, 0))
        yield participants

        up = GaugeMetricFamily("ucbridge_worker_up", "Media worker running", labels=["worker"])
        restarts = CounterMetricFamily(
            "ucbridge_worker_restarts", "Media worker restarts", labels=["worker"]
        )
        ticks = CounterMetricFamily("ucbridge_worker_ticks", "Ticks run", labels=["worker"])
        late = CounterMetricFamily(
            "ucbridge_worker_ticks_late", "Ticks that ended after their deadline", labels=["worker"]
        )
        work = GaugeMetricFamily(
            "ucbridge_worker_tick_work_seconds",
            "Tick work over the last 10 s",
            labels=["worker", "quantile"],
        )
        stage = GaugeMetricFamily(
            "ucbridge_worker_tick_stage_seconds",
            "Median tick work per stage over the last 10 s",
            labels=["worker", "stage"],
        )
        dropped = CounterMetricFamily(
            "ucbridge_packets_dropped", "Packets dropped, by reason", labels=["worker", "reason"]
        )
        legs = GaugeMetricFamily("ucbridge_worker_legs", "Legs on a worker", labels=["worker"])
        for worker in self.control.workers:
            label = str(worker.index)
            stats: dict[str, Any] = worker.stats
            tick: dict[str, Any] = stats.get("tick", {})
            up.add_metric([label], 1 if worker.state == "running" else 0)
            restarts.add_metric([label], worker.restarts)
            ticks.add_metric([label], tick.get("ticks", 0))
            late.add_metric([label], tick.get("late_ticks", 0))
            work.add_metric([label, "0.5"], tick.get("work_p50_ms", 0.0) / 1e3)
            work.add_metric([label, "0.99"], tick.get("work_p99_ms", 0.0) / 1e3)
            for name, ms in tick.get("stages_p50_ms", {}).items():
                stage.add_metric([label, name], ms / 1e3)
            for reason, count in stats.get("dropped", {}).items():
                dropped.add_metric([label, reason], count)
            legs.add_metric([label], stats.get("legs", 0))
        yield from (up, restarts, ticks, late, work, stage, dropped, legs)
        floor = CounterMetricFamily(
            "ucbridge_floor_events",
            "Floor grants, denies, revokes and queued requests",
            labels=["outcome"],
        )
        for outcome in FLOOR_EVENTS.values():
            floor.add_metric([outcome], self.counts.floor.get(outcome, 0))
        yield floor
        clients = GaugeMetricFamily("ucbridge_socketio_clients", "Connected socket.io clients")
        clients.add_metric([], self.counts.clients())
        yield clients
        gateway_up = GaugeMetricFamily(
            "ucbridge_gateway_up", "Gateway process running", labels=["gateway"]
        )
        gateway_restarts = CounterMetricFamily(
            "ucbridge_gateway_restarts", "Gateway process restarts", labels=["gateway"]
        )
        for gateway in self.control.gateways.health():
            gateway_up.add_metric([gateway["name"]], 1 if gateway["state"] == "running" else 0)
            gateway_restarts.add_metric([gateway["name"]], gateway["restarts"])
        yield from (gateway_up, gateway_restarts)


async def render(control: Control, counts: EventCounts | None = None) -> bytes:
    """The metrics page, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(control, await control.list_rooms(), counts))
    return generate_latest(registry)
