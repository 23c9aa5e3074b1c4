"""The decoding lab's Streamlit helpers: strategy pickers, the shared photo, a strategy's captions, and the
quality-against-diversity view of a bundle's metrics.json."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from captioning.artifacts.report import EvaluationReport
from captioning.decoding.config import DecodeConfig
from captioning.decoding.options import OPTION, STRATEGY_LABELS
from ui.charts import run_order
from ui.evaluation import runs_frame
from ui.labels import sentence

SHARED_PHOTO = "chosen_photo"      # the last photo chosen on the Caption or Compare page (a ChosenImage)

PRESETS = {   # label -> DecodeConfig fields; labels short enough to read in a quarter of the page (4 columns)
    "Greedy": {"strategy": "greedy"},
    "Beam 5": {"strategy": "beam", "beam_width": 5},
    "Beam 10": {"strategy": "beam", "beam_width": 10},
    "Sample, top-p 0.9": {"strategy": "sample", "temperature": 0.7, "top_p": 0.9, "num_return_sequences": 5},
    "Sample, top-k 10": {"strategy": "sample", "top_k": 10, "num_return_sequences": 5},
    "Diverse, 3 groups": {"strategy": "diverse", "beam_width": 6, "num_groups": 3, "diversity_penalty": 0.5,
                          "num_return_sequences": 3},
    "Beam 5, no repeats": {"strategy": "beam", "beam_width": 5, "repetition_penalty": 1.5, "no_repeat_word": True,
                           "no_repeat_ngram_size": 2},
}
STRATEGY_NAMES = STRATEGY_LABELS

# metrics.json field -> what the table and chart call it
COLUMNS = {"label": "Decoding", "bleu_1": "BLEU-1", "bleu_4": "BLEU-4", "cider": "CIDEr-D", "meteor": "METEOR",
           "distinct_captions": "Distinct captions", "vocab_used": "Words used", "novel_fraction": "Novel",
           "distinct_2": "Distinct-2", "mean_length": "Mean length", "self_bleu_4": "Self-BLEU-4",
           "oracle_cider": "Oracle CIDEr-D", "decode_seconds": "Seconds"}


def remember_photo(chosen) -> None:
    """Keep the chosen photo for the other page (widget state does not survive a page switch)."""
    if chosen is not None:
        st.session_state[SHARED_PHOTO] = chosen


def choose_shared_photo(key: str, choose_image):
    """The last photo chosen (on the Caption page or here, until the user picks another), else ``choose_image``."""
    shared = st.session_state.get(SHARED_PHOTO)
    if shared is not None:
        keep = st.toggle(f"Keep the last photo chosen ({shared.label})", value=True, key=f"{key}_keep",
                         help="the photo last uploaded or picked on the Caption page or here; switch off to choose "
                              "another")
        if keep:
            return shared
    chosen = choose_image(key)
    if chosen is not None:
        st.session_state[SHARED_PHOTO] = chosen
    return chosen


def strategy_picker(slot: int, default_preset: str, max_length: int) -> DecodeConfig | None:
    """A preset plus every knob for one lab column; the validated config, or None with the error shown."""
    key = f"lab{slot}"
    preset = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index(default_preset), key=f"{key}_preset")
    base = {**DecodeConfig(max_length=max_length).__dict__, **PRESETS[preset]}
    k = f"{key}_{list(PRESETS).index(preset)}"          # knobs start from the preset whenever it changes
    with st.expander("Knobs", expanded=False):
        strategy = st.selectbox("Strategy", list(STRATEGY_NAMES), format_func=STRATEGY_NAMES.get,
                                index=list(STRATEGY_NAMES).index(base["strategy"]), key=f"{k}_strategy")
        fields: dict = {"strategy": strategy}

        def knob(name: str, suffix: str, start=None):
            """A slider with the option's declared label, range and help (captioning.decoding.options)."""
            option = OPTION[name]
            low, high, step = option.slider
            value = option.kind(base[name] if start is None else start)
            fields[name] = st.slider(option.label, option.kind(low), option.kind(high), value, option.kind(step),
                                     key=f"{k}_{suffix}", help=option.help)

        if strategy in ("beam", "diverse"):
            knob("beam_width", "width", max(base["beam_width"], 2))
            knob("length_penalty", "lp")
        if strategy == "diverse":
            knob("num_groups", "groups")
            knob("diversity_penalty", "div")
        if strategy == "sample":
            knob("temperature", "temp")
            knob("top_k", "topk")
            knob("top_p", "topp")
            seed = OPTION["seed"]
            fields["seed"] = st.number_input(seed.label, *seed.slider[:2], base["seed"], key=f"{k}_seed",
                                             help=seed.help)
        if strategy != "greedy":
            knob("num_return_sequences", "n")
        knob("repetition_penalty", "rep")
        knob("no_repeat_ngram_size", "ngram")
        word, ban = OPTION["no_repeat_word"], OPTION["banned_words"]
        fields["no_repeat_word"] = st.checkbox(word.label, base["no_repeat_word"], key=f"{k}_word")
        banned = st.text_input(ban.label, " ".join(base["banned_words"]), key=f"{k}_ban",
                               placeholder="e.g. man woman", help=ban.help)
        fields["banned_words"] = tuple(banned.lower().split())
        fields["min_length"], fields["max_length"] = st.slider(
            OPTION["max_length"].label, 0, max(max_length, 2), (base["min_length"], max_length), key=f"{k}_len")
    try:
        return DecodeConfig(**{**base, **fields, "beam_width": fields.get("beam_width", 1)})
    except ValueError as exc:
        st.error(f"{exc}", icon=":material/tune:")
        return None


