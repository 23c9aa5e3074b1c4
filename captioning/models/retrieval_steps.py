"""The retrieval decoder (:mod:`captioning.models.retrieval`) behind the step protocol every decoding strategy
speaks (:mod:`captioning.models.stepper`), with its memory: for each photo, the captions of its nearest datastore
photos.
Extended vocabulary: the words of the retrieved captions that the vocabulary lacks get ids from ``len(vocab)``
on. :meth:`RetrievalStepDecoder.prepare` (which :func:`captioning.decoding.search.decode` calls for each batch of
photos) retrieves the batch's captions and returns the vocabulary extended by the batch's out-of-vocabulary words, so
the strategies, their constraints (banned words, repeats) and ``Vocabulary.decode`` work unchanged on extended ids;
each photo's copy distribution only ever reaches the words of its own retrieved captions.

A memory is anything with ``retrieve(pooled features (B, D), k) -> per photo, a list of (caption text, image,
similarity, source)``: :class:`IndexMemory` reads a bundle's retrieval index (the training photos, all the
captions it keeps), and helper ``mem``'s Datastore plugs in through :class:`DatastoreMemory`.
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import Vocabulary, tokenize


def pooled(features) -> np.ndarray:
    """(B, D) pooled features, float32 (spatial maps (B, P, D) averaged over P, as the encoder pools)."""
    x = np.asarray(features, np.float32)
    return x.mean(axis=1) if x.ndim == 3 else x


def normalise(features) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


class IndexMemory:
    """The training photos of a :class:`~captioning.evaluation.trust.RetrievalIndex`: photo ``i``'s retrieved caption is
    its ``caption``-th (the first by default)."""

    def __init__(self, index, caption: int = 0):
        self.index, self.caption = index, int(caption)

    def retrieve(self, features: np.ndarray, k: int) -> list[list[tuple]]:
        sims, rows = self.index.search(features, k)
        return [[(self.index.captions[r][min(self.caption, len(self.index.captions[r]) - 1)], self.index.names[r],
                  float(s), "training") for s, r in zip(srow, rrow)] for srow, rrow in zip(sims, rows)]


class DatastoreMemory:
    """Helper ``mem``'s :class:`captioning.service.memory.store.Datastore` (one hit per caption, user entries first)."""

    def __init__(self, datastore):
        self.datastore = datastore

    def retrieve(self, features: np.ndarray, k: int) -> list[list[tuple]]:
        return [[(h.entry.caption, h.entry.image, float(h.similarity), h.entry.source) for h in hits]
                for hits in self.datastore.search(features, k)]


def encode_memory(captions: list[list[list[str]]], vocab: Vocabulary, neighbours: int, caption_tokens: int,
                  extra: dict[str, int] | None = None, hidden=frozenset()):
    """Per photo, its retrieved captions (tokenised) -> memory ids (B, M) for the embedding (out-of-vocabulary
    words as <unk>), their extended ids (B, M) and the extended words (word -> id >= len(vocab), grown in place
    when given). M = neighbours x caption_tokens; caption j fills slots [j*L, (j+1)*L). Words in ``hidden`` are
    treated as outside the vocabulary (copy-only training targets, :mod:`captioning.training.copy_targets`)."""
    extra = {} if extra is None else extra
    b, m = len(captions), neighbours * caption_tokens
    ids, ext = np.zeros((b, m), np.int32), np.zeros((b, m), np.int32)
    for i, photo in enumerate(captions):
        for j, words in enumerate(photo[:neighbours]):
            for t, word in enumerate(words[:caption_tokens]):
                at = j * caption_tokens + t
                known = vocab.stoi.get(word)
                if known is not None and known >= 4 and word not in hidden:
                    ids[i, at] = ext[i, at] = known
                else:
                    ids[i, at] = vocab.unk_id
                    ext[i, at] = extra.setdefault(word, len(vocab) + len(extra))
    return ids, ext, extra


def extended_vocabulary(vocab: Vocabulary, extra: dict[str, int]) -> Vocabulary:
    """``vocab`` with the words of ``extra`` appended at their ids (ids of ``vocab`` unchanged)."""
    if not extra:
        return vocab
    words = [w for w, _ in sorted(extra.items(), key=lambda kv: kv[1])]
    return Vocabulary(vocab.itos[4:] + words, vocab.counts, vocab.min_count)


