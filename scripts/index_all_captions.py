"""Give a bundle's retrieval index every human caption of its training photos (consensus reranking compares a
caption with all of them; the vectors and the calibration stay as they are).

    python scripts/index_all_captions.py artifacts/default --data-dir $FLICKR8K_DIR
"""
from __future__ import annotations

import argparse
import sys

from captioning.artifacts.bundle import load_bundle, save_index  # noqa: E402
from captioning.data.flickr8k import Flickr8k  # noqa: E402
from captioning.training.retrieval import datastore_index  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    bundle = load_bundle(args.bundle, load_results=False)
    if bundle.index is None:
        print(f"{args.bundle} has no retrieval index; build one with: python train.py index --out {args.bundle}",
              file=sys.stderr)
        return 2
    ds = Flickr8k.load(args.data_dir, check_images=False)
    save_index(args.bundle, datastore_index(bundle.index, ds.captions))
    print(f"{args.bundle}: index holds {len(bundle.index)} "
          f"training photos with every caption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
