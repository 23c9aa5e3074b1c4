"""The real app in a real browser: `streamlit run` headless, driven by Debian's Chromium through Selenium.

Screenshots of every page land in test-output/screenshots/ for people to look at.
"""
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT
from PIL import Image

from ui.browser import click_label, free_port, new_driver, wait_for_text

OUT = ROOT / "test-output" / "screenshots"


@contextlib.contextmanager
def running_app(artifacts, flickr_dir, weights_dir, log_name: str = "streamlit-server.log"):
    """`streamlit run streamlit_app.py` on a free loopback port; yields its URL, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "CAPTIONING_ARTIFACTS": str(artifacts), "FLICKR8K_DIR": str(flickr_dir),
           "CAPTIONING_WEIGHTS_DIR": str(weights_dir)}
    (ROOT / "test-output").mkdir(exist_ok=True)
    with open(ROOT / "test-output" / log_name, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                                 "--server.headless=true", f"--server.port={port}", "--server.address=127.0.0.1",
                                 "--browser.gatherUsageStats=false"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while time.time() < deadline:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"streamlit did not become healthy within 90 s; see test-output/{log_name}")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def server(tiny_run, flickr_dir, mobilenet_weights):
    with running_app(tiny_run[0], flickr_dir, mobilenet_weights.parent) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    OUT.mkdir(parents=True, exist_ok=True)
    driver = new_driver()
    yield driver
    driver.quit()


def upload_and_read_caption(driver, server: str, photo) -> str:
    """Open the Caption page, upload ``photo`` and return the caption headline once it is shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server)
    wait_for_text(driver, "Caption a photo")
    upload = WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))
    upload.send_keys(str(photo))
    wait_for_text(driver, "“")                                   # the caption headline
    wait_for_text(driver, "Mean log p")                          # the metrics under it
    return next(e.text for e in driver.find_elements(By.TAG_NAME, "h3") if e.text.startswith("“"))


def test_caption_page_uploads_an_image_and_shows_the_caption(server, browser, flickr_dir, tmp_path):
    from selenium.webdriver.common.by import By

    photo = tmp_path / "upload.png"
    Image.open(flickr_dir / "Images" / "1000268201_693b08cb0e.jpg").resize((500, 375)).save(photo)
    headline = upload_and_read_caption(browser, server, photo)
    settle()
    assert any(ch.isalpha() for ch in headline)
    assert_no_error_shown(browser)
    metrics = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricValue"]')]
    assert any(m.endswith(" ms") for m in metrics), metrics
    browser.save_screenshot(str(OUT / "caption.png"))


EXCEPTION_LINE = re.compile(r"^(Traceback \(most recent call last\)|[A-Za-z_.]*(Error|Exception)\b.*:)")


def assert_no_error_shown(driver) -> None:
    """No exception box, no error alert and no exception line anywhere on the page (not only the first line)."""
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert not boxes, [b.text[:300] for b in boxes]
    lines = [line for line in driver.find_element(By.TAG_NAME, "body").text.split("\n") if EXCEPTION_LINE.match(line)]
    assert not lines, lines


def test_the_error_check_sees_an_exception_below_the_first_line():
    class Page:
        def __init__(self, text):
            self.text = text

        def find_elements(self, *_):
            return []

        def find_element(self, *_):
            return self

    assert_no_error_shown(Page("Caption a photo\nA dog runs"))
    for shown in ("Caption a photo\nBeam width\nTraceback (most recent call last):",
                  "Compare decoding\nValueError: beam_width must be a whole number",
                  "Evaluation\nkeras.src.errors.SomeError: broken"):
        with pytest.raises(AssertionError):
            assert_no_error_shown(Page(shown))


def settle(seconds: float = 3.0) -> None:
    """Charts draw after the script's last element arrives; give them a moment before a screenshot."""
    time.sleep(seconds)


@pytest.mark.parametrize("path, done", [("compare", "Word by word: probabilities and attention"),
                                        ("evaluation", "All predictions"),
                                        ("dataset", "Caption statistics")])
def test_every_page_renders(server, browser, path, done):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/{path}")
    if path == "compare":
        click_label(browser, "Sample from the test split")
    wait_for_text(browser, done)
    settle()
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and "Error" not in body.split("\n")[0]
    assert_no_error_shown(browser)
    browser.save_screenshot(str(OUT / f"{path}.png"))


