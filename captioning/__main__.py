"""Command line: ``python -m captioning caption IMAGE|FOLDER... [--out FILE] [--strategy greedy|beam|sample|diverse
...] [--json] [--neighbours K]`` (beam search, 5 beams, unless told otherwise), ``serve``, ``setup-weights`` and
``jobs list|show|cancel|resume`` (background fine-tunes, as the Train page lists them)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from captioning import import_tensorflow_quietly
from captioning.service.memory.cli import add_memory_options, build_memory, memory_lines, memory_tag, read_memory_file
from captioning.service.ray_engine import add_engine_options, engine_from_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption one or more images")
    cap.add_argument("images", nargs="+", help="image files or folders (searched recursively for jpg, png, webp, "
                     "bmp, gif)")
    cap.add_argument("--out", default=None, help="write FILE.csv, .jsonl or .json (path, caption, log p, n-best, "
                     "model, decoding, error); rerunning with the same file skips photos it already holds and keeps "
                     "columns you added")
    cap.add_argument("--recaption", action="store_true", help="caption again the photos --out holds from another "
                     "model or decoding (without it such a rerun is refused)")
    cap.add_argument("--batch-size", type=int, default=16, help="images through the encoder at once (default 16)")
    cap.add_argument("--bundle", default=None, help="artifact bundle folder (default: artifacts/default, or "
                     "$CAPTIONING_ARTIFACTS/default)")
    cap.add_argument("--weights", default=None, help="encoder ImageNet weights file")
    add_strategy_options(cap)
    add_metadata_options(cap)
    add_engine_options(cap)
    cap.add_argument("--json", action="store_true",
                     help="one JSON object per image: path, caption, log_prob, in_domain, confidence (+ n_best)")
    cap.add_argument("--neighbours", type=int, default=0, metavar="K",
                     help="also list the K most similar training photos (with one of their human captions)")
    add_memory_options(cap)
    srv = sub.add_parser("serve", help="serve the REST API (POST /v1/captions; docs at /docs)")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 opens it to the network)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--bundle", default=None, help="artifact bundle folder (default: artifacts/default)")
    srv.add_argument("--weights", default=None, help="encoder ImageNet weights file")
    srv.add_argument("--max-concurrent", type=int, default=2, help="requests decoded at once (default 2)")
    add_memory_options(srv)
    add_serve_limits(srv)
    setup = sub.add_parser("setup-weights", help="store an encoder's ImageNet weights under weights/")
    setup.add_argument("--encoder", default="xception")
    setup.add_argument("--alpha", type=float, default=None)
    jobs = sub.add_parser("jobs", help="background jobs (fine-tunes from the Train page or the command line)")
    jobs.add_argument("action", choices=["list", "show", "cancel", "resume"])
    jobs.add_argument("id", nargs="?", type=int, help="the job (show, cancel, resume)")
    jobs.add_argument("--json", action="store_true", help="list: one JSON array")
    args = parser.parse_args(argv)
    if args.command == "serve":                  # checks the key and the port before TensorFlow and the model load
        return serve_command(args)
    if args.command == "jobs":
        return jobs_command(args)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:                   # caption_files saves and reports on its own once captioning runs
        if args.command != "caption":
            raise
        print("interrupted before any photo was captioned; nothing was written", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    import_tensorflow_quietly()
    from captioning.artifacts.manifest import BundleError
    from captioning.vision.encoders import EncoderWeightsError, setup_weights

    try:
        if args.command == "setup-weights":
            print(setup_weights(args.encoder, args.alpha))
            return 0
        return caption(args)
    except (BundleError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def caption(args) -> int:
    """The ``caption`` command: every check that can fail (options, photos, --out and what it holds) before the
    model loads; then captions to the screen or into --out, resumable, Ctrl-C answered with exit code 130."""
    from captioning.artifacts.bundle import artifacts_dir
    from captioning.artifacts.manifest import BundleError, read_manifest
    from captioning.decoding.config import DecodeConfig
    from captioning.service.captioner import Captioner
    from captioning.service.folders import caption_files, gather_images
    from captioning.service.records import check_output, path_text, plan_resume, run_record, to_record
    from captioning.vision.encoders import EncoderWeightsError

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.neighbours < 0:
        raise ValueError("--neighbours must be 0 or more")
    engine = engine_from_args(args)                  # --engine ray without Ray: how to install it, now
    strategy_overrides(args)                         # a decoding mistake, whatever the bundle (its length: below)
    bundle = Path(args.bundle) if args.bundle else artifacts_dir() / "default"
    manifest = read_manifest(bundle)                 # cheap; names the real folder when CAPTIONING_ARTIFACTS is set
    config = DecodeConfig(max_length=manifest["max_length"], **strategy_overrides(args, manifest["max_length"]))
    paths = gather_images(args.images)
    if not paths:
        raise ValueError(f"no image files (jpg, jpeg, png, webp, bmp, gif) in {' '.join(args.images)}")
    remembered = read_memory_file(args)              # --memory: every row checked now, features after the load
    if remembered is not None and engine is not None:
        raise ValueError("--memory works with the single-process engine only; drop --engine ray, or --memory")
    run = run_record(bundle, manifest, config)
    if remembered is not None:
        run["decoding"] += f" + {memory_tag(remembered)}"
    if args.out is not None:
        check_output(args.out)                       # a folder, an unwritable path, a file it cannot read
        plan_resume(args.out, paths, run, args.recaption)       # another model or decoding: refused now
    writer = metadata_writer(args)                   # None without --write-metadata; a bad mix refused now
    if writer is not None:
        writer.remember(paths)                       # sizes and mtimes: a photo changed meanwhile is not overwritten

    captioner = Captioner.from_bundle(bundle, args.weights)
    if writer is not None and args.skip_unfamiliar and not (captioner.can_assess
                                                            and captioner.bundle.index.calibration is not None):
        raise ValueError("--skip-unfamiliar needs a bundle with a calibrated retrieval index; add one with: "
                         f"python train.py index --out {captioner.bundle.path}")
    if args.neighbours and not captioner.can_assess:
        print(f"error: bundle {captioner.bundle.path} has no retrieval index for --neighbours; add one with: "
              f"python train.py index --out {captioner.bundle.path}", file=sys.stderr)
        return 2
    memory = build_memory(remembered, captioner, args.memory_k) if remembered is not None else None

    def show(result) -> None:
        name = path_text(result.name)                # one line per photo, whatever bytes its name holds
        if not result.ok:
            print(f"{name}\terror: {result.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps(to_record(result, config.num_return_sequences, args.neighbours), ensure_ascii=False,
                             allow_nan=False), flush=True)
        elif args.out is None:
            trust = result.trust
            level = f", {trust.level or 'uncalibrated'}: in-domain {trust.in_domain:.3f}" if trust else ""
            for rank, cap_ in enumerate(result.captions, 1):
                prefix = f"{name}\t" if len(result.captions) == 1 else f"{name}\t#{rank}\t"
                print(f"{prefix}{cap_.text}\t(log p {cap_.log_prob:.2f}{level})", flush=True)
            if trust and trust.level == "unfamiliar":
                print(f"{name}\twarning: {trust.explanation}")
            for n in trust.neighbours[: args.neighbours] if trust else []:
                print(f"{name}\tnear {n.name} ({n.similarity:.3f}): {n.captions[0] if n.captions else ''}")
            for line in memory_lines(name, result):
                print(line)

    start = time.perf_counter()
    try:
        summary = caption_files(captioner, paths, config, args.out, args.batch_size,
                                on_result=show if writer is None else writer_callback(writer, show),
                                progress=sys.stderr.isatty(), neighbours=args.neighbours, run=run,
                                recaption=args.recaption, memory=memory, **(engine.caption_files_options(
                                    captioner, config, args.batch_size, args.neighbours) if engine else {}))
    except (EncoderWeightsError, BundleError) as exc:     # the encoder is built with the first batch
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:                                # e.g. the disk filled up while writing --out
        print(f"error: cannot write {args.out}: {exc.strerror or exc}; what was saved before is intact, rerun "
              f"to go on", file=sys.stderr)
        return 1
    except KeyboardInterrupt:                             # a second Ctrl-C while saving
        print(f"interrupted; {args.out or 'nothing'} holds what was saved; rerun the same command to go on",
              file=sys.stderr)
        return 130
    if writer is not None:                                # what went into the photos, interrupted or not
        writer.close()
        print(writer.line(), file=sys.stderr)
    if engine is not None and engine.failure:            # what came back before is saved; a rerun goes on
        print(f"error: {engine.failure}" + (f"; {args.out} holds what was captioned: rerun the same command to "
                                            f"go on" if args.out else ""), file=sys.stderr)
        return 1
    if summary.interrupted:
        if args.out is None:
            said = f"interrupted: {summary.line()}"
        elif summary.captioned or summary.failed:
            said = f"interrupted: {summary.line(args.out)}; saved in {args.out}: rerun the same command to go on"
        else:
            said = f"interrupted before a photo was captioned; {args.out} is as it was: rerun the same command"
        print(said, file=sys.stderr)
        return 130
    print(f"{summary.line(args.out)} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 1 if summary.failed or (writer is not None and writer.failed) else 0


def add_serve_limits(srv: argparse.ArgumentParser) -> None:
    """Who may call the API and how much it takes on (defaults: captioning.service.limits.ServerSettings)."""
    g = srv.add_argument_group("access and limits")
    g.add_argument("--api-key-file", default=None, metavar="PATH", help="require 'Authorization: Bearer KEY' with "
                   "the key on this file's first line (default: $CAPTIONING_API_KEY; required off loopback)")
    g.add_argument("--insecure-no-auth", action="store_true", help="serve off loopback without a key (anyone on "
                   "the network may use the CPU)")
    g.add_argument("--max-queue", type=int, default=8, help="requests waiting for a slot; beyond: 503 (default 8)")
    g.add_argument("--queue-timeout", type=float, default=60.0, help="seconds a request may wait for a slot; "
                   "beyond: 503 (default 60)")
    g.add_argument("--rate-limit", type=float, default=60.0, metavar="PER_MINUTE", help="requests a minute per "
                   "client address, bursts of --rate-burst; beyond: 429 (default 60; 0 = off)")
    g.add_argument("--rate-burst", type=int, default=20, help="requests a client may send at once (default 20)")
    g.add_argument("--body-timeout", type=float, default=30.0, help="seconds an upload may send nothing; "
                   "beyond: 408 (default 30)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="a browser origin allowed "
                   "to call the API, e.g. https://example.org (repeat; default: none, no CORS headers)")


def serve_command(args) -> int:
    """``serve``: one-line errors for a bad option, a network host without a key or a busy port, all before the
    model loads; then the API until interrupted."""
    from captioning.artifacts.bundle import artifacts_dir
    from captioning.artifacts.manifest import BundleError
    from captioning.service.guards import api_key
    from captioning.service.limits import ServerSettings
    from captioning.service.serve import serve
    from captioning.vision.encoders import EncoderWeightsError

    try:
        if not 0 < args.port < 65536:
            raise ValueError("--port must be 1-65535")
        settings = ServerSettings(args.max_concurrent, args.max_queue, args.queue_timeout, args.rate_limit,
                                  args.rate_burst, args.body_timeout, api_key(args.api_key_file),
                                  tuple(args.cors_origin))
        serve(args.bundle or artifacts_dir() / "default", args.host, args.port, args.weights, settings=settings,
              insecure_no_auth=args.insecure_no_auth, memory_data=read_memory_file(args))
    except (BundleError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def jobs_command(args) -> int:
    """``jobs list`` (newest first), ``show ID`` (with the log's tail), ``cancel ID``, ``resume ID``."""
    from captioning.service.jobs import JobError, JobQueue

    queue = JobQueue()
    try:
        queue.tick()                                  # bring statuses up to date (and start a queued job)
        if args.action == "list":
            listed = queue.list()
            if args.json:
                print(json.dumps([{"id": j.id, "title": j.title, "status": j.status, "origin": j.origin,
                                   "out": j.out, "run_dir": j.run_dir, "created": j.created, "started": j.started,
                                   "ended": j.ended, "exit_code": j.exit_code, "argv": j.argv} for j in listed],
                                 indent=1))
                return 0
            for j in listed:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created))
                print(f"{j.id:>4}  {j.status:<11} {j.origin:<3}  {when}  {j.title}")
            if not listed:
                print(f"no jobs yet in {queue.root}")
            return 0
        if args.id is None:
            raise JobError(f"jobs {args.action} needs a job id (see: python -m captioning jobs list)")
        if args.action == "cancel":
            job = queue.cancel(args.id)
        elif args.action == "resume":
            job = queue.resume(args.id)
        else:
            job = queue.get(args.id)
        print(f"job {job.id}: {job.status} ({job.title})\n$ {' '.join(job.argv)}")
        if args.action == "show":
            print(job.log_tail(20))
        return 0
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_strategy_options(cap: argparse.ArgumentParser) -> None:
    """Every decoding option as a flag, generated from the one declaration (:mod:`captioning.decoding.options`):
    the same names, ranges and help as the REST API's fields. Every default is None, so that
    :func:`strategy_overrides` knows what the user set."""
    from captioning.decoding.options import STRATEGIES, STRATEGY_HELP, USER_OPTIONS

    g = cap.add_argument_group("decoding (default: beam search with 5 beams)")
    g.add_argument("--strategy", choices=STRATEGIES, default=None, help=STRATEGY_HELP)
    for option in USER_OPTIONS:
        scope = "" if option.strategies == STRATEGIES else "/".join(option.strategies) + ": "
        text = f"{scope}{option.help}" + (f"; {option.limits()}" if option.kind in (int, float) else "")
        if option.kind is bool:
            g.add_argument(option.flag, action="store_true", default=None, help=text)
        elif option.kind is tuple:
            g.add_argument(option.flag, nargs="+", default=None, metavar=option.metavar, help=text)
        else:
            g.add_argument(option.flag, type=option.kind, default=None, metavar=option.metavar, help=text)
        if option.name == "num_return_sequences":
            g.add_argument("--n", type=int, default=None, metavar="N",
                           help="sample: captions drawn per image (the same as --n-best)")


