"""What stands between the console and the network: the access token, CSRF tokens, response headers.

- With a token, every request must carry it: ``Authorization: Bearer TOKEN``,
  or once ``?token=TOKEN`` (which sets an HttpOnly session cookie holding a
  value derived from the token, not the token, and redirects to the same URL
  without it, so the token stays out of the history and of logs). Every
  comparison is constant-time (:func:`hmac.compare_digest`).
- Actions are POST forms carrying a CSRF token: the HMAC, under a secret that
  lives only in this process, of a random value in a SameSite=Strict cookie
  (the double-submit pattern; a page on another site can neither read the
  cookie nor compute the HMAC). A POST whose ``Origin`` is another host is
  refused as well.
- Every response forbids framing and inline scripts (a Content-Security-Policy
  with no ``unsafe-inline`` script source): should a saga's text ever slip
  through the templates' escaping, the browser still would not run it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Csrf", "Guard", "base_path", "same_text"]

SESSION_COOKIE = "sagadsl_session"
CSRF_COOKIE = "sagadsl_csrf"

_HEADERS = {
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def same_text(a: str, b: str) -> bool:
    """Whether two strings are equal, in time that does not depend on where they differ."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def base_path(scope: Scope) -> str:
    """The path the console is mounted at (``""`` at the root), from the ASGI ``root_path``."""
    return str(scope.get("root_path", "")).rstrip("/")


class Csrf:
    """Issues and checks the CSRF tokens of one console (a fresh secret per :func:`create_app`)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token_for(self, cookie: str) -> str:
        """The token a form must carry for a browser holding ``cookie``."""
        return hmac.new(self._secret, cookie.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def cookie_of(self, request: Request) -> tuple[str, bool]:
        """The browser's CSRF cookie and whether it is new (then it must be set on the response)."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if len(value) >= 32 and value.isascii():
            return value, False
        return secrets.token_urlsafe(32), True

    def check(self, request: Request, submitted: str) -> str | None:
        """Why a POST with the token ``submitted`` is refused, or None if it may go ahead."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            return f"the request came from another site ({origin}); refused"
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not submitted or not same_text(self.token_for(cookie), submitted):
            return ("the form's security token is missing or out of date (is the page older than the "
                    "console's last start?); reload the saga's page and try again")
        return None


class Guard:
    """ASGI middleware: security headers on every response, and the access token when one is set."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self._session = (None if token is None else
                         hmac.new(token.encode("utf-8", "surrogatepass"), b"sagadsl-web-session",
                                  hashlib.sha256).hexdigest())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None or self._session is None:
            return None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_text(credentials.strip(), self.token):
            return None
        if same_text(request.cookies.get(SESSION_COOKIE, ""), self._session):
            return None
        offered = request.query_params.get("token")
        base = base_path(request.scope)
        api = request.url.path.startswith(f"{base}/api/")
        if offered is not None and same_text(offered, self.token):
            if api:
                return None
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(SESSION_COOKIE, self._session, httponly=True, samesite="lax",
                                path=base or "/", secure=request.url.scheme == "https")
            return response
        message = ("this console needs its access token: open it once with ?token=TOKEN, "
                   "or send the header Authorization: Bearer TOKEN")
        headers = {"www-authenticate": 'Bearer realm="sagadsl"'}
        if api:
            return JSONResponse({"error": message}, status_code=401, headers=headers)
        return PlainTextResponse(message + "\n", status_code=401, headers=headers)
