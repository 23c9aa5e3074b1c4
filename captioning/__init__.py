"""Image captioning core: Flickr8k -> ImageNet features -> LSTM decoder -> decoding -> metrics -> bundle.

No Streamlit in here: the app, ``train.py`` and ``python -m captioning`` are thin layers on top.
Heavy modules (TensorFlow) load lazily, so importing the package is cheap.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TensorFlow's C++ start-up chatter out of the UI

from .data import DataError, Flickr8k, resolve_data_dir  # noqa: E402
from .images import InvalidImageError, load_image  # noqa: E402
from .text import Vocabulary, tokenize  # noqa: E402

__all__ = ["DataError", "Flickr8k", "resolve_data_dir", "InvalidImageError", "load_image", "Vocabulary",
           "tokenize", "Captioner", "load_bundle", "BundleError", "DecodeConfig", "Caption"]


def __getattr__(name):
    # Lazy exports so `import captioning` does not import TensorFlow.
    if name == "Captioner":
        from .captioner import Captioner
        return Captioner
    if name in ("load_bundle", "BundleError"):
        from . import bundle
        return getattr(bundle, name)
    if name in ("DecodeConfig", "Caption"):
        from . import decoding
        return getattr(decoding, name)
    raise AttributeError(f"module 'captioning' has no attribute {name!r}")
