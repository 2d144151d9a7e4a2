"""``pipeline extract``: a catalog's videos → feature sets in a store, in parallel under Ray.

The driver (this module) resolves weights, creates one feature set per backbone, works out
which videos still need which feature sets (resume), then hands them to
:mod:`pipeline.execution`, which keeps one :class:`VideoExtractor` per Ray worker busy. With no ``address`` Ray starts locally (embedded); with one it joins a
cluster. Nothing here decodes video itself.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from pipeline import execution
from pipeline.backbones import PRECISIONS, TOKEN_KINDS
from pipeline.execution import WorkerStartError
from pipeline.sampling import PLANS, PlanConfig
from pipeline.scenes import SceneDetectConfig
from pipeline.store import SCHEMA_VERSION, FeatureStore, fingerprint

DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``pipeline extract`` needs; stored with every feature set it writes."""

    # Catalog key and its directory (the demo is built there if missing).
    dataset: str = "demo"
    data_root: str = "data/demo"
    # Backbones sharing one decode of each video; one feature set each.
    backbones: tuple[str, ...] = ("resnet18", "r2plus1d_18")
    # Sampling plan: scene (STAN), uniform (STAM), fps (ViS4mer), full (VTN), clips.
    plan: str = "scene"
    # Plan knobs: uniform tokens per video, fps tokens per second, full tokens per video,
    # clip window length (s), frames per clip for clip backbones (None: 12 for scene, else
    # the backbone's own clip length).
    num_frames: int = 16
    fps: float = 1.0
    full_num_frames: int = 250
    clip_len_sec: float = 2.0
    frames_per_clip: int | None = None
    # Token kind: pooled (T, D) or patch (T, N, D; ViTs only).
    tokens: str = "pooled"
    # Store directory or fsspec URL (s3://bucket/store, file:///shared/store, ...).
    store: str = "store"
    # --weights values: none | default | PATH | BACKBONE=SPEC.
    weights: tuple[str, ...] = ("none",)
    # Seed of random-init weights (`none`).
    seed: int = 0
    # Stored token dtype; float16 halves the store with no loss that matters for heads.
    dtype: str = "float16"
    # Backbone arithmetic: fp32, bf16 (autocast) or auto (bf16 where the hardware has it).
    precision: str = "auto"
    # Scene detection (PySceneDetect detector, threshold, min scene length in frames; width and
    # swscale interpolation of the detector's thumbnail).
    detector: str = "content"
    threshold: float | None = None
    min_scene_len: int = 15
    detect_width_px: int | None = 160
    detect_interpolation: str = "fast_bilinear"
    # Decoded frames are scaled so their short side is at most this (backbones resize anyway).
    short_side_px: int = 256
    # Frames per backbone batch.
    batch_size: int = 32
    # Ray cluster address; None starts Ray locally.
    address: str | None = None
    # Parallel extractors; None = one per CPU Ray offers (per GPU share with gpus_per_worker);
    # 0 = in this process, no Ray.
    num_workers: int | None = None
    # GPUs each extractor reserves (Ray num_gpus; fractions share a GPU); > 0 runs the
    # backbones on CUDA, on GPU worker nodes (docker/).
    gpus_per_worker: float = 0.0
    # Times a video is retried on a fresh worker after its worker process died (OOM kill,
    # decoder segfault, lost node) before it is recorded as failed.
    crash_retries: int = 2
    # Process only the first N videos of the catalog (smoke runs).
    limit: int | None = None
    # At the end, pack the run's one-video parts into large parts (pipeline.compact): training
    # then reads a part at a time instead of opening one Zarr group per video.
    compact: bool = True
    # Catalog-specific options (e.g. {"variant": "small"} for the demo).
    catalog_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"--tokens {self.tokens!r}: valid values are {', '.join(TOKEN_KINDS)}")
        self.plan_config()  # validates the plan and its knobs
        if self.plan == "scene" and self.detector == "none":
            raise ValueError("the scene plan needs a scene detector; --detector none fits other plans")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision!r}: valid values are {', '.join(PRECISIONS)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: valid values are {', '.join(DTYPES)}")
        if not self.backbones:
            raise ValueError("give at least one --backbone")
        self.scene_config()  # validates
        if self.crash_retries < 0:
            raise ValueError(f"crash_retries must be >= 0, not {self.crash_retries}")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker and self.num_workers == 0):
            raise ValueError(
                f"--gpus-per-worker {self.gpus_per_worker}: needs Ray workers (not --num-workers 0) "
                "and a value >= 0"
            )

    def scene_config(self) -> SceneDetectConfig:
        """The scene detector with this run's settings."""
        return SceneDetectConfig(
            self.detector, self.threshold, self.min_scene_len, self.detect_width_px,
            self.detect_interpolation,
        )

    def plan_config(self) -> PlanConfig:
        """The sampling plan with this run's knobs."""
        frames_per_clip = self.frames_per_clip
        if frames_per_clip is None and self.plan == "scene":
            frames_per_clip = 12  # STAN §3: 12 frames per scene for the 3D stream
        return PlanConfig(
            name=self.plan,
            num_frames=self.num_frames,
            fps=self.fps,
            full_num_frames=self.full_num_frames,
            clip_len_sec=self.clip_len_sec,
            frames_per_clip=frames_per_clip,
        )