NOBREAK_HYPHEN, NOBREAK_SPACE = "\u2011", "\u00a0"


def score_line(caption, scorer=None, references=None) -> str:
    """One caption's scores as one line of text, e.g. ``BLEU-4 0.25 · CIDEr-D 2.29 · mean log p -0.56``: against
    the references when there are some, then its mean log-probability, and its score only where that differs (a
    length penalty other than 1, or a repetition penalty). Each name stays with its number when the line wraps."""
    from captioning.evaluation.metrics import sentence_bleu_scores

    items = []
    if references is not None:
        items.append(("BLEU-4", f"{sentence_bleu_scores(references, caption.words)['bleu_4']:.2f}"))
        items.append(("CIDEr-D", f"{scorer.score(caption.words, references):.2f}"))
    mean = f"{caption.normalized_log_prob:.2f}"
    items.append(("mean log p", mean))
    if f"{caption.score:.2f}" != mean:
        items.append(("score", f"{caption.score:.2f}"))
    return " · ".join(f"{name}{NOBREAK_SPACE}{value}".replace("-", NOBREAK_HYPHEN).replace(" ", NOBREAK_SPACE)
                      for name, value in items)


def show_captions(captions, scorer=None, references=None) -> None:
    """A strategy's captions, best first, each with its scores on a grey line beneath it.

    Lines, not a table: a quarter of the page (4 columns at 1400 px) is too narrow for a table's headers, which
    wrapped into "BLEU- / 4" and "Mean log / p"; a line of "name number" pairs wraps between pairs only.
    """
    lines = []
    for rank, cap in enumerate(captions, 1):
        text = f"“{sentence(cap.text)}”"
        text = f"**{text}**" if rank == 1 else text
        lines.append((f"{rank}. " if len(captions) > 1 else "") + f"{text}  \n" + ("   " if len(captions) > 1 else "")
                     + f":gray[{score_line(cap, scorer, references)}]")
    st.markdown("\n".join(lines))


def results_frame(report: EvaluationReport | None) -> pd.DataFrame:
    """The evaluation's decoding runs with a label each (older entries: greedy / beam K)."""
    if report is None or not report.runs:
        return pd.DataFrame()
    frame = runs_frame(report.runs)
    frame["label"] = frame.pop("run")
    return frame


