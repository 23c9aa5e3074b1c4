"""Fine-tune a trained bundle on a user's own captioned photos (``train.py finetune``), growing its vocabulary.

    python train.py import-check --captions FILE --images DIR [--json]
    python train.py finetune --from BUNDLE --captions FILE --images DIR --out DIR [--min-count N] [--replay F]
                             [--epochs N] [--patience N] [--learning-rate X] [--members 1,3] [--seed N]
                             [--strict] [--split-file F] [--dry-run]

Steps (the base bundle is only read, never written):

1. Import the captions (:mod:`captioning.data.user_data`): every bad row reported with its line and skipped.
2. Grow the vocabulary: words of the user's training captions seen at least ``min_count`` times that the base
   vocabulary lacks are appended; old words keep their ids, embeddings and output rows exactly.
   New rows start from GloVe where the word has a vector (``--embeddings`` FILE, default
   ``.cache/glove.6B.50d.txt`` from ``scripts/glove_from_wheel.py``): a ridge-regression map from GloVe to the
   decoder's embedding (and output) rows is fitted on the base vocabulary's words and applied to the new word's
   vector. Words without a vector (or without the file) start at the mean of the old rows plus small noise
   (0.1 of their spread). A new word's output bias is its log frequency in the user's captions, shifted onto
   the base model's bias scale (the median offset over the old words the user's captions share).
3. Cache the features of the user's photos (read through the safe loader, JPEG/PNG/WebP of any size; keyed by
   content, resumable shard by shard like Flickr8k's) and, for replay, of a pool of Flickr8k training photos.
4. Train each chosen decoder (every decoder of an ensemble, or ``--members 1,3``) teacher-forced on the user's
   training captions; ``--replay F`` of every batch are Flickr8k training captions (when Flickr8k is reachable)
   so the model does not forget its old domain. Early stopping on the user's dev photos. Progress goes to the
   run directory ``<cache>/runs/<out name>/`` like ``train.py train``'s (``state.json`` per decoder under
   ``decoder-N/``, plus ``progress.json``: the phase the run is in).
5. Score base and fine-tuned bundle on the user's dev and test photos (beam 3: CIDEr-D, BLEU-4, how often a new
   word is used), write the bundle to a hidden sibling of ``--out`` and swap it in only when complete.

Replay default (``replay`` in :mod:`captioning.training.options`, 0.5), chosen against 0 by
``bench/finetune_new_word.py`` (docs/experiments.md): on held-out Flickr8k photos, 0.5 kept the other scenes'
CIDEr-D where the base had it (.466 vs .465) and taught the new word almost as often (59% vs 65%), while 0 lost
.064 CIDEr-D on them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from captioning.data.imported import dataset_record, write_record
from captioning.data.text import Vocabulary, tokenize
from captioning.data.user_data import UserDataset
from captioning.files import atomic_write
from captioning.training.dev_score import dev_score_callback
from captioning.training.finetune_flickr import FlickrTest
from captioning.training.growth import DEFAULT_GLOVE, grow_decoder, grow_vocabulary, read_glove
from captioning.training.rundirs import RunDir, fingerprint
from captioning.training.settings import FINETUNE_REFUSES, OptionError, RunConfig
from captioning.training.user_photos import _flickr8k, extract_user_features, import_data, replay_pool

SCORE_BEAM = 3
# Fit-loop options fine-tuning leaves off: the ones settle() refuses, and ``--embeddings``, which is where new words'
# vectors come from (growth.py), not the embedding's start.
FINETUNE_LEAVES_OFF = (*FINETUNE_REFUSES, "embeddings")


# --- training ------------------------------------------------------------------------------------------------
def mixed_dataset(features, user_idx, user_tokens, replay_idx, replay_tokens, batch_size: int, replay: float,
                  seed: int):
    """tf.data of ((features, input ids), target ids): each batch ``1 - replay`` user captions and ``replay``
    replay captions (the replay stream repeats); one epoch is one pass over the user's captions."""
    import tensorflow as tf

    from captioning.training.fit import example_maker, make_dataset

    n_replay = int(round(batch_size * replay)) if len(replay_idx) else 0
    if n_replay == 0:
        return make_dataset(features, user_idx, user_tokens, batch_size, shuffle=True, seed=seed)
    n_user = max(1, batch_size - n_replay)
    width = max(user_tokens.shape[1], replay_tokens.shape[1])
    pad = lambda t: np.pad(t, ((0, 0), (0, width - t.shape[1])))                   # noqa: E731
    user = tf.data.Dataset.from_tensor_slices((user_idx.astype(np.int32), pad(user_tokens)))
    user = user.shuffle(len(user_idx), seed=seed, reshuffle_each_iteration=True).batch(n_user)
    rep = tf.data.Dataset.from_tensor_slices((replay_idx.astype(np.int32), pad(replay_tokens)))
    rep = rep.shuffle(len(replay_idx), seed=seed + 1, reshuffle_each_iteration=True).repeat().batch(n_replay)
    both = tf.data.Dataset.zip(user, rep).map(lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)))
    return both.map(example_maker(features)).prefetch(2)


