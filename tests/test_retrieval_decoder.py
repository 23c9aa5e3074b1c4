"""The retrieval-augmented decoder (captioning.models.retrieval / retrieval_steps): its copy gate writes a word
found only in a retrieved caption, every decoding strategy and constraint runs with it, and training targets
copy out-of-vocabulary words of the neighbours' captions."""
import numpy as np
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding.config import DecodeConfig
from captioning.decoding.search import decode
from captioning.models.retrieval import RetrievalDecoder, copy_loss, mixed_probability
from captioning.models.retrieval_steps import RetrievalStepDecoder, encode_memory
from captioning.training.retrieval import make_examples, nearest

VOCAB = Vocabulary(["a", "boat", "on", "the", "water"])


class Memory:
    """Every photo retrieves the same remembered caption, holding a word the vocabulary lacks."""

    def __init__(self, text="A zeppelin over the water", source="user"):
        self.text, self.source = text, source

    def retrieve(self, features, k):
        return [[(self.text, "mine.jpg", 0.9, self.source)] for _ in range(len(features))]


def _decoder(copy_bias: float, copy=True, text="A zeppelin over the water", unk_weight: float | None = None,
             source="user", prev_keys=False):
    model = RetrievalDecoder(len(VOCAB), 6, embed_dim=8, units=8, dropout=0.0, neighbours=2, caption_tokens=5,
                             unk_gate=unk_weight is not None, prev_keys=prev_keys)
    model.build()
    w, _ = model.gate.get_weights()
    w = np.zeros_like(w)
    if unk_weight is not None:
        w[-1] = unk_weight                      # the gate's input: the attention on <unk> memory words
    model.gate.set_weights([w, np.full((1,), copy_bias, np.float32)])   # p_gen = sigmoid(bias + ...)
    return RetrievalStepDecoder(model, Memory(text, source), VOCAB, copy=copy)


FEATURES = np.random.default_rng(0).random((3, 6)).astype(np.float32)


def test_the_copy_gate_writes_an_out_of_vocabulary_word_of_a_retrieved_caption():
    assert "zeppelin" not in VOCAB.stoi
    # p_gen ~ 0: every word comes from the remembered caption (attention spreads over its words)
    copying = decode(_decoder(-30.0), FEATURES, VOCAB, DecodeConfig(max_length=4))
    assert all(n[0].words and set(n[0].words) <= {"a", "zeppelin", "over", "the", "water"} for n in copying)
    only = decode(_decoder(-30.0, text="Zeppelin"), FEATURES, VOCAB, DecodeConfig(beam_width=2, max_length=3))
    assert all(n[0].words[0] == "zeppelin" for n in only)
    assert only[0][0].copied_words[0] == "zeppelin"
    assert only[0][0].memory_hits == [{"image": "mine.jpg", "caption": "Zeppelin", "similarity": 0.9, "source": "user"}]
    generating = decode(_decoder(-30.0, copy=False, text="Zeppelin"), FEATURES, VOCAB,
                        DecodeConfig(max_length=4))                                    # the gate forced to 1
    assert not any("zeppelin" in n[0].words for n in generating)


@pytest.mark.parametrize("config", [
    DecodeConfig(max_length=5),
    DecodeConfig(beam_width=3, num_return_sequences=3, max_length=5),
    DecodeConfig(strategy="sample", num_return_sequences=2, seed=1, max_length=5),
    DecodeConfig(strategy="diverse", beam_width=4, num_groups=2, diversity_penalty=0.5, max_length=5),
    DecodeConfig(beam_width=3, banned_words=("zeppelin",), max_length=5),
    DecodeConfig(beam_width=3, no_repeat_word=True, no_repeat_ngram_size=2, repetition_penalty=1.5, max_length=5),
])
@pytest.mark.parametrize("prev_keys", [False, True])
def test_every_strategy_and_constraint_runs_batched(config, prev_keys):
    steps = _decoder(0.0, prev_keys=prev_keys, unk_weight=-1.0 if prev_keys else None)
    one_by_one = decode(steps, FEATURES, VOCAB, config, batch_size=1)
    batched = decode(steps, FEATURES, VOCAB, config, batch_size=2)
    assert [[c.words for c in n] for n in batched] == [[c.words for c in n] for n in one_by_one]
    for n in batched:
        assert 1 <= len(n) <= config.num_return_sequences
        for caption in n:
            assert len(caption.token_probs) <= config.max_length
            assert all(0.0 <= p <= 1.0 + 1e-6 for p in caption.token_probs)
            if config.banned_words:
                assert "zeppelin" not in caption.words
            if config.no_repeat_word:
                assert all(a != b for a, b in zip(caption.words, caption.words[1:]))


