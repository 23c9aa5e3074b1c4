"""The decoding lab end to end on the tiny real bundle: train.py evaluate --decode, the CLI's strategies."""
import json
import shutil

import pandas as pd
import pytest

from captioning.artifacts.bundle import load_bundle


def _evaluate(out, flickr_dir, mobilenet_weights, cache, *extra):
    import train

    return train.main(["evaluate", "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
                       "--weights", str(mobilenet_weights), "--limit", "60", "--out", str(out),
                       "--cache-dir", str(cache), "--quiet", "--no-human", "--no-meteor", *extra])


def test_evaluate_decode_scores_every_strategy_for_quality_and_diversity(tiny_run, tiny_bundle, flickr_dir,
                                                                         mobilenet_weights, tmp_path, capsys):
    copy = tmp_path / "lab"
    shutil.copytree(tiny_bundle, copy)
    before = {r["beam_width"]: r for r in json.loads((copy / "metrics.json").read_text())["results"]}
    code = _evaluate(copy, flickr_dir, mobilenet_weights, tiny_run[1], "--decode", "greedy", "beam:3",
                     "sample:temperature=0.7,top_p=0.9,n=3,seed=0", "diverse:beams=4,groups=2,penalty=0.5,n=2")
    assert code == 0
    printed = capsys.readouterr().out
    assert "self-BLEU" in printed and "diverse 4 beams / 2 groups" in printed

    bundle = load_bundle(copy)                        # the manifest's hashes cover the new files
    results = bundle.metrics["results"]
    assert [r["decoding"] for r in results] == ["greedy", "beam", "sample", "diverse"]
    assert results[2]["options"] == {"max_length": bundle.max_length, "temperature": 0.7, "top_k": 0, "top_p": 0.9,
                                     "seed": 0, "num_return_sequences": 3}
    assert results[3]["options"]["num_groups"] == 2 and results[3]["options"]["diversity_penalty"] == 0.5
    for old, new in zip((before[1], before[3]), results[:2]):     # greedy and beam reproduce exactly
        assert {k: new[k] for k in ("bleu_1", "bleu_4", "cider", "caption_count") if k in old} == \
               {k: old[k] for k in ("bleu_1", "bleu_4", "cider", "caption_count") if k in old}
    for r in results:
        assert 0 < r["distinct_captions"] <= 1 and r["vocab_used"] > 0 and 0 <= r["novel_fraction"] <= 1
        assert 0 < r["distinct_2"] <= 1 and r["mean_length"] > 0
    assert "self_bleu_4" not in results[0] and "oracle_cider" not in results[1]
    for r in results[2:]:
        assert 0 <= r["self_bleu_4"] <= 1 and r["oracle_cider"] >= r["cider"]     # best of n >= the first

    preds = pd.read_csv(copy / "predictions.csv", keep_default_na=False)
    counts = preds.groupby("decoding")["rank"].max().to_dict()
    assert counts == {"greedy": 1, "beam": 1, "sample": 3, "diverse": 2}
    assert len(preds[preds["decoding"] == "sample"]) == 9 * 3
    greedy = preds[preds["decoding"] == "greedy"]
    old = pd.read_csv(tiny_bundle / "predictions.csv", keep_default_na=False)
    assert greedy["caption"].tolist() == old[old["beam_width"] == 1]["caption"].tolist()


def test_evaluate_rejects_a_bad_spec_before_any_work(tiny_bundle, flickr_dir, mobilenet_weights, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _evaluate(tiny_bundle, flickr_dir, mobilenet_weights, tmp_path, "--decode", "sample:temp=2")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--decode" in err and "unknown option 'temp'" in err and "Traceback" not in err


def test_cli_samples_reproducibly_and_decodes_diverse_beams(tiny_bundle, flickr_dir, mobilenet_weights, capsys):
    from captioning.__main__ import main

    image = str(flickr_dir / "Images" / "1000268201_693b08cb0e.jpg")
    base = ["caption", image, "--bundle", str(tiny_bundle), "--weights", str(mobilenet_weights)]

    def lines(*options):
        assert main(base + list(options)) == 0
        return [line.split("\t")[2] for line in capsys.readouterr().out.strip().splitlines()]

    sample = ["--strategy", "sample", "--temperature", "0.8", "--top-p", "0.9", "--n", "5"]
    first = lines(*sample, "--seed", "0")
    assert len(first) == 5 and first == lines(*sample, "--seed", "0")
    assert first != lines(*sample, "--seed", "1")
    diverse = lines("--strategy", "diverse", "--beam-width", "6", "--groups", "3", "--diversity-penalty", "0.5",
                    "--n-best", "3")
    assert len(diverse) == 3 and len(set(diverse)) == 3                # distinct captions (34.11)
    assert main(base + ["--beam-width", "3", "--n-best", "2"]) == 0            # --beam-width alone: beam search
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(base + ["--beam-width", "3", "--n", "2"]) == 2
    assert "use --n-best" in capsys.readouterr().err
    assert main(base + ["--strategy", "diverse", "--beam-width", "6", "--groups", "4"]) == 2
    assert "--groups (4) must divide --beam-width (6)" in capsys.readouterr().err   # the user's flags (34.10)
