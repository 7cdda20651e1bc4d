"""Socket.io signalling against a real ``ucbridge serve``: auth, roles, floor, alerts, resume."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from console_harness import ConsoleClient, comparable, console
from server import SECRET, Server

from bridge.audit import AuditLog
from bridge.config import DEFAULT_PRESENCE_RATE_HZ, Config
from bridge.control import EVENT_HISTORY, Control
from bridge.web.auth import Role, TokenAuthority
from bridge.web.presence_api import PresenceFeed
from bridge.web.sio import ROOMS_NAMESPACE, Signalling

_ports = itertools.count(31000, 2)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("sio"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def rest(server: Server, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    status, reply = await asyncio.to_thread(server.request, method, path, body, **kw)
    assert status < 300, f"{method} {path}: {status} {reply}"
    return reply


async def room_with_legs(server: Server, mode: str, *names: str) -> tuple[str, dict[str, str]]:
    """A new room with one plain-RTP leg per name; returns its id and the legs' ids."""
    name = f"r{next(_ports)}"
    room = await rest(server, "POST", "/api/rooms", {"name": name, "mode": mode})
    legs = {}
    for leg in names:
        reply = await rest(
            server,
            "POST",
            f"/api/rooms/{name}/participants",
            {"address": {"ip": "127.0.0.1", "port": next(_ports)}, "name": leg, "kind": "trunk"},
        )
        legs[leg] = reply["id"]
    return room["id"], legs


async def audit_records(server: Server, after: int = 0) -> list[dict[str, Any]]:
    reply = await rest(server, "GET", f"/api/audit?after={after}")
    records: list[dict[str, Any]] = reply["records"]
    return records


async def audit_head(server: Server) -> int:
    count: int = (await rest(server, "GET", "/api/audit?limit=1"))["count"]
    return count


# ------------------------------------------------------------------------ auth
async def _refusal(server: Server, auth: Any, headers: dict[str, str] | None = None) -> str:
    client = ConsoleClient(server.base, None)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            server.base, namespaces=[ROOMS_NAMESPACE], auth=auth, headers=headers or {}
        )
    await client.wait_for(lambda c: c.refusal is not None)
    assert client.refusal is not None
    return client.refusal


async def test_a_connection_without_a_good_token_is_refused_with_the_reason(srv: Server) -> None:
    assert await _refusal(srv, None) == "authentication required"
    assert await _refusal(srv, {"token": ""}) == "authentication required"
    assert await _refusal(srv, {"token": "not-a-jwt"}) == "token is invalid"
    forged = TokenAuthority("another-secret-" + "y" * 40).issue("eve", Role.DISPATCHER)
    assert await _refusal(srv, {"token": forged}) == "token is invalid"
    expired = srv.authority.issue("old", Role.DISPATCHER, ttl_s=-60)
    assert await _refusal(srv, {"token": expired}) == "token has expired"


async def test_the_presence_namespace_is_refused_too(srv: Server) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(srv.base, namespaces=["/presence"], wait_timeout=5)


async def test_the_login_cookie_authenticates_a_console(srv: Server) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    cookie = {"Cookie": f"ucb_token={srv.token(Role.OBSERVER, 'watcher')}"}
    await sio.connect(srv.base, namespaces=[ROOMS_NAMESPACE], headers=cookie, wait_timeout=5)
    try:
        answer = await sio.call("resume", {}, namespace=ROOMS_NAMESPACE, timeout=5)
        assert answer["ok"] and answer["user"] == "watcher" and answer["role"] == "observer"
        assert "snapshot" in answer
    finally:
        await sio.disconnect()


# ----------------------------------------------------------------------- roles
DISPATCHER_ACTIONS = {
    "ptt_press override": ("ptt_press", {"override": True}),
    "ptt_press emergency": ("ptt_press", {"emergency": True}),
    "floor_revoke": ("floor_revoke", {}),
    "floor_grant": ("floor_grant", {"participant": "LEG"}),
    "receive_only": ("receive_only", {"participant": "LEG", "receive_only": True}),
    "emergency_ack": ("emergency_ack", {"alert": "ALERT"}),
    "emergency_clear": ("emergency_clear", {"alert": "ALERT"}),
    "kick": ("kick", {"participant": "LEG"}),
    "participant_patch": ("participant_patch", {"participant": "LEG", "muted": True}),
    "recording": ("recording", {"recording": True}),
}
TALK_ACTIONS = {"ptt_press": ("ptt_press", {}), "ptt_release": ("ptt_release", {})}


