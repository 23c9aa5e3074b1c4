"""The REST API over the facade: ``python -m captioning serve [--host 127.0.0.1] [--port 8000] [--bundle DIR]``.

Endpoints (OpenAPI page at ``/docs``, served from a packaged copy of Swagger UI, so it works offline):
    POST /v1/captions   one or several images (multipart field ``images``) + decoding options as form fields
                        (every strategy and option of the command line, same names without dashes, default
                        beam 5) -> the n-best captions of each, with scores and per-word probabilities (attention
                        on request) and the photo's trust level (in-domain score) where the bundle has a retrieval index
    POST /v1/captions/photo   one image -> the same photo with its caption written into its metadata (XMP, IPTC,
                        EXIF; pixels untouched), or ``return=xmp`` its XMP sidecar, or ``return=json`` caption, alt
                        text and XMP packet (captioning/publish/metadata.py; needs ExifTool for the photo)
    GET  /v1/health     liveness, the loaded model's name and the queue (requests running, waiting, abandoned)
    GET  /v1/model      the bundle's summary: encoder, decoders, vocabulary, training data, test scores, limits

Uploads are validated like the app's: at most ``MAX_BYTES`` per image (the constant the app's uploader and
``.streamlit/config.toml`` share), 413 above it, 415 for a file that is not an image, 422 for a damaged or
oversized one, each with the loader's message. The model is loaded once per process.

Bounded under load (see :class:`ServerSettings` for the defaults): request bodies are spooled to disk, and images
are read and decoded only once the request holds one of ``max_concurrent`` slots, one image at a time, so memory
does not grow with the number of waiting uploads; at most ``max_queue`` requests wait (503 + Retry-After beyond),
each for at most ``queue_timeout`` seconds (503 + Retry-After); a request whose client has gone is dropped from
the queue and stopped between images. Off loopback the server requires ``CAPTIONING_API_KEY`` (``Authorization:
Bearer KEY``); every client address has a token-bucket rate limit (429 + Retry-After); a stalled upload is 408.
"""
import ctypes
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import UnidentifiedImageError

from captioning.decoding.options import OPTION, shown
from captioning.publish.alttext import alt_text
from captioning.publish.metadata import xmp_packet
from captioning.service.api_options import decoding_form, one_line_422
from captioning.service.batch import caption_stream
from captioning.vision.images import MAX_BYTES, SUPPORTED_TYPES, InvalidImageError, _too_big, load_image, to_canonical

if TYPE_CHECKING:
    from captioning.decoding.search import Caption
    from captioning.service.captioner import Captioner

MAX_IMAGES_PER_REQUEST = 16
MAX_BEAM_WIDTH = OPTION["beam_width"].high       # every decoding limit is declared once (decoding_options)
MAX_REQUEST_BYTES = MAX_IMAGES_PER_REQUEST * MAX_BYTES + 2**20     # every image at the limit + form overhead
DEFAULT_CONCURRENCY = 2                          # decodes at once; more only queue for the same CPU cores
ENCODE_BATCH = 4                                 # photos through the encoder at once: its activations grow with
                                                 # the batch, CPU throughput hardly does (bench/serve_memory.py)
SPOOL_BYTES = 256 * 1024                         # an upload above this waits on disk, not in memory
TRIM_AFTER_BYTES = 32 * 2**20                    # after a request this large, hand freed heap back to the OS
BODY_DEADLINE = 600.0                            # seconds for a whole request body, however it trickles in
PUBLIC_PATHS = ("/v1/health", "/docs", "/openapi.json")     # answered without the API key (no data, no CPU)
MIN_KEY_LENGTH = 16                              # a key anyone could guess protects nothing
DOCS_ASSETS = "/docs/assets"                     # Swagger UI's files, from the swagger-ui-bundle-v2 package


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


