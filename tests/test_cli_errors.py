"""Every mistake a user can make on the command line ends in one line that names the fix (exit 2), before any
work is done; no typo or failure replaces a trained bundle; encoder weights are checked before Keras reads them."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import MOBILENET, ROOT

import train
from captioning.training import recipes


def sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


MOBILE = ["--encoder", "mobilenetv2", "--alpha", "0.35"]


@pytest.mark.parametrize("argv, needles", [
    (["--epochs", "0"], ["--epochs 0", "at least 1"]),
    (["--epochs", "-1"], ["--epochs -1", "at least 1"]),
    (["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    (["--dropout", "1.5"], ["--dropout 1.5", "up to (not including) 1"]),
    (["--beam-widths", "abc"], ["--beam-widths 'abc'", "e.g. 3,5"]),
    (["--beam-widths", "3,0"], ["--beam-widths"]),
    (["--learning-rate", "0"], ["--learning-rate 0", "above 0"]),
    (["--encoder", "mobilenetv2", "--alpha", "0.77"], ["--alpha 0.77", "0.35, 0.5, 0.75, 1, 1.3, 1.4"]),
    (["--alpha", "0.5"], ["--alpha", "xception has none"]),
    (["--weights", "/nonexistent.h5"], ["--weights /nonexistent.h5: no such file"]),
    (["--encoder", "mobilenetv2", "--alpha", "1.0", "--weights", str(MOBILENET)], ["pass --alpha 0.35"]),
    (["--limit", "3"], ["--limit 3", "at least 10"]),
    (["evaluate", "--epochs", "0"], ["--epochs 0"]),
    (["scst", "--from", "x", "--samples", "1"], ["--samples 1", "at least 2"]),
    (["--max-words", "0"], ["--max-words 0", "from 1 to 38, e.g. 16"]),
])
def test_bad_options_are_one_line_errors_before_any_work(argv, needles, capsys):
    if str(MOBILENET) in argv and not MOBILENET.is_file():
        pytest.skip("small encoder weights not found")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2
    one_line_error(capsys, *needles)


def test_argparse_own_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--epochs", "many"])
    assert exit_.value.code == 2
    one_line_error(capsys, "--epochs", "invalid int value")


def test_alpha_is_read_from_the_mobilenet_weights_file(mobilenet_weights):
    config = train.parse_args(["--encoder", "mobilenetv2", "--weights", str(mobilenet_weights)])
    assert config.features.alpha == 0.35 and config.workspace.out.endswith("mobilenetv2-a0.35-224-merge")


def test_parameter_counts_match_keras_applications():
    import keras

    from captioning.vision.encoders import MOBILENET_PARAMS

    for alpha, count in MOBILENET_PARAMS.items():
        model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3), alpha=alpha)
        assert model.count_params() == count


def test_min_count_above_every_word_names_the_largest_count(flickr_dir, tmp_path, capsys):
    code = train.main(["train", "--data-dir", str(flickr_dir), *MOBILE, "--limit", "60", "--min-count", "100000",
                       "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2
    one_line_error(capsys, "--min-count 100000", "'a', appears", "use --min-count between 1 and")
    assert not (tmp_path / "features").exists()                       # checked before any extraction


def test_finish_without_a_checkpoint(flickr_dir, tmp_path, capsys):
    code = train.main(["train", "--finish", "--data-dir", str(flickr_dir), *MOBILE, "--limit", "60",
                       "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2
    one_line_error(capsys, "--finish: no checkpoint", "without --finish")


@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_evaluating_a_missing_bundle(command, tmp_path, capsys):
    assert train.main([command, "--out", str(tmp_path / "missing"), "--data-dir", str(tmp_path)]) == 2
    one_line_error(capsys, "--out: No bundle at", "python train.py --out")


def test_latin1_captions_name_the_file_and_the_fix(tmp_path, capsys):
    from test_data import make_dataset

    make_dataset(tmp_path)
    text = (tmp_path / "captions.txt").read_text().replace("A dog number 3", "Un caf\u00e9 number 3")
    (tmp_path / "captions.txt").write_bytes(text.encode("latin-1"))
    assert train.main(["--data-dir", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "c")]) == 2
    one_line_error(capsys, "captions.txt is not UTF-8 text (line 5, byte 0xe9)", "iconv -f latin1 -t utf-8")


def test_a_failed_run_never_replaces_the_bundle_at_out(tiny_run, flickr_dir, mobilenet_weights, tmp_path,
                                                       monkeypatch, capsys):
    artifacts, shared_cache = tiny_run
    out, cache = tmp_path / "artifacts" / "tiny", tmp_path / "cache"
    shutil.copytree(artifacts / "tiny", out)
    shutil.copytree(shared_cache / "features", cache / "features")  # its own checkpoints: the shared run's stay
    before = sha(out)
    common = ["--data-dir", str(flickr_dir), *MOBILE, "--weights", str(mobilenet_weights), "--limit", "60",
              "--cache-dir", str(cache), "--out", str(out), "--quiet", "--no-human", "--no-meteor", "--no-sweep"]
    with pytest.raises(SystemExit):
        train.main(["--epochs", "0", *common])                       # the typo of the issue: refused up front
    assert sha(out) == before

    def evaluation_fails(*a, **k):                                    # trained, but the evaluation breaks
        raise train.DataError("evaluation failed")
    monkeypatch.setattr(recipes, "evaluate_bundle", evaluation_fails)
    assert train.main(["--epochs", "1", "--seed", "5", *common]) == 2
    assert sha(out) == before                                         # the old bundle is untouched
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]         # and no staging folder is left
    monkeypatch.undo()
    capsys.readouterr()
    assert train.main(["--epochs", "1", "--seed", "5", *common]) == 0
    after = json.loads((out / "manifest.json").read_text())
    assert after["training"]["config"]["seed"] == 5 and (out / "metrics.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]


def test_max_words_cuts_the_training_captions_and_what_the_bundle_writes(tiny_run, flickr_dir, mobilenet_weights,
                                                                         tmp_path, capsys):
    _, shared_cache = tiny_run
    cache, out = tmp_path / "cache", tmp_path / "short"
    shutil.copytree(shared_cache / "features", cache / "features")
    assert train.main(["--data-dir", str(flickr_dir), *MOBILE, "--weights", str(mobilenet_weights), "--limit", "60",
                       "--cache-dir", str(cache), "--out", str(out), "--epochs", "2", "--max-words", "4",
                       "--beam-widths", "2", "--quiet", "--no-human", "--no-meteor", "--no-sweep", "--no-index"]) == 0
    said = capsys.readouterr().out
    cut = re.search(r"train: (\d+) of (\d+) training captions cut to 4 words", said)
    assert cut and 0 < int(cut[1]) < int(cut[2]), said[-1500:]       # most Flickr8k captions are longer than 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["config"]["max_words"] == 4
    assert manifest["max_length"] == 5                                # four words and <end>
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert {r["label"] for r in results} == {"greedy", "beam 2"}
    assert all(r["mean_length"] <= 4 for r in results)


def test_interrupt_says_work_is_saved_only_when_it_is(flickr_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(recipes, "ensure_features", interrupted)
    argv = ["--data-dir", str(flickr_dir), *MOBILE, "--limit", "60", "--cache-dir", str(tmp_path), "--quiet"]
    assert train.main(argv) == 130
    err = capsys.readouterr().err
    assert "before this run saved anything" in err and "finished work is saved" not in err

    def one_shard_then_interrupted(*a, **k):
        shard = tmp_path / "features" / "k" / "shard-00000.json"
        shard.parent.mkdir(parents=True)
        shard.write_text('{"names": []}')
        raise KeyboardInterrupt
    monkeypatch.setattr(recipes, "ensure_features", one_shard_then_interrupted)
    assert train.main(argv) == 130
    assert "finished work is saved" in capsys.readouterr().err


# --- encoder weights: python -m captioning and train.py ---------------------------------------------------
def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "captioning", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture()
def photo(flickr_dir):
    return str(flickr_dir / "Images" / (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[0])


def test_the_bundle_remembers_its_weights_file_and_captions_without_weights(tiny_bundle, mobilenet_weights,
                                                                            tmp_path, photo):
    hint = json.loads((tiny_bundle / "manifest.json").read_text())["encoder"]["weights_file"]
    assert hint == {"name": mobilenet_weights.name,
                    "sha256": hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest()}
    empty = tmp_path / "no-weights"
    empty.mkdir()
    done = cli("caption", photo, "--bundle", str(tiny_bundle), env={"CAPTIONING_WEIGHTS_DIR": str(empty)})
    assert done.returncode == 0, done.stderr[-2000:]                  # found in ../shared/weights by its checksum
    assert photo in done.stdout


def test_a_weights_file_with_another_checksum_is_not_taken_for_the_bundles(tiny_bundle, tmp_path):
    from captioning.vision.encoders import find_weights, get_spec

    (tmp_path / MOBILENET.name).write_bytes(b"not the same file")
    hint = {"name": MOBILENET.name, "sha256": "0" * 64}
    os.environ["CAPTIONING_WEIGHTS_DIR"] = str(tmp_path)
    try:
        assert find_weights(get_spec("mobilenetv2", 1.0), hint=hint) is None
    finally:
        del os.environ["CAPTIONING_WEIGHTS_DIR"]


def test_a_missing_weights_file_is_named_by_where_it_came_from(tmp_path, monkeypatch):
    """--weights on the command line; the environment variable in the app and the API, which have no flags."""
    from captioning.vision.encoders import EncoderWeightsError, find_weights, get_spec

    spec, gone = get_spec("mobilenetv2", 0.35), tmp_path / "gone.weights.h5"
    with pytest.raises(EncoderWeightsError, match=r"does not exist\. Pass --weights with the path of"):
        find_weights(spec, gone)
    monkeypatch.setenv(spec.weights_env(), str(gone))
    with pytest.raises(EncoderWeightsError) as caught:
        find_weights(spec)
    assert str(caught.value) == (f"Encoder weights file {gone} (from $CAPTIONING_MOBILENETV2_WEIGHTS) does not "
                                 f"exist. Set CAPTIONING_MOBILENETV2_WEIGHTS to the path of {spec.weights_file}, "
                                 f"or unset it to use the weights folder.")


@pytest.mark.parametrize("problem", ["missing", "truncated", "wrong width"])
def test_weights_problems_are_one_line_errors_in_the_caption_cli(problem, tiny_bundle, tmp_path, photo,
                                                                 mobilenet_weights):
    weights = {"missing": "/nonexistent.h5", "truncated": str(tmp_path / "cut.weights.h5"),
               "wrong width": str(tmp_path / "wide.weights.h5")}[problem]
    if problem == "truncated":
        (tmp_path / "cut.weights.h5").write_bytes(mobilenet_weights.read_bytes()[:100_000])
    if problem == "wrong width":
        bundle = tmp_path / "b"
        shutil.copytree(tiny_bundle, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["encoder"]["alpha"], manifest["encoder"]["key"] = 1.0, "mobilenetv2-a1-224"
        drop_index(bundle, manifest)                     # its retrieval index belongs to the real encoder
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        tiny_bundle, weights = bundle, str(mobilenet_weights)
    done = cli("caption", photo, "--bundle", str(tiny_bundle), "--weights", weights)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), done.stderr[-3000:]
    assert {"missing": "/nonexistent.h5 does not exist", "truncated": "truncated or not a Keras .weights.h5",
            "wrong width": "pass --alpha 0.35"}[problem] in err[0]


def drop_index(bundle, manifest: dict) -> None:
    """Remove a bundle copy's retrieval index (built by every run) before its encoder is edited by hand."""
    for name in ("index.npy", "index.json"):
        manifest["files"].pop(name, None)
        (bundle / name).unlink(missing_ok=True)
    manifest.pop("index", None)


