"""vtrio: a VMess proxy server and client built on Trio."""

from __future__ import annotations

__version__ = "0.1.0"