def test_training_targets_copy_out_of_vocabulary_words_and_the_loss_is_finite():
    captions = [[["a", "zeppelin", "on", "the", "water"]], [["a", "zeppelin", "over", "water"]],
                [["a", "boat", "on", "the", "water"]]]
    near = nearest(np.eye(3, 6, dtype=np.float32) + 0.1, np.eye(3, 6, dtype=np.float32) + 0.1, 2, exclude_self=True)
    assert all(i not in row for i, row in enumerate(near))            # a photo never retrieves itself
    memory, ext, inputs, targets, photo, hidden = make_examples([0, 1, 2], captions, near, VOCAB, 2, 5,
                                                                np.random.default_rng(0), fixed_k=2)
    assert not hidden.any()                    # no copy-only targets unless asked
    row = list(photo).index(0)                 # photo 0's neighbours (1 and 2) hold "zeppelin": a copy target
    assert targets[row, 1] >= len(VOCAB) and targets[row, 1] in ext[row]
    assert inputs[row, 2] == VOCAB.unk_id      # the decoder reads an extended id back as <unk>
    ids, ext_ids, extra = encode_memory([[["a", "zeppelin"]]], VOCAB, 2, 5)
    assert ids[0, 1] == VOCAB.unk_id and extra == {"zeppelin": len(VOCAB)} and ext_ids[0, 1] == len(VOCAB)
    model = RetrievalDecoder(len(VOCAB), 6, embed_dim=8, units=8, neighbours=2, caption_tokens=5)
    model.build()
    loss = copy_loss(model, (np.eye(3, 6, dtype=np.float32)[photo], memory, ext, inputs, targets), training=False)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_copy_only_targets_hide_a_shared_content_word_from_the_vocabulary():
    vocab = Vocabulary(["a", "dog", "on", "the", "grass", "runs"])
    target = ["a", "dog", "runs", "on", "the", "grass"]
    captions = [[target], [["a", "dog", "on", "the", "grass"]], [["the", "dog", "runs"]]]
    near = np.array([[1, 2], [0, 2], [0, 1]])
    seen = set()
    for seed in range(12):
        memory, ext, inputs, targets, photo, hidden = make_examples(
            [0], captions, near, vocab, 2, 6, np.random.default_rng(seed), fixed_k=2, copy_rate=1.0)
        word = vocab.itos[hidden[0, 0]]
        seen.add(word)
        assert word in {"dog", "grass", "runs"}                          # shared content words only, never "a"/"the"
        at = target.index(word)
        copy_id = targets[0, at]
        assert copy_id >= len(vocab)                                      # only copying can produce it ...
        slots = [j for j, t in enumerate(memory[0]) if ext[0, j] == copy_id]
        assert slots and all(memory[0, j] == vocab.unk_id for j in slots)  # ... from the memory, where it reads <unk>
        assert not any(memory[0] == vocab.stoi[word])
        assert inputs[0, at + 1] == vocab.unk_id                          # the decoder reads it back as <unk>
        others = [vocab.stoi.get(w) for w in target if w != word]
        assert [t for i, t in enumerate(targets[0, :len(target)]) if target[i] != word] == others
    assert seen == {"dog", "grass", "runs"}
    _, _, _, targets, _, hidden = make_examples([0], captions, near, vocab, 2, 6, np.random.default_rng(0),
                                                fixed_k=2, copy_rate=0.0)
    assert not hidden.any() and targets[0, 0] == vocab.stoi["a"] and all(targets[0, :6] < len(vocab))


