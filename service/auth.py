"""Bearer API keys, or the dashboard's session cookie, on /v1, /v2 and /metrics when keys are set.

Every request to those routes is then counted against its key's rate (service/limits.py).
"""

from __future__ import annotations

from flask import Flask, g, request

from core.errors import Forbidden, Unauthorized
from core.keys import ApiKey, match_key
from service import limits, sessions
from service.state import api_keys

PROTECTED_PREFIXES = ("/v1", "/v2")
# Open without keys; with keys, for admin keys only (it shows every key's job counts).
METRICS_PATH = "/metrics"


def authenticate() -> None:
    """Set `g.principal` (the key, or None when keys are off) or answer 401; then count the
    request against its key's rate limit."""
    g.principal = None
    if not request.path.startswith(PROTECTED_PREFIXES) and request.path != METRICS_PATH:
        return
    keys = api_keys()
    if keys:
        g.principal = _principal(keys)
    limits.check_rate_limit()


def _principal(keys: tuple[ApiKey, ...]) -> ApiKey:
    header = request.headers.get("Authorization", "")
    if not header and request.cookies.get(sessions.COOKIE):
        return _session_principal(keys)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("This route needs an API key: send 'Authorization: Bearer <key>'.")
    limits.check_sign_in_failures()
    key = match_key(keys, token.strip())
    if key is None:
        limits.count_sign_in_failure()
        raise Unauthorized("The API key is not valid.")
    return key


def _session_principal(keys: tuple[ApiKey, ...]) -> ApiKey:
    """The dashboard's session cookie stands for the key it was opened with (CSRF-checked)."""
    session = sessions.current_session()
    key = sessions.session_key(keys, session) if session else None
    if session is None or key is None:
        raise Unauthorized("The dashboard session has ended or is unknown; sign in again.")
    sessions.check_csrf(session, request.headers.get(sessions.CSRF_HEADER))
    return key


def by_session() -> bool:
    """Whether the dashboard's session cookie, not a Bearer key, authorized this request."""
    return g.get("principal") is not None and not request.headers.get("Authorization")


def owner() -> str | None:
    """The name that owns what this request creates (None when keys are off)."""
    principal = g.get("principal")
    return principal.name if principal else None


def viewer() -> str | None:
    """Whose resources this request sees: None for all (keys off, or an admin key), else the
    name of its key; requests with one viewer get the same answers from `can_see`."""
    principal = g.get("principal")
    return None if principal is None or principal.admin else principal.name


def can_see(resource_owner: str | None) -> bool:
    """Keys see their own resources; admin keys, and everyone when keys are off, see all."""
    principal = g.get("principal")
    return principal is None or principal.admin or principal.name == resource_owner


def require_admin() -> None:
    """Forbidden unless keys are off or the request's key is an admin key."""
    principal = g.get("principal")
    if principal is not None and not principal.admin:
        raise Forbidden(
            f"Only an admin key may use {request.path}; key {principal.name!r} is not one."
        )


def register(app: Flask) -> None:
    app.before_request(authenticate)
