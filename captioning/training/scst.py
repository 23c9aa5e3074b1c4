"""Self-critical sequence training (SCST): fine-tune a trained decoder on the CIDEr-D of its own captions.

Teacher forcing trains a decoder on one word at a time given the reference prefix; it is then judged on
whole captions it wrote itself. SCST (Rennie et al. 2017, "Self-critical Sequence Training for Image
Captioning") closes that gap with REINFORCE: sample captions from the model, score each against the
image's references with CIDEr-D, and raise the log-probability of captions that beat a baseline.
The baseline here is the mean reward of the other samples of the same image (Luo 2020, "A Better Variant
of Self-Critical Sequence Training"), which needs no extra greedy pass.

    for every batch of training images:
        K captions per image  ~ the decoder (sampled, no dropout)           (B*K, T)
        reward r_ik           = CIDEr-D(caption, the image's references)   document frequencies of train
        advantage a_ik        = r_ik - mean_{j != k} r_ij
        loss                  = - sum a_ik * log p(token) / number of tokens

The reward, :class:`captioning.evaluation.metrics.CiderD`, is the coco-caption toolkit's CIDEr-D (pycocoevalcap
``CiderScorer``: tf-idf n-gram vectors, clipped, Gaussian length penalty with sigma 6, x10) with the document
frequencies fixed once from a corpus of reference sets, as SCST needs; with the evaluation's references as that
corpus it reproduces the toolkit's scores (tests/test_scst.py).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from captioning.data.text import Vocabulary
from captioning.decoding.search import Sampler
from captioning.evaluation.metrics import CiderD
from captioning.training.options import check, default, record
from captioning.training.rundirs import RunDir

Tokens = Sequence[str]


def leave_one_out_advantage(rewards: np.ndarray) -> np.ndarray:
    """(B, K) rewards -> each sample's reward minus the mean of the image's other K-1 samples."""
    rewards = np.asarray(rewards, np.float64)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples per image")
    baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    return (rewards - baseline).astype(np.float32)


@dataclass
class SCSTConfig:
    """The fine-tuning knobs: options of :mod:`captioning.training.options`, their defaults ``scst``'s (after Rennie
    et al. / Luo at a Flickr8k scale) and their ranges checked there."""

    learning_rate: float = default("learning_rate", "scst")
    epochs: int = default("epochs", "scst")
    patience: int = default("patience", "scst")        # stop after this many epochs without a better dev CIDEr-D
    batch_size: int = default("batch_size", "scst")    # images per update (x samples captions)
    samples: int = default("samples", "scst")          # captions sampled per image (baseline: the others' mean)
    max_length: int = default("max_length", "scst")    # tokens sampled at most (words + <end>)
    seed: int = default("seed", "scst")
    select_beam: int = default("select_beam", "scst")  # dev CIDEr-D at this beam width picks the best epoch

    def __post_init__(self):
        check(self)

    @classmethod
    def from_settings(cls, settings, **given) -> SCSTConfig:
        """From a :class:`~captioning.training.settings.TrainSettings` by name; the knobs no command line offers
        keep their declared defaults."""
        return record(cls, settings, **given)

    def to_dict(self) -> dict:
        return asdict(self)


def captions_from_ids(ids: np.ndarray, vocab: Vocabulary) -> list[list[str]]:
    """Sampled ids (0 after <end>) -> word lists without specials."""
    return [vocab.decode([int(t) for t in row if t != 0]) for row in ids]


def teacher_inputs(ids: np.ndarray, start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled ids (N, T) -> decoder inputs ``<start> w1..`` and the targets ``w1.. <end>`` (0-padded, trimmed)."""
    width = max(int((ids != 0).sum(axis=1).max()), 1)
    targets = ids[:, :width]
    inputs = np.zeros_like(targets)
    inputs[:, 0] = start_id
    inputs[:, 1:] = targets[:, :-1]
    inputs[targets == 0] = 0                      # padding in, padding out
    return inputs, targets


