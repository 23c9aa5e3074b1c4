"""How far to trust a caption: its in-domain level, the nearest training photos, and the calibration chart."""
from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from captioning.evaluation.trust import (
    LEVEL_TEXT,
    LEVELS,
    Assessment,
    IndexFileError,
    calibration_bins,
    read_calibration,
)

from .labels import human_caption, literal
from .state import get_dataset

STYLE = {  # level -> (colour, icon, label)
    "familiar": ("green", ":material/verified:", "Familiar photo"),
    "unusual": ("orange", ":material/help:", "Unusual photo"),
    "unfamiliar": ("red", ":material/warning:", "Unfamiliar photo"),
}
COLOURS = {"familiar": "#1b9e77", "unusual": "#e6ab02", "unfamiliar": "#d95f02"}


def assess_caption(captioner, features, caption, k: int = 5) -> Assessment | None:
    """The caption's Assessment (k nearest training photos), or None when the bundle has no index."""
    if not captioner.can_assess:
        return None
    return captioner.assess(features, [caption], neighbours=k)[0]


def _confidence(assessment: Assessment) -> str:
    """The caption's own confidence, as its own number beside the photo's level."""
    if assessment.caption_confidence is None:
        return ""
    return f" · caption confidence {assessment.caption_confidence:.2f}"


def trust_line(assessment: Assessment | None, bundle_path, neighbours_below: bool = True) -> None:
    """The level as a coloured badge beside the caption with the in-domain score as the assessment gives it, and
    what the level means (for an unfamiliar photo in one warning box, so the page says it once)."""
    if assessment is None:
        st.caption(f"No nearest-photo index in this bundle, so no trust level. Add one with "
                   f"`python train.py index --out {bundle_path}`.")
        return
    if assessment.level is None:
        st.caption(f"In-domain score {assessment.in_domain:.2f}{_confidence(assessment)} (not calibrated: run "
                   f"`python train.py index --out {bundle_path}`).")
        return
    colour, icon, label = STYLE[assessment.level]
    badge = f":{colour}-badge[{icon} {label}] &nbsp; in-domain score **{assessment.in_domain:.2f}**"
    meaning = ("In-domain score (0 to 1): how similar this photo is to its nearest training photos; the "
               "level depends on the photo only, not on how the caption was decoded. Caption confidence "
               "(0 to 1): the model's mean word probability for this caption; it changes with the decoding.")
    if assessment.level != "unfamiliar":
        st.markdown(f"{badge} · {LEVEL_TEXT[assessment.level]}{_confidence(assessment)}", help=meaning)
        return
    st.markdown(f"{badge}{_confidence(assessment)}", help=meaning)
    st.warning("**The caption may well be wrong.** The model only knows the scenes of its training photos (mostly "
               "people and dogs, outdoors), and this photo is unlike all of them"
               + ("; the most similar ones are below." if neighbours_below else "."), icon=":material/warning:")


def neighbour_strip(assessment: Assessment | None) -> None:
    """Thumbnails of the most similar training photos with one of their human captions (names without Flickr8k)."""
    if assessment is None or not assessment.neighbours:
        return
    ds = get_dataset()
    st.markdown("**Most similar training photos** — what the model has seen that looks most like this")
    for col, n in zip(st.columns(len(assessment.neighbours)), assessment.neighbours):
        text = n.captions[0] if n.captions else ""
        with col:
            if ds is not None and ds.image_path(n.name).is_file():
                st.image(str(ds.image_path(n.name)), width="stretch")
            else:
                st.markdown(f"`{n.name}`")
            st.caption(f"similarity {n.similarity:.2f} · {literal(human_caption(text))}")


@st.cache_data(show_spinner=False)
def _calibration(path: str, mtime: float):
    try:
        return read_calibration(path)
    except IndexFileError as exc:
        return str(exc)


