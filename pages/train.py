"""Train page: fine-tune a bundle on your own captioned photos, as a background job with live progress.

The job runs in its own process (``train.py finetune``), so it goes on when this tab closes or the server
restarts; the page only queues it and reads its run directory. One job runs at a time per server, the others wait.
"""
from pathlib import Path

import pandas as pd
import streamlit as st

from captioning import (
    DuplicateJob,
    FinetuneSettings,
    InvalidImageError,
    JobError,
    check_name,
    dataset_from_zip,
    default_name,
    jobs_dir,
    load_image,
    read_progress,
    start_finetune,
)
from ui.jobs import (
    as_user_sees,
    checked_import,
    data_digest_of,
    duration,
    finetune_report,
    planned_epochs,
    progress_charts,
    progress_text,
    queue,
    status_badge,
    summary_counts,
    thumbnail_url,
    usable_captions,
    zip_folder_name,
)
from ui.labels import literal
from ui.shell import require_shell
from ui.state import bundle_paths, no_bundle_message, selected_bundle

CAPTION_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")
REFRESH_SECONDS = 2.0         # while a job is queued or running
IDLE_REFRESH_SECONDS = 15.0   # otherwise (a job started from the command line shows up within this)
SAMPLE_PHOTOS = 8

# ---- jobs: the server's queue, at the top of the page -------------------------------------------------------
def act(action: str, job_id: int) -> None:
    """Cancel or resume a job (a button's callback); a refusal is shown on the job's card."""
    try:
        jobs.cancel(job_id) if action == "cancel" else jobs.resume(job_id)
    except JobError as exc:
        st.session_state[f"train_problem_{job_id}"] = str(exc)


def comparison(bundle: str) -> None:
    """Base vs fine-tuned on the user's held-out photos: scores, and captions side by side (from the manifest)."""
    report = finetune_report(bundle)
    metrics = (report or {}).get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    split = "test" if "test" in after else "dev" if "dev" in after else None
    if split is None:
        return
    b, a = before.get(split) or {}, after[split]
    st.markdown(f"**Base vs fine-tuned on your {a.get('photos', '')} held-out {split} photos** "
                f"({metrics.get('decoding', 'beam search')})")
    cols = st.columns(3)
    for col, (key, label) in zip(cols, (("cider", "CIDEr-D"), ("bleu_4", "BLEU-4"),
                                        ("new_word_share", "Captions with a new word"))):
        if isinstance(a.get(key), (int, float)):
            delta = a[key] - b[key] if isinstance(b.get(key), (int, float)) else None
            delta = None if delta is not None and abs(delta) < 5e-4 else delta      # no green arrow on "+0.000"
            col.metric(label, f"{a[key]:.0%}" if key == "new_word_share" else f"{a[key]:.3f}",
                       None if delta is None else (f"{delta:+.0%}" if key == "new_word_share" else f"{delta:+.3f}"),
                       help="fine-tuned (the change from the base model below it)")
    flickr = metrics.get("flickr8k_test") or {}
    fb, fa = flickr.get("before") or {}, flickr.get("after") or {}
    if isinstance(fa.get("cider"), (int, float)) and isinstance(fb.get("cider"), (int, float)):
        st.markdown(f"**What it knew before: {flickr.get('photos', 0):,} Flickr8k test photos**")
        for col, (key, label) in zip(st.columns(3), (("cider", "CIDEr-D (Flickr8k)"), ("bleu_4", "BLEU-4 (Flickr8k)"))):
            delta = fa[key] - fb[key] if isinstance(fb.get(key), (int, float)) else None
            delta = None if delta is not None and abs(delta) < 5e-4 else delta
            col.metric(label, f"{fa[key]:.3f}", None if delta is None else f"{delta:+.3f}",
                       help="fine-tuned (the change from the base model below it): a drop means it forgot some of "
                            "its old domain; more replay keeps more of it")
    elif flickr.get("not_scored"):
        st.caption(f"Flickr8k test photos: not scored ({literal(flickr['not_scored'])}).")
    images = Path(((report or {}).get("dataset") or {}).get("images_dir") or "")
    rows = []
    for photo, caption in list((a.get("captions") or {}).items())[:12]:
        rows.append({"Photo": thumbnail_url(images / photo) if images.name else None, "File": photo,
                     "Base model": (b.get("captions") or {}).get(photo, ""), "Fine-tuned": caption})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", row_height=64,
                     height=64 * len(rows) + 40, column_config={
                         "Photo": st.column_config.ImageColumn("Photo", width="small"),
                         "File": st.column_config.TextColumn("File", width=160),
                         "Base model": st.column_config.TextColumn("Base model", width=330),
                         "Fine-tuned": st.column_config.TextColumn("Fine-tuned", width=330)})


