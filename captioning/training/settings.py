"""The recipes' typed settings, in one visible block per concern, with their checks.

Each field's metadata carries its help text (and argparse details such as ``choices``), so a front end such as
``train.py`` builds its options from these classes; a field's command-line flag is its name with dashes
(``feature_batch_size`` -> ``--feature-batch-size``; ``source`` -> ``--from``). Messages about options name
them as ``{field}`` placeholders (:class:`OptionError`), which each front end spells its own way.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from captioning.data.flickr8k import DataError
from captioning.training.options import OPTION as TRAIN_OPTION
from captioning.training.options import declared
from captioning.vision.encoders import ENCODER_NAMES

PROJECT_ROOT = Path(__file__).resolve().parents[2]       # captioning/<folder>/<module>.py -> the checkout
COMMANDS = ("all", "download", "features", "train", "evaluate", "sweep", "ensemble", "scst", "index", "finetune",
            "import-check")
# Fit-loop options a fine-tune does not apply (its captions are whole, its rate fixed): refused when given.
FINETUNE_REFUSES = ("label_smoothing", "lr_decay", "max_words")


def option(default, help: str, **argparse):
    """A settings field with its help text (and argparse extras: choices, nargs, metavar, flag)."""
    return field(default=default, metadata={"help": help, **argparse})


class OptionError(DataError):
    """A bad setting; ``template`` names settings as ``{name}``, :meth:`render` spells them for a front end."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render(lambda name: name))

    def render(self, spell: Callable[[str], str]) -> str:
        names = setting_names()
        return re.sub(r"\{(\w+)\}", lambda m: spell(m[1]) if m[1] in names else m[0], self.template)


@dataclass
class Workspace:
    """Where the data comes from and where the work goes."""

    data_dir: str | None = option(None, "dataset folder (Flickr8k default: $FLICKR8K_DIR)")
    dataset: str = option("flickr8k", "flickr8k, flickr30k (results_20130124.token) or coco (COCO-format caption "
                                      "JSON)", choices=["flickr8k", "flickr30k", "coco"])
    out: str | None = option(None, "bundle folder (default: artifacts/<encoder>-<decoder>[-limitN])")
    cache_dir: str = option(str(PROJECT_ROOT / ".cache"), "features and checkpoints")
    limit: int | None = option(None, "quick run on N images (70/15/15 of the splits)", type=int)
    quiet: bool = option(False, "no progress bars")
    final_out: str | None = None     # where the bundle ends up when ``out`` is its staging folder (not an option)
    skipped_images: list[str] = field(default_factory=list)   # photos left out by skip_bad_images (not an option)

    @property
    def bundle(self) -> str:
        """Where the bundle ends up (``out`` may point at its staging folder while it is built)."""
        return self.final_out or self.out

    def runs_dir(self) -> Path:
        return Path(self.cache_dir) / "runs"


@dataclass
class FeatureSettings:
    """The encoder and how its features are extracted and cached."""

    encoder: str = option("xception", "image encoder", choices=list(ENCODER_NAMES))
    alpha: float | None = option(None, "MobileNetV2 width multiplier", type=float)
    weights: str | None = option(None, "encoder ImageNet weights file (.weights.h5)")
    feature_batch_size: int = option(32, "images per extraction batch", type=int)
    shard_size: int = option(512, "images per feature-cache shard", type=int)
    spatial: bool = option(False, "also cache the encoder's spatial map (for attention decoders; ~3.3 GB for "
                                  "Xception)")
    num_shards: int = option(1, "features: split the images into this many disjoint slices (one per machine)",
                             type=int)
    shard_index: int = option(0, "features: the slice this process extracts, 0 .. {num_shards} - 1", type=int)
    skip_bad_images: bool = option(False, "leave out photos that cannot be read (empty, not an image, too large to "
                                          "decode), listed at the end, instead of stopping at the first")


@dataclass
class TrainSettings:
    """The decoder and its training: teacher-forced (train, finetune) and self-critical (scst). Each field is an
    option of :mod:`captioning.training.options`, which declares its type, default, range and help once."""

    decoder: str = declared("decoder")
    epochs: int | None = declared("epochs")
    patience: int = declared("patience")
    batch_size: int = declared("batch_size")
    learning_rate: float | None = declared("learning_rate")
    embed_dim: int = declared("embed_dim")
    units: int | None = declared("units")
    attention_dim: int = declared("attention_dim")
    alpha_c: float = declared("alpha_c")
    dropout: float = declared("dropout")
    label_smoothing: float = declared("label_smoothing")
    lr_decay: float = declared("lr_decay")
    embeddings: str | None = declared("embeddings")
    min_count: int = declared("min_count")
    max_words: int | None = declared("max_words")
    seed: int = declared("seed")
    strategy: str = declared("strategy")
    peer_timeout: float = declared("peer_timeout")
    finish: bool = declared("finish")
    samples: int = declared("samples")

    def units_for(self) -> int:
        return self.units or TRAIN_OPTION["units"].value_for(decoder=self.decoder)

    @property
    def spatial(self) -> bool:
        return self.decoder in ("attention", "topdown")


