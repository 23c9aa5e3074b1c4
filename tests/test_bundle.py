"""Broken bundles give one clear error naming the bundle and the rebuild command."""
import json
import shutil

import pytest

from captioning.bundle import BundleError, list_bundles, load_bundle, read_manifest, save_bundle
from captioning.text import Vocabulary


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
    with pytest.raises(BundleError, match=rf"{path}.*member-1.keras is missing.*train.py ensemble --members a b"):
        load_bundle(path, verify=False)


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
