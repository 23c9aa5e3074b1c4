"""Every page under streamlit.testing's AppTest, with a tiny bundle trained by the fixture."""
import io

import pytest
from conftest import ROOT
from PIL import Image
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest, app_test

APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 420          # a first run loads the model; generous for a busy shared machine


class NavigationPagesManager(PagesManager):
    """AppTest re-detects the app_pages/ folder on every run and then runs the page script alone (multipage v1),
    which a real server stops doing once st.navigation has run; keep the server's behaviour in tests."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


@pytest.fixture(autouse=True)
def navigation_like_the_server(monkeypatch):
    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)


def start(page=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [s.value for s in at.subheader] + [str(i.value) for i in at.info] + [str(w.value) for w in at.warning]
    return "\n".join(str(p) for p in parts)


def jpeg_bytes(color=(200, 120, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), color).save(buf, "JPEG")
    return buf.getvalue()


def test_sidebar_lists_bundles_and_caption_page_captions_an_upload(app_env):
    at = start()
    assert at.sidebar.selectbox[0].value.endswith("tiny")
    assert "Caption a photo" in texts(at)
    at.file_uploader[0].upload("photo.jpg", jpeg_bytes(), "image/jpeg").run()
    assert not at.exception, at.exception
    caption = [m.value for m in at.markdown if m.value.startswith("### “")]
    assert caption and caption[0].strip("#“”. ")            # at least one word
    assert {m.label for m in at.metric} >= {"Decoding", "Time", "Mean log p"}


def test_caption_page_rejects_a_bad_upload_and_stays_usable(app_env):
    at = start()
    at.file_uploader[0].upload("notes.jpg", b"this is text, not a photo", "image/jpeg").run()
    assert not at.exception
    assert any("not an image" in e.value for e in at.error)
    at.file_uploader[0].clear().upload("ok.jpg", jpeg_bytes(), "image/jpeg").run()
    assert not at.exception and not at.error


def test_caption_page_sample_shows_references_and_bleu(app_env):
    at = start()
    at.radio(key="caption_mode").set_value("Sample from the test split").run()
    assert not at.exception, at.exception
    labels = {m.label for m in at.metric}
    assert {"BLEU-1", "BLEU-4"} <= labels
    assert "Human captions" in texts(at)
    # the default: beam 5, re-ranked by consensus with the nearest training photos (the bundle has an index)
    # (the metric holds the search, the reranking is written under it: the whole label did not fit the column)
    decoding = next(m for m in at.metric if m.label == "Decoding")
    assert decoding.value == "beam 5" and "+ consensus 10, w 1.5" in texts(at)
    assert decoding.help.startswith("beam 5 (consensus 10, w 1.5): consensus k, w:")
    at.segmented_control(key="caption_strategy").set_value("Greedy").run()
    assert not at.exception, at.exception
    assert next(m for m in at.metric if m.label == "Decoding").value == "greedy"


def test_attention_bundle_shows_a_heat_map_per_word(app_env, tiny_attention_bundle):
    at = start()
    at.sidebar.selectbox[0].set_value(str(tiny_attention_bundle)).run()
    at.file_uploader[0].upload("photo.jpg", jpeg_bytes(), "image/jpeg").run()
    assert not at.exception, at.exception
    assert "Where the model looked, word by word" in texts(at)
    caption = next(m.value for m in at.markdown if m.value.startswith("### “"))
    n_words = len(caption.strip("#“”. ").split())
    maps = at.get("image")
    assert len(maps) >= n_words + 1                       # the photo plus one map per word


def test_evaluation_page_tables_charts_and_download(app_env):
    at = start("app_pages/evaluation.py")
    table = at.dataframe[0].value
    assert list(table["Decoding"]) == ["greedy", "beam 3"]
    assert {"CIDEr-D", "ROUGE-L", "BLEU-4"} <= set(table.columns)
    assert "Best and worst images" in texts(at)
    assert "Against the other bundles" in texts(at)
    compared = at.dataframe[1].value                       # this bundle beside tiny-attention
    assert set(compared["Bundle"]) == {"tiny", "tiny-attention"}
    assert len(at.get("download_button")) == 1
    assert "How it was trained" in texts(at)                # the teacher-forcing loss curves
    at.text_input[0].input("a").run()
    assert not at.exception, at.exception


def test_dataset_page_browses_searches_and_pages(app_env):
    at = start("app_pages/dataset.py")
    assert {m.label for m in at.metric} >= {"Images", "Captions", "Coverage"}
    assert next(m for m in at.metric if m.label == "Images").value == "1,000"
    at.text_input(key="ds_query").input("surfer").run()
    assert not at.exception
    n = int(next(m for m in at.metric if m.label == "Images").value.replace(",", ""))
    assert 0 < n < 1000


@pytest.mark.parametrize("page", [None, "app_pages/compare.py", "app_pages/evaluation.py", "app_pages/dataset.py"])
def test_pages_without_bundle_or_dataset_say_what_to_run(monkeypatch, tmp_path, page):
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(tmp_path / "empty"))
    monkeypatch.setenv("FLICKR8K_DIR", str(tmp_path / "nodata"))
    at = start(page)
    shown = texts(at)
    assert ("python train.py" in shown) or ("FLICKR8K_DIR" in shown), shown


def test_an_ensemble_bundle_captions_and_shows_its_members(monkeypatch, tiny_run, flickr_dir, mobilenet_weights,
                                                           tmp_path):
    import train

    artifacts, cache = tiny_run
    root = tmp_path / "artifacts"
    assert train.main(["ensemble", "--members", str(artifacts / "tiny"), str(artifacts / "tiny-attention"),
                       "--out", str(root / "ens"), "--data-dir", str(flickr_dir), "--limit", "60",
                       "--cache-dir", str(cache), "--quiet", "--beam-widths", "3", "--no-human", "--no-meteor"]) == 0
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    at = start()
    assert "ensemble of 2 LSTMs (1 **merge** + 1 **attention**)" in texts(at)
    at.file_uploader[0].upload("photo.jpg", jpeg_bytes(), "image/jpeg").run()
    assert not at.exception, at.exception
    assert [m for m in at.markdown if m.value.startswith("### “")]
    assert "Where the model looked, word by word" in texts(at)      # the attention member's maps
    assert "A first caption from one of" not in texts(at)           # the whole ensemble's caption, in the end
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception, at.exception


def test_decoding_runs_chart_in_reading_order():
    from ui.charts import run_order

    assert run_order(["beam 10", "beam 3", "greedy", "beam 5", "beam 3"]) == ["greedy", "beam 3", "beam 5", "beam 10"]
    # sampling labels end in a number too ("n 5"): they follow every beam, then diverse beam search
    shipped = ["greedy", "beam 3", "beam 5", "beam 10", "sample T 0.7, top-p 0.9, n 5", "sample T 1, n 5",
               "diverse 6 beams / 3 groups, penalty 0.5"]
    assert run_order(shipped[::-1]) == shipped


def test_an_scst_bundle_shows_its_fine_tuning(monkeypatch, tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    """A self-critically fine-tuned bundle says so in the sidebar and charts its dev CIDEr-D by epoch; an ensemble
    built from it lists the fine-tuning per member."""
    import train

    artifacts, cache = tiny_run
    root = tmp_path / "artifacts"
    common = ["--data-dir", str(flickr_dir), "--limit", "60", "--cache-dir", str(cache), "--quiet",
              "--beam-widths", "3", "--no-human", "--no-meteor", "--no-sweep"]
    assert train.main(["scst", "--from", str(artifacts / "tiny"), "--out", str(root / "tuned"), "--epochs", "1",
                       *common]) == 0
    assert train.main(["ensemble", "--members", str(root / "tuned"), str(artifacts / "tiny-attention"),
                       "--out", str(root / "ens"), *common]) == 0
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    monkeypatch.setenv("FLICKR8K_DIR", str(flickr_dir))
    monkeypatch.setenv("CAPTIONING_WEIGHTS_DIR", str(mobilenet_weights.parent))
    at = start()
    at.sidebar.selectbox[0].select(str(root / "tuned")).run()
    assert "fine-tuned on CIDEr-D (self-critical)" in texts(at)
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "How it was trained" in shown and "self-critical sequence training" in shown
    titles = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("Self-critical fine-tuning" in t for t in titles) and any("Teacher forcing" in t for t in titles)
    at.sidebar.selectbox[0].select(str(root / "ens")).run()
    members = next(d.value for d in at.dataframe if "Member" in d.value.columns)
    assert list(members["Member"]) == ["tuned", "tiny-attention"]
    # tuned/ is under this app's artifacts, tiny-attention/ is not: no one is sent to a page that is not there
    assert list(members["In this app"]) == ["yes: pick it in the sidebar", "not shipped"]
    assert members["SCST (dev CIDEr-D)"].iloc[0] != "no" and members["SCST (dev CIDEr-D)"].iloc[1] == "no"


# --- issue 15: what a person reads -------------------------------------------------------------------------

RAW_FIELDS = {"bleu_1", "bleu_4", "coco_bleu_4", "cider", "rouge_l", "meteor", "kendall_tau", "beam_width",
              "log_prob", "mean_length", "vocabulary_used", "decode_seconds", "length_penalty", "run"}


def walk(node):
    """Every element of an AppTest tree in page order."""
    children = getattr(node, "children", None)
    if children is None:
        yield node
        return
    for key in sorted(children):
        yield from walk(children[key])


def chart_specs(at) -> list[dict]:
    """Each chart's Vega-Lite spec, with its data sets (sent beside the spec as Arrow) under "datasets"."""
    import json

    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    specs = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        spec["datasets"] = {**(spec.get("datasets") or {}),
                            **{d.name: convert_arrow_bytes_to_pandas_df(d.data.data).to_dict("records")
                               for d in chart.proto.datasets}}
        if chart.proto.data.data:
            spec["datasets"]["_main"] = convert_arrow_bytes_to_pandas_df(chart.proto.data.data).to_dict("records")
        specs.append(spec)
    return specs


