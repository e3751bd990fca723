"""The console's HTTP side: pages, the JSON API, Server-Sent Events and ``/metrics``, on aiohttp.

Access. Two bearer tokens, read from their files at start: the technician's
opens the technician view (map, health, delivery) and ``/metrics``; the
staff's opens the staff view (customers with a staff card). Neither opens
the other's view: a technician setting up receivers has no need to see
loyalty customers, and the staff tablet has no need for the fleet's
figures. Tokens are compared with ``hmac.compare_digest`` (every token,
every time, so timing tells nothing), never logged, and anything else gets
a bare 401.

The stream. ``EventSource`` cannot send an ``Authorization`` header, and a
token in a query string would end up in a proxy's access log. So the page
POSTs its bearer token to ``/api/session`` once and receives a session
cookie: the role and an expiry signed with a key made at start
(HttpOnly, SameSite=Strict, path ``/api``), which the browser sends with
the stream's GET. The cookie is worth nothing after a restart or
``SESSION_S``, and the page simply logs in again. aiohttp's access log is
off, so neither header nor cookie reaches a log.

One loop. The server runs in the service's own asyncio loop: the window
loop hands each snapshot over with a plain call (no locks, no copies), and
every viewer of a role is sent the same bytes, serialised once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from pydantic import SecretStr

from agent.console.metrics import CONTENT_TYPE, Metrics
from agent.console.snapshot import Feed, Snapshot
from agent.errors import SantiError

if TYPE_CHECKING:
    from agent.locator import Locator
    from agent.outbox import Outbox
    from agent.sources.base import Source
    from agent.uplink import Uplink

log = logging.getLogger(__name__)

Role = Literal["technician", "staff"]
ROLES: tuple[Role, ...] = ("technician", "staff")
COOKIE = "santi_session"
SESSION_S = 12 * 3600.0
"""A session outlasts a shift; after it the page asks for the token again."""
MAX_VIEWERS = 64
"""Streams open at once; more get 503 (a store has a few tablets, not hundreds)."""
WRITE_TIMEOUT_S = 10.0
"""A viewer that cannot take one window's data in this long is disconnected."""
KEEPALIVE_S = 15.0
"""An SSE comment this often keeps proxies from closing a quiet stream."""
STATIC = {
    "/": ("index.html", "text/html"),
    "/static/console.js": ("console.js", "text/javascript"),
    "/static/console.css": ("console.css", "text/css"),
}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleError(SantiError):
    """The console cannot start (one line: the address is taken, a token file is unusable)."""


def _unauthorized() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})


