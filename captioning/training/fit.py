"""Teacher-forced training of a decoder on cached features, with resumable checkpoints.

Whole captions train at once: the decoder sees ``<start> w1 .. wn`` and predicts ``w1 .. wn <end>``
in one pass with a masked sparse cross-entropy (padding ignored), instead of the seeds' one-hot
(image, prefix) -> word arrays.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from captioning.data.text import Vocabulary
from captioning.training.options import MAX_TOKENS, OPTION, check, default, record
from captioning.training.rundirs import RunDir


@dataclass
class TrainConfig:
    """What the fit loop reads (and a bundle's manifest records as ``training.config``): options of
    :mod:`captioning.training.options`, their defaults ``train``'s and their ranges checked there."""

    embed_dim: int = default("embed_dim")
    units: int = default("units")
    dropout: float = default("dropout")
    learning_rate: float = default("learning_rate")
    batch_size: int = default("batch_size")
    epochs: int = default("epochs")
    patience: int = default("patience")
    min_count: int = default("min_count")
    seed: int = default("seed")
    label_smoothing: float = default("label_smoothing")   # share of each target's probability over the vocabulary
    lr_decay: float = default("lr_decay")                 # learning rate x this after an epoch without a better dev
    #                                                       loss (1 = off)
    embeddings: str | None = default("embeddings")        # pretrained word vectors the embedding started from (file)
    max_words: int | None = default("max_words")          # training captions cut to this many words (None = whole)

    def __post_init__(self):
        check(self)

    @classmethod
    def from_settings(cls, settings, **given) -> TrainConfig:
        """From a :class:`~captioning.training.settings.TrainSettings` (or any object with these names) by name;
        ``given`` overrides (e.g. the decoder's resolved ``units``)."""
        return record(cls, settings, **given)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint_dict(self) -> dict:
        """The settings that identify a run; options left at their off value are omitted, so runs
        checkpointed before those options existed still resume."""
        d = self.to_dict()
        for key in ("label_smoothing", "lr_decay", "embeddings", "max_words"):
            if d[key] == OPTION[key].default:
                del d[key]
        return d


def masked_smoothed_loss(label_smoothing: float):
    """Sparse cross-entropy from logits with label smoothing, averaged over non-padding tokens (id 0).

    Keras's SparseCategoricalCrossentropy has no label smoothing; this is its ``ignore_class=0``
    counterpart with the target distribution ``(1 - eps) * onehot + eps / V``.
    """
    from keras import ops

    eps = float(label_smoothing)

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        uniform = -ops.mean(log_probs, axis=-1)
        mask = ops.cast(ops.not_equal(y_true, 0), "float32")
        per_token = ((1.0 - eps) * nll + eps * uniform) * mask
        return ops.sum(per_token) / ops.maximum(ops.sum(mask), 1.0)

    loss.__name__ = f"smoothed_cross_entropy_{eps:g}"
    return loss


def encode_captions(captions: Sequence[Sequence[str]], vocab: Vocabulary, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """Tokenised captions -> int32 (N, T) ids padded with 0, each framed by <start>/<end>."""
    rows = [vocab.encode(words, max_tokens) for words in captions]
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def example_maker(features):
    """The tf.data map from a batch of (image rows (B,), caption ids (B, T)) to ((features (B, ...) float32, input
    ids (B, T'-1)), target ids (B, T'-1)), trimmed to the batch's longest caption T'.

    ``features`` is an in-memory float16 array (pooled features: 8000 x 2048 is 33 MB) or a
    :class:`~captioning.vision.features.FeatureRows` table on disk (spatial maps: 2.9 GB for train and dev), whose
    rows are read per batch. Either way they are cast to float32 per batch.
    """
    import tensorflow as tf

    if isinstance(features, np.ndarray):
        table = tf.constant(features)                                             # (images, ...) float16

        def gather(idx):
            return tf.gather(table, idx)
    else:
        row_shape = tuple(features.shape[1:])

        def gather(idx):
            rows = tf.numpy_function(features.take, [idx], tf.float16, stateful=False)
            return tf.ensure_shape(rows, (None, *row_shape))

    def to_example(idx, ids):
        width = tf.reduce_max(tf.reduce_sum(tf.cast(ids > 0, tf.int32), axis=1))  # longest caption in batch
        ids = ids[:, :width]                                                      # (B, T)
        return (tf.cast(gather(idx), tf.float32), ids[:, :-1]), ids[:, 1:]

    return to_example


def make_dataset(features, image_index: np.ndarray, tokens: np.ndarray, batch_size: int,
                 shuffle: bool, seed: int = 0, drop_remainder: bool = False):
    """tf.data of ((features (B, ...), input ids (B, T-1)), target ids (B, T-1)), trimmed per batch
    (:func:`example_maker`)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((image_index.astype(np.int32), tokens))
    if shuffle:
        ds = ds.shuffle(len(tokens), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(example_maker(features),
                                                                 num_parallel_calls=tf.data.AUTOTUNE)
    # Several workers: each takes its share of every batch (not of files: there are none).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(2).with_options(options)


class Checkpointer:
    """Keeps the best weights and the training history on disk, surviving interruption.

    State lives in ``run_dir/state.json`` (written atomically), best weights in
    ``run_dir/best.weights.h5`` (a :class:`~captioning.training.rundirs.RunDir`); Keras's BackupAndRestore restores the
    last epoch's model and optimizer, so a rerun continues where the killed one stopped.
    """

    def __init__(self, run_dir: Path, patience: int, lr_decay: float = 1.0):
        import keras

        self.run = RunDir(run_dir)
        self.run_dir, self.patience, self.lr_decay = self.run.path, patience, float(lr_decay)
        self.state_path, self.best_path = self.run.state_path, self.run.best_path
        self.state = self.run.load_state({"best_val_loss": None, "best_epoch": None, "epochs": {}})
        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                # After BackupAndRestore: a resumed run continues at the decayed learning rate.
                if outer.state.get("learning_rate") is not None:
                    self.model.optimizer.learning_rate.assign(outer.state["learning_rate"])

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer._epoch_end(self.model, epoch, logs or {}, time.perf_counter() - self._t0)

        self.callback = _Callback()

    def _epoch_end(self, model, epoch: int, logs: dict, seconds: float) -> None:
        val = float(logs.get("val_loss", logs.get("loss")))
        self.state["epochs"][str(epoch + 1)] = {"loss": float(logs.get("loss", np.nan)), "val_loss": val,
                                                "seconds": round(seconds, 2)}
        best = self.state["best_val_loss"]
        if best is None or val < best:
            self.run.save_weights(model, self.best_path)
            self.state.update(best_val_loss=val, best_epoch=epoch + 1)
        elif self.lr_decay < 1.0:
            lr = float(model.optimizer.learning_rate.numpy()) * self.lr_decay
            model.optimizer.learning_rate.assign(lr)
            self.state["learning_rate"] = lr
            self.state["epochs"][str(epoch + 1)]["next_learning_rate"] = lr
        if epoch + 1 - (self.state["best_epoch"] or 0) >= self.patience:
            model.stop_training = True
            self.state["stopped_early"] = True
        self.run.save_state(self.state)
        print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val_loss {val:.4f}  "
              f"({seconds:.1f}s){'  *best' if self.state['best_epoch'] == epoch + 1 else ''}", flush=True)

    def finished(self, max_epochs: int) -> bool:
        return bool(self.state.get("stopped_early")) or len(self.state["epochs"]) >= max_epochs


STRATEGIES = ("default", "mirrored", "multiworker")
PEER_TIMEOUT = OPTION["peer_timeout"].default   # seconds a multi-worker run waits on a silent peer before it fails


class WorkerLost(RuntimeError):
    """A multi-worker run lost a peer (killed, crashed, unreachable); restart every worker to resume."""


def make_strategy(name: str = "default", peer_timeout: float = PEER_TIMEOUT):
    """A tf.distribute strategy: one device, all local GPUs (mirrored), or the workers in $TF_CONFIG.

    For ``multiworker`` a dead peer must fail the run, not hang it: the coordination service (which TensorFlow
    starts for MultiWorkerMirroredStrategy) is configured with a heartbeat timeout, and every collective
    (gradient all-reduce, initial broadcast) with ``CommunicationOptions(timeout_seconds=...)``; both are
    ``peer_timeout``, which must exceed the longest a healthy worker waits for a slower one (tracing the first
    step, an epoch's validation). Without $TF_CONFIG it is a single local worker.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        _configure_coordination(peer_timeout)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(peer_timeout))
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _configure_coordination(peer_timeout: float) -> None:
    """Start TensorFlow's coordination service with a heartbeat timeout (what MWMS does, plus the timeout)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    resolver = TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    if not spec.jobs or context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    ms = int(peer_timeout * 1000)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=ms, shutdown_barrier_timeout_in_ms=ms,
        cluster_register_timeout_in_ms=max(ms, 120_000))


def worker_role(strategy) -> tuple[bool, int]:
    """(is this process the chief, its worker index): the chief writes checkpoints and the bundle.

    The chief is task ``chief`` if $TF_CONFIG names one, else ``worker`` 0 (TensorFlow's convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = int(getattr(resolver, "task_id", 0) or 0)
    if not task_type:
        return True, 0
    has_chief = "chief" in resolver.cluster_spec().jobs
    return (task_type == "chief") or (task_type == "worker" and task_id == 0 and not has_chief), task_id


def worker_run_dir(run_dir: Path, chief: bool, index: int, seed: bool = True) -> Path:
    """Where this worker keeps its checkpoints: the chief in ``run_dir``; any other worker in a scratch folder
    ``<run_dir>.worker-<index>`` seeded (unless ``seed`` is false) from the chief's last checkpoint, so every
    worker resumes from the same epoch (``run_dir`` is a folder the workers share, as in TensorFlow's
    multi-worker guide)."""
    import shutil

    run_dir = Path(run_dir)
    if chief:
        return run_dir
    scratch = run_dir.with_name(f"{run_dir.name}.worker-{index}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in ("state.json", "best.weights.h5"):
        if seed and (run_dir / name).is_file():
            shutil.copy2(run_dir / name, scratch / name)
    if seed and (run_dir / "backup").is_dir():
        shutil.copytree(run_dir / "backup", scratch / "backup")
    return scratch


def fit(decoder, train_ds, val_ds, config: TrainConfig, run_dir: str | os.PathLike, verbose: int = 1,
        finish: bool = False, callbacks: Sequence = ()) -> dict:
    """Train with early stopping on validation loss; resumable from ``run_dir``. Returns the state.

    Call it inside the strategy's scope that built ``decoder``. ``finish`` trains no further and takes the best
    checkpoint so far (after an interrupted run). ``callbacks``: further Keras callbacks (e.g. step progress).
    """
    import keras

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loss = (masked_smoothed_loss(config.label_smoothing) if config.label_smoothing > 0 else
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    decoder.compile(optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=5.0), loss=loss)
    _keras_multi_worker_fixes(decoder)
    ckpt = Checkpointer(run_dir, config.patience, config.lr_decay)
    if finish and not ckpt.best_path.is_file():
        raise RuntimeError(f"finish: no checkpoint in {run_dir} yet; train at least one epoch first")
    if not finish and not ckpt.finished(config.epochs):
        backup = keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True)
        import tensorflow as tf

        steps = {}
        if _multi_worker():
            # Every epoch the same known number of batches from a repeating dataset, so no worker ever reaches
            # the end of its data: at the end of a finite distributed dataset the workers agree on "no more
            # batches" through a collective that each epoch waited out the whole peer timeout (tensorflow#36153).
            steps = {"steps_per_epoch": _batches(train_ds), "validation_steps": _batches(val_ds)}
            train_ds, val_ds = train_ds.repeat(), val_ds.repeat()
        try:
            decoder.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=[backup, ckpt.callback, *callbacks], shuffle=False, verbose=verbose, **steps)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError, tf.errors.InternalError) as exc:
            if not _multi_worker():
                raise
            raise WorkerLost(f"{_lost_peer_reason(exc)}; restart every worker with the same command to resume "
                             f"from the last finished epoch") from None
    if ckpt.best_path.is_file():
        decoder.load_weights(ckpt.best_path)
    return ckpt.state


def _batches(ds) -> int:
    """The number of batches of a finite tf.data dataset (known without reading it: slices, batch, map)."""
    n = int(ds.cardinality())
    if n < 0:
        raise ValueError("a multi-worker run needs datasets of known length")
    return n


def _multi_worker() -> bool:
    import tensorflow as tf

    return isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)


def _keras_multi_worker_fixes(model) -> None:
    """Work around Keras 3's two MultiWorkerMirroredStrategy bugs in ``fit`` (tensorflow/tensorflow#72388),
    on this model only, when several workers train it.

    1. ``fit`` builds the model from a first batch by ``strategy.reduce("MEAN", batch)`` over a nested
       structure, which MWMS rejects; shapes are all it needs, so it builds from this worker's local slice.
    2. Step logs (scalar means per replica) are reduced with ``strategy.reduce("MEAN", value, axis=0)``, invalid
       for scalars; each log leaves the step as a 1-element vector, so that reduction averages the replicas.
    """
    import tensorflow as tf
    from keras import tree

    strategy = tf.distribute.get_strategy()
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        return

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build_from_local_batch(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def as_vectors(step):
        def wrapped(data):
            return {k: tf.reshape(v, (1,)) for k, v in step(data).items()}
        return wrapped

    model._maybe_symbolic_build = build_from_local_batch
    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)


def _lost_peer_reason(exc: Exception) -> str:
    """One line on why a multi-worker step failed, from TensorFlow's multi-line error."""
    import tensorflow as tf

    text = str(exc)
    if "stopped sending heartbeats" in text or "unhealthy" in text:
        return "a training worker stopped sending heartbeats (killed, crashed or unreachable)"
    if isinstance(exc, tf.errors.DeadlineExceededError):
        return "a training worker did not join a gradient exchange within the peer timeout"
    if any(k in text for k in ("Socket closed", "Connection reset", "failed to connect", "Connection refused")):
        return "the connection to a training worker was lost"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Graph execution error" not in ln]
    return f"a training worker failed ({type(exc).__name__}: {(lines or [''])[0][:160]})"
