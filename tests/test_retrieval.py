"""Knowing when to trust a caption: nearest training photos, the in-domain score and its dev-calibrated levels."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image, ImageDraw

from captioning.evaluation import trust as retrieval
from captioning.evaluation.trust import (
    FAMILIAR_QUANTILE,
    UNFAMILIAR_QUANTILE,
    Calibration,
    IndexFileError,
    RetrievalIndex,
    build_index,
    calibrate,
    calibration_bins,
    level_table,
)


def random_index(n=200, d=32, seed=0) -> tuple[RetrievalIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = np.abs(rng.normal(size=(n, d))).astype(np.float32)          # ReLU-like, as pooled CNN features
    names = [f"img{i}.jpg" for i in range(n)]
    return build_index(names, feats, [[f"caption {i} a", f"caption {i} b", "c"] for i in range(n)], "enc-1"), feats


# --- the index -------------------------------------------------------------------------------------------------
def test_search_is_exact_top_k_cosine_best_first():
    index, feats = random_index()
    queries = np.abs(np.random.default_rng(1).normal(size=(7, 32))).astype(np.float32) * 3.0   # scale-free
    sims, rows = index.search(queries, 6)
    assert sims.shape == rows.shape == (7, 6)
    stored = index.vectors.astype(np.float32)
    full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ stored.T
    for q in range(7):
        assert list(rows[q]) == list(np.argsort(-full[q], kind="stable")[:6])
        np.testing.assert_allclose(sims[q], np.sort(full[q])[::-1][:6], rtol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_index_is_unit_float16_keeps_some_captions_and_a_training_photo_finds_itself():
    index, feats = random_index()
    assert index.vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(index.vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    from captioning.evaluation.trust import CAPTIONS_PER_IMAGE

    assert index.captions[3] == ["caption 3 a", "caption 3 b", "c"][:CAPTIONS_PER_IMAGE]   # up to that many kept
    sims, rows = index.search(feats[[5, 42]], 1)
    assert list(rows[:, 0]) == [5, 42] and np.all(sims > 0.999)


def test_spatial_maps_are_pooled_before_the_search():
    index, _ = random_index(d=8)
    maps = np.abs(np.random.default_rng(2).normal(size=(3, 4, 8))).astype(np.float32)     # (N, P, D)
    a, ra = index.search(maps)
    b, rb = index.search(maps.mean(axis=1))
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        index.search(np.ones((1, 9), np.float32))


def test_assess_lists_neighbours_with_their_captions_and_maps_scores_to_levels():
    index, feats = random_index()
    index.calibration = Calibration(unfamiliar_below=0.5, familiar_from=0.8)
    far = np.zeros((1, 32), np.float32)
    far[0, 0] = 1.0                                                       # one feature only: unlike the rest
    near, odd = index.assess(np.concatenate([feats[:1], far]), neighbours=3)
    assert [n.name for n in near.neighbours][0] == "img0.jpg" and len(near.neighbours) == 3
    assert near.neighbours[0].captions == ["caption 0 a", "caption 0 b", "c"]
    assert near.in_domain == pytest.approx(min(1.0, index.similarity(feats[:1])[0]))
    assert near.in_domain > odd.in_domain
    assert odd.level == index.calibration.level(odd.in_domain)
    assert Calibration(0.5, 0.8).level(0.49) == "unfamiliar"
    assert Calibration(0.5, 0.8).level(0.5) == "unusual"
    assert Calibration(0.5, 0.8).level(0.8) == "familiar"
    assert odd.to_json(2)["neighbours"][0].keys() == {"image", "similarity", "captions"}
    assert "neighbours" not in odd.to_json()


def test_save_and_load_round_trip_without_pickle(tmp_path):
    index, feats = random_index()
    index.calibration = Calibration(0.4, 0.6, report={"dev_images": 3})
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())                 # plain JSON
    assert meta["names"][:2] == ["img0.jpg", "img1.jpg"] and meta["calibration"]["familiar_from"] == 0.6
    np.load(tmp_path / "index.npy", allow_pickle=False)                     # a plain array, no objects
    again = RetrievalIndex.load(tmp_path, encoder="enc-1", feature_dim=32)
    np.testing.assert_array_equal(again.vectors, index.vectors)
    assert again.names == index.names and again.captions == index.captions
    assert again.calibration.familiar_from == 0.6 and again.calibration.report == {"dev_images": 3}
    assert retrieval.read_calibration(tmp_path).unfamiliar_below == 0.4


@pytest.mark.parametrize("damage, message", [
    (lambda d: np.save(d / "index.npy", np.ones((200, 32), np.float32)), "float16"),
    (lambda d: np.save(d / "index.npy", np.ones((199, 32), np.float16)), "one row per name"),
    (lambda d: np.save(d / "index.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a numpy"),
    (lambda d: (d / "index.json").write_text("{not json"), "not valid JSON"),
    (lambda d: _edit(d, encoder="other-encoder"), "built with encoder"),
    (lambda d: _edit(d, captions=[["x"]]), "equally long"),
    (lambda d: _edit(d, calibration={"version": 2, "unfamiliar_below": 0.9, "familiar_from": 0.1}),
     "thresholds are invalid"),
    (lambda d: _edit(d, calibration={"version": 2, "unfamiliar_below": 0.2, "familiar_from": 1.5}),
     "thresholds are invalid"),
    (lambda d: np.save(d / "index.npy", np.load(d / "index.npy") * np.float16(30)), r"row 0 .* has norm (29\.9|30)"),
    (lambda d: np.save(d / "index.npy", np.load(d / "index.npy") * np.float16(1.05)), "not 1 .200 such rows"),
    (lambda d: (d / "index.npy").unlink(), "missing"),
])
def test_load_refuses_a_damaged_or_foreign_index(tmp_path, damage, message):
    index, _ = random_index()
    index.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexFileError, match=message):
        RetrievalIndex.load(tmp_path, encoder="enc-1", feature_dim=32)


def _edit(folder: Path, **changes) -> None:
    meta = json.loads((folder / "index.json").read_text())
    meta.update(changes)
    (folder / "index.json").write_text(json.dumps(meta))


# --- calibration -----------------------------------------------------------------------------------------------
def test_thresholds_are_the_dev_quantiles_the_rule_states():
    rng = np.random.default_rng(3)
    sim = rng.uniform(0.3, 0.9, 400)
    cider = sim * 2 + rng.normal(0, 0.3, 400)
    cal = calibrate(sim, cider)
    assert cal.unfamiliar_below == pytest.approx(np.quantile(sim, UNFAMILIAR_QUANTILE))
    assert cal.familiar_from == pytest.approx(np.quantile(sim, FAMILIAR_QUANTILE))
    assert "quantile" in cal.rule and "log-prob" not in cal.rule and "[0, 1]" in cal.rule
    levels = cal.report["dev_levels"]
    assert levels["unfamiliar"]["count"] == pytest.approx(400 * UNFAMILIAR_QUANTILE, abs=1)
    assert sum(v["count"] for v in levels.values()) == 400
    assert levels["familiar"]["mean_cider"] > levels["unusual"]["mean_cider"] > levels["unfamiliar"]["mean_cider"]
    assert calibrate(sim).unfamiliar_below == cal.unfamiliar_below          # CIDEr-D only fills the report


def test_the_score_is_on_a_0_1_scale_and_never_depends_on_the_caption():
    rng = np.random.default_rng(4)
    sim, logp = rng.uniform(0.3, 0.9, 500), rng.normal(-1.5, 0.4, 500)
    cider = 0.2 * sim + 0.3 * (logp - logp.mean()) + rng.normal(0, 0.05, 500)    # the log-prob ranks quality best
    cal = calibrate(sim, cider, logp)
    assert (cal.unfamiliar_below, cal.familiar_from) == (calibrate(sim).unfamiliar_below,
                                                         calibrate(sim).familiar_from)
    sp = cal.report["spearman"]
    assert sp["caption_confidence"] > sp["in_domain"]          # reported as its own number, not mixed in
    assert retrieval.in_domain_score([-0.2, 0.4, 1.0004]).tolist() == [0.0, 0.4, 1.0]
    assert retrieval.caption_confidence(np.log(0.5)) == pytest.approx(0.5)
    assert retrieval.caption_confidence(-np.inf) == 0.0 and retrieval.caption_confidence(0.3) == 1.0
    _, feats = random_index()
    index = build_index([f"img{i}.jpg" for i in range(len(feats))], feats, [["c"]] * len(feats), "enc-1", k=1)
    index.calibration = Calibration(0.5, 0.8)
    own = index.assess(feats[:3] * 7.0)                         # training photos, scaled: their own neighbours
    assert all(0.999 <= a.in_domain <= 1.0 and a.level == "familiar" for a in own)
    assert "caption_confidence" not in own[0].to_json()


def test_an_index_calibrated_by_the_old_rule_keeps_its_neighbours_but_gives_no_level(tmp_path):
    index, feats = random_index()
    index.save(tmp_path)
    _edit(tmp_path, calibration={"unfamiliar_below": -0.3, "familiar_from": 0.62, "logprob_weight": 0.77,
                                 "logprob_centre": -0.85, "rule": "old"})
    again = RetrievalIndex.load(tmp_path, encoder="enc-1", feature_dim=32)
    assert again.calibration is None and "older rule" in again.calibration_note
    first = again.assess(feats[:1])[0]
    assert first.level is None and first.neighbours[0].name == "img0.jpg"
    with pytest.raises(IndexFileError, match="older rule"):
        retrieval.read_calibration(tmp_path)


def test_level_table_and_bins_summarise_cider_by_score():
    scores = np.linspace(0, 1, 100)
    cider = scores.copy()
    table = level_table(scores, cider, Calibration(0.1, 0.5))
    assert table["unfamiliar"]["count"] == 10 and table["familiar"]["count"] == 50
    assert table["familiar"]["mean_cider"] == pytest.approx(cider[50:].mean(), abs=1e-4)
    bins = calibration_bins(scores, cider, 4)
    assert [b["count"] for b in bins] == [25, 25, 25, 25]
    assert [b["mean_cider"] for b in bins] == sorted(b["mean_cider"] for b in bins)


# --- the tiny bundle trained by train.py (MobileNetV2, 42 training photos) --------------------------------------
def test_train_py_puts_a_calibrated_index_in_the_bundle(tiny_bundle, flickr_dir):
    from captioning.artifacts.bundle import load_bundle
    from captioning.data.flickr8k import Flickr8k
    from captioning.evaluation.trust import CAPTIONS_PER_IMAGE

    bundle = load_bundle(tiny_bundle)
    manifest = bundle.manifest
    assert {"index.npy", "index.json"} <= set(manifest["files"])          # hashed like every other file
    index = bundle.index
    assert len(index) == manifest["data"]["splits"]["train"] and index.dim == 1280
    assert index.encoder == bundle.encoder["key"]
    ds = Flickr8k.load(flickr_dir, check_images=False)
    assert index.captions[0] == ds.captions[index.names[0]][:CAPTIONS_PER_IMAGE]          # every caption (5)
    report = index.calibration.report
    assert report["dev_images"] == manifest["data"]["splits"]["dev"]
    assert sum(v["count"] for v in report["test_levels"].values()) == manifest["data"]["splits"]["test"]
    assert len(report["test"]["score"]) == len(report["test"]["images"]) == len(report["test"]["cider"])
    assert report["lookup_ms"] > 0
    assert index.calibration.unfamiliar_below <= index.calibration.familiar_from


def _copy_without_index(bundle: Path, target: Path) -> Path:
    from captioning.artifacts.bundle import _finish_manifest

    shutil.copytree(bundle, target)
    for name in retrieval.INDEX_FILES:
        (target / name).unlink()
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.pop("index", None)
    _finish_manifest(target, manifest)
    return target


def test_index_command_adds_the_index_to_an_existing_bundle(tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    import train
    from captioning.artifacts.bundle import load_bundle

    artifacts, cache = tiny_run
    copy = _copy_without_index(artifacts / "tiny", tmp_path / "tiny")
    before = json.loads((copy / "manifest.json").read_text())["files"]
    assert load_bundle(copy).index is None
    assert train.main(["index", "--data-dir", str(flickr_dir), "--limit", "60", "--out", str(copy),
                       "--cache-dir", str(cache), "--weights", str(mobilenet_weights), "--quiet"]) == 0
    bundle = load_bundle(copy)                                           # every hash still checks out
    assert bundle.index is not None and bundle.index.calibration is not None
    after = bundle.manifest["files"]
    assert {k: after[k] for k in before} == before                     # the model files are untouched
    assert bundle.manifest["index"]["images"] == len(bundle.index)


def test_a_damaged_index_is_refused_with_the_command_that_rebuilds_it(tiny_bundle, tmp_path):
    from captioning.artifacts.bundle import _finish_manifest, load_bundle
    from captioning.artifacts.manifest import BundleError

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, copy)
    _edit(copy, encoder="xception-299")
    _finish_manifest(copy, json.loads((copy / "manifest.json").read_text()))   # hashes agree: the content is wrong
    with pytest.raises(BundleError, match=r"retrieval index is invalid .*train.py index --out"):
        load_bundle(copy)
    (copy / "index.npy").write_bytes(b"garbage")                        # and a plain corruption is caught by hash
    with pytest.raises(BundleError, match=r"index.npy is damaged .*Rebuild the index with: python train.py index "
                                          r"--out"):
        load_bundle(copy)
    assert load_bundle(copy, load_index=False).index is None           # what train.py index starts from


def test_index_command_recalibrates_an_old_index_keeping_its_vectors_and_rebuilds_a_damaged_one(
        tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    import train
    from captioning.artifacts.bundle import _finish_manifest, load_bundle

    artifacts, cache = tiny_run
    copy = tmp_path / "tiny"
    shutil.copytree(artifacts / "tiny", copy)
    _edit(copy, calibration={"unfamiliar_below": -0.3, "familiar_from": 0.62, "logprob_weight": 0.77,
                             "logprob_centre": -0.85})                  # calibrated by the old rule
    _finish_manifest(copy, json.loads((copy / "manifest.json").read_text()))
    vectors = (copy / "index.npy").read_bytes()
    assert load_bundle(copy).index.calibration is None
    argv = ["index", "--data-dir", str(flickr_dir), "--limit", "60", "--out", str(copy), "--cache-dir", str(cache),
            "--weights", str(mobilenet_weights), "--quiet"]
    assert train.main(argv) == 0
    assert (copy / "index.npy").read_bytes() == vectors                 # kept, not re-extracted
    calibration = load_bundle(copy).index.calibration
    assert calibration is not None and 0 <= calibration.unfamiliar_below <= calibration.familiar_from <= 1
    assert all(0 <= s <= 1 for s in calibration.report["test"]["score"])
    (copy / "index.npy").write_bytes(b"garbage")
    assert train.main(argv) == 0                                        # the fix the error names works
    assert load_bundle(copy).index.calibration is not None


def synthetic_photos() -> dict[str, Image.Image]:
    """Photos from outside Flickr8k's world that the test makes itself."""
    photos = {"flat orange": Image.new("RGB", (320, 240), (200, 120, 40)),
              "flat blue": Image.new("RGB", (320, 240), (30, 60, 200))}
    board = np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((40, 40)))
    photos["chessboard"] = Image.fromarray((board * 255).astype(np.uint8)).convert("RGB")
    photos["noise"] = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    cup = Image.new("RGB", (320, 320), "white")
    d = ImageDraw.Draw(cup)
    d.ellipse((60, 120, 260, 260), fill=(235, 235, 235), outline="black", width=4)      # saucer
    d.rectangle((110, 80, 210, 200), fill=(120, 70, 30), outline="black", width=4)     # cup
    d.arc((190, 100, 250, 160), 270, 90, fill="black", width=6)                        # handle
    photos["drawn cup"] = cup
    shapes = Image.new("RGB", (320, 320), (250, 250, 235))
    d = ImageDraw.Draw(shapes)
    for i, colour in enumerate([(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30)]):
        d.regular_polygon((80 + 160 * (i % 2), 80 + 160 * (i // 2), 60), 3 + i, fill=colour)
    photos["drawn shapes"] = shapes
    return photos


@pytest.fixture(scope="module")
def tiny_captioner(tiny_bundle, mobilenet_weights):
    from captioning.service.captioner import Captioner

    return Captioner.from_bundle(tiny_bundle, mobilenet_weights)


def test_photos_from_outside_flickr8k_are_mostly_unusual_or_unfamiliar(tiny_captioner, flickr_dir):
    from captioning.data.flickr8k import Flickr8k

    photos = synthetic_photos()
    feats = tiny_captioner.features(list(photos.values()))
    caps = [n[0] for n in tiny_captioner.decode(feats, beam_width=3)]
    odd = tiny_captioner.assess(feats, caps)
    levels = [a.level for a in odd]
    assert sum(lv in ("unusual", "unfamiliar") for lv in levels) >= len(photos) - 1, dict(zip(photos, levels))
    ds = Flickr8k.load(flickr_dir, check_images=False)
    real = [ds.image_path(n) for n in ds.splits["test"][20:40]]          # test photos the bundle never saw
    real_feats = tiny_captioner.features(real)
    real_caps = [n[0] for n in tiny_captioner.decode(real_feats, beam_width=3)]
    usual = tiny_captioner.assess(real_feats, real_caps)
    assert np.mean([a.similarity for a in usual]) > np.mean([a.similarity for a in odd]) + 0.05
    assert sum(a.level == "familiar" for a in usual) > sum(a.level == "familiar" for a in odd)


def test_the_level_is_the_same_whatever_decoding_wrote_the_caption(tiny_captioner, flickr_dir):
    photos = [flickr_dir / "Images" / n for n in ("2609836649_b55831ed41.jpg", "1000268201_693b08cb0e.jpg")]
    photos.append(synthetic_photos()["chessboard"])
    feats = tiny_captioner.features(photos)
    runs = {"greedy": dict(beam_width=1), "beam 3": dict(beam_width=3),
            "sample at temperature 100": dict(strategy="sample", temperature=100.0, seed=0)}
    seen = {}
    for label, options in runs.items():
        captions = [n[0] for n in tiny_captioner.decode(feats, **options)]
        seen[label] = tiny_captioner.assess(feats, captions)
    for label, assessments in seen.items():
        assert [(a.in_domain, a.level) for a in assessments] == [(a.in_domain, a.level) for a in seen["greedy"]]
        assert all(0 <= a.in_domain <= 1 and 0 <= a.caption_confidence <= 1 for a in assessments), label
    # the caption's own confidence is the number that moves with the decoding
    assert seen["sample at temperature 100"][0].caption_confidence < seen["greedy"][0].caption_confidence
    record = seen["greedy"][0].to_json()
    assert record.keys() == {"in_domain", "confidence", "caption_confidence"}


def run_cli(*argv) -> tuple[int, str, str]:
    from captioning.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_json_gives_each_image_its_caption_score_level_and_neighbours(tiny_bundle, mobilenet_weights, tmp_path):
    board = tmp_path / "chessboard.png"
    synthetic_photos()["chessboard"].save(board)
    flat = tmp_path / "flat.jpg"
    synthetic_photos()["flat blue"].save(flat)
    code, out, _ = run_cli("caption", str(board), str(flat), "--bundle", str(tiny_bundle), "--weights",
                           str(mobilenet_weights), "--json", "--neighbours", "3")
    assert code == 0
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["path"] for r in lines] == [str(board), str(flat)]
    for r in lines:
        assert {"path", "caption", "log_prob", "in_domain", "confidence", "neighbours"} <= r.keys()
        assert r["confidence"] in retrieval.LEVELS and isinstance(r["in_domain"], float)
        sims = [n["similarity"] for n in r["neighbours"]]
        assert len(sims) == 3 and sims == sorted(sims, reverse=True)
        assert all(n["image"].endswith(".jpg") and n["captions"] for n in r["neighbours"])
    code, out, _ = run_cli("caption", str(board), "--bundle", str(tiny_bundle), "--weights", str(mobilenet_weights))
    assert code == 0 and any(lv in out for lv in retrieval.LEVELS) and "in-domain" in out
    code, _, err = run_cli("caption", str(board), "--bundle", str(tiny_bundle), "--neighbours", "-1")
    assert code == 2 and err.startswith("error: --neighbours")


# --- the shipped bundles, on the official test split ------------------------------------------------------------
SHIPPED = ["default", "xception-attention", "xception-merge", "xception-retrieval"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_familiar_photos_get_clearly_better_captions_on_test(name):
    """The calibration check that can fail: levels from the dev thresholds, CIDEr-D from predictions.csv."""
    import pandas as pd

    folder = ROOT / "artifacts" / name
    calibration = retrieval.read_calibration(folder)
    assert calibration is not None, f"python train.py index --out artifacts/{name}"
    test = calibration.report["test"]
    assert len(test["images"]) == 1000                                   # the official test split
    assert all(0 <= s <= 1 for s in test["score"])                      # the documented 0-1 scale
    preds = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    width = int(calibration.report["decoding"].split()[-1])
    plain = preds["label"].isin([f"beam {width}", ""]) if "label" in preds else True    # not a reranked run
    beam = preds[(preds["beam_width"] == width) & plain].set_index("image")
    cider = beam.loc[test["images"], "cider"].to_numpy()
    np.testing.assert_allclose(cider, test["cider"], atol=1e-3)          # the same captions as evaluated
    table = level_table(test["score"], cider, calibration)
    others = [table[lv] for lv in ("unusual", "unfamiliar") if table[lv]["count"]]
    other_mean = sum(t["mean_cider"] * t["count"] for t in others) / sum(t["count"] for t in others)
    assert table["familiar"]["count"] >= 500
    assert table["familiar"]["mean_cider"] >= other_mean + 0.05, table


def test_a_shipped_training_photo_is_familiar_from_its_stored_features_alone():
    """The issue's photo: its own nearest neighbour at ~1.0, so familiar (no caption, so no decoding, enters)."""
    index = RetrievalIndex.load(ROOT / "artifacts" / "default")
    row = index.names.index("2609836649_b55831ed41.jpg")
    (assessment,) = index.assess(index.vectors[row: row + 1].astype(np.float32))
    assert assessment.neighbours[0].name == "2609836649_b55831ed41.jpg" and assessment.neighbours[0].similarity > 0.99
    assert assessment.level == "familiar" and 0 <= assessment.in_domain <= 1


def test_index_reuses_the_evaluated_test_captions_from_predictions_csv(tmp_path):
    import pandas as pd

    from captioning.training.commands.evaluate import evaluated_scores

    pd.DataFrame({"image": ["a.jpg", "b.jpg", "a.jpg", "b.jpg"], "decoding": ["greedy"] * 2 + ["beam"] * 2,
                  "beam_width": [1, 1, 5, 5], "caption": ["x", "x", "a dog runs", "a man"],
                  "log_prob": [-1.0, -1.0, -2.0, -3.0], "cider": [0.1, 0.2, 0.9, 0.4]}).to_csv(
        tmp_path / "predictions.csv", index=False)
    cider, mean_logp = evaluated_scores(str(tmp_path), ["b.jpg", "a.jpg"], 5)
    assert list(cider) == [0.4, 0.9]
    assert list(mean_logp) == [pytest.approx(-1.0), pytest.approx(-0.5)]      # per token: words + <end>
    assert evaluated_scores(str(tmp_path), ["a.jpg", "c.jpg"], 5) is None     # not every image evaluated
    assert evaluated_scores(str(tmp_path), ["a.jpg"], 3) is None               # nor at that beam width
