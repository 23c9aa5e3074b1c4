"""Evaluation page: corpus BLEU per decoding run and where the model does well or badly, from the bundle's files."""
import pandas as pd
import streamlit as st

from captioning.metrics import reference_agreement, word_usage
from ui.charts import bundle_bars, grouped_bleu, histogram, history, line, mean_by, signed_bars
from ui.shell import require_shell
from ui.trust import calibration_section
from ui.state import (bundle_paths, bundle_results, current_manifest, current_results, get_dataset, no_bundle_message,
                      references_for, selected_bundle)

require_shell()
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


METRIC_ORDER = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "coco_bleu_1", "coco_bleu_2", "coco_bleu_3", "coco_bleu_4",
                "cider", "rouge_l", "meteor"]
NAMES = {"cider": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR",
         **{f"bleu_{n}": f"BLEU-{n}" for n in range(1, 5)}, **{f"coco_bleu_{n}": f"coco BLEU-{n}" for n in range(1, 5)}}


def results_frame(metrics: dict) -> pd.DataFrame:
    frame = pd.DataFrame(metrics["results"])
    frame["run"] = [run_label(d, w) for d, w in zip(frame["decoding"], frame["beam_width"])]
    return frame


results = results_frame(metrics)
implementations = metrics.get("implementations", {})
split, n_images = results["split"].iloc[0], int(results["n_images"].iloc[0])
score_cols = [c for c in METRIC_ORDER if c in results]
bleu_cols = [c for c in score_cols if c.startswith("bleu_")]
st.subheader(f"Corpus scores · {split} split · {n_images:,} images")
st.caption("Hover a column for the implementation. nltk BLEU and the coco-caption toolkit's BLEU differ slightly "
           "(tokenisation of the brevity penalty); papers report the coco-caption numbers and CIDEr-D.")
extra = [c for c in ("mean_length", "vocabulary_used", "decode_seconds") if c in results]
config = {c: st.column_config.NumberColumn(NAMES[c], help=implementations.get(c, ""), format="%.4f")
          for c in score_cols}
st.dataframe(results[["run"] + score_cols + extra], hide_index=True, width="stretch", column_config=config)
chart_cols = st.multiselect("Chart", score_cols, default=[c for c in ("bleu_4", "coco_bleu_4", "cider", "rouge_l",
                                                                      "meteor") if c in score_cols] or bleu_cols,
                            format_func=NAMES.get)
if chart_cols:
    st.altair_chart(grouped_bleu(results[["run"] + chart_cols].rename(columns=NAMES)), width="stretch")
for note in metrics.get("notes", []):
    st.caption(f"ⓘ {note}")

others = [p for p in bundle_paths() if p != path]
if others:
    st.subheader("Against the other bundles")
    st.caption("Same test split, same metrics: e.g. the attention decoder against the merge decoder. Bundles "
               f"scored on the same {n_images:,} {split} images are selected first.")

    def comparable(other) -> bool:
        other_metrics, _ = bundle_results(str(other), (other / "manifest.json").stat().st_mtime)
        runs = (other_metrics or {}).get("results") or [{}]
        return runs[0].get("split") == split and runs[0].get("n_images") == n_images

    same = [p for p in others if comparable(p)]
    chosen_bundles = st.multiselect("Bundles", others, default=same[:3] or others[:1], format_func=lambda p: p.name)
    frames = [results_frame(metrics).assign(bundle=path.name)]
    for other in chosen_bundles:
        other_metrics, _ = bundle_results(str(other), (other / "manifest.json").stat().st_mtime)
        if other_metrics and other_metrics.get("results"):
            frames.append(results_frame(other_metrics).assign(bundle=other.name))
    both = pd.concat(frames, ignore_index=True)
    shared = [c for c in score_cols if c in both]
    st.dataframe(both[["bundle", "run"] + shared], hide_index=True, width="stretch", column_config=config)
    pick = st.selectbox("Metric", shared, index=shared.index("cider") if "cider" in shared else 0,
                        format_func=NAMES.get)
    st.altair_chart(bundle_bars(both, pick, NAMES[pick]), width="stretch")

sweep = metrics.get("sweep")
if sweep:
    frame = pd.DataFrame(sweep)
    st.subheader(f"Beam width and length penalty · {frame['split'].iloc[0]} split")
    st.caption("Decoding settings are chosen here, on the dev split, never on the test split.")
    sweep_metric = st.selectbox("Sweep metric", [c for c in ("cider", "bleu_4", "coco_bleu_4", "rouge_l", "mean_length")
                                                 if c in frame], format_func=lambda m: NAMES.get(m, "mean words"))
    left, right = st.columns(2)
    by_width = frame[frame["axis"] == "beam_width"]
    by_penalty = frame[frame["axis"] == "length_penalty"]
    left.altair_chart(line(by_width, "beam_width", sweep_metric,
                           f"By beam width (length penalty {by_width['length_penalty'].iloc[0]:g})"), width="stretch")
    right.altair_chart(line(by_penalty, "length_penalty", sweep_metric,
                            f"By length penalty (beam {by_penalty['beam_width'].iloc[0]})"), width="stretch")

