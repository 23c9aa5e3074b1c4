"""Which dataset the Dataset page browses: Flickr8k, or one the studio imported (a fine-tune's dataset record, in
its bundle or in a job's run directory: :mod:`captioning.imported`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.data import DataError, Flickr8k
from captioning.images import InvalidImageError, load_image
from captioning.imported import ImportedDataset, find_imported, load_imported

from .state import bundle_paths, captions_frame, captions_table, get_dataset

FLICKR8K = "Flickr8k"


@dataclass
class Shown:
    """The dataset the page shows: its records, one row per caption, and what to say about it."""

    ds: Flickr8k
    table: pd.DataFrame
    about: str
    note: str | None = None
    imported: bool = False


def imported_datasets() -> list[ImportedDataset]:
    """Every imported dataset the bundles and the jobs record (looked up again every 15 s)."""
    from captioning.bundle import artifacts_dir
    from captioning.jobs import jobs_dir

    return _imported_datasets(str(artifacts_dir()), str(jobs_dir()))


@st.cache_data(ttl=15, show_spinner=False)
def _imported_datasets(artifacts: str, jobs: str) -> list[ImportedDataset]:
    from captioning.jobs import JobQueue

    runs = [Path(j.run_dir) for j in JobQueue(jobs).list(200) if j.run_dir] if Path(jobs).is_dir() else []
    return find_imported(bundle_paths(), runs)


@st.cache_resource(show_spinner="Reading your captions…", max_entries=4)
def _imported(record_json: str) -> tuple[Flickr8k, pd.DataFrame, str | None]:
    ds, note = load_imported(json.loads(record_json))
    return ds, captions_frame(ds), note


def choose() -> Shown | None:
    """A dataset picker (when there is more than Flickr8k) and the chosen dataset; None when there is none, after
    saying why on the page."""
    flickr = get_dataset()
    imported = imported_datasets()
    options = ([FLICKR8K] if flickr is not None else []) + [d.label for d in imported]
    if not options:
        return None
    pick = options[0]
    if len(options) > 1:
        pick = st.selectbox("Dataset", options, key="ds_dataset",
                            help="Flickr8k, or photos you imported to fine-tune a model on the Train page")
    if pick == FLICKR8K:
        sizes = " / ".join(f"{len(flickr.splits[s]):,} {s}" for s in ("train", "dev", "test") if s in flickr.splits)
        return Shown(flickr, captions_table(str(flickr.root)),
                     f"Flickr8k: {len(flickr.captions):,} photos from Flickr with their human captions, in the "
                     f"official splits ({sizes}). The models here learn from the train split only.")
    item = imported[options.index(pick) - (1 if flickr is not None else 0)]
    record = item.record
    try:
        ds, table, note = _imported(json.dumps(record, sort_keys=True))
    except DataError as exc:
        st.error(f"{item.name}: {exc}", icon=":material/folder_off:")
        st.stop()
    sizes = " / ".join(f"{len(ds.splits[s]):,} {s}" for s in ("train", "dev", "test") if s in ds.splits)
    model = f"the model **{item.bundle}**" if item.bundle else "a fine-tune that has not finished yet"
    about = (f"Your photos from {item.name} ({record.get('format', 'captions file')} format): {len(ds.captions):,} "
             f"photos with {len(table):,} captions, split by photo as {model} used them ({sizes}). It learned from "
             f"the train split; the dev photos chose its best epoch, the test photos scored it.")
    return Shown(ds, table, about, note, imported=True)


def show_photo(ds: Flickr8k, name: str, imported: bool) -> None:
    """One photo of the grid: a Flickr8k file as it is, an imported one through the safe loader (any size or
    format), never from outside its folder."""
    path = ds.image_path(name)
    if not imported:
        if path.is_file():
            st.image(str(path), width="stretch")
        return
    try:
        if not path.resolve().is_relative_to(ds.images_dir.resolve()):
            raise InvalidImageError("outside the photos folder")
        image = load_image(path)
    except (InvalidImageError, OSError):
        st.caption(":material/broken_image: cannot be shown")
        return
    image.thumbnail((480, 480))
    st.image(image, width="stretch")
