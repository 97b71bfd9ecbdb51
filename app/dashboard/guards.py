"""What keeps other sites, and other machines, out of the dashboard.

A browser sends the dashboard's session cookie with every request to the server, whichever page
asks. So:

- the cookie is ``SameSite=Lax``: other sites' pages may link to the dashboard (a top-level
  navigation carries it), but their forms, scripts and websockets get no cookie sent;
  ``HttpOnly``, so that no script reads it; and ``Secure`` when the request came over https
  (gunicorn says so for a proxy on this machine that sends ``X-Forwarded-Proto``), never over
  plain http, where a browser would then not send it back at all;
- the sign-in, the sign-out and the pages' websockets are refused when another site's page
  makes them (:func:`same_origin_only`), as browsers tell: ``Sec-Fetch-Site``, else
  ``Origin``, else ``Referer``, compared with the request's ``Host``. A request that carries
  none of them comes from no browser (curl, a script), which no other site can drive;
- with authentication disabled, the server serves loopback clients only
  (:func:`loopback_only_without_auth`), checked on every request of the app, so that it holds
  under any server (``gunicorn 'runstream.server:create_app()'`` binding every interface too),
  not just under ``runstream serve``, which also refuses to listen elsewhere then.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Request, Response, jsonify, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from reactpy.backend._common import STREAM_PATH

from ..runs.auth import is_loopback
from ..runtime import runtime

# The session's mark of a browser signed in with the secret key.
SIGNED_IN = "dashboard"
# The dashboard's endpoints that change something: the sign-in and the sign-out.
FORMS = frozenset({"login", "logout"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Where the pages' websockets are (ReactPy's client asks for them there).
VIEW_SOCKETS = str(STREAM_PATH) + "/"
# What Sec-Fetch-Site says of a request a page of this server made, or the user typed.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = (":80", ":443")


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, whose cookie is ``Secure`` whenever the request came
    over https: a fixed ``SESSION_COOKIE_SECURE`` would either leave it off behind https or
    break signing in over plain http on loopback."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure

    # Nearly every request (each append and read of a stream) carries no session cookie:
    # Flask's own methods would still build a signing serializer and look up every cookie
    # setting for it, a tenth of a small append's time in the app.

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if session or session.modified:
            super().save_session(app, session, response)
        elif session.accessed:
            response.vary.add("Cookie")


def signed_in() -> bool:
    """The request comes from a browser signed in with the secret key, or authentication is
    disabled (and the client is on this machine: :func:`loopback_only_without_auth`). Only
    such a browser sees the pages, and may cancel and trigger runs from them."""
    return runtime().auth.disabled or session.get(SIGNED_IN) is True


def loopback_only_without_auth() -> Response | None:
    """403 for a client that is not on this machine while authentication is disabled.

    Behind a proxy on this machine every client looks local: authentication is for that."""
    if not runtime().auth.disabled or is_loopback(request.remote_addr):
        return None
    return refusal(
        "authentication is disabled on this server, so it serves loopback clients only", 403
    )


def same_origin_only() -> Response | None:
    """403 for a sign-in, a sign-out or a page's websocket that another site's page makes."""
    if request.path.startswith(VIEW_SOCKETS):
        pass  # a websocket's handshake is a GET, and what it may do is everything a page may
    elif request.method in SAFE_METHODS or request.endpoint not in FORMS:
        return None
    problem = foreign_origin()
    return None if problem is None else refusal(problem, 403)


def foreign_origin() -> str | None:
    """Why the request comes from another site's page, or None when it does not."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site.strip().lower() in SAME_SITE_FETCHES:
            return None
        return (
            f"refused: this request comes from another site's page (Sec-Fetch-Site: "
            f"{fetch_site}); use the dashboard's own pages"
        )
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        if _host_of(value) == _normal_host(request.host):
            return None
        return (
            f"refused: this request comes from another site's page ({header}: {value}), not "
            f"from this server's ({request.host}); a proxy in front of Runstream must pass "
            "the Host header on"
        )
    return None  # no browser's request: no other site can make it


def _host_of(url: str) -> str:
    """The host and port of an origin or a URL; empty for ``null`` and anything unparsable."""
    try:
        return _normal_host(urlsplit(url.strip()).netloc)
    except ValueError:
        return ""


def _normal_host(host: str) -> str:
    host = host.lower().rpartition("@")[2]
    for port in DEFAULT_PORTS:
        host = host.removesuffix(port)
    return host


def refusal(message: str, status: int) -> Response:
    """The answer to a refused request: JSON under the runs API, plain text elsewhere (the
    Durable Streams routes, the dashboard, a websocket's handshake)."""
    if request.path.startswith("/api/"):
        response = jsonify(error=message)
        response.status_code = status
        return response
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")
