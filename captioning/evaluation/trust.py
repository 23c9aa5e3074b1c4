"""Know when to trust a caption: the nearest training photos, an in-domain score and its calibrated levels.

The model only knows the scenes of its training split. For any photo this module finds the k training photos
whose pooled encoder features are most similar (exact cosine top-k with numpy), and scores how familiar the
photo is: the in-domain score, the mean cosine similarity of those k neighbours clipped to [0, 1]. It is a
property of the photo and the bundle's index alone, so every decoding strategy gets the same score and level
for the same photo (the caption's own confidence is a separate number: :func:`caption_confidence`). Three
levels come from the score, with thresholds taken from the dev split by a stated rule (:data:`RULE`), never
typed in by hand.

Stored in a bundle as two files (no pickle anywhere)::

    index.npy    float16 (N, D): the training split's pooled features, L2-normalised (np.save, allow_pickle=False)
    index.json   {"format", "encoder", "dim", "names": [N], "captions": [[...], ...N], "k", "calibration"}

Loading checks every row's norm (1 within :data:`NORM_TOLERANCE`, or an all-zero row): a scaled row would
give similarities above 1 and call anything familiar.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INDEX_FORMAT = 1
VECTORS_FILE, META_FILE = "index.npy", "index.json"
INDEX_FILES = (VECTORS_FILE, META_FILE)

# --- the knobs, in one place -----------------------------------------------------------------------------------
K = 5                           # neighbours averaged into the similarity score (and shown)
CAPTIONS_PER_IMAGE = 5          # every human caption of a training photo: the app explains without Flickr8k and
                                # consensus reranking compares with all of them (dev CIDEr-D .603 vs .595 with 2)
UNFAMILIAR_QUANTILE = 0.05      # below the score of all but 5% of dev photos: unlike anything in training
FAMILIAR_QUANTILE = 0.25        # above the score of the dev split's least typical quarter: familiar
NORM_TOLERANCE = 0.01          # stored rows are unit vectors in float16 (|norm - 1| < 0.002 measured)
CALIBRATION_VERSION = 2         # 1 mixed the caption's log-probability into the score: thresholds in other units
RULE = (f"in-domain score = mean cosine similarity of the photo's {K} nearest training photos, clipped to "
        f"[0, 1] (the same whatever decoding wrote the caption); unfamiliar below the dev split's "
        f"{UNFAMILIAR_QUANTILE:.0%} quantile, familiar from its {FAMILIAR_QUANTILE:.0%} quantile, unusual between")

LEVELS = ("familiar", "unusual", "unfamiliar")
LEVEL_TEXT = {
    "familiar": "like the photos the model was trained on; the caption is as good as the model gets",
    "unusual": "less typical of the training photos; read the caption with some care",
    "unfamiliar": "unlike anything in training; the caption may well be wrong",
}


class IndexFileError(ValueError):
    """A retrieval index file is missing, malformed or does not belong to the bundle; the message says which."""


class OutdatedCalibration(IndexFileError):
    """The index is sound but its levels were calibrated by an older rule; the neighbours still work."""


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero)."""
    x = np.asarray(features, np.float32)                                   # (N, D)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)                      # (N, 1)
    return x / np.maximum(norms, 1e-12)


def in_domain_score(similarity):
    """The in-domain score on its 0-1 scale: the mean neighbour similarity, clipped (cosines of ReLU features are
    already >= 0; float16 rounding can put a training photo's own similarity a hair above 1)."""
    return np.clip(np.asarray(similarity, np.float64), 0.0, 1.0)


def caption_confidence(mean_log_prob: float) -> float:
    """The caption's own confidence on a 0-1 scale: exp(mean log p per token), the geometric mean of its word
    probabilities. It depends on the decoding (a sampled caption is less likely than beam search's), so it is
    shown beside the in-domain level, never mixed into it."""
    return float(np.exp(min(0.0, float(mean_log_prob)))) if np.isfinite(mean_log_prob) else 0.0


def pooled(features: np.ndarray) -> np.ndarray:
    """Pooled (N, D) features from what the captioner computes: spatial maps (N, P, D) are averaged over P,
    which is exactly the encoder's global average pooling."""
    x = np.asarray(features, np.float32)
    return x.mean(axis=1) if x.ndim == 3 else x


@dataclass
class Neighbour:
    name: str
    similarity: float
    captions: list[str]


