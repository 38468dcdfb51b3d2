"""TCPStream and TCPListener over real loopback sockets: trio's generic stream
checks (half-close, conflicts, closing under a waiter, checkpoints), where
sending yields only when it waited, and the listener's accept and close."""

from __future__ import annotations

import errno
import socket
from typing import cast

import pytest
import trio
import trio.testing

from vtrio.config.model import StreamSettings
from vtrio.net.inbound import ACCEPT_PAUSE, _accept_loop
from vtrio.net.transport import open_listeners, tcp
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.transport.tcp import TCPListener, TCPStream, from_trio_stream


async def tcp_pair() -> tuple[TCPStream, TCPStream]:
    listeners = await open_listeners(StreamSettings(), "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    client = from_trio_stream(await trio.open_tcp_stream("127.0.0.1", port))
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


class _YieldingAfterSends(TCPStream):
    """TCPStream with the schedule point trio's checks expect after every
    send (the real one yields only when it waited, see the tests below);
    everything else those checks test is the real class's."""

    __slots__ = ()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await super().send_all(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        await super().send_eof()
        await trio.lowlevel.cancel_shielded_checkpoint()


def _yielding(pair: tuple[TCPStream, TCPStream]) -> tuple[TCPStream, TCPStream]:
    for stream in pair:
        stream.__class__ = _YieldingAfterSends
    return pair


async def _yielding_pair() -> tuple[TCPStream, TCPStream]:
    return _yielding(await tcp_pair())


async def _yielding_clogged_pair() -> tuple[TCPStream, TCPStream]:
    return _yielding(await clogged_tcp_pair())


def _fill(stream: TCPStream) -> None:
    try:
        while True:
            stream.socket.send(b"x" * 65536)
    except BlockingIOError:
        pass


async def clogged_tcp_pair() -> tuple[TCPStream, TCPStream]:
    """A pair whose send buffers are full both ways: send_all blocks."""
    client, server = await tcp_pair()
    _fill(client)
    _fill(server)
    return client, server


async def test_generic_half_closeable_stream_checks() -> None:
    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(
            _yielding_pair, _yielding_clogged_pair
        )


def _schedule_points() -> int:
    # What trio.testing.assert_no_checkpoints counts, without the cancel points.
    return trio.lowlevel.current_task()._schedule_points


async def test_a_send_that_did_not_wait_is_a_cancel_point_not_a_schedule_point() -> (
    None
):
    client, server = await tcp_pair()
    async with client, server:
        before = _schedule_points()
        await client.send_all(b"at once")
        await client.send_eof()
        assert _schedule_points() == before
        assert await server.receive_some(100) == b"at once"
        assert _schedule_points() == before + 1  # receiving still yields
        assert await server.receive_some(100) == b""
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await server.send_all(b"refused")
            with pytest.raises(trio.Cancelled):
                await server.send_eof()
        server.close()
        client.socket.setblocking(True)
        assert client.socket.recv(100) == b""  # only the close arrives


async def test_a_send_that_waited_for_room_yielded() -> None:
    client, server = await clogged_tcp_pair()
    async with client, server, trio.open_nursery() as nursery:

        async def drain() -> None:
            await trio.sleep(0.05)
            while await server.receive_some(65536):
                pass

        nursery.start_soon(drain)
        with trio.testing.assert_checkpoints():
            await client.send_all(b"end")
        await client.send_eof()


async def test_send_all_waits_for_room_and_delivers_everything() -> None:
    client, server = await tcp_pair()
    payload = bytes(range(256)) * 8192  # 2 MiB: many partial sends
    received = bytearray()
    async with client, server, trio.open_nursery() as nursery:

        async def read_all() -> None:
            while data := await server.receive_some(65536):
                received.extend(data)

        nursery.start_soon(read_all)
        await client.send_all(payload)
        await client.send_eof()
    assert received == payload


async def test_send_eof_is_a_tcp_half_close() -> None:
    client, server = await tcp_pair()
    async with client, server:
        await client.send_all(b"last words")
        await client.send_eof()
        assert await server.receive_some(100) == b"last words"
        assert await server.receive_some(100) == b""
        # The other direction still flows.
        await server.send_all(b"reply")
        assert await client.receive_some(100) == b"reply"
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"more")


async def test_receive_nowait_tells_nothing_yet_from_eof() -> None:
    left, right = await tcp_pair()
    with trio.testing.assert_no_checkpoints():
        assert right.receive_nowait(100) is None
    await left.send_all(b"early bytes")
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.01)  # loopback delivery
    assert right.receive_nowait(5) == b"early"
    assert right.receive_nowait(100) == b" bytes"
    assert right.receive_nowait(100) is None
    await left.send_eof()
    await trio.sleep(0.01)
    assert right.receive_nowait(100) == b""
    right.close()
    with pytest.raises(trio.ClosedResourceError):
        right.receive_nowait(100)
    left.close()


async def test_buffered_receive_nowait_serves_the_handshake_leftover_first() -> None:
    left, right = await tcp_pair()
    buffered = BufferedStream(right)
    await left.send_all(b"\x05\x01\x00GET /")
    assert await buffered.receive_exactly(3) == b"\x05\x01\x00"
    assert buffered.receive_nowait(3) == b"GET"
    assert buffered.receive_nowait(100) == b" /"
    assert buffered.receive_nowait(100) is None
    assert (
        BufferedStream(trio.testing.memory_stream_pair()[0]).receive_nowait(1) is None
    )
    left.close()
    right.close()


