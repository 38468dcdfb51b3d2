"""Routing: which outbound a tunnel takes. A pure function of the config.

Theory of operation: v2ray's field rules are tried in order; a rule matches
when every condition it has matches (inbound tag, user email, source address
and port, domain, IP, port, network, sniffed protocol), and the first match
names the outbound or the balancer that picks one. Domain conditions only
look at domain destinations; IP conditions look at IP destinations, and at
the addresses a domain resolved to when the caller resolved it
(domainStrategy ``IPIfNonMatch`` after a first pass found no rule,
``IPOnDemand`` from the start, when any rule has IPs). No match means the
first outbound.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vtrio.config.model import DomainMatcher, IPNetwork, Routing, RoutingRule
    from vtrio.protocol.address import Address


def _domain_matches(matcher: DomainMatcher, domain: str) -> bool:
    value = matcher.value.lower()
    if matcher.kind == "full":
        return domain == value
    if matcher.kind == "domain":
        return domain == value or domain.endswith("." + value)
    if matcher.kind == "keyword":
        return value in domain
    return matcher.pattern is not None and matcher.pattern.search(domain) is not None


def domain_listed(matchers: Sequence[DomainMatcher], domain: str) -> bool:
    """Whether any matcher takes ``domain`` (compared in lower case)."""
    name = domain.lower().rstrip(".")
    return any(_domain_matches(m, name) for m in matchers)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def _in_ranges(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= port <= high for low, high in ranges)


def split_source(source: str) -> tuple[IPAddress | None, int]:
    """The IP and port of a session's ``host:port`` source (None, 0 if unknown)."""
    host, _, port = source.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None, 0


def _rule_matches(
    rule: RoutingRule,
    inbound_tag: str,
    address: Address,
    port: int,
    network: Literal["tcp", "udp"],
    protocol: str,
    email: str,
    source: str,
    resolved: Sequence[IPAddress],
) -> bool:
    if rule.inbound_tags and inbound_tag not in rule.inbound_tags:
        return False
    if rule.users and email not in rule.users:
        return False
    if rule.source_ips or rule.source_ports:
        source_ip, source_port = split_source(source)
        if rule.source_ips and not (
            source_ip is not None and _in_networks(source_ip, rule.source_ips)
        ):
            return False
        if rule.source_ports and not _in_ranges(source_port, rule.source_ports):
            return False
    if rule.protocols and not (
        protocol and any(protocol.startswith(p) for p in rule.protocols)
    ):
        return False
    if rule.networks and network not in rule.networks:
        return False
    if rule.ports and not _in_ranges(port, rule.ports):
        return False
    if rule.domains and not (
        isinstance(address, str) and domain_listed(rule.domains, address)
    ):
        return False
    if not rule.ips:
        return True
    targets = resolved if isinstance(address, str) else (address,)
    return any(_in_networks(ip, rule.ips) for ip in targets)


def pick_rule(
    routing: Routing,
    *,
    inbound_tag: str,
    address: Address,
    port: int,
    network: Literal["tcp", "udp"],
    protocol: str = "",
    email: str = "",
    source: str = "",
    resolved: Sequence[IPAddress] = (),
) -> RoutingRule | None:
    """The first matching rule, or None for the default outbound.

    Args:
        routing: the config's routing section.
        inbound_tag: tag of the inbound the tunnel came in on.
        address: destination IP or domain.
        port: destination port.
        network: "tcp" or "udp".
        protocol: what sniffing found ("http1", "tls", "bittorrent"), or "".
        email: the VMess user's email, or "".
        source: the client's ``host:port``, or "".
        resolved: the addresses a domain ``address`` resolved to, if it was.
    """
    for rule in routing.rules:
        if _rule_matches(
            rule, inbound_tag, address, port, network, protocol, email, source, resolved
        ):
            return rule
    return None
