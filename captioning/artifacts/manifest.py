"""A bundle's manifest as types (:class:`Manifest`), with the validating loader that reads it (no model is loaded
here; :mod:`captioning.artifacts.bundle` loads models), and the blocks the writers build it from.

The types keep the parsed JSON as ``raw`` and read as mappings too (``manifest["vocab_size"]``), so files written
by older versions load unchanged; new code reads their attributes (``manifest.encoder.name``). The evaluation
report (metrics.json, predictions.csv) is :mod:`captioning.artifacts.report`.
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from captioning.artifacts.schema import PLAIN_NAME, manifest_problem
from captioning.vision.encoders import ENCODER_NAMES, get_spec

FORMAT_VERSION = 1
REQUIRED_FILES = ("manifest.json", "decoder.keras", "vocab.json")


class BundleError(RuntimeError):
    """A bundle is missing, damaged or inconsistent; the message names it and the rebuild command."""


def _rebuild_hint(path: Path, manifest: dict | None = None) -> str:
    """The command that rebuilds a bundle, built by the project from validated fields only.

    A manifest's own ``command`` is never echoed: it is free text anyone can edit (``curl ... | sh``).
    """
    out = shlex.quote(str(path))
    if isinstance(manifest, dict) and manifest.get("ensemble_of"):
        parts = manifest["ensemble_of"] if isinstance(manifest["ensemble_of"], list) else []
        names = list(dict.fromkeys(p.get("bundle") for p in parts if isinstance(p, dict)))
        if names and all(isinstance(n, str) and PLAIN_NAME.fullmatch(n) for n in names):
            members = " ".join(shlex.quote(str(path.parent / n)) for n in names)
        else:
            members = "BUNDLE BUNDLE ..."
        return f"Rebuild it with: python train.py ensemble --members {members} --out {out}"
    return f"Rebuild it with: python train.py --out {out}"


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
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError(f"Bundle {path}: manifest.json {problem}. {_rebuild_hint(path, manifest)}")
    return manifest


class JsonRecord(Mapping):
    """Typed attributes over the parsed JSON (``raw``), still readable as a mapping.

    Read: ``from_dict(parsed JSON)``. Written: ``create(field=value, ...)`` by a writer, its JSON exactly those
    fields (a name that is not a field is a TypeError; a field's JSON key is its name, or its ``key`` metadata),
    and ``to_dict()`` the JSON again, every key it was read with kept.
    """

    raw: dict

    @classmethod
    def json_keys(cls) -> dict[str, str]:
        """Field name -> its key in the JSON."""
        return {f.name: f.metadata.get("key", f.name) for f in fields(cls) if f.name != "raw"}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{name: d.get(key) for name, key in cls.json_keys().items() if key in d}, raw=d)

    @classmethod
    def create(cls, **values):
        """A new record, as a writer builds it: the JSON holds exactly ``values`` (records as their JSON)."""
        keys = cls.json_keys()
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls.from_dict({keys[name]: as_json(value) for name, value in values.items()})

    def to_dict(self) -> dict:
        return dict(self.raw)

    def __getitem__(self, key):
        return self.raw[key]

    def __iter__(self) -> Iterator:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def as_json(value):
    """A record (or records in a list, tuple or dict) as JSON values; anything else as it is."""
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


ENCODER_LABELS = {get_spec(name).name: get_spec(name).label for name in ENCODER_NAMES}    # from the registry


@dataclass(frozen=True, eq=False)
class EncoderInfo(JsonRecord):
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

    @classmethod
    def from_spec(cls, spec, spatial: bool, weights_source: str, weights_file: dict | None) -> EncoderInfo:
        """What a training run writes of its encoder (an :class:`~captioning.vision.encoders.EncoderSpec`):
        ``spatial_grid`` only when its decoder reads the spatial map."""
        return cls.create(name=spec.name, alpha=spec.alpha, input_size=spec.input_size, key=spec.key,
                          feature_dim=spec.feature_dim, spatial_grid=spec.spatial_grid if spatial else None,
                          weights_source=weights_source, weights_file=weights_file)


@dataclass(frozen=True, eq=False)
class DecoderInfo(JsonRecord):
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

    @classmethod
    def of(cls, model, file: str | None = None, encoder: EncoderInfo | None = None) -> DecoderInfo:
        """A Keras decoder's entry: kind and config; an ensemble member's ``file``, and its ``encoder`` when it
        reads another than the bundle's."""
        extra = {"file": file} if file else {}
        return cls.create(kind=model.kind, config=model.get_config(), **extra,
                          **({"encoder": encoder} if encoder is not None else {}))

    @property
    def units(self) -> int | None:
        return self.config.get("units")


@dataclass(frozen=True, eq=False)
class DataInfo(JsonRecord):
    """What a bundle was trained on: the dataset, the image limit, each split's image count, training captions."""

    dataset: str | None = None
    limit: int | None = None
    splits: dict | None = None
    train_captions: int | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class TrainingInfo(JsonRecord):
    """A teacher-forced run: the fit loop's config (TrainConfig), the strategy, each epoch, the best one, costs."""

    config: dict | None = None
    strategy: str | None = None
    replicas: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None
    epochs: list | None = None
    feature_seconds: float | None = None
    feature_images: int | None = None
    peak_rss_mb: float | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class RetrievalTrainingInfo(JsonRecord):
    """A retrieval-augmented decoder's training (``scripts/train_retrieval.py``): each epoch, the bundle it
    warm-started from, the memory's shape, the copy gate's inputs, the datastore, and the dev-chosen new-word boost
    (:class:`~captioning.models.retrieval_steps.RetrievalStepDecoder`) with what chose it."""

    history: list | None = None
    warm_start: str | None = None
    neighbours: int | None = None
    caption_tokens: int | None = None
    copy: bool | None = None
    unk_gate: bool | None = None
    prev_keys: bool | None = None
    datastore: str | None = None
    new_word_boost: float | None = None
    new_word_boost_chosen_by: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class SCSTInfo(JsonRecord):
    """A self-critical fine-tuning: the bundle it started from, its config (SCSTConfig), reward, each epoch."""

    source: str | None = field(default=None, metadata={"key": "from"})
    config: dict | None = None
    reward: str | None = None
    baseline: str | None = None
    start_dev: dict | None = None
    best_epoch: int | None = None
    best_dev_cider: float | None = None
    epochs: list | None = None
    peak_rss_mb: float | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class Manifest(JsonRecord):
    """A bundle's manifest.json, validated (:func:`read_manifest`)."""

    name: str | None
    encoder: EncoderInfo
    decoder: DecoderInfo
    vocab_size: int
    files: dict[str, str]
    members: tuple[DecoderInfo, ...] = ()
    max_length: int = 30
    min_count: int | None = None
    data: DataInfo = field(default_factory=DataInfo)
    # (none for an ensemble; a RetrievalTrainingInfo for a retrieval decoder)
    training: TrainingInfo | RetrievalTrainingInfo = field(default_factory=TrainingInfo)
    scst: SCSTInfo | None = None                    # the self-critical fine-tuning, when the bundle had one
    ensemble_of: tuple[dict, ...] = ()              # an ensemble's member bundles
    trained_as: str | None = None
    command: str | None = None
    finetune: dict | None = None                    # a fine-tune on a user's photos: base, settings, scores
    index: dict | None = None                       # the retrieval index: images, dim, k, calibrated
    created: str | None = None
    versions: dict | None = None
    weights_dtype: str | None = None
    format_version: int | None = None
    raw: dict = field(default_factory=dict, repr=False)

    # What save_bundle writes for every bundle itself: a bundle made from another never inherits them.
    OWN = ("files", "name", "created", "versions")

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
                   min_count=d.get("min_count"), data=DataInfo.from_dict(obj("data")),
                   training=(RetrievalTrainingInfo if obj("decoder").get("kind") == "retrieval"
                             else TrainingInfo).from_dict(obj("training")),
                   scst=SCSTInfo.from_dict(d["scst"]) if isinstance(d.get("scst"), dict) else None,
                   ensemble_of=tuple(p for p in parts if isinstance(p, dict)), trained_as=d.get("trained_as"),
                   command=d.get("command"), finetune=d.get("finetune"), index=d.get("index"),
                   created=d.get("created"), versions=d.get("versions"), weights_dtype=d.get("weights_dtype"),
                   format_version=d.get("format_version"), raw=d)

    def inherit(self, *drop: str) -> dict:
        """The entries a bundle made from this one (scst, finetune, ensemble) starts from: all but the bundle's
        own (:attr:`OWN`) and ``drop``."""
        return {k: v for k, v in self.raw.items() if k not in (*self.OWN, *drop)}

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


def manifest_entries(**values) -> dict:
    """Top-level manifest entries as a writer gives them (before :func:`~captioning.artifacts.bundle.save_bundle`
    adds the rest): each a field of :class:`Manifest` (a TypeError otherwise), records as their JSON."""
    unknown = sorted(set(values) - set(Manifest.json_keys()))
    if unknown:
        raise TypeError(f"a manifest has no entry {', '.join(unknown)}")
    return {key: as_json(value) for key, value in values.items()}


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
