#!/usr/bin/env python
"""Train and evaluate a captioner on Flickr8k; writes an artifact bundle the app loads.

    python train.py [--data-dir DIR] [--encoder xception] [--out artifacts/NAME] [--limit N]   # all steps
    python train.py download --data-dir DIR     # fetch Flickr8k (needs internet)
    python train.py features ...                # cache encoder features (resumable)
    python train.py train ...                   # fit the decoder, write the bundle (resumable)
    python train.py evaluate ...                # greedy + beam scores on the test split -> metrics.json
    python train.py sweep ...                   # beam-width and length-penalty sweep on the dev split
    python train.py ensemble --members A B ... --out artifacts/NAME   # one bundle decoding with all of them
    python train.py scst --from artifacts/A --out artifacts/A-scst   # fine-tune on CIDEr-D (self-critical)
    python train.py index --out artifacts/NAME  # nearest-training-photo index + in-domain levels calibrated on dev
    python train.py import-check --captions FILE --images DIR [--json]   # check your captioned photos
    python train.py finetune --from artifacts/A --captions FILE --images DIR --out artifacts/B   # teach it your
                                                # photos (new words included; see captioning/finetune.py)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import sys
import time

import captioning  # (sets TensorFlow's log level before it loads)
from captioning import recipes
from captioning.config import COMMANDS, SECTIONS, OptionError, RunConfig, settle
from captioning.data import DataError
from captioning.encoders import EncoderWeightsError
from captioning.training import WorkerLost


def flag(name: str) -> str:
    """The command-line spelling of a setting: ``feature_batch_size`` -> ``--feature-batch-size``."""
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            if f.name == name and "flag" in f.metadata:
                return f.metadata["flag"]
    return "--" + name.replace("_", "-")


def spell(template: str) -> str:
    """A core message or help text with its ``{setting}`` names spelled as flags."""
    return OptionError(template).render(flag)


def add_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """One option per settings field (captioning.config), its help and default from the field."""
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            meta = dict(f.metadata)
            if "help" not in meta:
                continue
            name, help_text = meta.pop("flag", flag(f.name)), spell(meta.pop("help"))
            default = argparse.SUPPRESS if suppress else f.default
            if f.type in ("bool", bool):
                p.add_argument(name, dest=f.name, action="store_true", default=default, help=help_text)
            else:
                p.add_argument(name, dest=f.name, default=default, help=help_text, **meta)


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``error: ...`` on stderr, exit 2."""

    def error(self, message: str):
        print(f"error: {message} (see: python train.py --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> RunConfig:
    """The command line as a checked RunConfig; the first problem ends the program as one line (exit 2)."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        add_options(sub.add_parser(name, help=f"run the {name} step"), suppress=True)
    args = vars(parser.parse_args(argv))
    config = RunConfig(args.pop("command") or "all",
                       *(section(**{f.name: args[f.name] for f in dataclasses.fields(section) if f.name in args})
                         for section in SECTIONS))
    problems = settle(config)
    if problems:                                  # the first one, as one line (the others show once it is fixed)
        print(f"error: {problems[0].render(flag)}", file=sys.stderr)
        sys.exit(2)
    return config


def registered(config: RunConfig, argv: list[str]):
    """A fine-tune started here is listed on the app's Train page while it runs (captioning.jobs), so the page
    queues its own jobs behind it; SIGTERM (its Cancel button) then stops it as Ctrl-C does. A jobs database
    that cannot be opened (read-only artifacts folder) only loses the listing, never the run."""
    if config.command != "finetune" or not config.workspace.out:
        return contextlib.nullcontext()
    import sqlite3
    from pathlib import Path

    from captioning import jobs

    out = Path(config.workspace.out)
    try:
        queue = jobs.JobQueue()
    except (OSError, sqlite3.Error) as exc:
        print(f"note: this run is not listed on the Train page ({exc})", file=sys.stderr)
        return contextlib.nullcontext()
    return queue.track(["python", "train.py", *argv], f"Fine-tune {Path(config.pipeline.source or '?').name} → "
                       f"{out.name}", out=str(out), run_dir=config.workspace.runs_dir() / out.name)


def main(argv=None) -> int:
    config = parse_args(argv)
    if config.command not in ("download", "import-check"):
        captioning.import_tensorflow_quietly()
    start, wall_start = time.perf_counter(), time.time()
    try:
        with registered(config, list(sys.argv[1:] if argv is None else argv)):
            if recipes.run(config) is None:
                return 0                      # downloaded, or a multi-worker run's non-chief worker: done
    except OptionError as exc:
        print(f"error: {exc.render(flag)}", file=sys.stderr)
        return 2
    except (DataError, EncoderWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: the disk is full ({exc.filename or 'while writing'}); free some space and run the same command "
              f"again: it resumes from the saved feature shards and finished epochs, and no bundle was half-written",
              file=sys.stderr)
        return 1
    except WorkerLost as exc:
        # TensorFlow's shutdown would wait on the lost peer (coordination barrier): report and leave now.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    except KeyboardInterrupt:
        if recipes.saved_since(config.workspace, wall_start):
            print("\ninterrupted: finished work is saved (feature shards, checkpoints); run the same command again "
                  "to resume", file=sys.stderr)
        else:
            print(f"\ninterrupted before this run saved anything (features are saved every {flag('shard_size')} "
                  "images, training after each epoch); nothing new to resume from", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f}s; peak memory {recipes.peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
