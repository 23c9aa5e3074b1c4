"""The app's "Your photos" memory: captioned photos that change captions of similar photos at once, without
training (captioning.service.memory.bank, persisted under <artifacts>/.memory/<encoder>/), and how the Caption
page shows what it used."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from captioning.data.flickr8k import DataError
from captioning.data.text import tokenize
from captioning.data.user_data import load_user_data
from captioning.service.memory.bank import MemoryBank
from captioning.service.memory.store import USER_FIRST_RULE, MemoryFileError, training_datastore
from captioning.service.memory.use import RERANK_RULE, CaptionMemory
from captioning.service.uploads import dataset_from_zip
from captioning.vision.images import InvalidImageError

from .labels import human_caption, literal, sentence

PER_ROW = 4
ADDED_KEY = "memory_added"      # what the last add did, shown after the rerun


def bank(captioner) -> MemoryBank:
    return MemoryBank.for_captioner(captioner)


def _mtime(b: MemoryBank) -> float:
    meta = b.folder / "memory.json"
    return meta.stat().st_mtime if meta.is_file() else 0.0


@st.cache_resource(show_spinner=False, max_entries=4)
def _memory(bundle: str, mtime: float, _captioner) -> CaptionMemory | None:
    """The training photos + the remembered ones (reloaded when memory.json changes); None while none is kept."""
    user = bank(_captioner).store()
    if not user.photo_count:
        return None
    base = training_datastore(_captioner) if _captioner.can_assess else None
    return CaptionMemory(base.extended(user) if base is not None else user)


def caption_memory(captioner) -> CaptionMemory | None:
    """What the Caption page decodes with: None when no photo is remembered (or the memory is damaged, said)."""
    b = bank(captioner)
    try:
        return _memory(str(captioner.bundle.path), _mtime(b), captioner)
    except MemoryFileError as exc:
        st.warning(f"Your photos' memory cannot be read ({literal(exc)}); captions ignore it. Remove and add the "
                   f"photos again on the Your photos page.", icon=":material/warning:")
        return None


def highlighted_caption(text: str, copied: list[str]) -> str:
    """The caption as a sentence with the words it took from your photos' captions highlighted (Markdown)."""
    shown = sentence(text)
    words = shown.split(" ")
    copied_set = set(copied)
    out = []
    for word in words:
        bare = word.rstrip(".").lower()
        if bare in copied_set:
            tail = word[len(bare):] if word.lower().startswith(bare) else ""
            out.append(f":orange-background[**{literal(word[:len(bare)])}**]{tail}")
        else:
            out.append(literal(word))
    return " ".join(out)


def memory_used(captioner, use) -> None:
    """Below a caption: the remembered photos it used, with their captions and similarity, and the copied words."""
    if use is None:
        return
    mine = [h for h in use.hits if h.entry.source == "user"]
    if not mine:
        st.caption(":material/photo_library: None of your remembered photos is like this one, so they did not "
                   "change the caption.")
        return
    b = bank(captioner)
    words = ", ".join(f"**{literal(w)}**" for w in use.copied_words)
    st.markdown("**From your photos** — the caption used what you wrote about these"
                + (f" (your words in it: {words})" if words else ""),
                help=f"Remembered photos come first when at least this similar: {USER_FIRST_RULE}. "
                     f"How they change the caption: {RERANK_RULE}.")
    by_photo: dict[str, list] = {}
    for h in mine:
        by_photo.setdefault(h.entry.image, []).append(h)
    photos = list(by_photo.items())[:PER_ROW]
    for col, (image, hits) in zip(st.columns(PER_ROW), photos):
        with col:
            thumb = b.photo_file(image)
            if thumb.is_file():
                st.image(str(thumb), width="stretch")
            shown = max(hits, key=lambda h: sum(w in use.copied_words for w in tokenize(h.entry.caption)))
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            st.caption(f"“{highlighted_caption(human_caption(shown.entry.caption), use.copied_words)}”{more}  \n"
                       f"similarity {hits[0].similarity:.2f} · {literal(image)}")


