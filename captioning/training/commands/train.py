"""``train.py train``: train one decoder on cached features into a bundle (resumable run directory).
"""
from __future__ import annotations

from pathlib import Path

from captioning.data.flickr8k import DataError, Flickr8k
from captioning.training.inputs import Splits, peak_rss_mb, train_run_dir
from captioning.training.rundirs import RunDir, fingerprint
from captioning.training.settings import (
    FeatureSettings,
    OptionError,
    TrainSettings,
    Workspace,
)
from captioning.vision.encoders import find_weights, get_spec, weights_hint


# --- train ------------------------------------------------------------------------------------------------
def train_decoder(ws: Workspace, settings: TrainSettings, features: FeatureSettings, ds: Flickr8k, names: Splits,
                  feature_stats: dict | None = None) -> Path | None:
    """Fit a decoder on cached features (resumable) and write the bundle at ``ws.out``; None on a multi-worker
    run's non-chief worker (the chief writes the bundle)."""
    import keras
    import numpy as np

    from captioning.artifacts.bundle import save_bundle
    from captioning.artifacts.manifest import DataInfo, EncoderInfo, TrainingInfo, manifest_entries
    from captioning.data.embeddings import EmbeddingsError, load_word_vectors
    from captioning.data.text import Vocabulary, tokenize
    from captioning.models.decoders import build_decoder
    from captioning.training.fit import (
        MAX_TOKENS,
        TrainConfig,
        encode_captions,
        fit,
        make_dataset,
        make_strategy,
        worker_role,
        worker_run_dir,
    )
    from captioning.vision.features import FeatureCache

    spec = get_spec(features.encoder, features.alpha)
    cache = FeatureCache(Path(ws.cache_dir) / "features", spec.key)
    spatial = settings.spatial
    config = TrainConfig.from_settings(settings, units=settings.units_for(),
                                       embeddings=Path(settings.embeddings).name if settings.embeddings else None)

    def pairs(split):
        split_names = names[split]
        caps = [(i, tokenize(c)) for i, n in enumerate(split_names) for c in ds.captions[n]]
        return split_names, np.array([i for i, _ in caps]), [w for _, w in caps]

    train_names, train_idx, train_caps = pairs("train")
    dev_names, dev_idx, dev_caps = pairs("dev")
    vocab = Vocabulary.build(train_caps, config.min_count)
    embedding_matrix = None
    if settings.embeddings:
        try:
            embedding_matrix, found = load_word_vectors(settings.embeddings, vocab, seed=config.seed)
        except EmbeddingsError as exc:
            raise DataError(str(exc)) from None
        config.embed_dim = int(embedding_matrix.shape[1])
        print(f"embeddings: {found:,} of {len(vocab) - 4:,} words found in {settings.embeddings} "
              f"({config.embed_dim}-d; the embedding size follows them)")
    # --max-words cuts the training captions only: dev loss stays on whole captions, comparable across settings.
    train_tokens = encode_captions(train_caps, vocab, config.max_words + 2 if config.max_words else MAX_TOKENS)
    dev_tokens = encode_captions(dev_caps, vocab)
    if config.max_words:
        cut = sum(len(c) > config.max_words for c in train_caps)
        print(f"train: {cut} of {len(train_caps)} training captions cut to {config.max_words} words")
    try:
        # Spatial maps stay on disk and are read a batch at a time; pooled vectors are small enough to hold.
        load = cache.rows if spatial else cache.load
        train_feats, dev_feats = load(train_names, spatial), load(dev_names, spatial)
    except KeyError as exc:
        raise DataError(str(exc).strip('"')) from None
    print(f"train: {len(train_names)} images / {len(train_caps)} captions, dev: {len(dev_names)} images; "
          f"vocabulary {len(vocab)} words (min count {config.min_count}, coverage "
          f"{vocab.coverage(train_caps):.1%})")

    extra = {"attention_dim": settings.attention_dim, "alpha_c": settings.alpha_c} if spatial else {}
    if settings.decoder == "topdown":
        extra = {"attention_dim": settings.attention_dim}    # no doubly stochastic term in Anderson et al.
    strategy = make_strategy(settings.strategy, settings.peer_timeout)
    chief, worker = worker_role(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        decoder = build_decoder(settings.decoder, vocab_size=len(vocab), feature_dim=spec.feature_dim,
                                embed_dim=config.embed_dim, units=config.units, dropout=config.dropout, **extra)
        decoder.init_output_bias(np.bincount(train_tokens[:, 1:].ravel(), minlength=len(vocab)).astype("float64"))
        if embedding_matrix is not None:
            decoder.init_embeddings(embedding_matrix)
    run = RunDir(train_run_dir(ws))
    key = fingerprint(config.fingerprint_dict(), spec.key, settings.decoder, extra, len(vocab), ws.limit)
    stale = run.changed(key)
    if chief:
        if stale:
            print(f"train: settings changed since the checkpoints in {run.path}; starting afresh")
        run.claim(key)
    # Other workers checkpoint into a scratch folder, seeded from the chief's (shared) last checkpoint.
    run_dir = worker_run_dir(run.path, chief, worker, seed=not stale)

    # Several replicas split each batch; equal batches keep their gradients the same shape.
    even = strategy.num_replicas_in_sync > 1
    train_ds = make_dataset(train_feats, train_idx, train_tokens, config.batch_size, shuffle=True, seed=config.seed,
                            drop_remainder=even)
    dev_ds = make_dataset(dev_feats, dev_idx, dev_tokens, strategy.num_replicas_in_sync * 8 if even else 256,
                          shuffle=False, drop_remainder=even)
    with strategy.scope():
        state = fit(decoder, train_ds, dev_ds, config, run_dir, verbose=0 if ws.quiet else 2, finish=settings.finish)
    epochs = [state["epochs"][k] for k in sorted(state["epochs"], key=int)]
    if not chief:
        print(f"train: worker {worker} done; the chief writes the bundle (this worker's checkpoints: {run_dir})")
        return None
    if not epochs or state.get("best_epoch") is None:
        raise OptionError(f"train: no epoch finished, so there is no trained decoder to save; {ws.out} is left as "
                          f"it was. Run again without {{finish}} to train.")
    feature_stats = feature_stats or {}
    weights_file = find_weights(spec, features.weights)
    previous = _previous_encoder(ws.bundle)
    encoder = EncoderInfo.from_spec(
        spec, spatial, weights_source=feature_stats.get("weights_source") or previous.get(
            "weights_source", "unknown (features were cached by an earlier run)"),
        # A hint, verified by checksum, so captioning finds the same file without --weights.
        weights_file=weights_hint(weights_file) if weights_file else previous.get("weights_file"))
    manifest = manifest_entries(
        encoder=encoder, min_count=config.min_count, max_length=int(min(train_tokens.shape[1] - 1, 40)),
        data=DataInfo.create(dataset=ds.name, limit=ws.limit, splits={k: len(v) for k, v in names.items()},
                             train_captions=len(train_caps)),
        training=TrainingInfo.create(config=config.to_dict(), strategy=settings.strategy,
                                     replicas=strategy.num_replicas_in_sync, epochs_run=len(epochs),
                                     best_epoch=state["best_epoch"], best_val_loss=state["best_val_loss"],
                                     epochs=epochs, feature_seconds=round(feature_stats.get("seconds", 0.0), 1),
                                     feature_images=feature_stats.get("images", 0), peak_rss_mb=peak_rss_mb()))
    path = save_bundle(ws.out, decoder, vocab, manifest)
    if ws.bundle == ws.out:
        when = ""
    else:
        when = " (replaces the old one once evaluated)" if Path(ws.bundle).exists() else " (once evaluated)"
    print(f"train: best epoch {state['best_epoch']} (val loss {state['best_val_loss']:.4f}); bundle {ws.bundle}"
          f"{when}")
    return path


def _previous_encoder(out: str) -> dict:
    """The encoder entries (weights source and file hint) of the bundle a run replaces, as far as it has them."""
    from captioning.artifacts.manifest import previous_encoder

    return previous_encoder(out)
