"""Integration: train.py on a small real Flickr8k subset with the small real encoder, then the CLI."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from captioning.artifacts.bundle import load_bundle
from captioning.service.captioner import Captioner
from captioning.vision.features import FeatureCache


def test_bundle_has_every_artifact_and_metric(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["encoder"]["name"] == "mobilenetv2" and manifest["encoder"]["weights_source"].startswith("file:")
    assert manifest["decoder"]["kind"] == "merge"
    assert manifest["data"]["splits"] == {"train": 42, "dev": 9, "test": 9}
    assert {"tensorflow", "keras", "numpy", "python"} <= set(manifest["versions"])
    assert manifest["training"]["epochs_run"] == 3 and manifest["training"]["peak_rss_mb"] > 0

    results = json.loads((tiny_bundle / "metrics.json").read_text())["results"]
    assert [(r["decoding"], r["beam_width"]) for r in results] == [("greedy", 1), ("beam", 3)]
    for r in results:
        assert r["split"] == "test" and r["n_images"] == 9
        assert all(0 <= r[f"bleu_{n}"] <= 1 for n in range(1, 5))
        assert all(0 <= r[f"coco_bleu_{n}"] <= 1 for n in range(1, 5))
        assert r["cider"] >= 0 and 0 <= r["rouge_l"] <= 1
        assert ("meteor" in r) == (shutil.which("java") is not None)
        assert r["bleu_1"] > 0             # even 3 epochs on 42 images learn words like "a", "man", "dog"
    metrics = json.loads((tiny_bundle / "metrics.json").read_text())
    assert metrics["implementations"]["cider"].startswith("pycocoevalcap")

    preds = pd.read_csv(tiny_bundle / "predictions.csv", keep_default_na=False)
    assert list(preds.columns[:4]) == ["image", "decoding", "beam_width", "caption"]
    assert len(preds) == 18 and preds["caption"].str.len().min() > 0
    assert {"bleu_4", "cider"} <= set(preds.columns)


def test_load_bundle_and_caption_a_real_image(tiny_run, tiny_bundle, flickr_dir, mobilenet_weights):
    import numpy as np

    bundle = load_bundle(tiny_bundle)
    assert len(bundle.vocab) == bundle.manifest["vocab_size"]
    captioner = Captioner(bundle, mobilenet_weights)
    name = bundle.predictions["image"].iloc[0]
    greedy = captioner.caption(flickr_dir / "Images" / name)[0]
    assert greedy.words and greedy.log_prob < 0
    # the app path (load_image -> 224 -> encoder) gives the features training used, up to JPEG decoders
    trained = FeatureCache(tiny_run[1] / "features", "mobilenetv2-a0.35-224").load([name])[0].astype(np.float32)
    app = captioner.features(flickr_dir / "Images" / name)[0]
    cosine = float(app @ trained / np.linalg.norm(app) / np.linalg.norm(trained))
    assert cosine > 0.99
    nbest = captioner.caption(flickr_dir / "Images" / name, beam_width=3, num_return_sequences=3)
    assert len(nbest) == 3 and nbest[0].score >= nbest[-1].score


def test_cli_captions_an_image(tiny_bundle, flickr_dir, mobilenet_weights):
    image = flickr_dir / "Images" / "1000268201_693b08cb0e.jpg"
    env = {**os.environ, "CAPTIONING_WEIGHTS_DIR": str(mobilenet_weights.parent)}
    out = subprocess.run([sys.executable, "-m", "captioning", "caption", str(image), "--bundle", str(tiny_bundle),
                          "--beam-width", "3"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(str(image)) and "log p" in line


def test_cli_reports_a_bad_image_without_a_traceback(tiny_bundle, tmp_path, mobilenet_weights):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    env = {**os.environ, "CAPTIONING_WEIGHTS_DIR": str(mobilenet_weights.parent)}
    out = subprocess.run([sys.executable, "-m", "captioning", "caption", str(bad), "--bundle", str(tiny_bundle)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 1 and "not an image" in out.stderr and "Traceback" not in out.stderr


def test_feature_cache_is_complete_float16(tiny_run):
    _, cache = tiny_run
    fc = FeatureCache(cache / "features", "mobilenetv2-a0.35-224")
    index = fc.index()
    assert len(index) == 60
    arr = fc.load(list(index)[:5])
    assert arr.dtype == "float16" and arr.shape == (5, 1280)


def test_rerun_reuses_features_and_finished_training(tiny_run, flickr_dir, mobilenet_weights, capsys, tmp_path):
    import train

    artifacts, cache = tiny_run
    out_dir = tmp_path / "tiny"        # same bundle name, so the same checkpoints; the shared bundle stays as it is
    code = train.main(["train", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--epochs", "3",
                       "--out", str(out_dir), "--cache-dir", str(cache), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "epoch 1:" not in out                                 # nothing retrained
    rerun, first = load_bundle(out_dir), load_bundle(artifacts / "tiny")
    assert all(np.array_equal(a, b) for a, b in zip(rerun.decoder.get_weights(), first.decoder.get_weights()))


def test_train_reports_missing_data_clearly(tmp_path, capsys):
    import train

    assert train.main(["--data-dir", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "train.py download" in capsys.readouterr().err


def test_quick_run_limit_is_validated():
    import train

    with pytest.raises(SystemExit):
        train.parse_args(["--limit", "3"])


def test_sweep_stores_beam_and_length_penalty_scores(tiny_bundle, tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    import train

    copy = tmp_path / "swept"
    shutil.copytree(tiny_bundle, copy)
    before = json.loads((copy / "metrics.json").read_text())["results"] if (copy / "metrics.json").exists() else []
    code = train.main(["sweep", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--out", str(copy),
                       "--cache-dir", str(tiny_run[1]), "--quiet"])
    assert code == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["results"] == before                            # evaluation results are kept
    widths = [r["beam_width"] for r in metrics["sweep"] if r["axis"] == "beam_width"]
    penalties = [r["length_penalty"] for r in metrics["sweep"] if r["axis"] == "length_penalty"]
    assert widths == [1, 2, 3, 5, 10] and penalties == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(r["split"] == "dev" and r["n_images"] == 9 and "cider" in r for r in metrics["sweep"])
    assert load_bundle(copy).metrics["sweep"] == metrics["sweep"]
    # evaluating again (another beam width) replaces the results and keeps the sweep
    code = train.main(["evaluate", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--out", str(copy),
                       "--cache-dir", str(tiny_run[1]), "--quiet", "--beam-widths", "2", "--no-human", "--no-meteor"])
    assert code == 0
    again = json.loads((copy / "metrics.json").read_text())
    assert [r["beam_width"] for r in again["results"]] == [1, 2] and again["sweep"] == metrics["sweep"]
    assert set(load_bundle(copy).predictions["beam_width"]) == {1, 2}
    # a damaged metrics.json is what `train.py evaluate` (the command its error names) repairs
    (copy / "metrics.json").write_text("{")
    code = train.main(["evaluate", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--out", str(copy),
                       "--cache-dir", str(tiny_run[1]), "--quiet", "--beam-widths", "2", "--no-human", "--no-meteor"])
    assert code == 0 and [r["beam_width"] for r in load_bundle(copy).metrics["results"]] == [1, 2]


def test_ensemble_of_a_merge_and_an_attention_bundle(tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    """train.py ensemble: one bundle that decodes with both decoders, evaluated and swept like any other."""
    import train

    artifacts, cache = tiny_run
    out = tmp_path / "ens"
    code = train.main(["ensemble", "--members", str(artifacts / "tiny"), str(artifacts / "tiny-attention"),
                       "--out", str(out), "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache),
                       "--quiet", "--beam-widths", "3", "--no-human", "--no-meteor"])
    assert code == 0
    bundle = load_bundle(out)
    assert [d.kind for d in bundle.decoders] == ["merge", "attention"] and bundle.uses_spatial
    assert [m["file"] for m in bundle.manifest["members"]] == ["member-1.keras"]
    assert [r["beam_width"] for r in bundle.metrics["results"]] == [1, 3] and bundle.metrics["sweep"]
    # the ensemble decodes differently from either member, and shows the attention member's maps
    captioner = Captioner(bundle, mobilenet_weights)
    image = flickr_dir / "Images" / bundle.predictions["image"].iloc[0]
    caption = captioner.caption(image, beam_width=3)[0]
    assert caption.words and caption.attention.shape == (caption.num_tokens, 49)
    alone = [Captioner(load_bundle(artifacts / n), mobilenet_weights).caption(image, beam_width=3)[0]
             for n in ("tiny", "tiny-attention")]
    assert all(caption.log_prob != a.log_prob for a in alone)


def test_ensemble_needs_bundles_that_share_a_vocabulary(tiny_run, flickr_dir, tmp_path, capsys):
    import train

    artifacts, cache = tiny_run
    code = train.main(["ensemble", "--members", str(artifacts / "tiny"), "--out", str(tmp_path / "e"),
                       "--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet"])
    assert code == 2 and "at least two" in capsys.readouterr().err