def test_no_weights_offline_names_the_file_to_pass(tiny_bundle, tmp_path, photo):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    # Width 0.5 (same 1280-d features): its standard file is nowhere here, and the remembered file's checksum
    # matches no file either, so only the (offline) Keras download is left.
    manifest["encoder"]["alpha"], manifest["encoder"]["key"] = 0.5, "mobilenetv2-a0.5-224"
    manifest["encoder"]["weights_file"]["sha256"] = "f" * 64
    drop_index(bundle, manifest)                         # its retrieval index belongs to the real encoder
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    empty = tmp_path / "none"
    empty.mkdir()
    done = cli("caption", photo, "--bundle", str(bundle), env={"CAPTIONING_WEIGHTS_DIR": str(empty)})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-3000:]
    assert f"(on the command line: --weights PATH/{MOBILENET.name})" in err[0]
    assert f"Put {MOBILENET.name} in " in err[0] and "point CAPTIONING_MOBILENETV2_WEIGHTS at it" in err[0]


def test_truncated_weights_in_train_py(tmp_path, mobilenet_weights, capsys):
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(mobilenet_weights.read_bytes()[:100_000])
    with pytest.raises(SystemExit):
        train.parse_args(["--encoder", "mobilenetv2", "--weights", str(cut)])
    one_line_error(capsys, "truncated or not a Keras .weights.h5 file")


def test_setup_waits_for_the_package_managers_lock():
    import re

    calls = [line for f in (ROOT / "scripts" / "setup.sh", ROOT / "Makefile")
             for line in f.read_text().splitlines()
             if re.search(r"\bapt-get\b", line) and not line.lstrip().startswith("#")]
    assert calls and all("-o DPkg::Lock::Timeout=600" in line for line in calls)
