"""The app shell: the page list, and the hand-over when Streamlit runs a page script without it.

Streamlit keeps its old multipage mode ("run ``pages/<name>.py`` on its own") for a server process until the
entry script has called ``st.navigation`` once. So when a fresh server's very first request is a deep link
such as ``/compare``, the page would run without the sidebar (no bundle choice, hence "no model"), and
would keep doing so for every later visitor. Each page calls :func:`require_shell` first: if the entry
script has not run in this session, it registers the navigation and reruns, which lands on the same page
through ``streamlit_app.py``.
"""
from __future__ import annotations

import streamlit as st

SHELL_KEY = "_app_shell_ran"

PAGES = (  # (script, title, icon, default)
    ("pages/caption.py", "Caption", ":material/edit_note:", True),
    ("pages/batch.py", "Batch", ":material/burst_mode:", False),
    ("pages/compare.py", "Compare decoding", ":material/compare:", False),
    ("pages/evaluation.py", "Evaluation", ":material/monitoring:", False),
    ("pages/dataset.py", "Dataset", ":material/photo_library:", False),
    ("pages/train.py", "Train", ":material/model_training:", False),
    ("pages/memory.py", "Your photos", ":material/photo_library:", False),
)


def app_pages() -> list:
    return [st.Page(script, title=title, icon=icon, default=default) for script, title, icon, default in PAGES]


def mark_shell() -> None:
    """Called by streamlit_app.py on every run."""
    st.session_state[SHELL_KEY] = True


def require_shell() -> None:
    """Hand a page run that bypassed streamlit_app.py over to it (see the module docstring)."""
    if not st.session_state.get(SHELL_KEY):
        st.navigation(app_pages(), position="hidden")   # switches the server to st.navigation for good
        st.rerun()
