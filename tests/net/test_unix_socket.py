"""Inbounds on Unix sockets (Xray's ``listen`` forms) and the domainsocket
transport of a VMess client, on real sockets: files with their mode, the
abstract namespace with and without padding, a stale file replaced, the
PROXY header naming the client, and a vtrio client dialling one."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from tests.hardening.branches import KNOWN, SERVER_USERS
from tests.net.test_proxy_protocol import v1_header
from tests.support.echo import serve_tcp_echo
from tests.support.hardening import (
    Target,
    client_connection,
    running,
    server_config,
    target_running,
    vmess_exchange,
)
from tests.support.socks5 import open_connect, send_and_read_to_end, socks_inbound
from vtrio import server
from vtrio.config import model
from vtrio.net.transport.unix import SUN_PATH_SIZE, connect_unix, socket_address

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 10


def on_unix(name: str, **stream: object) -> model.Config:
    base = server_config(SERVER_USERS, handshake=1.0)
    inbound = dataclasses.replace(
        base.inbounds[0],
        listen=name,
        socket_mode=0o660 if name.startswith("/") else None,
        stream=dataclasses.replace(base.inbounds[0].stream, **stream),  # type: ignore[arg-type]
    )
    return dataclasses.replace(base, inbounds=(inbound,))


async def exchange_over(
    name: str, target: int, payload: bytes, opening: bytes = b""
) -> bytes:
    stream = await connect_unix(name)
    client = client_connection(KNOWN, target)
    async with stream:
        first = opening + client.start(payload)
        return await vmess_exchange(stream, client, payload, first_packet=first)


def abstract_name(prefix: str) -> str:
    return f"{prefix}vtrio-test-{uuid.uuid4().hex[:12]}"


async def test_a_socket_file_gets_its_mode_and_is_removed_at_the_end(
    tmp_path: Path,
) -> None:
    name = str(tmp_path / "vmess.sock")
    with trio.fail_after(TIMEOUT):
        async with (
            target_running(Target()) as target,
            running(on_unix(name)) as (port, _),
        ):
            assert port == 0
            mode = os.stat(name).st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o660
            assert (
                await exchange_over(name, target.port, b"over a file") == b"over a file"
            )
    assert not await trio.Path(name).exists()


@pytest.mark.parametrize("prefix", ["@", "@@"], ids=["abstract", "padded"])
async def test_abstract_names_padded_or_not(prefix: str) -> None:
    name = abstract_name(prefix)
    with trio.fail_after(TIMEOUT):
        async with target_running(Target()) as target, running(on_unix(name)):
            assert await exchange_over(name, target.port, b"abstract") == b"abstract"
            # Padding is part of the name: the other form is another socket.
            other = ("@" if prefix == "@@" else "@@") + name.lstrip("@")
            with pytest.raises(ConnectionRefusedError):
                await exchange_over(other, target.port, b"x")
    assert len(socket_address("@@" + "a" * 10)) == SUN_PATH_SIZE


async def test_a_stale_socket_file_is_replaced_and_another_file_is_an_error(
    tmp_path: Path,
) -> None:
    stale = tmp_path / "stale.sock"
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(stale))
    left.close()  # the file stays, as after a crash
    with trio.fail_after(TIMEOUT):
        async with target_running(Target()) as target, running(on_unix(str(stale))):
            assert await exchange_over(str(stale), target.port, b"fresh") == b"fresh"
    occupied = tmp_path / "data.txt"
    occupied.write_text("keep me")
    refused = pytest.RaisesExc(FileExistsError, match="exists and is not a socket")
    with trio.fail_after(TIMEOUT), pytest.RaisesGroup(refused, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, on_unix(str(occupied)))
    assert occupied.read_text() == "keep me"


async def test_behind_a_balancer_the_proxy_header_names_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    name = str(tmp_path / "behind.sock")
    config = on_unix(name, accept_proxy_protocol=True)
    with trio.fail_after(TIMEOUT):
        async with target_running(Target()) as target, running(config):
            opening = v1_header("198.51.100.4", 51000)
            assert await exchange_over(name, target.port, b"named", opening) == b"named"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    assert line.startswith("from 198.51.100.4:51000 closed")


async def test_without_a_header_a_unix_client_is_unnamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    name = str(tmp_path / "plain.sock")
    with trio.fail_after(TIMEOUT):
        async with target_running(Target()) as target, running(on_unix(name)):
            assert await exchange_over(name, target.port, b"who") == b"who"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    assert line.startswith("from ? closed")


async def test_a_vtrio_client_dials_the_domain_socket_of_a_vtrio_server(
    tmp_path: Path,
) -> None:
    name = str(tmp_path / "chain.sock")
    (user,) = SERVER_USERS[:1]
    outbound = model.Outbound(
        "proxy",
        "vmess",
        model.VMessOutboundSettings(
            servers=(model.VMessServer("ignored.invalid", 1, (user,)),)
        ),
        model.StreamSettings(domain_socket=name),
    )
    client = model.Config(inbounds=(socks_inbound(),), outbounds=(outbound,))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, "127.0.0.1")
            await nursery.start(server.run, on_unix(name))
            bound = await nursery.start(server.run, client)
            stream = await open_connect(
                "127.0.0.1", bound["socks-in"][0][1], "127.0.0.1", echo
            )
            async with stream:
                received = await send_and_read_to_end(stream, b"through the socket")
            assert received == b"through the socket"
            nursery.cancel_scope.cancel()
