"""``heads train``: fit a temporal head on cached features, evaluate it, write a run directory.

A recipe in torchtune's shape, read top to bottom in :func:`train`:

- :func:`build`: the config's file defaults, the catalog, the feature sets (one per stream) and
  the task's tokens, in memory or streamed from the store;
- :func:`setup`: seed, per-stream standardisation, the head, the train batches (random windows
  for the LVU protocol, random clips for VTN's; the token times as one more stream for a head
  that reads them), the run directory with ``config.json`` and ``environment.json``, and
  the :class:`heads.loop.Trainer` (AdamW, the named schedule, mixed precision on CUDA);
- train: :meth:`heads.loop.Trainer.fit`, the loop ``heads finetune`` shares: best-on-val
  selection with early stopping, TensorBoard scalars, ``checkpoint.pt`` (best) and
  ``checkpoint_last.pt``;
- :func:`cleanup`: the best checkpoint on every split (averaged over windows) next to the
  majority baseline, written into ``runs/<UTC time>-<head>-<task>/`` (see :mod:`heads.runs`
  for the layout; ``load_head`` rebuilds the model).

``heads train --resume RUN_DIR`` (:func:`resume_config`, ``train(..., resume=RUN_DIR)``)
continues a stopped run in its own directory with its stored config, from the last checkpoint.

Defaults come from :class:`heads.config.TrainConfig`, then ``heads/configs/<head>.toml`` and its
table for the run's dataset (see :mod:`heads.config_files`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from catalogs.base import SPLITS, Catalog
from heads.config import TrainConfig
from heads.config_files import resolve_config
from heads.data import (
    FeatureDataset,
    PartLocalSampler,
    Standardizer,
    StoredVideos,
    TaskData,
    collate,
    head_token_kinds,
    load_task_data,
    resolve_feature_sets,
)
from heads.loop import Evaluator, TargetNorm, Trainer, report
from heads.metrics import PRIMARY_METRIC
from heads.models import create_head, num_streams_for
from heads.optim import param_groups
from heads.parallel import SINGLE, Parallel, current, global_batches, run_recipe, \
    worker_setup
from heads.runtime import legacy_precision, mixed_precision, resolve_device, seed_everything
from heads.runs import (
    CHECKPOINTS,
    HEAD_FIELDS,
    environment,
    format_table,
    new_run_dir,
    plot_curves,
    predictions_frame,
    read_checkpoint,
    write_frame,
    write_json,
)
from heads.windows import (
    RandomClipDataset,
    RandomWindowDataset,
    predict_videos,
    with_token_times,
)

__all__ = ["TrainConfig", "resume_config", "train"]

log_ = logging.getLogger(__name__)  # `log` is the parameter the progress lines go to

# The flags `heads train --resume` takes that may differ from the run's config.json: where the
# feature store is now (its feature sets must still be the run's, fingerprint for fingerprint).
# Every other flag may only repeat the stored value.
RESUME_MAY_CHANGE = ("store",)


@dataclass
class CachedRun:
    """What :func:`setup` hands to the loop and to :func:`cleanup`."""

    trainer: Trainer
    evaluate: Evaluator
    batches: Callable[[int], Iterable]  # epoch -> that epoch's (inputs, targets) batches
    run_dir: Path
    task_info: dict


def train(
    config: TrainConfig, *, catalog: Catalog | None = None, log=print, cache: dict | None = None,
    resume: str | Path | None = None, address: str | None = None,
    parallel: Parallel | None = None, run_dir: str | Path | None = None,
) -> dict:
    """Train ``config.head`` on ``config.task`` and evaluate it on every split.

    Args:
        config: The run's configuration (to resume: :func:`resume_config`).
        catalog: The dataset; built from ``config.dataset`` / ``data_root`` when not given.
        log: Where progress lines (one per epoch when stdout is not a terminal: a log file, a
            job's output; a progress bar on a terminal) and the final table go.
        cache: Feature reads kept across calls (see :func:`heads.data.load_task_data`).
        resume: The directory of a stopped run of ``config``: training goes on there from its
            ``checkpoint_last.pt`` (:meth:`heads.loop.Trainer.restore`) and ends where the run
            never stopped would have, to the same numbers on a deterministic device.
        address: With ``config.data_parallel > 1``: the Ray cluster the workers run on (None:
            ``RAY_ADDRESS``, else a local Ray; :func:`heads.parallel.launch`).
        parallel: Set by a data-parallel worker (:func:`heads.parallel.current`); None: this
            call starts ``config.data_parallel`` workers if that is above 1, else trains here.
        run_dir: A fresh run's directory made beforehand (a data-parallel run's driver makes
            it, so restarted workers find it); None: a new one under ``config.runs_dir``.

    Returns:
        The content of ``metrics.json`` plus ``run_dir`` (str).

    Raises:
        KeyError: unknown dataset, task or head (the message lists the valid names).
        ValueError: feature sets missing or ambiguous, the head's stream count does not match
            ``--features``, bad ``--head-kwarg``, or no usable train video.
        heads.parallel.DataParallelError: a data-parallel worker raised or died.
    """
    if parallel is None and config.data_parallel > 1:
        return _train_data_parallel(config, catalog=catalog, log=log, resume=resume,
                                    address=address)
    parallel = parallel or SINGLE
    config, catalog, data = build(config, catalog=catalog, log=log, cache=cache)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        run = setup(config, catalog, data, log=log, resume=resume, parallel=parallel,
                    run_dir=run_dir)
        log_.info("training %s on %s/%s for up to %d epoch(s) (seed %d, device %s) in %s",
                  config.head, catalog.name, data.task.name, config.epochs, config.seed,
                  config.device, run.run_dir)
        if resume is not None:
            log(f"resuming {run.run_dir} after epoch {run.trainer.epoch} of {config.epochs}")
        run.trainer.fit(run.batches, run.evaluate, desc=f"{config.head}/{data.task.name}",
                        epoch_log=None if sys.stdout.isatty() else log)
        results, evals = report(run.evaluate, run.trainer, task=data.task,
                                video_ids=data.video_ids, head=config.head, seed=config.seed,
                                num_dropped=data.num_dropped)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    if not parallel.is_main:
        return {**results, "run_dir": str(run.run_dir)}
    return cleanup(run, results, evals, data, log=log, table=not parallel.enabled)


def _train_data_parallel(config: TrainConfig, *, catalog: Catalog | None, log, resume,
                         address: str | None) -> dict:
    """``train`` on ``config.data_parallel`` Ray Train workers
    (:func:`heads.parallel.run_recipe`): the run directory is made here, so workers restarted
    after a failure resume from its last checkpoint."""
    config = resolve_config(config)
    run_dir = Path(resume) if resume is not None else new_run_dir(
        Path(config.runs_dir), config.head, config.task)
    return run_recipe(_train_worker, config, run_dir, catalog=catalog, resume=resume,
                      address=address, log=log)


def _train_worker(payload: dict) -> None:
    """One data-parallel worker of :func:`_train_data_parallel`: the recipe with this worker's
    :class:`heads.parallel.Parallel`; after a restart (``--max-failures``) it resumes from the
    run directory's last checkpoint."""
    worker_setup(payload)
    parallel = current()
    run_dir = Path(payload["run_dir"])
    resume = payload["resume"]
    if resume is None and (run_dir / CHECKPOINTS["last"]).is_file():
        resume = run_dir  # Ray Train started the workers again: go on from the last epoch
    lines = print if parallel.is_main else (lambda _: None)
    train(TrainConfig(**payload["config"]), catalog=payload["catalog"], log=lines,
          resume=resume, parallel=parallel, run_dir=run_dir)