def job_card(job) -> None:
    """One job: status, progress, curves, Cancel / Resume, and its log."""
    total = planned_epochs(job)
    progress = read_progress(job.run_dir, total, job.job_dir / "steps.jsonl")
    with st.container(border=True):
        head, badge = st.columns([6, 1])
        head.markdown(f"**{literal(job.title)}** · job {job.id}")
        with badge:
            status_badge(job)
        started = f"started {pd.Timestamp(job.started, unit='s'):%Y-%m-%d %H:%M} UTC" if job.started else "not started"
        ran = duration((job.ended or pd.Timestamp.now().timestamp()) - job.started) if job.started else None
        st.caption(f"{started}{f' · {ran}' if ran else ''} · "
                   f"{'from the command line' if job.origin == 'cli' else 'from this page'}")
        if job.active:
            st.progress(progress.fraction, text=progress_text(job, progress))
        if job.status == "interrupted":
            st.warning(f"This job stopped without finishing after epoch {progress.done} (the server or the machine "
                       "restarted, or its process was killed). Resume continues from its last finished epoch.",
                       icon=":material/pause_circle:")
        elif job.status == "failed":
            lines = [ln for ln in job.log_tail(40).splitlines() if ln.startswith("error:")]
            st.error(lines[-1] if lines else f"The command ended with exit code {job.exit_code}; see the log.",
                     icon=":material/error:")
        elif job.status == "succeeded" and job.out and Path(job.out).is_dir():
            st.success(f"New bundle **{literal(Path(job.out).name)}** is ready: pick it in the sidebar's bundle list.",
                       icon=":material/check_circle:")
        charts = progress_charts(progress)
        for col, (title, chart) in zip(st.columns(len(charts)) if charts else [], charts):
            col.markdown(f"**{title}**")
            col.altair_chart(chart, width="stretch", height=260)
        if job.status == "succeeded" and job.out and Path(job.out).is_dir():
            comparison(job.out)
        buttons = st.columns([1, 1, 4])
        # Callbacks act before the rerun the click causes, so this very run shows the new status.
        if job.active:
            buttons[0].button("Cancel", icon=":material/cancel:", key=f"cancel_{job.id}", on_click=act,
                              args=("cancel", job.id))
        elif job.status in ("interrupted", "failed", "cancelled") and job.origin == "app":
            buttons[0].button("Resume", icon=":material/play_arrow:", key=f"resume_{job.id}", on_click=act,
                              args=("resume", job.id), help="Run the same command again: it continues from the last "
                                                            "finished epoch")
        problem = st.session_state.pop(f"train_problem_{job.id}", None)
        if problem:
            st.error(problem, icon=":material/block:")
        with st.expander("Log"):
            st.code(job.log_tail(30) or "(nothing yet)", language=None)


