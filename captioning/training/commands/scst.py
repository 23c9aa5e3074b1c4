"""``train.py finetune-scst``: fine-tune a bundle's decoder with self-critical sequence training on CIDEr-D.
"""
from __future__ import annotations

from pathlib import Path

from captioning.data.flickr8k import Flickr8k
from captioning.training.inputs import Splits, _load_bundle, bundle_features, peak_rss_mb
from captioning.training.rundirs import RunDir, fingerprint
from captioning.training.settings import (
    FeatureSettings,
    OptionError,
    PipelineSettings,
    TrainSettings,
    Workspace,
)


def _scst_summary(scst: dict) -> dict:
    return {"from": scst.get("from"), "best_epoch": scst.get("best_epoch"),
            "start_dev_cider": (scst.get("start_dev") or {}).get("cider"), "best_dev_cider": scst.get("best_dev_cider")}


def finetune_scst(ws: Workspace, settings: TrainSettings, pipeline: PipelineSettings, features: FeatureSettings,
                  ds: Flickr8k, names: Splits) -> Path:
    """Fine-tune a trained bundle's decoder with self-critical sequence training on CIDEr-D
    (captioning.training.scst)."""
    import numpy as np

    from captioning.artifacts.bundle import save_bundle, save_index
    from captioning.artifacts.manifest import SCSTInfo, manifest_entries
    from captioning.data.text import tokenize
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import coco_scores
    from captioning.models.stepper import StepDecoder
    from captioning.training.scst import SCSTConfig, finetune

    source_path = pipeline.source
    source = _load_bundle(source_path, load_results=False)
    if source.members:
        raise OptionError(f"{source_path} is an ensemble; fine-tune each member bundle with scst, then rebuild the "
                          f"ensemble with: python train.py ensemble --members ... --out {ws.out}")
    if Path(ws.bundle).resolve() == Path(source_path).resolve():
        raise OptionError("scst writes a new bundle: give {out} a folder other than {source}")
    config = SCSTConfig.from_settings(settings)
    spatial = source.uses_spatial
    train_names, dev_names = names["train"], names["dev"]
    cache, _ = bundle_features(ws, features, source, ds, {"train": train_names, "dev": dev_names})
    load = cache.rows if spatial else cache.load           # spatial maps stay on disk, read a batch at a time
    train_feats, dev_feats = load(train_names, spatial), cache.load(dev_names, spatial)
    train_refs = [[tokenize(c) for c in ds.captions[n]] for n in train_names]
    dev_refs = ds.references(dev_names)
    decoder, vocab = source.decoder, source.vocab
    memory = policy = None
    if getattr(decoder, "uses_memory", False):       # a retrieval decoder reads the datastore, never its own photo
        from captioning.training.scst_retrieval import LeaveOneOutMemory, RetrievalPolicy

        if source.index is None:
            raise OptionError(f"{source_path} has a retrieval decoder but no datastore; rebuild its index with: "
                              f"python train.py index --out {source_path}")
        memory = LeaveOneOutMemory(source.index, train_names)
        policy = RetrievalPolicy.over(memory)
    print(f"scst: fine-tuning {source_path} ({decoder.kind}) on {len(train_names)} training images, "
          f"{config.samples} samples each; dev {len(dev_names)} images picks the best epoch")

    def key(width: int) -> str:                               # "greedy", "beam5": the dev scores' prefixes
        return DecodeConfig(beam_width=width).describe().replace(" ", "")

    def evaluate_dev(model) -> dict:
        steps = source.step_decoder() if memory is not None else StepDecoder(model)   # the same model object
        out = {}
        for width in sorted({1, config.select_beam}):
            hyps = [n[0].words for n in decode(steps, dev_feats, vocab,
                                               DecodeConfig(beam_width=width, max_length=source.max_length))]
            coco, _, _ = coco_scores(dev_refs, hyps, meteor=False)
            label = key(width)
            out.update({f"{label}_cider": round(coco["cider"], 4), f"{label}_bleu_4": round(coco["coco_bleu_4"], 4),
                        f"{label}_bleu_1": round(coco["coco_bleu_1"], 4),
                        f"{label}_length": round(float(np.mean([len(h) for h in hyps])), 2)})
        out["cider"] = out[f"{key(config.select_beam)}_cider"]
        return out

    run = RunDir(ws.runs_dir() / (Path(ws.bundle).name + "-scst-run"))
    # More epochs or patience extend a run (rerun with a higher epochs); other settings start afresh.
    settings_key = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")}
    if run.claim(fingerprint(settings_key, source.manifest.files, ws.limit)):
        print(f"scst: settings or source changed since the checkpoints in {run.path}; starting afresh")
    state = finetune(decoder, vocab, train_feats, train_refs, evaluate_dev, config, run.path, progress=not ws.quiet,
                     policy=policy)
    manifest = source.manifest.inherit("trained_as", "command")
    manifest.update(manifest_entries(
        scst=SCSTInfo.create(source=source.manifest.trained_as or source.name, config=config.to_dict(),
                             reward="CIDEr-D (document frequencies of the training references)",
                             baseline="mean reward of the image's other samples", start_dev=state.get("start_dev"),
                             best_epoch=state["best_epoch"], best_dev_cider=state["best_dev_cider"],
                             epochs=[state["epochs"][k] for k in sorted(state["epochs"], key=int)],
                             peak_rss_mb=peak_rss_mb()),
        command=f"python train.py scst --from {source_path} --out {ws.bundle}"))
    path = save_bundle(ws.out, decoder, vocab, manifest)
    if memory is not None:                            # the datastore goes with the decoder that reads it
        save_index(path, source.index)
    print(f"scst: best epoch {state['best_epoch']} (dev CIDEr-D {state['best_dev_cider']:.4f}, "
          f"from {state['start_dev']['cider']:.4f}); bundle {ws.bundle} (once evaluated)")
    return path
