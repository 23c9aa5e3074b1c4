"""The REST API over the facade: ``python -m captioning serve [--host 127.0.0.1] [--port 8000] [--bundle DIR]``.

Endpoints (OpenAPI page at ``/docs``):
    POST /v1/captions   one or several images (multipart field ``images``) + decoding options as form fields
                        -> the n-best captions of each, with scores and per-word probabilities (attention on request)
    POST /v1/captions/photo   one image -> the same photo with its caption written into its metadata (XMP, IPTC,
                        EXIF; pixels untouched), or ``return=xmp`` its XMP sidecar, or ``return=json`` caption, alt
                        text and XMP packet (captioning/metadata.py; needs ExifTool for the photo)
    GET  /v1/health     liveness and the loaded model's name
    GET  /v1/model      the bundle's summary: encoder, decoders, vocabulary, training data, test scores, limits

Uploads are validated like the app's: at most ``MAX_BYTES`` per image (the constant the app's uploader and
``.streamlit/config.toml`` share), 413 above it, 415 for a file that is not an image, 422 for a damaged or
oversized one, each with the loader's message. The model is loaded once per process; requests decode in
worker threads, at most ``max_concurrent`` at a time, so the event loop keeps answering health checks.
"""
import time
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from PIL import UnidentifiedImageError

from .batch import caption_stream
from .captioner import Captioner
from .decoding import Caption
from .images import MAX_BYTES, SUPPORTED_TYPES, InvalidImageError, _too_big, load_image

MAX_IMAGES_PER_REQUEST = 16
MAX_BEAM_WIDTH = 10                              # the app's slider range; wider beams cost time, not quality
MAX_REQUEST_BYTES = MAX_IMAGES_PER_REQUEST * MAX_BYTES + 2**20     # every image at the limit + form overhead
DEFAULT_CONCURRENCY = 2                          # decodes at once; more only queue for the same CPU cores


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


async def _send_json(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def caption_json(caption: Caption, attention: bool = False) -> dict:
    """One caption as JSON: text, log p, score, per-word probabilities (and attention weights on request)."""
    out = {"text": caption.text, "log_prob": round(caption.log_prob, 4), "score": round(caption.score, 4),
           "mean_log_prob": round(caption.normalized_log_prob, 4), "finished": caption.finished,
           "words": [{"word": w, "probability": round(p, 4)} for w, p in zip(caption.words, caption.word_probs)],
           "end_probability": round(caption.token_probs[len(caption.words)], 4) if caption.finished else None}
    if attention and caption.attention is not None:
        weights = caption.attention[: caption.num_tokens]                      # (tokens, locations)
        out["attention"] = [[round(float(a), 5) for a in row] for row in weights]
    return out


def model_summary(captioner: Captioner) -> dict:
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
        "max_length": captioner.bundle.max_length,
        "trained_on": m.get("data", {}),
        "fine_tuned_on_cider": bool(m.get("scst") or any(e.get("scst") for e in m.get("ensemble_of", []))),
        "created": m.get("created"),
        "test_scores": test,
        "limits": {"max_bytes_per_image": MAX_BYTES, "max_images_per_request": MAX_IMAGES_PER_REQUEST,
                   "max_beam_width": MAX_BEAM_WIDTH, "image_types": list(SUPPORTED_TYPES)},
    }


def _image_error(name: str, exc: InvalidImageError) -> tuple[int, str]:
    """The status for a file the loader refused: 415 not an image, 422 empty, damaged or a decompression bomb."""
    return (415 if isinstance(exc.__cause__, UnidentifiedImageError) else 422), f"{name}: {exc}"


