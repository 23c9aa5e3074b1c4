#!/usr/bin/env python
"""Server start to first caption, as a person sees it: `streamlit run`, a user arrives a few seconds later in
headless Chromium, uploads a photo and waits for the caption.

    python bench/app_first_caption.py [--via launch|streamlit] [--arrive-after 5] [--runs 1] [--json out.json]

Times (seconds from launching `streamlit run`): the server answering its health check, the user opening the
page, and the caption appearing; plus "upload to caption", the wait the user actually sits through. While an
ensemble still loads, the first caption comes from its own decoder alone (labelled as such): "ensemble" is when
the whole ensemble's caption replaced it (the same moment when the first caption was already the ensemble's). That
first stage runs from the ensemble's lite copy when it has one (captioning/service/lite.py, made after the first full
load: run once to make it); `CAPTIONING_LITE=0 python bench/app_first_caption.py` times the app without it. Uses the
bundles under $CAPTIONING_ARTIFACTS (default artifacts/, whose default bundle the Caption page opens) and a
Flickr8k test photo. Needs Chromium + chromedriver (`bash scripts/setup.sh test`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_NOTE = "A first caption from one of the ensemble's"      # ui.labels.quick_note: the rest still loading


def caption_shown(driver) -> bool:
    """A caption heading and the metrics under it (rendered after the quick-caption note, when there is one)."""
    from selenium.webdriver.common.by import By

    return (any(e.text.startswith("“") for e in driver.find_elements(By.TAG_NAME, "h3"))
            and "Mean log p" in driver.find_element(By.TAG_NAME, "body").text)


def one_run(args, photo: Path) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ui.browser import free_port, new_driver

    port = free_port()
    driver = new_driver(1200, 1000)                     # the browser is ready before the clock starts
    driver.set_page_load_timeout(600)                   # a busy machine serves the first page slowly
    t0 = time.perf_counter()
    start = ["-m", "ui.launch"] if args.via == "launch" else ["-m", "streamlit", "run", "streamlit_app.py"]
    server = subprocess.Popen([sys.executable, *start, "--server.headless=true",
                               f"--server.port={port}", "--server.address=127.0.0.1"], cwd=args.app_dir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.2)
        healthy = time.perf_counter() - t0
        time.sleep(max(0.0, args.arrive_after - (time.perf_counter() - t0)))
        arrived = time.perf_counter() - t0
        driver.get(url)
        upload = WebDriverWait(driver, 600).until(EC.presence_of_element_located((By.CSS_SELECTOR,
                                                                                    'input[type="file"]')))
        uploaded = time.perf_counter() - t0
        upload.send_keys(str(photo))
        WebDriverWait(driver, 600).until(caption_shown)
        captioned = time.perf_counter() - t0
        first_was_quick = QUICK_NOTE in driver.find_element(By.TAG_NAME, "body").text
        # An ensemble still loading shows its own decoder's caption first, labelled (QUICK_NOTE), then reruns
        # with the whole ensemble: the time that label goes and the whole ensemble's caption stands.
        WebDriverWait(driver, 600).until(lambda d: caption_shown(d) and QUICK_NOTE not in d.find_element(
            By.TAG_NAME, "body").text)
        whole = time.perf_counter() - t0
    finally:
        driver.quit()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:            # a busy machine: do not leave the server behind
            server.kill()
            server.wait()
    return {"healthy_s": round(healthy, 2), "user_arrives_s": round(arrived, 2), "upload_s": round(uploaded, 2),
            "first_caption_s": round(captioned, 2), "upload_to_caption_s": round(captioned - uploaded, 2),
            "first_from_one_decoder": first_was_quick, "ensemble_caption_s": round(whole, 2),
            "upload_to_ensemble_s": round(whole - uploaded, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arrive-after", type=float, default=5.0, help="seconds after launch the user arrives")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--app-dir", default=str(ROOT), help="the checkout whose app to start")
    parser.add_argument("--via", choices=("launch", "streamlit"), default="launch",
                        help="start with `python -m ui.launch` (what make app runs; warms the model at server start) "
                             "or a plain `streamlit run streamlit_app.py` (warms when the first visitor arrives)")
    parser.add_argument("--data-dir", default=os.environ.get("FLICKR8K_DIR", str(ROOT.parent / "shared" / "flickr8k")))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    name = (Path(args.data_dir) / "Flickr_8k.testImages.txt").read_text().split()[0]
    photo = Path(args.data_dir).resolve() / "Images" / name
    runs = [one_run(args, photo) for _ in range(args.runs)]
    print(f"app {args.app_dir} (via {args.via}): user arrives {args.arrive_after:g} s after `streamlit run`, "
          f"uploads {name}")
    print(f"{'run':>4} {'healthy':>8} {'arrives':>8} {'upload':>8} {'caption':>8} {'waited':>8} {'ensemble':>9} "
          f"{'waited':>8}   (s from launch; 'caption' is the first shown, 'ensemble' the whole ensemble's)")
    for i, r in enumerate(runs, 1):
        print(f"{i:>4} {r['healthy_s']:8.2f} {r['user_arrives_s']:8.2f} {r['upload_s']:8.2f} "
              f"{r['first_caption_s']:8.2f} {r['upload_to_caption_s']:8.2f} {r['ensemble_caption_s']:9.2f} "
              f"{r['upload_to_ensemble_s']:8.2f}" + ("   (first from one decoder)" if r["first_from_one_decoder"]
                                                     else ""))
    summary = {"runs": runs, "median_first_caption_s": statistics.median(r["first_caption_s"] for r in runs),
               "median_upload_to_caption_s": statistics.median(r["upload_to_caption_s"] for r in runs),
               "median_upload_to_ensemble_s": statistics.median(r["upload_to_ensemble_s"] for r in runs)}
    print(f"median: first caption {summary['median_first_caption_s']:.2f} s after launch, "
          f"{summary['median_upload_to_caption_s']:.2f} s after the upload; the whole ensemble's "
          f"{summary['median_upload_to_ensemble_s']:.2f} s after it")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
