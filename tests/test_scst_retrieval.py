"""SCST of the retrieval decoder (captioning.training.scst_retrieval): captions are drawn through the memory and
the copy gate exactly as the decoding engine draws them, a training photo never reads its own captions, and the
REINFORCE step moves the copy mixture's probability of a sampled caption, copied words included."""
import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import sample_search
from captioning.evaluation.trust import RetrievalIndex
from captioning.models.retrieval import RetrievalDecoder, mixed_probability
from captioning.models.retrieval_steps import RetrievalStepDecoder
from captioning.training.scst_retrieval import LeaveOneOutMemory, RetrievalPolicy

VOCAB = Vocabulary(["a", "boat", "on", "the", "water"])
CAPTIONS = [["a zeppelin over the water"], ["a boat on the water"], ["the zeppelin"], ["a boat"]]


def _index():
    vectors = np.eye(4, 6) + 0.5                                          # photo i is nearest to itself, then the rest
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return RetrievalIndex(vectors, [f"p{i}.jpg" for i in range(4)], CAPTIONS, "enc", k=2)


def _model(copy_bias=0.0, seed=0):
    model = RetrievalDecoder(len(VOCAB), 6, embed_dim=8, units=8, dropout=0.0, neighbours=2, caption_tokens=5)
    model.build()
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    w, _ = model.gate.get_weights()
    model.gate.set_weights([np.zeros_like(w), np.full((1,), copy_bias, np.float32)])    # p_gen = sigmoid(bias)
    return model


FEATURES = (np.eye(4, 6) + 0.5).astype(np.float32)


def test_a_training_photo_reads_its_nearest_other_photos_never_itself():
    memory = LeaveOneOutMemory(_index(), [f"p{i}.jpg" for i in range(4)])
    with pytest.raises(ValueError, match="call use"):
        memory.retrieve(FEATURES[:2], 2)
    memory.use(np.array([0, 2]))
    hits = memory.retrieve(FEATURES[[0, 2]], 2)
    assert [[h[1] for h in photo] for photo in hits] == [["p1.jpg", "p2.jpg"], ["p0.jpg", "p1.jpg"]]
    assert hits[0][0][0] == "a boat on the water" and all(h[3] == "training" for p in hits for h in p)
    memory.use([3])
    assert len(memory.retrieve(FEATURES[[3]], 3)[0]) == 3 and "p3.jpg" not in \
        [h[1] for h in memory.retrieve(FEATURES[[3]], 3)[0]]


def test_the_policy_samples_as_the_engine_does_and_can_draw_a_copied_word():
    """With the copy gate mostly open, copied words (extended ids past the vocabulary) are drawn; the words and
    ids are the engine's sampling through the same memory, seed and call count."""
    model = _model(copy_bias=-3.0)
    names = [f"p{i}.jpg" for i in range(4)]
    policy = RetrievalPolicy(model, VOCAB, seed=7, optimizer=None, memory=LeaveOneOutMemory(_index(), names))
    photos = np.array([1, 3])
    first = policy.sample(FEATURES[photos], photos, 4, 6)
    memory_ids, memory_ext, ids, samples = policy.batch
    assert samples == 4 and ids.shape == (8, 6) and memory_ids.shape == memory_ext.shape == (8, 10)
    assert (memory_ext >= len(VOCAB)).any() and (memory_ids < len(VOCAB)).all()
    assert any("zeppelin" in words for words in first)                         # only a remembered caption has it
    zeppelin = ids[[i for i, w in enumerate(first) if "zeppelin" in w][0]]
    assert zeppelin.max() >= len(VOCAB)
    engine_memory = LeaveOneOutMemory(_index(), names)
    engine_memory.use(photos)
    steps = RetrievalStepDecoder(model, engine_memory, VOCAB)
    feats = FEATURES[photos]
    words = steps.prepare(feats, VOCAB)
    config = DecodeConfig(strategy="sample", num_return_sequences=4, max_length=6, min_length=0)
    engine = sample_search(steps, feats, words, config, seed=(7, 0))
    assert first == [list(c.words) for caps in engine for c in caps]
    for row, caption in enumerate(c for caps in engine for c in caps):
        seq = [words.stoi[w] for w in caption.words] + ([VOCAB.end_id] if caption.finished else [])
        assert ids[row, :len(seq)].tolist() == seq and not ids[row, len(seq):].any()


