"""Data-parallel training at 1 vs 2 workers (heads.parallel: Ray Train, DDP), same global batch.

Two measurements, each side by side in this run, printed as 2-worker / 1-worker ratios:

- ``step``: one end-to-end training step of ``heads finetune``'s model (stan_small: ResNet-18
  trained, R(2+1)D-18 frozen, the STAN head; the shared :class:`heads.loop.Trainer`) on
  synthetic uint8 windows, decoding not timed: the median of ``--steps`` steps after one
  warm-up, a global batch of ``--videos`` videos (1 worker: all of them; 2 workers: half each,
  gradients all-reduced);
- ``epoch``: one epoch of a cached head (``heads train``, STAN by default) on a store: the
  time of a run of ``--epochs`` + 1 epochs minus that of a run of 1 epoch, divided by
  ``--epochs`` (so start-up, data loading and the final evaluation cancel), per-worker batch
  halved on 2 workers. Without ``--store`` a synthetic store of ``--num-videos`` videos is
  written first (pooled 512-d scene tokens, 8-24 per video).

On CPU the workers use gloo and one thread each (Ray gives each 1 CPU), the one-worker run
every core: on a 2-core machine the ratio says what the all-reduce and the second process
cost, not a speed-up. On CUDA each worker takes one GPU (nccl); 2 GPUs are needed.

    python bench/data_parallel.py                       # CPU, 2 workers
    python bench/data_parallel.py --device cuda         # 2 GPUs
    python bench/data_parallel.py --quick               # small sizes (CI-sized, a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

QUICK = {"videos": 4, "scenes": 4, "size_px": 32, "frames_per_clip": 4, "steps": 3,
         "num_videos": 64, "epochs": 2}
FULL = {"videos": 8, "scenes": 8, "size_px": None, "frames_per_clip": 8, "steps": 5,
        "num_videos": 512, "epochs": 3}


def step_times(payload: dict) -> list[float] | None:
    """Seconds of each end-to-end step after a warm-up, in this process or one data-parallel
    worker (its share of the global batch); worker 0 writes them to ``payload["out"]``."""
    import torch

    from heads.finetune.build import build_model
    from heads.finetune.clips import ClipBatch
    from heads.finetune.config import FinetuneConfig, resolve_config
    from heads.finetune.recipe import param_groups
    from heads.loop import Trainer
    from heads.parallel import current, worker_setup

    if payload.get("_cpus_per_worker"):
        worker_setup(payload)
    parallel = current()
    device = parallel.device if parallel.enabled else torch.device(payload["device"])
    config = resolve_config(FinetuneConfig(
        task="bench", preset="stan_small", device=str(device), weights=("none",),
        frame_size_px=payload["size_px"], frames_per_clip=payload["frames_per_clip"],
        head_kwargs={"dropout": 0.0}))
    torch.manual_seed(0)
    model, streams, _ = build_model(config, num_outputs=10, checkpointing=False)
    model.to(device).train()
    videos = payload["videos"] // parallel.world_size
    clips = videos * payload["scenes"]
    gen = torch.Generator().manual_seed(parallel.rank)
    frames = []
    for stream in streams:
        count = stream.frames_per_window
        shape = (clips,) + ((count,) if count > 1 else ()) + (3, stream.size_px, stream.size_px)
        frames.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device))
    lengths = torch.full((videos,), payload["scenes"])
    batch = ClipBatch(frames, [lengths] * len(frames),
                      torch.zeros(videos, dtype=torch.long, device=device),
                      torch.arange(videos), [])
    trainer = Trainer(model, config=config, groups=param_groups(model, config),
                      steps_per_epoch=1, kind="classification", run_dir=tempfile.mkdtemp(),
                      checkpoint_fields=dict, parallel=parallel)
    weight = 1.0  # every worker holds an equal share: DDP's mean is the global batch's
    times = []
    for _ in range(payload["steps"] + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.step((batch.frames, batch.lengths), batch.targets, weight=weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first step warms kernels and allocators
    if parallel.is_main and payload.get("out"):
        Path(payload["out"]).write_text(json.dumps(times))
    return times


def write_store(root: Path, num_videos: int, dim: int = 512):
    """A synthetic catalog and store of pooled scene tokens (two streams: STAN's), written
    through the store's own API; 60/20/20 % train/val/test, 3 classes."""
    import polars as pl

    from catalogs.base import Catalog, Task
    from pipeline.store import FeatureStore, fingerprint

    rng = np.random.default_rng(0)
    classes = ("a", "b", "c")
    protos = rng.normal(size=(len(classes), dim))
    store = FeatureStore(root)
    sets = []
    for backbone in ("resnet18", "r2plus1d_18"):
        spec = {"dataset": "synthetic", "backbone": backbone, "plan": "scene",
                "weights": "none"}
        sets.append(store.create(f"synthetic-{backbone}-scene-{fingerprint(spec)[:12]}",
                                 spec=spec, token_kind="pooled", dim=dim, dtype="float16"))
    ids = [f"v{i:06d}" for i in range(num_videos)]
    labels = [classes[i % 3] for i in range(num_videos)]
    for video_id, label in zip(ids, labels):
        num_scenes = int(rng.integers(8, 25))
        tokens = protos[classes.index(label)] + rng.normal(size=(num_scenes, dim))
        times = {"start_sec": np.arange(num_scenes) * 4.0,
                 "end_sec": np.arange(1, num_scenes + 1) * 4.0,
                 "scene_idx": np.arange(num_scenes)}
        for fs in sets:
            fs.write_video(video_id, tokens, **times)
    splits = (["train"] * 3 + ["val", "test"]) * (num_videos // 5 + 1)
    catalog = Catalog(
        name="synthetic", root=root,
        videos=pl.DataFrame({"video_id": ids, "path": [None] * num_videos,
                             "split": splits[:num_videos]}),
        tasks={"label": Task("label", "classification", classes)},
        labels=pl.DataFrame({"video_id": ids, "label": labels}))
    return catalog, [fs.name for fs in sets]


def epoch_seconds(catalog, features, *, store: str, head: str, task: str, batch_size: int,
                  workers: int, epochs: int, device: str) -> float:
    """Seconds per epoch of ``heads train`` at ``workers`` workers (see the module docstring)."""
    from heads.train import TrainConfig, train

    def run(num_epochs: int) -> float:
        config = TrainConfig(dataset=catalog.name, task=task, head=head, store=store,
                             features=tuple(features), plan="scene", epochs=num_epochs,
                             batch_size=batch_size // workers, data_parallel=workers,
                             patience=0, device=device, runs_dir=tempfile.mkdtemp())
        start = time.perf_counter()
        train(config, catalog=catalog, log=lambda _: None)
        return time.perf_counter() - start

    return (run(epochs + 1) - run(1)) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="Small sizes (a smoke run).")
    parser.add_argument("--part", choices=("step", "epoch", "all"), default="all")
    parser.add_argument("--store", help="A feature store (default: a synthetic one).")
    parser.add_argument("--dataset", default="demo", help="With --store: its catalog.")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--task", default="first_source", help="With --store: the task.")
    parser.add_argument("--features", nargs=2, default=["resnet18", "r2plus1d_18"])
    parser.add_argument("--head", default="stan")
    parser.add_argument("--batch-size", type=int, default=16, help="Global batch (epoch part).")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL

    import ray
    import torch

    from heads.parallel import launch
    from pipeline.cluster import start_ray

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        print(f"data_parallel: {torch.cuda.device_count()} GPU(s) here, 2 are needed: skipped")
        return
    start_ray(None)
    print(f"data_parallel on {args.device}: torch {torch.__version__}, Ray {ray.__version__}, "
          f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")
    if args.part in ("step", "all"):
        payload = {**sizes, "device": args.device}
        one = statistics.median(step_times(payload))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "times.json"
            launch(step_times, {**payload, "out": str(out)}, num_workers=2, device=args.device,
                   storage_path=Path(tmp) / "ray_train", name="bench-step", log=lambda _: None)
            two = statistics.median(json.loads(out.read_text()))
        print(f"end-to-end step (stan_small, {sizes['videos']} videos x {sizes['scenes']} "
              f"scenes per global batch): 1 worker {one:.3f} s, 2 workers {two:.3f} s; "
              f"ratio 2/1 {two / one:.2f}x")
    if args.part in ("epoch", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            if args.store:
                from catalogs import get_catalog

                catalog = get_catalog(args.dataset, root=args.data_root)
                store, features, task = args.store, args.features, args.task
            else:
                catalog, features = write_store(Path(tmp) / "store", sizes["num_videos"])
                store, task = str(Path(tmp) / "store"), "label"
            kwargs = dict(store=store, head=args.head, task=task, batch_size=args.batch_size,
                          epochs=sizes["epochs"], device=args.device)
            one = epoch_seconds(catalog, features, workers=1, **kwargs)
            two = epoch_seconds(catalog, features, workers=2, **kwargs)
        print(f"cached-head epoch ({args.head}, {catalog.name}, global batch "
              f"{args.batch_size}): 1 worker {one:.2f} s, 2 workers {two:.2f} s; ratio 2/1 "
              f"{two / one:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
