"""Fine-tune a trained bundle on a user's own captioned photos (``train.py finetune``), growing its vocabulary.

    python train.py import-check --captions FILE --images DIR [--json]
    python train.py finetune --from BUNDLE --captions FILE --images DIR --out DIR [--min-count N] [--replay F]
                             [--epochs N] [--patience N] [--learning-rate X] [--members 1,3] [--seed N]
                             [--strict] [--split-file F] [--dry-run]

Steps (the base bundle is only read, never written):

1. Import the captions (:mod:`captioning.user_data`): every bad row reported with its line and skipped.
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

Replay default (:data:`DEFAULT_REPLAY`, 0.5), chosen against 0 by ``bench/finetune_new_word.py``
(docs/experiments.md): on held-out Flickr8k photos, 0.5 kept the other scenes' CIDEr-D where the base had it
(.466 vs .465) and taught the new word almost as often (59% vs 65%), while 0 lost .064 CIDEr-D on them.
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

from .config import PROJECT_ROOT, OptionError, RunConfig
from .data import DataError, Flickr8k
from .dev_score import dev_score_callback
from .files import atomic_write
from .finetune_flickr import FlickrTest
from .imported import dataset_record, write_record
from .runs import RunDir, fingerprint
from .text import Vocabulary, tokenize
from .user_data import UserDataset, load_user_data

DEFAULT_REPLAY = 0.5
DEFAULT_GLOVE = PROJECT_ROOT / ".cache" / "glove.6B.50d.txt"
NOISE = 0.1                 # new rows without a vector: mean of the old rows + this x their spread, as noise
RIDGE = 1.0                 # regularisation of the GloVe -> decoder-row map
SCORE_BEAM = 3


# --- import --------------------------------------------------------------------------------------------------
def import_data(config: RunConfig) -> UserDataset:
    user, seed = config.user_data, config.train.seed
    return load_user_data(user.captions, user.images, strict=user.strict, split_file=user.split_file, seed=seed)


def import_check(config: RunConfig) -> dict:
    """Print the import summary (``--json``: the machine-readable one) and return it."""
    data = import_data(config)
    summary = data.summary()
    print(json.dumps(summary, ensure_ascii=False, indent=1) if config.user_data.json else data.describe())
    return summary


# --- vocabulary and decoder growth ---------------------------------------------------------------------------
def grow_vocabulary(vocab: Vocabulary, captions: list[list[str]], min_count: int) -> tuple[Vocabulary, list[str]]:
    """The base vocabulary with the new words of ``captions`` (count >= ``min_count``) appended, most frequent
    first; old words keep their ids. Returns it and the added words."""
    counts = Counter(w for words in captions for w in words)
    added = sorted((w for w, c in counts.items() if c >= min_count and w not in vocab.stoi),
                   key=lambda w: (-counts[w], w))
    merged = {**vocab.counts, **{w: counts[w] for w in added}}
    return Vocabulary(vocab.itos[4:] + added, merged, vocab.min_count), added


def read_glove(path: Path | None, words: set[str]) -> dict[str, np.ndarray]:
    """The vectors of ``words`` in a GloVe text file ({} without a file)."""
    if path is None or not Path(path).is_file():
        return {}
    found = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            word, _, rest = line.partition(" ")
            if word in words and word not in found:
                try:
                    found[word] = np.asarray(rest.split(), np.float32)
                except ValueError:
                    continue
    dims = Counter(len(v) for v in found.values())
    dim = dims.most_common(1)[0][0] if dims else 0
    return {w: v for w, v in found.items() if len(v) == dim}


def _new_rows(old: np.ndarray, old_words: list[str], new_words: list[str], glove: dict[str, np.ndarray],
              rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows (len(new_words), D) for the new words from the old rows ``old`` (len(old_words), D): GloVe mapped
    into the row space where the word has a vector, else mean + noise. Returns them and how many used GloVe."""
    mean, spread = old.mean(axis=0), old.std(axis=0)
    rows = mean + NOISE * spread * rng.standard_normal((len(new_words), old.shape[1])).astype(np.float32)
    pairs = [i for i, w in enumerate(old_words) if w in glove]
    mapped = [j for j, w in enumerate(new_words) if w in glove]
    if len(pairs) >= 20 and mapped:
        x = np.stack([glove[old_words[i]] for i in pairs])                         # (n, G)
        y = old[pairs]                                                              # (n, D)
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        xc = x - xm
        w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y - ym))  # (G, D)
        new = np.stack([glove[new_words[j]] for j in mapped])
        rows[mapped] = (new - xm) @ w + ym
        return rows.astype(np.float32), len(mapped)
    return rows.astype(np.float32), 0


