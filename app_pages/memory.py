"""Your photos: captioned photos the model remembers, so photos like them are described with your words at once,
without training."""
import streamlit as st

from ui.memory import add_from_zip, bank, photo_list
from ui.state import get_captioner

st.title("Your photos")
st.caption("Photos you captioned yourself. When you caption a photo like one of them, the model reads what you "
           "wrote and prefers your words, at once, with no training. They are kept on this server and used by "
           "every model of the same image encoder; remove any of them below.")
captioner = get_captioner()
add_from_zip(captioner)
st.divider()
photo_list(captioner)
st.caption(f"Stored in {bank(captioner).folder}")