@dataclass
class Calibration:
    """Thresholds on the in-domain score (0-1) from the dev split, the rule that chose them, and what dev/test
    showed."""

    unfamiliar_below: float
    familiar_from: float
    rule: str = RULE
    report: dict = field(default_factory=dict)    # dev/test numbers: spearman, per-level CIDEr-D, per-image scores

    def level(self, score: float) -> str:
        if score < self.unfamiliar_below:
            return "unfamiliar"
        return "familiar" if score >= self.familiar_from else "unusual"

    def to_json(self) -> dict:
        return {"version": CALIBRATION_VERSION, "unfamiliar_below": self.unfamiliar_below,
                "familiar_from": self.familiar_from, "rule": self.rule, "report": self.report}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        if not isinstance(data, dict):
            raise IndexFileError("the calibration is not an object")
        if data.get("version") != CALIBRATION_VERSION:
            raise OutdatedCalibration("its trust levels were calibrated by an older rule (the score mixed in the "
                                      "caption's log-probability, so it changed with the decoding); recalibrate")
        try:
            low, high = float(data["unfamiliar_below"]), float(data["familiar_from"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"the calibration lacks or garbles its thresholds ({exc})") from None
        if not (np.isfinite([low, high]).all() and 0.0 <= low <= high <= 1.0):
            raise IndexFileError(f"the calibration thresholds are invalid ({low}, {high}: need 0 <= unfamiliar_below"
                                 f" <= familiar_from <= 1)")
        report = data.get("report") or {}
        if not isinstance(report, dict):
            raise IndexFileError("the calibration report is not an object")
        return cls(low, high, str(data.get("rule", RULE)), report)


@dataclass
class Assessment:
    """How far to trust one caption: the photo's in-domain score (0-1) and level, its nearest training photos,
    and (when the caption is known) the caption's own confidence, kept apart from the level."""

    in_domain: float
    similarity: float                    # the mean cosine of the k nearest, before clipping
    level: str | None                    # None when the bundle's index has no calibration (or an outdated one)
    neighbours: list[Neighbour]
    caption_confidence: float | None = None     # exp(mean log p) of the caption: depends on the decoding

    @property
    def explanation(self) -> str:
        return LEVEL_TEXT.get(self.level or "", "not calibrated: run python train.py index")

    def to_json(self, neighbours: int | None = None) -> dict:
        out = {"in_domain": round(float(self.in_domain), 4), "confidence": self.level}
        if self.caption_confidence is not None:
            out["caption_confidence"] = round(float(self.caption_confidence), 4)
        if neighbours:
            out["neighbours"] = [{"image": n.name, "similarity": round(n.similarity, 4), "captions": n.captions}
                                 for n in self.neighbours[:neighbours]]
        return out


class RetrievalIndex:
    """Exact cosine search over the training photos' L2-normalised pooled features."""

    def __init__(self, vectors: np.ndarray, names: Sequence[str], captions: Sequence[Sequence[str]],
                 encoder: str, k: int = K, calibration: Calibration | None = None, calibration_note: str = ""):
        self.vectors = np.asarray(vectors, np.float16)                      # (N, D) as stored
        self._matrix = self.vectors.astype(np.float32)                      # (N, D) what the search multiplies
        self.names, self.captions = list(names), [list(c) for c in captions]
        self.encoder, self.k, self.calibration = encoder, int(k), calibration
        self.calibration_note = calibration_note      # why there is no calibration, when one was refused

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, features: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarities and row numbers, best first: ``(sims (Q, k), rows (Q, k))``."""
        k = min(k or self.k, len(self))
        q = normalise(pooled(features))                                     # (Q, D)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"features of size {q.shape[-1]} do not match the index's {self.dim}")
        sims = q @ self._matrix.T                                           # (Q, N)
        rows = np.argpartition(-sims, k - 1, axis=1)[:, :k]                 # (Q, k) unordered top-k
        top = np.take_along_axis(sims, rows, axis=1)                        # (Q, k)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(rows, order, axis=1)

    def similarity(self, features: np.ndarray) -> np.ndarray:
        """Mean cosine similarity of each photo's k nearest training photos: (Q,)."""
        sims, _ = self.search(features, self.k)
        return sims.mean(axis=1)

    def assess(self, features: np.ndarray, neighbours: int | None = None) -> list[Assessment]:
        """One Assessment per photo (from its features alone: no caption enters the score or the level);
        ``neighbours`` (default k) training photos are listed with each."""
        shown = max(neighbours or self.k, self.k)
        sims, rows = self.search(features, shown)
        similarity = sims[:, : self.k].mean(axis=1)                         # (Q,)
        scores = in_domain_score(similarity)                                # (Q,) in [0, 1]
        if self.calibration is not None:
            levels = [self.calibration.level(float(s)) for s in scores]
        else:
            levels = [None] * len(similarity)
        out = []
        for i in range(len(similarity)):
            near = [Neighbour(self.names[r], float(s), self.captions[r])
                    for s, r in zip(sims[i, : neighbours or self.k], rows[i, : neighbours or self.k])]
            out.append(Assessment(float(scores[i]), float(similarity[i]), levels[i], near))
        return out

    # --- files ----------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": INDEX_FORMAT, "encoder": self.encoder, "dim": self.dim, "k": self.k,
                "names": self.names, "captions": self.captions,
                "calibration": self.calibration.to_json() if self.calibration else None}

    def save(self, folder: str | os.PathLike) -> None:
        """Write index.npy and index.json into ``folder`` (each through a temporary file + rename)."""
        from captioning.files import atomic_save_npy, atomic_write

        folder = Path(folder)
        atomic_save_npy(folder / VECTORS_FILE, self.vectors)
        atomic_write(folder / META_FILE, json.dumps(self.meta(), ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | os.PathLike, encoder: str | None = None,
             feature_dim: int | None = None) -> RetrievalIndex:
        """Read and validate an index; ``encoder``/``feature_dim`` must match the bundle's when given."""
        folder = Path(folder)
        for name in INDEX_FILES:
            if not (folder / name).is_file():
                raise IndexFileError(f"{name} is missing")
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"{META_FILE} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise IndexFileError(f"{META_FILE} has format {meta.get('format') if isinstance(meta, dict) else None!r}"
                                 f", this code reads {INDEX_FORMAT}")
        names, captions = meta.get("names"), meta.get("captions")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(captions, list)
                and len(captions) == len(names)
                and all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in captions)):
            raise IndexFileError(f"{META_FILE} needs equally long lists of image names and of caption lists")
        try:
            vectors = np.load(folder / VECTORS_FILE, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise IndexFileError(f"{VECTORS_FILE} is not a numpy array file ({exc})") from None
        if vectors.dtype != np.float16 or vectors.ndim != 2 or vectors.shape[0] != len(names) or not len(names):
            raise IndexFileError(f"{VECTORS_FILE} holds {vectors.dtype} {vectors.shape}; expected float16 "
                                 f"({len(names)}, dim), one row per name in {META_FILE}")
        if not np.isfinite(vectors).all():
            raise IndexFileError(f"{VECTORS_FILE} holds non-finite values")
        norms = np.linalg.norm(vectors.astype(np.float32), axis=1)                  # (N,)
        bad = np.flatnonzero((np.abs(norms - 1.0) > NORM_TOLERANCE) & (norms > 0))
        if len(bad):
            raise IndexFileError(f"{VECTORS_FILE} row {bad[0]} ({names[bad[0]]}) has norm {norms[bad[0]]:.4g}, "
                                 f"not 1 ({len(bad)} such rows): the index must hold unit vectors")
        if vectors.shape[1] != meta.get("dim") or (feature_dim is not None and vectors.shape[1] != feature_dim):
            raise IndexFileError(f"{VECTORS_FILE} has {vectors.shape[1]}-d rows but the bundle's encoder gives "
                                 f"{feature_dim or meta.get('dim')}-d features")
        if encoder is not None and meta.get("encoder") != encoder:
            raise IndexFileError(f"the index was built with encoder {meta.get('encoder')!r}, the bundle uses "
                                 f"{encoder!r}")
        k = meta.get("k", K)
        if not isinstance(k, int) or not 1 <= k <= len(names):
            raise IndexFileError(f"{META_FILE} has an invalid k ({k!r})")
        calibration, note = None, ""
        try:
            calibration = Calibration.from_json(meta["calibration"]) if meta.get("calibration") else None
        except OutdatedCalibration as exc:           # the neighbours still serve; the levels wait for train.py index
            note = str(exc)
        return cls(vectors, names, captions, str(meta["encoder"]), k, calibration, note)


def read_calibration(folder: str | os.PathLike) -> Calibration | None:
    """A bundle's calibration from index.json alone (no vectors read); None when it has no calibrated index."""
    file = Path(folder) / META_FILE
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"{META_FILE} is not valid JSON ({exc})") from None
    data = meta.get("calibration") if isinstance(meta, dict) else None
    return Calibration.from_json(data) if data else None