def _mixture_log_prob(model, batch):
    memory_ids, memory_ext, ids, samples = batch
    from captioning.training.scst import teacher_inputs

    inputs, targets = teacher_inputs(ids, VOCAB.start_id)
    inputs = np.where(inputs >= len(VOCAB), VOCAB.unk_id, inputs)
    feats = np.repeat(FEATURES[[1, 3]], samples, axis=0)
    log_vocab, p_gen, alpha = model((feats, memory_ids, inputs))
    prob = mixed_probability(log_vocab, p_gen, alpha, memory_ext, targets, len(VOCAB)).numpy()
    return np.log(prob + 1e-9) * (targets != 0), targets


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_update_moves_the_copy_mixtures_probability_of_the_sampled_captions(sign):
    import keras

    model = _model(copy_bias=-1.0, seed=1)
    policy = RetrievalPolicy.over(LeaveOneOutMemory(_index(), [f"p{i}.jpg" for i in range(4)]))(
        model, VOCAB, 3, keras.optimizers.Adam(1e-2))
    photos = np.array([1, 3])
    captions = policy.sample(FEATURES[photos], photos, 3, 6)
    before, targets = _mixture_log_prob(model, policy.batch)
    copied = targets >= len(VOCAB)
    for _ in range(3):
        loss = policy.update(FEATURES[photos], np.full(6, sign, np.float32))
        assert np.isfinite(loss)
    after, _ = _mixture_log_prob(model, policy.batch)
    assert (after.sum() - before.sum()) * sign > 0.05
    if copied.any():                                      # a copied word's probability moves the same way
        assert ((after[copied] - before[copied]).sum()) * sign > 0
    assert len(captions) == 6


def test_chunked_retrieval_updates_equal_the_whole_batch_update():
    import keras

    results = []
    for max_rows in (8, 3, 1):
        model = _model(copy_bias=-1.0, seed=2)
        policy = RetrievalPolicy(model, VOCAB, 5, keras.optimizers.SGD(0.5),
                                 LeaveOneOutMemory(_index(), [f"p{i}.jpg" for i in range(4)]), max_rows=max_rows)
        photos = np.array([0, 2])
        policy.sample(FEATURES[photos], photos, 4, 6)
        advantages = np.linspace(-1, 1, 8).astype(np.float32)
        results.append((policy.update(FEATURES[photos], advantages), model.get_weights()))
    (loss, whole), *chunked = results
    for other_loss, weights in chunked:
        assert other_loss == pytest.approx(loss, rel=1e-4, abs=1e-6)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(whole, weights))
    assert not all(np.allclose(a, b) for a, b in zip(whole, _model(copy_bias=-1.0, seed=2).get_weights()))


def test_finetune_refuses_a_retrieval_decoder_without_its_memory(tmp_path):
    from captioning.training.scst import SCSTConfig, finetune

    with pytest.raises(ValueError, match="needs the training photos' memory"):
        finetune(_model(), VOCAB, FEATURES, [[c[0].split()] for c in CAPTIONS], lambda m: {"cider": 0.0},
                 SCSTConfig(epochs=1, batch_size=2), tmp_path / "run", progress=False, log=lambda s: None)


def test_train_py_scst_fine_tunes_a_retrieval_bundle_and_keeps_its_datastore(tiny_run, flickr_dir, tmp_path):
    """train.py scst on a retrieval bundle: the new bundle holds the fine-tuned retrieval decoder, the same
    datastore (validated on load) and its retrieval training record, and is evaluated like any other."""
    import train
    from captioning.artifacts.bundle import load_bundle
    from captioning.training.retrieval import write_bundle

    artifacts, cache = tiny_run
    base = load_bundle(artifacts / "tiny")
    assert base.index is not None
    model = RetrievalDecoder(len(base.vocab), base.decoder.feature_dim, embed_dim=16, units=16, neighbours=3,
                             caption_tokens=8)
    model.build()
    manifest = {k: base.manifest[k] for k in ("data", "encoder", "max_length", "min_count") if k in base.manifest}
    rag = write_bundle(tmp_path / "tiny-rag", model, base.vocab, {**manifest, "name": "tiny"}, base.index, [], "test")
    out = tmp_path / "tiny-rag-scst"
    assert train.main(["scst", "--from", str(rag), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                       "--learning-rate", "0.01", "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir",
                       str(cache), "--quiet", "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]) == 0
    tuned = load_bundle(out)
    assert tuned.decoder.kind == "retrieval" and tuned.index.names == base.index.names
    assert tuned.manifest.training.neighbours == 3 and len(tuned.manifest["scst"]["epochs"]) == 1
    assert [r["beam_width"] for r in tuned.metrics["results"]] == [1, 3]
    assert type(tuned.step_decoder()).__name__ == "RetrievalStepDecoder"
    if tuned.manifest["scst"]["best_epoch"] == 1:
        assert not all(np.allclose(a, b) for a, b in zip(tuned.decoder.get_weights(), model.get_weights()))
