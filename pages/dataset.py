"""Dataset page: browse Flickr8k, or photos imported for a fine-tune, by split and word, with caption statistics.
Needs no trained model."""
import collections

import altair as alt
import pandas as pd
import streamlit as st

from captioning import Vocabulary
from ui.charts import top_words
from ui.datasets import choose, show_photo
from ui.labels import human_caption, literal
from ui.shell import require_shell
from ui.state import current_manifest, dataset_message

STOP_WORDS = {"a", "an", "the", "of", "in", "on", "is", "and", "with", "are", "to", "at", "his", "her", "their",
              "its", "while", "into", "for", "by", "from", "up", "as", "near", "down", "through", "one", "two"}
PER_PAGE = 12

require_shell()
st.title("Dataset")
shown = choose()
if shown is None:
    dataset_message()
    st.stop()
ds, df = shown.ds, shown.table
st.caption(shown.about)
if shown.note:
    st.warning(shown.note, icon=":material/edit_note:")

c1, c2 = st.columns([2, 3])
split = c1.segmented_control("Split", ["train", "dev", "test", "all"], default="test", key="ds_split") or "test"
query = c2.text_input("Search captions for a word", placeholder="e.g. surfer", key="ds_query").strip().lower()
rows = df if split == "all" else df[df["split"] == split]
if query:
    hits = rows[rows["tokens"].str.split().apply(lambda ws: query in ws)]["image"].unique()
    rows = rows[rows["image"].isin(hits)]
images = list(dict.fromkeys(rows["image"]))

manifest = current_manifest()
threshold = int(manifest.min_count or 5) if manifest else 5
train_tokens = df[df["split"] == "train"]["tokens"].str.split()
try:
    vocab = Vocabulary.build(train_tokens, threshold)
except ValueError:             # a small imported dataset: no training word occurs that often
    vocab = None
if not images:                 # say so, without metrics of nothing ("Coverage 0.0%" of no words)
    st.warning(f"No {split} caption contains the word “{literal(query)}”." if query else
               f"This dataset has no {split} photos.")
    st.stop()

m = st.columns(5)
m[0].metric("Images", f"{len(images):,}")
m[1].metric("Captions", f"{len(rows):,}")
m[2].metric("Distinct words", f"{len({w for t in rows['tokens'] for w in t.split()}):,}")
m[3].metric(f"Vocabulary (≥{threshold}×)", f"{len(vocab) if vocab else 0:,}",
            help="Words seen at least this often in the training captions (the bundle's threshold)")
m[4].metric("Coverage", f"{vocab.coverage(rows['tokens'].str.split()):.1%}" if vocab else "0.0%",
            help="Share of running words here that the vocabulary knows")

pages = (len(images) - 1) // PER_PAGE + 1
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="ds_page", width=160)
grid = images[(page - 1) * PER_PAGE: page * PER_PAGE]
for start in range(0, len(grid), 4):
    for col, name in zip(st.columns(4), grid[start:start + 4]):
        with col:
            show_photo(ds, name, shown.imported)
            st.caption(f"**{literal(name)}**")
            for cap in ds.captions[name]:
                st.caption(f"• {literal(human_caption(cap))}")

st.subheader("Caption statistics")
hide = st.toggle("Hide function words in the top words", value=True)
TOP = 25
height = 20 * TOP                   # both charts as tall as the top-words list: no half-empty column
left, right = st.columns(2)
left.altair_chart(alt.Chart(rows).mark_bar().encode(
    x=alt.X("length:Q", bin=alt.Bin(step=1), title="words per caption"), y=alt.Y("count():Q", title="captions"),
    tooltip=[alt.Tooltip("length:Q", bin=alt.Bin(step=1), title="words"), alt.Tooltip("count():Q", title="captions")])
    .properties(title="Caption length", height=height), width="stretch")
counts = collections.Counter(w for t in rows["tokens"] for w in t.split() if not (hide and w in STOP_WORDS))
top = pd.DataFrame(counts.most_common(TOP), columns=["word", "count"])
right.altair_chart(top_words(top, "Top words"), width="stretch")