def add_metadata_options(cap: argparse.ArgumentParser) -> None:
    """Captions into the photos' own metadata (XMP, IPTC, EXIF) as alt text: captioning/publish/metadata.py."""
    from captioning.publish.metadata import MODES, SIDECAR_NAMES

    g = cap.add_argument_group("write captions into the photos (needs ExifTool)")
    g.add_argument("--write-metadata", choices=MODES, default=None, metavar="MODE",
                   help="sidecar: an XMP file beside each photo (merged into one that exists); copy: captioned "
                        "copies under --out-dir; in-place: into the photos themselves, atomically")
    g.add_argument("--out-dir", default=None, help="copy: where the captioned copies go (folders kept)")
    g.add_argument("--sidecar-name", choices=SIDECAR_NAMES, default=SIDECAR_NAMES[0],
                   help="sidecar naming: photo.jpg.xmp (darktable, digiKam, Immich; default) or photo.xmp "
                        "(Lightroom, Bridge)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a description the photo already has (default: keep it, and count it)")
    g.add_argument("--tag-keywords", action="store_true", help="also add the caption's nouns as dc:subject keywords")
    g.add_argument("--skip-unfamiliar", action="store_true",
                   help="leave photos the model finds unfamiliar undescribed (and list them): a wrong alt text "
                        "is worse than none")


