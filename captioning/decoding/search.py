"""The search strategies (greedy, beam, sampling, diverse beam) over a decoder's step function, batched over images
and beams or samples, through the same compiled step (:mod:`captioning.models.stepper`). A new strategy goes here
(its options in :mod:`captioning.decoding.options`).

Scores follow Hugging Face's convention: a hypothesis of ``n`` tokens (its words plus ``<end>``) with
summed log-probability ``L`` scores ``L / n ** length_penalty``; 0 ranks by raw log-probability,
1 by the per-token mean, larger values favour longer captions.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.captions import COMPACT_BELOW, Caption, _make_caption, distinct_captions
from captioning.decoding.config import DecodeConfig
from captioning.decoding.constraints import NEG_INF, constraints_for, sampling_distribution
from captioning.models.stepper import StepDecoder, repeat_rows, select_rows


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
    constrain = constraints_for(config, vocab)
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
        constrain(step_lp, history[running], t)
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
    constrain = constraints_for(config, vocab)
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
        constrain(log_probs, history[rows], t)
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


__all__ = ["greedy_search", "sample_search", "beam_search", "decode", "decode_one", "with_beam", "Sampler"]


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
