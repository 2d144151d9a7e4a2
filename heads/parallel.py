"""Data-parallel training: ``heads train`` and ``heads finetune`` with ``--data-parallel N``.

Nothing here averages a gradient: the engines do. :func:`launch` starts N workers through Ray
Train's ``TorchTrainer`` (on the Ray cluster of ``--address`` / ``RAY_ADDRESS``, else a local
Ray: :func:`pipeline.cluster.start_ray`), which sets up ``torch.distributed`` (``nccl`` on GPUs,
``gloo`` on CPUs); each worker runs the recipe with a :class:`Parallel` context, and the
:class:`heads.loop.Trainer` wraps the model in ``DistributedDataParallel``.

What a data-parallel run keeps equal to a one-worker run with the same global batch:

- **Batches.** Every worker draws the same seeded order (the one-worker run's sampler, fresh
  each epoch from the same generator) and cuts it into global batches of ``batch_size × N``
  videos; :class:`ShardedBatchSampler` gives worker ``r`` the ``r``-th of N near-equal slices
  of each. Unlike ``torch.utils.data.DistributedSampler`` no video is repeated to pad the
  last batch: a worker whose slice is empty reruns a video at loss weight 0.
- **Loss.** Worker ``r`` with ``b_r`` of the step's ``B`` videos back-propagates its mean loss
  times ``b_r · N / B``; DDP's mean over N workers is then the mean over the global batch
  (with a short last batch or videos that failed to decode too). ``train_loss`` is summed over
  the workers. What differs is the order of floating-point reductions (each worker sums its own
  slice, then the all-reduce sums the workers), and each worker's own dropout draws: seeded
  ``seed`` on worker 0, ``seed + r · 1000003`` elsewhere.
- **Evaluation.** Each split's videos are dealt out in runs of ``batch_size`` (the batches a
  one-worker run forms), worker ``r`` taking every N-th run; the outputs are gathered on every
  worker (all of them need the val metric to agree on the best epoch and early stopping), so
  each video is scored exactly once.
- **Files.** Worker 0 alone writes checkpoints, ``metrics.json``, ``predictions.parquet``,
  TensorBoard events and log lines; the checkpoint records the number of workers and each
  worker's RNG states, so ``--resume`` continues on the same N (another N is refused: its
  config holds ``data_parallel``).

Failures: a worker that dies (an OOM kill, a lost node, SIGKILL) fails the run with one line
naming its rank, node and pid (:class:`DataParallelError`) within Ray Train's health check
(seconds), or, with ``max_failures > 0`` (``--max-failures``), Ray Train starts the workers
again and they resume from the run directory's last checkpoint. The run directory must be on
storage every node sees (a shared file system) for a multi-node run.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Dropout and window draws of worker r are seeded seed + r * this (worker 0: the seed itself,
# as a one-worker run); a prime, so no two (seed, rank) pairs of a sweep collide.
RANK_SEED_STRIDE = 1000003


@dataclass(frozen=True)
class Parallel:
    """Where this process stands in a data-parallel run (rank 0 of 1 outside one).

    Attributes:
        rank: This worker's rank, 0 .. world_size - 1.
        world_size: Number of workers N.
        device: The device this worker was given (Ray Train's), None outside a run.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that writes files and logs."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This worker's seed for its own random draws (dropout, windows)."""
        return seed + self.rank * RANK_SEED_STRIDE

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (gradients averaged over the workers in
        backward), or ``model`` itself for one worker. Parameters a forward may leave unused
        (a head's optional branches) are allowed."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" \
            else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def _tensor(self, values) -> torch.Tensor:
        # nccl reduces CUDA tensors only; gloo CPU ones.
        device = self.device if self.device is not None and self.device.type == "cuda" else "cpu"
        return torch.as_tensor(values, dtype=torch.float64, device=device)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed element-wise over the workers (``all_reduce``)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        tensor = self._tensor(list(values))
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather(self, value: float) -> list[float]:
        """One number from each worker, in rank order (``all_gather``)."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        tensor = self._tensor([value])
        gathered = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor)
        return [float(t.item()) for t in gathered]

    def all_gather_object(self, obj) -> list:
        """Any picklable object from each worker, in rank order."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Worker 0's ``obj`` on every worker."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def eval_positions(self, num_videos: int, batch_size: int) -> np.ndarray:
        """The positions of a split's videos this worker scores: every N-th run of
        ``batch_size`` consecutive videos, starting with run ``rank``."""
        positions = np.arange(num_videos)
        if not self.enabled:
            return positions
        runs = [positions[lo : lo + batch_size] for lo in range(0, num_videos, batch_size)]
        mine = runs[self.rank :: self.world_size]
        return np.concatenate(mine) if mine else np.zeros(0, np.int64)

    def gather_outputs(self, outputs: np.ndarray, positions: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Every worker's ``(outputs (n_r, K), positions (n_r,))`` joined and ordered by
        position, on every worker."""
        if not self.enabled:
            return outputs, positions
        parts = [p for p in self.all_gather_object((outputs, positions)) if len(p[1])]
        if not parts:
            return outputs, positions
        joined = np.concatenate([p[0] for p in parts])
        where = np.concatenate([p[1] for p in parts])
        order = np.argsort(where, kind="stable")
        return joined[order], where[order]