async def _send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class ServerSettings:
    """How much one server takes on, and from whom: the documented defaults of ``python -m captioning serve``."""

    max_concurrent: int = DEFAULT_CONCURRENCY   # requests decoding at once (each holds one image decoded at a time)
    max_queue: int = 8                  # requests waiting for a slot (uploading or spooled); one more is 503
    queue_timeout: float = 60.0         # seconds a request may wait for a slot before 503 + Retry-After
    rate_per_minute: float = 60.0       # per client address, token bucket (0 = no limit); 429 + Retry-After
    rate_burst: int = 20                # requests a client may send at once before the rate applies
    body_timeout: float = 30.0          # 408 when an upload sends nothing for this long (whole body: BODY_DEADLINE)
    api_key: str | None = None          # required as "Authorization: Bearer KEY" when set
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (none: no CORS headers at all)

    def __post_init__(self):
        if self.max_concurrent < 1 or self.max_queue < 0 or self.rate_burst < 1:
            raise ValueError("--max-concurrent and --rate-burst must be >= 1, --max-queue >= 0")
        if min(self.queue_timeout, self.body_timeout) <= 0 or self.rate_per_minute < 0:
            raise ValueError("--queue-timeout and --body-timeout must be > 0 seconds, --rate-limit >= 0")


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


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


class _Ticket:
    """One admitted request: it counts against the queue until it ends or its client is seen to have left."""

    def __init__(self):
        self.running = False
        self.check = None                 # async () -> None: drop the request if its client has left (see run)


class Admission:
    """The bounded queue in front of the ``max_concurrent`` decoding slots.

    The middleware (before the body is read) refuses a request with 503 when ``max_concurrent + max_queue`` are
    already in, after first dropping those whose clients have left; ``run`` waits for a decoding slot for at most
    ``queue_timeout`` seconds (503 beyond), watching the client: one that has gone gives up its place at once, and
    ``gone`` tells its work to stop between photos.
    """

    TICKET = "captioning.ticket"          # the scope key the middleware hands the request's ticket to ``run`` by

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self.tickets: set[_Ticket] = set()                    # admitted requests, waiting or running
        self.running = 0                                      # slots in use (a left client's work ends its batch)
        self.abandoned = 0                                    # requests dropped because their client left
        self.seconds = 2.0                                    # running mean of a request's work, for Retry-After

    @property
    def inside(self) -> int:
        return len(self.tickets)

    def status(self) -> dict:
        """What /v1/health shows: slots in use, requests waiting (or uploading), dropped as their client left."""
        waiting = sum(not t.running for t in self.tickets)
        return {"running": self.running, "waiting": waiting, "abandoned": self.abandoned,
                "slots": self.settings.max_concurrent, "queue": self.settings.max_queue}

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the requests ahead of a newcomer over the slots, at the mean pace."""
        waiting = max(0, self.inside - self.settings.max_concurrent)
        return max(1, math.ceil(self.seconds * (waiting + 1) / self.settings.max_concurrent))

    def busy(self, why: str) -> HTTPException:
        return HTTPException(503, f"The server is busy ({why}). Retry in {self.retry_after()} s.",
                             headers={"Retry-After": str(self.retry_after())})

    def full(self) -> bool:
        return self.inside >= self.settings.max_concurrent + self.settings.max_queue

    def middleware(self, app):
        async def admit(scope, receive, send):
            if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/captions"):
                return await app(scope, receive, send)
            if self.full():                                   # clients may have left since the last poll
                for ticket in list(self.tickets):
                    if ticket.check is not None:
                        await ticket.check()
            if self.full():
                error = self.busy(f"{self.inside} requests in, the queue holds {self.settings.max_queue}")
                return await _send_json(send, 503, error.detail, error.headers)
            ticket = scope[self.TICKET] = _Ticket()
            self.tickets.add(ticket)
            try:
                await app(scope, receive, send)
            finally:
                self.tickets.discard(ticket)
        return admit

    async def run(self, request: Request, work):
        """Run ``work(gone)`` in a worker thread once a slot is free; ``gone`` is set when the client leaves.
        Raises ClientGone if it left, HTTPException 503 if no slot came within ``queue_timeout``."""
        gone, token = threading.Event(), object()
        ticket = getattr(request, "scope", {}).get(self.TICKET) or _Ticket()
        outcome, timed_out = None, False
        async with anyio.create_task_group() as tasks:
            async def check():
                if not gone.is_set() and await request.is_disconnected():
                    gone.set()
                    self.tickets.discard(ticket)              # its place is free now, even if its batch runs on
                    tasks.cancel_scope.cancel()               # leaves the queue at once

            async def watch():                                # the whole time: while queued and while working
                while not gone.is_set():
                    await check()
                    await anyio.sleep(0.2)

            ticket.check = check
            tasks.start_soon(watch)
            with anyio.move_on_after(self.settings.queue_timeout) as waiting:
                await self.limiter.acquire_on_behalf_of(token)
            timed_out = waiting.cancelled_caught
            if not timed_out:
                self.running += 1
                ticket.running = True
                try:
                    start = time.perf_counter()
                    with anyio.CancelScope(shield=True):      # a thread cannot be interrupted: `gone` stops it
                        outcome = await anyio.to_thread.run_sync(work, gone)
                    self.seconds = 0.8 * self.seconds + 0.2 * (time.perf_counter() - start)
                finally:
                    self.running -= 1
                    self.limiter.release_on_behalf_of(token)
            ticket.check = None
            tasks.cancel_scope.cancel()
        if gone.is_set():
            self.abandoned += 1
            raise ClientGone
        if timed_out:
            raise self.busy(f"no free slot within {self.settings.queue_timeout:g} s")
        return outcome


def read_uploads(uploads: list[UploadFile], gone: threading.Event) -> list | tuple[int, str]:
    """Each spooled upload read and decoded in turn (one full-size image in memory at a time) to the encoder's
    canonical uint8 (224, 224, 3) array; (status, message) for the first file refused; [] if the client left."""
    arrays = []
    for i, upload in enumerate(uploads):
        if gone.is_set():
            return []
        name = upload.filename or f"image {i + 1}"
        upload.file.seek(0, os.SEEK_END)
        size = upload.file.tell()
        upload.file.seek(0)
        if size > MAX_BYTES:
            return 413, f"{name}: {_too_big(size, MAX_BYTES)}"
        try:
            arrays.append(to_canonical(load_image(upload.file)))
        except InvalidImageError as exc:
            return _image_error(name, exc)
    return arrays


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt                        # glibc only  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Hand the heap pages freed by a large request back to the OS (glibc keeps them otherwise, and RSS stays at
    the peak for good). A no-op off glibc."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each busy thread its own heap (up to 8 per core); freed memory scattered over many of them is
    rarely returned. Two arenas keep the API's RSS near its working set (what ``MALLOC_ARENA_MAX=2`` does)."""
    if (libc := _libc()) is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(-8, arenas)                                 # M_ARENA_MAX


