"""The config loader: shipped configs, both dialects, every error by path."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.config import load, loads, model
from vtrio.config.jsonc import line_and_column, strip_comments
from vtrio.config.normalize import parse_ports
from vtrio.errors import ConfigError, ConfigErrors

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "configs").iterdir())
USER = "b831381d-6324-4d53-ad4f-8cda48b30811"


def server(**settings: object) -> dict[str, object]:
    return {
        "inbounds": [
            {
                "tag": "in",
                "port": 10086,
                "protocol": "vmess",
                "settings": {"clients": [{"id": USER}], **settings},
            }
        ],
        "outbounds": [{"protocol": "freedom", "tag": "direct"}],
    }


def server_over(stream: dict[str, object]) -> dict[str, object]:
    document = server()
    document["inbounds"][0]["streamSettings"] = stream  # type: ignore[index]
    return document


def errors_of(document: object) -> list[tuple[str, str]]:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        loads(text, source="t.json")
    exc = info.value
    if isinstance(exc, ConfigErrors):
        found = exc.errors
    else:
        assert isinstance(exc, ConfigError)
        found = [exc]
    assert all(e.source == "t.json" for e in found)
    return [(e.path, e.message) for e in found]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: pathlib.Path) -> None:
    config = load([str(path)])
    assert config.inbounds
    assert config.outbounds


def test_server_config_is_normalized() -> None:
    config = load(["configs/server.json"])
    inbound = config.inbound("vmess-in")
    assert inbound.ports == (10086,)
    assert isinstance(inbound.settings, model.VMessInboundSettings)
    alice, bob = inbound.settings.users
    assert alice.id == uuid.UUID(USER)
    assert (bob.alter_id, bob.level, bob.email) == (4, 1, "bob@example.com")
    assert config.policy.level(0).buffer_size == 512 * 1024
    assert config.policy.level(1).conn_idle == 120
    assert config.policy.level(1).handshake == 4  # defaults fill the rest
    assert config.policy.level(7) == model.LevelPolicy()
    block = config.routing.rules[0]
    assert ipaddress.ip_address("10.1.2.3") in block.ips[0]


def test_fields_v2ray_defines_are_accepted_and_ignored() -> None:
    """v2ray decodes inbound and outbound users into one account type and
    keeps deprecated timeouts, so configs written for it carry these."""
    document = server(clients=[{"id": USER, "security": "aes-128-gcm"}])
    document["inbounds"].append(  # type: ignore[attr-defined]
        {"protocol": "socks", "port": 1080, "settings": {"timeout": 300}}
    )
    document["outbounds"] = [{"protocol": "freedom", "settings": {"timeout": 60}}]
    config = loads(json.dumps(document), environ={})
    settings = config.inbounds[0].settings
    assert isinstance(settings, model.VMessInboundSettings)
    assert [user.id for user in settings.users] == [uuid.UUID(USER)]
    assert [inbound.protocol for inbound in config.inbounds] == ["vmess", "socks"]


def test_xray_dialect_users_custom_id_and_flat_outbound() -> None:
    server = load(["configs/xray-server.jsonc"])
    settings = server.inbounds[0].settings
    assert isinstance(settings, model.VMessInboundSettings)
    assert settings.users[0].id == uuid.UUID("5783a3e7-e373-51cd-8642-c83782b807c5")
    client = load(["configs/xray-client.jsonc"])
    outbound = client.outbounds[0].settings
    assert isinstance(outbound, model.VMessOutboundSettings)
    (srv,) = outbound.servers
    assert (srv.address, srv.port) == ("127.0.0.1", 10186)
    assert srv.users[0].security is model.Security.CHACHA20_POLY1305
    assert srv.users[0].experiments == {"AuthenticatedLength"}


def test_websocket_early_data_from_the_path() -> None:
    client = load(["configs/ws-tls-client.json"])
    stream = client.outbounds[0].stream
    assert (stream.network, stream.security) == ("ws", "tls")
    assert (stream.ws.path, stream.ws.max_early_data) == ("/vmess", 2048)
    assert stream.ws.early_data_header_name == ""
    assert stream.ws.host == "vtrio.test"
    assert stream.tls.allow_insecure


def test_httpupgrade_settings_in_xray_spelling() -> None:
    """Xray's httpupgradeSettings; ?ed=N leaves the path (the client then
    sends without waiting for the answer)."""
    config = loads(
        json.dumps(
            server_over(
                {
                    "network": "httpupgrade",
                    "httpupgradeSettings": {
                        "path": "/up?ed=2048",
                        "host": "cdn.example",
                        "headers": {"User-Agent": "u"},
                    },
                }
            )
        )
    )
    stream = config.inbounds[0].stream
    assert stream.network == "httpupgrade"
    assert stream.ws == model.WebSocketSettings(
        path="/up",
        host="cdn.example",
        headers=(("User-Agent", "u"),),
        max_early_data=2048,
    )


def test_tcp_http_header_with_v2rays_defaults_and_string_lists() -> None:
    """A string is split at its commas (v2ray's StringList); a request or
    response that gives no headers gets v2ray's; header names are sorted."""
    header = {
        "type": "http",
        "request": {"path": "/a,/b", "headers": {"User-Agent": "u", "Host": ["h"]}},
        "response": {"reason": "Partial Content"},
    }
    config = loads(json.dumps(server_over({"tcpSettings": {"header": header}})))
    http = config.inbounds[0].stream.http_header
    assert http == model.HttpHeaderSettings(
        model.HttpRequestHead(
            paths=("/a", "/b"), headers=(("Host", ("h",)), ("User-Agent", ("u",)))
        ),
        model.HttpResponseHead(status="200", reason="Partial Content"),
    )
    assert http.response.headers == model.DEFAULT_RESPONSE_HEADERS
    bare: dict[str, object] = {"rawSettings": {"header": {"type": "http"}}}  # Xray
    assert loads(json.dumps(server_over(bare))).inbounds[0].stream.http_header == (
        model.HttpHeaderSettings()
    )
    # Only the tcp network has it; v2ray ignores tcpSettings on the others.
    ws: dict[str, object] = {
        "network": "ws",
        "tcpSettings": {"header": {"type": "http"}},
    }
    assert loads(json.dumps(server_over(ws))).inbounds[0].stream.http_header is None


def test_bad_tcp_http_headers_name_each_field() -> None:
    header = {
        "type": "http",
        "request": {
            "version": "2",
            "method": "GE T",
            "path": ["/ok", "relative"],
            "headers": {"Bad Name": "x", "Empty": None, "Split": "a\r\nb"},
        },
        "response": {"status": "2000"},
    }
    found = errors_of(server_over({"tcpSettings": {"header": header}}))
    where = "$.inbounds[0].streamSettings.tcpSettings.header"
    assert found == [
        (
            f"{where}.request.path[1]",
            "expected a path starting with / and without spaces",
        ),
        (f"{where}.request.method", "expected an HTTP method such as GET"),
        (f"{where}.request.version", "expected an HTTP version such as 1.1"),
        (f"{where}.response.status", "expected a three-digit HTTP status such as 200"),
        (f"{where}.request.headers.Bad Name", "expected an HTTP header name (a token)"),
        (f"{where}.request.headers.Empty", "empty HTTP header value"),
        (f"{where}.request.headers.Split", "expected header values on one line"),
    ]
    unknown: dict[str, object] = {"tcpSettings": {"header": {"type": "srtp"}}}
    assert errors_of(server_over(unknown)) == [
        (f"{where}.type", "unknown TCP header type 'srtp' (expected none or http)")
    ]


@pytest.mark.parametrize(
    "stream",
    [
        {"tcpSettings": {"acceptProxyProtocol": True}},
        {"rawSettings": {"acceptProxyProtocol": True}},
        {"network": "ws", "wsSettings": {"acceptProxyProtocol": True}},
        {
            "network": "httpupgrade",
            "httpupgradeSettings": {"acceptProxyProtocol": True},
        },
        # v2ray 5 and Xray: in sockopt, whose socket options are ignored.
        {"sockopt": {"acceptProxyProtocol": True, "tcpFastOpen": True, "mark": 255}},
    ],
)
def test_accept_proxy_protocol_in_each_place_upstream_reads_it(
    stream: dict[str, object],
) -> None:
    config = loads(json.dumps(server_over(stream)))
    assert config.inbounds[0].stream.accept_proxy_protocol
    assert (
        not loads(json.dumps(server_over({}))).inbounds[0].stream.accept_proxy_protocol
    )


def test_detour_config() -> None:
    config = load(["configs/dynamic-port-server.json"])
    main = config.inbound("main").settings
    assert isinstance(main, model.VMessInboundSettings)
    assert main.detour_to == "dynamic"
    dynamic = config.inbound("dynamic")
    assert dynamic.ports == tuple(range(10100, 10111))
    assert dynamic.allocate == model.Allocate("random", 5, 3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (443, (443,)),
        ("8080", (8080,)),
        ("1000-1002", (1000, 1001, 1002)),
        ("80,443", (80, 443)),
        ("80,1000-1001", (80, 1000, 1001)),
        ("env:VTRIO_TEST_PORT", (2345,)),
    ],
)
def test_port_forms(value: int | str, expected: tuple[int, ...]) -> None:
    assert parse_ports(value, "$.port", {"VTRIO_TEST_PORT": "2345"}) == expected


