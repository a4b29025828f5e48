"""Changes to a stored request: RFC 7396 merge patches and RFC 6901 pointer setters.

Clone applies a merge patch to the raw request it copies and, since a merge patch cannot reach
into an array, also takes `{"/json/pointer": value}` setters; a sweep makes each trial with the
same setter. Both work on copies and never change what they are given.
"""

from __future__ import annotations

import copy
from typing import Any

from core.errors import pointer as join_pointer


class PatchError(ValueError):
    """A patch that cannot apply: `path` is the JSON pointer into the patch where it fails."""

    def __init__(self, path: str, message: str, expected: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.expected = expected


def merge_patch(target: Any, patch: Any) -> Any:
    """Return `target` with the JSON Merge Patch `patch` applied (RFC 7396, section 2).

    An object in the patch merges key by key, `null` removes a key, anything else replaces.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def split_pointer(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON pointer (`~1` is `/`, `~0` is `~`)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError("", f"{pointer!r} is not a JSON pointer.", "a string starting with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def set_pointer(document: Any, pointer: str, value: Any) -> Any:
    """Return a copy of `document` with the member `pointer` names set to `value`.

    The parent must exist: an object gains or replaces the key, an array replaces an element by
    index or appends at `-`. Raises `PatchError` naming the first token that does not resolve.
    """
    tokens = split_pointer(pointer)
    if not tokens:
        return copy.deepcopy(value)
    result = copy.deepcopy(document)
    parent = result
    for depth, token in enumerate(tokens[:-1]):
        parent = _child(parent, token, tokens[: depth + 1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        else:
            parent[_index(parent, last, tokens)] = copy.deepcopy(value)
    else:
        raise PatchError(
            join_pointer(*tokens[:-1]),
            f"{join_pointer(*tokens[:-1]) or 'the document'} is a {type(parent).__name__}, "
            "which has no members to set.",
            "a pointer into an object or an array",
        )
    return result


def get_pointer(document: Any, pointer: str) -> Any:
    """The value `pointer` names in `document`; raises `PatchError` where it does not resolve."""
    tokens = split_pointer(pointer)
    value = document
    for depth, token in enumerate(tokens):
        value = _child(value, token, tokens[: depth + 1])
    return value


def _child(parent: Any, token: str, path: list[str]) -> Any:
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(
                join_pointer(*path),
                f"{join_pointer(*path)} does not exist in the request.",
                "a pointer to a member of the request",
            )
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, path)]
    raise PatchError(
        join_pointer(*path),
        f"{join_pointer(*path[:-1]) or 'the document'} is a {type(parent).__name__} and has no "
        f"member {token!r}.",
        "a pointer into an object or an array",
    )


def _index(array: list, token: str, path: list[str]) -> int:
    if not (token.isascii() and token.isdigit()) or (len(token) > 1 and token.startswith("0")):
        raise PatchError(
            join_pointer(*path), f"{token!r} is not an array index.", "a non-negative integer"
        )
    index = int(token)
    if index >= len(array):
        raise PatchError(
            join_pointer(*path),
            f"Index {index} is past the end of an array of {len(array)}.",
            f"an index below {len(array)}",
        )
    return index