@dataclass
class EvaluateSettings:
    """What ``evaluate`` scores, and how."""

    beam_widths: str = option("3,5", "beam widths evaluated beside greedy")
    decode: list[str] | None = option(None, "evaluate: decoding runs to score instead of greedy + {beam_widths}, "
                                            "e.g. greedy beam:5 sample:temperature=0.7,top_p=0.9,n=5,seed=0 "
                                            "diverse:beams=6,groups=3,penalty=0.5,n=5", nargs="+", metavar="SPEC")
    split: str = option("test", "split that evaluate scores", choices=["dev", "test"])
    no_meteor: bool = option(False, "skip METEOR (needs Java)")
    no_human: bool = option(False, "skip the metric-vs-expert-judgment agreement (ExpertAnnotations.txt)")

    def widths(self) -> list[int]:
        return [int(w) for w in str(self.beam_widths).split(",") if w.strip()]


@dataclass
class PipelineSettings:
    """Which bundle-building steps run, and their inputs (ensemble members, the bundle SCST starts from)."""

    members: list[str] | None = option(None, "ensemble: trained bundles to combine (one vocabulary; BUNDLE@1,3 "
                                              "takes decoders 1 and 3 of an ensemble bundle); finetune: the base "
                                              "bundle's decoders to fine-tune, e.g. 1,3 (default: all; the new "
                                              "bundle holds those)", nargs="+", metavar="BUNDLE")
    source: str | None = option(None, "scst, finetune: the trained bundle to fine-tune (scst: a single decoder)",
                                metavar="BUNDLE", flag="--from")
    no_sweep: bool = option(False, "skip the beam/length-penalty sweep on the dev split when running all steps")
    no_index: bool = option(False, "skip building the nearest-training-photo index and its dev calibration")


@dataclass
class UserDataSettings:
    """A user's own captioned photos (finetune, import-check): where they are and how they are used."""

    captions: str | None = option(None, "finetune, import-check, train (from scratch): your captions file (CSV "
                                        "image,caption, JSON lines, COCO captions JSON or a Flickr8k token.txt; told "
                                        "apart by content)",
                                  metavar="FILE")
    images: str | None = option(None, "finetune, import-check, train: the folder the captions file's image paths are "
                                      "relative to", metavar="DIR")
    split_file: str | None = option(None, "finetune: your own split, lines 'image,split' (train, dev or test; "
                                          "default: 10%% dev and 10%% test by photo, seeded by {seed})",
                                    metavar="FILE")
    strict: bool = option(False, "finetune, import-check: any bad row is an error (default: reported and skipped)")
    replay: float = declared("replay")
    flickr_test: int = declared("flickr_test")
    json: bool = option(False, "import-check: print the import summary as JSON")
    dry_run: bool = option(False, "finetune: check the import and the base bundle, print the summary, stop")


@dataclass
class RunConfig:
    """One command and all its settings."""

    command: str = "all"
    workspace: Workspace = field(default_factory=Workspace)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    user_data: UserDataSettings = field(default_factory=UserDataSettings)


SECTIONS = (Workspace, FeatureSettings, TrainSettings, EvaluateSettings, PipelineSettings, UserDataSettings)


def setting_names() -> set[str]:
    return {f.name for section in SECTIONS for f in fields(section) if "help" in f.metadata}


def declared_values(config: RunConfig) -> dict:
    """The settings of ``config`` that are options of :mod:`captioning.training.options`, by name."""
    return {f.name: getattr(getattr(config, part.name), f.name) for part in fields(config) if part.name != "command"
            for f in fields(getattr(config, part.name)) if "declared" in f.metadata}


