"""Spatial features are read from the cache a batch at a time, and give exactly what loading them whole gives."""
import numpy as np
import pytest

from captioning.training.fit import make_dataset
from captioning.vision.features import FeatureCache


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    fc = FeatureCache(tmp_path, "toy-32")
    for shard in range(3):                                          # shards of 4, 5 and 6 images
        n = 4 + shard
        names = [f"s{shard}_{i}.jpg" for i in range(n)]
        fc.add_shard(names, rng.normal(size=(n, 8)), rng.normal(size=(n, 9, 8)))
    return fc


def test_rows_match_the_whole_load_in_any_order(cache):
    names = list(cache.index(spatial=True))[::-1][:11] + ["s0_1.jpg"]      # across shards, one repeated
    whole = cache.load(names, spatial=True)
    rows = cache.rows(names, spatial=True)
    assert rows.shape == whole.shape == (12, 9, 8) and rows.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(rows), whole)
    np.testing.assert_array_equal(rows.take([11, 0, 5, 5]), whole[[11, 0, 5, 5]])
    np.testing.assert_array_equal(rows[2:4], whole[2:4])
    np.testing.assert_array_equal(cache.rows(names[:3]).astype(np.float32), cache.load(names[:3]).astype(np.float32))


def test_missing_and_truncated_features_say_what_to_run(cache):
    with pytest.raises(KeyError, match="python train.py features"):
        cache.rows(["nope.jpg"], spatial=True)
    shard = sorted(cache.dir.glob("shard-*.spatial.npy"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated.*python train.py features"):
        cache.rows(list(cache.index(spatial=True)), spatial=True)


def test_dataset_from_rows_equals_dataset_from_memory(cache):
    names = list(cache.index(spatial=True))
    image_index = np.repeat(np.arange(len(names)), 2)
    tokens = np.random.default_rng(1).integers(1, 20, size=(len(image_index), 7)).astype(np.int32)
    tokens[::3, 5:] = 0                                             # some shorter captions
    on_disk = make_dataset(cache.rows(names, spatial=True), image_index, tokens, 4, shuffle=True, seed=3)
    in_memory = make_dataset(cache.load(names, spatial=True), image_index, tokens, 4, shuffle=True, seed=3)
    batches = 0
    for ((f1, x1), y1), ((f2, x2), y2) in zip(on_disk, in_memory):
        assert f1.shape[1:] == (9, 8) and f1.dtype.name == "float32"
        np.testing.assert_array_equal(f1.numpy(), f2.numpy())
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        batches += 1
    assert batches == 8
