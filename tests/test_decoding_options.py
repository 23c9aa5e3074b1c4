"""The decoding options are declared once (captioning/decoding/options.py) and every front end agrees with it:
DecodeConfig's ranges, the command line's flags and ``--help``, the REST API's fields and ``/openapi.json``, the app's
sliders. A user's mistake is refused in one line naming the user's own option; sampling's arithmetic never
overflows; an n-best list never holds the same caption twice."""
import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT
from test_decoding import MarkovDecoder, tiny_vocab

from captioning.__main__ import add_strategy_options, main, strategy_overrides
from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.constraints import sampling_distribution
from captioning.decoding.options import DEFAULT_BEAM_WIDTH, OPTION, OPTIONS, STRATEGIES, USER_OPTIONS, resolve, shown
from captioning.decoding.search import beam_search, decode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_strategy_options(p)                          # what `python -m captioning caption` adds
    return p


def cli(*argv, max_length=30) -> dict:
    return strategy_overrides(parser().parse_args(list(argv)), max_length)


# --- one declaration ------------------------------------------------------------------------------------------
def test_decode_config_takes_its_ranges_from_the_declaration():
    for option in OPTIONS:
        if option.kind not in (int, float) or option.name == "num_return_sequences":
            continue
        context = {"num_groups": {"strategy": "diverse", "beam_width": 100}, "max_length": {"min_length": 0}}.get(
            option.name, {})
        if option.low is not None and not option.low_open:
            DecodeConfig(**{**context, option.name: option.kind(option.floor or option.low)})
            with pytest.raises(ValueError, match=f"^{option.name} must be"):
                DecodeConfig(**{**context, option.name: option.kind(option.low) - 1})
        if option.high is not None:
            DecodeConfig(**{**context, option.name: option.kind(option.high)})
            with pytest.raises(ValueError, match=f"^{option.name} must be"):
                DecodeConfig(**{**context, option.name: option.kind(option.high) + 1})
        if option.floor is not None:
            with pytest.raises(ValueError, match=f"^{option.name} must be at least {option.floor:g}"):
                DecodeConfig(**{option.name: option.floor / 2})
        if option.ceiling is not None:
            DecodeConfig(**{option.name: option.ceiling})
            with pytest.raises(ValueError, match=f"^{option.name} must be at most {option.ceiling:g}"):
                DecodeConfig(**{option.name: option.ceiling * 2})


def test_every_dataclass_field_is_declared_and_every_slider_lies_inside_its_range():
    assert {o.name for o in OPTIONS} == set(DecodeConfig.__dataclass_fields__) - {"strategy"}
    for option in OPTIONS:
        assert option.default == getattr(DecodeConfig(), option.name)
        if option.slider:
            low, high, _ = option.slider
            assert option.lowest <= low < high and (option.highest is None or high <= option.highest)


def test_the_cli_flags_and_the_api_schema_name_the_same_strategies_and_limits():
    from captioning.service.serve import create_app

    actions = {a.dest: a for a in parser()._actions}
    fake = SimpleNamespace(bundle=SimpleNamespace(name="fake", max_length=20))
    schema = create_app(fake).openapi()
    ref = schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    fields = form["properties"]
    assert tuple(actions["strategy"].choices) == STRATEGIES == tuple(fields["strategy"]["anyOf"][0]["enum"])
    assert set(fields) == {"images", "attention", "strategy", *(o.field for o in USER_OPTIONS)}
    for option in USER_OPTIONS:
        action, field = actions[option.field], fields[option.field]
        assert action.option_strings[0] == option.flag
        typed = next((t for t in field.get("anyOf", [field]) if t.get("type") != "null"), field)
        if option.kind in (int, float):
            assert typed["type"] == ("integer" if option.kind is int else "number")
            assert typed.get("minimum", typed.get("exclusiveMinimum")) == option.lowest
            assert typed.get("maximum") == option.highest
            assert option.limits() in action.help and option.limits() in field["description"]
        assert option.help in action.help and option.help in field["description"]


def test_one_default_everywhere_beam_5_and_the_readme_says_so():
    assert cli() == resolve({}, "api") == {"strategy": "beam", "beam_width": DEFAULT_BEAM_WIDTH}
    assert DecodeConfig(**cli()).describe() == "beam 5"
    assert cli("--beam-width", "1") == {"strategy": "greedy", "beam_width": 1}     # "1 = greedy", as always
    readme = (ROOT / "README.md").read_text()
    assert "default everywhere is beam search with 5 beams" in readme


def test_labels_come_from_describe_and_the_api_names_its_own_fields():
    config = DecodeConfig(**cli("--strategy", "sample", "--temperature", "0.7", "--top-p", "0.9", "--n", "3"))
    assert config.describe() == "sample T 0.7, top-p 0.9, n 3"
    assert shown(config) == {"n_best": 3, "no_repeat_ngram_size": 0, "top_k": 0, "seed": 0, "temperature": 0.7,
                             "top_p": 0.9}
    assert shown(DecodeConfig(beam_width=3, num_return_sequences=2)) == {
        "beam_width": 3, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "n_best": 2}


