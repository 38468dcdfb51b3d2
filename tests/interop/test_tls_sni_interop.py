"""v2ray 4.34's TLS client (Go's crypto/tls) against a vtrio TLS server with
two certificates: it gets the one its serverName names, and with
``rejectUnknownSni`` no connection for a name neither is for; against one that
asks for client certificates it gets in with one and not without.

    socket -> v2ray dokodemo-door -> freedom ==tls==> vtrio accept_stream (echo)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from tests.integration.test_tls_sni import (
    A_NAMES,
    B_NAMES,
    CLIENT_NAMES,
    requiring_client_certificates,
    two_certificates,
)
from tests.integration.test_transport import echo, start_server, stream_settings
from tests.interop import peers
from tests.interop.test_transport_interop import V2RAY_VERSION, dokodemo
from tests.support.certs import make_pki

if TYPE_CHECKING:
    from pathlib import Path

    from vtrio.config.model import TLSSettings

pytestmark = pytest.mark.interop

TIMEOUT = 30


async def echoed_through_v2ray(
    tmp_path: Path,
    tls_client: peers.JSON,
    *,
    reject_unknown_sni: bool = False,
    server_tls: TLSSettings | None = None,
) -> bytes:
    """What comes back for a message sent through a v2ray client whose
    freedom outbound speaks TLS (``tls_client``) to the vtrio server (on
    ``server_tls``, or two certificates)."""
    peer = peers.require_peer("v2ray", V2RAY_VERSION)
    (port,) = peers.free_ports(1)
    if server_tls is None:
        server_tls = two_certificates(reject_unknown_sni=reject_unknown_sni)
    errors: list[BaseException] = []
    received = bytearray()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery, stream_settings("tcp", "tls", server_tls), echo, errors
            )
            outbound = {
                "protocol": "freedom",
                "streamSettings": {"security": "tls", "tlsSettings": tls_client},
            }
            config = {
                "log": {"loglevel": "debug"},
                "inbounds": [dokodemo("in", port, server)],
                "outbounds": [outbound],
            }
            async with (
                peers.open_peer(peer, "client", config, tmp_path, [port]),
                await trio.open_tcp_stream(peers.LOOPBACK, port) as stream,
            ):
                await stream.send_all(b"which certificate?")
                with trio.move_on_after(5):
                    while len(received) < 18 and (data := await stream.receive_some()):
                        received += data
            nursery.cancel_scope.cancel()
    return bytes(received)


def trusting(names: tuple[str, ...], server_name: str, tmp_path: Path) -> peers.JSON:
    """Go's client settings: verify ``server_name`` against the CA that
    signed the leaf for ``names`` (each test leaf has a CA of its own)."""
    ca_file = tmp_path / f"ca-{names[0]}.pem"
    ca_file.write_text(make_pki(names).ca_pem)
    return {
        "serverName": server_name,
        "certificates": [{"certificateFile": str(ca_file), "usage": "verify"}],
    }


@pytest.mark.parametrize(
    ("names", "server_name"),
    [(A_NAMES, "a.example"), (B_NAMES, "b.example"), (B_NAMES, "x.b.example")],
)
async def test_v2ray_gets_the_certificate_its_server_name_names(
    tmp_path: Path, names: tuple[str, ...], server_name: str
) -> None:
    tls = trusting(names, server_name, tmp_path)
    assert await echoed_through_v2ray(tmp_path, tls) == b"which certificate?"


async def test_v2ray_is_refused_a_name_neither_certificate_is_for(
    tmp_path: Path,
) -> None:
    insecure = {"serverName": "elsewhere.example", "allowInsecure": True}
    # Without the option the first certificate serves any name.
    assert await echoed_through_v2ray(tmp_path, insecure) == b"which certificate?"
    refused = await echoed_through_v2ray(tmp_path, insecure, reject_unknown_sni=True)
    assert refused == b""


@pytest.mark.parametrize("shows_one", [True, False])
async def test_v2ray_with_a_client_certificate_passes_verify_client_certificate(
    tmp_path: Path, shows_one: bool
) -> None:
    client_pki = make_pki(CLIENT_NAMES, client=True)
    server = requiring_client_certificates(client_pki.ca_pem)
    tls = trusting(A_NAMES, "a.example", tmp_path)
    if shows_one:
        _, cert_file, key_file = client_pki.write(tmp_path)
        own = {"certificateFile": str(cert_file), "keyFile": str(key_file)}
        tls["certificates"] = [*tls["certificates"], own]
    echoed = await echoed_through_v2ray(tmp_path, tls, server_tls=server)
    assert echoed == (b"which certificate?" if shows_one else b"")
