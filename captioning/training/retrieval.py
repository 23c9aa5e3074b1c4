"""Train the retrieval decoder (:mod:`captioning.models.retrieval`) and package it as a bundle whose datastore is
its retrieval index with every caption of the training photos (validated on load like any index).

Training examples: each training caption, its photo's pooled features and the captions of the photo's nearest
training photos (the photo itself never: it would teach the decoder to copy its own caption). Each example reads
a random number of neighbours between ``min_neighbours`` and the model's slots, one random caption of each, drawn
again every epoch, so the decoder copes with any k at caption time. Targets use per-example extended ids: a word
outside the vocabulary that a retrieved caption holds is a copy target, any other unknown word is <unk>. With a
``copy_rate``, some examples also hide a shared word from the vocabulary (:mod:`captioning.training.copy_targets`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from captioning.artifacts.manifest import RetrievalTrainingInfo, manifest_entries
from captioning.data.text import Vocabulary, tokenize
from captioning.evaluation.trust import RetrievalIndex, normalise
from captioning.models.retrieval_steps import encode_memory
from captioning.training.copy_targets import hidden_ids, hidden_words
from captioning.training.fit import MAX_TOKENS


def nearest(vectors: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Rows (Q, k) of the ``k`` most similar rows of ``vectors`` (unit rows) for each query, best first; with
    ``exclude_self`` query i is row i of ``vectors`` and never its own neighbour."""
    sims = normalise(queries) @ normalise(vectors).T                                   # (Q, N)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    rows = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, rows, axis=1), axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)


def make_examples(photos: list[int], captions: list[list[list[str]]], neighbours: np.ndarray, vocab: Vocabulary,
                  slots: int, caption_tokens: int, rng: np.random.Generator, min_neighbours: int = 2,
                  fixed_k: int | None = None, one_caption: bool = True, copy_rate: float = 0.0, most_hidden: int = 1):
    """One example per photo (one of its captions at random; ``one_caption=False``: one per caption): memory ids,
    memory extended ids, decoder inputs, targets (extended ids), the photo of each example and its hidden
    vocabulary ids (n, ``most_hidden``; 0 = none).

    ``photos[i]`` indexes ``captions`` (all tokenised captions per photo) and ``neighbours`` (photo -> rows of
    ``captions``); ``fixed_k`` reads exactly that many neighbours (dev), else a random count per example.
    ``copy_rate``: the share of examples with a word hidden from the vocabulary, a copy-only target
    (:mod:`captioning.training.copy_targets`)."""
    rows = [(p, int(rng.integers(len(captions[p])))) for p in photos] if one_caption else \
        [(p, c) for p in photos for c in range(len(captions[p]))]
    n, m = len(rows), slots * caption_tokens
    memory, memory_ext = np.zeros((n, m), np.int32), np.zeros((n, m), np.int32)
    inputs, targets = np.zeros((n, MAX_TOKENS - 1), np.int32), np.zeros((n, MAX_TOKENS - 1), np.int32)
    hidden = np.zeros((n, max(most_hidden, 1)), np.int32)
    for i, (p, c) in enumerate(rows):
        k = fixed_k or int(rng.integers(min_neighbours, slots + 1))
        near = [captions[r][int(rng.integers(len(captions[r])))] for r in neighbours[p][:k]]
        words = captions[p][c][: MAX_TOKENS - 2]
        hide = hidden_words(words, [w[:caption_tokens] for w in near], vocab, rng, copy_rate, most_hidden)
        ids, ext, extra = encode_memory([near], vocab, slots, caption_tokens, hidden=frozenset(hide))
        memory[i], memory_ext[i], hidden[i] = ids[0], ext[0], hidden_ids(hide, vocab, most_hidden)
        known = {w: t for w, t in vocab.stoi.items() if w not in hide} if hide else vocab.stoi
        seq = [vocab.start_id] + [known.get(w, extra.get(w, vocab.unk_id)) for w in words] + [vocab.end_id]
        inputs[i, : len(seq) - 1] = [t if t < len(vocab) else vocab.unk_id for t in seq[:-1]]
        targets[i, : len(seq) - 1] = seq[1:]
    return memory, memory_ext, inputs, targets, np.array([p for p, _ in rows], np.int32), hidden


