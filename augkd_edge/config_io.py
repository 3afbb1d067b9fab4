"""Plain JSON data <-> the config dataclasses: setting checked values, comparing two configs.

Kept apart from ``augkd_edge.config`` (which says what the options are) because this is how any dataclass tree
is filled from JSON: unknown keys and wrong types are refused with the dotted key and the file that holds them.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from augkd_edge.errors import UserError


def apply(obj: Any, data: dict[str, Any], source: str, prefix: str) -> None:
    """Set ``data``'s values on dataclass ``obj``, checking keys and types."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"{source}: unknown option {dotted!r}; known here: {', '.join(sorted(fields))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {dotted} must be an object of options, got {value!r}")
            apply(current, value, source, prefix=f"{dotted}.")
            continue
        setattr(obj, key, coerce(hints[key], value, dotted, source))


def coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against a field's type; ints are accepted where floats are expected."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    for typ in allowed:
        if typ is bool and isinstance(value, bool):
            return value
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if typ is str and isinstance(value, str):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"{source}: {key} = {value!r} has the wrong type; expected {names}")


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str) -> list[str]:
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out
