"""The browser dashboard: the jobs list at `/`, a page per job, the datasets, a comparison of
jobs' curves, the sweeps, and sign-in with an API key.

The pages are plain HTML; `static/dashboard/dashboard.js` fills them from the same `/v1` API
scripts use, authorized by the session cookie (service/sessions.py) when keys are on.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, redirect, render_template, request

# What `redirect` builds; Flask's own Response is a subclass of it.
from werkzeug.wrappers import Response as BaseResponse

from core.keys import ApiKey, match_key
from core.storage import check_id
from service import limits, sessions
from service.state import api_keys

bp = Blueprint("dashboard", __name__)

# Where a sign-in may send the browser back to: our own pages only, never another site.
_NEXT_PAGE = re.compile(r"/(jobs/[0-9a-f]{32}|datasets|compare|sweeps(/[0-9a-f]{32})?)?")
# The pages load only our own scripts and styles; no other site may frame them (the cancel
# button must not be clickable through someone else's page).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _signed_in() -> tuple[ApiKey | None, dict | None]:
    """The session's key and record, or (None, None) when nobody is signed in."""
    session = sessions.current_session()
    key = session and sessions.session_key(api_keys(), session)
    return (key, session) if key else (None, None)


def _page(template: str, status: int = 200, **context: object) -> BaseResponse:
    """A dashboard page, or the sign-in page's redirect when keys are on and nobody signed in."""
    key, session = _signed_in() if api_keys() else (None, None)
    if api_keys() and key is None:
        return redirect(f"/sign-in?next={request.path}", 303)
    body = render_template(
        template,
        keys_on=bool(api_keys()),
        principal=key.name if key else None,
        csrf=session["csrf"] if session else "",
        **context,
    )
    return Response(body, status, headers=_PAGE_HEADERS, mimetype="text/html")


@bp.get("/")
def show_jobs() -> BaseResponse:
    """The jobs, their status and progress; forms to upload a dataset and submit a job."""
    return _page("dashboard/jobs.html")


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> BaseResponse:
    """One job: live curves, checkpoints with downloads, cancel, and a predict form."""
    check_id(job_id, "job")
    return _page("dashboard/job.html", job_id=job_id)


@bp.get("/datasets")
def show_datasets() -> BaseResponse:
    """The datasets: status, arrays, classes and statistics; upload, download and delete."""
    return _page("dashboard/datasets.html")


@bp.get("/compare")
def show_comparison() -> BaseResponse:
    """Several jobs' curves on one chart: the jobs come from `?jobs=a,b,c`, read by the page."""
    return _page("dashboard/compare.html")


@bp.get("/sweeps")
def show_sweeps() -> BaseResponse:
    """The sweeps, their status and best trial."""
    return _page("dashboard/sweeps.html")


@bp.get("/sweeps/<sweep_id>")
def show_sweep(sweep_id: str) -> BaseResponse:
    """One sweep: its trials, their curves, the objective against each parameter, and a
    parallel-coordinates view."""
    check_id(sweep_id, "sweep")
    return _page("dashboard/sweep.html", sweep_id=sweep_id)


@bp.get("/sign-in")
def show_sign_in() -> Response:
    """The sign-in form (keys on), or a note that no sign-in is needed (keys off)."""
    return _sign_in_page()


@bp.post("/sign-in")
def sign_in() -> BaseResponse:
    """Check the key from the form; on success a session cookie and back to the dashboard."""
    if not api_keys():
        return redirect("/", 303)
    if not _same_origin():
        return _sign_in_page("Sign-in must come from this dashboard's own page.", 403)
    limits.check_sign_in_failures()
    key = match_key(api_keys(), request.form.get("key", "").strip())
    if key is None:
        limits.count_sign_in_failure()
        return _sign_in_page("That API key is not valid. Check it and try again.", 401)
    # A sign-in always gets a fresh token; the one the browser held (if any) ends now.
    sessions.end_session()
    response = redirect(_next_page(request.form.get("next", "/")), 303)
    sessions.set_cookie(response, sessions.start_session(key))
    return response


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    """End the session everywhere (it lives in Redis) and clear the cookie."""
    _, session = _signed_in()
    if session is not None:
        sessions.check_csrf(session, request.form.get("csrf"))
        sessions.end_session()
    response = redirect("/sign-in", 303)
    sessions.clear_cookie(response)
    return response


def _sign_in_page(error: str | None = None, status: int = 200) -> Response:
    body = render_template(
        "dashboard/sign_in.html",
        keys_on=bool(api_keys()),
        principal=None,
        csrf="",
        error=error,
        next_page=_next_page(request.values.get("next", "/")),
    )
    return Response(body, status, headers=_PAGE_HEADERS, mimetype="text/html")


def _next_page(candidate: str) -> str:
    return candidate if _NEXT_PAGE.fullmatch(candidate) else "/"


def _same_origin() -> bool:
    """A form post from our own page: its Origin (sent by browsers on POST) is this host's."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        # Older browsers and non-browser clients send no Origin; SameSite covers the cookie.
        return origin is None
    return urlsplit(origin).netloc == request.host


def register(app: Flask) -> None:
    app.register_blueprint(bp)