def test_the_generator_cannot_emit_a_hidden_word_and_the_rest_is_renormalised():
    v = 6
    probs = np.array([[[0.0, 0.1, 0.0, 0.1, 0.6, 0.2]] * 2], np.float32)   # (1, 2, V): word 4 holds 60%
    log_vocab = np.log(np.maximum(probs, 1e-12)).astype(np.float32)
    p_gen = np.ones((1, 2, 1), np.float32)                                  # generator only
    alpha, memory_ext = np.array([[[1.0, 0.0]] * 2], np.float32), np.array([[7, 5]], np.int32)
    targets = np.array([[4, 5]], np.int32)
    free = np.asarray(mixed_probability(log_vocab, p_gen, alpha, memory_ext, targets, v))
    assert np.allclose(free, [[0.6, 0.2]], atol=1e-5)
    hid = np.asarray(mixed_probability(log_vocab, p_gen, alpha, memory_ext, np.array([[7, 5]]), v,
                                       hidden=np.array([[4, 0]])))
    assert np.allclose(hid, [[0.0, 0.5]], atol=1e-5)   # word 4 copy-only: no generator mass, 0.2 / (1 - 0.6)
    copying = np.asarray(mixed_probability(log_vocab, np.zeros_like(p_gen), alpha, memory_ext, np.array([[7, 5]]),
                                           v, hidden=np.array([[4, 0]])))
    assert np.allclose(copying, [[1.0, 0.0]], atol=1e-5)                  # the copy gate brings it from the memory


def test_the_unk_gate_copies_when_the_attention_is_on_a_word_the_vocabulary_lacks():
    # p_gen = sigmoid(30 - 60 x attention on <unk> words): a memory of one unknown word is copied, a memory of
    # known words never is (the generator alone writes)
    unknown = decode(_decoder(30.0, text="Zeppelin", unk_weight=-60.0), FEATURES, VOCAB,
                     DecodeConfig(beam_width=2, max_length=3))
    assert all(n[0].words[0] == "zeppelin" for n in unknown)
    steps = _decoder(30.0, text="water", unk_weight=-60.0)
    decode(steps, FEATURES, VOCAB, DecodeConfig(max_length=3))
    assert np.all(steps.last_gate > 0.99)


def test_the_new_word_boost_lets_a_remembered_new_word_win_and_leaves_known_words_alone():
    # p_gen = sigmoid(30): the trained gate stays shut; the boost lowers its logit by b x the attention on words
    # of the user's captions outside the vocabulary (all of it, for a memory of one unknown word)
    shut = _decoder(30.0, text="Zeppelin")
    assert not any("zeppelin" in n[0].words for n in decode(shut, FEATURES, VOCAB, DecodeConfig(max_length=3)))
    shut.new_word_boost = 60.0
    assert all(n[0].words[0] == "zeppelin" for n in decode(shut, FEATURES, VOCAB, DecodeConfig(max_length=3)))
    for known in (_decoder(30.0, text="water"), _decoder(30.0, text="Zeppelin", source="training")):
        known.new_word_boost = 60.0          # a known word, or a new word of a training caption: never boosted
        decode(known, FEATURES, VOCAB, DecodeConfig(max_length=3))
        assert np.all(known.last_gate > 0.99)


def test_a_recorded_new_word_boost_is_what_the_loaded_bundle_decodes_with(tmp_path):
    from captioning.artifacts.bundle import load_bundle
    from captioning.artifacts.manifest import RetrievalTrainingInfo
    from captioning.evaluation.trust import RetrievalIndex
    from captioning.training.retrieval import record_new_word_boost, write_bundle

    model = RetrievalDecoder(len(VOCAB), 1280, embed_dim=8, units=8, neighbours=2, caption_tokens=5)
    model.build()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 1280))
    index = RetrievalIndex(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [f"p{i}.jpg" for i in range(6)],
                           [["a boat on the water"], ["the water"]] * 3, "mobilenetv2-a0.35-224", k=2)
    path = write_bundle(tmp_path / "rag", model, VOCAB, {"encoder": {"name": "mobilenetv2", "alpha": 0.35},
                                                         "max_length": 8}, index, [], "test")
    assert load_bundle(path, load_results=False).step_decoder().new_word_boost == 0.0
    record_new_word_boost(path, 1.5, "dev sweep")
    bundle = load_bundle(path, load_results=False)          # the manifest's checksums still hold
    assert bundle.step_decoder().new_word_boost == 1.5
    assert bundle.manifest.training["new_word_boost_chosen_by"] == "dev sweep"
    training = bundle.manifest.training                     # typed: written and read through one record
    assert isinstance(training, RetrievalTrainingInfo) and training.new_word_boost == 1.5
    assert (training.neighbours, training.caption_tokens, training.prev_keys) == (2, 5, False)
    assert training.datastore == "6 training photos, every caption"


