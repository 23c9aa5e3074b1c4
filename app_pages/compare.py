"""Compare page, the decoding lab: 2-4 decoding strategies side by side on one photo, then every strategy's
quality and diversity over the test split (read from the bundle's metrics.json, nothing recomputed)."""
import streamlit as st

from ui.charts import word_probabilities
from ui.lab import (
    PRESETS,
    choose_shared_photo,
    quality_diversity_chart,
    results_frame,
    show_captions,
    strategy_picker,
    strategy_table,
)
from ui.labels import human_caption, literal
from ui.state import current_results, decode_slot, get_captioner, get_dataset
from ui.trust import assess_caption, trust_line
from ui.widgets import attention_panel, choose_image, photo_features

DEFAULTS = ["Beam 5", "Sample, top-p 0.9", "Diverse, 3 groups", "Greedy"]


@st.cache_resource(show_spinner="Counting n-grams of the training captions…")
def cider_scorer(root: str):
    """CIDEr-D with the training split's document frequencies (what SCST optimises), for one photo at a time."""
    from captioning.evaluation.metrics import CiderD

    ds = get_dataset()
    return CiderD(ds.references(ds.splits["train"]))


st.title("Decoding lab")
st.caption("The same model, different ways to turn its next-word probabilities into captions. Greedy and beam "
           "search look for the likeliest caption; sampling draws captions (temperature, top-k and top-p shape what "
           "it may draw); diverse beam search splits the beams into groups that are pushed apart.")
chosen = choose_shared_photo("compare", choose_image)
count = st.segmented_control("Strategies side by side", [2, 3, 4], default=3, key="lab_count") or 3

captioner = get_captioner()
max_length = captioner.default_config.max_length
columns = st.columns(count, gap="medium")
configs = []
for slot, col in enumerate(columns):
    with col:
        configs.append(strategy_picker(slot, DEFAULTS[slot] if DEFAULTS[slot] in PRESETS else "Greedy", max_length))

if chosen is not None:
    features = photo_features(captioner, chosen)
    left, right = st.columns([1, 3])
    left.image(chosen.image, caption=literal(chosen.label), width="stretch")
    badge = right.container()                  # the trust level, filled once the first caption is decoded
    references, scorer = None, None
    if chosen.flickr_name and get_dataset() is not None:
        ds = get_dataset()
        references = ds.references([chosen.flickr_name])[0]
        scorer = cider_scorer(str(ds.root))
        right.markdown("**Human captions** (what BLEU-4 and CIDEr-D compare against)\n\n" +
                       "\n".join(f"{i}. {literal(human_caption(c))}"
                                 for i, c in enumerate(ds.captions[chosen.flickr_name], 1)))
    assessed = False
    for col, config in zip(st.columns(count, gap="medium"), configs):
        with col:
            if config is None:
                continue
            label = config.describe()
            st.subheader(label[0].upper() + label[1:])
            with decode_slot():
                captions = captioner.decode(features, config)[0]
            if not assessed:                   # how far to trust any caption of this photo, as on the Caption page
                with badge:
                    trust_line(assess_caption(captioner, features, captions[0]), captioner.bundle.path,
                               neighbours_below=False)
                assessed = True
            show_captions(captions, scorer, references)
            with st.expander("Word by word: probabilities and attention"):
                st.altair_chart(word_probabilities(captions[0], "The first caption", horizontal=True),
                                width="stretch")
                if captions[0].attention is None:
                    st.caption(captioner.attention_note or "No attention maps for this caption.")
                attention_panel(chosen.image, captions[0], per_row=4, size=110)

st.divider()
st.header("Across the test split")
report, problem = current_results()
frame = results_frame(report)
if problem:
    st.warning(f"This bundle's evaluation could not be read ({problem}). Re-evaluate it with "
               f"`python train.py evaluate --out {captioner.bundle.path}`.", icon=":material/report:")
elif frame.empty or "distinct_captions" not in frame:
    bundle = captioner.bundle.path
    st.info("This bundle's evaluation has no diversity scores yet. Score strategies with "
            f"`python train.py evaluate --out {bundle} --decode greedy beam:5 sample:temperature=0.7,top_p=0.9,n=5 "
            "diverse:beams=6,groups=3,penalty=0.5,n=5`.", icon=":material/insights:")
else:
    split, n_images = frame["split"].iloc[0], int(frame["n_images"].iloc[0])
    st.caption(f"{split.capitalize()} split, {n_images:,} photos, from the bundle's evaluation. Quality is scored "
               "on each photo's first caption. Distinct captions: share of photos whose caption no other photo got; "
               "novel: captions not found among the training captions; self-BLEU-4 (lower = more varied) and "
               "oracle CIDEr-D (the best of a photo's captions) need several captions per photo.")
    axis = st.segmented_control("Diversity measure", ["distinct_captions", "vocab_used", "distinct_2"],
                                default="distinct_captions", key="lab_axis",
                                format_func={"distinct_captions": "Distinct captions", "vocab_used": "Words used",
                                             "distinct_2": "Distinct-2"}.get) or "distinct_captions"
    st.altair_chart(quality_diversity_chart(frame, axis), width="stretch")
    st.table(strategy_table(frame).set_index("Decoding"))