def train(model, features: np.ndarray, captions: list[list[list[str]]], train_photos: list[int],
          neighbours: np.ndarray, vocab: Vocabulary, dev: tuple | None, epochs: int, batch_size: int = 64,
          learning_rate: float = 5e-4, seed: int = 42, on_epoch=None, log=print, copy_rate: float = 0.0,
          one_caption: bool = True) -> list[dict]:
    """Adam on :func:`~captioning.models.retrieval.copy_loss`; ``dev`` = (features, captions, neighbours,
    photos) scored after each epoch; ``on_epoch(epoch, entry, improved)`` after each (e.g. save a bundle).
    ``copy_rate``: the share of training examples with a copy-only target (a word hidden from the vocabulary);
    with it, the dev split is also scored with a word hidden wherever one can be (``dev_copy_loss``: the loss on
    the hidden words' tokens only, i.e. how well the decoder copies a word it cannot generate)."""
    import keras
    import tensorflow as tf

    from captioning.models.retrieval import copy_loss

    rng = np.random.default_rng(seed)
    optimizer = keras.optimizers.Adam(learning_rate, clipnorm=5.0)

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss = copy_loss(model, batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        return copy_loss(model, batch, training=False)

    dev_batches = None
    if dev is not None:
        dev_features, dev_captions, dev_neighbours, dev_photos = dev
        d = make_examples(dev_photos, dev_captions, dev_neighbours, vocab, model.neighbours, model.caption_tokens,
                          np.random.default_rng(0), fixed_k=min(5, model.neighbours))
        hid = make_examples(dev_photos, dev_captions, dev_neighbours, vocab, model.neighbours, model.caption_tokens,
                            np.random.default_rng(0), fixed_k=min(5, model.neighbours), copy_rate=1.0)
        only = hid[3] >= len(vocab)                             # score the hidden words' tokens only
        hid = hid[:3] + (np.where(only, hid[3], 0),) + hid[4:]
        keep = only.any(axis=1)
        dev_batches = (dev_features, d, tuple(a[keep] for a in hid) if copy_rate > 0 else None)
    history, best = [], np.inf
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        memory, memory_ext, inputs, targets, photo, hidden = make_examples(
            train_photos, captions, neighbours, vocab, model.neighbours, model.caption_tokens, rng,
            one_caption=one_caption, copy_rate=copy_rate)
        order = rng.permutation(len(photo))
        losses = []
        for lo in range(0, len(order) - batch_size + 1, batch_size):      # whole batches: one compiled shape
            idx = order[lo: lo + batch_size]
            t = _length(targets[idx])
            batch = (features[photo[idx]].astype(np.float32), memory[idx], memory_ext[idx], inputs[idx, :t],
                     targets[idx, :t], hidden[idx])
            losses.append(float(train_step(batch)))
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - start, 1)}
        if dev_batches is not None:
            feats, plain, hid = dev_batches
            entry["dev_loss"] = _dev_loss(eval_step, feats, plain)
            if hid is not None:
                entry["dev_copy_loss"] = _dev_loss(eval_step, feats, hid)
        improved = entry.get("dev_loss", -epoch) < best
        best = min(best, entry.get("dev_loss", -epoch))
        history.append(entry)
        log(json.dumps(entry))
        if on_epoch:
            on_epoch(epoch, entry, improved)
    return history


def _dev_loss(eval_step, features: np.ndarray, examples: tuple, size: int = 256) -> float:
    """Mean of the batches' losses over ``examples`` (make_examples' arrays)."""
    memory, ext, inputs, targets, photo, hidden = examples
    return float(np.mean([float(eval_step((features[photo[lo: lo + size]].astype(np.float32), memory[lo: lo + size],
                                           ext[lo: lo + size], inputs[lo: lo + size], targets[lo: lo + size],
                                           hidden[lo: lo + size])))
                          for lo in range(0, len(photo), size)]))


def _length(targets: np.ndarray) -> int:
    """The batch's longest caption in tokens, rounded up to a multiple of 8 (few compiled shapes)."""
    longest = int((targets != 0).sum(axis=1).max())
    return min(targets.shape[1], -(-longest // 8) * 8)


def datastore_index(base: RetrievalIndex, all_captions: dict[str, list[str]]) -> RetrievalIndex:
    """The base bundle's index (training photos' unit vectors, calibration) holding every caption of each photo:
    the retrieval decoder's datastore."""
    return RetrievalIndex(base.vectors, base.names, [list(all_captions[n]) for n in base.names], base.encoder,
                          base.k, base.calibration)


def write_bundle(out: str | Path, model, vocab: Vocabulary, base_manifest: dict, index: RetrievalIndex,
                 history: list[dict], command: str, warm_start: str | None = None) -> Path:
    """Save the decoder, the vocabulary and the datastore (the index) as a bundle at ``out``; ``warm_start``
    names the decoder training started from (default: the base bundle's)."""
    from captioning.artifacts.bundle import save_bundle, save_index

    keep = ("data", "encoder", "format_version", "max_length", "min_count")
    manifest = {key: base_manifest[key] for key in keep if key in base_manifest}
    manifest.update(manifest_entries(
        command=command, trained_as=Path(out).name, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        training=RetrievalTrainingInfo.create(
            history=history, warm_start=warm_start or base_manifest.get("name"), neighbours=model.neighbours,
            caption_tokens=model.caption_tokens, copy=model.copy, unk_gate=model.unk_gate,
            prev_keys=model.prev_keys, datastore=f"{len(index)} training photos, every caption")))
    path = save_bundle(out, model, vocab, manifest)
    save_index(path, index)
    return path


def record_new_word_boost(path: str | Path, boost: float, evidence: str) -> None:
    """Write the dev-chosen new-word boost (:class:`~captioning.models.retrieval_steps.RetrievalStepDecoder`) into
    a retrieval bundle's manifest (atomically), with what chose it; the bundle's step decoder applies it."""
    import os

    target = Path(path) / "manifest.json"
    manifest = json.loads(target.read_text(encoding="utf-8"))
    training = RetrievalTrainingInfo.from_dict(manifest.get("training") or {}).to_dict()
    training.update(RetrievalTrainingInfo.create(new_word_boost=float(boost), new_word_boost_chosen_by=evidence))
    manifest["training"] = training
    tmp = target.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target)


def tokenised(captions: dict[str, list[str]], names: list[str]) -> list[list[list[str]]]:
    return [[tokenize(c) for c in captions[n]] for n in names]
