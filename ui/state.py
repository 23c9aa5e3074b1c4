"""Cached loaders: the Captioner once per process (st.cache_resource), tables once per input (st.cache_data)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.bundle import BundleError, list_bundles, read_manifest
from captioning.data import ENV_VAR, DataError, Flickr8k, resolve_data_dir
from captioning.encoders import EncoderWeightsError
from captioning.text import tokenize

TRAIN_HINT = "python train.py --out artifacts/default"
DATA_HINT = (f"Set `{ENV_VAR}` to the folder holding `captions.txt` and the `Flickr_8k.*Images.txt` files "
             f"(e.g. `export {ENV_VAR}=../shared/flickr8k`), or fetch it with "
             f"`python train.py download --data-dir DIR`, then reload this page.")


def bundle_paths() -> list[Path]:
    return list_bundles()


def selected_bundle() -> Path | None:
    path = st.session_state.get("bundle_path")
    return Path(path) if path else None


def no_bundle_message() -> None:
    st.warning(f"No trained model found under `artifacts/`. Train one with `{TRAIN_HINT}` "
               f"(about 45 minutes with Xception), or `python train.py --limit 200 --encoder mobilenetv2 "
               f"--out artifacts/quick` for a 1-minute demo model.", icon=":material/model_training:")


@st.cache_resource(show_spinner="Loading the captioning model (first time only)…", max_entries=3)
def _captioner(path: str, mtime: float):
    from captioning.captioner import Captioner

    captioner = Captioner.from_bundle(path)
    captioner.warm_up()
    return captioner


def get_captioner():
    """The selected bundle's Captioner, or a clear message and st.stop()."""
    path = selected_bundle()
    if path is None:
        no_bundle_message()
        st.stop()
    try:
        return _captioner(str(path), (path / "manifest.json").stat().st_mtime)
    except (BundleError, EncoderWeightsError) as exc:
        st.error(str(exc), icon=":material/block:")
        st.stop()


@st.cache_data(show_spinner=False)
def bundle_manifest(path: str, mtime: float) -> dict | None:
    try:
        return read_manifest(path)
    except BundleError:
        return None


@st.cache_data(show_spinner="Reading evaluation results…")
def bundle_results(path: str, mtime: float) -> tuple[dict | None, pd.DataFrame | None]:
    folder = Path(path)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else None
    preds = pd.read_csv(folder / "predictions.csv", keep_default_na=False) \
        if (folder / "predictions.csv").is_file() else None
    return metrics, preds


def current_results():
    path = selected_bundle()
    if path is None:
        return None, None
    return bundle_results(str(path), (path / "manifest.json").stat().st_mtime)


def current_manifest() -> dict | None:
    path = selected_bundle()
    return bundle_manifest(str(path), (path / "manifest.json").stat().st_mtime) if path else None


@st.cache_resource(show_spinner="Reading Flickr8k…")
def _dataset(root: str) -> Flickr8k:
    return Flickr8k.load(root, check_images=False)


def get_dataset() -> Flickr8k | None:
    """The dataset from $FLICKR8K_DIR, or None (pages then say how to get it)."""
    try:
        return _dataset(str(resolve_data_dir()))
    except DataError:
        return None


def dataset_message() -> None:
    st.info(f"Flickr8k is not available here. {DATA_HINT}", icon=":material/folder_off:")


@st.cache_data(show_spinner="Indexing captions…")
def captions_table(root: str) -> pd.DataFrame:
    """One row per caption: image, split, caption, its tokens and length."""
    ds = _dataset(root)
    split_of = {n: s for s, names in ds.splits.items() for n in names}
    rows = [{"image": image, "split": split_of.get(image, "none"), "n": i, "caption": cap,
             "tokens": " ".join(tokenize(cap))}
            for image, caps in ds.captions.items() for i, cap in enumerate(caps)]
    df = pd.DataFrame(rows)
    df["length"] = df["tokens"].str.split().str.len()
    return df


@st.cache_data(show_spinner=False)
def references_for(root: str, images: tuple[str, ...]) -> list[list[list[str]]]:
    return _dataset(root).references(list(images))
