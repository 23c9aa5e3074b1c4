"""train.py --strategy mirrored trains the same decoder across two (logical CPU) replicas."""
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})
import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_mirrored_strategy_on_two_logical_cpus(tiny_run, flickr_dir, mobilenet_weights, tmp_path):
    out_dir = tmp_path / "mirrored"
    cmd = [sys.executable, "-c", SCRIPT.format(root=str(ROOT)), "train", "--strategy", "mirrored",
           "--data-dir", str(flickr_dir), "--encoder", "mobilenetv2", "--alpha", "0.35",
           "--weights", str(mobilenet_weights), "--limit", "60", "--epochs", "2", "--out", str(out_dir),
           "--cache-dir", str(tiny_run[1]), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads((out_dir / "manifest.json").read_text())["training"]
    assert training["strategy"] == "mirrored" and training["replicas"] == 2
    assert training["epochs_run"] == 2 and training["best_val_loss"] < 10
