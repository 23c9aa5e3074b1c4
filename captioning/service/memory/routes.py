"""The API's memory: captioned photos that change the captions of similar photos at once, without training.

``python -m captioning serve --memory FILE --memory-images DIR`` remembers a captions file's photos for the
server's life; the endpoints below manage the persisted "Your photos" memory (the app's, under
``<artifacts>/.memory/<encoder>/``). Every caption of ``POST /v1/captions`` then carries ``memory_hits`` (the
remembered captions used: image, caption, similarity, source) and ``copied_words``.

    GET    /v1/memory            the remembered photos (file and persisted), the similarity floor and the rule
    POST   /v1/memory            photos (multipart ``images``) + ``captions`` (one form field per photo, in order;
                                 several captions of a photo on separate lines) -> remembered (encoded in the
                                 bounded queue like a caption request; the same size limits: 413/415/422)
    DELETE /v1/memory/{image}    forget a persisted photo (404 when it is not remembered)

The API key, the rate limit and the request-size limit guard these routes like every other (not public).
"""
from __future__ import annotations

import os
import threading
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, Response, UploadFile

from captioning.service.memory.bank import MemoryBank
from captioning.service.memory.store import (
    USER_FIRST_RULE,
    Datastore,
    K,
    empty_datastore,
    training_datastore,
    user_floor_of,
)
from captioning.service.memory.use import RERANK_RULE, CaptionMemory
from captioning.vision.images import MAX_BYTES, InvalidImageError, _too_big

MAX_PHOTOS_PER_REQUEST = 16


class ServerMemory:
    """The training store, a captions file's photos (fixed) and the persisted bank, combined on demand."""

    def __init__(self, captioner, file_store: Datastore | None = None, bank: MemoryBank | None = None, k: int = K):
        self.captioner, self.file_store, self.bank, self.k = captioner, file_store, bank, k
        self.training = (training_datastore(captioner) if captioner.can_assess else
                         empty_datastore(captioner.spec.key, (file_store or bank).dim, user_floor_of(captioner)))
        self._lock = threading.Lock()
        self._current: CaptionMemory | None = None
        self._stale = True

    def user_store(self) -> Datastore:
        store = empty_datastore(self.training.encoder, self.training.dim, self.training.user_floor)
        for part in (self.file_store, self.bank.store() if self.bank else None):
            if part is not None:
                store = store.extended(part)
        return store

    def current(self) -> CaptionMemory | None:
        """What a caption request uses: None while no photo is remembered (captions as without a memory)."""
        with self._lock:
            if self._stale:
                user = self.user_store()
                self._current = CaptionMemory(self.training.extended(user), self.k) if user.photo_count else None
                self._stale = False
            return self._current

    def changed(self) -> None:
        with self._lock:
            self._stale = True


def server_memory(captioner, data=None, root=None) -> ServerMemory:
    """The server's memory: ``data`` (a checked UserDataset from --memory, or None) + the persisted bank."""
    from captioning.service.memory.user import memory_from_dataset

    file_store = memory_from_dataset(data, captioner) if data is not None else None
    return ServerMemory(captioner, file_store, MemoryBank.for_captioner(captioner, root))


def add_memory_routes(app: FastAPI, captioner, admission, memory: ServerMemory) -> None:
    @app.get("/v1/memory", summary="The remembered photos, the similarity floor and the user-first rule")
    async def listing() -> dict:
        fixed = memory.file_store
        photos = [{"image": img, "captions": caps, "origin": "file"}
                  for (img, _), caps in zip(fixed.photos, fixed.captions)] if fixed else []
        if memory.bank is not None:
            photos += [{"image": p["image"], "captions": p["captions"], "origin": "persisted"}
                       for p in memory.bank.listing()]
        return {"encoder": memory.training.encoder, "count": len(photos), "photos": photos,
                "user_floor": round(memory.training.user_floor, 4), "rule": USER_FIRST_RULE,
                "rerank_rule": RERANK_RULE}

    @app.post("/v1/memory", summary="Remember captioned photos (persisted, used by every later caption request)",
              responses={413: {"description": "A photo (or the request) is too large"},
                         415: {"description": "A file is not an image"},
                         422: {"description": "Captions missing, empty or not one per photo"},
                         503: {"description": "The queue is full; retry later"}})
    async def remember(
        request: Request,
        images: Annotated[list[UploadFile], File(description="the photos (JPEG, PNG, WebP, BMP or GIF)")],
        captions: Annotated[list[str], Form(description="one field per photo, in order; several captions of a "
                                                        "photo on separate lines")],
    ) -> dict:
        if memory.bank is None:
            raise HTTPException(404, "this server keeps no persisted memory")
        if len(images) > MAX_PHOTOS_PER_REQUEST:
            raise HTTPException(413, f"{len(images)} photos in one request; send at most {MAX_PHOTOS_PER_REQUEST}")
        if len(captions) != len(images):
            raise HTTPException(422, f"{len(images)} photos but {len(captions)} captions fields; send one per photo")

        def work(gone: threading.Event):
            items = []
            for i, (upload, text) in enumerate(zip(images, captions)):
                name = os.path.basename(upload.filename or f"photo-{i + 1}.jpg")
                upload.file.seek(0, os.SEEK_END)
                size = upload.file.tell()
                upload.file.seek(0)
                if size > MAX_BYTES:
                    return 413, f"{name}: {_too_big(size, MAX_BYTES)}"
                items.append((name, upload.file.read(), text))
            if gone.is_set():
                return []
            try:
                store = memory.bank.add(captioner, items)
            except InvalidImageError as exc:
                return 415 if "not an image" in str(exc).lower() else 422, f"a photo cannot be read: {exc}"
            except ValueError as exc:
                return 422, str(exc)
            memory.changed()
            return {"added": [name for name, _, _ in items], "count": store.photo_count}

        from captioning.service.admission import ClientGone

        try:
            outcome = await admission.run(request, work)
        except ClientGone:
            return Response(status_code=499)
        if isinstance(outcome, tuple):
            raise HTTPException(*outcome)
        return outcome

    @app.delete("/v1/memory/{image:path}", summary="Forget a remembered photo",
                responses={404: {"description": "No such remembered photo"}})
    async def forget(image: str) -> dict:
        if memory.bank is None:
            raise HTTPException(404, "this server keeps no persisted memory")
        try:
            store = memory.bank.remove({image})
        except KeyError:
            raise HTTPException(404, f"{image} is not a remembered photo (GET /v1/memory lists them)") from None
        memory.changed()
        return {"removed": image, "count": store.photo_count}
