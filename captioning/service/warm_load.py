"""Load a bundle's Captioner for the app in two stages, so the first caption comes early.

An ensemble's load is mostly building its encoders (a Keras model each) and tracing the compiled functions once.
:class:`StagedLoad` first reads the bundle's own decoder alone and readies it on its own encoder (``quick``: one
model of the ensemble, enough for a first, clearly labelled caption and the trust check), then reads the other
decoders, builds the other encoders in parallel threads and traces the whole ensemble (``full``), reusing
everything the first stage built. A bundle with
one decoder has one stage: ``quick`` and ``full`` are the same Captioner. ``timings`` records where the time went.

When an ensemble has a current lite copy (captioning.service.lite: made in a background process after its first
full load), ``quick`` is that copy's Captioner, ready before TensorFlow is even imported (about 3 s after the start
instead of 10-13), and ``full`` loads every decoder and builds every encoder at once.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

DEFAULT_WIDTHS = (5,)       # what the quick stage traces: the Caption page's default beam (decoding_options)


class StagedLoad:
    """One bundle's two-stage load; :meth:`start` runs it in a daemon thread, :meth:`run` in the caller's."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.quick: Future = Future()       # a Captioner over the bundle's own decoder (or the whole, if single)
        self.full: Future = Future()        # the Captioner over every decoder, warmed
        self.timings: dict[str, float] = {}  # seconds per piece, in the order they ran

    def _timed(self, name: str, work):
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.timings[name] = round(time.perf_counter() - start, 2)

    def start(self) -> StagedLoad:
        threading.Thread(target=self.run, name="captioner-warm-up", daemon=True).start()
        return self

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:         # surfaced to whoever asks for either stage
            for future in (self.quick, self.full):
                if not future.done():
                    future.set_exception(exc)

    def _run(self) -> None:
        from captioning.artifacts.bundle import load_bundle
        from captioning.artifacts.manifest import read_manifest
        from captioning.service.captioner import Captioner
        from captioning.service.lite import enabled, load_lite

        members = len(read_manifest(self.path).get("members", []))
        if members and enabled():
            # An ensemble's lite copy (made once, after its first full load) captions before TensorFlow is imported.
            lite = self._timed("lite copy", lambda: load_lite(self.path, quick_of=1 + members))
            if lite is not None:
                self._timed("lite first caption", lambda: lite.warm_up(DEFAULT_WIDTHS))   # and the consensus table
                self.quick.set_result(lite)
                return self._whole_after_lite(lite)
        # The first stage reads the bundle's own decoder only: an ensemble's other decoders load after its caption.
        own = self._timed("own decoder", lambda: load_bundle(self.path, load_results=False, members=False))
        quick = Captioner(own)
        key = quick.spec.key
        photo = np.zeros((1, 224, 224, 3), np.uint8) + 128
        # Consensus reranking's CIDEr-D table (pure Python, about a second) is made meanwhile: building and tracing
        # the encoder leave the interpreter lock free for part of their time (TensorFlow's graph work in C++).
        consensus = getattr(quick.steps, "consensus", None)
        table = threading.Thread(target=lambda: consensus is not None and consensus.cider, name="consensus-table",
                                 daemon=True)
        table.start()
        self._timed(f"encoder {key}", lambda: quick._forward(key))
        self._timed(f"trace encoder {key}", lambda: quick._forward(key)(photo))
        self._timed("consensus table", table.join)
        if not members:
            self._timed("trace decoding", quick.warm_up)
            self.quick.set_result(quick)
            self.full.set_result(quick)
            return
        self._timed("trace quick decoding", lambda: quick.warm_up(DEFAULT_WIDTHS))
        quick.quick_of = 1 + members
        self.quick.set_result(quick)

        bundle = self._timed("other decoders", lambda: load_bundle(self.path, load_results=False, load_index=False))
        # The whole ensemble reuses what the first stage made: the own decoder and its traced functions, the index
        # (and the consensus ranking's captions made from it), the built encoder, unless the whole needs that
        # encoder's spatial map where the own decoder pooled it (a merge decoder with attention members on it).
        full = Captioner(replace(bundle, decoder=own.decoder, index=own.index))
        full.steps.members[0] = quick.steps
        if full.bundle.spatial_for(key) == own.spatial_for(key):
            full._encoders, full._lock, full._building = quick._encoders, quick._lock, quick._building
        others = [k for k in full.encoders if k not in full._encoders]

        def build(key: str) -> None:
            self._timed(f"encoder {key}", lambda: full._forward(key))
            self._timed(f"trace encoder {key}", lambda: full._forward(key)(photo))

        if others:      # Keras builds in Python, but its variable set-up and weight reads release the lock
            with ThreadPoolExecutor(len(others), thread_name_prefix="encoder-build") as pool:
                list(pool.map(build, others))
        self._timed("trace full decoding", full.warm_up)
        self.full.set_result(full)
        from captioning.service.lite import fingerprint, make_in_background

        if fingerprint(self.path) is not None:      # next start captions from the lite copy (made when missing)
            make_in_background(self.path)

    def _whole_after_lite(self, lite) -> None:
        """The whole ensemble, its encoders built in parallel threads; the index (and the consensus ranking's
        table made from it) is the lite stage's."""
        from captioning.artifacts.bundle import load_bundle
        from captioning.service.captioner import Captioner

        bundle = self._timed("decoders", lambda: load_bundle(self.path, load_results=False, load_index=False))
        full = Captioner(replace(bundle, index=lite.bundle.index))
        photo = np.zeros((1, 224, 224, 3), np.uint8) + 128

        def build(key: str) -> None:
            self._timed(f"encoder {key}", lambda: full._forward(key))
            self._timed(f"trace encoder {key}", lambda: full._forward(key)(photo))

        with ThreadPoolExecutor(len(full.encoders), thread_name_prefix="encoder-build") as pool:
            list(pool.map(build, full.encoders))
        self._timed("trace full decoding", full.warm_up)
        self.full.set_result(full)
