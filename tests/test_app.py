"""Every page under streamlit.testing's AppTest, with a tiny bundle trained by the fixture."""
import io

import pytest
from PIL import Image
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest, app_test

from conftest import ROOT

APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 180


class NavigationPagesManager(PagesManager):
    """AppTest re-detects the pages/ folder on every run and then runs the page script alone (multipage v1),
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
    assert next(m for m in at.metric if m.label == "Decoding").value == "beam 5"     # the default
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
    at = start("pages/evaluation.py")
    table = at.dataframe[0].value
    assert list(table["run"]) == ["greedy", "beam 3"]
    assert {"cider", "rouge_l", "coco_bleu_4"} <= set(table.columns)
    assert "Best and worst images" in texts(at)
    assert "Against the other bundles" in texts(at)
    compared = at.dataframe[1].value                       # this bundle beside tiny-attention
    assert set(compared["bundle"]) == {"tiny", "tiny-attention"}
    assert len(at.get("download_button")) == 1
    assert "How it was trained" in texts(at)                # the teacher-forcing loss curves
    at.text_input[0].input("a").run()
    assert not at.exception, at.exception


def test_dataset_page_browses_searches_and_pages(app_env):
    at = start("pages/dataset.py")
    assert {m.label for m in at.metric} >= {"Images", "Captions", "Coverage"}
    assert next(m for m in at.metric if m.label == "Images").value == "1,000"
    at.text_input(key="ds_query").input("surfer").run()
    assert not at.exception
    n = int(next(m for m in at.metric if m.label == "Images").value.replace(",", ""))
    assert 0 < n < 1000


@pytest.mark.parametrize("page", [None, "pages/compare.py", "pages/evaluation.py", "pages/dataset.py"])
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
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception


def test_decoding_runs_chart_in_reading_order():
    from ui.charts import run_order

    assert run_order(["beam 10", "beam 3", "greedy", "beam 5", "beam 3"]) == ["greedy", "beam 3", "beam 5", "beam 10"]


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
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "How it was trained" in shown and "self-critical sequence training" in shown
    titles = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("Self-critical fine-tuning" in t for t in titles) and any("Teacher forcing" in t for t in titles)
    at.sidebar.selectbox[0].select(str(root / "ens")).run()
    members = next(d.value for d in at.dataframe if "member" in d.value.columns)
    assert list(members["member"]) == ["tuned", "tiny-attention"]
    assert members["SCST (dev CIDEr-D)"].iloc[0] != "no" and members["SCST (dev CIDEr-D)"].iloc[1] == "no"
