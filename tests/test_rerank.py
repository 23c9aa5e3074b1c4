"""Consensus reranking (captioning.evaluation.rerank): the beam's caption that agrees with the nearest training photos'
captions wins; the options are validated like every decoding option."""
import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.captions import Caption
from captioning.decoding.config import DecodeConfig, parse_spec
from captioning.decoding.options import resolve
from captioning.decoding.search import decode
from captioning.evaluation.rerank import ConsensusSource
from captioning.evaluation.trust import RetrievalIndex, normalise


def _index():
    """Two clusters of training photos: cats on sofas (near the query) and dogs on grass (far)."""
    rng = np.random.default_rng(0)
    cat, dog = np.eye(8)[0], np.eye(8)[1]
    vectors = normalise(np.stack([cat + 0.05 * rng.random(8) for _ in range(4)] +
                                 [dog + 0.05 * rng.random(8) for _ in range(4)])).astype(np.float16)
    captions = [["A cat sits on a sofa .", "a grey cat on the sofa"]] * 4 + [["A dog runs on the grass ."]] * 4
    return RetrievalIndex(vectors, [f"p{i}.jpg" for i in range(8)], captions, "test-8"), cat


def _cap(text, score):
    return Caption(text.split(), score * len(text.split()), score, [0.5] * len(text.split()))


def test_the_candidate_agreeing_with_the_neighbours_wins_unless_the_model_score_dominates():
    index, query = _index()
    source = ConsensusSource(index)
    nbest = [[_cap("a dog runs on the grass", -0.3), _cap("a cat sits on the sofa", -0.6)]]
    near = source.rerank(query[None], [list(c) for c in nbest], DecodeConfig(beam_width=2, consensus=4,
                                                                                   consensus_weight=0.5,
                                                                                   num_return_sequences=2))
    assert near[0][0].text == "a cat sits on the sofa"          # the neighbours are cats on sofas
    assert near[0][0].consensus > near[0][1].consensus
    trusted = source.rerank(query[None], [list(c) for c in nbest], DecodeConfig(beam_width=2, consensus=4,
                                                                                      consensus_weight=100,
                                                                                      num_return_sequences=2))
    assert trusted[0][0].text == "a dog runs on the grass"      # a huge weight keeps the beam's own order


def test_rerank_keeps_the_requested_number_of_captions():
    index, query = _index()
    nbest = [[_cap("a dog", -0.1), _cap("a cat on a sofa", -0.2), _cap("a sofa", -0.3)]]
    config = DecodeConfig(beam_width=3, consensus=2, num_return_sequences=2)
    out = ConsensusSource(index).rerank(query[None], nbest, config)
    assert len(out[0]) == 2 and out[0][0].text == "a cat on a sofa"


def test_consensus_options_are_validated_and_parsed():
    with pytest.raises(ValueError, match="consensus must be a whole number between 0 and 100"):
        DecodeConfig(beam_width=5, consensus=-1)
    with pytest.raises(ValueError, match="--consensus is used only by --strategy beam or --strategy diverse"):
        resolve({"strategy": "greedy", "consensus": 5}, "cli")
    with pytest.raises(ValueError, match="consensus_weight must be"):
        resolve({"consensus_weight": -1.0}, "api")
    config = parse_spec("beam:5,consensus=10,cw=0.3")
    assert (config.consensus, config.consensus_weight) == (10, 0.3)
    assert "consensus 10" in config.describe() and config.options()["consensus"] == 10
    assert "consensus" not in DecodeConfig(beam_width=5).options()     # off: the record is unchanged


def test_consensus_without_an_index_is_one_line_that_says_what_to_do():
    class NoIndex:
        def start(self, features, repeat=1):
            raise AssertionError("never decodes")

    vocab = Vocabulary(["a", "cat"])
    with pytest.raises(ValueError, match="python train.py index"):
        decode(NoIndex(), np.zeros((1, 8), np.float32), vocab, DecodeConfig(beam_width=2, consensus=3))


def test_the_neighbours_are_exactly_the_k_nearest_photos_captions_of_the_consensus_encoder():
    from captioning.models.stepper import MultiFeatures

    index, cat = _index()
    source = ConsensusSource(index)
    dog = np.eye(8)[1]
    near = source.neighbour_captions(np.stack([cat, dog]), 2)
    assert [len(photo) for photo in near] == [4, 2]           # two cat photos (2 captions each), two dog photos (1)
    assert near[0][0] == "a cat sits on a sofa".split() and near[1] == ["a dog runs on the grass".split()] * 2
    assert len(source.neighbour_captions(cat[None], 3)[0]) == 6
    both = ConsensusSource(index, key="b")         # a cross-encoder bundle: the index reads encoder b's rows
    rows = MultiFeatures({"a": dog[None].astype(np.float32), "b": cat[None].astype(np.float32)})
    assert both.neighbour_captions(rows, 1)[0][0] == "a cat sits on a sofa".split()


def test_with_no_neighbour_caption_every_candidate_scores_zero():
    index, _ = _index()
    assert ConsensusSource(index).scores([["a", "cat"], ["a", "dog"]], []) == [0.0, 0.0]


def test_the_consensus_option_is_the_number_of_neighbours_read():
    index, cat = _index()
    source = ConsensusSource(index)
    seen = []
    source.neighbour_captions = lambda features, k: seen.append(k) or [[["a", "cat"]]]
    source.rerank(cat[None], [[_cap("a cat", -1.0), _cap("a dog", -0.5)]],
                  DecodeConfig(beam_width=2, consensus=3, consensus_weight=1.0))
    assert seen == [3]
