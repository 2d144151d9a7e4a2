"""``pipeline extract``: a catalog's videos → feature sets in a store, in parallel under Ray.

The driver (this module) resolves weights, creates one feature set per backbone, works out
which videos still need which feature sets (resume), then keeps one :class:`VideoExtractor`
per Ray worker busy. With no ``address`` Ray starts locally (embedded); with one it joins a
cluster. Nothing here decodes video itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.backbones import PRECISIONS
from pipeline.sampling import ScenePlanConfig
from pipeline.scenes import SceneDetectConfig
from pipeline.store import SCHEMA_VERSION, FeatureStore, fingerprint

PLANS = ("scene",)
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``pipeline extract`` needs; stored with every feature set it writes."""

    # Catalog key and its directory (the demo is built there if missing).
    dataset: str = "demo"
    data_root: str = "data/demo"
    # Backbones sharing one decode of each video; one feature set each.
    backbones: tuple[str, ...] = ("resnet18", "r2plus1d_18")
    # Sampling plan (STAN's per-scene plan is the one implemented so far).
    plan: str = "scene"
    # Store directory.
    store: str = "store"
    # --weights values: none | default | PATH | BACKBONE=SPEC.
    weights: tuple[str, ...] = ("none",)
    # Seed of random-init weights (`none`).
    seed: int = 0
    # Stored token dtype; float16 halves the store with no loss that matters for heads.
    dtype: str = "float16"
    # Backbone arithmetic: fp32, bf16 (autocast) or auto (bf16 where the hardware has it).
    precision: str = "auto"
    # Scene detection (PySceneDetect detector, threshold, min scene length in frames).
    detector: str = "content"
    threshold: float | None = None
    min_scene_len: int = 15
    # Frames per scene for clip backbones (STAN §3: 12).
    frames_per_clip: int = 12
    # Decoded frames are scaled so their short side is at most this (backbones resize anyway).
    short_side_px: int = 256
    # Frames per backbone batch.
    batch_size: int = 32
    # Ray cluster address; None starts Ray locally.
    address: str | None = None
    # Parallel extractors; None = one per CPU Ray offers.
    num_workers: int | None = None
    # Process only the first N videos of the catalog (smoke runs).
    limit: int | None = None
    # Catalog-specific options (e.g. {"variant": "small"} for the demo).
    catalog_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; valid: {', '.join(PLANS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision!r}: valid values are {', '.join(PRECISIONS)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: valid values are {', '.join(DTYPES)}")
        if not self.backbones:
            raise ValueError("give at least one --backbone")
        SceneDetectConfig(self.detector, self.threshold, self.min_scene_len)  # validates


@dataclass
class ExtractSummary:
    """Counts of one run, plus the failures with their reasons."""

    feature_sets: list[str]
    num_videos: int
    num_skipped: int  # already stored: no work done
    num_ok: int = 0
    num_failed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    num_frames: int = 0
    wall_sec: float = 0.0

    @property
    def frames_per_sec(self) -> float:
        return self.num_frames / self.wall_sec if self.wall_sec else 0.0


def feature_set_spec(
    config: ExtractConfig, catalog, backbone: str, weights_identity: dict, precision: str
) -> dict:
    """The identity of one feature set: everything that changes its tokens (fingerprinted)."""
    from pipeline.backbones import backbone_spec

    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": catalog.name,
        "dataset_variant": catalog.meta.get("variant"),
        # A rebuilt catalog (e.g. a new demo builder version) reuses video ids for other
        # pixels: its build config is part of the identity.
        "dataset_config": catalog.meta.get("config"),
        "backbone": backbone,
        "backbone_spec": backbone_spec(backbone).to_dict(),
        "weights": weights_identity,
        "precision": precision,
        "plan": config.plan,
        "plan_config": {
            **asdict(ScenePlanConfig(frames_per_clip=config.frames_per_clip)),
            "short_side_px": config.short_side_px,
        },
        "scene_detection": asdict(
            SceneDetectConfig(config.detector, config.threshold, config.min_scene_len)
        ),
        "token_kind": "pooled",
        "dtype": config.dtype,
    }


def feature_set_name(spec: dict) -> str:
    """``<dataset>__<backbone>__<plan>__<fingerprint[:10]>``."""
    return f"{spec['dataset']}__{spec['backbone']}__{spec['plan']}__{fingerprint(spec)[:10]}"


def run_extract(config: ExtractConfig, *, catalog=None, progress: bool = True) -> ExtractSummary:
    """Extract every video of the catalog that the store lacks.

    Args:
        config: The run's settings.
        catalog: A :class:`catalogs.Catalog`; default ``get_catalog(config.dataset,
            root=config.data_root, **config.catalog_options)``.
        progress: Show a progress bar on stderr.

    Returns:
        Counts and the failed videos with reasons. Failures are also in each feature set's
        index; re-running retries them and skips what is stored.

    Raises:
        KeyError: unknown dataset or backbone.
        pipeline.weights.WeightsError: weights cannot be loaded (raised before any work).
    """
    from catalogs import get_catalog
    from pipeline.backbones import backbone_spec, resolve_precision
    from pipeline.weights import parse_weights_option, resolve_weights
    from pipeline.worker import FeatureSetJob

    t0 = time.perf_counter()
    if catalog is None:
        catalog = get_catalog(config.dataset, root=config.data_root, **config.catalog_options)
    videos = catalog.videos.sort("video_id")
    if config.limit is not None:
        videos = videos.head(config.limit)
    store = FeatureStore(config.store)
    per_backbone = parse_weights_option(list(config.weights), list(config.backbones))
    precision = resolve_precision(config.precision)
    jobs, feature_sets = [], []
    for backbone in config.backbones:
        spec_ = backbone_spec(backbone)
        ref = resolve_weights(per_backbone[backbone], spec_, seed=config.seed)
        spec = feature_set_spec(config, catalog, backbone, ref.identity(), precision)
        name = feature_set_name(spec)
        fs = store.create(name, spec=spec, token_kind="pooled", dim=spec_.dim, dtype=config.dtype)
        feature_sets.append(fs)
        jobs.append(FeatureSetJob(name, backbone, ref.path or ref.kind, config.seed, precision))

    done = {fs.name: fs.ok_ids() for fs in feature_sets}
    todo = []  # (video_id, path, [feature sets still missing it])
    for row in videos.iter_rows(named=True):
        missing = [fs.name for fs in feature_sets if row["video_id"] not in done[fs.name]]
        if missing:
            todo.append((row["video_id"], row["path"], missing))
    summary = ExtractSummary(
        feature_sets=[fs.name for fs in feature_sets],
        num_videos=len(videos),
        num_skipped=len(videos) - len(todo),
    )
    if todo:
        _run_on_ray(config, jobs, todo, summary, progress=progress)
    summary.wall_sec = time.perf_counter() - t0
    _record_run(feature_sets, config, summary)
    return summary


def _run_on_ray(config, jobs, todo, summary: ExtractSummary, *, progress: bool) -> None:
    """Keep one extractor per worker busy until every video in ``todo`` is done or failed."""
    import ray
    from tqdm import tqdm

    from pipeline.worker import VideoExtractor

    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token
        if config.address:
            ray.init(address=config.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    try:
        num_workers = config.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        num_workers = min(num_workers, len(todo))
        actor_cls = ray.remote(num_cpus=1, max_restarts=0)(VideoExtractor)
        kwargs = dict(
            scene_config=SceneDetectConfig(config.detector, config.threshold, config.min_scene_len),
            plan_config=ScenePlanConfig(frames_per_clip=config.frames_per_clip),
            short_side_px=config.short_side_px,
            batch_size=config.batch_size,
        )
        store_root = str(Path(config.store).resolve())

        def new_actor():
            return actor_cls.remote(store_root, jobs, **kwargs)

        actors = [new_actor() for _ in range(num_workers)]
        queue = list(reversed(todo))
        inflight = {}  # ObjectRef -> (actor, video_id, path, feature sets)

        def submit(actor) -> None:
            if queue:
                video_id, path, names = queue.pop()
                inflight[actor.process.remote(video_id, path, names)] = (actor, video_id, path, names)

        for actor in actors:
            submit(actor)
        bar = tqdm(total=len(todo), unit="video", desc="extract", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        t_start = time.perf_counter()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            actor, video_id, path, names = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                # The worker process died (e.g. OOM-killed or a decoder segfault): record the
                # video, start a fresh extractor and go on.
                _record_crash(config.store, names, video_id, path, err)
                summary.num_failed += 1
                summary.failed[video_id] = f"{path}: worker crashed ({type(err).__name__})"
                actor = new_actor()
            else:
                summary.num_frames += result.num_frames
                if result.status == "ok":
                    summary.num_ok += 1
                else:
                    summary.num_failed += 1
                    summary.failed[video_id] = result.error
            submit(actor)
            bar.update(1)
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(ok=summary.num_ok, failed=summary.num_failed,
                            fps=f"{summary.num_frames / elapsed:.0f}")
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def _record_crash(store_root: str, names: list[str], video_id: str, path: str, err) -> None:
    store = FeatureStore(store_root)
    for name in names:
        store.open(name).write_status(
            video_id, "failed", f"{path}: worker crashed while extracting ({type(err).__name__})"
        )


def _record_run(feature_sets, config: ExtractConfig, summary: ExtractSummary) -> None:
    """Append this run's config and counts to each feature set's ``runs/`` log."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    record = {"config": asdict(config), "summary": asdict(summary), "finished_at": stamp}
    for fs in feature_sets:
        runs = fs.path / "runs"
        runs.mkdir(exist_ok=True)
        (runs / f"{stamp}-{os.getpid()}.json").write_text(json.dumps(record, indent=2, default=str))
