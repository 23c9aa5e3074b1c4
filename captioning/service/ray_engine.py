"""``caption --engine ray``: the batch command's photos captioned by a Ray Data pipeline, on one machine or many.

Data flows: the driver's listing (the photos still to caption, in blocks of paths) -> read + validate + decode
through the one safe loader in parallel Ray tasks (uint8 224x224 arrays, or the loader's error) -> a pool of
``--workers`` actors, each holding the bundle once and captioning ``--batch-size`` photos at a time through
:func:`captioning.service.batch.caption_stream` (the single-process path's own code) -> each photo's n-best list and
trust as a JSON string, streamed back to the driver in input order. The driver keeps the result file through
:func:`captioning.service.folders.caption_files` exactly as the single-process path does (same records, per-file errors,
resume, ``--write-metadata``), so a killed driver resumes from the file; a lost worker is restarted by Ray Data
and its batch redone, and a photo that still came back twice is kept once.

Batches are cut on the same ``--batch-size`` boundaries of the to-do list as the single-process path (listing
blocks are whole multiples of it), so the encoder sees the same batches and the captions are the same.

Memory: Ray's streaming executor keeps only a few blocks in flight; a local instance gets an object store of
1/8 of the RAM, at most 2 GiB (``object_store_bytes``); a cluster's is set by ``ray start --object-store-memory``.
Ray is optional (``pip install .[ray]``): nothing here imports it before ``--engine ray`` is asked for.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INSTALL = ("--engine ray needs Ray, which is not installed; install it with: pip install '.[ray]' "
           "(or: pip install 'ray[data]==2.60.0')")
BLOCKS_PER_BATCH = 4                    # a listing block holds this many --batch-size batches of paths
MAX_OBJECT_STORE = 2 * 2**30            # a local instance's object store: 1/8 of the RAM, at most this
MIN_OBJECT_STORE = 256 * 2**20
SAVE_SHARE = 0.1                        # the result file is rewritten when that costs at most 10% of the run


def add_engine_options(cap: argparse.ArgumentParser) -> None:
    g = cap.add_argument_group("scale out (optional: pip install '.[ray]')")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: a Ray Data pipeline on a local Ray instance or, "
                        "with --address, on a Ray cluster (photos, bundle and weights at the same paths there)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="ray: join the Ray cluster at ADDR (host:port of `ray start --head`); default: start a "
                        "local Ray instance for this run")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="ray: captioning workers, each holding the model once and reserving one CPU (default: "
                        "one per machine of the cluster; 1 locally)")


def engine_from_args(args) -> RayEngine | None:
    """The Ray engine the options ask for, or None for this process; ValueError (one line) on a bad mix or
    when Ray is not installed. Nothing connects yet."""
    if args.engine != "ray":
        if args.address is not None or args.workers is not None:
            raise ValueError("--address and --workers go with --engine ray")
        return None
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    engine = RayEngine(args.address, args.workers)
    require_ray()
    return engine


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL) from None
    return ray


def object_store_bytes(total_ram: int | None = None) -> int:
    """A local Ray instance's object store: 1/8 of the RAM, between 256 MiB and 2 GiB (Ray's own default, 30%
    of the RAM, would set 7 GB aside on a 24 GB machine; the streaming pipeline holds a few blocks of ~10 MB)."""
    if total_ram is None:
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(max(MIN_OBJECT_STORE, min(total_ram // 8, MAX_OBJECT_STORE)))


@dataclass
class RayEngine:
    address: str | None = None          # None: a local Ray instance for this run
    workers: int | None = None          # None: one per machine of the cluster (1 locally)
    failure: str | None = None          # why the pipeline stopped early (what came back before it is kept)

    def __post_init__(self):
        if self.address is None and not os.environ.get("RAY_AUTH_MODE"):
            # this run's own instance: token authentication with a fresh secret, never on disk (Ray reads the
            # setting once, when imported: so before that)
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        if self.address is None:
            # The workers run at this command's priority, like the single-process path (`nice -n 10 python -m
            # captioning ...` works as expected); Ray's default would nice them 9 steps further.
            os.environ.setdefault("RAY_worker_niceness", "0")

    def caption_files_options(self, captioner, config, batch_size: int, neighbours: int = 0) -> dict:
        """:func:`captioning.service.folders.caption_files`'s ``stream`` (and how often to save) for this engine."""
        return {"stream": self.stream(captioner, config, batch_size, neighbours), "save_share": SAVE_SHARE}

    def stream(self, captioner, config, batch_size: int,
               neighbours: int = 0) -> Callable[[Sequence[str]], Iterator]:
        """The to-do paths -> one BatchResult each, in order, captioned by ``captioner``'s bundle (loaded again
        once per worker) with ``config``. A cluster that cannot be joined or a pipeline that fails ends the
        stream early with ``failure`` set (one line), so that the caller saves what came back before it."""
        def run(todo: Sequence[str]) -> Iterator:
            if not todo:
                return
            ray = require_ray()
            try:
                workers = self._connect(ray, captioner)
                yield from self._results(ray, captioner, config, batch_size, neighbours, todo, workers)
            except ValueError as exc:
                self.failure = str(exc)
            except ray.exceptions.RayError as exc:
                self.failure = f"the Ray pipeline failed: {_first_line(exc)}"
            finally:
                ray.shutdown()
        return run

    # ---- the cluster ----------------------------------------------------------------------------------------

    def _connect(self, ray, captioner) -> None:
        import captioning

        runtime_env = {"py_modules": [str(Path(captioning.__file__).resolve().parent)],   # this code, everywhere
                       "env_vars": worker_environment(captioner)}
        quiet = dict(log_to_driver=False, logging_level="warning", runtime_env=runtime_env)
        try:
            if self.address is None:
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, self.workers or 1),
                         object_store_memory=object_store_bytes(), include_dashboard=False,
                         _node_ip_address="127.0.0.1", **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            if self.address is None:
                raise ValueError(f"cannot start a local Ray instance ({_first_line(exc)})") from None
            raise ValueError(f"cannot join the Ray cluster at {self.address} ({_first_line(exc)}); start one "
                             f"with: ray start --head --port PORT (and give this command its RAY_AUTH_TOKEN), "
                             f"or leave --address out to caption on this machine") from None
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        workers = self.workers or max(1, len(nodes) if self.address else 1)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            raise ValueError(f"--workers {workers} needs {workers} CPUs (one each) and the Ray cluster has "
                             f"{cpus:g}; ask for fewer workers or add machines (ray start --address ...)")
        return workers

    def _results(self, ray, captioner, config, batch_size, neighbours, todo, workers) -> Iterator:
        from captioning.service.batch import BatchResult

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True        # the result file in input order, as one process
        context.enable_progress_bars = False                   # caption_files shows its own (and says nothing)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        context.print_on_execution_start = False
        # Ray Data's advice for a listing shorter than its parallelism (a small folder) is not the user's concern
        warnings.filterwarnings("ignore", r"The (maximum|minimum) number of concurrent", UserWarning, "ray")
        block = batch_size * BLOCKS_PER_BATCH
        dataset = listing(ray, todo, block)
        dataset = dataset.map_batches(read_photos, batch_size=None, num_cpus=0,
                                      compute=ray.data.TaskPoolStrategy(size=2 * workers))
        dataset = dataset.map_batches(
            CaptionWorker, batch_size=batch_size, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_args=(str(captioner.bundle.path), _absolute(captioner.weights), config, neighbours))
        given = bytearray(len(todo))                           # a photo that came back twice is kept once
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, text in zip(out["index"].tolist(), out["result"].tolist()):
                if not given[index]:
                    given[index] = 1
                    yield result_from_json(BatchResult, index, todo[index], text)


