"""Evaluation page: corpus scores per decoding run and where the model does well or badly, from the bundle's files."""
import math

import pandas as pd
import streamlit as st

from captioning import DecodeConfig, Manifest, reference_agreement, word_usage
from ui.charts import bundle_bars, grouped_bleu, histogram, history, line, mean_by, signed_bars
from ui.finetuned import finetune_section
from ui.jobs import finetune_report
from ui.labels import human_columns, label, literal, sentence
from ui.shell import require_shell
from ui.state import (
    EVALUATE_HINT,
    bundle_paths,
    bundle_results,
    current_manifest,
    current_results,
    get_dataset,
    no_bundle_message,
    references_for,
    selected_bundle,
)
from ui.trust import calibration_section

require_shell()
st.title("Evaluation")
path = selected_bundle()
if path is None:
    no_bundle_message()
    st.stop()
report, problem = current_results()
if problem:
    st.error(f"Bundle **{path.name}**: {problem}. Re-evaluate it with `{EVALUATE_HINT.format(path=path)}`.",
             icon=":material/block:")
    st.stop()
finetuned = finetune_report(str(path))        # a fine-tuned bundle: its scores on the user's own photos
if report is None or not report.evaluated:
    if finetuned:
        finetune_section(finetuned)
        st.info(f"Bundle **{path.name}** has no Flickr8k evaluation yet (no metrics.json): the scores above are the "
                f"fine-tune's own. Score it on the whole Flickr8k test split with "
                f"`{EVALUATE_HINT.format(path=path)}`.", icon=":material/science:")
        st.stop()
    st.info(f"Bundle **{path.name}** has no evaluation yet (no metrics.json): it captions photos, but has no "
            f"scores to show. Score it with `{EVALUATE_HINT.format(path=path)}`.", icon=":material/science:")
    st.stop()
preds = report.predictions


def run_label(decoding: str, width: int) -> str:
    return DecodeConfig(beam_width=int(width)).describe()


METRIC_ORDER = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "coco_bleu_1", "coco_bleu_2", "coco_bleu_3", "coco_bleu_4",
                "cider", "rouge_l", "meteor"]
NAMES = {m: label(m) for m in METRIC_ORDER}


