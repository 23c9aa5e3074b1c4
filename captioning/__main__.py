"""Command line: ``python -m captioning caption IMAGE|FOLDER... [--out FILE] [--beam-width K | --strategy sample|
diverse ...] [--json] [--neighbours K]``, ``serve`` and
``setup-weights``."""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import import_tensorflow_quietly


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
    add_strategy_options(cap)
    cap.add_argument("--json", action="store_true",
                     help="one JSON object per image: path, caption, log_prob, in_domain, confidence (+ n_best)")
    cap.add_argument("--neighbours", type=int, default=0, metavar="K",
                     help="also list the K most similar training photos (with one of their human captions)")
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

    import_tensorflow_quietly()
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
                                  no_repeat_ngram_size=args.no_repeat_ngram_size, **strategy_overrides(args))
        if args.neighbours < 0:
            raise ValueError("--neighbours must be 0 or more")
    except (BundleError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.neighbours and not captioner.can_assess:
        print(f"error: bundle {captioner.bundle.path} has no retrieval index for --neighbours; add one with: "
              f"python train.py index --out {captioner.bundle.path}", file=sys.stderr)
        return 2
    from .batch import caption_files, gather_images, to_record

    paths = gather_images(args.images)
    if not paths:
        print(f"error: no image files (jpg, jpeg, png, webp, bmp, gif) in {' '.join(args.images)}", file=sys.stderr)
        return 2

    def show(result) -> None:
        if not result.ok:
            print(f"{result.name}\terror: {result.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps(to_record(result, config.num_return_sequences, args.neighbours), ensure_ascii=False),
                  flush=True)
        elif args.out is None:
            trust = result.trust
            level = f", {trust.level or 'uncalibrated'}: in-domain {trust.in_domain:.3f}" if trust else ""
            for rank, cap_ in enumerate(result.captions, 1):
                prefix = f"{result.name}\t" if len(result.captions) == 1 else f"{result.name}\t#{rank}\t"
                print(f"{prefix}{cap_.text}\t(log p {cap_.log_prob:.2f}{level})", flush=True)
            if trust and trust.level == "unfamiliar":
                print(f"{result.name}\twarning: {trust.explanation}")
            for n in trust.neighbours[: args.neighbours] if trust else []:
                print(f"{result.name}\tnear {n.name} ({n.similarity:.3f}): {n.captions[0] if n.captions else ''}")

    start = time.perf_counter()
    try:
        summary = caption_files(captioner, paths, config, args.out, args.batch_size, on_result=show,
                                progress=sys.stderr.isatty(), neighbours=args.neighbours)
    except EncoderWeightsError as exc:                # the encoder is built with the first batch
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.line(args.out)} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 1 if summary.failed else 0


def add_strategy_options(cap: argparse.ArgumentParser) -> None:
    """Decoding strategies beyond greedy and beam (``--beam-width K`` alone still means beam search)."""
    g = cap.add_argument_group("decoding strategy")
    g.add_argument("--strategy", choices=["greedy", "beam", "sample", "diverse"], default=None,
                   help="default: greedy, or beam search when --beam-width > 1")
    g.add_argument("--temperature", type=float, default=1.0, help="sample: < 1 sharper, > 1 more adventurous")
    g.add_argument("--top-k", type=int, default=0, help="sample: only the k likeliest words (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus, e.g. 0.9 (1 = off)")
    g.add_argument("--n", type=int, default=None, help="sample: captions drawn per image (default 1)")
    g.add_argument("--seed", type=int, default=0, help="sample: the same seed draws the same captions")
    g.add_argument("--groups", type=int, default=1, help="diverse: beam groups (must divide --beam-width)")
    g.add_argument("--diversity-penalty", type=float, default=0.5, help="diverse: Hamming penalty between groups")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages words already said")
    g.add_argument("--no-repeat-word", action="store_true", help="never the same word twice in a row")
    g.add_argument("--ban", nargs="+", default=(), metavar="WORD", help="words never to emit")
    g.add_argument("--min-length", type=int, default=1, help="fewest words per caption")


def strategy_overrides(args) -> dict:
    """DecodeConfig fields from the strategy options (ValueError with what to change on a bad mix)."""
    strategy = args.strategy or "auto"
    if args.n is not None and strategy != "sample":
        raise ValueError("--n is the number of sampled captions (--strategy sample); use --n-best for beam search")
    out = {"strategy": strategy, "num_return_sequences": args.n if args.n is not None else args.n_best,
           "repetition_penalty": args.repetition_penalty, "no_repeat_word": args.no_repeat_word,
           "banned_words": tuple(w.lower() for w in args.ban), "min_length": args.min_length}
    if strategy == "sample":
        out.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if strategy == "diverse":
        out.update(num_groups=args.groups, diversity_penalty=args.diversity_penalty)
    return out


if __name__ == "__main__":
    sys.exit(main())
