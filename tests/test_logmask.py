"""log.maskAddress: the addresses in log lines cut as Xray cuts them, in the
access and error logs, and nothing else in a line touched."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.cli import _setup_logging
from vtrio.config import loads
from vtrio.errors import ConfigErrors
from vtrio.logmask import AddressMask

if TYPE_CHECKING:
    from pathlib import Path

LINE = "from [2001:db8:aa:bb::7]:40000 accepted tcp:203.0.113.9:443 [in -> out] v4.34 12:30:45"


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        ((16, 32), "from [2001:db8::/32]:40000 accepted tcp:203.0.*.*:443"),
        ((8, 16), "from [2001::/16]:40000 accepted tcp:203.*.*.*:443"),
        ((0, 0), "from [[Masked IPv6]]:40000 accepted tcp:[Masked IPv4]:443"),
        ((24, 64), "from [2001:db8:aa:bb::/64]:40000 accepted tcp:203.0.113.*:443"),
        ((32, 128), "from [2001:db8:aa:bb::7]:40000 accepted tcp:203.0.113.9:443"),
    ],
)
def test_levels_and_custom_bits(bits: tuple[int, int], expected: str) -> None:
    masked = AddressMask(*bits).mask(LINE)
    assert masked == expected + " [in -> out] v4.34 12:30:45"
    assert AddressMask(*bits).mask(masked) == masked  # a second handler: unchanged


def expected_mask(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: tuple[int, int]
) -> str:
    """Xray's documented forms, from the address alone."""
    if address.version == 4:
        kept = bits[0] // 8
        octets = str(address).split(".")
        return ".".join(octets[:kept] + ["*"] * (4 - kept)) if kept else "[Masked IPv4]"
    if not bits[1]:
        return "[Masked IPv6]"
    return str(ipaddress.IPv6Network((address, bits[1]), strict=False))


@given(st.ip_addresses(), st.sampled_from([(16, 32), (8, 16), (0, 0), (24, 64)]))
def test_every_address_becomes_its_documented_mask(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: tuple[int, int]
) -> None:
    # As vtrio writes a source: an IPv6 address in brackets before its port.
    source = f"[{address}]:1" if address.version == 6 else f"{address}:1"
    masked = AddressMask(*bits).mask(f"from {source} accepted")
    shown = expected_mask(address, bits)
    wanted = f"[{shown}]:1" if address.version == 6 else f"{shown}:1"
    assert masked == f"from {wanted} accepted"


@pytest.mark.parametrize(
    ("given_mask", "expected"),
    [("quarter", (16, 32)), ("half", (8, 16)), ("full", (0, 0)), ("/24+/48", (24, 48))],
)
def test_config_levels(given_mask: str, expected: tuple[int, int]) -> None:
    text = json.dumps(
        {
            "log": {"maskAddress": given_mask},
            "inbounds": [{"protocol": "socks", "port": 1080}],
            "outbounds": [{"protocol": "freedom"}],
        }
    )
    assert loads(text, environ={}).log.mask_address == expected


@pytest.mark.parametrize("given_mask", ["most", "/12+/32", "/16+/129", "/16"])
def test_config_errors(given_mask: str) -> None:
    text = json.dumps(
        {
            "log": {"maskAddress": given_mask},
            "inbounds": [{"protocol": "socks", "port": 1080}],
            "outbounds": [{"protocol": "freedom"}],
        }
    )
    with pytest.raises(ConfigErrors) as info:
        loads(text, environ={})
    ((error),) = info.value.errors
    assert error.path == "$.log.maskAddress"


def test_both_logs_are_masked(tmp_path: Path) -> None:
    access_path, error_path = tmp_path / "access.log", tmp_path / "error.log"
    text = json.dumps(
        {
            "log": {
                "maskAddress": "quarter",
                "access": str(access_path),
                "error": str(error_path),
                "loglevel": "info",
            },
            "inbounds": [{"protocol": "socks", "port": 1080}],
            "outbounds": [{"protocol": "freedom"}],
        }
    )
    config = loads(text, environ={})
    root = logging.getLogger()
    access = logging.getLogger("vtrio.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate)
    try:
        _setup_logging(config.log, None)
        access.info("from %s:%d closed tcp:%s:443", "198.51.100.23", 50000, "192.0.2.1")
        logging.getLogger("vtrio.net.inbound").info(
            "%s rejected: bad auth", "198.51.100.23:1"
        )
        for handler in root.handlers + access.handlers:
            handler.flush()
    finally:
        for handler in root.handlers + access.handlers:
            handler.close()
        root.handlers[:], access.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        access.propagate = saved[3]
    assert "from 198.51.*.*:50000 closed tcp:192.0.*.*:443" in access_path.read_text()
    assert "198.51.*.*:1 rejected: bad auth" in error_path.read_text()
    assert "198.51.100.23" not in access_path.read_text() + error_path.read_text()
