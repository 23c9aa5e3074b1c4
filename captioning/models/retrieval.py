"""The retrieval-augmented decoder (decoder kind ``retrieval``): a merge decoder that also reads the captions of
the photo's nearest datastore photos and can copy their words (a pointer-generator, See et al. 2017; retrieval
augmentation as in Ramos et al. 2023, SmallCap, and Sarto et al. 2022).

    image: pooled features, L2-normalised x FEATURE_SCALE -> dropout -> Dense(U, relu)        (B, U)
    memory: the retrieved captions' token ids (B, M) (k captions x L tokens, 0-padded; words outside the
            vocabulary as <unk>) -> the shared word embedding + a position embedding -> Dense(U)   (B, M, U)
    words -> embedding -> LSTM(U)                                                              (B, T, U)
    at every step: scaled dot-product attention of the LSTM output over the memory -> context (B, T, U)
    vocabulary distribution: Dense(U, relu)(h + image + W context) -> Dense(V) -> softmax       (B, T, V)
    copy gate p_gen = sigmoid(Dense(1)([h, context, word(, attention on <unk> memory words)])) (B, T, 1)
    P(w) = p_gen * P_vocab(w) + (1 - p_gen) * sum of the attention on the memory positions holding w

Words of the retrieved captions outside the vocabulary get extended ids >= V, per photo
(:mod:`captioning.models.retrieval_steps` turns ids back into words), so the decoder can write a word it never saw in
training when a remembered caption holds it. The model itself returns the three parts (log P_vocab, p_gen, the
attention over memory positions); the mixing happens in the training loss (:func:`copy_loss`) and in the step
wrapper, which knows each photo's extended ids.

The layer names of the merge decoder (embedding, lstm, image_proj, merge_proj, classifier) are kept, so a trained
merge decoder of the same encoder and vocabulary warm-starts it (:func:`warm_start`).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from captioning.models.decoders import _Decoder

FEATURE_SCALE = 30.0     # pooled Xception features have an L2 norm of ~30: normalised rows keep their scale


@keras.saving.register_keras_serializable(package="captioning")
class RetrievalDecoder(_Decoder):
    """See the module docstring. ``memory_length`` M = ``neighbours`` captions x ``caption_tokens`` tokens."""

    kind = "retrieval"
    uses_spatial = False
    uses_memory = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, units: int = 256,
                 dropout: float = 0.5, neighbours: int = 5, caption_tokens: int = 20, copy: bool = True,
                 unk_gate: bool = False, prev_keys: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim = int(vocab_size), int(feature_dim)
        self.embed_dim, self.units, self.dropout_rate = int(embed_dim), int(units), float(dropout)
        self.neighbours, self.caption_tokens, self.copy = int(neighbours), int(caption_tokens), bool(copy)
        self.unk_gate = bool(unk_gate)    # the gate also reads the attention on the memory's unknown words
        self.prev_keys = bool(prev_keys)  # the attention also matches the word just read with each memory slot's
        #                                   previous word (copy what followed the same word in a remembered caption)
        self.memory_length = self.neighbours * self.caption_tokens
        self.image_dropout = layers.Dropout(dropout, name="image_dropout")
        self.image_proj = layers.Dense(units, activation="relu", name="image_proj")
        self.embedding = layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.word_dropout = layers.Dropout(dropout, name="word_dropout")
        self.lstm = layers.LSTM(units, return_sequences=True, name="lstm")
        self.position = layers.Embedding(self.memory_length, embed_dim, name="memory_position")
        self.memory_proj = layers.Dense(units, name="memory_proj")
        self.query = layers.Dense(units, name="memory_query")
        self.context_proj = layers.Dense(units, name="context_proj")
        self.merge_proj = layers.Dense(units, activation="relu", name="merge_proj")
        self.classifier = layers.Dense(vocab_size, name="classifier")
        self.gate = layers.Dense(1, name="copy_gate")
        if self.prev_keys:
            self.prev_proj = layers.Dense(units, name="memory_prev_proj")
            self.word_query = layers.Dense(units, name="memory_word_query")

    def build(self, input_shape=None):
        u, e = self.units, self.embed_dim
        self.image_proj.build((None, self.feature_dim))
        self.embedding.build((None, None))
        self.lstm.build((None, None, e))
        self.position.build((None, None))
        self.memory_proj.build((None, None, e))
        self.query.build((None, None, u))
        self.context_proj.build((None, None, u))
        self.merge_proj.build((None, u))
        self.classifier.build((None, u))
        self.gate.build((None, 2 * u + e + int(self.unk_gate)))
        if self.prev_keys:
            self.prev_proj.build((None, None, e))
            self.word_query.build((None, None, e))
        self.built = True

    # --- shared pieces -------------------------------------------------------------------------------------
    def _image(self, features, training=False):
        x = ops.cast(features, "float32")
        x = x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-12) * FEATURE_SCALE
        return self.image_proj(self.image_dropout(x, training=training))                # (B, U)

    def _memory(self, memory):
        """Memory token ids (B, M) -> keys/values (B, M, U), a 0/1 mask (B, M), 0/1 unknown words (B, M) and the
        keys of each slot's previous word (B, M, U; (B, 1, 1) zeros without ``prev_keys``)."""
        memory = ops.cast(memory, "int32")
        positions = ops.arange(self.memory_length)
        x = self.embedding(memory) + ops.expand_dims(self.position(positions), 0)     # (B, M, E)
        if self.prev_keys:      # caption j's slot t reads slot t-1 of the same caption (<start> before the first)
            per = ops.reshape(memory, (-1, self.neighbours, self.caption_tokens))
            start = ops.ones_like(per[:, :, :1]) * 2
            prev = ops.reshape(ops.concatenate([start, per[:, :, :-1]], axis=-1), (-1, self.memory_length))
            prev = self.prev_proj(self.embedding(prev))
        else:
            prev = ops.zeros_like(ops.cast(memory[:, :1], "float32"))[..., None]
        return (self.memory_proj(x), ops.cast(ops.not_equal(memory, 0), "float32"),
                ops.cast(ops.equal(memory, 1), "float32"), prev)

    def _read(self, h, keys, mask, words=None, prev=None):
        """Attention of outputs h (B, T, U) (and with ``prev_keys``, the words read (B, T, E)) over the memory ->
        weights (B, T, M) and context (B, T, U)."""
        scores = ops.einsum("btu,bmu->btm", self.query(h), keys) / np.sqrt(self.units)
        if self.prev_keys:
            scores = scores + ops.einsum("btu,bmu->btm", self.word_query(words), prev) / np.sqrt(self.units)
        scores = scores + (1.0 - ops.expand_dims(mask, 1)) * -1e9
        alpha = ops.softmax(scores, axis=-1)
        alpha = alpha * ops.expand_dims(mask, 1)                                        # an empty memory: zeros
        alpha = alpha / ops.maximum(ops.sum(alpha, axis=-1, keepdims=True), 1e-9)
        return alpha, ops.einsum("btm,bmu->btu", alpha, keys)

    def _heads(self, h, image, context, words, alpha, unk):
        hidden = self.merge_proj(h + ops.expand_dims(image, 1) + self.context_proj(context))   # (B, T, U)
        log_vocab = ops.log_softmax(self.classifier(hidden), axis=-1)                   # (B, T, V)
        if self.copy:
            parts = [h, context, words]
            if self.unk_gate:       # how much of the attention points at words the vocabulary lacks (B, T, 1)
                parts.append(ops.sum(alpha * ops.expand_dims(unk, 1), axis=-1, keepdims=True))
            p_gen = ops.sigmoid(self.gate(ops.concatenate(parts, axis=-1)))               # (B, T, 1)
        else:
            p_gen = ops.ones_like(h[..., :1])
        return log_vocab, p_gen

    def call(self, inputs, training=False):
        """(features (B, D), memory ids (B, M), tokens (B, T)) -> (log P_vocab (B, T, V), p_gen (B, T, 1),
        attention over the memory (B, T, M))."""
        features, memory, tokens = inputs
        image = self._image(features, training)
        keys, mask, unk, prev = self._memory(memory)
        words = self.word_dropout(self.embedding(ops.minimum(tokens, self.vocab_size - 1)), training=training)
        h = self.lstm(words, mask=ops.not_equal(tokens, 0), training=training)          # (B, T, U)
        alpha, context = self._read(h, keys, mask, words, prev)
        log_vocab, p_gen = self._heads(h, image, context, words, alpha, unk)
        return log_vocab, p_gen, alpha

    # --- step API (numpy wrapper: captioning.models.retrieval_steps) --------------------------------------------------
    def start(self, features, memory):
        """-> context (image (B, U), keys (B, M, U), mask (B, M), unknown words (B, M)) and zero LSTM state
        [h, c]."""
        image = self._image(features)
        keys, mask, unk, prev = self._memory(memory)
        zeros = ops.zeros((ops.shape(features)[0], self.units))
        return (image, keys, mask, unk, prev), [zeros, zeros]

    def step(self, image, keys, mask, unk, prev, tokens, state):
        """Token ids (B,) (extended ids read as <unk>) -> log P_vocab (B, V), p_gen (B, 1), attention (B, M),
        new state."""
        tokens = ops.where(ops.greater_equal(tokens, self.vocab_size), 1, tokens)        # extended id -> <unk>
        words = self.embedding(tokens)                                                   # (B, E)
        h, state = self.lstm.cell(words, state)                                          # (B, U)
        alpha, context = self._read(ops.expand_dims(h, 1), keys, mask, ops.expand_dims(words, 1), prev)
        log_vocab, p_gen = self._heads(ops.expand_dims(h, 1), image, context, ops.expand_dims(words, 1), alpha, unk)
        return log_vocab[:, 0], p_gen[:, 0], alpha[:, 0], state

    def get_config(self):
        return {"name": self.name, "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "embed_dim": self.embed_dim, "units": self.units, "dropout": self.dropout_rate,
                "neighbours": self.neighbours, "caption_tokens": self.caption_tokens, "copy": self.copy,
                "unk_gate": self.unk_gate, "prev_keys": self.prev_keys}


