"""The http proxy inbound: CONNECT, plain absolute-URI forwarding, Basic auth."""

from __future__ import annotations

import base64

import trio

from tests.support.echo import serve_tcp_echo
from vtrio import server
from vtrio.config import model

LOOPBACK = "127.0.0.1"


def http_config(accounts: tuple[model.Account, ...] = ()) -> model.Config:
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="http-in",
                protocol="http",
                listen=LOOPBACK,
                ports=(0,),
                settings=model.HttpInboundSettings(accounts=accounts),
            ),
        ),
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
    )


async def serve_recorder(*, task_status: trio.TaskStatus[int]) -> None:
    """An HTTP origin that answers with the request head it received."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
            body = head.split(b"\r\n\r\n")[0]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    return data


async def test_connect_tunnels_bytes() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, http_config())
            stream = await trio.open_tcp_stream(LOOPBACK, bound["http-in"][0][1])
            async with stream:
                await stream.send_all(
                    f"CONNECT {LOOPBACK}:{echo_port} HTTP/1.1\r\n\r\nearly".encode()
                )
                reply = b""
                while not reply.endswith(b"early"):
                    reply += await stream.receive_some(4096)
                assert reply == b"HTTP/1.1 200 Connection established\r\n\r\nearly"
            nursery.cancel_scope.cancel()


async def test_plain_request_is_rewritten_to_origin_form() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            origin = await nursery.start(serve_recorder)
            bound = await nursery.start(server.run, http_config())
            stream = await trio.open_tcp_stream(LOOPBACK, bound["http-in"][0][1])
            async with stream:
                await stream.send_all(
                    f"GET http://{LOOPBACK}:{origin}/path?q=1 HTTP/1.1\r\n"
                    f"Host: {LOOPBACK}:{origin}\r\nProxy-Connection: keep-alive\r\n"
                    "Accept: */*\r\n\r\n".encode()
                )
                response = await read_all(stream)
            head = response.split(b"\r\n\r\n", 1)[1].decode()
            lines = head.split("\r\n")
            assert lines[0] == "GET /path?q=1 HTTP/1.1"
            assert "Accept: */*" in lines
            assert "Connection: close" in lines
            assert not any(line.lower().startswith("proxy-") for line in lines)
            nursery.cancel_scope.cancel()


async def test_basic_auth_is_required_when_accounts_exist() -> None:
    config = http_config((model.Account("alice", "s3cret"),))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, config)
            port = bound["http-in"][0][1]
            request = f"CONNECT {LOOPBACK}:{echo_port} HTTP/1.1\r\n"
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                await stream.send_all(f"{request}\r\n".encode())
                assert (await read_all(stream)).startswith(
                    b"HTTP/1.1 407 Proxy Authentication Required"
                )
            token = base64.b64encode(b"alice:s3cret").decode()
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                await stream.send_all(
                    f"{request}Proxy-Authorization: Basic {token}\r\n\r\n".encode()
                )
                reply = await stream.receive_some(4096)
                assert reply.startswith(b"HTTP/1.1 200")
            nursery.cancel_scope.cancel()
