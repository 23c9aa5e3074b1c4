"""A bundle's evaluation report as a type (:class:`EvaluationReport`: metrics.json and predictions.csv), with the
validating loaders that read them; errors name the file and the command that rewrites it.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from captioning.artifacts.manifest import BundleError, JsonRecord


def read_metrics(path: str | os.PathLike) -> dict | None:
    """A bundle's metrics.json (None when it has none yet); no model is loaded."""
    file = Path(path) / "metrics.json"
    if not file.is_file():
        return None
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Bundle {path}: metrics.json is not valid JSON ({exc}). "
                          f"Re-evaluate with: python train.py evaluate --out {path}") from None
    if not isinstance(metrics, dict):
        raise BundleError(f"Bundle {path}: metrics.json holds no metrics object. "
                          f"Re-evaluate with: python train.py evaluate --out {path}")
    return metrics


PREDICTION_COLUMNS = ("image", "decoding", "beam_width", "caption")


def read_predictions(path: str | os.PathLike):
    """A bundle's predictions.csv as a DataFrame (None when it has none); errors name the bundle and the file."""
    import pandas as pd

    file = Path(path) / "predictions.csv"
    if not file.is_file():
        return None
    fix = f"Re-evaluate with: python train.py evaluate --out {shlex.quote(str(path))}"
    try:
        table = pd.read_csv(file, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise BundleError(f"Bundle {path}: predictions.csv is not a valid table ({reason}). {fix}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise BundleError(f"Bundle {path}: predictions.csv lacks the column(s) {', '.join(missing)}. {fix}")
    if not pd.api.types.is_integer_dtype(table["beam_width"]):
        raise BundleError(f"Bundle {path}: predictions.csv has non-numeric beam widths. {fix}")
    return table


RESULT_KEYS = {"decoding", "beam_width", "split", "n_images"}


@dataclass(frozen=True, eq=False)
class EvaluationReport(JsonRecord):
    """A bundle's evaluation: metrics.json (decoding runs, dev sweep, metric-vs-human agreement) and
    predictions.csv (one row per image and decoding run)."""

    runs: list[dict]                                # one entry per decoding run: label, beam_width, split, scores
    sweep: list[dict] | None = None
    human_agreement: dict | None = None
    implementations: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    predictions: object | None = None               # pandas.DataFrame with PREDICTION_COLUMNS, or None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, metrics: dict, predictions=None) -> EvaluationReport:
        runs = metrics.get("results")
        agreement = metrics.get("human_agreement")
        return cls(runs=runs if isinstance(runs, list) else [], sweep=metrics.get("sweep") or None,
                   human_agreement=agreement if isinstance(agreement, dict) else None,
                   implementations=metrics.get("implementations") or {}, notes=list(metrics.get("notes") or []),
                   predictions=predictions, raw=metrics)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport | None:
        """The bundle's report (None when it has no metrics.json and no predictions.csv yet).

        Raises :class:`BundleError` naming the file and the command that rewrites it when either is damaged:
        metrics.json without a list of decoding runs, predictions.csv without its columns.
        """
        metrics = read_metrics(path)
        if metrics is not None:
            runs = metrics.get("results")
            if not isinstance(runs, list) or not all(isinstance(r, dict) and RESULT_KEYS <= set(r) for r in runs):
                raise BundleError(f"Bundle {path}: metrics.json holds no list of results. "
                                  f"Re-evaluate with: python train.py evaluate --out {path}")
        predictions = read_predictions(path)
        if metrics is None and predictions is None:
            return None
        return cls.from_dict(metrics or {}, predictions)

    @staticmethod
    def read_predictions_loosely(path: str | os.PathLike):
        """predictions.csv when it is a readable table with its columns, else None (for reuse, not display)."""
        try:
            return read_predictions(path)
        except BundleError:
            return None

    @property
    def evaluated(self) -> bool:
        """Whether it holds any decoding run's scores."""
        return bool(self.runs)

    def runs_on(self, split: str) -> list[dict]:
        return [r for r in self.runs if r.get("split") == split]
