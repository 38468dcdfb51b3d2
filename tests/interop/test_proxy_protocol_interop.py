"""The PROXY headers vtrio's tests build, read by v2ray 4.34's go-proxyproto.

No peer here sends a PROXY header (that is a balancer's job), so vtrio's
suite writes them by hand (``tests/net/test_proxy_protocol.py``). This case
sends the same bytes to a v2ray VMess server with ``acceptProxyProtocol``:
v2ray takes the client address from them and the tunnel works, so the
hand-written headers are the ones a real parser expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from tests.hardening.branches import KNOWN
from tests.interop import peers
from tests.net.test_proxy_protocol import v1_header, v2_header
from tests.support.echo import serve_tcp_echo
from tests.support.hardening import client_connection, vmess_exchange

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("make", [v1_header, v2_header], ids=["v1", "v2"])
async def test_v2ray_reads_the_headers_vtrio_is_tested_with(
    make: Callable[[str, int], bytes], tmp_path: Path
) -> None:
    peer = peers.require_peer("v2ray", "4.34")
    (port,) = peers.free_ports(1)
    account = peers.Account(uuid=str(KNOWN.id), security="aes-128-gcm")
    config = peers.v2ray_server_config([peers.Route(port=port, account=account)])
    config["inbounds"][0]["streamSettings"] = {
        "tcpSettings": {"acceptProxyProtocol": True}
    }
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            server = peers.open_peer(peer, "server", config, tmp_path, [port])
            async with server as v2ray:
                client = client_connection(KNOWN, target)
                stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
                async with stream:
                    opening = make("203.0.113.7", 40000) + client.start(b"behind")
                    echoed = await vmess_exchange(
                        stream, client, b"behind", first_packet=opening
                    )
                # The access line was written when the tunnel was dispatched.
                await trio.sleep(0.2)
                log = v2ray.log_text()
            nursery.cancel_scope.cancel()
    assert echoed == b"behind"
    assert "203.0.113.7:40000 accepted" in log, log
