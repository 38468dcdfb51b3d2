"""Geodata as v2ray 4.34 reads it: one server config whose rules name lists
in ``ext:`` files (written by ``tests/support/geodata.py``), run by v2ray and
by vtrio, blocks the same VMess tunnels. v2ray reading the files the suite
writes is what ties vtrio's reader to the real format. (v2ray 4.34 has no
``!`` inverse lists; ``tests/config/test_geodata.py`` covers vtrio's.)"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.hardening.branches import KNOWN
from tests.interop import peers
from tests.support.echo import serve_tcp_echo
from tests.support.geodata import geoip_file, geosite_file
from tests.support.hardening import client_connection, vmess_exchange
from vtrio import server
from vtrio.config import loads
from vtrio.errors import RemoteProtocolError

if TYPE_CHECKING:
    from pathlib import Path

    from vtrio.protocol.address import Address

pytestmark = pytest.mark.interop

RULES = {
    "names": {"domain": ["ext:vtrio-sites.dat:names"]},
    "names-ads": {"domain": ["ext:vtrio-sites.dat:names@ads"]},
    "loop2": {"ip": ["ext:vtrio-ips.dat:loop2"]},
}
LOOP2 = "127.0.0.2"


def geodata_server_config(ports: list[int]) -> dict[str, Any]:
    account = peers.Account(uuid=str(KNOWN.id), security="aes-128-gcm")
    config = peers.v2ray_server_config(
        [peers.Route(port=port, account=account) for port in ports]
    )
    config["outbounds"].append({"tag": "block", "protocol": "blackhole"})
    config["routing"] = {
        "rules": [
            {
                "type": "field",
                "inboundTag": [f"vmess-{index}"],
                **condition,
                "outboundTag": "block",
            }
            for index, condition in enumerate(RULES.values())
        ]
    }
    return config


def write_assets(directory: Path) -> None:
    sites = {"names": [("full", "localhost", ()), ("domain", "example.org", ("ads",))]}
    (directory / "vtrio-sites.dat").write_bytes(geosite_file(sites))
    (directory / "vtrio-ips.dat").write_bytes(geoip_file({"loop2": [f"{LOOP2}/32"]}))


async def reaches(port: int, address: Address, target: int) -> bool:
    client = client_connection(KNOWN, target, address=address)
    stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
    async with stream:
        try:
            return await vmess_exchange(stream, client, b"geo") == b"geo"
        except (RemoteProtocolError, trio.BrokenResourceError):
            return False


@pytest.mark.parametrize("server_kind", ["v2ray", "vtrio"])
async def test_v2ray_and_vtrio_read_the_same_lists(
    server_kind: str, tmp_path: Path
) -> None:
    write_assets(tmp_path)
    environment = {"V2RAY_LOCATION_ASSET": str(tmp_path)}
    ports = peers.free_ports(len(RULES))
    config = geodata_server_config(ports)
    seen: dict[tuple[str, str], bool] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            echo2 = await nursery.start(serve_tcp_echo, LOOP2)
            targets: list[tuple[Address, int]] = [
                ("localhost", echo),
                (ipaddress.ip_address(peers.LOOPBACK), echo),
                (ipaddress.ip_address(LOOP2), echo2),
            ]
            if server_kind == "v2ray":
                peer = peers.require_peer("v2ray", "4.34")
                path = tmp_path / "v2ray-server.json"
                running = peers.open_process(
                    "v2ray server", peer.command(path), config, path, ports, environment
                )
                async with running:
                    for name, port in zip(RULES, ports, strict=True):
                        for address, target in targets:
                            seen[name, str(address)] = await reaches(
                                port, address, target
                            )
            else:
                loaded = loads(json.dumps(config), environ=environment)
                await nursery.start(server.run, loaded)
                for name, port in zip(RULES, ports, strict=True):
                    for address, target in targets:
                        seen[name, str(address)] = await reaches(port, address, target)
            nursery.cancel_scope.cancel()
    blocked = {k for k, reached in seen.items() if not reached}
    assert blocked == {
        ("names", "localhost"),
        ("loop2", LOOP2),
    }
