"""The client's address behind a proxy: `X-Forwarded-For` is believed from trusted peers only.

nginx in front of gunicorn replaces `X-Forwarded-For` with the address it heard the client on,
and FITSERVE_TRUSTED_PROXIES names nginx. A request from any other peer has its forwarded
headers dropped, so no client chooses the address its limits are counted against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDED = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_FORWARDED",
)
# Hops read from the right of X-Forwarded-For, at most: a proxy chain is never longer.
MAX_HOPS = 16


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """The setting's comma-separated addresses or networks; a malformed entry stops start-up."""
    networks = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"FITSERVE_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
            ) from None
    return tuple(networks)


class TrustedProxies:
    """WSGI middleware: REMOTE_ADDR becomes the forwarded client when the peer is trusted."""

    def __init__(self, app: Callable[..., Any], networks: Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self._trusted(environ.get("REMOTE_ADDR", "")):
            client = self._forwarded_client(environ.get("HTTP_X_FORWARDED_FOR", ""))
            if client is not None:
                environ["REMOTE_ADDR"] = client
        else:
            for name in _FORWARDED:
                environ.pop(name, None)
        return self.app(environ, start_response)

    def _trusted(self, address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self.networks)

    def _forwarded_client(self, header: str) -> str | None:
        """The nearest hop that is not a trusted proxy, read from the right (the farthest when
        all are); None when the header is absent or a hop is not an address."""
        try:
            hops = [ipaddress.ip_address(part.strip()) for part in header.split(",")[-MAX_HOPS:]]
        except ValueError:
            return None
        untrusted = [hop for hop in hops if not self._trusted(str(hop))]
        return str((untrusted or hops)[-1 if untrusted else 0])


def register(app: Flask) -> None:
    """Wrap the app, so every part of it (limits, logs) sees the client's address."""
    trusted = parse_trusted_proxies(app.config["FITSERVE"].trusted_proxies)
    app.wsgi_app = TrustedProxies(app.wsgi_app, trusted)  # type: ignore[method-assign]
