#!/usr/bin/env python
"""Training speed: this project's whole-caption training vs the seed tutorials' (image, prefix) -> word pairs.

Same merge model size (embedding and LSTM 256, dropout 0.5), same images, same vocabulary, same Adam, early
stopping on validation loss with the same patience. The seed way (seed 001's X1/X2/y arrays) expands every
caption into one training pair per word: the photo's features, the left-padded prefix, and the next word as
a one-hot vector, trained with categorical cross-entropy; it is decoded the seed way too (the whole model
re-run on the padded prefix for every word). Ours trains on whole captions (teacher forcing, masked sparse
cross-entropy, batches trimmed to their longest caption) and decodes step-wise. Both losses average the same
next-word predictions, so their validation losses compare directly.

    python bench/training.py [--train-images 2000] [--dev-images 500] [--epochs 10] [--json out.json]
    python bench/training.py --quick     # MobileNetV2-0.35 features of 150 images, 3 epochs (under 3 min)

Needs the encoder's features in .cache/features (python train.py features --encoder xception), except with
--quick, which extracts what it needs into a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_MOBILENET = Path(__file__).resolve().parents[2] / "shared" / "weights" / \
    "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"


def pair_arrays(features: np.ndarray, image_index: np.ndarray, tokens: np.ndarray, vocab_size: int):
    """Seed 001's X1 (photo), X2 (left-padded prefix), y (one-hot next word): one row per word of a caption."""
    import keras

    width = tokens.shape[1] - 1
    x1, x2, y = [], [], []
    for img, row in zip(image_index, tokens):
        ids = row[row > 0]
        for t in range(1, len(ids)):
            prefix = np.zeros(width, np.int32)
            prefix[width - t:] = ids[:t]
            x1.append(img)
            x2.append(prefix)
            y.append(ids[t])
    return (features[np.array(x1)].astype(np.float32), np.stack(x2),
            keras.utils.to_categorical(np.array(y), vocab_size).astype(np.float32))


def seed_model(vocab_size: int, feature_dim: int, width: int, units: int = 256, dropout: float = 0.5):
    """The seeds' merge model, exactly as the tutorials build it."""
    import keras
    from keras import layers

    photo = keras.Input((feature_dim,))
    fe = layers.Dense(units, activation="relu")(layers.Dropout(dropout)(photo))
    prefix = keras.Input((width,))
    se = layers.LSTM(units)(layers.Dropout(dropout)(layers.Embedding(vocab_size, units, mask_zero=True)(prefix)))
    out = layers.Dense(vocab_size, activation="softmax")(layers.Dense(units, activation="relu")(layers.add([fe, se])))
    model = keras.Model([photo, prefix], out)
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(1e-3))
    return model


