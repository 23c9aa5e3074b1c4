"""What people read on screen: human names for the core's field names, one caption style, user text made literal.

Every table and chart goes through :func:`label` / :func:`human_columns`, so a raw field name such as
``bleu_1`` or ``kendall_tau`` never reaches the screen.
"""
from __future__ import annotations

import re

import pandas as pd

from captioning.artifacts.manifest import Manifest

LABELS = {
    # corpus and per-image metrics
    **{f"bleu_{n}": f"BLEU-{n}" for n in range(1, 5)},
    **{f"coco_bleu_{n}": f"coco BLEU-{n}" for n in range(1, 5)},
    "cider": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR", "spice": "SPICE",
    "mean_length": "Mean words", "vocabulary_used": "Words used", "decode_seconds": "Decoding time (s)",
    "kendall_tau": "Kendall's τ", "implementation": "Implementation", "metric": "Metric",
    # decoding
    "run": "Decoding", "decoding": "Decoding", "beam_width": "Beam width", "length_penalty": "Length penalty",
    "no_repeat_ngram_size": "No-repeat n-gram", "log_prob": "Log p", "score": "Score",
    "normalized_log_prob": "Mean log p",
    # tables
    "image": "Image", "caption": "Caption", "length": "Words", "split": "Split", "n_images": "Images",
    "bundle": "Bundle", "difference": "Difference", "word": "Word", "count": "Count",
}


def label(field: str) -> str:
    """The on-screen name of a field (unknown fields: underscores become spaces, first letter capitalised)."""
    return LABELS.get(field) or field.replace("_", " ")[:1].upper() + field.replace("_", " ")[1:]


def human_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The same table with human column names (for st.dataframe and Altair titles)."""
    return frame.rename(columns={c: label(c) for c in frame.columns})


def sentence(text: str) -> str:
    """A generated caption as people write it: first letter capitalised, ending in a full stop."""
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


_SPACE_BEFORE = re.compile(r"\s+([,.;:!?]|'s\b|n't\b)")


def human_caption(text: str) -> str:
    """A Flickr8k reference as people write it: the dataset's tokenized spacing (" ." / " , " / " 's") undone,
    then :func:`sentence`."""
    return sentence(_SPACE_BEFORE.sub(r"\1", text.strip()).rstrip(" ."))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")


def literal(text: str) -> str:
    """User-given text (file names, search words) escaped so Markdown shows it as typed: no links, bold,
    LaTeX ($), colour or icon directives (:red[...], :material/...:), HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


# What each training set's photos show: where a model trained on it will do well, and where it will guess.
DATASET_SCENES = {
    "flickr8k": "everyday scenes from Flickr, mostly people and dogs outdoors",
    "flickr30k": "everyday scenes from Flickr, mostly people at work and play",
    "coco": "everyday scenes of 80 common kinds of objects, people, animals and vehicles",
}
DATASET_NAMES = {"flickr8k": "Flickr8k", "flickr30k": "Flickr30k", "coco": "COCO"}


def model_knows(manifest: Manifest | None) -> str | None:
    """One sentence on what a bundle's model has seen, from its manifest (None when the manifest does not say)."""
    if manifest is None:
        return None
    train = manifest.train_images
    dataset = str(manifest.data.get("dataset") or "")
    if not isinstance(train, int):
        return None
    name = DATASET_NAMES.get(dataset.lower(), dataset or "its training set")
    scenes = DATASET_SCENES.get(dataset.lower())
    words = manifest.vocab_size
    return (f"Trained on {train:,} {name} photos" + (f" ({scenes})" if scenes else "")
            + (f" and a vocabulary of {words:,} words" if isinstance(words, int) else "")
            + ": it describes photos like those best; anything else gets its closest guess in those terms.")


def quick_note(captioner) -> str:
    """What the Caption page says under a caption from an ensemble's first decoder alone (``quick_of`` set)."""
    encoder = captioner.bundle.encoder.label
    kind = getattr(captioner.bundle.manifest.decoder, "kind", None) or "LSTM"
    others = captioner.quick_of - 1
    return (f"A first caption from one of the ensemble's {captioner.quick_of} models ({encoder} + {kind} LSTM) "
            f"while the other {others} finish loading: the whole ensemble's caption replaces it here in a moment.")
