"""Captions into photos' own metadata, losslessly: XMP sidecars, captioned copies, or the photos themselves.

Fields (what photo libraries, web CMSs and screen-reader tools read):
    XMP   dc:description (x-default) and Iptc4xmpExt:AltTextAccessibility (IPTC's alt-text field, 2021),
          dc:subject keywords on request                                    -> JPEG, PNG (iTXt), WebP, TIFF, sidecar
    IPTC  IIM Caption-Abstract (UTF-8 declared)                              -> JPEG, TIFF
    EXIF  ImageDescription                                                   -> JPEG, TIFF

The writer is ExifTool (Debian's ``libimage-exiftool-perl``), kept running in ``-stay_open`` mode so each photo
costs a few milliseconds, not a Perl start. ExifTool only rewrites metadata segments and chunks: the JPEG scan
data, PNG IDAT and WebP image chunks are copied byte for byte, and :func:`image_data` checks that on every file
before it replaces anything. Photos are never written half-way: each write goes to a hidden temporary file in
the destination folder, is read back and compared, and only then moved over the target with ``os.replace``;
an original that changed since it was captioned (size, mtime or content) is not overwritten.
"""
from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from captioning.publish.alttext import alt_text, is_unfamiliar, keywords
from captioning.publish.exiftool import (  # noqa: F401  (re-exported: the facade and callers name them from here)
    EXIFTOOL_INSTALL_HINT,
    INSTALL_HINT,
    ExifTool,
    MetadataError,
    exiftool_available,
    shared_exiftool,
)

MODES = ("sidecar", "copy", "in-place")
SIDECAR_NAMES = ("photo.jpg.xmp", "photo.xmp")      # darktable / digiKam default  |  Lightroom / Bridge style
KINDS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}


# ---- what is written --------------------------------------------------------------------------------------

def tag_args(kind: str, text: str, subjects: list[str] | None = None) -> list[str]:
    """ExifTool arguments writing ``text`` into every description field ``kind`` (jpeg, png, webp, tiff, xmp) holds."""
    args = [f"-XMP-dc:Description={text}", f"-XMP-iptcExt:AltTextAccessibility={text}"]
    if kind in ("jpeg", "tiff"):
        args += ["-IPTC:CodedCharacterSet=UTF8", f"-IPTC:Caption-Abstract={text}", f"-EXIF:ImageDescription={text}",
                 "-Photoshop:IPTCDigest=new"]     # IIM and XMP in step: MWG readers ignore XMP on a stale digest
    for word in subjects or []:
        args += [f"-XMP-dc:Subject-={word}", f"-XMP-dc:Subject+={word}"]      # added once, others kept
    return args


def xmp_packet(text: str, subjects: list[str] | None = None) -> str:
    """A standalone XMP packet (a sidecar's whole content) holding the description, alt text and keywords."""
    t = escape(text)
    bag = "".join(f"<rdf:li>{escape(w)}</rdf:li>" for w in subjects or [])
    subject = f"\n   <dc:subject><rdf:Bag>{bag}</rdf:Bag></dc:subject>" if bag else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">\n'
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{t}</rdf:li></rdf:Alt></dc:description>\n'
        '   <Iptc4xmpExt:AltTextAccessibility><rdf:Alt><rdf:li xml:lang="x-default">'
        f'{t}</rdf:li></rdf:Alt></Iptc4xmpExt:AltTextAccessibility>{subject}\n'
        '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>\n')


