"""The attention and merge decoders' step API in numpy alone: what the app's first caption decodes with before
TensorFlow has loaded (captioning.service.lite).

Same ``start``/``select``/``repeat``/``step`` protocol as :class:`~captioning.models.stepper.StepDecoder`, numpy in
and out, computing what :mod:`captioning.models.decoders`' ``start`` and ``step`` compute (Keras Dense, Embedding and
LSTMCell: gates in the order input, forget, candidate, output) from the same weights, in float32.
"""
from __future__ import annotations

import numpy as np

# The weights each kind reads, as "<layer>.<weight>" (the Keras decoder's attribute names; see numpy_weights).
LAYERS = {
    "attention": {"feature_proj": ("kernel", "bias"), "init_h": ("kernel", "bias"), "init_c": ("kernel", "bias"),
                  "att_keys": ("kernel", "bias"), "att_query": ("kernel", "bias"), "att_score": ("kernel", "bias"),
                  "gate": ("kernel", "bias"), "embedding": ("embeddings",),
                  "cell": ("kernel", "recurrent_kernel", "bias"), "classifier": ("kernel", "bias")},
    "merge": {"image_proj": ("kernel", "bias"), "embedding": ("embeddings",),
              "lstm.cell": ("kernel", "recurrent_kernel", "bias"), "merge_proj": ("kernel", "bias"),
              "classifier": ("kernel", "bias")},
}
KINDS = tuple(LAYERS)


def numpy_weights(decoder) -> dict[str, np.ndarray]:
    """A Keras attention or merge decoder's weights as float32 arrays named "<layer>.<weight>"."""
    out = {}
    for layer, names in LAYERS[decoder.kind].items():
        owner = decoder
        for part in layer.split("."):
            owner = getattr(owner, part)
        for name in names:
            out[f"{layer}.{name}"] = np.asarray(getattr(owner, name).numpy(), np.float32)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)          # = 1 / (1 + exp(-x)), without overflow warnings


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, each row shifted by its own maximum: exact however far apart the rows' scales are."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, each row shifted by its own maximum (as ``_log_softmax``)."""
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


class NumpyStepDecoder:
    """An attention or merge decoder's step API over its weights (``numpy_weights``), without TensorFlow.

    ``config``: the decoder's Keras config (vocab_size, feature_dim, units, ...). Raises ValueError when the weights
    do not fit the config (a cache from another decoder)."""

    speaks_numpy = True                      # Bundle.step_decoder uses it as it is (no StepDecoder around it)

    def __init__(self, kind: str, config: dict, weights: dict[str, np.ndarray]):
        if kind not in LAYERS:
            raise ValueError(f"no numpy step decoder for a {kind!r} decoder (only {', '.join(KINDS)})")
        self.kind, self.config = kind, dict(config)
        self.vocab_size, self.feature_dim = int(config["vocab_size"]), int(config["feature_dim"])
        self.units = int(config["units"])
        self.uses_spatial = kind == "attention"
        missing = [name for name in self._names() if name not in weights]
        if missing:
            raise ValueError(f"the {kind} decoder's weights lack {', '.join(missing)}")
        self.w = {name: np.asarray(weights[name], np.float32) for name in self._names()}
        self._check_shapes()

    def _names(self) -> list[str]:
        return [f"{layer}.{name}" for layer, names in LAYERS[self.kind].items() for name in names]

    def _check_shapes(self) -> None:
        w, v, u = self.w, self.vocab_size, self.units
        expected = {"embedding.embeddings": (v, None), "classifier.kernel": (u, v), "classifier.bias": (v,)}
        cell = "cell" if self.kind == "attention" else "lstm.cell"
        expected[f"{cell}.recurrent_kernel"] = (u, 4 * u)
        expected["feature_proj.kernel" if self.kind == "attention" else "image_proj.kernel"] = (self.feature_dim, None)
        for name, shape in expected.items():
            got = w[name].shape
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                wanted = ", ".join("any" if s is None else str(s) for s in shape)
                raise ValueError(f"weight {name} has shape {got}, the decoder's config wants ({wanted})")

    def _dense(self, layer: str, x: np.ndarray) -> np.ndarray:
        return x @ self.w[f"{layer}.kernel"] + self.w[f"{layer}.bias"]

    def _lstm(self, cell: str, x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        h, c = state
        z = x @ self.w[f"{cell}.kernel"] + h @ self.w[f"{cell}.recurrent_kernel"] + self.w[f"{cell}.bias"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return h, [h, c]

    # --- the step API (captioning.models.stepper) ---------------------------------------------------
    def start(self, features: np.ndarray, repeat: int = 1):
        """Features (B, D), or the spatial map (B, P, D) for attention -> context and state, rows repeated."""
        features = np.asarray(features, np.float32)
        if features.ndim == 3 and not self.uses_spatial:
            features = features.mean(axis=1)        # (B, P, D) -> (B, D): the encoder's own global average pool
        if self.uses_spatial:
            feats = np.maximum(self._dense("feature_proj", features), 0.0)           # (B, P, F)
            mean = feats.mean(axis=1)                                                  # (B, F)
            context = np.concatenate([feats, self._dense("att_keys", feats)], axis=-1)  # (B, P, F + A)
            state = [np.tanh(self._dense("init_h", mean)), np.tanh(self._dense("init_c", mean))]
        else:
            context = np.maximum(self._dense("image_proj", features), 0.0)           # (B, U)
            zeros = np.zeros((len(features), self.units), np.float32)
            state = [zeros, zeros]
        return np.repeat(context, repeat, axis=0), [np.repeat(s, repeat, axis=0) for s in state]

    def select(self, context: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return context[np.asarray(rows, np.int64)]

    def repeat(self, context: np.ndarray, times: int) -> np.ndarray:
        return np.repeat(context, times, axis=0)

    def step(self, context: np.ndarray, tokens, state):
        """tokens (B,) -> log-probabilities (B, V), the new state, and the attention weights (B, P) (None for
        a merge decoder)."""
        words = self.w["embedding.embeddings"][np.asarray(tokens, np.int64)]          # (B, E)
        state = [np.asarray(s, np.float32) for s in state]
        if not self.uses_spatial:
            h, state = self._lstm("lstm.cell", words, state)
            logits = self._dense("classifier", np.maximum(self._dense("merge_proj", h + context), 0.0))
            return _log_softmax(logits), state, None
        f = self.w["feature_proj.kernel"].shape[1]
        feats, keys = context[..., :f], context[..., f:]
        h = state[0]
        query = self._dense("att_query", h)                                           # (B, A)
        energy = (np.tanh(keys + query[:, None, :]) @ self.w["att_score.kernel"])[..., 0] + self.w["att_score.bias"]
        alpha = _softmax(energy)                                                      # (B, P)
        attended = np.einsum("bp,bpf->bf", alpha, feats)                              # (B, F)
        attended = _sigmoid(self._dense("gate", h)) * attended
        h, state = self._lstm("cell", np.concatenate([words, attended], axis=-1), state)
        return _log_softmax(self._dense("classifier", h)), state, alpha
