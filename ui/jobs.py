"""The Train page's helpers: the server's job queue, the import check (cached per dataset), progress words and
Altair curves drawn from a run directory."""
from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from captioning.jobs import Job, JobQueue, Progress, jobs_dir
from captioning.train_jobs import ImportCheckError, import_check

from .widgets import thumbnail

STATUS = {  # status -> (label, badge colour, icon)
    "queued": ("Queued", "gray", ":material/schedule:"),
    "running": ("Running", "blue", ":material/autorenew:"),
    "succeeded": ("Finished", "green", ":material/check_circle:"),
    "failed": ("Failed", "red", ":material/error:"),
    "cancelled": ("Cancelled", "orange", ":material/cancel:"),
    "interrupted": ("Interrupted", "violet", ":material/pause_circle:"),
}


def queue() -> JobQueue:
    """The server's job queue (its jobs folder: ``$CAPTIONING_JOBS_DIR`` or ``artifacts/.jobs``)."""
    return JobQueue(jobs_dir())


def status_badge(job: Job) -> None:
    label, color, icon = STATUS.get(job.status, (job.status, "gray", None))
    st.badge(label, color=color, icon=icon)


@st.cache_data(show_spinner="Checking the captions file and the photos…", max_entries=16)
def checked_import(captions: str, images: str, digest: str) -> tuple[dict | None, str | None]:
    """(summary, None) or (None, the problem); ``digest`` (the data's) keys the cache."""
    try:
        return import_check(captions, images), None
    except ImportCheckError as exc:
        return None, str(exc)


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 12 min``."""
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def progress_text(job: Job, progress: Progress) -> str:
    """One line under the progress bar: what the job does now and how long it has left."""
    if job.status == "queued":
        return "Waiting for the job before it to finish"
    live, total = progress.live, progress.total_epochs
    phase = progress.phase
    if phase == "features":
        done, todo = live.get("photos_done"), live.get("photos_todo")
        return ("Caching the features of your photos" + (f": {done:,} of {todo:,}" if isinstance(done, int) and
                                                         isinstance(todo, int) else ""))
    if phase == "flickr8k features":
        todo = live.get("flickr_photos")
        return (f"Caching the features of {todo:,} Flickr8k test photos (to score what the model knew before)"
                if isinstance(todo, int) else "Caching the features of Flickr8k test photos")
    if phase == "scoring base":
        return "Scoring the base model on your held-out photos"
    if phase == "scoring fine-tuned":
        return "Scoring the fine-tuned model on your held-out photos"
    if phase == "done":
        return "Writing the bundle"
    if not progress.epochs and phase is None:
        since = time.time() - (job.started or time.time())
        return f"Preparing ({duration(since)} so far)"
    words = f"Decoder {progress.decoder} of {progress.decoders} · " if progress.decoders > 1 else ""
    epoch = live.get("epoch") if phase == "training" and isinstance(live.get("epoch"), int) else progress.done
    words += f"Epoch {max(epoch, 1)} of {total}" if total else f"Epoch {max(epoch, 1)}"
    if phase == "training" and live.get("steps"):
        words += f" (step {live.get('step')} of {live['steps']}"
        words += f", loss {live['loss']:.3f})" if isinstance(live.get("loss"), (int, float)) else ")"
    if progress.stopped_early:
        words += " · stopped early (the dev loss stopped improving)"
    left = progress.seconds_left()
    if job.status == "running" and left:
        words += f" · about {duration(left)} left"
    return words


LOSS_TITLE = "Loss (lower is better)"


def loss_chart(progress: Progress) -> alt.Chart | None:
    """Training loss per step (where the command logs steps) or per epoch, and the dev loss per epoch."""
    rows = []
    if progress.steps:                           # steps of epoch e spread over (e - 1, e]: one x axis for both
        by_epoch: dict[int, list[dict]] = {}
        for s in progress.steps:
            if s.get("decoder", progress.decoder) == progress.decoder:       # the decoder training now
                by_epoch.setdefault(int(s.get("epoch") or 1), []).append(s)
        for epoch, steps in by_epoch.items():
            for i, s in enumerate(steps, 1):
                rows.append({"epoch": epoch - 1 + i / len(steps), "loss": float(s["loss"]),
                             "curve": "training (per step)"})
    for e in progress.epochs:
        if isinstance(e.get("loss"), (int, float)) and not progress.steps:
            rows.append({"epoch": e["epoch"], "loss": float(e["loss"]), "curve": "training"})
        if isinstance(e.get("val_loss"), (int, float)):
            rows.append({"epoch": e["epoch"], "loss": float(e["val_loss"]), "curve": "dev"})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    return (alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=30))
            .encode(x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
                    y=alt.Y("loss:Q", title="cross-entropy", scale=alt.Scale(zero=False)),
                    color=alt.Color("curve:N", title=None, legend=alt.Legend(orient="top")),
                    tooltip=[alt.Tooltip("curve", title="curve"), alt.Tooltip("epoch:Q", format=".2f"),
                             alt.Tooltip("loss:Q", format=".4f")])
            .properties(height=220))


SCORE_KEYS = ("dev_cider", "cider", "dev_bleu_4", "bleu_4")


def progress_charts(progress: Progress) -> list[tuple[str, alt.Chart]]:
    """(title, chart) of the loss and, where the run records one, the dev score per epoch. The titles go above
    the charts as text (Streamlit clips a Vega title under the element before it)."""
    found = [(LOSS_TITLE, loss_chart(progress)), *score_chart(progress)]
    return [(title, chart) for title, chart in found if chart is not None]


def score_chart(progress: Progress) -> list[tuple[str, alt.Chart]]:
    """The dev score per epoch (CIDEr-D where the command records it), the best epoch marked."""
    key = next((k for k in SCORE_KEYS if any(isinstance(e.get(k), (int, float)) for e in progress.epochs)), None)
    if key is None:
        return []
    df = pd.DataFrame([{"epoch": e["epoch"], "score": float(e[key]), "best": e["epoch"] == progress.best_epoch}
                       for e in progress.epochs if isinstance(e.get(key), (int, float))])
    title = {"dev_cider": "Dev CIDEr-D (higher is better)", "cider": "Dev CIDEr-D (higher is better)"}.get(
        key, "Dev BLEU-4 (higher is better)")
    line = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=30), color="#2f6fde").encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),     # 1, 2, not 1.000000
        y=alt.Y("score:Q", title="score", scale=alt.Scale(zero=False), axis=alt.Axis(format=".2f")),
        tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("score:Q", format=".4f")])
    best = alt.Chart(df[df["best"]]).mark_point(size=140, shape="diamond", filled=True, color="#2e9e44").encode(
        x="epoch:Q", y="score:Q")
    return [(title, (line + best).properties(height=220))]


@st.cache_data(show_spinner=False, ttl=30, max_entries=32)
def data_digest_of(captions: str, images: str) -> str:
    """:func:`captioning.train_jobs.data_digest`, remembered for half a minute (a big folder is walked once)."""
    from captioning.train_jobs import data_digest

    return data_digest(captions, images)


def planned_epochs(job: Job) -> int | None:
    """The most epochs the job runs: its settings, else ``--epochs N`` on its command line."""
    settings = job.meta.get("settings") or {}
    if isinstance(settings.get("epochs"), int):
        return settings["epochs"]
    argv = job.argv
    for i, arg in enumerate(argv[:-1]):
        if arg == "--epochs" and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return None


def usable_captions(summary: dict) -> int | None:
    """How many captions the import keeps (the summary's ``captions`` count), or None when it does not say."""
    for where in (summary.get("counts"), summary):
        if isinstance(where, dict):
            for key in ("captions", "kept_captions", "good"):
                if isinstance(where.get(key), int):
                    return where[key]
    return None


SUMMARY_LABELS = {"rows": "Rows read", "captions": "Captions kept", "photos": "Photos", "words": "Distinct words"}


def summary_counts(summary: dict) -> list[tuple[str, str]]:
    """(label, value) of the import summary's counts and split, for metrics."""
    shown = [(label, f"{summary[k]:,}") for k, label in SUMMARY_LABELS.items() if isinstance(summary.get(k), int)]
    bad = summary.get("bad_rows") or summary.get("bad") or []
    shown.append(("Rows skipped", f"{len(bad):,}"))
    splits = summary.get("splits")
    if isinstance(splits, dict) and splits:
        shown.append(("Split (photos)", " / ".join(f"{v:,}" for v in splits.values())))
    return shown


def finetune_report(bundle: str) -> dict | None:
    """The fine-tune record of a bundle's manifest (base, dataset, scores before and after, held-out captions)."""
    import json
    from pathlib import Path

    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = manifest.get("finetune") if isinstance(manifest, dict) else None
    return record if isinstance(record, dict) else None


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnail_url(path, size: int = 96) -> str | None:
    """A small JPEG of a photo on disk as a data URL (for a table's image column), or None when it cannot be read."""
    return thumbnail(path, size)


def as_user_sees(text: str, images, shown: str | None) -> str:
    """``text`` (a bad row's reason, an import error) with the photos folder's place on this server replaced by
    what the user gave: the uploaded zip and the folder inside it (``mine.zip/photos``), not where it was unpacked."""
    return text.replace(str(images), shown) if shown and images else text


def zip_folder_name(zip_name: str, images, unpacked_root) -> str:
    """How the user knows an unpacked zip's photos folder: the zip's name and the folder inside it."""
    from pathlib import Path

    try:
        inner = Path(images).relative_to(unpacked_root).parts[1:]      # below data/<the zip's sha>/
    except ValueError:
        return zip_name
    return "/".join((zip_name, *inner))
