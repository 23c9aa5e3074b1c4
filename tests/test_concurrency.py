"""One Captioner shared by many sessions (threads) gives exactly the captions of a serial run."""
from concurrent.futures import ThreadPoolExecutor

from captioning.artifacts.bundle import load_bundle
from captioning.service.captioner import Captioner


def test_eight_threads_times_fifty_captions_match_serial(tiny_bundle, flickr_dir, mobilenet_weights):
    captioner = Captioner(load_bundle(tiny_bundle), mobilenet_weights)
    test_names = [line.strip() for line in (flickr_dir / "Flickr_8k.testImages.txt").read_text().split()][:10]
    images = [(flickr_dir / "Images" / n).read_bytes() for n in test_names]
    jobs = [(images[(t * 7 + i) % len(images)], 1 + (t + i) % 3) for t in range(8) for i in range(50)]

    def caption(job):
        data, beam = job
        return captioner.caption(data, beam_width=beam)[0].text

    serial = {(i % len(images), b): caption((images[i % len(images)], b)) for i in range(len(images)) for b in (1, 2,
                                                                                                                3)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(caption, jobs))
    expected = [serial[(images.index(data), beam)] for data, beam in jobs]
    assert parallel == expected
    assert len(parallel) == 400


def test_warm_up_traces_what_later_captions_need(tiny_attention_bundle, flickr_dir, mobilenet_weights):
    """After warm_up no beam width makes TensorFlow trace the decoder step again (the first user waits less)."""
    captioner = Captioner(load_bundle(tiny_attention_bundle), mobilenet_weights)
    captioner.warm_up()
    step = captioner.steps._step
    traced = step.experimental_get_tracing_count()
    image = sorted((flickr_dir / "Images").glob("*.jpg"))[0]
    for width in (1, 2, 5, 7, 10):
        assert captioner.caption(image, beam_width=width)[0].words
    assert step.experimental_get_tracing_count() == traced
