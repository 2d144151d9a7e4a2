#!/usr/bin/env bash
# GPU node check (issue 19 item 3), one script, under 8 minutes on one H200 and 16 cores:
# resnet18 (scene plan) and vit_l16 patch tokens (fps plan) on 720p-class footage: end-to-end
# frames/s, the backbone-only ceiling on the same GPU, the share of time the GPU waits; then CPU
# vs NVDEC decode frames/s; with Ray and 2 GPUs, data-parallel heads at 1 vs 2 workers
# (bench/data_parallel.py).
#
#   bash bench/gpu_prepare.sh   # here, with PyPI: the wheels and footage a bare GPU machine lacks
#   bash bench/gpu_check.sh     # there
#   bash bench/gpu_check.sh --dry-run   # here first: the same path on the CPU, small
#
# Two ways, picked by what imports:
# - the whole pipeline (Ray, Zarr, Polars: a .venv from scripts/install.sh, docker/Dockerfile.gpu):
#   bench/extract_decode.py part 6 (`pipeline extract --topology per-worker` vs `gpu-server`),
#   part 7 (CPU vs NVDEC decoding) and part 4 (one combined run vs separate runs, on the GPU);
# - only torch, torchvision, OpenCV, PyAV and PySceneDetect (a machine without PyPI that takes
#   64 MiB of wheels per call: Ray's wheel alone is 79 MB): bench/gpu_feed.py, the same
#   measurements from the worker's front end and the topology's BackboneServer, without Ray or
#   a store. The wheels and footage come from .whl/ (bench/gpu_prepare.sh), installed into
#   /tmp/site.
# NVDEC: NVIDIA's PyNvVideoCodec (carried by bench/gpu_prepare.sh), or torchcodec's CUDA build
# with FFmpeg's libraries (docker/Dockerfile.gpu, --build-arg NVDEC=1); each NVDEC line says
# "not available" where its library is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
DEVICE=cuda QUICK=()
[ "${1:-}" = "--dry-run" ] && DEVICE=cpu QUICK=(--quick)
FULL="import torch, torchvision, ray, av, zarr, polars, scenedetect, pipeline.extract"
FEED="import torch, torchvision, av, cv2, scenedetect, pipeline.sparse_decode"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    for tarball in .whl/*.tar.xz; do  # PyNvVideoCodec's files (bench/gpu_prepare.sh)
        [ -f "$tarball" ] && tar -xJf "$tarball" -C /tmp/site
    done
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "$FULL" 2>/dev/null && ! "$PY" -c "$FEED" 2>/dev/null; then
    bash scripts/install.sh || exit 1  # needs PyPI
    PY=.venv/bin/python
fi
"$PY" - "$DEVICE" <<'EOF' || exit 1
import sys, torch
assert sys.argv[1] == "cpu" or torch.cuda.is_available(), "gpu_check: torch sees no GPU"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0) if sys.argv[1] == "cuda"
      else "the CPU (--dry-run)")
EOF
"$PY" -c "import torchcodec; print('torchcodec', torchcodec.__version__)" 2>/dev/null \
    || echo "torchcodec not installed: its NVDEC line will print 'not available'"
"$PY" -c "import PyNvVideoCodec; print('PyNvVideoCodec imports')" 2>/dev/null \
    || echo "PyNvVideoCodec does not import: its NVDEC line will print 'not available'"

status=0
if "$PY" -c "$FULL" 2>/dev/null; then
    echo "the whole pipeline imports: bench/extract_decode.py parts 6, 7 and 4"
    for part in "6 300" "7 60" "4 100"; do
        set -- $part
        timeout "$2" "$PY" bench/extract_decode.py --part "$1" --device "$DEVICE" "${QUICK[@]}" \
            --data-root /tmp/gpu_check_demo || status=$?
    done
    # Data-parallel heads (Ray Train, nccl): 1 vs 2 workers; on one GPU it says it is skipped.
    timeout 240 "$PY" bench/data_parallel.py --device "$DEVICE" --quick || status=$?
else
    echo "no Ray, Zarr or Polars here: bench/gpu_feed.py"
    footage=()
    [ -d .whl/footage ] && footage=(--footage .whl/footage)
    timeout 420 "$PY" bench/gpu_feed.py --device "$DEVICE" "${QUICK[@]}" "${footage[@]}" \
        || status=$?
fi
[ "$status" -eq 124 ] && echo "gpu_check: a part ran past its time limit" >&2
exit "$status"
