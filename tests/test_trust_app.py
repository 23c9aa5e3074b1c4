"""The app says how far to trust a caption: level beside it, a warning when unfamiliar, the nearest training
photos, and the calibration chart on the Evaluation page (AppTest on the tiny bundle)."""
import io

import pytest
from streamlit.testing.v1 import AppTest, app_test
from test_app import APP, NavigationPagesManager, texts
from test_retrieval import synthetic_photos

BADGES = ("Familiar photo", "Unusual photo", "Unfamiliar photo")


@pytest.fixture(autouse=True)
def navigation_like_the_server(monkeypatch):
    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)


def start(page=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)     # the first run loads TensorFlow: slow on a busy machine
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def neighbour_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("similarity ")]


def test_caption_page_shows_the_level_and_the_most_similar_training_photos(app_env):
    at = start()
    at.radio(key="caption_mode").set_value("Sample from the test split").run()
    assert not at.exception, at.exception
    page = texts(at)
    assert sum(badge in page for badge in BADGES) == 1 and "in-domain score" in page
    assert "Most similar training photos" in page
    assert len(neighbour_captions(at)) == 5
    assert len(at.get("image")) >= 6                                  # the photo and five neighbour thumbnails


def test_an_out_of_domain_photo_is_flagged_with_a_warning(app_env):
    at = start()
    at.file_uploader[0].upload("chessboard.png", png(synthetic_photos()["chessboard"]), "image/png").run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "Unfamiliar photo" in page or "Unusual photo" in page
    if "Unfamiliar photo" in page:
        assert any("may well be wrong" in w.value for w in at.warning)
    assert len(neighbour_captions(at)) == 5


def test_without_flickr8k_the_neighbours_are_named_with_their_bundle_captions(app_env, monkeypatch):
    monkeypatch.delenv("FLICKR8K_DIR")
    at = start()
    at.file_uploader[0].upload("blue.png", png(synthetic_photos()["flat blue"]), "image/png").run()
    assert not at.exception, at.exception
    names = [m.value for m in at.markdown if m.value.startswith("`") and m.value.endswith(".jpg`")]
    assert len(names) == 5
    assert all(len(c) > len("similarity 0.00 · ") for c in neighbour_captions(at))   # a human caption each


def test_evaluation_page_charts_the_calibration_on_the_test_split(app_env):
    at = start("app_pages/evaluation.py")
    page = texts(at)
    assert "When to trust a caption" in page
    assert "Unfamiliar below" in page and "familiar from" in page
    table = next(t.value for t in at.table if "Test mean CIDEr-D" in t.value.columns)   # human headers (issue 39)
    assert list(table.index) == ["Familiar photo", "Unusual photo", "Unfamiliar photo"]
    titles = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("mean CIDEr-D by in-domain score" in spec for spec in titles)
