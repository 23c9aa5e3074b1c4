#!/usr/bin/env python
"""Refresh the README screenshots: run the app on the shipped bundles in headless Chromium, one JPEG per page
state: the Caption page on a test photo and on a drawn, out-of-domain photo, the decoding lab at 2, 3 and 4
strategies side by side, the Batch page on three files (one of them not a photo), Evaluation and Dataset.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 1400] [--full] [--scale 1]
                                           [--app-dir DIR] [--only caption,compare-3]

Needs the dataset (FLICKR8K_DIR, default ../shared/flickr8k), Chromium + chromedriver (`bash scripts/setup.sh
test` installs them) and the encoder weights of artifacts/default (`python -m captioning setup-weights`).
It also checks what a screenshot cannot show: after a second photo in the same session, the word chart of the
Caption page still lists its bars in caption order (issue 39).
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (url path, text that says the page is done, what to do first)
SHOTS = {
    "caption": ("", "Mean log p", "sample"),                     # the Caption page is the default: "/"
    "caption-out-of-domain": ("", "Most similar training photos", "cup"),
    "compare-2": ("compare", "Word by word: probabilities and attention", 2),
    "compare": ("compare", "Word by word: probabilities and attention", 3),
    "compare-4": ("compare", "Word by word: probabilities and attention", 4),
    "batch": ("batch", "JSON", "batch"),
    "evaluation": ("evaluation", "All predictions", None),
    "dataset": ("dataset", "Caption statistics", None),
    # the Batch page's alt-text downloads and "write captions into the photos" options, on three test photos
    "batch-metadata": ("batch", "Captioned photos (zip)", "batch-metadata"),
    # a caption that used "Your photos" (scripts/memory_screenshots.py prepares the memory, then takes these)
    "caption-memory": ("", "From your photos", "memory"),
    "memory": ("memory", "remembered photos", None),
}
NEEDS_MEMORY = ("caption-memory", "memory")     # not taken by default: they need scripts/memory_screenshots.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--full", action="store_true", help="grow the window to each whole page (long pages)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the saved JPEGs (e.g. 0.6) to keep them small")
    parser.add_argument("--app-dir", default=str(ROOT), help="the checkout whose app to start")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="take only these shots (file stems, space- or comma-separated; default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    args = parser.parse_args()

    from PIL import Image

    from ui.browser import free_port, new_driver

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data_dir = Path(args.data_dir).resolve()
    env = {**os.environ, "FLICKR8K_DIR": str(data_dir)}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless=true",
                               f"--server.port={port}", "--server.address=127.0.0.1"], cwd=args.app_dir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = new_driver(args.width, args.height)
    files = Path(out / ".inputs")
    files.mkdir(exist_ok=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                driver.get(url)
                break
            except Exception:                     # the server is still starting
                time.sleep(0.5)
        inputs = make_inputs(files, data_dir)
        only = [name for arg in args.only for name in arg.split(",") if name]
        wanted = [name for name in only if name in SHOTS] or (
            [n for n in SHOTS if n not in NEEDS_MEMORY] if not only else [])
        for name in wanted:
            path, done, first = SHOTS[name]
            driver.get(f"{url}/{path}")
            prepare(driver, first, inputs)
            wait_for_text_(driver, done)
            whole_ensemble(driver)
            time.sleep(12 if name in NEEDS_MEMORY else 4)   # charts and images draw after the last element
            if args.full:                         # Streamlit scrolls inside its main block, not the window
                height = driver.execute_script(
                    "const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 0;")
                driver.set_window_size(args.width, max(args.height, int(height) + 140))
                time.sleep(3)
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            if args.scale != 1:
                shot = shot.resize((round(shot.width * args.scale), round(shot.height * args.scale)),
                                   Image.Resampling.LANCZOS)
            target = out / f"{name}.jpg"
            shot.save(target, quality=75, optimize=True)
            body = driver.find_element("tag name", "body").text
            print(f"{target} ({shot.width}x{shot.height}): "
                  f"{'Traceback in page!' if 'Traceback' in body else 'ok'}", flush=True)
            if args.full:
                driver.set_window_size(args.width, args.height)
        if not only or "chart-order" in only:
            print("word chart after a second photo:", check_word_chart_order(driver, url, inputs))
    finally:
        driver.quit()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:             # a busy machine: stop it for good
            server.kill()
        for f in files.iterdir():
            f.unlink()
        files.rmdir()


def whole_ensemble(driver) -> None:
    """Wait while the page is still running (elements from the last run shown greyed out, "stale") or the Caption
    page shows an ensemble's first caption from one decoder (the rest still loading): a busy machine took the
    shot half-way through a rerun."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    note = "A first caption from one of the ensemble's"            # ui.labels.quick_note

    def settled(d) -> bool:
        return (note not in d.find_element(By.TAG_NAME, "body").text
                and not d.find_elements(By.CSS_SELECTOR, '[data-stale="true"]'))

    WebDriverWait(driver, 900).until(settled)


def wait_for_text_(driver, text: str) -> None:
    from ui.browser import wait_for_text

    wait_for_text(driver, text, timeout=300)


