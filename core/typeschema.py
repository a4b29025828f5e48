"""JSON Schema from Python type hints, so a document's schema is generated from its type.

Covers what our records use: `str`, `int`, `float`, `bool`, `None`, `Any`, unions, `Literal`,
`list[X]`, `dict[str, X]` and TypedDicts (closed: a key the type does not declare is refused).
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

_SCALARS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def json_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema (2020-12) of values of type `hint`."""
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if is_typeddict(hint):
        return _object_schema(hint)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        if all(arg in _SCALARS for arg in args):
            return {"type": [_SCALARS[arg] for arg in args]}
        return {"anyOf": [json_schema(arg) for arg in args]}
    if origin is list:
        return {"type": "array", "items": json_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(args[1])}
    raise TypeError(f"No JSON Schema for {hint!r}.")


def _object_schema(typed: Any) -> dict[str, Any]:
    hints = get_type_hints(typed)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: json_schema(hint) for name, hint in hints.items()},
        "required": [name for name in hints if name in typed.__required_keys__],
        "additionalProperties": False,
    }
    if typed.__doc__:
        schema["description"] = " ".join(typed.__doc__.split())
    return schema
