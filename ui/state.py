"""Cached loaders: the Captioner once per process (st.cache_resource), tables once per input (st.cache_data).

The default bundle's Captioner is loaded and warmed in a background thread as soon as the server process starts
(``python -m ui.launch``, what ``make app`` runs) or, under a plain ``streamlit run``, when the first visitor
arrives: :func:`warm_in_background` starts it once per process and :func:`_captioner` (the st.cache_resource
loader) hands its result over, so the first person to upload a photo gets the already-warm model.

:data:`DECODE_SLOTS` lets only a few sessions decode and caption uploads at once; see :func:`decode_slot`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.bundle import ARTIFACTS_ENV, BundleError, artifacts_dir, list_bundles
from captioning.data import ENV_VAR, DataError, Flickr8k, resolve_data_dir
from captioning.encoders import EncoderWeightsError
from captioning.manifest import EvaluationReport, Manifest
from captioning.text import tokenize

DATA_HINT = (f"Set `{ENV_VAR}` to the folder holding `captions.txt` and the `Flickr_8k.*Images.txt` files "
             f"(e.g. `export {ENV_VAR}=../shared/flickr8k`), or fetch it with "
             f"`python train.py download --data-dir DIR`, then reload this page.")


def bundle_paths() -> list[Path]:
    return list_bundles()


def selected_bundle() -> Path | None:
    path = st.session_state.get("bundle_path")
    return Path(path) if path else None


def artifacts_shown() -> str:
    """The bundles folder as the user would type it: relative to the project when inside it (``artifacts``),
    else the full path (``$CAPTIONING_ARTIFACTS`` pointing elsewhere)."""
    root = artifacts_dir().resolve()
    try:
        return str(root.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(root)


def no_bundle_message() -> None:
    root = artifacts_shown()
    where = f"`{root}/`" + (f" (`{ARTIFACTS_ENV}`)" if os.environ.get(ARTIFACTS_ENV) else "")
    st.warning(f"No trained model found under {where}. Train one with `python train.py --out {root}/default` "
               f"(about 45 minutes with Xception), or `python train.py --limit 200 --encoder mobilenetv2 "
               f"--out {root}/quick` for a 1-minute demo model.", icon=":material/model_training:")


LAST_BUNDLE = "_last_bundle"       # the bundle this session had selected, to notice when it disappears


def bundle_gone_notice(bundles: list[Path]) -> str | None:
    """When the session's selected bundle has vanished (deleted or moved) since the last run: what to tell the
    user, since the sidebar then falls back to another bundle and the pages re-caption with it. Call before
    the sidebar's bundle picker runs."""
    previous = st.session_state.get(LAST_BUNDLE)
    if previous and previous not in {str(p) for p in bundles}:
        st.session_state.pop(LAST_BUNDLE, None)
        return Path(previous).name
    return None


def remember_bundle() -> None:
    st.session_state[LAST_BUNDLE] = st.session_state.get("bundle_path")


def _build_captioner(path: str):
    """Load a bundle for captioning (its metrics.json / predictions.csv are not needed) and warm it up."""
    from captioning.bundle import load_bundle
    from captioning.captioner import Captioner

    captioner = Captioner(load_bundle(path, load_results=False))
    captioner.warm_up()
    return captioner


_warming: dict[tuple[str, float], Future] = {}      # started in the background, not yet handed to the cache
_warm_started: set[tuple[str, float]] = set()       # once per process and bundle version
_warm_lock = threading.Lock()


def warm_in_background(path: str | os.PathLike | None = None) -> None:
    """Load and warm a bundle's Captioner (default: the first bundle, the one the sidebar opens) in a daemon
    thread; does nothing when it was started before in this process."""
    if path is None:
        bundles = list_bundles()
        if not bundles:
            return
        path = bundles[0]
    try:
        key = (str(path), (Path(path) / "manifest.json").stat().st_mtime)
    except OSError:
        return
    with _warm_lock:
        if key in _warm_started:
            return
        _warm_started.add(key)
        future = _warming[key] = Future()

    def run() -> None:
        try:
            future.set_result(_build_captioner(key[0]))
        except BaseException as exc:            # surfaced by _captioner to the page that asks for it
            future.set_exception(exc)

    threading.Thread(target=run, name="captioner-warm-up", daemon=True).start()


