"""Caption many photos at once: batched captioning, folder walking, result records and their files.

Data flows: sources (paths, bytes, images) -> safe loader (a few at a time, in threads) -> encoder in
batches -> decoder in batches -> one :class:`BatchResult` per source, in order, as each batch is ready.
The encoder works on batch k+1 while batch k is decoded, so the decoder's small steps hide behind the
encoder's large ones. A bad file becomes an error result; the rest of the batch goes on.

Result files (``.csv``, ``.jsonl``, ``.json``) are rewritten atomically after every batch, so an interrupted
run leaves a valid file and rerunning with the same output skips what it already holds (files that failed
are tried again). A result file is the user's data once written: every row, and every column or key the user
added, is kept through reruns; each caption records the model and decoding that made it, so a rerun with
other settings is refused (or, asked to, captions again) instead of mixing them; any file name (bytes that are
not UTF-8, newlines) is written in an escaped form that reads back to the same file; numbers are always finite.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioning.decoding.search import Caption, DecodeConfig
from captioning.files import atomic_write
from captioning.vision.images import SUPPORTED_TYPES, ImageSource, InvalidImageError, load_image, to_canonical

IMAGE_SUFFIXES = frozenset(f".{t}" for t in SUPPORTED_TYPES)
OUTPUT_FORMATS = (".csv", ".jsonl", ".json")
DEFAULT_BATCH_SIZE = 16
LOAD_WORKERS = 2                # images decoded at once per batch run (PIL releases the GIL while decoding)


@dataclass
class BatchResult:
    """What one source became: its n-best list (best first), or the reason it could not be captioned."""

    index: int                          # position in the input
    name: str                           # path or upload name, as given
    captions: list[Caption] | None
    error: str | None = None
    trust: object | None = None         # retrieval.Assessment of the best caption, where the bundle has an index
    memory: object | None = None        # memory_use.MemoryUse: the remembered captions used, words copied

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Caption | None:
        return self.captions[0] if self.captions else None


def caption_stream(captioner, sources: Iterable[ImageSource], config: DecodeConfig,
                   batch_size: int = DEFAULT_BATCH_SIZE, names: Sequence[str] | None = None,
                   neighbours: int = 0, memory=None) -> Iterator[BatchResult]:
    """Caption every source through ``captioner``'s encoder and decoder ``batch_size`` at a time.

    Yields one :class:`BatchResult` per source, in input order, each batch as soon as it is decoded.
    Every file goes through :func:`captioning.vision.images.load_image`; one that fails gets an error result.
    Where the bundle has a retrieval index, each result carries its in-domain assessment (with ``neighbours``
    nearest training photos). ``memory`` (a :class:`~captioning.service.memory.use.CaptionMemory`) decodes with the
    remembered captions and gives each result its ``memory`` use.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    encode = captioner.encode

    def prepare(start: int, chunk: list):                 # runs in the encoder thread
        loaded = list(loaders.map(_load, chunk))          # [(uint8 (224, 224, 3) | None, error | None)]
        good = [i for i, (array, _) in enumerate(loaded) if array is not None]
        features = encode(np.stack([loaded[i][0] for i in good])) if good else None   # (G, D), (G, P, D) or multi
        return start, chunk, [err for _, err in loaded], good, features

    def finish(job) -> Iterator[BatchResult]:              # runs in the caller's thread, overlapping the next encode
        start, chunk, errors, good, features = job.result()
        uses: list = []
        if good and memory is not None:
            decoded, uses = memory.decode(captioner, features, config)
        else:
            decoded = captioner.decode(features, config) if good else []
        nbest, used = dict(zip(good, decoded)), dict(zip(good, uses))
        trust = {}
        if good and captioner.can_assess:
            trust = dict(zip(good, captioner.assess(features, [d[0] for d in decoded], neighbours)))
        for i in range(len(chunk)):
            index = start + i
            name = names[index] if names is not None else _name_of(chunk[i], index)
            yield BatchResult(index, name, nbest.get(i), errors[i], trust.get(i), used.get(i))

    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder, \
            ThreadPoolExecutor(LOAD_WORKERS, thread_name_prefix="load") as loaders:
        pending: deque = deque()
        try:
            for start, chunk in _chunks(sources, batch_size):
                pending.append(encoder.submit(prepare, start, chunk))
                if len(pending) > 1:
                    yield from finish(pending.popleft())
            while pending:
                yield from finish(pending.popleft())
        finally:                                  # Ctrl-C or a consumer that stops: no batch is encoded for nobody
            for job in pending:
                job.cancel()


