"""``heads finetune``: train backbone(s) and head together from decoded frames (end-to-end mode).

The cached-feature recipe (:mod:`heads.train`) never sees pixels; here every step decodes
videos (in ``DataLoader`` workers, :mod:`heads.finetune.clips`), runs the stream encoders and
the head (:mod:`heads.finetune.models`) and back-propagates into the encoders marked trainable.

Presets (:data:`heads.finetune.config.PRESETS`) are the papers' recipes:

| preset | head | encoders (trainable in bold) | plan | source |
|---|---|---|---|---|
| ``stan_small`` | ``stan`` | **resnet18**, r2plus1d_18 (stop-gradient) | scene | STAN §3 |
| ``stan_large`` | ``stan`` | **resnet18**, **r2plus1d_18** | scene | STAN §3 |
| ``vtn`` | ``longformer`` | **resnet18** | full; trains on 5.12 s clips | VTN §4.1, Tab. 2d |
| ``stat`` | ``stat`` | **stat_embedding** (from scratch) | uniform | STAT, from pixels |

A preset may also set val/test views (``stat``: 5 × 1, 3 × 3 from 64 frames; averaged by
:func:`predict_clips`) and optimiser defaults (``stat``: DeiT's lr × batch / 512, weight
decay, warm-up and label smoothing); flags win (:func:`heads.finetune.config.resolve_config`).

A recipe read top to bottom in :func:`finetune`, in the shape of :func:`heads.train.train`:
:func:`build` (catalog, labels, encoders, head, ``--init-from``) → :func:`setup`
(standardisation, loaders, the run directory, the :class:`heads.loop.Trainer` with AdamW at a
lower learning rate for pretrained backbones, the named schedule, autocast and gradient scaling)
→ train (:meth:`heads.loop.Trainer.fit`, the loop ``heads train`` shares: best-on-val selection,
early stopping, ``checkpoint.pt`` and ``checkpoint_last.pt``) → :func:`cleanup` (every split next
to the majority baseline, written as :mod:`heads.runs` does for cached-feature runs;
:func:`load_finetuned` rebuilds the model).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from catalogs.base import SPLITS, Catalog
from heads.finetune.build import (
    build_model,
    check_init_source,
    init_head_from,
    load_checkpoint,
    task_videos,
)
from heads.finetune.clips import VideoClipDataset, collate
from heads.finetune.config import PRESETS, FinetuneConfig, resolve_config, resolve_device
from heads.finetune.models import BackboneEncoder, PixelModel
from heads.loop import Evaluator, TargetNorm, Trainer, report
from heads.optim import param_groups as head_groups
from heads.parallel import SINGLE, Parallel, current, global_batches, run_recipe, worker_setup
from heads.runtime import autocast_and_scaler


@dataclass
class PixelModelBuild:
    """What :func:`build` hands to :func:`setup`."""

    config: FinetuneConfig  # resolved: the preset's head, encoders, trainable set and plan
    catalog: Catalog
    videos: dict[str, tuple]  # split -> (video ids, paths, encoded targets) of labelled videos
    model: PixelModel  # encoders and head (with the --init-from head weights, if any)
    streams: list  # per stream, the pixels it needs (heads.finetune.clips.StreamPixels)
    head_args: dict  # create_head arguments that rebuild the head
    have_standardizer: bool  # the standardiser came with --init-from (else it is fitted)


@dataclass
class PixelRun:
    """What :func:`setup` hands to the loop and to :func:`cleanup`."""

    trainer: Trainer
    evaluate: Evaluator
    batches: Callable[[int], Iterable]  # epoch -> that epoch's (inputs, targets) batches
    run_dir: Path
    task_info: dict
    failed: dict[str, str]  # video id -> why it could not be decoded


def finetune(config: FinetuneConfig, *, catalog: Catalog | None = None, log=print,
             address: str | None = None, parallel: Parallel | None = None,
             run_dir: str | Path | None = None) -> dict:
    """Train ``config``'s encoders and head from decoded frames and evaluate every split.

    Args:
        config: The run's configuration.
        catalog: The dataset; built from ``config.dataset`` / ``data_root`` when not given.
        log: Where progress lines and the final table go.
        address: With ``config.data_parallel > 1``: the Ray cluster of the workers (None:
            ``RAY_ADDRESS``, else a local Ray).
        parallel: Set by a data-parallel worker; None: start ``config.data_parallel`` workers
            if that is above 1 (:mod:`heads.parallel`), else train here.
        run_dir: A fresh run directory made beforehand (a data-parallel run's driver's).

    Returns:
        The content of ``metrics.json`` plus ``run_dir`` (str).

    Raises:
        KeyError: unknown dataset, task, head or backbone (the message lists valid names).
        ValueError: bad flags, an ``--init-from`` run that does not fit, no labelled or
            decodable train video.
        pipeline.weights.WeightsError: backbone weights cannot be found.
        heads.parallel.DataParallelError: a data-parallel worker raised or died.
    """
    if config.sync_batchnorm and config.data_parallel > 1 and config.device == "cpu":
        raise ValueError("--sync-batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no CPU "
                         "kernel): drop it on CPU workers, where each worker's BatchNorm "
                         "keeps its own batch statistics")
    if parallel is None and config.data_parallel > 1:
        return _finetune_data_parallel(config, catalog=catalog, log=log, address=address)
    parallel = parallel or SINGLE
    built = build(config, catalog=catalog, log=log)
    config = built.config
    run = setup(built, log=log, parallel=parallel, run_dir=run_dir)
    run.trainer.fit(run.batches, run.evaluate, desc=f"{config.preset}/{config.task}",
                    epoch_log=log)
    video_ids = {s: built.videos[s][0] for s in SPLITS}
    results, evals = report(run.evaluate, run.trainer, task=built.catalog.task(config.task),
                            video_ids=video_ids, head=config.head, preset=config.preset,
                            seed=config.seed, parameters=built.model.parameter_counts())
    for failed in parallel.all_gather_object(dict(run.failed)):  # each worker's train failures
        run.failed.update(failed)
    if not parallel.is_main:
        return {**results, "run_dir": str(run.run_dir)}
    return cleanup(run, results, evals, video_ids, log=log, table=not parallel.enabled)


def _finetune_data_parallel(config: FinetuneConfig, *, catalog: Catalog | None, log,
                            address: str | None) -> dict:
    """``finetune`` on ``config.data_parallel`` Ray Train workers
    (:func:`heads.parallel.run_recipe`), as :func:`heads.train.train` does for cached
    features."""
    from heads.runs import new_run_dir

    run_dir = new_run_dir(Path(config.runs_dir), config.preset, config.task)
    return run_recipe(_finetune_worker, config, run_dir, catalog=catalog, address=address,
                      log=log)


def _finetune_worker(payload: dict) -> None:
    """One data-parallel worker of :func:`_finetune_data_parallel`."""
    worker_setup(payload)
    parallel = current()
    lines = print if parallel.is_main else (lambda _: None)
    finetune(FinetuneConfig(**payload["config"]), catalog=payload["catalog"], log=lines,
             parallel=parallel, run_dir=payload["run_dir"])


def build(config: FinetuneConfig, *, catalog: Catalog | None, log) -> PixelModelBuild:
    """The resolved config, the catalog, the labelled videos and the model."""
    given, config = config, resolve_config(config)
    log(optimiser_line(given, config))
    if catalog is None:
        catalog = config.open_catalog()
    num_outputs = catalog.task(config.task).num_outputs
    videos = task_videos(catalog, config.task, log=log)
    random.seed(config.seed)
    _, _, checkpointing = resolve_device(config)
    init, head_kwargs = None, None
    if config.init_from:
        init = load_checkpoint(config.init_from)
        check_init_source(config, init)
        head_kwargs = {k: v for k, v in init["head_args"].items()
                       if k not in ("in_dim", "num_outputs")} | config.head_kwargs
    model, streams, head_args = build_model(config, num_outputs=num_outputs,
                                            checkpointing=checkpointing, head_kwargs=head_kwargs)
    have_standardizer = init_head_from(model, config, init) if init else False
    if init:
        log(f"head weights from {config.init_from}"
            + (" (with its feature standardisation)" if have_standardizer else ""))
    log(parameter_line(config, model.parameter_counts()))
    return PixelModelBuild(config, catalog, videos, model, streams, head_args, have_standardizer)


def setup(built: PixelModelBuild, *, log, parallel: Parallel = SINGLE,
          run_dir: str | Path | None = None) -> PixelRun:
    """Loaders, standardiser, evaluator, run directory and trainer; ``parallel``: this worker's
    share of a data-parallel run (:mod:`heads.parallel`)."""
    config, catalog, videos, model = built.config, built.catalog, built.videos, built.model
    device, amp_dtype, _ = resolve_device(config, log=log,
                                          device=parallel.device if parallel.enabled else None)
    if parallel.enabled and config.sync_batchnorm:  # before the optimiser sees the parameters
        if device.type != "cuda":
            raise ValueError("--sync-batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no "
                             f"CPU kernel); this worker runs on {device}: drop it")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if parallel.rank:  # worker r > 0 draws its own dropout (DDP copies worker 0's weights)
        torch.manual_seed(parallel.seed(config.seed))
    autocast, scaler = autocast_and_scaler(device, amp_dtype)
    task = catalog.task(config.task)
    targets = {s: videos[s][2] for s in SPLITS}
    target_norm = TargetNorm.fit(task.kind, targets["train"])
    train_set, train_generator, loaders = _loaders(config, videos, built.streams, target_norm,
                                                   device, parallel)
    if not built.have_standardizer and any(getattr(e, "standardize", True)
                                           for e in model.encoders):
        model.set_standardizer(fit_standardizer(model, loaders["train"], device, autocast,
                                                config.standardize_videos))
    failed: dict[str, str] = {}

    def predict(split: str) -> tuple[np.ndarray, np.ndarray]:
        # A data-parallel worker scores its share of the split; every worker gets them all.
        outputs, positions, errors = predict_clips(model, loaders[f"eval_{split}"], device,
                                                   autocast, task_kind=task.kind)
        for worker_errors in parallel.all_gather_object(errors):  # every worker's failures
            failed.update({videos[split][0][i]: message for i, message in worker_errors})
        return parallel.gather_outputs(outputs, positions)

    evaluate = Evaluator(task.kind, targets, predict, target_norm)
    encoders = [{"name": e.name, "dim": e.dim, "trainable": e.trainable} for e in model.encoders]
    task_info = {"name": task.name, "kind": task.kind, "classes": list(task.classes)}
    config_dict = asdict(config)
    from heads.runs import environment, new_run_dir, write_json

    if parallel.is_main:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(
            Path(config.runs_dir), config.preset, task.name)
        write_json(run_dir / "config.json", {
            "config": config_dict, "catalog": catalog.name, "task": task_info,
            "encoders": encoders, "streams": [asdict(s) for s in built.streams],
            "parameters": model.parameter_counts(), "argv": sys.argv,
        })
        write_json(run_dir / "environment.json", environment())
    run_dir = parallel.broadcast_object(run_dir)  # worker 0 made it

    def checkpoint_fields() -> dict:
        """Everything :func:`load_finetuned` needs to rebuild the model."""
        state = model.state_dict()
        return {
            "kind": "finetune",
            "head": config.head,
            "head_args": built.head_args,
            "model": {k[len("head."):]: v.detach().cpu() for k, v in state.items()
                      if k.startswith("head.")},
            "encoder_states": {str(i): {k: v.detach().cpu() for k, v in e.state_dict().items()}
                               for i, e in enumerate(model.encoders) if e.trainable},
            "standardizer": _standardizer_state(model),
            "target_norm": [target_norm.mean, target_norm.std] if target_norm else None,
            "config": config_dict,
            "task": task_info,
            "encoders": encoders,
        }

    trainer = Trainer(
        model, config=config, groups=param_groups(model, config),
        steps_per_epoch=max(1, len(loaders["shuffled"])), kind=task.kind, run_dir=run_dir,
        checkpoint_fields=checkpoint_fields, autocast=autocast, scaler=scaler,
        state_keys=model.trainable_state_keys(),
        generators={"order": train_generator}, parallel=parallel,
    )
    if task.kind == "classification" and config.label_smoothing:
        # The training loss only (DeiT's recipe); val/test losses stay plain cross-entropy.
        trainer.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def batches(epoch: int):
        train_set.set_epoch(epoch)
        seen, last = 0, None
        shuffled = loaders["shuffled"]
        for batch in _progress(shuffled, f"{config.preset} epoch {epoch}",
                               enabled=parallel.is_main):
            failed.update({videos["train"][0][i]: message for i, message in batch.errors})
            padding = shuffled.batch_sampler.take() if parallel.enabled else False
            if len(batch):
                seen += len(batch)
                last = batch = batch.to(device)
                yield (batch.frames, batch.lengths), batch.targets, 0 if padding else len(batch)
            elif parallel.enabled:  # every worker steps together: a stand-in at weight 0
                yield ((last.frames, last.lengths), last.targets, 0) if last else (None, None, 0)
        if not seen and not parallel.enabled:
            raise ValueError(f"no train video could be decoded (failures: {failed})")

    return PixelRun(trainer, evaluate, batches, run_dir, task_info, failed)


def _loaders(config: FinetuneConfig, videos: dict, streams, target_norm, device,
             parallel: Parallel = SINGLE):
    """The augmented train set, and loaders: ``shuffled`` (training: a data-parallel worker's
    slice of each global batch), one per split in order, without augmentation (the
    standardiser), and ``eval_<split>``, this worker's share of each split (evaluation); val
    and test with ``config.test_views`` (the train split's evaluation and the standardiser:
    one view)."""
    from pipeline.sampling import PlanConfig
    from pipeline.scenes import SceneDetectConfig

    plan = PlanConfig(name=config.plan, num_frames=config.num_frames,
                      full_num_frames=config.num_frames,
                      frames_per_clip=config.frames_per_clip)
    scenes = SceneDetectConfig(detector=config.detector)
    cache = {} if config.cache_decoded else None

    def dataset(split: str, train: bool) -> VideoClipDataset:
        _, paths, targets = videos[split]
        if target_norm is not None:
            targets = target_norm.to_train(targets)
        return VideoClipDataset(paths, targets, streams=streams, plan=plan, scenes=scenes,
                                train=train, seed=config.seed, crop_scale=config.crop_scale,
                                flip=config.flip, cache=cache,
                                clip_sec=config.train_clip_sec if train else 0.0,
                                clip_frames=config.train_clip_frames,
                                random_frames=bool(config.train_random_frames) and train,
                                views=config.test_views if split in ("val", "test") else (1, 1))

    loader_args = {"batch_size": config.batch_size, "collate_fn": collate,
                   "num_workers": config.num_workers, "pin_memory": device.type == "cuda",
                   "worker_init_fn": _worker_init}
    train_set = dataset("train", True)
    generator = torch.Generator().manual_seed(config.seed)
    if parallel.enabled:  # every worker draws the same order and takes its slice of it
        sampler = torch.utils.data.RandomSampler(train_set, generator=generator)
        shuffled = torch.utils.data.DataLoader(
            train_set, batch_sampler=global_batches(sampler, config.batch_size, parallel),
            generator=generator,  # the loader's worker seeds: drawn as a one-worker run does
            **{k: v for k, v in loader_args.items() if k != "batch_size"})
    else:
        shuffled = torch.utils.data.DataLoader(train_set, shuffle=True, generator=generator,
                                               **loader_args)
    loaders = {"shuffled": shuffled}
    loaders |= {s: torch.utils.data.DataLoader(dataset(s, False), **loader_args) for s in SPLITS}
    for split in SPLITS:
        mine = parallel.eval_positions(len(videos[split][0]), config.batch_size)
        loaders[f"eval_{split}"] = loaders[split] if not parallel.enabled else \
            torch.utils.data.DataLoader(torch.utils.data.Subset(loaders[split].dataset, mine),
                                        **loader_args)
    return train_set, generator, loaders


def cleanup(run: PixelRun, results: dict, evals: dict, video_ids: dict, *, log,
            table: bool = True) -> dict:
    """Write ``metrics.json`` (with the videos that could not be decoded), ``predictions.parquet``
    (the videos that could) and ``curves.png``; print the table (unless ``table`` is False: a
    data-parallel run's driver prints it)."""
    from heads.runs import format_table, plot_curves, predictions_frame, write_frame, write_json

    results["failed"] = dict(run.failed)
    write_json(run.run_dir / "metrics.json", results)
    decoded = {s: [video_ids[s][i] for i in evals[s].positions] for s in SPLITS}
    write_frame(predictions_frame(run.task_info, decoded, {s: evals[s].outputs for s in SPLITS},
                                  {s: evals[s].targets for s in SPLITS}),
                run.run_dir / "predictions.parquet")
    selection = results["selection"]
    metric = selection["metric"]
    plot_curves(results["history"], run.run_dir / "curves.png",
                title=f"{results['preset']} / {results['task']}",
                best_epoch=selection["best_epoch"],
                baseline={metric: results["baseline"]["val"].get(metric[len("val_"):])}
                if metric.startswith("val_") else None)
    if table:
        log(format_table(results))
    if run.failed:
        log(f"{len(run.failed)} video(s) could not be decoded: "
            + "; ".join(f"{v}: {m}" for v, m in sorted(run.failed.items())))
    if table:
        log(f"run written to {run.run_dir}")
    return {**results, "run_dir": str(run.run_dir)}


@torch.no_grad()
def predict_clips(model: PixelModel, loader, device, autocast, *,
                  task_kind: str | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """Outputs (N, K) float32 of the videos that decoded, their dataset indices (N,), and the
    ``(index, error)`` of those that did not.

    A video seen in several test views (its index repeated, :func:`heads.finetune.clips.collate`)
    gets one row, its views averaged as :func:`heads.windows.average_windows` averages windows
    (``task_kind``: classification ``log(mean softmax)``, multi-label ``logit(mean sigmoid)``,
    regression the mean); one view is its output itself.

    Raises:
        ValueError: views to average without ``task_kind``.
    """
    model.eval()
    outputs, indices, errors = [], [], []
    for batch in loader:
        errors += batch.errors
        if len(batch):
            batch = batch.to(device)
            with autocast() if autocast else nullcontext():
                out = model(batch.frames, batch.lengths)
            outputs.append(out.float().cpu())
            indices.append(batch.indices)
    if not outputs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), errors
    outputs, indices = torch.cat(outputs).numpy(), torch.cat(indices).numpy()
    videos, first = np.unique(indices, return_index=True)
    if len(videos) == len(indices):
        return outputs, indices, errors
    if task_kind is None:
        raise ValueError("predict_clips: test views to average need the task_kind")
    from heads.windows import average_windows

    videos = indices[np.sort(first)]  # in loader order
    averaged = np.stack([average_windows(outputs[indices == v], task_kind) for v in videos])
    return averaged, videos, errors


def fit_standardizer(model: PixelModel, loader, device, autocast, max_videos: int):
    """A :class:`heads.data.Standardizer` of the encoders' raw tokens on up to ``max_videos``
    videos of ``loader`` (centre crops, no gradient)."""
    from heads.data import Standardizer

    model.eval()
    videos: list[list[np.ndarray]] = []
    with torch.no_grad():
        for batch in loader:
            if not len(batch):
                continue
            batch = batch.to(device)
            with autocast() if autocast else nullcontext():
                streams = model.encode(batch.frames, batch.lengths)
            for b in range(len(batch)):
                videos.append([x[b][m[b]].float().cpu().numpy() for x, m in streams])
            if len(videos) >= max_videos:
                break
    if not videos:
        raise ValueError("no train video could be decoded to fit the feature standardisation")
    return Standardizer.fit(videos[:max_videos])


def param_groups(model: PixelModel, config: FinetuneConfig) -> list[dict]:
    """AdamW groups: the head (and a stem trained from scratch) at ``lr``, pretrained backbones
    at ``lr × backbone_lr_scale``; weight decay on matrices only, except parameters whose
    ``_optim`` says otherwise (:func:`heads.optim.param_groups`); trainable parameters only."""
    groups = head_groups(model.head, lr=config.lr, weight_decay=config.weight_decay)
    for encoder in model.encoders:
        if not encoder.trainable:
            continue
        scale = config.backbone_lr_scale if isinstance(encoder, BackboneEncoder) else 1.0
        # The head's rule, parameters' ``_optim`` included (STAT's embeddings: no decay).
        groups += head_groups(encoder, lr=config.lr * scale, weight_decay=config.weight_decay)
    return groups


def _progress(loader, desc: str, *, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, disable=None if enabled else True, leave=False)


def optimiser_line(given: FinetuneConfig, config: FinetuneConfig) -> str:
    """The optimiser settings and test views of resolved ``config``, saying which came from the
    preset (the fields ``given`` left unset), e.g. ``lr 1.95e-06 (stat preset)``."""
    preset = f" ({config.preset} preset)"
    parts = [f"{label} {getattr(config, key):g}" + (preset if getattr(given, key) is None else "")
             for key, label in (("lr", "lr"), ("weight_decay", "weight decay"),
                                ("warmup_epochs", "warm-up epochs"),
                                ("label_smoothing", "label smoothing"))]
    views = "{}x{}".format(*config.test_views) + (preset if given.test_views is None else "")
    return f"optimiser: {', '.join(parts)}; val/test views {views}"


def parameter_line(config: FinetuneConfig, counts: dict) -> str:
    """Trainable / frozen parameter counts in millions, next to the paper's figure if any."""
    parts = ", ".join(f"{name} {n / 1e6:.2f} M" for name, n in counts["per_part"].items())
    line = (f"parameters: trainable {counts['trainable'] / 1e6:.2f} M, frozen "
            f"{counts['frozen'] / 1e6:.2f} M ({parts})")
    paper = PRESETS[config.preset].paper_params_m
    if paper is not None:
        name = config.preset.replace("stan_", "STAN-").replace("-s", "-S").replace("-l", "-L")
        line += f"; STAN §3 reports {paper:g} M for {name}"
    return line


def load_finetuned(path) -> tuple[PixelModel, dict]:
    """Rebuild a ``heads finetune`` model from its run directory or ``checkpoint.pt``: frozen
    encoders from their weights (``config.weights``), trainable ones, the head and the
    standardisation from the checkpoint.

    Returns:
        ``(model, checkpoint)``, the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``. ValueError: not a finetune checkpoint.
    """
    from heads.data import Standardizer

    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != "finetune":
        raise ValueError(f"{path} is a `heads train` run; load it with heads.runs.load_head")
    config = FinetuneConfig(**{k: v for k, v in checkpoint["config"].items()})
    kwargs = {k: v for k, v in checkpoint["head_args"].items() if k not in ("in_dim",
                                                                             "num_outputs")}
    model, _, _ = build_model(config, num_outputs=checkpoint["head_args"]["num_outputs"],
                              checkpointing=False, head_kwargs=kwargs)
    model.head.load_state_dict(checkpoint["model"])
    for i, state in checkpoint["encoder_states"].items():
        model.encoders[int(i)].load_state_dict(state)
    model.set_standardizer(Standardizer.from_state_dict(checkpoint["standardizer"]))
    return model.eval(), checkpoint


def _standardizer_state(model: PixelModel) -> dict:
    return {key: [getattr(model, f"feature_{key}_{i}").cpu().clone()
                  for i in range(len(model.encoders))] for key in ("mean", "std")}


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers: one thread each, the cores go to the model
