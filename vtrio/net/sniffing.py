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
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import Sniffing
    from vtrio.net.transport.buffered import BufferedStream

LOGGER = logging.getLogger("vtrio.net.sniffing")

# v2ray waits up to 200 ms in all for the first bytes, and reads up to 32 KiB.
SNIFF_WAIT = 0.2
SNIFF_LIMIT = 32768


async def sniff_bytes(
    seen: bytearray, read: Callable[[], Awaitable[bytes]]
) -> Sniffed | None:
    """What the first bytes are: ``seen`` holds those in already and grows by
    what ``read`` returns (b"" at the end), within the wait and the limit."""
    with trio.move_on_after(SNIFF_WAIT):
        while True:
            if seen:
                verdict = sniff(bytes(seen))
                if verdict != MORE:
                    return verdict if isinstance(verdict, Sniffed) else None
                if len(seen) >= SNIFF_LIMIT:
                    return None
            data = await read()
            if not data:
                return None
            seen += data
    return None


async def sniff_stream(stream: BufferedStream) -> Sniffed | None:
    """What the stream's first bytes are, read ahead and left in its buffer."""

    async def read() -> bytes:
        before = stream.buffered
        return stream.ahead[before:] if await stream.read_ahead() else b""

    return await sniff_bytes(bytearray(stream.ahead), read)


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
    if not wants_sniffing(destination, sniffing):
        return destination, destination, ""
    return sniffed_route(await sniff_stream(stream), destination, sniffing)


def wants_sniffing(destination: Destination, sniffing: Sniffing) -> bool:
    """TCP, to an address ``ipsExcluded`` does not name."""
    _, excluded_ips = _exclusions(sniffing)
    address = destination.address
    return destination.network == "tcp" and (
        isinstance(address, str) or address not in excluded_ips
    )


def sniffed_route(
    found: Sniffed | None, destination: Destination, sniffing: Sniffing
) -> tuple[Destination, Destination, str]:
    """Where to dial and what to route by once ``found`` is known, and the
    protocol found ("" if nothing was)."""
    if found is None:
        return destination, destination, ""
    excluded_names, _ = _exclusions(sniffing)
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
