"""The VMess outbound's choice of server: a server that swallows connections
costs its share of the connect deadline, then the next server is dialled."""

from __future__ import annotations

import socket
import uuid
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from vtrio.config import model
from vtrio.errors import DialError
from vtrio.net.outbound import CONNECT_TIMEOUT, Destination, Dispatcher, VMessOutbound
from vtrio.net.vmess_stream import VMessStream

if TYPE_CHECKING:
    from collections.abc import Iterator

USER = model.VMessUser(uuid.UUID("0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"))


@pytest.fixture
def swallowing_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a
    connect to it neither succeeds nor fails (a blackholed server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    yield int(listener.getsockname()[1])
    filler.close()
    listener.close()


def outbound(*ports: int) -> VMessOutbound:
    servers = tuple(model.VMessServer("127.0.0.1", port, (USER,)) for port in ports)
    return VMessOutbound(
        "proxy", model.VMessOutboundSettings(servers), model.StreamSettings()
    )


async def test_a_swallowing_server_gives_way_to_the_next(
    swallowing_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    good_port = listener.socket.getsockname()[1]
    started = trio.current_time()
    stream = await Dispatcher.connect(
        outbound(swallowing_port, good_port), Destination("example.com", 80, "tcp")
    )
    # Two servers: the first attempt had half of the deadline.
    assert trio.current_time() - started == pytest.approx(CONNECT_TIMEOUT / 2)
    assert isinstance(stream, VMessStream)
    accepted = await listener.accept()
    await accepted.aclose()
    await stream.aclose()
    await listener.aclose()


async def test_one_swallowing_server_is_a_dial_error_at_the_deadline(
    swallowing_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.current_time()
    with pytest.raises(DialError, match="connect timed out"):
        await Dispatcher.connect(
            outbound(swallowing_port), Destination("example.com", 80, "tcp")
        )
    assert trio.current_time() - started == pytest.approx(CONNECT_TIMEOUT)
