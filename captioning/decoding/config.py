"""The decoding settings as one validated object (:class:`DecodeConfig`), and the ``key=value`` spec strings that name
one (``beam:width=5,length_penalty=0.7``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from captioning.decoding.options import OPTION, OPTIONS, STRATEGIES, strategy_defaults


@dataclass(frozen=True)
class DecodeConfig:
    """Every decoding option in one validated object: a strategy and its knobs, plus the constraints
    every strategy honours.

    Args:
        strategy: ``greedy``, ``beam``, ``sample`` or ``diverse``; ``auto`` (the default) means greedy when
            ``beam_width`` is 1 and beam search otherwise, so ``DecodeConfig(beam_width=5)`` is beam search.
        beam_width: beams per image (beam and diverse).
        max_length: most tokens generated per caption (words plus ``<end>``).
        length_penalty: exponent of the length normaliser (see module docstring).
        no_repeat_ngram_size: if > 0, no n-gram of this size appears twice in a caption.
        num_return_sequences: captions returned per image: the n-best list (beam, diverse: <= beam_width)
            or the number of samples drawn (sample).
        min_length: fewest words before ``<end>`` is allowed.
        suppress_unk: never emit ``<unk>``.
        temperature: sample: divides the log-probabilities (< 1 sharper, > 1 flatter).
        top_k: sample: draw only among the k likeliest words (0 = off).
        top_p: sample: draw only among the smallest set of likeliest words whose probability reaches p
            (nucleus sampling, Holtzman et al. 2020; 1 = off).
        seed: sample: the same seed draws the same captions for the same images.
        num_groups: diverse: beam groups (Vijayakumar et al. 2018); must divide ``beam_width``.
        diversity_penalty: diverse: Hamming penalty, subtracted from a word's log-probability once for every
            earlier group that chose it at the same step.
        repetition_penalty: CTRL-style (Keskar et al. 2019): a word already emitted has its log-probability
            multiplied by this (> 1 discourages repeats; 1 = off).
        no_repeat_word: never the same word twice in a row.
        banned_words: words never emitted (words the vocabulary lacks cannot be emitted anyway).
        consensus: beam, diverse: rerank every beam's caption by its agreement with the captions of this many
            nearest training photos (:mod:`captioning.evaluation.rerank`; 0 = off).
        consensus_weight: the weight of a caption's beam score beside that agreement.
    """

    beam_width: int = 1
    max_length: int = 30
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    min_length: int = 1
    suppress_unk: bool = True
    strategy: str = "auto"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    num_groups: int = 1
    diversity_penalty: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_word: bool = False
    banned_words: tuple[str, ...] = ()
    consensus: int = 0
    consensus_weight: float = OPTION["consensus_weight"].default

    def __post_init__(self):
        if self.strategy not in ("auto", *STRATEGIES):
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for option in OPTIONS:                      # the ranges are declared once, in decoding_options
            if option.kind in (int, float):
                if option.name == "num_return_sequences":    # its upper bound depends on the strategy: below
                    option = replace(option, high=None)
                problem = option.problem(getattr(self, option.name))
                if problem:
                    raise ValueError(problem)
        if isinstance(self.banned_words, str) or not all(isinstance(w, str) and w for w in self.banned_words):
            raise ValueError(f"banned_words must be a tuple of words, e.g. ('man', 'woman'), got {self.banned_words!r}")
        kind = self.kind
        if kind == "greedy" and self.beam_width > 1:
            raise ValueError(f"greedy decoding keeps one beam; use strategy 'beam' for beam_width "
                             f"{self.beam_width}, or set beam_width=1")
        if kind in ("greedy", "sample") and self.num_groups > 1:
            raise ValueError("num_groups only applies to diverse beam search; use strategy 'diverse'")
        if kind in ("greedy", "beam") and self.num_groups > 1:
            raise ValueError("num_groups > 1 is diverse beam search; use strategy 'diverse'")
        if kind in ("beam", "diverse", "greedy") and self.num_return_sequences > self.beam_width:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= beam_width "
                             f"({self.beam_width}); raise beam_width to get an n-best list")
        most = OPTION["num_return_sequences"].high
        if kind == "sample" and self.num_return_sequences > most:
            raise ValueError(f"num_return_sequences (samples per image) must be <= {most}, "
                             f"got {self.num_return_sequences}")
        if kind == "diverse" and self.beam_width % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide beam_width ({self.beam_width}), "
                             f"e.g. beam_width={self.num_groups * max(1, round(self.beam_width / self.num_groups))}")
        if self.min_length >= self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must be < max_length ({self.max_length})")

    @property
    def kind(self) -> str:
        """The strategy that runs: ``auto`` resolved by ``beam_width``."""
        if self.strategy == "auto":
            return "greedy" if self.beam_width == 1 else "beam"
        return self.strategy

    @property
    def rows_per_image(self) -> int:
        """Decoder rows each image takes while decoding (beams or samples)."""
        return self.num_return_sequences if self.kind == "sample" else self.beam_width

    def options(self) -> dict:
        """The options that matter for this strategy (what metrics.json records beside ``decoding``)."""
        out: dict = {"max_length": self.max_length}
        if self.kind in ("beam", "diverse"):
            out.update(beam_width=self.beam_width, length_penalty=self.length_penalty)
        if self.kind == "sample":
            out.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)
        if self.kind == "diverse":
            out.update(num_groups=self.num_groups, diversity_penalty=self.diversity_penalty)
        if self.kind in ("beam", "diverse") and self.consensus:
            out.update(consensus=self.consensus, consensus_weight=self.consensus_weight)
        out["num_return_sequences"] = self.num_return_sequences
        for name, off in (("min_length", 1), ("no_repeat_ngram_size", 0), ("repetition_penalty", 1.0),
                          ("no_repeat_word", False), ("banned_words", ())):
            if getattr(self, name) != off:
                out[name] = list(getattr(self, name)) if name == "banned_words" else getattr(self, name)
        return out

    def describe(self) -> str:
        """A short human label, e.g. ``beam 5``, ``sample T 0.7, top-p 0.9, n 5``, ``diverse 6 beams / 3 groups``."""
        kind = self.kind
        if kind == "greedy":
            text = "greedy"
        elif kind == "beam":
            text = f"beam {self.beam_width}"
        elif kind == "sample":
            parts = [f"T {self.temperature:g}"]
            if self.top_k:
                parts.append(f"top-k {self.top_k}")
            if self.top_p < 1:
                parts.append(f"top-p {self.top_p:g}")
            parts.append(f"n {self.num_return_sequences}")
            text = "sample " + ", ".join(parts)
        else:
            text = f"diverse {self.beam_width} beams / {self.num_groups} groups, penalty {self.diversity_penalty:g}"
        extras = []
        if self.repetition_penalty != 1:
            extras.append(f"repetition {self.repetition_penalty:g}")
        if self.no_repeat_ngram_size:
            extras.append(f"no repeated {self.no_repeat_ngram_size}-grams")
        if self.no_repeat_word:
            extras.append("no word twice in a row")
        if self.banned_words:
            extras.append("banned " + " ".join(self.banned_words))
        if kind in ("beam", "diverse") and self.consensus:
            extras.append(f"consensus {self.consensus}, w {self.consensus_weight:g}")
        return text + (f" ({'; '.join(extras)})" if extras else "")


SPEC_KEYS = {key: o.name for o in OPTIONS for key in o.spec}   # spec key -> DecodeConfig field


def parse_spec(spec: str, **base) -> DecodeConfig:
    """A decoding spec as written on the command line -> DecodeConfig.

    ``greedy``, ``beam:5``, ``beam:width=5,lp=0.5``, ``sample:temperature=0.7,top_p=0.9,n=5,seed=0``,
    ``diverse:beams=6,groups=3,penalty=0.5``; any strategy takes ``repetition_penalty=1.2``,
    ``no_repeat_ngram=3``, ``no_repeat_word=1``, ``ban=man+woman``, ``min_length``/``max_length``.
    ``base`` gives defaults (e.g. the bundle's ``max_length``) that the spec may override.
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in STRATEGIES:
        raise ValueError(f"decoding spec {spec!r}: the strategy must be one of {', '.join(STRATEGIES)} "
                         f"(e.g. beam:5 or sample:temperature=0.7,n=5)")
    fields: dict = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            if name in ("beam", "diverse") and key.isdigit() and "beam_width" not in fields:
                key, value = "width", key
            else:
                raise ValueError(f"decoding spec {spec!r}: {part!r} should be KEY=VALUE "
                                 f"(keys: {', '.join(sorted(SPEC_KEYS))})")
        field_name = SPEC_KEYS.get(key.strip().lower())
        if field_name is None:
            raise ValueError(f"decoding spec {spec!r}: unknown option {key!r}; "
                             f"use one of {', '.join(sorted(SPEC_KEYS))}")
        value = value.strip()
        if field_name == "banned_words":
            fields[field_name] = tuple(w for w in value.replace("+", " ").split() if w)
            continue
        kind = type(getattr(DecodeConfig(), field_name))
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                fields[field_name] = value.lower() in ("1", "true", "yes")
            else:
                fields[field_name] = int(value) if kind is int else float(value)
        except ValueError:
            raise ValueError(f"decoding spec {spec!r}: {key}={value!r} should be a "
                             f"{'whole number' if kind is int else 'number' if kind is float else 'yes/no'}") from None
    merged = {**base, **fields}
    if name == "beam" and "beam_width" not in fields:
        raise ValueError(f"decoding spec {spec!r}: give the beam width, e.g. beam:5")
    if name == "diverse":
        merged = strategy_defaults(name, merged)
    return DecodeConfig(strategy=name, **merged)
