"""The ``vtrio`` command line: serve, client, check, uuid, link, version.

Every command turns vtrio's own errors into a message on stderr and an exit
code (2 for a bad config or argument); a traceback is always a bug.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import signal
import sys
import uuid
from typing import Annotated, NoReturn

import typer

from vtrio import __version__
from vtrio.config import load
from vtrio.config.advice import advisories
from vtrio.config.links import (
    Link,
    client_config,
    config_links,
    demo_server_config,
    h2_settings,
    parse_link,
    tcp_http_header,
)
from vtrio.config.model import (
    NTP_PORT,
    Config,
    DokodemoInboundSettings,
    GrpcSettings,
    Log,
    Ntp,
    SocksInboundSettings,
    StreamSettings,
    TLSSettings,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessUser,
    WebSocketSettings,
    is_unix_name,
)
from vtrio.config.normalize import NETWORKS, parse_id, parse_ports, parse_security
from vtrio.errors import ConfigError, ConfigErrors, VtrioError
from vtrio.logmask import AddressMask, MaskingFilter
from vtrio.net.transport.tls import (
    chain_hash,
    client_context,
    pem_certificates,
    server_context,
)
from vtrio.protocol.address import split_host_port
from vtrio.protocol.gun import service_path

app = typer.Typer(
    name="vtrio",
    help="VMess proxy server and client on Trio (v2ray, Xray, sing-box compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


LogLevel = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        help="debug, info, warning, error or none (overrides the config).",
    ),
]


def main() -> None:
    """Entry point of the ``vtrio`` console script and ``python -m vtrio``."""
    app()


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code=2)


def _load(paths: list[str]) -> Config:
    try:
        return load(paths)
    except ConfigErrors as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(code=2) from None
    except ConfigError as exc:
        _fail(str(exc))


def _setup_logging(log: Log, override: str | None) -> None:
    level_name = (override or log.level).lower()
    if level_name not in ("debug", "info", "warning", "error", "none"):
        _fail(
            "--log-level: expected debug, info, warning, error or none,"
            f" got {override!r}"
        )
    level = (
        logging.CRITICAL + 1
        if level_name == "none"
        else getattr(logging, level_name.upper())
    )
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    error_handler: logging.Handler = (
        logging.NullHandler()
        if log.error_off
        else logging.FileHandler(log.error)
        if log.error
        else logging.StreamHandler(sys.stderr)
    )
    error_handler.setFormatter(fmt)
    masking = (
        MaskingFilter(AddressMask(*log.mask_address)) if log.mask_address else None
    )
    if masking is not None:
        error_handler.addFilter(masking)
    root.addHandler(error_handler)
    root.setLevel(level)
    access = logging.getLogger("vtrio.access")
    access.handlers.clear()
    access.propagate = not (log.access or log.access_off)
    if log.access_off:
        access.addHandler(logging.NullHandler())
    elif log.access:
        handler = logging.FileHandler(log.access)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        if masking is not None:
            handler.addFilter(masking)
        access.addHandler(handler)
        access.setLevel(logging.INFO)


def _run(config: Config, workers: int, banner: list[str]) -> None:
    from vtrio.server import serve_main

    # A SIGTERM that arrives before the server watches for it waits, blocked,
    # until server.run unblocks it; it then stops the server gracefully.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        for line in banner:
            typer.echo(line)
        for line in advisories(config):
            logging.getLogger("vtrio").warning("%s", line)
        serve_main(config, workers=workers)
    except ValueError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc.strerror or exc}")
    except VtrioError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


def _summary(config: Config) -> list[str]:
    lines = []
    for inbound in config.inbounds:
        settings = inbound.settings
        ports = inbound.ports
        port_text = str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"
        where = (
            f"unix:{inbound.listen}"
            if is_unix_name(inbound.listen)
            else f"{inbound.listen}:{port_text}"
        )
        detail = ""
        if isinstance(settings, VMessInboundSettings):
            legacy = sum(1 for u in settings.users if u.alter_id)
            detail = f", {len(settings.users)} user(s), {legacy} legacy"
            if settings.detour_to:
                detail += f", detour to {settings.detour_to}"
        elif isinstance(settings, SocksInboundSettings):
            detail = f", auth {settings.auth}, udp {'on' if settings.udp else 'off'}"
        elif isinstance(settings, DokodemoInboundSettings):
            detail = f", to {_dokodemo_target(settings, inbound.stream.tproxy)}"
        if inbound.sniffing is not None:
            overrides = ",".join(inbound.sniffing.dest_override) or "none"
            detail += f", sniffing (override {overrides})"
        lines.append(
            f"inbound  {inbound.tag or '-':<12} {inbound.protocol:<13}"
            f" {where} {_transport(inbound.stream)}{detail}"
        )
    for outbound in config.outbounds:
        detail = ""
        if isinstance(outbound.settings, VMessOutboundSettings):
            detail = ", ".join(
                f"{s.address}:{s.port} ({len(s.users)} user(s),"
                f" {s.users[0].security.value if s.users else '-'})"
                for s in outbound.settings.servers
            )
        if outbound.stream.dialer_proxy:
            detail += f" via {outbound.stream.dialer_proxy}"
        extras = [
            f"mux {outbound.mux_concurrency} per connection"
            + ("" if outbound.mux_udp else " (TCP only)")
            if outbound.mux_concurrency
            else "",
            f"mark {outbound.stream.mark}" if outbound.stream.mark else "",
        ]
        detail = ", ".join(part for part in (detail.strip(), *extras) if part)
        lines.append(
            f"outbound {outbound.tag or '-':<12} {outbound.protocol:<13}"
            f" {_transport(outbound.stream)} {detail}".rstrip()
        )
    routing = config.routing
    balancers = f", {len(routing.balancers)} balancer(s)" if routing.balancers else ""
    lines.append(
        f"routing  {len(routing.rules)} rule(s){balancers},"
        f" domainStrategy {routing.domain_strategy}"
    )
    return lines


def _ntp_server(text: str) -> Ntp:
    """HOST, HOST:PORT, [IPV6]:PORT or a bare IPv6 address.

    Raises:
        ConfigError: the port is not one.
    """
    try:
        host, port = split_host_port(text, NTP_PORT)
    except ValueError:
        host, port = text, 0
    if not host or not 0 < port < 65536:
        raise ConfigError("expected HOST or HOST:PORT", path="--ntp")
    return Ntp(host, port)


def _dokodemo_target(settings: DokodemoInboundSettings, tproxy: str) -> str:
    target = (
        f"{settings.address}:{settings.port}"
        if settings.address is not None and settings.port is not None
        else "-"
    )
    if settings.port_map:
        target += f" ({len(settings.port_map)} port(s) mapped)"
    if settings.follow_redirect:
        target = f"the original destination ({tproxy}), else {target}"
    return target


def _transport(stream: StreamSettings) -> str:
    text: str = stream.network
    if stream.network == "grpc":
        grpc = stream.grpc
        text += f"({service_path(grpc.service_name, multi=grpc.multi_mode)})"
    elif stream.network == "h2":
        text += f"({stream.h2.path})"
    elif stream.network != "tcp":
        text += f"({stream.ws.path})"
    elif stream.http_header is not None:
        text += f"+http({','.join(stream.http_header.request.paths)})"
    return text + ("+tls" if stream.security == "tls" else "")


@app.command()
def serve(
    config: Annotated[
        list[str] | None,
        typer.Argument(help="Config files (v2ray 4 / Xray JSON, comments allowed)."),
    ] = None,
    extra: Annotated[
        list[str] | None,
        typer.Option("-c", "--config", help="More config files, merged in order."),
    ] = None,
    log_level: LogLevel = None,
    workers: Annotated[int, typer.Option(help="Event-loop processes.")] = 1,
) -> None:
    """Run a server or client from config files; with none, a demo VMess server."""
    paths = [*(config or []), *(extra or [])]
    banner = []
    if paths:
        loaded = _load(paths)
    else:
        loaded = demo_server_config(uuid.uuid4())
        link = next(iter(config_links(loaded)))
        banner = [
            "vtrio demo server: VMess (AEAD, auto) on 127.0.0.1:10086",
            f"share link: {link}",
            f"client:     vtrio client '{link}' --listen 127.0.0.1:1080",
        ]
    _setup_logging(loaded.log, log_level)
    _run(loaded, workers, banner)


@app.command()
def client(
    link: Annotated[str | None, typer.Argument(help="A vmess:// share link.")] = None,
    server: Annotated[str | None, typer.Option(help="Server HOST:PORT.")] = None,
    id: Annotated[
        str | None, typer.Option("--id", help="User id (UUID or custom).")
    ] = None,
    security: Annotated[
        str, typer.Option(help="auto, aes-128-gcm, chacha20-poly1305, none, zero.")
    ] = "auto",
    alter_id: Annotated[
        int, typer.Option(help="alterId; > 0 uses the legacy header.")
    ] = 0,
    network: Annotated[
        str, typer.Option(help="tcp, ws, httpupgrade, grpc or h2.")
    ] = "tcp",
    header_type: Annotated[
        str, typer.Option(help='tcp header: none, or "http" (HTTP obfuscation).')
    ] = "none",
    path: Annotated[
        str,
        typer.Option(
            help="ws / httpupgrade path; http header: paths, a,b; grpc: service name."
        ),
    ] = "/",
    host: Annotated[
        str | None,
        typer.Option(help="ws / httpupgrade Host header; http header: hosts, a,b."),
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Use TLS.")] = False,
    sni: Annotated[str | None, typer.Option(help="TLS server name.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Skip certificate checks.")
    ] = False,
    listen: Annotated[
        str, typer.Option(help="Local SOCKS5 HOST:PORT.")
    ] = "127.0.0.1:1080",
    ntp: Annotated[
        str | None,
        typer.Option(help="NTP server HOST[:PORT] to correct this clock by."),
    ] = None,
    log_level: LogLevel = None,
    workers: Annotated[
        int, typer.Option(help="Event-loop processes sharing the SOCKS port.")
    ] = 1,
) -> None:
    """A local SOCKS5 entry (CONNECT and UDP) tunnelling to a VMess server."""
    try:
        if link:
            parsed = parse_link(link)
        elif server and id:
            address, _, port_text = server.rpartition(":")
            if not address:
                raise ConfigError("expected HOST:PORT", path="--server")
            user = VMessUser(
                id=parse_id(id, "--id"),
                alter_id=alter_id,
                security=parse_security(security, "--security"),
            )
            if (layer := NETWORKS.get(network.lower())) is None:
                raise ConfigError(
                    "expected tcp, ws, httpupgrade, grpc or h2", path="--network"
                )
            if header_type.lower() not in ("none", "http") or (
                header_type.lower() == "http" and layer != "tcp"
            ):
                raise ConfigError(
                    "expected none, or http with --network tcp", path="--header-type"
                )
            # With gRPC, --path is the service name (Xray's "/a/b" form too);
            # with h2, --host lists the hosts.
            grpc = layer == "grpc"
            stream = StreamSettings(
                network=layer,
                security="tls" if tls else "none",
                tls=TLSSettings(
                    server_name=sni,
                    allow_insecure=insecure,
                    alpn=("h2",) if layer in ("grpc", "h2") else (),
                ),
                ws=WebSocketSettings(path=path, host=host),
                grpc=GrpcSettings(service_name=path if grpc and path != "/" else ""),
                h2=h2_settings(host or "", path),
                http_header=tcp_http_header(host or "", path, "--path")
                if header_type.lower() == "http"
                else None,
            )
            port = parse_ports(port_text, "--server")[0]
            parsed = Link(address.strip("[]"), port, user, stream)
        else:
            raise ConfigError(
                "give a vmess:// link, or --server and --id", path="client"
            )
        config = client_config(parsed, listen)
        if ntp:
            config = dataclasses.replace(config, ntp=_ntp_server(ntp))
    except ConfigError as exc:
        _fail(str(exc))
    _setup_logging(config.log, log_level)
    banner = [
        f"vtrio client: SOCKS5 on {listen} -> vmess {parsed.address}:{parsed.port}"
        f" ({parsed.user.security.value}, {_transport(parsed.stream)})"
    ]
    _run(config, workers, banner)


@app.command()
def check(
    config: Annotated[list[str], typer.Argument(help="Config files to validate.")],
) -> None:
    """Validate config files (like `v2ray -test`) and print a summary."""
    loaded = _load(config)
    # Certificates are read here too, as v2ray -test does.
    problems = []
    source = " + ".join(loaded.sources)
    streams = [
        (f"$.inbounds[{index}]", inbound.stream, server_context)
        for index, inbound in enumerate(loaded.inbounds)
    ] + [
        (f"$.outbounds[{index}]", outbound.stream, client_context)
        for index, outbound in enumerate(loaded.outbounds)
    ]
    for where, stream, make_context in streams:
        if stream.security == "tls":
            try:
                make_context(stream.tls)
            except ConfigError as exc:
                problems.append(f"{source}: {where}.streamSettings.{exc}")
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(code=2)
    for line in _summary(loaded):
        typer.echo(line)
    for line in advisories(loaded):
        typer.echo(f"warning  {line}")
    typer.echo("Configuration OK.")


@app.command("cert-hash")
def cert_hash(
    path: Annotated[str, typer.Argument(help="PEM file: the chain, leaf first.")],
) -> None:
    """The pinnedPeerCertificateChainSha256 of a server's certificate chain."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror or exc}")
    try:
        chain = pem_certificates(text)
    except ValueError:  # binascii.Error included
        _fail(f"{path}: a PEM block is not a certificate")
    if not chain:
        _fail(f"{path}: no PEM certificate in it")
    if any(der[:1] != b"\x30" for der in chain):  # a DER SEQUENCE
        _fail(f"{path}: a PEM block is not a certificate")
    typer.echo(base64.b64encode(chain_hash(chain)).decode())


@app.command("uuid")
def uuid_command(
    input: Annotated[
        str | None,
        typer.Option("-i", "--input", help="Map this custom id to its UUIDv5 (Xray)."),
    ] = None,
) -> None:
    """Print a random UUID, or the UUID of a custom id string."""
    if input is None:
        typer.echo(str(uuid.uuid4()))
        return
    try:
        typer.echo(str(parse_id(input, "-i")))
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def link(
    config: Annotated[list[str], typer.Argument(help="Server config files.")],
    address: Annotated[
        str | None,
        typer.Option(help="Host clients dial (default: the listen address)."),
    ] = None,
) -> None:
    """Print vmess:// share links for the users of a config's vmess inbounds."""
    links = list(config_links(_load(config), address))
    if not links:
        _fail("the config has no vmess inbound with users")
    for text in links:
        typer.echo(text)


@app.command()
def version() -> None:
    """Print vtrio's version."""
    typer.echo(f"vtrio {__version__}")
