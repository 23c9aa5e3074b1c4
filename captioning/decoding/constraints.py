"""The constraints every strategy honours, applied to a step's log-probabilities: banned tokens (``<pad>``,
``<start>``, ``<unk>`` on request, ``<end>`` before ``min_length``), no repeated n-grams; and the sampling
distribution (temperature, top-k, top-p).
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig

NEG_INF = -np.inf


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