AXIS_FORMATS = {"distinct_captions": ".0%", "novel_fraction": ".0%", "vocab_used": ",d", "distinct_2": ".2f"}
# Dark enough to read on white, one hue per run (runs of one strategy are told apart by their shape's legend).
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
               "#bcbd22"]
SHAPES = {"greedy": "circle", "beam": "square", "sample": "triangle-up", "diverse": "diamond"}


def quality_diversity_chart(frame: pd.DataFrame, x: str = "distinct_captions") -> alt.Chart:
    """One point per decoding run: CIDEr-D (quality) against a diversity measure.

    Runs are named in the legend, not beside their points: beam 3, 5 and 10 and diverse beam search land within a
    few pixels of each other, where labels would print over each other. A share stays within 0-100%.
    """
    data = frame[["label", "decoding", "cider", x]].rename(columns={"label": "run"})
    order = run_order(data["run"])
    if x in ("distinct_captions", "novel_fraction"):
        low, high = float(data[x].min()), float(data[x].max())
        margin = max(0.02, (high - low) * 0.08)
        x_scale = alt.Scale(domain=[max(0.0, low - margin), min(1.0, high + margin)], nice=False)
    else:
        x_scale = alt.Scale(zero=False, padding=20)
    chart = alt.Chart(data).mark_point(size=140, filled=True, opacity=0.9).encode(
        x=alt.X(f"{x}:Q", title=COLUMNS[x] + (" (share of photos)" if x == "distinct_captions" else ""),
                scale=x_scale, axis=alt.Axis(format=AXIS_FORMATS.get(x, ",.2f"))),
        y=alt.Y("cider:Q", title="CIDEr-D", scale=alt.Scale(zero=False, padding=20), axis=alt.Axis(format=".2f")),
        color=alt.Color("run:N", title="Decoding", sort=order,
                        scale=alt.Scale(domain=order, range=RUN_COLOURS[: len(order)]),
                        legend=alt.Legend(labelLimit=0, symbolType="circle")),
        shape=alt.Shape("decoding:N", title="Strategy", scale=alt.Scale(domain=list(SHAPES),
                                                                        range=list(SHAPES.values())),
                        legend=alt.Legend(labelExpr="{'greedy': 'Greedy', 'beam': 'Beam search', "
                                                    "'sample': 'Sampling', 'diverse': 'Diverse beam search'}"
                                                    "[datum.label]")),
        tooltip=[alt.Tooltip("run:N", title="Decoding"), alt.Tooltip("cider:Q", title="CIDEr-D", format=".3f"),
                 alt.Tooltip(f"{x}:Q", title=COLUMNS[x], format=AXIS_FORMATS.get(x, ",.2f"))])
    return chart.properties(height=360, title=f"Quality against diversity: CIDEr-D by {COLUMNS[x].lower()}")


# column -> how its numbers are written (one style per kind of number: scores .3f, shares as % with one decimal)
TABLE_FORMATS = {"BLEU-1": "{:.3f}", "BLEU-4": "{:.3f}", "CIDEr-D": "{:.3f}", "METEOR": "{:.3f}",
                 "Distinct captions (%)": "{:.1f}", "Words used": "{:,.0f}", "Novel (%)": "{:.1f}",
                 "Distinct-2": "{:.3f}", "Mean length": "{:.1f}", "Self-BLEU-4": "{:.3f}", "Oracle CIDEr-D": "{:.3f}",
                 "Seconds": "{:,.0f}"}


def strategy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs with human column labels, percentages as percentages, every number of a column written alike
    (as text, "–" where a run has no value: greedy and beam have one caption per photo, so no self-BLEU)."""
    cols = [c for c in COLUMNS if c in frame]
    table = frame[cols].rename(columns=COLUMNS)
    for col in ("Distinct captions", "Novel"):
        if col in table:
            table[col] = 100 * table[col]
    table = table.rename(columns={"Distinct captions": "Distinct captions (%)", "Novel": "Novel (%)"})
    for col, fmt in TABLE_FORMATS.items():
        if col in table:
            table[col] = [fmt.format(v) if pd.notna(v) else "–" for v in table[col]]
    return table