def build_index(names: Sequence[str], features: np.ndarray, captions: Sequence[Sequence[str]], encoder: str,
                k: int = K, captions_per_image: int = CAPTIONS_PER_IMAGE) -> RetrievalIndex:
    """An uncalibrated index over training photos: ``features`` (N, D) pooled, ``captions`` per name."""
    if len(names) != len(features) or len(names) != len(captions):
        raise ValueError(f"{len(names)} names, {len(features)} feature rows and {len(captions)} caption lists")
    vectors = normalise(pooled(features)).astype(np.float16)               # (N, D)
    return RetrievalIndex(vectors, names, [list(c)[:captions_per_image] for c in captions], encoder,
                          min(k, len(names)))


# --- calibration ---------------------------------------------------------------------------------------------
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation; 0 when either side is constant (e.g. a tiny model scoring CIDEr-D 0)."""
    import warnings

    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = spearmanr(x, y).statistic
    return float(value) if np.isfinite(value) else 0.0


def calibrate(similarity: Sequence[float], cider: Sequence[float] | None = None,
              mean_log_prob: Sequence[float] | None = None) -> Calibration:
    """Thresholds from dev photos' neighbour similarity by :data:`RULE` (quantiles of the in-domain score).

    ``cider`` (per-image CIDEr-D of the dev captions) and ``mean_log_prob`` (their mean log p per token) only
    fill the report: how well the score ranks caption quality, each level's mean CIDEr-D, and how well the
    caption's own confidence does (shown beside the level, never mixed into it).
    """
    scores = in_domain_score(similarity)                                    # (N,) in [0, 1]
    if len(scores) < 2 or (cider is not None and len(cider) != len(scores)):
        raise ValueError(f"calibration needs at least two dev photos with scores ({len(scores)} photos, "
                         f"{'no' if cider is None else len(cider)} CIDEr-D scores)")
    low, high = (float(np.quantile(scores, q)) for q in (UNFAMILIAR_QUANTILE, FAMILIAR_QUANTILE))
    report: dict = {"dev_images": int(len(scores)),
                    "dev_score_quantiles": {f"{q:g}": round(float(np.quantile(scores, q)), 4)
                                            for q in (0.0, UNFAMILIAR_QUANTILE, FAMILIAR_QUANTILE, 0.5, 1.0)}}
    calibration = Calibration(low, high, RULE, report)
    if cider is not None:
        cid = np.asarray(cider, np.float64)
        report["spearman"] = {"in_domain": round(spearman(scores, cid), 4)}
        if mean_log_prob is not None:
            confidence = [caption_confidence(v) for v in mean_log_prob]
            report["spearman"]["caption_confidence"] = round(spearman(confidence, cid), 4)
        report["dev_levels"] = level_table(scores, cid, calibration)
    return calibration


def level_table(scores: Sequence[float], cider: Sequence[float], calibration: Calibration) -> dict:
    """Per level: how many photos and their mean CIDEr-D, e.g. {"familiar": {"count": 700, "mean_cider": .61}}."""
    levels = np.array([calibration.level(float(s)) for s in scores])
    cid = np.asarray(cider, np.float64)
    return {lv: {"count": int((levels == lv).sum()),
                 "mean_cider": round(float(cid[levels == lv].mean()), 4) if (levels == lv).any() else None}
            for lv in LEVELS}


def calibration_bins(scores: Sequence[float], cider: Sequence[float], bins: int = 10) -> list[dict]:
    """Equal-count score bins with their mean CIDEr-D (what the Evaluation page charts)."""
    s, c = np.asarray(scores, np.float64), np.asarray(cider, np.float64)
    order = np.argsort(s, kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, len(order))):
        if len(part):
            rows.append({"low": float(s[part].min()), "high": float(s[part].max()), "mid": float(s[part].mean()),
                         "mean_cider": float(c[part].mean()), "count": int(len(part))})
    return rows
