"""Command line: ``python -m captioning caption IMAGE... [--beam-width K | --strategy sample|diverse ...]`` and
``setup-weights``."""
from __future__ import annotations

import argparse
import json
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
    add_strategy_options(cap)
    cap.add_argument("--json", action="store_true",
                     help="one JSON object per image: path, caption, log_prob, in_domain, confidence (+ n_best)")
    cap.add_argument("--neighbours", type=int, default=0, metavar="K",
                     help="also list the K most similar training photos (with one of their human captions)")
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
    status = 0
    for path in args.images:
        start = time.perf_counter()
        try:
            features = captioner.features(path)
        except InvalidImageError as exc:
            print(f"{path}\terror: {exc}", file=sys.stderr)
            status = 1
            continue
        except EncoderWeightsError as exc:            # the encoder is built with the first image
            print(f"error: {exc}", file=sys.stderr)
            return 2
        nbest = captioner.decode(features, config)[0]
        trust = captioner.assess(features, nbest[:1], args.neighbours)[0] if captioner.can_assess else None
        ms = (time.perf_counter() - start) * 1000
        if args.json:
            print(json.dumps(_as_json(path, nbest, trust, args.neighbours), ensure_ascii=False))
            continue
        level = f", {trust.level or 'uncalibrated'}: in-domain {trust.in_domain:.3f}" if trust else ""
        for rank, cap_ in enumerate(nbest, 1):
            prefix = f"{path}\t" if len(nbest) == 1 else f"{path}\t#{rank}\t"
            print(f"{prefix}{cap_.text}\t(log p {cap_.log_prob:.2f}{level}, {ms:.0f} ms)")
        if trust and trust.level == "unfamiliar":
            print(f"{path}\twarning: {trust.explanation}")
        for n in trust.neighbours[: args.neighbours] if trust else []:
            print(f"{path}\tnear {n.name} ({n.similarity:.3f}): {n.captions[0] if n.captions else ''}")
    return status


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


def _as_json(path: str, nbest, trust, neighbours: int) -> dict:
    """The --json line of one image: the best caption, its trust and, with --n-best, the other captions."""
    best = nbest[0]
    out = {"path": path, "caption": best.text, "log_prob": round(best.log_prob, 4),
           "mean_log_prob": round(best.normalized_log_prob, 4),
           **(trust.to_json(neighbours) if trust else {"in_domain": None, "confidence": None})}
    if len(nbest) > 1:
        out["n_best"] = [{"caption": c.text, "log_prob": round(c.log_prob, 4)} for c in nbest]
    return out


if __name__ == "__main__":
    sys.exit(main())