def grow_decoder(decoder, old_vocab: Vocabulary, new_vocab: Vocabulary, glove: dict[str, np.ndarray],
                 user_counts: Counter, seed: int = 0):
    """A copy of ``decoder`` predicting ``new_vocab`` (``old_vocab`` + appended words): every weight copied, the
    embedding and output layer extended by rows for the new words (see the module docstring). Returns the
    decoder and a record of how the new rows started."""
    old_n, new_n = len(old_vocab), len(new_vocab)
    grown = type(decoder).from_config({**decoder.get_config(), "vocab_size": new_n})
    grown.build()
    old_words, new_words = old_vocab.itos[4:], new_vocab.itos[old_n:]
    rng = np.random.default_rng(seed)
    emb = decoder.embedding.embeddings.numpy()                                     # (V, E)
    kernel, bias = decoder.classifier.kernel.numpy(), decoder.classifier.bias.numpy()   # (U, V), (V,)
    new_emb, emb_glove = _new_rows(emb[4:], old_words, new_words, glove, rng)
    new_cols, _ = _new_rows(kernel[:, 4:].T, old_words, new_words, glove, rng)
    total = sum(user_counts.values()) or 1
    shared = [bias[old_vocab.stoi[w]] - math.log(c / total) for w, c in user_counts.items() if w in old_vocab.stoi
              and old_vocab.stoi[w] >= 4]
    offset = float(np.median(shared)) if shared else 0.0
    new_bias = np.array([math.log(max(user_counts.get(w, 1), 1) / total) + offset for w in new_words], np.float32)
    replaced = {id(decoder.embedding.embeddings): np.concatenate([emb, new_emb]),
                id(decoder.classifier.kernel): np.concatenate([kernel, new_cols.T], axis=1),
                id(decoder.classifier.bias): np.concatenate([bias, new_bias])}
    for old_w, new_w in zip(decoder.weights, grown.weights):
        value = replaced.get(id(old_w), None)
        value = old_w.numpy() if value is None else value
        if tuple(value.shape) != tuple(new_w.shape):
            raise ValueError(f"cannot grow {old_w.path}: {value.shape} into {tuple(new_w.shape)}")
        new_w.assign(value)
    return grown, {"new_words": len(new_words), "glove": emb_glove, "mean_plus_noise": len(new_words) - emb_glove,
                   "bias_offset": round(offset, 4)}


# --- features ------------------------------------------------------------------------------------------------
def extract_user_features(spec, weights, photos: dict[str, Path], cache, spatial: bool, batch_size: int = 16,
                          shard_size: int = 128, progress: bool = True, on_batch=None) -> dict:
    """Cache the features of ``photos`` (cache id -> file) not cached yet, reading each through the safe loader
    (:func:`captioning.images.load_image`, so WebP and photos of any size work) at the canonical size. Shards
    are written as they fill: Ctrl-C loses at most one shard. ``on_batch(done, total)`` after every batch."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from .encoders import build_encoder
    from .features import image_pipeline
    from .images import load_image, to_canonical

    cache.remove_temporaries()
    todo = cache.missing(list(photos), spatial)
    stats = {"images": len(todo), "cached": len(photos) - len(todo), "seconds": 0.0}
    if not todo:
        return stats
    encoder, source = build_encoder(spec, weights, spatial=spatial)
    stats["weights_source"] = source
    to_input = image_pipeline(spec)
    forward = tf.function(lambda x: encoder(to_input(x), training=False), reduce_retracing=True)
    start = time.perf_counter()
    names, pooled, maps = [], [], []
    with tqdm(total=len(todo), unit="img", desc=f"features {spec.key} (your photos)", disable=not progress) as bar:
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo:lo + batch_size]
            images = np.stack([to_canonical(load_image(photos[n])) for n in batch])       # (B, 224, 224, 3)
            out = forward(tf.constant(images))
            names += batch
            pooled.append((out[0] if isinstance(out, (list, tuple)) else out).numpy().astype(np.float16))
            if spatial:
                maps.append(out[1].numpy().astype(np.float16))
            bar.update(len(batch))
            if on_batch:
                on_batch(lo + len(batch), len(todo))
            if len(names) >= shard_size or lo + batch_size >= len(todo):
                cache.add_shard(names, np.concatenate(pooled), np.concatenate(maps) if spatial else None)
                names, pooled, maps = [], [], []
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return stats


def _flickr8k(config: RunConfig) -> Flickr8k | None:
    """Flickr8k for replay when it is reachable (``--data-dir`` or $FLICKR8K_DIR), else None."""
    try:
        return Flickr8k.load(config.workspace.data_dir, check_images=False)
    except DataError:
        return None


def replay_pool(ds: Flickr8k, user_captions: int, replay: float, seed: int) -> list[str]:
    """Flickr8k training photos enough for every epoch's replay share (five captions a photo), seeded."""
    if replay <= 0:
        return []
    needed = math.ceil(user_captions * replay / (1 - replay) / 5)
    names = sorted(ds.splits["train"])
    np.random.default_rng(seed).shuffle(names)
    return sorted(names[:max(needed, 1)])


