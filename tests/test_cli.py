"""The command line through typer's CliRunner: outputs and exit codes."""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from tests.support.certs import make_pki
from vtrio import __version__
from vtrio.cli import app
from vtrio.config.links import parse_link
from vtrio.net.transport.tls import chain_hash

if TYPE_CHECKING:
    import pathlib

RUNNER = CliRunner()


def test_uuid_maps_custom_ids_like_xray() -> None:
    result = RUNNER.invoke(app, ["uuid", "-i", "我爱🍉老师1314"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "5783a3e7-e373-51cd-8642-c83782b807c5"
    assert len(RUNNER.invoke(app, ["uuid"]).stdout.strip()) == 36


def test_uuid_refuses_an_over_long_custom_id() -> None:
    result = RUNNER.invoke(app, ["uuid", "-i", "x" * 31])
    assert result.exit_code == 2
    assert "1 to 30 bytes" in result.stderr
    assert "Traceback" not in result.output


def test_check_prints_a_summary() -> None:
    result = RUNNER.invoke(app, ["check", "configs/server.json"])
    assert result.exit_code == 0, result.output
    assert "vmess-in" in result.stdout
    assert "2 user(s), 1 legacy" in result.stdout
    assert "warning  inbound vmess-in: 1 user(s) with alterId > 0" in result.stdout
    assert result.stdout.rstrip().endswith("Configuration OK.")


def checked_summary(path: pathlib.Path, config: object) -> list[str]:
    """The lines ``vtrio check`` prints for ``config``, which must load."""
    path.write_text(json.dumps(config))
    result = RUNNER.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_check_names_sniffing_chains_and_balancers(tmp_path: pathlib.Path) -> None:
    user = {"id": "6726c108-2775-47e5-8f82-eae02fc2a3d1"}
    config = {
        "inbounds": [
            {
                "tag": "socks",
                "port": 10808,
                "protocol": "socks",
                "sniffing": {"enabled": True, "destOverride": ["http", "tls"]},
            }
        ],
        "outbounds": [
            {
                "tag": "proxy-1",
                "protocol": "vmess",
                "settings": {
                    "vnext": [{"address": "a.example", "port": 443, "users": [user]}]
                },
                "proxySettings": {"tag": "relay"},
            },
            {
                "tag": "relay",
                "protocol": "vmess",
                "settings": {
                    "vnext": [{"address": "b.example", "port": 443, "users": [user]}]
                },
            },
        ],
        "routing": {
            "domainStrategy": "IPOnDemand",
            "balancers": [{"tag": "b", "selector": ["proxy-"]}],
            "rules": [{"type": "field", "network": "tcp", "balancerTag": "b"}],
        },
    }
    lines = checked_summary(tmp_path / "client.json", config)
    assert lines[0].endswith("sniffing (override http,tls)")
    assert lines[1].endswith("via relay")
    assert "routing  1 rule(s), 1 balancer(s), domainStrategy IPOnDemand" in lines


def test_check_reports_each_problem_on_its_own_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "inbounds": [
                    {
                        "protocol": "vmess",
                        "port": 1,
                        "settings": {"clients": [{"id": ""}]},
                    },
                    {"protocol": "trojan", "port": 2},
                ]
            }
        )
    )
    result = RUNNER.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{bad}: $.inbounds[0].settings.clients[0].id: id is empty: generate one with `vtrio uuid`",
        f"{bad}: $.inbounds[1].protocol: inbound protocol 'trojan' is not supported"
        " (vtrio serves vmess, socks, http and dokodemo-door)",
    ]
    assert "Traceback" not in result.output


def test_link_prints_one_link_per_user() -> None:
    result = RUNNER.invoke(
        app, ["link", "configs/server.json", "--address", "vpn.example"]
    )
    assert result.exit_code == 0
    links = [parse_link(line) for line in result.stdout.split()]
    assert [(x.address, x.port, x.user.alter_id) for x in links] == [
        ("vpn.example", 10086, 0),
        ("vpn.example", 10086, 4),
    ]


def test_client_with_a_bad_link_exits_2() -> None:
    result = RUNNER.invoke(app, ["client", "vmess://nonsense!"])
    assert result.exit_code == 2
    assert "link" in result.stderr
    assert "Traceback" not in result.output


