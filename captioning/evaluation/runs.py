"""Decode a split with several decoding settings and score it: metrics.json entries + predictions."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.evaluation.metrics import (
    BLEU_WEIGHTS,
    IMPLEMENTATION,
    cider_each,
    coco_scores,
    corpus_bleu_scores,
    diversity_scores,
    sentence_bleu_scores,
)
from captioning.models.stepper import StepDecoder


def evaluate(steps: StepDecoder, vocab: Vocabulary, features: np.ndarray, names: Sequence[str],
             references: Sequence[Sequence[Sequence[str]]], configs: Sequence[DecodeConfig], split: str = "test",
             progress: bool = True, meteor: bool = True, training_captions: Sequence[Sequence[str]] | None = None):
    """Returns ``(results, predictions, notes)``: one metrics dict per config (nltk BLEU, the coco-caption
    metrics of each image's first caption, and the diversity metrics, with ``novel_fraction`` when the
    training captions are given), a DataFrame of captions with per-image scores (a ``rank`` per caption
    where a run returns several per image), and notes on skipped metrics."""
    import pandas as pd
    from tqdm.auto import tqdm

    results, rows, notes = [], [], set()
    for config in configs:
        start = time.perf_counter()
        with tqdm(total=len(names), unit="img", desc=f"decode {config.describe()}", disable=not progress) as bar:
            nbest = decode(steps, features, vocab, config, progress=bar.update)
        seconds = time.perf_counter() - start
        hyps = [n[0].words for n in nbest]
        scoring = time.perf_counter()
        if progress:
            print(f"score {config.describe()}: BLEU, CIDEr-D, ROUGE-L{', METEOR (Java)' if meteor else ''} on "
                  f"{len(hyps)} captions ...", flush=True)
        coco, coco_each, note = coco_scores(references, hyps, meteor=meteor)
        if progress:
            print(f"score {config.describe()}: done in {time.perf_counter() - scoring:.1f}s", flush=True)
        if note:
            notes.add(note)
        sets = [[c.words for c in n] for n in nbest]
        entry = {"decoding": config.kind, "label": config.describe(), "options": config.options(),
                 "beam_width": config.beam_width, "split": split,
                 "n_images": len(names), "length_penalty": config.length_penalty,
                 "no_repeat_ngram_size": config.no_repeat_ngram_size, "max_length": config.max_length,
                 **corpus_bleu_scores(references, hyps), **{k: round(v, 6) for k, v in coco.items()},
                 "mean_length": float(np.mean([len(h) for h in hyps])),
                 "vocabulary_used": len({w for h in hyps for w in h}),
                 **diversity_scores(sets, training_captions, references),
                 "decode_seconds": round(seconds, 2)}
        results.append(entry)
        several = max(len(n) for n in nbest) > 1
        each = cider_each(references, sets) if several else [[c] for c in coco_each["cider"]]
        for name, refs, caps, ciders in zip(names, references, nbest, each):
            for rank, (cap, cider) in enumerate(zip(caps, ciders), 1):
                rows.append({"image": name, "decoding": config.kind, "beam_width": config.beam_width,
                             "label": entry["label"], "rank": rank,
                             "caption": cap.text, "log_prob": round(cap.log_prob, 4),
                             "score": round(cap.score, 4), **{k: round(v, 4) for k, v in
                                                              sentence_bleu_scores(refs, cap.words).items()},
                             "cider": round(cider, 4)})
    columns = ["image", "decoding", "beam_width", "caption", "rank", "label", "log_prob", "score", *BLEU_WEIGHTS,
               "cider"]
    return results, pd.DataFrame(rows, columns=columns), sorted(notes)


def implementations() -> dict[str, str]:
    """Which implementation produced each metric (shown beside the numbers in the app)."""
    return dict(IMPLEMENTATION)


def decoding_sweep(steps: StepDecoder, vocab: Vocabulary, features: np.ndarray,
                   references: Sequence[Sequence[Sequence[str]]], base: DecodeConfig,
                   widths: Sequence[int] = (1, 2, 3, 5, 10), penalties: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
                   penalty_width: int = 5, split: str = "dev", progress: bool = True) -> list[dict]:
    """Corpus scores over beam widths (at ``base``'s length penalty) and over length penalties (at
    ``penalty_width`` beams): what the Evaluation page charts and what decoding defaults are chosen from."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    settings = [(w, base.length_penalty, "beam_width") for w in widths]
    settings += [(penalty_width, p, "length_penalty") for p in penalties]
    rows = []
    for width, penalty, axis in tqdm(settings, desc=f"sweep ({split})", disable=not progress):
        config = replace(base, beam_width=width, length_penalty=penalty, num_return_sequences=1)
        hyps = [n[0].words for n in decode(steps, features, vocab, config)]
        coco, _, _ = coco_scores(references, hyps, meteor=False)
        rows.append({"axis": axis, "beam_width": width, "length_penalty": penalty, "split": split,
                     "n_images": len(hyps), **corpus_bleu_scores(references, hyps),
                     **{k: round(v, 6) for k, v in coco.items()},
                     "mean_length": float(np.mean([len(h) for h in hyps]))})
    return rows
