"""Dialect structs -> the frozen model, plus the checks msgspec cannot express.

Theory of operation: :class:`Normalizer` walks a decoded :class:`RootV2`,
decodes each protocol's raw ``settings`` / ``streamSettings`` with the struct
of that protocol, and builds ``model`` objects. Every problem becomes a
:class:`ConfigError` carrying the JSON path, and problems are *collected*, so a
person sees every mistake of a file at once instead of one per run. Anything
vtrio does not implement is refused by path, never silently dropped.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import logging
import os
import pathlib
import re
import uuid
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import msgspec

from vtrio.config import geodata, model
from vtrio.config.lenient import conform
from vtrio.config.v2ray import (
    IGNORED_SECTIONS,
    BalancerV2,
    BlackholeV2,
    DokodemoInboundV2,
    DomainSocketV2,
    FreedomV2,
    GrpcV2,
    HttpInboundV2,
    HttpRequestV2,
    HttpResponseV2,
    HttpUpgradeV2,
    HttpV2,
    InboundV2,
    MuxV2,
    NtpV2,
    OutboundV2,
    PolicyLevelV2,
    PolicyV2,
    RootV2,
    RoutingV2,
    RuleV2,
    SniffingV2,
    SockoptV2,
    SocksInboundV2,
    StreamV2,
    TcpHeaderV2,
    TlsV2,
    TransportV2,
    VMessInboundV2,
    WebSocketV2,
)
from vtrio.config.xray import VMessOutboundXray
from vtrio.errors import ConfigError, ConfigErrors, LocalProtocolError
from vtrio.protocol.ids import parse_user_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.config.v2ray import AccountV2, Port

LOGGER = logging.getLogger("vtrio.config")

T = TypeVar("T")
B = TypeVar("B")
L = TypeVar("L")

INBOUND_PROTOCOLS = {
    "vmess": "vmess",
    "socks": "socks",
    "http": "http",
    "dokodemo-door": "dokodemo-door",
    "tunnel": "dokodemo-door",  # Xray's alias
    "mixed": "socks",  # Xray's alias; its socks inbound serves HTTP too
}
OUTBOUND_PROTOCOLS = {
    "vmess": "vmess",
    "freedom": "freedom",
    "blackhole": "blackhole",
}
UNSUPPORTED_RULE_CONDITIONS = (
    "attrs",
    "vless_route",
    "process",
    "webhook",
)
# log.maskAddress levels: the IPv4 and IPv6 bits that stay readable.
MASK_LEVELS = {"quarter": (16, 32), "half": (8, 16), "full": (0, 0)}
BALANCER_STRATEGIES = {"random": "random", "roundrobin": "roundRobin"}
# destOverride's spellings (v2ray's sniffer config), to the protocol each names.
SNIFFED_PROTOCOLS = {
    "http": "http",
    "tls": "tls",
    "https": "tls",
    "ssl": "tls",
    "quic": "quic",
    "fakedns": "fakedns",
    "fakedns+others": "fakedns",
}
# Settings whose meaning vtrio lacks and must not drop silently: each would
# leave the peer less checked or less hidden than the config asks.
# Field -> what it is about, when its JSON name does not say.
UNSUPPORTED_TLS = {
    "ech_server_keys": " (ECH)",
    "ech_config_list": " (ECH)",
    "ech_force_query": " (ECH)",
}
# v2ray's and Xray's spellings of freedom's strategies, compared in lower case.
FREEDOM_STRATEGIES = {
    "": "AsIs",
    "asis": "AsIs",
    "useip": "UseIP",
    "use_ip": "UseIP",
    **dict.fromkeys(
        ("useip4", "useipv4", "use_ipv4", "use_ip_v4", "use_ip4"), "UseIPv4"
    ),
    **dict.fromkeys(
        ("useip6", "useipv6", "use_ipv6", "use_ip_v6", "use_ip6"), "UseIPv6"
    ),
}
# The network names each dialect spells, to vtrio's.
NETWORKS: dict[str, Literal["tcp", "ws", "httpupgrade", "grpc", "h2"]] = {
    "tcp": "tcp",
    "raw": "tcp",
    "ws": "ws",
    "websocket": "ws",
    "httpupgrade": "httpupgrade",
    "grpc": "grpc",
    "gun": "grpc",
    "http": "h2",
    "h2": "h2",
}
NOT_SUPPORTED_NETWORKS = {
    "kcp": "mKCP",
    "mkcp": "mKCP",
    "quic": "QUIC",
    "xhttp": "XHTTP",
    "splithttp": "SplitHTTP",
    "hysteria": "Hysteria",
    "hy2": "Hysteria 2",
}
SECURITIES = {s.value: s for s in model.Security}
EXPERIMENTS = ("AuthenticatedLength", "NoTerminationSignal")
# Xray's gRPC keepalive: the shortest idle_timeout, the default
# health_check_timeout; and the HTTP/2 transport's health_check_timeout.
GRPC_MIN_IDLE = 10.0
GRPC_HEALTH_CHECK = 20.0
H2_HEALTH_CHECK = 15.0
# An outbound's mux.concurrency: v2ray's default, and the most Xray accepts.
DEFAULT_MUX_CONCURRENCY = 8
MAX_MUX_CONCURRENCY = 1024
# RFC 9110 tokens (methods, header names); what must never reach a head line.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_VERSION = re.compile(r"[0-9]\.[0-9]")
_HTTP_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def _string_list(value: list[str] | str | None) -> list[str]:
    """v2ray's StringList: a list as is, a string split at its commas."""
    if value is None:
        return []
    return value.split(",") if isinstance(value, str) else list(value)


PRIVATE_NETWORKS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)
V5_HINT = (
    "this looks like a v2fly v5 (jsonv5) config; vtrio reads the v4 / Xray JSON dialect"
)
AEAD_FORCED_ENV = ("V2RAY_VMESS_AEAD_FORCED", "v2ray.vmess.aead.forced")
DEFAULT_LISTEN = "0.0.0.0"


def aead_forced_from_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment forces AEAD headers (spec 9.3: value ``true``)."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip().lower() == "true" for name in AEAD_FORCED_ENV)


def parse_ports(
    value: Port, path: str, environ: dict[str, str] | None = None
) -> tuple[int, ...]:
    """Ports from a number, "80", "1000-2000", "80,443", mixes, or "env:NAME".

    Raises:
        ConfigError: not a port, range or list of them.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, int):
        text = str(value)
    else:
        text = value.strip()
        if text.startswith("env:"):
            name = text[4:]
            if name not in env:
                raise ConfigError(
                    f"environment variable {name!r} is not set", path=path
                )
            text = env[name].strip()
    ports: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low_text, sep, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ConfigError(
                "expected a port, a range like 1000-2000 or a list like 80,443,"
                f" got {value!r}",
                path=path,
            ) from None
        if not (0 <= low <= high <= 65535):
            raise ConfigError(f"port {part!r} is out of 0..65535", path=path)
        ports.extend(range(low, high + 1))
    if not ports:
        raise ConfigError("expected a port", path=path)
    return tuple(dict.fromkeys(ports))


def parse_id(text: str, path: str) -> uuid.UUID:
    """A user id: a UUID, or Xray's 1-30 byte string mapped to UUIDv5.

    Raises:
        ConfigError: empty or too long, with a hint.
    """
    if not text.strip():
        raise ConfigError("id is empty: generate one with `vtrio uuid`", path=path)
    try:
        return parse_user_id(text)
    except LocalProtocolError:
        raise ConfigError(
            "expected a UUID or a custom id of 1 to 30 bytes (see `vtrio uuid -i`)",
            path=path,
        ) from None


def parse_security(text: str, path: str) -> model.Security:
    """A client security string; unknown ones become auto like v2ray."""
    security = SECURITIES.get(text.strip().lower())
    if security is None:
        LOGGER.warning(
            "%s: unknown security %r, using auto (as v2ray does)", path, text
        )
        return model.Security.AUTO
    return security


def parse_experiments(text: str | None) -> frozenset[str]:
    """v2ray matches experiment names by substring; any separator works."""
    return frozenset(name for name in EXPERIMENTS if text and name in text)


def _msgspec_path(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """Split msgspec's "message - at `$.a.b`" into (path, message)."""
    text = str(exc)
    match = re.search(r" - at `\$(.*)`$", text)
    if match is None:
        return prefix, text
    return prefix + match.group(1), text[: match.start()]