def _pick_members(members: list[str] | None, n: int) -> list[int]:
    """0-based decoder indices from ``--members 1,3`` (all when not given)."""
    if not members:
        return list(range(n))
    try:
        picks = [int(p) - 1 for m in members for p in str(m).split(",") if p.strip()]
    except ValueError:
        raise OptionError(f"{{members}} {' '.join(members)}: give decoder numbers, e.g. 1,3") from None
    if not picks or min(picks) < 0 or max(picks) >= n or len(set(picks)) != len(picks):
        raise OptionError(f"{{members}} {' '.join(members)}: the base bundle has decoders 1 to {n}, each at most "
                          f"once")
    return sorted(picks)


def score(steps, vocab: Vocabulary, feats, refs, new_words: set[str], max_length: int,
          photos: list[str] | None = None) -> dict:
    """CIDEr-D and BLEU-4 of beam-3 captions, the share of them using a new word (refs: the same share), and each
    photo's caption (the first 500, keyed by ``photos``: a page shows base and fine-tuned side by side)."""
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import decode
    from captioning.evaluation.metrics import coco_scores

    hyps = [n[0].words for n in decode(steps, feats, vocab, DecodeConfig(beam_width=SCORE_BEAM,
                                                                        max_length=max_length))]
    coco, _, _ = coco_scores(refs, hyps, meteor=False)
    uses = lambda ws: bool(new_words & set(ws))                                     # noqa: E731
    return {"photos": len(hyps), "cider": round(coco["cider"], 4), "bleu_4": round(coco["coco_bleu_4"], 4),
            "new_word_share": round(float(np.mean([uses(h) for h in hyps])), 4) if new_words else 0.0,
            "new_word_share_references": round(float(np.mean([any(uses(r) for r in rs) for rs in refs])), 4)
            if new_words else 0.0,
            "captions": {p: " ".join(h) for p, h in zip((photos or [])[:500], hyps)}}


def _progress(run: Path, **state) -> None:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "progress.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write(path, json.dumps({**old, **state, "updated": time.time()}, indent=1))


def _cache_features(config: RunConfig, base, data: UserDataset, pool: list[str], flickr, run: Path) -> dict:
    """Cache the features of the user's photos for every encoder of the base bundle (through the safe loader),
    and of the replay pool's Flickr8k photos; returns the extraction stats per encoder key."""
    from captioning.training.inputs import ensure_features
    from captioning.vision.encoders import get_spec
    from captioning.vision.features import FeatureCache

    ws = config.workspace
    encoders = dict(zip(base.decoder_keys, base.manifest.decoder_encoders))
    photos = {data.photo_ids[p]: data.path(p) for split in data.splits.values() for p in split}
    stats = {}
    for key, enc in encoders.items():
        spec = get_spec(enc.name, enc.alpha)
        spatial = base.spatial_for(key)
        cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key)
        weights = config.features.weights if len(encoders) == 1 else None    # else each encoder's own file
        stats[key] = extract_user_features(
            spec, weights, photos, cache, spatial, progress=not ws.quiet,
            on_batch=lambda done, total, key=key: _progress(run, phase="features", encoder=key, photos_done=done,
                                                            photos_todo=total))
        if pool and cache.missing(pool, spatial):
            own = dataclasses.replace(config.features, encoder=spec.name, alpha=spec.alpha, spatial=spatial,
                                      weights=weights)
            ensure_features(ws, own, flickr, {"train": pool})
    return stats


