"""What a fresh clone gets: no links out of the checkout, no dataset or ImageNet weights, small shipped bundles."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tracked() -> list[tuple[str, str]]:
    try:
        out = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    rows = [line.split(maxsplit=3) for line in out.splitlines()]
    return [(mode, path) for mode, _sha, _stage, path in rows]


def test_no_tracked_symlinks(tracked):
    assert [p for mode, p in tracked if mode == "120000"] == []


def test_no_dataset_images_weights_or_pickles(tracked):
    # The one array file allowed: a shipped bundle's retrieval index (issue 19: the training photos' pooled features,
    # float16, written with allow_pickle=False and listed with its checksum in the bundle's manifest).
    bad = [p for _, p in tracked
           if (p.endswith((".pkl", ".pickle", ".npy", ".npz", ".weights.h5"))
               and not re.fullmatch(r"artifacts/[\w.-]+/index\.npy", p))
           or (p.lower().endswith((".jpg", ".jpeg", ".png")) and not p.startswith(("docs/", "tests/")))]
    assert bad == []


def test_shipped_files_stay_small(tracked):
    big = [(p, (ROOT / p).stat().st_size) for _, p in tracked if (ROOT / p).is_file()
           and (ROOT / p).stat().st_size > 25 * 2**20]
    assert big == []


def test_server_settings_are_safe_and_match_the_loader():
    import tomllib

    from captioning.vision.images import MAX_BYTES

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    # The server takes somewhat more than the loader's limit so that the page itself can refuse a too-large photo
    # with a message naming the limit (issue 15/16); the page and the loader share MAX_BYTES.
    assert MAX_BYTES <= config["server"]["maxUploadSize"] * 2**20 <= 4 * MAX_BYTES
    assert "MAX_BYTES" in (ROOT / "ui" / "widgets.py").read_text()
    assert config["server"]["enableXsrfProtection"] is True
    assert config["browser"]["gatherUsageStats"] is False
