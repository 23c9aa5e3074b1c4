"""The Evaluation page's analysis and its longer sections: decoding runs named, the BLEU implementations compared,
per-image breakdowns (caption length bins, reference-agreement quartiles), the training history."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.artifacts.manifest import Manifest
from captioning.decoding.config import DecodeConfig
from captioning.evaluation.metrics import reference_agreement, word_usage
from ui.charts import histogram, history, mean_by, signed_bars
from ui.labels import human_columns, label, literal, sentence
from ui.state import bundle_paths, get_dataset, references_for

METRIC_ORDER = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "coco_bleu_1", "coco_bleu_2", "coco_bleu_3", "coco_bleu_4",
                "cider", "rouge_l", "meteor"]
NAMES = {m: label(m) for m in METRIC_ORDER}


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    """Decoding runs (or per-image predictions) as a table with a ``run`` name each: the run's own ``label`` (runs
    scored with --decode name themselves), else its decoding described (older entries: greedy / beam K)."""
    frame = pd.DataFrame(runs)
    frame["run"] = [DecodeConfig(beam_width=int(w)).describe() for w in frame["beam_width"]]
    if "label" in frame:
        frame["run"] = [lab if isinstance(lab, str) and lab else run for lab, run in zip(frame["label"], frame["run"])]
    return frame


def bleu_gap(frame: pd.DataFrame) -> float:
    """Largest difference between nltk and coco-caption BLEU over every run and n (0 when one is missing)."""
    pairs = [(f"bleu_{n}", f"coco_bleu_{n}") for n in range(1, 5) if {f"bleu_{n}", f"coco_bleu_{n}"} <= set(frame)]
    return max((float((frame[a] - frame[b]).abs().max()) for a, b in pairs), default=0.0)


def scored_alike(report, split: str, n_images: int) -> bool:
    """Whether another bundle's evaluation was scored on the same split and number of images (comparable)."""
    first = report.runs[0]
    return first.get("split") == split and first.get("n_images") == n_images


def length_bins(lengths: pd.Series) -> pd.Series:
    """Caption lengths (words) in the bins the page charts: ≤6, 7-8, 9-10, 11-12, 13-15, 16+."""
    return pd.cut(lengths, bins=[0, 6, 8, 10, 12, 15, 100], labels=["≤6", "7-8", "9-10", "11-12", "13-15", "16+"])


def quartiles(values: pd.Series) -> pd.Series:
    """Each value's quartile (ties broken by order): lowest, low, high, highest."""
    return pd.qcut(values.rank(method="first"), 4, labels=["lowest", "low", "high", "highest"])


def training_section(manifest: Manifest | None) -> None:
    """How the bundle was made: teacher-forced loss curves, the SCST fine-tuning curve, or an ensemble's members."""
    if manifest is None or not manifest.has_training_history:
        return
    members, training, scst = manifest.ensemble_of, manifest.training, manifest.scst
    st.subheader("How it was trained", anchor="training")
    if members:
        shipped = {p.name for p in bundle_paths()}
        encoders = manifest.decoder_encoders
        rows = []
        for i, m in enumerate(members):
            config, tuned = m.get("training") or {}, m.get("scst")
            rows.append({"Member": m.get("bundle"),
                         "In this app": "yes: pick it in the sidebar" if m.get("bundle") in shipped else "not shipped",
                         "Encoder": encoders[i].label if len(encoders) == len(members) else "?",
                         "Decoder": m.get("kind"), "Seed": config.get("seed"),
                         "LSTM units": config.get("units"), "Label smoothing": config.get("label_smoothing", 0.0),
                         "SCST (dev CIDEr-D)": (f"{tuned['start_dev_cider']:.3f} → {tuned['best_dev_cider']:.3f}"
                                                if tuned else "no")})
        n_shipped = sum(m.get("bundle") in shipped for m in members)
        st.caption(f"An ensemble of {len(members)} decoders: each step averages their next-word probabilities. "
                   + ("Members shipped as bundles of their own can be opened from the sidebar to see their training "
                      "curves; the others were not shipped." if n_shipped else
                      "The member bundles are not shipped with the app; this table is what the ensemble records "
                      "about them."))
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