class RetrievalStepDecoder:
    """Numpy ``start``/``step`` over a :class:`~captioning.models.retrieval.RetrievalDecoder` and a memory.

    ``neighbours``: captions read per photo (at most the model's slots; default: all of them). ``copy=False``
    forces the copy gate to 1 (the vocabulary distribution alone: the ablation of the copy mechanism).
    ``new_word_boost`` b (the rule that lets the user's new words win, chosen on dev): at each step the gate's
    logit is lowered by b x the attention on the words of the user's remembered captions (source ``user``) that
    the vocabulary lacks, p_gen' = sigmoid(logit(p_gen) - b * a_new); captions read from the training photos, and
    every word the vocabulary holds, are never boosted."""

    uses_spatial = False

    def __init__(self, model, memory, vocab: Vocabulary, neighbours: int | None = None, copy: bool = True,
                 new_word_boost: float = 0.0):
        import tensorflow as tf

        self.model, self.memory, self.vocab = model, memory, vocab
        self.neighbours = min(int(neighbours or model.neighbours), model.neighbours)
        self.copy = bool(copy)
        self.new_word_boost = float(new_word_boost)
        m = model.memory_length
        self._start = tf.function(model.start, input_signature=[tf.TensorSpec([None, model.feature_dim], tf.float32),
                                                                tf.TensorSpec([None, m], tf.int32)])
        self._step = tf.function(model.step, reduce_retracing=True)
        self._pending = None              # (features object id, ids, ext, extra) of the batch prepare() saw
        self.last_hits: list[list[tuple]] = []

    def lookup(self, features):
        """Per photo: the retrieved (caption, image, similarity, source) hits and their tokenised captions."""
        hits = self.memory.retrieve(normalise(pooled(features)), self.neighbours)
        return hits, [[tokenize(h[0]) for h in photo] for photo in hits]

    def prepare(self, features, vocab: Vocabulary) -> Vocabulary:
        """Retrieve the captions of a batch of photos; the vocabulary extended by their new words."""
        hits, captions = self.lookup(features)
        ids, ext, extra = encode_memory(captions, vocab, self.model.neighbours, self.model.caption_tokens)
        length = self.model.caption_tokens
        user = np.zeros(ext.shape, bool)
        for i, photo in enumerate(hits):
            for j, hit in enumerate(photo[: self.model.neighbours]):
                user[i, j * length:(j + 1) * length] = hit[3] == "user"
        self._pending = (id(features), ids, np.stack([ext, user & (ext >= self.model.vocab_size)], axis=-1))
        self.last_hits = hits
        return extended_vocabulary(vocab, extra)

    def prepared(self) -> tuple[np.ndarray, np.ndarray]:
        """The memory of the batch :meth:`prepare` saw: ids for the embedding (B, M) and extended ids (B, M), the
        ids its decoded words have in the vocabulary :meth:`prepare` returned (SCST scores them teacher-forced)."""
        if self._pending is None:
            raise RuntimeError("prepared() needs a batch: call prepare(features, vocab) first")
        return self._pending[1], self._pending[2][..., 0]

    def annotate(self, nbest: list[list]) -> None:
        """Give each caption of the batch :meth:`prepare` saw its ``memory_hits`` (the retrieved captions:
        image, caption, similarity, source) and ``copied_words`` (its words that only a retrieved caption holds:
        extended ids, which the vocabulary alone could not write)."""
        for captions, hits in zip(nbest, self.last_hits):
            read = [{"image": h[1], "caption": h[0], "similarity": round(h[2], 4), "source": h[3]} for h in hits]
            for caption in captions:
                caption.memory_hits = read
                caption.copied_words = [w for w in caption.words if w not in self.vocab.stoi]

    def start(self, features, repeat: int = 1):
        if self._pending is not None and self._pending[0] == id(features):
            ids, ext = self._pending[1:]                 # ext: (B, M, 2) extended ids, boosted slots
        else:               # no prepare (e.g. SCST's sampler): copies reach the in-vocabulary words only
            self._pending = None
            _, captions = self.lookup(features)
            ids, ext, _ = encode_memory(captions, self.vocab, self.model.neighbours, self.model.caption_tokens)
            ext = np.where(ext >= self.model.vocab_size, 0, ext)
            ext = np.stack([ext, np.zeros_like(ext)], axis=-1)
        features = pooled(features)
        tensors, state = self._start(np.asarray(features, np.float32), ids)
        context = [*tensors, ext]             # the model's tensors, then the extended ids and boosted slots (numpy)
        return self.repeat(context, repeat), [np.repeat(s.numpy(), repeat, axis=0) for s in state]

    def select(self, context, rows):
        import tensorflow as tf

        rows = np.asarray(rows, np.int32)
        return [tf.gather(c, rows) for c in context[:-1]] + [context[-1][rows]]

    def repeat(self, context, times: int):
        import tensorflow as tf

        if times == 1:
            return context
        return [tf.repeat(c, times, axis=0) for c in context[:-1]] + [np.repeat(context[-1], times, axis=0)]

    def step(self, context, tokens, state):
        *tensors, ext_boost = context
        ext, boosted = ext_boost[..., 0], ext_boost[..., 1]
        log_vocab, p_gen, alpha, state = self._step(*tensors, np.asarray(tokens, np.int32), state)
        probs = np.exp(log_vocab.numpy().astype(np.float64))                       # (R, V)
        gate = p_gen.numpy().astype(np.float64) if self.copy else np.ones((len(probs), 1))
        if self.copy and self.new_word_boost:
            new = (alpha.numpy() * boosted).sum(axis=1, keepdims=True)                              # (R, 1)
            logit = np.log(np.clip(gate, 1e-12, 1.0)) - np.log(np.clip(1.0 - gate, 1e-12, 1.0))
            gate = 1.0 / (1.0 + np.exp(-(logit - self.new_word_boost * new)))
        width = max(probs.shape[1], int(ext.max()) + 1 if ext.size else 0, self.width)
        out = np.zeros((len(probs), width))
        out[:, :probs.shape[1]] = gate * probs
        rows = np.repeat(np.arange(len(probs)), ext.shape[1])
        np.add.at(out, (rows, ext.ravel()), ((1.0 - gate) * alpha.numpy()).ravel())
        out[:, 0] = 0.0                                                            # padding slots carry no mass
        self.last_gate = gate[:, 0]
        with np.errstate(divide="ignore"):
            return np.log(out).astype(np.float32), [s.numpy() for s in state], None

    @property
    def width(self) -> int:
        """The extended vocabulary's size for the batch being decoded."""
        if self._pending is None:
            return self.model.vocab_size
        return max(self.model.vocab_size, int(self._pending[2].max()) + 1)

