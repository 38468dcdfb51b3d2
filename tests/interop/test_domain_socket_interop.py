"""v2ray 4.34's domainsocket transport against vtrio, both directions.

Each side is configured with the same v2ray JSON (``network: domainsocket``
with ``dsSettings``): a v2ray client dials a vtrio server's Unix socket, and
a vtrio client dials a v2ray server's, for a socket file, an abstract name
and a padded abstract name (the padding is part of the name, so both ends
must build it alike).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.hardening.branches import KNOWN
from tests.interop import peers
from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import echo_through
from vtrio import server
from vtrio.config import loads
from vtrio.net.transport.unix import connect_unix

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

PAYLOAD = bytes(range(256)) * 256


def ds_settings(kind: str, directory: Path) -> dict[str, Any]:
    if kind == "file":
        return {"path": str(directory / "vmess.sock")}
    name = f"vtrio-interop-{uuid.uuid4().hex[:12]}"
    return {"path": name, "abstract": True, "padding": kind == "padded"}


def over_domain_socket(config: dict[str, Any], ds: dict[str, Any]) -> dict[str, Any]:
    key = "outbounds" if config["inbounds"][0]["protocol"] == "socks" else "inbounds"
    config[key][0]["streamSettings"] = {"network": "domainsocket", "dsSettings": ds}
    return config


def configs(
    kind: str, directory: Path
) -> tuple[dict[str, Any], dict[str, Any], int, str]:
    socks_port, unused_port = peers.free_ports(2)
    account = peers.Account(uuid=str(KNOWN.id), security="aes-128-gcm")
    ds = ds_settings(kind, directory)
    client = peers.v2ray_client_config(
        [peers.Route(port=socks_port, account=account, server_port=unused_port)]
    )
    server_json = peers.v2ray_server_config(
        [peers.Route(port=unused_port, account=account)]
    )
    name = (
        ds["path"]
        if kind == "file"
        else ("@@" if kind == "padded" else "@") + ds["path"]
    )
    return (
        over_domain_socket(client, ds),
        over_domain_socket(server_json, ds),
        socks_port,
        name,
    )


async def wait_listening(name: str) -> None:
    """Until something accepts on the Unix socket ``name``."""
    while True:
        try:
            probe = await connect_unix(name)
        except OSError:
            await trio.sleep(0.02)
            continue
        probe.close()
        return


KINDS = ["file", "abstract", "padded"]


@pytest.mark.parametrize("kind", KINDS)
async def test_v2ray_client_dials_a_vtrio_domain_socket(
    kind: str, tmp_path: Path
) -> None:
    peer = peers.require_peer("v2ray", "4.34")
    client_json, server_json, socks_port, _ = configs(kind, tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            await nursery.start(server.run, loads(json.dumps(server_json)))
            client = peers.open_peer(
                peer, "client", client_json, tmp_path, [socks_port]
            )
            async with client:
                assert (
                    await echo_through(
                        peers.LOOPBACK, socks_port, peers.LOOPBACK, target, PAYLOAD
                    )
                    == PAYLOAD
                )
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", KINDS)
async def test_vtrio_client_dials_a_v2ray_domain_socket(
    kind: str, tmp_path: Path
) -> None:
    peer = peers.require_peer("v2ray", "4.34")
    client_json, server_json, socks_port, name = configs(kind, tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            async with peers.open_peer(peer, "server", server_json, tmp_path, []):
                await wait_listening(name)
                await nursery.start(server.run, loads(json.dumps(client_json)))
                assert (
                    await echo_through(
                        peers.LOOPBACK, socks_port, peers.LOOPBACK, target, PAYLOAD
                    )
                    == PAYLOAD
                )
                nursery.cancel_scope.cancel()