def _chunks(items: Iterable, size: int) -> Iterator[tuple[int, list]]:
    chunk, start = [], 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start, chunk = start + size, []
    if chunk:
        yield start, chunk


def _load(source) -> tuple[np.ndarray | None, str | None]:
    try:
        if isinstance(source, np.ndarray):
            from PIL import Image
            source = Image.fromarray(np.asarray(source, np.uint8))
        return to_canonical(load_image(source)), None
    except InvalidImageError as exc:
        return None, str(exc)


def _name_of(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"image {index + 1}"


# ---- gathering files -------------------------------------------------------------------------------------

def gather_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given (the loader judges them) and, for each folder, its image files, recursively and sorted.

    Hidden files and folders (``.thumbnails``, ``.DS_Store``...) are skipped inside folders; a path that
    does not exist is kept, so it gets its own error result. Symbolic links are followed, to files and to
    folders alike and wherever they point; each real folder is walked once (so a link loop ends) and each photo
    is listed once, under the first name it was met by (``../b/x.jpg`` and ``/abs/b/x.jpg`` are one photo).
    """
    found: list[str] = []
    photos: set[str] = set()
    walked: set[str] = set()

    def add(name: str) -> None:
        if (key := same_file_key(name)) not in photos:
            photos.add(key)
            found.append(name)

    for given in paths:
        path = Path(given)
        if not path.is_dir():
            add(str(given))
            continue
        for root, dirs, files in os.walk(path, followlinks=True):
            real = os.path.realpath(root)
            if real in walked:                    # reached again through a link (or a loop): walked already
                dirs[:] = []
                continue
            walked.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                    add(str(Path(root) / f))
    return found


def same_file_key(path: str | os.PathLike) -> str:
    """What makes two spellings of a path the same photo (the resume key): the real, absolute path."""
    return os.path.realpath(path)


# ---- file names as text ------------------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNESCAPES = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}
_ESCAPED = re.compile(r"\\(\\|n|t|r|x[0-9a-fA-F]{2})")
_RAW_NAMES = os.name != "nt"          # POSIX names are bytes; Windows names are text and '\' separates folders


def path_text(name: str) -> str:
    """A file name as text that a UTF-8 file and one output line can hold; :func:`path_from_text` reads it back.

    File names are bytes on Linux: a byte that is not UTF-8 (``caf\\xe9.jpg`` from a Latin-1 system, which
    Python holds as a lone surrogate) is written ``\\xe9``, a newline, tab or carriage return ``\\n``, ``\\t``,
    ``\\r``, other control characters as their bytes ``\\xNN``, and so a backslash itself as ``\\\\``. Every other
    name is written unchanged (and on Windows, every name).
    """
    if not _RAW_NAMES or (name.isprintable() and "\\" not in name):
        return name
    out = []
    for ch in name:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":                  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


def path_from_text(text: str) -> str:
    """The file name :func:`path_text` wrote (a backslash not starting an escape stays as it is)."""
    if not _RAW_NAMES or "\\" not in text:
        return text
    raw, pos = bytearray(), 0
    for match in _ESCAPED.finditer(text):
        raw += text[pos:match.start()].encode("utf-8", "surrogateescape")
        token = match[1]
        raw += _UNESCAPES.get(token) or bytes([int(token[1:], 16)])
        pos = match.end()
    raw += text[pos:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(raw))


# ---- records and files -----------------------------------------------------------------------------------

NO_CAPTION = ("No caption came out under these decoding settings (empty, or of probability 0); "
              "try milder settings (e.g. a larger --top-p or --temperature) or greedy.")


def judged(result: BatchResult) -> BatchResult:
    """``result``, or an error result when its best caption is empty: such a photo is not done (a rerun tries
    it again) and never counted as captioned."""
    if result.ok and not (result.best is not None and result.best.words):
        return BatchResult(result.index, result.name, None, NO_CAPTION)
    return result


def finite(value):
    """``value`` with every NaN or infinity (in nested lists and dicts too) replaced by None: JSON has no such
    numbers (``-Infinity`` is refused by strict parsers) and a CSV's ``-inf`` reads back as a number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def to_record(result: BatchResult, n_best: int = 1, neighbours: int = 0, run: dict | None = None) -> dict:
    """A flat, JSON-safe record: path (as :func:`path_text`), caption, log p (sum and per token), the n-best list
    where asked, error; where the bundle has a retrieval index, ``in_domain`` / ``confidence`` (+ ``neighbours``);
    with ``run`` (:func:`run_record`), the ``model`` and ``decoding`` that made the caption. Numbers are finite
    or None."""
    record = {"path": path_text(result.name), "caption": None, "log_prob": None, "mean_log_prob": None,
              "error": result.error}
    if result.ok and result.captions:
        best = result.captions[0]
        record.update(caption=best.text, log_prob=round(best.log_prob, 4),
                      mean_log_prob=round(best.normalized_log_prob, 4))
        if n_best > 1:
            record["n_best"] = [{"caption": c.text, "log_prob": round(c.log_prob, 4), "score": round(c.score, 4)}
                                for c in result.captions[:n_best]]
        if result.trust is not None:
            record.update(result.trust.to_json(neighbours))
        if result.memory is not None:
            record.update(result.memory.to_json())
        if run is not None:
            record.update(run)
    return finite(record)


# The fields this module writes; any other key of a record (a column the user added to the CSV, a key added to
# a JSON record) is the user's and is kept, on every row, through every rerun.
OWN_FIELDS = frozenset({"path", "caption", "log_prob", "mean_log_prob", "error", "n_best", "in_domain",
                        "confidence", "neighbours", "model", "decoding", "memory_hits", "copied_words",
                        "alt_text", "metadata"})          # --write-metadata (__main__.py): replaced on a rerun
_NBEST_COLUMN = re.compile(r"(caption|log_prob)_\d+")


def _own(key: str) -> bool:
    return key in OWN_FIELDS or bool(_NBEST_COLUMN.fullmatch(key))


def records_csv(records: Sequence[dict], header: Sequence[str] | None = None) -> str:
    """CSV text; an n-best list becomes columns caption_2, log_prob_2, ... beside the best caption. Other plain
    keys (columns a user added) become columns too; ``header`` (the file's own, on a rerun) keeps its order."""
    extra = max((len(r.get("n_best") or []) for r in records), default=0)
    columns = ["path", "caption", "log_prob", "mean_log_prob"]
    if any("in_domain" in r for r in records):
        columns += ["in_domain", "confidence"]
    columns += [f"{field}_{k}" for k in range(2, extra + 1) for field in ("caption", "log_prob")]
    if any("model" in r for r in records):
        columns += ["model", "decoding"]
    columns += [k for k in ("alt_text", "metadata") if any(k in r for r in records)]   # --write-metadata
    columns += [k for k in ("memory_hits", "copied_words") if any(k in r for r in records)]   # --memory
    columns += ["error"]
    for r in records:
        columns += [k for k, v in r.items() if k not in columns and not _own(k) and not isinstance(v, (dict, list))]
    if header:
        columns = [*header, *(c for c in columns if c not in header)]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: ("" if r.get(k) is None else r[k]) for k in columns}
        if isinstance(r.get("memory_hits"), list):        # a CSV cell each: 'image: caption (similarity)' | ...
            row["memory_hits"] = " | ".join(f"{h['image']}: {h['caption']} ({h['similarity']})"
                                            for h in r["memory_hits"])
            row["copied_words"] = " ".join(r.get("copied_words") or [])
        for k, alt in enumerate((r.get("n_best") or [])[1:], 2):
            row[f"caption_{k}"] = alt["caption"]
            row[f"log_prob_{k}"] = "" if alt["log_prob"] is None else alt["log_prob"]
        writer.writerow(row)
    return out.getvalue()


