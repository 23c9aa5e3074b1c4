"""Console tables the training commands print (decoding strategies side by side).
"""
from __future__ import annotations


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