def test_client_with_an_unknown_network_exits_2() -> None:
    result = RUNNER.invoke(
        app, ["client", "--server", "h:1", "--id", "x", "--network", "kcp"]
    )
    assert result.exit_code == 2
    assert "--network: expected tcp, ws, httpupgrade, grpc or h2" in result.stderr


@pytest.mark.parametrize(
    "flags", [["--header-type", "srtp"], ["--header-type", "http", "--network", "ws"]]
)
def test_client_with_a_bad_header_type_exits_2(flags: list[str]) -> None:
    result = RUNNER.invoke(app, ["client", "--server", "h:1", "--id", "x", *flags])
    assert result.exit_code == 2
    assert "--header-type: expected none, or http with --network tcp" in result.stderr


def test_version() -> None:
    result = RUNNER.invoke(app, ["version"])
    assert result.stdout.strip() == f"vtrio {__version__}"


def test_check_reads_the_certificates(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "tls.json"
    config.write_text(
        json.dumps(
            {
                "inbounds": [
                    {
                        "port": 443,
                        "protocol": "vmess",
                        "settings": {
                            "clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]
                        },
                        "streamSettings": {
                            "security": "tls",
                            "tlsSettings": {
                                "certificates": [
                                    {
                                        "certificateFile": "/nonexistent.crt",
                                        "keyFile": "/nonexistent.key",
                                    }
                                ]
                            },
                        },
                    }
                ]
            }
        )
    )
    result = RUNNER.invoke(app, ["check", str(config)])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"{config}: $.inbounds[0].streamSettings.tlsSettings.certificates[0]: cannot load"
    )


def test_cert_hash_prints_the_pin_of_a_pem_chain(tmp_path: pathlib.Path) -> None:
    pki = make_pki()
    chain = tmp_path / "chain.pem"
    chain.write_text(pki.cert_pem + pki.ca_pem)
    result = RUNNER.invoke(app, ["cert-hash", str(chain)])
    assert result.exit_code == 0, result.output
    ders = [ssl.PEM_cert_to_DER_cert(pem) for pem in (pki.cert_pem, pki.ca_pem)]
    assert result.stdout.strip() == base64.b64encode(chain_hash(ders)).decode()
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing")
    result = RUNNER.invoke(app, ["cert-hash", str(empty)])
    assert result.exit_code == 2
    assert "no PEM certificate" in result.output
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    result = RUNNER.invoke(app, ["cert-hash", str(broken)])
    assert result.exit_code == 2
    assert "not a certificate" in result.output


def test_check_builds_the_outbounds_tls_too(tmp_path: pathlib.Path) -> None:
    tls = {"serverName": "h", "cipherSuites": "TLS_NULL_WITH_NOTHING"}
    vnext = [{"address": "h", "port": 443, "users": [{"id": str(uuid.uuid4())}]}]
    config = tmp_path / "client.json"
    config.write_text(
        json.dumps(
            {
                "inbounds": [{"port": 1080, "protocol": "socks"}],
                "outbounds": [
                    {
                        "protocol": "vmess",
                        "settings": {"vnext": vnext},
                        "streamSettings": {"security": "tls", "tlsSettings": tls},
                    }
                ],
            }
        )
    )
    result = RUNNER.invoke(app, ["check", str(config)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{config}: $.outbounds[0].streamSettings.tlsSettings.cipherSuites:"
        " unknown cipher suite 'TLS_NULL_WITH_NOTHING'"
    )


def test_check_names_mux_marks_and_transparent_doors(tmp_path: pathlib.Path) -> None:
    user = {"id": "6726c108-2775-47e5-8f82-eae02fc2a3d1"}
    config = {
        "inbounds": [
            {
                "tag": "door",
                "port": 12345,
                "protocol": "dokodemo-door",
                "settings": {"followRedirect": True},
                "streamSettings": {"sockopt": {"tproxy": "tproxy"}},
            }
        ],
        "outbounds": [
            {
                "tag": "proxy",
                "protocol": "vmess",
                "settings": {
                    "vnext": [{"address": "a.example", "port": 443, "users": [user]}]
                },
                "mux": {"enabled": True, "concurrency": 4},
                "streamSettings": {"sockopt": {"mark": 255}},
            }
        ],
    }
    lines = checked_summary(tmp_path / "gateway.json", config)
    assert lines[0].endswith("to the original destination (tproxy), else -")
    assert lines[1].endswith("(1 user(s), auto), mux 4 per connection, mark 255")
