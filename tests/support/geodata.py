"""Writes v2ray's geodata files (geosite.dat, geoip.dat) for tests.

Theory of operation: the files are protocol buffers of v2ray's
``routercommon`` messages; this writer is written from the message
definitions alone (field numbers and wire types), independently of the
reader in ``vtrio/config/geodata.py``, and v2ray itself reads what it
writes in the interop suite.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

# routercommon.Domain.Type by the matcher names rules use.
DOMAIN_TYPE = {"keyword": 0, "regexp": 1, "domain": 2, "full": 3}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


Site = tuple[str, str, Sequence[str]]  # kind, value, attribute keys


def geosite_file(lists: Mapping[str, Sequence[Site]]) -> bytes:
    """A GeoSiteList: each code with its domains (kind, value, attributes)."""
    entries = b""
    for code, sites in lists.items():
        entry = _bytes_field(1, code.encode())
        for kind, value, attributes in sites:
            domain = _int_field(1, DOMAIN_TYPE[kind]) if DOMAIN_TYPE[kind] else b""
            domain += _bytes_field(2, value.encode())
            for key in attributes:  # an Attribute with bool_value true
                domain += _bytes_field(
                    3, _bytes_field(1, key.encode()) + _int_field(2, 1)
                )
            entry += _bytes_field(2, domain)
        entries += _bytes_field(1, entry)
    return entries


def geoip_file(lists: Mapping[str, Sequence[str]]) -> bytes:
    """A GeoIPList: each code with its CIDRs."""
    entries = b""
    for code, cidrs in lists.items():
        entry = _bytes_field(1, code.encode())
        for text in cidrs:
            network = ipaddress.ip_network(text)
            cidr = _bytes_field(1, network.network_address.packed)
            cidr += _int_field(2, network.prefixlen)
            entry += _bytes_field(2, cidr)
        entries += _bytes_field(1, entry)
    return entries
