"""Several Ray nodes on one machine (separate ``ray start`` processes): extraction spreads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_extraction_spreads_over_two_ray_nodes(tmp_path):
    """bench/scale.py on 4 small demo videos: with 2 worker nodes both extract videos, and
    every video is extracted once per run. Slow: three Ray nodes and two drivers start."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--data-root",
         str(tmp_path / "demo_small")],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^\s+(\d)\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+(.*)$", out.stdout, re.M)}
    per_node = {n: [int(k) for k in re.findall(r": (\d+)", text)] for n, text in rows.items()}
    assert len(per_node[1]) == 1 and sum(per_node[1]) == 4
    assert len(per_node[2]) == 2 and sum(per_node[2]) == 4 and min(per_node[2]) >= 1
    assert re.search(r"throughput ratio, 2 nodes / 1 node: \d+\.\d\dx", out.stdout)
