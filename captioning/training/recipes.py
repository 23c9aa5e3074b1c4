"""Recipes: make sure features exist, train a decoder, fine-tune it with SCST, build an ensemble, evaluate a
bundle, sweep its decoding, build its retrieval index; and :func:`run`, which chains them for one command.

Each takes the typed settings of :mod:`captioning.training.settings` (no argparse here): ``train.py`` parses its command
line into a :class:`~captioning.training.settings.RunConfig` and calls :func:`run`. Errors are :class:`DataError` (the
user can fix them; :class:`~captioning.training.settings.OptionError` when a setting is at fault).
"""
from __future__ import annotations

import dataclasses
import resource
import shutil
import time
import uuid
from pathlib import Path

from captioning.artifacts.bundle import replace_folder
from captioning.data.datasets import load_dataset
from captioning.data.flickr8k import DataError, Flickr8k, download
from captioning.training.rundirs import RunDir, fingerprint
from captioning.training.settings import (
    EvaluateSettings,
    FeatureSettings,
    OptionError,
    PipelineSettings,
    RunConfig,
    TrainSettings,
    Workspace,
)
from captioning.vision.encoders import find_weights, get_spec, weights_hint

CALIBRATION_BEAM = 5            # the app's default decoding: the in-domain levels are calibrated on its captions
Splits = dict[str, list[str]]


def split_names(ds: Flickr8k, limit: int | None) -> Splits:
    """The train / dev / test image names, or ``limit`` images cut 70/15/15 from them."""
    if not limit:
        return {s: ds.split_records(s) for s in ("train", "dev", "test")}
    small = max(1, round(limit * 0.15))
    return {"train": ds.split_records("train", limit - 2 * small), "dev": ds.split_records("dev", small),
            "test": ds.split_records("test", small)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def saved_since(ws: Workspace, since: float) -> bool:
    """Whether a run has finished anything a rerun resumes from (a feature shard or a checkpoint) since ``since``."""
    cache = Path(ws.cache_dir)
    files = [*(cache / "features").glob("*/shard-*.json"), *(cache / "runs").glob("*/**/*")]
    return any(f.is_file() and f.stat().st_mtime >= since for f in files)


# --- features ---------------------------------------------------------------------------------------------
def ensure_features(ws: Workspace, settings: FeatureSettings, ds: Flickr8k, names: Splits) -> dict:
    """Extract and cache the features of every image in ``names`` not cached yet (this shard's slice only)."""
    from captioning.vision.encoders import build_encoder
    from captioning.vision.features import BadImageError, FeatureCache, extract_features, shard_slice

    spec = get_spec(settings.encoder, settings.alpha)
    wanted = {n: ds.image_path(n) for split in names.values() for n in split}
    shards, index = settings.num_shards, settings.shard_index
    writer = f"w{index}of{shards}" if shards > 1 else None
    cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key, writer=writer)
    if writer:       # this machine's disjoint slice; the others fill the rest of the same cache
        wanted = {n: wanted[n] for n in shard_slice(list(wanted), shards, index, settings.feature_batch_size)}
        print(f"features: slice {index} of {shards} (0-based): {len(wanted)} images")
    todo = cache.missing(list(wanted), settings.spatial)
    if not todo:
        print(f"features: all {len(wanted)} images already cached for {spec.key}")
        return {"images": 0, "cached": len(wanted), "seconds": 0.0, "weights_source": None}
    encoder, source = build_encoder(spec, settings.weights, spatial=settings.spatial)
    print(f"features: {len(todo)} of {len(wanted)} images to extract with {spec.key} (weights: {source})")
    try:
        stats = extract_features(encoder, spec, wanted, cache, batch_size=settings.feature_batch_size,
                                 spatial=settings.spatial, progress=not ws.quiet, shard_size=settings.shard_size,
                                 skip_bad=settings.skip_bad_images)
    except BadImageError as exc:
        raise OptionError(f"{exc} Fix or remove it, or pass {{skip_bad_images}} to leave out every photo that "
                          f"cannot be read (they are listed at the end)") from None
    stats["weights_source"] = source
    if stats["skipped"]:
        left_out = {name for name, _ in stats["skipped"]}
        for split in names.values():                 # the rest of the run works without them
            split[:] = [n for n in split if n not in left_out]
        ws.skipped_images.extend(str(ds.image_path(n)) + f": {why}" for n, why in stats["skipped"])
        print(f"features: left out {len(left_out)} photos that cannot be read (listed at the end)")
    print(f"features: {stats['images']} images in {stats['seconds']:.0f}s "
          f"({stats['images_per_second']:.1f} img/s)")
    return stats