def make_train_step(decoder, optimizer, max_rows: int = 160):
    """A REINFORCE update: features, inputs, targets (N, T), advantages (N,) -> loss.

    The loss is ``- sum a * log p(token) / number of tokens`` over all N rows; its gradient is accumulated over
    chunks of at most ``max_rows`` rows (an attention decoder keeps (rows, P, A) activations for every step, so
    320 rows at once would take attention fine-tuning near 4 GB), then applied once.
    """
    import tensorflow as tf
    from keras import ops

    variables = decoder.trainable_variables

    @tf.function(reduce_retracing=True)
    def chunk_gradients(features, inputs, targets, advantages, n_tokens):
        with tf.GradientTape() as tape:
            logits = decoder((features, inputs), training=False)                        # (N, T, V), no dropout
            log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
            picked = ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1), -1)
            mask = ops.cast(ops.not_equal(targets, 0), "float32")
            loss = -ops.sum(picked * mask * ops.expand_dims(advantages, -1)) / n_tokens
        grads = tape.gradient(loss, variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]          # the embedding's sparse gradient, dense

    def train_step(features, inputs, targets, advantages) -> float:
        return accumulate(chunk_gradients, optimizer, variables, (features, inputs, targets, advantages), max_rows)

    return train_step


def accumulate(chunk_gradients, optimizer, variables, arrays: tuple, max_rows: int) -> float:
    """Apply one update whose gradient is summed over chunks of at most ``max_rows`` rows of ``arrays`` (the
    targets second to last, the advantages last): ``chunk_gradients(*chunk, n_tokens) -> (loss, grads)``, each
    chunk's loss divided by the whole batch's token count. Returns the batch's loss."""
    targets = np.asarray(arrays[-2])
    n_tokens = np.float32(max(int((targets != 0).sum()), 1))
    total, grads = 0.0, None
    for lo in range(0, len(targets), max_rows):
        part = slice(lo, lo + max_rows)
        loss, g = chunk_gradients(*(a[part] for a in arrays), n_tokens)
        total += float(loss)
        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
    optimizer.apply_gradients(zip(grads, variables))
    return total


class PlainPolicy:
    """How SCST samples and updates a decoder that reads the photo alone: :class:`Sampler` draws through the
    decoder's step API; :func:`make_train_step` scores the draws teacher-forced. (A decoder with a memory:
    :class:`captioning.training.scst_retrieval.RetrievalPolicy`.)"""

    def __init__(self, decoder, vocab: Vocabulary, seed: int, optimizer):
        self.sampler, self.vocab = Sampler(decoder, vocab, seed), vocab
        self.train_step = make_train_step(decoder, optimizer)
        self.ids, self.samples = None, 1

    def sample(self, features: np.ndarray, photos: np.ndarray, samples: int, max_length: int) -> list[list[str]]:
        """``samples`` captions per photo (rows grouped per photo) as word lists; ``photos``: their rows in the
        training set (unused here)."""
        self.ids, self.samples = self.sampler.sample(features, samples, max_length), samples
        return captions_from_ids(self.ids, self.vocab)

    def update(self, features: np.ndarray, advantages: np.ndarray) -> float:
        """One REINFORCE step on the captions of the last :meth:`sample`."""
        inputs, targets = teacher_inputs(self.ids, self.vocab.start_id)
        return self.train_step(np.repeat(features, self.samples, axis=0), inputs, targets, advantages)