def metadata_writer(args):
    """The --write-metadata writer (None without it); ValueError with what to change on a bad mix."""
    if args.write_metadata is None:
        if args.out_dir or args.overwrite or args.tag_keywords or args.skip_unfamiliar:
            raise ValueError("--out-dir, --overwrite, --tag-keywords and --skip-unfamiliar go with --write-metadata")
        return None
    from captioning.publish.metadata import MetadataError, MetadataWriter

    try:
        return MetadataWriter(args.write_metadata, args.out_dir, args.sidecar_name, args.overwrite,
                              args.tag_keywords, args.skip_unfamiliar)
    except MetadataError as exc:
        raise ValueError(str(exc)) from None


def writer_callback(writer, show):
    """on_result for caption_files: write the caption, show the result, and give the record its keys."""
    def on_result(result) -> dict:
        show(result)
        if not result.ok:
            return {}
        from captioning.publish.alttext import alt_text
        from captioning.service.records import path_text

        outcome = writer.write(result.name, result.best.text, result.trust)
        said = path_text(str(outcome))                   # a path in it may hold bytes that are not UTF-8
        if outcome.status == "error":
            print(f"{path_text(result.name)}\tmetadata error: {path_text(outcome.detail)}", file=sys.stderr)
            return {"metadata": said, "error": f"metadata: {path_text(outcome.detail)}"}   # retried on a rerun

        written = outcome.status == "written"
        return {"alt_text": alt_text(result.best.text) if written else None, "metadata": said}
    return on_result


def strategy_overrides(args, max_length: int | None = None) -> dict:
    """DecodeConfig fields from the decoding flags the user gave (ValueError naming the flag on a bad mix or value;
    ``max_length``: the bundle's, to check --min-length against)."""
    from captioning.decoding.options import USER_OPTIONS, resolve

    given = {"strategy": args.strategy} if args.strategy else {}
    given.update({o.name: getattr(args, o.field) for o in USER_OPTIONS if getattr(args, o.field) is not None})
    if args.n is not None:
        if args.strategy != "sample":
            raise ValueError("--n is the number of sampled captions (--strategy sample); use --n-best for beam search")
        if "num_return_sequences" in given:
            raise ValueError("--n and --n-best both set the captions drawn per image; give one")
        given["num_return_sequences"] = args.n
    return resolve(given, "cli", max_length)


if __name__ == "__main__":
    sys.exit(main())
