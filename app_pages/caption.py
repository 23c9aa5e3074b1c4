"""Caption page: one photo in, its caption out, with timing and (for Flickr8k photos) references and BLEU."""
import time

import streamlit as st

from ui.charts import word_probabilities
from ui.lab import remember_photo
from ui.labels import literal, model_knows, quick_note, sentence
from ui.memory import caption_memory, highlighted_caption, memory_used
from ui.state import current_manifest, decode_slot, get_captioner, still_loading, wait_for_whole
from ui.trust import assess_caption, neighbour_strip, trust_line
from ui.widgets import attention_panel, choose_image, decoding_controls, photo_features, references_panel

DECODING_HELP = ("consensus k, w: the beam's captions re-ranked by how well they agree with what people wrote about "
                 "the k most similar training photos, plus w times the model's own score for each")

st.title("Caption a photo")
knows = model_knows(current_manifest())
if knows:
    st.caption(f":material/info: {knows}")
chosen = choose_image("caption")
remember_photo(chosen)                                   # the Compare page starts from the same photo
options = decoding_controls("caption", default_beam=5)   # beam 5: .006 dev CIDEr-D behind beam 10 at half its cost

# Widgets first so the page is usable at once. The model loads in the background from the server's start: with no
# photo yet the page does not wait for it, and an ensemble still loading captions first with its own decoder alone.
if chosen is None:
    if still_loading():
        st.caption(":material/hourglass_top: The captioning model is still loading in the background; choose a "
                   "photo meanwhile.")
    else:
        get_captioner()                                  # a missing or broken bundle is said at once
    st.stop()
captioner = get_captioner(quick=True)
left, right = st.columns([2, 3], gap="large")
left.image(chosen.image, caption=literal(chosen.label), width="stretch")
start = time.perf_counter()
features = photo_features(captioner, chosen)
memory = caption_memory(captioner)                       # "Your photos": None while none is remembered
use = None
with decode_slot():
    if memory is None:
        best = captioner.decode(features, **options)[0][0]
    else:
        decoded, uses = memory.decode(captioner, features, captioner.config(**options))
        best, use = decoded[0][0], uses[0]
seconds = time.perf_counter() - start
trust = assess_caption(captioner, features, best)
with right:
    if use is not None and use.copied_words:
        st.markdown(f"### “{highlighted_caption(best.text, use.copied_words)}”")
    else:
        st.markdown(f"### “{sentence(best.text)}”")
    if captioner.quick_of:
        st.info(quick_note(captioner), icon=":material/hourglass_top:")
    trust_line(trust, captioner.bundle.path)
    label = captioner.config(**options).describe()       # labels come only from describe()
    m1, m2, m3 = st.columns(3)
    search, _, extras = label.partition(" (")            # "beam 5 (consensus 10, w 1.5)": the rest under it
    m1.metric("Decoding", search, help=f"{label}: {DECODING_HELP}" if extras else None)
    if extras:
        m1.caption(f"+ {extras.rstrip(')')}")
    m2.metric("Time", f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s",
              help="encoder + decoder, from image to caption")
    m3.metric("Mean log p", f"{best.normalized_log_prob:.2f}", help="per emitted token; closer to 0 = surer")
    memory_used(captioner, use)
    neighbour_strip(trust)
    st.altair_chart(word_probabilities(best, "How sure the model was of each word"), width="stretch")
    attention_panel(chosen.image, best)
    if chosen.flickr_name:
        references_panel(chosen.flickr_name, best.words)
if captioner.quick_of:           # the rest of the ensemble: wait for it, then caption again with all of it
    wait_for_whole(captioner)