def bundle_features(ws: Workspace, settings: FeatureSettings, bundle, ds: Flickr8k, names: Splits,
                    pooled: Splits | None = None):
    """The feature cache of a bundle's encoder, holding what its decoders read for ``names`` (spatial maps for
    attention) and pooled vectors for ``pooled``; missing ones are extracted first. A cross-encoder ensemble's
    other encoders get their features for ``names`` too (read them with :func:`decoder_inputs`); the cache
    returned is the bundle's own encoder's (the retrieval index reads it)."""
    from captioning.vision.features import FeatureCache

    first = None
    for i, enc in enumerate(bundle.encoders):
        spec = get_spec(enc.name, enc.alpha)
        spatial = bundle.spatial_for(spec.key)
        cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key)
        wanted = [n for split in names.values() for n in split]
        extra = (pooled or {}) if i == 0 else {}
        plain = [n for split in extra.values() for n in split]
        if cache.missing(plain) or cache.missing(wanted, spatial):
            own = dataclasses.replace(settings, encoder=spec.name, alpha=spec.alpha,
                                      spatial=settings.spatial or spatial)
            ensure_features(ws, own, ds, {**extra, **names})
        first = first or (cache, spec)
    return first


def decoder_inputs(ws: Workspace, bundle, names: list[str]):
    """What the bundle's decoders read for ``names`` from the feature cache: one array (spatial maps when any
    decoder attends), or :class:`~captioning.models.stepper.MultiFeatures` for a cross-encoder ensemble. Call
    :func:`bundle_features` first: it extracts what is missing."""
    from captioning.models.stepper import MultiFeatures
    from captioning.vision.features import FeatureCache

    root = Path(ws.cache_dir) / "features"
    keys = list(dict.fromkeys(bundle.decoder_keys))
    if len(keys) == 1:
        return FeatureCache(root, keys[0]).load(names, bundle.uses_spatial)
    return MultiFeatures({key: FeatureCache(root, key).load(names, bundle.spatial_for(key)) for key in keys})


def _load_bundle(path: str, **kwargs):
    from captioning.artifacts.bundle import BundleError, load_bundle

    try:
        return load_bundle(path, **kwargs)
    except BundleError as exc:
        raise DataError(str(exc)) from None


# --- checks before work -----------------------------------------------------------------------------------
def check_before_work(config: RunConfig, ds: Flickr8k | None, names: Splits | None) -> None:
    """What can be checked before minutes of work: the bundle to read, a checkpoint to finish, the vocabulary."""
    from captioning.artifacts.bundle import BundleError, read_manifest

    ws, tr = config.workspace, config.train
    if config.command in ("evaluate", "sweep"):
        try:
            read_manifest(ws.out)
        except BundleError as exc:
            raise OptionError(f"{{out}}: {exc}") from None
    if tr.finish and config.command in ("all", "train"):
        best = RunDir(train_run_dir(ws)).best_path
        if not best.is_file():
            raise OptionError(f"{{finish}}: no checkpoint for {Path(ws.bundle).name} in {best.parent} yet; train "
                              f"at least one epoch first (run the same command without {{finish}})")
    if ds is not None and config.command in ("all", "train"):
        from collections import Counter

        from captioning.data.text import tokenize

        counts = Counter(w for n in names["train"] for c in ds.captions[n] for w in tokenize(c))
        word, top = counts.most_common(1)[0]
        if tr.min_count > top:
            raise OptionError(f"{{min_count}} {tr.min_count} is above every word's count in the "
                              f"{len(names['train'])} training images (the most frequent, '{word}', appears {top} "
                              f"times); use {{min_count}} between 1 and {top}")


