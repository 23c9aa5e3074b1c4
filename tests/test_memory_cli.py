"""``caption --memory FILE --memory-images DIR`` with the tiny real bundle: the memory is built for the run, bad
rows are reported with their line numbers, every caption carries the remembered captions it used."""
from __future__ import annotations

import json
import shutil

from test_retrieval import run_cli


def memory_folder(tmp_path, flickr_dir):
    photos = sorted((flickr_dir / "Images").glob("*.jpg"))[:3]
    folder = tmp_path / "mine"
    (folder / "boats").mkdir(parents=True)
    for p in photos[:2]:
        shutil.copy(p, folder / "boats" / p.name)
    (folder / "captions.csv").write_text(
        "image,caption\n"
        f"boats/{photos[0].name},my red kayak on the lake\n"
        f"boats/{photos[1].name},the old red kayak\n"
        "boats/gone.jpg,a photo that is not there\n", encoding="utf-8")
    return folder, photos


def test_caption_with_a_memory_lists_the_remembered_photo_it_is_like(tiny_bundle, mobilenet_weights, flickr_dir,
                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    folder, photos = memory_folder(tmp_path, flickr_dir)
    code, out, err = run_cli("caption", str(photos[0]), "--bundle", str(tiny_bundle), "--weights",
                             str(mobilenet_weights), "--json", "--memory", str(folder / "captions.csv"),
                             "--memory-images", str(folder))
    assert code == 0, err
    assert "memory: 2 captions of 2 photos" in err and "line 4: photo boats/gone.jpg not found" in err
    record = json.loads(out.strip().splitlines()[-1])
    first = record["memory_hits"][0]
    assert first["image"] == f"boats/{photos[0].name}" and first["source"] == "user"
    assert first["similarity"] > 0.99 and first["caption"] == "my red kayak on the lake"
    assert set(record["copied_words"]) <= set(record["caption"].split())
    assert list((tmp_path / "cache" / "features").glob("*/shard-*.json"))       # the photos' features: cached
    code, out, err = run_cli("caption", str(photos[0]), "--bundle", str(tiny_bundle), "--weights",
                             str(mobilenet_weights), "--memory", str(folder / "captions.csv"), "--memory-images",
                             str(folder))
    assert code == 0 and f"remembered boats/{photos[0].name} (" in out


def test_memory_mistakes_stop_before_the_model_loads(tiny_bundle, tmp_path, flickr_dir):
    photo = sorted((flickr_dir / "Images").glob("*.jpg"))[0]
    code, _, err = run_cli("caption", str(photo), "--bundle", str(tiny_bundle), "--memory-images", str(tmp_path))
    assert code == 2 and err.startswith("error: --memory-images goes with --memory")
    (tmp_path / "c.csv").write_text("image,caption\nnone.jpg,a caption\n")
    code, _, err = run_cli("caption", str(photo), "--bundle", str(tiny_bundle), "--memory", str(tmp_path / "c.csv"))
    assert code == 2 and err.startswith("error: --memory:") and "1 of 1 rows are bad" in err
