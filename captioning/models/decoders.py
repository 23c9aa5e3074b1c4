"""Decoders and their step functions.

Every decoder takes ``(features, tokens)`` for teacher-forced training (all next words of a caption
in one pass) and offers the step API that decoding uses, carrying the recurrent state instead of
re-running the prefix:

    context, state = decoder.start(features)              # once per image
    log_probs, state, extras = decoder.step(context, tokens, state)   # once per word

``extras`` is None for the merge decoder and the attention weights (B, locations) for the attention and
top-down ones.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


class _Decoder(keras.Model):
    """What every decoder shares: output-bias initialisation and config round trip."""

    def init_output_bias(self, word_counts: np.ndarray) -> None:
        """Start the classifier at the unigram distribution (log frequencies) to speed up training."""
        if not self.built:
            self.build()
        probs = (word_counts + 1.0) / (word_counts + 1.0).sum()
        self.classifier.bias.assign(np.log(probs).astype("float32"))

    def init_embeddings(self, matrix: np.ndarray) -> None:
        """Start the word embedding from pretrained vectors (e.g. GloVe); they are fine-tuned in training."""
        if not self.built:
            self.build()
        expected = (self.vocab_size, self.embed_dim)
        if tuple(matrix.shape) != expected:
            raise ValueError(f"embedding matrix has shape {tuple(matrix.shape)}, the decoder needs {expected}")
        self.embedding.embeddings.assign(np.asarray(matrix, np.float32))

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _AttendingDecoder(_Decoder):
    """What the attention and top-down decoders share: soft additive attention over the projected map
    (Bahdanau-style, queried by an LSTM state) and the step API over [projected map, attention keys].

    The layers keep the attribute names and creation order they had in each decoder, so the weights of bundles
    saved before this class existed load unchanged.
    """

    def _attention_layers(self, attention_dim: int) -> None:
        self.att_keys = layers.Dense(attention_dim, name="att_keys")
        self.att_query = layers.Dense(attention_dim, name="att_query")
        self.att_score = layers.Dense(1, name="att_score")

    def _build_attention(self) -> None:
        self.att_keys.build((None, None, self.feature_proj_dim))
        self.att_query.build((None, self.units))
        self.att_score.build((None, None, self.attention_dim))

    def attend(self, feats, keys, query):
        """feats (B, P, F), keys (B, P, A), query (B, U) -> weights alpha (B, P), attended feature (B, F)."""
        energy = self.att_score(ops.tanh(keys + ops.expand_dims(self.att_query(query), 1)))  # (B, P, 1)
        alpha = ops.softmax(ops.squeeze(energy, -1), axis=-1)                               # (B, P)
        return alpha, ops.sum(feats * ops.expand_dims(alpha, -1), axis=1)                   # (B, F)

    # --- step API --------------------------------------------------------------------------------
    def start(self, features):
        """(B, P, D) -> context (B, P, F + A): projected map and attention keys side by side; the initial state."""
        feats, keys, state = self._encode(features)
        return ops.concatenate([feats, keys], axis=-1), state

    def step(self, context, tokens, state):
        feats, keys = context[..., : self.feature_proj_dim], context[..., self.feature_proj_dim:]
        logits, state, alpha = self._attend_and_step(feats, keys, self.embedding(tokens), list(state))
        return ops.log_softmax(logits, axis=-1), state, alpha


@keras.saving.register_keras_serializable(package="captioning")
class MergeDecoder(_Decoder):
    """The "merge" architecture (Tanti et al. 2018; the seed tutorials).

    image features -> dropout -> Dense(units, relu)                       (B, U)
    words -> Embedding -> dropout -> LSTM(units)                          (B, T, U)
    add -> Dense(units, relu) -> Dense(vocab) logits                      (B, T, V)

    Args:
        vocab_size: output classes (incl. the four specials).
        feature_dim: size of the pooled image features.
        embed_dim: word embedding size.
        units: LSTM and projection size.
        dropout: dropout rate on image features and embeddings.
    """

    kind = "merge"
    uses_spatial = False

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, units: int = 256,
                 dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim = int(vocab_size), int(feature_dim)
        self.embed_dim, self.units, self.dropout_rate = int(embed_dim), int(units), float(dropout)
        self.image_dropout = layers.Dropout(dropout, name="image_dropout")
        self.image_proj = layers.Dense(units, activation="relu", name="image_proj")
        self.embedding = layers.Embedding(vocab_size, embed_dim, mask_zero=False, name="embedding")
        self.word_dropout = layers.Dropout(dropout, name="word_dropout")
        self.lstm = layers.LSTM(units, return_sequences=True, name="lstm")
        self.merge_proj = layers.Dense(units, activation="relu", name="merge_proj")
        self.classifier = layers.Dense(vocab_size, name="classifier")

    def build(self, input_shape=None):
        # Shapes are known from the config, so a loaded model can take its weights straight away.
        self.image_proj.build((None, self.feature_dim))
        self.embedding.build((None, None))
        self.lstm.build((None, None, self.embed_dim))
        self.merge_proj.build((None, self.units))
        self.classifier.build((None, self.units))
        self.built = True

    def call(self, inputs, training=False):
        features, tokens = inputs                                              # (B, D), (B, T)
        image = self.image_proj(self.image_dropout(features, training=training))       # (B, U)
        words = self.word_dropout(self.embedding(tokens), training=training)           # (B, T, E)
        mask = ops.not_equal(tokens, 0)                                                 # (B, T)
        seq = self.lstm(words, mask=mask, training=training)                            # (B, T, U)
        hidden = self.merge_proj(seq + ops.expand_dims(image, 1))                       # (B, T, U)
        return self.classifier(hidden)                                                  # (B, T, V)

    # --- step API used by decoding -------------------------------------------------------------
    def start(self, features):
        """(B, D) features -> context (B, U) and zero LSTM state [h, c]."""
        context = self.image_proj(features)                                             # (B, U)
        zeros = ops.zeros((ops.shape(features)[0], self.units))
        return context, [zeros, zeros]

    def step(self, context, tokens, state):
        """One word for every row: tokens (B,) -> log-probs (B, V), new state, no extras."""
        words = self.embedding(tokens)                                                  # (B, E)
        h, state = self.lstm.cell(words, state)                                         # (B, U)
        logits = self.classifier(self.merge_proj(h + context))                          # (B, V)
        return ops.log_softmax(logits, axis=-1), state, None

    def get_config(self):
        return {"name": self.name, "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "embed_dim": self.embed_dim, "units": self.units, "dropout": self.dropout_rate}



@keras.saving.register_keras_serializable(package="captioning")
class AttentionDecoder(_AttendingDecoder):
    """Show, Attend and Tell (Xu et al. 2015) with soft additive attention over the encoder's spatial map.

    At every step: attention weights over the P locations from the LSTM state, a gated context vector
    (the "beta" gate), and an LSTM fed [word embedding, context]; the doubly stochastic regulariser
    ``alpha_c * mean_p (1 - sum_t alpha_tp)^2`` pushes the model to look at every location over a caption.

    Args:
        vocab_size: output classes. feature_dim: channels D of the spatial map (B, P, D).
        embed_dim, units: embedding and LSTM sizes. attention_dim: additive-attention size.
        feature_proj: the map is first projected D -> feature_proj (keeps the LSTM input small on CPU).
        dropout: before the classifier. alpha_c: weight of the doubly stochastic regulariser.
    """

    kind = "attention"
    uses_spatial = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, units: int = 512,
                 attention_dim: int = 256, feature_proj: int = 256, dropout: float = 0.5, alpha_c: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim = int(vocab_size), int(feature_dim)
        self.embed_dim, self.units, self.attention_dim = int(embed_dim), int(units), int(attention_dim)
        self.feature_proj_dim, self.dropout_rate, self.alpha_c = int(feature_proj), float(dropout), float(alpha_c)
        self.feature_proj = layers.Dense(feature_proj, activation="relu", name="feature_proj")
        self.init_h = layers.Dense(units, activation="tanh", name="init_h")
        self.init_c = layers.Dense(units, activation="tanh", name="init_c")
        self._attention_layers(attention_dim)
        self.gate = layers.Dense(feature_proj, activation="sigmoid", name="gate")
        self.embedding = layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.cell = layers.LSTMCell(units, name="lstm_cell")
        self.dropout = layers.Dropout(dropout, name="dropout")
        self.classifier = layers.Dense(vocab_size, name="classifier")

    def build(self, input_shape=None):
        f, u = self.feature_proj_dim, self.units
        self.feature_proj.build((None, None, self.feature_dim))
        self.init_h.build((None, f))
        self.init_c.build((None, f))
        self._build_attention()
        self.gate.build((None, u))
        self.embedding.build((None,))
        self.cell.build((None, self.embed_dim + f))
        self.classifier.build((None, u))
        self.built = True

    def _encode(self, features):
        feats = self.feature_proj(features)                                              # (B, P, F)
        mean = ops.mean(feats, axis=1)                                                   # (B, F)
        return feats, self.att_keys(feats), [self.init_h(mean), self.init_c(mean)]     # keys (B, P, A)

    def _attend_and_step(self, feats, keys, words, state, training=False):
        h = state[0]                                                                     # (B, U)
        alpha, context = self.attend(feats, keys, h)                                     # (B, P), (B, F)
        context = self.gate(h) * context                                                 # (B, F)
        h, state = self.cell(ops.concatenate([words, context], axis=-1), state, training=training)
        logits = self.classifier(self.dropout(h, training=training))                    # (B, V)
        return logits, state, alpha

    def call(self, inputs, training=False):
        features, tokens = inputs                                                        # (B, P, D), (B, T)
        feats, keys, state = self._encode(features)
        words = ops.transpose(self.embedding(tokens), (1, 0, 2))                        # (T, B, E)

        # keras.ops.scan wants per-step outputs shaped like the carry, so logits and weights ride in it.
        def step(carry, word):
            logits, (h, c), alpha = self._attend_and_step(feats, keys, word, [carry[0], carry[1]], training)
            carry = (h, c, logits, alpha)
            return carry, carry

        batch = ops.shape(tokens)[0]
        init = (state[0], state[1], ops.zeros((batch, self.vocab_size)), ops.zeros(ops.shape(keys)[:2]))
        _, (_, _, logits, alphas) = ops.scan(step, init, words)                         # (T, B, V), (T, B, P)
        logits = ops.transpose(logits, (1, 0, 2))                                        # (B, T, V)
        if training and self.alpha_c > 0:
            mask = ops.cast(ops.not_equal(tokens, 0), alphas.dtype)                      # (B, T)
            coverage = ops.sum(alphas * ops.expand_dims(ops.transpose(mask), -1), axis=0)  # (B, P)
            self.add_loss(self.alpha_c * ops.mean((1.0 - coverage) ** 2))                  # mean over B and P
        return logits

    def get_config(self):
        return {"name": self.name, "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "embed_dim": self.embed_dim, "units": self.units, "attention_dim": self.attention_dim,
                "feature_proj": self.feature_proj_dim, "dropout": self.dropout_rate, "alpha_c": self.alpha_c}



@keras.saving.register_keras_serializable(package="captioning")
class TopDownDecoder(_AttendingDecoder):
    """Top-down attention (Anderson et al. 2018, "Bottom-Up and Top-Down Attention"): two LSTMs per word.

    attention LSTM   input [language h(t-1), mean feature, word embedding]      -> h1 (B, U)
    attention        additive, over the P locations, queried by h1             -> alpha (B, P), v (B, F)
    language LSTM    input [attended feature v, h1]                              -> h2 (B, U)
    output           dropout(h2) -> Dense(vocab) logits                           (B, V)

    Both LSTMs start from zeros (the mean feature reaches the attention LSTM at every step instead).
    The step state is [h1, c1, h2, c2]; ``extras`` are the attention weights (B, P).

    Args:
        vocab_size: output classes. feature_dim: channels D of the spatial map (B, P, D).
        embed_dim, units: embedding and (both) LSTM sizes. attention_dim: additive-attention size.
        feature_proj: the map is first projected D -> feature_proj (keeps the LSTM inputs small on CPU).
        dropout: before the classifier.
    """

    kind = "topdown"
    uses_spatial = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, units: int = 512,
                 attention_dim: int = 256, feature_proj: int = 256, dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim = int(vocab_size), int(feature_dim)
        self.embed_dim, self.units, self.attention_dim = int(embed_dim), int(units), int(attention_dim)
        self.feature_proj_dim, self.dropout_rate = int(feature_proj), float(dropout)
        self.feature_proj = layers.Dense(feature_proj, activation="relu", name="feature_proj")
        self._attention_layers(attention_dim)
        self.embedding = layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.attention_cell = layers.LSTMCell(units, name="attention_lstm")
        self.language_cell = layers.LSTMCell(units, name="language_lstm")
        self.dropout = layers.Dropout(dropout, name="dropout")
        self.classifier = layers.Dense(vocab_size, name="classifier")

    def build(self, input_shape=None):
        f, u = self.feature_proj_dim, self.units
        self.feature_proj.build((None, None, self.feature_dim))
        self._build_attention()
        self.embedding.build((None,))
        self.attention_cell.build((None, u + f + self.embed_dim))
        self.language_cell.build((None, f + u))
        self.classifier.build((None, u))
        self.built = True

    def _encode(self, features):
        feats = self.feature_proj(features)                                              # (B, P, F)
        zeros = ops.zeros((ops.shape(features)[0], self.units))                          # (B, U)
        return feats, self.att_keys(feats), [zeros, zeros, zeros, zeros]                 # keys (B, P, A)

    def _attend_and_step(self, feats, keys, words, state, training=False):
        h1, c1, h2, c2 = state                                                           # each (B, U)
        mean = ops.mean(feats, axis=1)                                                   # (B, F)
        h1, (_, c1) = self.attention_cell(ops.concatenate([h2, mean, words], axis=-1), [h1, c1],
                                          training=training)                             # (B, U)
        alpha, attended = self.attend(feats, keys, h1)                                  # (B, P), (B, F)
        h2, (_, c2) = self.language_cell(ops.concatenate([attended, h1], axis=-1), [h2, c2],
                                         training=training)                              # (B, U)
        logits = self.classifier(self.dropout(h2, training=training))                   # (B, V)
        return logits, [h1, c1, h2, c2], alpha

    def call(self, inputs, training=False):
        features, tokens = inputs                                                        # (B, P, D), (B, T)
        feats, keys, state = self._encode(features)
        words = ops.transpose(self.embedding(tokens), (1, 0, 2))                        # (T, B, E)

        # As in AttentionDecoder: per-step outputs ride in the carry for keras.ops.scan.
        def step(carry, word):
            logits, state, alpha = self._attend_and_step(feats, keys, word, list(carry[:4]), training)
            carry = (*state, logits, alpha)
            return carry, carry

        batch = ops.shape(tokens)[0]
        init = (*state, ops.zeros((batch, self.vocab_size)), ops.zeros(ops.shape(keys)[:2]))
        outputs = ops.scan(step, init, words)[1]
        return ops.transpose(outputs[4], (1, 0, 2))                                      # (B, T, V)

    def get_config(self):
        return {"name": self.name, "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "embed_dim": self.embed_dim, "units": self.units, "attention_dim": self.attention_dim,
                "feature_proj": self.feature_proj_dim, "dropout": self.dropout_rate}


DECODERS = {"merge": MergeDecoder, "attention": AttentionDecoder, "topdown": TopDownDecoder}


def build_decoder(kind: str, **config) -> keras.Model:
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}")
    model = DECODERS[kind](**config)
    model.build()
    return model