@pytest.mark.parametrize("value", ["", "x", "70000", "5-3", "env:UNSET_VTRIO"])
def test_bad_ports_name_their_path(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ports(value, "$.inbounds[0].port", {})
    assert info.value.path == "$.inbounds[0].port"


BAD_INPUTS = [
    (
        server(clients=[{"id": ""}]),
        "$.inbounds[0].settings.clients[0].id",
        "vtrio uuid",
    ),
    (
        server(clients=[{"id": "x" * 31}]),
        "$.inbounds[0].settings.clients[0].id",
        "1 to 30 bytes",
    ),
    (
        {"inbounds": [{"protocol": "vless", "port": 1}]},
        "$.inbounds[0].protocol",
        "'vless' is not supported",
    ),
    (
        {
            "inbounds": [
                {"protocol": "vmess", "port": 1, "streamSettings": {"network": "kcp"}}
            ]
        },
        "$.inbounds[0].streamSettings.network",
        "mKCP transport is not supported yet",
    ),
    (
        {"inbounds": [{"protocol": "socks", "port": "1-"}]},
        "$.inbounds[0].port",
        "expected a port",
    ),
    (
        {"inbounds": [{"protocol": "socks", "port": 1, "colour": "red"}]},
        "$.inbounds[0]",
        "unknown field `colour`",
    ),
    (
        {"inbounds": [{"protocol": "socks", "port": 1, "settings": {"udp": "yes"}}]},
        "$.inbounds[0].settings.udp",
        "Expected `bool`",
    ),
    (
        {
            "inbounds": [
                {"protocol": "socks", "port": 1, "settings": {"auth": "password"}}
            ]
        },
        "$.inbounds[0].settings.accounts",
        "no accounts",
    ),
    (
        {"inbounds": [{"protocol": "vmess", "port": 1, "settings": {"users": [USER]}}]},
        "$.inbounds[0].settings.users",
        "v2fly v5",
    ),
    (
        {**server(), "routing": {"rules": [{"ip": ["1.2.3.4"], "outboundTag": "x"}]}},
        "$.routing.rules[0].outboundTag",
        "no outbound is tagged 'x'",
    ),
    (
        {
            **server(),
            "routing": {"rules": [{"domain": ["geosite:cn"], "outboundTag": "direct"}]},
        },
        "$.routing.rules[0].domain[0]",
        "geosite",
    ),
    (
        server(detour={"to": "nowhere"}),
        "$.inbounds[0].settings.detour.to",
        "no inbound is tagged 'nowhere'",
    ),
    (
        {
            "inbounds": [
                {"tag": "a", "protocol": "socks", "port": 1},
                {"tag": "a", "protocol": "socks", "port": 2},
            ]
        },
        "$.inbounds[1].tag",
        "used twice",
    ),
    (
        {
            "inbounds": [{"protocol": "socks", "port": 1}],
            "outbounds": [
                {
                    "protocol": "vmess",
                    "settings": {
                        "vnext": [{"address": "h", "port": 1, "users": [{"id": 5}]}]
                    },
                }
            ],
        },
        "$.outbounds[0].settings.vnext[0].users[0].id",
        "Expected `str`",
    ),
    (
        {"inbounds": []},
        "$.inbounds",
        "at least one inbound",
    ),
    (
        {**server(), "policy": {"levels": {"0": {}, "1": {"handshake": "4s"}}}},
        "$.policy.levels.1.handshake",
        "Expected `float | null`",
    ),
]


@pytest.mark.parametrize(("document", "path", "fragment"), BAD_INPUTS)
def test_bad_configs_name_the_path(document: object, path: str, fragment: str) -> None:
    found = errors_of(document)
    assert any(p == path and fragment in m for p, m in found), found


def test_every_problem_is_reported_at_once() -> None:
    document = server(clients=[{"id": ""}, {"id": "y" * 40}])
    paths = [p for p, _ in errors_of(document)]
    assert paths == [
        "$.inbounds[0].settings.clients[0].id",
        "$.inbounds[0].settings.clients[1].id",
    ]


def test_json_syntax_error_gives_line_and_column_of_the_file() -> None:
    text = '// comment\n{\n  /* two\n  lines */ "inbounds": [1,]\n}'
    ((path, message),) = errors_of(text)
    assert path == "$"
    assert "line 4, column 27" in message


def test_comments_keep_offsets_and_strings() -> None:
    text = b'{"a": "x // not # a /* comment */"} // tail\n# hash\n'
    stripped = strip_comments(text)
    assert len(stripped) == len(text)
    assert msgspec.json.decode(stripped) == {"a": "x // not # a /* comment */"}
    assert line_and_column(text, text.index(b"# hash")) == (2, 1)


def test_several_files_merge_like_v2ray(tmp_path: pathlib.Path) -> None:
    first = tmp_path / "a.json"
    second = tmp_path / "b.json"
    first.write_text(json.dumps({**server(), "log": {"loglevel": "debug"}}))
    second.write_text(
        json.dumps(
            {
                "log": {"loglevel": "error"},
                "inbounds": [{"tag": "socks", "protocol": "socks", "port": 1080}],
                "outbounds": [{"tag": "direct", "protocol": "blackhole"}],
            }
        )
    )
    config = load([str(first), str(second)])
    assert [i.tag for i in config.inbounds] == ["in", "socks"]
    assert [o.protocol for o in config.outbounds] == ["blackhole"]  # same tag replaced
    assert config.log.level == "error"


def test_aead_forced_by_setting_or_environment() -> None:
    forced = loads(json.dumps(server(aeadForced=True)), environ={})
    assert forced.inbounds[0].settings.aead_forced  # type: ignore[union-attr]
    by_env = loads(json.dumps(server()), environ={"V2RAY_VMESS_AEAD_FORCED": "true"})
    assert by_env.inbounds[0].settings.aead_forced  # type: ignore[union-attr]
    default = loads(json.dumps(server()), environ={})
    assert not default.inbounds[0].settings.aead_forced  # type: ignore[union-attr]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
    ),
    max_leaves=6,
)
SLOTS = [
    ("inbounds", 0, "port"),
    ("inbounds", 0, "settings"),
    ("inbounds", 0, "streamSettings"),
    ("inbounds", 0, "allocate"),
    ("outbounds", 0, "settings"),
    ("log",),
    ("routing",),
    ("policy",),
]


