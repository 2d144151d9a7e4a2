"""The timm backbones (issue 17): specs from timm's ``pretrained_cfg``, tokens that are the
model's own ``forward_features``, weights through ``--weights PATH`` (``.pth`` and
``.safetensors``) and the hub cache, offline failures in one line, ``--resize squash|crop``,
and one of them extracting the small demo for ``heads train --head vis4mer``.

Every network is built at its real size with ``--weights none`` (the ViT-L ones cost ~10 s of
CPU each), once per module (:func:`built`), and runs on one or two frames.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import pytest

from pipeline.backbones import backbone_spec, create_backbone, list_backbones
from pipeline.weights import WeightsError, resolve_weights

PAPER_BACKBONES = {"vit_l16_in21k", "vit_b16_in21k", "deit_b16", "deit_ti16", "clip_vit_l14",
                   "dinov2_vit_l14"}
TIMM = [name for name in list_backbones() if backbone_spec(name).hf_hub_id]
# Parameters of each network as built (no classifier, no CLIP projection), counted on the
# random init: ViT-L/16 303.3 M, ViT-B/16 85.8 M, DeiT-Ti 5.5 M, CLIP and DINOv2 ViT-L/14 at
# 224 px 303.2 M (DINOv2's position embeddings cover 16 × 16 patches, not 37 × 37).
NUM_PARAMS = {"vit_l16_in21k": 303_301_632, "vit_b16_in21k": 85_798_656,
              "deit_b16": 85_798_656, "deit_ti16": 5_524_416, "clip_vit_l14": 303_179_776,
              "dinov2_vit_l14": 303_227_904}


@pytest.fixture(scope="module")
def built():
    """``built(name)``: backbone ``name`` with seeded random weights, built once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = create_backbone(name, weights="none", seed=0, precision="fp32")
        return cache[name]

    yield get
    cache.clear()


