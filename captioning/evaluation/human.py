"""How well each metric agrees with people: Kendall's tau against Flickr8k's expert judgments.

``ExpertAnnotations.txt`` scores image-caption pairs 1-4 (three experts each). For every pair we score
the caption against the image's own references (without the caption itself, when it is one of them)
with each metric, then correlate metric and mean expert score, as in the CIDEr paper (Vedantam et al. 2015).
"""
from __future__ import annotations

from pathlib import Path

from captioning.data.flickr8k import Flickr8k
from captioning.data.text import tokenize
from captioning.evaluation.metrics import IMPLEMENTATION, coco_scores, kendall_tau, sentence_bleu_scores


def read_expert_annotations(path: str | Path) -> list[tuple[str, str, float]]:
    """(image, caption id 'other.jpg#n', mean expert score) for every line."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 5:
            rows.append((parts[0], parts[1], sum(float(x) for x in parts[2:5]) / 3))
    return rows


def metric_human_agreement(ds: Flickr8k, meteor: bool = True, progress: bool = False) -> dict:
    """Kendall's tau of each metric with the mean expert score, over all judged pairs (``progress``: a bar)."""
    from tqdm.auto import tqdm

    path = ds.root / "ExpertAnnotations.txt"
    if not path.is_file():
        return {"pairs": 0, "note": f"no ExpertAnnotations.txt in {ds.root}", "metrics": []}
    refs, hyps, human = [], [], []
    for image, caption_id, score in read_expert_annotations(path):
        source, _, n = caption_id.rpartition("#")
        if image not in ds.captions or source not in ds.captions:
            continue
        caption = ds.captions[source][int(n)]
        own = [c for i, c in enumerate(ds.captions[image]) if not (source == image and i == int(n))]
        refs.append([tokenize(c) for c in own])
        hyps.append(tokenize(caption))
        human.append(score)
    scores = {name: [] for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4")}
    for r, h in tqdm(list(zip(refs, hyps)), desc="human agreement: BLEU", unit="pair", disable=not progress):
        for name, value in sentence_bleu_scores(r, h).items():
            scores[name].append(value)
    _, coco_each, note = coco_scores(refs, hyps, meteor=meteor)
    scores.update(coco_each)
    metrics = [{"metric": name, "implementation": "nltk sentence_bleu (smoothing method1)"
                if name.startswith("bleu") else IMPLEMENTATION[name],
                "kendall_tau": round(kendall_tau(values, human), 4)} for name, values in scores.items()]
    return {"pairs": len(human), "note": note, "metrics": sorted(metrics, key=lambda m: -m["kendall_tau"])}