def band_axes(spec: dict):
    """The axes of a chart's nominal / ordinal encodings (the ones that label bars)."""
    layers = [spec] + spec.get("layer", [])
    for layer in layers:
        for channel in ("x", "y"):
            enc = (layer.get("encoding") or {}).get(channel) or {}
            if enc.get("type") in ("nominal", "ordinal"):
                yield enc.get("axis") or {}


def test_every_bar_of_the_word_chart_is_labelled_including_end(app_env):
    at = start()
    at.radio(key="caption_mode").set_value("Sample from the test split").run()
    assert not at.exception, at.exception
    spec = next(s for s in chart_specs(at) if "How sure the model" in json_dumps(s))
    values = next(iter(spec["datasets"].values()))
    assert values[-1]["token"] == "<end>"                 # the last bar is the end of the caption
    axes = list(band_axes(spec))
    assert axes and all(a.get("labelOverlap") is False for a in axes)   # Vega-Lite may not drop any label


def json_dumps(obj) -> str:
    import json

    return json.dumps(obj)


def test_evaluation_tables_and_charts_show_human_labels_only(app_env):
    at = start("app_pages/evaluation.py")
    for frame in at.dataframe:
        assert not RAW_FIELDS & set(frame.value.columns), frame.value.columns
    table = at.dataframe[0].value
    assert {"Decoding", "BLEU-4", "CIDEr-D", "METEOR", "Mean words"} <= set(table.columns)
    for spec in chart_specs(at):
        titles = json_dumps(spec)
        assert '"title": "cider"' not in titles and '"title": "kendall_tau"' not in titles
        for axis in band_axes(spec):
            assert axis.get("labelOverlap") is False