def records_text(records: Sequence[dict], suffix: str, header: Sequence[str] | None = None) -> str:
    """The records as a ``.csv``, ``.jsonl`` or ``.json`` file's text (strict JSON: no NaN or infinities)."""
    if suffix == ".csv":
        return records_csv(records, header)
    records = finite(list(records))
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    return json.dumps(records, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--out must end in .csv, .jsonl or .json, got {Path(path).name!r}")
    return suffix


def check_output(path: str | os.PathLike) -> None:
    """Refuse (ValueError, one line) an output that cannot be written, before any work: a wrong suffix, a
    folder, a path under a file or in a folder this user cannot write, an earlier file this command cannot read.
    Nothing is created."""
    output_format(path)
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--out {path} is a folder; name a file inside it, e.g. {target / 'captions.csv'}")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:          # the folder that will hold the new ones
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out {path} cannot be written: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"--out {path} cannot be written ({exc.strerror or exc} in {folder}); "
                         f"choose a folder you can write to") from None
    read_result_file(path)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of an earlier run's output (empty if there is none). A torn last JSONL line is dropped."""
    return read_result_file(path)[0]


def read_result_file(path: str | os.PathLike) -> tuple[list[dict], list[str] | None]:
    """The records of an earlier run's output and, for a CSV, its header (columns in the file's order); ([],
    None) when there is none. Columns and keys this module does not know are kept as they are."""
    path = Path(path)
    suffix = output_format(path)
    if not path.is_file():
        return [], None
    try:
        text = path.read_text(encoding="utf-8-sig")          # a BOM from a spreadsheet program is not a column
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            rows = list(reader)
            header = list(reader.fieldnames or [])
            if header and not {"path", "caption", "error"} <= set(header):
                raise ValueError("it has no path, caption and error columns")
            for line, row in enumerate(rows, 2):
                if None in row:
                    raise ValueError(f"row {line} has more values than the header has columns")
            return [_record_from_csv(r) for r in rows], header
        if suffix == ".jsonl":
            lines = [ln for ln in text.split("\n") if ln.strip()]      # not splitlines(): U+2028 may be in a name
            records = []
            for i, line in enumerate(lines):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break                             # torn by an interruption: that file is redone
                    raise
        else:
            records = json.loads(text) if text.strip() else []
        if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("path"), str)
                                                    for r in records):
            raise ValueError("it does not hold a list of records with a path")
        return records, None
    except (ValueError, csv.Error) as exc:
        raise ValueError(f"{path} exists but is not a caption file this command can read ({exc}); "
                         f"fix it, or choose another --out") from None


