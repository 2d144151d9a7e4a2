"""``--weights none|default|PATH``: seeded init, offline errors, files."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backbones import backbone_spec, create_backbone, list_backbones
from pipeline.weights import WeightsError, parse_weights_option, resolve_weights
from tests.conftest import backbone_params


@pytest.mark.parametrize("name", backbone_params(list_backbones()))
def test_random_init_is_seeded(name):
    spec = backbone_spec(name)
    # clip backbones get 4 frames where the architecture allows it (SlowFast needs its 32)
    shape = (2, 96, 128, 3) if spec.input_kind == "frame" else (1, spec.clip_frames(4), 96, 128, 3)
    frames = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    a = create_backbone(name, weights="none", seed=0)(frames)
    b = create_backbone(name, weights="none", seed=0)(frames)
    c = create_backbone(name, weights="none", seed=1)(frames)
    assert a.shape == (shape[0], spec.dim)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_default_weights_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as info:
        resolve_weights("default", backbone_spec("resnet18"))
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--weights none" in message


def test_weights_from_a_file_load_and_are_fingerprinted_by_content(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    ref = resolve_weights(str(path), backbone_spec("resnet18"))
    assert ref.identity()["kind"] == "path" and len(ref.identity()["sha256"]) == 64
    frames = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    backbone = create_backbone("resnet18", weights=str(path))
    model.fc = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        expected = model(backbone.transform(torch.from_numpy(frames).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(backbone(frames), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_wrong_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        resolve_weights(str(tmp_path / "nope.pth"), backbone_spec("resnet18"))
    bad = tmp_path / "bad.pth"
    import torch

    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="does not fit resnet18"):
        create_backbone("resnet18", weights=str(bad))


def test_weights_option_per_backbone():
    both = ["resnet18", "r2plus1d_18"]
    assert parse_weights_option(["none"], both) == {"resnet18": "none", "r2plus1d_18": "none"}
    assert parse_weights_option(["default", "resnet18=/w.pth"], both) == {
        "resnet18": "/w.pth",
        "r2plus1d_18": "default",
    }
    with pytest.raises(ValueError, match="BACKBONE="):
        parse_weights_option(["/w.pth"], both)
    with pytest.raises(ValueError, match="not a backbone"):
        parse_weights_option(["vit=/w.pth"], both)


def test_pretrained_is_the_default_and_random_only_when_asked():
    """Issue 16 item 1: no command extracts with random weights unless told to."""
    from pipeline.extract_config import ExtractConfig

    assert ExtractConfig().weights == ("default",)
    both = ["resnet18", "r2plus1d_18"]
    # Naming one backbone leaves the other pretrained, not random.
    assert parse_weights_option(["r2plus1d_18=none"], both) == {"resnet18": "default",
                                                                "r2plus1d_18": "none"}
    assert parse_weights_option([], both) == {"resnet18": "default", "r2plus1d_18": "default"}


def test_cli_default_fails_at_once_offline(monkeypatch, tmp_path):
    """`pipeline extract` without --weights asks for the pretrained weights: offline it stops
    before any video with the message that says where to put the file or to pass none."""
    import torch
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    videos = tmp_path / "videos"
    videos.mkdir()
    result = CliRunner().invoke(app, ["extract", "--dataset", "folder", "--data-root", str(videos),
                                      "--backbone", "resnet18", "--store", str(tmp_path / "s")])
    assert result.exit_code != 0
    assert "resnet18-f37072fd.pth" in result.output and "--weights none" in result.output
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_spec_says_random_init_when_the_weights_are_random():
    from catalogs.base import Catalog
    from pipeline.extract import feature_set_spec
    from pipeline.extract_config import ExtractConfig
    from pipeline.weights import describe_weights, weights_column

    import polars as pl

    catalog = Catalog(name="c", root=".", videos=pl.DataFrame(
        schema={"video_id": pl.String, "path": pl.String, "split": pl.String}))
    config = ExtractConfig(backbones=("resnet18",))
    random = feature_set_spec(config, catalog, "resnet18", {"kind": "none", "seed": 3}, "fp32")
    pretrained = feature_set_spec(config, catalog, "resnet18",
                                  {"kind": "default", "tag": "IMAGENET1K_V1"}, "fp32")
    assert random["backbone_spec"]["pretrained_on"] == "random init (seed 3)"
    assert pretrained["backbone_spec"]["pretrained_on"] == "ImageNet-1k"
    assert describe_weights(pretrained["weights"], "ImageNet-1k") == (
        "pretrained on ImageNet-1k (IMAGENET1K_V1)")
    assert weights_column(random["weights"]) == "random(seed 3)"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(KeyError, match="resnet18"):
        backbone_spec("resnet1000")


def test_bf16_features_stay_close_to_fp32():
    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    fp32 = create_backbone("resnet18", weights="none", precision="fp32")(frames)
    bf16 = create_backbone("resnet18", weights="none", precision="bf16")(frames)
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.99
    with pytest.raises(ValueError, match="fp32"):
        create_backbone("resnet18", weights="none", precision="fp8")


def test_weights_file_skips_random_init_and_gives_the_same_network(tmp_path, monkeypatch):
    # Built on the meta device and assigned the file's tensors: no real tensor is randomly
    # initialised, every tensor is the file's own, none is left unmaterialised, and the network
    # computes what the plain build + load does.
    import torch
    import torchvision

    from pipeline.weights import build_with_weights

    torch.manual_seed(5)
    source = torchvision.models.video.r2plus1d_18()
    path = tmp_path / "r2p1d.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # wrapped, as pytorchvideo files are
    ref = resolve_weights(str(path), backbone_spec("r2plus1d_18"))
    init_on_meta = []
    real_init = torch.nn.init.kaiming_normal_

    def spy(tensor, *args, **kwargs):
        init_on_meta.append(tensor.is_meta)
        return real_init(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    model = build_with_weights(torchvision.models.video.r2plus1d_18, ref).eval()
    assert init_on_meta and all(init_on_meta)
    state = model.state_dict()
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    for key, value in source.state_dict().items():
        assert torch.equal(state[key], value), key
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(model(clip).numpy(), source.eval()(clip).numpy())


def test_weights_file_with_a_buffer_it_lacks_falls_back_to_a_plain_build(tmp_path):
    import torch

    from pipeline.weights import build_with_weights

    class WithDerived(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("scale", torch.full((2,), 2.0), persistent=False)

    path = tmp_path / "w.pth"
    torch.save(WithDerived().state_dict(), path)
    ref = resolve_weights(str(path), backbone_spec("resnet18"))
    model = build_with_weights(WithDerived, ref)
    assert not model.scale.is_meta and torch.equal(model.scale, torch.full((2,), 2.0))
    assert torch.equal(model.linear.weight, torch.load(path)["linear.weight"])


def test_explicit_precision_resolves_without_importing_torch():
    # The driver resolves precision before it starts any worker: with --precision fp32/bf16 it
    # must not spend a second importing torch first.
    import subprocess
    import sys

    code = ("import sys; from pipeline.backbones import resolve_precision; "
            "assert resolve_precision('fp32') == 'fp32' and resolve_precision('bf16') == 'bf16'; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_auto_precision_on_cpu_is_remembered_per_machine(tmp_path):
    # First driver: asks torch and writes the answer; the next one resolves `auto` from the
    # cache without importing torch; a wrong cached value proves the cache is what is read.
    import json
    import os
    import subprocess
    import sys

    code = ("import sys; from pipeline.backbones import resolve_precision; "
            "print(resolve_precision('auto'), 'torch' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def run() -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env)
        return out.stdout.split()

    import torch

    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert run() == [expected, "True"]
    cache = tmp_path / "longvid" / "cpu_bf16.json"
    (key, value), = json.loads(cache.read_text()).items()
    assert value == (expected == "bf16")
    assert run() == [expected, "False"]
    cache.write_text(json.dumps({key: not value}))
    assert run() == ["fp32" if value else "bf16", "False"]
    cache.write_text("not json")  # damaged: ignored, rewritten
    assert run() == [expected, "True"] and json.loads(cache.read_text()) == {key: value}


def test_building_a_backbone_skips_torch_dynamo_yet_leaves_it_whole():
    # torchvision's roi_align imports torch._dynamo at top level (~1-2 s of CPU per worker):
    # create_backbone imports torchvision without it; roi_align and torch.compile still work,
    # on the real torch._dynamo, imported when first needed.
    import subprocess
    import sys

    code = """
import sys, numpy as np
from pipeline.backbones import create_backbone
net = create_backbone("resnet18", weights="none", precision="fp32")
features = net(np.zeros((1, 64, 64, 3), np.uint8))
print(features.shape, "torch._dynamo" in sys.modules)
import torch, torchvision
ra = sys.modules["torchvision.ops.roi_align"]
boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
print(tuple(torchvision.ops.roi_align(torch.ones(1, 2, 8, 8), boxes, 2).shape),
      ra.is_compile_supported("cpu") == torch._dynamo.utils.is_compile_supported("cpu"),
      hasattr(sys.modules["torch._dynamo.utils"], "__file__"))  # the real module
print(torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(2)).tolist())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["(1, 512) False", "(1, 2, 2, 2) True True", "[3.0, 3.0]"]
