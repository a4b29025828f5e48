"""API keys: `FITSERVE_API_KEYS` holds `name:sha256-of-key[:admin]` entries, never the keys."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import sys


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    digest: str
    admin: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_key() -> str:
    """A new key: 32 random bytes, URL-safe, with a prefix that makes leaked keys greppable."""
    return "fs_" + secrets.token_urlsafe(32)


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """Parse the comma-separated setting; a malformed entry stops start-up with its position."""
    keys = []
    for position, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), 1):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or len(parts[1]) != 64:
            raise ValueError(
                f"FITSERVE_API_KEYS entry {position} must be name:sha256hex[:admin], "
                f"got {parts[0]!r}:..."
            )
        if len(parts) == 3 and parts[2] != "admin":
            raise ValueError(f"FITSERVE_API_KEYS entry {position}: the third part must be 'admin'")
        keys.append(ApiKey(parts[0], parts[1].lower(), admin=len(parts) == 3))
    return tuple(keys)


def match_key(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The key whose hash matches, compared in constant time against every entry."""
    digest = hash_key(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m core.keys NAME [--admin]`: make a key, print it and its settings entry."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m core.keys NAME [--admin]", file=sys.stderr)
        return 2
    key = make_key()
    entry = f"{args[0]}:{hash_key(key)}" + (":admin" if "--admin" in args[1:] else "")
    print(f"key:   {key}")
    print(f"entry: {entry}   (add to FITSERVE_API_KEYS; the key itself is not stored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
