"""Self-critical sequence training: the CIDEr-D reward, the baseline, the update, and train.py scst."""
import json

import numpy as np
import pytest

from captioning.artifacts.bundle import load_bundle
from captioning.data.text import Vocabulary
from captioning.decoding.search import Sampler
from captioning.training.scst import (
    SCSTConfig,
    captions_from_ids,
    leave_one_out_advantage,
    make_train_step,
    teacher_inputs,
)


def test_leave_one_out_baseline():
    rewards = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    adv = leave_one_out_advantage(rewards)
    assert adv[0] == pytest.approx([1.0 - 2.5, 2.0 - 2.0, 3.0 - 1.5])
    assert np.allclose(adv[1], 0.0)                         # no preference among equally good samples
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantage(rewards[:, :1])
    with pytest.raises(ValueError, match="samples"):
        SCSTConfig(samples=1)


def test_teacher_inputs_shift_the_sampled_captions():
    ids = np.array([[5, 6, 3, 0, 0, 0], [7, 3, 0, 0, 0, 0]], np.int32)      # 3 = <end>
    inputs, targets = teacher_inputs(ids, start_id=2)
    assert targets.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert inputs.tolist() == [[2, 5, 6], [2, 7, 0]]


def _vocab():
    return Vocabulary.build([["a", "dog", "runs"], ["a", "cat", "sleeps"]] * 3, min_count=1)


def _decoder(vocab, kind="merge"):
    import keras

    from captioning.models.decoders import build_decoder

    keras.utils.set_random_seed(0)
    extra = {"attention_dim": 8} if kind == "attention" else {}
    return build_decoder(kind, vocab_size=len(vocab), feature_dim=6, embed_dim=8, units=8, dropout=0.0, **extra)


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_sampler_draws_words_then_pads_after_end(kind):
    vocab = _vocab()
    features = np.random.default_rng(0).normal(size=(3, 4, 6) if kind == "attention" else (3, 6)).astype("float32")
    ids = Sampler(_decoder(vocab, kind), vocab, seed=1).sample(features, samples=4, max_length=6)
    assert ids.shape[0] == 12
    banned = {vocab.pad_id, vocab.start_id, vocab.unk_id}
    for row in ids:
        words = row.tolist()
        end = words.index(vocab.end_id) if vocab.end_id in words else len(words)
        assert not banned & set(words[:end])                 # only real words before <end>
        assert all(t == 0 for t in words[end + 1:])          # padding after it
    caps = captions_from_ids(ids, vocab)
    assert len(caps) == 12 and all(set(c) <= set(vocab.itos) for c in caps)
    assert len({tuple(r) for r in ids}) > 1                  # sampling, not argmax


def test_sampler_is_the_decoding_engines_sampling():
    """One implementation: SCST's samples are sample_search's (temperature 1, no truncation, <end> allowed at
    once), call k drawing from the stream (seed, k); every call draws fresh captions."""
    from captioning.decoding.config import DecodeConfig
    from captioning.decoding.search import sample_search
    from captioning.models.stepper import StepDecoder

    vocab = _vocab()
    decoder = _decoder(vocab)
    features = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    sampler = Sampler(decoder, vocab, seed=5)
    first, second = sampler.sample(features, 4, 6), sampler.sample(features, 4, 6)
    config = DecodeConfig(strategy="sample", num_return_sequences=4, max_length=6, min_length=0)
    for call, ids in enumerate((first, second)):
        engine = sample_search(StepDecoder(decoder), features, vocab, config, seed=(5, call))
        assert captions_from_ids(ids, vocab) == [c.words for caps in engine for c in caps]
    assert first.tolist() != second.tolist()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_update_moves_the_caption_probability_with_the_advantage(sign):
    """REINFORCE: a positive advantage makes the sampled caption more likely, a negative one less."""
    import keras
    from keras import ops

    vocab = _vocab()
    decoder = _decoder(vocab)
    features = np.random.default_rng(1).normal(size=(2, 6)).astype("float32")
    ids = np.array([[vocab.stoi["a"], vocab.stoi["dog"], vocab.end_id]] * 2, np.int32)
    inputs, targets = teacher_inputs(ids, vocab.start_id)

    def log_prob():
        lp = ops.log_softmax(decoder((features, inputs)), axis=-1).numpy()
        return float(np.take_along_axis(lp, targets[..., None], -1).sum())

    before = log_prob()
    step = make_train_step(decoder, keras.optimizers.Adam(1e-2))
    for _ in range(3):
        step(features, inputs, targets, np.full(2, sign, np.float32))
    after = log_prob()
    assert (after - before) * sign > 0.05


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_chunked_update_equals_the_whole_batch_update(kind):
    """Gradients accumulated over chunks of rows (to bound memory) give the same step as one pass over all rows."""
    import keras

    vocab = _vocab()
    rng = np.random.default_rng(2)
    features = rng.normal(size=(6, 4, 6) if kind == "attention" else (6, 6)).astype("float32")
    ids = rng.integers(4, len(vocab), size=(6, 5)).astype(np.int32)
    ids[:, 3] = vocab.end_id
    ids[:, 4:] = 0
    ids[1, 1], ids[1, 2:] = vocab.end_id, 0                                # rows of different lengths
    inputs, targets = teacher_inputs(ids, vocab.start_id)
    advantages = rng.normal(size=6).astype("float32")
    results = []
    for max_rows in (6, 4, 1):
        decoder = _decoder(vocab, kind)
        loss = make_train_step(decoder, keras.optimizers.SGD(0.5), max_rows=max_rows)(
            features, inputs, targets, advantages)
        results.append((loss, decoder.get_weights()))
    (loss, whole), *chunked = results
    for other_loss, weights in chunked:
        assert other_loss == pytest.approx(loss, rel=1e-4, abs=1e-6)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(whole, weights))
    assert not all(np.allclose(a, b) for a, b in zip(whole, _decoder(vocab, kind).get_weights()))   # it moved


