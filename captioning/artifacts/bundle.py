"""The artifact bundle: everything the app and CLI need to caption, validated on load. Its manifest's types are in
:mod:`captioning.artifacts.manifest`; decoders are written at half size by :mod:`captioning.artifacts.float16`.

``artifacts/<name>/``::

    manifest.json     format version, encoder, decoder config, vocabulary size, splits, versions,
                      training stats and the SHA-256 of every other file
    decoder.keras     the trained decoder (Keras format, weights stored as float16, loaded with safe_mode=True)
    member-N.keras    an ensemble's further decoders (same vocabulary), listed in the manifest's ``members``;
                      decoding averages every decoder's next-word probabilities. A member that reads another
                      encoder than the bundle's carries that encoder's block in its ``members`` entry (a
                      cross-encoder ensemble: the captioner runs each encoder once per photo)
    vocab.json        the Vocabulary
    metrics.json      {"results": [{decoding, beam_width, split, n_images, bleu_1..bleu_4, ...}, ...]}
    predictions.csv   image,decoding,beam_width,caption (+ per-image scores)
    index.npy/.json   optional: the training photos' retrieval index and its dev calibration
                      (captioning.evaluation.trust; built by ``train.py index``)

Bundles are written to a temporary folder beside the target and renamed into place, so a crash while
saving leaves the previous bundle intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioning.artifacts.float16 import _save_half, _without_optimizer
from captioning.artifacts.manifest import (
    FORMAT_VERSION,
    BundleError,
    DecoderInfo,
    EncoderInfo,
    Manifest,
    _rebuild_hint,
    encoder_key,
    manifest_entries,
    read_manifest,
)
from captioning.artifacts.report import EvaluationReport, read_metrics, read_predictions
from captioning.data.text import Vocabulary

PROJECT_ROOT = Path(__file__).resolve().parents[2]       # captioning/<folder>/<module>.py -> the checkout
ARTIFACTS_ENV = "CAPTIONING_ARTIFACTS"


def artifacts_dir() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or PROJECT_ROOT / "artifacts")


def list_bundles(root: str | os.PathLike | None = None) -> list[Path]:
    """Bundles under ``root`` (default ``artifacts/``), ``default`` first, then by name."""
    root = Path(root) if root else artifacts_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()]
    return sorted(found, key=lambda p: (p.name != "default", p.name))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__}


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    vocab: Vocabulary
    decoder: object                     # a keras.Model with the step API
    metrics: dict | None
    predictions: object | None        # pandas.DataFrame
    members: tuple = ()                 # an ensemble's further decoders, beside ``decoder``
    index: object | None = None       # retrieval.RetrievalIndex over the training photos (optional files)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def encoder(self) -> EncoderInfo:
        return self.manifest.encoder

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    @property
    def report(self) -> EvaluationReport | None:
        """metrics.json and predictions.csv as one typed report (None when not loaded or not evaluated)."""
        if self.metrics is None and self.predictions is None:
            return None
        return EvaluationReport.from_dict(self.metrics or {}, self.predictions)

    @property
    def decoders(self) -> list:
        return [self.decoder, *self.members]

    def alone(self) -> Bundle:
        """This bundle's own decoder alone, on its own encoder: an ensemble without its members (itself when it
        has none)."""
        if not self.manifest.members and not self.members:
            return self
        return replace(self, manifest=replace(self.manifest, members=()), members=())

    @property
    def uses_spatial(self) -> bool:
        """Whether decoding wants the encoder's spatial map (any attention decoder) rather than pooled features."""
        return any(getattr(d, "uses_spatial", False) for d in self.decoders)

    @property
    def decoder_keys(self) -> list[str]:
        """The feature-cache key of the encoder each decoder reads, in decoder order."""
        return [encoder_key(e) for e in self.manifest.decoder_encoders]

    @property
    def encoders(self) -> list[EncoderInfo]:
        """Every encoder the decoders read, the bundle's own first (more than one: a cross-encoder ensemble)."""
        return self.manifest.encoders

    @property
    def multi_encoder(self) -> bool:
        return len(self.encoders) > 1

    def spatial_for(self, key: str) -> bool:
        """Whether any decoder reading encoder ``key`` attends over its spatial map."""
        return any(getattr(d, "uses_spatial", False) for d, k in zip(self.decoders, self.decoder_keys) if k == key)

    def step_decoder(self):
        """What decoding runs: the decoder's compiled step API, or the ensemble of all the bundle's decoders
        (which decodes :class:`~captioning.models.stepper.MultiFeatures` when its decoders read several encoders)."""
        from captioning.models.stepper import EnsembleStepDecoder

        steps = [self._steps(d) for d in self.decoders]
        out = steps[0] if len(steps) == 1 else \
            EnsembleStepDecoder(steps, self.decoder_keys if self.multi_encoder else None)
        if self.index is not None:                # consensus reranking reads the nearest training photos
            from captioning.evaluation.rerank import ConsensusSource

            out.consensus = ConsensusSource(self.index, encoder_key(self.encoder) if self.multi_encoder else None)
        return out


    def _steps(self, decoder):
        """One decoder's step API; the retrieval decoder reads its datastore (the bundle's index)."""
        from captioning.models.stepper import StepDecoder

        if getattr(decoder, "speaks_numpy", False):      # already a step API (the app's lite copy: numpy_steps)
            return decoder
        if getattr(decoder, "uses_memory", False):
            from captioning.models.retrieval_steps import IndexMemory, RetrievalStepDecoder

            if self.index is None:
                raise BundleError(f"Bundle {self.path}: its retrieval decoder needs the datastore (index.npy and "
                                  f"index.json). Rebuild the index with: python train.py index --out {self.path}")
            boost = float(getattr(self.manifest.training, "new_word_boost", None) or 0.0)   # chosen on dev, recorded
            return RetrievalStepDecoder(decoder, IndexMemory(self.index), self.vocab, new_word_boost=boost)
        return StepDecoder(decoder)


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``; an old ``target`` is moved aside only now, then removed."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_dir_atomically(target: Path, fill) -> None:
    """Create ``target`` by filling a temporary sibling folder and renaming it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finish_manifest(folder: Path, manifest: dict) -> None:
    manifest = {**manifest, **manifest_entries(
        format_version=FORMAT_VERSION,
        files={p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.name != "manifest.json"})}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _as_encoder(encoder) -> EncoderInfo | None:
    """A member's encoder block (an EncoderInfo, or its parsed JSON) as the type, None for the bundle's own."""
    if not encoder:
        return None
    return encoder if isinstance(encoder, EncoderInfo) else EncoderInfo.from_dict(dict(encoder))


def _member_file(i: int) -> str:
    return f"member-{i}.keras"


def save_bundle(path: str | os.PathLike, decoder, vocab: Vocabulary, manifest: Mapping,
                metrics: dict | None = None, predictions=None, members=(),
                member_encoders: list[dict | None] | None = None) -> Path:
    """Write a complete bundle atomically; returns its path. ``members``: further decoders of an ensemble;
    ``member_encoders``: for each member, the encoder block of the encoder it reads when that is not the
    bundle's own (None for those that read the bundle's)."""
    target = Path(path)
    manifest = {**manifest, **manifest_entries(
        name=target.name, vocab_size=len(vocab), decoder=DecoderInfo.of(decoder),
        created=manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=manifest.get("versions") or library_versions(), weights_dtype="float16")}
    if member_encoders is not None and len(member_encoders) != len(members):
        raise ValueError(f"{len(members)} members but {len(member_encoders)} member encoders")
    if members:
        encoders = [_as_encoder(enc) for enc in member_encoders or [None] * len(members)]
        manifest.update(manifest_entries(members=[DecoderInfo.of(m, _member_file(i), enc)
                                                  for i, (m, enc) in enumerate(zip(members, encoders), 1)]))

    def fill(tmp: Path):
        _save_half(_without_optimizer(decoder), tmp / "decoder.keras")
        for i, member in enumerate(members, 1):
            _save_half(_without_optimizer(member), tmp / _member_file(i))
        vocab.save(tmp / "vocab.json")
        _write_results(tmp, metrics, predictions)
        _finish_manifest(tmp, manifest)

    _write_dir_atomically(target, fill)
    return target


def update_results(path: str | os.PathLike, metrics: dict, predictions=None) -> Path:
    """Replace a bundle's metrics/predictions (atomically, keeping its model files)."""
    target = Path(path)
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))

    def fill(tmp: Path):
        for name in ("decoder.keras", "vocab.json", *(m["file"] for m in manifest.get("members", [])),
                     *_index_files(target, manifest)):
            shutil.copy2(target / name, tmp / name)
        if predictions is None and (target / "predictions.csv").is_file():     # metrics only: keep the captions
            shutil.copy2(target / "predictions.csv", tmp / "predictions.csv")
        _write_results(tmp, metrics, predictions)
        _finish_manifest(tmp, manifest)

    _write_dir_atomically(target, fill)
    return target


