"""Streamlit helpers shared by the pages: cached loaders, input widgets, charts. The core stays in captioning/."""
