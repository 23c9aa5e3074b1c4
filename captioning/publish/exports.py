"""What the Batch page hands back besides the CSV / JSON: a zip of captioned copies or XMP sidecars of the uploads.

The uploads never touch the user's disk: each photo's bytes are captioned in a temporary folder (ExifTool,
see :mod:`captioning.publish.metadata`) and the zip is built in memory, under the names the photos were uploaded with.
"""
from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath

from captioning.publish.alttext import alt_text, is_unfamiliar, keywords
from captioning.publish.metadata import SIDECAR_NAMES, MetadataError, embed_bytes, xmp_packet

ZIP_KINDS = ("copies", "sidecars")


def _member(name: str) -> str:
    """A safe zip member path from an upload name (zip members were checked on the way in; be sure anyway)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "photo"


def captions_zip(uploads: Sequence, records: Sequence[dict], kind: str = "copies",
                 naming: str = SIDECAR_NAMES[0], overwrite: bool = False, skip_unfamiliar: bool = False,
                 tag_keywords: bool = False, tool=None) -> tuple[bytes, list[dict]]:
    """(zip bytes, one status per photo) for ``uploads`` (``batch.Upload``) and their ``records`` (``to_record``).

    ``copies``: each photo with its caption written in (one it cannot hold, such as BMP, is listed as an
    error); a photo that already has a description goes in unchanged unless ``overwrite``. ``sidecars``: an
    XMP file per photo named ``photo.jpg.xmp`` or ``photo.xmp``. Photos flagged unfamiliar are left out with
    ``skip_unfamiliar``.
    """
    if kind not in ZIP_KINDS:
        raise ValueError(f"kind must be one of {ZIP_KINDS}, got {kind!r}")
    buf, statuses = io.BytesIO(), []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for upload, record in zip(uploads, records):
            member = _member(upload.name)
            text = alt_text(record.get("caption"))
            if record.get("error") or upload.data is None or text is None:
                status = ("error", record.get("error") or "no caption")
            elif skip_unfamiliar and is_unfamiliar(record):
                status = ("skipped", "unfamiliar photo, left undescribed")
            elif kind == "sidecars":
                path = PurePosixPath(member)
                member = f"{member}.xmp" if naming == SIDECAR_NAMES[0] else str(path.with_suffix(".xmp"))
                subjects = keywords(record["caption"]) if tag_keywords else []
                archive.writestr(member, xmp_packet(text, subjects))
                status = ("written", member)
            else:
                try:
                    subjects = keywords(record["caption"]) if tag_keywords else []
                    data = embed_bytes(upload.data, upload.name, record["caption"], subjects, tool,
                                       keep_existing=not overwrite)
                except MetadataError as exc:
                    status = ("error", str(exc))
                else:
                    archive.writestr(member, upload.data if data is None else data, zipfile.ZIP_STORED)
                    status = ("kept", "already described") if data is None else ("written", member)
            statuses.append({"path": upload.name, "status": status[0], "detail": status[1]})
    return buf.getvalue(), statuses


def zip_summary(statuses: Sequence[dict]) -> str:
    """"3 written, 1 kept, 1 skipped, 0 failed" for a zip's statuses."""
    c = Counter(s["status"] for s in statuses)
    return f"{c['written']} written, {c['kept']} kept (already described), {c['skipped']} skipped, {c['error']} failed"
