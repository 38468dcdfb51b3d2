"""Routing with large geodata lists; prints a table.

Run: ``python bench/routing.py``. It writes a geosite list of N domains
(85 % ``domain:``, 14.7 % ``full:``, 0.2 % keywords, 0.1 % regular
expressions: mostly names, as in domain-list-community's lists; keywords
and expressions are tried one by one, names and suffixes looked up in sets)
and a geoip list of N/4
CIDRs into a temporary directory, then measures

* milliseconds to load a config whose two rules name them;
* microseconds per routing decision (``Router.pick``) for a domain that
  matches nothing (every rule tried: the worst case), a name below a listed
  ``domain:``, and an IP address, against the same rules held as plain
  lists of matchers tried one by one (what routing did before the index).

This is a script, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.geodata import geoip_file, geosite_file
from vtrio.config import loads
from vtrio.routing import Router

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.config.model import DomainMatcher, IPNetwork, Routing

SIZES = (1_000, 10_000, 70_000)
LOOKUPS = 2_000


def synthetic_lists(size: int, rng: random.Random) -> tuple[bytes, bytes]:
    def name() -> str:
        return ".".join(
            "".join(
                rng.choices(
                    "abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(3, 10)
                )
            )
            for _ in range(rng.randint(1, 2))
        ) + rng.choice([".cn", ".com", ".net", ".org"])

    sites = []
    for index in range(size):
        share = index % 1000
        if share < 850:
            sites.append(("domain", name(), ()))
        elif share < 997:
            sites.append(("full", name(), ()))
        elif share < 999:
            sites.append(("keyword", name().split(".")[0], ()))
        else:
            sites.append(("regexp", rf"^{re.escape(name().split('.')[0])}\d*\.", ()))
    cidrs = [
        str(ipaddress.ip_network((rng.getrandbits(32) & ~0xFF, 24)))
        for _ in range(size // 4)
    ]
    return geosite_file({"BIG": sites}), geoip_file({"BIG": cidrs})


def naive_pick(
    domains: list[DomainMatcher], networks: list[IPNetwork], target: object
) -> bool:
    """The matchers tried one by one."""
    if not isinstance(target, str):
        return any(target in n for n in networks)
    for m in domains:
        value = m.value
        if m.kind == "full":
            found = target == value
        elif m.kind == "domain":
            found = target == value or target.endswith("." + value)
        elif m.kind == "keyword":
            found = value in target
        else:
            found = m.pattern is not None and m.pattern.search(target) is not None
        if found:
            return True
    return False


def per_call(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(LOOKUPS):
        function()
    return (time.perf_counter() - start) / LOOKUPS * 1e6


def main() -> None:
    rng = random.Random(7)
    header = ("entries", "load ms", "case", "indexed us", "one by one us")
    print("{:>8} {:>8} {:<22} {:>10} {:>13}".format(*header))
    for size in SIZES:
        sites, ips = synthetic_lists(size, rng)
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "geosite.dat").write_bytes(sites)
            (Path(directory) / "geoip.dat").write_bytes(ips)
            rules = [
                {"type": "field", "domain": ["geosite:big"], "outboundTag": "direct"},
                {"type": "field", "ip": ["geoip:big"], "outboundTag": "direct"},
            ]
            text = json.dumps(
                {
                    "inbounds": [{"protocol": "socks", "port": 1080}],
                    "outbounds": [{"protocol": "freedom", "tag": "direct"}],
                    "routing": {"rules": rules},
                }
            )
            start = time.perf_counter()
            config = loads(text, environ={"V2RAY_LOCATION_ASSET": directory})
            load_ms = (time.perf_counter() - start) * 1e3
        report(size, load_ms, config.routing)


def report(size: int, load_ms: float, routing: Routing) -> None:
    router = Router(routing)
    domain_rule, ip_rule = routing.rules
    domains, networks = list(domain_rule.domains), list(ip_rule.ips)
    # The last listed name: the one a scan reaches last.
    listed = [m.value for m in domains if m.kind == "domain"][-1]
    cases = {
        "unlisted domain": "nothing-here.example",
        "below a listed domain": f"www.{listed}",
        "IP address": ipaddress.ip_address("203.0.113.9"),
    }
    for label, target in cases.items():
        pick = functools.partial(
            router.pick, inbound_tag="", address=target, port=443, network="tcp"
        )
        indexed = per_call(pick)
        naive = per_call(functools.partial(naive_pick, domains, networks, target))
        print(f"{size:>8} {load_ms:>8.0f} {label:<22} {indexed:>10.1f} {naive:>13.0f}")


if __name__ == "__main__":
    main()
