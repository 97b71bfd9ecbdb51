"""The runs dashboard: ``/runs`` lists runs as they change, ``/runs/<run_id>`` shows one run and
its streams live.

The pages (:mod:`.pages`) are ReactPy components served by :func:`runstream.components.mount`,
the helper that users' own Flask apps serve ReactPy with, behind the sign-in. They read the store
in-process and wake on the hub: the ``runs`` topic is published whenever a run is triggered,
claimed or ends. The dashboard asks for the secret key once and remembers it in a session
cookie, unless authentication is disabled (loopback only). Its CSS and script are the package
``runstream.static``, served at ``/static``.

The session cookie is the one credential a browser sends by itself, so the dashboard guards
against other sites using it (:mod:`.guards`): the cookie is ``SameSite=Lax`` and
``HttpOnly`` (and ``Secure`` over https), and the sign-in, the sign-out and the pages'
websockets refuse requests that another site's page makes.
"""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import quote

from flask import Flask, Response, abort, redirect, request, send_from_directory, session
from flask.typing import ResponseReturnValue
from reactpy import html

from runstream.components import mount

from ..runtime import runtime, runtime_of
from . import stream_text
from .guards import (
    SIGNED_IN,
    DashboardSessions,
    loopback_only_without_auth,
    same_origin_only,
    signed_in,
)
from .pages import Dashboard

# The dashboard's CSS and script: a folder inside the installed package, wherever that is.
STATIC_FOLDER = str(files("runstream.static"))
STATIC_SUFFIXES = (".css", ".js", ".svg", ".ico")
FAVICON = "/static/favicon.svg"


def init_app(app: Flask) -> None:
    app_runtime = runtime_of(app)
    app.secret_key = app_runtime.auth.derive_key("dashboard sessions")
    app.session_interface = DashboardSessions()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    # Every request of the app, whatever server runs it: with authentication disabled, only
    # this machine may be served.
    app.before_request(loopback_only_without_auth)
    app.before_request(same_origin_only)
    mount(
        app,
        "/runs",
        Dashboard,
        head=[
            html.title("Runstream"),
            html.meta({"name": "viewport", "content": "width=device-width, initial-scale=1"}),
            html.meta({"name": "color-scheme", "content": "light dark"}),
            html.link({"rel": "icon", "href": FAVICON, "type": "image/svg+xml"}),
            html.link({"rel": "stylesheet", "href": "/static/runstream.css"}),
            html.link({"rel": "stylesheet", "href": "/static/stream-view.css"}),
            html.script({"src": "/static/runstream.js", "defer": True}),
            html.script({"src": "/static/stream-view.js", "defer": True}),
        ],
        allowed=signed_in,
    )
    stream_text.init_app(app, signed_in)
    app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=static_file)
    app.add_url_rule("/", endpoint="home", view_func=lambda: redirect("/runs"))
    # Browsers ask for /favicon.ico by themselves, on every page (the sign-in page too).
    app.add_url_rule("/favicon.ico", endpoint="favicon", view_func=lambda: redirect(FAVICON))
    app.add_url_rule("/login", endpoint="login", view_func=login, methods=["GET", "POST"])
    app.add_url_rule("/logout", endpoint="logout", view_func=logout, methods=["POST"])
    app.register_error_handler(
        401, lambda _error: redirect(f"/login?next={quote(request.path, safe='/')}")
    )


def static_file(filename: str) -> Response:
    """A file of the static folder, by its plain name: nothing else reaches the file system.

    Only a name of letters, digits, ``.``, ``_`` and ``-`` with an asset's suffix is looked
    up, so that ``..``, NUL bytes, folders and names too long for the file system are 404 like
    any missing file, and the package's own module is no asset to serve."""
    if not (
        len(filename) <= 100
        and filename.endswith(STATIC_SUFFIXES)
        and not filename.startswith(".")
        and all(
            character.isascii() and (character.isalnum() or character in "._-")
            for character in filename
        )
    ):
        abort(404)
    return send_from_directory(STATIC_FOLDER, filename)


def login() -> ResponseReturnValue:
    """A one-field form for the secret key; the session cookie remembers it."""
    error = ""
    target = request.args.get("next", "/runs")
    if not target.startswith("/runs"):
        target = "/runs"
    if request.method == "POST":
        if runtime().auth.is_secret_key(request.form.get("secret_key", "").strip()):
            session.clear()  # a fresh session: nothing of one from before the sign-in
            session[SIGNED_IN] = True
            return redirect(target)
        error = (
            "<p class='error' id='secret-key-error' role='alert'>"
            "That is not this server's secret key.</p>"
        )
    described = "secret-key-hint secret-key-error" if error else "secret-key-hint"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Sign in · Runstream</title><link rel="icon" href="{FAVICON}" type="image/svg+xml">
<link rel="stylesheet" href="/static/runstream.css"></head>
<body class="login"><main><form method="post"><h1>Runstream</h1>
<label for="secret-key">Secret key</label>
<input id="secret-key" name="secret_key" type="password" autocomplete="current-password"
 autofocus required aria-describedby="{described}">
{error}<button type="submit">Sign in</button>
<p class="hint" id="secret-key-hint">The key is in <code>RUNSTREAM_SECRET_KEY</code>, or in the
<code>secret_key</code> file of the server's instance folder.</p></form></main></body></html>"""
    return Response(page, status=401 if error else 200, content_type="text/html; charset=utf-8")


def logout() -> ResponseReturnValue:
    """Sign out: the session is emptied, and its cookie deleted. A POST (the dashboard's "Sign
    out" button), checked for its origin like the sign-in, so that no other site can sign the
    browser out."""
    session.clear()
    return redirect("/login")
