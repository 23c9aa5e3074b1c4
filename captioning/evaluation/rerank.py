"""Consensus reranking (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"): pick,
from a beam's n-best list, the caption that agrees most with what people wrote about the most similar training
photos.

Each candidate of a photo's n-best list scores::

    consensus = mean CIDEr-D of the candidate against the captions of the photo's k nearest training photos
    score     = consensus + weight * (the candidate's beam score: log-probability / length ** length_penalty)

and the list is re-sorted by it. The neighbours are the bundle's retrieval index (:mod:`captioning.evaluation.trust`,
the trust feature's index: the training photos' pooled features of the bundle's own encoder, with the captions
it keeps per photo); CIDEr-D's document frequencies come from the same captions, so a photo's ranking depends on
that photo and the index alone (never on the other photos of a batch). The decoding options are ``consensus``
(k, 0 = off) and ``consensus_weight`` (:mod:`captioning.decoding.options`).
"""
from __future__ import annotations

import weakref

import numpy as np

from captioning.models.stepper import features_for

_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # index -> what its sources made from it


class ConsensusSource:
    """The neighbours' captions a consensus ranking compares with: a retrieval index and the encoder it indexes
    (``key``: whose rows of :class:`~captioning.models.stepper.MultiFeatures` it reads)."""

    def __init__(self, index, key: str | None = None):
        self.index, self.key = index, key
        # Made on first use (loading a bundle stays fast), once per index: every source reading the same index
        # shares them (the app's quick first stage and then the whole ensemble; captioning.service.warm_load).
        self._made = _MADE.setdefault(index, {})

    @property
    def captions(self) -> list[list[list[str]]]:
        """Per training photo, its tokenised captions."""
        if "captions" not in self._made:
            from captioning.data.text import tokenize

            self._made["captions"] = [[tokenize(c) for c in caps] for caps in self.index.captions]
        return self._made["captions"]

    @property
    def cider(self):
        """CIDEr-D with the index's captions as the corpus of document frequencies (one document per photo)."""
        if "cider" not in self._made:
            from captioning.evaluation.metrics import CiderD

            self._made["cider"] = CiderD(self.captions)
        return self._made["cider"]

    def neighbour_captions(self, features, k: int) -> list[list[list[str]]]:
        """Per photo: the tokenised captions of its ``k`` nearest training photos (nearest first)."""
        own = features_for(features, self.key)
        _, rows = self.index.search(np.asarray(own, np.float32), k)                 # (Q, k)
        return [[c for r in photo for c in self.captions[r]] for photo in rows]

    def scores(self, candidates: list[list[str]], neighbours: list[list[str]]) -> list[float]:
        """Mean CIDEr-D of each candidate (words) against the neighbours' captions."""
        return [self.cider.score(words, neighbours) if neighbours else 0.0 for words in candidates]

    def rerank(self, features, nbest: list[list], config) -> list[list]:
        """Each photo's n-best list (every beam's caption) re-sorted by consensus + weight * beam score, cut to
        ``config.num_return_sequences``. Each caption gets a ``consensus`` attribute (its mean CIDEr-D)."""
        neighbours = self.neighbour_captions(features, config.consensus)
        out = []
        for captions, refs in zip(nbest, neighbours):
            scores = self.scores([c.words for c in captions], refs)
            for caption, value in zip(captions, scores):
                caption.consensus = value
            order = sorted(range(len(captions)),
                           key=lambda i: -(scores[i] + config.consensus_weight * captions[i].score))
            out.append([captions[i] for i in order][: config.num_return_sequences])
        return out
