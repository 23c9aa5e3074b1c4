"""Command line: ``python -m captioning caption IMAGE|FOLDER... [--out FILE] [--beam-width K]``, ``serve`` and
``setup-weights``."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption one or more images")
    cap.add_argument("images", nargs="+", help="image files or folders (searched recursively for jpg, png, webp, "
                     "bmp, gif)")
    cap.add_argument("--out", default=None, help="write FILE.csv, .jsonl or .json (path, caption, log p, n-best, "
                     "error); rerunning with the same file skips photos it already holds")
    cap.add_argument("--batch-size", type=int, default=16, help="images through the encoder at once (default 16)")
    cap.add_argument("--bundle", default=None, help="artifact bundle folder (default: artifacts/default)")
    cap.add_argument("--beam-width", type=int, default=1, help="1 = greedy (default); e.g. 5 for beam search")
    cap.add_argument("--length-penalty", type=float, default=1.0)
    cap.add_argument("--no-repeat-ngram-size", type=int, default=0)
    cap.add_argument("--n-best", type=int, default=1, help="print this many captions per image")
    cap.add_argument("--weights", default=None, help="encoder ImageNet weights file")
    srv = sub.add_parser("serve", help="serve the REST API (POST /v1/captions; docs at /docs)")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 opens it to the network)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--bundle", default=None, help="artifact bundle folder (default: artifacts/default)")
    srv.add_argument("--weights", default=None, help="encoder ImageNet weights file")
    srv.add_argument("--max-concurrent", type=int, default=2, help="requests decoded at once (default 2)")
    setup = sub.add_parser("setup-weights", help="store an encoder's ImageNet weights under weights/")
    setup.add_argument("--encoder", default="xception")
    setup.add_argument("--alpha", type=float, default=None)
    args = parser.parse_args(argv)

    from .bundle import BundleError, artifacts_dir
    from .encoders import EncoderWeightsError, setup_weights

    try:
        if args.command == "setup-weights":
            print(setup_weights(args.encoder, args.alpha))
            return 0
        if args.command == "serve":
            from .serve import serve

            if not 0 < args.port < 65536 or args.max_concurrent < 1:
                raise ValueError("--port must be 1-65535 and --max-concurrent >= 1")
            serve(args.bundle or artifacts_dir() / "default", args.host, args.port, args.weights, args.max_concurrent)
            return 0
        from .batch import output_format, read_records
        from .captioner import Captioner

        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.out is not None:
            output_format(args.out)
            read_records(args.out)              # an unreadable earlier file is refused before the model loads

        captioner = Captioner.from_bundle(args.bundle or artifacts_dir() / "default", args.weights)
        config = captioner.config(beam_width=args.beam_width, length_penalty=args.length_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size, num_return_sequences=args.n_best)
    except (BundleError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .batch import caption_files, gather_images

    paths = gather_images(args.images)
    if not paths:
        print(f"error: no image files (jpg, jpeg, png, webp, bmp, gif) in {' '.join(args.images)}", file=sys.stderr)
        return 2

    def show(result) -> None:
        if not result.ok:
            print(f"{result.name}\terror: {result.error}", file=sys.stderr)
        elif args.out is None:
            for rank, cap_ in enumerate(result.captions, 1):
                prefix = f"{result.name}\t" if len(result.captions) == 1 else f"{result.name}\t#{rank}\t"
                print(f"{prefix}{cap_.text}\t(log p {cap_.log_prob:.2f})", flush=True)

    start = time.perf_counter()
    summary = caption_files(captioner, paths, config, args.out, args.batch_size, on_result=show,
                            progress=sys.stderr.isatty())
    print(f"{summary.line(args.out)} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
