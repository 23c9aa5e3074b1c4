"""A bundle's data as types: the manifest (:class:`Manifest`) and the evaluation report (:class:`EvaluationReport`),
with the validating loaders that read them (no model is loaded here; :mod:`captioning.artifacts.bundle` loads models).

The types keep the parsed JSON as ``raw`` and read as mappings too (``manifest["vocab_size"]``), so files written
by older versions load unchanged; new code reads their attributes (``manifest.encoder.name``).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from captioning.vision.encoders import ENCODER_NAMES, get_spec

FORMAT_VERSION = 1
REQUIRED_FILES = ("manifest.json", "decoder.keras", "vocab.json")


class BundleError(RuntimeError):
    """A bundle is missing, damaged or inconsistent; the message names it and the rebuild command."""


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _rebuild_hint(path: Path, manifest: dict | None = None) -> str:
    """The command that rebuilds a bundle, built by the project from validated fields only.

    A manifest's own ``command`` is never echoed: it is free text anyone can edit (``curl ... | sh``).
    """
    out = shlex.quote(str(path))
    if isinstance(manifest, dict) and manifest.get("ensemble_of"):
        parts = manifest["ensemble_of"] if isinstance(manifest["ensemble_of"], list) else []
        names = list(dict.fromkeys(p.get("bundle") for p in parts if isinstance(p, dict)))
        if names and all(isinstance(n, str) and _PLAIN_NAME.fullmatch(n) for n in names):
            members = " ".join(shlex.quote(str(path.parent / n)) for n in names)
        else:
            members = "BUNDLE BUNDLE ..."
        return f"Rebuild it with: python train.py ensemble --members {members} --out {out}"
    return f"Rebuild it with: python train.py --out {out}"


def read_metrics(path: str | os.PathLike) -> dict | None:
    """A bundle's metrics.json (None when it has none yet); no model is loaded."""
    file = Path(path) / "metrics.json"
    if not file.is_file():
        return None
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Bundle {path}: metrics.json is not valid JSON ({exc}). "
                          f"Re-evaluate with: python train.py evaluate --out {path}") from None
    if not isinstance(metrics, dict):
        raise BundleError(f"Bundle {path}: metrics.json holds no metrics object. "
                          f"Re-evaluate with: python train.py evaluate --out {path}")
    return metrics


PREDICTION_COLUMNS = ("image", "decoding", "beam_width", "caption")


