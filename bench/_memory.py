"""Memory readings shared by the benchmarks (Linux)."""

from __future__ import annotations

import os


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``), bytes."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
