"""Parsing XML from the network without entity expansion.

Both XML formats the bridge reads from outside (Cursor-on-Target events, 3GPP TS 24.379
location-info) are parsed here: the size is checked first, and any DOCTYPE is refused, and
with it every entity declaration, so neither "billion laughs" expansion nor an external
entity (XML 1.0 §4.2) can happen. The rest is :mod:`xml.etree.ElementTree`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that refuses a DOCTYPE."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self._what = what

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError(f"{self._what} must not contain a DOCTYPE")


def parse_untrusted(data: bytes | str, what: str, max_size: int) -> ET.Element:
    """The root element of ``data``; ``ValueError`` naming ``what`` when it is too large,
    not well-formed, or has a DOCTYPE."""
    if len(data) > max_size:
        raise ValueError(f"{what} is too large")
    parser = ET.XMLParser(target=_NoDoctype(what))
    try:
        parser.feed(data)
        root: ET.Element = parser.close()
    except ET.ParseError:
        raise ValueError(f"{what} is not well-formed XML") from None
    return root
