"""The REST API through a real process: `python -m captioning serve --port FREE --bundle TINY` on loopback."""
import contextlib
import http.client
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ROOT
from PIL import Image

from captioning.artifacts.bundle import load_bundle
from captioning.evaluation.trust import LEVELS
from captioning.service.captioner import Captioner
from captioning.service.limits import MAX_REQUEST_BYTES
from captioning.service.responses import caption_json
from captioning.vision.images import MAX_BYTES, InvalidImageError, load_image


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_api(bundle, weights_dir, log_name="api-server.log", *extra, env=None):
    """`python -m captioning serve` on a free loopback port; yields (base URL, log path), stops it afterwards."""
    port = free_port()
    env = {**os.environ, "CAPTIONING_WEIGHTS_DIR": str(weights_dir), **(env or {})}
    (ROOT / "test-output").mkdir(exist_ok=True)
    log_path = ROOT / "test-output" / log_name
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "captioning", "serve", "--port", str(port), "--bundle",
                                 str(bundle), *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"the API exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"the API did not answer within 180 s; see {log_path}")
            yield url, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def api(tiny_bundle, mobilenet_weights):
    # room for the 20-concurrent test below: no rate limit, a queue longer than the default 8
    with running_api(tiny_bundle, mobilenet_weights.parent, "api-server.log", "--rate-limit", "0",
                     "--max-queue", "32") as (url, log):
        yield url, log


@pytest.fixture(scope="module")
def photos(flickr_dir):
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:6]
    return {n: (flickr_dir / "Images" / n).read_bytes() for n in names}


def post(url, files, **fields):
    return requests.post(f"{url}/v1/captions", files=[("images", f) for f in files],
                         data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()},
                         timeout=300)


