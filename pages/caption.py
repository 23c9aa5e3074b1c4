"""Caption page: one photo in, its caption out, with timing and (for Flickr8k photos) references and BLEU."""
import time

import streamlit as st

from ui.charts import word_probabilities
from ui.lab import remember_photo
from ui.labels import literal, model_knows, sentence
from ui.memory import caption_memory, highlighted_caption, memory_used
from ui.shell import require_shell
from ui.state import current_manifest, decode_slot, get_captioner
from ui.trust import assess_caption, neighbour_strip, trust_line
from ui.widgets import attention_panel, cached_features, choose_image, decoding_controls, references_panel

require_shell()
st.title("Caption a photo")
knows = model_knows(current_manifest())
if knows:
    st.caption(f":material/info: {knows}")
chosen = choose_image("caption")
remember_photo(chosen)                                   # the Compare page starts from the same photo
options = decoding_controls("caption", default_beam=5)   # beam 5: .006 dev CIDEr-D behind beam 10 at half its cost

# Widgets first so the page is usable at once; the model loads (once per process) while a photo is chosen.
captioner = get_captioner()
if chosen is not None:
    left, right = st.columns([2, 3], gap="large")
    left.image(chosen.image, caption=literal(chosen.label), width="stretch")
    start = time.perf_counter()
    features = cached_features(captioner, captioner.bundle.name, chosen.digest, chosen.image)
    memory = caption_memory(captioner)                   # "Your photos": None while none is remembered
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
        trust_line(trust, captioner.bundle.path)
        label = captioner.config(**options).describe()       # labels come only from describe()
        m1, m2, m3 = st.columns(3)
        m1.metric("Decoding", label)
        m2.metric("Time", f"{seconds * 1000:.0f} ms", help="encoder + decoder, from image to caption")
        m3.metric("Mean log p", f"{best.normalized_log_prob:.2f}", help="per emitted token; closer to 0 = surer")
        memory_used(captioner, use)
        neighbour_strip(trust)
        st.altair_chart(word_probabilities(best, "How sure the model was of each word"), width="stretch")
        attention_panel(chosen.image, best)
        if chosen.flickr_name:
            references_panel(chosen.flickr_name, best.words)
