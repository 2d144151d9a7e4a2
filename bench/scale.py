"""Extraction throughput on 1 vs 2 Ray worker nodes, simulated on this machine.

    .venv/bin/python bench/scale.py                 # 16 demo videos, ~5 min on 2 CPU cores
    .venv/bin/python bench/scale.py --quick         # smoke run: 4 small demo videos
    .venv/bin/python bench/scale.py --data-root /path/to/built/demo   # reuse a built demo

Starts a real multi-node Ray cluster from separate ``ray start --block`` processes: a head
with no CPUs (it runs only this driver) and worker nodes with ``--num-cpus`` CPUs each and a
custom resource ``longvid_node``. It runs ``pipeline extract`` (``address`` set, one extractor
per worker CPU, spread over the nodes) on one worker node, then adds a second and runs the same
extraction into a fresh store. Prints, per run: nodes, extractors, wall time (including
extractor start-up), videos/s, decoded frames/s and the videos each node extracted; then the
2-node/1-node throughput ratio. Each node gets its own CPUs only on paper: on a machine with
fewer free cores than the nodes ask for, the ratio measures contention, not scaling.

Only the processes this script starts are stopped (never ``ray stop``, which would stop every
Ray on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head and worker nodes, each a ``ray start --block`` process of this script's."""

    def __init__(self, temp_dir: str):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = temp_dir
        self.procs: list[subprocess.Popen] = []
        # Workers import this checkout, whatever is installed.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def _start(self, args: list[str]) -> None:
        log = open(Path(self.temp_dir) / f"node{len(self.procs)}.log", "w")
        self.procs.append(subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))

    def start_head(self) -> None:
        self._start(["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                     f"--dashboard-port={_free_port()}",
                     f"--ray-client-server-port={_free_port()}",
                     f"--temp-dir={self.temp_dir}"])

    def add_worker_node(self, num_cpus: int) -> None:
        self._start([f"--address={self.address}", f"--num-cpus={num_cpus}",
                     '--resources={"longvid_node": 1}'])

    def wait_for(self, num_worker_nodes: int, timeout_sec: float = 180) -> None:
        """Block until that many worker nodes (nodes with CPUs) are alive."""
        code = ("import ray, json; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'] and "
                "n['Resources'].get('CPU', 0) > 0)))" % self.address)
        deadline = time.monotonic() + timeout_sec
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a ray node exited ({proc.args}); logs in {self.temp_dir}")
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                                 text=True)
            if out.returncode == 0 and int(out.stdout.strip().splitlines()[-1]) >= num_worker_nodes:
                return
            time.sleep(2)
        raise TimeoutError(f"{num_worker_nodes} worker node(s) not up after {timeout_sec} s")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its own processes
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def extract_once(address: str, catalog_root: str, variant: str, limit: int, num_workers: int,
                 store: str) -> dict:
    """One ``pipeline extract`` run joined to the cluster, in a fresh driver process (a process
    can join only one Ray cluster); returns its summary."""
    code = f"""
import json
from pipeline.extract import ExtractConfig, run_extract
config = ExtractConfig(dataset="demo", data_root={catalog_root!r}, catalog_options={{"variant": {variant!r}}},
                       backbones=("resnet18",), plan="uniform", num_frames=8, detector="none",
                       store={store!r}, address={address!r}, num_workers={num_workers}, limit={limit},
                       weights=("none",))
s = run_extract(config, progress=False)
print("SUMMARY " + json.dumps(dict(num_ok=s.num_ok, num_failed=s.num_failed, num_frames=s.num_frames,
                                    wall_sec=s.wall_sec, videos_per_node=s.videos_per_node)))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SUMMARY ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"extract failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("SUMMARY "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 small demo videos")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="videos (default: 16; 4 quick)")
    parser.add_argument("--data-root", default=None, help="demo directory (built if missing)")
    args = parser.parse_args()
    variant = "small" if args.quick else "default"
    limit = args.limit or (4 if args.quick else 16)
    catalog_root = args.data_root or str(ROOT / "data" / ("demo_small" if args.quick else "demo"))
    from catalogs import get_catalog

    get_catalog("demo", root=catalog_root, variant=variant)  # build once, outside the timing

    tmp = tempfile.mkdtemp(prefix="longvid-scale-")
    cluster = LocalCluster(tmp)
    rows = []
    try:
        cluster.start_head()
        for num_nodes in (1, 2):
            cluster.add_worker_node(args.cpus_per_node)
            cluster.wait_for(num_nodes)
            summary = extract_once(cluster.address, catalog_root, variant, limit,
                                   num_nodes * args.cpus_per_node, f"{tmp}/store{num_nodes}")
            if summary["num_failed"]:
                raise RuntimeError(f"{summary['num_failed']} video(s) failed: see {tmp}")
            rows.append((num_nodes, summary))
    finally:
        cluster.stop()
    print(f"\n`pipeline extract` (resnet18, uniform plan, 8 tokens/video) on {limit} demo "
          f"({variant}) videos; worker nodes of {args.cpus_per_node} CPU(s) each, "
          f"{os.cpu_count()} cores on this machine, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'nodes':>5s} {'extractors':>10s} {'wall s':>8s} {'videos/s':>9s} {'frames/s':>9s}  "
          "videos per node")
    for num_nodes, s in rows:
        per_node = ", ".join(f"{n}: {k}" for n, k in sorted(s["videos_per_node"].items()))
        print(f"{num_nodes:5d} {num_nodes * args.cpus_per_node:10d} {s['wall_sec']:8.1f} "
              f"{s['num_ok'] / s['wall_sec']:9.2f} {s['num_frames'] / s['wall_sec']:9.0f}  {per_node}")
    ratio = rows[1][1]["num_frames"] / rows[1][1]["wall_sec"] / (
        rows[0][1]["num_frames"] / rows[0][1]["wall_sec"])
    print(f"throughput ratio, 2 nodes / 1 node: {ratio:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
