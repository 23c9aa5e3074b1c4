"""The REST API's decoding options through a real server process on loopback (tiny bundle): every strategy of the
command line, one-line 422s naming the API's own field, ``/openapi.json`` from the one declaration, and the same
default caption (beam 5) as the command line."""
import pytest
import requests
from test_serve import post, running_api

from captioning.artifacts.bundle import load_bundle
from captioning.decoding.options import OPTION, STRATEGIES, USER_OPTIONS, resolve
from captioning.service.captioner import Captioner


@pytest.fixture(scope="module")
def api(tiny_bundle, mobilenet_weights):
    with running_api(tiny_bundle, mobilenet_weights.parent, "api-options.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def photo(flickr_dir):
    name = (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()[0]
    return flickr_dir / "Images" / name


def upload(photo):
    return [(photo.name, photo.read_bytes(), "image/jpeg")]


def test_the_api_samples_three_captions_and_decodes_diverse_beams(api, photo, tiny_bundle, mobilenet_weights):
    fields = {"strategy": "sample", "temperature": 0.8, "top_p": 0.9, "n_best": 3, "seed": 4}
    r = post(api, upload(photo), **fields)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "sample" and body["decoding_label"] == "sample T 0.8, top-p 0.9, n 3"
    assert body["decoding"] == {"temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 4, "n_best": 3,
                                "no_repeat_ngram_size": 0}
    sampled = [c["text"] for c in body["results"][0]["captions"]]
    assert len(sampled) == 3
    assert [c["text"] for c in post(api, upload(photo), **fields).json()["results"][0]["captions"]] == sampled
    local = Captioner(load_bundle(tiny_bundle), mobilenet_weights)
    given = {"strategy": "sample", "temperature": 0.8, "top_p": 0.9, "num_return_sequences": 3, "seed": 4}
    assert [c.text for c in local.caption(photo, **resolve(given, "api"))] == sampled
    r = post(api, upload(photo), strategy="diverse", beam_width=6, groups=3, n_best=3, no_repeat_word="true",
             ban="dog")
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["results"][0]["captions"]]
    assert len(texts) == len(set(texts)) == 3 and not any("dog" in t.split() for t in texts)
    assert r.json()["decoding_label"].startswith("diverse 6 beams / 3 groups, penalty 0.5")


@pytest.mark.parametrize("fields, message", [
    ({"temperature": -1}, "temperature must be > 0 (1 = the model's own distribution), got -1.0"),
    ({"top_p": 2}, "top_p must be in (0, 1] (1 = off), got 2.0"),
    ({"beam_width": ""}, "beam_width is empty: give a value or leave the field out"),
    ({"beam_width": "five"}, "beam_width must be a whole number, got 'five'"),
    ({"temperature": 0.5}, "temperature is used only by strategy=sample, not by beam (the default)"),
    ({"strategy": "sample", "top_p": "1e-300"}, "top_p must be at least 0.01"),
    ({"strategy": "sample", "temperature": "1e-40"}, "temperature must be at least 0.01"),
    ({"strategy": "nucleus"}, "strategy must be one of greedy, beam, sample, diverse, got 'nucleus'"),
    ({"groups": 3}, "groups is used only by strategy=diverse"),
    ({"strategy": "diverse", "beam_width": 6, "groups": 4}, "groups (4) must divide beam_width (6)"),
    ({"min_length": 99}, "min_length (99) must be less than the bundle's caption length"),
])
def test_refusals_are_one_line_422s_naming_the_apis_field(api, photo, fields, message):
    r = post(api, upload(photo), **fields)
    detail = r.json()["detail"]
    assert r.status_code == 422 and isinstance(detail, str) and detail.startswith(message), r.text
    assert "num_return_sequences" not in detail and "num_groups" not in detail


def test_openapi_json_names_the_declared_strategies_and_limits(api):
    schema = requests.get(f"{api}/openapi.json", timeout=10).json()
    ref = schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    fields = form["properties"]
    assert fields["strategy"]["anyOf"][0]["enum"] == list(STRATEGIES)
    for option in USER_OPTIONS:
        assert option.help in fields[option.field]["description"]
    width = fields["beam_width"]["anyOf"][0]
    assert (width["minimum"], width["maximum"]) == (OPTION["beam_width"].low, OPTION["beam_width"].high)
    assert requests.get(f"{api}/v1/model", timeout=10).json()["limits"]["max_beam_width"] == OPTION["beam_width"].high


def test_the_default_caption_is_beam_5_from_the_api_and_the_cli(api, photo, tiny_bundle, mobilenet_weights, capsys):
    from captioning.__main__ import main

    body = post(api, upload(photo)).json()
    assert body["strategy"] == "beam" and body["decoding_label"] == "beam 5 (consensus 10, w 1.5)"   # has an index
    assert main(["caption", str(photo), "--bundle", str(tiny_bundle), "--weights", str(mobilenet_weights)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.split("\t")[1] == body["results"][0]["captions"][0]["text"]
