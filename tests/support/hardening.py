"""Wire-level tools of the hardening tests: targets, probes, a tiny VMess client.

Theory of operation: every hardening case has the same shape. A loopback
*target* stands behind vtrio's freedom outbound and counts the connections it
accepts, so a test can prove a replayed or hostile handshake never reached it.
A *probe* opens a plain TCP connection to vtrio, writes some bytes, and reads
until the server closes; it reports the bytes that came back and whether the
close was a FIN (``receive_some`` returns ``b""``) or a RST (the read fails
with ECONNRESET). ``abort`` closes our own socket with SO_LINGER 0, which makes
the kernel send a RST instead of a FIN: a client that vanished. The VMess
client here drives vtrio's sans-IO ``ClientConnection`` over a socket, so a
test controls every byte and can keep the exact first packet for a replay.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import trio

import vtrio.server
from vtrio.config import model
from vtrio.protocol.connection import ClientConnection
from vtrio.protocol.events import NEED_DATA, Data, EndOfStream, ResponseHeader
from vtrio.protocol.instruction import Command, Request

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Callable

    from vtrio.protocol.address import Address

LOOPBACK = "127.0.0.1"
LOOPBACK_IP = ipaddress.IPv4Address(LOOPBACK)
RECEIVE_SIZE = 64 * 1024

TargetMode = Literal["echo", "reset", "stall", "sink"]


@dataclass
class Target:
    """A loopback server behind vtrio; what it saw, for the assertions."""

    mode: TargetMode = "echo"
    port: int = 0
    accepted: int = 0
    received: bytearray = field(default_factory=bytearray)
    # Set when the first connection arrived, and when a connection ended.
    connected: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)


async def serve_target(
    target: Target, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``target`` on 127.0.0.1:0 until cancelled.

    Modes: ``echo`` sends back what it reads and closes after the peer's EOF;
    ``sink`` only reads; ``reset`` reads once then aborts with a RST;
    ``stall`` reads and never answers or closes by itself.
    """

    async def handle(stream: trio.SocketStream) -> None:
        target.accepted += 1
        target.connected.set()
        try:
            async with stream:
                while data := await stream.receive_some(RECEIVE_SIZE):
                    target.received += data
                    if target.mode == "echo":
                        await stream.send_all(data)
                    elif target.mode == "reset":
                        abort(stream)
                        return
                if target.mode == "echo":
                    await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # vtrio closing abruptly is what several cases provoke
        finally:
            target.closed.set()

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    target.port = listeners[0].socket.getsockname()[1]
    task_status.started(target.port)
    await trio.serve_listeners(handle, listeners)