def caption_json(caption: "Caption", attention: bool = False) -> dict:
    """One caption as JSON: text, log p, score, per-word probabilities (and attention weights on request)."""
    out = {"text": caption.text, "log_prob": round(caption.log_prob, 4), "score": round(caption.score, 4),
           "mean_log_prob": round(caption.normalized_log_prob, 4), "finished": caption.finished,
           "words": [{"word": w, "probability": round(p, 4)} for w, p in zip(caption.words, caption.word_probs)],
           "end_probability": round(caption.token_probs[len(caption.words)], 4) if caption.finished else None}
    if attention and caption.attention is not None:
        weights = caption.attention[: caption.num_tokens]                      # (tokens, locations)
        out["attention"] = [[round(float(a), 5) for a in row] for row in weights]
    return out


def model_summary(captioner: "Captioner") -> dict:
    """The bundle's manifest, in short: what it is, what it was trained on, how it scores on the test split."""
    m = captioner.bundle.manifest
    metrics = captioner.bundle.metrics or {}
    test = [{k: r[k] for k in ("decoding", "beam_width", "bleu_1", "bleu_4", "cider", "meteor", "rouge_l") if k in r}
            for r in metrics.get("results", []) if r.get("split") == "test"]
    return {
        "name": captioner.bundle.name,
        "encoder": {k: m["encoder"].get(k) for k in ("name", "alpha", "input_size", "feature_dim")},
        "encoders": [{k: e.get(k) for k in ("name", "alpha", "input_size", "feature_dim")}
                     for e in captioner.bundle.encoders],          # more than one: a cross-encoder ensemble
        "decoders": [{"kind": d.kind, "units": d.units, "encoder": key}
                     for d, key in zip(captioner.bundle.manifest.decoders, captioner.bundle.decoder_keys)],
        "uses_attention": captioner.spatial and any(d.kind in ("attention", "topdown")
                                                    for d in captioner.bundle.manifest.decoders),
        "vocab_size": m["vocab_size"],
        "has_trust_index": captioner.can_assess,      # results carry each photo's trust level (null otherwise)
        "max_length": captioner.bundle.max_length,
        "trained_on": m.get("data", {}),
        "fine_tuned_on_cider": bool(m.get("scst") or any(e.get("scst") for e in m.get("ensemble_of", []))),
        "created": m.get("created"),
        "test_scores": test,
        "limits": {"max_bytes_per_image": MAX_BYTES, "max_images_per_request": MAX_IMAGES_PER_REQUEST,
                   "max_beam_width": MAX_BEAM_WIDTH, "image_types": list(SUPPORTED_TYPES)},
    }


