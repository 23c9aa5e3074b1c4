"""Altair charts used across pages."""
from __future__ import annotations

import altair as alt
import pandas as pd

from captioning.decoding.captions import Caption

from .labels import label

# Every bar keeps its label: Vega-Lite hides labels it thinks overlap ("every other bar"), so the axes of bar
# charts turn that off and give each band room instead.
BAND_AXIS = dict(labelOverlap=False, labelLimit=220)
# Drawn as SVG (Streamlit honours Vega-Embed's renderer option): small charts stay crisp, and a browser test can
# read their axis labels.
SVG = {"embedOptions": {"renderer": "svg"}}


def word_probabilities(caption: Caption, title: str = "", horizontal: bool = False) -> alt.Chart:
    """Bar per emitted token (words, then <end>), length = the model's probability of it.

    ``horizontal`` lays the words down the side, one readable row each, for a narrow column (the decoding lab at
    four strategies), where slanted labels under a dozen thin bars would overlap.
    """
    tokens = caption.words + (["<end>"] if caption.finished else [])
    df = pd.DataFrame({"position": range(1, len(tokens) + 1), "token": tokens,
                       "probability": caption.token_probs[: len(tokens)]})
    df["label"] = df["position"].astype(str) + " " + df["token"]
    # Sorted by position explicitly: with sort=None the browser keeps the order it first saw a label in, so when
    # Streamlit swaps a second caption's data into the same chart, labels shared with the first jump ahead.
    words = dict(field="label", type="nominal", sort=alt.EncodingSortField("position", op="min"), title=None)
    p = alt.Scale(domain=[0, 1])
    if horizontal:
        position = dict(y=alt.Y(**words, axis=alt.Axis(**BAND_AXIS)),
                        x=alt.X("probability:Q", scale=p, title="p(word)", axis=alt.Axis(values=[0, 0.5, 1])))
        size = dict(height=alt.Step(18))
    else:
        position = dict(x=alt.X(**words, axis=alt.Axis(labelAngle=-45, **BAND_AXIS),
                                scale=alt.Scale(paddingInner=0.15)),
                        y=alt.Y("probability:Q", scale=p, title="p(word)"))
        size = dict(height=240)
    return (alt.Chart(df, title=title).mark_bar()
            .encode(**position,
                    color=alt.Color("probability:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), legend=None),
                    tooltip=[alt.Tooltip("position", title="position"), alt.Tooltip("token", title="word"),
                             alt.Tooltip("probability:Q", format=".3f", title="p(word)")])
            .properties(**size, usermeta=SVG))


def run_order(runs) -> list[str]:
    """Decoding-run labels in reading order: greedy, beams by width ("beam 10" after "beam 5"), then sampling and
    diverse beam search ("sample T 0.7, n 5" ends in a number too, but is not a beam)."""
    def key(run: str):
        words = run.split()
        if run == "greedy":
            return (0, 0, run)
        if len(words) == 2 and words[0] == "beam" and words[1].isdigit():
            return (1, int(words[1]), run)
        return (2 if words[0] == "sample" else 3, 0, run)
    return sorted(set(runs), key=key)


def grouped_bleu(results: pd.DataFrame) -> alt.Chart:
    """Corpus scores per decoding run (every column but ``run``), grouped bars."""
    long = results.melt(id_vars=["run"], value_vars=[c for c in results if c != "run"],
                        var_name="metric", value_name="score")
    order = run_order(long["run"])
    return (alt.Chart(long).mark_bar()
            .encode(x=alt.X("metric:N", title=None, sort=None, axis=alt.Axis(labelAngle=0, **BAND_AXIS)),
                    xOffset=alt.XOffset("run:N", sort=order),
                    y=alt.Y("score:Q", title="corpus score"),
                    color=alt.Color("run:N", title="decoding", sort=order,
                                    legend=alt.Legend(labelLimit=0)),          # long run labels in full
                    tooltip=[alt.Tooltip("run", title="decoding"), alt.Tooltip("metric", title="metric"),
                             alt.Tooltip("score:Q", format=".4f", title="score")])
            .properties(height=280))


def histogram(df: pd.DataFrame, field: str, title: str, bins: int = 30) -> alt.Chart:
    """Images per score bin, for ONE decoding run (``df`` holds one row per image, so counts add up to the split)."""
    return (alt.Chart(df).mark_bar()
            .encode(x=alt.X(f"{field}:Q", bin=alt.Bin(maxbins=bins), title=title),
                    y=alt.Y("count():Q", title="images"),
                    tooltip=[alt.Tooltip(f"{field}:Q", bin=alt.Bin(maxbins=bins), title=title),
                             alt.Tooltip("count():Q", title="images")])
            .properties(height=240))


def mean_by(df: pd.DataFrame, group: str, value: str, title: str) -> alt.Chart:
    agg = df.groupby(group, observed=True)[value].agg(["mean", "count"]).reset_index()
    agg[group] = agg[group].astype(str)
    return (alt.Chart(agg, title=title).mark_bar()
            .encode(x=alt.X(f"{group}:N", sort=None, title=None, axis=alt.Axis(labelAngle=0, **BAND_AXIS)),
                    y=alt.Y("mean:Q", title=f"mean {label(value)}"),
                    tooltip=[group, alt.Tooltip("mean:Q", format=".3f", title=f"mean {label(value)}"),
                             alt.Tooltip("count", title="images")])
            .properties(height=240))


def signed_bars(df: pd.DataFrame, name: str, value: str, title: str, value_title: str | None = None) -> alt.Chart:
    """Horizontal bars, one labelled row per ``name``; orange above zero, green below."""
    return (alt.Chart(df, title=title).mark_bar()
            .encode(y=alt.Y(f"{name}:N", sort="-x", title=None, axis=alt.Axis(**BAND_AXIS)),
                    x=alt.X(f"{value}:Q", title=value_title or label(value)),
                    color=alt.condition(f"datum.{value} > 0", alt.value("#d95f02"), alt.value("#1b9e77")),
                    tooltip=[alt.Tooltip(c, title=label(c)) for c in df.columns])
            .properties(height=alt.Step(22)))


def top_words(df: pd.DataFrame, title: str) -> alt.Chart:
    """Horizontal bars of word counts (columns ``word``, ``count``), every word labelled."""
    return (alt.Chart(df, title=title).mark_bar()
            .encode(y=alt.Y("word:N", sort="-x", title=None, axis=alt.Axis(**BAND_AXIS)),
                    x=alt.X("count:Q", title="times used", axis=alt.Axis(tickCount=5, format=",d")),
                    tooltip=["word", "count"])
            .properties(height=alt.Step(20)))


def line(df: pd.DataFrame, x: str, y: str, title: str) -> alt.Chart:
    return (alt.Chart(df, title=title).mark_line(point=True)
            .encode(x=alt.X(f"{x}:O", title=label(x), axis=alt.Axis(labelAngle=0, **BAND_AXIS)),
                    y=alt.Y(f"{y}:Q", scale=alt.Scale(zero=False), title=label(y)),
                    tooltip=[alt.Tooltip(c, title=label(c)) for c in df.columns])
            .properties(height=240))


def bundle_bars(df: pd.DataFrame, metric: str, title: str) -> alt.Chart:
    """One metric for several bundles and decoding runs: a row per run (its label in full, however long), a bar per
    bundle within it."""
    return (alt.Chart(df).mark_bar()
            .encode(y=alt.Y("run:N", title=None, sort=run_order(df["run"]),
                            axis=alt.Axis(**{**BAND_AXIS, "labelLimit": 0})),
                    yOffset="bundle:N", x=alt.X(f"{metric}:Q", title=title),
                    color=alt.Color("bundle:N", title="bundle", legend=alt.Legend(orient="bottom", labelLimit=0)),
                    tooltip=[alt.Tooltip("bundle", title="bundle"), alt.Tooltip("run", title="decoding"),
                             alt.Tooltip(f"{metric}:Q", format=".4f", title=title)])
            .properties(height=alt.Step(14)))


def history(df: pd.DataFrame, x: str, title: str, y_title: str) -> alt.Chart:
    """Several series over epochs: long format with columns ``x``, ``series`` and ``value``."""
    return (alt.Chart(df, title=title).mark_line(point=True)
            .encode(x=alt.X(f"{x}:O", title=label(x), axis=alt.Axis(labelAngle=0, **BAND_AXIS)),
                    y=alt.Y("value:Q", scale=alt.Scale(zero=False), title=y_title),
                    color=alt.Color("series:N", title=None),
                    tooltip=[x, "series", alt.Tooltip("value:Q", format=".4f")])
            .properties(height=240))