agreement = metrics.get("human_agreement")
if agreement and agreement.get("metrics"):
    st.subheader("Which metric agrees with people?")
    st.caption(f"Kendall's τ between each metric and the mean of three experts' 1-4 scores on "
               f"{agreement['pairs']:,} Flickr8k image-caption pairs (ExpertAnnotations.txt), as in the CIDEr "
               f"paper. Higher = ranks captions more like people do.")
    table = pd.DataFrame(agreement["metrics"])
    table["name"] = table["metric"].map(NAMES)
    left, right = st.columns([2, 3])
    left.dataframe(table[["name", "kendall_tau", "implementation"]], hide_index=True, width="stretch")
    right.altair_chart(signed_bars(table, "name", "kendall_tau", "Kendall's τ with expert judgments"),
                       width="stretch")


def training_section(manifest: dict) -> None:
    """How the bundle was made: teacher-forced loss curves, the SCST fine-tuning curve, or an ensemble's members."""
    members = manifest.get("ensemble_of")
    training, scst = manifest.get("training") or {}, manifest.get("scst")
    if not (members or training.get("epochs") or scst):
        return
    st.subheader("How it was trained")
    if members:
        rows = []
        for m in members:
            config, tuned = m.get("training") or {}, m.get("scst")
            rows.append({"member": m.get("bundle"), "decoder": m.get("kind"), "seed": config.get("seed"),
                         "LSTM units": config.get("units"), "label smoothing": config.get("label_smoothing", 0.0),
                         "SCST (dev CIDEr-D)": (f"{tuned['start_dev_cider']:.3f} → {tuned['best_dev_cider']:.3f}"
                                                if tuned else "no")})
        st.caption(f"An ensemble of {len(members)} decoders: each step averages their next-word probabilities. "
                   "Each member's own training curves are on its bundle's page.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        return
    charts = []
    epochs = training.get("epochs") or []
    if epochs:
        frame = pd.DataFrame(epochs).reset_index(names="epoch")
        frame["epoch"] += 1
        long = frame.melt(id_vars="epoch", value_vars=[c for c in ("loss", "val_loss") if c in frame],
                          var_name="series", value_name="value").replace({"loss": "train", "val_loss": "dev"})
        best = training.get("best_epoch")
        charts.append(history(long, "epoch", f"Teacher forcing: cross-entropy (best dev loss at epoch {best})",
                              "loss"))
    if scst:
        rows = [{"epoch": 0, **(scst.get("start_dev") or {})}] + \
               [{"epoch": i, **e["dev"], "train reward": e["train_reward"]} for i, e in enumerate(scst["epochs"], 1)]
        frame = pd.DataFrame(rows)
        series = {c: c.replace("_cider", "").replace("beam", "dev, beam ").replace("greedy", "dev, greedy")
                  for c in frame if c.endswith("_cider")}
        series["train reward"] = "train (sampled captions)"
        long = frame.melt(id_vars="epoch", value_vars=[c for c in series if c in frame],
                          var_name="series", value_name="value").dropna().replace(series)
        charts.append(history(long, "epoch", f"Self-critical fine-tuning: CIDEr-D (kept epoch {scst['best_epoch']})",
                              "CIDEr-D"))
        st.caption(f"Fine-tuned from **{scst.get('from')}** with self-critical sequence training: sampled captions "
                   "are rewarded by their CIDEr-D against the references, minus the mean reward of the image's "
                   "other samples. Epoch 0 is the starting model; the dev split picks the epoch kept.")
    for col, chart in zip(st.columns(len(charts)), charts):
        col.altair_chart(chart, width="stretch")


training_section(current_manifest() or {})
calibration_section(path)

if preds is None or preds.empty:
    st.info(f"No per-image predictions in this bundle. Run `python train.py evaluate --out {path}`.")
    st.stop()

preds = preds.copy()
preds["run"] = [run_label(d, w) for d, w in zip(preds["decoding"], preds["beam_width"])]
preds["length"] = preds["caption"].str.split().str.len()
runs = list(dict.fromkeys(preds["run"]))
c1, c2 = st.columns(2)
run = c1.selectbox("Decoding run", runs, index=len(runs) - 1)
per_image = [c for c in bleu_cols + ["cider"] if c in preds]
metric = c2.selectbox("Per-image metric", per_image, index=len(per_image) - 1,
                      format_func=lambda m: NAMES[m] + (" (smoothed sentence BLEU)" if m.startswith("bleu")
                                                        else " (coco-caption, per image)"))
sub = preds[preds["run"] == run].reset_index(drop=True)

st.subheader("Distribution of per-image scores")
st.altair_chart(histogram(preds, metric, NAMES[metric], color="run"), width="stretch")

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
top = float(max(1.0, sub[metric].max()))
low, high = f2.slider(f"{NAMES[metric]} range", 0.0, top, (0.0, top), 0.01)
table = sub[(sub[metric] >= low) & (sub[metric] <= high)]
if word:
    table = table[table["caption"].str.split().apply(lambda ws: word in ws)]
cols = ["image", "caption", *per_image, "log_prob", "length"]
st.dataframe(table[cols], hide_index=True, width="stretch")
st.download_button("Download these rows (CSV)", table[cols].to_csv(index=False).encode(),
                   file_name=f"{path.name}-{run.replace(' ', '')}-predictions.csv", mime="text/csv")
