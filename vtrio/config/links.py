"""``vmess://`` share links, both forms, and the configs built from them.

Theory of operation: a link is parsed into a :class:`Link` (server, user,
transport), from which :func:`client_config` builds the model of a local
SOCKS5 entry tunnelling to that server. Two link forms exist (spec 12.5):
v2rayN's Base64 JSON (``v``, ``add``, ``port``, ``id``, ``aid``, ``scy``,
``net``, ``path``, ``host``, ``tls``, ``sni``...; numbers may be strings) and
Xray's URI proposal ``vmess://uuid@host:port?type=ws&security=tls...#name``.
Links are written in the v2rayN form, standard Base64 with padding.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vtrio.config import model
from vtrio.config.normalize import NETWORKS, parse_id, parse_ports, parse_security
from vtrio.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable

SCHEME = "vmess://"
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True, slots=True)
class Link:
    """What a share link says: a server, an account and a transport."""

    address: str
    port: int
    user: model.VMessUser
    stream: model.StreamSettings = field(default_factory=model.StreamSettings)
    remark: str = ""


def _b64decode(text: str) -> bytes:
    cleaned = "".join(text.split())
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(
            cleaned, altchars=b"-_" if "-" in cleaned or "_" in cleaned else None
        )
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"not Base64: {exc}", path="link") from None


def _stream(
    net: str,
    header: str,
    host: str,
    path: str,
    tls: str,
    sni: str,
    alpn: str,
    insecure: bool,
) -> model.StreamSettings:
    network = NETWORKS.get((net or "tcp").lower())
    if network is None:
        raise ConfigError(
            f"transport {net!r} is not supported yet (tcp, ws, httpupgrade, grpc, h2)",
            path="link.net",
        )
    http_header = None
    if network == "tcp" and header.lower() == "http":
        http_header = tcp_http_header(host, path, "link.path")
    elif network == "tcp" and header.lower() not in ("", "none"):
        raise ConfigError(
            f"unknown TCP header type {header!r} (expected none or http)",
            path="link.type",
        )
    security = (tls or "none").lower()
    if security not in ("none", "tls", ""):
        raise ConfigError(
            f"stream security {tls!r} is not supported (tls or none)", path="link.tls"
        )
    ws = model.WebSocketSettings()
    grpc, h2 = model.GrpcSettings(), model.H2Settings()
    alpns = tuple(a for a in alpn.split(",") if a)
    if network == "grpc":
        # v2rayN: path is the serviceName, type the mode, host the authority.
        grpc = model.GrpcSettings(
            service_name=path, multi_mode=header.lower() == "multi", authority=host
        )
    elif network == "h2":
        h2 = h2_settings(host, path)
    elif network != "tcp":
        ws_path, _, query = (path or "/").partition("?")
        max_early, header = 0, ""
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "ed" and value.isdigit():
                max_early = int(value)
        ws = model.WebSocketSettings(
            path=ws_path or "/",
            host=host or None,
            max_early_data=max_early,
            early_data_header_name=header,
        )
    if network in ("grpc", "h2"):
        alpns = alpns or ("h2",)
    return model.StreamSettings(
        network=network,
        security="tls" if security == "tls" else "none",
        tls=model.TLSSettings(
            server_name=sni or (host if security == "tls" else None) or None,
            alpn=alpns,
            allow_insecure=insecure,
        ),
        ws=ws,
        grpc=grpc,
        h2=h2,
        http_header=http_header,
    )


def tcp_http_header(host: str, path: str, where: str) -> model.HttpHeaderSettings:
    """The "http" TCP header as v2rayN links give it: comma-separated Host
    values (replacing the default Host choices) and paths.

    Raises:
        ConfigError: a path does not start with /.
    """
    hosts = tuple(h.strip() for h in host.split(",") if h.strip())
    paths = tuple(p.strip() for p in path.split(",") if p.strip()) or ("/",)
    if bad := [p for p in paths if not p.startswith("/") or " " in p]:
        raise ConfigError(
            f"expected paths starting with / and without spaces, got {bad[0]!r}",
            path=where,
        )
    headers = tuple(
        (name, hosts if name == "Host" and hosts else values)
        for name, values in model.DEFAULT_REQUEST_HEADERS
    )
    return model.HttpHeaderSettings(
        request=model.HttpRequestHead(paths=paths, headers=headers)
    )


def _alter_id(text: str) -> int:
    if not text.strip():
        return 0
    if not text.strip().isdigit() or int(text) > 65535:
        raise ConfigError(f"alterId must be in 0..65535, got {text!r}", path="link.aid")
    return int(text)


def _port(value: object, path: str) -> int:
    ports = parse_ports(value if isinstance(value, int) else str(value), path)
    return ports[0]


def parse_link(text: str) -> Link:
    """A ``vmess://`` link of either form.

    Raises:
        ConfigError: not a vmess link, or a field is wrong.
    """
    text = text.strip()
    if not text.lower().startswith(SCHEME):
        raise ConfigError("a share link starts with vmess://", path="link")
    body = text[len(SCHEME) :]
    if "@" in body.split("?", 1)[0]:
        return _parse_uri(body)
    try:
        data: Any = json.loads(_b64decode(body).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"the link's Base64 is not JSON: {exc}", path="link"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("the link's JSON is not an object", path="link")

    def text_of(key: str, default: str = "") -> str:
        value = data.get(key, default)
        return default if value is None else str(value)

    address = text_of("add").strip().strip("[]")  # an IPv6 literal may come in []
    if not address:
        raise ConfigError("the link has no server address", path="link.add")
    user = model.VMessUser(
        id=parse_id(text_of("id"), "link.id"),
        alter_id=_alter_id(text_of("aid")),
        security=parse_security(text_of("scy", "auto") or "auto", "link.scy"),
    )
    stream = _stream(
        text_of("net"),
        text_of("type"),
        text_of("host"),
        text_of("path"),
        text_of("tls"),
        text_of("sni"),
        text_of("alpn"),
        text_of("insecure") in ("1", "true"),
    )
    return Link(
        address, _port(data.get("port", ""), "link.port"), user, stream, text_of("ps")
    )


def _parse_uri(body: str) -> Link:
    parts = urllib.parse.urlsplit("vmess://" + body)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
    if not parts.hostname or parts.port is None:
        raise ConfigError("the link needs host:port after the @", path="link")
    user = model.VMessUser(
        id=parse_id(urllib.parse.unquote(parts.username or ""), "link.id"),
        security=parse_security(query.get("encryption", "auto"), "link.encryption"),
    )
    stream = _stream(
        query.get("type", "tcp"),
        query.get("headerType", ""),
        query.get("host", ""),
        query.get("path", "/"),
        query.get("security", ""),
        query.get("sni", ""),
        query.get("alpn", ""),
        query.get("allowInsecure", query.get("insecure", "")) in ("1", "true"),
    )
    return Link(
        parts.hostname, parts.port, user, stream, urllib.parse.unquote(parts.fragment)
    )


def make_link(link: Link) -> str:
    """The v2rayN v2 form of a link."""
    stream = link.stream
    ws_path = stream.ws.path
    if stream.ws.max_early_data and not stream.ws.early_data_header_name:
        ws_path += f"?ed={stream.ws.max_early_data}"
    data = {
        "v": "2",
        "ps": link.remark,
        "add": link.address,
        "port": str(link.port),
        "id": str(link.user.id),
        "aid": str(link.user.alter_id),
        "scy": link.user.security.value,
        "net": stream.network,
        "type": "none",
        "host": (stream.ws.host or "") if stream.network != "tcp" else "",
        "path": ws_path if stream.network != "tcp" else "",
        **_http_header_fields(stream),
        **_http2_fields(stream),
        "tls": "tls" if stream.security == "tls" else "",
        "sni": stream.tls.server_name or "",
        "alpn": ",".join(stream.tls.alpn),
    }
    if stream.tls.allow_insecure:
        data["insecure"] = "1"
    encoded = base64.b64encode(json.dumps(data, ensure_ascii=False).encode()).decode()
    return SCHEME + encoded


def h2_settings(host: str, path: str) -> model.H2Settings:
    """h2 from a link's (or vtrio client's) host and path: hosts split at
    commas, the path given its slash."""
    hosts = tuple(h for h in host.split(",") if h) or model.H2Settings().hosts
    path = path or "/"
    return model.H2Settings(hosts=hosts, path=path if path[0] == "/" else "/" + path)


def _http2_fields(stream: model.StreamSettings) -> dict[str, str]:
    """v2rayN's fields for gRPC (the service name, the mode, the authority)
    and h2 (the hosts and the path)."""
    if stream.network == "h2":
        return {"host": ",".join(stream.h2.hosts), "path": stream.h2.path}
    if stream.network != "grpc":
        return {}
    grpc = stream.grpc
    return {
        "type": "multi" if grpc.multi_mode else "gun",
        "host": grpc.authority,
        "path": grpc.service_name,
    }


def _http_header_fields(stream: model.StreamSettings) -> dict[str, str]:
    """v2rayN's fields for the "http" TCP header (its Host choices, paths)."""
    header = stream.http_header
    if stream.network != "tcp" or header is None:
        return {}
    hosts = dict(header.request.headers).get("Host", ())
    return {
        "type": "http",
        "host": ",".join(hosts),
        "path": ",".join(header.request.paths),
    }


