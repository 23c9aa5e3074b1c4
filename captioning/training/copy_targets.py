"""Copy-only training targets for the retrieval decoder (:mod:`captioning.models.retrieval`).

On Flickr8k the vocabulary holds nearly every word of the retrieved training captions, so during ordinary training
every target word can come from the generator and the copy gate never learns to open; at caption time a word
brought only by a remembered caption (outside the vocabulary) is then never written. Here, for some examples, a
word that both the target caption and the retrieved captions hold is *hidden*: it is read as ``<unk>`` in the
memory and in the decoder's input, its target is its extended id in the retrieved captions, and the generator's
distribution for that example is renormalised without it (:func:`captioning.models.retrieval.mixed_probability`),
so copying is the only way to produce it, exactly as for a new word at caption time.

Function words are never hidden (a memory with several hidden ``<unk>`` positions of different words could not be
told apart: the memory keys carry a word's embedding and position only), and one word per example by default,
which is the caption-time case of one new word.
"""
from __future__ import annotations

import numpy as np

from captioning.data.text import Vocabulary

FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to into onto over under near by with without from for through up down out "
    "off around across along behind between while as is are was were be being been has have had his her their "
    "its it they them he she this that these those there some one two three other another each very".split())


def hidden_words(target: list[str], retrieved: list[list[str]], vocab: Vocabulary, rng: np.random.Generator,
                 rate: float, most: int = 1) -> list[str]:
    """With probability ``rate``, up to ``most`` words (drawn at random) that ``target`` and the ``retrieved``
    captions share, that the vocabulary holds and that are not function words; else none."""
    if rate <= 0 or rng.random() >= rate:
        return []
    seen = {w for words in retrieved for w in words}
    shared = sorted({w for w in target if w in seen and vocab.stoi.get(w, 0) >= 4 and w not in FUNCTION_WORDS})
    if not shared:
        return []
    picked = rng.choice(len(shared), size=min(most, len(shared)), replace=False)
    return [shared[i] for i in sorted(picked)]


def hidden_ids(words: list[str], vocab: Vocabulary, most: int) -> np.ndarray:
    """The vocabulary ids of hidden words, 0-padded to ``most`` (id 0, padding, is never a target)."""
    ids = np.zeros(max(most, 1), np.int32)
    ids[: len(words)] = [vocab.stoi[w] for w in words[:most]]
    return ids
