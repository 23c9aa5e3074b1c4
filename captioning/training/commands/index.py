"""``train.py index``: build a bundle's retrieval index (nearest training photos, calibrated trust levels).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from captioning.data.flickr8k import Flickr8k
from captioning.training.commands.evaluate import evaluated_scores
from captioning.training.inputs import Splits, _load_bundle, bundle_features, decoder_inputs
from captioning.training.settings import (
    FeatureSettings,
    Workspace,
)
from captioning.vision.encoders import get_spec

CALIBRATION_BEAM = 5            # the app's default decoding: the in-domain levels are calibrated on its captions


# --- retrieval index --------------------------------------------------------------------------------------
def build_retrieval_index(ws: Workspace, features: FeatureSettings, ds: Flickr8k, names: Splits) -> dict:
    """Index the training photos' pooled features into the bundle and calibrate the in-domain levels on dev
    (the score depends on the photo alone; dev beam-5 captions' per-image CIDEr-D only fill the report); the
    test split's levels are checked and stored beside them. A bundle whose index already covers exactly these
    training photos with its encoder keeps its vectors (only the calibration is redone, so no training-photo
    features are needed)."""
    import numpy as np

    from captioning.artifacts.bundle import read_index, save_index
    from captioning.artifacts.manifest import BundleError
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import coco_scores
    from captioning.evaluation.trust import LEVELS, build_index, calibrate, in_domain_score, level_table, spearman

    bundle = _load_bundle(ws.out, load_results=False, load_index=False)     # a damaged index is what we fix
    own = get_spec(bundle.encoders[0].name, bundle.encoders[0].alpha)
    try:
        old = read_index(ws.out, own)
    except BundleError as exc:
        print(f"index: the bundle's index cannot be kept ({exc}); building it anew")
        old = None
    reuse = old is not None and old.encoder == own.key and old.names == list(names["train"])
    known_test = evaluated_scores(ws.out, names["test"], CALIBRATION_BEAM)
    decoded = {"dev": names["dev"], **({} if known_test else {"test": names["test"]})}
    pooled = {"test": names["test"], **({} if reuse else {"train": names["train"]})}
    cache, spec = bundle_features(ws, features, bundle, ds, decoded, pooled=pooled)
    if reuse:
        index = old
        index.calibration, index.calibration_note = None, ""
        print(f"index: keeping the bundle's {len(index)} training-photo vectors; recalibrating")
    else:
        index = build_index(names["train"], cache.load(names["train"]), [ds.captions[n] for n in names["train"]],
                            spec.key)
    if bundle.index is None and any(getattr(d, "uses_memory", False) for d in bundle.decoders):
        bundle = dataclasses.replace(bundle, index=index)      # a retrieval decoder reads it to caption the splits
    config = DecodeConfig(beam_width=CALIBRATION_BEAM, max_length=bundle.max_length)

    def score_split(split):
        pooled_feats = cache.load(names[split])
        known = known_test if split == "test" else None
        if known is None:
            nbest = decode(bundle.step_decoder(), decoder_inputs(ws, bundle, names[split]), bundle.vocab, config)
            _, each, _ = coco_scores(ds.references(names[split]), [n[0].words for n in nbest], meteor=False)
            known = np.array(each["cider"]), np.array([n[0].normalized_log_prob for n in nbest])
        return (index.similarity(pooled_feats), *known, pooled_feats)

    dev_sim, dev_cider, dev_logp, _ = score_split("dev")
    calibration = calibrate(dev_sim, dev_cider, dev_logp)
    test_sim, test_cider, test_logp, test_feats = score_split("test")
    test_scores = in_domain_score(test_sim)
    report = calibration.report
    report["decoding"] = config.describe()
    report["test_levels"] = level_table(test_scores, test_cider, calibration)
    report["spearman"]["test_in_domain"] = round(spearman(test_scores, test_cider), 4)
    report["test"] = {"images": names["test"], "score": [round(float(x), 4) for x in test_scores],
                      "cider": [round(float(x), 4) for x in test_cider]}
    times = []
    for row in test_feats[:200]:                              # one photo at a time, as the app asks
        start = time.perf_counter()
        index.search(row[None])
        times.append(time.perf_counter() - start)
    report["lookup_ms"] = round(1000 * float(np.median(times)), 3)
    index.calibration = calibration
    save_index(ws.out, index)
    size = (Path(ws.out) / "index.npy").stat().st_size + (Path(ws.out) / "index.json").stat().st_size
    print(f"\nindex: {len(index)} training photos x {index.dim} (float16), {size / 1e6:.1f} MB; "
          f"lookup {report['lookup_ms']:.2f} ms per photo (median)")
    sp = report["spearman"]
    print(f"dev Spearman with per-image CIDEr-D: in-domain score {sp['in_domain']:.3f}, caption confidence "
          f"{sp['caption_confidence']:.3f} (shown beside the level, not part of it)")
    print(f"thresholds (dev): unfamiliar < {calibration.unfamiliar_below:.4f} <= unusual < "
          f"{calibration.familiar_from:.4f} <= familiar")
    print(f"{'level':<11} {'dev n':>6} {'dev CIDEr-D':>11} {'test n':>6} {'test CIDEr-D':>12}")
    for lv in LEVELS:
        d, t = report["dev_levels"][lv], report["test_levels"][lv]
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        print(f"{lv:<11} {d['count']:>6} {fmt(d['mean_cider']):>11} {t['count']:>6} {fmt(t['mean_cider']):>12}")
    return report
