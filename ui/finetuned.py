"""The Evaluation page's section for a fine-tuned bundle: its scores on the user's own dev and test photos (and on
Flickr8k's test photos) before and after the fine-tune, and each held-out photo's captions, as the fine-tune
recorded them in the manifest (``finetune``: dataset record, metrics)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.data.flickr8k import DataError
from captioning.data.imported import load_imported

from .jobs import thumbnail_url
from .labels import label, literal, sentence

SCORES = ("cider", "bleu_4", "new_word_share")
SPLIT_NAMES = {"dev": "Your dev photos", "test": "Your test photos"}


def _value(key: str, value) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.0%}" if key == "new_word_share" else f"{value:.3f}"


def _change(key: str, before, after) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return "–"
    delta = after - before
    if abs(delta) < 5e-4:
        return "no change"
    return f"{delta:+.0%}" if key == "new_word_share" else f"{delta:+.3f}"


def scores_table(metrics: dict) -> pd.DataFrame:
    """One row per (photos, score): base, fine-tuned, change; the user's splits first, then Flickr8k's test."""
    sets = [(SPLIT_NAMES.get(s, s), (metrics.get("before") or {}).get(s) or {}, after)
            for s, after in (metrics.get("after") or {}).items() if isinstance(after, dict)]
    flickr = metrics.get("flickr8k_test") or {}
    if isinstance(flickr.get("after"), dict):
        sets.append(("Flickr8k test photos", flickr.get("before") or {}, flickr["after"]))
    rows = []
    for name, before, after in sets:
        for key in SCORES:
            if key == "new_word_share" and not (after.get(key) or before.get(key)
                                                or after.get("new_word_share_references")):
                continue                                  # no new word: nothing to count
            rows.append({"Photos": f"{name} ({after.get('photos', 0):,})",
                         "Score": "Captions with a new word" if key == "new_word_share" else label(key),
                         "Base model": _value(key, before.get(key)), "Fine-tuned": _value(key, after.get(key)),
                         "Change": _change(key, before.get(key), after.get(key))})
    return pd.DataFrame(rows)


@st.cache_resource(show_spinner=False, max_entries=4)
def _references(record_json: str) -> dict[str, list[str]]:
    try:
        ds, _ = load_imported(json.loads(record_json))
    except DataError:
        return {}
    return ds.captions


def finetune_section(record: dict) -> None:
    """Scores before and after, and the held-out photos' captions side by side (base, fine-tuned, yours)."""
    metrics = record.get("metrics") or {}
    dataset = record.get("dataset") or {}
    base = (record.get("base") or {}).get("name", "the base model")
    st.subheader("On your photos: before and after fine-tuning", anchor="your-photos")
    splits = dataset.get("splits") or {}
    split_words = " / ".join(f"{splits[s]:,} {s}" for s in ("train", "dev", "test") if s in splits)
    st.caption(f"Fine-tuned from **{literal(base)}** on {literal(Path(str(dataset.get('file', 'your captions'))).name)}"
               f" ({dataset.get('photos', 0):,} photos{f': {split_words}' if split_words else ''}), both models "
               f"decoded with {metrics.get('decoding', 'beam search')}. The dev photos chose the best epoch; the test "
               "photos were never trained on.")
    table = scores_table(metrics)
    if not table.empty:
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "Photos": st.column_config.TextColumn("Photos", width=220),
            "Change": st.column_config.TextColumn("Change", help="fine-tuned minus base")})
    flickr = metrics.get("flickr8k_test") or {}
    if flickr.get("not_scored"):
        st.caption(f":material/info: Flickr8k test photos: not scored ({literal(flickr['not_scored'])}).")
    held_out = [s for s in ("test", "dev") if ((metrics.get("after") or {}).get(s) or {}).get("captions")]
    if not held_out:
        return
    split = held_out[0]
    if len(held_out) > 1:
        split = st.segmented_control("Photos", held_out, default=held_out[0], key="ft_split",
                                     format_func=SPLIT_NAMES.get) or held_out[0]
    after = metrics["after"][split]["captions"]
    before = ((metrics.get("before") or {}).get(split) or {}).get("captions") or {}
    refs = _references(json.dumps(dataset, sort_keys=True)) if dataset.get("split_photos") else {}
    images = Path(str(dataset.get("images_dir") or ""))
    rows = [{"Photo": thumbnail_url(images / photo) if images.name else None, "File": photo,
             "Base model": sentence(before.get(photo, "")), "Fine-tuned": sentence(caption),
             "Your captions": " / ".join(refs.get(photo, []))}
            for photo, caption in list(after.items())[:50]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", row_height=64,
                 height=64 * min(len(rows), 8) + 40, column_config={
                     "Photo": st.column_config.ImageColumn("Photo", width="small"),
                     "File": st.column_config.TextColumn("File", width=150),
                     "Base model": st.column_config.TextColumn("Base model", width=280),
                     "Fine-tuned": st.column_config.TextColumn("Fine-tuned", width=280),
                     "Your captions": st.column_config.TextColumn("Your captions", width=300)})
    if len(after) > 50:
        st.caption(f"The first 50 of {len(after):,} photos.")
