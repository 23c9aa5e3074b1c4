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
import socket
import threading
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError

from captioning.decoding.options import shown
from captioning.service.admission import Admission, ClientGone, limit_malloc_arenas, release_memory
from captioning.service.api_options import decoding_form, one_line_422
from captioning.service.batch import caption_stream
from captioning.service.guards import GUARD_RESPONSES, add_guards, check_access
from captioning.service.limits import (
    DEFAULT_CONCURRENCY,
    DOCS_ASSETS,
    ENCODE_BATCH,
    MAX_IMAGES_PER_REQUEST,
    TRIM_AFTER_BYTES,
    ServerSettings,
)
from captioning.service.responses import model_summary, read_uploads, result_json
from captioning.service.routes import add_photo_route

if TYPE_CHECKING:
    from captioning.service.captioner import Captioner


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
