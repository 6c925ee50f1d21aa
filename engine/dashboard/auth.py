"""Who may see the dashboard: the token printed at start, kept in a cookie.

As Jupyter does, the server makes a random token at start and prints
``http://127.0.0.1:P/?token=…``. Opening that address sets two cookies, ``HttpOnly`` and
``SameSite=Strict``, and redirects to the bare address (so the token leaves the address
bar and the history): ``troupe_token`` (the token, compared with ``hmac.compare_digest``)
and ``troupe_session`` (a random id that the controls' unlock is kept under,
``engine.dashboard.controls``). Without a valid token cookie, every endpoint answers 401
and the page is a form that asks for the token, showing nothing of any study.

Requests that change something (``POST``) also need the header ``X-Troupe-Token`` with
the session's CSRF value (an HMAC of the session id, which a page gets from
``GET /api/session``); another site can neither read that value nor send the header
without a CORS preflight, which this server never grants. A request whose ``Origin``
is not this server's is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CSRF_HEADER", "SESSION_COOKIE", "TOKEN_COOKIE", "TokenGate", "new_token"]

TOKEN_COOKIE = "troupe_token"
SESSION_COOKIE = "troupe_session"
CSRF_HEADER = "X-Troupe-Token"
_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Troupe dashboard</title>
<link rel="stylesheet" href="/static/login.css"><link rel="icon" href="data:,"></head>
<body><main class="login"><h1>Troupe dashboard</h1>
<p>Open the address <code>enginectl dashboard</code> printed, or paste its token:</p>
<form method="get" action="/"><input name="token" type="password" autocomplete="off"
 aria-label="token" autofocus><button type="submit">Open</button></form></main></body></html>
"""
_PUBLIC = ("/static/login.css", "/favicon.ico")


def new_token() -> str:
    """A fresh random token (48 hex digits)."""
    return secrets.token_hex(24)


class TokenGate:
    """ASGI middleware: the token check, the login redirect, CSRF and security headers
    (see the module docstring).

    Attributes:
        token: The token every request must carry in its cookie.
        sessions: The session ids handed out since start (a cookie naming another one
            gets a new session on ``GET /api/session``).
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token
        self.sessions: set[str] = set()

    def valid(self, value: str | None) -> bool:
        """Whether ``value`` is the token (constant time)."""
        return bool(value) and hmac.compare_digest(str(value).encode(), self.token.encode())

    def csrf(self, session: str) -> str:
        """The CSRF value of a session (what ``X-Troupe-Token`` must hold)."""
        return hmac.new(self.token.encode(), session.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A new session id, remembered."""
        sid = secrets.token_hex(16)
        self.sessions.add(sid)
        return sid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = _cookies(headers.get("cookie", ""))
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        response: Response | None = None
        if path == "/" and "token" in query:
            if self.valid(query["token"][0]):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                response.set_cookie(SESSION_COOKIE, self.new_session(), httponly=True,
                                    samesite="strict")
            else:
                response = HTMLResponse(_LOGIN, status_code=401)
        elif path not in _PUBLIC and not self.valid(cookies.get(TOKEN_COOKIE)):
            response = (HTMLResponse(_LOGIN, status_code=401) if path == "/" else
                        JSONResponse({"error": "token required"}, status_code=401))
        elif scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            host = headers.get("host", "")
            session = cookies.get(SESSION_COOKIE, "")
            if origin is not None and origin.split("://", 1)[-1] != host:
                response = JSONResponse({"error": "cross-origin request refused"},
                                        status_code=403)
            elif not (session in self.sessions and hmac.compare_digest(
                    headers.get(CSRF_HEADER, "").encode(), self.csrf(session).encode())):
                response = JSONResponse({"error": f"missing or wrong {CSRF_HEADER} header"},
                                        status_code=403)
        scope.setdefault("state", {})["session"] = cookies.get(SESSION_COOKIE, "")
        with_headers = _secure(send)
        if response is not None:
            await response(scope, receive, with_headers)
        else:
            await self.app(scope, receive, with_headers)


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:  # a malformed cookie header is no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


def _secure(send: Send) -> Send:
    """``send`` with the security headers added to every response's start."""
    extra = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]

    async def wrapped(message: dict) -> None:  # type: ignore[type-arg]
        if message["type"] == "http.response.start":
            names = {k for k, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *(h for h in extra if h[0] not in names)]}
        await send(message)

    return wrapped  # type: ignore[return-value]
