"""ICE settings: which host candidates the gateway offers, and its STUN/TURN servers.

aioice gathers host candidates from every interface address but 127.0.0.1
(``aioice.ice.get_host_addresses``) and takes no list of its own. The gateway runs in a
process of its own, so it installs :func:`restrict_host_addresses` once at start:
host candidates then come only from the configured interfaces (``gateways.webrtc.
interfaces``: interface names or addresses). Loopback is allowed when named, which is how
tests on a loopback-only machine run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

HostAddresses = Callable[[bool, bool], list[str]]


def _address_text(ip: str | tuple[str, int, int]) -> str:
    return ip if isinstance(ip, str) else ip[0]


def interface_addresses(interfaces: Sequence[str]) -> list[str]:
    """Addresses of the named interfaces, and the addresses named directly, in order.

    Raises ``ValueError("unknown interface or address: X")`` for an entry that is neither
    an interface of this machine nor a valid IP address.
    """
    adapters = {adapter.nice_name: adapter for adapter in ifaddr.get_adapters()}
    addresses: list[str] = []
    for entry in interfaces:
        adapter = adapters.get(entry)
        if adapter is not None:
            for ip in adapter.ips:
                text = _address_text(ip.ip)
                if not ipaddress.ip_address(text).is_link_local:
                    addresses.append(text)
            continue
        try:
            addresses.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise ValueError(f"unknown interface or address: {entry}") from None
    return list(dict.fromkeys(addresses))


def restrict_host_addresses(interfaces: Sequence[str]) -> None:
    """Make aioice gather host candidates on ``interfaces`` only (empty: its default)."""
    if not interfaces:
        return
    addresses = interface_addresses(interfaces)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = []
        for address in addresses:
            version = ipaddress.ip_address(address).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                chosen.append(address)
        return chosen

    aioice.ice.get_host_addresses = host_addresses


def rtc_configuration(
    stun_urls: Sequence[str],
    turn_urls: Sequence[str],
    turn_username: str,
    turn_credential: str,
) -> RTCConfiguration:
    """The peer connections' STUN and TURN servers (no server: host candidates only)."""
    servers = []
    if stun_urls:
        servers.append(RTCIceServer(urls=list(stun_urls)))
    if turn_urls:
        servers.append(
            RTCIceServer(
                urls=list(turn_urls),
                username=turn_username or None,
                credential=turn_credential or None,
            )
        )
    return RTCConfiguration(iceServers=servers)