def _frames(num: int = 1, height: int = 90, width: int = 160) -> np.ndarray:
    """(num, H, W, 3) uint8: smooth gradients plus noise, widescreen like film frames."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    noise = rng.integers(-20, 20, (num, height, width, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def test_the_paper_backbones_are_registered():
    assert PAPER_BACKBONES <= set(TIMM)


@pytest.mark.parametrize("name", TIMM)
def test_spec_is_timms_own_preprocessing(name):
    from timm.models import get_pretrained_cfg

    spec = backbone_spec(name)
    cfg = get_pretrained_cfg(spec.weights_tag)
    assert cfg is not None, spec.weights_tag
    assert spec.hf_hub_id == cfg.hf_hub_id and spec.hf_hub_id in spec.weights_url
    assert (spec.mean, spec.std) == (tuple(cfg.mean), tuple(cfg.std))
    assert spec.interpolation == cfg.interpolation == "bicubic"
    # 224 px: timm's input size, except DINOv2 (518 px in timm), run at 224 as video work does
    assert spec.size_px == 224 and (cfg.input_size[1] == 224 or name == "dinov2_vit_l14")
    rows, cols = spec.grid()
    assert spec.num_patches == spec.num_prefix_tokens + rows * cols
    assert spec.resize_px[0] >= spec.size_px and spec.resize == "crop"
    assert spec.used_by and spec.source


@pytest.mark.parametrize("name", TIMM)
def test_stored_tokens_are_the_models_own_forward_features(name, built):
    import torch

    backbone = built(name)
    spec = backbone.spec
    net = backbone.model.net
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMS[name]
    assert net.num_features == spec.dim and net.num_prefix_tokens == spec.num_prefix_tokens
    assert tuple(net.patch_embed.grid_size) == spec.grid()
    frames = _frames(1)
    x = backbone.transform(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (1, 3, 224, 224)
    assert x.shape == (1, 3, spec.size_px, spec.size_px)
    with torch.inference_mode():
        features = net.forward_features(x)  # (1, N, D)
        pooled = net.forward_head(features, pre_logits=True)  # (1, D)
    patch = backbone(frames, "patch")
    assert patch.shape == (1, *spec.token_shape("patch"))
    np.testing.assert_allclose(patch, features.numpy(), rtol=1e-4, atol=1e-4)
    got_pooled = backbone(frames, "pooled")
    assert got_pooled.shape == (1, spec.dim)
    np.testing.assert_allclose(got_pooled, pooled.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_pooled, patch[:, 0], rtol=1e-5, atol=1e-5)  # the CLS token
    assert np.isfinite(patch).all() and patch.std() > 0.1


def _save(state: dict, path):
    import torch
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


# Both file kinds for every backbone would write 7 GB for the three ViT-L: the loading code is
# the same for every architecture, so the .pth round trip runs on the ViT-B/16-sized and smaller
# ones, the .safetensors one on all (DINOv2 in its released layout, below).
ROUND_TRIPS = [(n, ".safetensors") for n in TIMM if n != "dinov2_vit_l14"] + [
    (n, ".pth") for n in TIMM if NUM_PARAMS.get(n, 0) < 100_000_000]


@pytest.mark.parametrize(("name", "suffix"), ROUND_TRIPS)
def test_weights_file_round_trips_through_weights_path(name, suffix, built, tmp_path):
    """Every tensor of the file lands in the network unchanged (timm's checkpoint filter leaves
    timm-layout files alone); below 100 M parameters the tokens are compared too."""
    import torch

    source = built(name)
    path = _save(source.model.net.state_dict(), tmp_path / f"{name}{suffix}")
    ref = resolve_weights(str(path), backbone_spec(name))
    assert ref.identity() == {"kind": "path", "sha256": ref.sha256, "file": path.name}
    loaded = create_backbone(name, weights=str(path), precision="fp32")
    got, want = loaded.model.net.state_dict(), source.model.net.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    if NUM_PARAMS[name] < 100_000_000:
        frames = _frames(1)
        np.testing.assert_array_equal(loaded(frames, "patch"), source(frames, "patch"))


def test_released_dinov2_layout_loads_at_224_px(built, tmp_path):
    """The hub file holds 37 × 37 position embeddings (518 px) and a classifier-free model; a
    file with a head (as CLIP's has its projection) loads too: timm's filter resamples the grid
    to 16 × 16 and the head is dropped."""
    import torch
    from timm.layers import resample_abs_pos_embed

    source = built("dinov2_vit_l14")
    state = dict(source.model.net.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (37, 37), num_prefix_tokens=1)
    state["head.weight"], state["head.bias"] = torch.zeros(10, 1024), torch.zeros(10)
    path = _save(state, tmp_path / "model.safetensors")
    loaded = create_backbone("dinov2_vit_l14", weights=str(path), precision="fp32")
    got, want = loaded.model.net.state_dict(), source.model.net.state_dict()
    assert got.keys() == want.keys() and got["pos_embed"].shape == (1, 257, 1024)
    assert all(torch.equal(got[k], want[k]) for k in want if k != "pos_embed")
    # 16² → 37² → 16² bicubic: close to where it started, not equal
    cosine = torch.nn.functional.cosine_similarity(got["pos_embed"].flatten(),
                                                   want["pos_embed"].flatten(), dim=0)
    assert 0.9 < cosine < 1.0


def test_a_file_that_does_not_fit_is_a_clear_error(built, tmp_path):
    state = built("deit_ti16").model.net.state_dict()
    path = _save(state, tmp_path / "tiny.safetensors")
    with pytest.raises(WeightsError, match="does not fit deit_b16"):
        create_backbone("deit_b16", weights=str(path))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable state-dict or safetensors file"):
        create_backbone("deit_ti16", weights=str(junk))


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face hub cache under ``tmp_path`` and no network: the metadata request
    fails as a dead network does, and a download attempt fails the test."""
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def offline(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("hf_hub_download called after the hub was found unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    return cache


@pytest.mark.parametrize("name", TIMM)
def test_default_weights_offline_fail_at_once_in_one_line(name, empty_hub_cache):
    spec = backbone_spec(name)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        resolve_weights("default", spec)
    assert time.perf_counter() - t0 < 2.0
    message = str(info.value)
    assert "\n" not in message
    for part in (f"hub repository {spec.hf_hub_id}", "model.safetensors", str(empty_hub_cache),
                 f"--weights {name}=/path/to/model.safetensors", "--weights none"):
        assert part in message, part


def test_cli_extract_offline_stops_before_any_video(empty_hub_cache, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    videos = tmp_path / "videos"
    videos.mkdir()
    result = CliRunner().invoke(app, ["extract", "--dataset", "folder", "--data-root", str(videos),
                                      "--backbone", "deit_ti16", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "timm/deit_tiny_patch16_224.fb_in1k" in line and "--weights none" in line
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_default_weights_come_from_the_hub_cache_without_network(built, empty_hub_cache):
    """A file placed in the hub cache (as `hf download` leaves it) is what `default` loads."""
    from huggingface_hub import constants

    spec = backbone_spec("deit_ti16")
    repo_dir = empty_hub_cache / f"models--{spec.hf_hub_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    (repo_dir / "snapshots" / "0123abcd").mkdir(parents=True)
    source = built("deit_ti16")
    _save(source.model.net.state_dict(), repo_dir / "snapshots" / "0123abcd" / "model.safetensors")
    assert constants.HF_HUB_CACHE == str(empty_hub_cache)
    ref = resolve_weights("default", spec)
    assert ref.identity() == {"kind": "default", "tag": "deit_tiny_patch16_224.fb_in1k"}
    loaded = create_backbone("deit_ti16", weights="default", precision="fp32")
    frames = _frames(1)
    np.testing.assert_array_equal(loaded(frames), source(frames))


def _stripes(height: int = 90, width: int = 160) -> np.ndarray:
    """(1, H, W, 3): red left fifth, blue right fifth, green centre: the centre square (the
    middle 90 of 160 columns) sees only green."""
    frame = np.zeros((1, height, width, 3), np.uint8)
    frame[..., 1] = 200
    frame[:, :, : width // 5] = (220, 0, 0)
    frame[:, :, -(width // 5) :] = (0, 0, 220)
    return frame


@pytest.mark.parametrize("name", ["deit_ti16", "resnet18"])
def test_squash_keeps_the_whole_frame_and_crop_the_centre(name):
    """``squash`` (ViS4mer §4.4) resizes the whole frame to the square; ``crop`` (the default)
    cuts the sides of a widescreen frame away. Both for timm and torchvision backbones."""
    import torch

    crop = create_backbone(name, weights="none", resize="crop")
    squash = create_backbone(name, weights="none", resize="squash")
    assert (crop.spec.resize, squash.spec.resize) == ("crop", "squash")
    assert squash.spec.resize_px == (224, 224)
    x = torch.from_numpy(_stripes()).permute(0, 3, 1, 2)  # (1, 3, 90, 160)
    mean, std = np.array(crop.spec.mean), np.array(crop.spec.std)
    red = (np.array([220, 0, 0]) / 255 - mean) / std
    green = (np.array([0, 200, 0]) / 255 - mean) / std
    left_crop = crop.transform(x)[0, :, 112, 0].numpy()
    left_squash = squash.transform(x)[0, :, 112, 0].numpy()
    np.testing.assert_allclose(left_crop, green, atol=0.05)
    np.testing.assert_allclose(left_squash, red, atol=0.05)
    assert not np.allclose(crop(_stripes()), squash(_stripes()))


def _catalog():
    from catalogs.base import Catalog

    return Catalog(name="demo", root=".", videos=pl.DataFrame(
        {"video_id": ["a"], "path": ["a.mp4"], "split": ["train"]}))


# Names of existing feature sets, computed before --resize existed (commit 6f94bc1): the
# default (crop) must keep them, or every stored feature set would be orphaned.
GOLDEN_NAMES = [
    ("resnet18", {"plan": "scene"}, "none", "demo__resnet18__scene__7d367f554f"),
    ("resnet18", {"plan": "scene"}, "default", "demo__resnet18__scene__1a3e9a609c"),
    ("vit_b16", {"plan": "fps", "tokens": "patch"}, "none", "demo__vit_b16-patch__fps__61a9a32919"),
    ("vit_l16", {"plan": "fps", "tokens": "patch"}, "default",
     "demo__vit_l16-patch__fps__c85e1860da"),
    ("r2plus1d_18", {"plan": "clips"}, "none", "demo__r2plus1d_18__clips__042ecf79e5"),
    ("slowfast_r50", {"plan": "clips"}, "default", "demo__slowfast_r50__clips__1ad8676521"),
]


@pytest.mark.parametrize(("backbone", "knobs", "kind", "expected"), GOLDEN_NAMES)
def test_crop_keeps_the_names_feature_sets_had_and_squash_makes_new_ones(backbone, knobs, kind,
                                                                        expected):
    from pipeline.extract import ExtractConfig, feature_set_name, feature_set_spec

    weights = {"kind": "none", "seed": 0} if kind == "none" else {"kind": "default", "tag": "X"}

    def spec(**kw):
        config = ExtractConfig(backbones=(backbone,), **knobs, **kw)
        return feature_set_spec(config, _catalog(), backbone, weights, "fp32")

    assert feature_set_name(spec()) == feature_set_name(spec(resize="crop")) == expected
    assert "resize" not in spec()["backbone_spec"]
    squashed = spec(resize="squash")
    assert feature_set_name(squashed) != expected
    assert squashed["backbone_spec"]["resize"] == "squash"
    assert squashed["backbone_spec"]["resize_px"] == [squashed["backbone_spec"]["size_px"]] * 2


def test_resize_must_be_crop_or_squash():
    from pipeline.extract import ExtractConfig

    with pytest.raises(ValueError, match="--resize 'stretch': valid values are crop, squash"):
        ExtractConfig(resize="stretch")
    with pytest.raises(ValueError, match="crop, squash"):
        backbone_spec("deit_ti16", resize="stretch")


def test_cli_lists_every_backbone_with_tokens_pretraining_and_source():
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    blocks: dict[str, str] = {}
    for line in result.output.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + line + "\n"
    assert sorted(blocks) == list_backbones()
    for name, block in blocks.items():
        spec = backbone_spec(name)
        shapes = ", ".join(f"{k} {'×'.join(map(str, spec.token_shape(k)))}"
                           for k in spec.token_kinds)
        assert shapes in block.splitlines()[0], name
        assert f"pretrained on {spec.pretrained_on} ({spec.weights_tag})" in block, name
        assert f"source: {spec.source}" in block, name
    assert "patch 197×1024 (CLS + 14×14 patches)" in result.output  # vit_l16_in21k
    assert "patch 257×1024 (CLS + 16×16 patches)" in result.output  # the /14 models at 224 px
    assert "used by: ViS4mer" in result.output


def test_squash_reaches_the_extractors(tiny_catalog, tmp_path):
    """A squash feature set is its own feature set and holds squashed frames' tokens, never
    cropped ones under a squash label (the extractors build the backbone with the geometry)."""
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.store import FeatureStore
    from tests.conftest import TINY_EXTRACT_OPTIONS

    options = {**TINY_EXTRACT_OPTIONS, "backbones": ("deit_ti16",), "num_frames": 1, "limit": 1}
    store = tmp_path / "store"
    crop = ExtractConfig(store=str(store), num_workers=0, **options)
    for config in (crop, dataclasses.replace(crop, resize="squash")):
        assert run_extract(config, catalog=tiny_catalog, progress=False).num_ok == 1
    sets = {fs.spec["backbone_spec"].get("resize", "crop"): fs
            for fs in FeatureStore(store).feature_sets()}
    assert set(sets) == {"crop", "squash"}
    (video,) = sets["crop"].ok_ids()
    assert not np.allclose(sets["crop"].read(video).tokens, sets["squash"].read(video).tokens)


def test_vit_b16_in21k_extracts_the_demo_and_vis4mer_trains_on_its_patch_tokens(demo_small,
                                                                                   tmp_path):
    import json

    from typer.testing import CliRunner

    from heads.cli import app as heads_app
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.store import FeatureStore

    store = tmp_path / "store"
    config = ExtractConfig(dataset="demo", store=str(store), backbones=("vit_b16_in21k",),
                           plan="fps", fps=0.25, tokens="patch", detector="none",
                           precision="fp32", weights=("none",), num_workers=0)
    summary = run_extract(config, catalog=demo_small, progress=False)
    assert (summary.num_ok, summary.num_failed) == (demo_small.videos.height, 0)
    (name,) = summary.feature_sets
    fs = FeatureStore(store).open(name)
    assert fs.spec["backbone_spec"]["pretrained_on"] == "random init (seed 0)"
    assert fs.spec["token_shape"] == [197, 768] and "-patch__fps__" in name
    got = fs.read(demo_small.videos["video_id"][0])
    assert got.tokens.shape[1:] == (197, 768) and len(got.tokens) >= 2
    result = CliRunner().invoke(
        heads_app,
        ["train", "--dataset", "demo", "--data-root", str(demo_small.root), "--variant", "small",
         "--head", "vis4mer", "--task", "most_screen_time", "--store", str(store),
         "--features", name, "--runs-dir", str(tmp_path / "runs"), "--epochs", "2",
         "--head-kwarg", "d_model=32", "--head-kwarg", "state_dim=8"],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"train", "val", "test"}
    assert name in (run_dir / "config.json").read_text()


def test_every_timm_backbone_extracts_the_small_demo_in_one_run(demo_small, tmp_path):
    """Issue 17's "done when": each new backbone extracts the demo into the store (random init,
    1 frame per video, the whole 8-video small variant), all six from one decode per video."""
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.store import FeatureStore

    features = tuple(f"{name}:uniform:patch" for name in TIMM)
    config = ExtractConfig(dataset="demo", store=str(tmp_path / "store"), features=features,
                           num_frames=1, detector="none", precision="fp32", weights=("none",),
                           short_side_px=224, num_workers=0)
    summary = run_extract(config, catalog=demo_small, progress=False)
    assert (summary.num_ok, summary.num_failed) == (demo_small.videos.height, 0)
    assert len(summary.feature_sets) == len(TIMM) == 6
    store = FeatureStore(tmp_path / "store")
    for name, set_name in zip(TIMM, summary.feature_sets):
        fs = store.open(set_name)
        spec = backbone_spec(name)
        assert fs.spec["backbone"] == name and fs.spec["token_shape"] == list(
            spec.token_shape("patch"))
        for video_id in demo_small.videos["video_id"]:
            tokens = fs.read(video_id).tokens.astype(np.float32)  # (1, N, D)
            assert tokens.shape == (1, *spec.token_shape("patch"))
            assert np.isfinite(tokens).all() and tokens.std() > 0.1
