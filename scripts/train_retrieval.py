"""Train the retrieval-augmented decoder (decoder kind ``retrieval``) on a bundle's training photos and write it
as a bundle whose datastore is the training photos with every caption.

    python scripts/train_retrieval.py --base artifacts/xception-merge --out artifacts/xception-retrieval \\
        --data-dir $FLICKR8K_DIR --cache-dir .cache --epochs 4

The training photos' features are the base bundle's index (pooled, unit rows: the decoder normalises its input,
so they are what it reads at caption time); the dev photos' pooled features come from the feature cache
(``python train.py features``). The merge decoder of ``--base`` warm-starts the shared layers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np  # noqa: E402

from captioning.artifacts.bundle import load_bundle  # noqa: E402
from captioning.artifacts.manifest import read_manifest  # noqa: E402
from captioning.data.flickr8k import Flickr8k  # noqa: E402
from captioning.models.retrieval import RetrievalDecoder, warm_start  # noqa: E402
from captioning.training.picks import check_pick, split_pick  # noqa: E402
from captioning.training.retrieval import (  # noqa: E402
    datastore_index,
    nearest,
    record_new_word_boost,
    tokenised,
    train,
    write_bundle,
)
from captioning.vision.features import FeatureCache  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="artifacts/xception-merge", help="a merge bundle with a retrieval index")
    ap.add_argument("--base-decoder", default=None, metavar="BUNDLE@N",
                    help="warm-start from decoder N of BUNDLE instead of --base's own (a merge decoder on --base's "
                         "encoder and vocabulary, e.g. artifacts/default@2: xception-merge after SCST)")
    ap.add_argument("--out", default="artifacts/xception-retrieval")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=".cache", help="holds features/<encoder>/ with the dev photos")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--neighbours", type=int, default=8, help="memory slots (captions read per photo, at most)")
    ap.add_argument("--caption-tokens", type=int, default=16, help="tokens kept per retrieved caption")
    ap.add_argument("--no-copy", action="store_true", help="train without the copy gate (the ablation)")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--limit", type=int, default=None, help="smoke run: this many training and dev photos")
    ap.add_argument("--no-dev", action="store_true", help="no dev loss (every epoch's model is written)")
    ap.add_argument("--copy-rate", type=float, default=0.5,
                    help="share of training examples with a copy-only target: a word of the caption that the "
                         "retrieved captions hold, hidden from the vocabulary (0: none, the first training's way)")
    ap.add_argument("--gate-bias", type=lambda v: None if v.lower() == "none" else float(v), default=2.0,
                    help="the warm start's copy gate: p_gen = sigmoid(this) everywhere, the memory's context at "
                         "zero, so training starts from the merge decoder ('none': random, the first training's way)")
    ap.add_argument("--unk-gate", action="store_true",
                    help="the copy gate also reads how much attention falls on the memory's unknown words")
    ap.add_argument("--prev-keys", action="store_true",
                    help="the attention also matches the word just read with each memory word's previous word")
    ap.add_argument("--all-captions", action="store_true", help="every caption of each photo per epoch (5x longer)")
    ap.add_argument("--keep-epochs", action="store_true",
                    help="also write each epoch's bundle to OUT-epochN (to choose one on dev scores afterwards)")
    ap.add_argument("--record-boost", type=float, default=None, metavar="B",
                    help="no training: record the dev-chosen new-word boost B in the bundle at --out")
    ap.add_argument("--boost-evidence", default="", help="with --record-boost: what chose it (kept in the manifest)")
    args = ap.parse_args(argv)
    if args.record_boost is not None:
        record_new_word_boost(args.out, args.record_boost, args.boost_evidence)
        return 0

    base = load_bundle(args.base)
    if base.index is None or base.decoder.kind != "merge":
        print(f"{args.base}: needs a merge decoder and a retrieval index (python train.py index)", file=sys.stderr)
        return 2
    start, start_name = base.decoder, read_manifest(args.base).get("name")
    if args.base_decoder:
        path, picks = split_pick(args.base_decoder)
        other = load_bundle(path)
        start = other.decoders[check_pick(args.base_decoder, picks, len(other.decoders))[0]]
        if start.kind != "merge" or other.vocab.itos != base.vocab.itos or other.encoder.key != base.encoder.key:
            print(f"{args.base_decoder}: needs a merge decoder on {args.base}'s encoder and vocabulary",
                  file=sys.stderr)
            return 2
        start_name = args.base_decoder
    ds = Flickr8k.load(args.data_dir, check_images=False)
    index = datastore_index(base.index, ds.captions)
    train_names = index.names[: args.limit] if args.limit else index.names
    vectors = index.vectors[: len(train_names)].astype(np.float32)
    captions = tokenised(ds.captions, train_names)
    neighbours = nearest(vectors, vectors, args.neighbours, exclude_self=True)
    dev = None
    if not args.no_dev:
        dev_names = ds.splits["dev"][: args.limit] if args.limit else ds.splits["dev"]
        dev_features = FeatureCache(Path(args.cache_dir) / "features", base.encoder.key).load(dev_names)
        dev_features = dev_features.astype(np.float32)
        # each dev photo is example row i; its neighbours are rows of the training captions, appended after
        all_captions = captions + tokenised(ds.captions, dev_names)
        dev_near = np.concatenate([np.zeros((len(train_names), args.neighbours), int),
                                   nearest(vectors, dev_features, args.neighbours)])
        dev_feats = np.concatenate([np.zeros((len(train_names), vectors.shape[1]), np.float32), dev_features])
        dev = (dev_feats, all_captions, dev_near, list(range(len(train_names), len(all_captions))))
    model = RetrievalDecoder(len(base.vocab), start.feature_dim, start.embed_dim, start.units,
                             0.5, args.neighbours, args.caption_tokens, copy=not args.no_copy,
                             unk_gate=args.unk_gate, prev_keys=args.prev_keys)
    model.build()
    print("warm start:", warm_start(model, start, args.gate_bias), flush=True)
    command = "python scripts/train_retrieval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    history: list[dict] = []

    def on_epoch(epoch, entry, improved):
        history.append(entry)
        if improved or dev is None:
            write_bundle(args.out, model, base.vocab, read_manifest(args.base), index, history, command, start_name)
            print(f"epoch {epoch}: bundle written to {args.out}", flush=True)
        if args.keep_epochs:
            write_bundle(f"{args.out}-epoch{epoch}", model, base.vocab, read_manifest(args.base), index, history,
                         command, start_name)

    train(model, vectors, captions, list(range(len(train_names))), neighbours, base.vocab, dev, args.epochs,
          learning_rate=args.learning_rate, on_epoch=on_epoch, log=lambda s: print(s, flush=True),
          copy_rate=args.copy_rate, one_caption=not args.all_captions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
