"""SniffedPackets on its own: what a UDP flow does while it is held for
sniffing, when its route fails, and when it closes before it is routed.
The outbound is a recorder: what is under test is the holding, not the
sending (the integration tests send through real sockets)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import pytest
import trio

from tests.integration.test_quic_sniffing import DNS_QUERY, quic_first_flight
from vtrio.config import model
from vtrio.errors import DialError
from vtrio.net.outbound import Destination
from vtrio.net.sniffing import SNIFF_WAIT, SniffedPackets

if TYPE_CHECKING:
    from vtrio.protocol.address import Address

DESTINATION = Destination(ipaddress.ip_address("192.0.2.1"), 443, "udp")
SNIFFING = model.Sniffing(("quic",))


class Recorder:
    """A packet connection that keeps what is sent and answers one datagram."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address, int]] = []
        self.closed = False

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((payload, address, port))

    async def receive_from(self) -> tuple[bytes, Address, int]:
        await trio.lowlevel.checkpoint()
        return b"answer", "localhost", 443

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True


class Routes:
    """The routing SniffedPackets calls: records each call, opens a Recorder
    (or fails with ``failure``)."""

    def __init__(
        self, failure: Exception | None = None, gate: trio.Event | None = None
    ) -> None:
        """``gate``: opening waits for it (a route that takes time)."""
        self.calls: list[tuple[Destination, Destination, str]] = []
        self.opened: list[Recorder] = []
        self._failure = failure
        self._gate = gate

    async def open(
        self, dial: Destination, route: Destination, protocol: str
    ) -> Recorder:
        await trio.lowlevel.checkpoint()
        self.calls.append((dial, route, protocol))
        if self._gate is not None:
            await self._gate.wait()
        if self._failure is not None:
            raise self._failure
        self.opened.append(Recorder())
        return self.opened[-1]


async def test_a_whole_client_hello_routes_at_once_and_overrides() -> None:
    routes = Routes()
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        first, second = quic_first_flight("localhost")
        await packets.send_to(first, DESTINATION.address, 443)
        assert routes.calls == []  # held: half a ClientHello
        await packets.send_to(second, DESTINATION.address, 443)
        ((dial, route, protocol),) = routes.calls
        assert (dial.address, route.address, protocol) == (
            "localhost",
            "localhost",
            "quic",
        )
        (recorder,) = routes.opened
        assert recorder.sent == [(first, "localhost", 443), (second, "localhost", 443)]
        # The answer is from where the client sent to.
        assert await packets.receive_from() == (b"answer", DESTINATION.address, 443)
        await packets.aclose()
    assert recorder.closed


async def test_what_is_not_quic_is_routed_by_its_destination_at_once() -> None:
    routes = Routes()
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        await packets.send_to(DNS_QUERY, DESTINATION.address, 443)
        assert routes.calls == [(DESTINATION, DESTINATION, "")]
        assert routes.opened[0].sent == [(DNS_QUERY, DESTINATION.address, 443)]
        await packets.aclose()


async def test_half_a_client_hello_is_routed_by_its_destination_after_the_wait() -> (
    None
):
    routes = Routes()
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        first, _ = quic_first_flight("localhost")
        await packets.send_to(first, DESTINATION.address, 443)
        await trio.sleep(SNIFF_WAIT + 0.1)
        assert routes.calls == [(DESTINATION, DESTINATION, "")]
        assert routes.opened[0].sent == [(first, DESTINATION.address, 443)]
        await packets.aclose()


async def test_a_flow_closed_while_held_opens_nothing() -> None:
    routes = Routes()
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        first, _ = quic_first_flight("localhost")
        await packets.send_to(first, DESTINATION.address, 443)
        await packets.aclose()
        await trio.sleep(SNIFF_WAIT + 0.1)
    assert routes.calls == []


async def test_a_route_that_fails_fails_the_sender_the_reader_and_later_sends() -> None:
    routes = Routes(DialError("no outbound"))
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        with pytest.raises(DialError, match="no outbound"):
            await packets.send_to(DNS_QUERY, DESTINATION.address, 443)
        with pytest.raises(DialError, match="no outbound"):
            await packets.receive_from()
        with pytest.raises(DialError, match="no outbound"):
            await packets.send_to(DNS_QUERY, DESTINATION.address, 443)
        await packets.aclose()


async def test_datagrams_sent_while_it_routes_follow_the_held_ones() -> None:
    gate = trio.Event()
    routes = Routes(gate=gate)
    async with trio.open_nursery() as nursery:
        packets = SniffedPackets(routes.open, DESTINATION, SNIFFING, nursery)
        first, second = quic_first_flight("allowed.test")
        await packets.send_to(first, DESTINATION.address, 443)
        nursery.start_soon(packets.send_to, second, DESTINATION.address, 443)
        await trio.testing.wait_all_tasks_blocked()
        assert len(routes.calls) == 1  # routing, held at the gate
        nursery.start_soon(packets.send_to, b"third", DESTINATION.address, 443)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        (recorder,) = routes.opened
        assert [payload for payload, _, _ in recorder.sent] == [first, second, b"third"]
        await packets.aclose()