def seed_greedy(model, feature: np.ndarray, vocab, width: int, max_length: int) -> list[str]:
    ids = [vocab.start_id]
    for _ in range(max_length):
        prefix = np.zeros((1, width), np.int32)
        prefix[0, width - len(ids):] = ids[-width:]
        probs = model((feature[None], prefix), training=False).numpy()[0]
        probs[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = 0
        word = int(probs.argmax())
        if word == vocab.end_id:
            break
        ids.append(word)
    return vocab.decode(ids)


class EpochTimer:
    """Seconds and validation loss of every epoch."""

    def __init__(self):
        import keras

        outer = self
        self.epochs: list[dict] = []

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.epochs.append({"seconds": round(time.perf_counter() - self.t0, 2),
                                     "loss": float(logs["loss"]), "val_loss": float(logs["val_loss"])})

        self.callback = _Callback()


def summary(label: str, epochs: list[dict], bleu: dict, pairs: int) -> dict:
    best = int(np.argmin([e["val_loss"] for e in epochs]))
    return {"method": label, "training_rows": pairs, "epochs_run": len(epochs),
            "seconds_per_epoch": round(float(np.mean([e["seconds"] for e in epochs])), 2),
            "best_epoch": best + 1, "best_val_loss": round(epochs[best]["val_loss"], 4),
            "seconds_to_best": round(sum(e["seconds"] for e in epochs[: best + 1]), 1),
            "val_bleu_1": round(bleu["bleu_1"], 4), "val_bleu_4": round(bleu["bleu_4"], 4), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="xception")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--dev-images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", "../shared/flickr8k"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.alpha = "mobilenetv2", 0.35
        args.weights = args.weights or str(SHARED_MOBILENET)
        args.train_images, args.dev_images, args.epochs = 120, 30, 3

    import keras

    from captioning.data.flickr8k import Flickr8k
    from captioning.data.text import Vocabulary, tokenize
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import corpus_bleu_scores
    from captioning.models.decoders import build_decoder
    from captioning.models.stepper import StepDecoder
    from captioning.training.fit import TrainConfig, encode_captions, fit, make_dataset
    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FeatureCache, extract_features

    ds = Flickr8k.load(args.data_dir, check_images=False)
    spec = get_spec(args.encoder, args.alpha)
    train_names = ds.splits["train"][: args.train_images]
    dev_names = ds.splits["dev"][: args.dev_images]
    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        cache = FeatureCache(Path(tmp.name) / "features", spec.key)
        encoder, _ = build_encoder(spec, args.weights)
        extract_features(encoder, spec, {n: ds.image_path(n) for n in train_names + dev_names}, cache, progress=False)
    else:
        cache = FeatureCache(Path(args.cache_dir) / "features", spec.key)
        missing = cache.missing(train_names + dev_names, False)
        if missing:
            sys.exit(f"{len(missing)} images have no cached {spec.key} features; run: "
                     f"python train.py features --encoder {spec.name}")

    def captions(names):
        caps = [(i, tokenize(c)) for i, n in enumerate(names) for c in ds.captions[n]]
        return np.array([i for i, _ in caps]), [w for _, w in caps]

    train_idx, train_caps = captions(train_names)
    dev_idx, dev_caps = captions(dev_names)
    vocab = Vocabulary.build(train_caps, args.min_count)
    train_tokens, dev_tokens = encode_captions(train_caps, vocab), encode_captions(dev_caps, vocab)
    width = max(train_tokens.shape[1], dev_tokens.shape[1]) - 1
    train_tokens = np.pad(train_tokens, ((0, 0), (0, width + 1 - train_tokens.shape[1])))
    dev_tokens = np.pad(dev_tokens, ((0, 0), (0, width + 1 - dev_tokens.shape[1])))
    train_feats, dev_feats = cache.load(train_names), cache.load(dev_names)
    references = ds.references(dev_names)
    max_length = width
    print(f"{spec.key}: {len(train_names)} train images / {len(train_caps)} captions, {len(dev_names)} dev "
          f"images; vocabulary {len(vocab)}; up to {args.epochs} epochs, patience {args.patience}")

    # Ours: whole captions, teacher forcing, masked sparse cross-entropy.
    config = TrainConfig(embed_dim=256, units=256, dropout=0.5, learning_rate=1e-3, batch_size=args.batch_size,
                         epochs=args.epochs, patience=args.patience, min_count=args.min_count, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    decoder = build_decoder("merge", vocab_size=len(vocab), feature_dim=spec.feature_dim, embed_dim=256, units=256,
                            dropout=0.5)
    decoder.init_output_bias(np.bincount(train_tokens[:, 1:].ravel(), minlength=len(vocab)).astype("float64"))
    train_ds = make_dataset(train_feats, train_idx, train_tokens, args.batch_size, shuffle=True, seed=args.seed)
    dev_ds = make_dataset(dev_feats, dev_idx, dev_tokens, 256, shuffle=False)
    state = fit(decoder, train_ds, dev_ds, config, Path(tmp.name) / "run", verbose=0)
    ours_epochs = [state["epochs"][k] for k in sorted(state["epochs"], key=int)]
    hyps = [n[0].words for n in decode(StepDecoder(decoder), dev_feats.astype(np.float32), vocab,
                                        DecodeConfig(max_length=max_length))]
    ours = summary("ours (whole captions, sparse targets)", ours_epochs, corpus_bleu_scores(references, hyps),
                   len(train_caps))
    print(f"ours: {ours['seconds_per_epoch']} s/epoch, best val loss {ours['best_val_loss']} "
          f"at epoch {ours['best_epoch']}, dev BLEU-4 {ours['val_bleu_4']}")

    # Seed style: one (photo, prefix) -> one-hot word row per word.
    start = time.perf_counter()
    x1, x2, y = pair_arrays(train_feats, train_idx, train_tokens, len(vocab))
    v1, v2, vy = pair_arrays(dev_feats, dev_idx, dev_tokens, len(vocab))
    build_seconds = time.perf_counter() - start
    array_mb = (x1.nbytes + x2.nbytes + y.nbytes + v1.nbytes + v2.nbytes + vy.nbytes) / 2 ** 20
    keras.utils.set_random_seed(args.seed)
    model = seed_model(len(vocab), spec.feature_dim, width)
    timer = EpochTimer()
    stop = keras.callbacks.EarlyStopping(patience=args.patience, restore_best_weights=True)
    model.fit([x1, x2], y, validation_data=([v1, v2], vy), epochs=args.epochs, batch_size=args.batch_size,
              callbacks=[timer.callback, stop], verbose=0)
    hyps = [seed_greedy(model, f, vocab, width, max_length) for f in dev_feats.astype(np.float32)]
    seed = summary("seed style (pair arrays, one-hot targets)", timer.epochs, corpus_bleu_scores(references, hyps),
                   len(y))
    seed.update(array_build_seconds=round(build_seconds, 1), pair_arrays_mb=round(array_mb, 1))
    print(f"seed: {seed['seconds_per_epoch']} s/epoch, best val loss {seed['best_val_loss']} "
          f"at epoch {seed['best_epoch']}, dev BLEU-4 {seed['val_bleu_4']}")

    rows = [ours, seed]
    print(f"\n{'method':<44} {'rows':>7} {'s/epoch':>8} {'best ep':>7} {'s to best':>9} {'val loss':>8} "
          f"{'BLEU-1':>7} {'BLEU-4':>7}")
    for r in rows:
        print(f"{r['method']:<44} {r['training_rows']:>7} {r['seconds_per_epoch']:8.2f} {r['best_epoch']:>7} "
              f"{r['seconds_to_best']:9.1f} {r['best_val_loss']:8.4f} {r['val_bleu_1']:7.4f} {r['val_bleu_4']:7.4f}")
    print(f"epoch speed-up {seed['seconds_per_epoch'] / ours['seconds_per_epoch']:.1f}x, time-to-best speed-up "
          f"{seed['seconds_to_best'] / ours['seconds_to_best']:.1f}x; seed pair arrays {seed['pair_arrays_mb']} MB "
          f"(built in {seed['array_build_seconds']} s); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()}, "rows": rows},
                                              indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
