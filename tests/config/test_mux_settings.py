"""An outbound's ``mux``: what it turns into, and what is refused or warned."""

from __future__ import annotations

import json
import logging

import pytest

from tests.config.test_loader import USER, errors_of
from vtrio.config import loads


def client(mux: object, protocol: str = "vmess") -> dict[str, object]:
    outbound: dict[str, object] = {"protocol": protocol, "mux": mux}
    if protocol == "vmess":
        outbound["settings"] = {
            "vnext": [{"address": "127.0.0.1", "port": 1, "users": [{"id": USER}]}]
        }
    return {
        "inbounds": [{"port": 1080, "protocol": "socks"}],
        "outbounds": [outbound],
    }


@pytest.mark.parametrize(
    ("mux", "concurrency"),
    [
        ({"enabled": True, "concurrency": 4}, 4),
        ({"enabled": True}, 8),
        ({"enabled": True, "concurrency": 0}, 8),  # v2ray's default
        ({"enabled": True, "concurrency": -1}, 0),  # below 0: off
        ({"enabled": False, "concurrency": 4}, 0),
        ({"enabled": True, "concurrency": 1024}, 1024),
    ],
)
def test_mux_concurrency(mux: object, concurrency: int) -> None:
    config = loads(json.dumps(client(mux)), source="t.json")
    assert config.outbounds[0].mux_concurrency == concurrency


def test_too_much_concurrency_is_refused_by_path() -> None:
    assert errors_of(client({"enabled": True, "concurrency": 1025})) == [
        ("$.outbounds[0].mux.concurrency", "expected a concurrency from 1 to 1024")
    ]


def test_mux_outside_vmess_and_xudp_switches_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        direct = loads(json.dumps(client({"enabled": True}, "freedom")))
        xudp = loads(json.dumps(client({"enabled": True, "xudpConcurrency": 16})))
    assert direct.outbounds[0].mux_concurrency == 0
    assert xudp.outbounds[0].mux_concurrency == 8
    messages = [record.getMessage() for record in caplog.records]
    assert any("Mux applies to vmess outbounds only" in m for m in messages)
    assert any("UDP goes over Mux as v2ray sends it" in m for m in messages)


@pytest.mark.parametrize(
    ("mux", "udp"),
    [
        ({"enabled": True}, True),  # as v2ray's client
        ({"enabled": True, "xudpConcurrency": -1}, False),  # Xray: UDP off Mux
        ({"enabled": True, "xudpConcurrency": 0}, True),
    ],
)
def test_udp_joins_mux_unless_xray_keeps_it_off(mux: object, udp: bool) -> None:
    config = loads(json.dumps(client(mux)), source="t.json")
    assert config.outbounds[0].mux_udp is udp
