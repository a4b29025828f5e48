"""Bearer API keys, or the dashboard's session cookie, on /v1 and /v2 when keys are set."""

from __future__ import annotations

from flask import Flask, g, request

from core.errors import Unauthorized
from core.keys import ApiKey, match_key
from service import sessions
from service.state import api_keys

PROTECTED_PREFIXES = ("/v1", "/v2")


def authenticate() -> None:
    """Set `g.principal` (the key, or None when keys are off) or answer 401."""
    keys = api_keys()
    g.principal = None
    if not keys or not request.path.startswith(PROTECTED_PREFIXES):
        return
    header = request.headers.get("Authorization", "")
    if not header and request.cookies.get(sessions.COOKIE):
        g.principal = _session_principal(keys)
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("This route needs an API key: send 'Authorization: Bearer <key>'.")
    key = match_key(keys, token.strip())
    if key is None:
        raise Unauthorized("The API key is not valid.")
    g.principal = key


def _session_principal(keys: tuple[ApiKey, ...]) -> ApiKey:
    """The dashboard's session cookie stands for the key it was opened with (CSRF-checked)."""
    session = sessions.current_session()
    key = session and sessions.session_key(keys, session)
    if not key:
        raise Unauthorized("The dashboard session has ended or is unknown; sign in again.")
    sessions.check_csrf(session, request.headers.get(sessions.CSRF_HEADER))
    return key


def owner() -> str | None:
    """The name that owns what this request creates (None when keys are off)."""
    principal = g.get("principal")
    return principal.name if principal else None


def can_see(resource_owner: str | None) -> bool:
    """Keys see their own resources; admin keys, and everyone when keys are off, see all."""
    principal = g.get("principal")
    return principal is None or principal.admin or principal.name == resource_owner


def register(app: Flask) -> None:
    app.before_request(authenticate)
