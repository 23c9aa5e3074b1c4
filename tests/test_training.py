"""Training knobs: label-smoothed masked cross-entropy and the learning-rate decay on a dev-loss plateau."""
import json

import numpy as np
import pytest

from captioning.training.fit import Checkpointer, TrainConfig, masked_smoothed_loss


def _batch(seed=0, vocab=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 5, vocab)).astype("float32")
    y = rng.integers(1, vocab, size=(3, 5))
    y[0, 3:] = 0          # padding
    y[2, 1:] = 0
    return y, logits


def test_unsmoothed_loss_equals_keras_masked_cross_entropy():
    import keras

    y, logits = _batch()
    ours = float(masked_smoothed_loss(0.0)(y, logits))
    theirs = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(y, logits))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_smoothed_loss_is_cross_entropy_against_the_smoothed_targets():
    y, logits = _batch(1)
    eps, vocab = 0.2, logits.shape[-1]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.full(logits.shape, eps / vocab) + (1 - eps) * np.eye(vocab)[y]
    per_token = -(target * log_probs).sum(-1)
    expected = per_token[y != 0].mean()
    assert float(masked_smoothed_loss(eps)(y, logits)) == pytest.approx(expected, rel=1e-5)


def test_config_rejects_nonsense_and_keeps_old_fingerprints():
    with pytest.raises(ValueError, match="label smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="decay"):
        TrainConfig(lr_decay=0.0)
    assert "lr_decay" not in TrainConfig().fingerprint_dict()
    assert "max_words" not in TrainConfig().fingerprint_dict()            # runs from before --max-words resume
    assert TrainConfig(max_words=16).fingerprint_dict()["max_words"] == 16
    assert TrainConfig(lr_decay=0.5, label_smoothing=0.1).fingerprint_dict()["lr_decay"] == 0.5


def _tiny_model(lr):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def test_learning_rate_decays_after_each_epoch_without_a_better_dev_loss_and_resumes(tmp_path):
    model = _tiny_model(1e-3)
    ckpt = Checkpointer(tmp_path, patience=3, lr_decay=0.5)
    for epoch, val in enumerate([3.0, 2.5, 2.6, 2.7]):
        ckpt._epoch_end(model, epoch, {"loss": 4.0, "val_loss": val}, 1.0)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(2.5e-4)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["best_epoch"] == 2 and state["learning_rate"] == pytest.approx(2.5e-4)
    assert "next_learning_rate" not in state["epochs"]["2"]
    assert state["epochs"]["3"]["next_learning_rate"] == pytest.approx(5e-4)
    assert not model.stop_training                        # 2 epochs since the best, patience 3

    resumed = _tiny_model(1e-3)                           # a rerun starts at the configured rate ...
    again = Checkpointer(tmp_path, patience=3, lr_decay=0.5)
    again.callback.set_model(resumed)
    again.callback.on_train_begin()                       # ... and continues at the decayed one
    assert float(resumed.optimizer.learning_rate.numpy()) == pytest.approx(2.5e-4)


def test_without_decay_the_learning_rate_stays(tmp_path):
    model = _tiny_model(1e-3)
    ckpt = Checkpointer(tmp_path, patience=2)
    for epoch, val in enumerate([3.0, 3.1, 3.2]):
        ckpt._epoch_end(model, epoch, {"loss": 4.0, "val_loss": val}, 1.0)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert model.stop_training


def test_train_py_records_the_knobs_it_trained_with(tiny_attention_bundle):
    manifest = json.loads((tiny_attention_bundle / "manifest.json").read_text())
    config = manifest["training"]["config"]
    assert config["label_smoothing"] == 0.1 and config["lr_decay"] == 0.5
    for epoch in manifest["training"]["epochs"]:
        assert np.isfinite(epoch["val_loss"])
