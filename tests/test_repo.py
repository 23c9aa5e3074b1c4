"""What a fresh clone gets: no links out of the checkout, no dataset or ImageNet weights, small shipped bundles."""
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
    bad = [p for _, p in tracked
           if p.endswith((".pkl", ".pickle", ".npy", ".npz", ".weights.h5"))
           or (p.lower().endswith((".jpg", ".jpeg", ".png")) and not p.startswith(("docs/", "tests/")))]
    assert bad == []


def test_shipped_files_stay_small(tracked):
    big = [(p, (ROOT / p).stat().st_size) for _, p in tracked if (ROOT / p).is_file()
           and (ROOT / p).stat().st_size > 25 * 2**20]
    assert big == []


def test_server_settings_are_safe_and_match_the_loader():
    import tomllib

    from captioning.images import MAX_BYTES

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_BYTES       # the same limit in the app and the loader
    assert config["server"]["enableXsrfProtection"] is True
    assert config["browser"]["gatherUsageStats"] is False