def build(config: TrainConfig, *, catalog: Catalog | None, log, cache: dict | None):
    """The resolved config, the catalog and the task's tokens and targets per split."""
    config = resolve_config(config)
    if catalog is None:
        catalog = config.open_catalog()
    num_streams_for(config.head, len(config.features))  # fail before reading any tokens
    # `pipeline extract` records the catalog's name as the spec's `dataset`, and its variant (if
    # any) as `dataset_variant`: that breaks ties between extractions of two demo variants.
    variant = catalog.meta.get("variant")
    prefer = {"dataset_variant": variant} if variant is not None else {}
    # A generic catalog (folder, csv, parquet) records where its videos are: the sets of *this*
    # folder win over another folder's of the same backbone and plan.
    from pipeline.sources import catalog_source

    source = catalog_source(catalog)
    if source is not None:
        prefer["dataset_source"] = source
    feature_sets = resolve_feature_sets(
        config.store, catalog.name, config.features, config.plan, prefer=prefer or None,
        token_kinds=head_token_kinds(config.head),
    )
    log_.info("feature sets of %s/%s: %s", catalog.name, config.task,
              ", ".join(fs.name for fs in feature_sets))
    data = load_task_data(catalog, config.task, feature_sets, log=log, cache=cache,
                          loading=config.data_loading, stream_cache_mib=config.stream_cache_mib)
    log_.info("%s videos (%s), %s; left out: %s", data.task.name,
              ", ".join(f"{split} {len(ids)}" for split, ids in data.video_ids.items()),
              "streamed from the store" if isinstance(data.tokens["train"], StoredVideos)
              else "in memory", data.num_dropped or "none")
    return config, catalog, data


