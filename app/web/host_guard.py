"""The app answers only requests addressed to it: a Host header check (DNS rebinding).

A web page the user visits can make its own host name resolve to 127.0.0.1 ("DNS
rebinding") and then read the app from the user's browser: the request reaches the app,
but its Host header still names the page's host. Every HTTP and websocket request whose
Host is not one of the app's own names is refused here, before Streamlit sees it.

The names allowed: the localhost names, the address the server binds (`--host`, unless it
is a wildcard such as 0.0.0.0, which names no host), and Streamlit's documented
`server.allowedHosts` option (`symile-clinical app --allow-host NAME` sets it).

Served without sign-in (app.web.auth's "local" policy: loopback only), the same middleware
also refuses every request carrying a proxy's forwarding header (X-Forwarded-For, Forwarded,
X-Real-IP): a reverse proxy on this machine would otherwise reach the app from loopback with a
localhost Host and pass the whole network in without sign-in. A proxied deployment needs
sign-in (or --unauthenticated, knowingly).

The same middleware puts the security headers (`security_headers`) on every HTTP response,
the refusals included: a Content-Security-Policy that Streamlit's page works under and that
no other site may frame it under, X-Frame-Options DENY for browsers without CSP's
frame-ancestors, no Referer sent elsewhere, and no content-type sniffing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# Headers a reverse proxy adds to say whom it forwards for (lower case, as ASGI gives them).
FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
HOST_REFUSED = b"Host not allowed: this app answers only requests addressed to it.\n"
PROXY_REFUSED = (
    b"Proxied request refused: this app serves without sign-in only to this machine, and "
    b"this request came through a reverse proxy (X-Forwarded-For, Forwarded or X-Real-IP). "
    b"A proxied deployment needs sign-in: configure [auth] in secrets.toml and serve with "
    b"--allow-host NAME (docs/app.md).\n"
)
# Bind addresses that mean "every interface": they name no host a browser would use.
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def allowed_hosts(address: str | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The host names the app answers to: localhost names, the bind address unless it is a
    wildcard, and `extra` (lower case, without a trailing dot)."""
    names = [*LOCAL_HOSTS]
    if address and address.strip() not in WILDCARD_ADDRESSES:
        names.append(address)
    names += [name for name in extra if name and name.strip()]
    normal = (name.strip().lower().rstrip(".").strip("[]") for name in names)
    return tuple(dict.fromkeys(normal))


def host_name(header: str | None) -> str | None:
    """The host name of a Host header value ('[::1]:8501' -> '::1'); None when malformed."""
    if not header:
        return None
    try:
        parts = urlsplit(f"//{header}")
        _ = parts.port  # a non-numeric or out-of-range port is malformed
    except ValueError:
        return None
    if parts.hostname is None or parts.username or parts.password or parts.path:
        return None
    return parts.hostname.lower().rstrip(".")


def is_allowed(header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a Host header names one of `allowed` ('*.example.org' matches subdomains)."""
    name = host_name(header)
    if name is None:
        return False
    for pattern in allowed:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def request_host(scope: Scope) -> str | None:
    """The Host header of an ASGI request (None when absent)."""
    return dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1") or None


def is_forwarded(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether request headers (ASGI: lower-case byte names) carry a proxy's forwarding
    header (FORWARDING_HEADERS)."""
    return any(name.lower() in FORWARDING_HEADERS for name, _ in headers)


def streamlit_allowed_hosts() -> tuple[str, ...]:
    """allowed_hosts() for the running Streamlit server's address and server.allowedHosts."""
    from streamlit import config

    extra = config.get_option("server.allowedHosts") or []
    return allowed_hosts(config.get_option("server.address"), extra)


_PLAIN_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")  # what may be echoed into a header
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@functools.cache
def inline_script_hashes() -> tuple[str, ...]:
    """CSP hashes ('sha256-...') of the inline scripts of Streamlit's index.html, read from
    the installed Streamlit: its page runs them, and CSP allows no other inline script."""
    import streamlit

    index = Path(streamlit.__file__).parent / "static" / "index.html"
    try:
        text = index.read_text()
    except OSError:
        return ()
    return tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(text)
    )


def content_security_policy(host: str | None) -> str:
    """The app's Content-Security-Policy: everything from the app's own origin (the
    websocket to the Host the request named, which the Host check has allowed), the
    inline styles Streamlit's components set, images and fonts also as data:/blob: URIs
    (result thumbnails are data: URIs), Streamlit's inline scripts by hash, and never
    inside another site's frame."""
    sockets = f" ws://{host} wss://{host}" if host and _PLAIN_HOST.match(host) else ""
    scripts = " ".join(("'self'", *inline_script_hashes()))
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            "media-src 'self' data: blob:",
            f"connect-src 'self'{sockets}",
            "worker-src 'self' blob:",
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(host: str | None) -> list[tuple[bytes, bytes]]:
    """The headers added to every HTTP response (host: the request's allowed Host, or None
    for a refused request)."""
    return [
        (b"content-security-policy", content_security_policy(host).encode("latin-1")),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
    ]


SECURITY_HEADER_NAMES = frozenset(name for name, _ in security_headers(None))


def with_security_headers(send: Send, host: str | None) -> Send:
    """`send` with the security headers put on the response start (replacing any of the
    same names that the app behind set)."""

    async def send_secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value)
                for name, value in message.get("headers") or []
                if name.lower() not in SECURITY_HEADER_NAMES
            ]
            message = {**message, "headers": [*headers, *security_headers(host)]}
        await send(message)

    return send_secured


class HostGuard:
    """ASGI middleware: a request whose Host is not allowed gets 403 (HTTP) or is closed
    before the handshake completes (websocket), and reaches nothing behind it; so does a
    proxied request (is_forwarded) while `serves_locally()` says the app lets visitors in
    without sign-in. Every HTTP response carries security_headers.

    allowed: the host names; None reads them from Streamlit's config at the first request
    (the config is loaded by then, flags included). serves_locally: asked at each request
    (the access policy is decided in the server's start-up); None: never local, no
    forwarding check.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed: Iterable[str] | None = None,
        serves_locally: Callable[[], bool] | None = None,
    ) -> None:
        self.app = app
        self._allowed = tuple(allowed) if allowed is not None else None
        self.serves_locally = serves_locally

    @property
    def allowed(self) -> tuple[str, ...]:
        """The host names this guard lets through."""
        if self._allowed is None:
            self._allowed = streamlit_allowed_hosts()
        return self._allowed

    def refusal(self, scope: Scope) -> bytes | None:
        """Why the request is refused (the 403 body), or None when it may pass."""
        if not is_allowed(request_host(scope), self.allowed):
            return HOST_REFUSED
        headers = scope.get("headers") or []
        if self.serves_locally is not None and is_forwarded(headers) and self.serves_locally():
            return PROXY_REFUSED
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if scope["type"] == "http":
            send = with_security_headers(send, None if refused else request_host(scope))
        if refused is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(refused)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": refused})
