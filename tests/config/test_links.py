"""vmess:// share links: both forms, tolerant parsing, exact round trips."""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.config import model
from vtrio.config.links import Link, client_config, make_link, parse_link
from vtrio.config.normalize import NETWORKS
from vtrio.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")


def v2rayn(
    data: Mapping[str, object], *, urlsafe: bool = False, pad: bool = True
) -> str:
    raw = json.dumps(data).encode()
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return "vmess://" + (text if pad else text.rstrip("="))


def test_v2rayn_link_with_numbers_or_strings() -> None:
    for port, aid in ((443, 4), ("443", "4")):
        link = parse_link(
            v2rayn(
                {
                    "v": 2,
                    "ps": "home",
                    "add": "example.com",
                    "port": port,
                    "id": str(USER),
                    "aid": aid,
                    "scy": "chacha20-poly1305",
                    "net": "ws",
                    "path": "/p?ed=2048",
                    "host": "cdn.example.com",
                    "tls": "tls",
                    "sni": "sni.example.com",
                }
            )
        )
        assert (link.address, link.port, link.remark) == ("example.com", 443, "home")
        assert (link.user.id, link.user.alter_id) == (USER, 4)
        assert link.user.security is model.Security.CHACHA20_POLY1305
        assert (link.stream.network, link.stream.security) == ("ws", "tls")
        assert (link.stream.ws.path, link.stream.ws.max_early_data) == ("/p", 2048)
        assert link.stream.ws.host == "cdn.example.com"
        assert link.stream.tls.server_name == "sni.example.com"


def test_url_safe_unpadded_base64_with_whitespace() -> None:
    data = {"add": "h", "port": "1", "id": "我爱🍉老师1314???", "aid": "0"}
    text = v2rayn(data, urlsafe=True, pad=False)
    link = parse_link("  " + text[:20] + "\n" + text[20:] + " ")
    assert link.user.id == uuid.uuid5(uuid.UUID(int=0), "我爱🍉老师1314???")


def test_httpupgrade_links_in_both_forms() -> None:
    """v2rayN writes ``net: httpupgrade``; Xray's URI ``type=httpupgrade``."""
    data = {"add": "h", "port": 443, "id": str(USER), "net": "httpupgrade"}
    data |= {"path": "/up?ed=2048", "host": "cdn.example", "tls": "tls"}
    for text in (
        v2rayn(data),
        f"vmess://{USER}@h:443?type=httpupgrade&security=tls&path=%2Fup%3Fed%3D2048"
        "&host=cdn.example",
    ):
        stream = parse_link(text).stream
        assert (stream.network, stream.security) == ("httpupgrade", "tls")
        assert (stream.ws.path, stream.ws.host) == ("/up", "cdn.example")
        assert stream.ws.max_early_data == 2048


def test_uri_form() -> None:
    link = parse_link(
        f"vmess://{USER}@[::1]:8443?type=ws&encryption=aes-128-gcm&security=tls"
        "&sni=a.example&path=%2Fws&host=h.example#my%20server"
    )
    assert (link.address, link.port, link.remark) == ("::1", 8443, "my server")
    assert link.user.security is model.Security.AES_128_GCM
    assert (link.stream.ws.path, link.stream.tls.server_name) == ("/ws", "a.example")


def test_tcp_http_header_links_carry_hosts_and_paths() -> None:
    """v2rayN's tcp + type http: Host choices and paths, comma-separated;
    the other request headers stay v2ray's defaults."""
    link = parse_link(
        v2rayn(
            {
                "add": "h",
                "port": 80,
                "id": str(USER),
                "net": "tcp",
                "type": "http",
                "host": "a.example, b.example",
                "path": "/x,/y",
            }
        )
    )
    header = link.stream.http_header
    assert header is not None
    assert header.request.paths == ("/x", "/y")
    assert dict(header.request.headers)["Host"] == ("a.example", "b.example")
    assert dict(header.request.headers)["Pragma"] == ("no-cache",)
    assert parse_link(make_link(link)) == link
    uri = parse_link(f"vmess://{USER}@h:80?type=tcp&headerType=http&path=%2Fz")
    assert uri.stream.http_header is not None
    assert uri.stream.http_header.request.paths == ("/z",)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://x", "starts with vmess://"),
        ("vmess://!!!", "Base64"),
        ("vmess://" + base64.b64encode(b"[1]").decode(), "not an object"),
        (
            v2rayn({"add": "h", "port": 1, "id": str(USER), "net": "kcp"}),
            "not supported",
        ),
        (v2rayn({"add": "", "port": 1, "id": str(USER)}), "no server address"),
        (v2rayn({"add": "h", "port": 1, "id": ""}), "id is empty"),
        (v2rayn({"add": "h", "port": 1, "id": str(USER), "aid": "x"}), "alterId"),
        (v2rayn({"add": "h", "port": 1, "id": str(USER), "aid": -1}), "alterId"),
        (
            v2rayn({"add": "h", "port": 1, "id": str(USER), "type": "srtp"}),
            "unknown TCP header type 'srtp'",
        ),
        (
            v2rayn(
                {"add": "h", "port": 1, "id": str(USER), "type": "http", "path": "x"}
            ),
            "expected paths starting with /",
        ),
        (f"vmess://{USER}@h:1?type=tcp&headerType=utp", "unknown TCP header type"),
    ],
)
def test_bad_links_are_config_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_link(text)
    assert fragment in str(info.value)


@given(
    address=st.sampled_from(["example.com", "10.0.0.1", "vpn.example.org"]),
    port=st.integers(1, 65535),
    alter_id=st.integers(0, 64),
    security=st.sampled_from(list(model.Security)),
    network=st.sampled_from(["tcp", "ws", "httpupgrade"]),
    tls=st.booleans(),
    remark=st.text(max_size=20),
)
def test_make_then_parse_is_identity(
    address: str,
    port: int,
    alter_id: int,
    security: model.Security,
    network: str,
    tls: bool,
    remark: str,
) -> None:
    stream = model.StreamSettings(
        network=NETWORKS[network],
        security="tls" if tls else "none",
        tls=model.TLSSettings(server_name="sni.example" if tls else None),
        ws=model.WebSocketSettings(path="/x", host="h.example")
        if network != "tcp"
        else model.WebSocketSettings(),
    )
    link = Link(
        address,
        port,
        model.VMessUser(USER, alter_id, security=security),
        stream,
        remark,
    )
    assert parse_link(make_link(link)) == link


def test_client_config_is_a_socks_entry_to_the_server() -> None:
    link = Link("example.com", 443, model.VMessUser(USER))
    config = client_config(link, "127.0.0.1:1081")
    (inbound,) = config.inbounds
    assert (inbound.protocol, inbound.listen, inbound.ports) == (
        "socks",
        "127.0.0.1",
        (1081,),
    )
    assert isinstance(inbound.settings, model.SocksInboundSettings)
    assert inbound.settings.udp
    with pytest.raises(ConfigError):
        client_config(link, "1081")


def test_ipv6_server_in_brackets_and_websocket_type_field() -> None:
    link = parse_link(
        v2rayn(
            {"add": "[2001:db8::1]", "port": "443", "id": str(USER), "aid": " 0 "}
            | {"net": "ws", "type": "none", "path": "/p"}
        )
    )
    assert (link.address, link.port, link.user.alter_id) == ("2001:db8::1", 443, 0)
    assert (link.stream.network, link.stream.ws.path) == ("ws", "/p")
