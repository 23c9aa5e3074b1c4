"""The vocabulary's exact rules: the default threshold, the tie order, what JSON holds, and the messages people see."""
import json

import pytest

from captioning.data.text import Vocabulary


def test_default_threshold_is_five_and_ties_are_alphabetical():
    caps = [["dog"] * 5, ["cat"] * 4, ["zebra"] * 5, ["apple"] * 5, ["run"] * 7]
    vocab = Vocabulary.build(caps)
    assert vocab.itos[4:] == ["run", "apple", "dog", "zebra"]           # most frequent first, then a-z
    assert vocab.min_count == 5 and vocab.counts == {"dog": 5, "cat": 4, "zebra": 5, "apple": 5, "run": 7}
    assert Vocabulary.build(caps, min_count=3).min_count == 3


def test_build_messages():
    with pytest.raises(ValueError, match=r"^min_count must be >= 1, got 0$"):
        Vocabulary.build([["a"]], min_count=0)
    with pytest.raises(ValueError, match=r"^no word reaches min_count; lower --min-count or use more captions$"):
        Vocabulary.build([["a"]], min_count=2)


def test_json_keeps_threshold_and_counts_and_writes_utf8_words(tmp_path):
    vocab = Vocabulary.build([["café", "dog"], ["café"]], min_count=1)
    data = vocab.to_json()
    assert data["min_count"] == 1 and data["counts"] == {"<pad>": 0, "<unk>": 0, "<start>": 0, "<end>": 0,
                                                          "café": 2, "dog": 1}
    vocab.min_count = 3
    vocab.save(tmp_path / "v.json")
    raw = (tmp_path / "v.json").read_bytes()
    assert "café".encode() in raw and b"\\u00e9" not in raw        # readable JSON, not escapes
    again = Vocabulary.load(tmp_path / "v.json")
    assert again.itos == vocab.itos and again.min_count == 3 and again.counts["café"] == 2
    del data["min_count"]
    assert Vocabulary.from_json(data).min_count == 1


def test_from_json_messages():
    for bad in ([], "x", {"format": "other"}, {"itos": ["<pad>", "<unk>", "<start>", "<end>"]}):
        with pytest.raises(ValueError, match=r"^not a captioning vocabulary \(expected format 'captioning.vocab/1'\)$"):
            Vocabulary.from_json(bad)
    with pytest.raises(ValueError, match=r"^vocabulary must list unique words starting with <pad>, <unk>, <start>, "
                                         r"<end>$"):
        Vocabulary.from_json({"format": "captioning.vocab/1", "itos": ["<pad>", "<unk>", "<start>", "<end>", "a", "a"]})


def test_encode_keeps_a_caption_that_exactly_fits_and_coverage_of_nothing_is_zero():
    vocab = Vocabulary(["a", "dog"])
    assert vocab.encode(["a", "dog"], max_length=4) == [2, 4, 5, 3]
    assert vocab.encode(["a", "dog"], max_length=3) == [2, 4, 3]
    assert vocab.coverage([]) == 0.0 and vocab.coverage([[]]) == 0.0
    assert vocab.coverage([["a", "cat"]]) == 0.5
    assert json.loads(json.dumps(vocab.to_json()))["format"] == "captioning.vocab/1"


@pytest.mark.parametrize("change, message", [
    ({"itos": ["<pad>", "<unk>", "<start>", "<end>", ""]}, "every entry of 'itos' must be a non-empty word (a string)"),
    ({"itos": ["<pad>", "<unk>", "<start>", "<end>", 7]}, "every entry of 'itos' must be a non-empty word (a string)"),
    ({"counts": ["dog", 3]}, "'counts' must map words to whole numbers"),
    ({"counts": {"dog": -1}}, "'counts' must map words to whole numbers"),
    ({"counts": {"dog": True}}, "'counts' must map words to whole numbers"),
    ({"counts": {"dog": 2.0}}, "'counts' must map words to whole numbers"),
    ({"min_count": 0}, "'min_count' must be a whole number of at least 1"),
    ({"min_count": True}, "'min_count' must be a whole number of at least 1"),
    ({"min_count": "2"}, "'min_count' must be a whole number of at least 1"),
])
def test_a_vocabulary_file_with_bad_entries_is_refused_exactly(change, message):
    data = {"format": "captioning.vocab/1", "itos": ["<pad>", "<unk>", "<start>", "<end>", "dog"],
            "counts": {"dog": 3}, "min_count": 1, **change}
    with pytest.raises(ValueError) as err:
        Vocabulary.from_json(data)
    assert str(err.value) == message
    ok = {"format": "captioning.vocab/1", "itos": ["<pad>", "<unk>", "<start>", "<end>", "dog"], "counts": {"dog": 0}}
    assert Vocabulary.from_json(ok).counts == {"dog": 0}