def finetune(config: RunConfig) -> Path | None:
    """Fine-tune ``--from`` on the user's photos into ``--out`` (see the module docstring)."""
    from captioning.artifacts.bundle import replace_folder
    from captioning.training.inputs import _load_bundle, peak_rss_mb

    ws, tr, pipe, user = config.workspace, config.train, config.pipeline, config.user_data
    source_path = Path(pipe.source)
    target = Path(ws.out)
    if target.resolve() == source_path.resolve():
        raise OptionError("finetune writes a new bundle: give {out} a folder other than {source}")
    base = _load_bundle(str(source_path), load_results=False)
    data = import_data(config)
    print(data.describe())
    if user.dry_run:
        return None
    picks = _pick_members(pipe.members, len(base.decoders))
    run = ws.runs_dir() / target.name
    _progress(run, phase="features", started=time.time(), base=str(source_path), out=str(target), epochs=tr.epochs,
              decoders=len(picks))
    write_record(run, dataset_record(data))              # the Dataset page lists a job's data while it runs
    train_caps = [tokenize(c) for p in data.splits["train"] for c in data.captions[p]]
    user_counts = Counter(w for c in train_caps for w in c)
    vocab, added = grow_vocabulary(base.vocab, train_caps, tr.min_count)
    print(f"vocabulary: {len(base.vocab)} -> {len(vocab)} words (+{len(added)} with count >= {tr.min_count}"
          + (f": {', '.join(added[:12])}{' ...' if len(added) > 12 else ''}" if added else "") + ")")
    flickr = _flickr8k(config) if user.replay > 0 or user.flickr_test > 0 else None
    replay = user.replay if flickr is not None else 0.0
    if user.replay > 0 and flickr is None:
        print("replay: Flickr8k is not reachable (--data-dir or $FLICKR8K_DIR), so batches hold only your captions")
    pool = replay_pool(flickr, len(train_caps), replay, tr.seed) if flickr is not None else []

    # 1. features of the user's photos and of the replay pool
    ids, keys = data.photo_ids, base.decoder_keys
    feature_stats = _cache_features(config, base, data, pool, flickr, run)
    flickr_test = FlickrTest(config, base, flickr, lambda **s: _progress(run, **s))

    # 2. scores of the base bundle on the user's dev and test photos
    from captioning.training.inputs import decoder_inputs

    new_words = set(added)
    dev_ids = [ids[p] for p in data.splits["dev"]]
    test_ids = [ids[p] for p in data.splits["test"]]
    max_length = base.max_length
    _progress(run, phase="scoring base")
    base_steps = base.step_decoder()                     # one, so its tf.functions are traced once
    before = {split: score(base_steps, base.vocab, decoder_inputs(ws, base, pid),
                           data.references(data.splits[split]), new_words, max_length, data.splits[split])
              for split, pid in (("dev", dev_ids), ("test", test_ids)) if pid}
    print(f"base on your test photos: CIDEr-D {before['test']['cider']:.3f}, BLEU-4 {before['test']['bleu_4']:.3f}"
          if "test" in before else "base scored")
    flickr_before = flickr_test.before(base, base_steps, new_words)

    # 3. grow and train each chosen decoder
    glove_path = Path(tr.embeddings) if tr.embeddings else DEFAULT_GLOVE
    glove = read_glove(glove_path, set(base.vocab.itos[4:]) | new_words) if added else {}
    trained, inits, histories = [], [], []
    for n, i in enumerate(picks):
        decoder, key = base.decoders[i], keys[i]
        _progress(run, phase="training", decoder=n + 1, decoders=len(picks))
        grown, init = grow_decoder(decoder, base.vocab, vocab, glove, user_counts, seed=tr.seed + i)
        state = _train_one(config, grown, vocab, data, pool, flickr, key, replay, run / f"decoder-{i + 1}")
        trained.append(grown)
        inits.append({"decoder": i + 1, **init})
        histories.append({"decoder": i + 1, "best_epoch": state.get("best_epoch"),
                          "best_val_loss": state.get("best_val_loss"),
                          "epochs": [state["epochs"][k] for k in sorted(state["epochs"], key=int)]})

    # 4. the bundle, staged beside --out, scored, then swapped in
    from captioning.artifacts.bundle import save_bundle

    for stale in target.parent.glob(f".{target.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = target.parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        _progress(run, phase="scoring fine-tuned")
        chosen_keys = [keys[i] for i in picks]
        steps = _step_decoder(trained, chosen_keys)
        after = {split: score(steps, vocab, _inputs(ws, trained, chosen_keys, pid),
                              data.references(data.splits[split]), new_words, max_length, data.splits[split])
                 for split, pid in (("dev", dev_ids), ("test", test_ids)) if pid}
        flickr_after = flickr_test.after(steps, vocab, lambda names: _inputs(ws, trained, chosen_keys, names),
                                         new_words, max_length)
        record = {"base": {"name": source_path.name, "path": str(source_path), "decoders": [i + 1 for i in picks],
                           "manifest_sha256": hashlib.sha256((source_path / "manifest.json").read_bytes()).hexdigest()},
                  "settings": {"min_count": tr.min_count, "replay": user.replay, "replay_used": replay,
                               "flickr_test": user.flickr_test,
                               "replay_photos": len(pool), "epochs": tr.epochs, "patience": tr.patience,
                               "learning_rate": tr.learning_rate, "batch_size": tr.batch_size, "seed": tr.seed,
                               "strict": user.strict, "glove": glove_path.name if glove else None},
                  "vocabulary": {"base": len(base.vocab), "grown": len(vocab), "added": added, "init": inits},
                  "training": histories, "features": feature_stats,
                  "metrics": {"decoding": f"beam {SCORE_BEAM}", "before": before, "after": after,
                              "flickr8k_test": flickr_test.record(flickr_before, flickr_after)},
                  "peak_rss_mb": peak_rss_mb()}
        manifest, member_encoders = _manifest(config, base, picks, data, record, len(train_caps))
        save_bundle(staging / target.name, trained[0], vocab, manifest, members=trained[1:],
                    member_encoders=member_encoders if len(trained) > 1 else None)
        replace_folder(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _progress(run, phase="done", bundle=str(target))
    for split in ("dev", "test"):
        if split in after:
            b, a = before[split], after[split]
            print(f"{split} ({a['photos']} photos): CIDEr-D {b['cider']:.3f} -> {a['cider']:.3f}, BLEU-4 "
                  f"{b['bleu_4']:.3f} -> {a['bleu_4']:.3f}" + (f", new words in {b['new_word_share']:.0%} -> "
                                                              f"{a['new_word_share']:.0%} of captions (references "
                                                              f"{a['new_word_share_references']:.0%})"
                                                              if new_words else ""))
    print(f"finetune: bundle {target} is complete")
    return target


def _manifest(config: RunConfig, base, picks: list[int], data: UserDataset, record: dict,
              train_captions: int) -> tuple[dict, list]:
    """The fine-tuned bundle's manifest (the base's encoder and records, ``finetune``: base, dataset, skipped rows,
    settings, vocabulary, training, scores) and the member encoder blocks of its decoders after the first."""
    from captioning.artifacts.manifest import DataInfo, encoder_key, manifest_entries

    chosen = [base.manifest.decoder_encoders[i] for i in picks]
    member_encoders = [None if encoder_key(e) == encoder_key(chosen[0]) else e for e in chosen[1:]]
    manifest = base.manifest.inherit("members", "index", "decoder", "vocab_size", "ensemble_of")
    summary = data.summary(sample=0)
    dataset = dataset_record(data)
    target, user = Path(config.workspace.out), config.user_data
    manifest.update(manifest_entries(
        encoder=chosen[0], trained_as=target.name,
        data=DataInfo.create(dataset="user", splits=summary["splits"], train_captions=train_captions),
        finetune={**record, "dataset": dataset, "skipped_rows": summary["bad_rows"][:1000]},
        command=f"python train.py finetune --from {config.pipeline.source} --captions {user.captions} "
                f"--images {user.images} --out {target}"))
    return manifest, member_encoders


def _step_decoder(decoders: list, keys: list[str]):
    """What decoding runs for these decoders (reading the encoders ``keys``), as a bundle of them would."""
    from captioning.models.stepper import EnsembleStepDecoder, StepDecoder

    steps = [StepDecoder(d) for d in decoders]
    if len(steps) == 1:
        return steps[0]
    return EnsembleStepDecoder(steps, keys if len(set(keys)) > 1 else None)


def _inputs(ws, decoders: list, keys: list[str], names: list[str]):
    """The cached features these decoders read for ``names`` (as :func:`captioning.training.inputs.decoder_inputs`)."""
    from captioning.models.stepper import MultiFeatures
    from captioning.vision.features import FeatureCache

    root = Path(ws.cache_dir) / "features"
    spatial = {k: any(d.uses_spatial for d, dk in zip(decoders, keys) if dk == k) for k in keys}
    unique = list(dict.fromkeys(keys))
    if len(unique) == 1:
        return FeatureCache(root, unique[0]).load(names, spatial[unique[0]])
    return MultiFeatures({k: FeatureCache(root, k).load(names, spatial[k]) for k in unique})


def _train_one(config: RunConfig, decoder, vocab: Vocabulary, data: UserDataset, pool: list[str], flickr,
               key: str, replay: float, run_dir: Path) -> dict:
    """Teacher-forced training of one grown decoder (resumable from ``run_dir``); returns its state."""
    from captioning.training.fit import MAX_TOKENS, TrainConfig, encode_captions, fit, make_dataset
    from captioning.training.options import OPTION
    from captioning.vision.features import FeatureCache

    ws, tr = config.workspace, config.train
    spatial = decoder.uses_spatial
    cache = FeatureCache(Path(ws.cache_dir) / "features", key)
    ids = data.photo_ids

    def pairs(photos, captions_of):
        caps = [(i, tokenize(c)) for i, p in enumerate(photos) for c in captions_of(p)]
        return np.array([i for i, _ in caps], np.int64), [w for _, w in caps]

    train_photos = data.splits["train"]
    user_idx, user_caps = pairs(train_photos, lambda p: data.captions[p])
    names = [ids[p] for p in train_photos] + pool
    replay_idx, replay_caps = pairs(pool, lambda p: flickr.captions[p]) if pool else (np.zeros(0, np.int64), [])
    replay_idx = replay_idx + len(train_photos)
    dev_idx, dev_caps = pairs(data.splits["dev"], lambda p: data.captions[p])
    load = cache.rows if spatial else cache.load
    train_feats, dev_feats = load(names, spatial), load([ids[p] for p in data.splits["dev"]], spatial)
    # The base decoder's shape; the options fine-tuning does not apply stay at their declared off values.
    cfg = TrainConfig.from_settings(tr, embed_dim=decoder.embed_dim, units=decoder.units, dropout=decoder.dropout_rate,
                                    **{name: OPTION[name].default for name in FINETUNE_LEAVES_OFF})
    user_tokens = encode_captions(user_caps, vocab, MAX_TOKENS)
    replay_tokens = encode_captions(replay_caps, vocab, MAX_TOKENS) if replay_caps else np.zeros((0, 2), np.int32)
    train_ds = mixed_dataset(train_feats, user_idx, user_tokens, replay_idx, replay_tokens, tr.batch_size, replay,
                             tr.seed)
    dev_ds = make_dataset(dev_feats, dev_idx, encode_captions(dev_caps, vocab), 256, shuffle=False)
    run = RunDir(run_dir)
    if run.claim(fingerprint(cfg.fingerprint_dict(), key, len(vocab), data.sha256, replay, len(pool))):
        print(f"finetune: settings or data changed since the checkpoints in {run_dir}; starting afresh")
    import keras

    keras.utils.set_random_seed(tr.seed)
    print(f"finetune: {decoder.kind} decoder on {len(user_caps)} captions of {len(train_photos)} photos"
          + (f", {replay:.0%} of each batch replayed from {len(pool)} Flickr8k photos" if replay else "")
          + f"; dev {len(dev_caps)} captions")
    per_batch = max(1, tr.batch_size - int(round(tr.batch_size * replay))) if pool else tr.batch_size
    steps = math.ceil(len(user_caps) / per_batch)               # one epoch: one pass over the user's captions
    dev_names = [ids[p] for p in data.splits["dev"]]
    dev_score = dev_score_callback(run_dir, lambda: cache.load(dev_names, spatial),
                                   data.references(data.splits["dev"]), vocab, MAX_TOKENS)
    return fit(decoder, train_ds, dev_ds, cfg, run_dir, verbose=0 if ws.quiet else 2,
               callbacks=[step_progress(run_dir.parent, steps), dev_score])


def step_progress(run: Path, steps: int, every: float = 2.0):
    """A Keras callback writing the step, the running loss and the epoch to ``progress.json`` (at most every
    ``every`` seconds), for a live view between the per-epoch ``state.json`` records."""
    import keras

    class _StepProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.last = epoch + 1, 0.0

        def on_train_batch_end(self, batch, logs=None):
            now = time.time()
            if now - self.last >= every or batch + 1 == steps:
                self.last = now
                loss = (logs or {}).get("loss")
                _progress(run, phase="training", epoch=self.epoch, step=batch + 1, steps=steps,
                          loss=float(loss) if loss is not None else None)

    return _StepProgress()