# --- training ------------------------------------------------------------------------------------------------
def mixed_dataset(features, user_idx, user_tokens, replay_idx, replay_tokens, batch_size: int, replay: float,
                  seed: int):
    """tf.data of ((features, input ids), target ids): each batch ``1 - replay`` user captions and ``replay``
    replay captions (the replay stream repeats); one epoch is one pass over the user's captions."""
    import tensorflow as tf

    from .training import example_maker, make_dataset

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
    from .decoding import DecodeConfig, decode
    from .metrics import coco_scores

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
    from .encoders import get_spec
    from .features import FeatureCache
    from .recipes import ensure_features

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
    from .bundle import replace_folder
    from .recipes import _load_bundle, peak_rss_mb

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
    from .recipes import decoder_inputs

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
    from .bundle import save_bundle

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
    from .bundle import encoder_key

    chosen = [base.manifest.decoder_encoders[i] for i in picks]
    member_encoders = [None if encoder_key(e) == encoder_key(chosen[0]) else dict(e.raw) for e in chosen[1:]]
    manifest = {k: v for k, v in base.manifest.raw.items()
                if k not in ("files", "members", "name", "created", "versions", "index", "decoder", "vocab_size",
                             "ensemble_of")}
    summary = data.summary(sample=0)
    dataset = dataset_record(data)
    target, user = Path(config.workspace.out), config.user_data
    manifest.update(encoder=dict(chosen[0].raw), trained_as=target.name,
                    data={"dataset": "user", "splits": summary["splits"], "train_captions": train_captions},
                    finetune={**record, "dataset": dataset, "skipped_rows": summary["bad_rows"][:1000]},
                    command=f"python train.py finetune --from {config.pipeline.source} --captions {user.captions} "
                            f"--images {user.images} --out {target}")
    return manifest, member_encoders


def _step_decoder(decoders: list, keys: list[str]):
    """What decoding runs for these decoders (reading the encoders ``keys``), as a bundle of them would."""
    from .stepper import EnsembleStepDecoder, StepDecoder

    steps = [StepDecoder(d) for d in decoders]
    if len(steps) == 1:
        return steps[0]
    return EnsembleStepDecoder(steps, keys if len(set(keys)) > 1 else None)


def _inputs(ws, decoders: list, keys: list[str], names: list[str]):
    """The cached features these decoders read for ``names`` (as :func:`captioning.recipes.decoder_inputs`)."""
    from .features import FeatureCache
    from .stepper import MultiFeatures

    root = Path(ws.cache_dir) / "features"
    spatial = {k: any(d.uses_spatial for d, dk in zip(decoders, keys) if dk == k) for k in keys}
    unique = list(dict.fromkeys(keys))
    if len(unique) == 1:
        return FeatureCache(root, unique[0]).load(names, spatial[unique[0]])
    return MultiFeatures({k: FeatureCache(root, k).load(names, spatial[k]) for k in unique})


def _train_one(config: RunConfig, decoder, vocab: Vocabulary, data: UserDataset, pool: list[str], flickr,
               key: str, replay: float, run_dir: Path) -> dict:
    """Teacher-forced training of one grown decoder (resumable from ``run_dir``); returns its state."""
    from .features import FeatureCache
    from .training import MAX_TOKENS, TrainConfig, encode_captions, fit, make_dataset

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
    cfg = TrainConfig(embed_dim=decoder.embed_dim, units=decoder.units, dropout=decoder.dropout_rate,
                      learning_rate=tr.learning_rate, batch_size=tr.batch_size, epochs=tr.epochs,
                      patience=tr.patience, min_count=tr.min_count, seed=tr.seed)
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


# --- training from scratch on a user's photos ----------------------------------------------------------------
def user_records(config: RunConfig) -> Flickr8k:
    """The user's photos as dataset records for ``train.py [train] --captions FILE --images DIR`` (training from
    scratch): imported and split as for finetune, their features cached first through the safe loader, records
    named by the photos' content ids (the names the feature cache knows them by)."""
    from .encoders import get_spec
    from .features import FeatureCache

    data = import_data(config)
    print(data.describe())
    ids = data.photo_ids
    feats = config.features
    spec = get_spec(feats.encoder, feats.alpha)
    cache = FeatureCache(Path(config.workspace.cache_dir) / "features", spec.key)
    photos = {ids[p]: data.path(p) for split in data.splits.values() for p in split}
    extract_user_features(spec, feats.weights, photos, cache, feats.spatial or config.train.spatial,
                          progress=not config.workspace.quiet)
    captions = {ids[p]: caps for p, caps in data.captions.items()}
    splits = {s: [ids[p] for p in photos_] for s, photos_ in data.splits.items()}
    if not splits.get("test"):
        splits["test"] = list(splits["dev"])      # a split file without test photos: scores on dev
    return Flickr8k(data.captions_file.parent, data.images_dir, captions, splits,
                    name=f"user:{data.captions_file.name}")