class Normalizer:
    """Builds the model, collecting every error it meets."""

    def __init__(self, source: str, environ: dict[str, str] | None = None) -> None:
        self.source = source
        self.environ = dict(os.environ) if environ is None else environ
        self.errors: list[ConfigError] = []
        self._transport: TransportV2 | None = None
        self._assets: dict[str, bytes] = {}
        first = pathlib.Path(source.split(" + ")[0])
        self.config_dir = str(first.parent) if first.is_file() else None
        # The JSON path each built inbound, outbound and balancer came from.
        self._paths: dict[str, list[str]] = {
            "inbounds": [],
            "outbounds": [],
            "balancers": [],
        }

    def built(
        self, root: RootV2, kind: str, build: Callable[[Any, str], B | None]
    ) -> tuple[B, ...]:
        """The inbounds or outbounds that build, their paths kept for checks."""
        out = []
        for path, raw in _legacy_first(root, kind):
            if (item := build(raw, path)) is not None:
                out.append(item)
                self._paths[f"{kind}s"].append(path)
        return tuple(out)

    def error(self, message: str, path: str) -> None:
        self.errors.append(ConfigError(message, path=path, source=self.source))

    def decode(self, raw: msgspec.Raw, type_: type[T], path: str) -> T | None:
        """Decode a raw section with ``type_``; errors get ``path`` as prefix."""
        try:
            # The raw text is this loader's own encoding: it decodes.
            value = conform(msgspec.json.decode(raw or b"{}"), type_)
            return msgspec.json.decode(msgspec.json.encode(value), type=type_)
        except msgspec.ValidationError as exc:
            where, message = _msgspec_path(exc, path)
            self.error(message, where)
            return None

    def run(self, root: RootV2) -> model.Config:
        self._transport = root.transport
        for name in IGNORED_SECTIONS:
            if getattr(root, name):
                LOGGER.warning(
                    "%s: section %r is not used by vtrio; ignored", self.source, name
                )
        config = model.Config(
            inbounds=self.built(root, "inbound", self.inbound),
            outbounds=self.built(root, "outbound", self.outbound),
            routing=self.routing(root.routing),
            policy=self.policy(root.policy),
            log=self.log(root),
            ntp=self.ntp(root.ntp),
            sources=tuple(self.source.split(" + ")),
        )
        self.check(config, root)
        if self.errors:
            raise ConfigErrors(self.errors)
        return config

    # --- sections -------------------------------------------------------------

    def log(self, root: RootV2) -> model.Log:
        log = root.log
        if log is None:
            return model.Log()
        level = log.loglevel.lower()
        if level not in ("debug", "info", "warning", "error", "none"):
            self.error(
                "expected one of debug, info, warning, error, none", "$.log.loglevel"
            )
            level = "warning"
        return model.Log(
            level=cast("Literal['debug', 'info', 'warning', 'error', 'none']", level),
            access=None if log.access in ("", "none") else log.access,
            error=None if log.error in ("", "none") else log.error,
            access_off=log.access == "none",
            error_off=log.error == "none",
            mask_address=self.mask_address(log.mask_address),
        )

    def mask_address(self, text: str) -> tuple[int, int] | None:
        """Xray's level names, or ``/v4bits+/v6bits``."""
        if not text:
            return None
        if text in MASK_LEVELS:
            return MASK_LEVELS[text]
        match = re.fullmatch(r"/(\d+)\+/(\d+)", text)
        ipv4, ipv6 = (int(match[1]), int(match[2])) if match else (-1, -1)
        if not (0 <= ipv4 <= 32 and ipv4 % 8 == 0 and 0 <= ipv6 <= 128):
            self.error(
                'expected "quarter", "half", "full" or "/v4+/v6" (IPv4 bits a'
                " multiple of 8 up to 32, IPv6 bits up to 128)",
                "$.log.maskAddress",
            )
            return None
        return ipv4, ipv6

    def ntp(self, ntp: NtpV2 | None) -> model.Ntp | None:
        if ntp is None or not ntp.enabled:
            return None
        if not 0 < ntp.port < 65536:
            self.error("expected a port in 1..65535", "$.ntp.port")
        if ntp.interval < 10:
            self.error("expected at least 10 seconds", "$.ntp.interval")
        return model.Ntp(ntp.server, ntp.port, ntp.interval)

    def policy(self, policy: PolicyV2 | None) -> model.Policy:
        if policy is None:
            return model.Policy()
        levels: dict[int, model.LevelPolicy] = {}
        base = model.DEFAULT_LEVEL_POLICY
        for key, raw in policy.levels.items():
            path = f"$.policy.levels.{key}"
            if not key.isdigit():
                self.error('level keys are numbers like "0"', path)
                continue
            level = self.decode(raw, PolicyLevelV2, path)
            if level is None:
                continue
            buffer = base.buffer_size
            if level.buffer_size is not None:
                buffer = 0 if level.buffer_size < 0 else level.buffer_size * 1024
            levels[int(key)] = model.LevelPolicy(
                handshake=base.handshake
                if level.handshake is None
                else level.handshake,
                conn_idle=base.conn_idle
                if level.conn_idle is None
                else level.conn_idle,
                uplink_only=base.uplink_only
                if level.uplink_only is None
                else level.uplink_only,
                downlink_only=base.downlink_only
                if level.downlink_only is None
                else level.downlink_only,
                buffer_size=buffer,
            )
        return model.Policy(levels=levels)

    def routing(self, routing: RoutingV2 | None) -> model.Routing:
        if routing is None:
            return model.Routing()
        legacy = routing.settings
        path = "$.routing.domainStrategy"
        given = routing.domain_strategy
        if given is None and legacy is not None:
            path, given = "$.routing.settings.domainStrategy", legacy.domain_strategy
        strategy = _DOMAIN_STRATEGIES.get((given or "AsIs").lower().replace("_", "-"))
        if strategy is None:
            self.error("expected AsIs, IPIfNonMatch or IPOnDemand", path)
            strategy = "AsIs"
        entries = [
            (f"$.routing.rules[{index}]", rule)
            for index, rule in enumerate(routing.rules)
        ]
        if legacy is not None:
            entries += [
                (f"$.routing.settings.rules[{index}]", rule)
                for index, rule in enumerate(legacy.rules)
            ]
        rules = [
            rule for path, raw in entries if (rule := self.rule(raw, path)) is not None
        ]
        balancers = []
        for index, raw in enumerate(routing.balancers):
            path = f"$.routing.balancers[{index}]"
            if balancer := self.balancer(raw, path):
                balancers.append(balancer)
                self._paths["balancers"].append(path)
        return model.Routing(
            domain_strategy=cast(
                "Literal['AsIs', 'IPIfNonMatch', 'IPOnDemand']", strategy
            ),
            rules=tuple(rules),
            balancers=tuple(balancers),
        )

    def balancer(self, raw: BalancerV2, path: str) -> model.Balancer | None:
        if not raw.tag:
            self.error("a balancer needs a tag", f"{path}.tag")
            return None
        selectors = tuple(_as_list(raw.selector))
        if not selectors:
            self.error("a balancer needs a selector (outbound tag prefixes)", path)
            return None
        kind = raw.strategy.type if raw.strategy is not None else "random"
        strategy = BALANCER_STRATEGIES.get(kind.lower())
        if strategy is None:
            if kind.lower() in ("leastping", "leastload"):
                message = f"{kind} needs the observatory, which vtrio lacks"
            else:
                message = f"unknown balancer strategy {kind!r}"
            self.error(
                message + " (vtrio balances random or roundRobin)",
                f"{path}.strategy.type",
            )
            return None
        return model.Balancer(
            tag=raw.tag,
            selectors=selectors,
            strategy=cast("Literal['random', 'roundRobin']", strategy),
            fallback_tag=raw.fallback_tag,
        )

    def rule(self, rule: RuleV2, path: str) -> model.RoutingRule | None:
        if rule.type != "field":
            self.error('only rules of type "field" exist', f"{path}.type")
            return None
        if not rule.outbound_tag and not rule.balancer_tag:
            self.error("a rule needs an outboundTag or a balancerTag", path)
            return None
        for name in UNSUPPORTED_RULE_CONDITIONS:
            if getattr(rule, name):
                condition = _json_name(RuleV2, name)
                self.error(f"rule condition {condition!r} is not supported yet", path)
                return None
        domains = self.domains(
            _as_list(rule.domain) + _as_list(rule.domains), f"{path}.domain"
        )
        ips = self.ips(_as_list(rule.ip), f"{path}.ip")
        source_key = "sourceIP" if rule.source is None else "source"
        source_ips = self.ips(
            _as_list(rule.source if rule.source is not None else rule.source_ip),
            f"{path}.{source_key}",
        )
        ports = self.rule_ports(rule.port, f"{path}.port")
        source_ports = self.rule_ports(rule.source_port, f"{path}.sourcePort")
        local_ips = self.ips(_as_list(rule.local_ip), f"{path}.localIP")
        local_ports = self.rule_ports(rule.local_port, f"{path}.localPort")
        networks = set(_as_list(rule.network))
        if not networks <= {"tcp", "udp"}:
            self.error('expected tcp, udp or "tcp,udp"', f"{path}.network")
            networks &= {"tcp", "udp"}
        return model.RoutingRule(
            # v2ray reads the outboundTag when a rule has both.
            outbound_tag=rule.outbound_tag or "",
            balancer_tag="" if rule.outbound_tag else rule.balancer_tag or "",
            inbound_tags=frozenset(_as_list(rule.inbound_tag)),
            domains=domains,
            ips=ips,
            ports=ports,
            networks=frozenset(cast("set[Literal['tcp', 'udp']]", networks)),
            protocols=tuple(p.lower() for p in _as_list(rule.protocol)),
            users=frozenset(_as_list(rule.user)),
            source_ips=source_ips,
            source_ports=source_ports,
            local_ips=local_ips,
            local_ports=local_ports,
        )

    def rule_ports(self, port: Port | None, path: str) -> tuple[tuple[int, int], ...]:
        if port is None:
            return ()
        try:
            return _ranges(parse_ports(port, path, self.environ))
        except ConfigError as exc:
            self.error(exc.message, exc.path)
            return ()

    def domains(self, values: list[str], path: str) -> tuple[model.DomainMatcher, ...]:
        matchers: list[model.DomainMatcher] = []
        for index, value in enumerate(values):
            where = f"{path}[{index}]"
            kind, sep, rest = value.partition(":")
            if not sep:
                matchers.append(model.DomainMatcher("keyword", value.lower()))
            elif kind in ("full", "domain", "keyword", "regexp"):
                matcher = self.domain_matcher(kind, rest, where)
                if matcher is not None:
                    matchers.append(matcher)
            elif kind == "dotless":
                if "." in rest:
                    self.error("a dotless: part cannot hold a dot", where)
                    continue
                pattern = f"^[^.]*{re.escape(rest)}[^.]*$"
                matchers.append(
                    model.DomainMatcher("regexp", pattern, re.compile(pattern))
                )
            elif kind in ("geosite", "ext", "ext-domain"):
                matchers += self.geosite(kind, rest, where)
            else:
                self.error(f"unknown domain matcher {kind!r}", where)
        return tuple(matchers)

    def domain_matcher(
        self, kind: str, value: str, path: str
    ) -> model.DomainMatcher | None:
        if kind != "regexp":
            return model.DomainMatcher(kind, value.lower())  # type: ignore[arg-type]
        try:
            return model.DomainMatcher("regexp", value, re.compile(value))
        except re.error as exc:
            self.error(f"bad regular expression {value!r}: {exc}", path)
            return None

    def geosite(self, kind: str, rest: str, path: str) -> list[model.DomainMatcher]:
        """``geosite:list[@attr]`` or ``ext:file:list[@attr]``, from the file."""
        name, code = ("geosite.dat", rest) if kind == "geosite" else _ext_parts(rest)
        code, *attributes = code.split("@")
        if not name or not code:
            self.error(f"expected {kind}:file.dat:list", path)
            return []
        sites = self.geodata_list(
            name,
            code,
            functools.partial(geodata.read_sites, attributes=attributes),
            path,
        )
        return [
            matcher
            for site_kind, value in sites or ()
            if (matcher := self.domain_matcher(site_kind, value, path)) is not None
        ]

    def ips(self, values: list[str], path: str) -> tuple[model.IPNetwork, ...]:
        networks: list[model.IPNetwork] = []
        for index, value in enumerate(values):
            where = f"{path}[{index}]"
            kind, sep, rest = value.partition(":")
            if sep and kind in ("geoip", "ext", "ext-ip"):
                networks += self.geoip(kind, rest, where)
                continue
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.error(f"expected an IP or CIDR, got {value!r}", where)
        return tuple(networks)

    def geoip(self, kind: str, rest: str, path: str) -> list[model.IPNetwork]:
        """``geoip:[!]code`` or ``ext:file:[!]code``; ``!`` takes every
        address outside the list, as v2ray's inverse match does."""
        name, code = ("geoip.dat", rest) if kind == "geoip" else _ext_parts(rest)
        inverse = code.startswith("!")
        code = code.removeprefix("!")
        if not name or not code:
            self.error(f"expected {kind}:file.dat:code", path)
            return []
        networks: list[model.IPNetwork] | None
        if kind == "geoip" and code.lower() == "private":
            networks = [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS]
        else:
            networks = self.geodata_list(name, code, geodata.read_networks, path)
        if networks is None:
            return []
        return _complement(networks) if inverse else networks

    def geodata_list(
        self, name: str, code: str, read: Callable[[bytes, str], L | None], path: str
    ) -> L | None:
        """List ``code`` of the geodata file ``name``, read once per load; None
        (with the error said) when the file or the list is missing or broken."""
        try:
            if name not in self._assets:
                found = geodata.find_asset(name, self.environ, self.config_dir)
                self._assets[name] = geodata.asset_bytes(found)
            listed = read(self._assets[name], code)
        except geodata.GeodataError as exc:
            message = str(exc) if name not in self._assets else f"{name}: {exc}"
            self.error(message, path)
            return None
        if listed is None:
            self.error(f"{name} has no list {code!r}", path)
        return listed

    # --- inbounds ---------------------------------------------------------------

    def inbound(self, raw: InboundV2, path: str) -> model.Inbound | None:
        protocol = INBOUND_PROTOCOLS.get(raw.protocol)
        if protocol is None:
            self.error(
                f"inbound protocol {raw.protocol!r} is not supported"
                " (vtrio serves vmess, socks, http and dokodemo-door)",
                f"{path}.protocol",
            )
            return None
        stream = self.stream(raw.stream_settings, f"{path}.streamSettings", server=True)
        listen, socket_mode = self.listen(raw.listen, f"{path}.listen")
        if stream is not None and stream.domain_socket:
            listen, stream = (
                stream.domain_socket,
                dataclasses.replace(stream, domain_socket=""),
            )
        if model.is_unix_name(listen):
            ports: tuple[int, ...] = (0,)  # ignored, as in Xray
        elif raw.port is None:
            self.error("an inbound needs a port", f"{path}.port")
            return None
        else:
            try:
                ports = parse_ports(raw.port, f"{path}.port", self.environ)
            except ConfigError as exc:
                self.error(exc.message, exc.path)
                return None
        settings_path = f"{path}.settings"
        settings: model.InboundSettings | None
        if protocol == "vmess":
            settings = self.vmess_inbound(raw.settings, settings_path)
        elif protocol == "socks":
            settings = self.socks_inbound(raw.settings, settings_path)
        elif protocol == "http":
            settings = self.http_inbound(raw.settings, settings_path)
        else:
            settings = self.dokodemo_inbound(raw.settings, settings_path)
        allocate = model.Allocate()
        if raw.allocate is not None:
            strategy = raw.allocate.strategy
            if strategy not in ("always", "random"):
                self.error('expected "always" or "random"', f"{path}.allocate.strategy")
                strategy = "always"
            allocate = model.Allocate(
                strategy=cast("Literal['always', 'random']", strategy),
                refresh_minutes=max(1, raw.allocate.refresh),
                concurrency=max(1, raw.allocate.concurrency),
            )
        sniffing = self.sniffing(raw, path)
        if settings is None or stream is None:
            return None
        if (
            isinstance(settings, model.DokodemoInboundSettings)
            and settings.follow_redirect
            and "udp" in settings.networks
            and stream.tproxy != "tproxy"
        ):
            # REDIRECT rewrites a datagram's destination and keeps no record.
            self.error(
                'followRedirect over UDP needs streamSettings.sockopt.tproxy "tproxy"',
                f"{settings_path}.network",
            )
            return None
        return model.Inbound(
            tag=raw.tag,
            protocol=cast(
                "Literal['vmess', 'socks', 'http', 'dokodemo-door']", protocol
            ),
            listen=listen,
            ports=ports,
            settings=settings,
            stream=stream,
            allocate=allocate,
            sniffing=sniffing,
            socket_mode=socket_mode,
        )

    def listen(self, text: str, path: str) -> tuple[str, int | None]:
        """An inbound's address, or its Unix socket and the file mode Xray
        writes after a comma (``/dev/shm/vmess.sock,0666``)."""
        if not model.is_unix_name(text):
            return text or DEFAULT_LISTEN, None
        name, comma, mode = text.partition(",")
        if not comma:
            return name, None
        try:
            return name, int(mode, 8)
        except ValueError:
            self.error(
                f"expected an octal file mode after the comma, got {mode!r}", path
            )
            return name, None

    def sniffing(self, inbound: InboundV2, path: str) -> model.Sniffing | None:
        """The inbound's sniffing, None when off; v2ray 3's ``domainOverride``
        is sniffing with that ``destOverride``."""
        if inbound.domain_override is not None and not inbound.sniffing:
            raw = SniffingV2(enabled=True, dest_override=inbound.domain_override)
            path = f"{path}.domainOverride"
        else:
            path = f"{path}.sniffing"
            decoded = self.decode(inbound.sniffing, SniffingV2, path)
            if decoded is None:
                return None
            raw = decoded
        if not raw.enabled:
            return None
        if raw.metadata_only:
            LOGGER.warning(
                "%s: %s.metadataOnly reads only FakeDNS, which vtrio lacks:"
                " nothing is sniffed",
                self.source,
                path,
            )
            return None
        overrides: list[str] = []
        for index, name in enumerate(_as_list(raw.dest_override)):
            kind = SNIFFED_PROTOCOLS.get(name.lower())
            if kind is None:
                self.error(
                    f"unknown protocol {name!r} (expected http, tls, quic or fakedns)",
                    f"{path}.destOverride[{index}]",
                )
            elif kind == "fakedns":
                LOGGER.warning(
                    "%s: %s.destOverride[%d]: vtrio has no FakeDNS; ignored",
                    self.source,
                    path,
                    index,
                )
            elif kind not in overrides:
                overrides.append(kind)
        return model.Sniffing(
            dest_override=tuple(overrides),
            route_only=raw.route_only,
            domains_excluded=self.domains(
                _as_list(raw.domains_excluded), f"{path}.domainsExcluded"
            ),
            ips_excluded=self.ips(_as_list(raw.ips_excluded), f"{path}.ipsExcluded"),
        )

    def vmess_inbound(
        self, raw: msgspec.Raw, path: str
    ) -> model.VMessInboundSettings | None:
        if raw and _looks_like_v5_users(raw):
            self.error(
                V5_HINT + ' (write "clients": [{"id": ...}])',
                f"{path}.users",
            )
            return None
        settings = self.decode(raw, VMessInboundV2, path)
        if settings is None:
            return None
        key = "clients" if settings.clients is not None else "users"
        clients = (
            settings.clients if settings.clients is not None else settings.users or []
        )
        users = []
        for index, client in enumerate(clients):
            where = f"{path}.{key}[{index}]"
            try:
                user_id = parse_id(client.id, f"{where}.id")
            except ConfigError as exc:
                self.error(exc.message, exc.path)
                continue
            if client.alter_id < 0 or client.alter_id > 65535:
                self.error("alterId must be in 0..65535", f"{where}.alterId")
                continue
            users.append(
                model.VMessUser(
                    id=user_id,
                    alter_id=client.alter_id,
                    level=client.level,
                    email=client.email,
                )
            )
        detour = settings.detour or (
            settings.features.detour if settings.features else None
        )
        default = settings.default
        return model.VMessInboundSettings(
            users=tuple(users),
            default=model.DefaultUser(default.alter_id, default.level)
            if default
            else model.DefaultUser(),
            detour_to=detour.to if detour else None,
            disable_insecure_encryption=settings.disable_insecure_encryption,
            aead_forced=settings.aead_forced or aead_forced_from_env(self.environ),
        )

    def _accounts(self, accounts: list[AccountV2]) -> tuple[model.Account, ...]:
        return tuple(model.Account(a.user, a.pass_) for a in accounts)

    def socks_inbound(
        self, raw: msgspec.Raw, path: str
    ) -> model.SocksInboundSettings | None:
        settings = self.decode(raw, SocksInboundV2, path)
        if settings is None:
            return None
        if settings.auth not in ("noauth", "password"):
            self.error('expected "noauth" or "password"', f"{path}.auth")
            return None
        accounts = settings.accounts or settings.users
        if settings.auth == "password" and not accounts:
            self.error(
                'auth is "password" but no accounts are given', f"{path}.accounts"
            )
            return None
        return model.SocksInboundSettings(
            auth=cast("Literal['noauth', 'password']", settings.auth),
            accounts=self._accounts(accounts),
            udp=settings.udp,
            ip=settings.ip,
            level=settings.user_level,
        )

    def http_inbound(
        self, raw: msgspec.Raw, path: str
    ) -> model.HttpInboundSettings | None:
        settings = self.decode(raw, HttpInboundV2, path)
        if settings is None:
            return None
        return model.HttpInboundSettings(
            accounts=self._accounts(settings.accounts or settings.users),
            allow_transparent=settings.allow_transparent,
            level=settings.user_level,
        )

    def dokodemo_inbound(
        self, raw: msgspec.Raw, path: str
    ) -> model.DokodemoInboundSettings | None:
        settings = self.decode(raw, DokodemoInboundV2, path)
        if settings is None:
            return None
        network = settings.network or settings.allowed_network or "tcp"
        networks = set(_as_list(network))
        if not networks <= {"tcp", "udp"}:
            self.error('expected tcp, udp or "tcp,udp"', f"{path}.network")
            return None
        port_map = self.port_map(settings.port_map, f"{path}.portMap")
        if port_map is None:
            return None
        port = None
        given, where = settings.port, f"{path}.port"
        if given is None or given == 0:
            given, where = settings.rewrite_port, f"{path}.rewritePort"
        if given is not None:
            try:
                port = parse_ports(given, where, self.environ)[0]
            except ConfigError as exc:
                self.error(exc.message, exc.path)
                return None
        address = settings.address or settings.rewrite_address
        complete = bool(address) and port is not None
        if not (complete or settings.follow_redirect or port_map):
            self.error("dokodemo-door needs an address and a port", path)
            return None
        return model.DokodemoInboundSettings(
            address=address or None,
            port=port,
            networks=frozenset(cast("set[Literal['tcp', 'udp']]", networks)),
            follow_redirect=settings.follow_redirect,
            level=settings.user_level,
            port_map=port_map,
        )

    def port_map(
        self, raw: dict[str, str], path: str
    ) -> tuple[tuple[int, str | None, int | None], ...] | None:
        """Xray's ``portMap``: ``{"5555": "1.1.1.1:7777", "5556": ":8888",
        "5557": "example.com:"}``, a listening port to a destination whose
        missing half is the inbound's own (None: an error was recorded)."""
        entries = []
        for key, value in raw.items():
            where = f"{path}.{key}"
            host, colon, port_text = value.rpartition(":")
            listening = int(key) if key.isdecimal() else 0
            mapped_port = int(port_text) if port_text.isdecimal() else 0
            if not 1 <= listening <= 65535:
                self.error(f"expected a listening port as the key, not {key!r}", where)
                return None
            if (
                not colon
                or (port_text and not 1 <= mapped_port <= 65535)
                or not (host or port_text)
            ):
                self.error(
                    f'expected "address:port", ":port" or "address:", not {value!r}',
                    where,
                )
                return None
            entries.append((listening, host.strip("[]") or None, mapped_port or None))
        return tuple(entries)

    # --- outbounds --------------------------------------------------------------

    def outbound(self, raw: OutboundV2, path: str) -> model.Outbound | None:
        protocol = OUTBOUND_PROTOCOLS.get(raw.protocol)
        if protocol is None:
            self.error(
                f"outbound protocol {raw.protocol!r} is not supported"
                " (vtrio has vmess, freedom and blackhole)",
                f"{path}.protocol",
            )
            return None
        if (
            raw.target_strategy
            and protocol != "freedom"
            and raw.target_strategy.lower() != "asis"
        ):
            LOGGER.warning(
                "%s: %s.targetStrategy: vtrio applies it to freedom only; a %s"
                " outbound's server is resolved by the system",
                self.source,
                path,
                protocol,
            )
        mux_concurrency, mux_udp = self.mux(raw, protocol, f"{path}.mux")
        settings_path = f"{path}.settings"
        settings: model.OutboundSettings | None
        if protocol == "vmess":
            settings = self.vmess_outbound(raw.settings, settings_path)
        elif protocol == "freedom":
            freedom = self.decode(raw.settings, FreedomV2, settings_path)
            settings = None
            if freedom is not None and raw.target_strategy:
                # Xray's outbound-level name; it wins over the settings' ones.
                freedom = msgspec.structs.replace(
                    freedom, target_strategy=raw.target_strategy
                )
            if freedom is not None:
                settings = self.freedom(
                    freedom, settings_path, outbound_level=bool(raw.target_strategy)
                )
        else:
            blackhole = self.decode(raw.settings, BlackholeV2, settings_path)
            settings = None
            if blackhole is not None:
                kind = blackhole.response.type if blackhole.response else "none"
                settings = model.BlackholeSettings(
                    response="http" if kind == "http" else "none"
                )
        stream = self.stream(
            raw.stream_settings, f"{path}.streamSettings", server=False
        )
        if settings is None or stream is None:
            return None
        send_through = self.send_through(raw.send_through, f"{path}.sendThrough")
        if raw.proxy_settings is not None and raw.proxy_settings.tag and stream:
            stream = self.proxied(raw, stream, path)
        if stream is not None and stream.dialer_proxy and protocol != "vmess":
            self.error(
                "only a vmess outbound can be dialled through another outbound",
                f"{path}.proxySettings",
            )
            return None
        return model.Outbound(
            tag=raw.tag,
            protocol=cast("Literal['vmess', 'freedom', 'blackhole']", protocol),
            settings=settings,
            stream=stream,
            send_through=send_through,
            mux_concurrency=mux_concurrency,
            mux_udp=mux_udp,
        )

    def mux(self, raw: OutboundV2, protocol: str, path: str) -> tuple[int, bool]:
        """Tunnels per Mux connection (0: off) and whether UDP joins them,
        from an outbound's ``mux``: a concurrency of 0 means v2ray's default
        of 8, below 0 Mux is off; Xray's ``xudpConcurrency`` below 0 keeps
        UDP off Mux."""
        mux = self.decode(raw.mux, MuxV2, path) if raw.mux else None
        if mux is None or not mux.enabled or mux.concurrency < 0:
            return 0, False
        if protocol != "vmess":
            LOGGER.warning(
                "%s: %s: Mux applies to vmess outbounds only; ignored",
                self.source,
                path,
            )
            return 0, False
        if mux.concurrency > MAX_MUX_CONCURRENCY:
            self.error(
                f"expected a concurrency from 1 to {MAX_MUX_CONCURRENCY}",
                f"{path}.concurrency",
            )
            return 0, False
        udp = mux.xudp_concurrency is None or mux.xudp_concurrency >= 0
        if udp and (mux.xudp_concurrency or mux.xudp_proxy_udp443 is not None):
            LOGGER.warning(
                "%s: %s: UDP goes over Mux as v2ray sends it (a sub-session per"
                " destination), not as XUDP; xudpConcurrency and xudpProxyUDP443"
                " are ignored",
                self.source,
                path,
            )
        return mux.concurrency or DEFAULT_MUX_CONCURRENCY, udp

    def proxied(
        self, raw: OutboundV2, stream: model.StreamSettings, path: str
    ) -> model.StreamSettings:
        """v2ray's ``proxySettings``: without ``transportLayer`` the proxy
        carries the protocol alone and the streamSettings are ignored (v2ray
        warns so too); with it they stack on the proxy's stream, as Xray's
        ``dialerProxy`` does."""
        assert raw.proxy_settings is not None
        if not raw.proxy_settings.transport_layer:
            if stream != model.StreamSettings():
                LOGGER.warning(
                    "%s: %s.streamSettings are ignored: proxySettings without"
                    " transportLayer carries the protocol alone",
                    self.source,
                    path,
                )
            stream = model.StreamSettings()
        return dataclasses.replace(stream, dialer_proxy=raw.proxy_settings.tag)

    def send_through(self, text: str | None, path: str) -> model.IPNetwork | None:
        """An IP (or Xray's network, for a random address in it); the
        unspecified addresses mean the system's choice."""
        if not text:
            return None
        if text == "origin":
            self.error(
                '"origin" (the address the client came in on) is not supported;'
                " give an IP",
                path,
            )
            return None
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.error(f"expected a local IP address, got {text!r}", path)
            return None
        return None if network.network_address.is_unspecified else network

    def freedom(
        self, freedom: FreedomV2, path: str, *, outbound_level: bool = False
    ) -> model.FreedomSettings | None:
        given, where = freedom.domain_strategy, f"{path}.domainStrategy"
        if freedom.target_strategy:
            given, where = freedom.target_strategy, f"{path}.targetStrategy"
        if outbound_level:
            where = f"{path.removesuffix('.settings')}.targetStrategy"
        strategy = FREEDOM_STRATEGIES.get(given.lower())
        if strategy is None:
            self.error("expected AsIs, UseIP, UseIPv4 or UseIPv6", where)
            return None
        for name, given_rules in (
            ("finalRules", freedom.final_rules),
            ("ipsBlocked", freedom.ips_blocked),
        ):
            if given_rules:
                self.error(
                    f"{name} is not supported yet (freedom would not apply it)",
                    f"{path}.{name}",
                )
                return None
        for name, given_extra, what in (
            ("fragment", freedom.fragment, "TLS ClientHello fragmenting"),
            ("noises", freedom.noises, "UDP noise packets"),
            ("proxyProtocol", freedom.proxy_protocol, "a PROXY header to targets"),
        ):
            if given_extra:
                LOGGER.warning(
                    "%s: %s.%s (Xray: %s) is not done by vtrio; ignored",
                    self.source,
                    path,
                    name,
                    what,
                )
        return model.FreedomSettings(
            domain_strategy=cast(
                "Literal['AsIs', 'UseIP', 'UseIPv4', 'UseIPv6']", strategy
            ),
            redirect=freedom.redirect or None,
        )

    def vmess_outbound(
        self, raw: msgspec.Raw, path: str
    ) -> model.VMessOutboundSettings | None:
        if raw and b'"uuid"' in bytes(raw):
            self.error(
                V5_HINT + ' (write "vnext", or Xray\'s "address", "port", "id")',
                f"{path}.uuid",
            )
            return None
        settings = self.decode(raw, VMessOutboundXray, path)
        if settings is None:
            return None
        errors_before = len(self.errors)
        servers = []
        if settings.vnext is not None:
            for index, vnext in enumerate(settings.vnext):
                where = f"{path}.vnext[{index}]"
                users = []
                for number, user in enumerate(vnext.users):
                    account = self.vmess_account(
                        user.id,
                        user.alter_id,
                        user.security,
                        user.level,
                        user.email,
                        user.experiments,
                        f"{where}.users[{number}]",
                    )
                    if account is not None:
                        users.append(account)
                server = self.server(vnext.address, vnext.port, users, where)
                if server is not None:
                    servers.append(server)
        elif settings.address is not None:
            if settings.id is None or settings.port is None:
                self.error("the flat form needs address, port and id", path)
                return None
            account = self.vmess_account(
                settings.id,
                settings.alter_id,
                settings.security,
                settings.level,
                settings.email,
                settings.experiments,
                path,
            )
            server = self.server(
                settings.address, settings.port, [account] if account else [], path
            )
            if server is not None:
                servers.append(server)
        if not servers and len(self.errors) == errors_before:
            self.error(
                'expected "vnext" with at least one server,'
                ' or Xray\'s flat "address"/"port"/"id"',
                path,
            )
        if not servers:
            return None
        return model.VMessOutboundSettings(servers=tuple(servers))

    def server(
        self, address: str, port: Port, users: list[model.VMessUser], path: str
    ) -> model.VMessServer | None:
        if not address.strip():
            self.error(
                "address is empty: the server's host name or IP", f"{path}.address"
            )
            return None
        try:
            (number,) = parse_ports(port, f"{path}.port", self.environ)[:1]
        except ConfigError as exc:
            self.error(exc.message, exc.path)
            return None
        if not users:
            return None
        return model.VMessServer(
            address=address.strip(), port=number, users=tuple(users)
        )

    def vmess_account(
        self,
        user_id: str,
        alter_id: int,
        security: str,
        level: int,
        email: str,
        experiments: str,
        path: str,
    ) -> model.VMessUser | None:
        try:
            parsed = parse_id(user_id, f"{path}.id")
        except ConfigError as exc:
            self.error(exc.message, exc.path)
            return None
        return model.VMessUser(
            id=parsed,
            alter_id=alter_id,
            level=level,
            email=email,
            security=parse_security(security, f"{path}.security"),
            experiments=parse_experiments(experiments),
        )

    # --- stream settings --------------------------------------------------------

    def stream(
        self, raw: msgspec.Raw, path: str, *, server: bool
    ) -> model.StreamSettings | None:
        transport = self._transport
        if not raw and transport is None:
            return model.StreamSettings()
        if b'"transport"' in bytes(raw) and b'"network"' not in bytes(raw):
            self.error(
                V5_HINT,
                f"{path}.transport",
            )
            return None
        stream = self.decode(raw, StreamV2, path)
        if stream is None:
            return None
        if transport is not None:
            stream = msgspec.structs.replace(
                stream,
                tcp_settings=stream.tcp_settings
                or (None if stream.raw_settings else transport.tcp_settings),
                ws_settings=stream.ws_settings or transport.ws_settings,
                http_settings=stream.http_settings or transport.http_settings,
            )
        given, where = stream.network, f"{path}.network"
        if stream.method is not None:
            given, where = stream.method, f"{path}.method"
        network = given.lower()
        domain_socket = ""
        if network in ("domainsocket", "ds"):
            domain_socket = self.domain_socket(stream.ds_settings, f"{path}.dsSettings")
            if not domain_socket:
                return None
            network = "tcp"
        if network in NOT_SUPPORTED_NETWORKS:
            self.error(
                f"{NOT_SUPPORTED_NETWORKS[network]} transport is not supported yet"
                " (vtrio has tcp, ws, httpupgrade, grpc, http and tls)",
                where,
            )
            return None
        if network not in NETWORKS:
            self.error(f"unknown network {given!r}", where)
            return None
        if stream.finalmask:
            self.error("finalmask is not supported yet", f"{path}.finalmask")
            return None
        tcp = stream.tcp_settings or stream.raw_settings
        http_header = None
        if tcp is not None and tcp.header is not None and NETWORKS[network] == "tcp":
            tcp_name = "tcpSettings" if stream.tcp_settings else "rawSettings"
            where = f"{path}.{tcp_name}.header"
            http_header = self.http_header(tcp.header, where)
            if http_header is False:
                return None
        security = stream.security.lower() or "none"
        if security not in ("none", "tls"):
            self.error(
                f"security {stream.security!r} is not supported yet (none or tls)",
                f"{path}.security",
            )
            return None
        tls = self.tls(
            stream, f"{path}.tlsSettings", server=server and security == "tls"
        )
        upgrade = (
            stream.httpupgrade_settings
            if network == "httpupgrade"
            else stream.ws_settings
        )
        accept_proxy = any(
            settings is not None and settings.accept_proxy_protocol
            for settings in (
                tcp,
                stream.ws_settings,
                stream.httpupgrade_settings,
                stream.sockopt,
            )
        )
        if tls is None:
            return None
        sockopt = stream.sockopt or SockoptV2()
        if sockopt.tproxy not in ("off", "redirect", "tproxy"):
            self.error(
                f"expected off, redirect or tproxy, not {sockopt.tproxy!r}",
                f"{path}.sockopt.tproxy",
            )
            return None
        if not 0 <= sockopt.mark <= 0xFFFFFFFF:
            self.error("expected a mark from 0 to 4294967295", f"{path}.sockopt.mark")
            return None
        ws = stream.ws_settings
        if ws is not None and network == "ws" and ws.use_browser_forwarding:
            # Dialling directly would leave the client less hidden than asked.
            self.error(
                "useBrowserForwarding (v2ray's browser dialer) is not supported",
                f"{path}.wsSettings.useBrowserForwarding",
            )
            return None
        if ws is not None and network == "ws" and ws.heartbeat_period:
            LOGGER.warning(
                "%s: %s.wsSettings.heartbeatPeriod: vtrio sends no WebSocket pings"
                " (it answers the peer's); ignored",
                self.source,
                path,
            )
        grpc, h2 = model.GrpcSettings(), model.H2Settings()
        if NETWORKS[network] == "grpc":
            grpc = self.grpc(stream.grpc_settings or stream.gun_settings, path)
        elif NETWORKS[network] == "h2":
            h2 = self.h2(stream.http_settings, f"{path}.httpSettings")
        if NETWORKS[network] in ("grpc", "h2") and not tls.alpn:
            # HTTP/2 underneath: the TLS layer must agree on h2.
            tls = dataclasses.replace(tls, alpn=("h2",))
        return model.StreamSettings(
            network=NETWORKS[network],
            security=cast("Literal['none', 'tls']", security),
            tls=tls,
            ws=self.upgrade(upgrade),
            grpc=grpc,
            h2=h2,
            http_header=http_header or None,
            accept_proxy_protocol=accept_proxy,
            domain_socket=domain_socket,
            dialer_proxy=sockopt.dialer_proxy,
            mark=sockopt.mark,
            tproxy=cast("Literal['off', 'redirect', 'tproxy']", sockopt.tproxy),
        )

    def grpc(self, grpc: GrpcV2 | None, path: str) -> model.GrpcSettings:
        """``grpcSettings``; Xray's keepalive as its gRPC applies it (an
        ``idle_timeout`` of at least 10 s, a ``health_check_timeout`` of 20 s
        unless given)."""
        if grpc is None:
            return model.GrpcSettings()
        if grpc.initial_windows_size:
            LOGGER.warning(
                "%s: %s.grpcSettings: initial_windows_size ignored (vtrio sizes"
                " its own windows)",
                self.source,
                path,
            )
        keepalive = None
        if grpc.idle_timeout > 0:
            keepalive = model.H2Keepalive(
                idle=max(GRPC_MIN_IDLE, grpc.idle_timeout),
                timeout=grpc.health_check_timeout or GRPC_HEALTH_CHECK,
                without_tunnels=grpc.permit_without_stream,
            )
        return model.GrpcSettings(
            service_name=grpc.service_name,
            multi_mode=grpc.multi_mode,
            authority=grpc.authority,
            user_agent=grpc.user_agent,
            keepalive=keepalive,
        )

    def h2(self, http: HttpV2 | None, path: str) -> model.H2Settings:
        """``httpSettings``: v2ray's defaults (host www.example.com, PUT to
        /), the path given its slash as v2ray does."""
        if http is None:
            return model.H2Settings()
        method = http.method or "PUT"
        if not _HTTP_TOKEN.fullmatch(method):
            self.error("expected an HTTP method (a token)", f"{path}.method")
        hosts = tuple(_string_list(http.host)) or model.H2Settings().hosts
        if any(_HTTP_UNSAFE.search(host) for host in hosts):
            self.error("expected host names", f"{path}.host")
        request_path = http.path or "/"
        if _HTTP_UNSAFE.search(request_path):
            self.error("expected a path without spaces", f"{path}.path")
        return model.H2Settings(
            hosts=hosts,
            path=request_path if request_path.startswith("/") else "/" + request_path,
            method=method,
            headers=self.head_headers(http.headers, f"{path}.headers"),
            keepalive=model.H2Keepalive(
                idle=http.read_idle_timeout,
                timeout=http.health_check_timeout or H2_HEALTH_CHECK,
                without_tunnels=True,  # Go's ReadIdleTimeout: any connection
            )
            if http.read_idle_timeout > 0
            else None,
        )

    def domain_socket(self, ds: DomainSocketV2 | None, path: str) -> str:
        """v2ray's ``dsSettings`` as a Unix socket name ("" if invalid)."""
        if ds is None or not ds.path:
            self.error("the domainsocket network needs dsSettings.path", path)
            return ""
        if not ds.abstract:
            return ds.path
        name = ds.path.removeprefix("@")
        return ("@@" if ds.padding else "@") + name

    def http_header(
        self, header: TcpHeaderV2, path: str
    ) -> model.HttpHeaderSettings | Literal[False] | None:
        """``tcpSettings.header``: None for type "none", False if invalid.

        Values a v2ray peer would choke on (a path without its slash, a
        header name that is not a token) are refused here rather than
        producing requests no server accepts.
        """
        kind = header.type.lower()
        if kind == "none":
            return None
        if kind != "http":
            self.error(
                f"unknown TCP header type {header.type!r} (expected none or http)",
                f"{path}.type",
            )
            return False
        errors = len(self.errors)
        request = header.request or HttpRequestV2()
        response = header.response or HttpResponseV2()
        where = f"{path}.request"
        paths = _string_list(request.path) or ["/"]
        for index, value in enumerate(paths):
            if not value.startswith("/") or _HTTP_UNSAFE.search(value):
                self.error(
                    "expected a path starting with / and without spaces",
                    f"{where}.path[{index}]" if len(paths) > 1 else f"{where}.path",
                )
        if request.method and not _HTTP_TOKEN.fullmatch(request.method):
            self.error("expected an HTTP method such as GET", f"{where}.method")
        for section, version in (
            (where, request.version),
            (f"{path}.response", response.version),
        ):
            if version and not _HTTP_VERSION.fullmatch(version):
                self.error("expected an HTTP version such as 1.1", f"{section}.version")
        if response.status and not re.fullmatch(r"[1-9][0-9]{2}", response.status):
            self.error(
                "expected a three-digit HTTP status such as 200",
                f"{path}.response.status",
            )
        if _HTTP_UNSAFE.search(response.reason.replace(" ", "")):
            self.error(
                "expected a reason phrase on one line", f"{path}.response.reason"
            )
        request_headers = self.head_headers(request.headers, f"{where}.headers")
        response_headers = self.head_headers(
            response.headers, f"{path}.response.headers"
        )
        if len(self.errors) > errors:
            return False
        defaults = model.HttpResponseHead()
        return model.HttpHeaderSettings(
            request=model.HttpRequestHead(
                version=request.version or "1.1",
                method=request.method or "GET",
                paths=tuple(paths),
                headers=request_headers or model.DEFAULT_REQUEST_HEADERS,
            ),
            response=model.HttpResponseHead(
                version=response.version or "1.1",
                # v2ray: giving either of status and reason defaults the other.
                status=response.status or defaults.status,
                reason=response.reason or defaults.reason,
                headers=response_headers or model.DEFAULT_RESPONSE_HEADERS,
            ),
        )

    def head_headers(
        self, headers: dict[str, list[str] | str | None] | None, path: str
    ) -> model.HeaderChoices:
        """Configured header choices, in v2ray's order (names sorted)."""
        choices = []
        for name in sorted(headers or {}):
            values = (headers or {})[name]
            if not _HTTP_TOKEN.fullmatch(name):
                self.error("expected an HTTP header name (a token)", f"{path}.{name}")
            elif values is None:
                self.error("empty HTTP header value", f"{path}.{name}")
            elif any(_HTTP_UNSAFE.search(v.replace(" ", "")) for v in values):
                self.error("expected header values on one line", f"{path}.{name}")
            else:
                choices.append((name, tuple(_string_list(values))))
        return tuple(choices)

    def tls(
        self, stream: StreamV2, path: str, *, server: bool
    ) -> model.TLSSettings | None:
        tls = stream.tls_settings
        if tls is None:
            if server:
                self.error("security is tls but tlsSettings has no certificates", path)
                return None
            return model.TLSSettings()
        for name, about in UNSUPPORTED_TLS.items():
            if getattr(tls, name):
                field = _json_name(TlsV2, name)
                self.error(
                    f"{field}{about} is not supported yet, and vtrio will not drop"
                    " it silently",
                    f"{path}.{field}",
                )
                return None
        if tls.fingerprint:
            LOGGER.warning(
                "%s: %s.fingerprint %r is ignored: vtrio's TLS hello is Python's own",
                self.source,
                path,
                tls.fingerprint,
            )
        certificates = []
        for index, cert in enumerate(tls.certificates or []):
            where = f"{path}.certificates[{index}]"
            if cert.usage not in ("encipherment", "verify", "verifyclient", "issue"):
                self.error(
                    "expected encipherment, verify, verifyclient or issue",
                    f"{where}.usage",
                )
                continue
            pem = "\n".join(cert.certificate) if cert.certificate else None
            key = "\n".join(cert.key) if cert.key else None
            if not (cert.certificate_file or pem):
                self.error("a certificate needs certificateFile or certificate", where)
                continue
            if cert.usage == "encipherment" and not (cert.key_file or key):
                self.error("a certificate needs keyFile or key", where)
                continue
            certificates.append(
                model.Certificate(
                    certificate_file=cert.certificate_file,
                    key_file=cert.key_file,
                    certificate_pem=pem,
                    key_pem=key,
                    usage=cast(
                        "Literal['encipherment', 'verify', 'verifyclient', 'issue']",
                        cert.usage,
                    ),
                )
            )
        if server and not any(c.usage == "encipherment" for c in certificates):
            self.error(
                "a TLS server needs a certificate with its key", f"{path}.certificates"
            )
            return None
        chain_field = f"{path}.pinnedPeerCertificateChainSha256"
        pins = self.digests(
            tls.pinned_peer_certificate_chain_sha256 or [],
            _from_base64,
            lambda index: f"{chain_field}[{index}]",
            "the Base64 of a SHA-256 (vtrio cert-hash FILE prints it)",
        )
        cert_pins = self.digests(
            [text.replace(":", "") for text in _as_list(tls.pinned_peer_cert_sha256)],
            bytes.fromhex,
            lambda _: f"{path}.pinnedPeerCertSha256",
            "hex SHA-256s, comma-separated",
        )
        key_field = f"{path}.pinnedPeerCertificatePublicKeySha256"
        key_pins = self.digests(
            tls.pinned_peer_certificate_public_key_sha256 or [],
            _from_base64,
            lambda index: f"{key_field}[{index}]",
            "the Base64 of a SHA-256 of a public key",
        )
        if pins is None or cert_pins is None or key_pins is None:
            return None
        return model.TLSSettings(
            server_name=tls.server_name,
            alpn=tuple(_as_list(tls.alpn)),
            certificates=tuple(certificates),
            allow_insecure=tls.allow_insecure,
            disable_system_root=tls.disable_system_root,
            min_version=tls.min_version,
            max_version=tls.max_version or None,
            cipher_suites=tls.cipher_suites or None,
            pinned_chain_sha256=pins,
            pinned_cert_sha256=cert_pins,
            pinned_key_sha256=key_pins,
            reject_unknown_sni=tls.reject_unknown_sni,
            verify_client_certificate=tls.verify_client_certificate,
            verify_names=tuple(
                dict.fromkeys(
                    name.strip()
                    for name in (
                        *tls.verify_peer_cert_by_name.split(","),
                        *(tls.verify_peer_cert_in_names or []),
                        tls.server_name_to_verify,
                    )
                    if name.strip()
                )
            ),
        )

    def digests(
        self,
        texts: list[str],
        decode: Callable[[str], bytes],
        where: Callable[[int], str],
        expected: str,
    ) -> tuple[bytes, ...] | None:
        """SHA-256 digests written as text (certificate pins), each decoded
        with ``decode``; None after naming the first that is not one (at
        ``where(index)``)."""
        found = []
        for index, text in enumerate(texts):
            try:
                digest = decode(text)
            except ValueError:  # binascii.Error is one
                digest = b""
            if len(digest) != 32:
                self.error(f"expected {expected}, got {text!r}", where(index))
                return None
            found.append(digest)
        return tuple(found)

    def upgrade(
        self, settings: WebSocketV2 | HttpUpgradeV2 | None
    ) -> model.WebSocketSettings:
        """The HTTP upgrade of ``ws`` or ``httpupgrade``."""
        if settings is None:
            return model.WebSocketSettings()
        path, _, query = settings.path.partition("?")
        max_early, header = 0, ""
        if isinstance(settings, WebSocketV2):
            max_early, header = settings.max_early_data, settings.early_data_header_name
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "ed" and value.isdigit():
                # Xray's ?ed=N: early data in Sec-WebSocket-Protocol (ws), or
                # the first payload sent without waiting for the answer.
                max_early, header = int(value), ""
        headers = dict(settings.headers or {})
        host = settings.host or headers.pop("Host", None) or headers.pop("host", None)
        return model.WebSocketSettings(
            path=path or "/",
            host=host,
            headers=tuple(headers.items()),
            max_early_data=max_early,
            early_data_header_name=header,
        )

    # --- cross-field checks -----------------------------------------------------

    def check_dialer_proxies(self, config: model.Config) -> None:
        """Each proxySettings/dialerProxy names an outbound, and no chain of
        them comes back to where it started."""
        via = {o.tag: o.stream.dialer_proxy for o in config.outbounds if o.tag}
        for index, outbound in enumerate(config.outbounds):
            path = self._paths["outbounds"][index]
            seen, tag = [outbound.tag], outbound.stream.dialer_proxy
            while tag:
                if tag not in via:
                    self.error(
                        f"proxySettings/dialerProxy: no outbound is tagged {tag!r}",
                        path,
                    )
                    break
                if tag in seen:
                    chain = " -> ".join([*seen, tag])
                    self.error(f"proxySettings/dialerProxy: {chain} loops", path)
                    break
                seen.append(tag)
                tag = via[tag]

    def check(self, config: model.Config, root: RootV2) -> None:
        if not config.inbounds and not self.errors:
            self.error("a config needs at least one inbound", "$.inbounds")
        for kind, tags in (
            ("inbounds", [i.tag for i in config.inbounds]),
            ("outbounds", [o.tag for o in config.outbounds]),
        ):
            seen: set[str] = set()
            for index, tag in enumerate(tags):
                if tag and tag in seen:
                    self.error(
                        f"tag {tag!r} is used twice", f"{self._paths[kind][index]}.tag"
                    )
                seen.add(tag)
        inbound_tags = {i.tag for i in config.inbounds}
        outbound_tags = {o.tag for o in config.outbounds}
        self.check_dialer_proxies(config)
        balancer_tags = {b.tag for b in config.routing.balancers}
        for path, balancer in zip(
            self._paths["balancers"], config.routing.balancers, strict=True
        ):
            if balancer.fallback_tag and balancer.fallback_tag not in outbound_tags:
                self.error(
                    f"no outbound is tagged {balancer.fallback_tag!r}",
                    f"{path}.fallbackTag",
                )
            elif not balancer.fallback_tag and not any(
                tag.startswith(balancer.selectors) for tag in outbound_tags if tag
            ):
                self.error("no outbound tag starts with a selector", f"{path}.selector")
        for index, rule in enumerate(config.routing.rules):
            path = f"$.routing.rules[{index}]"
            if rule.balancer_tag and rule.balancer_tag not in balancer_tags:
                self.error(
                    f"no balancer is tagged {rule.balancer_tag!r}",
                    f"{path}.balancerTag",
                )
            elif not rule.balancer_tag and rule.outbound_tag not in outbound_tags:
                self.error(
                    f"no outbound is tagged {rule.outbound_tag!r}",
                    f"{path}.outboundTag",
                )
            for tag in sorted(rule.inbound_tags - inbound_tags):
                self.error(f"no inbound is tagged {tag!r}", f"{path}.inboundTag")
            if rule.protocols and not any(i.sniffing for i in config.inbounds):
                LOGGER.warning(
                    "%s: %s.protocol matches sniffed traffic only, and no inbound"
                    " has sniffing enabled",
                    self.source,
                    path,
                )
        for index, inbound in enumerate(config.inbounds):
            settings = inbound.settings
            if (
                not isinstance(settings, model.VMessInboundSettings)
                or not settings.detour_to
            ):
                continue
            path = f"{self._paths['inbounds'][index]}.settings.detour.to"
            try:
                target = config.inbound(settings.detour_to)
            except KeyError:
                self.error(f"no inbound is tagged {settings.detour_to!r}", path)
                continue
            if target.protocol != "vmess":
                self.error(
                    f"detour target {target.tag!r} must be a vmess inbound", path
                )
            elif len(target.ports) < 2:
                self.error(
                    f"detour target {target.tag!r} needs a port range"
                    ' like "10000-10010"',
                    path,
                )
            elif (
                target.allocate.strategy == "random"
                and target.allocate.concurrency >= len(target.ports)
            ):
                self.error(
                    f"detour target {target.tag!r}: allocate.concurrency must be"
                    " less than its number of ports",
                    path,
                )
        del root


