"""The API's memory with the tiny real model in a uvicorn thread: /v1/memory adds, lists and forgets photos
(persisted), guarded like every route, and captions of a remembered-like photo carry the captions they used."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest
import requests

from captioning.service.captioner import Captioner
from captioning.service.limits import ServerSettings
from captioning.service.memory.bank import MemoryBank
from captioning.service.memory.routes import server_memory
from captioning.service.serve import bind, create_app

KEY = "a-key-long-enough-to-count-1234"


@pytest.fixture(scope="module")
def captioner(tiny_bundle, mobilenet_weights):
    return Captioner.from_bundle(tiny_bundle, mobilenet_weights)


@pytest.fixture(scope="module")
def photos(flickr_dir):
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:3]
    return {n: (flickr_dir / "Images" / n).read_bytes() for n in names}


@contextlib.contextmanager
def memory_server(captioner, root, **settings):
    import uvicorn

    app = create_app(captioner, settings=ServerSettings(**settings), memory=server_memory(captioner, root=root))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_remember_caption_list_and_forget_through_the_api(captioner, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    names = list(photos)
    with memory_server(captioner, tmp_path / "memory", rate_per_minute=0) as url:
        r = requests.post(f"{url}/v1/captions", files=[("images", (names[0], photos[names[0]]))], timeout=120)
        assert r.status_code == 200 and "memory_hits" not in r.json()["results"][0]     # nothing remembered yet
        r = requests.post(f"{url}/v1/memory", files=[("images", (n, photos[n])) for n in names[:2]],
                          data={"captions": ["my red kayak on the lake\nthe kayak again", "an old red kayak"]},
                          timeout=120)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": names[:2], "count": 2}
        listed = requests.get(f"{url}/v1/memory", timeout=10).json()
        assert listed["count"] == 2 and listed["photos"][0]["captions"] == ["my red kayak on the lake",
                                                                            "the kayak again"]
        assert "user" in listed["rule"] and 0 < listed["user_floor"] < 1
        r = requests.post(f"{url}/v1/captions", files=[("images", (names[0], photos[names[0]]))], timeout=120)
        result = r.json()["results"][0]
        hits = result["memory_hits"]
        assert hits[0]["image"] == names[0] and hits[0]["source"] == "user" and hits[0]["similarity"] > 0.99
        assert {h["caption"] for h in hits[:2]} == {"my red kayak on the lake", "the kayak again"}
        assert set(result["copied_words"]) <= set(result["captions"][0]["text"].split())
        assert requests.delete(f"{url}/v1/memory/{names[0]}", timeout=10).json() == {"removed": names[0],
                                                                                     "count": 1}
        assert requests.delete(f"{url}/v1/memory/{names[0]}", timeout=10).status_code == 404
    bank = MemoryBank.for_captioner(captioner, tmp_path / "memory")      # persisted: a new server sees it
    assert [p["image"] for p in bank.listing()] == [names[1]] and bank.listing()[0]["photo"].is_file()
    assert not bank.photo_file(names[0]).exists()                         # the forgotten photo's copy is gone


def test_memory_routes_are_guarded_and_refuse_bad_uploads(captioner, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    name, data = next(iter(photos.items()))
    with memory_server(captioner, tmp_path / "memory", api_key=KEY, rate_per_minute=0) as url:
        assert requests.get(f"{url}/v1/memory", timeout=10).status_code == 401
        assert requests.delete(f"{url}/v1/memory/x.jpg", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        r = requests.post(f"{url}/v1/memory", files=[("images", (name, data))], data={"captions": ["a", "b"]},
                          headers=auth, timeout=60)
        assert r.status_code == 422 and "one per photo" in r.json()["detail"]
        r = requests.post(f"{url}/v1/memory", files=[("images", ("notes.jpg", b"not a photo at all"))],
                          data={"captions": ["a caption"]}, headers=auth, timeout=60)
        assert r.status_code in (415, 422) and "cannot be read" in r.json()["detail"]
        r = requests.post(f"{url}/v1/memory", files=[("images", (name, data))], data={"captions": ["  ...  "]},
                          headers=auth, timeout=60)
        assert r.status_code == 422 and "at least one caption" in r.json()["detail"]
        r = requests.post(f"{url}/v1/memory", files=[("images", (f"{i}.jpg", data)) for i in range(17)],
                          data={"captions": ["c"] * 17}, headers=auth, timeout=60)
        assert r.status_code == 413
        assert requests.get(f"{url}/v1/memory", headers=auth, timeout=10).json()["count"] == 0   # nothing kept
