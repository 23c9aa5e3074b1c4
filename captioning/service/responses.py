"""The REST API's JSON: captions, the model summary, a request's results; and reading a request's uploads.
"""
import json
import math
import os
import threading
from typing import TYPE_CHECKING

from fastapi import UploadFile
from PIL import UnidentifiedImageError

from captioning.publish.alttext import alt_text
from captioning.publish.metadata import xmp_packet
from captioning.vision.images import MAX_BYTES, SUPPORTED_TYPES, InvalidImageError, _too_big, load_image, to_canonical

if TYPE_CHECKING:
    from captioning.decoding.captions import Caption
    from captioning.service.captioner import Captioner
from captioning.service.limits import MAX_BEAM_WIDTH, MAX_IMAGES_PER_REQUEST


async def _send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


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
    m = captioner.bundle.manifest                                  # typed: artifacts.manifest.Manifest
    report = captioner.bundle.report                               # typed: artifacts.report.EvaluationReport
    scores = ("decoding", "beam_width", "bleu_1", "bleu_4", "cider", "meteor", "rouge_l")
    test = [{k: r[k] for k in scores if k in r} for r in (report.runs if report else []) if r.get("split") == "test"]

    def encoder(e) -> dict:
        return {"name": e.name, "alpha": e.alpha, "input_size": e.input_size, "feature_dim": e.feature_dim}

    return {
        "name": captioner.bundle.name,
        "encoder": encoder(m.encoder),
        "encoders": [encoder(e) for e in captioner.bundle.encoders],   # more than one: a cross-encoder ensemble
        "decoders": [{"kind": d.kind, "units": d.units, "encoder": key}
                     for d, key in zip(m.decoders, captioner.bundle.decoder_keys)],
        "uses_attention": captioner.spatial and any(d.kind in ("attention", "topdown") for d in m.decoders),
        "vocab_size": m.vocab_size,
        "has_trust_index": captioner.can_assess,      # results carry each photo's trust level (null otherwise)
        "max_length": captioner.bundle.max_length,
        "trained_on": m.data.to_dict(),
        "fine_tuned_on_cider": m.fine_tuned,
        "created": m.created,
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


def _image_error(name: str, exc: InvalidImageError) -> tuple[int, str]:
    """The status for a file the loader refused: 415 not an image, 422 empty, damaged or a decompression bomb."""
    return (415 if isinstance(exc.__cause__, UnidentifiedImageError) else 422), f"{name}: {exc}"