@pytest.mark.parametrize("case", [*DISPATCHER_ACTIONS, *TALK_ACTIONS])
async def test_an_observer_is_refused_every_dispatcher_action(srv: Server, case: str) -> None:
    room, legs = await room_with_legs(srv, "ptt", "watcher", "unit-1")
    name, payload = {**DISPATCHER_ACTIONS, **TALK_ACTIONS}[case]
    data = {"room": room, **payload}
    if data.get("participant") == "LEG":
        data["participant"] = legs["unit-1"]
    before = await audit_head(srv)
    async with console(srv.base, srv.token(Role.OBSERVER, "watcher")) as client:
        answer = await client.call(name, data)
        needs = "dispatcher, officer" if case in TALK_ACTIONS else "dispatcher"
        assert answer == {
            "ok": False,
            "status": 403,
            "error": f"role observer may not do this (needs {needs})",
        }
        snapshot = await client.server_snapshot()
    state = snapshot["rooms"][room]
    assert state["floor"]["holder"] is None and len(state["participants"]) == 2
    assert not state["participants"][legs["unit-1"]]["muted"] and not state["record"]
    [record] = await audit_records(srv, after=before)
    assert (record["user"], record["role"], record["action"]) == (
        "watcher",
        "observer",
        f"sio:{name}",
    )
    assert record["outcome"] == "denied" and record["room"] == room


@pytest.mark.parametrize("case", list(DISPATCHER_ACTIONS))
async def test_an_officer_is_refused_what_only_dispatchers_may_do(srv: Server, case: str) -> None:
    room, legs = await room_with_legs(srv, "ptt", "officer-1", "unit-1")
    name, payload = DISPATCHER_ACTIONS[case]
    data = {"room": room, **payload}
    if data.get("participant") == "LEG":
        data["participant"] = legs["unit-1"]
    async with console(srv.base, srv.token(Role.OFFICER, "officer-1")) as client:
        answer = await client.call(name, data)
    assert answer["status"] == 403 and answer["error"].endswith("(needs dispatcher)")


# ----------------------------------------------------------------------- floor
async def test_ptt_is_answered_in_the_acknowledgement_and_seen_by_every_console(
    srv: Server,
) -> None:
    room, legs = await room_with_legs(srv, "ptt", "disp-1", "officer-2")
    async with (
        console(srv.base, srv.token(Role.DISPATCHER, "disp-1")) as dispatcher,
        console(srv.base, srv.token(Role.OFFICER, "officer-2")) as officer,
    ):
        started = time.monotonic()
        answer = await dispatcher.call("ptt_press", {"room": room})
        assert answer == {
            "ok": True,
            "room": room,
            "participant": legs["disp-1"],
            "result": "granted",
        }
        assert time.monotonic() - started < 1.0
        queued = await officer.call("ptt_press", {"room": room})
        assert queued["result"] == "queued" and queued["position"] == 1

        def floor(c: ConsoleClient) -> dict[str, Any]:
            floor_state: dict[str, Any] = c.state.rooms[room]["floor"]
            return floor_state

        await officer.wait_for(
            lambda c: [q["participant"] for q in floor(c)["queue"]] == [legs["officer-2"]]
        )
        assert floor(officer)["holder"] == legs["disp-1"]

        released = await dispatcher.call("ptt_release", {"room": room})
        assert released["ok"] and released["result"] == "released"
        await dispatcher.wait_for(lambda c: floor(c)["holder"] == legs["officer-2"])
        assert floor(dispatcher)["queue"] == [] and floor(dispatcher)["alias"] == "officer-2"

        mine = await officer.call("ptt_release", {"room": room})
        assert mine["ok"]
        await dispatcher.wait_for(lambda c: floor(c)["state"] == "idle")
        assert comparable(await dispatcher.server_snapshot()) == dispatcher.state.to_dict()


async def test_every_event_carries_room_epoch_seq_and_time(srv: Server) -> None:
    seen: list[dict[str, Any]] = []
    async with console(srv.base, srv.token()) as client:
        client.sio.on("floor_granted", seen.append, namespace=ROOMS_NAMESPACE)
        room, _ = await room_with_legs(srv, "ptt", "tester")
        await client.call("ptt_press", {"room": room})
        await client.wait_for(lambda c: c.state.rooms[room]["floor"]["state"] == "taken")
        await client.call("ptt_release", {"room": room})
    assert seen, "no floor_granted event reached the console"
    for event in seen:
        assert event["room"] == room and event["epoch"] == client.epoch
        assert isinstance(event["seq"], int) and isinstance(event["time"], float)


