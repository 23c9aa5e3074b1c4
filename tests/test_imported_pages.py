"""Imported datasets in the app (issue 36.4): the Dataset page browses the photos a fine-tune imported (its bundle's
dataset record, or a job's run directory while it runs): photos, captions, word counts and the split trained on;
the Evaluation page shows a fine-tuned bundle's scores on the user's own dev/test photos and on Flickr8k's test
photos, before and after, with each held-out photo's captions. A tiny dataset made here; the tiny bundle stands in
for the fine-tuned one (its manifest gets the record train.py finetune writes)."""
import io
import json
import shutil
import sys

import pytest
from test_app import navigation_like_the_server, start, texts  # noqa: F401  (the fixture applies here too)

from captioning.imported import dataset_record, find_imported, load_imported, write_record
from captioning.jobs import JobQueue
from captioning.user_data import load_user_data

CAPTIONS = {"cups/a.jpg": ["a red espresso cup on a table", "an espresso in a red cup"],
            "cups/b.jpg": ["a green espresso cup"], "c.png": ["a blue cup of espresso on a saucer"],
            "d.jpg": ["a grey mug of tea"], "e.jpg": ["two espresso cups side by side"]}


def photo(path, color):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (90, 60), color).save(buf, "PNG" if path.suffix == ".png" else "JPEG")
    path.write_bytes(buf.getvalue())


@pytest.fixture()
def imported(monkeypatch, tmp_path, tiny_bundle, flickr_dir, mobilenet_weights):
    """A user's folder (5 photos, captions.csv), a bundle 'tiny-mine' recording it as train.py finetune does, and
    a private jobs folder; the app's environment points at them."""
    mine = tmp_path / "mine"
    for i, name in enumerate(CAPTIONS):
        photo(mine / name, (40 * i, 200 - 30 * i, 90))
    rows = ["image,caption"] + [f"{name},{c}" for name, caps in CAPTIONS.items() for c in caps]
    (mine / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = load_user_data(mine / "captions.csv", mine, seed=42)
    record = dataset_record(data)
    test, dev = data.splits["test"], data.splits["dev"]
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_bundle, artifacts / "tiny-mine")
    manifest_path = artifacts / "tiny-mine" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    score = lambda cider, share, photos, caption: {                                   # noqa: E731
        "photos": len(photos), "cider": cider, "bleu_4": cider / 3, "new_word_share": share,
        "new_word_share_references": 1.0, "captions": {p: caption for p in photos}}
    manifest["finetune"] = {
        "base": {"name": "tiny"}, "dataset": record,
        "metrics": {"decoding": "beam 3",
                    "before": {"dev": score(0.1, 0.0, dev, "a dog runs on the grass"),
                               "test": score(0.12, 0.0, test, "a man in a red shirt")},
                    "after": {"dev": score(0.5, 1.0, dev, "an espresso cup"),
                              "test": score(0.61, 1.0, test, "a red espresso cup")},
                    "flickr8k_test": {"photos": 200, "before": {"photos": 200, "cider": 0.41, "bleu_4": 0.12,
                                                                "new_word_share": 0.0},
                                      "after": {"photos": 200, "cider": 0.38, "bleu_4": 0.11,
                                                "new_word_share": 0.005}}}}
    manifest_path.write_text(json.dumps(manifest))
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    monkeypatch.setenv("CAPTIONING_JOBS_DIR", str(tmp_path / "jobs"))
    return mine, artifacts / "tiny-mine", data


LABEL = "mine/captions.csv · 5 photos (fine-tuned into tiny-mine)"


