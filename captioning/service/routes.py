"""The photo route: ``POST /v1/captions/photo``, one image -> the same photo with its caption written into its
metadata, its XMP sidecar, or caption + alt text + XMP as JSON.
"""
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from captioning.service.api_options import decoding_form
from captioning.vision.images import MAX_BYTES, InvalidImageError, _too_big, load_image

if TYPE_CHECKING:
    from captioning.service.captioner import Captioner
from captioning.service.admission import Admission, ClientGone
from captioning.service.responses import _image_error


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
