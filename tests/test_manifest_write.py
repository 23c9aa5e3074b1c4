"""Manifests are written through the same typed records that read them (captioning.artifacts.manifest): the shipped
bundles' manifests are rebuilt byte for byte from their typed fields, and a writer cannot add a key the types do not
know."""
import json
from dataclasses import fields
from pathlib import Path

import pytest

from captioning.artifacts.manifest import (
    DataInfo,
    DecoderInfo,
    EncoderInfo,
    Manifest,
    RetrievalTrainingInfo,
    SCSTInfo,
    TrainingInfo,
    manifest_entries,
)
from captioning.vision.encoders import get_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "artifacts").iterdir() if (p / "manifest.json").is_file())


def typed_values(record) -> dict:
    """A record's fields that its JSON holds, as the typed values (nested records as records)."""
    keys = type(record).json_keys()
    return {name: getattr(record, name) for name in keys if keys[name] in record.raw}


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_manifest_is_rebuilt_byte_for_byte_from_its_typed_fields(bundle):
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    manifest = Manifest.load(bundle)
    rebuilt = manifest_entries(**typed_values(manifest))            # a key the types do not know: TypeError
    assert json.dumps(rebuilt, indent=2, sort_keys=True) == text       # as bundle._finish_manifest writes it
    training = RetrievalTrainingInfo if manifest.decoder.kind == "retrieval" else TrainingInfo
    for record, cls in ((manifest.encoder, EncoderInfo), (manifest.data, DataInfo), (manifest.training, training),
                        *(((manifest.scst, SCSTInfo),) if manifest.scst else ())):
        assert isinstance(record, cls)
        assert cls.create(**typed_values(record)).to_dict() == record.raw     # each block through its type
    for decoder in manifest.decoders:
        assert DecoderInfo.create(**typed_values(decoder)).to_dict() == decoder.raw


def test_a_writer_cannot_write_a_key_the_types_do_not_know():
    with pytest.raises(TypeError, match="no entry epoch"):
        manifest_entries(epoch=3)
    with pytest.raises(TypeError, match="TrainingInfo has no field best_loss"):
        TrainingInfo.create(best_loss=1.0)
    with pytest.raises(TypeError, match="RetrievalTrainingInfo has no field boost"):
        RetrievalTrainingInfo.create(boost=1.0)
    assert SCSTInfo.create(source="a").to_dict() == {"from": "a"}         # a field's JSON key may differ from it


def test_what_a_training_run_writes_covers_every_key_the_shipped_bundles_hold():
    written = EncoderInfo.from_spec(get_spec("xception"), True, weights_source="keras", weights_file=None).to_dict()
    assert written["spatial_grid"] == get_spec("xception").spatial_grid and written["weights_file"] is None
    assert EncoderInfo.from_spec(get_spec("xception"), False, "keras", None).to_dict()["spatial_grid"] is None
    for bundle in SHIPPED:
        raw = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        training = RetrievalTrainingInfo if raw["decoder"]["kind"] == "retrieval" else TrainingInfo
        training_keys = {f.name for f in fields(training)} - {"raw"}
        assert set(raw["encoder"]) <= set(written)
        assert set(raw["training"]) <= training_keys and set(raw["data"]) <= set(DataInfo.json_keys())


class _Model:
    kind = "merge"

    def get_config(self):
        return {"units": 8}


def test_decoder_entries_as_save_bundle_writes_them():
    assert DecoderInfo.of(_Model()).to_dict() == {"kind": "merge", "config": {"units": 8}}
    enc = EncoderInfo.from_spec(get_spec("xception"), False, "keras", None)
    member = DecoderInfo.of(_Model(), "member-1.keras", enc)
    assert member.to_dict() == {"kind": "merge", "config": {"units": 8}, "file": "member-1.keras",
                                "encoder": enc.to_dict()}
    assert member.encoder.name == enc.name and member.file == "member-1.keras"


def test_a_runs_encoder_block_is_exactly_its_spec_and_a_fine_tune_block_is_read_back():
    spec = get_spec("mobilenetv2", 0.35)
    hint = {"name": "mobilenet.weights.h5", "sha256": "ab" * 32}
    assert EncoderInfo.from_spec(spec, True, "a local file", hint).to_dict() == {
        "name": "mobilenetv2", "alpha": 0.35, "input_size": 224, "key": "mobilenetv2-a0.35-224",
        "feature_dim": spec.feature_dim, "spatial_grid": spec.spatial_grid, "weights_source": "a local file",
        "weights_file": hint}
    shipped = json.loads((SHIPPED[0] / "manifest.json").read_text(encoding="utf-8"))
    finetune = {"base": "default", "photos": 12}
    assert Manifest.from_dict({**shipped, "finetune": finetune}).finetune == finetune
    assert Manifest.from_dict(shipped).finetune is None


def test_encoder_keys_unknown_fields_and_what_a_derived_bundle_inherits():
    from captioning.artifacts.manifest import encoder_key

    assert encoder_key(EncoderInfo.from_dict({"name": "mobilenetv2", "alpha": 0.35})) == "mobilenetv2-a0.35-224"
    with pytest.raises(TypeError, match="TrainingInfo has no field best_loss, epoch$"):
        TrainingInfo.create(epoch=1, best_loss=1.0)
    manifest = Manifest.load(SHIPPED[0])
    inherited = manifest.inherit("members", "index")
    assert set(inherited) == set(manifest.raw) - {"files", "name", "created", "versions", "members", "index"}
    assert inherited["encoder"] == manifest.raw["encoder"]
