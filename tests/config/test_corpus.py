"""Configs in the shapes people copy from the example repositories.

Each document below is written for this project in the *shape* of a well-known
example (v2fly/v2ray-examples, XTLS/Xray-examples; landscape §3), with their
quirks: empty placeholder ids, ports as strings, ``geoip:private``, a typo'd
key, v5-dialect files, unsupported neighbours in the same file. Each either
loads, or fails with one path-named, human message — asserted here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from vtrio.config import loads
from vtrio.errors import ConfigError, ConfigErrors

UUID = "3f2a8c1e-5b7d-4e9a-8c6f-1d2e3f4a5b6c"

V2FLY_TCP_SERVER: dict[str, Any] = {
    "log": {"loglevel": "warning"},
    "routing": {
        "domainStrategy": "AsIs",
        "rules": [{"type": "field", "ip": ["geoip:private"], "outboundTag": "block"}],
    },
    "inbounds": [
        {
            "listen": "0.0.0.0",
            "port": 1234,
            "protocol": "vmess",
            "settings": {"clients": [{"id": "", "alterId": 0}]},
            "streamSettings": {"network": "tcp"},
        }
    ],
    "outbounds": [
        {"protocol": "freedom", "tag": "direct"},
        {"protocol": "blackhole", "tag": "block"},
    ],
}

V2FLY_WS_TLS_CLIENT: dict[str, Any] = {
    "log": {"loglevel": "warning"},
    # The example repository really spells this key wrong.
    "routing": {
        "domainStratedy": "AsIs",
        "rules": [{"type": "field", "ip": ["geoip:private"], "outboundTag": "direct"}],
    },
    "inbounds": [
        {
            "listen": "127.0.0.1",
            "port": "1080",
            "protocol": "socks",
            "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"},
        },
        {"listen": "127.0.0.1", "port": "1081", "protocol": "http"},
    ],
    "outbounds": [
        {
            "protocol": "vmess",
            "tag": "proxy",
            "settings": {
                "vnext": [
                    {
                        "address": "example.domain",
                        "port": 443,
                        "users": [{"id": UUID, "alterId": 0, "security": "none"}],
                    }
                ]
            },
            "streamSettings": {
                "network": "ws",
                "security": "tls",
                "wsSettings": {"path": "/ray", "headers": {"Host": "example.domain"}},
                "tlsSettings": {"serverName": "example.domain", "allowInsecure": False},
            },
        },
        {"protocol": "freedom", "tag": "direct"},
    ],
}

V2FLY_V5_TCP_SERVER: dict[str, Any] = {
    "log": {"error": {"level": "Debug", "type": "Console"}},
    "inbounds": [
        {
            "protocol": "vmess",
            "port": 1234,
            "listen": "0.0.0.0",
            "settings": {"users": [UUID]},
        }
    ],
    "outbounds": [{"protocol": "freedom"}],
}

XRAY_TCP_CLIENT: dict[str, Any] = {
    "log": {"loglevel": "warning"},
    "routing": {
        "domainStrategy": "AsIs",
        "rules": [{"type": "field", "ip": ["geoip:private"], "outboundTag": "direct"}],
    },
    "inbounds": [
        {
            "listen": "::1",
            "port": "1080",
            "protocol": "socks",
            "settings": {"auth": "noauth", "udp": True, "ip": "::1"},
        },
        {"listen": "::1", "port": "1081", "protocol": "http"},
    ],
    "outbounds": [
        {
            "protocol": "vmess",
            "tag": "proxy",
            "settings": {
                "vnext": [{"address": "", "port": 1234, "users": [{"id": ""}]}]
            },
            "streamSettings": {"network": "tcp"},
        },
        {"protocol": "freedom", "tag": "direct"},
    ],
}

XRAY_WS_TLS_SERVER: dict[str, Any] = {
    "log": {"loglevel": "warning"},
    "inbounds": [
        {
            "port": 443,
            "protocol": "vmess",
            "settings": {"clients": [{"id": UUID, "email": "love@example.com"}]},
            "streamSettings": {
                "network": "ws",
                "security": "tls",
                "wsSettings": {"path": "/websocket"},
                "tlsSettings": {
                    "certificates": [
                        {
                            "certificateFile": "/etc/ssl/xray/cert.pem",
                            "keyFile": "/etc/ssl/xray/key.pem",
                        }
                    ]
                },
            },
        }
    ],
    "outbounds": [{"protocol": "freedom", "tag": "direct"}],
}

XRAY_ALL_IN_ONE: dict[str, Any] = {
    "log": {"loglevel": "info"},
    "api": {"services": ["HandlerService", "StatsService"], "tag": "api"},
    "stats": {},
    "policy": {
        "levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}},
        "system": {"statsInboundUplink": True},
    },
    "inbounds": [
        {
            "listen": "127.0.0.1",
            "port": 62789,
            "protocol": "dokodemo-door",
            "settings": {"address": "127.0.0.1"},
            "tag": "api",
            "sniffing": None,
        },
        {
            "tag": "vless-in",
            "port": 443,
            "protocol": "vless",
            "settings": {
                "clients": [{"id": UUID, "flow": "xtls-rprx-vision"}],
                "decryption": "none",
            },
        },
        {
            "listen": "@vmess-ws",
            "protocol": "vmess",
            "settings": {
                "clients": [{"email": "general@vmess-ws", "id": UUID, "level": 0}]
            },
            "streamSettings": {
                "network": "ws",
                "security": "none",
                "wsSettings": {"acceptProxyProtocol": True, "path": "/vmws"},
            },
        },
        {
            "tag": "vmess-grpc",
            "listen": "127.0.0.1",
            "port": 3003,
            "protocol": "vmess",
            "settings": {"clients": [{"id": UUID}]},
            "streamSettings": {
                "network": "grpc",
                "grpcSettings": {"serviceName": "vmgrpc"},
            },
        },
    ],
    "outbounds": [{"protocol": "freedom", "tag": "direct"}],
}


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        loads(json.dumps(document), source="example.json", environ={})
    except ConfigErrors as exc:
        return [(e.path, e.message) for e in exc.errors]
    except ConfigError as exc:
        return [(exc.path, exc.message)]
    return []


def with_values(
    document: dict[str, Any], *edits: tuple[list[object], object]
) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    for path, value in edits:
        target: Any = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            V2FLY_TCP_SERVER,
            [
                (
                    "$.inbounds[0].settings.clients[0].id",
                    "id is empty: generate one with `vtrio uuid`",
                )
            ],
            id="v2fly-VMess-TCP-server-placeholder",
        ),
        pytest.param(
            V2FLY_WS_TLS_CLIENT,
            [("$.routing", "Object contains unknown field `domainStratedy`")],
            id="v2fly-VMess-Websocket-TLS-client-typo",
        ),
        pytest.param(
            V2FLY_V5_TCP_SERVER,
            [("$.log.error", "Expected `str`, got `object`")],
            id="v2fly-v5-VMess-TCP-server",
        ),
        pytest.param(
            XRAY_TCP_CLIENT,
            [
                (
                    "$.outbounds[0].settings.vnext[0].users[0].id",
                    "id is empty: generate one with `vtrio uuid`",
                ),
                (
                    "$.outbounds[0].settings.vnext[0].address",
                    "address is empty: the server's host name or IP",
                ),
            ],
            id="Xray-VMess-TCP-client-placeholders",
        ),
        pytest.param(XRAY_WS_TLS_SERVER, [], id="Xray-VMess-Websocket-TLS-server"),
    ],
)
def test_example_shapes(
    document: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert problems(document) == expected


def test_placeholders_filled_in_load() -> None:
    server = with_values(
        V2FLY_TCP_SERVER, (["inbounds", 0, "settings", "clients", 0, "id"], UUID)
    )
    assert problems(server) == []
    client = with_values(
        XRAY_TCP_CLIENT,
        (["outbounds", 0, "settings", "vnext", 0, "users", 0, "id"], UUID),
        (["outbounds", 0, "settings", "vnext", 0, "address"], "vpn.example"),
    )
    assert problems(client) == []
    fixed = copy.deepcopy(V2FLY_WS_TLS_CLIENT)
    fixed["routing"]["domainStrategy"] = fixed["routing"].pop("domainStratedy")
    assert problems(fixed) == []


def test_v5_users_list_gets_the_dialect_hint() -> None:
    document = with_values(V2FLY_V5_TCP_SERVER, (["log"], {"loglevel": "debug"}))
    ((path, message),) = problems(document)
    assert path == "$.inbounds[0].settings.users"
    assert "v2fly v5 (jsonv5)" in message


def test_all_in_one_names_every_unsupported_part() -> None:
    found = problems(XRAY_ALL_IN_ONE)
    # The VMess-WS inbound on the abstract socket @vmess-ws, behind the
    # PROXY protocol, loads: the deployment this file is written for; so
    # does the VMess-gRPC one.
    assert [path for path, _ in found] == [
        "$.inbounds[0].settings",
        "$.inbounds[1].protocol",
    ]
    assert "needs an address and a port" in found[0][1]
    assert "'vless' is not supported" in found[1][1]