def _add_dataset(captioner, captions: Path, images: Path) -> None:
    try:
        data = load_user_data(captions, images, split=False)
    except DataError as exc:
        st.error(f"Nothing was added: {literal(exc)}", icon=":material/block:")
        return
    progress = st.progress(0.0, text="Reading your photos")
    try:
        store = bank(captioner).add_dataset(
            captioner, data, on_batch=lambda done, total: progress.progress(done / total,
                                                                            text=f"Reading photo {done} of {total}"))
    except (ValueError, InvalidImageError) as exc:
        st.error(f"Nothing was added: {literal(exc)}", icon=":material/block:")
        return
    finally:
        progress.empty()
    st.session_state[ADDED_KEY] = {"photos": len(data.captions), "captions": data.caption_count,
                                   "total": store.photo_count,
                                   "bad": [{"Line": b.line, "Photo": b.image or "", "Reason": b.reason}
                                           for b in data.bad]}
    st.rerun()


def remember_button(get_captioner, captions, images, key: str) -> None:
    """A button that adds an imported dataset's photos to "Your photos" (the Train page); ``get_captioner`` is
    called only when it is pressed (the sidebar's model: its encoder reads the photos)."""
    if st.button("Remember these photos now", key=key, icon=":material/photo_library:",
                 help="Adds them to Your photos: captions of photos like them use your words at once, without "
                      "training (the Your photos page lists them)"):
        _add_dataset(get_captioner(), Path(captions), Path(images))
    _added_note()


def _added_note() -> None:
    added = st.session_state.pop(ADDED_KEY, None)
    if not added:
        return
    st.success(f"Remembered {added['photos']:,} photos ({added['captions']:,} captions); your memory now holds "
               f"{added['total']:,} photos.", icon=":material/check_circle:")
    if added["bad"]:
        st.warning(f"{len(added['bad']):,} row(s) were skipped:", icon=":material/warning:")
        st.dataframe(pd.DataFrame(added["bad"][:200]), hide_index=True, width="stretch",
                     height=min(36 * min(len(added["bad"]), 200) + 40, 260))


def add_from_zip(captioner) -> None:
    """Upload a zip of photos + one captions file (the Train page's limits and checks) and remember them (the zip
    is unpacked into a temporary folder: the memory keeps its own copies)."""
    import tempfile

    upload = st.file_uploader(
        "Add a zip of photos and one captions file", type=["zip"], key="memory_zip",
        help="Photos (JPEG, PNG, WebP) in any folders, and one captions file: CSV with a header image,caption, "
             "JSON lines, COCO captions JSON or a Flickr8k captions.txt. Photo paths are read relative to the "
             "captions file. Up to 2,000 files and 256 MB unpacked.")
    if upload is not None and st.button("Remember the photos of this zip", type="primary", key="memory_zip_add",
                                        icon=":material/add_photo_alternate:"):
        with tempfile.TemporaryDirectory(prefix="memory-zip-") as root:
            try:
                captions, images = dataset_from_zip(upload.getvalue(), root)
            except ValueError as exc:
                st.error(f"{literal(upload.name)}: {exc}", icon=":material/block:")
                return
            _add_dataset(captioner, captions, images)
    _added_note()


def photo_list(captioner) -> None:
    """Every remembered photo (thumbnail, name, captions) with a remove button each."""
    b = bank(captioner)
    try:
        items = b.listing()
    except MemoryFileError as exc:
        st.error(f"The memory cannot be read: {literal(exc)}", icon=":material/block:")
        return
    if not items:
        st.info("No remembered photos yet. Add a captioned zip above, or import your photos on the Train page and "
                "press “Remember these photos now”.", icon=":material/photo_library:")
        return
    st.markdown(f"**{len(items):,} remembered photos** (used by bundles of the {literal(b.encoder)} encoder)")
    for start in range(0, len(items), PER_ROW):
        for col, item in zip(st.columns(PER_ROW), items[start:start + PER_ROW]):
            with col:
                if item["photo"].is_file():
                    st.image(str(item["photo"]), width="stretch")
                st.caption(f"**{literal(item['image'])}**  \n"
                           + "  \n".join(f"“{literal(human_caption(c))}”" for c in item["captions"][:3])
                           + (f"  \n(+{len(item['captions']) - 3} more)" if len(item["captions"]) > 3 else ""))
                if st.button("Remove", key=f"memory_remove_{item['image']}", icon=":material/delete:"):
                    try:
                        b.remove({item["image"]})
                    except KeyError:
                        pass                              # removed meanwhile (another tab)
                    st.rerun()