@dataclass
class ExtractSummary:
    """Counts of one run, plus the failures with their reasons."""

    feature_sets: list[str]
    num_videos: int
    num_skipped: int  # already stored: no work done
    # Catalog videos with no file on disk (null path, e.g. dead YouTube links of a benchmark):
    # not extracted and not written to the store index, only listed here and in runs/.
    missing: list[str] = field(default_factory=list)
    num_ok: int = 0
    num_failed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    num_worker_crashes: int = 0  # worker processes that died; their videos were retried
    videos_per_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> videos done
    num_frames: int = 0
    wall_sec: float = 0.0  # decoding and extraction, compaction not included
    # From the start of the run until its last first-round extractor had its backbones loaded
    # (Ray start, worker start, imports, weights): the part of wall_sec no frame is decoded in.
    startup_sec: float = 0.0
    started_at: float = 0.0  # Unix time (s) the run started
    compact_sec: float = 0.0  # packing the parts written (ExtractConfig.compact)

    @property
    def frames_per_sec(self) -> float:
        return self.num_frames / self.wall_sec if self.wall_sec else 0.0


def feature_set_spec(
    config: ExtractConfig, catalog, backbone: str, weights_identity: dict, precision: str
) -> dict:
    """The identity of one feature set: everything that changes its tokens (fingerprinted)."""
    from pipeline.backbones import backbone_spec

    spec_ = backbone_spec(backbone)
    plan = config.plan_config()
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": catalog.name,
        "dataset_variant": catalog.meta.get("variant"),
        # A rebuilt catalog (e.g. a new demo builder version) reuses video ids for other
        # pixels: its build config is part of the identity.
        "dataset_config": catalog.meta.get("config"),
        "backbone": backbone,
        "backbone_spec": spec_.to_dict(),
        "weights": weights_identity,
        "precision": precision,
        "plan": config.plan,
        "plan_config": {**plan.identity(), "short_side_px": config.short_side_px},
        "clip_frames": spec_.clip_frames(plan.frames_per_clip),
        "scene_detection": config.scene_config().identity(),
        "token_kind": config.tokens,
        "token_shape": list(spec_.token_shape(config.tokens)),
        "dtype": config.dtype,
    }


def feature_set_name(spec: dict) -> str:
    """``<dataset>__<backbone>[-patch]__<plan>__<fingerprint[:10]>``."""
    kind = "-patch" if spec["token_kind"] == "patch" else ""
    return f"{spec['dataset']}__{spec['backbone']}{kind}__{spec['plan']}__{fingerprint(spec)[:10]}"