@st.cache_resource(show_spinner="Loading the captioning model (first time only)…", max_entries=3)
def _captioner(path: str, mtime: float):
    with _warm_lock:
        future = _warming.pop((path, mtime), None)
    if future is not None:
        try:
            return future.result()               # the background warm-up: wait for the rest of it, if any
        except Exception:                           # noqa: BLE001  (load again below: the page shows the error)
            pass
    return _build_captioner(path)


# At most this many sessions decode an upload and caption it at the same time (default 2, one per core here):
# decoding a big photo briefly takes memory, and on a small CPU more parallel work only makes everyone slower.
DECODE_SLOTS = max(1, int(os.environ.get("CAPTIONING_APP_DECODE_SLOTS", "2")))
WAITING = "Waiting for a free slot: {n} other captioning runs are going on; this one starts as soon as one ends."


class DecodeSlots:
    """The process's :data:`DECODE_SLOTS`, shared by every session and page (Caption, Compare and Batch)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.semaphore = threading.BoundedSemaphore(size)


@st.cache_resource(show_spinner=False)
def decode_slots() -> DecodeSlots:
    """One per server process, held by Streamlit's resource cache (not a module global, which a page rerun after
    a code change would import afresh): the limit holds across sessions."""
    return DecodeSlots(DECODE_SLOTS)


@contextlib.contextmanager
def decode_slot(show_wait: bool = True):
    """Hold one of the :data:`DECODE_SLOTS` while decoding an upload or captioning it; when all are taken, say on
    the page that this run waits for a free slot (``show_wait``; not inside cached functions) and queue."""
    slots = decode_slots()
    if not slots.semaphore.acquire(blocking=False):
        note = st.empty() if show_wait else None
        if note is not None:
            note.info(WAITING.format(n=slots.size), icon=":material/hourglass_top:")
        slots.semaphore.acquire()
        if note is not None:
            note.empty()
    try:
        yield
    finally:
        slots.semaphore.release()


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
def bundle_manifest(path: str, mtime: float) -> Manifest | None:
    try:
        return Manifest.load(path)
    except BundleError:
        return None


EVALUATE_HINT = "python train.py evaluate --out {path}"


def _results_mtime(folder: Path) -> float:
    """Changes when the manifest, metrics.json or predictions.csv change (cache key of bundle_results)."""
    return max((folder / n).stat().st_mtime for n in ("manifest.json", "metrics.json", "predictions.csv")
               if (folder / n).is_file())


def _problem(exc: BundleError, path: str) -> str:
    """The damaged file and what is wrong with it, without the bundle's name and the fix (the pages add both)."""
    text = str(exc).removeprefix(f"Bundle {path}: ")
    return text.split(" Re-evaluate with:")[0].rstrip(".")


@st.cache_data(show_spinner="Reading evaluation results…")
def _bundle_results(path: str, mtime: float) -> tuple[EvaluationReport | None, str | None]:
    """(report, problem): the bundle's evaluation (checked by the core's loader); ``problem`` names a damaged file."""
    try:
        return EvaluationReport.load(path), None
    except BundleError as exc:
        return None, _problem(exc, path)


def bundle_results(path: str | os.PathLike) -> tuple[EvaluationReport | None, str | None]:
    """A bundle's evaluation: (the report or None when not evaluated, a one-line problem or None)."""
    folder = Path(path)
    try:
        return _bundle_results(str(folder), _results_mtime(folder))
    except (OSError, ValueError):
        return None, "its files could not be read"


def current_results() -> tuple[EvaluationReport | None, str | None]:
    path = selected_bundle()
    if path is None:
        return None, None
    return bundle_results(path)


def current_manifest() -> Manifest | None:
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
    """Flickr8k's :func:`captions_frame`, once per dataset folder."""
    return captions_frame(_dataset(root))


def captions_frame(ds: Flickr8k) -> pd.DataFrame:
    """One row per caption: image, split, caption, its tokens and length."""
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
