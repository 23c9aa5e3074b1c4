"""Self-critical sequence training (:mod:`captioning.training.scst`) of the retrieval decoder
(:mod:`captioning.models.retrieval`): captions are sampled through the memory and the copy gate, exactly as they are
decoded, and each sampled caption's log-probability is the pointer-generator mixture's, teacher-forced
(:func:`~captioning.models.retrieval.mixed_probability`), so a copied word, even one outside the vocabulary, is
rewarded or penalised like any other.

What a training photo reads is what a photo reads at caption time (the first caption of each of its nearest
datastore photos, as :class:`~captioning.models.retrieval_steps.IndexMemory` gives them) except itself: the
datastore holds the training photos, and a photo that read its own caption would be rewarded for copying it.
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import sample_search
from captioning.models.retrieval_steps import IndexMemory, RetrievalStepDecoder
from captioning.training.scst import accumulate, teacher_inputs


class LeaveOneOutMemory:
    """The datastore's photos (a :class:`~captioning.evaluation.trust.RetrievalIndex`) without the photo being
    captioned. ``names``: the training photos' file names, in the order SCST indexes them; :meth:`use` says which
    photos the next batch holds."""

    def __init__(self, index, names):
        self.inner, self.names, self.exclude = IndexMemory(index), list(names), []

    def use(self, photos) -> None:
        self.exclude = [self.names[int(i)] for i in photos]

    def retrieve(self, features: np.ndarray, k: int) -> list[list[tuple]]:
        if len(self.exclude) != len(features):
            raise ValueError(f"{len(features)} photos but {len(self.exclude)} excluded names: call use() first")
        hits = self.inner.retrieve(features, k + 1)
        return [[h for h in photo if h[1] != name][:k] for photo, name in zip(hits, self.exclude)]


class RetrievalPolicy:
    """SCST's sampler and update for a retrieval decoder (the interface of
    :class:`captioning.training.scst.PlainPolicy`). The REINFORCE loss is ``- sum a * log P(token) / tokens`` with
    P the copy mixture over the sampled captions' extended ids; its gradient is summed over chunks of
    ``max_rows`` rows."""

    def __init__(self, decoder, vocab: Vocabulary, seed: int, optimizer, memory: LeaveOneOutMemory,
                 max_rows: int = 160):
        self.decoder, self.vocab, self.memory = decoder, vocab, memory
        self.steps = RetrievalStepDecoder(decoder, memory, vocab)
        self.seed, self.calls, self.optimizer, self.max_rows = int(seed), 0, optimizer, int(max_rows)
        self.batch = None
        self._chunk_gradients = _chunk_gradients(decoder)

    @classmethod
    def over(cls, memory: LeaveOneOutMemory):
        """The ``policy`` argument of :func:`captioning.training.scst.finetune` for photos reading ``memory``."""
        return lambda decoder, vocab, seed, optimizer: cls(decoder, vocab, seed, optimizer, memory)

    def sample(self, features: np.ndarray, photos: np.ndarray, samples: int, max_length: int) -> list[list[str]]:
        """``samples`` captions per photo (rows grouped per photo), drawn at temperature 1 from the copy mixture;
        ``photos``: their rows in the training set (each reads its neighbours, never itself)."""
        features = np.asarray(features, np.float32)
        self.memory.use(photos)
        words = self.steps.prepare(features, self.vocab)          # the vocabulary and the batch's copyable words
        memory_ids, memory_ext = self.steps.prepared()
        config = DecodeConfig(strategy="sample", num_return_sequences=samples, max_length=max_length, min_length=0)
        nbest = sample_search(self.steps, features, words, config, seed=(self.seed, self.calls))
        self.calls += 1
        captions = [c for caps in nbest for c in caps]
        ids = np.zeros((len(captions), max_length), np.int32)
        for row, caption in enumerate(captions):
            seq = [words.stoi[w] for w in caption.words] + ([self.vocab.end_id] if caption.finished else [])
            ids[row, :len(seq)] = seq
        self.batch = (np.repeat(memory_ids, samples, axis=0), np.repeat(memory_ext, samples, axis=0), ids, samples)
        return [list(c.words) for c in captions]

    def update(self, features: np.ndarray, advantages: np.ndarray) -> float:
        """One REINFORCE step on the captions of the last :meth:`sample`."""
        memory_ids, memory_ext, ids, samples = self.batch
        inputs, targets = teacher_inputs(ids, self.vocab.start_id)
        inputs = np.where(inputs >= self.decoder.vocab_size, self.vocab.unk_id, inputs)   # copied words: <unk>
        feats = np.repeat(np.asarray(features, np.float32), samples, axis=0)
        return accumulate(self._chunk_gradients, self.optimizer, self.decoder.trainable_variables,
                          (feats, memory_ids, memory_ext, inputs, targets, np.asarray(advantages, np.float32)),
                          self.max_rows)


def _chunk_gradients(decoder):
    import tensorflow as tf
    from keras import ops

    from captioning.models.retrieval import mixed_probability

    variables = decoder.trainable_variables

    @tf.function(reduce_retracing=True)
    def chunk_gradients(features, memory, memory_ext, inputs, targets, advantages, n_tokens):
        with tf.GradientTape() as tape:
            log_vocab, p_gen, alpha = decoder((features, memory, inputs), training=False)      # no dropout
            prob = mixed_probability(log_vocab, p_gen, alpha, memory_ext, targets, decoder.vocab_size)   # (N, T)
            mask = ops.cast(ops.not_equal(targets, 0), "float32")
            loss = -ops.sum(ops.log(prob + 1e-9) * mask * ops.expand_dims(advantages, -1)) / n_tokens
        grads = tape.gradient(loss, variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]          # the embedding's sparse gradient, dense

    return chunk_gradients
