"""A cross-encoder ensemble's attention maps come on one grid: each attending member's map is resampled to the
largest grid (bilinear, renormalised), so the API and the app's word-by-word view get maps for the default bundle
(Xception 10x10 beside EfficientNet-Lite 7x7 and 9x9)."""
import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.models.stepper import EnsembleStepDecoder, resample_attention


def test_resampling_keeps_sums_uniform_maps_and_where_a_peak_is():
    uniform = np.full((2, 49), 1 / 49, np.float32)
    out = resample_attention(uniform, 10)
    assert out.shape == (2, 100) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1 / 100, rtol=1e-6)
    peak = np.zeros((1, 7, 7))
    peak[0, 1, 5] = 1.0                                   # upper right of a 7x7 grid
    big = resample_attention(peak.reshape(1, 49), 10).reshape(10, 10)
    assert big.sum() == pytest.approx(1.0)
    row, col = np.unravel_index(big.argmax(), big.shape)
    assert (row, col) == (round((1 + 0.5) * 10 / 7 - 0.5), round((5 + 0.5) * 10 / 7 - 0.5))    # the same place
    rng = np.random.default_rng(0)
    maps = rng.dirichlet(np.ones(81), size=5)             # (5, 81)
    np.testing.assert_allclose(resample_attention(maps, 10).sum(axis=1), 1.0)
    assert resample_attention(maps, 9) is maps or np.array_equal(resample_attention(maps, 9), maps)
    with pytest.raises(ValueError, match="not a square grid"):
        resample_attention(np.ones((1, 50)) / 50, 10)


class GridDecoder:
    """A step decoder whose attention is over a g x g grid (a stand-in for one encoder's attention member)."""

    def __init__(self, vocab_size, grid, seed):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 2.0, size=(vocab_size, vocab_size))     # (prev, next)
        self.grid = grid

    def start(self, features, repeat=1):
        context = np.repeat(np.asarray(features, np.float64), repeat, axis=0)
        return context, [np.zeros((len(context), 1))]

    def step(self, context, tokens, state):
        logits = self.table[tokens] + context[:, : self.table.shape[1]]
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        raw = np.exp(np.sin(np.arange(self.grid ** 2)[None] + state[0]))      # (B, g*g)
        return logp, [state[0] + 1], (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)


class MergeDecoder(GridDecoder):
    def step(self, context, tokens, state):
        logp, state, _ = super().step(context, tokens, state)
        return logp, state, None


@pytest.mark.parametrize("config", [DecodeConfig(max_length=6), DecodeConfig(beam_width=3, max_length=6),
                                    DecodeConfig(strategy="sample", num_return_sequences=2, max_length=6, seed=0),
                                    DecodeConfig(strategy="diverse", beam_width=4, num_groups=2,
                                                 max_length=6)])
def test_members_on_10x10_7x7_and_9x9_give_every_caption_maps_on_10x10(config):
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    members = [GridDecoder(len(vocab), 10, 1), GridDecoder(len(vocab), 7, 2), MergeDecoder(len(vocab), 1, 3),
               GridDecoder(len(vocab), 9, 4)]
    feats = np.random.default_rng(1).normal(size=(3, len(vocab)))
    for nbest in decode(EnsembleStepDecoder(members), feats, vocab, config):
        for caption in nbest:
            assert caption.attention is not None and caption.attention.shape == (caption.num_tokens, 100)
            np.testing.assert_allclose(caption.attention.sum(axis=1), 1.0, rtol=1e-5)
    # one step by hand: the mean of the three attending members' maps, each on 10x10 (the merge member has none)
    ensemble = EnsembleStepDecoder(members)
    context, state = ensemble.start(feats)
    _, _, attention = ensemble.step(context, np.full(3, vocab.start_id), state)
    own = [m.step(*m.start(feats)[:1], np.full(3, vocab.start_id), m.start(feats)[1])[2] for m in members]
    want = np.mean([resample_attention(a, 10) for a in own if a is not None], axis=0)
    np.testing.assert_allclose(attention, want, rtol=1e-6)