def config_links(config: model.Config, address: str | None = None) -> Iterable[str]:
    """Links for every user of the config's vmess inbounds.

    Args:
        config: a server config.
        address: the host clients should dial; defaults to the listen address,
            or 127.0.0.1 when the inbound listens on every address.
    """
    for inbound in config.inbounds:
        settings = inbound.settings
        if not isinstance(settings, model.VMessInboundSettings) or not inbound.ports:
            continue
        host = address or (
            "127.0.0.1" if inbound.listen in WILDCARDS else inbound.listen
        )
        for user in settings.users:
            remark = user.email or inbound.tag or "vtrio"
            yield make_link(Link(host, inbound.ports[0], user, inbound.stream, remark))


def client_config(link: Link, listen: str = "127.0.0.1:1080") -> model.Config:
    """A local SOCKS5 entry (CONNECT and UDP) tunnelling to ``link``'s server.

    Raises:
        ConfigError: ``listen`` is not HOST:PORT.
    """
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise ConfigError("expected HOST:PORT", path="--listen")
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="socks-in",
                protocol="socks",
                listen=host.strip("[]"),
                ports=(int(port_text),),
                settings=model.SocksInboundSettings(udp=True),
            ),
        ),
        outbounds=(
            model.Outbound(
                tag="proxy",
                protocol="vmess",
                settings=model.VMessOutboundSettings(
                    servers=(model.VMessServer(link.address, link.port, (link.user,)),)
                ),
                stream=link.stream,
            ),
        ),
        log=model.Log(level="info"),
    )


def demo_server_config(user_id: uuid.UUID, port: int = 10086) -> model.Config:
    """The embedded default of ``vtrio serve``: VMess on loopback -> freedom."""
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="vmess-in",
                protocol="vmess",
                listen="127.0.0.1",
                ports=(port,),
                settings=model.VMessInboundSettings(
                    users=(model.VMessUser(id=user_id, email="demo@vtrio"),)
                ),
            ),
        ),
        outbounds=(
            model.Outbound(
                tag="direct", protocol="freedom", settings=model.FreedomSettings()
            ),
        ),
        log=model.Log(level="info"),
    )
