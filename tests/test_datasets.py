"""Flickr30k and COCO-format datasets read into the same records, on small files the tests write."""
import json

import pytest
from PIL import Image

from captioning.data.datasets import load_coco, load_dataset, load_flickr30k
from captioning.data.flickr8k import DataError

WORDS = ["dog", "cat", "man", "woman", "child", "bike", "ball", "beach"]


def caption(i, k):
    return f"A {WORDS[i % len(WORDS)]} near a {WORDS[(i + k) % len(WORDS)]} ."


def make_flickr30k(root, n=30, karpathy=False):
    (root / "flickr30k-images").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (32, 24), (i * 8, 50, 90)).save(root / "flickr30k-images" / f"{1000 + i}.jpg")
        lines += [f"{1000 + i}.jpg#{k}\t{caption(i, k)}" for k in range(5)]
    (root / "results_20130124.token").write_text("\n".join(lines) + "\n")
    if karpathy:
        splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
        images = [{"filename": f"{1000 + i}.jpg", "split": s} for i, s in enumerate(splits)]
        (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))


def make_coco(root, n_train=24, n_val=10):
    (root / "annotations").mkdir(parents=True)
    for part, n, offset in (("train2014", n_train, 0), ("val2014", n_val, 500)):
        (root / part).mkdir()
        images, anns = [], []
        for i in range(n):
            name = f"COCO_{part}_{offset + i:012d}.jpg"
            Image.new("RGB", (40, 30), (20, i * 9, 60)).save(root / part / name)
            images.append({"id": offset + i, "file_name": name})
            anns += [{"id": len(anns), "image_id": offset + i, "caption": caption(i, k)} for k in range(5)]
        (root / "annotations" / f"captions_{part}.json").write_text(json.dumps({"images": images, "annotations": anns}))


def test_flickr30k_hash_split_and_karpathy_split(tmp_path):
    make_flickr30k(tmp_path / "a")
    ds = load_flickr30k(tmp_path / "a")
    assert ds.name == "flickr30k" and len(ds.captions) == 30
    assert sorted(len(v) for v in ds.splits.values()) == [0, 0, 30]        # 30 images: all train, 1000 test/dev
    make_flickr30k(tmp_path / "b", karpathy=True)
    ds = load_dataset("flickr30k", tmp_path / "b")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 26, "dev": 2, "test": 2}
    assert ds.image_path("1000.jpg").is_file()


def test_coco_format_json_with_images_in_their_part_folders(tmp_path):
    make_coco(tmp_path)
    ds = load_coco(tmp_path)
    assert ds.name == "coco" and len(ds.splits["train"]) == 24
    assert len(ds.splits["dev"]) + len(ds.splits["test"]) == 10 and ds.splits["dev"] and ds.splits["test"]
    name = ds.splits["test"][0]
    assert ds.image_path(name).parent.name == "val2014" and ds.image_path(name).is_file()
    assert len(ds.captions[name]) == 5


def test_datasets_report_missing_files_clearly(tmp_path):
    with pytest.raises(DataError, match="results_20130124.token"):
        load_flickr30k(tmp_path)
    with pytest.raises(DataError, match="captions_<part>.json"):
        load_coco(tmp_path)
    make_coco(tmp_path / "c")
    (tmp_path / "c" / "val2014" / "COCO_val2014_000000000500.jpg").unlink()
    with pytest.raises(DataError, match="missing"):
        load_coco(tmp_path / "c")


def test_train_py_runs_on_a_coco_format_dataset(tmp_path, mobilenet_weights):
    import train

    make_coco(tmp_path / "coco", n_train=30, n_val=12)
    out = tmp_path / "artifacts" / "coco"
    code = train.main(["--dataset", "coco", "--data-dir", str(tmp_path / "coco"), "--encoder", "mobilenetv2",
                       "--alpha", "0.35", "--weights", str(mobilenet_weights), "--epochs", "1", "--min-count", "1",
                       "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--no-human",
                       "--no-meteor", "--no-sweep"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["dataset"] == "coco" and manifest["data"]["splits"]["train"] == 30
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert results[0]["n_images"] == len(load_coco(tmp_path / "coco").splits["test"]) > 0
