"""The experiment scripts under scripts/, run as real processes on the tiny bundles (real Flickr8k subset, small
real encoder): they score exactly as train.py does, and their options change what they claim to change."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.artifacts.bundle import load_bundle

ROOT = Path(__file__).resolve().parent.parent


def evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *args) -> subprocess.CompletedProcess:
    artifacts, cache = tiny_run
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_ensemble.py"), *args,
                           "--cache-dir", str(cache), "--data-dir", str(flickr_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


def rows_of(path: Path) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["label"]): r for r in json.loads(path.read_text())["rows"]}


def test_evaluate_ensemble_scores_a_bundle_as_train_py_did(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    bundle = str(artifacts / "tiny")
    done = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, bundle, "--split", "test", "--limit", "60",
                             "--beam-widths", "1,3", "--json", str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = rows_of(tmp_path / "out.json")
    saved = {r["label"]: r for r in json.loads((artifacts / "tiny" / "metrics.json").read_text())["results"]}
    for label in ("greedy", "beam 3"):
        row, want = rows[(bundle, label)], saved[label]
        assert row["n_images"] == want["n_images"] == 9
        for metric in ("bleu_1", "rouge_l", "cider", "mean_length"):
            assert row[metric] == pytest.approx(want[metric], abs=1e-6), (label, metric)
    assert f"{bundle:<44} greedy" in done.stdout


def test_evaluate_ensemble_pools_bundles_and_caps_caption_length(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    merge, attention = str(artifacts / "tiny"), str(artifacts / "tiny-attention")
    common = [merge, attention, "--split", "dev", "--limit", "60", "--beam-widths", "1,2"]
    assert evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *common, "--json", "free.json").returncode == 0
    capped = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, *common, "--max-length", "2", "--no-singles",
                               "--json", "capped.json")
    assert capped.returncode == 0, capped.stderr[-2000:]
    free, short = rows_of(tmp_path / "free.json"), rows_of(tmp_path / "capped.json")
    assert set(free) == {(m, w) for m in (merge, attention, "ensemble of 2") for w in ("greedy", "beam 2")}
    assert set(short) == {("ensemble of 2", "greedy"), ("ensemble of 2", "beam 2")}
    for label in ("greedy", "beam 2"):
        assert short[("ensemble of 2", label)]["mean_length"] <= 2    # a caption cut at the cap has no <end>
    # the tiny models' greedy captions run long when free, so the cap is what shortened them
    assert free[("ensemble of 2", "greedy")]["mean_length"] > 2


def test_evaluate_ensemble_says_how_to_fill_missing_features(tiny_run, flickr_dir, tmp_path):
    artifacts, _ = tiny_run
    done = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, str(artifacts / "tiny"), "--split", "test")
    assert done.returncode != 0
    assert "have no cached" in done.stderr and "python train.py features --encoder mobilenetv2" in done.stderr
    bad = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, str(artifacts / "tiny"), "--limit", "60",
                            "--max-length", "1")
    assert bad.returncode != 0 and "--max-length must be at least 2" in bad.stderr


def test_evaluate_ensemble_scores_chosen_decoders_of_an_ensemble_bundle(tiny_run, flickr_dir, tmp_path, capsys):
    """BUNDLE@N scores exactly as the bundle decoder N came from; BUNDLE@1,2 as the whole ensemble; and
    train.py ensemble builds from chosen decoders too."""
    import train

    artifacts, cache = tiny_run
    common = ["--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet",
              "--beam-widths", "2", "--no-human", "--no-meteor", "--no-sweep", "--no-index"]
    ens = tmp_path / "ens"
    assert train.main(["ensemble", "--members", str(artifacts / "tiny"), str(artifacts / "tiny-attention"),
                       "--out", str(ens), *common]) == 0
    # the same two decoders, one picked out of the ensemble bundle: the same bundle, decoding as it does
    again = tmp_path / "again"
    assert train.main(["ensemble", "--members", f"{ens}@1", str(artifacts / "tiny-attention"),
                       "--out", str(again), *common]) == 0
    first, second = (load_bundle(p) for p in (ens, again))
    assert first.manifest.ensemble_of == second.manifest.ensemble_of
    assert [r["cider"] for r in first.metrics["results"]] == [r["cider"] for r in second.metrics["results"]]
    for members, said in (([f"{ens}@1"], "at least two"), ([f"{ens}@2,1"], "first decoder must come first"),
                          ([f"{ens}@1,3"], "has decoders 1 to 2"), ([f"{ens}@0,1"], "start at 1"),
                          ([f"{ens}@1,x"], "decoder numbers separated by commas")):
        capsys.readouterr()
        assert train.main(["ensemble", "--members", *members, "--out", str(tmp_path / "bad"), *common]) == 2
        assert said in capsys.readouterr().err, members
    merge, attention = str(artifacts / "tiny"), str(artifacts / "tiny-attention")
    done = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, f"{ens}@1", merge, f"{ens}@2", attention,
                             f"{ens}@1,2", str(ens),
                             "--split", "dev", "--limit", "60", "--beam-widths", "2", "--json", "out.json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = rows_of(tmp_path / "out.json")
    metrics = ("bleu_1", "bleu_4", "cider", "rouge_l", "mean_length")
    for picked, whole in ((f"{ens}@1", merge), (f"{ens}@2", attention), (f"{ens}@1,2", str(ens))):
        for metric in metrics:
            assert rows[(picked, "beam 2")][metric] == rows[(whole, "beam 2")][metric], (picked, metric)
    # the two decoders caption differently, so the numbers did tell which one was chosen
    assert any(rows[(merge, "beam 2")][m] != rows[(attention, "beam 2")][m] for m in metrics)
    for pick, said in (("3", "has decoders 1 to 2"), ("1,1", "picked at most once"), ("x", "decoder numbers")):
        bad = evaluate_ensemble(tiny_run, flickr_dir, tmp_path, f"{ens}@{pick}", "--limit", "60")
        assert bad.returncode != 0 and said in bad.stderr, (pick, bad.stderr[-500:])


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mbr_reranking_picks_the_consensus_caption_unless_told_to_trust_the_model():
    from captioning.evaluation.metrics import CiderD

    mbr = _script("rerank_mbr")
    corpus = [[["a", "dog", "runs", "on", "grass"], ["a", "cat", "sits", "on", "a", "mat"]],
              [["two", "children", "play", "in", "the", "sand"], ["a", "man", "rides", "a", "bike"]]]
    cider = CiderD(corpus)
    hyps = [["a", "cat", "sits", "on", "a", "mat"], ["a", "dog", "runs", "on", "grass"]]
    evidence = [hyps[1]] * 3 + [hyps[0]]             # the model sampled the dog three times in four
    expected = mbr.expected_cider(cider, hyps, evidence)
    assert expected[1] > expected[0] > 0
    assert mbr.choose(expected, [-0.5, -1.5], 0.0) == 1      # consensus wins without the model's score
    assert mbr.choose(expected, [-0.5, -1.5], 100.0) == 0    # a heavy log-probability weight flips it
    assert mbr.choose([1.0, 1.0], [0.0, 0.0], 0.0) == 0      # ties keep the earlier (beam) caption


def test_rerank_mbr_runs_on_a_bundle(tiny_run, flickr_dir, tmp_path):
    artifacts, cache = tiny_run
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "rerank_mbr.py"), str(artifacts / "tiny"),
                           "--limit", "60", "--beam", "3", "--samples", "4", "--weights", "0,2", "--json", "out.json",
                           "--cache-dir", str(cache), "--data-dir", str(flickr_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["beam 3, top caption", "MBR, log-prob weight 0", "MBR, log-prob weight 2"]
    assert all(0 <= r["cider"] <= 10 and 0 <= r["bleu_1"] <= 1 and r["mean_length"] > 0 for r in rows)
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "rerank_mbr.py"), str(artifacts / "tiny"),
                          "--samples", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--samples at least 2" in bad.stderr


def test_rerun_decoding_gives_the_diverse_run_its_n_best_and_changes_nothing_else(tiny_run, flickr_dir, tmp_path):
    """scripts/rerun_decoding.py: the diverse run, evaluated with one caption per photo, re-run with its 3-best in
    place: it gains self-BLEU and oracle CIDEr-D; its first-caption scores and every other run stay as they were."""
    import shutil

    import train

    artifacts, cache = tiny_run
    bundle = tmp_path / "tiny"
    shutil.copytree(artifacts / "tiny", bundle)
    common = ["--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet", "--no-human",
              "--no-meteor"]
    assert train.main(["evaluate", "--out", str(bundle), "--decode", "beam:3", "diverse:beams=4,groups=2,penalty=0.5",
                       *common]) == 0
    before = load_bundle(bundle)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "rerun_decoding.py"), str(bundle), "--decode",
                           "diverse:beams=4,groups=2,penalty=0.5,n=3", "--data-dir", str(flickr_dir),
                           "--cache-dir", str(cache), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = load_bundle(bundle)                                  # checksums rewritten with the files
    (beam, old), (beam_again, new) = before.metrics["results"], after.metrics["results"]
    assert beam_again == beam and after.metrics.get("sweep") == before.metrics.get("sweep")
    # up to 3 distinct captions per photo (the tiny model finds only 2 for some photos; the run counts the fewest)
    assert "self_bleu_4" not in old and 2 <= new["captions_per_image"] <= 3 and 0 <= new["self_bleu_4"] <= 1
    assert new["oracle_cider"] >= new["cider"]                   # the best of three is no worse than the first
    changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    assert changed == {"options", "decode_seconds", "captions_per_image", "self_bleu_4", "distinct_2_all",
                       "oracle_cider"}
    assert new["label"] == old["label"] and new["options"]["num_return_sequences"] == 3
    p, q = before.predictions, after.predictions
    assert q[q["label"] == "beam 3"].reset_index(drop=True).equals(p[p["label"] == "beam 3"].reset_index(drop=True))
    diverse = q[q["label"] == old["label"]]
    ranks = diverse.groupby("image")["rank"].max()
    assert ranks.between(2, 3).all() and ranks.min() == new["captions_per_image"]
    firsts = diverse[diverse["rank"] == 1].reset_index(drop=True)
    assert list(firsts["caption"]) == list(p[p["label"] == old["label"]]["caption"])
    assert "self_bleu_4" in done.stdout                         # the old and new numbers, side by side
    # --add scores a decoding the bundle has no run of (the app's default: beam with consensus reranking) after the
    # others, leaving them and their predictions as they were; adding it a second time is refused
    add = [sys.executable, str(ROOT / "scripts" / "rerun_decoding.py"), str(bundle), "--decode",
           "beam:3,consensus=5,cw=1.5", "--add", "--data-dir", str(flickr_dir), "--cache-dir", str(cache), "--quiet"]
    done = subprocess.run(add, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    third = load_bundle(bundle)
    assert third.metrics["results"][:2] == after.metrics["results"] and len(third.metrics["results"]) == 3
    added = third.metrics["results"][2]
    assert added["label"] == "beam 3 (consensus 5, w 1.5)" and added["split"] == new["split"]
    r = third.predictions
    assert r[r["label"] != added["label"]].reset_index(drop=True).equals(q.reset_index(drop=True))
    assert (r["label"] == added["label"]).sum() == len(firsts)
    again = subprocess.run(add, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "already has a run" in again.stderr