def calibration_section(path: Path) -> None:
    """Evaluation page: do the levels mean something? Test-split score bins against mean CIDEr-D."""
    st.subheader("When to trust a caption", anchor="trust")
    calibration = _calibration(str(path), (path / "manifest.json").stat().st_mtime)
    if calibration is None or isinstance(calibration, str):
        problem = f" ({calibration})" if isinstance(calibration, str) else ""
        st.info(f"No calibrated nearest-photo index in this bundle{problem}. Build it with "
                f"`python train.py index --out {path}`.", icon=":material/travel_explore:")
        return
    report = calibration.report
    test = report.get("test") or {}
    spear = report.get("spearman", {})
    st.caption(f"In-domain score (0 to 1): how similar a photo is to its nearest training photos, the same "
               f"whatever decoding wrote the caption. Levels: {calibration.rule}. Thresholds come from the dev "
               f"split ({report.get('dev_images', '?')} photos); the chart shows the test split, captions by "
               f"{report.get('decoding', 'beam search')}.")
    rows = []
    for level in LEVELS:
        dev, tst = report.get("dev_levels", {}).get(level, {}), report.get("test_levels", {}).get(level, {})
        rows.append({"Level": STYLE[level][2], "Test photos": _count(tst.get("count")),
                     "Test mean CIDEr-D": _number(tst.get("mean_cider")), "Dev photos": _count(dev.get("count")),
                     "Dev mean CIDEr-D": _number(dev.get("mean_cider"))})
    left, right = st.columns([2, 3])
    with left:
        st.table(pd.DataFrame(rows).set_index("Level"))
        st.markdown(f"Unfamiliar below **{calibration.unfamiliar_below:.2f}**, familiar from "
                    f"**{calibration.familiar_from:.2f}**.")
        if "in_domain" in spear and "caption_confidence" in spear:
            st.caption(f"How well each number ranks the dev captions' quality (Spearman rank correlation with "
                       f"per-image CIDEr-D, 1 = the same order): in-domain score {spear['in_domain']:.2f}, caption "
                       f"confidence {spear['caption_confidence']:.2f}. The caption confidence is shown beside each "
                       f"caption as its own number; it is not part of the level.")
    if test.get("score") and test.get("cider"):
        right.altair_chart(calibration_chart(test["score"], test["cider"], calibration), width="stretch")


def _number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _count(value) -> str:
    return "–" if value is None else f"{int(value):,}"


def calibration_chart(scores, cider, calibration, bins: int = 10) -> alt.Chart:
    """Equal-count score bins (bar = the bin's score range) against their mean CIDEr-D, thresholds marked.

    No number on each bar (bins can be a few pixels wide, where numbers print over each other: the tooltip has
    it), and the score axis ends at 1 when the scores are similarities (at most 1).
    """
    frame = pd.DataFrame(calibration_bins(scores, cider, bins))
    frame["level"] = [STYLE[calibration.level(m)][2] for m in frame["mid"]]
    low = min(float(frame["low"].min()), calibration.unfamiliar_below)
    high = max(float(frame["high"].max()), calibration.familiar_from)
    span = max(high - low, 1e-6)
    domain = [low - 0.03 * span, high + 0.03 * span]
    if high <= 1.0:
        domain[1] = min(domain[1], 1.0)
    x = alt.X("low:Q", title="in-domain score (equal-count bins of test photos)",
              scale=alt.Scale(domain=domain, nice=False, zero=False), axis=alt.Axis(format=".2f"))
    names = [STYLE[lv][2] for lv in LEVELS]
    colour = alt.Color("level:N", title="Level", scale=alt.Scale(domain=names, range=[COLOURS[lv] for lv in LEVELS]),
                       legend=alt.Legend(orient="bottom"))
    bars = (alt.Chart(frame).mark_bar(opacity=0.85, stroke="white")
            .encode(x=x, x2="high:Q", y=alt.Y("mean_cider:Q", title="mean CIDEr-D", axis=alt.Axis(format=".2f")),
                    y2=alt.datum(0),          # from zero: a bar ranged in x is otherwise a thin line at its y
                    color=colour,
                    tooltip=[alt.Tooltip("low:Q", format=".2f", title="score from"),
                             alt.Tooltip("high:Q", format=".2f", title="score to"),
                             alt.Tooltip("mean_cider:Q", format=".2f", title="mean CIDEr-D"),
                             alt.Tooltip("count:Q", title="photos"), alt.Tooltip("level:N", title="Level")]))
    marks = pd.DataFrame({"score": [calibration.unfamiliar_below, calibration.familiar_from],
                          "what": ["unfamiliar below", "familiar from"]})
    rules = alt.Chart(marks).mark_rule(strokeDash=[5, 3], color="black").encode(
        x="score:Q", tooltip=[alt.Tooltip("what:N", title="threshold"), alt.Tooltip("score:Q", format=".2f")])
    # The two labels point away from each other (left of the lower threshold, right of the upper), so close
    # thresholds never print one label over the other.
    # At the top of the plot (y=8 px), not shifted up from its middle: a label pushed outside the plot made
    # Vega's fit-to-width layout shrink the plot to a strip of flat bars.
    lower = (alt.Chart(marks.iloc[[0]]).mark_text(align="right", dx=-4, color="black")
             .encode(x="score:Q", y=alt.value(8), text="what:N"))
    upper = (alt.Chart(marks.iloc[[1]]).mark_text(align="left", dx=4, color="black")
             .encode(x="score:Q", y=alt.value(8), text="what:N"))
    return (bars + rules + lower + upper).properties(height=300,
                                                     title="Test split: mean CIDEr-D by in-domain score")