async def test_reset_by_peer_is_broken_resource() -> None:
    client, server = await tcp_pair()
    server.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    server.close()
    with pytest.raises(trio.BrokenResourceError, match="reset"):
        await client.receive_some(100)
    client.close()


async def test_closing_wakes_a_blocked_receiver() -> None:
    client, server = await tcp_pair()
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some(100)

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        client.close()
    server.close()
    client.close()  # idempotent


async def test_listener_accepts_in_order_then_refuses_when_closed() -> None:
    listeners = await open_listeners(StreamSettings(), "127.0.0.1", 0)
    assert all(isinstance(listener, TCPListener) for listener in listeners)
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    dialled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    accepted = [await listener.accept() for _ in range(3)]
    for number, stream in enumerate(dialled):
        await stream.send_all(bytes([number]))
    assert [await stream.receive_some(1) for stream in accepted] == [
        b"\x00",
        b"\x01",
        b"\x02",
    ]
    async with trio.open_nursery() as nursery:

        async def accept_on_closed() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await listener.accept()

        nursery.start_soon(accept_on_closed)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    for client in dialled:
        await client.aclose()
    for server in accepted:
        await server.aclose()


async def test_accept_is_a_checkpoint_even_with_a_connection_waiting() -> None:
    listeners = await open_listeners(StreamSettings(), "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    dialled = await trio.open_tcp_stream("127.0.0.1", port)
    await trio.sleep(0.05)
    with trio.testing.assert_checkpoints():
        accepted = await listeners[0].accept()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await listeners[0].accept()
    await dialled.aclose()
    await accepted.aclose()
    await listeners[0].aclose()


async def test_accept_loop_pauses_while_out_of_descriptors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE from accept is a pause, not the end of the listener (the kernel
    is the only real source of it, so a listener stands in for it here)."""
    client, server = await tcp_pair()
    outcomes: list[OSError | TCPStream] = [
        OSError(errno.EMFILE, "Too many open files"),
        OSError(errno.ENFILE, "Too many open files in system"),
        server,
    ]

    class Exhausted(trio.abc.Listener[TCPStream]):
        async def accept(self) -> TCPStream:
            await trio.lowlevel.checkpoint()
            if not outcomes:
                await trio.sleep_forever()
            outcome = outcomes.pop(0)
            if isinstance(outcome, OSError):
                raise outcome
            return outcome

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    handled: list[str] = []

    async def handler(stream: trio.abc.Stream, source: str) -> None:
        handled.append(source)
        await stream.send_all(b"served")

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _accept_loop,
            cast("TCPListener", Exhausted()),
            handler,
            "in",
            nursery,
            False,
        )
        assert await client.receive_some(10) == b"served"
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started >= 2 * ACCEPT_PAUSE
    assert handled == [f"127.0.0.1:{client.socket.getsockname()[1]}"]
    assert [r.getMessage().split(" (")[1][:6] for r in caplog.records] == [
        "EMFILE",
        "ENFILE",
    ]
    client.close()


async def test_every_address_on_a_host_without_ipv6_is_ipv4_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: int) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported")
        return real_socket(family, *args)

    # The system call is the only real source of EAFNOSUPPORT here.
    monkeypatch.setattr(socket, "socket", no_ipv6)
    listeners = await open_listeners(StreamSettings(), "", 0)
    assert [listener.socket.family for listener in listeners] == [socket.AF_INET]
    for listener in listeners:
        await listener.aclose()
    with pytest.raises(OSError, match="not supported") as raised:
        await open_listeners(StreamSettings(), "::1", 0)
    assert raised.value.errno == errno.EAFNOSUPPORT


@pytest.mark.parametrize("done_at_once", [True, False], ids=["polled", "waited"])
async def test_connect_ip_whether_the_handshake_is_done_or_under_way(
    done_at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loopback handshakes are done when connect returns (the poll path); a
    slower network's are not, and the dialler waits for writability."""
    monkeypatch.setattr(tcp, "_writable_now", lambda sock: done_at_once)
    listeners = await open_listeners(StreamSettings(), "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    before = _schedule_points()
    client = await tcp.connect_ip("127.0.0.1", port, socket.AF_INET)
    # Only a connect still under way waits (and so yields).
    assert _schedule_points() == before + (not done_at_once)
    server = await listeners[0].accept()
    await client.send_all(b"hello")
    assert await server.receive_some(5) == b"hello"
    for closeable in (client, server):
        closeable.close()
    await listeners[0].aclose()


async def test_a_deferring_listener_accepts_once_the_first_bytes_are_in() -> None:
    listeners = await open_listeners(
        StreamSettings(), "127.0.0.1", 0, defer_accept=True
    )
    listener = listeners[0]
    sock = listener.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    async with listener:
        port = sock.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            with trio.move_on_after(0.3) as waited:
                await listener.accept()
            assert waited.cancelled_caught, "accepted before the client spoke"
            await client.send_all(b"hello")
            with trio.fail_after(2):
                server = await listener.accept()
            async with server:
                # The request is already there: the first read does not wait.
                assert server.receive_nowait(16) == b"hello"


async def test_listeners_do_not_defer_accept_by_default() -> None:
    listeners = await open_listeners(StreamSettings(), "127.0.0.1", 0)
    async with listeners[0]:
        sock = listeners[0].socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
