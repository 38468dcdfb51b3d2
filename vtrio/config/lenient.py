"""What Go's ``encoding/json`` forgives, applied before the dialect structs see it.

Theory of operation: v2ray and Xray decode their configs with Go's
``encoding/json``, which matches an object key to a field ignoring case
(``alterID`` and ``AlterId`` set ``alterId``) and reads ``null`` as "not
given". Generated and hand-edited configs rely on both. msgspec does neither,
so :func:`conform` rewrites a decoded JSON value to the spellings of a
struct: keys that match a field of the struct only case-insensitively are
renamed to the field's own spelling, and fields whose value is ``null`` are
dropped so their defaults apply. It follows the struct's field types into
nested structs, lists and dictionaries; ``msgspec.Raw`` sections are left
as they are and conformed when they are decoded with their own struct.
Unknown keys stay, for the structs to refuse by name.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import msgspec.inspect as mi


def conform(value: Any, type_: Any) -> Any:
    """``value`` (decoded JSON) with keys and nulls as ``type_`` spells them."""
    return _conform(value, _type_info(type_))


_type_info = functools.cache(mi.type_info)


@functools.cache
def _fields(struct: type[msgspec.Struct]) -> dict[str, tuple[str, mi.Type]]:
    """Case-folded JSON name -> (JSON name, type) of a struct's fields."""
    info = _type_info(struct)
    assert isinstance(info, mi.StructType)
    return {
        field.encode_name.casefold(): (field.encode_name, field.type)
        for field in info.fields
    }


def _conform(value: Any, info: mi.Type) -> Any:
    if isinstance(info, mi.UnionType):
        member = _member_for(value, info.types)
        return value if member is None else _conform(value, member)
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        fields = _fields(info.cls)
        out: dict[str, Any] = {}
        for key, item in value.items():
            known = fields.get(key.casefold())
            if known is None:
                out[key] = item  # unknown: the struct names it in its error
                continue
            name, field_type = known
            if item is None:
                out.pop(name, None)  # null: as if absent (a later key wins)
            else:
                out[name] = _conform(item, field_type)
        return out
    if isinstance(info, mi.ListType) and isinstance(value, list):
        return [_conform(item, info.item_type) for item in value]
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        return {key: _conform(item, info.value_type) for key, item in value.items()}
    return value


def _member_for(value: Any, members: tuple[mi.Type, ...]) -> mi.Type | None:
    """The union member a JSON value would be decoded as, if it has structure."""
    if isinstance(value, dict):
        wanted: tuple[type[mi.Type], ...] = (mi.StructType, mi.DictType)
    elif isinstance(value, list):
        wanted = (mi.ListType,)
    else:
        return None
    candidates = [member for member in members if isinstance(member, wanted)]
    return candidates[0] if len(candidates) == 1 else None
