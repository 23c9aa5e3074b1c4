"""Batch page: many photos (or zips of photos) in, a table of captions out, downloadable as CSV and JSON."""
import base64
import hashlib
import io
import time

import pandas as pd
import streamlit as st

from captioning import (
    MAX_BYTES,
    SUPPORTED_TYPES,
    InvalidImageError,
    caption_uploads,
    expand_uploads,
    load_image,
    records_text,
    to_record,
)
from ui.shell import require_shell
from ui.state import get_captioner
from ui.trust import STYLE
from ui.widgets import decoding_controls

RESULTS_KEY = "batch_results"
# A failed file's thumbnail: a plain grey square (a blank cell would read "None").
NO_PHOTO = ("data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" '
    b'fill="#e6e6e6"/><path d="M34 34L62 62M62 34L34 62" stroke="#b00020" stroke-width="6"/></svg>').decode())


def thumbnail(data: bytes, size: int = 96) -> str | None:
    """A small JPEG of the photo as a data URL, for the table."""
    try:
        image = load_image(data)
    except InvalidImageError:
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def trust_label(assessment) -> str:
    """The caption's in-domain level as the Caption page words it ("Familiar photo"), or a dash without one."""
    if assessment is None or assessment.level is None:
        return "–"
    return f"{STYLE[assessment.level][2]} ({assessment.in_domain:.2f})"


require_shell()
st.title("Caption many photos")
files = st.file_uploader(
    "Drop photos, or a zip of photos", type=[*SUPPORTED_TYPES, "zip"], accept_multiple_files=True,
    key="batch_upload", help=f"JPEG, PNG, WebP, BMP or GIF, up to {MAX_BYTES / 2**20:g} MB each; a zip's photos "
                             "are taken out (its other files are skipped).")
options = decoding_controls("batch", default_beam=5)
captioner = get_captioner()
if not files:
    st.caption("Drop as many photos as you like: they are captioned in batches, and a file that is not a photo "
               "is listed with the reason while the others go on.")
    st.stop()

uploads, skipped = expand_uploads((f.name, f.getvalue()) for f in files)
if skipped:
    st.caption(f"Skipped {len(skipped)} file(s) in zips that are not photos: "
               + ", ".join(s.rsplit("/", 1)[-1] for s in skipped[:8]) + (" …" if len(skipped) > 8 else ""))
key = hashlib.sha256(repr((captioner.bundle.name, sorted(options.items()),
                           [(u.name, u.error, hashlib.sha256(u.data or b"").hexdigest()) for u in uploads])).encode()
                     ).hexdigest()
done = st.session_state.get(RESULTS_KEY)
if not done or done["key"] != key:                       # new photos or options: caption them (once)
    config = captioner.config(**options)
    rows, records = [], []
    bar = st.progress(0.0, text=f"Captioning {len(uploads)} photos…")
    live = st.empty()                                     # bad files, listed as they come while the rest go on
    problems = live.container()
    start = time.perf_counter()
    for result in caption_uploads(captioner, uploads, config):
        record = to_record(result)
        records.append(record)
        upload = uploads[result.index]
        rows.append({"Photo": thumbnail(upload.data) if result.ok else NO_PHOTO, "File": result.name,
                     "Caption": result.best.text if result.ok else "",
                     "Mean log p": f"{record['mean_log_prob']:.2f}" if result.ok else "",
                     "Trust": trust_label(result.trust) if result.ok else "",
                     "Status": "captioned" if result.ok else f"failed: {result.error}"})
        if not result.ok:
            problems.error(f"**{result.name}**: {result.error}", icon=":material/block:")
        bar.progress(len(rows) / len(uploads), text=f"Captioned {len(rows)} of {len(uploads)} photos")
    bar.empty()
    live.empty()
    done = {"key": key, "rows": rows, "records": records, "seconds": time.perf_counter() - start}
    st.session_state[RESULTS_KEY] = done

rows, records = done["rows"], done["records"]
failed = [r for r in rows if r["Status"] != "captioned"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Photos", len(rows))
m2.metric("Captioned", len(rows) - len(failed))
m3.metric("Failed", len(failed))
m4.metric("Time", f"{done['seconds']:.1f} s", help="loading, encoder and decoder for the whole batch")
for r in failed:
    st.error(f"**{r['File']}**: {r['Status'].removeprefix('failed: ')}", icon=":material/block:")
table = pd.DataFrame(rows)
if not any(r.get("Trust", "–") not in ("", "–") for r in rows):      # a bundle without a calibrated index
    table = table.drop(columns="Trust")
st.dataframe(table, hide_index=True, width="stretch", row_height=64,
             height=min(64 * len(rows) + 48, 760), column_config={      # every row visible up to ~10, then scroll
    "Photo": st.column_config.ImageColumn("Photo", width="small"),
    "File": st.column_config.TextColumn("File", width=190),
    "Caption": st.column_config.TextColumn("Caption", width=320),
    "Mean log p": st.column_config.TextColumn("Mean log p", width=85, help="per emitted token; closer to 0 = surer"),
    "Trust": st.column_config.TextColumn(
        "Trust", width=150, help="how alike the photo is to the training photos (in-domain score in brackets): "
                                 "familiar photos get the model's best captions, unfamiliar ones may well be wrong"),
    "Status": st.column_config.TextColumn("Status", width=120),
})
d1, d2, _ = st.columns([1, 1, 3])
d1.download_button(":material/download: CSV", records_text(records, ".csv"), "captions.csv", "text/csv",
                   on_click="ignore", width="stretch")
d2.download_button(":material/download: JSON", records_text(records, ".json"), "captions.json",
                   "application/json", on_click="ignore", width="stretch")
