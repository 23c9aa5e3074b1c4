"""The app's two-stage model load as the pages see it (ui.state), without TensorFlow: a load whose stages are
set by hand."""
from types import SimpleNamespace

from captioning.service.warm_load import StagedLoad


def test_the_caption_page_gets_the_first_decoder_only_between_the_two_stages(tmp_path):
    from ui import state

    key = (str(tmp_path / "ensemble"), 1.0)
    load = StagedLoad(key[0])
    state._warming[key] = load
    try:
        quick, full = SimpleNamespace(quick_of=5), SimpleNamespace(quick_of=None)
        load.quick.set_result(quick)
        assert state._quick_captioner(key) is quick          # the rest still loading: one decoder's caption first
        load.full.set_result(full)
        assert state._quick_captioner(key) is None           # loaded: always the whole ensemble
        other = (str(tmp_path / "never-loaded"), 1.0)
        assert state._quick_captioner(other) is None         # nothing loading: nothing to wait for
        failed = StagedLoad(key[0])
        failed.quick.set_exception(RuntimeError("no weights"))
        state._warming[key] = failed
        assert state._quick_captioner(key) is None           # the full load reports the error on the page
    finally:
        state._warming.pop(key, None)


def test_a_first_caption_says_it_comes_from_one_of_the_ensembles_models():
    from ui.labels import quick_note

    bundle = SimpleNamespace(encoder=SimpleNamespace(label="Xception"),
                             manifest=SimpleNamespace(decoder=SimpleNamespace(kind="attention")))
    note = quick_note(SimpleNamespace(bundle=bundle, quick_of=5))
    assert note.startswith("A first caption from one of the ensemble's 5 models (Xception + attention LSTM)")
    assert "the other 4 finish loading" in note and "replaces it" in note
