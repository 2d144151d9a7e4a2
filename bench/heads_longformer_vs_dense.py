"""``longformer`` (sliding-window + global CLS attention) vs the same model with dense attention.

Both are :class:`heads.models.longformer.LongformerHead` with identical layers, width, heads and
weights shapes; the dense one is built with ``window=None`` (full attention through
``scaled_dot_product_attention``). For each sequence length T the script measures one training
step (forward + backward) and its peak memory, each configuration in a fresh subprocess so that
allocator caches and earlier peaks do not leak between measurements:

- time: median over up to ``--repeats`` steps after one warm-up step (fewer once the timed
  steps of a configuration pass ``budget_s``), milliseconds;
- memory on CPU: the child's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its
  RSS right after building the model and its input — the step's activations, gradients and
  temporaries; on CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at that point.

Usage::

    python bench/heads_longformer_vs_dense.py            # T = 250, 1000, 4000 (~2-3 min, 2 cores)
    python bench/heads_longformer_vs_dense.py --quick    # small widths and T, seconds
    python bench/heads_longformer_vs_dense.py --device cuda

Prints a table with the dense/longformer ratios of time and memory (> 1: longformer is cheaper).
On a machine shared with other jobs, ``--threads 1`` gives steadier times: two OpenMP threads
stall whenever another process takes a core. Memory does not depend on the load. The dense
model trains with attention dropout, so SDPA takes its math path and holds the (T × T) scores.
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

FULL = {"lengths": [250, 1000, 4000], "d_model": 768, "num_heads": 12, "num_layers": 3,
        "ff_dim": 3072, "window": 32, "batch": 1, "repeats": 3, "budget_s": 40.0}
QUICK = {"lengths": [64, 256], "d_model": 64, "num_heads": 4, "num_layers": 2, "ff_dim": 128,
         "window": 8, "batch": 1, "repeats": 3, "budget_s": 1.0}


def measure(impl: str, length: int, cfg: dict, device: str) -> dict:
    """One configuration, in this (fresh) process: step times (ms) and peak extra memory (MiB)."""

    import torch

    from heads.models import create_head

    torch.manual_seed(0)
    model = create_head(
        "longformer", in_dim=cfg["d_model"], num_outputs=10, d_model=cfg["d_model"],
        num_heads=cfg["num_heads"], num_layers=cfg["num_layers"], ff_dim=cfg["ff_dim"],
        window=cfg["window"] if impl == "longformer" else None, max_positions=length + 2,
        positions="token_index",  # no token times here: positions 0 … T-1
    ).to(device).train()
    x = torch.randn(cfg["batch"], length, cfg["d_model"], device=device)  # (B, T, D)
    mask = torch.ones(cfg["batch"], length, dtype=torch.bool, device=device)  # (B, T)

    def step() -> float:
        start = time.perf_counter()
        model(x, mask).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    baseline = memory_baseline(device)
    step()  # warm-up: allocator pools, kernels, gradient buffers
    model.zero_grad(set_to_none=False)  # keep the gradient buffers: part of a training step
    times = [step()]
    # More steps only while they are cheap: the dense T = 4000 step alone takes tens of seconds.
    while len(times) < cfg["repeats"] and sum(times) < cfg["budget_s"] * 1e3:
        times.append(step())
    peak = peak_bytes_since(device, baseline)
    return {"impl": impl, "length": length, "ms": statistics.median(times), "steps": len(times),
            "mib": peak / 2**20, "threads": torch.get_num_threads()}


def run_child(impl: str, length: int, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh interpreter; ``{"error": ...}`` when it fails (e.g. out of memory)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--length",
               str(length), "--device", args.device]
    if args.quick:
        command.append("--quick")
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "length": length, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: dict, cfg: dict, device: str, threads: int) -> str:
    """The results as a fixed-width table, one line per T, with dense/longformer ratios."""
    head = (f"longformer (window {cfg['window']}: {cfg['window'] // 2} per side, + global CLS) vs "
            f"dense attention; {cfg['num_layers']} layers, width {cfg['d_model']}, "
            f"{cfg['num_heads']} heads, batch {cfg['batch']}; forward+backward on {device}"
            + (f" ({threads} thread{'s' * (threads != 1)})" if device == "cpu" else ""))
    columns = ("T", "longformer ms", "dense ms", "time dense/lf", "longformer MiB", "dense MiB",
               "memory dense/lf")
    lines = [head, " | ".join(f"{c:>15}" for c in columns)]
    for length in cfg["lengths"]:
        lf, dense = rows[("longformer", length)], rows[("dense", length)]
        if "error" in lf or "error" in dense:
            lines.append(f"{length:>15} | {lf.get('error') or dense.get('error')}")
            continue
        cells = (length, f"{lf['ms']:.0f}", f"{dense['ms']:.0f}", f"{dense['ms'] / lf['ms']:.2f}x",
                 f"{lf['mib']:.0f}", f"{dense['mib']:.0f}",
                 f"{dense['mib'] / max(lf['mib'], 1e-9):.2f}x")
        lines.append(" | ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small widths and lengths")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the T values")
    parser.add_argument("--repeats", type=int, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--worker", choices=("longformer", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.lengths:
        cfg["lengths"] = args.lengths
    if args.repeats:
        cfg["repeats"] = args.repeats

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.worker, args.length, cfg, args.device)))
        return

    rows = {}
    for length in cfg["lengths"]:
        for impl in ("longformer", "dense"):
            rows[(impl, length)] = result = run_child(impl, length, args)
            status = result.get("error") or (
                f"{result['ms']:.0f} ms (median of {result['steps']}), {result['mib']:.0f} MiB"
            )
            print(f"  {impl:>10} T={length:<5} {status}", file=sys.stderr, flush=True)
    threads = next((r["threads"] for r in rows.values() if "threads" in r), 0)
    print(format_table(rows, cfg, args.device, threads))


if __name__ == "__main__":
    main()