def settle(config: RunConfig) -> list[OptionError]:
    """Fill the command-dependent defaults and check every setting before any work; one error per problem.

    Also settles ``alpha`` for MobileNetV2: read from the ``weights`` file when not given, and a ``weights``
    file of another width is reported here rather than by Keras after minutes of work. The default ``out``
    is filled in last (it needs the encoder).
    """
    from captioning.decoding.config import parse_spec
    from captioning.vision.encoders import MOBILENET_ALPHAS, EncoderWeightsError, get_spec, infer_alpha

    ws, feats, tr, ev, pipe = config.workspace, config.features, config.train, config.evaluate, config.pipeline
    for name in ("epochs", "learning_rate"):                  # their defaults differ by command
        if getattr(tr, name) is None:
            setattr(tr, name, TRAIN_OPTION[name].value_for(config.command))
    if config.command == "scst" and not pipe.source:
        return [OptionError("scst needs {source} BUNDLE (a trained single-decoder bundle) and {out} for the "
                            "fine-tuned one")]
    user = config.user_data
    if config.command in ("finetune", "import-check") and not (user.captions and user.images):
        return [OptionError(f"{config.command} needs {{captions}} FILE and {{images}} DIR (your captioned photos)")]
    if user.captions and config.command in ("download", "features", "ensemble", "scst"):
        return [OptionError(f"{{captions}} does not apply to {config.command}; use it with train (from scratch), "
                            f"finetune or import-check")]
    if bool(user.captions) != bool(user.images):
        return [OptionError("{captions} FILE and {images} DIR go together (the folder the file's image paths are "
                            "relative to)")]
    if config.command == "finetune" and not pipe.source:
        return [OptionError("finetune needs {source} BUNDLE (the bundle to start from) and {out} for the new one")]
    if config.command == "finetune":       # fit-loop options a fine-tune leaves off: refused, not silently ignored
        given = [name for name in FINETUNE_REFUSES if getattr(tr, name) != TRAIN_OPTION[name].default]
        if given:
            return [OptionError(f"{', '.join(f'{{{name}}}' for name in given)} does not apply to finetune (a "
                                f"fine-tune trains on whole captions at a fixed rate); drop it, or use it with train")]
    checks = [("feature_batch_size", feats.feature_batch_size, feats.feature_batch_size >= 1, "at least 1"),
              ("shard_size", feats.shard_size, feats.shard_size >= 1, "at least 1"),
              ("limit", ws.limit, ws.limit is None or ws.limit >= 10, "at least 10 images")]
    problems = [OptionError(problem) for problem in                 # the training options: their declared ranges
                (TRAIN_OPTION[name].problem(value, f"{{{name}}}") for name, value in declared_values(config).items())
                if problem]
    problems += [OptionError(f"{{{name}}} {value:g} is out of range; use {valid}")
                 for name, value, ok, valid in checks if not ok]
    widths = [w.strip() for w in str(ev.beam_widths).split(",") if w.strip()]
    if not widths or not all(w.isdigit() and int(w) >= 1 for w in widths):
        problems.append(OptionError(f"{{beam_widths}} {ev.beam_widths!r} is not a list of beam widths; use whole "
                                    f"numbers of at least 1 separated by commas, e.g. 3,5"))
    if feats.encoder != "mobilenetv2" and feats.alpha is not None:
        problems.append(OptionError(f"{{alpha}} is MobileNetV2's width multiplier; {feats.encoder} has none (drop "
                                    f"{{alpha}}, or use {{encoder}} mobilenetv2)"))
    elif feats.encoder == "mobilenetv2":
        if feats.alpha is not None and feats.alpha not in MOBILENET_ALPHAS:
            problems.append(OptionError(f"{{alpha}} {feats.alpha:g} is not a MobileNetV2 width; use one of "
                                        f"{', '.join(f'{a:g}' for a in MOBILENET_ALPHAS)}"))
        elif feats.weights and Path(feats.weights).is_file():
            try:
                found = infer_alpha(feats.weights)
            except EncoderWeightsError as exc:
                problems.append(OptionError(f"{{weights}}: {exc}"))
            else:
                if found is None:
                    example = get_spec(feats.encoder, feats.alpha).weights_file
                    problems.append(OptionError(f"{{weights}} {feats.weights} holds no MobileNetV2 weights (pass "
                                                f"the file of {{encoder}} {feats.encoder}, e.g. {example})"))
                elif feats.alpha is None:
                    feats.alpha = found
                elif feats.alpha != found:
                    problems.append(OptionError(f"{{weights}} {feats.weights} holds MobileNetV2 weights of width "
                                                f"{found:g}, not {{alpha}} {feats.alpha:g}: pass {{alpha}} "
                                                f"{found:g} (or leave {{alpha}} out)"))
    if feats.weights and not Path(feats.weights).expanduser().is_file():
        problems.append(OptionError(f"{{weights}} {feats.weights}: no such file; pass the path of a .weights.h5 "
                                    f"file (e.g. ../shared/weights/mobilenet_v2_0.35_224_imagenet_notop.weights.h5)"))
    shards, index = feats.num_shards, feats.shard_index
    if shards < 1:
        problems.append(OptionError(f"{{num_shards}} must be at least 1, got {shards}"))
    elif not 0 <= index < shards:
        problems.append(OptionError(f"{{shard_index}} must be in 0..{shards - 1} for {{num_shards}} {shards}, "
                                    f"got {index}"))
    elif shards > 1 and config.command != "features":
        problems.append(OptionError("{num_shards}/{shard_index} split `train.py features` across machines; run the "
                                    "other steps once every slice is extracted"))
    for spec in ev.decode or ():
        try:
            parse_spec(spec)
        except ValueError as exc:
            problems.append(OptionError(f"{{decode}} {spec!r}: {exc}"))
    if not problems:
        ws.out = ws.out or default_out(config)
    return problems


def default_out(config: RunConfig) -> str:
    from captioning.vision.encoders import get_spec

    if config.command == "ensemble":
        return str(PROJECT_ROOT / "artifacts" / "ensemble")
    if config.command == "scst":
        source = Path(config.pipeline.source)
        return str(source.with_name(source.name + "-scst"))
    if config.command == "finetune":
        source = Path(config.pipeline.source)
        return str(source.with_name(source.name + "-finetuned"))
    suffix = f"-limit{config.workspace.limit}" if config.workspace.limit else ""
    spec = get_spec(config.features.encoder, config.features.alpha)
    return str(PROJECT_ROOT / "artifacts" / f"{spec.key}-{config.train.decoder}{suffix}")