def jobs_panel() -> None:
    jobs.tick()
    listed = jobs.list(30)
    if not listed:
        return                 # nothing to show yet: the page starts with the new fine-tune
    st.subheader("Jobs")
    active = [j for j in listed if j.active]
    if len(active) > 1:
        st.caption(f"{len(active) - 1} job(s) queued: they start one after another.")
    recent = active + [j for j in listed if not j.active][:max(0, 3 - len(active))]
    for job in recent:
        job_card(job)
    older = [j for j in listed if j not in recent]
    if older:
        with st.expander(f"Earlier jobs ({len(older)})"):
            st.dataframe(pd.DataFrame([{"Job": j.id, "What": j.title, "Status": j.status,
                                        "Started": pd.Timestamp(j.started, unit="s") if j.started else None}
                                       for j in older]), hide_index=True, width="stretch")
    # A job that just finished wrote a bundle: rerun the whole app so the sidebar lists it.
    done = sorted(j.id for j in listed if j.status == "succeeded")
    seen = st.session_state.get("train_seen_done")
    st.session_state["train_seen_done"] = done
    if seen is not None and set(done) - set(seen):
        st.rerun(scope="app")


require_shell()
st.title("Teach it your photos")
st.caption("Fine-tune a model on your own captioned photos: it learns your words and your kind of scene. "
           "The training runs in the background on this server (one job at a time): you can close this tab and "
           "come back, and the new model appears in the sidebar's bundle list when it is done.")
jobs = queue()
jobs.tick()                   # start a queued job if none runs; a job whose process is gone becomes "interrupted"
any_active = bool(jobs.active())    # refresh often only while one works
st.fragment(jobs_panel, run_every=REFRESH_SECONDS if any_active else IDLE_REFRESH_SECONDS)()

bundles = bundle_paths()
if not bundles:
    no_bundle_message()
    st.stop()

# ---- 1. base model and data -------------------------------------------------------------------------------
st.subheader("1. Start from a model")
names = [p.name for p in bundles]
current = selected_bundle()
base = bundles[st.selectbox("Base bundle", range(len(bundles)), format_func=names.__getitem__, key="train_base",
                            index=names.index(current.name) if current and current.name in names else 0,
                            help="Its decoder keeps what it knows and learns your captions; it is never modified "
                                 "(the fine-tuned model is a new bundle).")]

st.subheader("2. Your captioned photos")
source = st.segmented_control("Where are they?", ["Upload a zip", "A folder on this server"], default="Upload a zip",
                              key="train_source") or "Upload a zip"
captions = images = folder_label = None    # the photos folder as the user knows it (in reasons, errors)
if source == "Upload a zip":
    upload = st.file_uploader(
        "A zip of photos and one captions file", type=["zip"], key="train_zip",
        help="Photos (JPEG, PNG, WebP) in any folders, and one captions file: CSV with a header image,caption, "
             "JSON lines, COCO captions JSON or a Flickr8k captions.txt. Photo paths are read relative to the "
             "captions file. Up to 2,000 files and 256 MB unpacked.")
    if upload is not None:
        try:
            captions, images = dataset_from_zip(upload.getvalue(), jobs_dir() / "data")
            folder_label = zip_folder_name(upload.name, images, jobs_dir() / "data")
        except ValueError as exc:
            st.error(f"{literal(upload.name)}: {exc}", icon=":material/block:")
else:
    folder = st.text_input("Folder on this server", key="train_folder", placeholder="/data/my-photos",
                           help="A folder holding the photos (in any subfolders) and the captions file").strip()
    if folder:
        path = Path(folder).expanduser()
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CAPTION_SUFFIXES
                       and not p.name.startswith(".")) if path.is_dir() else []
        if not path.is_dir():
            st.error(f"There is no folder {literal(folder)} on this server.", icon=":material/folder_off:")
        elif not files:
            st.error("That folder holds no captions file (.csv, .jsonl, .json or .txt) at its top level.",
                     icon=":material/block:")
        else:
            captions = files[0] if len(files) == 1 else st.selectbox("Captions file", files, format_func=lambda p:
                                                                     p.name, key="train_captions_file")
            images = path

summary = None
if captions is not None:
    digest = data_digest_of(str(captions), str(images))
    summary, problem = checked_import(str(captions), str(images), digest)
    if problem:
        st.error(f"The import check failed: {literal(as_user_sees(problem, images, folder_label))}",
                 icon=":material/block:")