async def test_a_press_without_a_leg_in_the_room_is_refused(srv: Server) -> None:
    room, _ = await room_with_legs(srv, "ptt", "somebody-else")
    async with console(srv.base, srv.token(Role.DISPATCHER, "nobody")) as client:
        answer = await client.call("ptt_press", {"room": room})
        assert answer == {"ok": False, "status": 409, "error": f"nobody has no leg in room {room}"}
        answer = await client.call("ptt_press", {"room": "no-such-room"})
        assert answer == {"ok": False, "status": 404, "error": "unknown room: no-such-room"}
        answer = await client.call("ptt_press", {"room": room, "loud": True})
        assert answer["status"] == 422 and answer["error"].startswith("loud: ")


async def test_an_emergency_press_raises_an_alert_to_acknowledge_and_clear(srv: Server) -> None:
    room, legs = await room_with_legs(srv, "ptt", "disp-2", "unit-3")
    before = await audit_head(srv)
    async with console(srv.base, srv.token(Role.DISPATCHER, "disp-2")) as client:
        answer = await client.call("ptt_press", {"room": room, "emergency": True})
        assert answer["ok"] and answer["result"] == "granted"
        await client.wait_for(lambda c: any(a["room"] == room for a in c.state.alerts.values()))
        [alert] = [a for a in client.state.alerts.values() if a["room"] == room]
        assert alert["state"] == "active" and alert["call_type"] == "emergency"
        assert alert["participant"] == legs["disp-2"]
        await client.wait_for(lambda c: c.state.rooms[room]["floor"]["call_type"] == "emergency")

        acked = await client.call("emergency_ack", {"alert": alert["id"]})
        assert acked == {"ok": True, "alert": alert["id"], "room": room, "state": "acknowledged"}
        await client.wait_for(lambda c: c.state.alerts[alert["id"]]["state"] == "acknowledged")
        assert client.state.alerts[alert["id"]]["acknowledged_by"] == "disp-2"

        cleared = await client.call("emergency_clear", {"alert": alert["id"]})
        assert cleared["ok"] and cleared["state"] == "cleared"
        await client.wait_for(lambda c: alert["id"] not in c.state.alerts)
        again = await client.call("emergency_clear", {"alert": alert["id"]})
        assert again == {
            "ok": False,
            "status": 409,
            "error": f"alert is already cleared: {alert['id']}",
        }
        await client.call("ptt_release", {"room": room})
    actions = [(r["action"], r["outcome"]) for r in await audit_records(srv, after=before)]
    assert actions == [
        ("sio:ptt_press", "ok"),
        ("sio:emergency_ack", "ok"),
        ("sio:emergency_clear", "ok"),
        ("sio:emergency_clear", "failed"),
        ("sio:ptt_release", "ok"),
    ]


# ---------------------------------------------------------------------- resume
async def test_a_console_that_reconnects_gets_what_it_missed_and_the_server_state(
    srv: Server,
) -> None:
    room, legs = await room_with_legs(srv, "ptt", "disp-3", "unit-4", "unit-5")
    client = ConsoleClient(srv.base, srv.token(Role.DISPATCHER, "disp-3"))
    await client.connect()
    assert client.snapshots == 1
    await client.drop()
    seq_at_drop = client.seq
    assert seq_at_drop is not None

    async with console(srv.base, srv.token(Role.DISPATCHER, "disp-3")) as other:
        assert (await other.call("ptt_press", {"room": room}))["result"] == "granted"
        assert (await other.call("ptt_press", {"room": room, "participant": legs["unit-4"]}))[
            "result"
        ] == "queued"
        await other.call(
            "participant_patch", {"room": room, "participant": legs["unit-5"], "muted": True}
        )
        await other.call("kick", {"room": room, "participant": legs["unit-5"]})
        await other.call("recording", {"room": room, "recording": True})
        await other.wait_for(lambda c: c.state.rooms[room]["record"])

    await client.reconnect()
    try:
        assert client.replays == 1 and client.snapshots == 1, "the events should be replayed"
        assert client.epoch == (await client.server_snapshot())["epoch"]
        missed = [seq for seq in client.applied if seq > seq_at_drop]
        assert missed == list(range(seq_at_drop + 1, client.seq + 1))
        assert comparable(await client.server_snapshot()) == client.state.to_dict()
        mine = client.state.rooms[room]
        assert mine["floor"]["holder"] == legs["disp-3"]
        assert [q["participant"] for q in mine["floor"]["queue"]] == [legs["unit-4"]]
        assert legs["unit-5"] not in mine["participants"] and mine["record"]
    finally:
        await client.close()


