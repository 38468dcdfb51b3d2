"""The frozen, normalized configuration model that the runtime sees.

Theory of operation: the dialect structs in ``v2ray.py`` / ``xray.py`` mirror the
JSON people write, quirks and aliases included. ``normalize.py`` turns them into
the classes below, which have exactly one spelling for everything: ports are
expanded, ids are UUIDs, securities are an enum, defaults are filled in. Nothing
outside ``vtrio/config/`` ever sees a dialect struct.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Security(enum.Enum):
    """Body security as written in a client config (spec section 4.3)."""

    AUTO = "auto"
    AES_128_GCM = "aes-128-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    NONE = "none"
    ZERO = "zero"
    AES_128_CFB = "aes-128-cfb"


@dataclass(frozen=True, slots=True)
class VMessUser:
    """One VMess account; ``security`` and ``experiments`` matter on the client."""

    id: uuid.UUID
    alter_id: int = 0
    level: int = 0
    email: str = ""
    security: Security = Security.AUTO
    # Subset of {"AuthenticatedLength", "NoTerminationSignal"} (spec section 12.1).
    experiments: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Account:
    """A user name and password for the socks and http inbounds."""

    user: str
    password: str

    def matches(self, user: bytes, password: bytes) -> bool:
        """Compared in constant time, so that a guess's timing does not tell
        how much of it was right."""
        same_user = hmac.compare_digest(self.user.encode(), user)
        return hmac.compare_digest(self.password.encode(), password) & same_user


@dataclass(frozen=True, slots=True)
class Certificate:
    """A TLS certificate given as files or inline PEM text."""

    certificate_file: str | None = None
    key_file: str | None = None
    certificate_pem: str | None = None
    key_pem: str | None = None
    # verifyclient (v2fly): a CA that client certificates must chain to.
    usage: Literal["encipherment", "verify", "verifyclient", "issue"] = "encipherment"


@dataclass(frozen=True, slots=True)
class TLSSettings:
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    allow_insecure: bool = False
    disable_system_root: bool = False
    min_version: str | None = None
    max_version: str | None = None
    # Go's names of the TLS 1.2 suites to allow, colon-separated (v2ray's).
    cipher_suites: str | None = None
    # v2ray's pinnedPeerCertificateChainSha256, decoded: a client accepts a
    # server only if the hash of the chain it sends is one of these.
    pinned_chain_sha256: tuple[bytes, ...] = ()
    # Xray's pinnedPeerCertSha256, decoded: the server's own certificate must
    # hash to one of these, and then it is trusted without other checks.
    pinned_cert_sha256: tuple[bytes, ...] = ()
    # Xray's rejectUnknownSni: a server refuses a client whose SNI none of
    # its certificates is for (or that sends none).
    reject_unknown_sni: bool = False
    # Xray's verifyPeerCertByName: a client checks the server's certificate
    # against these names instead of the server name it sends.
    verify_names: tuple[str, ...] = ()
    # Xray's pinnedPeerCertificatePublicKeySha256, decoded: after the usual
    # checks, a certificate of the verified chain must have one of these keys.
    pinned_key_sha256: tuple[bytes, ...] = ()
    # v2fly's verifyClientCertificate: a server asks every client for a
    # certificate signed by one of its "verifyclient" CAs.
    verify_client_certificate: bool = False


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """The HTTP upgrade of ``ws`` and of ``httpupgrade`` (the same settings;
    for httpupgrade, ``max_early_data`` > 0 only means "send without waiting
    for the answer", Xray's ``?ed=N``)."""

    path: str = "/"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # Early data: bytes of the first payload carried in the upgrade request.
    max_early_data: int = 0
    # Empty means the early data travels in Sec-WebSocket-Protocol (Xray ?ed=N).
    early_data_header_name: str = ""


# Header name -> the values one is picked from per connection, in order.
HeaderChoices = tuple[tuple[str, tuple[str, ...]], ...]

# v2ray's and Xray's defaults for the "http" TCP header (their config builder
# fills them in when a request or response gives no ``headers``).
DEFAULT_REQUEST_HEADERS: HeaderChoices = (
    ("Host", ("www.baidu.com", "www.bing.com")),
    (
        "User-Agent",
        (
            "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like"
            " Gecko) Chrome/53.0.2785.143 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 10_0_2 like Mac OS X)"
            " AppleWebKit/601.1 (KHTML, like Gecko) CriOS/53.0.2785.109"
            " Mobile/14A456 Safari/601.1.46",
        ),
    ),
    ("Accept-Encoding", ("gzip, deflate",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
)
DEFAULT_RESPONSE_HEADERS: HeaderChoices = (
    ("Content-Type", ("application/octet-stream", "video/mpeg")),
    ("Transfer-Encoding", ("chunked",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
    ("Cache-Control", ("private", "no-cache")),
)


@dataclass(frozen=True, slots=True)
class HttpRequestHead:
    """The request line and headers a client of the "http" TCP header sends;
    a server accepts a request for any of ``paths``."""

    version: str = "1.1"
    method: str = "GET"
    paths: tuple[str, ...] = ("/",)
    headers: HeaderChoices = DEFAULT_REQUEST_HEADERS


@dataclass(frozen=True, slots=True)
class HttpResponseHead:
    """The status line and headers a server of the "http" TCP header answers."""

    version: str = "1.1"
    status: str = "200"
    reason: str = "OK"
    headers: HeaderChoices = DEFAULT_RESPONSE_HEADERS


@dataclass(frozen=True, slots=True)
class HttpHeaderSettings:
    """``tcpSettings.header`` of type "http": the connection opens dressed as
    one HTTP/1.1 exchange."""

    request: HttpRequestHead = field(default_factory=HttpRequestHead)
    response: HttpResponseHead = field(default_factory=HttpResponseHead)


@dataclass(frozen=True, slots=True)
class H2Keepalive:
    """PINGs on an HTTP/2 connection that has read nothing for ``idle``
    seconds; one unanswered for ``timeout`` seconds ends the connection.
    ``without_tunnels``: also while it carries none."""

    idle: float
    timeout: float = 20.0
    without_tunnels: bool = False


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    """``grpcSettings``: the gRPC service whose ``Tun`` (or, in Xray's multi
    mode, ``TunMulti``) method carries the tunnels."""

    service_name: str = ""
    multi_mode: bool = False
    # Client: the :authority and user-agent sent (Xray); empty: the server's
    # address, and grpc-go's agent.
    authority: str = ""
    user_agent: str = ""
    # idle_timeout, health_check_timeout, permit_without_stream (Xray).
    keepalive: H2Keepalive | None = None


@dataclass(frozen=True, slots=True)
class H2Settings:
    """``httpSettings``, v2ray's HTTP/2 transport: each tunnel one request
    to ``path`` for one of ``hosts`` (a client picks one at random; a server
    serves only those), its body and the response's carrying the bytes."""

    hosts: tuple[str, ...] = ("www.example.com",)
    path: str = "/"
    method: str = "PUT"
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # read_idle_timeout, health_check_timeout (Xray).
    keepalive: H2Keepalive | None = None


@dataclass(frozen=True, slots=True)
class StreamSettings:
    network: Literal["tcp", "ws", "httpupgrade", "grpc", "h2"] = "tcp"
    security: Literal["none", "tls"] = "none"
    tls: TLSSettings = field(default_factory=TLSSettings)
    ws: WebSocketSettings = field(default_factory=WebSocketSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    h2: H2Settings = field(default_factory=H2Settings)
    # The "http" TCP header (tcp network only); None is type "none".
    http_header: HttpHeaderSettings | None = None
    # Inbounds: every connection starts with a PROXY protocol header (v1/v2).
    accept_proxy_protocol: bool = False
    # Outbounds: the Unix socket to dial instead of the server's address
    # (v2ray's domainsocket network; named as in ``transport/unix.py``).
    domain_socket: str = ""
    # Outbounds: the tag of the outbound the server is dialled through
    # (proxySettings, Xray's sockopt.dialerProxy); these layers stack on it.
    dialer_proxy: str = ""
    # Outbounds: SO_MARK of every socket (sockopt.mark, 0: none), so that a
    # transparent proxy's firewall rules let its own traffic pass.
    mark: int = 0
    # Inbounds: where a followRedirect dokodemo-door finds the destination
    # (sockopt.tproxy): "redirect" asks netfilter (SO_ORIGINAL_DST), "tproxy"
    # binds transparently and takes the local address.
    tproxy: Literal["off", "redirect", "tproxy"] = "off"


# --- inbounds ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefaultUser:
    """Template for users a detour target generates (spec section 8.1)."""

    alter_id: int = 0
    level: int = 0


@dataclass(frozen=True, slots=True)
class VMessInboundSettings:
    users: tuple[VMessUser, ...] = ()
    default: DefaultUser = field(default_factory=DefaultUser)
    # Tag of the inbound that dynamic-port clients are sent to (spec section 8).
    detour_to: str | None = None
    disable_insecure_encryption: bool = False
    # Refuse legacy (MD5) headers even for users with alterId > 0 (spec 9.3).
    aead_forced: bool = False


@dataclass(frozen=True, slots=True)
class SocksInboundSettings:
    auth: Literal["noauth", "password"] = "noauth"
    accounts: tuple[Account, ...] = ()
    udp: bool = False
    # Address announced in UDP ASSOCIATE replies; None means the listen address.
    ip: str | None = None
    # userLevel: the policy level of this inbound's tunnels.
    level: int = 0


@dataclass(frozen=True, slots=True)
class HttpInboundSettings:
    accounts: tuple[Account, ...] = ()
    allow_transparent: bool = False
    level: int = 0


@dataclass(frozen=True, slots=True)
class DokodemoInboundSettings:
    address: str | None = None
    port: int | None = None
    networks: frozenset[Literal["tcp", "udp"]] = frozenset({"tcp"})
    follow_redirect: bool = False
    level: int = 0
    # Xray's portMap: (listening port, address or None, port or None); a part
    # left out is the inbound's own address or port.
    port_map: tuple[tuple[int, str | None, int | None], ...] = ()

    def target(self, local_port: int | None) -> tuple[str, int] | None:
        """Where a connection that came in on ``local_port`` goes (None:
        nowhere is configured for it)."""
        address, port = self.address, self.port
        for mapped_port, mapped_address, mapped_to in self.port_map:
            if mapped_port == local_port:
                address = mapped_address or address
                port = mapped_to or port
                break
        if address is None or port is None:
            return None
        return address, port


InboundSettings = (
    VMessInboundSettings
    | SocksInboundSettings
    | HttpInboundSettings
    | DokodemoInboundSettings
)


@dataclass(frozen=True, slots=True)
class Allocate:
    """Port allocation of an inbound with a port range (spec section 8.1)."""

    strategy: Literal["always", "random"] = "always"
    refresh_minutes: int = 5
    concurrency: int = 3


@dataclass(frozen=True, slots=True)
class Sniffing:
    """What an inbound's tunnels' first bytes are read for (v2ray's
    ``sniffing``): the protocols whose names replace the destination, and
    Xray's limits on that."""

    dest_override: tuple[str, ...] = ()
    # The name routes the tunnel; the outbound still dials the address given.
    route_only: bool = False
    domains_excluded: tuple[DomainMatcher, ...] = ()
    ips_excluded: tuple[IPNetwork, ...] = ()


def is_unix_name(listen: str) -> bool:
    """Whether an inbound's ``listen`` names a Unix socket (Xray's forms: a
    file path, ``@`` for the abstract namespace) rather than a host."""
    return listen.startswith(("/", "@"))


@dataclass(frozen=True, slots=True)
class Inbound:
    tag: str
    protocol: Literal["vmess", "socks", "http", "dokodemo-door"]
    # A host, or a Unix socket: "/path", "@abstract", "@@padded-abstract".
    listen: str
    # Every port the inbound may use, expanded from number / range / list / env.
    ports: tuple[int, ...]
    settings: InboundSettings
    stream: StreamSettings = field(default_factory=StreamSettings)
    allocate: Allocate = field(default_factory=Allocate)
    sniffing: Sniffing | None = None
    # The permissions of a Unix socket file (Xray's "/path,0666").
    socket_mode: int | None = None


# --- outbounds --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VMessServer:
    address: str
    port: int
    users: tuple[VMessUser, ...]


@dataclass(frozen=True, slots=True)
class VMessOutboundSettings:
    servers: tuple[VMessServer, ...]


@dataclass(frozen=True, slots=True)
class FreedomSettings:
    domain_strategy: Literal["AsIs", "UseIP", "UseIPv4", "UseIPv6"] = "AsIs"
    # "host:port" every connection is sent to instead of its destination.
    redirect: str | None = None


@dataclass(frozen=True, slots=True)
class BlackholeSettings:
    response: Literal["none", "http"] = "none"


OutboundSettings = VMessOutboundSettings | FreedomSettings | BlackholeSettings


@dataclass(frozen=True, slots=True)
class Outbound:
    tag: str
    protocol: Literal["vmess", "freedom", "blackhole"]
    settings: OutboundSettings
    stream: StreamSettings = field(default_factory=StreamSettings)
    # sendThrough: the local address connections leave from ("" = the
    # system's choice); a network means a random address in it (Xray).
    send_through: IPNetwork | None = None
    # mux: tunnels carried by one VMess connection (0: Mux is off).
    mux_concurrency: int = 0
    # With Mux on: UDP tunnels go as Mux UDP sub-sessions too (Xray's
    # xudpConcurrency -1 keeps them on connections of their own).
    mux_udp: bool = True


# --- policy, routing, log ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """Timeouts in seconds and the relay buffer in bytes (spec section 10).

    The handshake default is the documented 4 s rather than v2ray's coded 60 s,
    so silent connections cannot pile up.
    """

    handshake: float = 4.0
    conn_idle: float = 300.0
    uplink_only: float = 1.0
    downlink_only: float = 1.0
    buffer_size: int = 512 * 1024


@dataclass(frozen=True, slots=True)
class Policy:
    levels: Mapping[int, LevelPolicy] = field(default_factory=dict)

    def level(self, level: int) -> LevelPolicy:
        """The policy of a user level; unconfigured levels get the defaults."""
        return self.levels.get(level, DEFAULT_LEVEL_POLICY)


DEFAULT_LEVEL_POLICY = LevelPolicy()


@dataclass(frozen=True, slots=True)
class DomainMatcher:
    kind: Literal["full", "domain", "keyword", "regexp"]
    value: str
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class RoutingRule:
    # The outbound a match goes to, or "" when a balancer picks it.
    outbound_tag: str
    balancer_tag: str = ""
    inbound_tags: frozenset[str] = frozenset()
    domains: tuple[DomainMatcher, ...] = ()
    ips: tuple[IPNetwork, ...] = ()
    # Inclusive (low, high) pairs.
    ports: tuple[tuple[int, int], ...] = ()
    networks: frozenset[Literal["tcp", "udp"]] = frozenset()
    # Sniffed protocols, matched as prefixes ("http" matches "http1").
    protocols: tuple[str, ...] = ()
    # User emails.
    users: frozenset[str] = frozenset()
    # The client's address (as the PROXY protocol names it, when read).
    source_ips: tuple[IPNetwork, ...] = ()
    source_ports: tuple[tuple[int, int], ...] = ()
    # The address the connection came in on (Xray's localIP / localPort).
    local_ips: tuple[IPNetwork, ...] = ()
    local_ports: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Balancer:
    """Spreads a rule's tunnels over the outbounds whose tags start with a
    selector; the fallback takes them when no outbound matches."""

    tag: str
    selectors: tuple[str, ...]
    strategy: Literal["random", "roundRobin"] = "random"
    fallback_tag: str = ""


@dataclass(frozen=True, slots=True)
class Routing:
    domain_strategy: Literal["AsIs", "IPIfNonMatch", "IPOnDemand"] = "AsIs"
    rules: tuple[RoutingRule, ...] = ()
    balancers: tuple[Balancer, ...] = ()


@dataclass(frozen=True, slots=True)
class Log:
    level: Literal["debug", "info", "warning", "error", "none"] = "warning"
    # File paths; None means stderr (error) / stdout-like stderr (access).
    access: str | None = None
    error: str | None = None
    # Written "none" in the config (v2ray's word for no log at all).
    access_off: bool = False
    error_off: bool = False
    # Xray's maskAddress: the leading bits of IPv4 and IPv6 addresses that
    # stay readable in log lines; None shows them whole.
    mask_address: tuple[int, int] | None = None


NTP_PORT = 123


@dataclass(frozen=True, slots=True)
class Ntp:
    """An NTP server that corrects the clock of VMess timestamps."""

    server: str
    port: int = NTP_PORT
    interval: float = 1800.0  # seconds between queries


@dataclass(frozen=True, slots=True)
class Config:
    inbounds: tuple[Inbound, ...] = ()
    outbounds: tuple[Outbound, ...] = ()
    routing: Routing = field(default_factory=Routing)
    policy: Policy = field(default_factory=Policy)
    log: Log = field(default_factory=Log)
    ntp: Ntp | None = None
    # The files this config was read from, for messages.
    sources: tuple[str, ...] = ()

    def inbound(self, tag: str) -> Inbound:
        """The inbound with this tag.

        Raises:
            KeyError: no inbound has that tag.
        """
        for inbound in self.inbounds:
            if inbound.tag == tag:
                return inbound
        raise KeyError(tag)
