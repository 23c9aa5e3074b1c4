"""Every decoding strategy (greedy, beam, sampling, diverse beam) over a decoder's step function, batched over
images and beams or samples, through the same compiled step (:mod:`captioning.models.stepper`); :class:`Sampler` draws
the captions self-critical training learns from (:mod:`captioning.training.scst`).

Scores follow Hugging Face's convention: a hypothesis of ``n`` tokens (its words plus ``<end>``) with
summed log-probability ``L`` scores ``L / n ** length_penalty``; 0 ranks by raw log-probability,
1 by the per-token mean, larger values favour longer captions.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.options import OPTION, OPTIONS, STRATEGIES, strategy_defaults
from captioning.models.stepper import StepDecoder, repeat_rows, select_rows

NEG_INF = -np.inf


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


@dataclass
class Caption:
    """One decoded caption with its scores.

    ``token_probs`` holds the probability of every emitted token (each word, then ``<end>`` when the
    caption finished); ``attention`` is (tokens, locations) for attention decoders, else None.
    """

    words: list[str]
    log_prob: float
    score: float
    token_probs: list[float]
    finished: bool = True
    attention: np.ndarray | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def num_tokens(self) -> int:
        return len(self.token_probs)

    @property
    def normalized_log_prob(self) -> float:
        """Mean log-probability per emitted token."""
        return self.log_prob / max(self.num_tokens, 1)

    @property
    def word_probs(self) -> list[float]:
        return self.token_probs[: len(self.words)]


def _score(log_prob: float, n_tokens: int, length_penalty: float) -> float:
    return log_prob / (max(n_tokens, 1) ** length_penalty)


def _banned_ids(config: DecodeConfig, vocab: Vocabulary) -> np.ndarray:
    """Token ids never emitted: ``<pad>``, ``<start>``, ``<unk>`` when suppressed, and the banned words."""
    ids = [vocab.pad_id, vocab.start_id] + ([vocab.unk_id] if config.suppress_unk else [])
    ids += [vocab.stoi[w] for w in config.banned_words if w in vocab.stoi and vocab.stoi[w] >= 4]
    return np.asarray(ids, np.int64)


def _ban(log_probs: np.ndarray, history: np.ndarray, t: int, config: DecodeConfig, vocab: Vocabulary,
         banned: np.ndarray | None = None) -> None:
    """In place: every strategy's constraints on the next token of each row.

    Forbids specials, banned words, too-early <end>, the previous word again (``no_repeat_word``) and
    tokens that would repeat an n-gram; applies the CTRL repetition penalty to words already emitted
    (log-probabilities are <= 0, so multiplying by a penalty > 1 lowers them). A row whose constraints
    forbid every token (a tiny vocabulary with a long min_length or no-repeat n-grams) may still end:
    <end> keeps its probability there, so no caption is left without a way out.
    """
    end_log_probs = log_probs[:, vocab.end_id].copy()
    log_probs[:, _banned_ids(config, vocab) if banned is None else banned] = NEG_INF
    if t < config.min_length:
        log_probs[:, vocab.end_id] = NEG_INF
    rows = np.arange(history.shape[0])
    if t and config.repetition_penalty != 1.0:
        seen = np.zeros(log_probs.shape, bool)
        seen[rows[:, None], history] = True
        seen[:, vocab.end_id] = False
        log_probs[seen] *= config.repetition_penalty
    if t and config.no_repeat_word:
        previous = history[:, -1]
        words = previous >= 4                    # a row parked on <end> has nothing to repeat
        log_probs[rows[words], previous[words]] = NEG_INF
    n = config.no_repeat_ngram_size
    if n and t + 1 >= n:
        for row in range(history.shape[0]):
            seq = history[row].tolist()
            prefix = tuple(seq[t - n + 1:]) if n > 1 else ()
            banned_next = [seq[i + n - 1] for i in range(t - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
            if banned_next:
                log_probs[row, banned_next] = NEG_INF
    stuck = np.isneginf(log_probs).all(axis=1)
    log_probs[stuck, vocab.end_id] = end_log_probs[stuck]


def sampling_distribution(log_probs: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0) -> np.ndarray:
    """(R, V) log-probabilities -> (R, V) probabilities that sampling draws from.

    Temperature first, then top-k (keep the k likeliest), then top-p (keep the smallest set of likeliest
    words whose probability reaches p, always at least one), then renormalise: Hugging Face's order.
    Forbidden tokens (-inf) keep probability 0.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # a too-small temperature: see below
        logits = log_probs / temperature
        if top_k and top_k < logits.shape[1]:
            kth = -np.partition(-logits, top_k - 1, axis=1)[:, top_k - 1: top_k]   # (R, 1) k-th largest
            logits = np.where(logits < kth, NEG_INF, logits)
        top = logits.max(axis=1, keepdims=True)
        probs = np.exp(logits - top)
        probs /= probs.sum(axis=1, keepdims=True)
    broken = ~np.isfinite(probs).all(axis=1)   # float32 overflow (T below ~1e-38; DecodeConfig refuses < 0.01)
    if broken.any():                           # the limit of a vanishing temperature: the likeliest word
        probs[broken] = 0.0
        probs[broken, np.argmax(log_probs[broken], axis=1)] = 1.0
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs                # mass of the likelier words
        keep_sorted = before < top_p
        keep_sorted[:, 0] = True               # the likeliest word always stays (float32 rounds a tiny p to 0)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


