"""Routing: which outbound a tunnel takes. A pure function of the config.

Theory of operation: v2ray's field rules are tried in order; a rule matches
when every condition it has matches (inbound tag, user email, source and
local address and port, domain, IP, port, network, sniffed protocol), and
the first match names the outbound or the balancer that picks one. Domain
conditions only look at domain destinations; IP conditions look at IP
destinations, and at the addresses a domain resolved to when the caller
resolved it (domainStrategy ``IPIfNonMatch`` after a first pass found no
rule, ``IPOnDemand`` from the start, when any rule has IPs). No match means
the first outbound. Each rule's domains and networks are indexed once (sets
of full names and suffixes, sorted address ranges), so a geosite or geoip
list of many thousand entries costs a few lookups per tunnel, not a scan.
"""

from __future__ import annotations

import bisect
import ipaddress
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vtrio.config.model import DomainMatcher, IPNetwork, Routing, RoutingRule
    from vtrio.protocol.address import Address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DomainIndex:
    """A list of domain matchers, as sets where the kind allows."""

    __slots__ = ("full", "keywords", "patterns", "suffixes")

    def __init__(self, matchers: Sequence[DomainMatcher]) -> None:
        by_kind: dict[str, list[DomainMatcher]] = {}
        for matcher in matchers:
            by_kind.setdefault(matcher.kind, []).append(matcher)
        self.full = frozenset(m.value.lower() for m in by_kind.get("full", ()))
        self.suffixes = frozenset(m.value.lower() for m in by_kind.get("domain", ()))
        self.keywords = tuple(m.value.lower() for m in by_kind.get("keyword", ()))
        self.patterns = tuple(m.pattern for m in by_kind.get("regexp", ()) if m.pattern)

    def __contains__(self, domain: str) -> bool:
        """Whether any matcher takes ``domain`` (compared in lower case)."""
        name = domain.lower().rstrip(".")
        if name in self.full:
            return True
        if self.suffixes:
            # "domain:" takes the name itself and every name below it.
            dot = -1
            while True:
                if name[dot + 1 :] in self.suffixes:
                    return True
                dot = name.find(".", dot + 1)
                if dot < 0:
                    break
        return any(k in name for k in self.keywords) or any(
            p.search(name) for p in self.patterns
        )


class NetworkIndex:
    """A list of networks as merged, sorted address ranges per family."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for version in (4, 6):
            ranges = sorted(
                (int(n.network_address), int(n.broadcast_address))
                for n in networks
                if n.version == version
            )
            starts, ends = self._starts[version], self._ends[version]
            for low, high in ranges:
                if ends and low <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], high)
                else:
                    starts.append(low)
                    ends.append(high)

    def __contains__(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        value = int(ip)
        starts = self._starts[ip.version]
        index = bisect.bisect_right(starts, value) - 1
        return index >= 0 and value <= self._ends[ip.version][index]


def _in_ranges(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= port <= high for low, high in ranges)


def split_source(source: str) -> tuple[IPAddress | None, int]:
    """The IP and port of a session's ``host:port`` source (None, 0 if unknown)."""
    host, _, port = source.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None, 0


def _endpoint_matches(
    name: str, ips: NetworkIndex | None, ports: Sequence[tuple[int, int]]
) -> bool:
    """Whether a ``host:port`` is in ``ips`` and ``ports`` (either may be unset)."""
    if ips is None and not ports:
        return True
    ip, port = split_source(name)
    if ips is not None and (ip is None or ip not in ips):
        return False
    return not ports or _in_ranges(port, ports)


class _IndexedRule:
    __slots__ = ("domains", "ips", "local_ips", "rule", "source_ips")

    def __init__(self, rule: RoutingRule) -> None:
        self.rule = rule
        self.domains = DomainIndex(rule.domains) if rule.domains else None
        self.ips = NetworkIndex(rule.ips) if rule.ips else None
        self.source_ips = NetworkIndex(rule.source_ips) if rule.source_ips else None
        self.local_ips = NetworkIndex(rule.local_ips) if rule.local_ips else None

    def matches(
        self,
        inbound_tag: str,
        address: Address,
        port: int,
        network: Literal["tcp", "udp"],
        protocol: str,
        email: str,
        source: str,
        local: str,
        resolved: Sequence[IPAddress],
    ) -> bool:
        rule = self.rule
        if rule.inbound_tags and inbound_tag not in rule.inbound_tags:
            return False
        if rule.users and email not in rule.users:
            return False
        if not _endpoint_matches(source, self.source_ips, rule.source_ports):
            return False
        if not _endpoint_matches(local, self.local_ips, rule.local_ports):
            return False
        if rule.protocols and not (
            protocol and any(protocol.startswith(p) for p in rule.protocols)
        ):
            return False
        if rule.networks and network not in rule.networks:
            return False
        if rule.ports and not _in_ranges(port, rule.ports):
            return False
        if self.domains is not None and not (
            isinstance(address, str) and address in self.domains
        ):
            return False
        if self.ips is None:
            return True
        targets = resolved if isinstance(address, str) else (address,)
        return any(ip in self.ips for ip in targets)


class Router:
    """The routing section with each rule's lists indexed, built once."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self._rules = [_IndexedRule(rule) for rule in routing.rules]

    def pick(
        self,
        *,
        inbound_tag: str,
        address: Address,
        port: int,
        network: Literal["tcp", "udp"],
        protocol: str = "",
        email: str = "",
        source: str = "",
        local: str = "",
        resolved: Sequence[IPAddress] = (),
    ) -> RoutingRule | None:
        """The first matching rule, or None for the default outbound.

        Args:
            inbound_tag: tag of the inbound the tunnel came in on.
            address: destination IP or domain.
            port: destination port.
            network: "tcp" or "udp".
            protocol: what sniffing found ("http1", "tls", "bittorrent"), or "".
            email: the VMess user's email, or "".
            source: the client's ``host:port``, or "".
            local: the ``host:port`` the connection came in on, or "".
            resolved: the addresses a domain ``address`` resolved to, if it was.
        """
        for indexed in self._rules:
            if indexed.matches(
                inbound_tag,
                address,
                port,
                network,
                protocol,
                email,
                source,
                local,
                resolved,
            ):
                return indexed.rule
        return None
