"""The app's "Your photos" memory (AppTest on the tiny bundle): a captioned zip is remembered (bad rows listed with
their line numbers), listed with thumbnails and removable, and the Caption page shows which remembered captions it
used for a photo like one of them."""
import io
import shutil
import zipfile

import pytest
from streamlit.testing.v1 import AppTest, app_test
from test_app import APP, NavigationPagesManager, texts

from captioning.service.captioner import Captioner
from captioning.service.memory.bank import MemoryBank


@pytest.fixture(autouse=True)
def navigation_like_the_server(monkeypatch):
    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)


@pytest.fixture()
def memory_env(app_env, tmp_path, monkeypatch):
    """The app's environment with a feature cache of its own and no remembered photo before or after."""
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    shutil.rmtree(app_env / ".memory", ignore_errors=True)
    yield app_env
    shutil.rmtree(app_env / ".memory", ignore_errors=True)     # other app tests caption without a memory


def start(page=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def flickr_photos(flickr_dir, n=2):
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:n]
    return {name: (flickr_dir / "Images" / name).read_bytes() for name in names}


def test_your_photos_remembers_a_captioned_zip_lists_and_removes(memory_env, flickr_dir):
    photos = flickr_photos(flickr_dir)
    (a, a_bytes), (b, b_bytes) = photos.items()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mine/captions.csv", f"image,caption\nphotos/{a},my red kayak\nphotos/{b},the old boat\n"
                                        "photos/gone.jpg,not there\n")
        z.writestr(f"mine/photos/{a}", a_bytes)
        z.writestr(f"mine/photos/{b}", b_bytes)
    at = start("app_pages/memory.py")
    assert "No remembered photos yet" in texts(at)
    at.file_uploader(key="memory_zip").upload("mine.zip", buf.getvalue(), "application/zip").run()
    at.button(key="memory_zip_add").click().run()
    assert not at.exception, at.exception
    assert any("Remembered 2 photos (2 captions)" in s.value for s in at.success)
    assert any("1 row(s) were skipped" in w.value for w in at.warning)
    assert at.dataframe[0].value.iloc[0]["Line"] == 4
    page = texts(at).lower()                                      # captions are shown as sentences
    assert "2 remembered photos" in page and "my red kayak" in page and "the old boat" in page
    assert len(at.get("image")) >= 2
    at.button(key=f"memory_remove_photos/{a}").click().run()
    assert not at.exception, at.exception
    page = texts(at).lower()
    assert "1 remembered photos" in page and "my red kayak" not in page and "the old boat" in page


def test_the_caption_page_shows_the_remembered_captions_it_used(memory_env, flickr_dir, mobilenet_weights):
    (name, data), = flickr_photos(flickr_dir, 1).items()
    captioner = Captioner.from_bundle(memory_env / "tiny", mobilenet_weights)
    MemoryBank.for_captioner(captioner, memory_env / ".memory").add(captioner, [(name, data, ["my red kayak"])])
    at = start()
    at.file_uploader[0].upload(name, data, "image/jpeg").run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "From your photos" in page and "similarity 1.00" in page and "kayak" in page.lower()
