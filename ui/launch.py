"""Start the app with the default model already loading: ``python -m ui.launch [streamlit run options]``.

What ``make app`` runs. It is ``streamlit run streamlit_app.py`` in this same process, with one addition: the
default bundle's Captioner starts loading and warming in a background thread at once (ui.state.warm_in_background),
so a person who opens the page a few seconds later finds the model ready instead of waiting behind a spinner.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    from streamlit.web import cli

    import captioning  # noqa: F401  (quiet TensorFlow logs before anything loads it)
    from ui.state import warm_in_background

    warm_in_background()
    cli.main(["run", str(ROOT / "streamlit_app.py"), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
