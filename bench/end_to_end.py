"""STAN-Small vs STAN-Large end-to-end: training throughput (clips/s) and memory.

STAN §3 fine-tunes its 2D CNN (STAN-Small, stop-gradient on the 3D stream) or both backbones
(STAN-Large) and reports 45 M vs 92.5 M trainable parameters. This script measures what that
choice costs here: one training step of ``heads finetune``'s model (the shared loop's
:meth:`heads.loop.Trainer.step`: ResNet-18 on each scene's centre frame, R(2+1)D-18 on each
scene's F-frame clip, the STAN head, AdamW with the recipe's parameter groups) on synthetic
uint8 windows of ``--videos`` videos × ``--scenes`` scenes, so decoding is not timed (it runs in
DataLoader workers, overlapped with the step). A "clip" is one scene: its centre frame and its F frames.

Each preset runs in a fresh subprocess so allocator caches and peaks do not leak:

- speed: clips/s = videos × scenes / median step time after one warm-up step;
- memory: on CUDA ``torch.cuda.max_memory_allocated`` during the steps minus the allocation
  before them (model, optimiser state after the warm-up, inputs); on CPU the peak RSS minus the
  RSS after building the model.

The printed ratio is STAN-Large / STAN-Small, measured side by side in this run.

Usage::

    python bench/end_to_end.py --device cuda                   # 224/112 px, 12-frame clips
    python bench/end_to_end.py --device cuda --precision bf16 --grad-checkpoint
    python bench/end_to_end.py --quick                         # CPU, 32 px, 4-frame clips
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _memory import memory_baseline, peak_bytes_since  # bench/ is sys.path[0] when run as a script

PRESETS = ("stan_small", "stan_large")
FULL = {"size_px": None, "frames_per_clip": 12, "scenes": 16, "videos": 2, "steps": 5}
QUICK = {"size_px": 32, "frames_per_clip": 4, "scenes": 4, "videos": 2, "steps": 2}


def measure(preset: str, cfg: dict, device: str) -> dict:
    """One preset in this (fresh) process: median step seconds, extra peak MiB, parameters."""

    import tempfile

    import torch

    from heads.finetune.build import build_model
    from heads.finetune.clips import ClipBatch
    from heads.finetune.config import FinetuneConfig, resolve_config
    from heads.finetune.recipe import param_groups
    from heads.loop import Trainer
    from heads.runtime import autocast_and_scaler

    config = resolve_config(FinetuneConfig(
        task="bench", preset=preset, device=device, frame_size_px=cfg["size_px"],
        frames_per_clip=cfg["frames_per_clip"], grad_checkpoint=cfg["grad_checkpoint"],
    ))
    model, streams, _ = build_model(config, num_outputs=10, checkpointing=cfg["grad_checkpoint"])
    model.to(device).train()
    num_clips = cfg["videos"] * cfg["scenes"]
    frames = []
    for stream in streams:
        count = stream.frames_per_window
        shape = (num_clips,) + ((count,) if count > 1 else ()) + (3, stream.size_px,
                                                                  stream.size_px)
        frames.append(torch.randint(0, 256, shape, dtype=torch.uint8, device=device))
    lengths = torch.full((cfg["videos"],), cfg["scenes"])
    batch = ClipBatch(frames, [lengths] * len(frames),
                      torch.zeros(cfg["videos"], dtype=torch.long, device=device),
                      torch.arange(cfg["videos"]), [])
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["precision"]]
    autocast, scaler = autocast_and_scaler(torch.device(device), dtype)
    trainer = Trainer(model, config=config, groups=param_groups(model, config),
                      steps_per_epoch=1, kind="classification", run_dir=tempfile.mkdtemp(),
                      checkpoint_fields=dict, autocast=autocast, scaler=scaler)

    def step() -> float:
        start = time.perf_counter()
        trainer.step((batch.frames, batch.lengths), batch.targets)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    baseline = memory_baseline("cpu")  # on CPU the warm-up's allocations count
    step()  # warm-up: kernels, allocator pools, optimiser state
    if device == "cuda":
        baseline = memory_baseline(device)
    times = [step() for _ in range(cfg["steps"])]
    peak = peak_bytes_since(device, baseline)
    counts = model.parameter_counts()
    return {"preset": preset, "step_s": statistics.median(times), "clips": num_clips,
            "mib": peak / 2**20, "trainable": counts["trainable"], "frozen": counts["frozen"],
            "sizes": [s.size_px for s in streams], "threads": torch.get_num_threads()}


def run_child(preset: str, args: argparse.Namespace, cfg: dict) -> dict:
    """``measure`` in a fresh interpreter; ``{"error": ...}`` when it fails or times out."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", preset, "--device",
               args.device, "--config", json.dumps(cfg)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"preset": preset, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: dict, cfg: dict, device: str) -> str:
    """One line per preset, then the Large / Small ratios and the paper's parameter counts."""
    small, large = rows["stan_small"], rows["stan_large"]
    lines = [f"STAN end-to-end training step on {device} ({cfg['precision']}, gradient "
             f"checkpointing {'on' if cfg['grad_checkpoint'] else 'off'}): {cfg['videos']} "
             f"videos x {cfg['scenes']} scenes, {cfg['frames_per_clip']}-frame clips"]
    paper = {"stan_small": 45.0, "stan_large": 92.5}
    for preset, row in rows.items():
        if "error" in row:
            lines.append(f"{preset:>10}: {row['error']}")
            continue
        lines.append(
            f"{preset:>10}: {row['clips'] / row['step_s']:8.2f} clips/s  {row['mib']:9.0f} MiB  "
            f"trainable {row['trainable'] / 1e6:6.2f} M (paper {paper[preset]} M), frozen "
            f"{row['frozen'] / 1e6:.2f} M, crops {row['sizes']} px"
        )
    if "error" not in small and "error" not in large:
        lines.append(
            f"ratio large/small: speed {small['step_s'] / large['step_s']:.2f}x, memory "
            f"{large['mib'] / max(small['mib'], 1e-9):.2f}x, trainable parameters "
            f"{large['trainable'] / small['trainable']:.2f}x (paper {92.5 / 45.0:.2f}x)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 px, 4-frame clips, 4 scenes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute backbone activations (default: on for cuda)")
    parser.add_argument("--size-px", type=int, help="crop side of both streams")
    parser.add_argument("--scenes", type=int, help="scenes (clips) per video")
    parser.add_argument("--videos", type=int, help="videos per step")
    parser.add_argument("--steps", type=int, help="timed steps")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per preset")
    parser.add_argument("--worker", choices=PRESETS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.worker, json.loads(args.config), args.device)))
        return

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("size_px", "scenes", "videos", "steps"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    cuda = args.device == "cuda"
    cfg["precision"] = args.precision or ("bf16" if cuda else "fp32")
    cfg["grad_checkpoint"] = cuda if args.grad_checkpoint is None else args.grad_checkpoint
    rows = {}
    for preset in PRESETS:
        rows[preset] = run_child(preset, args, cfg)
        print(f"  {preset}: {rows[preset].get('error') or 'done'}", file=sys.stderr, flush=True)
    print(report(rows, cfg, args.device))


if __name__ == "__main__":
    main()