SINGLE = Parallel()


def current() -> Parallel:
    """The :class:`Parallel` context of this process: from ``torch.distributed`` when a
    process group is up (a Ray Train worker), else :data:`SINGLE`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    try:
        from ray.train.torch import get_device

        device = get_device()
    except Exception:  # not a Ray Train worker: a process group set up by hand
        device = torch.device("cpu")
    return Parallel(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Worker ``rank``'s slice of each global batch of ``batch_sampler`` (see the module
    docstring): near-equal contiguous slices (``numpy.array_split``); an empty slice (a last
    batch with fewer videos than workers) becomes the batch's first video, marked as padding.

    Args:
        batch_sampler: Global batches of indices, the same on every worker (seeded).
        rank, world_size: This worker and the number of workers.

    Attributes:
        padding: For each slice handed out and not yet consumed, whether it is padding (FIFO:
            the recipe pops one per batch it yields, :meth:`take`); in order also with
            ``DataLoader`` workers prefetching, since indices are drawn in the main process.
    """

    def __init__(self, batch_sampler, *, rank: int, world_size: int):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size
        self.padding: deque[bool] = deque()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        self.padding.clear()  # a new epoch: what an interrupted one left is void
        for batch in self.batch_sampler:
            mine = np.array_split(np.asarray(batch), self.world_size)[self.rank].tolist()
            self.padding.append(not mine)
            yield mine or [batch[0]]

    def take(self) -> bool:
        """Whether the batch just loaded is padding (pops its mark)."""
        return self.padding.popleft()


def global_batches(sampler, batch_size: int, parallel: Parallel):
    """A ``DataLoader``'s ``batch_sampler`` for ``parallel``: global batches of ``batch_size ×
    N`` from ``sampler`` (the one-worker order), this worker's slice of each."""
    batches = torch.utils.data.BatchSampler(sampler, batch_size * parallel.world_size,
                                            drop_last=False)
    return ShardedBatchSampler(batches, rank=parallel.rank, world_size=parallel.world_size)


class DataParallelError(RuntimeError):
    """A data-parallel run failed: a worker raised or died (the message names the rank)."""