def result_json(result, attention: bool = False) -> dict:
    """One image's answer: its file name, n-best captions, the best one as alt text and as an XMP packet, and,
    where the bundle has a retrieval index, its trust level as the app and the CLI report it (``in_domain`` score,
    level, what the level means); ``trust`` is null for a bundle without an index."""
    out = {"filename": result.name, "captions": [caption_json(c, attention) for c in result.captions]}
    # the best caption as alt text and as the XMP packet a sidecar (or `/v1/captions/photo`) would hold
    text = alt_text(result.captions[0].text) if result.captions else None
    out["alt_text"], out["xmp"] = text, (xmp_packet(text) if text else None)
    trust = result.trust
    out["trust"] = None if trust is None else {**_finite(trust.to_json()), "level": trust.level,
                                               "explanation": trust.explanation}
    if result.memory is not None:                  # a server with a memory: the remembered captions used
        out.update(result.memory.to_json())
    return out


def _finite(record: dict) -> dict:
    """JSON-safe: a NaN or infinite score becomes null (strict JSON parsers refuse them)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


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


def add_local_docs(app: FastAPI, bearer: bool = False) -> None:
    """``/docs`` from the Swagger UI files of the swagger-ui-bundle-v2 package (FastAPI's "self-hosting JavaScript
    and CSS for docs"): no CDN, so the page renders offline. With ``bearer``, the page's Authorize button takes
    the API key."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})   # no call to an online validator

    if bearer:
        plain = app.openapi

        def openapi() -> dict:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            return schema

        app.openapi = openapi


def _image_error(name: str, exc: InvalidImageError) -> tuple[int, str]:
    """The status for a file the loader refused: 415 not an image, 422 empty, damaged or a decompression bomb."""
    return (415 if isinstance(exc.__cause__, UnidentifiedImageError) else 422), f"{name}: {exc}"


def create_app(captioner: "Captioner", max_concurrent: int | None = None, settings: ServerSettings | None = None,
               memory=None):
    """The FastAPI app serving ``captioner`` (loaded once, shared by every request), within ``settings``' limits;
    with ``memory`` (a :class:`~captioning.service.memory.routes.ServerMemory`) captions use it and /v1/memory
    manages it."""
    settings = settings or ServerSettings(**({"max_concurrent": max_concurrent} if max_concurrent else {}))
    admission = Admission(settings)
    app = FastAPI(title="Captioning Studio API", version="1", docs_url=None, redoc_url=None,
                  summary=f"Captions for photos from the {captioner.bundle.name!r} model (CNN encoder + LSTM decoder).")
    add_local_docs(app, bearer=settings.api_key is not None)
    add_guards(app, settings, admission)
    app.add_exception_handler(RequestValidationError, one_line_422)    # a bad decoding field: one line, 422

    @app.get("/v1/health", summary="Liveness: the model is loaded and requests are served")
    async def health() -> dict:
        return {"status": "ok", "model": captioner.bundle.name, "requests": admission.status()}

    @app.get("/v1/model", summary="The loaded bundle: encoder, decoders, vocabulary, training data, test scores")
    async def model() -> dict:
        return model_summary(captioner)

    @app.post("/v1/captions", summary="Caption one or several images",
              responses={**GUARD_RESPONSES, 413: {"description": "An image (or the request) is too large"},
                         415: {"description": "A file is not an image"},
                         422: {"description": "A damaged image or invalid decoding options"}})
    async def captions(
        request: Request,
        images: Annotated[list[UploadFile], File(description="one or more photos (JPEG, PNG, WebP, BMP or GIF)")],
        decoding: Annotated[dict, Depends(decoding_form(captioner.bundle.max_length))],   # every decoding option
        attention: Annotated[bool, Form(description="include each word's attention weights over the "
                                                    "encoder's grid (attention decoders)")] = False,
    ) -> dict:
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise HTTPException(413, f"{len(images)} images in one request; send at most {MAX_IMAGES_PER_REQUEST}.")
        try:
            config = captioner.config(**decoding)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        names = [u.filename or f"image {i + 1}" for i, u in enumerate(images)]
        large = sum(u.size or 0 for u in images) > TRIM_AFTER_BYTES

        def work(gone: threading.Event):                      # in a worker thread, holding one decoding slot
            try:
                arrays = read_uploads(images, gone)
                if not isinstance(arrays, list) or gone.is_set():
                    return arrays
                start = time.perf_counter()
                results = []
                for result in caption_stream(captioner, arrays, config, batch_size=ENCODE_BATCH, names=names,
                                             memory=memory.current() if memory is not None else None):
                    if gone.is_set():                         # stops between batches; nobody would read it
                        return []
                    results.append(result)
                return results, time.perf_counter() - start
            finally:
                if large:
                    release_memory()

        try:
            outcome = await admission.run(request, work)
        except ClientGone:
            return Response(status_code=499)                  # nobody is listening; nginx's "client closed request"
        if isinstance(outcome[0], int):
            raise HTTPException(*outcome)
        results, seconds = outcome
        return {
            "model": captioner.bundle.name,
            "strategy": config.kind, "decoding": shown(config), "decoding_label": config.describe(),
            "seconds": round(seconds, 4),
            "results": [result_json(r, attention) for r in results],
            **({"attention_note": captioner.attention_note} if attention and captioner.attention_note else {}),
        }

    add_photo_route(app, captioner, admission)              # the same queue and decoding slots
    if memory is not None:
        from captioning.service.memory.routes import add_memory_routes

        add_memory_routes(app, captioner, admission, memory)
    return app


def add_photo_route(app: FastAPI, captioner: "Captioner", admission: Admission) -> None:
    """``POST /v1/captions/photo``: caption one photo and hand it back captioned (or its XMP, or JSON). Like
    ``/v1/captions`` it waits in the bounded queue with its body spooled to disk and reads it only inside a slot."""
    from typing import Literal
    from urllib.parse import quote

    from fastapi import Response

    from captioning.publish.alttext import alt_text, keywords
    from captioning.publish.metadata import (
        INSTALL_HINT,
        KINDS,
        MetadataError,
        embed_bytes,
        exiftool_available,
        xmp_packet,
    )

    @app.post("/v1/captions/photo", summary="Caption one photo and get it back with the caption in its metadata",
              response_class=Response,
              responses={200: {"content": {"image/jpeg": {}, "application/rdf+xml": {}, "application/json": {}},
                               "description": "the captioned photo (return=photo), its XMP sidecar (return=xmp), "
                                              "or caption, alt text and XMP packet (return=json)"},
                         413: {"description": "The image is too large"},
                         415: {"description": "Not an image, or a type that cannot hold XMP (ask for return=xmp)"},
                         422: {"description": "A damaged image"},
                         501: {"description": "ExifTool is not installed on the server (return=photo only)"}})
    async def captioned_photo(
        request: Request,
        image: Annotated[UploadFile, File(description="one photo (JPEG, PNG, WebP or TIFF keep the caption inside)")],
        decoding: Annotated[dict, Depends(decoding_form(captioner.bundle.max_length))],   # every decoding option
        tag_keywords: Annotated[bool, Form(description="also write the caption's nouns as dc:subject")] = False,
        return_: Annotated[Literal["photo", "xmp", "json"], Form(alias="return")] = "photo",
    ) -> Response:
        name = image.filename or "photo"
        if image.size is not None and image.size > MAX_BYTES:
            raise HTTPException(413, f"{name}: {_too_big(image.size, MAX_BYTES)}")
        if return_ == "photo" and not exiftool_available():
            raise HTTPException(501, f"{INSTALL_HINT}; or ask for return=xmp (a sidecar needs no ExifTool)")
        if return_ == "photo" and Path(name).suffix.lower() not in KINDS:
            raise HTTPException(415, f"{name}: only JPEG, PNG, WebP and TIFF hold the caption inside; "
                                     "ask for return=xmp for a sidecar")

        def work(gone: threading.Event):
            image.file.seek(0)
            data = image.file.read(MAX_BYTES + 1)                   # inside the slot: one photo in memory
            if len(data) > MAX_BYTES:
                return 413, f"{name}: {_too_big(len(data), MAX_BYTES)}"
            try:
                picture = load_image(data)
            except InvalidImageError as exc:
                return _image_error(name, exc)
            best = captioner.caption(picture, captioner.config(**decoding))[0]
            text = alt_text(best.text)
            subjects = keywords(best.text) if tag_keywords else []
            if return_ != "photo":
                return best, text, xmp_packet(text or "", subjects)
            try:
                return best, text, embed_bytes(data, name, best.text, subjects)
            except MetadataError as exc:
                return 422, f"{name}: {exc}"

        try:
            outcome = await admission.run(request, work)
        except ClientGone:
            return Response(status_code=499)                  # nobody is listening
        if isinstance(outcome[0], int):
            raise HTTPException(*outcome)
        best, text, body = outcome
        headers = {"X-Caption": quote(text or ""),                      # percent-encoded: headers are Latin-1
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(Path(name).name)}"
                                          + (".xmp" if return_ == "xmp" else "")}
        if return_ == "json":
            return JSONResponse({"filename": name, "caption": best.text, "alt_text": text, "xmp": body})
        if return_ == "xmp":
            return Response(body, media_type="application/rdf+xml", headers=headers)
        media = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff"}
        return Response(body, media_type=media[KINDS[Path(name).suffix.lower()]], headers=headers)


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


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening now (before the model loads) so a busy port fails at once, in one
    line, and no other server takes the port meanwhile; clients that connect early wait for the model."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host} is not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)       # as uvicorn does: TIME_WAIT is no conflict
    try:
        sock.bind(address)
        sock.listen(2048)                                      # uvicorn's backlog
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running there? "
                         f"Stop it or pick another --port") from None
    sock.set_inheritable(True)
    return sock


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, weights=None,
          max_concurrent: int = DEFAULT_CONCURRENCY, settings: ServerSettings | None = None,
          insecure_no_auth: bool = False, memory_data=None) -> None:
    """Check access and the port, then load the bundle once, warm it up, and serve the API with uvicorn until
    interrupted. ValueError (one line) for a busy port or a network host without a key, before the model loads.
    ``memory_data`` (a checked UserDataset, ``--memory``) is remembered beside the persisted memory."""
    import uvicorn

    from captioning import import_tensorflow_quietly

    settings = settings or ServerSettings(max_concurrent=max_concurrent)
    check_access(host, settings.api_key, insecure_no_auth)
    sock = bind(host, port)
    limit_malloc_arenas()
    import_tensorflow_quietly()
    from captioning.service.captioner import Captioner

    try:
        captioner = Captioner.from_bundle(bundle, weights)
        captioner.warm_up()
    except BaseException:
        sock.close()
        raise
    from captioning.service.memory.routes import server_memory

    app = create_app(captioner, settings=settings, memory=server_memory(captioner, memory_data))
    guard = "API key required" if settings.api_key else "no API key"
    print(f"Serving {captioner.bundle.name} on http://{host}:{port} (API docs: http://{host}:{port}/docs; "
          f"{guard})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