def test_train_py_scst_fine_tunes_a_bundle_resumes_and_extends(tiny_run, flickr_dir, tmp_path, capsys):
    """train.py scst: a new bundle with the fine-tuned decoder, its dev history in the manifest, scored like any
    other; a rerun reuses the finished epochs."""
    import train

    artifacts, cache = tiny_run
    out = tmp_path / "tiny-scst"
    argv = ["scst", "--from", str(artifacts / "tiny"), "--out", str(out), "--data-dir", str(flickr_dir),
            "--limit", "60", "--cache-dir", str(cache), "--epochs", "2", "--batch-size", "16", "--quiet",
            "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]
    assert train.main(argv) == 0
    bundle = load_bundle(out)
    info = bundle.manifest["scst"]
    assert info["config"]["learning_rate"] == 2e-5 and info["config"]["epochs"] == 2
    assert [sorted(e) for e in info["epochs"]] == [["dev", "loss", "seconds", "train_reward"]] * 2
    assert info["best_epoch"] in (0, 1, 2) and info["start_dev"]["cider"] >= 0
    assert info["best_dev_cider"] == max([info["start_dev"]["cider"]] + [e["dev"]["cider"] for e in info["epochs"]])
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 3]
    assert bundle.vocab.itos == load_bundle(artifacts / "tiny").vocab.itos
    assert "scst --from" in bundle.manifest["command"]
    capsys.readouterr()
    assert train.main(argv) == 0                             # finished epochs are not run again
    assert "scst epoch" not in capsys.readouterr().out
    state = json.loads((cache / "runs" / "tiny-scst-scst-run" / "state.json").read_text())
    assert sorted(state["epochs"]) == ["1", "2"]
    assert train.main([a if a != "2" else "3" for a in argv]) == 0          # --epochs 3 extends the run
    out_text = capsys.readouterr().out
    assert "scst epoch 3" in out_text and "scst epoch 1" not in out_text and "resuming after epoch 2" in out_text
    assert len(load_bundle(out).manifest["scst"]["epochs"]) == 3


def test_train_py_scst_refuses_ensembles_and_overwriting(tiny_run, flickr_dir, tmp_path, capsys):
    import train

    artifacts, cache = tiny_run
    common = ["--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet"]
    ens = tmp_path / "ens"
    assert train.main(["ensemble", "--members", str(artifacts / "tiny"), str(artifacts / "tiny-attention"),
                       "--out", str(ens), "--no-sweep", "--no-human", "--no-meteor", "--beam-widths", "3",
                       *common]) == 0
    capsys.readouterr()
    assert train.main(["scst", "--from", str(ens), "--out", str(tmp_path / "x"), *common]) == 2
    assert "fine-tune each member" in capsys.readouterr().err
    assert train.main(["scst", "--from", str(artifacts / "tiny"), "--out", str(artifacts / "tiny"), *common]) == 2
    assert "other than --from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["scst", "--out", str(tmp_path / "y"), *common])


def test_train_py_scst_fine_tunes_an_attention_bundle(tiny_run, flickr_dir, tmp_path):
    """The attention decoder reads its spatial maps from the on-disk cache a batch at a time."""
    import train

    artifacts, cache = tiny_run
    out = tmp_path / "att-scst"
    assert train.main(["scst", "--from", str(artifacts / "tiny-attention"), "--out", str(out), "--epochs", "1",
                       "--learning-rate", "0.01",
                       "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet",
                       "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]) == 0
    bundle = load_bundle(out)
    assert bundle.uses_spatial and bundle.decoder.kind == "attention"
    assert len(bundle.manifest["scst"]["epochs"]) == 1
    source = load_bundle(artifacts / "tiny-attention").decoder.get_weights()
    changed = not all(np.array_equal(a, b) for a, b in zip(source, bundle.decoder.get_weights()))
    assert changed == (bundle.manifest["scst"]["best_epoch"] == 1)   # epoch 0 kept = the starting weights