# v2ray's spellings of the domain strategies (compared in lower case).
_DOMAIN_STRATEGIES = {
    "asis": "AsIs",
    "ipifnonmatch": "IPIfNonMatch",
    "ip-if-non-match": "IPIfNonMatch",
    "ipondemand": "IPOnDemand",
    "ip-on-demand": "IPOnDemand",
}


def _legacy_first(root: RootV2, kind: str) -> list[tuple[str, Any]]:
    """Inbounds or outbounds with their paths, in v2ray 4's order: v2ray 3's
    single ``inbound``/``outbound`` first (the outbound is then the default),
    then its ``inboundDetour``/``outboundDetour``, then the list; the root's
    ``port`` is the first inbound's when that has none."""
    single = getattr(root, kind)
    entries: list[tuple[str, Any]] = [(f"$.{kind}", single)] if single else []
    entries += [
        (f"$.{kind}Detour[{index}]", entry)
        for index, entry in enumerate(getattr(root, f"{kind}_detour"))
    ]
    entries += [
        (f"$.{kind}s[{index}]", entry)
        for index, entry in enumerate(getattr(root, f"{kind}s"))
    ]
    if kind == "inbound" and root.port and entries and entries[0][1].port is None:
        path, first = entries[0]
        entries[0] = (path, msgspec.structs.replace(first, port=root.port))
    return entries