@pytest.mark.slow
async def test_a_restarted_control_process_means_a_new_epoch_and_a_snapshot(
    server: Server,
) -> None:
    await rest(server, "POST", "/api/rooms", {"name": "before-restart", "mode": "ptt"})
    client = ConsoleClient(server.base, server.token())
    await client.connect()
    try:
        old_epoch = client.epoch
        assert any(r["name"] == "before-restart" for r in client.state.rooms.values())
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await rest(server, "POST", "/api/rooms", {"name": "after-restart", "mode": "open"})
        await client.wait_for(lambda c: c.epoch != old_epoch and c.sio.connected, timeout=20)
        await client.wait_for(
            lambda c: any(r["name"] == "after-restart" for r in c.state.rooms.values())
        )
        assert client.snapshots == 2
        names = {r["name"]: r["mode"] for r in client.state.rooms.values()}
        assert names == {"after-restart": "open"}  # the old process's rooms went with it
        assert comparable(await client.server_snapshot()) == client.state.to_dict()
    finally:
        await client.close()


async def test_resume_replays_from_the_history_or_falls_back_to_a_snapshot(
    tmp_path: Path,
) -> None:
    """In process: a console too far behind gets a snapshot, not a partial replay."""
    control = Control(Config())
    hub = Signalling(
        control, TokenAuthority(SECRET), AuditLog(tmp_path / "a.jsonl"), PresenceFeed()
    )
    from aiohttp import web

    app = web.Application()
    await hub._start(app)
    try:
        for i in range(EVENT_HISTORY + 100):
            control.publish({"event": "stopped_talking", "room": "nowhere", "participant": str(i)})
        deadline = time.monotonic() + 10
        while hub.seq < control.sequence and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert hub.seq == control.sequence == EVENT_HISTORY + 100
        epoch = control.epoch
        recent = hub.resume(epoch, hub.seq - 3)
        assert [e["seq"] for e in recent["replay"]] == [hub.seq - 2, hub.seq - 1, hub.seq]
        assert hub.resume(epoch, hub.seq) == {"epoch": epoch, "seq": hub.seq, "replay": []}
        oldest_kept = hub.history[0]["seq"]
        assert "replay" in hub.resume(epoch, oldest_kept - 1)
        for stale in (oldest_kept - 2, 0):
            answer = hub.resume(epoch, stale)
            assert "snapshot" in answer and answer["seq"] == hub.seq
        assert "snapshot" in hub.resume("another-epoch", hub.seq)
        assert "snapshot" in hub.resume(epoch, hub.seq + 1)
        assert "snapshot" in hub.resume(None, None)
    finally:
        await hub._stop(app)


# -------------------------------------------------------------------- presence
async def test_presence_reaches_each_console_coalesced(srv: Server) -> None:
    client = ConsoleClient(srv.base, srv.token(Role.OBSERVER, "map-wall"), presence=True)
    await client.connect()
    try:
        first = await client.subscribe_presence()
        assert first["ok"] and first["type"] == "FeatureCollection"
        reports = 30
        started = time.monotonic()
        for i in range(reports):
            for unit in ("car-1", "car-2"):
                await rest(
                    srv, "POST", f"/api/presence/{unit}", {"lat": 48.0 + i * 1e-4, "lon": 11.0}
                )
        elapsed = time.monotonic() - started

        def latest(c: ConsoleClient) -> dict[str, float]:
            where: dict[str, float] = {}
            for batch in c.presence_batches:
                for feature in batch["features"]:
                    where[feature["id"]] = feature["geometry"]["coordinates"][1]
            return where

        final = 48.0 + (reports - 1) * 1e-4
        await client.wait_for(lambda c: latest(c) == {"car-1": final, "car-2": final})
        batches = len(client.presence_batches)
        allowed = int((elapsed + 1.0) * DEFAULT_PRESENCE_RATE_HZ) + 1
        assert batches <= allowed, f"{batches} batches for {2 * reports} reports in {elapsed:.2f} s"
        assert batches < 2 * reports
        assert all("epoch" in b and "time" in b for b in client.presence_batches)
    finally:
        await client.close()


