#!/usr/bin/env python
"""Refresh the README screenshots: run the app on the shipped bundles in headless Chromium, one JPEG per page
(plus the Caption page on a drawn, out-of-domain photo: caption-out-of-domain.jpg, and the Batch page's alt-text
downloads and "write captions into the photos" options on three test photos: batch-metadata.jpg).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 1400] [--only batch-metadata]

Needs the dataset (FLICKR8K_DIR, default ../shared/flickr8k), Chromium + chromedriver (`bash scripts/setup.sh
test` installs them) and the encoder weights of artifacts/default (`python -m captioning setup-weights`).
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

# (url path, text that says the page is done, a radio option to click first or None)
PAGES = [("", "Mean log p", "Sample from the test split"),     # the Caption page is the default: "/"
         ("compare", "Word by word: probabilities and attention", "Sample from the test split"),
         ("evaluation", "All predictions", None),
         ("dataset", "Caption statistics", None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--full", action="store_true", help="grow the window to each whole page (long pages)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="take only these shots (file stems)")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    args = parser.parse_args()

    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ui.browser import click_label, free_port, new_driver, wait_for_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "FLICKR8K_DIR": str(Path(args.data_dir).resolve())}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless=true",
                               f"--server.port={port}", "--server.address=127.0.0.1"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = new_driver(args.width, args.height)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                driver.get(url)
                break
            except Exception:                     # the server is still starting
                time.sleep(0.5)
        photo = out / ".out-of-domain.png"
        drawn_cup(photo)
        shots = [(path, done, option, path or "caption") for path, done, option in PAGES]
        shots.insert(1, ("", "Most similar training photos", photo, "caption-out-of-domain"))
        test_photos = (Path(args.data_dir) / "Flickr_8k.testImages.txt").read_text().split()[3:6]
        shots.append(("batch", "Captioned photos (zip)", [Path(args.data_dir) / "Images" / n for n in test_photos],
                      "batch-metadata"))
        for path, done, option, name in shots:
            if args.only and name not in args.only:
                continue
            driver.get(f"{url}/{path}")
            if isinstance(option, list):          # the Batch page: drop several photos, show the metadata section
                wait_for_text(driver, "Caption many photos", timeout=180)
                WebDriverWait(driver, 180).until(EC.presence_of_element_located(
                    (By.CSS_SELECTOR, 'input[type="file"]'))).send_keys("\n".join(str(p) for p in option))
                wait_for_text(driver, done, timeout=900)
                driver.execute_script("for (const h of document.querySelectorAll('h3')) if "
                                      "(h.textContent.includes('Write captions')) h.scrollIntoView();")
                driver.execute_script("const m = document.querySelector('[data-testid=\"stMain\"]'); "
                                      "if (m) m.scrollBy(0, -380);")
            elif isinstance(option, Path):          # upload a photo instead of picking a sample
                wait_for_text(driver, "Caption a photo", timeout=180)
                WebDriverWait(driver, 180).until(EC.presence_of_element_located(
                    (By.CSS_SELECTOR, 'input[type="file"]'))).send_keys(str(option.resolve()))
            elif option:
                click_label(driver, option, timeout=180)
            wait_for_text(driver, done, timeout=300)
            time.sleep(4)                         # charts and images draw after the last element arrives
            if args.full:                         # Streamlit scrolls inside its main block, not the window
                height = driver.execute_script(
                    "const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 0;")
                driver.set_window_size(args.width, max(args.height, int(height) + 140))
                time.sleep(3)
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            target = out / f"{name}.jpg"
            shot.save(target, quality=80, optimize=True)
            body = driver.find_element(By.TAG_NAME, "body").text
            print(f"{target} ({shot.width}x{shot.height}): "
                  f"{'Traceback in page!' if 'Traceback' in body else 'ok'}")
            if args.full:
                driver.set_window_size(args.width, args.height)
    finally:
        driver.quit()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:             # a busy machine: stop it for good
            server.kill()
        photo.unlink(missing_ok=True)


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
