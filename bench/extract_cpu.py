"""CPU time per decoded frame of one extraction worker, by component, against decoding alone.

    .venv/bin/python bench/extract_cpu.py                  # demo + 720p-class footage, ~2 min
    .venv/bin/python bench/extract_cpu.py --quick          # 2 short videos of each
    .venv/bin/python bench/extract_cpu.py --start-up       # also: an extractor's start-up, 3 runs

Wall-clock throughput is noisy on a shared machine; the CPU time of one process (all its threads,
as swscale and OpenCV may use helper threads) is not. One decoder thread, one torch thread (what a Ray worker runs), the scene plan
with resnet18: this prints core-microseconds per decoded frame for

- the reference, measured in the same run: decoding alone (the same videos through
  :class:`~pipeline.decode.VideoReader`, no frame read), and the backbone inside the pipeline;
- the pipeline: ``VideoExtractor.process`` end to end, and its parts (thumbnail for the scene
  detector, the detector itself, sampling and conversion of sampled frames, the store write,
  the rest: generators, Frame objects, bookkeeping);
- the ratio pipeline / (decode + backbone): 1.0 is a pipeline that costs nothing beyond them.

The part breakdown is taken in a second, instrumented pass (its timers cost ~1 µs per call);
the totals come from uninstrumented passes, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from extract import _demo_paths, hd_footage  # noqa: E402  (bench/ is sys.path[0])

clock = time.process_time  # all threads: swscale and OpenCV may run helper threads


def _extractor(store: Path, detect_interpolation: str | None = None):
    from pipeline.backbones import backbone_spec, resolve_precision
    from pipeline.sampling import PlanConfig
    from pipeline.scenes import SceneDetectConfig
    from pipeline.store import FeatureStore
    from pipeline.worker import FeatureSetJob, VideoExtractor

    spec = backbone_spec("resnet18")
    FeatureStore(store).create("cpu__resnet18", spec={"bench": "cpu"}, token_kind="pooled",
                               dim=spec.dim, dtype="float16")
    job = FeatureSetJob("cpu__resnet18", "resnet18", "none", 0,
                        precision=resolve_precision("auto", "cpu"))
    scenes = SceneDetectConfig(**({"detect_interpolation": detect_interpolation}
                                  if detect_interpolation else {}))
    return VideoExtractor(str(store), [job], scene_config=scenes,
                          plan_config=PlanConfig("scene"), num_threads=1, decode_threads=1)


def decode_only(paths: list[str]) -> tuple[int, float]:
    """Frames and CPU seconds to decode ``paths`` without reading any frame's pixels."""
    from pipeline.decode import VideoReader

    num_frames, t0 = 0, clock()
    for path in paths:
        for _ in VideoReader(path, decode_threads=1):
            num_frames += 1
    return num_frames, clock() - t0


def pipeline_total(extractor, paths: list[str]) -> tuple[int, float]:
    """Frames and CPU seconds of ``extractor.process`` over ``paths``."""
    num_frames, t0 = 0, clock()
    for i, path in enumerate(paths):
        result = extractor.process(f"v{i}_{time.monotonic_ns()}", path, list(extractor.jobs))
        assert result.status == "ok", result.error
        num_frames += result.num_frames
    return num_frames, clock() - t0


@contextmanager
def instrumented(totals: dict[str, float]):
    """Patch the pipeline's parts to add their CPU seconds to ``totals`` (nested parts are
    subtracted from their caller afterwards, in :func:`breakdown`)."""
    import scenedetect

    from pipeline import decode, sampling, scenes, worker
    from pipeline.store import FeatureSet

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                totals[key] = totals.get(key, 0.0) + clock() - t0

        return original, wrapper

    def timed_iter(original):
        def wrapper(self):
            frames = original(self)
            while True:
                t0 = clock()
                try:
                    frame = next(frames)
                except StopIteration:
                    totals["decode"] = totals.get("decode", 0.0) + clock() - t0
                    return
                totals["decode"] = totals.get("decode", 0.0) + clock() - t0
                yield frame

        return original, wrapper

    targets = [
        (decode._Converter, "thumbnail", "thumbnail"),
        (decode._Converter, "working", "convert sampled"),
        (scenedetect.ContentDetector, "process_frame", "detector"),
        (scenes.SceneSegmenter, "push", "segmenter"),
        (scenes.SceneSegmenter, "finish", "segmenter"),
        (sampling.SceneSampler, "push", "sampler"),
        (sampling.SceneSampler, "finish", "sampler"),
        (worker.VideoExtractor, "_run_backbones", "backbone"),
        (FeatureSet, "write_video", "store write"),
    ]
    saved = []
    for owner, name, key in targets:
        original, wrapper = timed(owner, name, key)
        saved.append((owner, name, original))
        setattr(owner, name, wrapper)
    original, wrapper = timed_iter(decode.VideoReader.__iter__)
    saved.append((decode.VideoReader, "__iter__", original))
    decode.VideoReader.__iter__ = wrapper
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def breakdown(totals: dict[str, float], total_sec: float) -> dict[str, float]:
    """Self CPU seconds per part; ``rest`` is what no part accounts for."""
    parts = dict(totals)
    parts["segmenter"] = parts.get("segmenter", 0) - parts.get("thumbnail", 0) - parts.get("detector", 0)
    # Sampled frames are converted inside the sampler (when a scene closes).
    parts["sampler"] = parts.get("sampler", 0) - parts.get("convert sampled", 0)
    parts["rest"] = total_sec - sum(parts.values())
    return parts


