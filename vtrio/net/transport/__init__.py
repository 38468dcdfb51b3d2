"""Transports: the byte streams VMess rides on (raw TCP, TLS, WebSocket,
HTTPUpgrade, gRPC, HTTP/2, and TCP with the "http" header).

Theory of operation: listening is always plain TCP, so the accept loop never
blocks on a slow peer; the server-side handshake of the configured layers
(TLS, then WebSocket) runs later in the connection's own task through
``accept_stream``, under the caller's handshake deadline. On the client side
``dial`` returns a stream with every configured layer already stacked.

A Unix socket (an inbound's ``listen``, v2ray's ``domainsocket`` network)
takes the place of TCP under the same layers. Layers stack as tcp -> tls
(``security: tls``) -> ws or httpupgrade (``network``), or the "http" header
on the tcp network (as v2ray stacks it, inside TLS). Neither TLS nor
WebSocket can half-close here, so on those layers ``send_eof`` only stops
sending (see ``tls.py`` and ``websocket.py``); VMess ends each direction with
its own end chunk. HTTPUpgrade half-closes as the stream under it does. For
gRPC and HTTP/2 these functions stop at TLS: one HTTP/2 connection carries
many tunnels, so ``h2.py`` runs it (the inbound's ``serve_h2``, an
outbound's ``H2Client``). Both
upgrades carry ``forwarded_for`` (X-Forwarded-For) on the server side; other
streams do not have the attribute.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import is_unix_name
from vtrio.errors import DialError
from vtrio.net.transport.http_header import (
    HttpHeaderStream,
    accept_http_header,
    dial_http_header,
)
from vtrio.net.transport.httpupgrade import accept_httpupgrade, dial_httpupgrade
from vtrio.net.transport.tcp import (
    TCPListener,
    TCPStream,
    close_forcefully,
    connect_ip,
    from_trio_stream,
)
from vtrio.net.transport.tls import TLSStream, accept_tls, dial_tls, server_context
from vtrio.net.transport.transparent import set_transparent
from vtrio.net.transport.unix import connect_unix, open_unix_listener
from vtrio.net.transport.websocket import accept_websocket, dial_websocket

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import StreamSettings

    # Opens a stream to (host, port) some other way than a TCP connect.
    Dialer = Callable[[str, int], Awaitable[trio.abc.HalfCloseableStream]]

# What trio.open_tcp_listeners asks for; the kernel caps it at somaxconn.
LISTEN_BACKLOG = 0xFFFF
# How long the kernel holds a connection that has sent nothing before handing
# it to accept anyway (TCP_DEFER_ACCEPT; it rounds up to a SYN-ACK resend).
DEFER_ACCEPT_SECONDS = 1


async def open_listeners(
    settings: StreamSettings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    defer_accept: bool = False,
    mode: int | None = None,
) -> list[TCPListener]:
    """Bind the TCP listeners of an inbound, as ``trio.open_tcp_listeners`` does.

    Args:
        settings: the inbound's stream settings (they do not change binding).
        host: address to bind; "" or "0.0.0.0" / "::" mean every address.
        port: port to bind; 0 picks a free one.
        reuse_port: set SO_REUSEPORT, so several worker processes share the
            port and the kernel spreads connections over them.
        defer_accept: the client speaks first (VMess, SOCKS, HTTP): a
            connection is accepted once its first bytes are in (Linux
            ``TCP_DEFER_ACCEPT``), so the server wakes once per connection
            instead of once for the accept and again for the request.
        mode: the permissions of a Unix socket file.

    ``host`` may name a Unix socket instead (``/path``, ``@name``, ``@@name``;
    see ``unix.py``); ``port`` is then ignored.

    Returns:
        The bound listeners.

    Raises:
        ConfigError: the TLS certificates cannot be loaded (checked here, at
            start-up, rather than on the first connection).
        OSError: a port could not be bound.
    """
    if settings.security == "tls":
        server_context(settings.tls)
    if is_unix_name(host):
        if reuse_port:
            raise OSError(f"{host}: a Unix socket cannot be shared by workers")
        await trio.lowlevel.checkpoint()
        return [open_unix_listener(host, LISTEN_BACKLOG, mode)]
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[TCPListener] = []
    unsupported: list[OSError] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4]) for i in infos
        ):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                # A host without IPv6 still serves "every address" on IPv4.
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported.append(exc)
                continue
            listeners.append(TCPListener(sock))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if settings.tproxy == "tproxy":
                # Accept connections to any address the firewall diverts here.
                set_transparent(sock, family)
            if defer_accept and hasattr(socket, "TCP_DEFER_ACCEPT"):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS
                )
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    if not listeners and unsupported:
        raise unsupported[0]
    return listeners


async def accept_stream(
    settings: StreamSettings, stream: TCPStream
) -> trio.abc.HalfCloseableStream:
    """Run the server side of the configured layers over an accepted socket.

    Args:
        settings: the inbound's stream settings.
        stream: the accepted TCP stream.

    Returns:
        The stream VMess (or socks/http) reads and writes.

    Raises:
        RemoteProtocolError: the TLS handshake, the WebSocket upgrade or the
            "http" header failed (not TLS, wrong path, not an upgrade request);
            the reason is in the message.
        trio.BrokenResourceError: the peer went away during a handshake.
    """
    layered: trio.abc.HalfCloseableStream = stream
    if settings.security == "tls":
        layered = await accept_tls(settings.tls, layered)
    if settings.network == "ws":
        layered = await accept_websocket(settings.ws, _unwrap(layered))
    elif settings.network == "httpupgrade":
        layered = await accept_httpupgrade(settings.ws, layered)
    elif settings.http_header is not None:
        layered = await accept_http_header(settings.http_header, layered)
    return layered


async def refuse_unanswered(stream: trio.abc.Stream) -> None:
    """What a server owes a client it turns away without an answer, before
    the connection closes: the "http" header's 400; nothing on other layers."""
    if isinstance(stream, HttpHeaderStream):
        await stream.refuse()


