"""The protocol decoding speaks to: a decoder's compiled ``start``/``step`` functions, one or an ensemble.

A step decoder turns features into a context and a state (``start``), and a batch of previous tokens into
next-token log-probabilities (``step``), numpy in and out; :mod:`captioning.decoding.search`'s strategies need
nothing else. TensorFlow is imported on first use.
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import SPECIALS, UNK

UNK_ID = SPECIALS.index(UNK)


class StepDecoder:
    """Wraps a Keras decoder's ``start``/``step`` in compiled tf.functions that speak numpy."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        # start: one trace per decoder for any number of photos (features (B, D), or (B, P, D) for attention),
        # so a run over batches of several sizes does not retrace it (issue 39's retracing warnings).
        rank = 3 if getattr(model, "uses_spatial", False) else 2
        self._start = tf.function(model.start, input_signature=[tf.TensorSpec([None] * rank, tf.float32)])
        self._step = None                           # traced once, on the first step (its shapes: see _compiled)

    def _compiled(self, context, tokens, state):
        """``model.step`` as one tf.function for any batch size and memory length: its signature has every
        dimension unknown, taken from the first call's ranks and dtypes, so each decoder traces once (a run over
        batches of several sizes printed tf.function retracing warnings; issue 39)."""
        import tensorflow as tf

        if self._step is None:
            def spec(x):
                return tf.TensorSpec([None] * len(x.shape), tf.as_dtype(x.dtype))

            self._step = tf.function(self.model.step, input_signature=[
                spec(context), spec(tokens), [spec(s) for s in state]])
        return self._step

    def start(self, features: np.ndarray, repeat: int = 1):
        """Context (kept as a tensor: it never changes between steps) and numpy state, each row repeated."""
        import tensorflow as tf

        features = np.asarray(features, np.float32)
        if features.ndim == 3 and not getattr(self.model, "uses_spatial", False):
            features = features.mean(axis=1)        # (B, P, D) -> (B, D): the encoder's own global average pool
        context, state = self._start(features)
        return tf.repeat(context, repeat, axis=0), [np.repeat(s.numpy(), repeat, axis=0) for s in state]

    def select(self, context, rows: np.ndarray):
        """The context of some rows only (decoding drops the rows of finished images)."""
        import tensorflow as tf

        return tf.gather(context, np.asarray(rows, np.int32))

    def repeat(self, context, times: int):
        """Each row's context ``times`` times in a row (beam search widens one row per image to K)."""
        import tensorflow as tf

        return tf.repeat(context, times, axis=0)

    def step(self, context, tokens, state):
        tokens, state = np.asarray(tokens, np.int32), list(state)
        log_probs, state, extras = self._compiled(context, tokens, state)(context, tokens, state)
        return (log_probs.numpy(), [s.numpy() for s in state],
                None if extras is None else extras.numpy())


class MultiFeatures:
    """The same images' features from several encoders, keyed by encoder key (e.g. ``xception-299``).

    Rows index and slice together, as one array's would (``features[lo:hi]``, ``len(features)``), so decoding
    batches them unchanged; :class:`EnsembleStepDecoder` hands each member its own encoder's rows.
    """

    def __init__(self, groups: dict[str, np.ndarray]):
        if not groups:
            raise ValueError("MultiFeatures needs the features of at least one encoder")
        self.groups = {key: np.asarray(value) for key, value in groups.items()}
        sizes = {key: len(value) for key, value in self.groups.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every encoder needs features for the same images; rows per encoder: {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.groups.values())))

    def __getitem__(self, rows) -> MultiFeatures:
        return MultiFeatures({key: value[rows] for key, value in self.groups.items()})

    def of(self, key: str) -> np.ndarray:
        """One encoder's features; a KeyError names the encoders there are."""
        if key not in self.groups:
            raise KeyError(f"no features from encoder {key!r}; there are: {', '.join(self.groups)}")
        return self.groups[key]

    @property
    def keys(self) -> list[str]:
        return list(self.groups)


def as_float32(features):
    """``features`` as float32: an array, or MultiFeatures with every encoder's part converted."""
    if isinstance(features, MultiFeatures):
        return MultiFeatures({key: np.asarray(value, np.float32) for key, value in features.groups.items()})
    return np.asarray(features, np.float32)


def features_for(features, key: str | None):
    """The rows a decoder of encoder ``key`` reads: one encoder's part of :class:`MultiFeatures`, or a plain
    array as it is (a single-encoder bundle's features)."""
    if isinstance(features, MultiFeatures):
        if key is None:
            raise ValueError("features from several encoders need each decoder's encoder key")
        return features.of(key)
    return features


