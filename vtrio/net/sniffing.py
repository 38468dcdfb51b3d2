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


# Each inbound's exclusions, indexed on first use (geosite and geoip lists
# can hold thousands); keyed by identity, the model kept alive with them.
_EXCLUSIONS: dict[int, tuple[Sniffing, routing.DomainIndex, routing.NetworkIndex]] = {}


def _exclusions(
    sniffing: Sniffing,
) -> tuple[routing.DomainIndex, routing.NetworkIndex]:
    kept = _EXCLUSIONS.get(id(sniffing))
    if kept is None or kept[0] is not sniffing:
        kept = (
            sniffing,
            routing.DomainIndex(sniffing.domains_excluded),
            routing.NetworkIndex(sniffing.ips_excluded),
        )
        _EXCLUSIONS[id(sniffing)] = kept
    return kept[1], kept[2]


async def sniffed_destinations(
    stream: BufferedStream, destination: Destination, sniffing: Sniffing
) -> tuple[Destination, Destination, str]:
    """Where to dial, what to route by, and the protocol found ("" if none)."""
    excluded_names, excluded_ips = _exclusions(sniffing)
    address = destination.address
    if destination.network != "tcp" or (
        not isinstance(address, str) and address in excluded_ips
    ):
        return destination, destination, ""
    found = await sniff_stream(stream)
    if found is None:
        return destination, destination, ""
    name = found.domain
    if (
        not name
        or not overrides(found.protocol, sniffing.dest_override)
        or name in excluded_names
    ):
        return destination, destination, found.protocol
    sniffed = Destination(parse_address(name), destination.port, "tcp")
    LOGGER.debug("sniffed %s name %s for %s", found.protocol, name, destination)
    dial = destination if sniffing.route_only else sniffed
    return dial, sniffed, found.protocol
