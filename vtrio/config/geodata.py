"""v2ray's geodata files: the domain lists of ``geosite.dat`` and the address
lists of ``geoip.dat``, for ``geosite:``, ``geoip:`` and ``ext:`` in rules.

Theory of operation: both files are protocol buffers (v2ray's
``routercommon`` messages): a list of entries, each a code ("CN", "GOOGLE")
and its domains or CIDRs. Only the entries a config names are decoded; the
others are skipped by their length, so a large file costs a scan of its
top level. Files are looked up as v2ray and Xray do, in the directory their
environment variables name, then beside the config and in the usual system
places. Nothing here knows the model: callers get plain tuples.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from vtrio.protocol import protobuf

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

# Where v2ray and Xray read their assets from, in order, after the config's
# own directory.
ASSET_VARIABLES = (
    "v2ray.location.asset",
    "V2RAY_LOCATION_ASSET",
    "XRAY_LOCATION_ASSET",
)
ASSET_DIRECTORIES = (
    "/usr/local/share/v2ray",
    "/usr/share/v2ray",
    "/usr/local/share/xray",
    "/usr/share/xray",
)
# routercommon.Domain.Type, to the domain matcher kinds of a rule.
DOMAIN_TYPES = {0: "keyword", 1: "regexp", 2: "domain", 3: "full"}


class GeodataError(ValueError):
    """A file that is missing, unreadable or lacks the list asked for."""


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """The (field number, value) pairs of one message; lengths give views."""
    try:
        yield from protobuf.fields(data)
    except protobuf.ProtobufError as exc:
        raise GeodataError(str(exc)) from exc


def _entry(data: bytes, code: str) -> memoryview | None:
    """The entry (GeoSite or GeoIP) whose country_code is ``code``, any case."""
    wanted = code.upper()
    for number, entry in _fields(memoryview(data)):
        if number != 1 or isinstance(entry, int):
            continue
        for field, value in _fields(entry):
            if field == 1 and not isinstance(value, int):
                if bytes(value).decode("utf-8", "replace").upper() == wanted:
                    return entry
                break
    return None


def read_sites(
    data: bytes, code: str, attributes: Sequence[str] = ()
) -> list[tuple[str, str]] | None:
    """The (matcher kind, value) pairs of list ``code``, keeping only domains
    that carry every attribute in ``attributes``; None if there is no list.

    Raises:
        GeodataError: the file is not a geosite list.
    """
    entry = _entry(data, code)
    if entry is None:
        return None
    wanted = {a.lower() for a in attributes}
    sites = []
    for field, domain in _fields(entry):
        if field != 2 or isinstance(domain, int):
            continue
        kind, value, keys = 0, "", set()
        for number, part in _fields(domain):
            if number == 1 and isinstance(part, int):
                kind = part
            elif number == 2 and not isinstance(part, int):
                value = bytes(part).decode("utf-8", "replace")
            elif number == 3 and not isinstance(part, int):
                keys |= {
                    bytes(key).decode("utf-8", "replace").lower()
                    for n, key in _fields(part)
                    if n == 1 and not isinstance(key, int)
                }
        if kind in DOMAIN_TYPES and value and wanted <= keys:
            sites.append((DOMAIN_TYPES[kind], value))
    return sites


def read_networks(
    data: bytes, code: str
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The CIDRs of list ``code``; None if there is no list.

    Raises:
        GeodataError: the file is not a geoip list.
    """
    entry = _entry(data, code)
    if entry is None:
        return None
    networks = []
    for field, cidr in _fields(entry):
        if field != 2 or isinstance(cidr, int):
            continue
        ip, prefix = b"", 0
        for number, part in _fields(cidr):
            if number == 1 and not isinstance(part, int):
                ip = bytes(part)
            elif number == 2 and isinstance(part, int):
                prefix = part
        if len(ip) not in (4, 16):
            raise GeodataError(f"a CIDR of {len(ip)} address bytes")
        try:
            networks.append(
                ipaddress.ip_network((ipaddress.ip_address(ip), prefix), strict=False)
            )
        except ValueError as exc:
            raise GeodataError(str(exc)) from None
    return networks


def find_asset(name: str, environ: Mapping[str, str], config_dir: str | None) -> Path:
    """The file ``name`` where v2ray or Xray would find it.

    Raises:
        GeodataError: it is in none of those places.
    """
    places = [environ[v] for v in ASSET_VARIABLES if environ.get(v)]
    if config_dir:
        places.append(config_dir)
    places += ASSET_DIRECTORIES
    for place in places:
        path = Path(place) / name
        if path.is_file():
            return path
    raise GeodataError(
        f"{name} not found (looked in {', '.join(places)};"
        " V2RAY_LOCATION_ASSET or XRAY_LOCATION_ASSET names its directory)"
    )


def asset_bytes(path: Path) -> bytes:
    """The whole file.

    Raises:
        GeodataError: it cannot be read.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GeodataError(f"cannot read {path}: {exc.strerror or exc}") from None
