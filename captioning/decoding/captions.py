"""A decoded caption (:class:`Caption`: words, scores, per-word probabilities) and how hypotheses become captions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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


COMPACT_BELOW = 0.8   # drop finished images' rows from the decoder's batch once under 80% are still running


def _make_caption(tokens, logps, attn, finished, config, vocab) -> Caption:
    tokens, logps = list(tokens), [float(x) for x in logps]
    words = vocab.decode(tokens)
    total = float(sum(logps))
    return Caption(words=words, log_prob=total, score=_score(total, len(logps), config.length_penalty),
                   token_probs=[math.exp(x) for x in logps], finished=finished,
                   attention=None if attn is None else np.asarray(attn))


def distinct_captions(captions: list[Caption]) -> list[Caption]:
    """``captions`` with each text once, in their order: a caption found twice (two diverse groups, or a finished
    and a cut-off hypothesis of the same words) keeps its better score at its first place."""
    best: dict[tuple[str, ...], Caption] = {}
    for caption in captions:
        key = tuple(caption.words)
        if key not in best or caption.score > best[key].score:
            best[key] = caption                   # a dict keeps the key's first place
    return list(best.values())
