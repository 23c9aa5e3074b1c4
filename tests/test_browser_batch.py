"""The Batch page in a real browser: three photos dropped at once, one of them not a photo."""
import pytest
from PIL import Image
from test_browser import OUT, new_driver, running_app, settle, wait_for_text


@pytest.fixture(scope="module")
def server(tiny_run, flickr_dir, mobilenet_weights):
    with running_app(tiny_run[0], flickr_dir, mobilenet_weights.parent, "streamlit-batch.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    OUT.mkdir(parents=True, exist_ok=True)
    driver = new_driver(1400, 1300)
    yield driver
    driver.quit()


def test_batch_page_captions_three_photos_and_lists_the_bad_one(server, browser, flickr_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:2]
    first, second = tmp_path / "beach.jpg", tmp_path / "park.png"
    Image.open(flickr_dir / "Images" / names[0]).save(first)
    Image.open(flickr_dir / "Images" / names[1]).resize((400, 300)).save(second)
    bad = tmp_path / "notes.jpg"
    bad.write_text("a shopping list, not a photo")

    browser.get(f"{server}/batch")
    wait_for_text(browser, "Caption many photos")
    upload = WebDriverWait(browser, 120).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))
    assert upload.get_attribute("multiple") is not None
    upload.send_keys("\n".join(str(p) for p in (first, bad, second)))
    wait_for_text(browser, "Captioned", timeout=600)   # the model loads on first use (minutes on a busy machine)
    wait_for_text(browser, "notes.jpg: The file is not an image")
    settle()
    metrics = {e.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text:
               e.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text
               for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')}
    assert metrics["Photos"] == "3" and metrics["Captioned"] == "2" and metrics["Failed"] == "1"
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    buttons = [b.text for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"]')]
    assert any("CSV" in b for b in buttons) and any("JSON" in b for b in buttons)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body
    browser.save_screenshot(str(OUT / "batch.png"))
