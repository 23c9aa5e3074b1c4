#!/usr/bin/env python
"""Screenshots of the memory (issue 38): the Caption page on a test beach photo when "Your photos" remembers
Flickr8k training photos of beaches re-captioned with the word "strand" (bench/finetune_new_word.py's user data),
and the Your photos page listing them.

The app runs on a temporary artifacts folder (the real bundles linked in, a memory of its own), so the user's
real "Your photos" are neither used nor changed.

    .venv/bin/python scripts/memory_screenshots.py [--captions /work/runs/ft500/captions.csv] [--photos 12]
                                                   [--bundle xception-retrieval] [--out docs/screenshots]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=Path, default=Path("/work/runs/ft500/captions.csv"))
    p.add_argument("--photos", type=int, default=12, help="remembered photos of the re-captioned kind")
    p.add_argument("--bundle", default="default",
                   help="the bundle the Caption page uses (another than default is the only one the app sees)")
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FLICKR8K_DIR") or ROOT.parent / "shared" /
                                                               "flickr8k"))
    args = p.parse_args()
    from captioning.data.text import tokenize
    from captioning.service.captioner import Captioner
    from captioning.service.memory.bank import MemoryBank

    caps = defaultdict(list)
    with open(args.captions, encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            caps[row["image"]].append(row["caption"])
    kind = [n for n, cs in caps.items() if any("strand" in tokenize(c) for c in cs)][:args.photos]
    test = (args.data_dir / "Flickr_8k.testImages.txt").read_text().split()
    refs = defaultdict(list)
    for line in (args.data_dir / "Flickr8k.token.txt").read_text().splitlines():
        key, _, text = line.partition("\t")
        refs[key.split("#")[0]].append(text)
    photo = next(n for n in test if sum("beach" in tokenize(r) for r in refs[n]) >= 3)
    with tempfile.TemporaryDirectory(prefix="memory-shots-") as tmp:
        artifacts = Path(tmp) / "artifacts"
        artifacts.mkdir()
        for bundle in (ROOT / "artifacts").iterdir():        # another --bundle alone, so the app opens it
            if bundle.is_dir() and not bundle.name.startswith(".") and args.bundle in ("default", bundle.name):
                (artifacts / bundle.name).symlink_to(bundle.resolve())
        captioner = Captioner.from_bundle(ROOT / "artifacts" / args.bundle)
        bank = MemoryBank.for_captioner(captioner, artifacts / ".memory")
        bank.add(captioner, [(n, args.data_dir / "Images" / n, caps[n][:3]) for n in kind])
        print(f"remembered {len(kind)} photos; captioning test photo {photo}", flush=True)
        env = {**os.environ, "CAPTIONING_ARTIFACTS": str(artifacts),
               "MEMORY_SCREENSHOT_PHOTO": str(args.data_dir / "Images" / photo)}
        subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out", args.out, "--only",
                        "caption-memory,memory"], env=env, check=True)


if __name__ == "__main__":
    main()