# --- 34.10: options that do not apply, or values out of range: one line, the user's own name -------------------
@pytest.mark.parametrize("argv, message", [
    (["--temperature", "0.5"], "--temperature is used only by --strategy sample, not by beam (the default)"),
    (["--groups", "3"], "--groups is used only by --strategy diverse, not by beam (the default)"),
    (["--seed", "-1"], "--seed is used only by --strategy sample"),
    (["--strategy", "sample", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["--strategy", "greedy", "--beam-width", "3"], "--beam-width is used only by --strategy beam or --strategy "
                                                    "diverse, not by greedy"),
    (["--strategy", "greedy", "--length-penalty", "0.5"], "--length-penalty is used only by"),
    (["--beam-width", "0"], "--beam-width must be a whole number between 1 and 100, got 0"),
    (["--beam-width", "101"], "--beam-width must be a whole number between 1 and 100, got 101"),
    (["--beam-width", "2", "--n-best", "3"], "--n-best (3) must be <= --beam-width (2); raise --beam-width"),
    (["--strategy", "greedy", "--n-best", "2"], "--n-best 2 needs beam search"),
    (["--strategy", "diverse", "--beam-width", "6", "--groups", "4"], "--groups (4) must divide --beam-width (6), "
                                                                      "e.g. --beam-width 8"),
    (["--strategy", "sample", "--top-p", "2"], "--top-p must be in (0, 1] (1 = off), got 2.0"),
    (["--strategy", "sample", "--temperature", "-1"], "--temperature must be > 0"),
    (["--strategy", "sample", "--n", "101"], "--n-best must be a whole number between 1 and 100, got 101"),
    (["--min-length", "30"], "--min-length (30) must be less than the bundle's caption length (30)"),
    (["--min-length", "5", "--max-length", "5"], "--min-length (5) must be less than --max-length (5)"),
    (["--length-penalty", "1e308"], "--length-penalty must be between -5 and 5"),
    (["--repetition-penalty", "1e300"], "--repetition-penalty must be at most 100"),
    (["--strategy", "sample", "--temperature", "1e300"], "--temperature must be at most 100"),
])
def test_the_cli_refuses_in_one_line_with_the_users_flag(argv, message):
    with pytest.raises(ValueError) as err:
        cli(*argv)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text
    assert "_" not in text, text                  # flags have dashes: no DecodeConfig field name leaks


@pytest.mark.parametrize("given, message", [
    ({"temperature": 0.5}, "temperature is used only by strategy=sample, not by beam (the default)"),
    ({"strategy": "sample", "temperature": -1.0}, "temperature must be > 0"),
    ({"strategy": "sample", "top_p": 2.0}, "top_p must be in (0, 1] (1 = off), got 2.0"),
    ({"beam_width": 2, "num_return_sequences": 3}, "n_best (3) must be <= beam_width (2)"),
    ({"strategy": "diverse", "num_groups": 3, "beam_width": 4}, "groups (3) must divide beam_width (4)"),
    ({"min_length": 9, "max_length": 4}, "min_length (9) must be less than max_length (4)"),
])
def test_the_api_refuses_with_its_own_field_names(given, message):
    with pytest.raises(ValueError) as err:
        resolve(given, "api")
    assert str(err.value).startswith(message)
    assert "num_return_sequences" not in str(err.value) and "num_groups" not in str(err.value)


def test_main_exits_2_before_loading_any_model(capsys, tmp_path):
    missing = tmp_path / "no-such-bundle"                # never read: the options are refused first
    for argv, flag in ((["--temperature", "0.5"], "--temperature"), (["--strategy", "sample", "--top-p", "1e-300"],
                                                                     "--top-p"), (["--groups", "3"], "--groups")):
        assert main(["caption", str(tmp_path / "x.jpg"), "--bundle", str(missing), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag} ") and "\n" not in err, err


# --- 34.8: ranges the arithmetic carries -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 1e-40}, "temperature must be at least 0.01 (below it the arithmetic overflows"),
    ({"temperature": 1e-300}, "temperature must be at least 0.01"),
    ({"top_p": 1e-300}, "top_p must be at least 0.01 (a smaller nucleus is the likeliest word alone"),
])
def test_values_the_float32_arithmetic_cannot_carry_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        DecodeConfig(strategy="sample", **kwargs)
    assert str(err.value).startswith(message)
    flag = "--" + next(iter(kwargs)).replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag} must be at least 0.01"):
        cli("--strategy", "sample", flag, str(next(iter(kwargs.values()))))


