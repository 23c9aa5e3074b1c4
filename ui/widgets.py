"""Input widgets shared by the Caption and Compare pages."""
from __future__ import annotations

import base64
import hashlib
import io
import random
from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image

from captioning.decoding.options import DEFAULT_BEAM_WIDTH, OPTION
from captioning.evaluation.metrics import sentence_bleu_scores
from captioning.service.records import bundle_checksum
from captioning.vision.images import MAX_BYTES, SUPPORTED_TYPES, InvalidImageError, load_image

from .labels import human_caption, literal
from .state import decode_slot, get_dataset


@dataclass
class ChosenImage:
    image: Image.Image          # upright RGB, validated
    label: str
    flickr_name: str | None     # set when the image is a Flickr8k image (references available)
    digest: str                 # identifies the picture for caching its features


def choose_image(key: str) -> ChosenImage | None:
    """Upload or pick a test-split sample; returns the validated image or None (with a message shown)."""
    ds = get_dataset()
    sources = ["Upload a photo", "Sample from the test split"] if ds else ["Upload a photo"]
    mode = st.radio("Image", sources, horizontal=True, key=f"{key}_mode", label_visibility="collapsed")
    if mode == "Upload a photo":
        limit = f"{MAX_BYTES / 2**20:g} MB"
        # The widget's own limit is the app's, so its "Limit 20MB per file" says what the label says.
        upload = st.file_uploader(f"Drag and drop a photo (up to {limit})", type=list(SUPPORTED_TYPES),
                                  key=f"{key}_upload", max_upload_size=MAX_BYTES // 2**20,
                                  help=f"JPEG, PNG, WebP, BMP or GIF (first frame), up to {limit}.")
        if upload is None:
            st.caption("…or switch to *Sample from the test split* to try a Flickr8k photo."
                       if ds else "Flickr8k samples appear here once the dataset is available.")
            return None
        # The browser refuses a larger photo with its own message; this check holds for any other client.
        if upload.size > MAX_BYTES:
            st.error(f"**{literal(upload.name)}** is {upload.size / 2**20:.1f} MB: photos up to {limit} are "
                     "accepted. Use a smaller or more compressed image.", icon=":material/block:")
            return None
        data = upload.getvalue()
        try:
            with decode_slot():
                image = load_image(data)
        except InvalidImageError as exc:
            st.error(f"**{literal(upload.name)}**: {exc}", icon=":material/block:")
            return None
        name = upload.name if ds and upload.name in ds.captions else None
        return ChosenImage(image, upload.name, name, hashlib.sha256(data).hexdigest())

    names = ds.splits["test"]
    state_key = f"{key}_sample"
    if state_key not in st.session_state:
        st.session_state[state_key] = names[0]
    col_pick, col_random = st.columns([5, 1], vertical_alignment="bottom")
    if col_random.button(":material/casino: Random", key=f"{key}_random", width="stretch"):
        st.session_state[state_key] = random.choice(names)
    name = col_pick.selectbox("Test image", names, key=state_key,
                              format_func=lambda n: f"{n}  —  {ds.captions[n][0][:60].rstrip(' .')}")
    try:
        image = load_image(ds.image_path(name))
    except InvalidImageError as exc:
        st.error(f"{name}: {exc}. Check the Images/ folder of {ds.root}.")
        return None
    return ChosenImage(image, name, name, name)