def per_image_section(preds: pd.DataFrame, bleu_cols: list[str], path: Path) -> None:
    """Pickers first, then every section they control: distribution, breakdowns, best and worst, all rows."""
    preds = runs_frame(preds.to_dict("records"))
    if "rank" in preds:                                # several captions per image: analyse each image's first
        preds = preds[preds["rank"].astype(int) == 1].reset_index(drop=True)
    preds["length"] = preds["caption"].astype(str).str.split().str.len()
    runs = list(dict.fromkeys(preds["run"]))
    st.subheader("Per-image scores", anchor="per-image")
    st.caption("These two choices apply to every section down to *All predictions*.")
    c1, c2 = st.columns(2)
    default = "beam 5" if "beam 5" in runs else runs[0]      # the decoding the app, CLI and API use
    run = c1.selectbox("Decoding run", runs, index=runs.index(default), key="eval_run")
    per_image = [c for c in bleu_cols + ["cider"] if c in preds]
    metric = c2.selectbox("Per-image metric", per_image, index=len(per_image) - 1,
                          format_func=lambda m: NAMES[m] + (" (smoothed sentence BLEU)" if m.startswith("bleu")
                                                            else " (coco-caption, per image)"))
    name = NAMES[metric]
    sub = preds[preds["run"] == run].reset_index(drop=True)

    st.markdown(f"**Distribution of {name} over the {len(sub):,} images ({run})**")
    st.altair_chart(histogram(sub, metric, name), width="stretch")

    ds = get_dataset()
    st.markdown("**Breakdowns**")
    tab_len, tab_agree, tab_words = st.tabs(["By caption length", "By reference agreement", "Word usage"])
    with tab_len:
        sub["length bin"] = length_bins(sub["length"])
        st.altair_chart(mean_by(sub, "length bin", metric, f"Mean {name} by predicted caption length (words)"),
                        width="stretch")
    refs = references_for(str(ds.root), tuple(sub["image"])) if ds else None
    with tab_agree:
        if refs is None:
            st.info("Needs the dataset's references. Set FLICKR8K_DIR and reload.")
        else:
            sub["agreement"] = [reference_agreement(r) for r in refs]
            sub["agreement quartile"] = quartiles(sub["agreement"])
            st.caption("Reference agreement: how much an image's five human captions agree with each other "
                       "(mean smoothed BLEU-2 of each against the other four). Hard images have low agreement.")
            st.altair_chart(mean_by(sub, "agreement quartile", metric, f"Mean {name} by reference agreement"),
                            width="stretch")
    with tab_words:
        if refs is None:
            st.info("Needs the dataset's references. Set FLICKR8K_DIR and reload.")
        else:
            usage = pd.DataFrame(word_usage(refs, [c.split() for c in sub["caption"]]))
            over = usage[usage["difference"] > 0].nlargest(15, "difference")
            under = usage[usage["difference"] < 0].nsmallest(15, "difference")
            st.caption("Times the model says a word across the split minus the times an average reference says "
                       "it: orange = over-used, green = under-used.")
            a, b = st.columns(2)
            a.altair_chart(signed_bars(over, "word", "difference", "Over-used words", "times more than people"),
                           width="stretch")
            b.altair_chart(signed_bars(under, "word", "difference", "Under-used words", "times fewer than people"),
                           width="stretch")

    st.markdown("**Best and worst images**")
    k = st.slider("How many", 1, 10, 4)
    for title, rows in (("Best", sub.nlargest(k, metric)), ("Worst", sub.nsmallest(k, metric))):
        st.markdown(f"*{title} {k} by {name}*")
        cols = st.columns(k)
        for col, (_, row) in zip(cols, rows.iterrows()):
            with col:
                if ds and ds.image_path(row["image"]).is_file():
                    st.image(str(ds.image_path(row["image"])), width="stretch")
                st.markdown(f"**{literal(sentence(str(row['caption'])))}**  \n{name}: {row[metric]:.3f}")
                if ds:
                    with st.popover("References"):
                        st.markdown("\n".join(f"- {literal(c)}" for c in ds.captions[row["image"]]))

    st.markdown("**All predictions**")
    f1, f2 = st.columns(2)
    word = f1.text_input("Caption contains", placeholder="e.g. dog").strip().lower()
    top = float(max(1.0, sub[metric].max()))
    low, high = f2.slider(f"{name} range", 0.0, top, (0.0, top), 0.01)
    table = sub[(sub[metric] >= low) & (sub[metric] <= high)]
    if word:
        table = table[table["caption"].astype(str).str.split().apply(lambda ws: word in ws)]
    cols = ["image", "caption", *per_image, *(["log_prob"] if "log_prob" in table else []), "length"]
    shown = human_columns(table[cols])
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={label(c): st.column_config.NumberColumn(label(c), format="%.3f")
                                for c in per_image})
    st.download_button("Download these rows (CSV)", table[cols].to_csv(index=False).encode(),
                       file_name=f"{path.name}-{run.replace(' ', '')}-predictions.csv", mime="text/csv")
