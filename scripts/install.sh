#!/usr/bin/env bash
# Create .venv (if missing) and install longvid with pinned dependencies (constraints.txt).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch is pinned to the PyPI build that matches torchvision (see constraints.txt).
if ! .venv/bin/python -m pip install --disable-pip-version-check \
        -c constraints.txt -e ".[test]" > .venv/install.log 2>&1; then
    grep -v "^WARNING: Location" .venv/install.log | tail -40
    echo "install failed; full log in .venv/install.log" >&2
    exit 1
fi
.venv/bin/python -c "import torch, torchvision, ray, zarr, scenedetect, av; \
from torchvision.ops import nms; print('longvid installed: torch', torch.__version__, \
'torchvision', torchvision.__version__)"