# --------------------------------------------------------------------- reducer
def _script() -> list[dict[str, Any]]:
    """A run of events of every kind the console folds, some of them twice."""
    alert = {"id": "a1", "room": "r1", "participant": "p2", "alias": "Engine 3", "state": "active"}
    events: list[dict[str, Any]] = [
        {"event": "room_created", "room": "r1", "name": "tac-1", "mode": "ptt", "record": False},
        {"event": "room_created", "room": "r2", "name": "ops"},
        {"event": "joined", "room": "r1", "participant": "p1", "kind": "webrtc", "name": "disp"},
        {"event": "joined", "room": "r1", "participant": "p2", "kind": "trunk", "name": "e3"},
        {"event": "joined", "room": "r1", "participant": "p3", "kind": "sip", "name": "desk"},
        {"event": "joined", "room": "r2", "participant": "p4", "kind": "camera", "name": "cam"},
        {"event": "recording", "room": "r1", "recording": True},
        {"event": "talking", "room": "r1", "participant": "p3", "level_dbov": -20.0},
        {"event": "talking", "room": "r1", "participant": "p1", "level_dbov": -18.0},
        {"event": "floor_granted", "room": "r1", "participant": "p1", "user_id": "u1",
         "alias": "disp", "call_type": "normal", "priority": 0},
        {"event": "floor_queued", "room": "r1", "participant": "p3", "position": 2,
         "alias": "desk", "call_type": "normal", "priority": 0},
        {"event": "floor_queued", "room": "r1", "participant": "p2", "position": 1,
         "alias": "e3", "call_type": "emergency", "priority": 0},
        {"event": "floor_revoked", "room": "r1", "participant": "p1", "cause": 4},
        {"event": "emergency_raised", "room": "r1", "alert": alert},
        {"event": "floor_released", "room": "r1", "participant": "p1", "reason": "released"},
        {"event": "floor_granted", "room": "r1", "participant": "p2", "user_id": "u2",
         "alias": "e3", "call_type": "emergency", "priority": 0},
        {"event": "floor_queue_cancelled", "room": "r1", "participant": "p3"},
        {"event": "participant_updated", "room": "r1", "participant": "p3", "muted": True},
        {"event": "emergency_acknowledged", "room": "r1",
         "alert": {**alert, "state": "acknowledged", "acknowledged_by": "disp"}},
        {"event": "stopped_talking", "room": "r1", "participant": "p3"},
        {"event": "left", "room": "r1", "participant": "p1"},
        {"event": "dtmf", "room": "r1", "participant": "p2", "digit": "5"},
        {"event": "worker_died", "worker": 0, "pid": 1, "exit": -9},
        {"event": "joined", "room": "gone", "participant": "px", "kind": "rtp", "name": "x"},
        {"event": "room_deleted", "room": "r2"},
    ]  # fmt: skip
    doubled = [e for event in events for e in (event, event)]
    return [{**e, "epoch": "e", "seq": i + 1, "time": 1000.0 + i} for i, e in enumerate(doubled)]


def test_the_console_reducer_folds_every_event_kind_and_twice_is_once() -> None:
    from bridge.web.sio import ConsoleState

    once, twice = ConsoleState(), ConsoleState()
    for i, event in enumerate(_script()):
        if i % 2 == 0:
            once.apply(event)
        twice.apply(event)
    assert once.to_dict() == twice.to_dict()
    state = twice.to_dict()
    assert set(state["rooms"]) == {"r1"}
    room = state["rooms"]["r1"]
    assert (room["name"], room["mode"], room["record"]) == ("tac-1", "ptt", True)
    assert set(room["participants"]) == {"p2", "p3"} and room["participants"]["p3"]["muted"]
    assert room["talking"] == []
    floor = room["floor"]
    assert (floor["state"], floor["holder"], floor["call_type"]) == ("taken", "p2", "emergency")
    assert floor["queue"] == []
    assert state["alerts"]["a1"]["state"] == "acknowledged"


def test_the_console_reducer_in_javascript_matches_python(tmp_path: Path) -> None:
    """``web/static/js/state.js`` mirrors :class:`ConsoleState` rule for rule."""
    import json
    import shutil
    import subprocess

    from bridge.web.sio import ConsoleState

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    state_js = Path(__file__).resolve().parents[2] / "web" / "static" / "js" / "state.js"
    script = tmp_path / "fold.mjs"
    script.write_text(
        f"import {{ ConsoleState }} from {json.dumps(state_js.as_uri())};\n"
        "import { readFileSync } from 'node:fs';\n"
        "const state = new ConsoleState();\n"
        "for (const e of JSON.parse(readFileSync(0, 'utf8'))) state.apply(e);\n"
        "process.stdout.write(JSON.stringify(state));\n"
    )
    events = _script()
    result = subprocess.run(
        [node, str(script)], input=json.dumps(events), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    python = ConsoleState()
    for event in events:
        python.apply(event)
    assert json.loads(result.stdout) == python.to_dict()