COMPACT_BELOW = 0.8   # drop finished images' rows from the decoder's batch once under 80% are still running


def _make_caption(tokens, logps, attn, finished, config, vocab) -> Caption:
    tokens, logps = list(tokens), [float(x) for x in logps]
    words = vocab.decode(tokens)
    total = float(sum(logps))
    return Caption(words=words, log_prob=total, score=_score(total, len(logps), config.length_penalty),
                   token_probs=[math.exp(x) for x in logps], finished=finished,
                   attention=None if attn is None else np.asarray(attn))


def greedy_search(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary,
                  config: DecodeConfig = DecodeConfig()) -> list[Caption]:
    """The most probable next token at every step, for a batch of images at once."""
    return [n[0] for n in _rowwise_search(decoder, features, vocab, config, 1, None)]


def sample_search(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary, config: DecodeConfig,
                  first_index: int = 0, seed=None) -> list[list[Caption]]:
    """``config.num_return_sequences`` captions sampled per image, best score first.

    Each word is drawn from :func:`sampling_distribution` of the constrained log-probabilities; the
    captions carry the model's (constrained) probabilities of their words, before temperature and
    truncation. All ``B * n`` rows advance in one decoder call per step; the first step runs one row per
    image (the n samples of an image share it). Image ``first_index + i`` draws from its own random
    stream seeded by ``(seed, first_index + i)``, so its samples do not depend on how images are batched.
    """
    seed = config.seed if seed is None else seed
    key = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    rngs = [np.random.default_rng(key + [first_index + i]) for i in range(len(features))]
    n = config.num_return_sequences

    def pick(log_probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        probs = sampling_distribution(log_probs, config.temperature, config.top_k, config.top_p)   # (R, V)
        images = rows // n
        u = np.empty(len(rows))
        for image in np.unique(images):
            draws = 1.0 - rngs[image].random(n)                  # (0, 1]: a zero-probability word is never drawn
            u[images == image] = draws[rows[images == image] % n]
        cum = np.cumsum(probs, axis=1)                                               # (R, V)
        return np.minimum((cum < u[:, None] * cum[:, -1:]).sum(axis=1), probs.shape[1] - 1)

    return _rowwise_search(decoder, features, vocab, config, n, pick)


def _rowwise_search(decoder, features: np.ndarray, vocab: Vocabulary, config: DecodeConfig, n: int,
                    pick: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> list[list[Caption]]:
    """Greedy (``pick`` None: argmax) or sampling over ``n`` independent rows per image."""
    b = len(features) * n
    banned = _banned_ids(config, vocab)
    context, state = decoder.start(features)      # one row per image; widened to n after the first step
    history = np.zeros((b, 0), np.int64)
    logps = np.zeros((b, 0))
    attn_steps: list[np.ndarray] = []
    tokens = np.full(b, vocab.start_id)
    length = np.full(b, config.max_length)
    alive = np.ones(b, bool)
    running = np.arange(b)                      # the rows the decoder still computes
    for t in range(config.max_length):
        if alive.sum() < COMPACT_BELOW * len(running):
            keep = alive[running]
            context, state, running = select_rows(decoder, context, np.flatnonzero(keep)), \
                [s[keep] for s in state], running[keep]
        if t == 0 and n > 1:
            step_lp, state, extras = decoder.step(context, tokens[::n], state)       # (B/n, V)
            step_lp, state = np.repeat(step_lp, n, axis=0), [np.repeat(s, n, axis=0) for s in state]
            extras = None if extras is None else np.repeat(extras, n, axis=0)
            context = repeat_rows(decoder, context, n)
        else:
            step_lp, state, extras = decoder.step(context, tokens[running], state)   # (R, V)
        _ban(step_lp, history[running], t, config, vocab, banned)
        tokens = np.full(b, vocab.end_id)       # finished rows repeat <end>; never read past their length
        tokens[running] = step_lp.argmax(axis=1) if pick is None else pick(step_lp, running)
        step_logp = np.zeros(b)
        step_logp[running] = step_lp[np.arange(len(running)), tokens[running]]
        history = np.concatenate([history, tokens[:, None]], axis=1)
        logps = np.concatenate([logps, step_logp[:, None]], axis=1)
        if extras is not None:
            full = np.zeros((b, extras.shape[1]), extras.dtype)
            full[running] = extras
            attn_steps.append(full)
        ended = alive & (tokens == vocab.end_id)
        length[ended] = t + 1
        alive &= ~ended
        if not alive.any():
            break
    attention = np.stack(attn_steps, axis=1) if attn_steps else None              # (B*n, T, P)
    caps = [_make_caption(history[i, :length[i]], logps[i, :length[i]],
                          None if attention is None else attention[i, :length[i]],
                          bool(history[i, length[i] - 1] == vocab.end_id),
                          config, vocab)
            for i in range(b)]
    return [sorted(caps[i: i + n], key=lambda c: c.score, reverse=True) for i in range(0, b, n)]


def beam_search(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary,
                config: DecodeConfig, distinct: bool = False) -> list[list[Caption]]:
    """Beam search, or diverse beam search with ``config.num_groups`` groups, for a batch of images; returns
    each image's n-best list.

    All ``B * K`` beams advance in one decoder call per step. A finished hypothesis is kept when it
    ranks within the top ``K`` candidates of its step; an image stops once it holds ``K`` finished
    hypotheses (Hugging Face's ``early_stopping=True``), and beams still open at ``max_length`` are
    returned unfinished.

    Diverse beam search (Vijayakumar et al. 2018) splits the K beams into G groups of K/G that search one
    after another at each step; a group's candidates lose ``diversity_penalty`` times the number of earlier
    groups of the same image that chose the same word at this step (Hamming diversity). Each group is a
    beam search of its own (one group is exactly beam search); the n-best list takes every group's best
    caption first (ranked by score), then every group's second, and so on. Scores and log-probabilities
    are the model's, without the penalty.

    Two groups may find the same caption: with ``distinct`` (what :func:`decode` asks for) each caption appears
    once, with its better score, and the list is filled from the further finished and open hypotheses.
    """
    b, groups = len(features), config.num_groups if config.kind == "diverse" else 1
    width = config.beam_width
    k = width // groups                         # beams per unit: unit u = image u // G, group u % G
    units = b * groups
    banned = _banned_ids(config, vocab)
    penalty = config.diversity_penalty if groups > 1 else 0.0
    # The K beams of an image are one and the same at the first step: run one row per image, then widen.
    context, state = decoder.start(features)                                      # rows (B, ...)
    scores = np.full((units, k), NEG_INF)
    scores[:, 0] = 0.0                                    # one live beam per unit at the start
    history = np.zeros((units * k, 0), np.int64)
    logps = np.zeros((units * k, 0))
    attn = None                                                                   # (U*k, T, P)
    tokens = np.full(units * k, vocab.start_id)
    finished: list[list[Caption]] = [[] for _ in range(units)]
    done = np.zeros(units, bool)

    running = np.arange(units)                  # the units whose k rows the decoder still computes
    beams = np.arange(k)
    state = list(state)
    for t in range(config.max_length):
        live = ~done[running]
        if live.sum() < COMPACT_BELOW * len(running):
            context = select_rows(decoder, context, (np.flatnonzero(live)[:, None] * k + beams).ravel())
            running = running[live]
        rows = (running[:, None] * k + beams).ravel()                             # global rows, (R*k,)
        if t == 0:
            log_probs, step_state, extras = decoder.step(context, tokens[::width], state)            # (B, V)
            log_probs, step_state = np.repeat(log_probs, width, axis=0), [np.repeat(s, width,
                                                                                    axis=0) for s in step_state]
            extras = None if extras is None else np.repeat(extras, width, axis=0)
            context, state = repeat_rows(decoder, context, width), [np.repeat(s, width, axis=0) for s in state]
        else:
            log_probs, step_state, extras = decoder.step(context, tokens[rows], [s[rows] for s in state])  # (R*k, V)
        _ban(log_probs, history[rows], t, config, vocab, banned)
        v = log_probs.shape[1]
        r = len(running)
        totals = (scores[running].reshape(-1, 1) + log_probs).reshape(r, k, v)   # (R, k, V)
        chosen = np.zeros((b, v)) if penalty else None    # per image: how many earlier groups chose each word now

        parents = np.repeat(np.arange(units) * k, k)  # every slot parks on its unit's first row ...
        local_parents = np.repeat(np.arange(r) * k, k)
        new_tokens = np.full(units * k, vocab.end_id)
        new_scores = np.full((units, k), NEG_INF)
        step_logp = np.zeros(units * k)
        for group in range(groups):
            members = np.flatnonzero(running % groups == group) if groups > 1 else np.arange(r)
            if not len(members):
                continue
            candidates = totals[members]                                          # (M, k, V)
            if penalty and group:
                candidates = candidates - penalty * chosen[running[members] // groups][:, None, :]
            candidates = candidates.reshape(len(members), k * v)
            n_cand = min(2 * k, k * v)
            top = np.argpartition(-candidates, n_cand - 1, axis=1)[:, :n_cand]     # (M, 2k)
            order = np.argsort(-np.take_along_axis(candidates, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            for m, j in enumerate(members):           # ... unless a running unit's beam fills it
                i = running[j]
                if done[i]:
                    continue
                filled = 0
                for rank, idx in enumerate(top[m]):
                    total = candidates[m, idx]
                    if total == NEG_INF or filled == k:
                        break
                    beam, word = divmod(int(idx), v)
                    row, local = i * k + beam, j * k + beam
                    if word == vocab.end_id:
                        if rank < k:
                            hyp_attn = None
                            if extras is not None:
                                past = attn[row] if attn is not None else np.zeros((0, extras.shape[1]))
                                hyp_attn = np.concatenate([past, extras[local][None]])      # (t+1, P)
                            finished[i].append(_make_caption(
                                list(history[row]) + [word], list(logps[row]) + [log_probs[local, word]],
                                hyp_attn, True, config, vocab))
                        continue
                    out = i * k + filled
                    parents[out], local_parents[j * k + filled], new_tokens[out] = row, local, word
                    new_scores[i, filled], step_logp[out] = total, log_probs[local, word]
                    filled += 1
                    if penalty:
                        chosen[i // groups, word] += 1
                done[i] = len(finished[i]) >= k or filled == 0
        history = np.concatenate([history[parents], new_tokens[:, None]], axis=1)
        logps = np.concatenate([logps[parents], step_logp[:, None]], axis=1)
        if extras is not None:
            full = np.zeros((units * k, extras.shape[1]), extras.dtype)
            full[rows] = extras[local_parents]
            step_attn = full[:, None]
            attn = step_attn if attn is None else np.concatenate([attn[parents], step_attn], axis=1)
        for s, new in zip(state, step_state):
            s[rows] = new[local_parents]
        tokens, scores = new_tokens, new_scores
        if done.all():
            break

    results = []
    for i in range(b):
        per_group, spare = [], []
        enough = sum(len(finished[u]) for u in range(i * groups, (i + 1) * groups)) >= config.num_return_sequences
        for u in range(i * groups, (i + 1) * groups):
            hyps = list(finished[u])
            if not enough or not done[u] or distinct:
                open_beams = [_make_caption(history[u * k + j], logps[u * k + j],
                                            None if attn is None else attn[u * k + j], False, config, vocab)
                              for j in range(k) if scores[u, j] > NEG_INF]
                if not enough or not done[u]:
                    hyps += open_beams
                else:
                    spare += open_beams           # only to fill a distinct n-best list
            hyps.sort(key=lambda c: c.score, reverse=True)
            per_group.append(hyps)
        # round-robin over groups: every group's best, then every group's second, ... (one group: by score)
        ranked = sorted(((rank, -c.score, g, c) for g, hyps in enumerate(per_group) for rank, c in enumerate(hyps)),
                        key=lambda x: x[:3])
        ranked = [c for *_, c in ranked]
        if distinct:
            ranked = distinct_captions(ranked + sorted(spare, key=lambda c: c.score, reverse=True))
        results.append(ranked[: config.num_return_sequences])
    return results


def distinct_captions(captions: list[Caption]) -> list[Caption]:
    """``captions`` with each text once, in their order: a caption found twice (two diverse groups, or a finished
    and a cut-off hypothesis of the same words) keeps its better score at its first place."""
    best: dict[tuple[str, ...], Caption] = {}
    for caption in captions:
        key = tuple(caption.words)
        if key not in best or caption.score > best[key].score:
            best[key] = caption                   # a dict keeps the key's first place
    return list(best.values())


def decode(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary, config: DecodeConfig = DecodeConfig(),
           batch_size: int = 256, progress: Callable[[int], None] | None = None,
           max_rows: int = 1280) -> list[list[Caption]]:
    """Decode every row of ``features`` (n-best list or samples per image), in batches of ``batch_size`` images.

    An n-best list (beam, diverse) holds distinct captions; samples are draws, and the same caption may be drawn
    twice (how often is what the lab's "distinct captions" measures).

    A batch holds at most ``max_rows`` decoder rows (images x beams or samples), so wide beams take fewer
    images at a time and memory stays flat (an attention decoder keeps a (rows, P, F) context); the captions
    do not depend on the batching (samples neither: each image has its own random stream).
    """
    batch_size = max(1, min(batch_size, max_rows // config.rows_per_image))
    kind = config.kind
    reranks = kind in ("beam", "diverse") and config.consensus > 0
    consensus = getattr(decoder, "consensus", None)       # the bundle's nearest training photos (rerank module)
    if reranks and consensus is None:
        raise ValueError("consensus reranking needs the bundle's retrieval index (the nearest training photos); "
                         "add one with: python train.py index --out BUNDLE, or set consensus to 0")
    out: list[list[Caption]] = []
    for lo in range(0, len(features), batch_size):
        chunk = features[lo: lo + batch_size]
        # A decoder with a memory retrieves the batch's captions; their new words extend the vocabulary.
        words = decoder.prepare(chunk, vocab) if hasattr(decoder, "prepare") else vocab
        if kind == "greedy":
            out.extend([c] for c in greedy_search(decoder, chunk, words, config))
        elif kind == "sample":
            out.extend(sample_search(decoder, chunk, words, config, first_index=lo))
        elif reranks:                             # every beam's caption, re-ranked by the neighbours' captions
            nbest = beam_search(decoder, chunk, words, replace(config, num_return_sequences=config.beam_width),
                                distinct=True)
            out.extend(consensus.rerank(chunk, nbest, config))
        else:
            out.extend(beam_search(decoder, chunk, words, config, distinct=True))
        if words is not vocab:                    # which remembered captions were read, which words copied
            decoder.annotate(out[-len(chunk):])
        if progress:
            progress(len(chunk))
    return out


def with_beam(config: DecodeConfig, beam_width: int, **changes) -> DecodeConfig:
    """A copy of ``config`` with another beam width (clipping num_return_sequences to fit)."""
    return replace(config, beam_width=beam_width,
                   num_return_sequences=min(config.num_return_sequences, beam_width), **changes)


def decode_one(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary,
               config: DecodeConfig = DecodeConfig()) -> list[Caption]:
    return decode(decoder, np.asarray(features)[None], vocab, config)[0]


__all__ = ["DecodeConfig", "Caption", "STRATEGIES", "parse_spec", "sampling_distribution", "greedy_search",
           "sample_search", "beam_search", "distinct_captions", "decode", "decode_one", "with_beam", "Sampler"]


class Sampler:
    """Draws captions for REINFORCE through :func:`sample_search`:
    one compiled step per word for the whole batch, plain sampling (temperature 1, no truncation), specials
    never emitted, ``<end>`` allowed from the first step. Every call draws fresh captions; the same seed
    replays the same sequence of calls."""

    def __init__(self, decoder, vocab: Vocabulary, seed: int):
        self.steps, self.vocab, self.seed, self.calls = StepDecoder(decoder), vocab, int(seed), 0

    def sample(self, features: np.ndarray, samples: int, max_length: int) -> np.ndarray:
        """(B, ...) features -> int32 (B*samples, max_length) token ids, rows grouped per image, 0 after <end>."""
        config = DecodeConfig(strategy="sample", num_return_sequences=samples, max_length=max_length, min_length=0)
        nbest = sample_search(self.steps, np.asarray(features, np.float32), self.vocab, config,
                              seed=(self.seed, self.calls))
        self.calls += 1
        out = np.zeros((len(features) * samples, max_length), np.int32)
        for row, caption in enumerate(c for caps in nbest for c in caps):
            ids = [self.vocab.stoi[w] for w in caption.words] + ([self.vocab.end_id] if caption.finished else [])
            out[row, :len(ids)] = ids
        return out