class EnsembleStepDecoder:
    """Several step decoders over one vocabulary as one: each step's next-word distribution is the mean of
    the members' probabilities (log of the averaged softmax), the usual way captioning ensembles decode.

    Members may differ in architecture but must share the vocabulary. With one encoder, give them the spatial
    map when any member attends (merge members pool it, as the encoder does), else the pooled features. Members
    may also read different encoders: give ``encoders`` (each member's encoder key) and decode
    :class:`MultiFeatures`. The attention weights are the mean over the members that attend, each member's map
    first resampled to the largest of their grids (e.g. Xception's 10x10 beside EfficientNet-Lite's 7x7 and
    9x9: :func:`resample_attention`), so a cross-encoder ensemble has maps too.
    """

    def __init__(self, members: list[StepDecoder], encoders: list[str] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one decoder")
        if encoders is not None and len(encoders) != len(members):
            raise ValueError(f"{len(members)} decoders but {len(encoders)} encoder keys")
        self.members = list(members)
        self.encoders = list(encoders) if encoders is not None else [None] * len(self.members)

    def prepare(self, features, vocab):
        """Let the members with a memory (retrieval decoders) read the batch's remembered captions; the vocabulary
        extended by their new words (one extension: members with a memory must share it, e.g. the same datastore
        and encoder)."""
        words, self._known = vocab, len(vocab)
        for m, key in zip(self.members, self.encoders):
            if hasattr(m, "prepare"):
                extended = m.prepare(features_for(features, key), vocab)
                if words is not vocab and extended.itos != words.itos:
                    raise ValueError("an ensemble's retrieval decoders read different memories; keep one of them")
                words = extended
        return words

    def annotate(self, nbest: list[list]) -> None:
        """The remembered captions read and the words copied, from the member that read a memory."""
        for m in self.members:
            if hasattr(m, "annotate"):
                m.annotate(nbest)
                return

    def start(self, features, repeat: int = 1):
        contexts, states = [], []
        for m, key in zip(self.members, self.encoders):
            context, state = m.start(features_for(features, key), repeat)
            contexts.append(context)
            states.append(state)
        self._sizes = [len(s) for s in states]
        return contexts, [s for state in states for s in state]

    def select(self, contexts, rows: np.ndarray):
        return [select_rows(m, c, rows) for m, c in zip(self.members, contexts)]

    def repeat(self, contexts, times: int):
        return [repeat_rows(m, c, times) for m, c in zip(self.members, contexts)]

    def step(self, contexts, tokens, state):
        log_probs, new_state, extras, at = [], [], [], 0
        known = getattr(self, "_known", None)      # the vocabulary's size, when a memory may have extended it
        plain = tokens if known is None else np.where(np.asarray(tokens) >= known, UNK_ID, tokens)
        for m, context, size in zip(self.members, contexts, self._sizes):
            # a copied word (an extended id) is <unk> to the members without a memory
            lp, st, ex = m.step(context, tokens if hasattr(m, "prepare") else plain, state[at: at + size])
            at += size
            log_probs.append(lp)
            new_state.extend(st)
            extras.append(ex)
        # (M, B, V'): a retrieval member's extended words widen its own rows; the others give them probability 0
        width = max(lp.shape[1] for lp in log_probs)
        stacked = np.stack([np.pad(lp, ((0, 0), (0, width - lp.shape[1])), constant_values=-np.inf)
                            for lp in log_probs])
        top = stacked.max(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = top + np.log(np.mean(np.exp(stacked - np.where(np.isfinite(top), top, 0)), axis=0))
        mean = np.where(np.isfinite(top), mean, -np.inf).astype(np.float32)      # log of the mean probability
        maps = [e for e in extras if e is not None]                              # each (B, P_m)
        if not maps:
            return mean, new_state, None
        grid = max(_grid(m.shape[1]) for m in maps)
        return mean, new_state, np.mean([resample_attention(m, grid) for m in maps], axis=0)   # (B, grid*grid)


def _grid(locations: int) -> int:
    side = int(round(np.sqrt(locations)))
    if side * side != locations:
        raise ValueError(f"attention over {locations} locations is not a square grid")
    return side


def resample_attention(maps: np.ndarray, grid: int) -> np.ndarray:
    """Attention weights (B, g*g) on a square g x g grid -> (B, grid*grid), each row still summing to 1.

    Bilinear, sampling at cell centres (half-pixel, as ``tf.image.resize`` and Pillow do), so a uniform map stays
    uniform and a peak stays where it was in the photo; rows are renormalised after resampling.
    """
    maps = np.asarray(maps)
    g = _grid(maps.shape[1])
    if g == grid:
        return maps
    x = maps.astype(np.float64).reshape(-1, g, g)                                # (B, g, g)
    pos = np.clip((np.arange(grid) + 0.5) * g / grid - 0.5, 0, g - 1)            # (grid,) source coordinates
    lo = np.floor(pos).astype(int)                                               # (grid,)
    hi = np.minimum(lo + 1, g - 1)
    w = pos - lo                                                                 # (grid,) weight of ``hi``
    rows = x[:, lo, :] * (1 - w)[None, :, None] + x[:, hi, :] * w[None, :, None]           # (B, grid, g)
    out = rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]      # (B, grid, grid)
    out = out.reshape(len(maps), grid * grid)
    total = out.sum(axis=1, keepdims=True)                                       # (B, 1)
    return np.where(total > 0, out / np.maximum(total, 1e-12), 1.0 / (grid * grid)).astype(maps.dtype)


def select_rows(decoder, context, rows: np.ndarray):
    """``context`` of some rows only, through the decoder's ``select`` when it has one (tensors stay tensors)."""
    select = getattr(decoder, "select", None)
    return select(context, rows) if select else context[rows]


def repeat_rows(decoder, context, times: int):
    """Each row of ``context`` ``times`` times in a row, through the decoder's ``repeat`` when it has one."""
    repeat = getattr(decoder, "repeat", None)
    return repeat(context, times) if repeat else np.repeat(context, times, axis=0)
