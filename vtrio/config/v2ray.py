"""msgspec Structs that mirror v2ray 4 JSON one to one.

Theory of operation: these are throwaway decode targets. They accept exactly
the spellings v2ray (and, through ``xray.py``, Xray) accept and reject unknown
fields with msgspec's own ``$.path`` messages. Protocol ``settings`` and
``streamSettings`` stay raw here and are decoded per protocol by
``normalize.py``, which knows which struct to use and prefixes the path.
Sections vtrio deliberately ignores are ``msgspec.Raw`` so that they load.
"""

from __future__ import annotations

import msgspec

Port = int | str
# An omitted raw section; present ones are non-empty JSON text.
ABSENT = msgspec.Raw()


class V2Base(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of every dialect struct: camelCase names, unknown fields refused."""


class LogV2(V2Base):
    loglevel: str = "warning"
    access: str = ""
    error: str = ""
    dns_log: bool = False
    mask_address: str = ""


class AllocateV2(V2Base):
    strategy: str = "always"
    refresh: int = 5
    concurrency: int = 3


class SniffingV2(V2Base):
    """An inbound's ``sniffing``; ``routeOnly``, ``domainsExcluded`` and
    ``ipsExcluded`` are Xray's."""

    enabled: bool = False
    dest_override: list[str] | str | None = None
    metadata_only: bool = False
    route_only: bool = False
    domains_excluded: list[str] | str | None = None
    ips_excluded: list[str] | str | None = None


class InboundV2(V2Base):
    protocol: str
    tag: str = ""
    listen: str = ""
    port: Port | None = None
    settings: msgspec.Raw = ABSENT
    stream_settings: msgspec.Raw = ABSENT
    allocate: AllocateV2 | None = None
    sniffing: msgspec.Raw = ABSENT
    # v2ray 3's form of sniffing.destOverride, which v2ray 4 still reads.
    domain_override: list[str] | str | None = None


class ProxySettingsV2(V2Base):
    """An outbound's ``proxySettings``: the outbound it is dialled through."""

    tag: str = ""
    transport_layer: bool = False


class MuxV2(V2Base):
    """An outbound's ``mux`` (v2ray; Xray adds the XUDP switches)."""

    enabled: bool = False
    concurrency: int = 8
    xudp_concurrency: int | None = None
    xudp_proxy_udp443: str | None = None


class OutboundV2(V2Base):
    protocol: str
    tag: str = ""
    settings: msgspec.Raw = ABSENT
    stream_settings: msgspec.Raw = ABSENT
    mux: msgspec.Raw = ABSENT
    send_through: str | None = None
    proxy_settings: ProxySettingsV2 | None = None
    target_strategy: str | None = None


class PolicyLevelV2(V2Base):
    handshake: float | None = None
    conn_idle: float | None = None
    uplink_only: float | None = None
    downlink_only: float | None = None
    buffer_size: int | None = None
    stats_user_uplink: bool = False
    stats_user_downlink: bool = False
    stats_user_online: bool = False


class PolicyV2(V2Base):
    # Raw per level, so that an error names its level: msgspec writes a
    # dictionary key as "[...]".
    levels: dict[str, msgspec.Raw] = {}
    system: msgspec.Raw = ABSENT


class RuleV2(V2Base):
    type: str = "field"
    outbound_tag: str | None = None
    balancer_tag: str | None = None
    inbound_tag: list[str] | str | None = None
    domain: list[str] | str | None = None
    domains: list[str] | str | None = None
    ip: list[str] | str | None = None
    port: Port | None = None
    network: list[str] | str | None = None
    protocol: list[str] | str | None = None
    user: list[str] | str | None = None
    source: list[str] | str | None = None
    source_ip: list[str] | str | None = msgspec.field(default=None, name="sourceIP")
    source_port: Port | None = None
    local_ip: list[str] | str | None = msgspec.field(
        default=None, name="localIP"
    )  # Xray
    local_port: Port | None = None  # Xray
    # Conditions vtrio refuses by name (normalize.UNSUPPORTED_RULE_CONDITIONS).
    attrs: msgspec.Raw = ABSENT
    vless_route: msgspec.Raw = ABSENT  # Xray
    process: msgspec.Raw = ABSENT  # Xray
    webhook: msgspec.Raw = ABSENT  # Xray
    rule_tag: str | None = None
    domain_matcher: str | None = None  # a matching algorithm; same results


class RoutingSettingsV2(V2Base):
    """v2ray 3's ``routing.settings``, still read by v2ray 4."""

    domain_strategy: str | None = None
    rules: list[RuleV2] = []


class BalancerStrategyV2(V2Base):
    type: str = "random"
    settings: msgspec.Raw = ABSENT


class BalancerV2(V2Base):
    tag: str = ""
    selector: list[str] | str | None = None
    strategy: BalancerStrategyV2 | None = None
    fallback_tag: str = ""  # Xray, v2ray 5


class RoutingV2(V2Base):
    domain_strategy: str | None = None
    domain_matcher: str | None = None
    rules: list[RuleV2] = []
    balancers: list[BalancerV2] = []
    # v2ray 3's layout: {"strategy": "rules", "settings": {...}}; its rules
    # follow the top-level ones.
    strategy: str | None = None
    settings: RoutingSettingsV2 | None = None


class RootV2(V2Base):
    log: LogV2 | None = None
    inbounds: list[InboundV2] = []
    outbounds: list[OutboundV2] = []
    routing: RoutingV2 | None = None
    policy: PolicyV2 | None = None
    ntp: NtpV2 | None = None  # vtrio's, as sing-box's (v2ray ignores it)
    # v2ray 3's layout, which v2ray 4 still reads (normalize.py orders them).
    port: int | None = None
    inbound: InboundV2 | None = None
    outbound: OutboundV2 | None = None
    inbound_detour: list[InboundV2] = []
    outbound_detour: list[OutboundV2] = []
    # Accepted and ignored (a warning names each one present).
    dns: msgspec.Raw = ABSENT
    stats: msgspec.Raw = ABSENT
    api: msgspec.Raw = ABSENT
    reverse: msgspec.Raw = ABSENT
    transport: TransportV2 | None = None
    fakedns: msgspec.Raw = ABSENT
    observatory: msgspec.Raw = ABSENT
    burst_observatory: msgspec.Raw = ABSENT
    metrics: msgspec.Raw = ABSENT
    browser_forwarder: msgspec.Raw = ABSENT
    services: msgspec.Raw = ABSENT  # v2ray 4.38+
    multi_observatory: msgspec.Raw = ABSENT  # v2fly 5's v4 form
    geodata: msgspec.Raw = ABSENT  # Xray
    env: msgspec.Raw = ABSENT  # Xray
    version: msgspec.Raw = ABSENT  # Xray


IGNORED_SECTIONS = (
    "dns",
    "stats",
    "api",
    "reverse",
    "fakedns",
    "observatory",
    "burst_observatory",
    "metrics",
    "browser_forwarder",
    "services",
    "multi_observatory",
    "geodata",
    "env",
    "version",
)

# --- protocol settings --------------------------------------------------------


class VMessClientV2(V2Base):
    id: str
    level: int = 0
    alter_id: int = 0
    email: str = ""
    # v2ray reads inbound and outbound users into one account type, so an
    # inbound user may carry the client's ``security`` (the client picks the
    # body security per request). Xray writes ``flow``. Read and ignored.
    security: str | None = None
    flow: str | None = None
    experiments: str | None = None


class DefaultV2(V2Base):
    level: int = 0
    alter_id: int = 0


class DetourV2(V2Base):
    to: str


class FeaturesV2(V2Base):
    detour: DetourV2 | None = None


class VMessInboundV2(V2Base):
    clients: list[VMessClientV2] | None = None
    users: list[VMessClientV2] | None = None  # Xray >= 26.5.9
    default: DefaultV2 | None = None
    detour: DetourV2 | None = None
    features: FeaturesV2 | None = None
    disable_insecure_encryption: bool = False
    # vtrio: refuse legacy (MD5) headers even for users with alterId > 0.
    aead_forced: bool = False


class VMessUserOutV2(V2Base):
    id: str
    alter_id: int = 0
    security: str = "auto"
    level: int = 0
    email: str = ""
    experiments: str = ""


class VNextV2(V2Base):
    address: str
    port: Port
    users: list[VMessUserOutV2]


class AccountV2(V2Base):
    user: str
    pass_: str = msgspec.field(name="pass")


class SocksInboundV2(V2Base):
    auth: str = "noauth"
    accounts: list[AccountV2] = []
    users: list[AccountV2] = []  # Xray's other name for accounts
    udp: bool = False
    ip: str | None = None
    timeout: int | None = None  # v2ray 4, deprecated there; ignored
    user_level: int = 0


class HttpInboundV2(V2Base):
    accounts: list[AccountV2] = []
    users: list[AccountV2] = []  # Xray's other name for accounts
    allow_transparent: bool = False
    timeout: int | None = None
    user_level: int = 0


class DokodemoInboundV2(V2Base):
    address: str | None = None
    port: Port | None = None
    network: list[str] | str | None = None
    # Xray's newer names for address, port and network (the old ones win).
    rewrite_address: str | None = None
    rewrite_port: Port | None = None
    allowed_network: list[str] | str | None = None
    port_map: dict[str, str] = {}  # Xray: listening port -> "address:port"
    follow_redirect: bool = False
    timeout: int | None = None
    user_level: int = 0


class FreedomV2(V2Base):
    domain_strategy: str = ""
    target_strategy: str = ""  # Xray's newer name; it wins
    redirect: str | None = None
    timeout: int | None = None  # v2ray 4, deprecated there; ignored
    user_level: int = 0
    # Xray extras, accepted and ignored with a warning.
    fragment: msgspec.Raw = ABSENT
    noises: msgspec.Raw = ABSENT
    proxy_protocol: int | None = None
    # Xray's blocking rules; refused unless empty.
    ips_blocked: msgspec.Raw = ABSENT
    final_rules: list[msgspec.Raw] = []


class BlackholeResponseV2(V2Base):
    type: str = "none"


class BlackholeV2(V2Base):
    response: BlackholeResponseV2 | None = None


# --- stream settings ----------------------------------------------------------


class CertificateV2(V2Base):
    certificate_file: str | None = None
    key_file: str | None = None
    certificate: list[str] | None = None
    key: list[str] | None = None
    usage: str = "encipherment"
    ocsp_stapling: int | None = None
    one_time_loading: bool | None = None
    build_chain: bool | None = None


class TlsV2(V2Base):
    server_name: str | None = None
    alpn: list[str] | str | None = None
    certificates: list[CertificateV2] | None = None
    allow_insecure: bool = False
    disable_system_root: bool = False
    min_version: str | None = None
    max_version: str | None = None
    cipher_suites: str | None = None
    enable_session_resumption: bool | None = None
    pinned_peer_certificate_chain_sha256: list[str] | None = None  # v2ray
    pinned_peer_cert_sha256: str = ""  # Xray
    # Xray's uTLS fingerprint: accepted, not reproducible here (a warning).
    fingerprint: str | None = None
    # Xray: key preferences and a debugging key log, ignored.
    curve_preferences: list[str] | str | None = None
    master_key_log: str | None = None
    ech_sockopt: msgspec.Raw = ABSENT
    # Checks and features vtrio does not have: refused when set, since
    # ignoring them would weaken what the config asks for
    # (normalize.UNSUPPORTED_TLS).
    reject_unknown_sni: bool = False
    verify_client_certificate: bool = False  # v2ray 4.42+
    pinned_peer_certificate_public_key_sha256: list[str] | None = None  # Xray
    verify_peer_cert_by_name: str = ""  # Xray
    verify_peer_cert_in_names: list[str] | None = None  # Xray
    server_name_to_verify: str = ""  # Xray
    ech_server_keys: str = ""  # Xray
    ech_config_list: str = ""  # Xray
    ech_force_query: str = ""  # Xray


class WebSocketV2(V2Base):
    path: str = "/"
    headers: dict[str, str] | None = None
    host: str | None = None  # Xray
    max_early_data: int = 0
    early_data_header_name: str = ""
    accept_proxy_protocol: bool = False
    use_browser_forwarding: bool = False
    heartbeat_period: int | None = None  # Xray


class HttpUpgradeV2(V2Base):
    """Xray's and v2fly 5's ``httpupgradeSettings``."""

    path: str = "/"
    host: str | None = None
    headers: dict[str, str] | None = None
    accept_proxy_protocol: bool = False


class GrpcV2(V2Base):
    """``grpcSettings`` (v2ray 4's ``gunSettings``); Xray spells its tuning
    keys in snake case."""

    service_name: str = ""
    multi_mode: bool = False
    authority: str = ""
    user_agent: str = msgspec.field(default="", name="user_agent")
    idle_timeout: int = msgspec.field(default=0, name="idle_timeout")
    health_check_timeout: int = msgspec.field(default=0, name="health_check_timeout")
    permit_without_stream: bool = msgspec.field(
        default=False, name="permit_without_stream"
    )
    initial_windows_size: int = msgspec.field(default=0, name="initial_windows_size")


# v2ray's StringList: an array, or one string split at its commas.
StringListV2 = list[str] | str


class HttpRequestV2(V2Base):
    version: str = ""
    method: str = ""
    path: StringListV2 | None = None
    # A null value is refused by name, as v2ray does.
    headers: dict[str, StringListV2 | None] | None = None


class HttpResponseV2(V2Base):
    version: str = ""
    status: str = ""
    reason: str = ""
    headers: dict[str, StringListV2 | None] | None = None


class TcpHeaderV2(V2Base):
    type: str = "none"
    request: HttpRequestV2 | None = None
    response: HttpResponseV2 | None = None


class TcpV2(V2Base):
    header: TcpHeaderV2 | None = None
    accept_proxy_protocol: bool = False


class DomainSocketV2(V2Base):
    """v2ray's ``dsSettings``."""

    path: str = ""
    abstract: bool = False
    padding: bool = False


class SockoptV2(msgspec.Struct, rename="camel", kw_only=True):
    """``streamSettings.sockopt``: the PROXY protocol switch, Xray's
    ``dialerProxy``, the outbound sockets' ``mark`` and the transparent-proxy
    mode of an inbound (``tproxy``); other socket options (TFO, interface)
    are ignored."""

    accept_proxy_protocol: bool = False
    dialer_proxy: str = ""
    mark: int = 0
    tproxy: str = "off"


class HttpV2(V2Base):
    """``httpSettings``: v2ray's HTTP/2 transport; Xray's keepalive keys are
    in snake case."""

    host: StringListV2 | None = None
    path: str = "/"
    method: str = ""
    headers: dict[str, StringListV2 | None] | None = None
    read_idle_timeout: int = msgspec.field(default=0, name="read_idle_timeout")
    health_check_timeout: int = msgspec.field(default=0, name="health_check_timeout")


class StreamV2(V2Base):
    network: str = "tcp"
    method: str | None = None  # Xray's newer name for network; it wins
    security: str = "none"
    tls_settings: TlsV2 | None = None
    ws_settings: WebSocketV2 | None = None
    httpupgrade_settings: HttpUpgradeV2 | None = None
    tcp_settings: TcpV2 | None = None
    raw_settings: TcpV2 | None = None  # Xray's name for tcpSettings
    sockopt: SockoptV2 | None = None
    # Transports vtrio refuses by name; kept raw so the error can say so.
    kcp_settings: msgspec.Raw = ABSENT
    quic_settings: msgspec.Raw = ABSENT
    http_settings: HttpV2 | None = None
    grpc_settings: GrpcV2 | None = None
    ds_settings: DomainSocketV2 | None = None
    xhttp_settings: msgspec.Raw = ABSENT
    splithttp_settings: msgspec.Raw = ABSENT
    reality_settings: msgspec.Raw = ABSENT
    gun_settings: GrpcV2 | None = None
    hysteria_settings: msgspec.Raw = ABSENT
    hy2_settings: msgspec.Raw = ABSENT
    finalmask: msgspec.Raw = ABSENT  # Xray's packet masks; refused when set


class TransportV2(V2Base):
    """v2ray 4's root ``transport``: the settings of every stream that has
    none of its own."""

    tcp_settings: TcpV2 | None = None
    ws_settings: WebSocketV2 | None = None
    kcp_settings: msgspec.Raw = ABSENT
    http_settings: HttpV2 | None = None
    ds_settings: DomainSocketV2 | None = None
    quic_settings: msgspec.Raw = ABSENT


class NtpV2(V2Base):
    """vtrio's ``ntp``: where to correct the clock of VMess timestamps."""

    server: str
    enabled: bool = True
    port: int = 123
    interval: float = 1800.0
