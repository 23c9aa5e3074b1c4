"""A fine-tune's Flickr8k test scores, before and after: did it forget the old domain?

``train.py finetune --flickr-test N`` (default :data:`DEFAULT_FLICKR_TEST`) scores the base bundle and the
fine-tuned one on the first N photos of Flickr8k's test split (the split file's order; 1000 = all of it) when
Flickr8k is reachable (``--data-dir`` or $FLICKR8K_DIR), with the same beam search as the user's photos. Their
features are cached like every Flickr8k photo's (once per encoder; later fine-tunes read them).

Why 200 by default: the features are the cost. Measured here (docs/scaling.md): Xception 299 caches 14.8
photos/s on a quiet 2-core machine (9.4 under load), EfficientNet-Lite0 about 55; so 200 photos add 15-25 s per
Xception encoder to a first fine-tune, where 1000 would add 70-110 s each (the shipped ensemble reads three
encoders) out of the 10-minute budget of a 500-photo fine-tune; decoding them with beam 3 adds seconds per
model. Later fine-tunes read the cached features. 1000 scores the whole split as `train.py evaluate` does.
"""
from __future__ import annotations

import dataclasses

from .data import DataError

DEFAULT_FLICKR_TEST = 200


class FlickrTest:
    """The Flickr8k test photos one fine-tune scores on (none when Flickr8k is unreachable or N is 0)."""

    def __init__(self, config, base, flickr, progress=None):
        self.config, self.flickr = config, flickr
        self.wanted = int(getattr(config.user_data, "flickr_test", DEFAULT_FLICKR_TEST) or 0)
        self.names: list[str] = []
        self.problem: str | None = None
        if flickr is None or self.wanted <= 0:
            return
        from .recipes import bundle_features

        names = list(flickr.splits.get("test", []))[:self.wanted]
        if progress:
            progress(phase="flickr8k features", flickr_photos=len(names))
        split = {"test": names}
        features = config.features                    # --weights names one encoder's file: an ensemble of several
        if len(set(base.decoder_keys)) > 1:           # encoders finds each one's own
            features = dataclasses.replace(features, weights=None)
        try:
            bundle_features(config.workspace, features, base, flickr, split)
        except DataError as exc:                       # photos missing from the folder: score without them
            self.problem = str(exc).split("\n")[0]
            print(f"flickr8k test: not scored ({self.problem})")
            return
        self.names = split["test"]

    def _score(self, steps, vocab, inputs, new_words: set[str], max_length: int) -> dict:
        from .finetune import score

        result = score(steps, vocab, inputs, self.flickr.references(self.names), new_words, max_length)
        result.pop("captions", None)                  # the manifest keeps scores only for these photos
        return result

    def before(self, base, steps, new_words: set[str]) -> dict | None:
        """The base bundle's scores, decoded by ``steps`` (its step decoder; None when nothing is scored)."""
        if not self.names:
            return None
        from .recipes import decoder_inputs

        inputs = decoder_inputs(self.config.workspace, base, self.names)
        return self._score(steps, base.vocab, inputs, new_words, base.max_length)

    def after(self, steps, vocab, inputs_of, new_words: set[str], max_length: int) -> dict | None:
        """The fine-tuned decoders' scores; ``inputs_of(names)`` reads their features."""
        if not self.names:
            return None
        return self._score(steps, vocab, inputs_of(self.names), new_words, max_length)

    def record(self, before: dict | None, after: dict | None) -> dict:
        """The manifest's ``metrics.flickr8k_test``, and a line on the terminal."""
        if before is None or after is None:
            why = self.problem or ("Flickr8k is not reachable (--data-dir or $FLICKR8K_DIR)" if self.flickr is None
                                   and self.wanted > 0 else "--flickr-test 0")
            return {"photos": 0, "not_scored": why}
        print(f"flickr8k test ({len(self.names)} photos): CIDEr-D {before['cider']:.3f} -> {after['cider']:.3f}, "
              f"BLEU-4 {before['bleu_4']:.3f} -> {after['bleu_4']:.3f}")
        return {"photos": len(self.names), "split": "test", "before": before, "after": after}
