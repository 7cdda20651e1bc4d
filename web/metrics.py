"""Prometheus metrics (prometheus-client) for the control process and its media workers.

Figures come from what the core already keeps: the state store (rooms, participants by
kind) and each worker's last stats report (ticks, late ticks, tick work by stage,
packets dropped by reason). Nothing here touches a tick.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.control import Control
from bridge.model import ParticipantKind, Room

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, control: Control, rooms: list[Room]) -> None:
        self.control = control
        self.rooms = rooms

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


async def render(control: Control) -> bytes:
    """The metrics page, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(control, await control.list_rooms()))
    return generate_latest(registry)
