"""Sniffing: read a tunnel's first bytes before it is routed (v2ray's ``sniffing``).

Theory of operation: the bytes are read into the client's buffered stream and
stay there, so the outbound gets them unchanged. Reading stops as soon as the
sniffers have decided, at the limit, or after the wait: a client that waits
for the server to speak first (SMTP, SSH) costs at most that wait, as in
v2ray. The found name replaces the destination's address when the inbound's
``destOverride`` asks for its protocol, unless the name or the original IP
is excluded; with ``routeOnly`` only routing sees it.

A UDP flow (:class:`SniffedPackets`) is routed once its first datagrams have
been sniffed (a QUIC ClientHello, as Xray reads it): they are held until the
sniffer has decided, or the wait has passed, and then go on in order.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import trio

from vtrio import routing
from vtrio.errors import DialError
from vtrio.protocol.address import parse_address
from vtrio.protocol.quic import sniff_quic
from vtrio.protocol.sniff import MORE, Sniffed, Sniffer, overrides, sniff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import Sniffing
    from vtrio.net.outbound import Destination, PacketConnection
    from vtrio.net.transport.buffered import BufferedStream
    from vtrio.protocol.address import Address

LOGGER = logging.getLogger("vtrio.net.sniffing")

# v2ray waits up to 200 ms in all for the first bytes, and reads up to 32 KiB.
SNIFF_WAIT = 0.2
SNIFF_LIMIT = 32768
UDP_SNIFFERS: tuple[Sniffer, ...] = (sniff_quic,)
# Datagrams a flow may send before it is routed without a verdict.
SNIFF_DATAGRAMS = 8


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
    """To an address ``ipsExcluded`` does not name."""
    _, excluded_ips = _exclusions(sniffing)
    address = destination.address
    return isinstance(address, str) or address not in excluded_ips


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
    sniffed = dataclasses.replace(destination, address=parse_address(name))
    LOGGER.debug("sniffed %s name %s for %s", found.protocol, name, destination)
    dial = destination if sniffing.route_only else sniffed
    return dial, sniffed, found.protocol


class SniffedPackets:
    """A UDP flow whose first datagrams are sniffed before it is routed.

    ``open_routed(dial, route, protocol)`` routes by ``route`` (the sniffed
    protocol given for the routing rules) and opens the outbound's packet
    connection towards ``dial``. Datagrams to the flow's destination go to
    ``dial`` from then on; with an override and no other destination, the
    replies are reported as from the destination the client sent to.
    """

    def __init__(
        self,
        open_routed: Callable[
            [Destination, Destination, str], Awaitable[PacketConnection]
        ],
        destination: Destination,
        sniffing: Sniffing,
        nursery: trio.Nursery,
    ) -> None:
        self._open_routed = open_routed
        self._destination = destination
        self._sniffing = sniffing
        self._nursery = nursery
        self._held: list[tuple[bytes, Address, int]] = []
        self._seen = bytearray()  # what went to the destination, for the sniffers
        self._routed = trio.Event()
        self._deciding = False
        self._timer = trio.CancelScope()
        self._inner: PacketConnection | None = None
        self._failure: Exception | None = None
        self._dial = destination
        self._elsewhere = False  # a datagram went to another destination
        self._closed = False

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        if not self._deciding:
            if not self._held:
                self._nursery.start_soon(self._route_when_waited)
            self._held.append((payload, address, port))
            if self._to_destination(address, port):
                self._seen += payload
            verdict = sniff(bytes(self._seen), UDP_SNIFFERS) if self._seen else MORE
            if (
                verdict == MORE
                and len(self._held) < SNIFF_DATAGRAMS
                and len(self._seen) < SNIFF_LIMIT
            ):
                await trio.lowlevel.checkpoint()
                return
            await self._route(verdict if isinstance(verdict, Sniffed) else None)
            return
        await self._routed.wait()
        await self._forward(payload, address, port)

    async def receive_from(self) -> tuple[bytes, Address, int]:
        await self._routed.wait()
        if self._inner is None:
            assert self._failure is not None
            raise self._failure
        payload, address, port = await self._inner.receive_from()
        if self._dial is not self._destination and not self._elsewhere:
            return payload, self._destination.address, self._destination.port
        return payload, address, port

    async def aclose(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._inner is not None:
            await self._inner.aclose()
        else:
            await trio.lowlevel.checkpoint()

    def _to_destination(self, address: Address, port: int) -> bool:
        to_it = (address, port) == (self._destination.address, self._destination.port)
        self._elsewhere = self._elsewhere or not to_it
        return to_it

    async def _route_when_waited(self) -> None:
        """Route with what has come when the wait is over and no sniffer has
        decided (a client sent part of a ClientHello, or waits for an answer)."""
        with self._timer:
            await trio.sleep(SNIFF_WAIT)
        if not self._deciding and not self._closed:
            try:
                await self._route(None)
            except (DialError, OSError) as exc:
                LOGGER.info("UDP to %s: %s", self._destination, exc)

    async def _route(self, found: Sniffed | None) -> None:
        """Open the outbound the sniffed name routes to, and send the held
        datagrams on; whatever happens, waiting senders and readers go on."""
        self._deciding = True
        self._timer.cancel()
        dial, route, protocol = sniffed_route(found, self._destination, self._sniffing)
        try:
            try:
                inner = await self._open_routed(dial, route, protocol)
            except (DialError, OSError) as exc:
                self._failure = exc
                raise
            if self._closed:  # closed while it was being opened
                await inner.aclose()
                return
            self._inner, self._dial = inner, dial
            held, self._held = self._held, []
            for payload, address, port in held:
                try:
                    await self._forward(payload, address, port)
                except (DialError, OSError) as exc:
                    LOGGER.debug("UDP to %s:%d failed: %s", address, port, exc)
        finally:
            if self._inner is None and self._failure is None:
                self._failure = DialError(f"{self._destination}: the flow was closed")
            self._routed.set()

    async def _forward(self, payload: bytes, address: Address, port: int) -> None:
        if self._inner is None:
            assert self._failure is not None
            raise self._failure
        if self._to_destination(address, port):
            address, port = self._dial.address, self._dial.port
        await self._inner.send_to(payload, address, port)
