"""The constraints every strategy honours, applied to a step's log-probabilities: banned tokens (``<pad>``,
``<start>``, ``<unk>`` on request, ``<end>`` before ``min_length``), no repeated n-grams; and the sampling
distribution (temperature, top-k, top-p).
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig

NEG_INF = -np.inf


class BanTokens:
    """Never emit these ids: ``<pad>``, ``<start>``, ``<unk>`` when suppressed, and the banned words."""

    def __init__(self, config: DecodeConfig, vocab: Vocabulary):
        ids = [vocab.pad_id, vocab.start_id] + ([vocab.unk_id] if config.suppress_unk else [])
        ids += [vocab.stoi[w] for w in config.banned_words if w in vocab.stoi and vocab.stoi[w] >= 4]
        self.ids = np.asarray(ids, np.int64)

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        log_probs[:, self.ids] = NEG_INF


class MinLength:
    """No ``<end>`` before ``min_length`` words."""

    def __init__(self, min_length: int, end_id: int):
        self.min_length, self.end_id = min_length, end_id

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        if t < self.min_length:
            log_probs[:, self.end_id] = NEG_INF


class RepetitionPenalty:
    """CTRL's penalty on every word already emitted (log-probabilities are <= 0, so multiplying by a penalty > 1
    lowers them); ``<end>`` is never penalised."""

    def __init__(self, penalty: float, end_id: int):
        self.penalty, self.end_id = penalty, end_id

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        if t:
            seen = np.zeros(log_probs.shape, bool)
            seen[np.arange(history.shape[0])[:, None], history] = True
            seen[:, self.end_id] = False
            log_probs[seen] *= self.penalty


class NoRepeatWord:
    """Not the previous word again (a row parked on ``<end>`` has nothing to repeat)."""

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        if t:
            previous = history[:, -1]
            words = previous >= 4
            log_probs[np.arange(history.shape[0])[words], previous[words]] = NEG_INF


class NoRepeatNgram:
    """No token that would repeat an n-gram of the row's history."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        n = self.n
        if t + 1 < n:
            return
        for row in range(history.shape[0]):
            seq = history[row].tolist()
            prefix = tuple(seq[t - n + 1:]) if n > 1 else ()
            banned_next = [seq[i + n - 1] for i in range(t - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
            if banned_next:
                log_probs[row, banned_next] = NEG_INF


class Constraints:
    """The processors a decoding's settings call for, applied in order, in place, to each step's (R, V)
    log-probabilities given each row's (R, t) history (Hugging Face's ``LogitsProcessorList``). A row they leave
    with no token at all (a tiny vocabulary with a long min_length or no-repeat n-grams) may still end: ``<end>``
    keeps its probability there, so no caption is left without a way out. A new constraint is one more class with
    ``__call__(log_probs, history, t)`` and a line in :func:`constraints_for`."""

    def __init__(self, processors: list, end_id: int):
        self.processors, self.end_id = processors, end_id

    def __call__(self, log_probs: np.ndarray, history: np.ndarray, t: int) -> None:
        end_log_probs = log_probs[:, self.end_id].copy()
        for process in self.processors:
            process(log_probs, history, t)
        stuck = np.isneginf(log_probs).all(axis=1)
        log_probs[stuck, self.end_id] = end_log_probs[stuck]


def constraints_for(config: DecodeConfig, vocab: Vocabulary) -> Constraints:
    """Every strategy's constraints on the next token, from ``config``: banned ids, too-early ``<end>``, the
    repetition penalty, no repeated word, no repeated n-gram (in that order)."""
    processors: list = [BanTokens(config, vocab), MinLength(config.min_length, vocab.end_id)]
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(config.repetition_penalty, vocab.end_id))
    if config.no_repeat_word:
        processors.append(NoRepeatWord())
    if config.no_repeat_ngram_size:
        processors.append(NoRepeatNgram(config.no_repeat_ngram_size))
    return Constraints(processors, vocab.end_id)


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
