"""A fine-tune's dev score after every epoch: CIDEr-D of greedy captions of the user's dev photos, for the Train
page's score curve next to the losses.

The scores go to ``dev_scores.json`` beside the decoder's ``state.json`` (``{"1": {"dev_cider": 0.41}, ...}``):
:func:`captioning.jobs.read_progress` merges them into the epochs it reads. Greedy decoding of at most
:data:`MAX_PHOTOS` dev photos keeps it to a second or two an epoch; early stopping still follows the dev loss
(the checkpoints' rule), so the score is for people watching, not a second stopping rule.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .files import atomic_write

SCORES_FILE = "dev_scores.json"
MAX_PHOTOS = 100


def read_scores(run_dir: str | Path) -> dict[str, dict]:
    """``{epoch: {"dev_cider": ...}}`` of one decoder's run folder ({} when there is none)."""
    try:
        data = json.loads((Path(run_dir) / SCORES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def dev_score_callback(run_dir: str | Path, load_features, references: list, vocab, max_length: int):
    """A Keras callback scoring the model being trained on the dev photos after each epoch.
    ``load_features()`` returns their features (called once, at the first epoch's end)."""
    import keras

    from .decoding import DecodeConfig, decode
    from .metrics import coco_scores
    from .stepper import StepDecoder

    run_dir, refs = Path(run_dir), references[:MAX_PHOTOS]
    config = DecodeConfig(beam_width=1, max_length=max_length)

    class _DevScore(keras.callbacks.Callback):
        steps = feats = None

        def on_epoch_end(self, epoch, logs=None):
            if not refs:
                return
            if self.steps is None:
                self.steps, self.feats = StepDecoder(self.model), load_features()[:MAX_PHOTOS]
            start = time.perf_counter()
            hyps = [n[0].words for n in decode(self.steps, self.feats, vocab, config)]
            coco, _, _ = coco_scores(refs, hyps, meteor=False)
            scores = read_scores(run_dir)
            scores[str(epoch + 1)] = {"dev_cider": round(float(coco["cider"]), 4), "dev_photos": len(hyps),
                                      "score_seconds": round(time.perf_counter() - start, 2)}
            atomic_write(run_dir / SCORES_FILE, json.dumps(scores, indent=1))

    return _DevScore()
