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


class InboundV2(V2Base):
    protocol: str
    tag: str = ""
    listen: str = ""
    port: Port | None = None
    settings: msgspec.Raw = ABSENT
    stream_settings: msgspec.Raw = ABSENT
    allocate: AllocateV2 | None = None
    sniffing: msgspec.Raw = ABSENT
    domain_override: msgspec.Raw = ABSENT


class OutboundV2(V2Base):
    protocol: str
    tag: str = ""
    settings: msgspec.Raw = ABSENT
    stream_settings: msgspec.Raw = ABSENT
    mux: msgspec.Raw = ABSENT
    send_through: str | None = None
    proxy_settings: msgspec.Raw = ABSENT
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
    domains: list[str] | None = None
    ip: list[str] | str | None = None
    port: Port | None = None
    network: str | None = None
    source: msgspec.Raw = ABSENT
    source_port: msgspec.Raw = ABSENT
    user: msgspec.Raw = ABSENT
    protocol: msgspec.Raw = ABSENT
    attrs: msgspec.Raw = ABSENT
    rule_tag: str | None = None


class RoutingV2(V2Base):
    domain_strategy: str = "AsIs"
    domain_matcher: str | None = None
    rules: list[RuleV2] = []
    balancers: msgspec.Raw = ABSENT


class RootV2(V2Base):
    log: LogV2 | None = None
    inbounds: list[InboundV2] = []
    outbounds: list[OutboundV2] = []
    routing: RoutingV2 | None = None
    policy: PolicyV2 | None = None
    # Accepted and ignored (a warning names each one present).
    dns: msgspec.Raw = ABSENT
    stats: msgspec.Raw = ABSENT
    api: msgspec.Raw = ABSENT
    reverse: msgspec.Raw = ABSENT
    transport: msgspec.Raw = ABSENT
    fakedns: msgspec.Raw = ABSENT
    observatory: msgspec.Raw = ABSENT
    burst_observatory: msgspec.Raw = ABSENT
    metrics: msgspec.Raw = ABSENT
    browser_forwarder: msgspec.Raw = ABSENT


IGNORED_SECTIONS = (
    "dns",
    "stats",
    "api",
    "reverse",
    "transport",
    "fakedns",
    "observatory",
    "burst_observatory",
    "metrics",
    "browser_forwarder",
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
    udp: bool = False
    ip: str | None = None
    timeout: int | None = None  # v2ray 4, deprecated there; ignored
    user_level: int = 0


class HttpInboundV2(V2Base):
    accounts: list[AccountV2] = []
    allow_transparent: bool = False
    timeout: int | None = None
    user_level: int = 0


class DokodemoInboundV2(V2Base):
    address: str | None = None
    port: Port | None = None
    network: str = "tcp"
    follow_redirect: bool = False
    timeout: int | None = None
    user_level: int = 0


class FreedomV2(V2Base):
    domain_strategy: str = "AsIs"
    redirect: str | None = None
    timeout: int | None = None  # v2ray 4, deprecated there; ignored
    user_level: int = 0
    # Xray extras, accepted and ignored.
    fragment: msgspec.Raw = ABSENT
    noises: msgspec.Raw = ABSENT
    proxy_protocol: int | None = None


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
    alpn: list[str] | None = None
    certificates: list[CertificateV2] | None = None
    allow_insecure: bool = False
    disable_system_root: bool = False
    min_version: str | None = None
    max_version: str | None = None
    cipher_suites: str | None = None
    # Xray uTLS fingerprint and friends: accepted, not reproducible here.
    fingerprint: str | None = None
    reject_unknown_sni: bool | None = None
    enable_session_resumption: bool | None = None
    pinned_peer_certificate_chain_sha256: list[str] | None = None


class WebSocketV2(V2Base):
    path: str = "/"
    headers: dict[str, str] | None = None
    host: str | None = None  # Xray
    max_early_data: int = 0
    early_data_header_name: str = ""
    accept_proxy_protocol: bool = False
    use_browser_forwarding: bool = False
    heartbeat_period: int | None = None  # Xray


class TcpHeaderV2(V2Base):
    type: str = "none"
    request: msgspec.Raw = ABSENT
    response: msgspec.Raw = ABSENT


class TcpV2(V2Base):
    header: TcpHeaderV2 | None = None
    accept_proxy_protocol: bool = False


class StreamV2(V2Base):
    network: str = "tcp"
    security: str = "none"
    tls_settings: TlsV2 | None = None
    ws_settings: WebSocketV2 | None = None
    tcp_settings: TcpV2 | None = None
    raw_settings: TcpV2 | None = None  # Xray's name for tcpSettings
    sockopt: msgspec.Raw = ABSENT
    # Transports vtrio refuses by name; kept raw so the error can say so.
    kcp_settings: msgspec.Raw = ABSENT
    quic_settings: msgspec.Raw = ABSENT
    http_settings: msgspec.Raw = ABSENT
    grpc_settings: msgspec.Raw = ABSENT
    ds_settings: msgspec.Raw = ABSENT
    httpupgrade_settings: msgspec.Raw = ABSENT
    xhttp_settings: msgspec.Raw = ABSENT
    splithttp_settings: msgspec.Raw = ABSENT
    reality_settings: msgspec.Raw = ABSENT
