"""Runs a whole configuration: the root nursery of listeners and connections."""

from __future__ import annotations
