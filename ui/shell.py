"""The app shell: the page list ``streamlit_app.py`` hands to ``st.navigation``.

The page scripts live in ``app_pages/``, a folder Streamlit does not discover on its own (its legacy multipage
mode only looks at ``pages/``), so every request, deep links such as ``/compare`` included, runs through
``streamlit_app.py``: the sidebar, the bundle choice and the navigation are always there.
"""
from __future__ import annotations

import streamlit as st

PAGES = (  # (script, title, icon, default)
    ("app_pages/caption.py", "Caption", ":material/edit_note:", True),
    ("app_pages/batch.py", "Batch", ":material/burst_mode:", False),
    ("app_pages/compare.py", "Compare decoding", ":material/compare:", False),
    ("app_pages/evaluation.py", "Evaluation", ":material/monitoring:", False),
    ("app_pages/dataset.py", "Dataset", ":material/photo_library:", False),
    ("app_pages/train.py", "Train", ":material/model_training:", False),
    ("app_pages/memory.py", "Your photos", ":material/bookmarks:", False),
)


def app_pages() -> list:
    return [st.Page(script, title=title, icon=icon, default=default) for script, title, icon, default in PAGES]
