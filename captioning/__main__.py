"""Command line: ``python -m captioning caption IMAGE... [--beam-width K]`` and ``setup-weights``."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption one or more images")
    cap.add_argument("images", nargs="+", help="image files (jpg, png, webp, bmp, gif)")
    cap.add_argument("--bundle", default=None, help="artifact bundle folder (default: artifacts/default)")
    cap.add_argument("--beam-width", type=int, default=1, help="1 = greedy (default); e.g. 5 for beam search")
    cap.add_argument("--length-penalty", type=float, default=1.0)
    cap.add_argument("--no-repeat-ngram-size", type=int, default=0)
    cap.add_argument("--n-best", type=int, default=1, help="print this many captions per image")
    cap.add_argument("--weights", default=None, help="encoder ImageNet weights file")
    setup = sub.add_parser("setup-weights", help="store an encoder's ImageNet weights under weights/")
    setup.add_argument("--encoder", default="xception")
    setup.add_argument("--alpha", type=float, default=None)
    args = parser.parse_args(argv)

    from .bundle import BundleError, artifacts_dir
    from .encoders import EncoderWeightsError, setup_weights
    from .images import InvalidImageError

    try:
        if args.command == "setup-weights":
            print(setup_weights(args.encoder, args.alpha))
            return 0
        from .captioner import Captioner

        captioner = Captioner.from_bundle(args.bundle or artifacts_dir() / "default", args.weights)
        config = captioner.config(beam_width=args.beam_width, length_penalty=args.length_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size, num_return_sequences=args.n_best)
    except (BundleError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        start = time.perf_counter()
        try:
            nbest = captioner.caption(path, config)
        except InvalidImageError as exc:
            print(f"{path}\terror: {exc}", file=sys.stderr)
            status = 1
            continue
        except EncoderWeightsError as exc:            # the encoder is built with the first image
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ms = (time.perf_counter() - start) * 1000
        for rank, cap_ in enumerate(nbest, 1):
            prefix = f"{path}\t" if len(nbest) == 1 else f"{path}\t#{rank}\t"
            print(f"{prefix}{cap_.text}\t(log p {cap_.log_prob:.2f}, {ms:.0f} ms)")
    return status


if __name__ == "__main__":
    sys.exit(main())