def image_data(data: bytes, kind: str) -> bytes | None:
    """The bytes that hold a photo's pixels (JPEG: first SOS to last EOI; PNG: IHDR, PLTE, tRNS, IDAT chunks;
    WebP: VP8 / VP8L / ALPH / ANMF chunks), to prove a metadata write left them alone. None for other kinds."""
    if kind == "jpeg":
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xDA:                                   # start of scan: the entropy-coded data follows
                end = data.rfind(b"\xff\xd9")
                return data[i:end + 2 if end > i else len(data)]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        return data[i:]
    if kind == "png":
        out, i = [], 8
        while i + 8 <= len(data):
            size = int.from_bytes(data[i:i + 4], "big")
            if data[i + 4:i + 8] in (b"IHDR", b"PLTE", b"tRNS", b"IDAT"):
                out.append(data[i + 4:i + 12 + size])            # type + data + CRC
            i += 12 + size
        return b"".join(out)
    if kind == "webp":
        out, i = [], 12
        while i + 8 <= len(data):
            size = int.from_bytes(data[i + 4:i + 8], "little")
            if data[i:i + 4] in (b"VP8 ", b"VP8L", b"ALPH", b"ANMF"):
                out.append(data[i:i + 8 + size])
            i += 8 + size + (size & 1)
        return b"".join(out)
    return None


def _pixels_equal(data: bytes, written: Path) -> bool:
    """TIFF (laid out again by ExifTool when it grows): compare decoded pixels instead of bytes."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as x, Image.open(written) as y:
        return x.size == y.size and x.mode == y.mode and x.tobytes() == y.tobytes()


def _description(info: dict) -> str | None:
    for tag in ("Description", "Caption-Abstract", "ImageDescription"):
        value = info.get(tag)
        if value is not None and str(value).strip():
            return str(value)
    return None


# ---- where it is written ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one photo: ``written`` (to ``where``), ``kept`` (it had a description), ``skipped``
    (unfamiliar or no alt text) or ``error`` (nothing changed; ``detail`` says why)."""

    status: str
    where: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.status == "written":
            return f"{self.detail}: {self.where}"
        return f"{self.status}: {self.detail}"