def _index_files(target: Path, manifest: dict) -> list[str]:
    from captioning.evaluation.trust import INDEX_FILES

    return [n for n in INDEX_FILES if n in manifest.get("files", {}) and (target / n).is_file()]


def save_index(path: str | os.PathLike, index) -> Path:
    """Add (or replace) a bundle's retrieval index, atomically, keeping every other file as it is."""
    from captioning.evaluation.trust import INDEX_FILES

    target = Path(path)
    manifest = read_manifest(target)

    def fill(tmp: Path):
        for name in manifest["files"]:
            if name not in INDEX_FILES and (target / name).is_file():
                shutil.copy2(target / name, tmp / name)
        index.save(tmp)
        _finish_manifest(tmp, {**manifest, **manifest_entries(index={
            "images": len(index), "dim": index.dim, "k": index.k, "calibrated": index.calibration is not None})})

    _write_dir_atomically(target, fill)
    return target


def _write_results(folder: Path, metrics: dict | None, predictions) -> None:
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    if predictions is not None:
        predictions.to_csv(folder / "predictions.csv", index=False)


def load_bundle(path: str | os.PathLike, verify: bool = True, load_results: bool = True,
                load_index: bool = True, members: bool = True) -> Bundle:
    """Load and cross-check a bundle: file hashes, vocabulary vs model, encoder vs model. ``load_index=False``
    neither checks nor reads the retrieval index (``train.py index`` rebuilds a damaged one). ``members=False``
    reads an ensemble's own decoder only and returns :meth:`Bundle.alone` (the app's quick first stage)."""
    import keras

    from captioning.evaluation.trust import INDEX_FILES
    from captioning.models import decoders as models  # noqa: F401  (registers the decoder classes for deserialisation)
    from captioning.models import retrieval as retrieval_decoder  # noqa: F401  (registers the decoder classes for deserialisation)
    from captioning.vision.encoders import get_spec

    path = Path(path)
    manifest = read_manifest(path)
    hint = _rebuild_hint(path, manifest)
    if verify:
        for name, digest in manifest["files"].items():
            results_file = name in ("metrics.json", "predictions.csv")
            if (results_file and not load_results) or (name in INDEX_FILES and not load_index):
                continue                                  # not read; `train.py evaluate` / `index` rewrite them
            file = path / name
            fix = (f"Re-evaluate it with: python train.py evaluate --out {path}" if results_file else
                   f"Rebuild the index with: python train.py index --out {path}" if name in INDEX_FILES else hint)
            if results_file and not file.is_file():
                continue                                  # captioning does not need them; metrics stay None
            if not file.is_file():
                raise BundleError(f"Bundle {path} is incomplete: {name} is missing. {fix}")
            if _sha256(file) != digest:
                raise BundleError(f"Bundle {path}: {name} is damaged (its checksum does not match the "
                                  f"manifest). {fix}")
    try:
        vocab = Vocabulary.load(path / "vocab.json")
    except (ValueError, json.JSONDecodeError) as exc:
        raise BundleError(f"Bundle {path}: vocab.json is invalid ({exc}). {hint}") from exc
    if len(vocab) != manifest["vocab_size"]:
        raise BundleError(f"Bundle {path}: vocab.json has {len(vocab)} words but the manifest says "
                          f"{manifest['vocab_size']}. {hint}")
    enc = manifest["encoder"]
    try:
        spec = get_spec(enc["name"], enc.get("alpha"))
    except (ValueError, KeyError) as exc:
        raise BundleError(f"Bundle {path}: unknown encoder in manifest ({exc}). {hint}") from exc
    entries = manifest.get("members", [])
    specs = [spec]
    for m in entries:
        if "encoder" not in m:
            specs.append(spec)
            continue
        try:
            specs.append(get_spec(m["encoder"]["name"], m["encoder"].get("alpha")))
        except ValueError as exc:
            raise BundleError(f"Bundle {path}: unknown encoder for ensemble member {m['file']} ({exc}). "
                              f"{hint}") from exc
    decoders = []
    names = ["decoder.keras", *(m["file"] for m in entries)]
    for name, own in zip(names if members else names[:1], specs):
        if not (path / name).is_file():
            raise BundleError(f"Bundle {path} is incomplete: {name} is missing. {hint}")
        try:
            model = keras.models.load_model(path / name, compile=False, safe_mode=True)
        except Exception as exc:
            raise BundleError(f"Bundle {path}: {name} could not be loaded ({type(exc).__name__}: "
                              f"{str(exc)[:200]}). {hint}") from exc
        who = "the decoder" if name == "decoder.keras" else f"ensemble member {name}"
        if getattr(model, "vocab_size", None) != len(vocab):
            raise BundleError(f"Bundle {path}: {who} predicts {getattr(model, 'vocab_size', '?')} words but "
                              f"vocab.json has {len(vocab)}; the vocabulary does not belong to this model. "
                              f"{hint}")
        if own.feature_dim != model.feature_dim:
            raise BundleError(f"Bundle {path}: encoder {own.key} gives {own.feature_dim}-d features but "
                              f"{who} expects {model.feature_dim}. {hint}")
        decoders.append(model)
    metrics = read_metrics(path) if load_results else None
    predictions = None
    if load_results and (path / "predictions.csv").is_file():
        predictions = read_predictions(path)
    index = _load_index(path, manifest, spec) if load_index else None
    bundle = Bundle(path, Manifest.from_dict(manifest), vocab, decoders[0], metrics, predictions,
                    tuple(decoders[1:]), index)
    return bundle if members else bundle.alone()