def _number(text: str | None) -> float | None:
    value = float(text) if text else None
    return value if value is None or math.isfinite(value) else None


def _record_from_csv(row: dict) -> dict:
    record = {"path": row["path"] or "", "caption": row.get("caption") or None, "error": row.get("error") or None}
    for field in ("log_prob", "mean_log_prob", "in_domain"):
        if field in row or field != "in_domain":
            record[field] = _number(row.get(field))
    for field in ("confidence", "model", "decoding", "alt_text", "metadata", "memory_hits", "copied_words"):
        if field in row:
            record[field] = row[field] or None
    alts = [{"caption": row[f"caption_{k}"], "log_prob": _number(row.get(f"log_prob_{k}"))}
            for k in range(2, 100) if row.get(f"caption_{k}")]
    if alts:
        record["n_best"] = [{"caption": record["caption"], "log_prob": record["log_prob"]}, *alts]
    record.update((k, v if v is not None else "") for k, v in row.items() if not _own(k))   # the user's columns
    return record


# ---- what made a caption, and resuming ---------------------------------------------------------------------

def bundle_checksum(manifest) -> str:
    """A short fingerprint of a bundle's model files (the SHA-256 of their manifest checksums; metrics.json and
    predictions.csv left out: re-evaluating a bundle changes no caption)."""
    files = {k: v for k, v in dict(manifest["files"]).items() if k not in ("metrics.json", "predictions.csv")}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def decoding_label(config: DecodeConfig) -> str:
    """Every decoding option that shapes the captions, exactly: ``beam: beam_width=5, length_penalty=1.0, ...``."""
    options = ", ".join(f"{k}={' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                        for k, v in config.options().items())
    return f"{config.kind}: {options}"


def run_record(bundle_path: str | os.PathLike, manifest, config: DecodeConfig) -> dict:
    """The ``model`` (bundle folder name + checksum) and ``decoding`` fields every caption of a run records."""
    return {"model": f"{Path(os.path.abspath(bundle_path)).name} sha256:{bundle_checksum(manifest)}",
            "decoding": decoding_label(config)}


def _made_by(record: dict) -> tuple[str | None, str | None]:
    model = record.get("model")
    checksum = model.rsplit("sha256:", 1)[-1] if isinstance(model, str) and "sha256:" in model else None
    return checksum, record.get("decoding")


def _done(record: dict) -> bool:
    return not record.get("error") and bool(record.get("caption"))


class ResumeConflict(ValueError):
    """The output holds captions of these photos from another model or decoding."""


@dataclass
class ResumePlan:
    """What a run with an output file does: the file's records (all kept, in order), the photos to caption."""

    records: list[dict]
    header: list[str] | None              # a CSV's columns in the file's order
    rows: dict[str, int]                  # same_file_key -> position of that photo's record
    todo: list[str]                       # paths to caption, in input order, each photo once
    skipped: int                          # photos the file already holds (captioned alike)
    recaptioned: int = 0                  # of ``todo``: photos captioned before with other settings


def plan_resume(out: str | os.PathLike | None, paths: Sequence[str], run: dict | None = None,
                recaption: bool = False) -> ResumePlan:
    """Which of ``paths`` still need a caption in ``out``: photos it lacks, or holds with an error or an empty
    caption. A photo it holds from another model or decoding than ``run`` is a :class:`ResumeConflict` (one line
    naming the difference), or with ``recaption`` is captioned again. Paths are compared by
    :func:`same_file_key`."""
    records, header = read_result_file(out) if out is not None else ([], None)
    rows: dict[str, int] = {}
    for i, record in enumerate(records):
        rows.setdefault(same_file_key(path_from_text(record["path"])), i)
    todo, seen, skipped, stale = [], set(), 0, []
    for path in paths:
        key = same_file_key(path)
        if key in seen:
            continue
        seen.add(key)
        record = records[rows[key]] if key in rows else None
        if record is None or not _done(record):
            todo.append(path)
        elif run is not None and _made_by(record) != _made_by(run):
            stale.append(record)
            todo.append(path)
        else:
            skipped += 1
    if stale and not recaption:
        raise ResumeConflict(_difference(out, stale, run))
    return ResumePlan(records, header, rows, todo, skipped, len(stale))


def _difference(out, stale: list[dict], run: dict) -> str:
    old = stale[0]
    parts = []
    if _made_by(old)[0] != _made_by(run)[0]:
        parts.append(f"model {old.get('model') or 'not recorded'} -> {run['model']}")
    if old.get("decoding") != run["decoding"]:
        parts.append(f"decoding '{old.get('decoding') or 'not recorded'}' -> '{run['decoding']}'")
    return (f"{out} holds {len(stale)} of these photos captioned with another model or decoding "
            f"({'; '.join(parts)}); pass --recaption to caption them again (their rows are replaced, columns "
            f"you added are kept), or choose another --out")


def _merged(old: dict, new: dict) -> dict:
    """A photo's new record in place of its old one: the old spelling of its path and the user's own fields
    kept."""
    return {**new, "path": old["path"], **{k: v for k, v in old.items() if not _own(k)}}


@dataclass
class RunSummary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0                   # already in the output file (resume)
    interrupted: bool = False          # Ctrl-C: what was captioned until then is saved

    def line(self, out: str | None = None) -> str:
        text = f"captioned {self.captioned}, failed {self.failed}"
        if self.skipped:
            text += f", skipped {self.skipped} already in {out}"
        return text


def caption_files(captioner, paths: Sequence[str], config: DecodeConfig, out: str | os.PathLike | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  on_result: Callable[[BatchResult], None] | None = None,
                  progress: bool = False, neighbours: int = 0, run: dict | None = None,
                  recaption: bool = False, stream: Callable[[list[str]], Iterable[BatchResult]] | None = None,
                  save_share: float | None = None, memory=None) -> RunSummary:
    """Caption the image files ``paths`` (folders already gathered) and, with ``out``, keep the records there.

    With ``out``, the photos it already holds without an error are skipped (resume, see :func:`plan_resume`;
    ``run`` and ``recaption`` as there), and it is rewritten atomically after every batch in its format (by
    suffix), every earlier row and every column the user added kept. ``on_result`` sees every new result.
    Ctrl-C stops the run after saving what was captioned (``summary.interrupted``). ``stream`` (the photos to
    caption -> their results, in any order) replaces this process's :func:`caption_stream`, e.g. a Ray pipeline
    (:mod:`captioning.service.ray_engine`); with ``save_share``, the file is rewritten after a batch only once the time
    since the last save is at least that save's duration / ``save_share`` (a large file is not rewritten for
    every 16 photos).
    """
    suffix = output_format(out) if out is not None else None
    plan = plan_resume(out, paths, run, recaption)
    records, rows = plan.records, plan.rows
    summary = RunSummary(skipped=plan.skipped)

    def keep(result: BatchResult, extra: dict | None = None) -> None:
        record = to_record(result, config.num_return_sequences, neighbours, run)
        record.update(extra or {})                  # what on_result adds, e.g. where --write-metadata wrote
        key = same_file_key(result.name)
        if key in rows:
            records[rows[key]] = _merged(records[rows[key]], record)
        else:
            rows[key] = len(records)
            records.append(record)

    saved = [0.0, 0.0]                              # when the last save ended, how long it took

    def save() -> None:
        if out is not None:
            began = time.monotonic()
            atomic_write(out, records_text(records, suffix, plan.header), newline="")
            ended = time.monotonic()
            saved[:] = ended, ended - began

    def save_due() -> bool:
        return save_share is None or time.monotonic() - saved[0] >= saved[1] / save_share

    from tqdm.auto import tqdm

    pending = 0
    results = stream(plan.todo) if stream is not None else caption_stream(captioner, plan.todo, config, batch_size,
                                                                          neighbours=neighbours, memory=memory)
    try:
        with tqdm(total=len(plan.todo), unit="img", desc="captioning", disable=not progress or not plan.todo) as bar:
            for result in results:
                result = judged(result)
                if result.ok:
                    summary.captioned += 1
                else:
                    summary.failed += 1
                keep(result, on_result(result) if on_result is not None else None)
                bar.update(1)
                pending += 1
                if pending >= batch_size and save_due():
                    save()
                    pending = 0
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        getattr(results, "close", lambda: None)()  # a pipeline stopped early lets go of its workers now
    if pending or not plan.todo:
        save()
    return summary


# ---- uploads (the app's Batch page): photos and zips of photos ------------------------------------------

MAX_ZIP_MEMBERS = 2000                 # files listed in one zip (folders and skipped files included)
MAX_ZIP_BYTES = 256 * 2**20            # total uncompressed size of the photos taken from one zip


@dataclass
class Upload:
    """One file to caption: its name (a zip member is ``archive.zip/inner/path.jpg``) and its bytes, or the
    reason it was refused before captioning."""

    name: str
    data: bytes | None
    error: str | None = None


def expand_uploads(files: Iterable[tuple[str, bytes]]) -> tuple[list[Upload], list[str]]:
    """Uploaded files -> the photos to caption, a zip's image members taken out (safely); and the names of
    files skipped as not photos (a zip's text files, folders' hidden files...)."""
    photos: list[Upload] = []
    skipped: list[str] = []
    for name, data in files:
        if Path(name).suffix.lower() == ".zip":
            taken, passed = photos_from_zip(name, data)
            photos.extend(taken)
            skipped.extend(passed)
        else:
            photos.append(Upload(name, data))
    return photos, skipped


def photos_from_zip(name: str, data: bytes, max_members: int = MAX_ZIP_MEMBERS,
                    max_total: int = MAX_ZIP_BYTES) -> tuple[list[Upload], list[str]]:
    """The image members of a zip, read into memory (nothing is written to disk), within bounds.

    A zip that cannot be read, lists more than ``max_members`` files or would unpack to more than
    ``max_total`` bytes becomes one error; a member with an unsafe path (absolute, ``..``) or over the
    per-image limit becomes an error of its own; members that are not images (by extension) are skipped.
    Sizes are enforced on the bytes actually inflated, not only on what the zip declares.
    """
    import zipfile

    from captioning.vision.images import MAX_BYTES

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [Upload(name, None, f"The zip file cannot be read ({exc}). Upload photos or a valid zip.")], []
    if len(members) > max_members:
        return [Upload(name, None, f"The zip holds {len(members):,} files; the limit is {max_members:,}. "
                                   "Split it into smaller zips.")], []
    photos, skipped, total = [], [], 0
    for info in members:
        inner = info.filename
        parts = inner.replace("\\", "/").split("/")
        if info.is_dir():
            continue
        label = f"{name}/{inner}"
        if inner.startswith(("/", "\\")) or ".." in parts or (len(inner) > 1 and inner[1] == ":"):
            photos.append(Upload(label, None, "Unsafe path inside the zip (absolute or with '..'); "
                                              "the file was not read."))
            continue
        if Path(inner).suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") or p == "__MACOSX"
                                                                   for p in parts if p not in ("", ".")):
            skipped.append(label)                   # not a photo, or a hidden / macOS resource file
            continue
        if info.file_size > MAX_BYTES:
            photos.append(Upload(label, None, f"The file is larger than the {MAX_BYTES / 2**20:g} MB limit "
                                              f"({info.file_size:,} bytes). Use a smaller image."))
            continue
        if total + info.file_size > max_total:
            return [Upload(name, None, f"The zip unpacks to more than {max_total / 2**20:g} MB of photos. "
                                       "Split it into smaller zips.")], []
        try:
            with archive.open(info) as member:
                content = member.read(MAX_BYTES + 1)       # never more than the limit, whatever it declares
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
            photos.append(Upload(label, None, f"This zip member cannot be read ({exc})."))
            continue
        total += len(content)
        if len(content) > MAX_BYTES:
            photos.append(Upload(label, None, f"The file is larger than the {MAX_BYTES / 2**20:g} MB limit. "
                                              "Use a smaller image."))
            continue
        photos.append(Upload(label, content))
    return photos, skipped