def measure(label: str, paths: list[str], work: Path, repeats: int,
            detect_interpolation: str | None) -> None:
    extractor = _extractor(work / f"store-{label[:4]}", detect_interpolation)
    frames_dec, sec_dec = min((decode_only(paths) for _ in range(repeats)), key=lambda r: r[1])
    frames, sec = min((pipeline_total(extractor, paths) for _ in range(repeats)), key=lambda r: r[1])
    assert frames == frames_dec, (frames, frames_dec)
    totals: dict[str, float] = {}
    with instrumented(totals):
        _, sec_instr = pipeline_total(extractor, paths)
    parts = breakdown(totals, sec_instr)
    us = 1e6 / frames
    backbone = parts["backbone"] * us
    print(f"{label}: {len(paths)} videos, {frames} frames; core-µs per decoded frame")
    print(f"   reference: decode only {sec_dec * us:7.1f}   + backbone {backbone:6.1f}"
          f"   = {sec_dec * us + backbone:7.1f}")
    print(f"   pipeline end to end   {sec * us:7.1f}   beyond decode + backbone "
          f"{sec * us - sec_dec * us - backbone:6.1f}   ratio {sec / (sec_dec + parts['backbone']):.3f}")
    print(f"   instrumented pass {sec_instr * us:.1f}:  "
          + ",  ".join(f"{k} {v * us:.1f}" for k, v in parts.items()))
    print()


def start_up(repeats: int) -> None:
    """CPU and wall seconds to build an extractor in a fresh interpreter (imports + backbone)."""
    code = (
        "import time, resource; t0 = time.perf_counter(); import sys; sys.path.insert(0, %r);"
        "sys.path.insert(0, %r); import extract_cpu, tempfile, pathlib;"
        "extract_cpu._extractor(pathlib.Path(tempfile.mkdtemp()));"
        "u = resource.getrusage(resource.RUSAGE_SELF); print(u.ru_utime + u.ru_stime, time.perf_counter() - t0)"
    ) % (str(ROOT / "bench"), str(ROOT))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        cpu, inside = map(float, out.stdout.split())
        runs.append((cpu, inside, time.perf_counter() - t0))
    cpu, inside, wall = min(runs)
    print(f"extractor start-up in a fresh interpreter (best of {repeats}): {cpu:.2f} CPU s; "
          f"{wall:.2f} s wall with interpreter start ({inside:.2f} s after it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=8, help="demo videos")
    parser.add_argument("--quick", action="store_true", help="2 demo videos, 2 × 10 s at 720p")
    parser.add_argument("--repeats", type=int, default=2, help="uninstrumented passes (best kept)")
    parser.add_argument("--footage", choices=("demo", "720p", "both"), default="both")
    parser.add_argument("--start-up", action="store_true", help="also time an extractor's start-up")
    parser.add_argument("--detect-interpolation", help="scene detector thumbnail scaling "
                        "(default: SceneDetectConfig's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_extract_cpu_"))
    if args.footage in ("demo", "both"):
        measure("demo 320x180", _demo_paths(2 if args.quick else args.videos), work, args.repeats,
                args.detect_interpolation)
    if args.footage in ("720p", "both"):
        hd = hd_footage(work, num_videos=2, duration_sec=10 if args.quick else 30)
        measure("720p-class", hd, work, args.repeats, args.detect_interpolation)
    if args.start_up:
        start_up(1 if args.quick else 3)


if __name__ == "__main__":
    main()