@settings(max_examples=300, deadline=None)
@given(slot=st.sampled_from(SLOTS), value=JSON_VALUES)
def test_any_value_in_any_slot_gives_a_located_error_or_loads(
    slot: tuple[object, ...], value: object
) -> None:
    document: dict[str, object] = server()
    target: object = document
    for key in slot[:-1]:
        target = target[key]  # type: ignore[index]
    target[slot[-1]] = value  # type: ignore[index]
    errors: list[ConfigError] = []
    try:
        loads(json.dumps(document), environ={})
    except ConfigErrors as exc:
        errors = exc.errors
    except ConfigError as exc:
        errors = [exc]
    assert all(error.path.startswith("$") for error in errors)


def test_ntp_section_names_a_server_to_correct_the_clock_by() -> None:
    config = loads(
        json.dumps({**server(), "ntp": {"server": "time.example", "interval": 600}}),
        environ={},
    )
    assert config.ntp == model.Ntp("time.example", 123, 600.0)
    off = {**server(), "ntp": {"server": "time.example", "enabled": False}}
    assert loads(json.dumps(off), environ={}).ntp is None
    assert loads(json.dumps(server()), environ={}).ntp is None
    bad = {**server(), "ntp": {"server": "t", "port": 0, "interval": 1}}
    assert [path for path, _ in errors_of(bad)] == ["$.ntp.port", "$.ntp.interval"]
