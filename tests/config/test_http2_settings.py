"""gRPC (``grpcSettings``) and HTTP/2 (``httpSettings``) streams: what they
turn into, what is refused or warned, and their vmess:// links."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from tests.config.test_loader import USER, errors_of
from vtrio.config import loads, model
from vtrio.config.links import Link, make_link, parse_link


def server(stream: object, transport: object = None) -> dict[str, object]:
    document: dict[str, object] = {
        "inbounds": [
            {
                "port": 1,
                "protocol": "vmess",
                "settings": {"clients": [{"id": USER}]},
                "streamSettings": stream,
            }
        ],
    }
    if transport is not None:
        document["transport"] = transport
    return document


def stream_of(document: dict[str, object]) -> model.StreamSettings:
    return loads(json.dumps(document), source="t.json").inbounds[0].stream


def test_grpc_settings_and_the_alpn_they_need() -> None:
    settings = {
        "serviceName": "/my/path|multi",
        "multiMode": True,
        "authority": "cdn.example",
        "user_agent": "custom/1",
    }
    stream = stream_of(server({"network": "grpc", "grpcSettings": settings}))
    assert stream.network == "grpc"
    assert stream.grpc == model.GrpcSettings(
        "/my/path|multi",
        multi_mode=True,
        authority="cdn.example",
        user_agent="custom/1",
    )
    assert stream.tls.alpn == ("h2",)


def test_gun_is_grpc_and_an_alpn_given_stays() -> None:
    stream = stream_of(
        server(
            {
                "network": "gun",
                "gunSettings": {"serviceName": "svc"},
                "tlsSettings": {"alpn": ["h2", "http/1.1"]},
            }
        )
    )
    assert (stream.network, stream.grpc.service_name) == ("grpc", "svc")
    assert stream.tls.alpn == ("h2", "http/1.1")


def test_grpc_keepalive_as_xray_applies_it_and_window_tuning_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tuning = {
        "serviceName": "s",
        "idle_timeout": 5,  # Xray's floor is 10 s
        "permit_without_stream": True,
        "initial_windows_size": 65536,
    }
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        stream = stream_of(server({"network": "grpc", "grpcSettings": tuning}))
    assert stream.grpc.keepalive == model.H2Keepalive(10, 20, without_tunnels=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("initial_windows_size ignored" in m for m in messages)
    assert not any("idle_timeout" in m for m in messages)


def test_h2_read_idle_timeout_is_its_keepalive() -> None:
    settings = {"read_idle_timeout": 30, "health_check_timeout": 5}
    stream = stream_of(server({"network": "h2", "httpSettings": settings}))
    assert stream.h2.keepalive == model.H2Keepalive(30, 5, without_tunnels=True)
    assert stream_of(server({"network": "h2"})).h2.keepalive is None


def test_http_settings_with_v2ray_defaults_and_spellings() -> None:
    assert stream_of(server({"network": "h2"})).h2 == model.H2Settings(
        hosts=("www.example.com",), path="/", method="PUT"
    )
    given = {
        "host": "a.example,b.example",
        "path": "tunnel",
        "method": "POST",
        "headers": {"X-Tag": ["1", "2"]},
    }
    stream = stream_of(server({"network": "http", "httpSettings": given}))
    assert stream.network == "h2"
    assert stream.h2 == model.H2Settings(
        hosts=("a.example", "b.example"),
        path="/tunnel",
        method="POST",
        headers=(("X-Tag", ("1", "2")),),
    )
    assert stream.tls.alpn == ("h2",)


def test_the_root_transport_gives_its_http_settings() -> None:
    stream = stream_of(
        server({"network": "h2"}, transport={"httpSettings": {"path": "/root"}})
    )
    assert stream.h2.path == "/root"


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ({"method": "P UT"}, "method", "expected an HTTP method (a token)"),
        ({"path": "/a b"}, "path", "expected a path without spaces"),
        ({"headers": {"Bad Name": "x"}}, "headers.Bad Name", "expected an HTTP header"),
    ],
)
def test_bad_http_settings_are_refused_by_path(
    settings: dict[str, object], path: str, message: str
) -> None:
    found = errors_of(server({"network": "h2", "httpSettings": settings}))
    assert len(found) == 1
    where, text = found[0]
    assert where == f"$.inbounds[0].streamSettings.httpSettings.{path}"
    assert text.startswith(message)


def v2rayn(fields: dict[str, str]) -> str:
    base = {"v": "2", "add": "h.example", "port": "443", "id": USER}
    return "vmess://" + base64.b64encode(json.dumps(base | fields).encode()).decode()


def test_links_carry_grpc_and_h2_both_ways() -> None:
    grpc = parse_link(
        v2rayn(
            {"net": "grpc", "path": "svc", "type": "multi", "host": "cdn", "tls": "tls"}
        )
    )
    assert grpc.stream.grpc == model.GrpcSettings(
        "svc", multi_mode=True, authority="cdn"
    )
    assert grpc.stream.tls.alpn == ("h2",)
    h2 = parse_link(v2rayn({"net": "h2", "path": "p", "host": "a.example,b.example"}))
    assert h2.stream.h2 == model.H2Settings(hosts=("a.example", "b.example"), path="/p")
    for link in (grpc, h2):
        again = parse_link(make_link(link))
        assert isinstance(again, Link)
        assert (again.stream.network, again.stream.grpc, again.stream.h2) == (
            link.stream.network,
            link.stream.grpc,
            link.stream.h2,
        )
