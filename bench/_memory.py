"""Memory readings shared by the benchmarks (Linux)."""

from __future__ import annotations

import os


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``), bytes."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def memory_baseline(device: str) -> int:
    """Bytes in use now, the reference a peak is measured from: on CUDA the allocated memory
    (after a sync, with the peak counter reset), on CPU this process's RSS."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return current_rss_bytes()


def peak_bytes_since(device: str, baseline: int) -> int:
    """Peak bytes above ``baseline`` (from :func:`memory_baseline`): CUDA's peak allocation, or
    on CPU this process's peak RSS (``ru_maxrss``, KiB on Linux)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() - baseline
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
