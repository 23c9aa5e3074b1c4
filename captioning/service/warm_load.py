"""Load a bundle's Captioner for the app in two stages, so the first caption comes early.

An ensemble's load is mostly building its encoders (a Keras model each) and tracing the compiled functions once.
:class:`StagedLoad` first readies the bundle's own decoder on its own encoder (``quick``: one model of the
ensemble, enough for a first, clearly labelled caption and the trust check), then builds the other encoders in
parallel threads and traces the whole ensemble (``full``), reusing everything the first stage built. A bundle with
one decoder has one stage: ``quick`` and ``full`` are the same Captioner. ``timings`` records where the time went.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

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
        from captioning.service.captioner import Captioner

        bundle = self._timed("decoders", lambda: load_bundle(self.path, load_results=False))
        full = Captioner(bundle)
        quick = full.first_decoder()
        own = full.spec.key
        photo = np.zeros((1, 224, 224, 3), np.uint8) + 128
        self._timed(f"encoder {own}", lambda: full._forward(own))
        self._timed(f"trace encoder {own}", lambda: full._forward(own)(photo))
        if quick is full:
            self._timed("trace decoding", full.warm_up)
            self.quick.set_result(full)
            self.full.set_result(full)
            return
        self._timed("trace quick decoding", lambda: quick.warm_up(DEFAULT_WIDTHS))
        self.quick.set_result(quick)

        others = [key for key in full.encoders if key != own]

        def build(key: str) -> None:
            self._timed(f"encoder {key}", lambda: full._forward(key))
            self._timed(f"trace encoder {key}", lambda: full._forward(key)(photo))

        if others:      # Keras builds in Python, but its variable set-up and weight reads release the lock
            with ThreadPoolExecutor(len(others), thread_name_prefix="encoder-build") as pool:
                list(pool.map(build, others))
        self._timed("trace full decoding", full.warm_up)
        self.full.set_result(full)
