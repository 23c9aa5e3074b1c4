"""Fine-tuning on a user's photos: the vocabulary grows without touching old rows; a real tiny run end to end."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from captioning.finetune import grow_decoder, grow_vocabulary, read_glove
from captioning.text import Vocabulary


def tiny_decoder(kind: str, vocab_size: int, seed: int = 0):
    import keras

    from captioning.models import build_decoder

    keras.utils.set_random_seed(seed)
    extra = {"attention_dim": 8, "feature_proj": 8} if kind != "merge" else {}
    return build_decoder(kind, vocab_size=vocab_size, feature_dim=12, embed_dim=6, units=8, **extra)


def test_vocabulary_grows_by_appending_words_that_reach_min_count():
    base = Vocabulary(["a", "dog", "runs"], {"a": 10, "dog": 5, "runs": 2}, 5)
    grown, added = grow_vocabulary(base, [["a", "tench", "café"], ["tench", "café", "dog"], ["tench", "rare"]], 2)
    assert added == ["tench", "café"]                                   # most frequent first; 'rare' is too rare
    assert grown.itos[:len(base)] == base.itos                          # old ids unchanged
    assert grown.stoi["tench"] == len(base) and grown.counts["tench"] == 3 and grown.counts["a"] == 10


@pytest.mark.parametrize("kind", ["merge", "attention", "topdown"])
def test_grown_decoder_keeps_every_old_weight_exactly(tmp_path, kind):
    base = Vocabulary(["a", "dog", "runs", "on", "grass"] + [f"w{i}" for i in range(30)], {}, 1)
    grown_vocab, added = grow_vocabulary(base, [["a", "tench", "espresso", "zzqx"]] * 2, 2)
    glove_words = ["a", "dog", "runs", "on", "grass", "tench", "espresso"] + [f"w{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    (tmp_path / "g.txt").write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(size=5)) + "\n"
                                            for w in glove_words))
    glove = read_glove(tmp_path / "g.txt", set(grown_vocab.itos))
    old = tiny_decoder(kind, len(base))
    new, init = grow_decoder(old, base, grown_vocab, glove, Counter({"a": 10, "dog": 4, "tench": 2, "espresso": 2,
                                                                   "zzqx": 2}))
    v = len(base)
    assert new.vocab_size == len(grown_vocab) == v + 3
    assert init == {"new_words": 3, "glove": 2, "mean_plus_noise": 1, "bias_offset": init["bias_offset"]}
    for a, b in zip(old.weights, new.weights):
        a, b = a.numpy(), b.numpy()
        if a.shape == b.shape:
            np.testing.assert_array_equal(a, b)
        elif a.ndim == 2 and a.shape[0] == v:                           # embedding: old rows, then new ones
            np.testing.assert_array_equal(b[:v], a)
        elif a.ndim == 2:                                               # classifier kernel: old columns kept
            np.testing.assert_array_equal(b[:, :v], a)
        else:                                                           # classifier bias
            np.testing.assert_array_equal(b[:v], a)
            assert np.all(np.isfinite(b[v:]))
    emb = new.embedding.embeddings.numpy()
    assert not np.allclose(emb[v], emb[v + 1])                          # GloVe-mapped rows differ per word
    # the grown decoder predicts over the grown vocabulary
    feats = np.zeros((2, 4, 12) if kind != "merge" else (2, 12), np.float32)
    assert new((feats, np.ones((2, 3), np.int32))).shape == (2, 3, v + 3)


def test_tiny_finetune_end_to_end(tmp_path, flickr_dir, mobilenet_weights):
    """A real fine-tune of a small MobileNetV2 ensemble bundle (merge + attention) on 16 Flickr8k photos
    re-captioned with a new word, Flickr8k replay on: the bundle is complete, its vocabulary grew, the base is
    untouched, progress is in the run directory, and the manifest records base, dataset, settings and before/after
    scores."""
    import keras

    import train
    from captioning.bundle import load_bundle, save_bundle
    from captioning.encoders import get_spec
    from captioning.models import build_decoder
    from captioning.text import tokenize

    lines = (flickr_dir / "captions.txt").read_text(encoding="utf-8").splitlines()[1:]
    by_photo: dict[str, list[str]] = {}
    for line in lines[:400]:
        name, caption = line.split(",", 1)
        by_photo.setdefault(name, []).append(caption)
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rows = ["image,caption"]
    for k, name in enumerate(sorted(by_photo)[:16]):
        rel = f"sub/{name}" if k % 2 else name
        shutil.copy(flickr_dir / "Images" / name, photos / rel)
        for caption in by_photo[name][:2]:
            rows.append(f'{rel},"{caption.replace(chr(34), "")} near the blorpfish"')
    rows.append("missing.jpg,a blorpfish")
    captions = tmp_path / "captions.csv"
    captions.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode())

    spec = get_spec("mobilenetv2", 0.35)
    vocab = Vocabulary.build([tokenize(ln.split(",", 1)[1]) for ln in lines[:2000]], 5)
    keras.utils.set_random_seed(0)
    decoder = build_decoder("merge", vocab_size=len(vocab), feature_dim=spec.feature_dim, embed_dim=16, units=16)
    attention = build_decoder("attention", vocab_size=len(vocab), feature_dim=spec.feature_dim, embed_dim=8, units=8,
                              attention_dim=8, feature_proj=8)
    base = tmp_path / "base"        # an ensemble: a merge decoder (pooled features) and an attention one (maps)
    save_bundle(base, decoder, vocab, {"encoder": {"name": spec.name, "alpha": spec.alpha, "key": spec.key,
                                                   "input_size": spec.input_size, "feature_dim": spec.feature_dim},
                                       "max_length": 20, "min_count": 5}, members=[attention])
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    out, cache = tmp_path / "out", tmp_path / "cache"
    dry = train.main(["finetune", "--from", str(base), "--captions", str(captions), "--images", str(photos),
                      "--out", str(out), "--cache-dir", str(cache), "--dry-run"])
    assert dry == 0 and not out.exists() and not cache.exists()                     # checked, nothing written
    code = train.main(["finetune", "--from", str(base), "--captions", str(captions), "--images", str(photos),
                       "--out", str(out), "--weights", str(mobilenet_weights), "--cache-dir", str(cache),
                       "--data-dir", str(flickr_dir), "--epochs", "2", "--min-count", "3", "--batch-size", "16",
                       "--flickr-test", "12", "--quiet"])
    assert code == 0
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before            # the base is never modified
    tuned = load_bundle(out)
    assert [d.kind for d in tuned.decoders] == ["merge", "attention"]          # each decoder fine-tuned
    assert tuned.vocab.itos[:len(vocab)] == vocab.itos and "blorpfish" in tuned.vocab.stoi
    old_rows = load_bundle(base).decoder.embedding.embeddings.numpy()
    assert not np.array_equal(tuned.decoder.embedding.embeddings.numpy()[:len(vocab)], old_rows)   # it trained
    ft = json.loads((out / "manifest.json").read_text())["finetune"]
    assert ft["base"]["name"] == "base" and len(ft["base"]["manifest_sha256"]) == 64
    assert ft["dataset"]["format"] == "csv" and ft["dataset"]["photos"] == 16
    assert ft["skipped_rows"][0]["kind"] == "missing_photo" and ft["skipped_rows"][0]["line"] == 34
    assert ft["settings"]["replay_used"] == 0.5 and ft["settings"]["replay_photos"] >= 1
    assert "blorpfish" in ft["vocabulary"]["added"]
    assert set(ft["metrics"]["before"]) == set(ft["metrics"]["after"]) == {"dev", "test"}
    assert ft["metrics"]["before"]["test"]["new_word_share"] == 0.0                 # the base cannot say it
    assert ft["metrics"]["after"]["test"]["new_word_share_references"] == 1.0
    flickr = ft["metrics"]["flickr8k_test"]                  # the old domain before and after, on 12 test photos
    assert flickr["photos"] == 12 and flickr["before"]["photos"] == flickr["after"]["photos"] == 12
    assert all(0 <= s[k] <= 10 for s in (flickr["before"], flickr["after"]) for k in ("cider", "bleu_4"))
    assert "captions" not in flickr["after"]                       # scores only: the manifest stays small
    assert ft["settings"]["flickr_test"] == 12
    split_photos = ft["dataset"]["split_photos"]            # the dataset record: the split trained on, by photo
    assert len({p for v in split_photos.values() for p in v}) == 16
    assert {k: len(v) for k, v in split_photos.items()} == ft["dataset"]["splits"]
    assert set(ft["metrics"]["after"]["test"]["captions"]) == set(split_photos["test"])
    run = cache / "runs" / "out"
    assert json.loads((run / "dataset.json").read_text()) == ft["dataset"]   # listed while the job still ran
    progress = json.loads((run / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["epoch"] == 2 and progress["step"] == progress["steps"] >= 1
    assert progress["photos_done"] == progress["photos_todo"] == 16
    assert ft["metrics"]["after"]["test"]["captions"].keys() == ft["metrics"]["before"]["test"]["captions"].keys()
    for i in (1, 2):
        assert len(json.loads((run / f"decoder-{i}" / "state.json").read_text())["epochs"]) == 2
        scores = json.loads((run / f"decoder-{i}" / "dev_scores.json").read_text())   # dev CIDEr-D per epoch
        assert sorted(scores) == ["1", "2"] and all(0 <= s["dev_cider"] <= 10 for s in scores.values())
    from captioning.jobs import read_progress

    epochs = read_progress(run, 2).epochs                                       # the Train page's curves read it
    assert [isinstance(e.get("dev_cider"), float) and isinstance(e.get("val_loss"), float) for e in epochs] == \
        [True, True]
    assert [t["decoder"] for t in ft["training"]] == [1, 2]
    assert not list(tmp_path.glob(".out.*"))                                      # no staging folder left


def test_train_from_scratch_on_user_photos(tmp_path, flickr_dir, mobilenet_weights):
    """``train.py train --captions FILE --images DIR``: a new bundle from a user's photos alone (JSON lines here)."""
    import train
    from captioning.bundle import load_bundle

    lines = (flickr_dir / "captions.txt").read_text(encoding="utf-8").splitlines()[1:120]
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = []
    for line in lines:
        name, caption = line.split(",", 1)
        if not (photos / name).exists():
            shutil.copy(flickr_dir / "Images" / name, photos / name)
        rows.append(json.dumps({"image": name, "caption": caption}))
    (tmp_path / "caps.jsonl").write_text("\n".join(rows))
    out = tmp_path / "scratch"
    code = train.main(["train", "--captions", str(tmp_path / "caps.jsonl"), "--images", str(photos),
                       "--encoder", "mobilenetv2", "--weights", str(mobilenet_weights), "--cache-dir",
                       str(tmp_path / "cache"), "--epochs", "1", "--min-count", "2", "--out", str(out), "--quiet"])
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.manifest.data["dataset"] == "user:caps.jsonl"
    assert bundle.manifest.data["splits"]["dev"] >= 1 and len(bundle.vocab) > 20


def test_members_pick_decoders_by_number():
    from captioning.config import OptionError
    from captioning.finetune import _pick_members

    assert _pick_members(None, 3) == [0, 1, 2]
    assert _pick_members(["3,1"], 3) == [0, 2] == _pick_members(["1", "3"], 3)
    for bad in (["4"], ["0"], ["1,1"], ["one"]):
        with pytest.raises(OptionError, match="members"):
            _pick_members(bad, 3)