def _from_base64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _ext_parts(rest: str) -> tuple[str, str]:
    """``file.dat:list`` of an ``ext:`` reference ("" parts when malformed)."""
    name, _, code = rest.partition(":")
    return (name, code) if ":" not in code else ("", "")


def _complement(networks: list[model.IPNetwork]) -> list[model.IPNetwork]:
    """Every network outside ``networks``, in both families."""
    out: list[model.IPNetwork] = []
    for version, last in ((4, 2**32 - 1), (6, 2**128 - 1)):
        ranges = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in networks
            if n.version == version
        )
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        start = 0
        for low, high in [*ranges, (last + 1, last + 1)]:
            if low > start:
                out += ipaddress.summarize_address_range(make(start), make(low - 1))
            start = max(start, high + 1)
    return out


def _json_name(struct: type[msgspec.Struct], name: str) -> str:
    """The JSON spelling of a dialect struct's field."""
    return next(f.encode_name for f in msgspec.structs.fields(struct) if f.name == name)


def _as_list(value: list[str] | str | None) -> list[str]:
    """v2ray's string list: a JSON list, or one string of comma-separated
    items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def _ranges(ports: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Consecutive ports folded back into inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(ports):
        if ranges and ranges[-1][1] == port - 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return tuple(ranges)


def _looks_like_v5_users(raw: msgspec.Raw) -> bool:
    try:
        data: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return False
    users = data.get("users") if isinstance(data, dict) else None
    return isinstance(users, list) and any(isinstance(u, str) for u in users)
