"""The memory at caption time, without training: retrieve each photo's remembered captions and let them change
the caption.

:class:`CaptionMemory` holds the datastore (the bundle's training photos + the user's photos) and is handed to
the batch runner (``caption_stream(..., memory=...)``); for every photo it returns the hits used (``memory_hits``:
image, caption, similarity, source) and the caption's copied words, and the n-best list it changed:

* a retrieval-augmented bundle (helper ``rag``'s decoder: a step decoder with a ``memory``) reads this store:
  a shallow copy of its step decoder (the shared Captioner is never changed) gets the store as its memory, so the
  decoder attends over the user-first hits and can copy their words; its captions name the hits they read
  (``memory_hits``) and the words only those hold (``copied_words``);
* any other bundle decodes as usual and the n-best list is reranked by :func:`consensus_rerank` with the USER
  hits that clear the store's floor (:data:`captioning.service.memory.store.USER_FIRST_RULE`): a photo with no
  such hit keeps the model's caption, so a memory of boats never touches a caption of a dog.

RERANK_RULE (the documented hook until rag's consensus reranker is on main): each candidate scores its mean log-
probability per token + :data:`CONSENSUS_WEIGHT` x its consensus with the remembered captions (Devlin et al. 2015:
the similarity-weighted mean, over those hits, of the unigram and bigram F1 between the candidate and the hit's
caption); the best score becomes the caption. Its copied words are its content words (not in
:data:`FUNCTION_WORDS`) that occur in a remembered caption used.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from captioning.data.text import tokenize
from captioning.service.memory.store import Datastore, Hit, K, MemoryEntry

CONSENSUS_WEIGHT = 1.0
RERANK_RULE = ("candidate score = mean log p per token + 1.0 x similarity-weighted mean unigram/bigram F1 with "
               "the remembered captions of user photos above the floor; no such photo: the model's caption")
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and with is are its his her their by for from into onto while as up down over "
    "under near next one two some other another there this that".split())


@dataclass
class MemoryUse:
    """What the memory did for one photo: the hits used (best first; with the rerank hook, the user hits above
    the floor: none when the memory holds no photo like this one) and the caption's copied words."""

    hits: list[Hit] = field(default_factory=list)
    copied_words: list[str] = field(default_factory=list)
    reranked: bool = False           # the rerank hook chose another candidate than the model's best

    def to_json(self) -> dict:
        return {"memory_hits": [h.to_json() for h in self.hits], "copied_words": list(self.copied_words)}


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _f1(a: Sequence[str], b: Sequence[str], n: int) -> float:
    ca, cb = _ngrams(a, n), _ngrams(b, n)
    common = sum((ca & cb).values())
    if not common:
        return 0.0
    p, r = common / sum(ca.values()), common / sum(cb.values())
    return 2 * p * r / (p + r)


def consensus(words: Sequence[str], hits: Sequence[Hit]) -> float:
    """Similarity-weighted mean over ``hits`` of the mean unigram/bigram F1 of ``words`` with the hit's caption."""
    weights = [max(h.similarity, 0.0) for h in hits]
    if not hits or sum(weights) <= 0:
        return 0.0
    total = sum(w * (_f1(words, tokenize(h.entry.caption), 1) + _f1(words, tokenize(h.entry.caption), 2)) / 2
                for w, h in zip(weights, hits))
    return total / sum(weights)


def copied_words(words: Sequence[str], hits: Sequence[Hit]) -> list[str]:
    """The content words of ``words`` found in the captions of ``hits`` (each once, in caption order)."""
    remembered = {w for h in hits for w in tokenize(h.entry.caption)}
    return list(dict.fromkeys(w for w in words if w in remembered and w not in FUNCTION_WORDS))


def consensus_rerank(nbest: list, hits: Sequence[Hit]) -> list:
    """``nbest`` (Captions) reordered by :data:`RERANK_RULE`; the same list when ``hits`` is empty."""
    if not hits or len(nbest) < 2:
        return list(nbest)
    scored = [(c.normalized_log_prob + CONSENSUS_WEIGHT * consensus(c.words, hits), -i, c)
              for i, c in enumerate(nbest)]
    return [c for *_, c in sorted(scored, key=lambda s: (s[0], s[1]), reverse=True)]


class CaptionMemory:
    """The datastore a run captions with, ``k`` hits per photo (user-first), and how they change captions."""

    def __init__(self, store: Datastore, k: int = K, n_candidates: int = 5):
        self.store, self.k, self.n_candidates = store, int(k), int(n_candidates)

    def user_hits(self, hits: Sequence[Hit]) -> list[Hit]:
        """The hits of the user's photos that clear the floor (what the rerank hook listens to)."""
        return [h for h in hits if h.entry.source == "user" and h.similarity >= self.store.user_floor]

    def decode(self, captioner, features, config) -> tuple[list[list], list[MemoryUse]]:
        """n-best lists and one MemoryUse per photo of ``features`` (what captioner.encode returned)."""
        steps = getattr(captioner, "steps", None)
        if hasattr(steps, "memory") and hasattr(steps, "lookup"):         # rag's retrieval-augmented decoder
            return self._read_by_decoder(captioner, steps, features, config)
        query = features.of(captioner.spec.key) if hasattr(features, "of") else features   # the store's encoder
        hits = self.store.search(query, self.k)
        wide = config
        if config.kind == "beam" and config.beam_width > 1:               # the candidates the hook reranks
            wide = replace(config, num_return_sequences=min(config.beam_width,
                                                            max(config.num_return_sequences, self.n_candidates)))
        decoded = captioner.decode(features, wide)
        out, uses = [], []
        for nbest, photo_hits in zip(decoded, hits):
            mine = self.user_hits(photo_hits)
            ranked = consensus_rerank(nbest, mine)
            best = ranked[0] if ranked else None
            uses.append(MemoryUse(mine, copied_words(best.words, mine) if best and mine else [],
                                  bool(nbest) and best is not nbest[0]))
            out.append(ranked[: config.num_return_sequences])
        return out, uses

    def _read_by_decoder(self, captioner, steps, features, config):
        import copy

        from captioning.decoding.search import decode

        own = copy.copy(steps)                       # shares the model and its compiled functions
        own.memory = _StoreMemory(self.store)
        decoded = decode(own, features, captioner.vocab, config)
        uses = []
        for nbest in decoded:
            best = nbest[0] if nbest else None
            hits = [Hit(MemoryEntry(h["image"], h["caption"], h["source"]), float(h["similarity"]))
                    for h in getattr(best, "memory_hits", None) or []]
            uses.append(MemoryUse(hits, list(getattr(best, "copied_words", None) or [])))
        return decoded, uses


class _StoreMemory:
    """A Datastore as the retrieval decoder's memory: ``retrieve(features, k)`` -> per photo (caption, image,
    similarity, source), user-first."""

    def __init__(self, store: Datastore):
        self.store = store

    def retrieve(self, features, k: int) -> list[list[tuple]]:
        return [[(h.entry.caption, h.entry.image, float(h.similarity), h.entry.source) for h in hits]
                for hits in self.store.search(features, k)]
