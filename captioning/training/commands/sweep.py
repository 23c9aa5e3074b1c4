"""``train.py sweep``: score a bundle's decoding strategies on a split, as a console table.
"""
from __future__ import annotations

from captioning.data.flickr8k import Flickr8k
from captioning.training.inputs import Splits, _load_bundle, bundle_features, decoder_inputs
from captioning.training.settings import (
    FeatureSettings,
    Workspace,
)


def sweep_bundle(ws: Workspace, features: FeatureSettings, ds: Flickr8k, names: Splits) -> list[dict]:
    """Beam widths 1, 2, 3, 5, 10 and length penalties 0..2 on the dev split, stored in metrics.json."""
    from captioning.artifacts.bundle import update_results
    from captioning.decoding.config import DecodeConfig
    from captioning.evaluation.runs import decoding_sweep

    bundle = _load_bundle(ws.out)
    dev = names["dev"]
    bundle_features(ws, features, bundle, ds, {"dev": dev})
    rows = decoding_sweep(bundle.step_decoder(), bundle.vocab, decoder_inputs(ws, bundle, dev),
                          ds.references(dev), DecodeConfig(max_length=bundle.max_length), progress=not ws.quiet)
    report = bundle.report                         # typed metrics.json (+ predictions), or None
    metrics = {**(report.to_dict() if report is not None and report.raw else {"results": []}), "sweep": rows}
    update_results(ws.out, metrics, bundle.predictions)
    print(f"\nsweep on dev ({len(dev)} images)\n{'beam':>4} {'lp':>4} {'BLEU-4':>7} {'CIDEr':>7} {'length':>6}")
    for r in rows:
        print(f"{r['beam_width']:>4} {r['length_penalty']:>4} {r['bleu_4']:7.4f} {r['cider']:7.4f} "
              f"{r['mean_length']:6.2f}")
    return rows