def read_index(path: str | os.PathLike, spec):
    """A bundle's retrieval index, its files checked against the manifest's hashes and its content validated;
    None when the bundle has none. Raises BundleError naming the problem and ``train.py index``."""
    from captioning.evaluation.trust import INDEX_FILES

    path = Path(path)
    manifest = read_manifest(path)
    for name in INDEX_FILES:
        digest = manifest["files"].get(name)
        if digest is not None and (path / name).is_file() and _sha256(path / name) != digest:
            raise BundleError(f"Bundle {path}: {name} is damaged (its checksum does not match the manifest). "
                              f"Rebuild the index with: python train.py index --out {path}")
    return _load_index(path, manifest, spec)


def _load_index(path: Path, manifest: dict, spec):
    """The bundle's retrieval index when its manifest lists one (validated against the encoder), else None."""
    from captioning.evaluation.trust import INDEX_FILES, IndexFileError, RetrievalIndex

    if not any(name in manifest["files"] for name in INDEX_FILES):
        return None
    try:
        return RetrievalIndex.load(path, encoder=spec.key, feature_dim=spec.feature_dim)
    except IndexFileError as exc:
        raise BundleError(f"Bundle {path}: its retrieval index is invalid ({exc}). "
                          f"Rebuild it with: python train.py index --out {path}") from None