def abort(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a RST (SO_LINGER on, timeout 0): a vanished peer."""
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    stream.socket.close()


@dataclass(frozen=True, slots=True)
class Closing:
    """How a server ended a connection we probed."""

    answer: bytes  # everything it sent before closing
    how: Literal["fin", "rst"]
    seconds: float  # from the probe's first write to the close


async def read_until_closed(stream: trio.abc.ReceiveStream, since: float) -> Closing:
    """Read until the peer closes; a reset is reported, not raised."""
    answer = bytearray()
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            answer += data
    except trio.BrokenResourceError:
        return Closing(bytes(answer), "rst", time.monotonic() - since)
    return Closing(bytes(answer), "fin", time.monotonic() - since)


async def probe(port: int, data: bytes) -> Closing:
    """Connect to 127.0.0.1:``port``, write ``data``, wait for the close.

    The caller bounds the wait with ``trio.fail_after``.
    """
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with stream:
        since = time.monotonic()
        if data:
            await stream.send_all(data)
        return await read_until_closed(stream, since)


def vmess_user(user_id: uuid.UUID, **fields: Any) -> model.VMessUser:
    """A user as both ends see it (GCM unless told)."""
    fields.setdefault("security", model.Security.AES_128_GCM)
    return model.VMessUser(id=user_id, **fields)


def client_connection(
    account: model.VMessUser,
    port: int,
    *,
    address: Address = LOOPBACK_IP,
    now: int | None = None,
    random: Callable[[int], bytes] = os.urandom,
) -> ClientConnection:
    """A sans-IO VMess client asking for TCP to ``address``:``port``."""
    return ClientConnection(
        account,
        Request(Command.TCP, address, port),
        now=int(time.time()) if now is None else now,
        random=random,
        machine="x86_64",
    )


async def vmess_exchange(
    stream: trio.abc.HalfCloseableStream,
    client: ClientConnection,
    payload: bytes,
    *,
    first_packet: bytes | None = None,
) -> bytes:
    """Send ``payload`` through a VMess tunnel, end it, return the answer.

    ``first_packet`` lets the caller keep (and later replay) the exact bytes
    of ``client.start(payload)``; it must be that value when given.
    """
    opening = client.start(payload) if first_packet is None else first_packet
    await stream.send_all(opening + client.send_eof())
    answer = bytearray()
    while True:
        event = client.next_event()
        if event is NEED_DATA:
            client.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, Data):
            answer += event.data
        elif isinstance(event, EndOfStream):
            return bytes(answer)
        else:
            assert isinstance(event, ResponseHeader)


def task_count() -> int:
    """Tasks alive under the root task: a leak shows as a count that grows."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    count = 0
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def wait_task_count(expected: int) -> int:
    """Let closing tasks finish (a few scheduler passes), then count."""
    for _ in range(200):
        if task_count() <= expected:
            break
        await trio.sleep(0.01)
    return task_count()


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process from /proc (Linux)."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bound_port(started: object, tag: str) -> int:
    """The port ``server.run`` reported for inbound ``tag``.

    Accepts a mapping of tag to one address, to a list of addresses, or to a
    port, where an address is a ``(host, port, ...)`` tuple or a socket.
    """
    assert isinstance(started, dict), f"server.run started with {started!r}"
    value: Any = started[tag]
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], str):
        value = value[0]
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return int(value[1])
    if hasattr(value, "getsockname"):
        return int(value.getsockname()[1])
    if hasattr(value, "port"):
        return int(value.port)
    raise AssertionError(f"no port in {value!r}")


def server_config(
    users: tuple[model.VMessUser, ...],
    *,
    port: int = 0,
    handshake: float = 0.5,
    conn_idle: float = 5.0,
    disable_insecure_encryption: bool = False,
    aead_forced: bool = False,
) -> model.Config:
    """A vtrio server: one VMess inbound ``vmess-in`` on loopback -> freedom.

    Short policy timeouts, so a test sees every deadline fire quickly.
    """
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="vmess-in",
                protocol="vmess",
                listen=LOOPBACK,
                ports=(port,),
                settings=model.VMessInboundSettings(
                    users=users,
                    disable_insecure_encryption=disable_insecure_encryption,
                    aead_forced=aead_forced,
                ),
            ),
        ),
        outbounds=(
            model.Outbound(
                tag="direct", protocol="freedom", settings=model.FreedomSettings()
            ),
        ),
        policy=model.Policy(
            levels={
                0: model.LevelPolicy(
                    handshake=handshake,
                    conn_idle=conn_idle,
                    uplink_only=0.5,
                    downlink_only=0.5,
                )
            }
        ),
        log=model.Log(level="debug"),
    )


@asynccontextmanager
async def running(
    config: model.Config, tag: str = "vmess-in"
) -> AsyncIterator[tuple[int, trio.Nursery]]:
    """Run ``config`` until the block ends; yield the port of inbound ``tag``."""
    async with trio.open_nursery() as nursery:
        started = await nursery.start(vtrio.server.run, config)
        yield bound_port(started, tag), nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def target_running(target: Target) -> AsyncIterator[Target]:
    """Run a loopback target until the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_target, target)
        yield target
        nursery.cancel_scope.cancel()
