"""Evaluation page: corpus scores per decoding run and where the model does well or badly, from the bundle's files."""
import math

import pandas as pd
import streamlit as st

from ui.charts import bundle_bars, grouped_bleu, line, signed_bars
from ui.evaluation import (
    METRIC_ORDER,
    NAMES,
    bleu_gap,
    per_image_section,
    runs_frame,
    scored_alike,
    training_section,
)
from ui.finetuned import finetune_section
from ui.jobs import finetune_report
from ui.labels import human_columns, label
from ui.state import (
    EVALUATE_HINT,
    bundle_paths,
    bundle_results,
    current_manifest,
    current_results,
    no_bundle_message,
    selected_bundle,
)
from ui.trust import calibration_section

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


results = runs_frame(report.runs)
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
    st.caption(f":material/info: {note}")

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

    same = [p for p in evaluated if scored_alike(evaluated[p], split, n_images)]
    chosen_bundles = st.multiselect("Bundles", list(evaluated), default=same[:3] or list(evaluated)[:1],
                                    format_func=lambda p: p.name)
    both = pd.concat([results.assign(bundle=path.name)]
                     + [runs_frame(evaluated[o].runs).assign(bundle=o.name) for o in chosen_bundles],
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

if has_preds:
    per_image_section(preds, bleu_cols, path)
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
