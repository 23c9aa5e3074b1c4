"""Image captioning core: Flickr8k -> ImageNet features -> LSTM decoder -> decoding -> metrics -> bundle.

No Streamlit in here: the app, ``train.py`` and ``python -m captioning`` are thin layers on top.
Heavy modules (TensorFlow) load lazily, so importing the package is cheap.
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

from .data import DataError, Flickr8k, resolve_data_dir  # noqa: E402
from .images import MAX_BYTES, SUPPORTED_TYPES, InvalidImageError, load_image  # noqa: E402
from .text import Vocabulary, tokenize  # noqa: E402

# The facade: what the app's pages (and other callers) need, by name; heavy modules load on first use.
_LAZY = {
    "Captioner": "captioner",
    "load_bundle": "bundle", "BundleError": "bundle", "Manifest": "manifest", "EvaluationReport": "manifest",
    "DecodeConfig": "decoding", "Caption": "decoding",
    "caption_uploads": "batch", "expand_uploads": "batch", "records_text": "batch", "to_record": "batch",
    "reference_agreement": "metrics", "word_usage": "metrics",
    "CiderD": "metrics",
    "html_snippets": "alttext", "markdown_list": "alttext", "captions_zip": "exports", "zip_summary": "exports",
    "SIDECAR_NAMES": "metadata", "EXIFTOOL_INSTALL_HINT": "exiftool", "exiftool_available": "exiftool",
    "JobQueue": "jobs", "JobError": "jobs", "DuplicateJob": "jobs", "read_progress": "jobs", "jobs_dir": "jobs",
    "dataset_from_zip": "batch",
    "FinetuneSettings": "train_jobs", "ImportCheckError": "train_jobs", "import_check": "train_jobs",
    "start_finetune": "train_jobs", "default_name": "train_jobs", "check_name": "train_jobs",
}

__all__ = ["DataError", "Flickr8k", "resolve_data_dir", "MAX_BYTES", "SUPPORTED_TYPES", "InvalidImageError",
           "load_image", "Vocabulary", "tokenize", *_LAZY]


def __getattr__(name):
    # Lazy exports so `import captioning` does not import TensorFlow.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'captioning' has no attribute {name!r}")
