"""One floor for a patch group (FloorHub.set_patches), with a fake clock and no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.floor import FloorConfig
from bridge.floorhub import FloorHub


class Hub:
    def __init__(self) -> None:
        self.now = 100.0
        self.holders: list[tuple[str, str | None]] = []
        self.events: list[dict[str, Any]] = []
        self.hub = FloorHub(
            set_holder=lambda room, p: self.holders.append((room, p)),
            events=self.events.append,
            clock=lambda: self.now,
        )
        self.hub.add_room("A", FloorConfig(t1=4.0))
        self.hub.add_room("B", FloorConfig(t1=9.0))
        self.hub.add_room("C")
        self.hub.join("A", "a")
        self.hub.join("B", "b")
        self.hub.join("C", "c")

    def kinds(self, kind: str) -> list[str]:
        return [e["room"] for e in self.events if e["event"] == kind]


def test_a_request_in_either_room_meets_one_floor() -> None:
    h = Hub()
    h.hub.set_patches([["A", "B"]])
    assert h.hub.patch_of("B") == ["A", "B"]
    assert h.hub.server("B") is h.hub.server("A")
    assert h.hub.server("B").config.t1 == 4.0  # the anchor's (first room's) settings
    assert h.hub.request("b") == {"result": "granted"}
    assert h.holders[-1] == ("B", "b")  # the holder goes into the matrix in its own room
    assert h.hub.request("a") == {"result": "queued", "position": 1}
    assert sorted(h.kinds("floor_granted")) == ["A", "B"]  # each room's consoles hear of it
    h.hub.release("b")
    assert h.hub.snapshot("A")["holder"] == "a"
    assert h.holders[-2:] == [("B", None), ("A", "a")]
    # A room outside the patch keeps its own floor.
    assert h.hub.request("c") == {"result": "granted"}


def test_unpatch_gives_each_room_its_floor_back() -> None:
    h = Hub()
    h.hub.set_patches([["A", "B"]])
    assert h.hub.request("b") == {"result": "granted"}
    h.hub.set_patches([])
    # b left the anchor's server, so that floor is idle; its own room's floor is free.
    assert h.hub.snapshot("A")["holder"] is None
    assert ("B", None) in h.holders
    assert h.hub.request("a") == {"result": "granted"}
    assert h.hub.request("b") == {"result": "granted"}


def test_removing_the_anchor_splits_the_group() -> None:
    h = Hub()
    h.hub.set_patches([["A", "B", "C"]])
    assert h.hub.request("a") == {"result": "granted"}
    h.hub.remove_room("A")
    assert h.hub.patch_of("B") == ["B", "C"]
    assert h.hub.request("b") == {"result": "granted"}
    assert h.hub.request("c") == {"result": "queued", "position": 1}


def test_a_room_in_two_groups_is_refused() -> None:
    h = Hub()
    with pytest.raises(ValueError, match="more than one patch group"):
        h.hub.set_patches([["A", "B"], ["B", "C"]])
