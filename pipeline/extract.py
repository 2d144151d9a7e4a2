"""``pipeline extract``: a catalog's videos → feature sets in a store, in parallel under Ray.

The driver (this module) resolves weights, creates one feature set per feature (backbone ×
plan × token kind: ``--feature``, or every ``--backbone`` on ``--plan``), works out
which videos still need which feature sets (resume), then hands them to
:mod:`pipeline.execution`, which keeps one :class:`VideoExtractor` per Ray worker busy. With no
``address`` Ray starts locally (embedded); with one it joins a cluster. Nothing here decodes
video itself. The run's settings and counts, :class:`ExtractConfig` and :class:`ExtractSummary`,
are defined in :mod:`pipeline.extract_config` and importable from here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

from pipeline import execution
from pipeline.execution import WorkerStartError  # noqa: F401  (raised by run_extract)
from pipeline.extract_config import DTYPES, ExtractConfig, ExtractSummary, Feature  # noqa: F401
from pipeline.store import SCHEMA_VERSION, FeatureStore, fingerprint

log = logging.getLogger(__name__)


def feature_set_spec(
    config: ExtractConfig, catalog, backbone: str, weights_identity: dict, precision: str,
    feature: Feature | None = None,
) -> dict:
    """The identity of one feature set: everything that changes its tokens (fingerprinted).

    ``feature`` gives its plan and token kind (default: the config's ``plan`` and ``tokens``);
    the spec is the same whether the feature set is extracted alone or with others.
    """
    feature = feature or Feature(backbone, config.plan, config.tokens, config.resize)
    from pipeline.backbones import backbone_spec
    from pipeline.weights import describe_weights

    resize = feature.resize or config.resize
    spec_ = backbone_spec(backbone, resize=resize)  # `resize` is in it unless crop
    plan = config.plan_config(feature.plan)
    backbone_info = spec_.to_dict()
    # The spec says what the weights really are: "random init (seed N)" for `--weights none`,
    # not the pretraining of the weights the backbone *could* have had.
    backbone_info["pretrained_on"] = (spec_.pretrained_on if weights_identity.get("kind") ==
                                      "default" else describe_weights(weights_identity, ""))
    spec = {
        "schema_version": SCHEMA_VERSION,
        "dataset": catalog.name,
        "dataset_variant": catalog.meta.get("variant"),
        # A rebuilt catalog (e.g. a new demo builder version) reuses video ids for other
        # pixels: its build config is part of the identity.
        "dataset_config": catalog.meta.get("config"),
        "backbone": backbone,
        "backbone_spec": backbone_info,
        "weights": weights_identity,
        "precision": precision,
        "plan": feature.plan,
        "plan_config": {**plan.identity(), "short_side_px": config.short_side_px},
        "clip_frames": spec_.clip_frames(plan.frames_per_clip),
        "scene_detection": config.scene_config().identity(),
        "token_kind": feature.tokens,
        "token_shape": list(spec_.token_shape(feature.tokens)),
        "dtype": config.dtype,
    }
    if config.decode == "nvdec":  # NVDEC's pixels are not swscale's: its own feature set
        spec["decoder"] = "nvdec (PyNvVideoCodec RGB, bilinear antialiased scaling on the GPU)"
    from pipeline.sources import catalog_source

    source = catalog_source(catalog)
    if source is not None:  # only generic catalogs: the others keep their fingerprints
        spec["dataset_source"] = source
    return spec


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
    for feature in config.feature_list():
        spec_ = backbone_spec(feature.backbone)
        ref = resolve_weights(per_backbone[feature.backbone], spec_, seed=config.seed)
        spec = feature_set_spec(config, catalog, feature.backbone, ref.identity(), precision,
                                feature)
        name = feature_set_name(spec)
        job = FeatureSetJob(name, feature.backbone, ref.path or ref.kind, config.seed, precision,
                            feature.tokens, plan=config.plan_config(feature.plan),
                            resize=feature.resize)
        fs = store.create(
            name, spec=spec, token_kind=feature.tokens, dim=spec_.dim, dtype=config.dtype
        )
        feature_sets.append(fs)
        jobs.append(job)

    log.info("store %s: feature set(s) %s", store.url, ", ".join(fs.name for fs in feature_sets))
    todo, changed = _to_do(videos, feature_sets)
    log.info("%d video(s) to extract, %d already stored, %d catalog video(s) without a file",
             len(todo), len(videos) - len(todo), len(missing_on_disk))
    summary = ExtractSummary(
        feature_sets=[fs.name for fs in feature_sets],
        num_videos=len(videos),
        num_skipped=len(videos) - len(todo),
        missing=missing_on_disk,
        started_at=started_at,
        changed=changed,
    )
    if todo and config.num_workers == 0:
        log.info("extracting in this process (--num-workers 0)")
        execution.run_here(config, jobs, todo, summary, store.url, progress=progress)
    elif todo:
        execution.run_on_ray(config, jobs, todo, summary, store.url, progress=progress)
    summary.wall_sec = time.perf_counter() - t0
    if config.compact:
        from pipeline.compact import compact_feature_set, is_packed

        for fs in feature_sets:
            # This run's parts, and one-video parts a killed earlier run left unpacked.
            ok = fs.index().filter(pl.col("status") == "ok")
            if any(not is_packed(part) for part in ok["part"].to_list()):
                log.info("%s: packing one-video parts", fs.name)
                summary.compact_sec += compact_feature_set(fs, progress=progress).seconds
    _record_run(feature_sets, config, summary)
    return summary


def _to_do(videos, feature_sets) -> tuple[list[tuple], dict[str, str]]:
    """Resume: ``(video_id, path, [names of the feature sets still missing it])`` of every
    catalog video (rows of ``videos``) some feature set lacks, and ``{video_id: why}`` of the
    stored videos whose source file changed (they are in the list again)."""
    paths = dict(zip(videos["video_id"], videos["path"]))
    done, changed = {}, {}
    for fs in feature_sets:
        done[fs.name], why = stored_unchanged(fs, paths)
        changed.update(why)
        log.debug("%s: %d of the %d video(s) stored ok and unchanged", fs.name,
                  len(done[fs.name] & paths.keys()), len(paths))
    for video_id, why in sorted(changed.items()):
        log.info("%s: extracting again, its source file changed (%s)", video_id, why)
    todo = []
    for row in videos.iter_rows(named=True):
        missing = [fs.name for fs in feature_sets if row["video_id"] not in done[fs.name]]
        if missing:
            todo.append((row["video_id"], row["path"], missing))
            log.debug("%s: to extract for %s", row["video_id"], ", ".join(missing))
    return todo, changed


def stored_unchanged(fs, paths: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    """The videos of ``fs`` stored ``ok`` whose source file is still the one they were extracted
    from (:func:`pipeline.sources.compare_source`), and ``{video_id: why}`` for those whose file
    changed: they are to be extracted again.

    Args:
        fs: A feature set.
        paths: The catalog's ``video_id -> path`` now.
    """
    import json

    import polars as pl

    from pipeline.sources import compare_source

    index = fs.index().filter(pl.col("status") == "ok")
    done, changed = set(), {}
    for video_id, info_json in index.select("video_id", "info_json").iter_rows():
        recorded = json.loads(info_json or "{}").get("source")
        why = compare_source(recorded, paths.get(video_id)) if video_id in paths else None
        if why:
            changed[video_id] = why
        else:
            done.add(video_id)
    return done, changed


def _record_run(feature_sets, config: ExtractConfig, summary: ExtractSummary) -> None:
    """Append this run's config and counts to each feature set's ``runs/`` log."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    record = {"config": asdict(config), "summary": asdict(summary), "finished_at": stamp}
    for fs in feature_sets:
        fs.write_run_record(f"{stamp}-{os.getpid()}", record)
