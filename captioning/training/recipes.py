"""Recipes: :func:`run` chains the commands of ``train.py`` for one run (features, train, SCST, ensemble, evaluate,
sweep, index); each command is a module of :mod:`captioning.training.commands`, the inputs they share are in
:mod:`captioning.training.inputs`.

Each takes the typed settings of :mod:`captioning.training.settings` (no argparse here): ``train.py`` parses its command
line into a :class:`~captioning.training.settings.RunConfig` and calls :func:`run`. Errors are :class:`DataError` (the
user can fix them; :class:`~captioning.training.settings.OptionError` when a setting is at fault).
"""
from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

from captioning.artifacts.bundle import replace_folder
from captioning.data.datasets import load_dataset
from captioning.data.flickr8k import download
from captioning.training.commands.ensemble import build_ensemble
from captioning.training.commands.evaluate import evaluate_bundle
from captioning.training.commands.index import build_retrieval_index
from captioning.training.commands.scst import finetune_scst
from captioning.training.commands.sweep import sweep_bundle
from captioning.training.commands.train import train_decoder
from captioning.training.inputs import check_before_work, ensure_features, split_names
from captioning.training.settings import OptionError, RunConfig


# --- one command ------------------------------------------------------------------------------------------
def run(config: RunConfig) -> Path | None:
    """Run one command's steps in order. ``all``, ``ensemble`` and ``scst`` build, evaluate and sweep in a hidden
    sibling folder of the same name; the bundle at ``out`` is replaced only when all of that has succeeded, so
    no typo or crash can leave it half-made. Returns the bundle (None when the command writes none)."""
    ws, command, pipe = config.workspace, config.command, config.pipeline
    if command == "download":
        if not ws.data_dir:
            raise OptionError("download needs {data_dir} DIR (where to put Flickr8k)")
        print(f"Flickr8k ready in {download(ws.data_dir, progress=not ws.quiet)}")
        return None
    if command in ("finetune", "import-check"):            # a user's own photos: captioning.training.finetune
        from captioning.training.finetune import finetune
        from captioning.training.user_photos import import_check

        if command == "import-check":
            import_check(config)
            return None
        return finetune(config)
    check_before_work(config, None, None)
    if config.user_data.captions:                       # training from scratch on a user's captioned photos
        from captioning.training.user_photos import user_records

        ds = user_records(config)
        config.evaluate.no_human = True                 # the expert judgments are of Flickr8k's photos
        names = {s: ds.split_records(s, None) for s in ("train", "dev", "test")}
    else:
        ds = load_dataset(ws.dataset, ws.data_dir)
        names = split_names(ds, ws.limit)
    check_before_work(config, ds, names)
    staging = None
    try:
        if command in ("all", "ensemble", "scst"):
            target = Path(ws.out)
            for stale in target.parent.glob(f".{target.name}.building-*"):   # left by a killed run (SIGKILL)
                shutil.rmtree(stale, ignore_errors=True)
            staging = target.parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"
            ws.final_out, ws.out = str(target), str(staging / target.name)
        feature_stats = None
        if command in ("all", "features"):
            settings = dataclasses.replace(config.features, spatial=config.features.spatial or config.train.spatial)
            feature_stats = ensure_features(ws, settings, ds, names)
        if command in ("all", "train") and \
                train_decoder(ws, config.train, config.features, ds, names, feature_stats) is None:
            return None                                     # a multi-worker run's non-chief worker: done
        if command == "ensemble":
            build_ensemble(ws, pipe.members)
        if command == "scst":
            finetune_scst(ws, config.train, pipe, config.features, ds, names)
        if command in ("all", "evaluate", "ensemble", "scst"):
            evaluate_bundle(ws, config.evaluate, config.features, ds, names)
        if command in ("all", "sweep", "ensemble", "scst") and not (command != "sweep" and pipe.no_sweep):
            sweep_bundle(ws, config.features, ds, names)
        if command == "index" or (command in ("all", "ensemble", "scst") and not pipe.no_index):
            if len(names["dev"]) < 2:             # a small user dataset: nothing to calibrate the levels on
                print(f"index: skipped (its levels are calibrated on the dev photos; there are {len(names['dev'])})")
            else:
                build_retrieval_index(ws, config.features, ds, names)
        if staging is not None:
            replace_folder(Path(ws.out), Path(ws.final_out))   # the old bundle goes only now
            print(f"bundle {ws.final_out} is complete (trained and evaluated)")
        return Path(ws.bundle)
    finally:
        if ws.skipped_images:
            print(f"left out {len(ws.skipped_images)} photos that cannot be read:")
            for line in ws.skipped_images:
                print(f"  {line}" if line.isprintable() else f"  {line!r}")   # a newline in a name stays one line
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
