"""Running an extraction's to-do list: one :class:`~pipeline.worker.VideoExtractor` per Ray
worker kept busy (embedded Ray, or a cluster with ``address``), or in this process
(``num_workers = 0``); a worker that dies has its video retried on a fresh one; a progress bar
feeds the run's :class:`~pipeline.extract_config.ExtractSummary`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from pipeline.decode import VideoError
from pipeline.extract_config import ExtractConfig, ExtractSummary
from pipeline.store import FeatureStore


log = logging.getLogger(__name__)

# Longest the driver waits for a result before checking the videos' time limits, seconds.
WAIT_POLL_SEC = 5.0


class WorkerStartError(RuntimeError):
    """An extractor could not be constructed on a Ray worker (code or weights missing there)."""


class BackboneServerError(WorkerStartError):
    """A backbone server (``--topology gpu-server``) died and Ray could not restart it (it is
    restarted up to ``crash_retries`` times, its pending batches retried): the run stops, the
    videos stored so far are kept, and a new run resumes after them."""


def run_on_ray(config: ExtractConfig, jobs, todo, summary: ExtractSummary, store_root: str, *,
                progress: bool) -> None:
    """Keep one extractor per worker busy until every video in ``todo`` is done or failed.

    A worker process that dies takes only its current video with it: a fresh extractor gets
    the video again, up to ``config.crash_retries`` times. A video running past
    ``config.video_timeout_sec`` has its worker killed and is recorded as timed out; the driver
    looks every :data:`WAIT_POLL_SEC`. Where extractors go on the nodes: :func:`_start_servers`.
    """
    import ray

    from pipeline.backbone_server import BackboneServerLost
    from pipeline.worker import VideoResult

    from pipeline.cluster import start_ray

    started_here = start_ray(config.address)
    try:
        num_workers = _num_workers(config, ray.cluster_resources(), len(todo))
        placement, servers = _start_servers(ray, config, jobs, num_workers)
        actor_cls, kwargs = _actor_class(ray, config, summary.started_at)

        def new_actor(slot: int):
            kwargs["server"] = servers[placement.server_of(slot)] if servers else None  # nearby
            where = _on_node(placement.worker_nodes[slot])
            actor = actor_cls.options(scheduling_strategy=where).remote(store_root, jobs, **kwargs)
            nodes[actor], slots[actor] = actor.node_id.remote(), slot
            starting[actor] = actor.ready.remote()  # its clock starts once its backbones load
            return actor

        # live actor -> ObjectRef of its Ray node id; -> its slot; still loading -> its `ready`
        nodes, slots, starting = {}, {}, {}
        actors = [new_actor(slot) for slot in range(num_workers)]
        queue = list(reversed(todo))  # (video_id, path, feature sets), popped from the end
        crashes = {}  # video_id -> times its worker died under it
        inflight = {}  # ObjectRef -> (actor, (video_id, path, feature sets), submitted at)

        def submit(actor) -> None:
            if queue:
                item = queue.pop()
                inflight[actor.process.remote(*item)] = (actor, item, time.monotonic())

        for actor in actors:
            submit(actor)
        progress_bar = _Progress(summary, len(todo), enabled=progress)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_POLL_SEC)
            if not ready:  # nothing finished: end the videos over their time limit
                for actor, item in _overdue(ray, inflight, starting, config.video_timeout_sec):
                    ray.kill(actor, no_restart=True)
                    nodes.pop(actor, None)
                    limit = f"{config.video_timeout_sec:g} s (--video-timeout-sec)"
                    message = _record_failure(store_root, item, f"timed out after {limit}",
                                              summary.started_at)
                    progress_bar.record(VideoResult(item[0], "failed", error=message))
                    submit(new_actor(slots.pop(actor)))
                continue
            ref = ready[0]
            actor, item, _ = inflight.pop(ref)
            video_id, path, names = item
            try:
                result = ray.get(ref)
            except BackboneServerLost as err:
                raise BackboneServerError(f"{err}; the videos stored so far are kept, run again "
                                          "to resume") from err
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                if getattr(err, "actor_init_failed", False):
                    # The extractor could not even start (wrong code or missing weights on a
                    # node): every video would fail the same way, so stop and say why.
                    raise WorkerStartError(
                        f"an extractor failed to start on a Ray worker; the videos stored so "
                        f"far are kept. Cause: {_cause(err)}"
                    ) from err
                # The worker process died (OOM kill, decoder segfault, lost node). Whatever it
                # left is unpublished or unindexed, so the video is simply done again, on a
                # fresh extractor; one that keeps killing workers is recorded as failed.
                summary.num_worker_crashes += 1
                nodes.pop(actor, None)
                starting.pop(actor, None)
                crashes[video_id] = crashes.get(video_id, 0) + 1
                log.warning("the worker extracting %s died (%s), %d time(s)", video_id,
                            type(err).__name__, crashes[video_id])
                if crashes[video_id] <= config.crash_retries:
                    queue.append(item)
                else:
                    message = _record_failure(store_root, item, (
                        f"the worker process died while extracting it, {crashes[video_id]} "
                        f"time(s) ({type(err).__name__}); run again to retry"), summary.started_at)
                    progress_bar.record(VideoResult(video_id, "failed", error=message))
                actor = new_actor(slots.pop(actor))
            else:
                progress_bar.record(result)
                node = _node_of(ray, nodes.get(actor))
                summary.videos_per_node[node] = summary.videos_per_node.get(node, 0) + 1
            submit(actor)
        progress_bar.close()
        _finish(ray, [a for a in actors if a in nodes], list(nodes), servers, summary)
    finally:
        if started_here:
            ray.shutdown()


def _cause(err: Exception) -> str:
    """The exception an actor's constructor raised, as its last line says it (``module.Error:
    message``), without the traceback Ray wraps it in (the worker's log has that)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else repr(err)


def _finish(ray, first: list, live: list, servers: list, summary: ExtractSummary) -> None:
    """Fill in the summary's start-up (until the ``first`` extractors and the servers were
    ready) and the servers' counts, then end the ``live`` extractors and the servers."""
    summary.startup_sec = _startup_sec(ray, first + servers, summary.started_at)
    _server_stats(ray, servers, summary)
    for actor in live + servers:
        # Done: end the worker processes at once. Their Python shutdown (unloading torch)
        # costs ~1 s of CPU each, which compaction would otherwise wait for on small machines.
        ray.kill(actor)


def _start_servers(ray, config: ExtractConfig, jobs, num_workers: int) -> tuple:
    """Where the ``num_workers`` workers go, and with ``--topology gpu-server`` the servers:
    :func:`~pipeline.backbone_server.plan_placement` (per-worker: no servers, the workers
    spread) and the handles of one :class:`~pipeline.backbone_server.BackboneServer`
    per GPU of the cluster, on that GPU's node (1 GPU and 1 CPU each), or, on a cluster
    without GPUs, one on the CPU (no CPU reserved: its torch threads, passive OpenMP waiters,
    use the cores the workers leave idle while they wait on it). Ray restarts a server that
    dies up to ``config.crash_retries`` times and retries its pending batches."""
    from pipeline.backbone_server import BackboneServer, plan_placement

    if config.topology != "gpu-server":
        return plan_placement([], num_workers), []
    placement = plan_placement(ray.nodes(), num_workers)
    resources = ray.cluster_resources()
    num_gpus = len(placement.server_nodes)
    retries = dict(max_restarts=config.crash_retries, max_task_retries=config.crash_retries)
    kwargs = dict(batch_size=config.server_batch_size, env=_forwarded_env())
    if num_gpus:
        cls = ray.remote(num_gpus=1, num_cpus=1, max_concurrency=1000, **retries)(BackboneServer)
        servers = [cls.options(scheduling_strategy=_on_node(node)).remote(jobs, device="cuda",
                                                                          **kwargs)
                   for node in placement.server_nodes]
    else:
        log.warning("the Ray cluster has no GPU: --topology gpu-server runs one backbone server "
                    "on the CPU, which is slower there than the default --topology per-worker "
                    "(bench/extract_decode.py --part 6); use per-worker on CPU-only machines")
        # Its OpenMP threads share the cores with the decoding workers: idle ones sleep at
        # once instead of spinning (OMP_WAIT_POLICY=ACTIVE made the run 1.5x slower).
        cls = ray.remote(num_cpus=0, max_concurrency=1000, **retries)(BackboneServer).options(
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
        servers = [cls.remote(jobs, device="cpu", num_threads=int(resources.get("CPU", 1)),
                              **kwargs)]
    log.info("%d backbone server(s) on %s", len(servers), "GPUs" if num_gpus else "the CPU")
    return placement, servers


def _on_node(node: str | None):
    """Ray's scheduling strategy for an actor meant for ``node`` (soft: elsewhere if that node
    is full or gone, e.g. when Ray restarts it), or SPREAD for ``None``."""
    if node is None:
        return "SPREAD"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node, soft=True)


def _server_stats(ray, servers: list, summary: ExtractSummary) -> None:
    """Copy the servers' forward counts into ``summary`` (a statistic: a lost server only
    costs it)."""
    try:
        stats = ray.get([server.stats.remote() for server in servers], timeout=30)
    except Exception:
        return
    for stat in stats:
        summary.server_busy_sec.append(stat["busy_sec"])
        summary.server_num_forwards += stat["num_forwards"]
        summary.server_num_samples += sum(stat["batch_sizes"])


def _actor_class(ray, config: ExtractConfig, run_started_at: float) -> tuple:
    """The Ray actor class of this run's extractors and its keyword arguments (besides the
    store and the jobs)."""
    from pipeline.worker import VideoExtractor

    actor_cls = ray.remote(num_cpus=1, num_gpus=config.gpus_per_worker, max_restarts=0)(
        logging_extractor(VideoExtractor)
    )
    # With a backbone server the extractors hold no model: CPU only (gpus_per_worker is 0).
    kwargs = {**_extractor_kwargs(config), "env": _forwarded_env(),
              "device": "cuda" if config.gpus_per_worker else "cpu",
              "run_started_at": run_started_at}
    return actor_cls, kwargs


def logging_extractor(base: type) -> type:
    """A subclass of the extractor class ``base`` that first configures its process's logging
    at the level named by ``LONGVID_LOG_LEVEL`` in the ``env`` it is given (the driver's level:
    :func:`pipeline.logs.worker_env`), so that a Ray worker logs as the driver does; its
    records reach the driver's stderr through Ray's ``log_to_driver``."""
    class Extractor(base):
        def __init__(self, *args, env: dict[str, str] | None = None, **kwargs):
            from pipeline.logs import LEVEL_ENV, configure_logging

            configure_logging((env or {}).get(LEVEL_ENV))
            super().__init__(*args, env=env, **kwargs)

    # Ray prefixes each forwarded line with the class name: "(VideoExtractor pid=...)".
    Extractor.__name__ = Extractor.__qualname__ = base.__name__
    return Extractor


def _num_workers(config: ExtractConfig, resources: dict[str, float], num_videos: int) -> int:
    """Extractors to start: ``config.num_workers``, else one per CPU of the cluster (one per GPU
    share with ``gpus_per_worker``; with ``--topology gpu-server``, one per CPU the GPU servers
    leave), and never more than ``num_videos``.

    Raises:
        ValueError: ``gpus_per_worker`` is set and the cluster lacks that much GPU.
    """
    if config.gpus_per_worker:
        default = int(resources.get("GPU", 0) / config.gpus_per_worker)
        if not default:
            raise ValueError(f"--gpus-per-worker {config.gpus_per_worker}: the Ray cluster has "
                             f"{resources.get('GPU', 0)} GPU(s)")
    else:
        servers_cpus = int(resources.get("GPU", 0)) if config.topology == "gpu-server" else 0
        default = int(resources.get("CPU", 1)) - servers_cpus
    num_workers = min(config.num_workers or max(1, default), num_videos)
    log.info("%d extractor(s) for %d video(s) on a cluster of %g CPU(s), %g GPU(s)",
             num_workers, num_videos, resources.get("CPU", 0), resources.get("GPU", 0))
    return num_workers


def _startup_sec(ray, actors, started_at: float) -> float:
    """Seconds from ``started_at`` until the last of ``actors`` was ready (0 if none answers)."""
    try:
        ready_at = ray.get([actor.ready.remote() for actor in actors], timeout=30)
    except Exception:  # a statistic: a lost node must not fail a finished run
        return 0.0
    return max([0.0] + [at - started_at for at in ready_at])


def _node_of(ray, ref) -> str:
    """The Ray node id (shortened) an extractor runs on; ``?`` if it cannot be told."""
    try:
        return ray.get(ref, timeout=5)[:12]
    except Exception:  # a dead actor or a slow node only costs the statistic
        return "?"


def _forwarded_env() -> dict[str, str]:
    """``LONGVID_*`` variables of the driver, passed on to every worker (on any node), with
    ``LONGVID_LOG_LEVEL`` set to the level the driver logs at."""
    from pipeline.logs import worker_env

    return {**{k: v for k, v in os.environ.items() if k.startswith("LONGVID_")}, **worker_env()}


def _overdue(ray, inflight: dict, starting: dict, limit_sec: float) -> list[tuple]:
    """``(actor, item)`` of the in-flight videos running for over ``limit_sec``, taken out of
    ``inflight`` (none when ``limit_sec`` is 0: no limit). A video's clock starts when it was
    submitted or, if its extractor was still loading its backbones (``starting``), when the
    extractor was seen ready."""
    if not limit_sec:
        return []
    now = time.monotonic()
    for ref, (actor, item, since) in list(inflight.items()):
        if actor in starting:
            loaded, _ = ray.wait([starting[actor]], timeout=0)
            inflight[ref] = (actor, item, now)  # not started yet, or just now: count from here
            if loaded:
                del starting[actor]
    late = [ref for ref, (_, _, since) in inflight.items() if now - since > limit_sec]
    for ref in late:
        log.warning("%s: running for over %g s (--video-timeout-sec); ending its worker",
                    inflight[ref][1][1], limit_sec)
    return [inflight.pop(ref)[:2] for ref in late]


def _record_failure(store_root: str, item: tuple, reason: str, run_started_at: float) -> str:
    """Record video ``item`` = (video_id, path, feature sets) as failed (never over an ``ok``
    row another run wrote since ``run_started_at``: :func:`pipeline.worker.record_failure`);
    returns the message."""
    from pipeline.worker import record_failure

    video_id, path, names = item
    message = f"{path}: {reason}"
    store = FeatureStore(store_root)
    for name in names:
        record_failure(store.open(name), video_id, message, run_started_at=run_started_at)
    return message


def _extractor_kwargs(config: ExtractConfig) -> dict:
    """Keyword arguments of :class:`~pipeline.worker.VideoExtractor` for this run."""
    return dict(
        scene_config=config.scene_config(),
        plan_config=config.plan_config(),
        short_side_px=config.short_side_px,
        batch_size=config.batch_size,
        decode=config.decode,
    )


def run_here(config: ExtractConfig, jobs, todo, summary: ExtractSummary, store_root: str, *,
              progress: bool) -> None:
    """Extract in this process, one video after another (``num_workers=0``: debugging,
    profiling, tests)."""
    from pipeline.worker import VideoExtractor

    extractor = VideoExtractor(store_root, jobs, num_threads=None, decode_threads=0,
                               run_started_at=summary.started_at, **_extractor_kwargs(config))
    summary.startup_sec = max(0.0, extractor.ready_at - summary.started_at)
    progress_bar = _Progress(summary, len(todo), enabled=progress)
    for video_id, path, names in todo:
        with _time_limit(config.video_timeout_sec, path):
            result = extractor.process(video_id, path, names)
        progress_bar.record(result)
    progress_bar.close()


class VideoTimeout(VideoError):
    """A video ran past ``--video-timeout-sec`` (recorded as that video's failure)."""


@contextmanager
def _time_limit(seconds: float, path: str):
    """Raise :class:`VideoTimeout` in this (main) thread after ``seconds``; 0, or not the main
    thread, or no ``SIGALRM`` (Windows): no limit. Python code is interrupted at once; a call
    blocked in C is interrupted when it returns to Python."""
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise VideoTimeout(f"{path}: timed out after {seconds:g} s (--video-timeout-sec)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Progress:
    """Progress bar of videos done and failed and frames/s, feeding the summary's counts."""

    def __init__(self, summary: ExtractSummary, total: int, *, enabled: bool):
        from pipeline.progress import progress_bar

        self.summary = summary
        self.t_start = time.perf_counter()
        self.bar = progress_bar(total=total, unit="video", desc="extract", disable=not enabled,
                                file=sys.stderr, dynamic_ncols=True)

    def record(self, result) -> None:
        if result.status == "ok":
            log.debug("%s: %d frames, %d tokens in %.1f s decoding, %.1f s in backbones",
                      result.video_id, result.num_frames, result.num_tokens, result.decode_sec,
                      result.backbone_sec)
        else:
            log.info("%s failed: %s", result.video_id, result.error)
        summary = self.summary
        summary.num_frames += result.num_frames
        summary.num_decoded += result.num_decoded
        summary.decode_sec += result.decode_sec
        summary.backbone_sec += result.backbone_sec
        if result.status == "ok":
            summary.num_ok += 1
        else:
            summary.num_failed += 1
            summary.failed[result.video_id] = result.error
        elapsed = time.perf_counter() - self.t_start
        # No redraw of its own: the update below draws it, as often as the bar allows (rarely
        # in a log file: pipeline.progress).
        self.bar.set_postfix(ok=summary.num_ok, failed=summary.num_failed,
                             fps=f"{summary.num_frames / elapsed:.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