def results_frame(runs: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(runs)
    frame["run"] = [run_label(d, w) for d, w in zip(frame["decoding"], frame["beam_width"])]
    if "label" in frame:                               # runs scored with --decode name themselves
        frame["run"] = [lab if isinstance(lab, str) and lab else run for lab, run in zip(frame["label"], frame["run"])]
    return frame


def bleu_gap(frame: pd.DataFrame) -> float:
    """Largest difference between nltk and coco-caption BLEU over every run and n (0 when one is missing)."""
    pairs = [(f"bleu_{n}", f"coco_bleu_{n}") for n in range(1, 5) if {f"bleu_{n}", f"coco_bleu_{n}"} <= set(frame)]
    return max((float((frame[a] - frame[b]).abs().max()) for a, b in pairs), default=0.0)


results = results_frame(report.runs)
implementations = report.implementations
split, n_images = results["split"].iloc[0], int(results["n_images"].iloc[0])
gap = bleu_gap(results)
same_bleu = gap < 5e-4                      # equal to the 3 decimals shown: show BLEU once
score_cols = [c for c in METRIC_ORDER if c in results and not (same_bleu and c.startswith("coco_bleu"))]
bleu_cols = [c for c in score_cols if c.startswith("bleu_")]
sweep = report.sweep
agreement = report.human_agreement
manifest = current_manifest()
others = [p for p in bundle_paths() if p != path]
has_training = bool(manifest and manifest.has_training_history)
has_preds = preds is not None and not preds.empty

sections = [("On your photos", "your-photos", bool(finetuned)),
            ("Corpus scores", "corpus-scores", True),
            ("Against the other bundles", "other-bundles", bool(others)),
            ("Beam width and length penalty", "sweep", bool(sweep)),
            ("Per-image scores", "per-image", has_preds),
            ("Which metric agrees with people?", "human-agreement", bool(agreement and agreement.get("metrics"))),
            ("When to trust a caption", "trust", True),
            ("How it was trained", "training", has_training)]
st.markdown("**On this page:** " + " · ".join(f"[{title}](#{anchor})" for title, anchor, shown in sections if shown))
if finetuned:
    finetune_section(finetuned)

st.subheader(f"Corpus scores · {split} split · {n_images:,} images", anchor="corpus-scores")
if same_bleu and any(c in results for c in ("coco_bleu_1", "coco_bleu_4")):
    agree = "to every stored decimal" if gap == 0 else f"to {int(-math.log10(gap))} decimals"
    st.caption(f"BLEU is nltk's corpus BLEU. The coco-caption toolkit's BLEU, computed separately on the same "
               f"tokens, gives the same numbers here ({agree} in every run), so it is shown once. "
               "Papers report the coco-caption metrics, CIDEr-D above all. Hover a column for its implementation.")
elif any(c.startswith("coco_bleu") for c in score_cols):
    st.caption(f"nltk BLEU and the coco-caption toolkit's BLEU differ by up to {gap:.4f} here; papers report the "
               "coco-caption numbers and CIDEr-D. Hover a column for its implementation.")
extra = [c for c in ("mean_length", "vocabulary_used", "decode_seconds") if c in results]
# Pixel widths so that the longest run label ("diverse 6 beams / 3 groups, penalty 0.5") and every column fit.
config = {label(c): st.column_config.NumberColumn(label(c), help=implementations.get(c, ""), format="%.3f", width=62)
          for c in score_cols}
config[label("mean_length")] = st.column_config.NumberColumn(label("mean_length"), format="%.2f", width=82,
                                                             help="mean words per caption")
config[label("vocabulary_used")] = st.column_config.NumberColumn(label("vocabulary_used"), width=80)
config[label("decode_seconds")] = st.column_config.NumberColumn("Time (s)", format="%.1f", width=80,
                                                                help=f"decoding all {n_images:,} images")
config[label("run")] = st.column_config.TextColumn(label("run"), width=234)
st.dataframe(human_columns(results[["run"] + score_cols + extra]), hide_index=True, width="stretch",
             column_config=config)
chart_cols = st.multiselect("Chart", score_cols, default=[c for c in ("bleu_4", "coco_bleu_4", "cider", "rouge_l",
                                                                      "meteor") if c in score_cols] or bleu_cols,
                            format_func=NAMES.get)
if chart_cols:
    st.altair_chart(grouped_bleu(results[["run"] + chart_cols].rename(columns=NAMES)), width="stretch")
for note in report.notes:
    st.caption(f"ⓘ {note}")

if others:
    st.subheader("Against the other bundles", anchor="other-bundles")
    st.caption("Same test split, same metrics: e.g. the attention decoder against the merge decoder. Bundles "
               f"scored on the same {n_images:,} {split} images are selected first.")
    evaluated, skipped = {}, []
    for other in others:
        other_report, other_problem = bundle_results(other)
        if other_problem:
            skipped.append(f"**{other.name}** ({other_problem}; re-evaluate it with "
                           f"`{EVALUATE_HINT.format(path=other)}`)")
        elif other_report and other_report.evaluated:
            evaluated[other] = other_report
        else:
            skipped.append(f"**{other.name}** (not evaluated yet: `{EVALUATE_HINT.format(path=other)}`)")
    if skipped:
        st.warning("Left out: " + "; ".join(skipped) + ".", icon=":material/warning:")

    def comparable(other) -> bool:
        first = evaluated[other].runs[0]
        return first.get("split") == split and first.get("n_images") == n_images

    same = [p for p in evaluated if comparable(p)]
    chosen_bundles = st.multiselect("Bundles", list(evaluated), default=same[:3] or list(evaluated)[:1],
                                    format_func=lambda p: p.name)
    both = pd.concat([results.assign(bundle=path.name)]
                     + [results_frame(evaluated[o].runs).assign(bundle=o.name) for o in chosen_bundles],
                     ignore_index=True)
    shared = [c for c in score_cols if c in both and both[c].notna().any()]
    st.dataframe(human_columns(both[["bundle", "run"] + shared]), hide_index=True, width="stretch",
                 column_config=config)
    pick = st.selectbox("Metric", shared, index=shared.index("cider") if "cider" in shared else 0,
                        format_func=NAMES.get)
    st.altair_chart(bundle_bars(both, pick, NAMES[pick]), width="stretch")

if sweep:
    frame = pd.DataFrame(sweep)
    st.subheader(f"Beam width and length penalty · {frame['split'].iloc[0]} split", anchor="sweep")
    st.caption("Decoding settings are chosen here, on the dev split, never on the test split.")
    sweep_metric = st.selectbox("Sweep metric", [c for c in ("cider", "bleu_4", "coco_bleu_4", "rouge_l", "mean_length")
                                                 if c in frame and not (same_bleu and c == "coco_bleu_4")],
                                format_func=label)
    left, right = st.columns(2)
    by_width = frame[frame["axis"] == "beam_width"]
    by_penalty = frame[frame["axis"] == "length_penalty"]
    left.altair_chart(line(by_width, "beam_width", sweep_metric,
                           f"By beam width (length penalty {by_width['length_penalty'].iloc[0]:g})"), width="stretch")
    right.altair_chart(line(by_penalty, "length_penalty", sweep_metric,
                            f"By length penalty (beam {by_penalty['beam_width'].iloc[0]})"), width="stretch")

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



def per_image_section(preds: pd.DataFrame) -> None:
    """Pickers first, then every section they control: distribution, breakdowns, best and worst, all rows."""
    preds = results_frame(preds.to_dict("records"))
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
        sub["length bin"] = pd.cut(sub["length"], bins=[0, 6, 8, 10, 12, 15, 100],
                                   labels=["≤6", "7-8", "9-10", "11-12", "13-15", "16+"])
        st.altair_chart(mean_by(sub, "length bin", metric, f"Mean {name} by predicted caption length (words)"),
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


if has_preds:
    per_image_section(preds)
else:
    st.info(f"No per-image predictions in this bundle. Run `{EVALUATE_HINT.format(path=path)}`.")

if agreement and agreement.get("metrics"):
    st.subheader("Which metric agrees with people?", anchor="human-agreement")
    st.caption(f"Kendall's τ between each metric and the mean of three experts' 1-4 scores on "
               f"{agreement['pairs']:,} Flickr8k image-caption pairs (ExpertAnnotations.txt), as in the CIDEr "
               f"paper. Higher = ranks captions more like people do.")
    table = pd.DataFrame(agreement["metrics"])
    table["name"] = table["metric"].map(label)
    left, right = st.columns([2, 3])
    shown = table[["name", "kendall_tau", "implementation"]].rename(columns={"name": "Metric"}).pipe(human_columns)
    shown[label("kendall_tau")] = shown[label("kendall_tau")].map(lambda v: f"{v:.3f}")
    left.table(shown.set_index("Metric"))        # every row and the whole Implementation text, wrapped
    right.altair_chart(signed_bars(table, "name", "kendall_tau", "Kendall's τ with expert judgments"),
                       width="stretch")

calibration_section(path)
training_section(manifest)