def test_coco_bleu_is_shown_once_when_it_equals_nltk_bleu_and_the_text_says_so(app_env):
    at = start("app_pages/evaluation.py")
    metrics = __import__("json").loads((app_env / "tiny" / "metrics.json").read_text())["results"]
    gap = max(abs(r[f"bleu_{n}"] - r[f"coco_bleu_{n}"]) for r in metrics for n in range(1, 5))
    shown = texts(at)
    assert "differ slightly" not in shown
    if gap < 5e-4:
        assert "gives the same numbers here" in shown
        assert not any(c.startswith("coco BLEU") for c in at.dataframe[0].value.columns)
    else:
        assert f"differ by up to {gap:.4f}" in shown
        assert "coco BLEU-4" in at.dataframe[0].value.columns


def test_coco_bleu_that_differs_is_shown_beside_nltk_bleu(tmp_path, monkeypatch, app_env):
    import json
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(app_env / "tiny", root / "tiny")
    file = root / "tiny" / "metrics.json"
    metrics = json.loads(file.read_text())
    for row in metrics["results"]:
        row["coco_bleu_4"] = row["bleu_4"] + 0.01            # as if the toolkit tokenised differently
    file.write_text(json.dumps(metrics))
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    at = start("app_pages/evaluation.py")
    assert "differ by up to 0.0100" in texts(at)
    assert {"BLEU-4", "coco BLEU-4"} <= set(at.dataframe[0].value.columns)