def mixed_probability(log_vocab, p_gen, alpha, memory_ext, targets, vocab_size: int, hidden=None):
    """P(target) under the pointer-generator mixture, teacher-forced: log P_vocab (B, T, V), p_gen (B, T, 1),
    alpha (B, T, M), memory_ext (B, M) extended ids of the memory, targets (B, T) extended ids -> (B, T).
    ``hidden`` (B, H): per example, vocabulary ids the generator may not emit (0 = none; copy-only targets):
    P_vocab is renormalised over the other words."""
    targets, memory_ext = ops.cast(targets, "int32"), ops.cast(memory_ext, "int32")
    in_vocab = ops.less(targets, vocab_size)
    safe = ops.where(in_vocab, targets, 1)
    vocab_prob = ops.exp(ops.take_along_axis(log_vocab, ops.expand_dims(safe, -1), axis=-1)[..., 0])
    if hidden is not None:
        hidden = ops.cast(hidden, "int32")
        removed = ops.exp(ops.take_along_axis(log_vocab, ops.expand_dims(hidden, 1) * ops.ones_like(
            ops.expand_dims(targets, -1)), axis=-1))                                    # (B, T, H)
        removed = ops.sum(removed * ops.cast(ops.expand_dims(ops.greater(hidden, 0), 1), "float32"), axis=-1)
        vocab_prob = vocab_prob / ops.maximum(1.0 - removed, 1e-6)
    vocab_prob = ops.where(in_vocab, vocab_prob, 0.0)                                   # (B, T)
    same = ops.cast(ops.equal(ops.expand_dims(memory_ext, 1), ops.expand_dims(targets, -1)), "float32")
    copy_prob = ops.sum(alpha * same, axis=-1)                                          # (B, T)
    gate = p_gen[..., 0]
    return gate * vocab_prob + (1.0 - gate) * copy_prob


