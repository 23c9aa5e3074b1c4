#!/usr/bin/env python
"""A stand-in for ``train.py finetune`` in the job tests: the same run-directory files, a fraction of the time.

    python tests/fake_finetune.py finetune --out DIR [--run-dir DIR | --cache-dir DIR] [--epochs N]
                                           [--epoch-seconds S] [--ignore-term]   (train.py's other options ignored)
    python tests/fake_finetune.py import-check --captions FILE --images DIR --json

``finetune`` keeps the run directory as ``train.py finetune`` does: ``progress.json`` (phase, epoch, step, running
loss) and ``decoder-1/state.json`` after every epoch (as training.Checkpointer writes it, with the dev CIDEr-D in
``dev_scores.json`` beside it); it resumes from the epochs already there, and writes the bundle folder at ``--out``
last, atomically (a folder renamed into place).
``--ignore-term`` ignores SIGTERM, to test SIGKILL after the grace period.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def dataset_record(args) -> dict | None:
    """The dataset record train.py finetune keeps (captioning.imported), from the real import of the data."""
    if not args.captions:
        return None
    from captioning.imported import dataset_record
    from captioning.user_data import load_user_data

    return dataset_record(load_user_data(args.captions, args.images))


def held_out_report(args, record: dict | None) -> dict:
    """The manifest's ``finetune`` record as train.py finetune writes it: the dataset, scores before and after on
    the held-out (test) photos, with each photo's caption."""
    import csv

    rows = list(csv.DictReader(open(args.captions, encoding="utf-8"))) if args.captions else []
    photos = record["split_photos"]["test"] if record else []
    before = {"photos": len(photos), "cider": 0.12, "bleu_4": 0.05, "new_word_share": 0.0,
              "captions": {p: "a man in a black shirt is standing in front of a building" for p in photos}}
    after = {"photos": len(photos), "cider": 0.61, "bleu_4": 0.21, "new_word_share": 0.5,
             "captions": {p: next(r["caption"] for r in rows if r["image"] == p) for p in photos}}
    return {"dataset": record or {"images_dir": str(args.images)},
            "metrics": {"decoding": "beam 3", "before": {"test": before}, "after": {"test": after},
                        "flickr8k_test": {"photos": 200, "before": {"photos": 200, "cider": 0.452, "bleu_4": 0.171},
                                          "after": {"photos": 200, "cider": 0.437, "bleu_4": 0.166}}}}


def finetune(args) -> int:
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run = Path(args.run_dir or Path(args.cache_dir) / "runs" / Path(args.out).name)
    (run / "decoder-1").mkdir(parents=True, exist_ok=True)
    record = dataset_record(args)
    if record:
        write_json(run / "dataset.json", record)
    state_path = run / "decoder-1" / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"epochs": {}, "best_epoch": None}
    print(f"resuming after epoch {len(state['epochs'])}" if state["epochs"] else "starting", flush=True)
    write_json(run / "progress.json", {"phase": "features", "photos_done": 0, "photos_todo": 4,
                                       "epochs": args.epochs, "decoders": 1, "updated": time.time()})
    for epoch in range(len(state["epochs"]) + 1, args.epochs + 1):
        start = time.time()
        for step in range(1, 4):
            time.sleep(args.epoch_seconds / 3)
            write_json(run / "progress.json", {"phase": "training", "decoder": 1, "decoders": 1,
                                               "epochs": args.epochs, "epoch": epoch, "step": step, "steps": 3,
                                               "loss": 3.0 / (epoch + step), "updated": time.time()})
        state["epochs"][str(epoch)] = {"loss": 3.0 / epoch, "val_loss": 3.2 / epoch, "seconds":
                                       round(time.time() - start, 2)}
        state["best_epoch"] = epoch
        scores_path = run / "decoder-1" / "dev_scores.json"     # as captioning.dev_score writes it
        scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
        scores[str(epoch)] = {"dev_cider": round(0.1 + 0.5 * (1 - 1 / (epoch + 1)), 4), "dev_photos": 1}
        write_json(scores_path, scores)
        write_json(state_path, state)
        print(f"epoch {epoch}: loss {3.0 / epoch:.4f}", flush=True)
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.building")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "manifest.json").write_text(json.dumps({"fake": True, "epochs": args.epochs,
                                                       "finetune": held_out_report(args, record)}))
    os.replace(staging, out)
    write_json(run / "progress.json", {"phase": "done", "bundle": str(out), "updated": time.time()})
    print(f"bundle {out}", flush=True)
    return 0


def import_check(args) -> int:
    import csv

    rows = list(csv.DictReader(open(args.captions, encoding="utf-8")))
    good, bad = [], []
    for line, row in enumerate(rows, 2):
        if not (Path(args.images) / row["image"]).is_file():
            bad.append({"line": line, "kind": "missing", "image": row["image"], "reason": "photo not found"})
        elif not row["caption"].strip():
            bad.append({"line": line, "kind": "empty", "image": row["image"], "reason": "empty caption"})
        else:
            good.append(row)
    print(json.dumps({"format": "csv", "format_label": "CSV", "rows": len(rows), "captions": len(good),
                      "photos": len({r["image"] for r in good}), "bad_rows": bad, "splits": {"train": 2, "dev": 1,
                                                                                                "test": 1},
                      "sample": [{"image": r["image"], "captions": [r["caption"]]} for r in good[:4]]}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune")
    ft.add_argument("--out", required=True)
    ft.add_argument("--run-dir")
    ft.add_argument("--captions")
    ft.add_argument("--images")
    ft.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".cache"))
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--epoch-seconds", type=float, default=float(os.environ.get("FAKE_EPOCH_SECONDS", "0.3")))
    ft.add_argument("--ignore-term", action="store_true")
    ic = sub.add_parser("import-check")
    ic.add_argument("--captions", required=True)
    ic.add_argument("--images", required=True)
    ic.add_argument("--json", action="store_true")
    args, _ = parser.parse_known_args()
    return finetune(args) if args.command == "finetune" else import_check(args)


if __name__ == "__main__":
    sys.exit(main())
