"""Configuration: JSON in the v2ray 4 / Xray dialects, a frozen model out.

Theory of operation: :func:`load` reads each file, strips comments
(``jsonc``), decodes it to plain JSON values, merges several files the way
v2ray does (later files win; inbounds and outbounds are concatenated, and an
entry whose tag repeats an earlier one replaces it), decodes the result into
the dialect structs (``v2ray``/``xray``) and normalizes them into
``model.Config``. Every failure is a :class:`ConfigError` or
:class:`ConfigErrors` naming the file and the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from vtrio.config.jsonc import line_and_column, strip_comments
from vtrio.config.lenient import conform
from vtrio.config.model import Config
from vtrio.config.normalize import V5_HINT, Normalizer
from vtrio.config.v2ray import RootV2
from vtrio.errors import ConfigError, ConfigErrors

__all__ = ["Config", "ConfigError", "ConfigErrors", "load", "loads"]

_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
_MERGED_ARRAYS = ("inbounds", "outbounds")


def _parse(data: bytes, source: str) -> Any:
    stripped = strip_comments(data)
    try:
        return msgspec.json.decode(stripped)
    except msgspec.DecodeError as exc:
        message = str(exc)
        match = _BYTE_OFFSET.search(message)
        if match is not None:
            line, column = line_and_column(data, int(match.group(1)))
            message = _BYTE_OFFSET.sub(f"(line {line}, column {column})", message)
        raise ConfigError(message, path="$", source=source) from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key in _MERGED_ARRAYS and isinstance(value, list):
            items = list(merged.get(key) or [])
            for item in value:
                tag = item.get("tag") if isinstance(item, dict) else None
                same = [
                    i
                    for i, old in enumerate(items)
                    if tag and isinstance(old, dict) and old.get("tag") == tag
                ]
                if same:
                    items[same[0]] = item
                else:
                    items.append(item)
            merged[key] = items
        else:
            merged[key] = value
    return merged


def loads(
    text: str | bytes,
    *,
    source: str = "<config>",
    environ: dict[str, str] | None = None,
) -> Config:
    """A config from JSON text (comments allowed).

    Raises:
        ConfigError: the text is not JSON, or not an object.
        ConfigErrors: one or more problems, each with its path.
    """
    data = text.encode() if isinstance(text, str) else text
    return _build(_parse(data, source), source, environ)


def load(paths: Sequence[str], *, environ: dict[str, str] | None = None) -> Config:
    """A config from one or more files, merged in order.

    Raises:
        ConfigError: a file cannot be read or is not JSON.
        ConfigErrors: one or more problems, each with its file and path.
    """
    if not paths:
        raise ConfigError("no config file given")
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read: {exc.strerror or exc}", source=path
            ) from None
        value = _parse(data, path)
        if not isinstance(value, dict):
            raise ConfigError("expected a JSON object", source=path)
        merged = _merge(merged, value)
    return _build(merged, " + ".join(paths), environ)


def _build(value: Any, source: str, environ: dict[str, str] | None) -> Config:
    if not isinstance(value, dict):
        raise ConfigError("expected a JSON object", source=source)
    try:
        # Raw sections need JSON text, so the merged value is encoded again.
        root = msgspec.json.decode(
            msgspec.json.encode(conform(value, RootV2)), type=RootV2
        )
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = re.search(r" - at `(\$.*)`$", text)
        path = match.group(1) if match else "$"
        message = text[: match.start()] if match else text
        if (
            "streamSettings" not in path
            and "transport" in value
            and "inbounds" in value
        ):
            message += f" ({V5_HINT})"
        raise ConfigErrors([ConfigError(message, path=path, source=source)]) from None
    return Normalizer(source, environ).run(root)