if summary is not None:
    shown = summary_counts(summary)
    for col, (label, value) in zip(st.columns(len(shown)), shown):
        col.metric(label, value, help="train / dev / test: the dev photos choose the best epoch, the test photos "
                                      "score base vs fine-tuned" if label.startswith("Split") else None)
    if summary.get("format_label") or summary.get("format"):
        st.caption(f"Read as {summary.get('format_label') or summary.get('format')}.")
    bad = summary.get("bad_rows") or summary.get("bad") or []
    if bad:
        st.warning(f"{len(bad):,} row(s) will be skipped; the first ones:", icon=":material/warning:")
        st.dataframe(pd.DataFrame([{"Line": b.get("line"), "Photo": b.get("image") or "",
                                    "Reason": as_user_sees(b.get("reason", ""), images, folder_label)}
                                   for b in bad[:200]]), hide_index=True, width="stretch",
                     height=min(36 * min(len(bad), 200) + 40, 260))
    sample = summary.get("sample") or []
    if sample:
        st.markdown("**A sample of your photos with their captions**")
        for start in range(0, min(len(sample), SAMPLE_PHOTOS), 4):
            for col, item in zip(st.columns(4), sample[start:start + 4]):
                with col:
                    photo = (Path(images) / str(item.get("image", ""))).resolve()
                    try:
                        if not photo.is_relative_to(Path(images).resolve()):
                            raise InvalidImageError("outside the photos folder")
                        st.image(load_image(photo), width="stretch")
                    except InvalidImageError:
                        st.caption(":material/broken_image: unreadable")
                    lines = item.get("captions") or [item.get("caption", "")]
                    st.caption(f"**{literal(item['image'])}**  \n" + "  \n".join(f"“{literal(c)}”" for c in lines[:3]))

# ---- 3. settings and start --------------------------------------------------------------------------------
st.subheader("3. Settings")
d = FinetuneSettings()
c = st.columns(4)
epochs = c[0].number_input("Epochs (at most)", 1, 200, d.epochs, key="train_epochs",
                           help="Training stops sooner when the dev loss stops improving")
rate = c[1].select_slider("Learning rate", sorted({1e-5, 3e-5, 1e-4, 3e-4, 5e-4, 1e-3, d.learning_rate}),
                          d.learning_rate, key="train_lr",
                          format_func=lambda v: f"{v:g}", help="Smaller changes the model less per step")
replay = c[2].slider("Replay share", 0.0, 0.9, d.replay, 0.05, key="train_replay",
                     help="Share of each batch drawn from the base model's own training photos (Flickr8k), so it "
                          "does not forget them; 0 = your photos only")
min_count = c[3].number_input("New word after (occurrences)", 1, 50, d.min_count, key="train_min_count",
                              help="A word of your captions joins the vocabulary when it occurs at least this often")
settings = FinetuneSettings(epochs=int(epochs), learning_rate=float(rate), replay=float(replay),
                            min_count=int(min_count))
name = st.text_input("Name of the new bundle", default_name(base, captions) if captions else f"{base.name}-mine",
                     key=f"train_name_{captions}").strip()
out = base.parent / name
why_not = check_name(name) or (f"a bundle named {name} exists already; choose another name" if out.exists() else None)
if why_not:
    st.caption(f":material/block: {why_not}")
usable = summary is not None and usable_captions(summary) != 0
if st.button("Start fine-tuning", type="primary", icon=":material/model_training:", key="train_start",
             disabled=not (usable and captions is not None and not why_not)):
    try:
        start_finetune(jobs, base, captions, images, out, settings)
    except DuplicateJob as exc:
        st.error(f"Not started: {exc}.", icon=":material/block:")
    except (JobError, ValueError, OSError) as exc:
        st.error(f"Not started: {exc}", icon=":material/block:")
    else:
        st.rerun()            # the jobs panel at the top shows it, refreshing every REFRESH_SECONDS