def caption_uploads(captioner, uploads: Sequence[Upload], config: DecodeConfig,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[BatchResult]:
    """Caption uploads in batches; refused ones (zip errors) come back as error results, in order."""
    good = [i for i, u in enumerate(uploads) if u.error is None]
    results = caption_stream(captioner, [uploads[i].data for i in good], config, batch_size,
                             names=[uploads[i].name for i in good])
    nxt = 0
    for result in results:
        while nxt < good[result.index]:            # refused uploads before this one
            yield BatchResult(nxt, uploads[nxt].name, None, uploads[nxt].error)
            nxt += 1
        result = judged(result)
        result.index = good[result.index]
        yield result
        nxt = result.index + 1
    for i in range(nxt, len(uploads)):
        yield BatchResult(i, uploads[i].name, None, uploads[i].error)


# ---- a captioned dataset in a zip (the app's Train page): photos + one captions file -----------------------

CAPTION_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")
MAX_CAPTIONS_BYTES = 64 * 2**20        # the captions file inside a zip


def dataset_from_zip(data: bytes, root: str | os.PathLike, max_members: int = MAX_ZIP_MEMBERS,
                     max_total: int = MAX_ZIP_BYTES) -> tuple[Path, Path]:
    """Unpack an uploaded dataset zip (photos in any folders + exactly one captions file) under ``root``, in a
    folder named by the zip's SHA-256 (the same zip twice is unpacked once). Returns (captions file, photos folder:
    the captions file's own folder).

    The same bounds as :func:`photos_from_zip`: member count, inflated size (counted on the bytes actually read),
    per-photo size; absolute paths, ``..`` and links are refused. The folder appears only when complete (unpacked
    beside it, then renamed), so a failure leaves nothing half-written. Raises ValueError with what to do.
    """
    import shutil
    import stat
    import uuid
    import zipfile

    from captioning.vision.images import MAX_BYTES

    root = Path(root)
    target = root / hashlib.sha256(data).hexdigest()[:16]
    if target.is_dir():
        return _dataset_files(target)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"the zip file cannot be read ({exc}); upload a valid zip") from None
    if len(members) > max_members:
        raise ValueError(f"the zip holds {len(members):,} files; the limit is {max_members:,}. Use a folder on the "
                         f"server for bigger datasets")
    wanted, total = [], 0
    for info in members:
        inner = info.filename.replace("\\", "/")
        parts = inner.split("/")
        if inner.startswith("/") or ".." in parts or (len(inner) > 1 and inner[1] == ":"):
            raise ValueError(f"unsafe path inside the zip: {info.filename!r} (absolute or with '..'); nothing was "
                             f"unpacked")
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts if p not in ("", ".")):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(f"the zip holds a link ({info.filename!r}); zip the files themselves")
        suffix = Path(inner).suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix not in CAPTION_SUFFIXES:
            continue
        limit = MAX_BYTES if suffix in IMAGE_SUFFIXES else MAX_CAPTIONS_BYTES
        if info.file_size > limit:
            raise ValueError(f"{inner} is larger than the {limit / 2**20:g} MB limit ({info.file_size:,} bytes)")
        total += info.file_size
        if total > max_total:
            raise ValueError(f"the zip unpacks to more than {max_total / 2**20:g} MB; use a folder on the server "
                             f"for bigger datasets")
        wanted.append((info, inner, limit))
    captions = [inner for _, inner, _ in wanted if Path(inner).suffix.lower() in CAPTION_SUFFIXES]
    if len(captions) != 1:
        found = ", ".join(captions[:5]) or "none"
        raise ValueError(f"the zip must hold exactly one captions file (.csv, .jsonl, .json or .txt) beside the "
                         f"photos; it holds {len(captions)} ({found})")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        read = 0
        for info, inner, limit in wanted:
            with archive.open(info) as member:
                content = member.read(limit + 1)              # never more than the limit, whatever it declares
            read += len(content)
            if len(content) > limit or read > max_total:
                raise ValueError(f"{inner} inflates past its declared size; the zip was refused")
            path = staging.joinpath(*[p for p in inner.split("/") if p not in ("", ".")])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        (staging / ".captions").write_text(captions[0], encoding="utf-8")
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():                           # else: the same zip, unpacked meanwhile by another
                raise
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"the zip cannot be unpacked ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _dataset_files(target)


def _dataset_files(folder: Path) -> tuple[Path, Path]:
    """(captions file, photos folder): the photos' paths are read relative to the captions file's folder, so a zip
    of one top folder (``mine/captions.csv``, ``mine/photos/1.jpg``) works as well as a flat one."""
    captions = folder / (folder / ".captions").read_text(encoding="utf-8")
    return captions, captions.parent
