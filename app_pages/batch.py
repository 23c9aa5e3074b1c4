"""Batch page: many photos (or zips of photos) in, a table of captions out, downloadable as CSV and JSON, as alt
text (HTML and Markdown), and written into the photos (a zip of captioned copies or XMP sidecars)."""
import base64
import hashlib
import time

import pandas as pd
import streamlit as st

from captioning.publish.alttext import html_snippets, markdown_list
from captioning.publish.exiftool import EXIFTOOL_INSTALL_HINT, exiftool_available
from captioning.publish.exports import captions_zip, zip_summary
from captioning.publish.metadata import SIDECAR_NAMES
from captioning.service.records import records_text, to_record
from captioning.service.uploads import caption_uploads, expand_uploads
from captioning.vision.images import MAX_BYTES, SUPPORTED_TYPES
from ui.labels import literal, sentence
from ui.state import decode_slot, get_captioner
from ui.trust import STYLE
from ui.widgets import decoding_controls, thumbnail

RESULTS_KEY = "batch_results"
ZIP_KEY = "batch_metadata_zip"
# A failed file's thumbnail: a plain grey square (a blank cell would read "None").
NO_PHOTO = ("data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" '
    b'fill="#e6e6e6"/><path d="M34 34L62 62M62 34L34 62" stroke="#b00020" stroke-width="6"/></svg>').decode())


def trust_label(assessment) -> str:
    """The caption's in-domain level as the Caption page words it ("Familiar photo"), or a dash without one."""
    if assessment is None or assessment.level is None:
        return "–"
    return f"{STYLE[assessment.level][2]} ({assessment.in_domain:.2f})"


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
    rows, records, errors = [], [], []
    bar = st.progress(0.0, text=f"Captioning {len(uploads)} photos…")
    live = st.empty()                                     # bad files, listed as they come while the rest go on
    problems = live.container()
    start = time.perf_counter()
    with decode_slot():                                   # one of the app's few decode slots for the whole run
        for result in caption_uploads(captioner, uploads, config):
            record = to_record(result)
            records.append(record)
            upload = uploads[result.index]
            # Captions written as on the Caption page; a failed file's reason in the wide Caption column (and
            # in full above the table); Status is one word, for the downloads and the counts.
            rows.append({"Photo": thumbnail(upload.data) if result.ok else NO_PHOTO, "File": result.name,
                         "Caption": sentence(result.best.text) if result.ok else
                         f"Not captioned: {result.error.split('. ')[0].rstrip('.')}.",      # its first sentence
                         "Mean log p": f"{record['mean_log_prob']:.2f}" if result.ok else "",
                         "Trust": trust_label(result.trust) if result.ok else "",
                         "Status": "captioned" if result.ok else "failed"})
            if not result.ok:
                errors.append((result.name, result.error))
                problems.error(f"**{literal(result.name)}**: {result.error}", icon=":material/block:")
            bar.progress(len(rows) / len(uploads), text=f"Captioned {len(rows)} of {len(uploads)} photos")
    bar.empty()
    live.empty()
    done = {"key": key, "rows": rows, "records": records, "errors": errors, "seconds": time.perf_counter() - start}
    st.session_state[RESULTS_KEY] = done

