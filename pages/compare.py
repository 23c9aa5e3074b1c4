"""Compare page: greedy vs beam for one photo, the beam's n-best list, and a sweep over beam widths."""
import pandas as pd
import streamlit as st

from ui.charts import line, word_probabilities
from ui.labels import literal, sentence
from ui.shell import require_shell
from ui.state import get_captioner
from ui.widgets import attention_panel, cached_features, choose_image, decoding_controls, references_panel

require_shell()
st.title("Compare decoding")
st.caption("Greedy takes the likeliest word at every step; beam search keeps the K best partial captions "
           "and returns the best finished one (score = Σ log p / length^penalty).")
chosen = choose_image("compare")
options = decoding_controls("compare", default_beam=5, allow_greedy=False)

# Widgets first so the page is usable at once; the model loads (once per process) while a photo is chosen.
captioner = get_captioner()
if chosen is not None:
    features = cached_features(captioner, captioner.bundle.name, chosen.digest, chosen.image)
    st.image(chosen.image, caption=literal(chosen.label), width=300)
    greedy = captioner.decode(features, **{**options, "beam_width": 1})[0][0]
    nbest = captioner.decode(features, **options, num_return_sequences=options["beam_width"])[0]
    beam = nbest[0]
    for col, (title, cap) in zip(st.columns(2, gap="large"),
                                 (("Greedy", greedy), (f"Beam {options['beam_width']}", beam))):
        with col:
            st.subheader(title)
            st.markdown(f"**{sentence(cap.text)}**")
            a, b = st.columns(2)
            a.metric("log p", f"{cap.log_prob:.2f}")
            b.metric("mean log p", f"{cap.normalized_log_prob:.2f}")
            st.altair_chart(word_probabilities(cap, "How sure the model was of each word"), width="stretch")
            attention_panel(chosen.image, cap, per_row=4, size=120)

    st.subheader("Beam n-best list")
    st.dataframe(pd.DataFrame([{"rank": i, "caption": sentence(c.text), "score": round(c.score, 3),
                                "log p": round(c.log_prob, 3), "words": len(c.words), "finished": c.finished}
                               for i, c in enumerate(nbest, 1)]), hide_index=True, width="stretch")

    st.subheader("Beam-width sweep")
    rows = []
    for width in range(1, 11):
        cap = captioner.decode(features, **{**options, "beam_width": width})[0][0]
        rows.append({"beam width": width, "caption": sentence(cap.text), "score": round(cap.score, 4),
                     "log p": round(cap.log_prob, 3), "words": len(cap.words)})
    sweep = pd.DataFrame(rows)
    left, right = st.columns([3, 2])
    left.dataframe(sweep, hide_index=True, width="stretch")
    right.altair_chart(line(sweep, "beam width", "score", "Best caption's score by beam width"),
                       width="stretch")
    if chosen.flickr_name:
        with st.expander("References and BLEU of the beam caption"):
            references_panel(chosen.flickr_name, beam.words)
