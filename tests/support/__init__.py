"""Loopback helpers shared by the test suites."""

from __future__ import annotations