def launch(worker: Callable[[dict], None], payload: dict, *, num_workers: int, device: str,
           cpus_per_worker: float = 1.0, max_failures: int = 0, address: str | None = None,
           storage_path: str | Path, name: str, log: Callable[[str], None] = print) -> None:
    """Run ``worker(payload)`` on ``num_workers`` Ray Train workers with a process group.

    Args:
        worker: An importable function; it finds its rank with :func:`current`.
        payload: Its argument (picklable).
        num_workers: N.
        device: ``auto`` (GPUs when the Ray cluster has N of them, else CPUs), ``cpu``,
            ``cuda`` / ``cuda:N`` (one GPU per worker; the index is Ray's to choose).
        cpus_per_worker: CPUs Ray reserves per worker; its torch threads follow.
        max_failures: Restarts of the whole worker group after a failure (0: fail at once).
        address: Ray cluster address; None: ``RAY_ADDRESS``, else a local Ray.
        storage_path: Where Ray Train keeps its own run state (inside the run directory).
        name: Ray Train's name of the run.

    Raises:
        ValueError: GPUs asked for and the cluster has fewer than N, or too few CPUs.
        DataParallelError: a worker raised or died; one line per failed rank.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from pipeline.cluster import start_ray
    from heads.runtime import check_device_name

    check_device_name(device)
    started_here = start_ray(address)
    try:
        resources = ray.cluster_resources()
        num_gpus, num_cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        use_gpu = device.startswith("cuda") or (device == "auto" and num_gpus >= num_workers)
        if use_gpu and num_gpus < num_workers:
            raise ValueError(f"--data-parallel {num_workers} --device {device}: the Ray cluster "
                             f"has {num_gpus:g} GPU(s), one per worker is needed; use fewer "
                             "workers, --device cpu, or join a cluster with GPUs (--address / "
                             "RAY_ADDRESS)")
        if num_cpus < num_workers * cpus_per_worker:
            raise ValueError(f"--data-parallel {num_workers}: the Ray cluster has "
                             f"{num_cpus:g} CPU(s), {num_workers * cpus_per_worker:g} are "
                             "needed; use fewer workers or join a larger cluster (--address)")
        where = "GPUs (nccl)" if use_gpu else "CPUs (gloo)"
        log(f"data-parallel: {num_workers} workers on {where}")
        trainer = TorchTrainer(
            worker, train_loop_config={**payload, "_cpus_per_worker": cpus_per_worker},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 # Ray Train's print patch would echo every line twice.
                                 worker_runtime_env={"env_vars": _worker_env()}),
        )
        try:
            trainer.fit()
        except TrainingFailedError as err:  # a worker raised or died; the controller failed
            raise DataParallelError(failure_line(err)) from None
    finally:
        if started_here:
            ray.shutdown()


def run_recipe(worker: Callable[[dict], None], config, run_dir: Path, *, catalog=None,
               resume: Path | None = None, address: str | None = None,
               log: Callable[[str], None] = print) -> dict:
    """A recipe's data-parallel run: :func:`launch` ``worker`` on ``config.data_parallel``
    workers with the run's config, catalog and ``run_dir`` (made by the caller, so workers
    restarted after a failure find it), then the run's ``metrics.json`` read back and its table
    printed; worker 0's own lines reach ``log``'s stream through Ray.

    Returns:
        The content of ``metrics.json`` plus ``run_dir`` (str).
    """
    import json
    import os
    from dataclasses import asdict

    from heads.runs import format_table

    run_dir = Path(run_dir)
    launch(worker, {"config": asdict(config), "catalog": catalog, "cwd": os.getcwd(),
                    "run_dir": str(run_dir.resolve()),
                    "resume": str(Path(resume).resolve()) if resume else None},
           num_workers=config.data_parallel, device=config.device,
           cpus_per_worker=config.cpus_per_worker, max_failures=config.max_failures,
           address=address, storage_path=run_dir / "ray_train", name=run_dir.name, log=log)
    results = json.loads((run_dir / "metrics.json").read_text())
    log(format_table(results))
    log(f"run written to {run_dir}")
    return {**results, "run_dir": str(run_dir)}


def _worker_env() -> dict[str, str]:
    """The workers' environment variables: the driver's ``LONGVID_*`` (log level, fault
    points), as extraction forwards them, and Ray Train's print patch off (it would echo every
    line of worker 0 twice)."""
    import os

    from pipeline.logs import worker_env

    return {**{k: v for k, v in os.environ.items() if k.startswith("LONGVID_")},
            **worker_env(), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def worker_setup(payload: dict) -> None:
    """In a worker: the driver's working directory (``payload["cwd"]``, where the node has
    it: Ray Train starts workers in a directory of its own, so relative ``--store``,
    ``--data-root`` and ``--runs-dir`` would point elsewhere), torch's intra-op threads
    following the CPUs Ray reserved for it, and log records at the driver's level
    (``LONGVID_LOG_LEVEL``)."""
    import os

    from pipeline.logs import LEVEL_ENV, configure_logging

    if payload.get("cwd") and os.path.isdir(payload["cwd"]):
        os.chdir(payload["cwd"])
    configure_logging(os.environ.get(LEVEL_ENV))
    torch.set_num_threads(max(1, int(payload.get("_cpus_per_worker", 1))))


def failure_line(err: BaseException) -> str:
    """One line per failed rank from Ray Train's error: a worker that died (its rank, node
    and pid) or the last line of what a worker raised."""
    failures = getattr(err, "worker_failures", None) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        text = str(failure)
        if "actor died" in text.lower() or "worker process has died" in text.lower() or \
                type(failure).__name__ == "ActorDiedError":
            pid = re.search(r"pid[=:]\s*(\d+)", text)
            node = re.search(r"node_ip='?([\d.]+)", text) or re.search(r"ip: ([\d.]+)", text)
            parts.append(f"worker {rank} died (pid {pid.group(1) if pid else '?'} on "
                         f"{node.group(1) if node else '?'}: killed, out of memory, or its node "
                         "was lost)")
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            parts.append(f"worker {rank}: {lines[-1] if lines else type(failure).__name__}")
    died = [p for p in parts if " died " in p]
    if not parts:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        parts = [lines[0] if lines else type(err).__name__]
    # The peers of a dead worker fail on its closed connection: the dead one is the cause.
    return "data-parallel run failed: " + "; ".join(died or parts)