def test_evaluation_per_image_histogram_counts_each_image_once(app_env):
    at = start("app_pages/evaluation.py")
    n_images = int(__import__("json").loads((app_env / "tiny" / "metrics.json").read_text())
                   ["results"][0]["n_images"])
    spec = next(s for s in chart_specs(at) if any(isinstance(e, dict) and e.get("aggregate") == "count"
                                                  for e in (s.get("encoding") or {}).values()))
    rows = next(iter(spec["datasets"].values()))
    assert len(rows) == n_images                          # one decoding run: one row per image
    assert {r.get("run") for r in rows} <= {None, at.selectbox(key="eval_run").value}


def test_evaluation_pickers_sit_above_the_sections_they_control_and_the_page_has_contents(app_env):
    at = start("app_pages/evaluation.py")
    order = [e for e in walk(at.main)]

    def index(pred):
        return next(i for i, e in enumerate(order) if pred(e))

    heading = index(lambda e: e.type == "subheader" and e.value == "Per-image scores")
    run_picker = index(lambda e: e.type == "selectbox" and e.label == "Decoding run")
    metric_picker = index(lambda e: e.type == "selectbox" and e.label == "Per-image metric")
    controlled = index(lambda e: e.type == "markdown" and "Distribution of" in e.value)
    trained = index(lambda e: e.type == "subheader" and e.value == "How it was trained")
    assert heading < run_picker < controlled and heading < metric_picker < controlled
    assert not (heading < trained < run_picker)
    contents = next(e.value for e in order if e.type == "markdown" and e.value.startswith("**On this page:**"))
    for anchor in ("#corpus-scores", "#other-bundles", "#per-image", "#training"):
        assert f"]({anchor})" in contents
    anchors = {e.proto.anchor for e in order if e.type == "subheader"}
    assert {"corpus-scores", "other-bundles", "per-image", "training"} <= anchors


def test_captions_have_one_style_on_caption_and_compare(app_env):
    at = start()
    at.radio(key="caption_mode").set_value("Sample from the test split").run()
    headline = next(m.value for m in at.markdown if m.value.startswith("### “")).strip("#“” ")
    assert headline[0].isupper() and headline.endswith(".")
    at.switch_page("app_pages/compare.py").run()            # the decoding lab starts from the Caption page's photo
    assert not at.exception, at.exception
    import re

    # each strategy's captions in one block, best first in bold, each with its scores on a grey line beneath
    blocks = [m.value for m in at.markdown if ":gray[" in m.value and "“" in m.value]
    bold = [b for block in blocks for b in re.findall(r"\*\*“([^”]+)”\*\*", block)]
    assert len(bold) >= 2 and all(b[0].isupper() and b.endswith(".") for b in bold)   # one per strategy
    listed = [c for block in blocks for c in re.findall(r"^\d+\. “([^”]+)”", block, re.MULTILINE)]   # the n-best
    assert listed and all(c[0].isupper() and c.endswith(".") for c in listed)


def test_attention_thumbnails_keep_the_photo_aspect_ratio(app_env, tiny_attention_bundle):
    from PIL import Image as PILImage

    from captioning.service.captioner import Captioner
    from ui.widgets import attention_thumbnails

    captioner = Captioner.from_bundle(tiny_attention_bundle)
    wide = PILImage.new("RGB", (400, 200), (90, 140, 200))
    caption = captioner.caption(wide, beam_width=1)[0]
    thumbs = attention_thumbnails(wide, caption, size=100)
    assert len(thumbs) == len(caption.words) + caption.finished
    assert all(picture.size == (200, 100) for _, picture in thumbs)


