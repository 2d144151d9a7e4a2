"""One backbone server per GPU, fed frames from many videos at once (``--topology gpu-server``).

The CPU workers (:class:`~pipeline.worker.VideoExtractor`, one per core) decode and sample;
each sends its batches here (:meth:`BackboneServer.embed`) instead of running a model of its
own. The server loads each distinct model once, queues the requests of every worker, and runs
one forward per group of requests that share a model, a token kind and a frame shape, up to
``batch_size`` frames: large batches from many videos keep the GPU busy, and one CUDA context
and one copy of each model serve the whole node. The videos are still written, whole, by their
workers: per-video commit, failure records and resume do not change. :func:`plan_placement`
puts each server on its GPU's node and each node's workers beside it.

bf16 autocast and channels_last come from :class:`~pipeline.backbones.Backbone` itself (its
``precision`` and frame layout), the same as in a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# How long the batching loop waits for more requests when it has fewer than a batch, seconds:
# long enough for the other workers' batches to arrive, short next to one forward pass.
MAX_WAIT_SEC = 0.005


class BackboneServerLost(RuntimeError):
    """The backbone server of a worker died (and Ray could not restart it): the run stops, as
    every later video would fail the same way; the videos stored so far are kept."""


def model_key(job) -> tuple:
    """The sharing key of a :class:`~pipeline.worker.FeatureSetJob`'s model: jobs with the same
    backbone, weights, seed, precision and resize share one loaded model (as in a worker)."""
    return (job.backbone, job.weights, job.seed, job.precision, job.resize)


def load_models(jobs, device: str) -> dict[tuple, object]:
    """One :class:`~pipeline.backbones.Backbone` per distinct :func:`model_key` of ``jobs``,
    created on ``device``.

    Raises:
        Whatever :func:`~pipeline.backbones.create_backbone` raises (unknown backbone, weights
        missing offline).
    """
    from pipeline.backbones import create_backbone

    models = {}
    for job in jobs:
        key = model_key(job)
        if key not in models:
            models[key] = create_backbone(job.backbone, weights=job.weights, seed=job.seed,
                                          device=device, precision=job.precision,
                                          resize=job.resize)
    return models


@dataclass
class _Request:
    frames: np.ndarray  # (s, H, W, 3) or (s, F, H, W, 3) uint8
    dtype: str
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class BackboneServer:
    """Runs the backbones of a run's feature sets for every worker of a node, in large batches.

    Meant as a Ray async actor (``max_concurrency`` high: every waiting request is a
    coroutine); works as a plain object too (tests call :meth:`embed` from an event loop).

    Args:
        jobs: The run's :class:`~pipeline.worker.FeatureSetJob` s; one model per
            :func:`model_key`.
        device: Torch device of the models (``cuda``; ``cpu`` on a machine without one).
        batch_size: Most frames per forward pass (clips: ``batch_size // frames_per_clip``
            clips, at least 1). A request is never split, so a forward holds at least one.
        num_threads: Torch intra-op threads (``None``: torch's default).
        max_wait_sec: Longest a request waits for others to fill its batch, seconds.
        env: Environment variables to set first (the driver's ``LONGVID_*`` ones).
    """

    def __init__(self, jobs, *, device: str = "cuda", batch_size: int = 256,
                 num_threads: int | None = None, max_wait_sec: float = MAX_WAIT_SEC,
                 env: dict[str, str] | None = None):
        import torch

        os.environ.update(env or {})
        from pipeline.logs import LEVEL_ENV, configure_logging

        configure_logging((env or {}).get(LEVEL_ENV))
        if num_threads:
            torch.set_num_threads(num_threads)
        self.models = load_models(jobs, device)
        self.batch_size = batch_size
        self.max_wait_sec = max_wait_sec
        # (model key, token kind, frame shape) -> requests waiting, oldest first
        self.queues: dict[tuple, list[_Request]] = {}
        self.wake: asyncio.Event | None = None
        self.loop_task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(1)  # forwards one at a time, off the event loop
        self.batch_sizes: list[int] = []  # samples per forward run so far
        self.busy_sec = 0.0  # seconds spent in forwards
        self.ready_at = time.time()
        log.info("backbone server: %d model(s) on %s", len(self.models), device)

    def ready(self) -> float:
        """When the models were loaded (Unix time, s)."""
        return self.ready_at

    def stats(self) -> dict:
        """Forwards run so far: ``num_forwards``, ``batch_sizes`` (samples each) and
        ``busy_sec`` (seconds in forwards)."""
        return {"num_forwards": len(self.batch_sizes), "batch_sizes": list(self.batch_sizes),
                "busy_sec": self.busy_sec}

    async def embed(self, key: tuple, frames: np.ndarray, token_kind: str,
                    dtype: str = "float32") -> np.ndarray:
        """Tokens of one worker's batch, computed in a forward shared with other requests.

        Args:
            key: :func:`model_key` of the feature set's job.
            frames: uint8 RGB, (s, H, W, 3) for frame backbones or (s, F, H, W, 3) for clips.
            token_kind: ``pooled`` or ``patch``.
            dtype: The stored dtype the tokens are cast to here (halves what travels back).

        Returns:
            (s, D) pooled or (s, N, D) patch tokens in ``dtype``.

        Raises:
            KeyError: no model was loaded for ``key``.
            ValueError: the backbone does not give ``token_kind`` tokens.
        """
        if key not in self.models:
            raise KeyError(f"backbone server: no model {key}; loaded: {list(self.models)}")
        self.models[key].spec.token_shape(token_kind)  # validates before queueing
        loop = asyncio.get_running_loop()
        # Started on the first call (an actor's event loop runs only then); again if it ended
        # or belongs to an older loop (tests run one loop per call).
        if self.loop_task is None or self.loop_task.done() or self.loop_task.get_loop() is not loop:
            self.wake = asyncio.Event()
            self.loop_task = loop.create_task(self._batching_loop())
        request = _Request(frames, dtype, loop.create_future())
        self.queues.setdefault((key, token_kind, frames.shape[1:]), []).append(request)
        self.wake.set()
        return await request.future

    async def _batching_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while any(self.queues.values()):
                group = self._next_group()
                requests = self.queues[group]
                if (sum(len(r.frames) for r in requests) < self._limit(group)
                        and time.perf_counter() - requests[0].queued_at < self.max_wait_sec):
                    await asyncio.sleep(self.max_wait_sec / 5)  # let other workers' batches in
                    continue
                taken = self._take(group)
                try:
                    outs = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self._forward, group, [r.frames for r in taken])
                except Exception as err:  # the requests fail, the server goes on
                    for r in taken:
                        r.future.set_exception(err)
                    continue
                for r, out in zip(taken, outs):
                    r.future.set_result(out.astype(r.dtype))

    def _next_group(self) -> tuple:
        """The group whose oldest request has waited longest."""
        return min((g for g, rs in self.queues.items() if rs),
                   key=lambda g: self.queues[g][0].queued_at)

    def _limit(self, group: tuple) -> int:
        """Most samples per forward for ``group``: frames, or clips of F frames."""
        shape = group[2]  # (H, W, 3) or (F, H, W, 3)
        return max(1, self.batch_size // shape[0]) if len(shape) == 4 else self.batch_size

    def _take(self, group: tuple) -> list[_Request]:
        """The oldest requests of ``group`` that fit one forward (at least one)."""
        requests, limit = self.queues[group], self._limit(group)
        taken = [requests.pop(0)]
        size = len(taken[0].frames)
        while requests and size + len(requests[0].frames) <= limit:
            size += len(requests[0].frames)
            taken.append(requests.pop(0))
        return taken

    def _forward(self, group: tuple, batches: list[np.ndarray]) -> list[np.ndarray]:
        """One forward of the concatenated ``batches``; the float32 outputs split back per
        batch: each (s_i, D) or (s_i, N, D)."""
        key, token_kind, _ = group
        t0 = time.perf_counter()
        out = self.models[key](np.concatenate(batches), token_kind)  # (Σ s_i, D) or (Σ s_i, N, D)
        self.busy_sec += time.perf_counter() - t0
        self.batch_sizes.append(len(out))
        return np.split(out, np.cumsum([len(b) for b in batches])[:-1])


@dataclass
class Placement:
    """Where ``--topology gpu-server`` puts its servers and workers on a cluster: each GPU
    node's workers send their batches to a server on their own node, so frames never cross
    the network there; workers of a node without a GPU use every server in turn.

    Attributes:
        server_nodes: The Ray node id of each server, one per GPU.
        worker_nodes: The node id each worker slot is placed on (``None``: anywhere, Ray's
            SPREAD; a cluster without GPUs).
    """

    server_nodes: list[str]
    worker_nodes: list[str | None]

    def server_of(self, slot: int) -> int:
        """Index into :attr:`server_nodes` of the server worker slot ``slot`` sends to: the
        servers of its node in turn, else all of them in turn (0 without GPUs: one server)."""
        node = self.worker_nodes[slot]
        local = [i for i, n in enumerate(self.server_nodes) if n == node]
        if local:  # this slot's rank among its node's slots picks one of the node's servers
            return local[self.worker_nodes[:slot].count(node) % len(local)]
        rank = sum(1 for n in self.worker_nodes[:slot] if n not in self.server_nodes)
        return rank % max(1, len(self.server_nodes))


def plan_placement(nodes: list[dict], num_workers: int) -> Placement:
    """One server per GPU on its node, and ``num_workers`` worker slots spread over the nodes in
    proportion to the CPUs their servers leave (a server holds 1 CPU), nodes taking turns.

    Args:
        nodes: ``ray.nodes()``: dicts with ``NodeID``, ``Alive`` and ``Resources`` (``CPU``,
            ``GPU``).
        num_workers: Worker slots to place (may exceed the CPUs: the slots then wrap around).

    Returns:
        A :class:`Placement`; without GPUs in ``nodes``, no server nodes and every slot
        ``None``.
    """
    alive = [n for n in nodes if n.get("Alive", True)]
    server_nodes = [n["NodeID"] for n in alive for _ in range(int(n["Resources"].get("GPU", 0)))]
    if not server_nodes:
        return Placement([], [None] * num_workers)
    free = {n["NodeID"]: max(0, int(n["Resources"].get("CPU", 0)) - server_nodes.count(n["NodeID"]))
            for n in alive}
    slots = []  # round robin over the nodes, each taking as many turns as it has free CPUs
    for turn in range(max(free.values(), default=0)):
        slots += [node for node, cpus in free.items() if cpus > turn]
    slots = slots or list(free)  # no free CPU anywhere: workers share the servers' nodes
    return Placement(server_nodes, [slots[i % len(slots)] for i in range(num_workers)])