def setup(config: TrainConfig, catalog: Catalog, data: TaskData, *, log,
          resume: str | Path | None = None, parallel: Parallel = SINGLE,
          run_dir: str | Path | None = None) -> CachedRun:
    """Seeded standardisation, batches, head, evaluator, run directory and trainer (restored
    from ``resume``'s last checkpoint when given); ``parallel``: this worker's share of a
    data-parallel run (:mod:`heads.parallel`)."""
    seed_everything(config.seed)
    device = parallel.device if parallel.enabled else resolve_device(config.device, log=log)
    autocast, scaler = mixed_precision(device, config.precision)
    kind = data.task.kind
    streaming = isinstance(data.tokens["train"], StoredVideos)
    dims = [int(fs.attrs["dim"]) for fs in data.feature_sets]
    standardizer = (Standardizer.fit(data.tokens["train"]) if config.standardize
                    else Standardizer.identity(dims))
    if streaming:  # standardised as each video is read
        tokens = {s: data.tokens[s].with_transform(standardizer.apply) for s in SPLITS}
    else:
        tokens = {s: [standardizer.apply(v) for v in data.tokens[s]] for s in SPLITS}
    target_norm = TargetNorm.fit(kind, data.targets["train"])
    train_targets = target_norm.to_train(data.targets["train"]) if target_norm \
        else data.targets["train"]

    head_args = {"in_dim": dims, "num_outputs": data.task.num_outputs, **config.head_kwargs}
    try:
        model = create_head(config.head, task_kind=kind, **head_args).to(device)
    except TypeError as err:
        raise ValueError(
            f"head {config.head!r} rejected its arguments ({err}); check --head-kwarg"
        ) from err
    if parallel.rank:  # worker r > 0 draws its own dropout (DDP copies worker 0's weights)
        torch.manual_seed(parallel.seed(config.seed))
    times = data.times
    if getattr(model, "uses_token_times", False):  # one more stream: the token times
        pairs = {s: with_token_times(tokens[s], times[s]) for s in SPLITS}
        tokens, times = {s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()}
    loader, generators = _train_loader(config, tokens["train"], times["train"], train_targets,
                                       streaming, parallel)

    def predict(split: str) -> tuple[np.ndarray, np.ndarray]:
        # A data-parallel worker scores its share of the split; every worker gets them all.
        mine = parallel.eval_positions(len(tokens[split]), config.batch_size)
        outputs = predict_videos(
            model, torch.utils.data.Subset(tokens[split], mine),
            torch.utils.data.Subset(times[split], mine), task_kind=kind,
            window_sec=config.window_sec, stride_sec=config.eval_stride_sec,
            batch_size=config.batch_size, device=device, autocast=autocast,
        )
        return parallel.gather_outputs(outputs, mine)

    evaluate = Evaluator(kind, data.targets, predict, target_norm)
    if not evaluate.selects_on_val():
        log(f"no usable val split for {PRIMARY_METRIC[kind][0]}: selecting the checkpoint on "
            "train loss")

    # The run directory exists from here on: config and environment first, then the curves
    # and the last checkpoint every epoch, so an interrupted run keeps what it did.
    feature_info = [
        {"name": fs.name, "backbone": fs.spec.get("backbone"), "plan": fs.spec.get("plan"),
         "token_kind": fs.attrs.get("token_kind"), "dim": int(fs.attrs["dim"]),
         "fingerprint": fs.attrs.get("fingerprint")}
        for fs in data.feature_sets
    ]
    task_info = {"name": data.task.name, "kind": kind, "classes": list(data.task.classes)}
    config_dict = asdict(config)
    record = {"config": config_dict, "catalog": catalog.name, "task": task_info,
              "feature_sets": feature_info}
    run_dir = open_run_dir(config, record, resume, run_dir) if parallel.is_main else None
    run_dir = parallel.broadcast_object(run_dir)  # worker 0 made it

    def checkpoint_fields() -> dict:
        """Everything :func:`heads.runs.load_head` needs to rebuild the model."""
        return {
            "head": config.head,
            "head_args": head_args,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "standardizer": standardizer.state_dict(),
            "target_norm": [target_norm.mean, target_norm.std] if target_norm else None,
            "config": config_dict,
            "task": task_info,
            "feature_sets": feature_info,
        }

    trainer = Trainer(
        model, config=config,
        groups=param_groups(model, lr=config.lr, weight_decay=config.weight_decay),
        steps_per_epoch=len(loader), kind=kind, run_dir=run_dir,
        checkpoint_fields=checkpoint_fields, autocast=autocast, scaler=scaler,
        generators=generators, parallel=parallel,
    )
    if resume is not None:
        trainer.restore(run_dir / CHECKPOINTS["last"], run_dir / CHECKPOINTS["best"])
        if parallel.is_main:
            record_resume(run_dir, after_epoch=trainer.epoch, store=config.store)

    return CachedRun(trainer, evaluate, _batches(loader, device, parallel), run_dir, task_info)


