"""Decoders and their step functions.

Every decoder takes ``(features, tokens)`` for teacher-forced training (all next words of a caption
in one pass) and offers the step API that decoding uses, carrying the recurrent state instead of
re-running the prefix:

    context, state = decoder.start(features)              # once per image
    log_probs, state, extras = decoder.step(context, tokens, state)   # once per word
"""
from __future__ import annotations

import numpy as np

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioning")
class MergeDecoder(keras.Model):
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

    def init_output_bias(self, word_counts: np.ndarray) -> None:
        """Start the classifier at the unigram distribution (log frequencies) to speed up training."""
        if not self.built:
            self.build()
        probs = (word_counts + 1.0) / (word_counts + 1.0).sum()
        self.classifier.bias.assign(np.log(probs).astype("float32"))

    def get_config(self):
        return {"name": self.name, "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "embed_dim": self.embed_dim, "units": self.units, "dropout": self.dropout_rate}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


DECODERS = {"merge": MergeDecoder}


def build_decoder(kind: str, **config) -> keras.Model:
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}")
    model = DECODERS[kind](**config)
    model.build()
    return model
