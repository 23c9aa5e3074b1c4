"""``train.py evaluate``: score a bundle on a split, and the scores of an earlier evaluation.
"""
from __future__ import annotations

import time

from captioning.data.flickr8k import Flickr8k
from captioning.training.commands.tables import strategy_table
from captioning.training.inputs import Splits, _load_bundle, bundle_features, decoder_inputs
from captioning.training.settings import (
    EvaluateSettings,
    FeatureSettings,
    Workspace,
)


# --- evaluate and sweep -----------------------------------------------------------------------------------
def evaluate_bundle(ws: Workspace, settings: EvaluateSettings, features: FeatureSettings, ds: Flickr8k,
                    names: Splits) -> list[dict]:
    """Score the bundle at ``ws.out`` on a split with every decoding run; rewrites metrics.json and
    predictions.csv (keeping the dev sweep and the metric-vs-human agreement it does not recompute)."""
    from captioning.artifacts.bundle import update_results
    from captioning.artifacts.manifest import BundleError
    from captioning.artifacts.report import read_metrics
    from captioning.decoding.config import DecodeConfig, parse_spec
    from captioning.evaluation.human import metric_human_agreement
    from captioning.evaluation.runs import evaluate, implementations

    bundle = _load_bundle(ws.out, load_results=False)
    split = settings.split
    test_names = names[split]
    bundle_features(ws, features, bundle, ds, {split: test_names})
    feats = decoder_inputs(ws, bundle, test_names)
    if settings.decode:
        configs = [parse_spec(spec, max_length=bundle.max_length) for spec in settings.decode]
    else:
        configs = [DecodeConfig(max_length=bundle.max_length)] + \
                  [DecodeConfig(beam_width=w, max_length=bundle.max_length) for w in settings.widths() if w > 1]
    training = [c for refs in ds.references(names["train"]) for c in refs]
    meteor = not settings.no_meteor
    results, predictions, notes = evaluate(bundle.step_decoder(), bundle.vocab, feats, test_names,
                                           ds.references(test_names), configs, split=split,
                                           progress=not ws.quiet, meteor=meteor, training_captions=training)
    # Keep what this step does not recompute: the dev sweep and an earlier metric-vs-human agreement.
    try:
        old = read_metrics(ws.out) or {}
    except BundleError:                       # a damaged metrics.json: this step is what rewrites it
        old = {}
    metrics = {key: old[key] for key in ("sweep", "human_agreement") if key in old}
    if "human_agreement" not in metrics and ws.bundle != ws.out:
        try:                    # the bundle being replaced: its agreement is the dataset's, not its model's
            previous = read_metrics(ws.bundle) or {}
        except BundleError:
            previous = {}
        if "human_agreement" in previous:
            metrics["human_agreement"] = previous["human_agreement"]
    metrics.update(results=results, implementations=implementations(), notes=notes)
    if not settings.no_human:
        start = time.perf_counter()
        print("human agreement: scoring Flickr8k's expert-judged captions with every metric"
              f"{' (METEOR runs in Java: about a minute)' if meteor else ''} ...", flush=True)
        metrics["human_agreement"] = metric_human_agreement(ds, meteor=meteor, progress=not ws.quiet)
        print(f"human agreement: {metrics['human_agreement']['pairs']:,} pairs in {time.perf_counter() - start:.0f}s",
              flush=True)
    update_results(ws.out, metrics, predictions)
    print(f"\n{split}, {len(test_names)} images\n" + strategy_table(results))
    for note in notes:
        print(note)
    return results


def evaluated_scores(out: str, names: list[str], beam: int):
    """(per-image CIDEr-D, mean log-prob per token) of the bundle's evaluated beam captions for ``names``, from
    predictions.csv (what ``evaluate`` just scored, so not decoded twice), or None when it lacks them."""
    from captioning.artifacts.report import EvaluationReport
    from captioning.decoding.config import DecodeConfig

    predictions = EvaluationReport.read_predictions_loosely(out)
    if predictions is None or not {"log_prob", "cider"} <= set(predictions.columns):
        return None
    rows = predictions[predictions["beam_width"] == beam]
    if "label" in rows:           # plain beam search only, not a run re-ranked by consensus at the same width
        rows = rows[rows["label"].isin([DecodeConfig(beam_width=beam).describe(), "", None]) | rows["label"].isna()]
    rows = rows.drop_duplicates("image").set_index("image")
    if not set(names) <= set(rows.index):
        return None
    rows = rows.loc[names]
    tokens = rows["caption"].str.split().str.len() + 1            # the words and <end>
    return rows["cider"].to_numpy(float), (rows["log_prob"].astype(float) / tokens).to_numpy()