def _batches(loader, device: torch.device, parallel: Parallel):
    """``epoch -> batches`` of ``loader`` on ``device``; a data-parallel worker's batches say
    how many of their videos count (none for its stand-in: :mod:`heads.parallel`)."""

    def batches(epoch: int):
        for inputs, targets in loader:
            inputs, targets = [t.to(device) for t in inputs], targets.to(device)
            if parallel.enabled:  # a worker without videos in this step runs one at weight 0
                yield inputs, targets, 0 if loader.batch_sampler.take() else len(targets)
            else:
                yield inputs, targets

    return batches


def _train_loader(config: TrainConfig, tokens, times, targets: np.ndarray, streaming: bool,
                  parallel: Parallel = SINGLE):
    """The train videos' loader (whole videos, a fresh random window of each every epoch under
    the LVU protocol, or a random clip under VTN's) and the generators its draws come from; a
    data-parallel worker's loader gives its slice of each global batch (:mod:`heads.parallel`)
    and draws windows from its own seed."""
    if config.train_clip_sec > 0:
        train_set = RandomClipDataset(tokens, times, targets, clip_sec=config.train_clip_sec,
                                      num_frames=config.train_clip_frames,
                                      seed=parallel.seed(config.seed))
        generators = {"windows": train_set.rng}
    elif config.window_sec > 0:
        train_set = RandomWindowDataset(tokens, times, targets, window_sec=config.window_sec,
                                        seed=parallel.seed(config.seed))
        generators = {"windows": train_set.rng}
    else:
        train_set, generators = FeatureDataset(tokens, targets), {}
    if streaming:  # a part read once per epoch serves all its videos
        sampler = PartLocalSampler(tokens, seed=config.seed,
                                   block_bytes=config.stream_cache_mib * 2**20 / 2)
        order, generators["order"] = {"sampler": sampler}, sampler.generator
    else:
        generator = torch.Generator().manual_seed(config.seed)
        order, generators["order"] = {"shuffle": True, "generator": generator}, generator
    if parallel.enabled:  # every worker draws the same order and takes its slice of it
        sampler = order.get("sampler") or torch.utils.data.RandomSampler(
            train_set, generator=order["generator"])
        # The loader draws its base seed from the same generator as a one-worker run's does.
        order = {"batch_sampler": global_batches(sampler, config.batch_size, parallel),
                 "generator": order.get("generator")}
    else:
        order["batch_size"] = config.batch_size
    loader = torch.utils.data.DataLoader(train_set, collate_fn=collate, **order)
    return loader, generators


def cleanup(run: CachedRun, results: dict, evals: dict, data: TaskData, *, log,
            table: bool = True) -> dict:
    """Write ``metrics.json``, ``predictions.parquet`` and ``curves.png``; print the table
    (unless ``table`` is False: a data-parallel run's driver prints it)."""
    write_json(run.run_dir / "metrics.json", results)
    outputs = {s: evals[s].outputs for s in SPLITS}
    write_frame(predictions_frame(run.task_info, data.video_ids, outputs, data.targets),
                run.run_dir / "predictions.parquet")  # atomically, as every run file
    selection = results["selection"]
    metric = selection["metric"]
    plot_curves(results["history"], run.run_dir / "curves.png",
                title=f"{results['head']} / {results['task']}", best_epoch=selection["best_epoch"],
                baseline={metric: results["baseline"]["val"].get(metric[len("val_"):])}
                if metric.startswith("val_") else None)
    if table:
        log(format_table(results))
        log(f"run written to {run.run_dir}")
    return {**results, "run_dir": str(run.run_dir)}


