"""Greedy and beam-search decoding over a decoder's step function, batched over images and beams.

Scores follow Hugging Face's convention: a hypothesis of ``n`` tokens (its words plus ``<end>``) with
summed log-probability ``L`` scores ``L / n ** length_penalty``; 0 ranks by raw log-probability,
1 by the per-token mean, larger values favour longer captions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .text import Vocabulary

NEG_INF = -np.inf


@dataclass(frozen=True)
class DecodeConfig:
    """Every decoding option in one validated object.

    Args:
        beam_width: 1 decodes greedily; > 1 runs beam search with that many beams per image.
        max_length: most tokens generated per caption (words plus ``<end>``).
        length_penalty: exponent of the length normaliser (see module docstring).
        no_repeat_ngram_size: if > 0, no n-gram of this size appears twice in a caption.
        num_return_sequences: size of the returned n-best list (<= beam_width).
        min_length: fewest words before ``<end>`` is allowed.
        suppress_unk: never emit ``<unk>``.
    """

    beam_width: int = 1
    max_length: int = 30
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    min_length: int = 1
    suppress_unk: bool = True

    def __post_init__(self):
        def whole(name, lo, hi=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or \
                    (hi is not None and value > hi):
                bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")
        whole("beam_width", 1, 100)
        whole("max_length", 1, 200)
        whole("no_repeat_ngram_size", 0)
        whole("num_return_sequences", 1)
        whole("min_length", 0)
        if not isinstance(self.length_penalty, (int, float)) or not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.num_return_sequences > self.beam_width:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= beam_width "
                             f"({self.beam_width}); raise beam_width to get an n-best list")
        if self.min_length >= self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must be < max_length ({self.max_length})")

    @property
    def strategy(self) -> str:
        return "greedy" if self.beam_width == 1 else "beam"

    def describe(self) -> str:
        return "greedy" if self.beam_width == 1 else f"beam {self.beam_width}"


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


class StepDecoder:
    """Wraps a Keras decoder's ``start``/``step`` in compiled tf.functions that speak numpy."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._start = tf.function(model.start, reduce_retracing=True)
        self._step = tf.function(model.step, reduce_retracing=True)

    def start(self, features: np.ndarray, repeat: int = 1):
        """Context (kept as a tensor: it never changes between steps) and numpy state, each row repeated."""
        import tensorflow as tf

        features = np.asarray(features, np.float32)
        if features.ndim == 3 and not getattr(self.model, "uses_spatial", False):
            features = features.mean(axis=1)        # (B, P, D) -> (B, D): the encoder's own global average pool
        context, state = self._start(features)
        return tf.repeat(context, repeat, axis=0), [np.repeat(s.numpy(), repeat, axis=0) for s in state]

    def select(self, context, rows: np.ndarray):
        """The context of some rows only (decoding drops the rows of finished images)."""
        import tensorflow as tf

        return tf.gather(context, np.asarray(rows, np.int32))

    def repeat(self, context, times: int):
        """Each row's context ``times`` times in a row (beam search widens one row per image to K)."""
        import tensorflow as tf

        return tf.repeat(context, times, axis=0)

    def step(self, context, tokens, state):
        log_probs, state, extras = self._step(context, np.asarray(tokens, np.int32), state)
        return (log_probs.numpy(), [s.numpy() for s in state],
                None if extras is None else extras.numpy())


class EnsembleStepDecoder:
    """Several step decoders over one vocabulary as one: each step's next-word distribution is the mean of
    the members' probabilities (log of the averaged softmax), the usual way captioning ensembles decode.

    Members may differ in architecture but must share the vocabulary and the encoder: give them the spatial
    map when any member attends (merge members pool it, as the encoder does), else the pooled features.
    The attention weights are the mean over the members that attend (None when none does).
    """

    def __init__(self, members: list[StepDecoder]):
        if not members:
            raise ValueError("an ensemble needs at least one decoder")
        self.members = list(members)

    def start(self, features: np.ndarray, repeat: int = 1):
        contexts, states = [], []
        for m in self.members:
            context, state = m.start(features, repeat)
            contexts.append(context)
            states.append(state)
        self._sizes = [len(s) for s in states]
        return contexts, [s for state in states for s in state]

    def select(self, contexts, rows: np.ndarray):
        return [_select(m, c, rows) for m, c in zip(self.members, contexts)]

    def repeat(self, contexts, times: int):
        return [_repeat(m, c, times) for m, c in zip(self.members, contexts)]

    def step(self, contexts, tokens, state):
        log_probs, new_state, extras, at = [], [], [], 0
        for m, context, size in zip(self.members, contexts, self._sizes):
            lp, st, ex = m.step(context, tokens, state[at: at + size])
            at += size
            log_probs.append(lp)
            new_state.extend(st)
            extras.append(ex)
        stacked = np.stack(log_probs)                                             # (M, B, V)
        top = stacked.max(axis=0)
        mean = top + np.log(np.mean(np.exp(stacked - top), axis=0))              # log of the mean probability
        maps = [e for e in extras if e is not None]
        attention = np.mean(maps, axis=0) if maps and len({e.shape for e in maps}) == 1 else None
        return mean, new_state, attention


