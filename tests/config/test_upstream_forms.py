"""Configs that load in v2ray or Xray load the same way here.

Go's JSON decoder matches keys ignoring case and reads null as absent; v2ray 4
still reads v2ray 3's layout; Xray renamed fields and added new ones; both
take "a,b" where a list is meant. What vtrio cannot do is refused by name,
never dropped, when dropping it would weaken the config.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import pathlib
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.cli import _setup_logging
from vtrio.config import loads, model, v2ray, xray
from vtrio.config.jsonc import strip_comments
from vtrio.errors import ConfigErrors

USER = "b831381d-6324-4d53-ad4f-8cda48b30811"


def vmess_in(**extra: Any) -> dict[str, Any]:
    return {
        "tag": "in",
        "port": 10086,
        "protocol": "vmess",
        "settings": {"clients": [{"id": USER}]},
        **extra,
    }


def vmess_out(**extra: Any) -> dict[str, Any]:
    server = {"address": "h", "port": 1, "users": [{"id": USER}]}
    return {"protocol": "vmess", "settings": {"vnext": [server]}, **extra}


def document(**root: Any) -> str:
    base: dict[str, Any] = {
        "inbounds": [vmess_in()],
        "outbounds": [{"protocol": "freedom", "tag": "direct"}],
    }
    return json.dumps({**base, **root})


def errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        loads(text, source="t.json", environ={})
    return [(error.path, error.message) for error in info.value.errors]


def test_keys_match_fields_ignoring_case_and_null_means_absent() -> None:
    text = json.dumps(
        {
            "Log": {"LogLevel": "info", "access": None},
            "inbounds": [
                {
                    "Port": 10086,
                    "protocol": "vmess",
                    "tag": None,
                    "listen": None,
                    "Settings": {
                        "clients": [
                            {"ID": USER, "alterID": 4, "Email": "a@b", "level": None}
                        ]
                    },
                    "streamSettings": {
                        "Network": "ws",
                        "wsSettings": {"Path": "/v", "headers": {"User-Agent": "u"}},
                    },
                    "sniffing": None,
                }
            ],
            "outbounds": [{"protocol": "freedom", "settings": None}],
            "routing": None,
        }
    )
    config = loads(text, environ={})
    inbound = config.inbounds[0]
    assert (inbound.tag, inbound.ports) == ("", (10086,))
    assert isinstance(inbound.settings, model.VMessInboundSettings)
    (user,) = inbound.settings.users
    assert (user.id, user.alter_id, user.email, user.level) == (
        uuid.UUID(USER),
        4,
        "a@b",
        0,
    )
    assert (inbound.stream.network, inbound.stream.ws.path) == ("ws", "/v")
    assert inbound.stream.ws.headers == (("User-Agent", "u"),)  # data keep case
    assert config.log.level == "info"


def test_the_later_of_two_spellings_wins_as_in_go() -> None:
    clients = f'[{{"id": "{USER}", "alterId": 1, "alterID": 2}}]'
    text = document(inbounds=[vmess_in(settings={})]).replace(
        '"settings": {}', f'"settings": {{"clients": {clients}}}'
    )
    settings = loads(text, environ={}).inbounds[0].settings
    assert isinstance(settings, model.VMessInboundSettings)
    assert settings.users[0].alter_id == 2


def test_unknown_keys_are_still_refused_by_name() -> None:
    found = errors(document(inbounds=[vmess_in(colour="red")]))
    assert found == [("$.inbounds[0]", "Object contains unknown field `colour`")]


def test_v2ray_3_layout_is_read_in_v2ray_4_order() -> None:
    text = json.dumps(
        {
            "port": 10086,
            "inbound": {"protocol": "vmess", "settings": {"clients": [{"id": USER}]}},
            "outbound": {"protocol": "freedom", "tag": "direct"},
            "inboundDetour": [{"protocol": "socks", "port": 1080, "tag": "socks"}],
            "outboundDetour": [{"protocol": "blackhole", "tag": "blocked"}],
            "inbounds": [{"protocol": "http", "port": 8080, "tag": "http"}],
            "routing": {
                "strategy": "rules",
                "rules": [{"port": 25, "outboundTag": "blocked"}],
                "settings": {
                    "domainStrategy": "IPIfNonMatch",
                    "rules": [{"ip": ["10.0.0.0/8"], "outboundTag": "blocked"}],
                },
            },
        }
    )
    config = loads(text, environ={})
    assert [(i.protocol, i.ports) for i in config.inbounds] == [
        ("vmess", (10086,)),
        ("socks", (1080,)),
        ("http", (8080,)),
    ]
    assert [o.tag for o in config.outbounds] == ["direct", "blocked"]
    assert config.routing.domain_strategy == "IPIfNonMatch"
    top, legacy = config.routing.rules
    assert top.ports == ((25, 25),)
    assert legacy.ips
    assert not legacy.ports


def test_v2ray_3_layout_errors_name_their_own_paths() -> None:
    text = json.dumps(
        {
            "inbound": {"protocol": "vmess", "port": 1, "tag": "a"},
            "inboundDetour": [{"protocol": "socks", "port": "x"}],
            "inbounds": [{"protocol": "socks", "port": 2, "tag": "a"}],
            "routing": {"settings": {"domainStrategy": "Sometimes"}},
        }
    )
    paths = [path for path, _ in errors(text)]
    assert paths == [
        "$.inboundDetour[0].port",
        "$.routing.settings.domainStrategy",
        "$.inbounds[0].tag",  # the tag "a" of $.inbound, used again
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ip_if_non_match", "IPIfNonMatch"),
        ("ipondemand", "IPOnDemand"),
        ("asis", "AsIs"),
    ],
)
def test_routing_domain_strategies_in_v2ray_spellings(
    given: str, expected: str
) -> None:
    config = loads(document(routing={"domainStrategy": given}), environ={})
    assert config.routing.domain_strategy == expected


def test_xray_names_for_tunnel_socks_freedom_and_stream() -> None:
    text = json.dumps(
        {
            "inbounds": [
                {
                    "protocol": "tunnel",
                    "port": 5353,
                    "settings": {
                        "rewriteAddress": "1.1.1.1",
                        "rewritePort": 53,
                        "allowedNetwork": ["tcp", "udp"],
                        "portMap": {},
                    },
                },
                {
                    "protocol": "socks",
                    "port": 1080,
                    "settings": {
                        "auth": "password",
                        "users": [{"user": "u", "pass": "p"}],
                    },
                },
                vmess_in(streamSettings={"network": "tcp", "method": "ws"}),
            ],
            "outbounds": [
                {
                    "protocol": "freedom",
                    "settings": {"domainStrategy": "AsIs", "targetStrategy": "useipv4"},
                }
            ],
        }
    )
    config = loads(text, environ={})
    tunnel, socks, vmess = config.inbounds
    assert isinstance(tunnel.settings, model.DokodemoInboundSettings)
    assert (tunnel.settings.address, tunnel.settings.port) == ("1.1.1.1", 53)
    assert tunnel.settings.networks == {"tcp", "udp"}
    assert isinstance(socks.settings, model.SocksInboundSettings)
    assert socks.settings.accounts == (model.Account("u", "p"),)
    assert vmess.stream.network == "ws"
    freedom = config.outbounds[0].settings
    assert isinstance(freedom, model.FreedomSettings)
    assert freedom.domain_strategy == "UseIPv4"


def test_comma_strings_where_lists_are_meant() -> None:
    text = json.dumps(
        {
            "inbounds": [
                vmess_in(
                    streamSettings={
                        "security": "tls",
                        "tlsSettings": {
                            "alpn": "h2,http/1.1",
                            "certificates": [
                                {
                                    "certificate": ["C"],
                                    "key": ["K"],
                                    "usage": "encipherment",
                                }
                            ],
                        },
                    }
                )
            ],
            "outbounds": [{"protocol": "freedom", "tag": "direct"}],
            "routing": {
                "rules": [
                    {
                        "domain": "full:a.test,b.test",
                        "network": ["tcp", "udp"],
                        "outboundTag": "direct",
                    }
                ]
            },
        }
    )
    config = loads(text, environ={})
    assert config.inbounds[0].stream.tls.alpn == ("h2", "http/1.1")
    (rule,) = config.routing.rules
    assert len(rule.domains) == 2
    assert rule.networks == {"tcp", "udp"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("echConfigList", "AEX+DQ"),
        ("echForceQuery", "full"),
        ("echServerKeys", "AEX+DQ"),
    ],
)
def test_tls_checks_vtrio_lacks_are_refused_not_dropped(
    field: str, value: object
) -> None:
    stream = {"security": "tls", "tlsSettings": {"serverName": "h", field: value}}
    text = document(outbounds=[vmess_out(streamSettings=stream)])
    ((path, message),) = errors(text)
    assert path == f"$.outbounds[0].streamSettings.tlsSettings.{field}"
    assert "not supported yet" in message


def test_public_key_pins_are_decoded_and_bad_ones_named() -> None:
    pin = base64.b64encode(bytes(range(32))).decode()
    tls = {"serverName": "h", "pinnedPeerCertificatePublicKeySha256": [pin]}
    stream = {"security": "tls", "tlsSettings": tls}
    config = loads(document(outbounds=[vmess_out(streamSettings=stream)]), environ={})
    settings = config.outbounds[0].stream.tls
    assert settings is not None
    assert settings.pinned_key_sha256 == (bytes(range(32)),)
    tls["pinnedPeerCertificatePublicKeySha256"] = [pin, "aGFzaA=="]
    ((path, message),) = errors(document(outbounds=[vmess_out(streamSettings=stream)]))
    field = (
        "$.outbounds[0].streamSettings.tlsSettings.pinnedPeerCertificatePublicKeySha256"
    )
    assert path == f"{field}[1]"
    assert "SHA-256 of a public key" in message


def test_the_names_to_verify_in_xrays_spellings_are_one_list() -> None:
    tls = {
        "serverName": "front.example",
        "verifyPeerCertByName": "a.example, b.example,,",
        "verifyPeerCertInNames": ["b.example", "c.example"],
        "serverNameToVerify": "d.example",
    }
    stream = {"security": "tls", "tlsSettings": tls}
    config = loads(document(outbounds=[vmess_out(streamSettings=stream)]), environ={})
    settings = config.outbounds[0].stream.tls
    assert settings is not None
    assert settings.server_name == "front.example"
    assert settings.verify_names == ("a.example", "b.example", "c.example", "d.example")


def test_reject_unknown_sni_and_client_certificates_reach_the_inbound() -> None:
    stream = {
        "security": "tls",
        "tlsSettings": {
            "rejectUnknownSni": True,
            "verifyClientCertificate": True,
            "certificates": [
                {"certificateFile": "c.pem", "keyFile": "k.pem"},
                {"certificateFile": "ca.pem", "usage": "verifyclient"},
            ],
        },
    }
    inbound = {
        "port": 443,
        "protocol": "vmess",
        "settings": {"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]},
        "streamSettings": stream,
    }
    config = loads(document(inbounds=[inbound]), environ={})
    tls = config.inbounds[0].stream.tls
    assert tls is not None
    assert tls.reject_unknown_sni
    assert tls.verify_client_certificate
    assert [c.usage for c in tls.certificates] == ["encipherment", "verifyclient"]


def test_tls_settings_that_change_nothing_checked_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = {
        "security": "tls",
        "tlsSettings": {
            "fingerprint": "chrome",
            "curvePreferences": "X25519,CurveP256",
            "masterKeyLog": "",
            "echServerKeys": "",
            "rejectUnknownSni": False,
        },
    }
    text = document(outbounds=[vmess_out(streamSettings=stream)])
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        loads(text, environ={})
    assert any(
        "fingerprint 'chrome' is ignored" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("settings", "path", "fragment"),
    [
        (
            {
                "outbounds": [
                    {
                        "protocol": "freedom",
                        "settings": {
                            "finalRules": [{"action": "block", "ip": ["10.0.0.0/8"]}]
                        },
                    }
                ]
            },
            "$.outbounds[0].settings.finalRules",
            "finalRules is not supported",
        ),
        (
            {
                "outbounds": [
                    {"protocol": "freedom", "settings": {"ipsBlocked": ["10.0.0.0/8"]}}
                ]
            },
            "$.outbounds[0].settings.ipsBlocked",
            "ipsBlocked is not supported",
        ),
        (
            {"inbounds": [vmess_in(streamSettings={"finalmask": {"udp": []}})]},
            "$.inbounds[0].streamSettings.finalmask",
            "finalmask is not supported",
        ),
        (
            {"inbounds": [vmess_in(streamSettings={"method": "hysteria"})]},
            "$.inbounds[0].streamSettings.method",
            "Hysteria transport is not supported",
        ),
        (
            {"routing": {"rules": [{"process": ["curl"], "outboundTag": "direct"}]}},
            "$.routing.rules[0]",
            "rule condition 'process' is not supported",
        ),
        (
            {
                "outbounds": [
                    {
                        "protocol": "freedom",
                        "settings": {"domainStrategy": "ForceIPv6v4"},
                    }
                ]
            },
            "$.outbounds[0].settings.domainStrategy",
            "expected AsIs, UseIP",
        ),
    ],
)
def test_what_vtrio_lacks_is_refused_by_name(
    settings: dict[str, Any], path: str, fragment: str
) -> None:
    found = errors(document(**settings))
    assert any(p == path and fragment in m for p, m in found), found


def test_v2ray_and_xray_fields_without_effect_here_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = document(
        inbounds=[
            vmess_in(settings={"clients": [{"id": USER, "security": "auto"}]}),
            {"protocol": "socks", "port": 1080, "settings": {"timeout": 300}},
        ],
        outbounds=[
            {
                "protocol": "freedom",
                "tag": "direct",
                "settings": {"timeout": 10},
            }
        ],
        geodata={"path": "/usr/share/xray"},
        env={"XRAY_LOCATION_ASSET": "/x"},
        version={"min": "25.0.0"},
        services={},
        routing={
            "rules": [
                {"domainMatcher": "mph", "ip": ["10.0.0.0/8"], "outboundTag": "direct"}
            ]
        },
    )
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        config = loads(text, environ={})
    assert len(config.inbounds) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    for section in ("geodata", "env", "version", "services"):
        assert section in messages


def test_log_none_means_no_log_not_a_file_named_none(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = loads(document(log={"access": "none", "error": "none"}), environ={})
    assert (config.log.access, config.log.access_off) == (None, True)
    assert (config.log.error, config.log.error_off) == (None, True)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    access = logging.getLogger("vtrio.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate)
    try:
        _setup_logging(config.log, None)
        logging.getLogger("vtrio.access").info("from a:1 closed tcp:b:2")
        logging.getLogger("vtrio").error("an error")
        assert not access.propagate
        assert all(isinstance(h, logging.NullHandler) for h in root.handlers)
    finally:
        root.handlers[:], access.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        access.propagate = saved[3]
    assert list(tmp_path.iterdir()) == []


CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "configs").glob("*.json*"))


def _recased(value: Any, pick: Any) -> Any:
    """Every object key in another case, except inside data maps (headers)."""
    if isinstance(value, list):
        return [_recased(item, pick) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        spelled = pick([key, key.upper(), key.lower(), key.swapcase()])
        out[spelled] = item if key == "headers" else _recased(item, pick)
    return out


@settings(max_examples=40, deadline=None)
@given(path=st.sampled_from(CONFIGS), data=st.data())
def test_any_key_case_loads_the_same_config(path: pathlib.Path, data: Any) -> None:
    original = json.loads(strip_comments(path.read_bytes()))

    def pick(options: list[str]) -> str:
        return str(data.draw(st.sampled_from(options)))

    recased = _recased(original, pick)
    environ: dict[str, str] = {}
    assert loads(json.dumps(recased), environ=environ) == loads(
        json.dumps(original), environ=environ
    )


def test_root_transport_fills_the_streams_without_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = document(
        inbounds=[
            vmess_in(streamSettings={"network": "ws"}),
            vmess_in(
                tag="own",
                port=10087,
                streamSettings={"network": "ws", "wsSettings": {"path": "/own"}},
            ),
        ],
        transport={"wsSettings": {"path": "/ray"}, "kcpSettings": {"mtu": 1350}},
    )
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        config = loads(text, environ={})
    assert [i.stream.ws.path for i in config.inbounds] == ["/ray", "/own"]
    assert config.outbounds[0].stream.network == "tcp"
    assert not caplog.records
    found = errors(document(transport={"wsSettings": {"path": 7}}))
    assert found[0][0] == "$.transport.wsSettings.path"


def test_no_two_fields_of_a_dialect_struct_differ_only_in_case() -> None:
    structs = [
        value
        for module in (v2ray, xray)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, msgspec.Struct)
    ]
    assert len(structs) > 20
    for struct in structs:
        names = [field.encode_name for field in msgspec.structs.fields(struct)]
        assert len({name.casefold() for name in names}) == len(names), struct


def test_xray_mixed_inbound_is_the_socks_inbound() -> None:
    text = document(
        inbounds=[{"protocol": "mixed", "port": 1080, "settings": {"udp": True}}]
    )
    (inbound,) = loads(text, environ={}).inbounds
    assert inbound.protocol == "socks"
    assert isinstance(inbound.settings, model.SocksInboundSettings)
    assert inbound.settings.udp


def test_sniffing_reads_v2ray_and_xray_options() -> None:
    sniffing = {
        "enabled": True,
        "destOverride": ["http", "TLS", "ssl"],
        "routeOnly": True,
        "domainsExcluded": ["courier.push.apple.com", "domain:mi.com"],
        "ipsExcluded": ["10.0.0.0/8"],
    }
    (inbound,) = loads(
        document(inbounds=[vmess_in(sniffing=sniffing)]), environ={}
    ).inbounds
    assert inbound.sniffing == model.Sniffing(
        dest_override=("http", "tls"),
        route_only=True,
        domains_excluded=(
            model.DomainMatcher("keyword", "courier.push.apple.com"),
            model.DomainMatcher("domain", "mi.com"),
        ),
        ips_excluded=(ipaddress.ip_network("10.0.0.0/8"),),
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, None),
        ({"sniffing": {"enabled": False, "destOverride": ["tls"]}}, None),
        ({"sniffing": {"enabled": True}}, model.Sniffing()),
        ({"domainOverride": ["http", "tls"]}, model.Sniffing(("http", "tls"))),
        ({"domainOverride": "tls"}, model.Sniffing(("tls",))),
    ],
)
def test_sniffing_off_bare_and_in_v2ray_3s_domain_override(
    extra: dict[str, Any], expected: model.Sniffing | None
) -> None:
    (inbound,) = loads(document(inbounds=[vmess_in(**extra)]), environ={}).inbounds
    assert inbound.sniffing == expected


@pytest.mark.parametrize(
    ("sniffing", "warning"),
    [
        ({"destOverride": ["tls", "fakedns"]}, "no FakeDNS"),
        ({"destOverride": ["tls"], "metadataOnly": True}, "nothing is sniffed"),
    ],
)
def test_sniffing_parts_vtrio_lacks_are_named_in_warnings(
    sniffing: dict[str, Any], warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbound_json = vmess_in(sniffing={"enabled": True, **sniffing})
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        (inbound,) = loads(document(inbounds=[inbound_json]), environ={}).inbounds
    (message,) = [r.getMessage() for r in caplog.records]
    assert warning in message
    assert "$.inbounds[0].sniffing" in message
    metadata_only = sniffing.get("metadataOnly", False)
    assert inbound.sniffing == (None if metadata_only else model.Sniffing(("tls",)))


def test_quic_is_a_dest_override_like_the_others() -> None:
    inbound_json = vmess_in(sniffing={"enabled": True, "destOverride": ["quic", "tls"]})
    (inbound,) = loads(document(inbounds=[inbound_json]), environ={}).inbounds
    assert inbound.sniffing == model.Sniffing(("quic", "tls"))


def test_sniffing_errors_name_their_paths() -> None:
    sniffing: dict[str, Any] = {"enabled": "yes"}
    found = errors(document(inbounds=[vmess_in(sniffing=sniffing)]))
    assert found == [("$.inbounds[0].sniffing.enabled", "Expected `bool`, got `str`")]
    sniffing = {
        "enabled": True,
        "destOverride": ["tls", "bittorrent"],
        "domainsExcluded": ["geosite:cn"],
        "ipsExcluded": ["not-an-ip"],
    }
    found = errors(document(inbounds=[vmess_in(sniffing=sniffing)]))
    assert [path for path, _ in found] == [
        "$.inbounds[0].sniffing.destOverride[1]",
        "$.inbounds[0].sniffing.domainsExcluded[0]",
        "$.inbounds[0].sniffing.ipsExcluded[0]",
    ]
    assert "unknown protocol 'bittorrent'" in found[0][1]


def test_xray_local_ip_and_port_rules() -> None:
    rule = {
        "type": "field",
        "localIP": "127.0.0.2,10.0.0.0/8",
        "localPort": "443,8000-8080",
        "outboundTag": "direct",
    }
    (parsed,) = loads(document(routing={"rules": [rule]}), environ={}).routing.rules
    assert parsed.local_ips == (
        ipaddress.ip_network("127.0.0.2/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert parsed.local_ports == ((443, 443), (8000, 8080))


@pytest.mark.parametrize("key", ["source", "sourceIP"])
def test_rules_on_the_source_address_and_port(key: str) -> None:
    rule = {
        "type": "field",
        key: ["10.0.0.0/8", "geoip:private"],
        "sourcePort": "1000-2000,53",
        "outboundTag": "direct",
    }
    (parsed,) = loads(document(routing={"rules": [rule]}), environ={}).routing.rules
    assert ipaddress.ip_network("10.0.0.0/8") in parsed.source_ips
    assert ipaddress.ip_network("192.168.0.0/16") in parsed.source_ips
    assert parsed.source_ports == ((53, 53), (1000, 2000))
    rule = {"type": "field", key: "bad", "sourcePort": "x", "outboundTag": "direct"}
    found = errors(document(routing={"rules": [rule]}))
    assert [path for path, _ in found] == [
        f"$.routing.rules[0].{key}[0]",
        "$.routing.rules[0].sourcePort",
    ]


def test_balancers_in_v2ray_and_xray_forms() -> None:
    outbounds = [
        vmess_out(tag="proxy-a"),
        vmess_out(tag="proxy-b"),
        {"protocol": "freedom", "tag": "direct"},
    ]
    routing = {
        "balancers": [
            {"tag": "v2", "selector": ["proxy-"]},  # v2ray 4: random, no strategy
            {
                "tag": "x",
                "selector": "proxy-a,proxy-b",
                "strategy": {"type": "roundRobin"},
                "fallbackTag": "direct",
            },
        ],
        "rules": [
            {"type": "field", "port": "443", "balancerTag": "v2"},
            {"type": "field", "outboundTag": "direct", "balancerTag": "x"},
        ],
    }
    config = loads(document(outbounds=outbounds, routing=routing), environ={})
    assert config.routing.balancers == (
        model.Balancer("v2", ("proxy-",)),
        model.Balancer("x", ("proxy-a", "proxy-b"), "roundRobin", "direct"),
    )
    first, second = config.routing.rules
    assert (first.outbound_tag, first.balancer_tag) == ("", "v2")
    # With both, v2ray reads the outboundTag.
    assert (second.outbound_tag, second.balancer_tag) == ("direct", "")


def test_balancer_errors_name_their_paths() -> None:
    routing = {
        "balancers": [
            {"tag": "a", "selector": ["nothing-"]},
            {"tag": "b", "selector": ["direct"], "strategy": {"type": "leastPing"}},
            {"tag": "c", "selector": ["direct"], "fallbackTag": "missing"},
            {"selector": ["direct"]},
        ],
        "rules": [{"type": "field", "balancerTag": "zzz"}, {"type": "field"}],
    }
    found = errors(document(routing=routing))
    assert found == [
        ("$.routing.rules[1]", "a rule needs an outboundTag or a balancerTag"),
        (
            "$.routing.balancers[1].strategy.type",
            "leastPing needs the observatory, which vtrio lacks"
            " (vtrio balances random or roundRobin)",
        ),
        ("$.routing.balancers[3].tag", "a balancer needs a tag"),
        ("$.routing.balancers[0].selector", "no outbound tag starts with a selector"),
        ("$.routing.balancers[2].fallbackTag", "no outbound is tagged 'missing'"),
        ("$.routing.rules[0].balancerTag", "no balancer is tagged 'zzz'"),
    ]


@pytest.mark.parametrize(
    ("inbound", "listen", "mode"),
    [
        ({"listen": "/dev/shm/vmess.sock,0666"}, "/dev/shm/vmess.sock", 0o666),
        ({"listen": "@vmess-ws"}, "@vmess-ws", None),
        ({"listen": "@@vmess-ws", "port": None}, "@@vmess-ws", None),
        (
            {
                "streamSettings": {
                    "network": "domainsocket",
                    "dsSettings": {"path": "/run/v2ray.sock"},
                }
            },
            "/run/v2ray.sock",
            None,
        ),
        (
            {
                "streamSettings": {
                    "network": "ds",
                    "dsSettings": {"path": "v2", "abstract": True, "padding": True},
                }
            },
            "@@v2",
            None,
        ),
    ],
)
def test_unix_socket_listeners_in_xray_and_v2ray_forms(
    inbound: dict[str, Any], listen: str, mode: int | None
) -> None:
    (loaded,) = loads(document(inbounds=[vmess_in(**inbound)]), environ={}).inbounds
    assert (loaded.listen, loaded.socket_mode, loaded.ports) == (listen, mode, (0,))
    assert loaded.stream.domain_socket == ""


def test_a_domainsocket_outbound_dials_its_path_and_errors_name_paths() -> None:
    stream = {"network": "domainsocket", "dsSettings": {"path": "v2", "abstract": True}}
    outbounds = [vmess_out(streamSettings=stream)]
    (outbound,) = loads(document(outbounds=outbounds), environ={}).outbounds
    assert outbound.stream.domain_socket == "@v2"
    found = errors(
        document(
            inbounds=[vmess_in(listen="/x.sock,rw")],
            outbounds=[vmess_out(streamSettings={"network": "domainsocket"})],
        )
    )
    assert found == [
        (
            "$.inbounds[0].listen",
            "expected an octal file mode after the comma, got 'rw'",
        ),
        (
            "$.outbounds[0].streamSettings.dsSettings",
            "the domainsocket network needs dsSettings.path",
        ),
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("192.0.2.7", "192.0.2.7/32"),
        ("2001:db8::/64", "2001:db8::/64"),  # Xray: a random address in it
        ("0.0.0.0", None),
        ("::", None),
        ("", None),
    ],
)
def test_send_through_is_read(given: str, expected: str | None) -> None:
    outbound = {"protocol": "freedom", "tag": "direct", "sendThrough": given}
    (loaded,) = loads(document(outbounds=[outbound]), environ={}).outbounds
    assert loaded.send_through == (ipaddress.ip_network(expected) if expected else None)


def test_send_through_errors_name_their_paths() -> None:
    outbounds = [
        {"protocol": "freedom", "tag": "a", "sendThrough": "origin"},
        {"protocol": "freedom", "tag": "b", "sendThrough": "eth0"},
    ]
    found = errors(document(outbounds=outbounds))
    assert [path for path, _ in found] == [
        "$.outbounds[0].sendThrough",
        "$.outbounds[1].sendThrough",
    ]
    assert "origin" in found[0][1]
    assert found[1][1] == "expected a local IP address, got 'eth0'"


def test_rules_on_sniffed_protocol_and_user_email(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = [
        {"type": "field", "protocol": ["BitTorrent"], "outboundTag": "block"},
        {
            "type": "field",
            "user": "a@example.com,b@example.com",
            "outboundTag": "block",
        },
    ]
    outbounds = [vmess_out(), {"protocol": "blackhole", "tag": "block"}]
    text = document(
        inbounds=[vmess_in()], outbounds=outbounds, routing={"rules": rules}
    )
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        config = loads(text, environ={})
    first, second = config.routing.rules
    assert first.protocols == ("bittorrent",)
    assert second.users == frozenset({"a@example.com", "b@example.com"})
    # No inbound sniffs, so the protocol rule could never match: said once.
    (message,) = [r.getMessage() for r in caplog.records]
    assert "$.routing.rules[0].protocol matches sniffed traffic only" in message


def test_v2ray_chain_pins_are_read_and_checked() -> None:
    def pinned(pins: list[str]) -> str:
        tls = {"allowInsecure": True, "pinnedPeerCertificateChainSha256": pins}
        stream = {"security": "tls", "tlsSettings": tls}
        return document(outbounds=[vmess_out(streamSettings=stream)])

    config = loads(pinned([base64.b64encode(bytes(range(32))).decode()]), environ={})
    assert config.outbounds[0].stream.tls.pinned_chain_sha256 == (bytes(range(32)),)
    ((path, message),) = errors(pinned(["aGFzaA=="]))
    assert path.endswith("tlsSettings.pinnedPeerCertificateChainSha256[0]")
    assert "vtrio cert-hash" in message


def test_xray_certificate_pins_are_hex_with_or_without_colons() -> None:
    def pinned(text: str) -> str:
        stream = {"security": "tls", "tlsSettings": {"pinnedPeerCertSha256": text}}
        return document(outbounds=[vmess_out(streamSettings=stream)])

    colons = ":".join(f"{byte:02X}" for byte in range(32))
    config = loads(pinned(f"{'ab' * 32}, {colons}"), environ={})
    assert config.outbounds[0].stream.tls.pinned_cert_sha256 == (
        b"\xab" * 32,
        bytes(range(32)),
    )
    ((path, message),) = errors(pinned("abcd"))
    assert path.endswith("tlsSettings.pinnedPeerCertSha256")
    assert "expected hex SHA-256s" in message


def test_xray_freedom_extras_are_named_in_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    freedom = {
        "protocol": "freedom",
        "settings": {
            "fragment": {"packets": "tlshello", "length": "100-200"},
            "noises": [{"type": "rand", "packet": "10-20"}],
            "proxyProtocol": 2,
        },
    }
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        loads(document(outbounds=[freedom]), environ={})
    found = sorted(r.getMessage().split(": ")[1].split(" ")[0] for r in caplog.records)
    assert found == [
        "$.outbounds[0].settings.fragment",
        "$.outbounds[0].settings.noises",
        "$.outbounds[0].settings.proxyProtocol",
    ]


def test_chained_outbounds_are_checked_by_path() -> None:
    outbounds = [
        vmess_out(tag="a", proxySettings={"tag": "b"}),
        vmess_out(tag="b", streamSettings={"sockopt": {"dialerProxy": "a"}}),
        vmess_out(tag="c", proxySettings={"tag": "nowhere"}),
        {"protocol": "freedom", "tag": "d", "proxySettings": {"tag": "a"}},
    ]
    found = errors(document(outbounds=outbounds))
    assert found == [
        (
            "$.outbounds[3].proxySettings",
            "only a vmess outbound can be dialled through another outbound",
        ),
        ("$.outbounds[0]", "proxySettings/dialerProxy: a -> b -> a loops"),
        ("$.outbounds[1]", "proxySettings/dialerProxy: b -> a -> b loops"),
        (
            "$.outbounds[2]",
            "proxySettings/dialerProxy: no outbound is tagged 'nowhere'",
        ),
    ]


def test_websocket_browser_dialer_is_refused_and_heartbeat_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    browser = {"network": "ws", "wsSettings": {"useBrowserForwarding": True}}
    found = errors(document(outbounds=[vmess_out(streamSettings=browser)]))
    assert found == [
        (
            "$.outbounds[0].streamSettings.wsSettings.useBrowserForwarding",
            "useBrowserForwarding (v2ray's browser dialer) is not supported",
        )
    ]
    heartbeat = {"network": "ws", "wsSettings": {"heartbeatPeriod": 30}}
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        loads(document(outbounds=[vmess_out(streamSettings=heartbeat)]), environ={})
    (message,) = [r.getMessage() for r in caplog.records]
    assert "$.outbounds[0].streamSettings.wsSettings.heartbeatPeriod" in message


def test_xray_outbound_level_target_strategy(caplog: pytest.LogCaptureFixture) -> None:
    outbounds = [
        {
            "protocol": "freedom",
            "tag": "direct",
            "targetStrategy": "UseIPv6",
            "settings": {"domainStrategy": "UseIPv4"},
        },
        vmess_out(tag="proxy", targetStrategy="UseIPv4"),
    ]
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        config = loads(document(outbounds=outbounds), environ={})
    freedom = config.outbounds[0].settings
    assert isinstance(freedom, model.FreedomSettings)
    assert freedom.domain_strategy == "UseIPv6"
    (message,) = [r.getMessage() for r in caplog.records]
    assert "$.outbounds[1].targetStrategy: vtrio applies it to freedom only" in message
    bad = [{"protocol": "freedom", "targetStrategy": "Sometimes"}]
    ((path, _),) = errors(document(outbounds=bad))
    assert path == "$.outbounds[0].targetStrategy"
