"""Result records and their files (``.csv``, ``.jsonl``, ``.json``): one record per photo, written atomically,
read back for a rerun, and the resume plan (what a rerun may skip, what it must refuse).

A result file is the user's data once written: every row, and every column or key the user added, is kept through
reruns; each caption records the model and decoding that made it, so a rerun with other settings is refused (or,
asked to, captions again) instead of mixing them; any file name (bytes that are not UTF-8, newlines) is written in an
escaped form that reads back to the same file; numbers are always finite.
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
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioning.decoding.config import DecodeConfig
from captioning.service.batch import BatchResult

OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


def same_file_key(path: str | os.PathLike) -> str:
    """What makes two spellings of a path the same photo (the resume key): the real, absolute path."""
    return os.path.realpath(path)


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
