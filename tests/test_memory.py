"""The memory's datastore on tiny data: exact search, the user-first rule, files, the HNSW backend, the rerank
hook and the records a caption run writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from captioning.decoding.captions import Caption
from captioning.decoding.config import DecodeConfig
from captioning.evaluation.trust import build_index
from captioning.service.batch import BatchResult
from captioning.service.memory import store as memory
from captioning.service.memory.store import Datastore, Hit, MemoryEntry, MemoryFileError, training_datastore
from captioning.service.memory.use import CaptionMemory, MemoryUse, consensus_rerank, copied_words
from captioning.service.records import _record_from_csv, records_csv, to_record


def store(n=60, d=16, seed=0, user=(), floor=0.9, captions=2) -> tuple[Datastore, np.ndarray]:
    """``n`` photos (``captions`` each), those in ``user`` of source user; features ReLU-like random."""
    rng = np.random.default_rng(seed)
    feats = np.abs(rng.normal(size=(n, d))).astype(np.float32)
    rows, entries = [], []
    for i in range(n):
        for c in range(captions):
            rows.append(i)
            entries.append(MemoryEntry(f"p{i}.jpg", f"photo {i} caption {c}", "user" if i in user else "training"))
    return Datastore.from_arrays(feats[rows], entries, "enc-1", floor), feats


def cosine(a, b):
    a, b = a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def test_one_vector_per_photo_one_hit_per_caption_exact_best_first():
    ds, feats = store()
    assert len(ds) == 120 and ds.photo_count == 60 and ds.vectors.dtype == np.float16
    queries = np.abs(np.random.default_rng(1).normal(size=(4, 16))).astype(np.float32) * 7.0
    hits = ds.search(queries, k=6)
    truth = cosine(queries, feats)                                            # (4, 60)
    for q, photo_hits in enumerate(hits):
        assert len(photo_hits) == 6
        sims = [h.similarity for h in photo_hits]
        assert sims == sorted(sims, reverse=True)
        best3 = [f"p{i}.jpg" for i in np.argsort(-truth[q])[:3]]
        assert [h.entry.image for h in photo_hits] == [b for b in best3 for _ in range(2)]   # both captions of each
        assert photo_hits[0].similarity == pytest.approx(truth[q].max(), abs=2e-3)
        assert {h.entry.caption for h in photo_hits[:2]} == {f"photo {best3[0][1:-4]} caption {c}" for c in (0, 1)}


def test_spatial_maps_are_pooled_and_a_photo_can_be_kept_from_finding_itself():
    ds, feats = store()
    maps = np.repeat(feats[:3, None, :], 4, axis=1)                           # (3, 4, D): every cell the same
    hits = ds.search(maps, k=2, exclude_images=[{"p0.jpg"}, set(), set()])
    assert hits[1][0].entry.image == "p1.jpg" and hits[1][0].similarity == pytest.approx(1.0, abs=2e-3)
    assert all(h.entry.image != "p0.jpg" for h in hits[0]) and len(hits[0]) == 2


def test_user_photos_above_the_floor_come_first_below_it_they_compete_on_similarity():
    rng = np.random.default_rng(3)
    base = np.abs(rng.normal(size=16)).astype(np.float32)
    close = base + 0.05 * np.abs(rng.normal(size=16))                         # a training photo nearly the query
    near = base + 0.6 * np.abs(rng.normal(size=16))                           # a user photo less similar
    far = np.abs(rng.normal(size=16)).astype(np.float32)                      # a user photo unlike it
    entries = [MemoryEntry("train.jpg", "a dog on grass", "training"), MemoryEntry("boat.jpg", "my boat", "user"),
               MemoryEntry("far.jpg", "my cat", "user")]
    sims = cosine(base[None], np.stack([close, near, far]))[0]
    assert sims[0] > sims[1] > sims[2]
    floor = float((sims[1] + sims[2]) / 2)                                    # near clears it, far does not
    ds = Datastore.from_arrays(np.stack([close, near, far]), entries, "enc-1", floor)
    order = [h.entry.image for h in ds.search(base[None], k=3)[0]]
    assert order == ["boat.jpg", "train.jpg", "far.jpg"]
    higher = Datastore.from_arrays(np.stack([close, near, far]), entries, "enc-1", float(sims[1]) + 0.01)
    assert [h.entry.image for h in higher.search(base[None], k=3)[0]] == ["train.jpg", "boat.jpg", "far.jpg"]


def test_a_training_store_comes_from_the_trust_index_and_extends_with_a_user_memory(tmp_path):
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(size=(20, 16))).astype(np.float32)
    captions = [[f"t {i} a", f"t {i} b", "t c"] for i in range(20)]
    index = build_index([f"t{i}.jpg" for i in range(20)], feats, captions, "enc-1")
    train = training_datastore(index)
    # every caption the index keeps per photo (all three of these: it keeps up to CAPTIONS_PER_IMAGE, now 5)
    assert train.photo_count == 20 and len(train) == 60 and train.user_floor == memory.USER_FLOOR
    user, _ = store(n=3, d=16, user={0, 1, 2}, floor=0.5)
    both = train.extended(user)
    assert both.photo_count == 23 and both.user_floor == train.user_floor
    assert {e.source for e in both.entries} == {"training", "user"}
    other = Datastore.from_arrays(np.ones((1, 8)), [MemoryEntry("x", "y", "user")], "enc-2")
    with pytest.raises(ValueError, match="same bundle's encoder"):
        train.extended(other)
    assert both.without({"p1.jpg"}).photo_count == 22


def test_save_and_load_round_trip_without_pickle(tmp_path):
    ds, feats = store(user={1, 2})
    ds.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.json", "memory.npy"]
    back = Datastore.load(tmp_path, encoder="enc-1", dim=16)
    assert back.photos == ds.photos and back.captions == ds.captions and back.user_floor == ds.user_floor
    q = feats[:2]
    assert [[h.entry for h in hs] for hs in back.search(q, 4)] == [[h.entry for h in hs] for hs in ds.search(q, 4)]


@pytest.mark.parametrize("damage, message", [
    (lambda d: np.save(d / "memory.npy", np.zeros((60, 16), np.float32)), "expected float16"),
    (lambda d: np.save(d / "memory.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a numpy"),
    (lambda d: (d / "memory.json").write_text("{"), "not valid JSON"),
    (lambda d: np.save(d / "memory.npy", np.load(d / "memory.npy")[::-1].copy()), "checksum"),
    (lambda d: (d / "memory.npy").unlink(), "missing"),
])
def test_load_refuses_a_damaged_memory(tmp_path, damage, message):
    ds, _ = store()
    ds.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(MemoryFileError, match=message):
        Datastore.load(tmp_path)


def test_load_refuses_scaled_rows_and_a_foreign_encoder(tmp_path):
    ds, _ = store()
    ds.save(tmp_path)
    with pytest.raises(MemoryFileError, match="encoder 'enc-1'"):
        Datastore.load(tmp_path, encoder="other-224")
    with pytest.raises(MemoryFileError, match="16-d rows"):
        Datastore.load(tmp_path, dim=32)
    scaled = (np.load(tmp_path / "memory.npy").astype(np.float32) * 2).astype(np.float16)
    np.save(tmp_path / "memory.npy", scaled)
    meta = json.loads((tmp_path / "memory.json").read_text())
    meta["sha256"] = memory._checksum(scaled)                                   # a consistent pair, but not unit
    (tmp_path / "memory.json").write_text(json.dumps(meta))
    with pytest.raises(MemoryFileError, match="norm"):
        Datastore.load(tmp_path)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_an_approximate_backend_above_the_threshold_finds_what_exact_search_finds_and_keeps_the_rule(
        kind, monkeypatch):
    pytest.importorskip({"ivf": "faiss", "hnsw": "hnswlib"}[kind])
    from captioning.service.memory import ann as memory_ann

    monkeypatch.setattr(memory_ann, "available", lambda: kind)
    ds, feats = store(n=3000, d=32, user={5, 6, 7}, floor=0.0, captions=1)
    exact = Datastore(ds.vectors, ds.photos, ds.captions, "enc-1", 2.0)          # no user photo clears 2.0
    ann = Datastore(ds.vectors, ds.photos, ds.captions, "enc-1", 2.0, ann_min_photos=1000)
    assert exact.backend == "exact" and ann.backend == kind
    queries = feats[100:150] + 0.3 * np.abs(np.random.default_rng(9).normal(size=(50, 32)))
    got = [{h.entry.image for h in hs} for hs in ann.search(queries, 10)]
    want = [{h.entry.image for h in hs} for hs in exact.search(queries, 10)]
    assert np.mean([len(g & w) / 10 for g, w in zip(got, want)]) >= 0.9
    ruled = Datastore(ds.vectors, ds.photos, ds.captions, "enc-1", -1.0, ann_min_photos=1000)   # all users first
    first = [h.entry.image for h in ruled.search(queries[:1], 3)[0]]
    assert first == [h.entry.image for h in Datastore(ds.vectors, ds.photos, ds.captions, "enc-1", -1.0).search(
        queries[:1], 3)[0]]
    assert sorted(first) == ["p5.jpg", "p6.jpg", "p7.jpg"]                        # the user photos, searched exactly
    user, _ = store(n=2, d=32, user={0, 1}, floor=0.0, captions=1)
    assert ann.extended(user).ann() is ann.ann()                  # a user memory never rebuilds the index


# --- the rerank hook and the records -----------------------------------------------------------------------------
def cap(text, logp):
    words = text.split()
    return Caption(words, logp * (len(words) + 1), logp, [float(np.exp(logp))] * (len(words) + 1))


def hit(caption, sim=0.8, source="user"):
    return Hit(MemoryEntry("mine.jpg", caption, source), sim)


def test_consensus_rerank_lets_remembered_words_win_and_names_them():
    nbest = [cap("a man is standing on the beach", -0.9), cap("a man stands by a red boat", -1.0)]
    ranked = consensus_rerank(nbest, [hit("my red boat at the pier")])
    assert ranked[0].text == "a man stands by a red boat"
    assert copied_words(ranked[0].words, [hit("my red boat at the pier")]) == ["red", "boat"]
    assert consensus_rerank(nbest, []) == nbest                                  # no remembered photo: unchanged


class FakeCaptioner:
    """What CaptionMemory needs of a Captioner: spec.key and decode (a fixed 2-best list per photo)."""

    class spec:
        key = "enc-1"

    def decode(self, features, config):
        return [[cap("a dog runs on the grass", -0.8), cap("a dog runs by my red boat", -1.0)][
                :config.num_return_sequences] for _ in range(len(features))]


def test_caption_memory_reranks_only_photos_like_a_remembered_one():
    vectors = np.eye(4, dtype=np.float32)[:2] + 0.01
    train = Datastore.from_arrays(vectors[:1], [MemoryEntry("t.jpg", "a dog", "training")], "enc-1", 0.9)
    user = Datastore.from_arrays(vectors[1:], [MemoryEntry("boat.jpg", "my red boat", "user")], "enc-1")
    mem = CaptionMemory(train.extended(user), k=2, n_candidates=2)
    queries = np.stack([vectors[1], vectors[0]])                   # like the boat; like the training photo
    decoded, uses = mem.decode(FakeCaptioner(), queries, DecodeConfig(beam_width=2))
    assert [d[0].text for d in decoded] == ["a dog runs by my red boat", "a dog runs on the grass"]
    assert len(decoded[0]) == 1                                    # the n-best asked for, after the rerank
    assert [h.entry.image for h in uses[0].hits] == ["boat.jpg"] and uses[0].copied_words == ["my", "red", "boat"]
    assert uses[0].reranked and not uses[1].reranked and uses[1].hits == [] and uses[1].copied_words == []


def test_records_carry_memory_hits_and_copied_words_in_json_and_csv():
    use = MemoryUse([hit("my red boat", 0.81234)], ["red", "boat"])
    result = BatchResult(0, "x.jpg", [cap("a red boat", -0.5)], None, None, use)
    record = to_record(result)
    assert record["memory_hits"] == [{"image": "mine.jpg", "caption": "my red boat", "similarity": 0.8123,
                                      "source": "user"}]
    assert record["copied_words"] == ["red", "boat"]
    text = records_csv([record])
    header, row = text.splitlines()
    assert "memory_hits" in header and "mine.jpg: my red boat (0.8123)" in row and "red boat" in row
    import csv
    import io
    back = _record_from_csv(next(csv.DictReader(io.StringIO(text))))
    assert records_csv([back]) == text                             # a rerun keeps the cells as they were


def test_a_retrieval_decoder_reads_the_store_through_its_own_copy_and_reports_hits(monkeypatch):
    """rag's decoder: a step decoder with a ``memory``; mem hands a shallow copy the store (user-first hits) and
    reads back each caption's memory_hits / copied_words; the shared step decoder is never changed."""
    import captioning.decoding.search

    class Steps:
        memory = "the bundle's own index"

        def lookup(self, features):
            raise AssertionError("not called here")

    seen = {}

    def fake_decode(steps, features, vocab, config):
        seen["steps"] = steps
        out = []
        for photo in steps.memory.retrieve(features, 2):
            c = cap("a dog by the zorblat", -1.0)
            c.memory_hits = [{"image": img, "caption": text, "similarity": sim, "source": src}
                             for text, img, sim, src in photo]
            c.copied_words = ["zorblat"]
            out.append([c])
        return out

    monkeypatch.setattr(captioning.decoding.search, "decode", fake_decode)
    vectors = np.eye(3, dtype=np.float32)[:2] + 0.01
    train = Datastore.from_arrays(vectors[:1], [MemoryEntry("t.jpg", "a dog", "training")], "enc-1", 0.9)
    user = Datastore.from_arrays(vectors[1:], [MemoryEntry("z.jpg", "my zorblat", "user")], "enc-1")
    captioner = FakeCaptioner()
    captioner.steps, captioner.vocab = Steps(), None
    decoded, uses = CaptionMemory(train.extended(user), k=2).decode(captioner, vectors[1:], DecodeConfig())
    assert seen["steps"] is not captioner.steps and captioner.steps.memory == "the bundle's own index"
    assert [(h.entry.image, h.entry.source) for h in uses[0].hits] == [("z.jpg", "user"), ("t.jpg", "training")]
    assert uses[0].copied_words == ["zorblat"] and decoded[0][0].text == "a dog by the zorblat"


def test_a_memory_may_hold_a_single_photo_where_fine_tuning_needs_three(tmp_path):
    from PIL import Image

    from captioning.data.flickr8k import DataError
    from captioning.data.user_data import load_user_data

    Image.new("RGB", (32, 24), (200, 40, 40)).save(tmp_path / "boat.png")
    (tmp_path / "c.csv").write_text("image,caption\nboat.png,my red boat\nboat.png,the boat\nboat.png,\ngone.png,x\n",
                                    encoding="utf-8")
    data = load_user_data(tmp_path / "c.csv", tmp_path, split=False)
    assert data.captions == {"boat.png": ["my red boat", "the boat"]} and data.splits == {}
    assert [(b.line, b.kind) for b in data.bad] == [(4, "empty_caption"), (5, "missing_photo")]
    with pytest.raises(DataError, match="at least 3"):
        load_user_data(tmp_path / "c.csv", tmp_path)
