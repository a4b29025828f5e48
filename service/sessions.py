"""Dashboard sessions: a random token in an HttpOnly cookie, the session itself in Redis.

The cookie carries only a random token, never the API key. Redis keeps, under the token's
sha256, the key's name and digest and the session's CSRF token, for `session_seconds`. Keeping
sessions in Redis means no signing secret has to be shared between API processes or hosts, a
sign-out ends the session everywhere at once, and a key removed from `FITSERVE_API_KEYS` ends
its sessions on the next request.

A request the cookie authorizes can be forged by another site, so every state-changing one must
also carry the session's CSRF token in `X-Fitserve-CSRF` (the page holds it; another origin
cannot read it). Requests with a Bearer key never look at the cookie.
"""

from __future__ import annotations

import hmac
import secrets

import orjson
import redis
from flask import request
from werkzeug.wrappers import Response

from core.errors import Unauthorized, Unavailable
from core.keys import ApiKey
from core.rediskeys import session_record_key
from service.state import redis_client, settings

COOKIE = "fitserve_session"
CSRF_HEADER = "X-Fitserve-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def start_session(key: ApiKey) -> str:
    """Record a new session for `key`; returns the token the cookie carries."""
    token = secrets.token_urlsafe(32)
    record = {"name": key.name, "digest": key.digest, "csrf": secrets.token_urlsafe(32)}
    redis_client().set(
        session_record_key(token), orjson.dumps(record), ex=settings().session_seconds
    )
    return token


def current_session() -> dict | None:
    """The session the request's cookie names (`name`, `digest`, `csrf`), or None."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 128:
        return None
    try:
        raw = redis_client().get(session_record_key(token))
    except redis.RedisError:
        raise Unavailable("Sessions live in Redis, which is unavailable; retry shortly.") from None
    return orjson.loads(raw) if raw else None


def end_session() -> None:
    """Forget the request's session in Redis (the cookie is cleared by `clear_cookie`)."""
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 128:
        redis_client().delete(session_record_key(token))


def session_key(keys: tuple[ApiKey, ...], session: dict) -> ApiKey | None:
    """The configured key the session was opened with, or None if it is no longer configured."""
    for key in keys:
        if key.name == session["name"] and hmac.compare_digest(key.digest, session["digest"]):
            return key
    return None


def check_csrf(session: dict, presented: str | None) -> None:
    """Refuse a state-changing request the cookie authorizes unless it carries the CSRF token.

    `presented` is the `X-Fitserve-CSRF` header (or the sign-out form's field).
    """
    if request.method in SAFE_METHODS:
        return
    presented = presented or ""
    if not hmac.compare_digest(presented.encode(), session["csrf"].encode()):
        raise Unauthorized(
            f"A request signed in by the dashboard's cookie must carry the {CSRF_HEADER} header "
            "the dashboard page holds; scripts should send 'Authorization: Bearer <key>'.",
            code="csrf_failed",
        )


def set_cookie(response: Response, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure when the client came over https."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings().session_seconds,
        httponly=True,
        samesite="Strict",
        secure=_over_https(),
        path="/",
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=_over_https())


def _over_https() -> bool:
    # Behind a TLS proxy the app sees plain http; the proxy says what the browser used.
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "") == "https"