class MetadataWriter:
    """Writes each photo's caption as alt text in one of :data:`MODES`, counting what it did."""

    def __init__(self, mode: str, out_dir: str | os.PathLike | None = None, sidecar_name: str = SIDECAR_NAMES[0],
                 overwrite: bool = False, tag_keywords: bool = False, skip_unfamiliar: bool = False,
                 exiftool: ExifTool | None = None):
        if mode not in MODES:
            raise ValueError(f"--write-metadata must be one of {', '.join(MODES)}, got {mode!r}")
        if (mode == "copy") != (out_dir is not None):
            raise ValueError("--write-metadata copy needs --out-dir DIR (and --out-dir is only for copy)")
        if sidecar_name not in SIDECAR_NAMES:
            raise ValueError(f"--sidecar-name must be one of {', '.join(SIDECAR_NAMES)}")
        self.mode, self.sidecar_name, self.overwrite = mode, sidecar_name, overwrite
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self.tag_keywords, self.skip_unfamiliar = tag_keywords, skip_unfamiliar
        self.tool = exiftool or ExifTool()
        self.counts: Counter = Counter()
        self.unfamiliar: list[str] = []
        self._seen: dict[str, tuple[int, int]] = {}        # path -> (size, mtime_ns) when captioning began
        self._root: Path | None = None

    def remember(self, paths: list[str]) -> None:
        """Note each photo's size and mtime before captioning (a photo changed since is not overwritten) and,
        for copies, the folder their paths are kept relative to (refusing an --out-dir among the photos)."""
        parents = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self._seen[p] = (st.st_size, st.st_mtime_ns)
            parents.append(os.path.dirname(os.path.abspath(p)))
        if self.out_dir is not None and parents:
            self._root = Path(os.path.commonpath(parents))
            if self.out_dir == self._root or self._root in self.out_dir.parents:
                raise ValueError(f"--out-dir {self.out_dir} is inside the photos' folder {self._root}; "
                                 "choose a folder outside it")

    def write(self, path: str, caption: str | None, trust=None) -> Outcome:
        """Write ``caption`` (as alt text) for the photo at ``path``; never raises for a per-photo problem."""
        text = alt_text(caption)
        if self.skip_unfamiliar and is_unfamiliar(trust):
            self.unfamiliar.append(path)
            outcome = Outcome("skipped", detail="unfamiliar photo, left undescribed")
        elif text is None:
            outcome = Outcome("skipped", detail="no words left for alt text")
        else:
            try:
                outcome = self._write(path, text, keywords(caption) if self.tag_keywords else [])
            except (MetadataError, OSError) as exc:
                outcome = Outcome("error", detail=f"{exc}. Nothing was changed" if isinstance(exc, MetadataError)
                                  else f"{exc.strerror or exc}: {exc.filename or path}. Nothing was changed")
        self.counts[outcome.status] += 1
        return outcome

    def _write(self, path: str, text: str, subjects: list[str]) -> Outcome:
        src = Path(path)
        kind = KINDS.get(src.suffix.lower())
        if self.mode != "sidecar" and kind is None:
            raise MetadataError(f"{src.suffix or 'this file type'} cannot hold XMP here (JPEG, PNG, WebP, TIFF can); "
                                "use --write-metadata sidecar")
        if self.mode == "sidecar":
            target = sidecar_path(src, self.sidecar_name)
        elif self.mode == "copy":
            target = self.out_dir / Path(os.path.abspath(src)).relative_to(self._root or src.parent.resolve())
        else:
            target = src
        before = os.lstat(src)
        if self.mode == "in-place":
            if stat.S_ISLNK(before.st_mode):
                raise MetadataError("the photo is a symbolic link; run on the file it points to "
                                    f"({os.path.realpath(src)}) or use --write-metadata copy")
            if not before.st_mode & stat.S_IWUSR or not os.stat(src.parent).st_mode & stat.S_IWUSR:
                raise MetadataError("the photo or its folder is read-only; make it writable or use "
                                    "--write-metadata copy / sidecar")
        data = src.read_bytes()
        if self._changed(path, data, os.stat(src)):
            raise MetadataError("the photo changed after it was captioned; not overwritten: caption it again")
        existing = target if self.mode == "sidecar" and target.exists() else None
        if self.mode == "copy" and target.exists() and not self.overwrite:
            return Outcome("kept", str(target), "the copy already exists (--overwrite replaces it)")
        if not self.overwrite:                  # a sidecar: the photo's own description counts too
            old = described(self.tool, src, *([existing] if existing else []))
            if old is not None:
                return Outcome("kept", None, f"already described ({old[:60]!r}; --overwrite replaces it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".captioning-{os.getpid()}-{target.name}")
        try:
            if self.mode == "sidecar" and existing is None:
                tmp.write_text(xmp_packet(text, subjects), encoding="utf-8")
            else:
                tmp.write_bytes(existing.read_bytes() if existing else data)
                exiftool_edit(self.tool, tmp, "xmp" if existing else kind, text, subjects)
                verify(existing.read_bytes() if existing else data, tmp, "xmp" if existing else kind, text)
            if self.mode == "in-place":
                os.chmod(tmp, stat.S_IMODE(before.st_mode))
                now = os.lstat(src)
                if (now.st_size, now.st_mtime_ns, now.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino) \
                        or src.read_bytes() != data:
                    raise MetadataError("the photo changed while its caption was written; not overwritten: "
                                        "caption it again")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return Outcome("written", str(target), self.mode)

    def _changed(self, path: str, data: bytes, st: os.stat_result) -> bool:
        seen = self._seen.get(path)
        return seen is not None and seen != (len(data), st.st_mtime_ns)

    def line(self) -> str:
        """The run's summary: how many were written, kept, skipped or failed."""
        c = self.counts
        text = f"metadata ({self.mode}): wrote {c['written']}, kept {c['kept']} already described or copied"
        if c["skipped"]:
            text += f", skipped {c['skipped']}"
        if c["error"]:
            text += f", failed {c['error']}"
        if self.unfamiliar:
            shown = ", ".join(self.unfamiliar[:20]) + (" …" if len(self.unfamiliar) > 20 else "")
            text += f"\nleft undescribed as unfamiliar ({len(self.unfamiliar)}): {shown}"
        return text

    failed = property(lambda self: self.counts["error"])

    def close(self) -> None:
        self.tool.close()


def exiftool_edit(tool: ExifTool, tmp: Path, kind: str, text: str, subjects: list[str]) -> None:
    """Write the caption into ``tmp`` (our own fresh copy of the photo or sidecar) where it lies.

    Editing a copy rather than ``exiftool -o NEW SOURCE``: ExifTool 12.57 refuses ``-o`` for WebP, and the bytes
    edited are exactly the ones read (and checked) before, whatever happens to the source meanwhile.
    """
    out, err = tool.run("-overwrite_original", *tag_args(kind, text, subjects), tmp)
    if not any(f"1 image files {word}" in out for word in ("updated", "unchanged")):
        reason = next((ln.split(":", 1)[1].strip() for ln in err.splitlines() if ln.startswith("Error")),
                      err.strip() or out.strip() or "no file written")
        reason = reason.replace(f" - {tmp}", "")                 # ExifTool names our temporary copy
        raise MetadataError(f"ExifTool could not write the caption ({reason})")


def described(tool: ExifTool, *paths) -> str | None:
    """The first description (any of the three fields, not blank) the files hold, or None.

    A read of these few tags costs ExifTool about a quarter of a write; an ``-if`` condition on the write
    itself extracts every tag and costs more than the read and the write together.
    """
    infos = tool.read(*paths)
    if infos and infos[0].get("Error"):
        raise MetadataError(f"ExifTool cannot read this photo's metadata ({infos[0]['Error']})")
    return next((d for d in map(_description, infos) if d), None)


def verify(data: bytes, tmp: Path, kind: str, text: str) -> None:
    """The new file holds the caption (its XMP is plain UTF-8 text) and exactly the old image data (TIFF: pixels)."""
    written = tmp.read_bytes()
    forms = {escape(text, quotes) for quotes in ({}, {"'": "&#39;", '"': "&quot;"}, {"'": "&apos;", '"': "&quot;"})}
    if not any(form.encode() in written for form in forms):          # ExifTool 12 writes &#39; and &quot;
        raise MetadataError("the caption is not in the written file")
    same = _pixels_equal(data, tmp) if kind == "tiff" else image_data(written, kind) == image_data(data, kind)
    if not same:
        raise MetadataError("the written file's image data differs from the original's")


def sidecar_path(photo: Path, naming: str = SIDECAR_NAMES[0]) -> Path:
    """``photo.jpg.xmp`` (darktable, digiKam's default, Immich) or ``photo.xmp`` (Lightroom, Bridge, digiKam's
    "compatible" option) beside the photo."""
    return photo.with_name(photo.name + ".xmp") if naming == "photo.jpg.xmp" else photo.with_suffix(".xmp")


def embed_bytes(data: bytes, name: str, caption: str | None, subjects: list[str] | None = None,
                tool: ExifTool | None = None, keep_existing: bool = False) -> bytes | None:
    """An uploaded photo's bytes with the caption written in (the app's zip of copies, the API's photo); None
    when ``keep_existing`` and the photo already has a description."""
    import tempfile

    kind = KINDS.get(Path(name).suffix.lower())
    text = alt_text(caption)
    if kind is None or text is None:
        raise MetadataError(f"{Path(name).suffix or 'this file'} cannot hold the caption here (JPEG, PNG, WebP, "
                            "TIFF can); download the XMP sidecar instead")
    tool = tool or shared_exiftool()
    with tempfile.TemporaryDirectory(prefix="captioning-") as tmp:
        out = Path(tmp) / f"photo{Path(name).suffix.lower()}"
        out.write_bytes(data)
        if keep_existing and described(tool, out):
            return None
        exiftool_edit(tool, out, kind, text, subjects or [])
        verify(data, out, kind, text)
        return out.read_bytes()