class Sessions:
    """Signed, expiring session values: ``role.expiry.signature``."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def issue(self, role: Role, now: float) -> str:
        body = f"{role}.{int(now + SESSION_S)}"
        return f"{body}.{self._sign(body)}"

    def role(self, value: str, now: float) -> Role | None:
        body, _, signature = value.rpartition(".")
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401).
        if not hmac.compare_digest(self._sign(body).encode(), signature.encode("utf-8", "replace")):
            return None
        role, _, expiry = body.partition(".")
        if role not in ROLES or not expiry.isdigit() or int(expiry) < now:
            return None
        return "technician" if role == "technician" else "staff"


class Console:
    """The HTTP server of one agent; ``publish`` hands it each window's snapshot."""

    def __init__(self, feed: Feed, tokens: dict[Role, SecretStr], host: str, port: int) -> None:
        self.feed = feed
        self._tokens = {role: token.get_secret_value().encode() for role, token in tokens.items()}
        self.host = host
        self.port = port
        self.sessions = Sessions()
        self.metrics = Metrics(self.feed.current)
        self._viewers: dict[Role, set[asyncio.Event]] = {role: set() for role in ROLES}
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.app = web.Application(middlewares=[self._headers])
        for path, (name, mime) in STATIC.items():
            self.app.router.add_get(path, self._static(name, mime))
        self.app.router.add_post("/api/session", self._session)
        self.app.router.add_get("/api/layout", self._layout)
        self.app.router.add_get("/api/snapshot", self._snapshot)
        self.app.router.add_get("/api/staff", self._staff)
        self.app.router.add_get("/api/stream", self._stream)
        self.app.router.add_get("/metrics", self._metrics)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConsoleError(f"console: cannot listen on {self.host}:{self.port}: {reason}") from None
        if self.port == 0:
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else 0
        log.info("console listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        self._closing.set()
        self._wake_all()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def viewers(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    def window(self, t: float, locator: Locator, sources: Sequence[Source], outbox: Outbox | None,
               uplink: Uplink | None, queue_dropped: int) -> None:
        """The window ending at ``t`` closed: note it and wake every stream (which builds the snapshot)."""
        self.feed.tick(t, locator, sources, outbox, uplink, queue_dropped)
        self.metrics.observe_latencies(self.feed.take_latencies())
        self._wake_all()

    def _wake_all(self) -> None:
        for events in self._viewers.values():
            for event in events:
                event.set()

    # -- access ----------------------------------------------------------------

    def _bearer_role(self, request: web.Request) -> Role | None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        offered = given.strip().encode("utf-8", "replace")
        found: Role | None = None
        for role in ROLES:  # compare with every token: the time taken names none of them
            if hmac.compare_digest(offered, self._tokens[role]):
                found = role
        return found

    def _role(self, request: web.Request) -> Role | None:
        role = self._bearer_role(request)
        if role is None and COOKIE in request.cookies:
            role = self.sessions.role(request.cookies[COOKIE], time.time())
        return role

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    # -- handlers --------------------------------------------------------------

    def _static(self, name: str, mime: str) -> Handler:
        body = resources.files("agent.console").joinpath("static", name).read_bytes()

        async def handler(_request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=mime, charset="utf-8")
        return handler

    async def _session(self, request: web.Request) -> web.StreamResponse:
        role = self._bearer_role(request)
        if role is None:
            return _unauthorized()
        response = web.json_response({"role": role, "store": self.feed.site.store.name})
        response.set_cookie(COOKIE, self.sessions.issue(role, time.time()), max_age=int(SESSION_S),
                            path="/api", httponly=True, samesite="Strict",
                            secure=request.headers.get("X-Forwarded-Proto") == "https")
        return response

    async def _layout(self, request: web.Request) -> web.StreamResponse:
        if self._role(request) is None:
            return _unauthorized()
        return web.json_response({**self.feed.layout, "layout_version": self.feed.layout_version})

    def _latest_body(self, role: Role) -> bytes:
        snap = self.feed.current()
        if snap is None:
            return b"null"
        return snap.technician_json if role == "technician" else snap.staff_json

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        if self._role(request) != "technician":
            return _unauthorized()
        return web.Response(body=self._latest_body("technician"), content_type="application/json")

    async def _staff(self, request: web.Request) -> web.StreamResponse:
        if self._role(request) != "staff":
            return _unauthorized()
        return web.Response(body=self._latest_body("staff"), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if self._role(request) != "technician":
            return _unauthorized()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        role = self._role(request)
        if role is None:
            return _unauthorized()
        if self.viewers >= MAX_VIEWERS:
            return web.Response(status=503)
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        wake = asyncio.Event()
        wake.set()  # the latest window at once, not after the next one
        self._viewers[role].add(wake)
        log.debug("viewer connected", extra={"role": role, "viewers": self.viewers})
        sent: Snapshot | None = None
        try:
            while not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), KEEPALIVE_S)
                if self._closing.is_set():
                    break
                latest = self.feed.current()
                if wake.is_set() and latest is not None and latest is not sent:
                    payload = b"data: " + self._latest_body(role) + b"\n\n"
                    sent = latest
                else:
                    payload = b": keepalive\n\n"
                wake.clear()
                await asyncio.wait_for(response.write(payload), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            log.debug("viewer gone", extra={"role": role})
        finally:
            self._viewers[role].discard(wake)
        return response