def test_sampling_distribution_never_returns_nan_on_float32_rows():
    log_probs = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], np.float32))       # (2, 3) float32
    for kwargs in ({"top_p": 1e-300}, {"temperature": 1e-40}, {"temperature": 1e-300}, {"temperature": 1e-40,
                                                                                        "top_p": 1e-300}):
        with np.errstate(all="raise"):                     # no overflow warning escapes either
            probs = sampling_distribution(log_probs, **kwargs)
        assert np.isfinite(probs).all(), kwargs
        np.testing.assert_array_equal(probs, [[1, 0, 0], [0, 1, 0]])      # the likeliest word, as greedy


class Float32Markov(MarkovDecoder):
    """The real decoders' dtype: float32 log-probabilities, where 1e-300 rounds to 0 and 1e-40 is subnormal."""

    def step(self, context, tokens, state):
        logp, state, extras = super().step(context, tokens, state)
        return logp.astype(np.float32), state, extras


@pytest.mark.parametrize("extreme", [{"temperature": 0.01}, {"top_p": 0.01}, {"temperature": 0.01, "top_p": 0.01},
                                     {"temperature": 100.0}, {"top_k": 1, "temperature": 100.0},
                                     {"repetition_penalty": 100.0}, {"repetition_penalty": 1e-3}])
def test_sampling_at_the_accepted_extremes_gives_finite_non_empty_captions(extreme):
    vocab = tiny_vocab(6)
    model = Float32Markov(len(vocab), 3)
    feats = np.random.default_rng(3).normal(size=(5, len(vocab))).astype(np.float32)
    config = DecodeConfig(strategy="sample", num_return_sequences=4, max_length=8, seed=1, **extreme)
    for caps in decode(model, feats, vocab, config):
        for c in caps:
            assert c.words and all(w in vocab.itos[4:] for w in c.words), c
            assert math.isfinite(c.log_prob) and math.isfinite(c.score) and all(0 < p <= 1 for p in c.token_probs)


def test_the_smallest_nucleus_on_float32_samples_the_likeliest_word_like_greedy():
    vocab = tiny_vocab(6)
    model = Float32Markov(len(vocab), 4)
    feats = np.random.default_rng(4).normal(size=(4, len(vocab))).astype(np.float32)
    greedy = decode(model, feats, vocab, DecodeConfig(max_length=8))
    sampled = decode(model, feats, vocab, DecodeConfig(strategy="sample", num_return_sequences=2, max_length=8,
                                                       top_p=OPTION["top_p"].floor))
    for g, s in zip(greedy, sampled):
        assert all(c.words == g[0].words and math.isfinite(c.log_prob) for c in s)


# --- 34.11: distinct n-best lists -------------------------------------------------------------------------------
class ThreeWords:
    """Step 0: a -0.1, b -1.0, c -2.0; then every caption ends. Undiverse groups all pick "a"."""

    vocab = Vocabulary(["a", "b", "c"])

    def start(self, features, repeat=1):
        return np.zeros((len(features) * repeat, 1)), [np.zeros((len(features) * repeat, 1))]

    def step(self, context, tokens, state):
        t = state[0][:, 0]
        p = np.full((len(tokens), len(self.vocab)), 1e-9)
        p[t == 0, 4:7] = np.exp([-0.1, -1.0, -2.0])
        p[t > 0, self.vocab.end_id] = 1.0
        return np.log(p / p.sum(axis=1, keepdims=True)), [state[0] + 1], None


def test_diverse_n_best_holds_distinct_captions_filled_from_further_candidates():
    model, vocab = ThreeWords(), ThreeWords.vocab
    config = DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=0.6, max_length=3,
                          num_return_sequences=3)
    raw = beam_search(model, np.zeros((1, 1)), vocab, config)[0]
    assert [c.words for c in raw] == [["a"], ["a"], ["a"]]              # every group's best is "a" (the search)
    [nbest] = decode(model, np.zeros((1, 1)), vocab, config)
    assert [c.words for c in nbest] == [["a"], ["b"], ["c"]]             # what a user gets: three captions
    assert [c.score for c in nbest] == sorted((c.score for c in nbest), reverse=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", [
    DecodeConfig(strategy="diverse", beam_width=6, num_groups=3, diversity_penalty=0.5, num_return_sequences=3,
                 max_length=6),
    DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, diversity_penalty=0.0, num_return_sequences=4,
                 max_length=5),
    DecodeConfig(beam_width=5, num_return_sequences=5, max_length=3),
], ids=["diverse-6-3", "diverse-no-penalty", "beam-5"])
def test_every_beam_n_best_holds_distinct_captions(seed, config):
    vocab = tiny_vocab(4)
    model = MarkovDecoder(len(vocab), seed)
    model.table[:, :, vocab.end_id] += 1.5                                # short captions: collisions are likely
    feats = np.random.default_rng(seed).normal(size=(6, len(vocab)))
    raw = beam_search(model, feats, vocab, config)
    for caps, before in zip(decode(model, feats, vocab, config), raw):
        texts = [c.text for c in caps]
        assert len(texts) == len(set(texts)) and texts[0] == before[0].text   # the best caption is unchanged
        assert len(caps) >= len({c.text for c in before})                    # never fewer than the search had
