"""Alt text from captions: a sentence people (and screen readers) can use, keywords, and the HTML / Markdown exports.

The model's captions are lower-case token strings ("a dog runs through the grass", sometimes with ``<unk>``);
alt text is a capitalised sentence with a full stop and no tokens a reader cannot pronounce. A photo the
retrieval index flags *unfamiliar* is one the model is likely to describe wrongly, and a wrong alt text is
worse than none: callers may leave such photos undescribed (``--skip-unfamiliar``) and list them instead.
"""
from __future__ import annotations

import html
import re
from collections.abc import Iterable

UNKNOWN = "<unk>"
UNFAMILIAR = "unfamiliar"            # retrieval.Assessment.level of a photo unlike the training photos

# Words that are not subjects of a photo (articles, numbers, prepositions, pronouns, common verbs and adjectives
# of Flickr8k's captions): what is left of a caption are its nouns, near enough for keywords.
_NOT_NOUNS = frozenset("""
a an the this that these those some two three four five six several many one another other each its their his her
in on at of with without through into onto over under near by from for to up down off out across along around
behind beside between toward towards while as and or but is are was be being has have while next front top
he she it they them someone something who whom which what while its
black white red blue green yellow orange pink purple brown gray grey dark light colorful colourful striped
young little small large big tall old long short wet dry same
runs jumps plays sits stands walks rides holds looks climbs swims smiles wears poses waits lies lays throws
catches carries kicks eats drinks watches pulls pushes stand sit play walk run jump ride hold look
""".split())
_VERB_ENDINGS = ("ing", "ed")


def alt_text(caption: str | None) -> str | None:
    """The caption as an alt-text sentence: no ``<unk>``, tidy spacing, capitalised, ending in a full stop.

    None (no alt text) for a caption with no words left.
    """
    if not caption:
        return None
    words = [w for w in caption.replace("\n", " ").split() if w != UNKNOWN and w not in ("<start>", "<end>", "<pad>")]
    text = " ".join(words)
    text = re.sub(r"\s+([.,;:!?']|'s\b|n't\b)", r"\1", text)       # tokenised "dog 's" -> "dog's"
    text = text.strip(" .")
    if not text:
        return None
    return text[0].upper() + text[1:] + "."


def is_unfamiliar(trust) -> bool:
    """Whether a result's assessment (``retrieval.Assessment`` or its JSON) calls the photo unfamiliar."""
    if trust is None:
        return False
    level = trust.get("confidence") if isinstance(trust, dict) else getattr(trust, "level", None)
    return level == UNFAMILIAR


def keywords(caption: str | None, limit: int = 8) -> list[str]:
    """The caption's nouns, in order and once each (a word list heuristic, good enough for ``dc:subject``)."""
    out: list[str] = []
    for word in (caption or "").lower().split():
        word = word.strip(".,;:!?'\"")
        if (len(word) < 3 or not word.isalpha() or word in _NOT_NOUNS or word.endswith(_VERB_ENDINGS)
                or word in out):
            continue
        out.append(word)
    return out[:limit]


def _described(records: Iterable[dict]) -> list[tuple[str, str]]:
    """(file name, alt text) of each record that has one (errors and photos left undescribed are skipped)."""
    pairs = []
    for r in records:
        text = r.get("alt_text") if "alt_text" in r else alt_text(r.get("caption"))
        if text and not r.get("error"):
            pairs.append((str(r["path"]), text))
    return pairs


def html_snippets(records: Iterable[dict]) -> str:
    """One ``<img src="..." alt="...">`` line per described photo, attribute values escaped."""
    return "".join(f'<img src="{html.escape(name.rsplit("/", 1)[-1])}" alt="{html.escape(text)}">\n'
                   for name, text in _described(records))


def markdown_list(records: Iterable[dict]) -> str:
    """A Markdown list: ``- **name**: alt text`` per described photo (Markdown's special characters escaped)."""
    def esc(s: str) -> str:
        return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", s)
    return "".join(f"- **{esc(name.rsplit('/', 1)[-1])}**: {esc(text)}\n" for name, text in _described(records))