def finetune(decoder, vocab: Vocabulary, train_features, train_references: Sequence[Sequence[Tokens]],
             evaluate_dev: Callable[[object], dict], config: SCSTConfig, run_dir: str | os.PathLike,
             progress: bool = True, log: Callable[[str], None] = print, policy=None) -> dict:
    """SCST on the training images; after every epoch ``evaluate_dev(decoder)`` -> {"cider": ...} picks the best.

    ``train_features`` is indexable by image (an array or a FeatureRows table), aligned with
    ``train_references``. ``policy(decoder, vocab, seed, optimizer)`` makes the sampler and update
    (:class:`PlainPolicy` by default; a retrieval decoder needs one that knows what each training photo reads:
    :class:`captioning.training.scst_retrieval.RetrievalPolicy`).

    Resumable: ``run_dir`` keeps state.json, the last and the best weights; a rerun continues after the last
    finished epoch (with a fresh optimizer). Returns the state; the decoder ends holding the best weights.
    """
    import keras

    policy = policy or PlainPolicy
    if getattr(decoder, "uses_memory", False) and policy is PlainPolicy:
        raise ValueError("SCST of a retrieval decoder needs the training photos' memory: pass "
                         "policy=RetrievalPolicy.over(memory) (captioning.training.scst_retrieval)")
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    best_path, last_path = run.best_path, run.last_path
    state = run.load_state({"epochs": {}, "best_epoch": None, "best_dev_cider": None})

    def save_state():
        run.save_state(state)

    def save_weights(path: Path):
        run.save_weights(decoder, path)

    if state["best_epoch"] is None:                      # epoch 0: the starting point, so SCST can only improve it
        dev = evaluate_dev(decoder)
        state.update(start_dev=dev, best_epoch=0, best_dev_cider=dev["cider"])
        save_weights(best_path)
        save_state()
        log(f"scst: start, dev CIDEr-D {dev['cider']:.4f}" + _dev_extra(dev))
    done_epochs = len(state["epochs"])
    if done_epochs and last_path.is_file():
        decoder.load_weights(last_path)
        log(f"scst: resuming after epoch {done_epochs}")

    scorer = CiderD(train_references)
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=5.0)
    policy = policy(decoder, vocab, config.seed + done_epochs, optimizer)
    rng = np.random.default_rng(config.seed)
    n_images = len(train_references)
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(n_images)                 # drawn every epoch, so a resumed run sees the same order
        if epoch <= done_epochs:
            continue
        if epoch - (state["best_epoch"] or 0) > config.patience:
            state["stopped_early"] = True
            save_state()
            log(f"scst: stopped, {config.patience} epochs without a better dev CIDEr-D than epoch "
                f"{state['best_epoch']}")
            break
        t0 = time.perf_counter()
        rewards, losses = [], []
        batches = range(0, n_images, config.batch_size)
        bar = _progress(batches, f"scst epoch {epoch}", progress)
        for start in bar:
            idx = np.sort(order[start:start + config.batch_size])
            feats = np.asarray(train_features[idx], np.float32)
            caps = policy.sample(feats, idx, config.samples, config.max_length)
            reward = np.array([scorer.score(c, train_references[i]) for c, i in
                               zip(caps, np.repeat(idx, config.samples))]).reshape(len(idx), config.samples)
            advantage = leave_one_out_advantage(reward).ravel()
            loss = policy.update(feats, advantage)
            rewards.append(float(reward.mean()))
            losses.append(float(loss))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(reward=f"{np.mean(rewards[-20:]):.3f}")
        seconds = time.perf_counter() - t0
        save_weights(last_path)
        dev = evaluate_dev(decoder)
        state["epochs"][str(epoch)] = {"train_reward": round(float(np.mean(rewards)), 4),
                                       "loss": round(float(np.mean(losses)), 5), "dev": dev,
                                       "seconds": round(seconds, 1)}
        better = dev["cider"] > state["best_dev_cider"]
        if better:
            save_weights(best_path)
            state.update(best_epoch=epoch, best_dev_cider=dev["cider"])
        save_state()
        log(f"scst epoch {epoch}: train reward {np.mean(rewards):.4f}, dev CIDEr-D {dev['cider']:.4f}"
            f"{_dev_extra(dev)} ({seconds:.0f}s){'  *best' if better else ''}")
    decoder.load_weights(best_path)
    return state


def _dev_extra(dev: dict) -> str:
    return "".join(f", {k} {v:.4f}" for k, v in dev.items() if k != "cider" and isinstance(v, float))


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)
