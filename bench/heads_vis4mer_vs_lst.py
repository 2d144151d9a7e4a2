"""``vis4mer`` (S4 decoder) vs ``lst`` (the same decoder with self-attention): ViS4mer Tab. 3.

Islam & Bertasius (ECCV 2022, §4, Tab. 3) train both on 60 frames of ViT-L tokens (D = 1024)
and report, at 11,760 tokens (60 × 196 patches), ViS4mer 4.95 samples/s and 5.15 GB of GPU
memory against LST's 1.88 samples/s and 41.38 GB: 2.63× faster, 8.0× less memory. This script
measures the same shape of comparison here, one training step at batch 1 (forward, backward,
AdamW step with the trainer's parameter groups), on 60 frames of 197 ViT tokens (CLS + 14 × 14)
reduced as the paper's §5.2 ablation does (the heads' ``frame_tokens``: per-frame spatial max
pooling to 196, 49 or 25 patches, or the CLS token alone) to 11,760, 2,940, 1,500 and 60
tokens, so each row means what the paper's row means. Each configuration runs in a fresh
subprocess so that allocator caches and earlier peaks do not leak between measurements:

- speed: samples/s = 1 / median step time after a warm-up step, over at least ``--repeats``
  steps and more for fast configurations (until 3 s are spent, at most 50 steps);
- memory on CPU: the child's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its
  RSS after building the model, optimiser and input; on CUDA ``torch.cuda.max_memory_allocated``
  minus the allocation at that point.

On a machine shared with other jobs, more intra-op threads than free cores make OpenMP waits
dominate the small configurations (tens of ms become hundreds): compare ``--threads 1``.
Page faults of large allocations are expensive on some VMs; ``THP_MEM_ALLOC_ENABLE=1`` in the
environment (inherited by the children) makes PyTorch back them with huge pages.

Attention runs through ``scaled_dot_product_attention`` (PyTorch picks its best kernel: flash
attention on CPU and recent GPUs), so LST's memory here is not the quadratic attention matrix
the paper's implementation held.

Usage::

    python bench/heads_vis4mer_vs_lst.py                 # D = 1024, four lengths (2-5 min, 2 cores)
    python bench/heads_vis4mer_vs_lst.py --quick         # D = 64, short sequences, seconds
    python bench/heads_vis4mer_vs_lst.py --device cuda
    python bench/heads_vis4mer_vs_lst.py --dim 512 --patches 1 49   # reduced width / lengths
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

HEADS = ("vis4mer", "lst")
# Timed steps: at least `repeats`, and more (up to 50) until `min_time_s` is spent, so that the
# fast configurations get a median over many steps and the slow ones stay within budget.
# `patches`: tokens kept per frame (frame_tokens) of a CLS + grid × grid input.
FULL = {"frames": 60, "grid": 14, "patches": [1, 25, 49, 196], "dim": 1024, "repeats": 3,
        "min_time_s": 3.0}
QUICK = {"frames": 12, "grid": 8, "patches": [1, 16, 64], "dim": 64, "repeats": 1,
         "min_time_s": 0.5}
# ViS4mer Tab. 3 at 11,760 tokens (GPU): samples/s and GB.
PAPER = {"vis4mer": (4.95, 5.15), "lst": (1.88, 41.38)}


def measure(head: str, num_patches: int, cfg: dict, device: str) -> dict:
    """One configuration in this (fresh) process: median step seconds and peak extra MiB."""

    import torch

    from heads.models import create_head
    from heads.optim import param_groups

    torch.manual_seed(0)
    dim = cfg["dim"]
    model = create_head(head, in_dim=dim, num_outputs=10, d_model=dim,
                        frame_tokens=num_patches).to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-4, weight_decay=0.01), lr=1e-4)
    x = torch.randn(1, cfg["frames"], 1 + cfg["grid"] ** 2, dim, device=device)  # (B, T, N, D)
    mask = torch.ones(1, cfg["frames"], dtype=torch.bool, device=device)  # (B, T)
    target = torch.zeros(1, dtype=torch.long, device=device)  # (B,)

    def step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x, mask), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    baseline = memory_baseline(device)
    step()  # warm-up: allocator pools, kernels, optimiser state
    times = []
    while len(times) < cfg["repeats"] or (sum(times) < cfg["min_time_s"] and len(times) < 50):
        times.append(step())
    seconds = statistics.median(times)
    peak = peak_bytes_since(device, baseline)
    return {"head": head, "tokens": cfg["frames"] * num_patches, "step_s": seconds,
            "num_steps": len(times), "mib": peak / 2**20, "threads": torch.get_num_threads()}


def run_child(head: str, num_patches: int, args: argparse.Namespace, cfg: dict) -> dict:
    """``measure`` in a fresh interpreter; ``{"error": ...}`` when it fails or times out."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", head, "--num-patches",
               str(num_patches), "--device", args.device, "--config", json.dumps(cfg)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    tokens = cfg["frames"] * num_patches
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"head": head, "tokens": tokens, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"head": head, "tokens": tokens, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: dict, cfg: dict, device: str, threads: int) -> str:
    """Fixed-width table, one line per token count, with vis4mer/lst ratios and the paper's."""
    lines = [
        f"vis4mer vs lst: one training step (fwd + bwd + AdamW), batch 1, D = d_model = "
        f"{cfg['dim']}, {cfg['frames']} frames, on {device}"
        + (f" ({threads} thread{'s' if threads != 1 else ''})" if device == "cpu" else ""),
        "speed ratio = vis4mer samples/s / lst samples/s (> 1: vis4mer faster); "
        "memory ratio = vis4mer / lst (< 1: vis4mer smaller)",
    ]
    columns = ("tokens", "vis4mer smp/s", "lst smp/s", "speed v/l", "vis4mer MiB", "lst MiB",
               "memory v/l")
    lines.append(" | ".join(f"{c:>13}" for c in columns))
    for num_patches in cfg["patches"]:
        tokens = cfg["frames"] * num_patches
        vis, lst = rows[("vis4mer", tokens)], rows[("lst", tokens)]
        if "error" in vis or "error" in lst:
            lines.append(f"{tokens:>13} | vis4mer: {vis.get('error', 'ok')}; "
                         f"lst: {lst.get('error', 'ok')}")
            continue
        cells = (tokens, f"{1 / vis['step_s']:.3f}", f"{1 / lst['step_s']:.3f}",
                 f"{lst['step_s'] / vis['step_s']:.2f}x", f"{vis['mib']:.0f}", f"{lst['mib']:.0f}",
                 f"{vis['mib'] / max(lst['mib'], 1e-9):.3f}")
        lines.append(" | ".join(f"{c:>13}" for c in cells))
    (v_speed, v_mem), (l_speed, l_mem) = PAPER["vis4mer"], PAPER["lst"]
    cells = ("paper 11760", f"{v_speed:.2f}", f"{l_speed:.2f}", f"{v_speed / l_speed:.2f}x",
             f"{v_mem * 1000:.0f} MB", f"{l_mem * 1000:.0f} MB", f"{v_mem / l_mem:.3f}")
    lines.append(" | ".join(f"{c:>13}" for c in cells) + "   (GPU, ViS4mer Tab. 3)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="D = 64 and short sequences")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dim", type=int, help="token width D = d_model (default 1024)")
    parser.add_argument("--patches", type=int, nargs="+",
                        help="tokens kept per frame to try (196, 49, 25, 1 at the full size)")
    parser.add_argument("--repeats", type=int, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--worker", choices=HEADS, help=argparse.SUPPRESS)
    parser.add_argument("--num-patches", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = measure(args.worker, args.num_patches, json.loads(args.config), args.device)
        print(json.dumps(result))
        return

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("dim", "patches", "repeats"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    rows = {}
    for num_patches in cfg["patches"]:
        for head in HEADS:
            result = run_child(head, num_patches, args, cfg)
            rows[(head, cfg["frames"] * num_patches)] = result
            status = result.get("error") or (
                f"{result['step_s']:.3f} s/step (median of {result['num_steps']}), "
                f"{result['mib']:.0f} MiB"
            )
            print(f"  {head:>7} tokens={cfg['frames'] * num_patches:<6} {status}", file=sys.stderr,
                  flush=True)
    threads = next((r["threads"] for r in rows.values() if "threads" in r), 0)
    print(format_table(rows, cfg, args.device, threads))


if __name__ == "__main__":
    main()