def _score(log_prob: float, n_tokens: int, length_penalty: float) -> float:
    return log_prob / (max(n_tokens, 1) ** length_penalty)


def _ban(log_probs: np.ndarray, history: np.ndarray, t: int, config: DecodeConfig, vocab: Vocabulary) -> None:
    """In place: forbid specials, too-early <end>, and tokens that would repeat an n-gram.

    A row whose constraints forbid every token (a tiny vocabulary with a long min_length or no-repeat
    n-grams) may still end: <end> keeps its probability there, so no caption is left without a way out.
    """
    end_log_probs = log_probs[:, vocab.end_id].copy()
    log_probs[:, [vocab.pad_id, vocab.start_id]] = NEG_INF
    if config.suppress_unk:
        log_probs[:, vocab.unk_id] = NEG_INF
    if t < config.min_length:
        log_probs[:, vocab.end_id] = NEG_INF
    n = config.no_repeat_ngram_size
    if n and t + 1 >= n:
        for row in range(history.shape[0]):
            seq = history[row].tolist()
            prefix = tuple(seq[t - n + 1:]) if n > 1 else ()
            banned = [seq[i + n - 1] for i in range(t - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
            if banned:
                log_probs[row, banned] = NEG_INF
    stuck = np.isneginf(log_probs).all(axis=1)
    log_probs[stuck, vocab.end_id] = end_log_probs[stuck]


COMPACT_BELOW = 0.8   # drop finished images' rows from the decoder's batch once under 80% are still running


def _select(decoder, context, rows: np.ndarray):
    select = getattr(decoder, "select", None)
    return select(context, rows) if select else context[rows]


def _repeat(decoder, context, times: int):
    repeat = getattr(decoder, "repeat", None)
    return repeat(context, times) if repeat else np.repeat(context, times, axis=0)


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
    b = len(features)
    context, state = decoder.start(features)
    history = np.zeros((b, 0), np.int64)
    logps = np.zeros((b, 0))
    attn_steps: list[np.ndarray] = []
    tokens = np.full(b, vocab.start_id)
    length = np.full(b, config.max_length)
    alive = np.ones(b, bool)
    running = np.arange(b)                      # the images whose rows the decoder still computes
    for t in range(config.max_length):
        if alive.sum() < COMPACT_BELOW * len(running):
            keep = alive[running]
            context, state, running = _select(decoder, context, np.flatnonzero(keep)), \
                [s[keep] for s in state], running[keep]
        step_lp, state, extras = decoder.step(context, tokens[running], state)    # (R, V)
        _ban(step_lp, history[running], t, config, vocab)
        tokens = np.full(b, vocab.end_id)       # finished images repeat <end>; never read past their length
        tokens[running] = step_lp.argmax(axis=1)
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
    attention = np.stack(attn_steps, axis=1) if attn_steps else None              # (B, T, P)
    return [_make_caption(history[i, :length[i]], logps[i, :length[i]],
                          None if attention is None else attention[i, :length[i]],
                          bool(history[i, length[i] - 1] == vocab.end_id),
                          config, vocab)
            for i in range(b)]


def beam_search(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary,
                config: DecodeConfig) -> list[list[Caption]]:
    """Beam search for a batch of images; returns each image's n-best list, best first.

    All ``B * K`` beams advance in one decoder call per step. A finished hypothesis is kept when it
    ranks within the top ``K`` candidates of its step; an image stops once it holds ``K`` finished
    hypotheses (Hugging Face's ``early_stopping=True``), and beams still open at ``max_length`` are
    returned unfinished.
    """
    b, k = len(features), config.beam_width
    # The K beams of an image are one and the same at the first step: run one row per image, then widen.
    context, state = decoder.start(features)                                      # rows (B, ...)
    scores = np.full((b, k), NEG_INF)
    scores[:, 0] = 0.0                                    # one live beam per image at the start
    history = np.zeros((b * k, 0), np.int64)
    logps = np.zeros((b * k, 0))
    attn = None                                                                   # (B*K, T, P)
    tokens = np.full(b * k, vocab.start_id)
    finished: list[list[Caption]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)

    running = np.arange(b)                      # the images whose K rows the decoder still computes
    beams = np.arange(k)
    state = list(state)
    for t in range(config.max_length):
        live = ~done[running]
        if live.sum() < COMPACT_BELOW * len(running):
            context = _select(decoder, context, (np.flatnonzero(live)[:, None] * k + beams).ravel())
            running = running[live]
        rows = (running[:, None] * k + beams).ravel()                             # global rows, (R*K,)
        if t == 0:
            log_probs, step_state, extras = decoder.step(context, tokens[::k], state)                   # (B, V)
            log_probs, step_state = np.repeat(log_probs, k, axis=0), [np.repeat(s, k, axis=0) for s in step_state]
            extras = None if extras is None else np.repeat(extras, k, axis=0)
            context, state = _repeat(decoder, context, k), [np.repeat(s, k, axis=0) for s in state]
        else:
            log_probs, step_state, extras = decoder.step(context, tokens[rows], [s[rows] for s in state])  # (R*K, V)
        _ban(log_probs, history[rows], t, config, vocab)
        v = log_probs.shape[1]
        r = len(running)
        candidates = (scores[running].reshape(-1, 1) + log_probs).reshape(r, k * v)  # (R, K*V)
        n_cand = min(2 * k, k * v)
        top = np.argpartition(-candidates, n_cand - 1, axis=1)[:, :n_cand]         # (R, 2K)
        order = np.argsort(-np.take_along_axis(candidates, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)

        parents = np.repeat(np.arange(b) * k, k)     # every slot parks on its image's first row ...
        local_parents = np.repeat(np.arange(r) * k, k)
        new_tokens = np.full(b * k, vocab.end_id)
        new_scores = np.full((b, k), NEG_INF)
        step_logp = np.zeros(b * k)
        for j, i in enumerate(running):              # ... unless a running image's beam fills it
            if done[i]:
                continue
            filled = 0
            for rank, idx in enumerate(top[j]):
                total = candidates[j, idx]
                if total == NEG_INF or filled == k:
                    break
                beam, word = divmod(int(idx), v)
                row, local = i * k + beam, j * k + beam
                if word == vocab.end_id:
                    if rank < k:
                        hyp_attn = None
                        if extras is not None:
                            past = attn[row] if attn is not None else np.zeros((0, extras.shape[1]))
                            hyp_attn = np.concatenate([past, extras[local][None]])          # (t+1, P)
                        finished[i].append(_make_caption(
                            list(history[row]) + [word], list(logps[row]) + [log_probs[local, word]],
                            hyp_attn, True, config, vocab))
                    continue
                out = i * k + filled
                parents[out], local_parents[j * k + filled], new_tokens[out] = row, local, word
                new_scores[i, filled], step_logp[out] = total, log_probs[local, word]
                filled += 1
            done[i] = len(finished[i]) >= k or filled == 0
        history = np.concatenate([history[parents], new_tokens[:, None]], axis=1)
        logps = np.concatenate([logps[parents], step_logp[:, None]], axis=1)
        if extras is not None:
            full = np.zeros((b * k, extras.shape[1]), extras.dtype)
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
        hyps = list(finished[i])
        if len(hyps) < config.num_return_sequences or not done[i]:
            for j in range(k):
                row = i * k + j
                if scores[i, j] > NEG_INF:
                    hyps.append(_make_caption(history[row], logps[row], None if attn is None else attn[row],
                                              False, config, vocab))
        hyps.sort(key=lambda c: c.score, reverse=True)
        results.append(hyps[: config.num_return_sequences])
    return results


def decode(decoder: StepDecoder, features: np.ndarray, vocab: Vocabulary, config: DecodeConfig = DecodeConfig(),
           batch_size: int = 256, progress: Callable[[int], None] | None = None,
           max_rows: int = 1280) -> list[list[Caption]]:
    """Decode every row of ``features`` (n-best list per image), in batches of ``batch_size`` images.

    A batch holds at most ``max_rows`` decoder rows (images x beam width), so wide beams take fewer images
    at a time and memory stays flat (an attention decoder keeps a (rows, P, F) context); the captions do not
    depend on the batching.
    """
    batch_size = max(1, min(batch_size, max_rows // config.beam_width))
    out: list[list[Caption]] = []
    for lo in range(0, len(features), batch_size):
        chunk = features[lo: lo + batch_size]
        if config.beam_width == 1:
            out.extend([c] for c in greedy_search(decoder, chunk, vocab, config))
        else:
            out.extend(beam_search(decoder, chunk, vocab, config))
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


__all__ = ["DecodeConfig", "Caption", "StepDecoder", "EnsembleStepDecoder", "greedy_search", "beam_search", "decode", "decode_one",
           "with_beam"]
