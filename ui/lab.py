"""The decoding lab's Streamlit helpers: strategy pickers, the shared photo, a strategy's captions, and the
quality-against-diversity view of a bundle's metrics.json."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from captioning.decoding import DecodeConfig
from captioning.manifest import EvaluationReport
from ui.labels import sentence

SHARED_PHOTO = "chosen_photo"      # the last photo chosen on the Caption or Compare page (a ChosenImage)

PRESETS = {   # label -> DecodeConfig fields
    "Greedy": {"strategy": "greedy"},
    "Beam 5": {"strategy": "beam", "beam_width": 5},
    "Beam 10": {"strategy": "beam", "beam_width": 10},
    "Sample: T 0.7, top-p 0.9, 5 captions": {"strategy": "sample", "temperature": 0.7, "top_p": 0.9,
                                             "num_return_sequences": 5},
    "Sample: T 1.0, top-k 10, 5 captions": {"strategy": "sample", "top_k": 10, "num_return_sequences": 5},
    "Diverse: 6 beams, 3 groups, penalty 0.5": {"strategy": "diverse", "beam_width": 6, "num_groups": 3,
                                                "diversity_penalty": 0.5, "num_return_sequences": 3},
    "Beam 5, no repeats": {"strategy": "beam", "beam_width": 5, "repetition_penalty": 1.5, "no_repeat_word": True,
                           "no_repeat_ngram_size": 2},
}
STRATEGY_NAMES = {"greedy": "Greedy", "beam": "Beam search", "sample": "Sampling", "diverse": "Diverse beam search"}

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
    """The photo chosen on the Caption page (until the user picks another here), else ``choose_image``."""
    shared = st.session_state.get(SHARED_PHOTO)
    if shared is not None:
        keep = st.toggle(f"Use the photo chosen on the Caption page ({shared.label})", value=True, key=f"{key}_keep")
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
        if strategy in ("beam", "diverse"):
            fields["beam_width"] = st.slider("Beam width", 1, 12, max(base["beam_width"], 2), key=f"{k}_width")
            fields["length_penalty"] = st.slider("Length penalty", 0.0, 2.0, float(base["length_penalty"]), 0.1,
                                                 key=f"{k}_lp", help="score = Σ log p / length ^ penalty")
        if strategy == "diverse":
            fields["num_groups"] = st.slider("Groups", 1, 6, base["num_groups"], key=f"{k}_groups",
                                             help="must divide the beam width")
            fields["diversity_penalty"] = st.slider("Diversity penalty", 0.0, 5.0, float(base["diversity_penalty"]),
                                                    0.1, key=f"{k}_div")
        if strategy == "sample":
            fields["temperature"] = st.slider("Temperature", 0.1, 2.0, float(base["temperature"]), 0.05,
                                              key=f"{k}_temp", help="< 1 sharper, > 1 more adventurous")
            fields["top_k"] = st.slider("Top-k (0 = off)", 0, 50, base["top_k"], key=f"{k}_topk")
            fields["top_p"] = st.slider("Top-p (1 = off)", 0.05, 1.0, float(base["top_p"]), 0.05, key=f"{k}_topp")
            fields["seed"] = st.number_input("Seed", 0, 10_000, base["seed"], key=f"{k}_seed",
                                             help="the same seed draws the same captions")
        if strategy != "greedy":
            fields["num_return_sequences"] = st.slider("Captions", 1, 10, base["num_return_sequences"], key=f"{k}_n",
                                                       help="samples drawn, or the size of the n-best list")
        fields["repetition_penalty"] = st.slider("Repetition penalty", 1.0, 3.0, float(base["repetition_penalty"]),
                                                 0.1, key=f"{k}_rep", help="> 1 discourages words already said")
        fields["no_repeat_ngram_size"] = st.slider("No repeated n-grams (0 = off)", 0, 4,
                                                   base["no_repeat_ngram_size"], key=f"{k}_ngram")
        fields["no_repeat_word"] = st.checkbox("No word twice in a row", base["no_repeat_word"], key=f"{k}_word")
        banned = st.text_input("Banned words", " ".join(base["banned_words"]), key=f"{k}_ban",
                               placeholder="e.g. man woman", help="never emitted")
        fields["banned_words"] = tuple(banned.lower().split())
        fields["min_length"], fields["max_length"] = st.slider(
            "Caption length (words)", 0, max(max_length, 2), (base["min_length"], max_length), key=f"{k}_len")
    try:
        return DecodeConfig(**{**base, **fields, "beam_width": fields.get("beam_width", 1)})
    except ValueError as exc:
        st.error(f"{exc}", icon=":material/tune:")
        return None


def show_captions(captions, scorer=None, references=None) -> None:
    """A strategy's captions (best first) with their scores, and BLEU / CIDEr-D against the references."""
    from captioning.metrics import sentence_bleu_scores

    rows = []
    for rank, cap in enumerate(captions, 1):
        row = {"#": rank}                              # scores first: the column is narrow, captions are above
        if references is not None:
            row["BLEU-4"] = round(sentence_bleu_scores(references, cap.words)["bleu_4"], 3)
            row["CIDEr-D"] = round(scorer.score(cap.words, references), 3)
        row.update({"Score": round(cap.score, 3), "Mean log p": round(cap.normalized_log_prob, 3),
                    "Words": len(cap.words), "Caption": sentence(cap.text)})
        rows.append(row)
    st.markdown(f"**“{sentence(captions[0].text)}”**")
    if len(captions) > 1:                              # the table's column is narrow: every caption in full first
        st.markdown("\n".join(f"{rank}. {sentence(cap.text)}" for rank, cap in enumerate(captions[1:], 2)))
    widths = {"#": 32, "BLEU-4": 58, "CIDEr-D": 62, "Score": 58, "Mean log p": 78, "Words": 52}   # px: the scores
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",     # fit a third of the page side by side
                 column_config={name: st.column_config.NumberColumn(name, width=w) for name, w in widths.items()})


