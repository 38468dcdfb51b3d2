"""Routing: field rules choose the outbound; the first outbound otherwise."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.config import model
from vtrio.routing import DomainIndex, NetworkIndex, Router


def pick_outbound(routing: model.Routing, **fields: Any) -> str | None:
    rule = Router(routing).pick(**fields)
    return None if rule is None else rule.outbound_tag


RULES = model.Routing(
    rules=(
        model.RoutingRule(
            "by-inbound", inbound_tags=frozenset({"socks-in"}), ports=((25, 25),)
        ),
        model.RoutingRule(
            "by-domain",
            domains=(
                model.DomainMatcher("full", "exact.example"),
                model.DomainMatcher("domain", "suffix.example"),
                model.DomainMatcher("keyword", "tracker"),
                model.DomainMatcher("regexp", r"^cdn\d+\.", re.compile(r"^cdn\d+\.")),
            ),
        ),
        model.RoutingRule(
            "by-ip",
            ips=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
        ),
        model.RoutingRule(
            "by-port-udp", ports=((53, 53), (5000, 5010)), networks=frozenset({"udp"})
        ),
    )
)


@pytest.mark.parametrize(
    ("inbound", "address", "port", "network", "expected"),
    [
        ("socks-in", "mail.example", 25, "tcp", "by-inbound"),
        ("http-in", "mail.example", 25, "tcp", None),
        ("any", "exact.example", 443, "tcp", "by-domain"),
        ("any", "sub.exact.example", 443, "tcp", None),
        ("any", "suffix.example", 443, "tcp", "by-domain"),
        ("any", "a.b.suffix.example", 443, "tcp", "by-domain"),
        ("any", "notsuffix.example", 443, "tcp", None),
        ("any", "my-tracker.net", 80, "tcp", "by-domain"),
        ("any", "cdn42.example.org", 80, "tcp", "by-domain"),
        ("any", "EXACT.example.", 443, "tcp", "by-domain"),
        ("any", ipaddress.ip_address("10.1.2.3"), 443, "tcp", "by-ip"),
        ("any", ipaddress.ip_address("::ffff:10.1.2.3"), 443, "tcp", "by-ip"),
        ("any", ipaddress.ip_address("fd12::1"), 443, "tcp", "by-ip"),
        ("any", ipaddress.ip_address("11.0.0.1"), 443, "tcp", None),
        ("any", "10.example", 53, "udp", "by-port-udp"),
        ("any", "10.example", 53, "tcp", None),
        ("any", "host", 5005, "udp", "by-port-udp"),
    ],
)
def test_first_matching_rule_wins(
    inbound: str,
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    network: str,
    expected: str | None,
) -> None:
    assert (
        pick_outbound(
            RULES,
            inbound_tag=inbound,
            address=address,
            port=port,
            network=network,
        )
        == expected
    )


SNIFFED_RULES = model.Routing(
    rules=(
        model.RoutingRule("by-user", users=frozenset({"a@example.com"})),
        model.RoutingRule("by-protocol", protocols=("bittorrent", "http")),
        model.RoutingRule(
            "tls-to-port",
            protocols=("tls",),
            ports=((8443, 8443),),
        ),
    )
)


@pytest.mark.parametrize(
    ("protocol", "email", "port", "expected"),
    [
        ("", "a@example.com", 443, "by-user"),
        ("tls", "A@example.com", 443, None),  # emails compare exactly
        ("bittorrent", "", 6881, "by-protocol"),
        ("http1", "", 80, "by-protocol"),  # a prefix, as in v2ray
        ("", "", 80, None),  # nothing sniffed: no protocol rule matches
        ("tls", "", 8443, "tls-to-port"),
        ("tls", "", 443, None),
    ],
)
def test_rules_on_user_and_sniffed_protocol(
    protocol: str, email: str, port: int, expected: str | None
) -> None:
    found = pick_outbound(
        SNIFFED_RULES,
        inbound_tag="in",
        address="example.com",
        port=port,
        network="tcp",
        protocol=protocol,
        email=email,
    )
    assert found == expected


SOURCE_RULES = model.Routing(
    rules=(
        model.RoutingRule("lan", source_ips=(ipaddress.ip_network("192.168.0.0/16"),)),
        model.RoutingRule("high-port", source_ports=((50000, 65535),)),
    )
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("192.168.1.9:1234", "lan"),
        ("[::ffff:192.168.1.9]:1234", "lan"),
        ("10.0.0.1:1234", None),
        ("10.0.0.1:50001", "high-port"),
        ("[2001:db8::1]:60000", "high-port"),
        ("?", None),  # unknown source: no source rule matches
    ],
)
def test_rules_on_the_source_address_and_port(
    source: str, expected: str | None
) -> None:
    found = pick_outbound(
        SOURCE_RULES,
        inbound_tag="in",
        address="example.com",
        port=443,
        network="tcp",
        source=source,
    )
    assert found == expected


def test_ip_rules_see_a_domains_resolved_addresses_when_given() -> None:
    private = model.Routing(
        rules=(model.RoutingRule("block", ips=(ipaddress.ip_network("127.0.0.0/8"),)),)
    )
    loopback = (ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1"))
    public = (ipaddress.ip_address("93.184.215.14"),)
    for resolved, expected in [((), None), (public, None), (loopback, "block")]:
        found = pick_outbound(
            private,
            inbound_tag="in",
            address="localhost",
            port=80,
            network="tcp",
            resolved=resolved,
        )
        assert found == expected, resolved


def naive_domain_match(matcher: model.DomainMatcher, domain: str) -> bool:
    """v2ray's meaning of each kind, one matcher at a time."""
    name, value = domain.lower().rstrip("."), matcher.value.lower()
    if matcher.kind == "full":
        return name == value
    if matcher.kind == "domain":
        return name == value or name.endswith("." + value)
    if matcher.kind == "keyword":
        return value in name
    return matcher.pattern is not None and matcher.pattern.search(name) is not None