def make_inputs(folder: Path, data_dir: Path) -> dict:
    """The photos the shots upload: a drawn cup, two test photos (one as PNG) and a text file named .jpg."""
    from PIL import Image

    names = (data_dir / "Flickr_8k.testImages.txt").read_text().split()
    cup = folder / "cup.png"
    drawn_cup(cup)
    beach, park = folder / "beach.jpg", folder / "a park photo with a long file name.png"
    Image.open(data_dir / "Images" / names[0]).save(beach)
    Image.open(data_dir / "Images" / names[3]).save(park)
    bad = folder / "shopping-list.jpg"
    bad.write_text("a shopping list, not a photo")
    return {"cup": cup, "photos": [beach, park], "bad": bad,
            "metadata": [data_dir / "Images" / n for n in names[3:6]]}


def prepare(driver, first, inputs: dict) -> None:
    """What a person does on the page before the shot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ui.browser import click_label, wait_for_text

    def file_input():
        return WebDriverWait(driver, 300).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'input[type="file"]')))

    if first == "cup":
        wait_for_text_(driver, "Caption a photo")
        file_input().send_keys(str(inputs["cup"].resolve()))
    elif first == "batch":
        wait_for_text_(driver, "Caption many photos")
        file_input().send_keys("\n".join(str(p.resolve()) for p in (*inputs["photos"], inputs["bad"])))
    elif first == "batch-metadata":                    # drop three photos, then show the metadata section
        wait_for_text_(driver, "Caption many photos")
        file_input().send_keys("\n".join(str(p) for p in inputs["metadata"]))
        wait_for_text(driver, "Captioned photos (zip)", timeout=900)
        driver.execute_script("for (const h of document.querySelectorAll('h3')) if "
                              "(h.textContent.includes('Write captions')) h.scrollIntoView();")
        driver.execute_script("const m = document.querySelector('[data-testid=\"stMain\"]'); "
                              "if (m) m.scrollBy(0, -380);")
    elif first == "memory":                            # a test photo like the remembered ones
        wait_for_text_(driver, "Caption a photo")
        file_input().send_keys(str(Path(os.environ["MEMORY_SCREENSHOT_PHOTO"]).resolve()))
    elif first == "sample":
        click_label(driver, "Sample from the test split", timeout=300)
    elif isinstance(first, int):                       # the lab: a test photo, then this many columns
        wait_for_text_(driver, "Decoding lab")
        if "Use the photo chosen" not in driver.find_element(By.TAG_NAME, "body").text:
            click_label(driver, "Sample from the test split", timeout=300)
        click_button(driver, str(first))


def click_button(driver, text: str) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def click(d):
        button = next((b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text), None)
        if button is None:
            return False
        button.click()
        return True

    WebDriverWait(driver, 300, ignored_exceptions=(StaleElementReferenceException,
                                                   ElementClickInterceptedException)).until(click)
    time.sleep(2)


def check_word_chart_order(driver, url: str, inputs: dict) -> str:
    """Caption two photos in one session; the second word chart's x labels must read 1, 2, 3 ... in order."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait_for_text_(driver, "Caption a photo")
    orders, headline = [], None

    def new_headline(d):                          # the caption of this photo, not the last one's
        shown = [e.text for e in d.find_elements(By.TAG_NAME, "h3") if e.text.startswith("“")]
        return shown and shown[0] != headline and shown[0]

    for photo in inputs["photos"]:
        upload = WebDriverWait(driver, 300).until(EC.presence_of_element_located((By.CSS_SELECTOR,
                                                                                    'input[type="file"]')))
        upload.send_keys(str(photo.resolve()))
        headline = WebDriverWait(driver, 300, ignored_exceptions=(StaleElementReferenceException,)).until(
            new_headline)                         # a heading re-rendered while read is read again
        wait_for_text_(driver, "How sure the model was")
        time.sleep(4)
        orders.append(word_chart_labels(driver))
    numbers = [[int(label.split()[0]) for label in labels] for labels in orders]
    ok = all(n == list(range(1, len(n) + 1)) and n for n in numbers)
    return ("in order: " if ok else "OUT OF ORDER: ") + " | ".join(", ".join(labels) for labels in orders)


def word_chart_labels(driver) -> list[str]:
    """The x labels of the "How sure the model was of each word" chart, left to right (read from its Vega view)."""
    return driver.execute_script("""
        const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
        for (const chart of charts) {
          const texts = [...chart.querySelectorAll('g.role-axis-label text')].map(t => t.textContent);
          const title = [...chart.querySelectorAll('g.role-title-text text')].map(t => t.textContent).join(' ');
          if (title.includes('How sure')) {
            const xs = [...chart.querySelectorAll('g.role-axis-label')][0];
            return [...xs.querySelectorAll('text')].map(t => t.textContent);
          }
        }
        return [];""")


def drawn_cup(path: Path) -> None:
    """A photo from outside Flickr8k's world: a cup on a saucer, drawn with PIL."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 120, 260, 260), fill=(235, 235, 235), outline="black", width=4)     # saucer
    draw.rectangle((110, 80, 210, 200), fill=(120, 70, 30), outline="black", width=4)    # cup
    draw.arc((190, 100, 250, 160), 270, 90, fill="black", width=6)                       # handle
    image.save(path)


if __name__ == "__main__":
    main()
