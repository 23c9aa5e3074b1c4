"""Feature extraction split across machines: `train.py features --num-shards N --shard-index I`.

Each process extracts a disjoint slice into the same cache folder under its own file names; together they
fill the cache one process would have filled, with byte-identical features.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

import train
from captioning.vision.features import FeatureCache, shard_slice

KEY = "mobilenetv2-a0.35-224"


def test_slices_are_disjoint_cover_everything_and_keep_whole_batches():
    names = [f"img{i:03d}.jpg" for i in range(23)]
    slices = [shard_slice(names, 3, i, block=4) for i in range(3)]
    assert sorted(sum(slices, [])) == names                        # every image once
    assert slices[0][:8] == names[0:4] + names[12:16]              # blocks 0, 3 (round-robin)
    assert slices[2] == names[8:12] + names[20:23]                 # blocks 2, 5 (the short last block)
    assert shard_slice(names, 1, 0, block=4) == names
    with pytest.raises(ValueError):
        shard_slice(names, 2, 2, block=4)


def test_writers_name_their_files_apart_and_clean_only_their_own_temporaries(tmp_path):
    a, b = FeatureCache(tmp_path, KEY, writer="w0of2"), FeatureCache(tmp_path, KEY, writer="w1of2")
    a.add_shard(["x.jpg"], np.ones((1, 3), np.float16))
    b.add_shard(["y.jpg"], np.zeros((1, 3), np.float16))
    a.add_shard(["z.jpg"], np.full((1, 3), 2, np.float16))
    files = sorted(p.name for p in (tmp_path / KEY).glob("*.json"))
    assert files == ["shard-w0of2-00000.json", "shard-w0of2-00001.json", "shard-w1of2-00000.json"]
    in_progress = tmp_path / KEY / "shard-w1of2-00001.pooled.npy.tmp.npy"      # b is still writing
    in_progress.write_bytes(b"...")
    a.remove_temporaries()
    assert in_progress.is_file()
    b.remove_temporaries()
    assert not in_progress.exists()
    reader = FeatureCache(tmp_path, KEY)                           # readers see every writer's shards
    assert reader.load(["z.jpg", "y.jpg", "x.jpg"]).tolist() == [[2, 2, 2], [0, 0, 0], [1, 1, 1]]


@pytest.mark.parametrize("argv, message", [
    (["features", "--num-shards", "0"], "--num-shards must be at least 1, got 0"),
    (["features", "--num-shards", "2", "--shard-index", "2"],
     "--shard-index must be in 0..1 for --num-shards 2, got 2"),
    (["features", "--num-shards", "2", "--shard-index", "-1"], "--shard-index must be in 0..1"),
    (["train", "--num-shards", "2"], "split `train.py features` across machines"),
])
def test_shard_options_are_validated_with_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and message in err


def _features(cache, flickr_dir, weights, *extra):
    cmd = [sys.executable, str(ROOT / "train.py"), "features", "--data-dir", str(flickr_dir), "--encoder",
           "mobilenetv2", "--alpha", "0.35", "--weights", str(weights), "--limit", "20", "--cache-dir",
           str(cache), "--feature-batch-size", "4", "--shard-size", "4", "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _wait(proc):
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_shard_processes_fill_one_cache_byte_identical_to_one_process(tmp_path, flickr_dir, mobilenet_weights):
    shared, single = tmp_path / "shared", tmp_path / "single"
    t0 = time.perf_counter()
    procs = [_features(shared, flickr_dir, mobilenet_weights, "--num-shards", "2", "--shard-index", str(i))
             for i in range(2)]
    one = _features(single, flickr_dir, mobilenet_weights)
    logs = [_wait(p) for p in procs]
    print(f"2 shard processes + 1 single process, concurrently: {time.perf_counter() - t0:.0f}s")
    logs.append(_wait(one))
    for who, log in zip(("slice 0 of 2", "slice 1 of 2", "one process"), logs):
        print(who + ": " + " | ".join(ln for ln in log.splitlines() if " images in " in ln))
    assert "slice 0 of 2" in logs[0] and "slice 1 of 2" in logs[1]

    files = sorted(p.name for p in (shared / "features" / KEY).glob("*.json"))
    assert files and all(f.startswith(("shard-w0of2-", "shard-w1of2-")) for f in files)
    assert not list((shared / "features" / KEY).glob("*.tmp*"))
    ours, theirs = FeatureCache(shared / "features", KEY), FeatureCache(single / "features", KEY)
    by_writer = {w: {n for n, (meta, _) in ours.index().items() if meta.name.startswith(f"shard-{w}-")}
                 for w in ("w0of2", "w1of2")}
    assert by_writer["w0of2"] and by_writer["w1of2"] and not by_writer["w0of2"] & by_writer["w1of2"]

    names = sorted(theirs.index())
    assert len(names) == 20 and sorted(ours.index()) == names
    a, b = ours.load(names), theirs.load(names)
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape == (20, 1280)
    assert a.tobytes() == b.tobytes()                              # byte-identical, not merely close

    # Nothing is missing: train.py (which asks the cache the same question) would extract nothing and train.
    assert ours.missing(names) == []


def test_flipped_features_are_the_mirrored_photos_features(tmp_path, flickr_dir, mobilenet_weights):
    """extract_features(flip=True), the test-time flip's cache, equals extracting mirrored copies of the photos."""
    import tensorflow as tf
    from PIL import Image

    from captioning.vision.encoders import build_encoder, get_spec
    from captioning.vision.features import FLIP_SUFFIX, extract_features

    spec = get_spec("mobilenetv2", 0.35)
    encoder, _ = build_encoder(spec, mobilenet_weights, spatial=True)
    names = sorted(p.name for p in (flickr_dir / "Images").glob("*.jpg"))[:3]
    mirrored = {}
    for name in names:                 # decoded as the pipeline decodes (PIL's JPEG decoder rounds otherwise)
        pixels = tf.io.decode_image(tf.io.read_file(str(flickr_dir / "Images" / name)), channels=3).numpy()
        file = tmp_path / f"{name}.png"                           # lossless: the same pixels, mirrored
        Image.fromarray(pixels[:, ::-1]).save(file)
        mirrored[name] = file
    flipped = FeatureCache(tmp_path / "features", spec.key + FLIP_SUFFIX)
    extract_features(encoder, spec, {n: flickr_dir / "Images" / n for n in names}, flipped, spatial=True,
                     progress=False, flip=True)
    by_file = FeatureCache(tmp_path / "features", "by-file")
    extract_features(encoder, spec, mirrored, by_file, spatial=True, progress=False)
    plain = FeatureCache(tmp_path / "features", spec.key)
    extract_features(encoder, spec, {n: flickr_dir / "Images" / n for n in names}, plain, progress=False)
    assert flipped.dir.name == "mobilenetv2-a0.35-224-flip"
    np.testing.assert_allclose(flipped.load(names, spatial=True).astype(np.float32),
                               by_file.load(names, spatial=True).astype(np.float32), atol=2e-3)
    assert not np.allclose(flipped.load(names).astype(np.float32), plain.load(names).astype(np.float32), atol=0.05)