async def connect_tcp(
    host: str, port: int, local: str | None = None, mark: int = 0
) -> TCPStream:
    """A TCP connection to ``host``, leaving from the address ``local`` if
    given, its socket marked ``mark`` (SO_MARK) if not 0.

    An IP literal (a proxy target, most configured servers) is connected
    directly: trio's ``open_tcp_stream`` would spend a resolver call and a
    Happy Eyeballs nursery on it, a third of a tunnel's set-up cost. Names
    go through ``open_tcp_stream``; a marked socket must be marked before it
    connects, which that cannot do, so a name with a mark is resolved here
    and its addresses are tried in turn.

    Raises:
        OSError: the connection failed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        if mark:
            return await _connect_marked(host, port, local, mark)
        stream = await trio.open_tcp_stream(host, port, local_address=local)
        return from_trio_stream(stream)
    return await connect_ip(host, port, family, local, mark)


async def _connect_marked(
    host: str, port: int, local: str | None, mark: int
) -> TCPStream:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host} has no address")
    for family, _, _, _, sockaddr in infos:
        if local is not None and (":" in local) != (family == socket.AF_INET6):
            continue  # sendThrough's family decides which addresses can be used
        try:
            return await connect_ip(str(sockaddr[0]), port, family, local, mark)
        except OSError as exc:
            error = exc
    raise error


async def dial(
    settings: StreamSettings,
    host: str,
    port: int,
    local: str | None = None,
    through: Dialer | None = None,
) -> trio.abc.HalfCloseableStream:
    """Connect to a server and stack the configured layers.

    Args:
        settings: the outbound's stream settings.
        host: server address (name or IP).
        port: server port.
        local: the address to connect from (the outbound's sendThrough).
        through: opens the stream to the server instead of a TCP connect
            (an outbound's proxySettings: another outbound's tunnel).

    Returns:
        The connected stream.

    Raises:
        DialError: the connection, the TLS handshake or the WebSocket upgrade
            failed; the message names the server and the reason.
    """
    where = settings.domain_socket or f"{host}:{port}"
    base: trio.abc.HalfCloseableStream
    try:
        if through is not None:
            base = await through(host, port)
        elif settings.domain_socket:
            base = await connect_unix(settings.domain_socket)
        else:
            base = await connect_tcp(host, port, local, settings.mark)
    except OSError as exc:
        raise DialError(f"cannot connect to {where}: {exc}") from exc
    layered = base
    try:
        if settings.security == "tls":
            # The upgrades speak HTTP/1.1: never let the server pick h2; gRPC
            # speaks nothing else.
            alpn = {"tcp": (), "grpc": ("h2",), "h2": ("h2",)}.get(
                settings.network, ("http/1.1",)
            )
            layered = await dial_tls(settings.tls, base, host, port, default_alpn=alpn)
        if settings.network == "ws":
            layered = await dial_websocket(
                settings.ws,
                _unwrap(layered),
                host,
                port,
                secure=settings.security == "tls",
            )
        elif settings.network == "httpupgrade":
            layered = await dial_httpupgrade(
                settings.ws, layered, host, port, secure=settings.security == "tls"
            )
        elif settings.http_header is not None:
            layered = dial_http_header(settings.http_header, layered)
    except BaseException:
        await close_forcefully(base)
        raise
    return layered


def _unwrap(stream: trio.abc.HalfCloseableStream) -> trio.abc.Stream:
    """The stream WebSocket frames go on: the SSLStream itself under TLS."""
    return stream.ssl_stream if isinstance(stream, TLSStream) else stream