def read_predictions(path: str | os.PathLike):
    """A bundle's predictions.csv as a DataFrame (None when it has none); errors name the bundle and the file."""
    import pandas as pd

    file = Path(path) / "predictions.csv"
    if not file.is_file():
        return None
    fix = f"Re-evaluate with: python train.py evaluate --out {shlex.quote(str(path))}"
    try:
        table = pd.read_csv(file, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise BundleError(f"Bundle {path}: predictions.csv is not a valid table ({reason}). {fix}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise BundleError(f"Bundle {path}: predictions.csv lacks the column(s) {', '.join(missing)}. {fix}")
    if not pd.api.types.is_integer_dtype(table["beam_width"]):
        raise BundleError(f"Bundle {path}: predictions.csv has non-numeric beam widths. {fix}")
    return table


def read_manifest(path: str | os.PathLike) -> dict:
    """The validated manifest of a bundle (cheap: no model is loaded)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"No bundle at {path}. Train one with: python train.py --out {path}")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise BundleError(f"Bundle {path} is incomplete: {name} is missing. {_rebuild_hint(path)}")
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"Bundle {path}: manifest.json is not valid JSON ({exc}). {_rebuild_hint(path)}") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(f"Bundle {path} has format version {version!r}; this code reads version "
                          f"{FORMAT_VERSION}. {_rebuild_hint(path)}")
    for key in ("encoder", "decoder", "vocab_size", "files"):
        if key not in manifest:
            raise BundleError(f"Bundle {path}: manifest.json lacks '{key}'. {_rebuild_hint(path)}")
    problem = _manifest_problem(manifest)
    if problem:
        raise BundleError(f"Bundle {path}: manifest.json {problem}. {_rebuild_hint(path, manifest)}")
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a parsed manifest's schema (None when nothing is)."""
    problem = _encoder_problem(manifest["encoder"], "encoder")
    if problem:
        return problem
    if not isinstance(manifest["decoder"], dict):
        return "has a malformed 'decoder' (expected an object)"
    if not _is_int(manifest["vocab_size"]) or manifest["vocab_size"] < 5:
        return "has a malformed 'vocab_size' (expected a whole number above 4)"
    if "max_length" in manifest and not (_is_int(manifest["max_length"]) and 1 <= manifest["max_length"] <= 1000):
        return "has a malformed 'max_length' (expected a whole number from 1 to 1000)"
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        return "has a malformed 'files' (expected an object of file name -> SHA-256)"
    for name, digest in files.items():
        if not _PLAIN_NAME.fullmatch(name) or name in ("manifest.json",):
            return (f"lists {name!r} in 'files': only plain file names inside the bundle folder are allowed "
                    f"(no folders, '..' or absolute paths)")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"has a malformed checksum for {name} in 'files' (expected 64 hex digits)"
    for name in ("decoder.keras", "vocab.json"):
        if name not in files:
            return f"does not list {name} in 'files'"
    members = manifest.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(m.get("file"), str)
                                                and _PLAIN_NAME.fullmatch(m["file"]) for m in members):
        return "has a malformed 'members' list"
    for i, member in enumerate(members, 1):
        if "encoder" in member:
            problem = _encoder_problem(member["encoder"], f"members[{i}].encoder")
            if problem:
                return problem
    return None


def _encoder_problem(enc, where: str) -> str | None:
    """What is wrong with an encoder block (the bundle's, or an ensemble member's own), None when nothing is."""
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not isinstance(enc.get("key", ""), str):
        return f"has a malformed '{where}' (expected an object with a 'name')"
    if enc.get("alpha") is not None and (isinstance(enc["alpha"], bool) or not isinstance(enc["alpha"], (int, float))):
        return f"has a malformed '{where}.alpha' (expected a number or null)"
    return None


class _Record(Mapping):
    """Typed attributes over the parsed JSON (``raw``), still readable as a mapping."""

    raw: dict

    def __getitem__(self, key):
        return self.raw[key]

    def __iter__(self) -> Iterator:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


ENCODER_LABELS = {get_spec(name).name: get_spec(name).label for name in ENCODER_NAMES}    # from the registry


@dataclass(frozen=True, eq=False)
class EncoderInfo(_Record):
    """The image encoder a bundle's decoders were trained on."""

    name: str
    alpha: float | None = None
    key: str | None = None
    input_size: int | None = None
    feature_dim: int | None = None
    spatial_grid: object = None
    weights_source: str | None = None
    weights_file: dict | None = None                # a hint, verified by checksum, to find the same weights
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """The name people know it by: ``Xception``, ``EfficientNet-Lite0``, ``MobileNetV2 x0.35``."""
        plain = self.name.lower().replace("_", "").replace("-", "")
        alpha = f" x{self.alpha:g}" if isinstance(self.alpha, (int, float)) else ""
        return ENCODER_LABELS.get(plain, self.name) + alpha

    @classmethod
    def from_dict(cls, d: dict) -> EncoderInfo:
        hint = d.get("weights_file")
        return cls(name=d["name"], alpha=d.get("alpha"), key=d.get("key"), input_size=d.get("input_size"),
                   feature_dim=d.get("feature_dim"), spatial_grid=d.get("spatial_grid"),
                   weights_source=d.get("weights_source"), weights_file=hint if isinstance(hint, dict) else None,
                   raw=d)


@dataclass(frozen=True, eq=False)
class DecoderInfo(_Record):
    """One decoder of a bundle: its kind (merge, attention, topdown), Keras config and file, and for an ensemble
    member that reads another encoder than the bundle's, that encoder (None: the bundle's own)."""

    kind: str
    config: dict
    file: str = "decoder.keras"
    encoder: EncoderInfo | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict, file: str = "decoder.keras") -> DecoderInfo:
        config = d.get("config")
        encoder = EncoderInfo.from_dict(d["encoder"]) if isinstance(d.get("encoder"), dict) else None
        return cls(kind=str(d.get("kind", "?")), config=config if isinstance(config, dict) else {},
                   file=d.get("file", file), encoder=encoder, raw=d)

    @property
    def units(self) -> int | None:
        return self.config.get("units")