def test_the_caption_page_says_once_what_the_model_was_trained_on(app_env):
    import json

    manifest = json.loads((app_env / "tiny" / "manifest.json").read_text())
    n_train = manifest["data"]["splits"]["train"]
    at = start()
    sentence_ = f"Trained on {n_train:,} Flickr8k photos (everyday scenes from Flickr, mostly people and dogs outdoors)"
    assert " ".join(c.value for c in at.main.caption).count(sentence_) == 1
    assert sentence_ not in " ".join(c.value for c in at.sidebar.caption)      # said once, not twice (issue 39)
    assert f"trained on {n_train:,} images" in " ".join(c.value for c in at.sidebar.caption)


def test_dataset_page_title_matches_the_navigation(app_env):
    from ui.shell import PAGES

    at = start("app_pages/dataset.py")
    assert at.title[0].value == next(title for script, title, *_ in PAGES if script == "app_pages/dataset.py")


# --- issue 16: hostile input and damaged bundles ------------------------------------------------------------

HOSTILE_NAME = "[click me](javascript:alert(1)) **bold** $x^2$ :red[red].jpg"


def test_upload_names_are_shown_literally_never_as_markdown(app_env):
    at = start()
    at.file_uploader[0].upload(HOSTILE_NAME, b"not a photo at all", "image/jpeg").run()
    assert not at.exception
    message = at.error[0].value
    for raw in ("[click me](javascript", "**bold**", "$x^2$", ":red[red]"):
        assert raw not in message
    assert r"\[click me\]\(javascript\:alert\(1\)\) \*\*bold\*\*" in message


def test_the_dataset_search_box_echo_is_literal(app_env):
    at = start("app_pages/dataset.py")
    at.text_input(key="ds_query").input("**bold** $x^2$ :red[red]").run()
    assert not at.exception
    warning = at.warning[0].value
    assert "**bold**" not in warning and "$x^2$" not in warning and ":red[" not in warning
    assert r"\*\*bold\*\* \$x^2\$ \:red\[red\]" in warning


def test_literal_escapes_every_markdown_construct():
    from ui.labels import literal

    assert literal("a_b*c") == r"a\_b\*c"
    assert literal(":material/home: <b>x</b>") == r"\:material/home\: \<b\>x\</b\>"
    assert literal("line\nbreak") == "line break"


def test_an_over_limit_upload_says_so_and_clears_the_previous_caption(app_env):
    from captioning.vision.images import MAX_BYTES

    at = start()
    at.file_uploader[0].upload("ok.jpg", jpeg_bytes(), "image/jpeg").run()
    assert [m for m in at.markdown if m.value.startswith("### “")]
    at.file_uploader[0].clear().upload("huge.jpg", b"\xff" * (MAX_BYTES + 1), "image/jpeg").run()
    assert not at.exception
    assert any("photos up to 20 MB are accepted" in e.value and "huge" in e.value for e in at.error)
    assert not [m for m in at.markdown if m.value.startswith("### “")]


def test_the_uploader_limit_is_the_apps_limit(app_env):
    """Issue 39: the label said "up to 20 MB" and the widget "Limit 64MB per file"; the widget now has the
    app's limit, while the server still takes larger zips for the Batch page."""
    import tomllib

    from captioning.vision.images import MAX_BYTES

    at = start()
    uploader = at.file_uploader[0]
    assert uploader.proto.max_upload_size_mb * 2**20 == MAX_BYTES
    assert f"up to {MAX_BYTES // 2**20} MB" in uploader.label
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert config["maxUploadSize"] * 2**20 >= MAX_BYTES
    assert config["address"] == "127.0.0.1"                  # issue 16 item 3: loopback unless asked


def copy_bundles(app_env, root, names=("tiny", "tiny-attention")):
    import shutil

    for name in names:
        shutil.copytree(app_env / name, root / name)
    return root


