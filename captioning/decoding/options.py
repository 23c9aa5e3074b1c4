"""Every decoding option declared once (like Hugging Face's ``GenerationConfig``): its type, default, range, the
strategies that use it, its command-line flag (the REST API's field is the same name with underscores), its label
in the app and its help.

Everything else reads this table: :class:`~captioning.decoding.config.DecodeConfig` validates against its ranges and
``parse_spec`` takes its spec keys; ``python -m captioning caption`` builds its flags from it, the REST API its form
fields and OpenAPI schema (:mod:`captioning.service.api_options`), the app its sliders. :func:`resolve` turns what a
user gave into DecodeConfig fields, refusing an option the chosen strategy does not use, or a value out of range, in one
line that names the user's own option (``--temperature`` on the command line, ``temperature`` in the API).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("greedy", "beam", "sample", "diverse")
STRATEGY_LABELS = {"greedy": "Greedy", "beam": "Beam search", "sample": "Sampling", "diverse": "Diverse beam search"}
STRATEGY_HELP = ("greedy: the likeliest word at each step; beam: beam search (the default, beam 5); sample: draw "
                 "captions at random (temperature, top-k, top-p, seed); diverse: diverse beam search (groups)")

# The one default every front end uses (CLI, API, app): beam 5, .006 dev CIDEr-D behind beam 10 at half its cost
# (README, docs/experiments.md). DecodeConfig() itself stays greedy: it is the library's neutral starting point.
DEFAULT_STRATEGY = "beam"
DEFAULT_BEAM_WIDTH = 5
DIVERSE_DEFAULTS = {"num_groups": 2, "diversity_penalty": 0.5}      # beam width: 2 beams per group
# Consensus reranking (captioning.evaluation.rerank), on by default for bundles with a retrieval index: k and the
# weight of the beam score chosen on the dev split at beam 5 (docs/experiments.md, "Consensus reranking").
DEFAULT_CONSENSUS = 10
DEFAULT_CONSENSUS_WEIGHT = 1.5

BEAMS = ("beam", "diverse")
EVERY = STRATEGIES


@dataclass(frozen=True)
class Option:
    """One decoding option, written once.

    ``low``/``high`` bound the value (``low_open``: ``low`` itself is refused); ``floor``/``ceiling`` are the
    smallest/largest values the float32 arithmetic of decoding carries, refused beyond with their own message;
    ``note`` says what special values mean; ``slider`` is the app's widget range (low, high, step), inside the
    accepted range.
    """

    name: str                                   # the DecodeConfig field
    kind: type                                  # int, float, bool or tuple (words)
    default: object                             # DecodeConfig's default
    help: str
    label: str = ""
    strategies: tuple[str, ...] = EVERY
    flag: str | None = None                     # None: not offered to users
    spec: tuple[str, ...] = ()                  # keys in a decoding spec (``train.py evaluate --decode``)
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    floor: float | None = None
    floor_note: str = ""
    ceiling: float | None = None                # the largest value it carries, refused above
    ceiling_note: str = ""
    note: str = ""
    slider: tuple | None = None
    metavar: str | None = None

    @property
    def field(self) -> str | None:
        """The REST API's form field: the flag without its dashes, e.g. ``n_best`` for ``--n-best``."""
        return self.flag[2:].replace("-", "_") if self.flag else None

    def uses(self, strategy: str) -> bool:
        return strategy in self.strategies

    def rule(self) -> str:
        """The accepted values in words: ``a whole number between 1 and 100``, ``in (0, 1] (1 = off)``."""
        if self.kind is int:
            text = (f"a whole number between {self.low:g} and {self.high:g}" if self.high is not None
                    else f"a whole number >= {self.low:g}")
        elif self.low is not None and self.high is not None:
            text = (f"in ({self.low:g}, {self.high:g}]" if self.low_open
                    else f"between {self.low:g} and {self.high:g}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = "a finite number"
        return f"{text} ({self.note})" if self.note and self.kind is float else text

    @property
    def lowest(self) -> float | None:
        return self.floor if self.floor is not None else self.low

    @property
    def highest(self) -> float | None:
        return self.ceiling if self.ceiling is not None else self.high

    def limits(self) -> str:
        """What a user may give, in words (help texts, the API's descriptions): the rule, within floor and ceiling."""
        if self.floor is None and self.ceiling is None:
            return self.rule()
        low, high = self.lowest, self.highest
        if self.floor is None and self.low_open:
            text = f"> {low:g} and at most {high:g}"
        else:
            text = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        return f"{text} ({self.note})" if self.note else text

    def problem(self, value, who: str | None = None) -> str | None:
        """Why ``value`` is refused (one line naming ``who``, by default the field), or None when it is fine."""
        who = who or self.name
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < self.low or \
                    (self.high is not None and value > self.high):
                return f"{who} must be {self.rule()}, got {value!r}"
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                return f"{who} must be a finite number, got {value!r}"
            if (self.low is not None and (value <= self.low if self.low_open else value < self.low)) or \
                    (self.high is not None and value > self.high):
                return f"{who} must be {self.rule()}, got {value!r}"
            if self.floor is not None and value < self.floor:
                return f"{who} must be at least {self.floor:g} ({self.floor_note}), got {value!r}"
            if self.ceiling is not None and value > self.ceiling:
                return f"{who} must be at most {self.ceiling:g} ({self.ceiling_note}), got {value!r}"
        elif self.kind is bool and not isinstance(value, (bool, np.bool_)):
            return f"{who} must be true or false, got {value!r}"
        return None


OPTIONS: tuple[Option, ...] = (
    Option("beam_width", int, 1, "beams per image (default 5); 1 is greedy", "Beam width", BEAMS, "--beam-width",
           ("width", "beams", "beam_width"), 1, 100, slider=(2, 12, 1), metavar="K"),
    Option("max_length", int, 30, "most tokens per caption, words and <end> (default: the bundle's longest "
           "training caption)", "Caption length (words)", EVERY, "--max-length", ("max_length",), 1, 200,
           metavar="N"),
    Option("no_repeat_ngram_size", int, 0, "no n-gram of this size twice in a caption (0 = off; 2 forbids a repeated "
           "word pair)", "No repeated n-grams (0 = off)", EVERY, "--no-repeat-ngram-size",
           ("no_repeat_ngram", "no_repeat_ngram_size"), 0, slider=(0, 4, 1), metavar="N"),
    Option("num_return_sequences", int, 1, "captions per image: the n-best list (beam, diverse; <= the beam width) or "
           "the captions drawn (sample)", "Captions", EVERY, "--n-best", ("n", "n_best"), 1, 100,
           slider=(1, 10, 1), metavar="N"),
    Option("min_length", int, 1, "fewest words before a caption may end", "Caption length (words)", EVERY,
           "--min-length", ("min_length",), 0, metavar="N"),
    Option("top_k", int, 0, "draw only among the k likeliest words (0 = off)", "Top-k (0 = off)", ("sample",),
           "--top-k", ("top_k",), 0, slider=(0, 50, 1), metavar="K"),
    Option("seed", int, 0, "the same seed draws the same captions", "Seed", ("sample",), "--seed", ("seed",), 0,
           slider=(0, 10_000, 1), metavar="S"),
    Option("num_groups", int, 1, "beam groups (must divide the beam width)", "Groups", ("diverse",), "--groups",
           ("groups",), 1, 100, slider=(1, 6, 1), metavar="G"),
    Option("length_penalty", float, 1.0, "score = sum log p / length ** penalty: 0 ranks by log p, 1 by its mean per "
           "word, higher favours longer captions", "Length penalty", BEAMS, "--length-penalty",
           ("lp", "length_penalty"), -5.0, 5.0, slider=(0.0, 2.0, 0.1), metavar="LP"),
    Option("temperature", float, 1.0, "divides the log-probabilities: < 1 sharper, > 1 more adventurous",
           "Temperature", ("sample",), "--temperature", ("temperature", "t"), 0.0, low_open=True, floor=0.01,
           floor_note="below it the arithmetic overflows; strategy greedy takes the likeliest words", ceiling=100.0,
           ceiling_note="above it every word is about as likely: a uniform draw",
           note="1 = the model's own distribution", slider=(0.1, 2.0, 0.05), metavar="T"),
    Option("top_p", float, 1.0, "nucleus: draw only among the likeliest words whose probability reaches p, e.g. 0.9",
           "Top-p (1 = off)", ("sample",), "--top-p", ("top_p",), 0.0, 1.0, low_open=True, floor=0.01,
           floor_note="a smaller nucleus is the likeliest word alone: strategy greedy", note="1 = off",
           slider=(0.05, 1.0, 0.05), metavar="P"),
    Option("diversity_penalty", float, 0.0, "Hamming penalty between groups (default 0.5)", "Diversity penalty",
           ("diverse",), "--diversity-penalty", ("penalty", "diversity_penalty"), 0.0, ceiling=1000.0,
           ceiling_note="beyond it no group can share a word with an earlier one anyway",
           note="0 = plain beam search per group", slider=(0.0, 5.0, 0.1), metavar="D"),
    Option("repetition_penalty", float, 1.0, "CTRL-style penalty on words already said", "Repetition penalty",
           EVERY, "--repetition-penalty", ("repetition_penalty",), 0.0, low_open=True, ceiling=100.0,
           ceiling_note="beyond it a word said once is never said again: overflow, not a stronger penalty",
           note="1 = off, > 1 discourages repeats", slider=(1.0, 3.0, 0.1), metavar="R"),
    Option("no_repeat_word", bool, False, "never the same word twice in a row", "No word twice in a row", EVERY,
           "--no-repeat-word", ("no_repeat_word",)),
    Option("banned_words", tuple, (), "words never to emit", "Banned words", EVERY, "--ban", ("ban", "banned_words"),
           metavar="WORD"),
    Option("suppress_unk", bool, True, "never emit <unk>"),
    Option("consensus", int, 0, "consensus reranking (Devlin et al. 2015): the beam's captions re-ranked by their "
           "agreement (mean CIDEr-D) with the captions of the K nearest training photos (0 = off; default 10 when the "
           "bundle has a retrieval index)", "Consensus neighbours (0 = off)", BEAMS, "--consensus", ("consensus",), 0,
           100, slider=(0, 30, 1), metavar="K"),
    Option("consensus_weight", float, DEFAULT_CONSENSUS_WEIGHT, "consensus reranking: weight of each caption's "
           "own beam score beside its agreement with the neighbours", "Consensus: weight of the model's score",
           BEAMS, "--consensus-weight", ("consensus_weight", "cw"), 0.0, 100.0, slider=(0.0, 5.0, 0.1),
           metavar="W"),
)
OPTION = {o.name: o for o in OPTIONS}
USER_OPTIONS = tuple(o for o in OPTIONS if o.flag)


def who(name: str, surface: str) -> str:
    """How a front end calls option ``name`` (or ``strategy``): ``--top-p`` on the command line, ``top_p`` in the
    API."""
    if name == "strategy":
        return "--strategy" if surface == "cli" else "strategy"
    option = OPTION[name]
    return option.flag if surface == "cli" else option.field


def _choose(strategies, surface: str) -> str:
    say = "--strategy {}" if surface == "cli" else "strategy={}"
    return " or ".join(say.format(s) for s in strategies)


def strategy_defaults(strategy: str, fields: dict) -> dict:
    """``fields`` with what ``strategy`` needs and the user left out: beam 5; diverse 2 groups of 2 beams, penalty
    0.5; one row for greedy and sampling (whatever beam width the base config had)."""
    fields = dict(fields)
    if strategy in ("greedy", "sample"):
        fields["beam_width"] = 1
    if strategy == "beam":
        fields.setdefault("beam_width", DEFAULT_BEAM_WIDTH)
    if strategy == "diverse":
        for name, value in DIVERSE_DEFAULTS.items():
            fields.setdefault(name, value)
        fields.setdefault("beam_width", 2 * fields["num_groups"])
    return fields


def resolve(given: dict, surface: str = "cli", max_length: int | None = None) -> dict:
    """The options a user set (DecodeConfig field or ``strategy`` -> value; nothing for what they left out) ->
    DecodeConfig fields, or ValueError in one line naming the user's own option (``surface``: ``cli`` or ``api``).

    Without a strategy: ``beam_width`` 1 is greedy, any other beam search; nothing at all is the one default, beam 5.
    ``max_length`` is the bundle's, for checking ``min_length`` when the user set no ``max_length``.
    """
    given = dict(given)
    strategy = given.pop("strategy", None)
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"{who('strategy', surface)} must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    chosen = strategy is not None
    if not chosen and given.get("beam_width") == 1:        # "1 = greedy", as it always was
        strategy = "greedy"
        del given["beam_width"]
    elif not chosen:
        strategy = DEFAULT_STRATEGY
    for name, value in given.items():
        option = OPTION[name]
        if not option.uses(strategy):
            current = f"{strategy}{'' if chosen else ' (the default)'}"
            raise ValueError(f"{who(name, surface)} is used only by {_choose(option.strategies, surface)}, not by "
                             f"{current}: choose that strategy or leave {who(name, surface)} out")
        problem = option.problem(value, who(name, surface))
        if problem:
            raise ValueError(problem)
    fields = strategy_defaults(strategy, given)
    if "banned_words" in fields:
        fields["banned_words"] = tuple(w.lower() for w in fields["banned_words"])
    n, width = fields.get("num_return_sequences", 1), fields.get("beam_width", 1)
    if strategy == "greedy" and n > 1:
        raise ValueError(f"{who('num_return_sequences', surface)} {n} needs beam search (greedy keeps one caption): "
                         f"use {_choose(['beam'], surface)}")
    if strategy in BEAMS and n > width:
        raise ValueError(f"{who('num_return_sequences', surface)} ({n}) must be <= {who('beam_width', surface)} "
                         f"({width}); raise {who('beam_width', surface)} to get an n-best list")
    groups = fields.get("num_groups", 1)
    if strategy == "diverse" and width % groups:
        raise ValueError(f"{who('num_groups', surface)} ({groups}) must divide {who('beam_width', surface)} ({width}), "
                         f"e.g. {who('beam_width', surface)} {groups * max(1, round(width / groups))}")
    longest = fields.get("max_length", max_length)
    shortest = fields.get("min_length", OPTION["min_length"].default)
    if longest is not None and shortest >= longest:
        limit = who("max_length", surface) if "max_length" in fields else "the bundle's caption length"
        raise ValueError(f"{who('min_length', surface)} ({shortest}) must be less than {limit} ({longest})")
    return {"strategy": strategy, **fields}


def shown(config) -> dict:
    """A DecodeConfig as its front ends name it (API field -> value): the options its strategy uses, the n-best size
    and n-gram constraint always, the other constraints when set."""
    always = {"num_return_sequences", "no_repeat_ngram_size"}
    off = set() if getattr(config, "consensus", 0) else {"consensus", "consensus_weight"}   # reranking when on
    return {o.field: list(getattr(config, o.name)) if o.kind is tuple else getattr(config, o.name)
            for o in USER_OPTIONS
            if o.uses(config.kind) and (o.strategies != EVERY or o.name in always
                                        or getattr(config, o.name) != o.default) and o.name != "max_length"
            and o.name not in off}