class _Uniform:
    """A plain step decoder over VOCAB: every word equally likely, no state (an ensemble's other member)."""

    uses_spatial = False

    def start(self, features, repeat: int = 1):
        return np.zeros((len(features) * repeat, 1)), []

    def select(self, context, rows):
        return context[np.asarray(rows)]

    def repeat(self, context, times: int):
        return np.repeat(context, times, axis=0)

    def step(self, context, tokens, state):
        assert np.all(np.asarray(tokens) < len(VOCAB)), tokens        # a copied word reaches it as <unk>
        self.read = [*getattr(self, "read", []), *np.asarray(tokens).tolist()]
        return np.full((len(context), len(VOCAB)), -np.log(len(VOCAB)), np.float32), [], None


def test_an_ensemble_with_a_retrieval_member_averages_over_the_extended_vocabulary_and_can_copy():
    from captioning.models.stepper import EnsembleStepDecoder

    retrieval, plain = _decoder(-30.0, text="Zeppelin"), _Uniform()
    ensemble = EnsembleStepDecoder([retrieval, plain])
    words = ensemble.prepare(FEATURES, VOCAB)
    assert words.itos[len(VOCAB):] == ["zeppelin"]           # the retrieval member's extension, for the whole
    context, state = ensemble.start(FEATURES)
    tokens = np.full(len(FEATURES), VOCAB.stoi["<start>"])
    mixed, _, _ = ensemble.step(context, tokens, state)
    own, _, _ = retrieval.step(context[0], tokens, state)
    assert mixed.shape == own.shape == (3, len(VOCAB) + 1)
    probs = np.exp(mixed.astype(np.float64))
    expected = np.exp(own.astype(np.float64)) / 2
    expected[:, :len(VOCAB)] += 0.5 / len(VOCAB)             # the plain member has no mass on the new word
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    captions = decode(ensemble, FEATURES, VOCAB, DecodeConfig(beam_width=2, max_length=3))
    assert all(n[0].words[0] == "zeppelin" and set(n[0].copied_words) == {"zeppelin"} for n in captions)
    assert captions[0][0].token_probs[0] == pytest.approx(0.5)           # half the retrieval member's copy
    assert captions[0][0].memory_hits[0]["caption"] == "Zeppelin"
    assert VOCAB.stoi["<unk>"] in plain.read                # the copied word, fed back to the plain member
    with pytest.raises(ValueError, match="different memories"):
        EnsembleStepDecoder([retrieval, _decoder(-30.0, text="A balloon")]).prepare(FEATURES, VOCAB)


class _Draws:
    """A random generator whose ``random()`` returns fixed values (counting the calls); ``choice`` is numpy's."""

    def __init__(self, *values, seed=0):
        self.values, self.calls, self.rng = list(values), 0, np.random.default_rng(seed)

    def random(self):
        self.calls += 1
        return self.values.pop(0)

    def choice(self, *args, **kwargs):
        return self.rng.choice(*args, **kwargs)


def test_hidden_words_are_shared_known_content_words_drawn_at_the_given_rate():
    from captioning.training.copy_targets import hidden_ids, hidden_words

    vocab = Vocabulary(["boat", "dog", "red", "the", "on"])
    first = vocab.itos[4]                                        # the lowest id a real word has
    assert first not in ("the", "on")
    target = [first, "dog", "red", "the", "zebra", "on"]
    retrieved = [[first, "dog", "the"], ["red", "zebra", "on"]]
    # 'zebra' is outside the vocabulary, 'the'/'on' are function words: never hidden
    assert hidden_words(target, retrieved, vocab, _Draws(0.0), rate=0.5, most=5) == sorted([first, "dog", "red"])
    assert len(hidden_words(target, retrieved, vocab, _Draws(0.0), rate=0.5)) == 1           # one word by default
    assert hidden_words(target, retrieved, vocab, _Draws(0.5), rate=0.5) == []               # drawn >= rate: none
    assert hidden_words(target, retrieved, vocab, _Draws(0.49), rate=0.5) != []
    off = _Draws(0.0)
    assert hidden_words(target, retrieved, vocab, off, rate=0.0) == [] and off.calls == 0    # rate 0: no draw
    for seed in range(20):                    # drawn without replacement: each shared word at most once
        words = hidden_words(target, retrieved, vocab, _Draws(0.0, seed=seed), rate=1.0, most=3)
        assert words == sorted([first, "dog", "red"])
    ids = hidden_ids(["dog", "red"], vocab, most=3)
    assert ids.dtype == np.int32 and ids.tolist() == [vocab.stoi["dog"], vocab.stoi["red"], 0]
    assert hidden_ids([], vocab, most=0).tolist() == [0]