def copy_loss(model, batch, training=True):
    """Masked mean negative log-likelihood of a batch ``(features, memory, memory_ext, inputs, targets)``, or
    with a sixth array, each example's hidden vocabulary ids (B, H) (see :func:`mixed_probability`)."""
    features, memory, memory_ext, inputs, targets = batch[:5]
    hidden = batch[5] if len(batch) > 5 else None
    log_vocab, p_gen, alpha = model((features, memory, inputs), training=training)
    prob = mixed_probability(log_vocab, p_gen, alpha, ops.cast(memory_ext, "int32"), ops.cast(targets, "int32"),
                             model.vocab_size, hidden)
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    return -ops.sum(ops.log(prob + 1e-9) * mask) / ops.maximum(ops.sum(mask), 1.0)


def warm_start(model: RetrievalDecoder, merge, gate_bias: float | None = None) -> list[str]:
    """Copy the weights of a merge decoder's layers of the same shapes (embedding, LSTM, projections, classifier);
    returns the names copied. With ``gate_bias``, the memory's context enters the merge at zero (the new decoder
    starts as the merge decoder) and the copy gate starts at p_gen = sigmoid(gate_bias) for every input."""
    copied = []
    for name in ("embedding", "lstm", "image_proj", "merge_proj", "classifier"):
        source, target = merge.get_layer(name), model.get_layer(name)
        weights = source.get_weights()
        if [w.shape for w in weights] == [w.shape for w in target.get_weights()]:
            target.set_weights(weights)
            copied.append(name)
    if gate_bias is not None:
        model.context_proj.set_weights([np.zeros_like(w) for w in model.context_proj.get_weights()])
        kernel, _ = model.gate.get_weights()
        model.gate.set_weights([np.zeros_like(kernel), np.full((1,), gate_bias, np.float32)])
    return copied
