"""The facade the app and the CLI use: image in, captions out."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from captioning.artifacts.bundle import Bundle, load_bundle
from captioning.decoding.captions import Caption
from captioning.decoding.config import DecodeConfig
from captioning.decoding.options import DEFAULT_BEAM_WIDTH, DEFAULT_CONSENSUS
from captioning.decoding.search import decode
from captioning.models.stepper import MultiFeatures, as_float32
from captioning.vision.encoders import build_encoder, get_spec
from captioning.vision.features import image_pipeline
from captioning.vision.images import ImageSource, load_image, to_canonical

if TYPE_CHECKING:
    from captioning.service.batch import BatchResult


class Captioner:
    """A loaded bundle plus its encoder. Safe to share between threads (one per app process).

    Example:
        >>> captioner = Captioner.from_bundle("artifacts/default")
        >>> captioner.caption("dog.jpg", beam_width=5)[0].text
    """

    def __init__(self, bundle: Bundle, weights: str | os.PathLike | None = None):
        self.bundle = bundle
        self.spec = get_spec(bundle.encoder.name, bundle.encoder.alpha)      # the bundle's own encoder
        self.weights = weights                      # that encoder's weights file (others: found as usual)
        self.steps = bundle.step_decoder()
        self.spatial = bundle.uses_spatial          # attention decoders read the map (merge members pool it)
        # The one default of the CLI, the API and the app: beam 5 (beam_width=1 still means greedy), its captions
        # re-ranked by consensus with the nearest training photos when the bundle has their index.
        self.default_config = DecodeConfig(max_length=bundle.max_length, beam_width=DEFAULT_BEAM_WIDTH,
                                           consensus=DEFAULT_CONSENSUS if bundle.index is not None else 0)
        # A cross-encoder ensemble runs each of its encoders once per photo; most bundles have one.
        self.encoders = {get_spec(e.name, e.alpha).key: e for e in bundle.encoders}
        self._encoders: dict[str, object] = {}
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self.quick_of: int | None = None    # set on first_decoder()'s Captioner: how many decoders the full one has

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, weights: str | os.PathLike | None = None) -> Captioner:
        return cls(load_bundle(path), weights)

    @property
    def vocab(self):
        return self.bundle.vocab

    def _forward(self, key: str | None = None):
        """The compiled encoder ``key`` (default: the bundle's own): uint8 (N, 224, 224, 3) -> tensor features."""
        key = key or self.spec.key
        with self._lock:                     # one lock per encoder: several build at once, each only once
            building = self._building.setdefault(key, threading.Lock())
        with building:
            if key not in self._encoders:
                import tensorflow as tf

                info = self.encoders[key]
                spec = get_spec(info.name, info.alpha)
                spatial = self.bundle.spatial_for(key)
                weights = self.weights if key == self.spec.key else None
                model, _ = build_encoder(spec, weights, spatial=spatial, hint=info.weights_file)
                to_input = image_pipeline(spec)

                def encode(images):                     # uint8 (N, 224, 224, 3) -> features
                    out = model(to_input(images), training=False)
                    return out[1] if spatial else out

                # One trace per encoder, whatever the batch: without a signature each new batch size traced
                # again, and TensorFlow counts the traces of every encoder's `encode` together, so a folder run
                # printed "triggered tf.function retracing" warnings (issue 39).
                self._encoders[key] = tf.function(
                    encode, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
            return self._encoders[key]

    def first_decoder(self) -> Captioner:
        """This bundle's own decoder alone on its own encoder, sharing this Captioner's built encoders and that
        decoder's compiled functions: what the app captions with while an ensemble's other members still load
        (``quick_of`` says how many decoders the whole has). The trust index reads the same encoder, so it works."""
        from dataclasses import replace as record

        if len(self.bundle.decoders) == 1:
            return self
        alone = record(self.bundle, manifest=record(self.bundle.manifest, members=()), members=())
        quick = Captioner(alone, self.weights)
        consensus = getattr(quick.steps, "consensus", None)     # its own bundle's reranking (on the one encoder)
        quick.steps = self.steps.members[0]         # same tf.functions: traced once for both
        if consensus is not None:                   # read only when the member decodes alone
            quick.steps.consensus = consensus
        quick._encoders, quick._lock, quick._building = self._encoders, self._lock, self._building
        quick.quick_of = len(self.bundle.decoders)
        return quick

    def encode(self, arrays: np.ndarray) -> np.ndarray | MultiFeatures:
        """Features of canonical uint8 (N, 224, 224, 3) photos: (N, D) or (N, P, D), or for a cross-encoder
        ensemble :class:`~captioning.models.stepper.MultiFeatures` (each encoder run once per photo)."""
        if len(self.encoders) == 1:
            return np.asarray(self._forward()(np.asarray(arrays, np.uint8)))   # a tensor, or numpy (lite)
        arrays = np.asarray(arrays, np.uint8)
        return MultiFeatures({key: np.asarray(self._forward(key)(arrays)) for key in self.encoders})

    def warm_up(self, widths: Sequence[int] = (1, 5, 3)) -> None:
        """Build the encoder and trace every compiled function once, so the first user waits less.

        Greedy steps one row, beam 5 one row then five; a third row count (beam 3) makes TensorFlow trace a
        shape-generic step that serves every later beam width without tracing again.
        """
        image = np.zeros((8, 8, 3), np.uint8) + 128
        for width in widths:
            self.caption(image, beam_width=width)

    def features(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray | MultiFeatures:
        """Features (N, D), or spatial maps (N, P, D) for attention decoders, through the training-image path
        (:class:`~captioning.models.stepper.MultiFeatures` for a cross-encoder ensemble)."""
        batch = images if isinstance(images, (list, tuple)) else [images]
        arrays = np.stack([to_canonical(load_image(_as_source(img))) for img in batch])   # (N, 224, 224, 3)
        return self.encode(arrays)

    def config(self, config: DecodeConfig | None = None, **overrides) -> DecodeConfig:
        base = config or self.default_config
        return replace(base, **overrides) if overrides else base

    def decode(self, features: np.ndarray, config: DecodeConfig | None = None, **overrides) -> list[list[Caption]]:
        """n-best lists for precomputed features (N, D), (N, P, D) or MultiFeatures."""
        return decode(self.steps, as_float32(features), self.vocab, self.config(config, **overrides))

    def caption(self, image: ImageSource, config: DecodeConfig | None = None, **overrides) -> list[Caption]:
        """The n-best list (best first) for one image; ``overrides`` are DecodeConfig fields."""
        return self.decode(self.features(image), config, **overrides)[0]

    @property
    def can_assess(self) -> bool:
        """Whether the bundle carries a retrieval index (``python train.py index`` adds one)."""
        return self.bundle.index is not None

    def assess(self, features: np.ndarray, captions: Sequence[Caption] | None = None,
               neighbours: int | None = None) -> list:
        """How far to trust each caption: a retrieval.Assessment per image of ``features`` (N, D) or (N, P, D).

        The in-domain score and level come from the photo's nearest training photos alone, so they are the same
        whatever decoding wrote the caption; ``captions`` (one per image) only add each caption's own
        ``caption_confidence`` (exp of its mean log-probability) beside them. Raises RuntimeError when the
        bundle has no index."""
        from captioning.evaluation.trust import caption_confidence

        if self.bundle.index is None:
            raise RuntimeError(f"Bundle {self.bundle.path} has no retrieval index. Add one with: "
                               f"python train.py index --out {self.bundle.path}")
        if isinstance(features, MultiFeatures):          # the index holds the bundle's own encoder's features
            features = features.of(self.spec.key)
        out = self.bundle.index.assess(features, neighbours)
        for assessment, caption in zip(out, captions or []):
            assessment.caption_confidence = caption_confidence(caption.normalized_log_prob)
        return out

    def index_features(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """What the retrieval index compares: the bundle's own encoder's features of ``images`` (only that
        encoder runs, even for a cross-encoder ensemble)."""
        batch = images if isinstance(images, (list, tuple)) else [images]
        arrays = np.stack([to_canonical(load_image(_as_source(img))) for img in batch])   # (N, 224, 224, 3)
        return np.asarray(self._forward()(arrays))

    @property
    def attention_note(self) -> str | None:
        """Why captions carry no per-word attention maps, or None when they do. Maps come on one grid: an
        ensemble's attending members are resampled to the largest of their grids and averaged, so a caption's
        ``attention`` is (tokens, G*G) whatever encoders the members read."""
        if self.spatial:
            return None
        return ("this bundle's decoders read one pooled vector per photo (merge decoders), so its captions have "
                "no per-word attention maps")

    def caption_many(self, images: Iterable[ImageSource], config: DecodeConfig | None = None,
                     batch_size: int = 16, names: Sequence[str] | None = None, **overrides) -> Iterator[BatchResult]:
        """Caption many images (paths, bytes, file objects, PIL images) ``batch_size`` at a time; yields one
        :class:`~captioning.service.batch.BatchResult` per image, in order, as each batch is ready. A bad file gets an
        error result and never stops the others."""
        from captioning.service.batch import caption_stream

        return caption_stream(self, images, self.config(config, **overrides), batch_size, names)


def _as_source(image):
    """Arrays are accepted too (as uint8 RGB); everything else goes to the safe loader as it is."""
    if isinstance(image, np.ndarray):
        from PIL import Image
        return Image.fromarray(np.asarray(image, np.uint8))
    return image