def train_run_dir(ws: Workspace) -> Path:
    return ws.runs_dir() / Path(ws.bundle).name


# --- train ------------------------------------------------------------------------------------------------
def train_decoder(ws: Workspace, settings: TrainSettings, features: FeatureSettings, ds: Flickr8k, names: Splits,
                  feature_stats: dict | None = None) -> Path | None:
    """Fit a decoder on cached features (resumable) and write the bundle at ``ws.out``; None on a multi-worker
    run's non-chief worker (the chief writes the bundle)."""
    import keras
    import numpy as np

    from captioning.artifacts.bundle import save_bundle
    from captioning.data.embeddings import EmbeddingsError, load_word_vectors
    from captioning.data.text import Vocabulary, tokenize
    from captioning.models.decoders import build_decoder
    from captioning.training.fit import (
        MAX_TOKENS,
        TrainConfig,
        encode_captions,
        fit,
        make_dataset,
        make_strategy,
        worker_role,
        worker_run_dir,
    )
    from captioning.vision.features import FeatureCache

    spec = get_spec(features.encoder, features.alpha)
    cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key)
    spatial = settings.spatial
    config = TrainConfig(embed_dim=settings.embed_dim, units=settings.units_for(), dropout=settings.dropout,
                         learning_rate=settings.learning_rate, batch_size=settings.batch_size, epochs=settings.epochs,
                         patience=settings.patience, min_count=settings.min_count, seed=settings.seed,
                         label_smoothing=settings.label_smoothing, lr_decay=settings.lr_decay,
                         max_words=settings.max_words)
    if settings.embeddings:
        config.embeddings = Path(settings.embeddings).name

    def pairs(split):
        split_names = names[split]
        caps = [(i, tokenize(c)) for i, n in enumerate(split_names) for c in ds.captions[n]]
        return split_names, np.array([i for i, _ in caps]), [w for _, w in caps]

    train_names, train_idx, train_caps = pairs("train")
    dev_names, dev_idx, dev_caps = pairs("dev")
    vocab = Vocabulary.build(train_caps, config.min_count)
    embedding_matrix = None
    if settings.embeddings:
        try:
            embedding_matrix, found = load_word_vectors(settings.embeddings, vocab, seed=config.seed)
        except EmbeddingsError as exc:
            raise DataError(str(exc)) from None
        config.embed_dim = int(embedding_matrix.shape[1])
        print(f"embeddings: {found:,} of {len(vocab) - 4:,} words found in {settings.embeddings} "
              f"({config.embed_dim}-d; the embedding size follows them)")
    # --max-words cuts the training captions only: dev loss stays on whole captions, comparable across settings.
    train_tokens = encode_captions(train_caps, vocab, config.max_words + 2 if config.max_words else MAX_TOKENS)
    dev_tokens = encode_captions(dev_caps, vocab)
    if config.max_words:
        cut = sum(len(c) > config.max_words for c in train_caps)
        print(f"train: {cut} of {len(train_caps)} training captions cut to {config.max_words} words")
    try:
        # Spatial maps stay on disk and are read a batch at a time; pooled vectors are small enough to hold.
        load = cache.rows if spatial else cache.load
        train_feats, dev_feats = load(train_names, spatial), load(dev_names, spatial)
    except KeyError as exc:
        raise DataError(str(exc).strip('"')) from None
    print(f"train: {len(train_names)} images / {len(train_caps)} captions, dev: {len(dev_names)} images; "
          f"vocabulary {len(vocab)} words (min count {config.min_count}, coverage "
          f"{vocab.coverage(train_caps):.1%})")

    extra = {"attention_dim": settings.attention_dim, "alpha_c": settings.alpha_c} if spatial else {}
    if settings.decoder == "topdown":
        extra = {"attention_dim": settings.attention_dim}    # no doubly stochastic term in Anderson et al.
    strategy = make_strategy(settings.strategy, settings.peer_timeout)
    chief, worker = worker_role(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        decoder = build_decoder(settings.decoder, vocab_size=len(vocab), feature_dim=spec.feature_dim,
                                embed_dim=config.embed_dim, units=config.units, dropout=config.dropout, **extra)
        decoder.init_output_bias(np.bincount(train_tokens[:, 1:].ravel(), minlength=len(vocab)).astype("float64"))
        if embedding_matrix is not None:
            decoder.init_embeddings(embedding_matrix)
    run = RunDir(train_run_dir(ws))
    key = fingerprint(config.fingerprint_dict(), spec.key, settings.decoder, extra, len(vocab), ws.limit)
    stale = run.changed(key)
    if chief:
        if stale:
            print(f"train: settings changed since the checkpoints in {run.path}; starting afresh")
        run.claim(key)
    # Other workers checkpoint into a scratch folder, seeded from the chief's (shared) last checkpoint.
    run_dir = worker_run_dir(run.path, chief, worker, seed=not stale)

    # Several replicas split each batch; equal batches keep their gradients the same shape.
    even = strategy.num_replicas_in_sync > 1
    train_ds = make_dataset(train_feats, train_idx, train_tokens, config.batch_size, shuffle=True, seed=config.seed,
                            drop_remainder=even)
    dev_ds = make_dataset(dev_feats, dev_idx, dev_tokens, strategy.num_replicas_in_sync * 8 if even else 256,
                          shuffle=False, drop_remainder=even)
    with strategy.scope():
        state = fit(decoder, train_ds, dev_ds, config, run_dir, verbose=0 if ws.quiet else 2, finish=settings.finish)
    epochs = [state["epochs"][k] for k in sorted(state["epochs"], key=int)]
    if not chief:
        print(f"train: worker {worker} done; the chief writes the bundle (this worker's checkpoints: {run_dir})")
        return None
    if not epochs or state.get("best_epoch") is None:
        raise OptionError(f"train: no epoch finished, so there is no trained decoder to save; {ws.out} is left as "
                          f"it was. Run again without {{finish}} to train.")
    feature_stats = feature_stats or {}
    weights_file = find_weights(spec, features.weights)
    previous = _previous_encoder(ws.bundle)
    manifest = {
        "encoder": {"name": spec.name, "alpha": spec.alpha, "input_size": spec.input_size, "key": spec.key,
                    "feature_dim": spec.feature_dim, "spatial_grid": spec.spatial_grid if spatial else None,
                    "weights_source": feature_stats.get("weights_source") or previous.get(
                        "weights_source", "unknown (features were cached by an earlier run)"),
                    # A hint, verified by checksum, so captioning finds the same file without --weights.
                    "weights_file": weights_hint(weights_file) if weights_file else previous.get("weights_file")},
        "min_count": config.min_count,
        "max_length": int(min(train_tokens.shape[1] - 1, 40)),
        "data": {"dataset": ds.name, "limit": ws.limit,
                 "splits": {k: len(v) for k, v in names.items()}, "train_captions": len(train_caps)},
        "training": {"config": config.to_dict(), "strategy": settings.strategy,
                     "replicas": strategy.num_replicas_in_sync, "epochs_run": len(epochs),
                     "best_epoch": state["best_epoch"],
                     "best_val_loss": state["best_val_loss"], "epochs": epochs,
                     "feature_seconds": round(feature_stats.get("seconds", 0.0), 1),
                     "feature_images": feature_stats.get("images", 0),
                     "peak_rss_mb": peak_rss_mb()},
    }
    path = save_bundle(ws.out, decoder, vocab, manifest)
    if ws.bundle == ws.out:
        when = ""
    else:
        when = " (replaces the old one once evaluated)" if Path(ws.bundle).exists() else " (once evaluated)"
    print(f"train: best epoch {state['best_epoch']} (val loss {state['best_val_loss']:.4f}); bundle {ws.bundle}"
          f"{when}")
    return path


def _previous_encoder(out: str) -> dict:
    """The encoder entries (weights source and file hint) of the bundle a run replaces, as far as it has them."""
    from captioning.artifacts.manifest import previous_encoder

    return previous_encoder(out)


# --- ensemble and SCST ------------------------------------------------------------------------------------
def build_ensemble(ws: Workspace, members: list[str] | None) -> Path:
    """One bundle whose decoding averages the next-word probabilities of every member bundle's decoders.

    Members may read different encoders (a cross-encoder ensemble): the first member's encoder is the bundle's,
    every decoder that reads another keeps that encoder's block in the manifest."""
    from captioning.artifacts.bundle import check_pick, save_bundle, split_pick
    from captioning.artifacts.manifest import encoder_key

    too_few = OptionError("ensemble needs {members} with at least two trained bundles, e.g. {members} "
                          "artifacts/default artifacts/xception-merge (or decoders of one: artifacts/default@1,3)")
    if not members:
        raise too_few
    bundles, picks = [], []
    for m in members:           # BUNDLE or BUNDLE@1,3 (some decoders of an ensemble bundle)
        try:
            path, indices = split_pick(m)
            bundle = _load_bundle(path, load_results=False)
            picks.append(check_pick(m, indices, len(bundle.decoders)))
        except ValueError as exc:
            raise OptionError(f"{{members}} {exc}") from None
        bundles.append(bundle)
    first = bundles[0]
    if picks[0][0] != 0:
        raise OptionError(f"{{members}} {members[0]}: the first member's first decoder must come first (the "
                          f"bundle takes its encoder and training record), e.g. {split_pick(members[0])[0]}@1,...")
    for path, b in zip(members[1:], bundles[1:]):
        if b.vocab.itos != first.vocab.itos:
            raise OptionError(f"{path} has another vocabulary than {members[0]}: retrain it with the same "
                              f"{{min_count}} on the same training split")
    if len(sum(picks, [])) < 2:
        raise too_few
    decoders = [b.decoders[i] for b, pick in zip(bundles, picks) for i in pick]
    encoders = [b.manifest.decoder_encoders[i] for b, pick in zip(bundles, picks) for i in pick]
    primary = encoder_key(first.encoder)
    member_encoders = [None if encoder_key(e) == primary else dict(e.raw) for e in encoders[1:]]
    manifest = {k: v for k, v in first.manifest.raw.items()
                if k not in ("files", "members", "name", "created", "versions")}
    manifest["max_length"] = max(b.max_length for b in bundles)
    manifest["ensemble_of"] = [_ensemble_parts(b)[i] for b, pick in zip(bundles, picks) for i in pick]
    manifest["command"] = "python train.py ensemble --members " + " ".join(members) + f" --out {ws.bundle}"
    path = save_bundle(ws.out, decoders[0], first.vocab, manifest, members=decoders[1:],
                       member_encoders=member_encoders)
    kinds = ", ".join(d.kind for d in decoders)
    keys = list(dict.fromkeys(encoder_key(e) for e in encoders))
    across = f" over {len(keys)} encoders ({', '.join(keys)})" if len(keys) > 1 else ""
    print(f"ensemble: {len(decoders)} decoders ({kinds}){across}; bundle {ws.bundle} (once evaluated)")
    return path


def _ensemble_parts(bundle) -> list[dict]:
    """Where each of a member bundle's decoders came from; a member that is itself an ensemble passes on its
    own parts (so an ensemble of ``default`` and a new decoder still names the bundles behind ``default``)."""
    keys = bundle.decoder_keys
    parts = bundle.manifest.ensemble_of
    if parts and len(parts) == len(keys):
        return [{**part, "encoder": key} for part, key in zip(parts, keys)]
    return [{"bundle": bundle.manifest.trained_as or bundle.name, "kind": d.kind, "encoder": key,
             "training": bundle.manifest.training_config,
             **({"scst": _scst_summary(bundle.manifest.scst)} if bundle.manifest.scst else {})}
            for d, key in zip(bundle.decoders, keys)]


def _scst_summary(scst: dict) -> dict:
    return {"from": scst.get("from"), "best_epoch": scst.get("best_epoch"),
            "start_dev_cider": (scst.get("start_dev") or {}).get("cider"), "best_dev_cider": scst.get("best_dev_cider")}


def finetune_scst(ws: Workspace, settings: TrainSettings, pipeline: PipelineSettings, features: FeatureSettings,
                  ds: Flickr8k, names: Splits) -> Path:
    """Fine-tune a trained bundle's decoder with self-critical sequence training on CIDEr-D
    (captioning.training.scst)."""
    import numpy as np

    from captioning.artifacts.bundle import save_bundle
    from captioning.data.text import tokenize
    from captioning.decoding.search import DecodeConfig, decode
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
    config = SCSTConfig(learning_rate=settings.learning_rate, epochs=settings.epochs, patience=settings.patience,
                        batch_size=settings.batch_size, samples=pipeline.samples, seed=settings.seed)
    spatial = source.uses_spatial
    train_names, dev_names = names["train"], names["dev"]
    cache, _ = bundle_features(ws, features, source, ds, {"train": train_names, "dev": dev_names})
    load = cache.rows if spatial else cache.load           # spatial maps stay on disk, read a batch at a time
    train_feats, dev_feats = load(train_names, spatial), cache.load(dev_names, spatial)
    train_refs = [[tokenize(c) for c in ds.captions[n]] for n in train_names]
    dev_refs = ds.references(dev_names)
    decoder, vocab = source.decoder, source.vocab
    print(f"scst: fine-tuning {source_path} ({decoder.kind}) on {len(train_names)} training images, "
          f"{config.samples} samples each; dev {len(dev_names)} images picks the best epoch")

    def key(width: int) -> str:                               # "greedy", "beam5": the dev scores' prefixes
        return DecodeConfig(beam_width=width).describe().replace(" ", "")

    def evaluate_dev(model) -> dict:
        steps = StepDecoder(model)
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
    state = finetune(decoder, vocab, train_feats, train_refs, evaluate_dev, config, run.path, progress=not ws.quiet)
    manifest = {k: v for k, v in source.manifest.raw.items()
                if k not in ("files", "name", "created", "versions", "trained_as", "command")}
    manifest["scst"] = {"from": source.manifest.trained_as or source.name, "config": config.to_dict(),
                        "reward": "CIDEr-D (document frequencies of the training references)",
                        "baseline": "mean reward of the image's other samples",
                        "start_dev": state.get("start_dev"), "best_epoch": state["best_epoch"],
                        "best_dev_cider": state["best_dev_cider"],
                        "epochs": [state["epochs"][k] for k in sorted(state["epochs"], key=int)],
                        "peak_rss_mb": peak_rss_mb()}
    manifest["command"] = f"python train.py scst --from {source_path} --out {ws.bundle}"
    path = save_bundle(ws.out, decoder, vocab, manifest)
    print(f"scst: best epoch {state['best_epoch']} (dev CIDEr-D {state['best_dev_cider']:.4f}, "
          f"from {state['start_dev']['cider']:.4f}); bundle {ws.bundle} (once evaluated)")
    return path


# --- evaluate and sweep -----------------------------------------------------------------------------------
def evaluate_bundle(ws: Workspace, settings: EvaluateSettings, features: FeatureSettings, ds: Flickr8k,
                    names: Splits) -> list[dict]:
    """Score the bundle at ``ws.out`` on a split with every decoding run; rewrites metrics.json and
    predictions.csv (keeping the dev sweep and the metric-vs-human agreement it does not recompute)."""
    from captioning.artifacts.bundle import BundleError, read_metrics, update_results
    from captioning.decoding.search import DecodeConfig, parse_spec
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


def strategy_table(results: list[dict]) -> str:
    """Quality and diversity of each decoding run, one line each (what `evaluate` prints)."""
    cols = [("BLEU-1", "bleu_1", 3), ("BLEU-4", "bleu_4", 3), ("CIDEr-D", "cider", 3), ("METEOR", "meteor", 3),
            ("distinct", "distinct_captions", 3), ("vocab", "vocab_used", 0), ("novel", "novel_fraction", 3),
            ("dist-2", "distinct_2", 3), ("self-BLEU", "self_bleu_4", 3), ("oracle CIDEr-D", "oracle_cider", 3)]
    width = max(len(r.get("label", r["decoding"])) for r in results) + 2
    lines = [f"{'decoding':<{width}}" + " ".join(f"{head:>{max(len(head), 6)}}" for head, _, _ in cols)]
    for r in results:
        cells = [(f"{r[key]:.{digits}f}" if key in r else "-").rjust(max(len(head), 6)) for head, key, digits in cols]
        lines.append(f"{r.get('label', r['decoding']):<{width}}" + " ".join(cells))
    return "\n".join(lines)


def sweep_bundle(ws: Workspace, features: FeatureSettings, ds: Flickr8k, names: Splits) -> list[dict]:
    """Beam widths 1, 2, 3, 5, 10 and length penalties 0..2 on the dev split, stored in metrics.json."""
    from captioning.artifacts.bundle import update_results
    from captioning.decoding.search import DecodeConfig
    from captioning.evaluation.runs import decoding_sweep

    bundle = _load_bundle(ws.out)
    dev = names["dev"]
    bundle_features(ws, features, bundle, ds, {"dev": dev})
    rows = decoding_sweep(bundle.step_decoder(), bundle.vocab, decoder_inputs(ws, bundle, dev),
                          ds.references(dev), DecodeConfig(max_length=bundle.max_length), progress=not ws.quiet)
    metrics = bundle.metrics or {"results": []}
    metrics["sweep"] = rows
    update_results(ws.out, metrics, bundle.predictions)
    print(f"\nsweep on dev ({len(dev)} images)\n{'beam':>4} {'lp':>4} {'BLEU-4':>7} {'CIDEr':>7} {'length':>6}")
    for r in rows:
        print(f"{r['beam_width']:>4} {r['length_penalty']:>4} {r['bleu_4']:7.4f} {r['cider']:7.4f} "
              f"{r['mean_length']:6.2f}")
    return rows


# --- retrieval index --------------------------------------------------------------------------------------
def build_retrieval_index(ws: Workspace, features: FeatureSettings, ds: Flickr8k, names: Splits) -> dict:
    """Index the training photos' pooled features into the bundle and calibrate the in-domain levels on dev
    (the score depends on the photo alone; dev beam-5 captions' per-image CIDEr-D only fill the report); the
    test split's levels are checked and stored beside them. A bundle whose index already covers exactly these
    training photos with its encoder keeps its vectors (only the calibration is redone, so no training-photo
    features are needed)."""
    import numpy as np

    from captioning.artifacts.bundle import BundleError, read_index, save_index
    from captioning.decoding.search import DecodeConfig, decode
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


def evaluated_scores(out: str, names: list[str], beam: int):
    """(per-image CIDEr-D, mean log-prob per token) of the bundle's evaluated beam captions for ``names``, from
    predictions.csv (what ``evaluate`` just scored, so not decoded twice), or None when it lacks them."""
    from captioning.artifacts.manifest import EvaluationReport

    predictions = EvaluationReport.read_predictions_loosely(out)
    if predictions is None or not {"log_prob", "cider"} <= set(predictions.columns):
        return None
    rows = predictions[predictions["beam_width"] == beam].drop_duplicates("image").set_index("image")
    if not set(names) <= set(rows.index):
        return None
    rows = rows.loc[names]
    tokens = rows["caption"].str.split().str.len() + 1            # the words and <end>
    return rows["cider"].to_numpy(float), (rows["log_prob"].astype(float) / tokens).to_numpy()


# --- one command ------------------------------------------------------------------------------------------
def run(config: RunConfig) -> Path | None:
    """Run one command's steps in order. ``all``, ``ensemble`` and ``scst`` build, evaluate and sweep in a hidden
    sibling folder of the same name; the bundle at ``out`` is replaced only when all of that has succeeded, so
    no typo or crash can leave it half-made. Returns the bundle (None when the command writes none)."""
    ws, command, pipe = config.workspace, config.command, config.pipeline
    if command == "download":
        if not ws.data_dir:
            raise OptionError("download needs {data_dir} DIR (where to put Flickr8k)")
        print(f"Flickr8k ready in {download(ws.data_dir, progress=not ws.quiet)}")
        return None
    if command in ("finetune", "import-check"):            # a user's own photos: captioning.training.finetune
        from captioning.training.finetune import finetune, import_check

        if command == "import-check":
            import_check(config)
            return None
        return finetune(config)
    check_before_work(config, None, None)
    if config.user_data.captions:                       # training from scratch on a user's captioned photos
        from captioning.training.finetune import user_records

        ds = user_records(config)
        config.evaluate.no_human = True                 # the expert judgments are of Flickr8k's photos
        names = {s: ds.split_records(s, None) for s in ("train", "dev", "test")}
    else:
        ds = load_dataset(ws.dataset, ws.data_dir)
        names = split_names(ds, ws.limit)
    check_before_work(config, ds, names)
    staging = None
    try:
        if command in ("all", "ensemble", "scst"):
            target = Path(ws.out)
            for stale in target.parent.glob(f".{target.name}.building-*"):   # left by a killed run (SIGKILL)
                shutil.rmtree(stale, ignore_errors=True)
            staging = target.parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"
            ws.final_out, ws.out = str(target), str(staging / target.name)
        feature_stats = None
        if command in ("all", "features"):
            settings = dataclasses.replace(config.features, spatial=config.features.spatial or config.train.spatial)
            feature_stats = ensure_features(ws, settings, ds, names)
        if command in ("all", "train") and \
                train_decoder(ws, config.train, config.features, ds, names, feature_stats) is None:
            return None                                     # a multi-worker run's non-chief worker: done
        if command == "ensemble":
            build_ensemble(ws, pipe.members)
        if command == "scst":
            finetune_scst(ws, config.train, pipe, config.features, ds, names)
        if command in ("all", "evaluate", "ensemble", "scst"):
            evaluate_bundle(ws, config.evaluate, config.features, ds, names)
        if command in ("all", "sweep", "ensemble", "scst") and not (command != "sweep" and pipe.no_sweep):
            sweep_bundle(ws, config.features, ds, names)
        if command == "index" or (command in ("all", "ensemble", "scst") and not pipe.no_index):
            if len(names["dev"]) < 2:             # a small user dataset: nothing to calibrate the levels on
                print(f"index: skipped (its levels are calibrated on the dev photos; there are {len(names['dev'])})")
            else:
                build_retrieval_index(ws, config.features, ds, names)
        if staging is not None:
            replace_folder(Path(ws.out), Path(ws.final_out))   # the old bundle goes only now
            print(f"bundle {ws.final_out} is complete (trained and evaluated)")
        return Path(ws.bundle)
    finally:
        if ws.skipped_images:
            print(f"left out {len(ws.skipped_images)} photos that cannot be read:")
            for line in ws.skipped_images:
                print(f"  {line}" if line.isprintable() else f"  {line!r}")   # a newline in a name stays one line
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