def test_a_deep_link_to_a_fresh_server_opens_the_whole_app(tiny_run, flickr_dir, mobilenet_weights, browser):
    """Streamlit runs app_pages/<name>.py on its own when a new server's first request is a deep link; the
    pages hand over to the shell, so the sidebar, the bundle and the navigation are all there."""
    from selenium.webdriver.common.by import By

    with running_app(tiny_run[0], flickr_dir, mobilenet_weights.parent, "streamlit-deep-link.log") as url:
        browser.get(f"{url}/evaluation")
        wait_for_text(browser, "Model bundle")
        wait_for_text(browser, "All predictions")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "No trained model" not in body and "Compare decoding" in body
        assert_no_error_shown(browser)
        browser.get(f"{url}/dataset")                  # and the server stays in navigation mode
        wait_for_text(browser, "Caption statistics")
        assert "Model bundle" in browser.find_element(By.TAG_NAME, "body").text


def test_five_browser_sessions_caption_at_once(server, browser, flickr_dir, tmp_path):
    """Five sessions at once get exactly the captions the same photos get one after another."""
    from concurrent.futures import ThreadPoolExecutor

    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:5]
    photos = []
    for i, name in enumerate(names):
        photos.append(tmp_path / f"session{i}.jpg")
        Image.open(flickr_dir / "Images" / name).save(photos[-1])

    def session(photo):
        driver = new_driver(1000, 900)
        try:
            return upload_and_read_caption(driver, server, photo)
        finally:
            driver.quit()

    with ThreadPoolExecutor(max_workers=5) as pool:
        captions = list(pool.map(session, photos))
    assert len(captions) == 5 and all(c.startswith("“") and any(ch.isalpha() for ch in c) for c in captions)
    serial = [upload_and_read_caption(browser, server, photo) for photo in photos]
    assert captions == serial


def test_an_upload_name_with_markdown_shows_literally(server, browser, tmp_path):
    """Issue 16 item 11: a file name is text, never a link, bold or LaTeX."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "[click me](javascript:alert(1)) **bold** $x$.jpg"
    photo.write_bytes(b"this is not a photo")
    browser.get(server)
    wait_for_text(browser, "Caption a photo")
    WebDriverWait(browser, 120).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(photo))
    wait_for_text(browser, "not an image")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "[click me](javascript:alert(1)) **bold** $x$.jpg" in body
    assert not browser.find_elements(By.CSS_SELECTOR, 'a[href^="javascript"]')
    browser.save_screenshot(str(OUT / "hostile-name.png"))


def test_the_server_listens_on_loopback_unless_told_otherwise(tiny_run, flickr_dir, mobilenet_weights):
    """Issue 16 item 3: a plain `streamlit run` of this project (no --server.address) binds 127.0.0.1 only."""
    port = free_port()
    env = {**os.environ, "CAPTIONING_ARTIFACTS": str(tiny_run[0]), "FLICKR8K_DIR": str(flickr_dir),
           "CAPTIONING_WEIGHTS_DIR": str(mobilenet_weights.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless=true",
                             f"--server.port={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.strip(), "nothing listens on the port"
        assert all(line.split()[3].startswith("127.0.0.1:") for line in listening.strip().splitlines()), listening
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
    assert "Network URL" not in out


CHART_PAGE = '''
import streamlit as st
from captioning.decoding.captions import Caption
from ui.charts import word_probabilities

CAPTIONS = {"first": "a dog runs through the grass", "second": "two dog runs near the grass with small children"}
words = CAPTIONS[st.radio("Photo", list(CAPTIONS), horizontal=True)].split()
caption = Caption(words, -3.0, -3.0, [0.5] * (len(words) + 1))
st.altair_chart(word_probabilities(caption, "How sure the model was of each word"))
st.write("shown: " + " ".join(words))
'''


def word_chart_labels(driver) -> list[str]:
    """The x-axis labels of the word chart, left to right (the chart is drawn as SVG)."""
    from selenium.webdriver.common.by import By

    axis = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] g.role-axis-label')[0]
    labels = axis.find_elements(By.TAG_NAME, "text")
    return [t.text for t in sorted(labels, key=lambda t: t.location["x"])]


def test_the_word_chart_keeps_caption_order_after_a_second_caption(browser, tmp_path):
    """Issue 39: Streamlit swaps the second caption's data into the same chart; the bars stay in word order
    although "2 dog", "3 runs", "5 the" and "6 grass" were on the first chart (they used to jump to the front)."""
    script = tmp_path / "chart_page.py"
    script.write_text(CHART_PAGE)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless=true",
                             f"--server.port={port}", "--server.address=127.0.0.1"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                browser.get(f"http://127.0.0.1:{port}")
                break
            except Exception:                      # the server is still starting
                time.sleep(0.5)
        wait_for_text(browser, "shown: a dog runs")
        settle(2)
        assert word_chart_labels(browser)[:3] == ["1 a", "2 dog", "3 runs"]
        click_label(browser, "second")
        wait_for_text(browser, "shown: two dog runs")
        settle(2)
        labels = word_chart_labels(browser)
        assert [int(label.split()[0]) for label in labels] == list(range(1, 11)), labels
        assert labels[-1] == "10 <end>"
    finally:
        proc.terminate()
        proc.wait(15)
