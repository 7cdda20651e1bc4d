"""Platform settings through a real server: login rate limit, config keys, batch presence."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from server import SECRET, Server

from bridge.config import DEFAULT_PRESENCE_RATE_HZ
from bridge.web.app import LOGIN_ATTEMPTS_PER_MINUTE
from bridge.web.auth import Role

TILES = "https://tiles.example.org/{z}/{x}/{y}.png"


def _login(server: Server, code: str, source: str, **headers: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", f"/login?code={code}", headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_failed_logins_are_limited_per_source_address(server: Server) -> None:
    for _ in range(LOGIN_ATTEMPTS_PER_MINUTE):
        assert _login(server, "wrong", "127.0.0.1") == (
            401,
            {"error": "login code is unknown, used or expired"},
        )
    limited = (429, {"error": "too many failed logins; try again in a minute"})
    assert _login(server, "wrong", "127.0.0.1") == limited
    # A forwarded-for header does not make another client of the same address.
    assert _login(server, "wrong", "127.0.0.1", **{"X-Forwarded-For": "10.9.8.7"}) == limited
    # Another source address (still loopback) has its own allowance.
    assert _login(server, "wrong", "127.0.0.2")[0] == 401


@pytest.fixture
def configured(tmp_path: Path) -> Any:
    audit = tmp_path / "logs" / "dispatch-audit.jsonl"
    server = Server(
        tmp_path,
        extra_toml=(
            f'[audit]\npath = "{audit}"\n'
            f'[console]\ntile_url = "{TILES}"\ntile_attribution = "© Example tiles"\n'
            "center_lat = 48.85\ncenter_lon = 2.35\nzoom = 12\n"
        ),
    )
    server.start()
    try:
        yield server, audit
    finally:
        server.stop()


def test_the_tile_url_and_audit_path_come_from_the_config(configured: Any) -> None:
    server, audit = configured
    settings = server.get("/console/settings.json", auth=False)
    assert settings == {
        "tile_url": TILES,
        "tile_attribution": "© Example tiles",
        "tile_max_zoom": 19,
        "center_lat": 48.85,
        "center_lon": 2.35,
        "zoom": 12,
        "presence_rate_hz": DEFAULT_PRESENCE_RATE_HZ,
    }
    server.ok("POST", "/api/rooms", {"name": "audited"})
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["outcome"]) for r in records] == [("rest:room_create", "ok")]
    assert not (server.tmp / "audit.jsonl").exists()


def test_the_default_console_map_needs_no_internet(server: Server) -> None:
    settings = server.get("/console/settings.json", auth=False)
    assert settings["tile_url"] is None and settings["tile_attribution"] == ""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[console]\ntile_url = "https://tiles.example.org/{z}/{x}.png"\n',
            "bad config key console.tile_url: Value error, a tile URL template needs {y}",
        ),
        (
            '[console]\ntile_url = "file:///etc/{z}/{x}/{y}"\n',
            "bad config key console.tile_url: String should match pattern",
        ),
        ("[console]\ncenter_lat = 91\n", "bad config key console.center_lat: Input should be"),
        ('[audit]\npath = "/"\n', "bad config key audit.path: Value error, must name a file"),
        ("[audit]\nfile = 'x'\n", "unknown config key: audit.file"),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    done = subprocess.run(
        [sys.executable, "-P", "-m", "bridge.cli", "serve", "--config", str(config)],
        env=dict(os.environ, UCBRIDGE_AUTH_SECRET=SECRET),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"ucbridge: {message}"), done.stderr


def test_a_batch_of_fixes_keeps_the_good_ones_and_names_the_bad_by_index(server: Server) -> None:
    reports = [
        {"unit": "car-1", "lat": 48.85, "lon": 2.35, "speed_mps": 12.5},
        {"unit": "car-2", "lat": 91.0, "lon": 2.35},
        {"unit": "car-3", "lat": 48.86},
        {"unit": "bad unit!", "lat": 1.0, "lon": 1.0},
        "not an object",
        {"unit": "car-4", "lat": 48.87, "lon": 2.36, "time": 4e9},
        {"unit": "car-5", "lat": 48.88, "lon": 2.37, "kind": "trunk", "alias": "Five"},
    ]
    status, answer = server.request("POST", "/api/presence/reports", {"reports": reports})
    assert status == 200
    assert answer["accepted"] == 2
    rejected = {r["index"]: (r["unit"], r["error"]) for r in answer["rejected"]}
    assert rejected[1] == ("car-2", "latitude is out of range")
    assert rejected[2] == ("car-3", "lon: Field required")
    assert rejected[3][0] == "bad unit!" and rejected[3][1].startswith("unit: String should")
    assert rejected[4] == (
        None,
        "report: Input should be a valid dictionary or instance of UnitReport",
    )
    assert rejected[5][0] == "car-4" and "future" in rejected[5][1]
    units = {f["id"]: f for f in server.get("/api/presence")["features"]}
    assert set(units) == {"car-1", "car-5"}
    assert units["car-5"]["properties"]["alias"] == "Five"
    assert units["car-1"]["properties"]["speed"] == 12.5


def test_a_batch_is_checked_as_a_whole_first(server: Server) -> None:
    assert server.request("POST", "/api/presence/reports", {"reports": []}) == (
        422,
        {"error": "reports: List should have at least 1 item after validation, not 0"},
    )
    too_many = [{"unit": "u", "lat": 0.0, "lon": 0.0}] * 1001
    status, answer = server.request("POST", "/api/presence/reports", {"reports": too_many})
    assert status == 422 and answer["error"].startswith("reports: List should have at most 1000")
    officer = server.token(Role.OFFICER, "car-7")
    status, answer = server.request(
        "POST",
        "/api/presence/reports",
        {"reports": [{"unit": "car-7", "lat": 1, "lon": 2}, {"unit": "car-8", "lat": 1, "lon": 2}]},
        token=officer,
    )
    assert (status, answer) == (
        200,
        {
            "accepted": 1,
            "rejected": [
                {"index": 1, "unit": "car-8", "error": "an officer may report only its own unit"}
            ],
        },
    )
    status, _ = server.request(
        "POST", "/api/presence/reports", {"reports": [{"unit": "x"}]}, role=Role.OBSERVER
    )
    assert status == 403