@dataclass(frozen=True, eq=False)
class Manifest(_Record):
    """A bundle's manifest.json, validated (:func:`read_manifest`)."""

    name: str | None
    encoder: EncoderInfo
    decoder: DecoderInfo
    vocab_size: int
    files: dict[str, str]
    members: tuple[DecoderInfo, ...] = ()
    max_length: int = 30
    min_count: int | None = None
    data: dict = field(default_factory=dict)        # dataset, limit, splits (image counts), train_captions
    training: dict = field(default_factory=dict)    # config, epochs, best epoch, ... (none for an ensemble)
    scst: dict | None = None                        # the self-critical fine-tuning, when the bundle had one
    ensemble_of: tuple[dict, ...] = ()              # an ensemble's member bundles
    trained_as: str | None = None
    command: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        """From a parsed manifest that passed :func:`read_manifest`'s checks."""
        def obj(key):
            return d[key] if isinstance(d.get(key), dict) else {}
        members = d.get("members") or []
        parts = d.get("ensemble_of") if isinstance(d.get("ensemble_of"), list) else []
        return cls(name=d.get("name"), encoder=EncoderInfo.from_dict(d["encoder"]),
                   decoder=DecoderInfo.from_dict(d["decoder"]), vocab_size=d["vocab_size"], files=d["files"],
                   members=tuple(DecoderInfo.from_dict(m) for m in members), max_length=int(d.get("max_length", 30)),
                   min_count=d.get("min_count"), data=obj("data"), training=obj("training"),
                   scst=d.get("scst") if isinstance(d.get("scst"), dict) else None,
                   ensemble_of=tuple(p for p in parts if isinstance(p, dict)), trained_as=d.get("trained_as"),
                   command=d.get("command"), raw=d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        return cls.from_dict(read_manifest(path))

    @property
    def decoders(self) -> list[DecoderInfo]:
        return [self.decoder, *self.members]

    @property
    def decoder_encoders(self) -> list[EncoderInfo]:
        """The encoder each decoder reads, in decoder order (a member without its own block reads the bundle's)."""
        return [d.encoder or self.encoder for d in self.decoders]

    @property
    def encoders(self) -> list[EncoderInfo]:
        """Every encoder the bundle's decoders read, once each, the bundle's own first."""
        seen: dict[str, EncoderInfo] = {}
        for enc in self.decoder_encoders:
            seen.setdefault(encoder_key(enc), enc)
        return list(seen.values())

    @property
    def fine_tuned(self) -> bool:
        """Whether self-critical fine-tuning made it (or one of its ensemble members)."""
        return bool(self.scst) or any(p.get("scst") for p in self.ensemble_of)

    @property
    def train_images(self) -> int | None:
        splits = self.data.get("splits")
        return splits.get("train") if isinstance(splits, dict) else None

    @property
    def training_config(self) -> dict | None:
        return self.training.get("config")

    @property
    def has_training_history(self) -> bool:
        return bool(self.ensemble_of or self.training.get("epochs") or self.scst)


def encoder_key(encoder: EncoderInfo) -> str:
    """The encoder's feature-cache key (``xception-299``), always from its spec (name and alpha), never from the
    manifest's free ``key`` field. Raises ValueError for an unknown encoder."""
    from captioning.vision.encoders import get_spec

    return get_spec(encoder.name, encoder.alpha).key


def previous_encoder(path: str | os.PathLike) -> dict:
    """The weights source and file hint of the bundle at ``path`` (the one a run replaces), as far as it has
    them; a missing or damaged bundle has none."""
    try:
        encoder = json.loads((Path(path) / "manifest.json").read_text())["encoder"]
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    if not isinstance(encoder, dict):
        return {}
    found = {}
    if "weights_source" in encoder:
        found["weights_source"] = encoder["weights_source"]
    if isinstance(encoder.get("weights_file"), dict):
        found["weights_file"] = encoder["weights_file"]
    return found


RESULT_KEYS = {"decoding", "beam_width", "split", "n_images"}


@dataclass(frozen=True, eq=False)
class EvaluationReport(_Record):
    """A bundle's evaluation: metrics.json (decoding runs, dev sweep, metric-vs-human agreement) and
    predictions.csv (one row per image and decoding run)."""

    runs: list[dict]                                # one entry per decoding run: label, beam_width, split, scores
    sweep: list[dict] | None = None
    human_agreement: dict | None = None
    implementations: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    predictions: object | None = None               # pandas.DataFrame with PREDICTION_COLUMNS, or None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, metrics: dict, predictions=None) -> EvaluationReport:
        runs = metrics.get("results")
        agreement = metrics.get("human_agreement")
        return cls(runs=runs if isinstance(runs, list) else [], sweep=metrics.get("sweep") or None,
                   human_agreement=agreement if isinstance(agreement, dict) else None,
                   implementations=metrics.get("implementations") or {}, notes=list(metrics.get("notes") or []),
                   predictions=predictions, raw=metrics)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport | None:
        """The bundle's report (None when it has no metrics.json and no predictions.csv yet).

        Raises :class:`BundleError` naming the file and the command that rewrites it when either is damaged:
        metrics.json without a list of decoding runs, predictions.csv without its columns.
        """
        metrics = read_metrics(path)
        if metrics is not None:
            runs = metrics.get("results")
            if not isinstance(runs, list) or not all(isinstance(r, dict) and RESULT_KEYS <= set(r) for r in runs):
                raise BundleError(f"Bundle {path}: metrics.json holds no list of results. "
                                  f"Re-evaluate with: python train.py evaluate --out {path}")
        predictions = read_predictions(path)
        if metrics is None and predictions is None:
            return None
        return cls.from_dict(metrics or {}, predictions)

    @staticmethod
    def read_predictions_loosely(path: str | os.PathLike):
        """predictions.csv when it is a readable table with its columns, else None (for reuse, not display)."""
        try:
            return read_predictions(path)
        except BundleError:
            return None

    @property
    def evaluated(self) -> bool:
        """Whether it holds any decoding run's scores."""
        return bool(self.runs)

    def runs_on(self, split: str) -> list[dict]:
        return [r for r in self.runs if r.get("split") == split]