@pytest.mark.parametrize("damage", ["truncated metrics.json", "garbage predictions.csv"])
def test_a_damaged_sibling_bundle_is_skipped_with_a_note(tmp_path, monkeypatch, app_env, damage):
    root = copy_bundles(app_env, tmp_path / "artifacts")
    bad = root / "tiny-attention"
    if damage == "truncated metrics.json":
        text = (bad / "metrics.json").read_text()
        (bad / "metrics.json").write_text(text[: len(text) // 2])
    else:
        (bad / "predictions.csv").write_bytes(b"\x00\x01garbage\n\"unclosed,quote\n1,2,3,4,5\n")
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    at = start("app_pages/evaluation.py")
    assert not at.exception, at.exception
    if damage == "truncated metrics.json":
        note = " ".join(w.value for w in at.warning)
        assert "tiny-attention" in note and f"python train.py evaluate --out {bad}" in note
        assert set(at.dataframe[1].value["Bundle"]) == {"tiny"}
    assert "Per-image scores" in texts(at)                 # the chosen bundle's page is whole
    at.sidebar.selectbox[0].select(str(bad)).run()         # and the damaged one says what to run
    assert not at.exception, at.exception
    if damage == "truncated metrics.json":
        assert any(f"python train.py evaluate --out {bad}" in e.value for e in at.error)
    else:
        assert f"python train.py evaluate --out {bad}" in texts(at) + " ".join(e.value for e in at.error)


def test_a_bundle_without_metrics_captions_and_says_how_to_evaluate_it(tmp_path, monkeypatch, app_env):
    root = copy_bundles(app_env, tmp_path / "artifacts", ("tiny",))
    (root / "tiny" / "metrics.json").unlink()
    (root / "tiny" / "predictions.csv").unlink()
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    at = start()
    at.file_uploader[0].upload("photo.jpg", jpeg_bytes(), "image/jpeg").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert [m for m in at.markdown if m.value.startswith("### “")]
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception
    assert f"python train.py evaluate --out {root / 'tiny'}" in texts(at)
    assert "no evaluation yet" in texts(at)


# --- server start and load ---------------------------------------------------------------------------------

def test_the_default_bundle_warms_once_per_process_and_the_first_user_gets_that_captioner(app_env, tmp_path):
    import threading

    from ui import state

    path = copy_bundles(app_env, tmp_path / "artifacts", ("tiny",)) / "tiny"     # a bundle no one warmed yet
    def warmers() -> int:
        return sum(t.name == "captioner-warm-up" for t in threading.enumerate())

    state.warm_in_background(path)
    started = warmers()
    state.warm_in_background(path)                                  # a second call starts nothing new
    assert warmers() <= started
    key = (str(path), (path / "manifest.json").stat().st_mtime)
    load = state._warming[key]
    warm = load.full.result(timeout=300)
    assert load.quick.result() is warm                              # one decoder: one stage
    assert state._captioner(*key) is warm                           # the cached loader hands it over
    assert key not in state._warming and key in state._warm_started


def test_make_app_starts_loading_the_default_bundle_before_the_server_starts(app_env, tmp_path, monkeypatch):
    from streamlit.web import cli

    from ui import launch, state

    root = copy_bundles(app_env, tmp_path / "artifacts", ("tiny",))        # a bundle no one warmed yet
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    key = state._bundle_key(root / "tiny")
    seen = {}

    def server(args):                   # streamlit's own start, before any session can arrive
        seen["args"], seen["loading"] = args, state._warming.get(key)

    monkeypatch.setattr(cli, "main", server)
    launch.main(["--server.headless=true"])
    assert seen["args"][0] == "run" and seen["args"][-1] == "--server.headless=true"
    assert seen["loading"] is not None, "the default bundle was not loading when the server started"
    assert seen["loading"].full.result(timeout=300).bundle.path == root / "tiny"


def test_only_a_few_uploads_are_decoded_at_once():
    import threading
    import time

    from ui.state import DECODE_SLOTS, decode_slot

    inside, peak, lock = 0, 0, threading.Lock()

    def work():
        nonlocal inside, peak
        with decode_slot():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4 * DECODE_SLOTS + 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == DECODE_SLOTS


# --- issue 39 / 34: every page as a person reads it ---------------------------------------------------------------

def test_no_bundles_names_the_folder_the_app_reads(monkeypatch, tmp_path):
    empty = tmp_path / "my-models"
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(empty))
    at = start()
    shown = texts(at)
    assert f"`{empty}/`" in shown and f"--out {empty}/default" in shown
    assert "`artifacts/`" not in shown


def test_deleting_the_selected_bundle_says_so_before_another_captions(tmp_path, monkeypatch, app_env):
    import shutil

    root = copy_bundles(app_env, tmp_path / "artifacts")
    monkeypatch.setenv("CAPTIONING_ARTIFACTS", str(root))
    at = start()
    at.sidebar.selectbox[0].set_value(str(root / "tiny-attention")).run()
    assert not at.exception and not at.warning
    shutil.rmtree(root / "tiny-attention")                      # gone while the session is open
    at.run()
    assert not at.exception, at.exception
    notice = " ".join(w.value for w in at.warning)
    assert "**tiny\\-attention** you were using is no longer there" in notice and "**tiny**" in notice
    at.run()                                                    # said once, not on every later run
    assert not at.warning


def test_an_empty_dataset_search_shows_no_metrics_of_nothing(app_env):
    at = start("app_pages/dataset.py")
    at.text_input(key="ds_query").input("zzzzqx").run()
    assert not at.exception
    assert any("No test caption contains" in w.value for w in at.warning)
    assert not [m for m in at.metric if m.label == "Coverage"]


def test_dataset_captions_are_tidy_sentences(app_env):
    at = start("app_pages/dataset.py")
    bullets = [c.value for c in at.caption if c.value.startswith("• ")]
    assert bullets and not any(b.rstrip().endswith(" \\.") or " \\." in b for b in bullets)
    assert all(b.endswith("\\.") for b in bullets)               # literal() escapes the full stop


def test_the_batch_page_waits_for_a_free_decode_slot(app_env, flickr_dir):
    """Issue 34: a batch run holds one of the process's decode slots, shared by every session."""
    import threading

    from ui.state import decode_slots

    at = start("app_pages/batch.py")
    slots = decode_slots()
    for _ in range(slots.size):                                  # other sessions hold every slot
        assert slots.semaphore.acquire(timeout=60)
    name = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[0]
    photo = (name, (flickr_dir / "Images" / name).read_bytes(), "image/jpeg")
    runner = threading.Thread(target=lambda: at.file_uploader(key="batch_upload").set_value([photo]).run())
    try:
        runner.start()
        runner.join(6)
        assert runner.is_alive()                                 # waiting, not captioning
    finally:
        for _ in range(slots.size):
            slots.semaphore.release()
    runner.join(TIMEOUT)
    assert not at.exception, at.exception
    assert list(at.dataframe[0].value["Status"]) == ["captioned"]


def test_evaluation_tables_show_every_row_and_per_image_starts_at_the_default_decoding(app_env):
    at = start("app_pages/evaluation.py")
    runs = at.selectbox(key="eval_run").options
    assert at.selectbox(key="eval_run").value == ("beam 5" if "beam 5" in runs else runs[0])   # not the last run
    agreement = [t.value for t in at.table if "Implementation" in t.value.columns]
    for table in agreement:                                      # a plain table: every row, nothing cut
        assert len(table) >= 1 and table["Implementation"].str.len().gt(0).all()


def test_reference_captions_read_as_people_write_them():
    from ui.labels import human_caption

    assert human_caption("Two skiers stand , two sit on slopes .") == "Two skiers stand, two sit on slopes."
    assert human_caption("a man 's dog runs") == "A man's dog runs."


def test_the_calibration_bars_stand_on_zero_and_their_labels_stay_inside(app_env):
    """Issue 39: the bins were drawn as thin lines (a bar ranged in x needs y2) with numbers over each other, and
    threshold labels pushed above the plot squeezed it flat."""
    from captioning.evaluation.trust import read_calibration
    from ui.trust import calibration_chart

    calibration = read_calibration(app_env / "tiny")
    test = calibration.report["test"]
    spec = calibration_chart(test["score"], test["cider"], calibration).to_dict()
    bars, *others = spec["layer"]
    assert bars["encoding"]["y2"] == {"datum": 0}
    assert not any(layer["mark"].get("dy") for layer in others)
    assert [layer["mark"]["type"] for layer in others] == ["rule", "text", "text"]   # no number on every bar