def listing(ray, paths: Sequence[str], block: int):
    """The paths as a dataset of ``block``-row blocks (index, path as the file system's bytes: any file name)."""
    import pyarrow as pa

    tables = [pa.table({"index": pa.array(range(start, min(start + block, len(paths))), pa.int64()),
                        "path": pa.array([os.fsencode(p) for p in paths[start:start + block]], pa.binary())})
              for start in range(0, len(paths), block)]
    return ray.data.from_arrow(tables)


def worker_environment(captioner) -> dict[str, str]:
    """What the workers need from this process's environment: the CAPTIONING_* settings, and each of the
    bundle's encoders' weights file as this process found it (a worker's ./weights is not the checkout's)."""
    from captioning.vision.encoders import find_weights, get_spec

    env = {k: v for k, v in os.environ.items() if k.startswith("CAPTIONING_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    for key, info in captioner.encoders.items():
        spec = get_spec(info.name, info.alpha)
        found = find_weights(spec, captioner.weights if key == captioner.spec.key else None, info.weights_file)
        if found is not None:
            env[spec.weights_env()] = str(Path(found).resolve())
    return env


def read_photos(batch: dict) -> dict:
    """A Ray task: each path through the safe loader -> uint8 (224, 224, 3), or the loader's error."""
    from captioning.service.batch import _load

    count = len(batch["index"])
    images = np.zeros((count, 224, 224, 3), np.uint8)
    errors = []
    for k, raw in enumerate(batch["path"]):
        array, error = _load(os.fsdecode(bytes(raw)))
        if array is not None:
            images[k] = array
        errors.append(error or "")
    return {"index": batch["index"], "image": images, "error": np.array(errors, dtype=object)}


class CaptionWorker:
    """A Ray actor: the bundle loaded once; each call captions one batch through the single-process code."""

    def __init__(self, bundle: str, weights: str | None, config, neighbours: int):
        from captioning import import_tensorflow_quietly

        import_tensorflow_quietly()
        from captioning.service.captioner import Captioner

        self.captioner = Captioner.from_bundle(bundle, weights)
        self.config, self.neighbours = config, neighbours

    def __call__(self, batch: dict) -> dict:
        from captioning.service.batch import caption_stream

        errors = batch["error"].tolist()
        good = [k for k, error in enumerate(errors) if not error]
        texts = [json.dumps({"error": error}) for error in errors]
        if good:                 # the decoded arrays go through the loader again unchanged (already canonical)
            results = caption_stream(self.captioner, [batch["image"][k] for k in good], self.config,
                                     batch_size=len(good), neighbours=self.neighbours)
            for k, result in zip(good, results):
                texts[k] = result_json(result)
        return {"index": batch["index"], "result": np.array(texts, dtype=object)}


# ---- one result as JSON (no pickles between the workers and the driver) ------------------------------------

def result_json(result) -> str:
    """A BatchResult's n-best list (words, log p, score, token probabilities), trust and error as JSON text."""
    out: dict = {"error": result.error}
    if result.captions is not None:
        out["captions"] = [{"words": c.words, "log_prob": c.log_prob, "score": c.score,
                            "token_probs": c.token_probs, "finished": c.finished} for c in result.captions]
    if result.trust is not None:
        t = result.trust
        out["trust"] = {"in_domain": t.in_domain, "similarity": t.similarity, "level": t.level,
                        "caption_confidence": t.caption_confidence,
                        "neighbours": [[n.name, n.similarity, n.captions] for n in t.neighbours]}
    return json.dumps(out)                     # Python's JSON keeps every float exactly (and -inf as -Infinity)


def result_from_json(result_type, index: int, name: str, text: str):
    from captioning.decoding.captions import Caption
    from captioning.evaluation.trust import Assessment, Neighbour

    data = json.loads(text)
    captions = [Caption(**c) for c in data["captions"]] if data.get("captions") is not None else None
    trust = None
    if (t := data.get("trust")) is not None:
        trust = Assessment(t["in_domain"], t["similarity"], t["level"],
                           [Neighbour(*n) for n in t["neighbours"]], t["caption_confidence"])
    return result_type(index, name, captions, data.get("error"), trust)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__        # a Ray error's own traceback comes first


def _absolute(path) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