def metric_values(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_dataset_page_browses_an_imported_dataset_by_split_with_word_counts(imported):
    mine, bundle, data = imported
    at = start("pages/dataset.py")
    picker = at.selectbox(key="ds_dataset")
    assert picker.options == ["Flickr8k", LABEL]                   # Flickr8k first, then what was imported
    picker.select(LABEL).run()
    assert not at.exception, at.exception
    assert "Your photos from mine/captions.csv (csv format): 5 photos with 6 captions" in texts(at)
    assert "tiny-mine" in texts(at) and "1 dev" in texts(at) and "3 train" in texts(at)
    [test_photo] = data.splits["test"]
    values = metric_values(at)
    assert values["Images"] == "1" and values["Captions"] == str(len(CAPTIONS[test_photo]))
    assert f"**{test_photo}**" in [c.value.replace("\\", "") for c in at.caption]
    assert at.get("image"), "the test photo is shown"
    at.segmented_control(key="ds_split").set_value("all").run()
    values = metric_values(at)
    assert (values["Images"], values["Captions"]) == ("5", "6")
    words = {w for caps in CAPTIONS.values() for c in caps for w in c.split()}
    assert values["Distinct words"] == str(len(words))
    at.text_input(key="ds_query").set_value("espresso").run()
    assert metric_values(at)["Images"] == "4"                        # every photo whose caption says it
    assert not at.exception, at.exception


def test_a_running_job_lists_its_data_and_a_changed_or_deleted_captions_file_is_said(imported, tmp_path):
    mine, bundle, data = imported
    run = tmp_path / "cache" / "runs" / "tiny-other"
    other = dict(dataset_record(data), images_dir=str(mine), sha256="0" * 64)     # another import of the folder
    write_record(run, other)
    JobQueue(tmp_path / "jobs").submit([sys.executable, "-c", "pass"], "Fine-tune tiny → tiny-other",
                                       run_dir=run, start=False)
    found = find_imported([bundle], [run])
    assert [f.bundle for f in found] == ["tiny-mine", None]
    at = start("pages/dataset.py")
    label = "mine/captions.csv · 5 photos (a fine-tune not finished yet)"
    assert label in at.selectbox(key="ds_dataset").options
    at.selectbox(key="ds_dataset").select(label).run()
    assert any("changed after the fine-tune read it" in w.value for w in at.warning)   # the other sha256
    (mine / "captions.csv").unlink()
    with pytest.raises(Exception, match="no longer there; import the photos again"):
        load_imported(other)


def test_evaluation_page_shows_the_fine_tune_on_your_photos_and_flickr8k(imported):
    mine, bundle, data = imported
    at = start("pages/evaluation.py")
    at.sidebar.selectbox[0].select(str(bundle)).run()
    assert not at.exception, at.exception
    assert "On your photos: before and after fine-tuning" in [s.value for s in at.subheader]
    table = at.dataframe[0].value
    rows = {(r["Photos"], r["Score"]): (r["Base model"], r["Fine-tuned"], r["Change"]) for _, r in table.iterrows()}
    assert rows[("Your test photos (1)", "CIDEr-D")] == ("0.120", "0.610", "+0.490")
    assert rows[("Your dev photos (1)", "Captions with a new word")] == ("0%", "100%", "+100%")
    assert rows[("Flickr8k test photos (200)", "CIDEr-D")] == ("0.410", "0.380", "-0.030")
    assert not any("_" in c for c in table.columns)                   # human headers
    photos = at.dataframe[1].value
    [test_photo] = data.splits["test"]
    row = photos[photos["File"] == test_photo].iloc[0]
    assert row["Fine-tuned"] == "A red espresso cup." and row["Base model"] == "A man in a red shirt."
    assert row["Your captions"] == " / ".join(CAPTIONS[test_photo])     # the user's own references
    assert row["Photo"].startswith("data:image/jpeg;base64,")
    assert "Corpus scores" in texts(at)                                 # the tiny bundle's own evaluation follows


def test_evaluation_page_of_a_fine_tuned_bundle_without_a_flickr8k_evaluation(imported):
    mine, bundle, data = imported
    for name in ("metrics.json", "predictions.csv"):                  # as train.py finetune writes a bundle
        (bundle / name).unlink(missing_ok=True)
    at = start("pages/evaluation.py")
    at.sidebar.selectbox[0].select(str(bundle)).run()
    assert not at.exception, at.exception
    assert "On your photos: before and after fine-tuning" in [s.value for s in at.subheader]
    assert any("no Flickr8k evaluation yet" in i.value and "train.py evaluate" in i.value for i in at.info)
    assert "Corpus scores" not in texts(at)
