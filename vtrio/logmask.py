"""Xray's ``log.maskAddress``: IP addresses in log lines cut to a prefix, so
logs can be shared without the addresses of the people in them.

Theory of operation: a logging filter formats each record once, replaces
every IPv4 and IPv6 address it finds, and leaves the record holding the
masked text. An IPv4 address keeps its first octets and stars the rest
(``1.2.*.*``), an IPv6 address becomes its prefix (``1234:5678::/32``), and
a prefix of 0 bits hides the address altogether, as Xray writes them.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# At least two colons; checked by ipaddress before it is replaced.
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:/])")


@dataclass(frozen=True, slots=True)
class AddressMask:
    """How many leading bits of each family stay readable."""

    ipv4_bits: int
    ipv6_bits: int

    def mask(self, text: str) -> str:
        return _IPV6.sub(self._ipv6, _IPV4.sub(self._ipv4, text))

    def _ipv4(self, match: re.Match[str]) -> str:
        try:
            address = ipaddress.IPv4Address(match.group())
        except ValueError:
            return match.group()
        if self.ipv4_bits >= 32:
            return match.group()
        if self.ipv4_bits == 0:
            return "[Masked IPv4]"
        kept = self.ipv4_bits // 8
        return ".".join(str(address).split(".")[:kept] + ["*"] * (4 - kept))

    def _ipv6(self, match: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(match.group())
        except ValueError:
            return match.group()
        if self.ipv6_bits >= 128:
            return match.group()
        if self.ipv6_bits == 0:
            return "[Masked IPv6]"
        network = ipaddress.IPv6Network((match.group(), self.ipv6_bits), strict=False)
        return str(network)


class MaskingFilter(logging.Filter):
    """Masks the addresses in every record that passes its handler."""

    def __init__(self, mask: AddressMask) -> None:
        super().__init__()
        self._mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._mask.mask(record.getMessage())
        record.args = None
        return True