def results_frame(report: EvaluationReport | None) -> pd.DataFrame:
    """The evaluation's decoding runs with a label each (older entries: greedy / beam K)."""
    if report is None or not report.runs:
        return pd.DataFrame()
    frame = pd.DataFrame(report.runs)
    if "label" not in frame:
        frame["label"] = None
    fallback = [DecodeConfig(beam_width=int(w)).describe() for w in frame["beam_width"]]
    frame["label"] = [lab if isinstance(lab, str) and lab else fb for lab, fb in zip(frame["label"], fallback)]
    return frame


def quality_diversity_chart(frame: pd.DataFrame, x: str = "distinct_captions") -> alt.Chart:
    """One labelled point per decoding run: CIDEr-D (quality) against a diversity measure."""
    data = frame[["label", "decoding", "cider", x]].rename(columns={"label": "run"})
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:Q", title=COLUMNS[x] + (" (share of photos)" if x == "distinct_captions" else ""),
                scale=alt.Scale(zero=False, padding=30),
                axis=alt.Axis(format=".0%" if x in ("distinct_captions", "novel_fraction") else "")),
        y=alt.Y("cider:Q", title="CIDEr-D", scale=alt.Scale(zero=False, padding=20)),
        color=alt.Color("decoding:N", title="Strategy",
                        scale=alt.Scale(domain=list(STRATEGY_NAMES)), legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("run:N", title="Decoding"), alt.Tooltip("cider:Q", title="CIDEr-D", format=".3f"),
                 alt.Tooltip(f"{x}:Q", title=COLUMNS[x], format=".3f")])
    points = base.mark_circle(size=110)
    labels = base.mark_text(align="left", dx=8, dy=-6, fontSize=11).encode(text="run:N")
    return (points + labels).properties(height=360, title=f"Quality against diversity: CIDEr-D by {COLUMNS[x].lower()}")


def strategy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs with human column labels, percentages as percentages."""
    cols = [c for c in COLUMNS if c in frame]
    table = frame[cols].rename(columns=COLUMNS)
    for col in ("Distinct captions", "Novel"):
        if col in table:
            table[col] = (100 * table[col]).round(1)
    return table.rename(columns={"Distinct captions": "Distinct captions (%)", "Novel": "Novel (%)"})
