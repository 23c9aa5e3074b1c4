"""The Compare page as the decoding lab, under streamlit.testing's AppTest with the tiny bundle."""
import json
import re
import shutil

from test_app import jpeg_bytes, navigation_like_the_server, start, texts  # noqa: F401  (the autouse fixture)

from captioning.artifacts.bundle import update_results


def _lab_with_test_photo(at):
    at.radio(key="compare_mode").set_value("Sample from the test split").run()
    assert not at.exception, at.exception
    return at


def test_lab_decodes_three_strategies_side_by_side_with_scores_against_the_references(app_env):
    at = _lab_with_test_photo(start("app_pages/compare.py"))
    heads = [s.value for s in at.subheader]
    assert heads == ["Beam 5", "Sample T 0.7, top-p 0.9, n 5", "Diverse 6 beams / 3 groups, penalty 0.5"]
    # each caption with its scores on a line beneath it (no table: its headers wrapped in a quarter of the page)
    blocks = [m.value.replace("\u2011", "-").replace("\u00a0", " ") for m in at.markdown
              if m.value.lstrip("1. ").startswith("**“")]
    assert [b.count(":gray[") for b in blocks] == [1, 5, 3]       # beam's best, 5 samples, 3 from 3 groups
    for block in blocks:
        for line in re.findall(r":gray\[(.*?)\]", block):
            scores = dict(item.rsplit(" ", 1) for item in line.split(" · "))
            assert set(scores) <= {"BLEU-4", "CIDEr-D", "mean log p", "score"} and "mean log p" in scores
            assert 0 <= float(scores["BLEU-4"]) <= 1 and float(scores["CIDEr-D"]) >= 0
            assert scores.get("score") != scores["mean log p"]                        # never the same number twice
    page = texts(at)
    assert sum(badge in page for badge in ("Familiar photo", "Unusual photo", "Unfamiliar photo")) == 1  # trust
    assert "Human captions" in texts(at)
    assert len(at.get("vega_lite_chart")) >= 3                     # word probabilities per strategy (+ the split chart)
    # a fourth column, switched to greedy: one more subheader, one caption
    at.segmented_control(key="lab_count").set_value(4).run()
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader][3] == "Greedy"
    # every knob is validated: 4 groups do not divide 6 beams -> a message, the other columns still decode
    knob = next(s for s in at.slider if s.label == "Groups" and s.key.startswith("lab2"))
    knob.set_value(4).run()
    assert not at.exception, at.exception
    assert any("must divide beam_width" in e.value for e in at.error)
    assert "Beam 5" in [s.value for s in at.subheader]


def test_lab_charts_quality_against_diversity_from_metrics_json(app_env, tmp_path, monkeypatch):
    lab = tmp_path / "artifacts"
    shutil.copytree(app_env / "tiny", lab / "tiny")
    metrics = json.loads((lab / "tiny" / "metrics.json").read_text())
    runs = [("greedy", "greedy", 0.30, 0.80), ("beam", "beam 5", 0.34, 0.70),
            ("sample", "sample T 0.7, top-p 0.9, n 5", 0.25, 0.97)]
    metrics["results"] = [{**metrics["results"][0], "decoding": d, "label": label, "cider": c, "distinct_captions": dc,
                           "vocab_used": 50, "distinct_2": 0.4, "novel_fraction": 0.5}
                          for d, label, c, dc in runs]
    metrics["results"][2].update(self_bleu_4=0.3, oracle_cider=0.6)
    update_results(lab / "tiny", metrics)                     # metrics.json is hashed in the manifest
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(lab))
    at = start("app_pages/compare.py")
    assert "Across the test split" in [h.value for h in at.header]
    table = at.table[0].value                                  # no photo yet: the split table is the only one
    assert list(table.index) == [label for _, label, _, _ in runs]
    assert {"BLEU-4", "CIDEr-D", "Distinct captions (%)", "Words used", "Novel (%)", "Self-BLEU-4",
            "Oracle CIDEr-D"} <= set(table.columns)
    assert not any("_" in c for c in table.columns)            # human labels, no field names
    assert list(table["Distinct captions (%)"]) == ["80.0", "70.0", "97.0"]     # one format per column
    assert list(table["Self-BLEU-4"]) == ["–", "–", "0.300"]
    chart = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    encoding = chart["encoding"]
    assert encoding["color"]["field"] == "run" and encoding["color"]["legend"]["labelLimit"] == 0   # named in full
    assert encoding["x"]["axis"]["format"] == ".0%"
    assert chart["encoding"]["x"]["scale"]["domain"][1] <= 1.0                # a share never past 100%
    at.segmented_control(key="lab_axis").set_value("vocab_used").run()
    axis = json.loads(at.get("vega_lite_chart")[0].proto.spec)["encoding"]["x"]["axis"]
    assert axis["format"] == ",d"                                              # 240, not 2.4e+2


def test_a_photo_chosen_on_the_caption_page_stays_chosen_on_the_lab(app_env):
    at = start()
    at.file_uploader[0].upload("holiday.jpg", jpeg_bytes((30, 140, 200)), "image/jpeg").run()
    assert not at.exception, at.exception
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    keep = at.toggle(key="compare_keep")
    assert keep.value and "holiday.jpg" in keep.label and "Caption page" not in keep.label
    assert len([s.value for s in at.subheader]) == 3               # decoded without uploading again
    keep.set_value(False).run()                                     # choose another photo here
    assert at.radio(key="compare_mode") is not None and len(at.subheader) == 0


def test_lab_on_a_bundle_evaluated_before_diversity_scores_says_what_to_run(app_env, tmp_path, monkeypatch):
    lab = tmp_path / "artifacts"
    shutil.copytree(app_env / "tiny", lab / "tiny")
    metrics = json.loads((lab / "tiny" / "metrics.json").read_text())
    assert "distinct_captions" in metrics["results"][0]            # evaluate now scores diversity for every run
    keep = ("decoding", "beam_width", "split", "n_images", "bleu_1", "bleu_4", "cider")
    metrics["results"] = [{k: r[k] for k in keep} for r in metrics["results"]]   # as older bundles have them
    update_results(lab / "tiny", metrics)
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(lab))
    at = start("app_pages/compare.py")
    assert "train.py evaluate" in texts(at) and "--decode" in texts(at)


def test_the_lab_says_why_a_merge_bundle_shows_no_attention_and_the_shipped_ensemble_has_maps(tiny_run):
    """The lab's note is the core's: a merge bundle says why it has no maps; the shipped three-encoder ensemble
    (10x10, 9x9, 7x7 grids) has them, resampled to one grid (issue 34.9), so it needs no note."""
    from captioning.artifacts.bundle import load_bundle
    from captioning.service.captioner import Captioner

    assert "merge decoders" in Captioner(load_bundle(tiny_run[0] / "tiny")).attention_note
    assert Captioner(load_bundle(__import__("conftest").ROOT / "artifacts" / "default")).attention_note is None


def test_preset_names_fit_a_quarter_of_the_page():
    from ui.lab import PRESETS

    assert all(len(name) <= 20 for name in PRESETS)
