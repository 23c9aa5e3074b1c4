"""The API's guards: access off loopback, the port check, the API key, the rate limit, CORS, the bounded queue,
stalled uploads and clients that leave. Server behaviour through real `python -m captioning serve` processes on
loopback ports; request/response shapes through the same app in a uvicorn thread with a stub model."""
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import anyio
import pytest
import requests
from conftest import ROOT
from fastapi import HTTPException
from PIL import Image
from test_serve import free_port, post, running_api

from captioning.service.admission import Admission, ClientGone
from captioning.service.guards import RateLimit, api_key, check_access, is_loopback
from captioning.service.limits import ServerSettings
from captioning.service.serve import bind, create_app

KEY = "k3y-for-the-tests-only-0123456789"


def serve_cli(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONING_API_KEY"} | (env or {})
    return subprocess.run([sys.executable, "-m", "captioning", "serve", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


# --- refusing to start, at once and in one line ------------------------------------------------------------------
def test_serve_refuses_the_network_without_a_key_before_loading_anything(tiny_bundle):
    start = time.perf_counter()
    run = serve_cli("--host", "0.0.0.0", "--port", str(free_port()), "--bundle", str(tiny_bundle))
    assert run.returncode == 2 and run.stdout == ""
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: --host 0.0.0.0 opens the API to the network: set CAPTIONING_API_KEY")
    assert "--insecure-no-auth" in line and "--api-key-file" in line
    assert time.perf_counter() - start < 20                         # no TensorFlow, no model


def test_serve_on_a_busy_port_fails_at_once_in_one_line(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.perf_counter()
        run = serve_cli("--port", str(port), "--bundle", str(tiny_bundle))
        seconds = time.perf_counter() - start
    assert run.returncode == 2 and "Serving" not in run.stdout
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert "--port" in line and seconds < 20                         # before the model loads (~15 s for the default)


@pytest.mark.parametrize("content, message", [("", "is empty"), ("short", "at least 16 characters")])
def test_a_bad_key_file_is_one_line(tiny_bundle, tmp_path, content, message):
    (tmp_path / "key").write_text(content)
    run = serve_cli("--api-key-file", str(tmp_path / "key"), "--bundle", str(tiny_bundle))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr


def test_which_hosts_need_a_key(monkeypatch, tmp_path):
    assert all(map(is_loopback, ["127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "example.org"]))
    check_access("127.0.0.1", None)
    check_access("0.0.0.0", KEY)
    check_access("0.0.0.0", None, insecure_no_auth=True)            # said explicitly
    with pytest.raises(ValueError, match="CAPTIONING_API_KEY"):
        check_access("192.168.1.20", None)
    monkeypatch.setenv("CAPTIONING_API_KEY", f"  {KEY}\n")
    assert api_key() == KEY
    (tmp_path / "key").write_text(KEY[::-1] + "\n")
    assert api_key(str(tmp_path / "key")) == KEY[::-1]               # the file wins over the environment
    monkeypatch.delenv("CAPTIONING_API_KEY")
    assert api_key() is None


def test_the_port_is_held_from_before_the_model_loads():
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):   # a second server cannot
            bind("127.0.0.1", port)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()   # an early client waits for the model
    finally:
        sock.close()


# --- the same app in a uvicorn thread, with a stub model (no decoding needed) ----------------------------------
@contextlib.contextmanager
def stub_server(**settings):
    import uvicorn

    stub = SimpleNamespace(bundle=SimpleNamespace(name="stub", max_length=30))      # what the routes read at start
    app = create_app(stub, settings=ServerSettings(**settings))
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


def test_with_a_key_every_call_but_health_and_docs_needs_the_bearer_header():
    with stub_server(api_key=KEY) as url:
        for headers in ({}, {"Authorization": "Bearer wrong-key-of-some-length"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}):
            r = requests.post(f"{url}/v1/captions", headers=headers, timeout=10)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert "Authorization: Bearer KEY" in r.json()["detail"]
            assert requests.get(f"{url}/v1/model", headers=headers, timeout=10).status_code == 401
        ok = requests.post(f"{url}/v1/captions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert ok.status_code == 422 and "images" in ok.text                 # past the key: no images sent
        assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200
        assert requests.get(f"{url}/docs", timeout=10).status_code == 200
        assert requests.get(f"{url}/docs/assets/swagger-ui.css", timeout=10).status_code == 200
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()       # the docs' Authorize button
        assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_each_client_gets_a_token_bucket_then_429_with_retry_after():
    with stub_server(rate_per_minute=30, rate_burst=3) as url:
        codes = [requests.post(f"{url}/v1/captions", timeout=10).status_code for _ in range(4)]
        assert codes == [422, 422, 422, 429]
        r = requests.post(f"{url}/v1/captions", timeout=10)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 2   # one token every 2 s
        assert "at most 30 a minute" in r.json()["detail"]
        assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200   # health checks are not counted
    bucket = RateLimit(None, per_minute=60, burst=2)
    assert [bucket.take("a", 0.0), bucket.take("a", 0.0)] == [0, 0]
    assert bucket.take("a", 0.0) == pytest.approx(1.0) and bucket.take("b", 0.0) == 0    # per client
    assert bucket.take("a", 1.0) == 0                                     # a second later: one more token


def test_no_cors_headers_unless_an_origin_is_configured():
    origin = {"Origin": "https://studio.example"}
    with stub_server() as url:
        r = requests.get(f"{url}/v1/health", headers=origin, timeout=10)
        assert r.status_code == 200 and not any(k.lower().startswith("access-control") for k in r.headers)
        pre = requests.options(f"{url}/v1/captions", timeout=10, headers={
            **origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}
    with stub_server(cors_origins=("https://studio.example",)) as url:
        r = requests.get(f"{url}/v1/health", headers=origin, timeout=10)
        assert r.headers["Access-Control-Allow-Origin"] == "https://studio.example"
        other = requests.get(f"{url}/v1/health", headers={"Origin": "https://else.example"}, timeout=10)
        assert "access-control-allow-origin" not in {k.lower() for k in other.headers}


# --- the queue, unit by unit ------------------------------------------------------------------------------------
class FakeRequest:
    """A request whose client leaves ``leaves_after`` seconds from now (never by default)."""

    def __init__(self, leaves_after: float | None = None):
        self.leaves_at = None if leaves_after is None else time.monotonic() + leaves_after

    async def is_disconnected(self) -> bool:
        return self.leaves_at is not None and time.monotonic() >= self.leaves_at


def slow(seconds: float, log: list, name: str):
    def work(gone):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not gone.is_set():      # "between images"
            time.sleep(0.02)
        log.append((name, "stopped" if gone.is_set() else "done"))
        return name
    return work


def test_a_request_waits_for_a_slot_at_most_queue_timeout_then_503():
    admission, log, out = Admission(ServerSettings(max_concurrent=1, queue_timeout=0.3)), [], {}

    async def main():
        async with anyio.create_task_group() as tasks:
            async def first():
                out["first"] = await admission.run(FakeRequest(), slow(1.0, log, "first"))
            tasks.start_soon(first)
            await anyio.sleep(0.05)
            start = time.monotonic()
            with pytest.raises(HTTPException) as refused:
                await admission.run(FakeRequest(), slow(0, log, "second"))
            out["waited"], out["error"] = time.monotonic() - start, refused.value

    anyio.run(main)
    assert out["first"] == "first" and log == [("first", "done")]
    assert out["error"].status_code == 503 and int(out["error"].headers["Retry-After"]) >= 1
    assert "no free slot within 0.3 s" in out["error"].detail and 0.25 < out["waited"] < 0.9


def test_a_client_that_leaves_gives_up_its_place_and_stops_its_work():
    admission, log, out = Admission(ServerSettings(max_concurrent=1, queue_timeout=30)), [], {}

    async def main():
        async with anyio.create_task_group() as tasks:
            async def first():                                   # leaves while its work runs: stopped early
                with pytest.raises(ClientGone):
                    await admission.run(FakeRequest(leaves_after=0.6), slow(5.0, log, "first"))
            tasks.start_soon(first)
            await anyio.sleep(0.05)
            start = time.monotonic()
            with pytest.raises(ClientGone):                      # leaves while queued: never runs
                await admission.run(FakeRequest(leaves_after=0.1), slow(0, log, "second"))
            out["queued"] = time.monotonic() - start
        out["all"] = time.monotonic() - start

    anyio.run(main)
    assert log == [("first", "stopped")] and admission.abandoned == 2
    assert out["queued"] < 0.5 and out["all"] < 1.5                    # not the 5 s of the first one's work
    assert admission.status() == {"running": 0, "waiting": 0, "abandoned": 2, "slots": 1, "queue": 8}


# --- a real server: full queue, stalled uploads, clients that leave ------------------------------------------
@pytest.fixture(scope="module")
def one_slot_api(tiny_bundle, mobilenet_weights):
    with running_api(tiny_bundle, mobilenet_weights.parent, "api-one-slot.log", "--max-concurrent", "1",
                     "--max-queue", "12", "--body-timeout", "2", "--rate-limit", "0") as (url, _):
        yield url


def health(url) -> dict:
    return requests.get(f"{url}/v1/health", timeout=10).json()["requests"]


def stalled_upload(url) -> socket.socket:
    """A POST that declares 10 kB and sends 100 bytes, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 10000\r\n\r\n" + b"--b\r\n" + b"x" * 95)
    return sock


def test_a_full_queue_is_503_before_the_body_and_stalled_uploads_are_408(one_slot_api):
    url = one_slot_api
    stalled = [stalled_upload(url) for _ in range(13)]              # 1 slot + 12 waiting: the server is full
    try:
        deadline = time.time() + 5
        while health(url)["waiting"] < 13 and time.time() < deadline:
            time.sleep(0.05)
        r = post(url, [("red.png", small_png(), "image/png")])
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["detail"].startswith("The server is busy (13 requests in, the queue holds 12)")
        start = time.time()
        answers = [s.recv(200) for s in stalled]                     # --body-timeout 2: each one is let go
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers) and time.time() - start < 6
    finally:
        for s in stalled:
            s.close()
    assert post(url, [("red.png", small_png(), "image/png")]).status_code == 200
    assert health(url)["waiting"] == 0


def test_work_for_clients_that_left_is_dropped(one_slot_api, flickr_dir):
    url = one_slot_api
    names = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[:4]
    files = [(n, (flickr_dir / "Images" / n).read_bytes(), "image/jpeg") for n in names] * 4   # 16 photos
    before = health(url)["abandoned"]

    def leave(_):
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{url}/v1/captions", files=[("images", f) for f in files], data={"beam_width": "10"},
                          timeout=0.5)

    with ThreadPoolExecutor(14) as pool:                          # 1 slot + 12 waiting: the queue is full
        list(pool.map(leave, range(14)))
    start = time.perf_counter()                                   # at once: the places of those who left are free
    r = post(url, [files[0]], beam_width=1)
    assert r.status_code == 200, r.text
    assert time.perf_counter() - start < 10
    # the queued ones were dropped within the 0.2 s disconnect poll, the running one at its next batch of photos
    # (13 x 16 photos at beam 10 would keep the one slot busy for a minute on a loaded machine)
    state = health(url)
    assert state["running"] == state["waiting"] == 0, state
    assert state["abandoned"] - before >= 10, state               # all but the one or two that finished in time


def test_the_docs_page_renders_in_a_browser_from_this_server_alone():
    """Headless Chromium renders /docs (the operations listed) and fetches nothing from anywhere else."""
    from conftest import missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ui.browser import new_driver

    try:
        driver = new_driver()
    except RuntimeError as exc:
        missing(str(exc))
    try:
        with stub_server() as url:
            driver.get(f"{url}/docs")
            WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "/v1/captions"))
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert any(f.endswith("/openapi.json") for f in fetched)
            assert fetched and all(f.startswith(url + "/") for f in fetched), fetched
            assert "Caption one or several images" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