def test_health_model_and_docs(api, tiny_bundle):
    url, log = api
    health = requests.get(f"{url}/v1/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert health["requests"] == {"running": 0, "waiting": 0, "abandoned": 0, "slots": 2, "queue": 32}
    model = requests.get(f"{url}/v1/model", timeout=10).json()
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert model["name"] == "tiny" and model["encoder"]["name"] == "mobilenetv2"
    assert model["vocab_size"] == manifest["vocab_size"] and model["decoders"][0]["kind"] == "merge"
    assert model["encoders"] == [model["encoder"]] and model["encoder"]["alpha"] == 0.35
    assert model["decoders"][0]["encoder"] == "mobilenetv2-a0.35-224" and not model["uses_attention"]
    assert model["limits"]["max_bytes_per_image"] == MAX_BYTES
    assert model["has_trust_index"] is True                          # train.py put a calibrated index in it
    assert {r["decoding"] for r in model["test_scores"]} >= {"greedy", "beam"}
    assert "/v1/captions" in requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    assert f"Serving tiny on http://127.0.0.1:{url.rsplit(':', 1)[1]}" in log.read_text()   # loopback by default


def test_the_docs_page_needs_no_network(api):
    """/docs loads Swagger UI from this server (a packaged copy), never from a CDN: it renders offline."""
    url, _ = api
    page = requests.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w+", page.text)      # no external URL (nor //cdn... ones)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        r = requests.get(f"{url}{asset}", timeout=10)
        assert r.status_code == 200 and len(r.content) > 500, asset
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    assert requests.get(f"{url}/redoc", timeout=10).status_code == 404        # ReDoc would load from a CDN


def test_one_caption_with_n_best_scores_and_word_probabilities(api, photos, tiny_bundle, mobilenet_weights):
    url, _ = api
    name, data = next(iter(photos.items()))
    r = post(url, [(name, data, "image/jpeg")], beam_width=3, n_best=2)
    assert r.status_code == 200, r.text
    body = r.json()
    # the API's default reranks the beam's captions by consensus with the nearest training photos
    assert body["decoding"] == {"beam_width": 3, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "n_best": 2,
                                "consensus": 10, "consensus_weight": 1.5}
    r = post(url, [(name, data, "image/jpeg")], beam_width=3, n_best=2, consensus=0)      # plain beam search
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decoding"] == {"beam_width": 3, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "n_best": 2}
    [result] = body["results"]
    assert result["filename"] == name and len(result["captions"]) == 2
    best = result["captions"][0]
    assert best["score"] >= result["captions"][1]["score"]
    assert best["text"] == " ".join(w["word"] for w in best["words"])
    assert all(0 < w["probability"] <= 1 for w in best["words"]) and "attention" not in best
    # the best caption as alt text and as a sidecar's XMP packet (issue 37)
    assert result["alt_text"][0].isupper() and result["alt_text"].endswith(".") and "<unk>" not in result["alt_text"]
    assert result["alt_text"].rstrip(".").lower() == best["text"].replace(" <unk>", "").lower()
    assert f'<rdf:li xml:lang="x-default">{result["alt_text"]}</rdf:li>' in result["xmp"]
    assert "Iptc4xmpExt:AltTextAccessibility" in result["xmp"]
    logs = [math.log(w["probability"]) for w in best["words"]] + [math.log(best["end_probability"])]
    assert sum(logs) == pytest.approx(best["log_prob"], abs=0.01)
    captioner = Captioner(load_bundle(tiny_bundle), mobilenet_weights)
    [local] = captioner.caption_many([data], beam_width=3, num_return_sequences=2)
    assert [c["text"] for c in result["captions"]] == [c.text for c in local.captions]
    # the trust level, as the app and the CLI report it (the tiny bundle has a calibrated retrieval index)
    trust = result["trust"]
    assert trust["level"] == local.trust.level and trust["level"] in LEVELS
    assert trust["in_domain"] == pytest.approx(local.trust.in_domain, abs=1e-3)
    assert trust["explanation"] == local.trust.explanation


def test_several_images_in_one_request_come_back_in_order(api, photos):
    url, _ = api
    files = [(n, d, "image/jpeg") for n, d in list(photos.items())[:3]]
    r = post(url, files, beam_width=1)
    assert r.status_code == 200 and [x["filename"] for x in r.json()["results"]] == [f[0] for f in files]
    singles = [post(url, [f], beam_width=1).json()["results"][0]["captions"][0]["text"] for f in files]
    assert [x["captions"][0]["text"] for x in r.json()["results"]] == singles


def test_a_file_that_is_not_an_image_is_415_with_the_apps_message(api):
    url, _ = api
    r = post(url, [("notes.jpg", b"these are my notes, not a photo", "image/jpeg")])
    with pytest.raises(InvalidImageError) as loader:
        load_image(b"these are my notes, not a photo")
    assert r.status_code == 415 and r.json() == {"detail": f"notes.jpg: {loader.value}"}


def test_a_damaged_image_is_422_and_stops_nothing_else(api, photos):
    url, _ = api
    name, data = next(iter(photos.items()))
    r = post(url, [(name, data, "image/jpeg"), ("cut.jpg", data[: len(data) // 3], "image/jpeg")])
    assert r.status_code == 422 and r.json()["detail"].startswith("cut.jpg: The image file is damaged")
    assert post(url, [(name, data, "image/jpeg")]).status_code == 200      # the server goes on


def test_a_file_over_the_upload_limit_is_413(api):
    url, _ = api
    big = b"\xff\xd8\xff\xe0" + bytes(MAX_BYTES)
    r = post(url, [("huge.jpg", big, "image/jpeg")])
    assert r.status_code == 413
    assert r.json()["detail"] == (f"huge.jpg: The file is larger than the {MAX_BYTES / 2**20:g} MB limit "
                                  f"({len(big):,} bytes). Use a smaller image.")


def test_a_request_declaring_a_huge_body_is_refused_before_it_is_read(api):
    url, _ = api
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/captions")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "Send at most" in json.loads(response.read())["detail"]
    conn.close()


@pytest.mark.parametrize("fields, message", [({"beam_width": 0}, "beam_width"), ({"beam_width": 2, "n_best": 3},
                                             "n_best (3) must be <= beam_width (2)")])   # the API's own names
def test_bad_decoding_options_are_422(api, photos, fields, message):
    url, _ = api
    name, data = next(iter(photos.items()))
    r = post(url, [(name, data, "image/jpeg")], **fields)
    assert r.status_code == 422 and message in r.text


def test_twenty_concurrent_requests_give_the_serial_captions(api, photos):
    url, _ = api
    items = list(photos.items())
    jobs = [(items[i % len(items)], 1 + i % 3) for i in range(20)]

    def ask(job):
        (name, data), beam = job
        r = post(url, [(name, data, "image/jpeg")], beam_width=beam)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["captions"][0]["text"]

    serial = {(name, beam): ask(((name, data), beam)) for (name, data) in items for beam in (1, 2, 3)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        parallel = list(pool.map(ask, jobs))
    assert parallel == [serial[(name, beam)] for (name, _), beam in jobs]
    assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200


def test_attention_weights_come_with_each_word_on_request(tiny_attention_bundle, mobilenet_weights, flickr_dir):
    captioner = Captioner(load_bundle(tiny_attention_bundle), mobilenet_weights)
    image = Image.open(sorted((flickr_dir / "Images").glob("*.jpg"))[0])
    [caption] = captioner.caption(image, beam_width=2)
    out = caption_json(caption, attention=True)
    assert len(out["attention"]) == caption.num_tokens == len(out["words"]) + int(caption.finished)
    assert all(len(row) == captioner.spec.spatial_grid ** 2 for row in out["attention"])   # 7x7 for MobileNetV2
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in out["attention"])
    assert "attention" not in caption_json(caption)


def test_a_bundle_without_maps_says_why_when_attention_is_asked(api, photos):
    """A merge bundle has no per-word maps: the response says why (issue 34.9), and only when maps were asked."""
    url, _ = api
    name, data = next(iter(photos.items()))
    asked = post(url, [(name, data, "image/jpeg")], attention="true").json()
    assert "merge decoders" in asked["attention_note"]
    assert all("attention" not in c for c in asked["results"][0]["captions"])
    assert "attention_note" not in post(url, [(name, data, "image/jpeg")]).json()