def run_extract(config: ExtractConfig, *, catalog=None, progress: bool = True) -> ExtractSummary:
    """Extract every video of the catalog that the store lacks.

    Args:
        config: The run's settings.
        catalog: A :class:`catalogs.Catalog`; default ``get_catalog(config.dataset,
            root=config.data_root, **config.catalog_options)``.
        progress: Show a progress bar on stderr.

    Returns:
        Counts and the failed videos with reasons. Failures are also in each feature set's
        index; re-running retries them and skips what is stored. Catalog videos without a
        file (null ``path``) are not extracted: they are listed in ``missing`` and in the run
        record under ``runs/``, never in the index, so a benchmark with thousands of dead
        links costs neither time nor index files.

    Raises:
        KeyError: unknown dataset or backbone.
        ValueError: a ``memory://`` store with Ray workers (they cannot reach it).
        pipeline.weights.WeightsError: weights cannot be loaded (raised before any work).
        WorkerStartError: an extractor failed to start on a Ray worker.
    """
    import polars as pl

    from catalogs import get_catalog
    from pipeline.backbones import backbone_spec, resolve_precision
    from pipeline.weights import parse_weights_option, resolve_weights
    from pipeline.worker import FeatureSetJob

    t0, started_at = time.perf_counter(), time.time()
    if catalog is None:
        catalog = get_catalog(config.dataset, root=config.data_root, **config.catalog_options)
    videos = catalog.videos.sort("video_id")
    missing_on_disk = videos.filter(pl.col("path").is_null())["video_id"].to_list()
    videos = videos.filter(pl.col("path").is_not_null())
    if config.limit is not None:
        videos = videos.head(config.limit)
    store = FeatureStore(config.store)
    if config.num_workers != 0 and not store.loc.is_local:
        from pipeline.storage import PROCESS_LOCAL_PROTOCOLS

        protocol = store.loc.url.split("://", 1)[0]
        if protocol in PROCESS_LOCAL_PROTOCOLS:
            raise ValueError(
                f"--store {config.store}: a {protocol}:// store lives in this process and Ray "
                "workers cannot reach it; use --num-workers 0, a path or an object-store URL"
            )
    per_backbone = parse_weights_option(list(config.weights), list(config.backbones))
    # Resolved here (it is part of the fingerprint): a CPU-only head resolves auto to fp32, so
    # GPU jobs name --precision bf16 (jobs/).
    precision = resolve_precision(config.precision, "cuda" if config.gpus_per_worker else "cpu")
    jobs, feature_sets = [], []
    for backbone in config.backbones:
        spec_ = backbone_spec(backbone)
        ref = resolve_weights(per_backbone[backbone], spec_, seed=config.seed)
        spec = feature_set_spec(config, catalog, backbone, ref.identity(), precision)
        name = feature_set_name(spec)
        fs = store.create(
            name, spec=spec, token_kind=config.tokens, dim=spec_.dim, dtype=config.dtype
        )
        feature_sets.append(fs)
        jobs.append(
            FeatureSetJob(name, backbone, ref.path or ref.kind, config.seed, precision, config.tokens)
        )

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
        missing=missing_on_disk,
        started_at=started_at,
    )
    if todo and config.num_workers == 0:
        execution.run_here(config, jobs, todo, summary, store.url, progress=progress)
    elif todo:
        execution.run_on_ray(config, jobs, todo, summary, store.url, progress=progress)
    summary.wall_sec = time.perf_counter() - t0
    if config.compact and summary.num_ok:
        from pipeline.compact import compact_feature_set

        for fs in feature_sets:
            summary.compact_sec += compact_feature_set(fs, progress=progress).seconds
    _record_run(feature_sets, config, summary)
    return summary


def _record_run(feature_sets, config: ExtractConfig, summary: ExtractSummary) -> None:
    """Append this run's config and counts to each feature set's ``runs/`` log."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    record = {"config": asdict(config), "summary": asdict(summary), "finished_at": stamp}
    for fs in feature_sets:
        fs.write_run_record(f"{stamp}-{os.getpid()}", record)