def open_run_dir(config: TrainConfig, record: dict, resume: str | Path | None,
                 fresh: str | Path | None = None) -> Path:
    """A fresh run directory (``fresh``, made beforehand, else a new one) with ``config.json``
    (``record`` and the command line, ``argv``) and ``environment.json``; or, resuming,
    ``resume`` once its feature sets are checked.

    Raises:
        ValueError: resuming on feature sets other than the run's (another fingerprint).
    """
    if resume is None:
        run_dir = Path(fresh) if fresh is not None else new_run_dir(
            Path(config.runs_dir), config.head, record["task"]["name"])
        write_json(run_dir / "config.json", {**record, "argv": sys.argv})
        write_json(run_dir / "environment.json", environment())
        return run_dir
    run_dir = Path(resume)
    saved = json.loads((run_dir / "config.json").read_text())
    was = [fs.get("fingerprint") for fs in saved["feature_sets"]]
    now = [fs["fingerprint"] for fs in record["feature_sets"]]
    if was != now:
        raise ValueError(f"--resume {run_dir}: the run was trained on feature sets with "
                         f"fingerprints {was}, store {config.store} gives {now}; pass the "
                         "run's store with --store")
    return run_dir


def record_resume(run_dir: Path, *, after_epoch: int, store: str) -> None:
    """Append one resumption to ``config.json``'s ``resumes``: the command line, the epoch it
    continued after, the store, the UTC time and the environment (:func:`environment`)."""
    saved = json.loads((run_dir / "config.json").read_text())
    saved.setdefault("resumes", []).append({
        "argv": sys.argv, "after_epoch": after_epoch, "store": store,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": environment()})
    write_json(run_dir / "config.json", saved)


def resume_config(run_dir: str | Path, given: dict | None = None) -> TrainConfig:
    """The config of the stopped ``heads train`` run in ``run_dir``, to continue it with
    ``train(config, resume=run_dir)`` (``heads train --resume RUN_DIR``).

    Args:
        run_dir: The run directory.
        given: Flags given with ``--resume`` (field → value): each must repeat the stored
            value (a dict flag: its keys), except :data:`RESUME_MAY_CHANGE`, which win.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json``.
        ValueError: the run finished (``metrics.json``), is a ``heads finetune`` run, has no
            resumable checkpoint (none yet, weights only, damaged), or a flag contradicts its
            config; one line naming the culprit.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there; pass a run "
                                "directory of `heads train`")
    saved = json.loads((run_dir / "config.json").read_text())
    if "features" not in saved.get("config", {}):
        raise ValueError(f"--resume {run_dir}: not a run of `heads train` on cached features "
                         "(a `heads finetune` run?); only those resume")
    if (run_dir / "metrics.json").is_file():
        raise ValueError(f"--resume {run_dir}: the run finished (metrics.json is there); "
                         "nothing to resume")
    for name in (CHECKPOINTS["last"], CHECKPOINTS["best"]):
        if not (run_dir / name).is_file():
            raise ValueError(f"--resume {run_dir}: no resumable checkpoint ({name} missing: "
                             "stopped before its first epoch ended); start the run again")
        if "resume" not in read_checkpoint(run_dir / name, required=HEAD_FIELDS):
            raise ValueError(f"--resume {run_dir}: {name} holds weights only (written before "
                             "runs could resume); start the run again")
    try:
        config = TrainConfig(**legacy_precision(saved["config"]))
    except TypeError as err:
        raise ValueError(f"--resume {run_dir}: its config.json does not fit this version's "
                         f"TrainConfig ({err})") from None
    given = {k: v for k, v in (given or {}).items() if v is not None}
    for key, value in given.items():
        stored = getattr(config, key)
        if isinstance(value, dict):
            same = isinstance(stored, dict) and all(stored.get(k) == v for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            same = tuple(value) == tuple(stored)
        else:
            same = value == stored
        if not same and key not in RESUME_MAY_CHANGE:
            raise ValueError(f"--resume {run_dir} continues the run with its config.json: "
                             f"--{key.replace('_', '-')} {value!r} contradicts its {key} "
                             f"{stored!r}; drop the flag (only --store may change)")
    return replace(config, **{k: given[k] for k in RESUME_MAY_CHANGE if k in given})
