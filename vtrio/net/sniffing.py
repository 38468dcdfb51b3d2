"""Sniffing: read a tunnel's first bytes before it is routed (v2ray's ``sniffing``).

Theory of operation: the bytes are read into the client's buffered stream and
stay there, so the outbound gets them unchanged. Reading stops as soon as the
sniffers have decided, at the limit, or after the wait: a client that waits
for the server to speak first (SMTP, SSH) costs at most that wait, as in
v2ray. The found name replaces the destination's address when the inbound's
``destOverride`` asks for its protocol, unless the name or the original IP
is excluded; with ``routeOnly`` only routing sees it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

import trio

from vtrio import routing
from vtrio.net.outbound import Destination, parse_address
from vtrio.protocol.sniff import MORE, Sniffed, overrides, sniff

if TYPE_CHECKING:
    from vtrio.config.model import Sniffing
    from vtrio.net.transport.buffered import BufferedStream

LOGGER = logging.getLogger("vtrio.net.sniffing")

# v2ray waits up to 200 ms in all for the first bytes, and reads up to 32 KiB.
SNIFF_WAIT = 0.2
SNIFF_LIMIT = 32768


async def sniff_stream(stream: BufferedStream) -> Sniffed | None:
    """What the stream's first bytes are, read ahead and left in its buffer."""
    with trio.move_on_after(SNIFF_WAIT):
        while True:
            if stream.buffered:
                verdict = sniff(stream.ahead)
                if verdict != MORE:
                    return verdict if isinstance(verdict, Sniffed) else None
                if stream.buffered >= SNIFF_LIMIT:
                    return None
            if not await stream.read_ahead():
                return None
    return None


# Each inbound's domainsExcluded, indexed on first use (a geosite list can
# hold thousands); keyed by identity, the model kept alive with its index.
_EXCLUDED_INDEXES: dict[int, tuple[Sniffing, routing.DomainIndex]] = {}


def _excluded(sniffing: Sniffing) -> routing.DomainIndex:
    kept = _EXCLUDED_INDEXES.get(id(sniffing))
    if kept is None or kept[0] is not sniffing:
        kept = (sniffing, routing.DomainIndex(sniffing.domains_excluded))
        _EXCLUDED_INDEXES[id(sniffing)] = kept
    return kept[1]


def _excluded_ip(sniffing: Sniffing, destination: Destination) -> bool:
    address = destination.address
    return isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) and any(
        address.version == network.version and address in network
        for network in sniffing.ips_excluded
    )


async def sniffed_destinations(
    stream: BufferedStream, destination: Destination, sniffing: Sniffing
) -> tuple[Destination, Destination, str]:
    """Where to dial, what to route by, and the protocol found ("" if none)."""
    if destination.network != "tcp" or _excluded_ip(sniffing, destination):
        return destination, destination, ""
    found = await sniff_stream(stream)
    if found is None:
        return destination, destination, ""
    name = found.domain
    if (
        not name
        or not overrides(found.protocol, sniffing.dest_override)
        or name in _excluded(sniffing)
    ):
        return destination, destination, found.protocol
    sniffed = Destination(parse_address(name), destination.port, "tcp")
    LOGGER.debug("sniffed %s name %s for %s", found.protocol, name, destination)
    dial = destination if sniffing.route_only else sniffed
    return dial, sniffed, found.protocol