labels = st.sampled_from(["a", "b", "ab", "cdn1", "example", "com"])
domain_names = st.lists(labels, min_size=1, max_size=4).map(".".join)
matchers = st.one_of(
    st.builds(
        model.DomainMatcher,
        st.sampled_from(["full", "domain", "keyword"]),
        domain_names,
    ),
    st.sampled_from([r"^cdn\d", r"b\.com$", r"^a$"]).map(
        lambda p: model.DomainMatcher("regexp", p, re.compile(p))
    ),
)


@given(st.lists(matchers, max_size=12), domain_names)
def test_the_domain_index_agrees_with_each_matcher_alone(
    listed: list[model.DomainMatcher], domain: str
) -> None:
    expected = any(naive_domain_match(m, domain) for m in listed)
    assert (domain in DomainIndex(listed)) is expected


networks = st.ip_addresses().flatmap(
    lambda ip: st.integers(0, ip.max_prefixlen).map(
        lambda prefix: ipaddress.ip_network((ip, prefix), strict=False)
    )
)


@given(st.lists(networks, max_size=12), st.ip_addresses())
def test_the_network_index_agrees_with_each_network_alone(
    listed: list[model.IPNetwork],
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # An IPv4-mapped IPv6 address is routed as its IPv4 address.
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    target = plain or ip
    expected = any(target.version == n.version and target in n for n in listed)
    assert (ip in NetworkIndex(listed)) is expected


def test_local_port_rules_read_the_inbound_address() -> None:
    rules = model.Routing(
        rules=(model.RoutingRule("tls-port", local_ports=((443, 443),)),)
    )
    router = Router(rules)
    for local, expected in [
        ("127.0.0.1:443", "tls-port"),
        ("[::1]:443", "tls-port"),
        ("127.0.0.1:80", None),
        ("", None),
    ]:
        rule = router.pick(
            inbound_tag="in", address="example.com", port=1, network="tcp", local=local
        )
        assert (rule.outbound_tag if rule else None) == expected, local