def decoding_controls(key: str, default_beam: int = 1, allow_greedy: bool = True) -> dict:
    """Widgets for the decoding options (labels and ranges from captioning.decoding.options); returns DecodeConfig
    overrides."""
    cols = st.columns(4 if allow_greedy else 3)
    if allow_greedy:
        strategy = cols.pop(0).segmented_control("Decoding", ["Greedy", "Beam"], key=f"{key}_strategy",
                                                 default="Beam" if default_beam > 1 else "Greedy")
    else:
        strategy = "Beam"
    beam = strategy == "Beam"
    width, penalty, no_repeat = (OPTION[name] for name in ("beam_width", "length_penalty", "no_repeat_ngram_size"))
    width = cols[0].slider(width.label, *width.slider[:2], default_beam if default_beam > 1 else DEFAULT_BEAM_WIDTH,
                           width.slider[2], key=f"{key}_width", disabled=not beam)
    penalty = cols[1].slider(penalty.label, *penalty.slider[:2], penalty.default, penalty.slider[2], key=f"{key}_lp",
                             disabled=not beam, help=penalty.help)
    no_repeat = cols[2].slider(no_repeat.label, *no_repeat.slider[:2], no_repeat.default, no_repeat.slider[2],
                               key=f"{key}_nrng", help=no_repeat.help)
    return {"beam_width": width if beam else 1, "length_penalty": penalty, "no_repeat_ngram_size": no_repeat}


@st.cache_data(show_spinner=False, max_entries=64)
def cached_features(_captioner, bundle: str, digest: str, _image: Image.Image) -> np.ndarray:
    """Encoder features of one picture, computed once per bundle content (``bundle``: the checksum of its model
    files) and picture (in a decode slot)."""
    with decode_slot(show_wait=False):                  # no elements inside a cached function
        return _captioner.features(_image)


def photo_features(captioner, chosen: ChosenImage) -> np.ndarray:
    """The chosen picture's features for ``captioner``, cached by the bundle's content (the checksum of its model
    files), not its name, so a bundle retrained under the same name gets its own features; an ensemble's first
    decoder alone (the Caption page's first caption while the rest loads) reads fewer encoders: its own entry."""
    key = f"{bundle_checksum(captioner.bundle.manifest)}/{'first decoder' if captioner.quick_of else 'all decoders'}"
    return cached_features(captioner, key, chosen.digest, chosen.image)


def references_panel(name: str, words: list[str]) -> None:
    """The five human captions of a Flickr8k image and the caption's BLEU against them."""
    ds = get_dataset()
    refs = ds.references([name])[0]
    scores = sentence_bleu_scores(refs, words)
    cols = st.columns(4)
    for col, n in zip(cols, range(1, 5)):
        col.metric(f"BLEU-{n}", f"{scores[f'bleu_{n}']:.3f}")
    st.markdown("**Human captions**")
    st.markdown("\n".join(f"{i}. {literal(human_caption(c))}" for i, c in enumerate(ds.captions[name], 1)))


def attention_thumbnails(image: Image.Image, caption, size: int = 150) -> list[tuple[str, Image.Image]]:
    """One heat map per emitted word (words, then <end>), ``2 * size`` pixels wide, in the photo's aspect ratio.

    The maps are drawn square (the encoder's view) and then given back the photo's shape, so a landscape or
    portrait photo is not squashed. Empty when the decoder has no attention.
    """
    from captioning.models.visualize import attention_strip

    if caption.attention is None:
        return []
    words = caption.words + (["<end>"] if caption.finished else [])
    side = 2 * size                                        # drawn larger, shown at the column's width
    shape = (side, max(1, round(side * image.height / image.width)))
    return [(word, picture.resize(shape, Image.Resampling.LANCZOS))
            for word, picture in attention_strip(image, words, caption.attention[: len(words)], side)]


def attention_panel(image: Image.Image, caption, per_row: int = 6, size: int = 150) -> None:
    """A strip of small heat maps, one per emitted word: where the attention decoder looked."""
    strip = attention_thumbnails(image, caption, size)
    if not strip:
        return
    st.markdown("**Where the model looked, word by word**")
    for start in range(0, len(strip), per_row):
        for col, (word, picture) in zip(st.columns(per_row), strip[start:start + per_row]):
            col.image(picture, caption=word, width="stretch")


def thumbnail(source, size: int = 96) -> str | None:
    """A small JPEG of a photo (bytes or a path, read by the safe loader) as a data URL for a table's image column,
    or None when it cannot be read."""
    try:
        image = load_image(source)
    except InvalidImageError:
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