def create_app(captioner: Captioner, max_concurrent: int = DEFAULT_CONCURRENCY):
    """The FastAPI app serving ``captioner`` (loaded once, shared by every request)."""
    limiter = anyio.CapacityLimiter(max_concurrent)
    app = FastAPI(title="Captioning Studio API", version="1",
                  summary=f"Captions for photos from the {captioner.bundle.name!r} model (CNN encoder + LSTM decoder).")
    app.add_middleware(RequestSizeLimit)

    @app.get("/v1/health", summary="Liveness: the model is loaded and requests are served")
    async def health() -> dict:
        return {"status": "ok", "model": captioner.bundle.name}

    @app.get("/v1/model", summary="The loaded bundle: encoder, decoders, vocabulary, training data, test scores")
    async def model() -> dict:
        return model_summary(captioner)

    @app.post("/v1/captions", summary="Caption one or several images",
              responses={413: {"description": "An image (or the request) is too large"},
                         415: {"description": "A file is not an image"},
                         422: {"description": "A damaged image or invalid decoding options"}})
    async def captions(
        images: Annotated[list[UploadFile], File(description="one or more photos (JPEG, PNG, WebP, BMP or GIF)")],
        beam_width: Annotated[int, Form(ge=1, le=MAX_BEAM_WIDTH, description="1 = greedy; 5 = the app's default")] = 5,
        length_penalty: Annotated[float, Form(ge=0.0, le=2.0,
                                              description="score = sum log p / length ** penalty")] = 1.0,
        no_repeat_ngram_size: Annotated[int, Form(ge=0, le=4,
                                                  description="0 = off; 2 forbids a repeated word pair")] = 0,
        n_best: Annotated[int, Form(ge=1, le=MAX_BEAM_WIDTH, description="captions per image (<= beam_width)")] = 1,
        attention: Annotated[bool, Form(description="include each word's attention weights over the "
                                                    "encoder's grid (attention decoders)")] = False,
    ) -> dict:
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise HTTPException(413, f"{len(images)} images in one request; send at most {MAX_IMAGES_PER_REQUEST}.")
        try:
            config = captioner.config(beam_width=beam_width, length_penalty=length_penalty,
                                      no_repeat_ngram_size=no_repeat_ngram_size, num_return_sequences=n_best)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        uploads = []
        for i, upload in enumerate(images):
            name = upload.filename or f"image {i + 1}"
            data = await upload.read(MAX_BYTES + 1)
            size = upload.size if upload.size is not None else len(data)
            uploads.append((name, data, size))

        def work():                                           # in a worker thread, a few at a time
            pictures = []
            for name, data, size in uploads:
                if size > MAX_BYTES:                          # only MAX_BYTES + 1 were read: say the true size
                    return 413, f"{name}: {_too_big(size, MAX_BYTES)}"
                try:
                    pictures.append(load_image(data))
                except InvalidImageError as exc:
                    return _image_error(name, exc)
            start = time.perf_counter()
            results = list(caption_stream(captioner, pictures, config, batch_size=len(pictures),
                                          names=[u[0] for u in uploads]))
            return results, time.perf_counter() - start

        outcome = await anyio.to_thread.run_sync(work, limiter=limiter)
        if isinstance(outcome[0], int):
            raise HTTPException(*outcome)
        results, seconds = outcome
        return {
            "model": captioner.bundle.name,
            "decoding": {"beam_width": beam_width, "length_penalty": length_penalty,
                         "no_repeat_ngram_size": no_repeat_ngram_size, "n_best": n_best},
            "seconds": round(seconds, 4),
            "results": [{"filename": r.name, "captions": [caption_json(c, attention) for c in r.captions]}
                        for r in results],
        }

    add_photo_route(app, captioner, limiter)
    return app


def add_photo_route(app: FastAPI, captioner: Captioner, limiter) -> None:
    """``POST /v1/captions/photo``: caption one photo and hand it back captioned (or its XMP, or JSON)."""
    from typing import Literal
    from urllib.parse import quote

    from fastapi import Response

    from .alttext import alt_text, keywords
    from .metadata import INSTALL_HINT, KINDS, MetadataError, embed_bytes, exiftool_available, xmp_packet

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
        image: Annotated[UploadFile, File(description="one photo (JPEG, PNG, WebP or TIFF keep the caption inside)")],
        beam_width: Annotated[int, Form(ge=1, le=MAX_BEAM_WIDTH, description="1 = greedy; 5 = the app's default")] = 5,
        tag_keywords: Annotated[bool, Form(description="also write the caption's nouns as dc:subject")] = False,
        return_: Annotated[Literal["photo", "xmp", "json"], Form(alias="return")] = "photo",
    ) -> Response:
        name = image.filename or "photo"
        data = await image.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise HTTPException(413, f"{name}: {_too_big(image.size or len(data), MAX_BYTES)}")
        if return_ == "photo" and not exiftool_available():
            raise HTTPException(501, f"{INSTALL_HINT}; or ask for return=xmp (a sidecar needs no ExifTool)")
        if return_ == "photo" and Path(name).suffix.lower() not in KINDS:
            raise HTTPException(415, f"{name}: only JPEG, PNG, WebP and TIFF hold the caption inside; "
                                     "ask for return=xmp for a sidecar")

        def work():
            try:
                picture = load_image(data)
            except InvalidImageError as exc:
                return _image_error(name, exc)
            best = captioner.caption(picture, captioner.config(beam_width=beam_width))[0]
            text = alt_text(best.text)
            subjects = keywords(best.text) if tag_keywords else []
            if return_ != "photo":
                return best, text, xmp_packet(text or "", subjects)
            try:
                return best, text, embed_bytes(data, name, best.text, subjects)
            except MetadataError as exc:
                return 422, f"{name}: {exc}"

        outcome = await anyio.to_thread.run_sync(work, limiter=limiter)
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


def serve(bundle, host: str = "127.0.0.1", port: int = 8000, weights=None,
          max_concurrent: int = DEFAULT_CONCURRENCY) -> None:
    """Load the bundle once, warm it up, and serve the API with uvicorn until interrupted."""
    import uvicorn

    captioner = Captioner.from_bundle(bundle, weights)
    captioner.warm_up()
    app = create_app(captioner, max_concurrent)
    print(f"Serving {captioner.bundle.name} on http://{host}:{port} (API docs: http://{host}:{port}/docs)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
