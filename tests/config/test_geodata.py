"""geosite:/geoip:/ext: in rules, read from v2ray's geodata files: the
lists and attributes a rule names, the places a file is looked for, and one
clear error for each way a reference can be wrong."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.config.test_upstream_forms import document, errors
from tests.support.geodata import Site, geoip_file, geosite_file
from vtrio.config import geodata, load, loads, model
from vtrio.errors import ConfigErrors

if TYPE_CHECKING:
    from pathlib import Path

SITES: dict[str, list[Site]] = {
    "CN": [
        ("domain", "example.cn", ()),
        ("full", "www.example.com", ("cn",)),
        ("keyword", "baidu", ("cn", "ads")),
        ("regexp", r"^cdn\d+\.example$", ()),
    ],
    "GOOGLE": [("domain", "google.com", ())],
}
IPS = {"CN": ["1.0.1.0/24", "2001:250::/35"], "LOOP2": ["127.0.0.2/32"]}


@pytest.fixture
def assets(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "geosite.dat").write_bytes(geosite_file(SITES))
    (tmp_path / "geoip.dat").write_bytes(geoip_file(IPS))
    (tmp_path / "custom.dat").write_bytes(geosite_file({"mine": SITES["GOOGLE"]}))
    return {"V2RAY_LOCATION_ASSET": str(tmp_path)}


def rule_with(environ: dict[str, str], **condition: Any) -> model.RoutingRule:
    rule = {"type": "field", "outboundTag": "direct", **condition}
    config = loads(document(routing={"rules": [rule]}), environ=environ)
    (loaded,) = config.routing.rules
    return loaded


def test_geosite_lists_become_matchers_of_their_kinds(assets: dict[str, str]) -> None:
    rule = rule_with(assets, domain=["geosite:cn"])
    assert [(m.kind, m.value) for m in rule.domains] == [
        ("domain", "example.cn"),
        ("full", "www.example.com"),
        ("keyword", "baidu"),
        ("regexp", r"^cdn\d+\.example$"),
    ]
    assert rule.domains[3].pattern is not None


@pytest.mark.parametrize(
    ("reference", "values"),
    [
        ("geosite:cn@cn", ["www.example.com", "baidu"]),
        ("geosite:CN@cn@ads", ["baidu"]),  # every attribute, any case
        ("ext:custom.dat:mine", ["google.com"]),
        ("ext-domain:custom.dat:MINE", ["google.com"]),
    ],
)
def test_attributes_and_external_files(
    assets: dict[str, str], reference: str, values: list[str]
) -> None:
    rule = rule_with(assets, domain=[reference])
    assert [m.value for m in rule.domains] == values


def test_geoip_lists_and_their_inverse(assets: dict[str, str]) -> None:
    rule = rule_with(assets, ip=["geoip:cn", "ext:geoip.dat:loop2"])
    assert rule.ips == (
        ipaddress.ip_network("1.0.1.0/24"),
        ipaddress.ip_network("2001:250::/35"),
        ipaddress.ip_network("127.0.0.2/32"),
    )
    inverse = rule_with(assets, ip=["geoip:!cn"])
    inside = ("1.0.1.9", "2001:250::1")
    outside = ("1.0.0.255", "1.0.2.0", "8.8.8.8", "::1", "2001:250:2000::1")
    for text in inside + outside:
        address = ipaddress.ip_address(text)
        covered = any(address in network for network in inverse.ips)
        assert covered is (text in outside), text


def test_private_needs_no_file() -> None:
    rule = rule_with({}, ip=["geoip:private"])
    assert ipaddress.ip_network("192.168.0.0/16") in rule.ips


def test_the_config_directory_is_looked_in(tmp_path: Path) -> None:
    (tmp_path / "geosite.dat").write_bytes(geosite_file(SITES))
    path = tmp_path / "config.json"
    rule = {"type": "field", "outboundTag": "direct", "domain": ["geosite:google"]}
    path.write_text(document(routing={"rules": [rule]}))
    config = load([str(path)], environ={})
    assert config.routing.rules[0].domains == (
        model.DomainMatcher("domain", "google.com"),
    )


def test_each_bad_reference_gets_its_own_error(
    assets: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken.dat").write_bytes(b"\x0a\xff\xff")  # a length past the end
    rule = {
        "type": "field",
        "outboundTag": "direct",
        "domain": [
            "geosite:nosuchlist",
            "ext:missing.dat:x",
            "ext:custom.dat",
            "ext:broken.dat:x",
            "dotless:a.b",
        ],
        "ip": ["geoip:zz"],
    }
    text = document(routing={"rules": [rule]})
    with pytest.raises(ConfigErrors) as info:
        loads(text, source="t.json", environ=assets)
    found = [(e.path, e.message) for e in info.value.errors]
    paths = [path for path, _ in found]
    assert paths == [f"$.routing.rules[0].domain[{i}]" for i in range(5)] + [
        "$.routing.rules[0].ip[0]"
    ]
    messages = [message for _, message in found]
    assert messages[0] == "geosite.dat has no list 'nosuchlist'"
    assert messages[1].startswith("missing.dat not found (looked in ")
    assert messages[2] == "expected ext:file.dat:list"
    assert messages[3].startswith("broken.dat: ")
    assert "dot" in messages[4]
    assert messages[5] == "geoip.dat has no list 'zz'"


def test_without_files_the_error_says_where_it_looked() -> None:
    rule = {"type": "field", "outboundTag": "direct", "domain": ["geosite:cn"]}
    ((path, message),) = errors(
        json.dumps(json.loads(document(routing={"rules": [rule]})))
    )
    assert path == "$.routing.rules[0].domain[0]"
    assert "geosite.dat not found" in message
    assert "V2RAY_LOCATION_ASSET" in message


kinds = st.sampled_from(["keyword", "regexp", "domain", "full"])
names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
attributes = st.lists(st.sampled_from(["cn", "ads", "!cn"]), max_size=2, unique=True)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9-]{0,8}", fullmatch=True),
        st.lists(st.tuples(kinds, names, attributes), max_size=8),
        max_size=4,
    ),
    attributes,
)
def test_sites_read_back_as_written(
    lists: dict[str, list[tuple[str, str, list[str]]]], wanted: list[str]
) -> None:
    data = geosite_file(lists)
    for code, sites in lists.items():
        expected = [(k, v) for k, v, attrs in sites if set(wanted) <= set(attrs)]
        assert geodata.read_sites(data, code.lower(), wanted) == expected
    assert geodata.read_sites(data, "absent-code-") is None


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z]{2}", fullmatch=True),
        st.lists(
            st.ip_addresses().map(lambda ip: f"{ip}/{ip.max_prefixlen}"), max_size=6
        ),
        max_size=3,
    )
)
def test_networks_read_back_as_written(lists: dict[str, list[str]]) -> None:
    data = geoip_file(lists)
    for code, cidrs in lists.items():
        assert geodata.read_networks(data, code) == [
            ipaddress.ip_network(c) for c in cidrs
        ]


@given(st.binary(max_size=200))
def test_any_bytes_give_lists_or_a_geodata_error(data: bytes) -> None:
    for read in (geodata.read_sites, geodata.read_networks):
        with contextlib.suppress(geodata.GeodataError):
            read(data, "CN")
