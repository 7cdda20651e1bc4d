"""Two legs with one RTP remote address on one worker: refused (409), unless both latch."""

from __future__ import annotations

from server import Server, free_port


def _join(server: Server, room: str, port: int, **extra: object) -> tuple[int, dict[str, object]]:
    body = {"address": {"ip": "127.0.0.1", "port": port}, **extra}
    status, reply = server.request("POST", f"/api/rooms/{room}/participants", body)
    return status, reply


def test_a_second_leg_with_the_same_remote_address_is_refused_naming_the_first(
    server: Server,
) -> None:
    server.ok("POST", "/api/rooms", {"name": "one"})
    server.ok("POST", "/api/rooms", {"name": "two"})
    port = free_port()
    status, first = _join(server, "one", port)
    assert status == 201
    for room in ("one", "two"):  # the same room, and another room on the same worker
        status, reply = _join(server, room, port)
        assert (status, reply) == (
            409,
            {
                "error": f"RTP address 127.0.0.1:{port} is already used by participant "
                f"{first['id']} in room one"
            },
        )
    assert _join(server, "one", port + 1)[0] == 201  # another port of the same host is fine
    # Once the first leg has left, its address is free again.
    server.ok("DELETE", f"/api/rooms/one/participants/{first['id']}")
    status, second = _join(server, "two", port)
    assert status == 201
    assert [p["id"] for p in server.get("/api/rooms/two")["participants"]] == [second["id"]]


def test_two_latching_legs_may_declare_the_same_address(server: Server) -> None:
    server.ok("POST", "/api/rooms", {"name": "nat"})
    port = free_port()
    assert _join(server, "nat", port, latch=True)[0] == 201
    assert _join(server, "nat", port, latch=True)[0] == 201  # both re-pointed by latching
    status, reply = _join(server, "nat", port)  # but not a leg that does not latch
    assert status == 409 and "already used" in str(reply["error"])
