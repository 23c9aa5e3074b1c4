"""Evaluation page: corpus BLEU per decoding run and where the model does well or badly, from the bundle's files."""
import pandas as pd
import streamlit as st

from captioning.metrics import reference_agreement, word_usage
from ui.charts import grouped_bleu, histogram, mean_by, signed_bars
from ui.state import current_results, get_dataset, no_bundle_message, references_for, selected_bundle

st.title("Evaluation")
path = selected_bundle()
if path is None:
    no_bundle_message()
    st.stop()
metrics, preds = current_results()
if not metrics or not metrics.get("results"):
    st.info(f"Bundle **{path.name}** has no evaluation yet. Score it with "
            f"`python train.py evaluate --out {path}`.", icon=":material/science:")
    st.stop()


def run_label(decoding: str, width: int) -> str:
    return "greedy" if int(width) == 1 else f"beam {int(width)}"


results = pd.DataFrame(metrics["results"])
results["run"] = [run_label(d, w) for d, w in zip(results["decoding"], results["beam_width"])]
split, n_images = results["split"].iloc[0], int(results["n_images"].iloc[0])
bleu_cols = [c for c in ("bleu_1", "bleu_2", "bleu_3", "bleu_4") if c in results]
st.subheader(f"Corpus scores · {split} split · {n_images:,} images")
st.caption("BLEU-1..4: nltk `corpus_bleu` against all five references (captions lower-cased, punctuation removed).")
shown = ["run"] + bleu_cols + [c for c in ("mean_length", "vocabulary_used", "decode_seconds") if c in results]
left, right = st.columns([1, 1])
left.dataframe(results[shown].style.format({c: "{:.4f}" for c in bleu_cols}), hide_index=True,
               width="stretch")
right.altair_chart(grouped_bleu(results[["run"] + bleu_cols]), width="stretch")

if preds is None or preds.empty:
    st.info(f"No per-image predictions in this bundle. Run `python train.py evaluate --out {path}`.")
    st.stop()

preds = preds.copy()
preds["run"] = [run_label(d, w) for d, w in zip(preds["decoding"], preds["beam_width"])]
preds["length"] = preds["caption"].str.split().str.len()
runs = list(dict.fromkeys(preds["run"]))
c1, c2 = st.columns(2)
run = c1.selectbox("Decoding run", runs, index=len(runs) - 1)
metric = c2.selectbox("Per-image metric", bleu_cols, index=len(bleu_cols) - 1,
                      format_func=lambda m: m.replace("_", "-").upper() + " (smoothed sentence BLEU)")
sub = preds[preds["run"] == run].reset_index(drop=True)

st.subheader("Distribution of per-image scores")
st.altair_chart(histogram(preds, metric, metric.replace("_", "-").upper(), color="run"), width="stretch")

ds = get_dataset()
st.subheader("Breakdowns")
tab_len, tab_agree, tab_words = st.tabs(["By caption length", "By reference agreement", "Word usage"])
with tab_len:
    sub["length bin"] = pd.cut(sub["length"], bins=[0, 6, 8, 10, 12, 15, 100],
                               labels=["≤6", "7-8", "9-10", "11-12", "13-15", "16+"])
    st.altair_chart(mean_by(sub, "length bin", metric, f"Mean {metric} by predicted caption length (words)"),
                    width="stretch")
refs = references_for(str(ds.root), tuple(sub["image"])) if ds else None
with tab_agree:
    if refs is None:
        st.info("Needs the dataset's references. Set FLICKR8K_DIR and reload.")
    else:
        sub["agreement"] = [reference_agreement(r) for r in refs]
        sub["agreement quartile"] = pd.qcut(sub["agreement"].rank(method="first"), 4,
                                            labels=["lowest", "low", "high", "highest"])
        st.caption("Reference agreement: how much an image's five human captions agree with each other "
                   "(mean smoothed BLEU-2 of each against the other four). Hard images have low agreement.")
        st.altair_chart(mean_by(sub, "agreement quartile", metric, f"Mean {metric} by reference agreement"),
                        width="stretch")
with tab_words:
    if refs is None:
        st.info("Needs the dataset's references. Set FLICKR8K_DIR and reload.")
    else:
        usage = pd.DataFrame(word_usage(refs, [c.split() for c in sub["caption"]]))
        over = usage[usage["difference"] > 0].nlargest(15, "difference")
        under = usage[usage["difference"] < 0].nsmallest(15, "difference")
        st.caption("Times the model says a word across the split minus the times an average reference says it: "
                   "orange = over-used, green = under-used.")
        a, b = st.columns(2)
        a.altair_chart(signed_bars(over, "word", "difference", "Over-used words"), width="stretch")
        b.altair_chart(signed_bars(under, "word", "difference", "Under-used words"), width="stretch")

st.subheader("Best and worst images")
k = st.slider("How many", 1, 10, 4)
for title, rows in (("Best", sub.nlargest(k, metric)), ("Worst", sub.nsmallest(k, metric))):
    st.markdown(f"**{title} {k} by {metric}**")
    cols = st.columns(k)
    for col, (_, row) in zip(cols, rows.iterrows()):
        with col:
            if ds and ds.image_path(row["image"]).is_file():
                st.image(str(ds.image_path(row["image"])), width="stretch")
            st.markdown(f"**{row['caption']}**  \n{metric}: {row[metric]:.3f}")
            if ds:
                with st.popover("References"):
                    st.markdown("\n".join(f"- {c}" for c in ds.captions[row["image"]]))

st.subheader("All predictions")
f1, f2 = st.columns(2)
word = f1.text_input("Caption contains", placeholder="e.g. dog").strip().lower()
low, high = f2.slider(f"{metric} range", 0.0, 1.0, (0.0, 1.0), 0.01)
table = sub[(sub[metric] >= low) & (sub[metric] <= high)]
if word:
    table = table[table["caption"].str.split().apply(lambda ws: word in ws)]
cols = ["image", "caption", *bleu_cols, "log_prob", "length"]
st.dataframe(table[cols], hide_index=True, width="stretch")
st.download_button("Download these rows (CSV)", table[cols].to_csv(index=False).encode(),
                   file_name=f"{path.name}-{run.replace(' ', '')}-predictions.csv", mime="text/csv")
