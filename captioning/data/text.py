"""Caption cleaning and the word vocabulary (saved as JSON, never pickled)."""
from __future__ import annotations

import collections
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_LETTERS = re.compile(r"[^a-z]+")
_DIGITS = re.compile(r"[0-9]")


def tokenize(caption: str) -> list[str]:
    """Clean a raw caption into words: lower case, letters only (no punctuation or digits).

    Apostrophes are dropped inside words ("dog's" -> "dogs") rather than splitting them, and
    any token that held a digit disappears, as in the seed tutorials. The article "a" is kept:
    dropping one-letter words (as some seeds do) makes every hypothesis ungrammatical and costs
    BLEU against references that are never cleaned that way.

    Letters are Unicode letters (users caption in many languages): "Café in Zürich" -> ["café", "in",
    "zürich"]. Text is NFC-normalised first, so a decomposed "e" + combining accent is the same word as "é";
    combining marks (Unicode category M, e.g. Devanagari vowel signs) stay inside their word. Scripts written
    without spaces (Chinese, Japanese) come out as one word per run of letters.
    """
    if not caption.isascii():
        return _tokenize_unicode(caption)
    text = caption.lower()
    if not _DIGITS.search(text):        # the common case, in one pass: no token to drop for holding a digit
        return [w for w in _NON_LETTERS.split(_APOSTROPHES.sub("", text)) if w]
    words = []
    for raw in caption.lower().split():
        raw = _APOSTROPHES.sub("", raw)
        if any(ch.isdigit() for ch in raw):
            continue
        words.extend(w for w in _NON_LETTERS.split(raw) if w)
    return words


def _tokenize_unicode(caption: str) -> list[str]:
    """:func:`tokenize` for text beyond ASCII (the ASCII path above is the fast, original one)."""
    words = []
    for raw in unicodedata.normalize("NFC", caption.lower()).split():
        raw = _APOSTROPHES.sub("", raw)
        if any(ch.isdigit() for ch in raw):
            continue
        word = []
        for ch in raw:
            if unicodedata.category(ch)[0] in "LM":
                word.append(ch)
            elif word:
                words.append("".join(word))
                word = []
        if word:
            words.append("".join(word))
    return words


@dataclass
class Vocabulary:
    """Index <-> word mapping with the four special tokens first.

    Args:
        words: the ordinary words, most frequent first (specials are added in front).
        counts: training-set counts of every word (used for output-bias initialisation and stats).
        min_count: the threshold the vocabulary was built with (kept for the record).
    """

    words: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    min_count: int = 1

    def __post_init__(self) -> None:
        self.itos: list[str] = list(SPECIALS) + [w for w in self.words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    # Special ids are fixed by construction.
    pad_id, unk_id, start_id, end_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> Vocabulary:
        """Build from tokenised captions, keeping words seen at least ``min_count`` times."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = collections.Counter(w for words in captions for w in words)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not kept:
            raise ValueError("no word reaches min_count; lower --min-count or use more captions")
        return cls(kept, dict(counts), min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str], max_length: int | None = None) -> list[int]:
        """Words -> ids framed by <start> ... <end>; unknown words map to <unk>."""
        ids = [self.start_id] + [self.stoi.get(w, self.unk_id) for w in words] + [self.end_id]
        if max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.end_id]
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at <end> and dropping the other specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            out.append(self.itos[i])
        return out

    def coverage(self, captions: Iterable[Sequence[str]]) -> float:
        """Fraction of running words of ``captions`` that are in the vocabulary."""
        total = known = 0
        for words in captions:
            total += len(words)
            known += sum(w in self.stoi for w in words)
        return known / total if total else 0.0

    # --- JSON persistence -------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": "captioning.vocab/1", "min_count": self.min_count, "itos": self.itos,
                "counts": {w: self.counts.get(w, 0) for w in self.itos}}

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or data.get("format") != "captioning.vocab/1":
            raise ValueError("not a captioning vocabulary (expected format 'captioning.vocab/1')")
        itos = data.get("itos")
        if isinstance(itos, list) and not all(isinstance(w, str) and w for w in itos):
            raise ValueError("every entry of 'itos' must be a non-empty word (a string)")
        if not isinstance(itos, list) or tuple(itos[:4]) != SPECIALS or len(set(itos)) != len(itos):
            raise ValueError("vocabulary must list unique words starting with <pad>, <unk>, <start>, <end>")
        counts = data.get("counts") or {}
        if not isinstance(counts, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                   for v in counts.values()):
            raise ValueError("'counts' must map words to whole numbers")
        min_count = data.get("min_count", 1)
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise ValueError("'min_count' must be a whole number of at least 1")
        return cls(list(itos[4:]), {str(k): v for k, v in counts.items()}, min_count)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8-sig")))
