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
    # What the Caption page's first run imports (about 0.5 s), now: a visitor who opens the page a few seconds after
    # the start would otherwise import it while TensorFlow is being imported in the warm-up thread, both slower.
    import ui.charts, ui.lab, ui.labels, ui.memory, ui.trust, ui.widgets  # noqa: E401, F401, I001
    cli.main(["run", str(ROOT / "streamlit_app.py"), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
