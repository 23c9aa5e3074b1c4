"""The REST API's guards, in front of every route: request size, API key off loopback, per-client rate limit,
stalled-upload timeout; each refusal a one-line JSON error.
"""
import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI, HTTPException

from captioning.vision.images import MAX_BYTES

if TYPE_CHECKING:
    pass
from captioning.service.admission import Admission
from captioning.service.limits import (
    BODY_DEADLINE,
    DOCS_ASSETS,
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_BYTES,
    MIN_KEY_LENGTH,
    PUBLIC_PATHS,
    SPOOL_BYTES,
    ServerSettings,
)
from captioning.service.responses import _send_json


def _too_large_request(size: int | None) -> str:
    seen = f" ({size:,} bytes)" if size else ""
    return (f"The request is larger than {MAX_REQUEST_BYTES / 2**20:g} MB{seen}. Send at most "
            f"{MAX_IMAGES_PER_REQUEST} images of up to {MAX_BYTES / 2**20:g} MB each per request.")


class RequestSizeLimit:
    """ASGI middleware: refuse bodies above ``limit`` bytes (413) before they are parsed or spooled to disk,
    by their declared Content-Length or, for chunked uploads, as the bytes arrive."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, _too_large_request(int(declared)))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, _too_large_request(None))     # answered by FastAPI's handler
            return message

        await self.app(scope, counted, send)


class ApiKeyAuth:
    """ASGI middleware: every path but ``PUBLIC_PATHS`` (and the docs' assets) needs ``Authorization: Bearer KEY``,
    checked before the body is read and compared in constant time (as digests, so not even the length leaks)."""

    def __init__(self, app, key: str):
        self.app, self.digest = app, hashlib.sha256(key.encode()).digest()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not _is_public(scope["path"]):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            given = hashlib.sha256(token.strip()).digest()
            if not (hmac.compare_digest(given, self.digest) and scheme.lower() == b"bearer"):
                return await _send_json(send, 401, "Missing or wrong API key: send the header "
                                        "'Authorization: Bearer KEY' with the server's CAPTIONING_API_KEY.",
                                        {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/")


class RateLimit:
    """ASGI middleware: a token bucket per client address on every non-public path: ``burst`` requests at once,
    then ``per_minute``; beyond it 429 with Retry-After (the seconds until the next token)."""

    MAX_CLIENTS = 10_000                 # buckets kept; the least recently seen client is forgotten first

    def __init__(self, app, per_minute: float, burst: int):
        self.app, self.rate, self.burst = app, per_minute / 60.0, float(burst)
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()     # client -> (tokens, when)

    def take(self, client: str, now: float) -> float:
        """Spend one token of ``client``'s bucket: 0 when allowed, else the seconds until one is there."""
        tokens, when = self.buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - 1 if not wait else tokens, now)
        if len(self.buckets) > self.MAX_CLIENTS:
            self.buckets.popitem(last=False)
        return wait

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.rate and not _is_public(scope["path"]):
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.take(client, time.monotonic())
            if wait:
                return await _send_json(send, 429, f"Too many requests from {client}: at most "
                                        f"{self.rate * 60:g} a minute (bursts of {self.burst:g}). "
                                        f"Retry in {math.ceil(wait)} s.", {"Retry-After": str(math.ceil(wait))})
        await self.app(scope, receive, send)


class BodyTimeout:
    """ASGI middleware: 408 when the body stalls (nothing for ``idle`` seconds) or takes over ``BODY_DEADLINE``, so
    stalled uploads do not hold a queue place, a connection and a spooled file for ever."""

    def __init__(self, app, idle: float, deadline: float = BODY_DEADLINE):
        self.app, self.idle, self.deadline = app, idle, deadline

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        end = time.monotonic() + self.deadline
        done = False

        async def timed():
            nonlocal done
            if done:                                          # the body is in: disconnect polls pass straight on
                return await receive()
            with anyio.move_on_after(max(0.0, min(self.idle, end - time.monotonic()))) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise HTTPException(408, f"The upload stalled (nothing for {self.idle:g} s, or the whole body took "
                                         f"over {self.deadline:g} s). Send the request again.")
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)


GUARD_RESPONSES = {
    401: {"description": "No or a wrong API key (when the server has one: 'Authorization: Bearer KEY')"},
    408: {"description": "The upload stalled"},
    429: {"description": "Too many requests from this client (see Retry-After)"},
    503: {"description": "The queue is full or no slot came free in time (see Retry-After)"},
}


def add_guards(app: FastAPI, settings: ServerSettings, admission: Admission) -> None:
    """The request guards, outermost first: CORS (only for configured origins), rate limit, API key, size limit,
    body timeout, the bounded queue. Those before the queue answer before the body is read."""
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = SPOOL_BYTES             # uploads wait on disk, not in memory
    app.add_middleware(admission.middleware)
    app.add_middleware(BodyTimeout, idle=settings.body_timeout)
    app.add_middleware(RequestSizeLimit)
    if settings.api_key:
        app.add_middleware(ApiKeyAuth, key=settings.api_key)
    if settings.rate_per_minute:
        app.add_middleware(RateLimit, per_minute=settings.rate_per_minute, burst=settings.rate_burst)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:                                        # a host name: it may resolve to anything
        return False


def api_key(key_file: str | None = None) -> str | None:
    """The key from ``key_file`` (first line) or ``$CAPTIONING_API_KEY``; None when neither is set."""
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read --api-key-file {key_file} ({exc.__class__.__name__}); "
                             f"write the key on its first line") from None
        if not key:
            raise ValueError(f"--api-key-file {key_file} is empty; write the key on its first line")
    else:
        key = os.environ.get("CAPTIONING_API_KEY", "").strip() or None
    if key is not None and (len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key)):
        raise ValueError(f"the API key must be at least {MIN_KEY_LENGTH} characters without spaces; make one with: "
                         f"python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def check_access(host: str, key: str | None, insecure_no_auth: bool = False) -> None:
    """Refuse to open the API to the network without a key (ValueError, one line naming the variable)."""
    if not is_loopback(host) and key is None and not insecure_no_auth:
        raise ValueError(f"--host {host} opens the API to the network: set CAPTIONING_API_KEY (or --api-key-file "
                         f"PATH) so clients must send 'Authorization: Bearer KEY', or pass --insecure-no-auth")
