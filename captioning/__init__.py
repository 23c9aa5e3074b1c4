"""Image captioning core: Flickr8k -> ImageNet features -> LSTM decoder -> decoding -> metrics -> bundle.

No Streamlit in here: the app, ``train.py`` and ``python -m captioning`` are thin layers on top. The folders follow
the data: ``data/`` -> ``vision/`` -> ``models/`` -> ``decoding/`` -> ``evaluation/`` -> ``artifacts/`` -> ``service/``
(with ``training/`` building bundles and ``publish/`` writing captions into photos). Callers import from the module
that defines a name; this package imports nothing heavy, so ``import captioning`` stays cheap (no TensorFlow).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TensorFlow's C++ start-up chatter out of the UI


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines kept off stderr, for the command lines' one-line errors.

    TensorFlow 2.21 logs through absl before absl is initialised, which ignores ``TF_CPP_MIN_LOG_LEVEL``: on CPUs
    where oneDNN is on it prints "WARNING: All log messages before absl::InitializeLog() ..." and an "oneDNN
    custom operations are on" line per library. Only the import is silenced (the file descriptor, as those lines
    come from C++); a failing import still raises, and everything after it reaches stderr as usual.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