rows, records = done["rows"], done["records"]
failed = [r for r in rows if r["Status"] != "captioned"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Photos", len(rows))
m2.metric("Captioned", len(rows) - len(failed))
m3.metric("Failed", len(failed))
m4.metric("Time", f"{done['seconds']:.1f} s", help="loading, encoder and decoder for the whole batch")
for name, error in done.get("errors", []):
    st.error(f"**{literal(name)}**: {error}", icon=":material/block:")
table = pd.DataFrame(rows)
if not any(r.get("Trust", "–") not in ("", "–") for r in rows):      # a bundle without a calibrated index
    table = table.drop(columns="Trust")
# Pixel widths from the text (a grid cell does not wrap): ~7.5 px a character at the grid's font, plus padding.
# The table shows no Status column: a failed row says "Not captioned: why" in its caption and has a crossed-out
# thumbnail, so the room goes to the file names and captions, which then fit a 1400 px window.
shown = [c for c in ("Photo", "File", "Caption", "Mean log p", "Trust") if c in table]
file_width = int(min(260, max(100, 7.5 * max(len(r["File"]) for r in rows) + 24)))
caption_width = int(max(300, 935 - 75 - file_width - 80 - (150 if "Trust" in table else 0)))
st.dataframe(table, hide_index=True, column_order=shown, width="stretch", row_height=64,
             height=min(64 * len(rows) + 48, 760), column_config={      # every row visible up to ~10, then scroll
    "Photo": st.column_config.ImageColumn("Photo", width="small"),
    "File": st.column_config.TextColumn("File", width=file_width),          # the longest name in full
    "Caption": st.column_config.TextColumn("Caption", width=caption_width),
    "Mean log p": st.column_config.TextColumn("Mean log p", width=80, help="per emitted token; closer to 0 = surer"),
    "Trust": st.column_config.TextColumn(
        "Trust", width=150, help="how alike the photo is to the training photos (in-domain score in brackets): "
                                 "familiar photos get the model's best captions, unfamiliar ones may well be wrong"),
})
d1, d2, d3, d4, _ = st.columns([1, 1, 1.3, 1.5, 1])
d1.download_button(":material/download: CSV", records_text(records, ".csv"), "captions.csv", "text/csv",
                   on_click="ignore", width="stretch")
d2.download_button(":material/download: JSON", records_text(records, ".json"), "captions.json",
                   "application/json", on_click="ignore", width="stretch")
d3.download_button(":material/download: Alt text HTML", html_snippets(records), "alt-text.html", "text/html",
                   on_click="ignore", width="stretch", help='one <img src="photo.jpg" alt="…"> line per photo')
d4.download_button(":material/download: Alt text Markdown", markdown_list(records), "alt-text.md", "text/markdown",
                   on_click="ignore", width="stretch", help="a list: **photo.jpg**: the alt text")

st.subheader("Write captions into the photos")
st.caption("As alt text in the photos' own metadata (XMP description and IPTC alt text; in JPEG and TIFF also "
           "IPTC Caption-Abstract and EXIF ImageDescription), where photo libraries and web tools read it. "
           "The pixels are not re-encoded and every other field is kept.")
w1, w2 = st.columns(2)
kind = w1.radio("Download", ["Captioned copies of the photos", "XMP sidecar files"], key="batch_meta_kind",
                help="copies: JPEG, PNG, WebP and TIFF hold the caption inside; sidecars work for every photo "
                     "and are what darktable, digiKam and Lightroom read beside a photo")
naming = w1.radio("Sidecar names", SIDECAR_NAMES, key="batch_meta_naming", horizontal=True,
                  disabled=kind != "XMP sidecar files",
                  help="photo.jpg.xmp: darktable, digiKam, Immich; photo.xmp: Lightroom, Bridge")
overwrite = w2.checkbox("Replace descriptions the photos already have", key="batch_meta_overwrite",
                        help="off: a photo with its own description keeps it (and is counted)")
skip_unfamiliar = w2.checkbox("Leave unfamiliar photos undescribed", key="batch_meta_skip", value=True,
                              help="a wrong alt text is worse than none: photos unlike the training photos "
                                   "get no caption written, and are listed")
tag_keywords = w2.checkbox("Add the caption's nouns as keywords (dc:subject)", key="batch_meta_keywords")
copies = kind.startswith("Captioned copies")
if copies and not exiftool_available():
    st.info(f"Captioned copies need ExifTool. {EXIFTOOL_INSTALL_HINT}. XMP sidecars work without it.",
            icon=":material/info:")
else:
    choice = (key, copies, naming, overwrite, skip_unfamiliar, tag_keywords)
    made = st.session_state.get(ZIP_KEY)
    if not made or made["choice"] != choice:
        with st.spinner("Writing captions into the photos…"):
            data, statuses = captions_zip(uploads, records, "copies" if copies else "sidecars", naming, overwrite,
                                          skip_unfamiliar, tag_keywords)
        made = st.session_state[ZIP_KEY] = {"choice": choice, "zip": data, "statuses": statuses}
    st.download_button(":material/folder_zip: Captioned photos (zip)" if copies else
                       ":material/folder_zip: XMP sidecars (zip)", made["zip"],
                       "captioned-photos.zip" if copies else "xmp-sidecars.zip", "application/zip",
                       on_click="ignore", key="batch_meta_download")
    st.caption(zip_summary(made["statuses"]))
    left_out = [s for s in made["statuses"] if s["status"] in ("skipped", "error")]
    if left_out:
        st.dataframe(pd.DataFrame(left_out).rename(columns={"path": "File", "status": "Status", "detail": "Why"}),
                     hide_index=True, width="stretch")
