"""The one training loop of ``heads train`` (cached features) and ``heads finetune`` (pixels).

A recipe builds its model and data, then hands them to a :class:`Trainer`:

- setup: the optimiser named by ``RunConfig.optimizer`` (AdamW, or SGD for VTN) over the
  recipe's parameter groups (S4's own group, a lower rate for pretrained backbones), the
  learning-rate schedule named by ``RunConfig.schedule`` (:data:`heads.optim.SCHEDULES`),
  autocast and the fp16 loss scaler;
- :meth:`Trainer.fit`: per epoch one pass over the recipe's batches (task loss + the head's
  ``aux_loss``, backward, gradient clipping, optimiser and schedule step), the validation metric
  (:class:`Evaluator`: windowed or per clip, whatever the recipe's ``predict`` does), best-on-val
  selection with early stopping, TensorBoard scalars (per epoch, the loss per step, the config
  as hyperparameters at the end), and two checkpoints: ``checkpoint_last.pt``
  every epoch and ``checkpoint.pt`` at every new best. Both hold what the recipe needs to rebuild
  the model plus what the loop needs to resume (model, optimiser, scheduler, scaler, epoch, RNG
  states, history, best so far: :meth:`Trainer.restore`);
- :func:`report`: the best model on every split next to the majority baseline, written as
  ``metrics.json``, ``predictions.parquet`` and ``curves.png``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from catalogs.base import SPLITS
from heads.config import RunConfig
from heads.metrics import PRIMARY_METRIC, compute_metrics, details, majority_baseline
from heads.optim import build_optimizer, build_schedule
from heads.parallel import SINGLE, Parallel
from heads.runs import TrainingLog, read_checkpoint, save_checkpoint
from heads.runtime import rng_state, set_rng_state
from pipeline.faults import maybe_crash

# A batch as the loop sees it: the model's positional inputs (on its device) and the targets,
# and optionally how many of its videos count (0: a data-parallel worker's stand-in batch,
# run at loss weight 0; heads.parallel). Inputs None: this worker has no batch for the step.
Batch = tuple[Sequence[torch.Tensor], torch.Tensor] | tuple[Sequence[torch.Tensor] | None,
                                                            torch.Tensor | None, int]


def task_loss(kind: str) -> nn.Module:
    """The training loss of a task kind: cross-entropy (classification), binary cross-entropy on
    logits (multilabel), mean squared error (regression)."""
    return {"classification": nn.CrossEntropyLoss, "multilabel": nn.BCEWithLogitsLoss,
            "regression": nn.MSELoss}[kind]()


@dataclass(frozen=True)
class TargetNorm:
    """Regression targets are regressed standardised (train mean and std), so the output
    layer's scale does not depend on the units; outputs go back to units before any metric."""

    mean: float
    std: float

    @classmethod
    def fit(cls, kind: str, train_targets: np.ndarray) -> TargetNorm | None:
        """The train split's mean and std for a regression task, else None."""
        if kind != "regression":
            return None
        return cls(float(train_targets.mean()), float(max(train_targets.std(), 1e-6)))

    def to_train(self, targets: np.ndarray) -> np.ndarray:
        return ((targets - self.mean) / self.std).astype(np.float32)

    def to_units(self, outputs: np.ndarray) -> np.ndarray:
        return outputs * self.std + self.mean


@dataclass
class SplitEval:
    """One split's evaluation: outputs (N, K) in target units of the N videos that could be
    evaluated, their positions in the split, their targets, the metrics and the loss."""

    outputs: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    metrics: dict
    loss: float


class Evaluator:
    """Scores a recipe's per-video outputs on a split.

    Args:
        kind: Task kind.
        targets: Split → encoded targets in units (:func:`heads.data.encode_labels`).
        predict: ``split -> (outputs, positions)``: outputs (N, K) in the training scale
            (standardised for regression) of the videos at ``positions`` of the split; the
            recipe's own inference (windows averaged, clips decoded, ...).
        target_norm: The regression standardisation, or None.
    """

    def __init__(self, kind: str, targets: dict[str, np.ndarray],
                 predict: Callable[[str], tuple[np.ndarray, np.ndarray]],
                 target_norm: TargetNorm | None = None):
        self.kind, self.targets, self.predict = kind, targets, predict
        self.target_norm = target_norm
        self.loss_fn = task_loss(kind)

    def __call__(self, split: str) -> SplitEval:
        targets = self.targets[split]
        if not len(targets):
            return SplitEval(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), targets, {},
                             float("nan"))
        outputs, positions = self.predict(split)
        targets = targets[positions]
        if not len(positions):
            return SplitEval(outputs, positions, targets, {}, float("nan"))
        train_scale = self.target_norm.to_train(targets) if self.target_norm else targets
        loss = self.loss_fn(torch.from_numpy(outputs), torch.from_numpy(train_scale)).item()
        if self.target_norm is not None:
            outputs = self.target_norm.to_units(outputs)
        return SplitEval(outputs, positions, targets,
                         compute_metrics(self.kind, outputs, targets), loss)

    def selects_on_val(self) -> bool:
        """Whether the val split can choose the best epoch: it has videos and the primary
        metric is defined on it (an mAP needs a positive label). Else the train loss does."""
        metric = PRIMARY_METRIC[self.kind][0]
        baseline = majority_baseline(self.targets["train"], self.targets["val"], self.kind)
        return math.isfinite(baseline.get(metric, float("nan")))


def epoch_line(record: dict, num_epochs: int, *, best: bool) -> str:
    """One epoch's record as one log line, e.g. ``epoch 3/20  train_loss 0.6931  lr 3.0e-04
    val_top1 0.6000  val_loss 0.8123  best``: what ``heads train`` prints per epoch when its
    output is not a terminal (a log file, a job's output) and ``heads finetune`` always."""
    parts = [f"epoch {record['epoch']}/{num_epochs}"]
    for key, value in record.items():
        if key == "epoch":
            continue
        if value is None:
            parts.append(f"{key} -")
        elif key == "lr":
            parts.append(f"lr {value:.1e}")
        else:
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts + ["best"] * best)


class Trainer:
    """The training loop (see the module docstring).

    Args:
        model: The model, on ``device``; ``model(*inputs)`` gives (B, K) outputs and may set
            ``model.aux_loss``.
        config: The run's config (optimisation and loop fields).
        groups: Parameter groups (:func:`heads.optim.param_groups`).
        steps_per_epoch: Optimiser steps per epoch (sizes the schedule).
        kind: Task kind (loss, primary metric).
        run_dir: Where the checkpoints and TensorBoard files go.
        checkpoint_fields: ``() -> dict``: what the recipe's loader needs to rebuild the model
            from a checkpoint (weights in its own layout, head arguments, standardiser, config,
            ...), taken from the model as it is at the time of the call.
        autocast: Zero-argument context-manager factory around each forward, or None.
        scaler: ``torch.amp.GradScaler`` (enabled for fp16 only); None = disabled.
        state_keys: The model's state entries that training changes (kept for the best epoch and
            resumed); None = all. A frozen backbone is rebuilt from its weights instead.
        generators: Name → ``torch.Generator`` / ``numpy.random.Generator`` the batches draw
            from (shuffling, random windows): checkpointed so a resumed run draws the same.
        parallel: This worker's place in a data-parallel run (:mod:`heads.parallel`): the
            model is wrapped in DDP, each step's loss weighted so that the gradient is the
            global batch's mean, and only worker 0 writes checkpoints, curves and log lines.
    """

    def __init__(self, model: nn.Module, *, config: RunConfig, groups: list[dict],
                 steps_per_epoch: int, kind: str, run_dir: Path,
                 checkpoint_fields: Callable[[], dict], autocast=None, scaler=None,
                 state_keys: Sequence[str] | None = None, generators: dict | None = None,
                 parallel: Parallel = SINGLE):
        self.model, self.config, self.run_dir = model, config, Path(run_dir)
        self.parallel = parallel
        self.forward_model = parallel.wrap(model)  # DDP for several workers, else the model
        self.optimizer = build_optimizer(config.optimizer, groups, lr=config.lr,
                                         momentum=config.momentum, nesterov=config.nesterov)
        self.scheduler = build_schedule(
            config.schedule, self.optimizer, warmup_steps=config.warmup_epochs * steps_per_epoch,
            total_steps=config.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
            milestones=config.lr_milestones, gamma=config.lr_gamma,
        )
        self.autocast = autocast or nullcontext
        self.scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
        self.loss_fn = task_loss(kind)
        self.metric, self.higher_is_better = PRIMARY_METRIC[kind]
        self.checkpoint_fields = checkpoint_fields
        self.state_keys = list(state_keys) if state_keys is not None else None
        self.generators = generators or {}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps_per_epoch = steps_per_epoch
        self._curves: TrainingLog | None = None  # while fit runs: per-step losses go there
        self.epoch, self.history, self.since_best = 0, [], 0
        self.best_score, self.best_epoch, self.best_state = None, 0, None

    def step(self, inputs: Sequence[torch.Tensor], targets: torch.Tensor, *,
             weight: float = 1.0) -> float:
        """One optimisation step: task loss + the head's ``aux_loss``, backward of the loss
        times ``weight`` (scaled for fp16; a data-parallel worker's share of the global batch,
        :mod:`heads.parallel`), clipping of the true gradients, optimiser and schedule step.
        Returns the (unweighted) loss."""
        with self.autocast():
            outputs = self.forward_model(*inputs)
            loss = self.loss_fn(outputs.float(), targets)
            aux_loss = getattr(self.model, "aux_loss", None)  # set by the head in this forward
            if isinstance(aux_loss, torch.Tensor):
                loss = loss + aux_loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.item()

    def fit(self, batches: Callable[[int], Iterable[Batch]], evaluate: Evaluator, *,
            desc: str, epoch_log: Callable[[str], None] | None = None) -> list[dict]:
        """Train from the epoch after :attr:`epoch` to ``config.epochs`` or early stopping, then
        load the best epoch's weights into the model.

        Args:
            batches: ``epoch -> batches`` of that epoch (1-based).
            evaluate: Scores the val split after every epoch (when it can select).
            desc: Progress-bar label.
            epoch_log: Where a line per epoch goes (e.g. the end-to-end recipe's log); None
                shows the numbers on the progress bar only.

        Returns:
            The per-epoch history: ``epoch``, ``train_loss``, ``lr`` and, when selecting on
            val, ``val_<metric>`` and ``val_loss``.

        Raises:
            ValueError: an epoch without any batch.
        """
        from tqdm.auto import tqdm

        select_on_val = evaluate.selects_on_val()
        resumed = self.epoch > 0
        main = self.parallel.is_main  # one worker writes the curves and the lines
        curves = TrainingLog(self.run_dir / "tensorboard", purge_step=(
            self.epoch * self.steps_per_epoch + 1 if resumed else None)) if main else None
        progress = tqdm(range(self.epoch + 1, self.config.epochs + 1), desc=desc,
                        disable=None if main else True)
        self._curves = curves
        try:
            for epoch in progress:
                if self.config.patience and self.since_best >= self.config.patience:
                    break  # early-stopped (a resumed run may have stopped before it was killed)
                record = {"epoch": epoch, "train_loss": self._train_epoch(batches(epoch)),
                          "lr": self.scheduler.get_last_lr()[0]}
                if select_on_val:
                    val = evaluate("val")
                    record[f"val_{self.metric}"], record["val_loss"] = (
                        val.metrics.get(self.metric), val.loss)
                    value = val.metrics.get(self.metric, float("nan"))
                    # Small val splits saturate (top-1 = 1 after a few epochs): ties on val loss.
                    score = (value if self.higher_is_better else -value, -val.loss)
                else:
                    score = (-record["train_loss"],)
                score = tuple(-math.inf if math.isnan(s) else s for s in score)
                self.epoch = epoch
                self.history.append(record)
                if curves is not None:
                    curves.add(record)
                progress.set_postfix({k: round(v, 4) for k, v in record.items()
                                      if k != "epoch" and v is not None})
                self._keep_best_and_save(score)
                if epoch_log is not None and main:
                    epoch_log(epoch_line(record, self.config.epochs,
                                         best=self.best_epoch == epoch))
            selection = f"val_{self.metric}" if select_on_val else "train_loss"
            if curves is not None:
                curves.add_hparams(asdict(self.config), {
                    f"hparams/best_{selection}": self.history[self.best_epoch - 1].get(selection),
                    "hparams/best_epoch": self.best_epoch})
        finally:
            self._curves = None
            if curves is not None:
                curves.close()
        self.model.load_state_dict(self.best_state, strict=self.state_keys is None)
        return self.history

    def _train_epoch(self, batches: Iterable[Batch]) -> float:
        """One pass over ``batches``; the mean training loss per video (over every worker's
        videos in a data-parallel run)."""
        self.model.train()
        total_loss, seen = 0.0, 0
        parallel = self.parallel
        for i, batch in enumerate(batches):
            inputs, targets, real = batch if len(batch) == 3 else (*batch, None)
            real = 0 if inputs is None else len(targets) if real is None else real
            weight = 1.0
            if parallel.enabled:  # every worker steps together, or none does
                counts = parallel.all_gather(real if inputs is not None else -1)
                if min(counts) < 0 or not sum(counts):
                    continue  # a worker has no batch at all: nobody steps
                weight = real * parallel.world_size / sum(counts)
            elif not real:
                continue
            maybe_crash("train_step", f"rank{parallel.rank}-epoch{self.epoch + 1}-step{i}")
            loss = self.step(inputs, targets, weight=weight)
            step_sum = parallel.all_sum([loss * real])[0] if parallel.enabled else loss * real
            step_loss = step_sum / (sum(counts) if parallel.enabled else real)
            if self._curves is not None:  # global step: epochs done × steps per epoch + i + 1
                self._curves.add_step(self.epoch * self.steps_per_epoch + i + 1, step_loss)
            total_loss += loss * real
            seen += real
        if parallel.enabled:
            total_loss, seen = parallel.all_sum([total_loss, seen])
        if not seen:
            raise ValueError(f"epoch {self.epoch + 1} had no training batch")
        return total_loss / seen

    def _keep_best_and_save(self, score: tuple) -> None:
        """Keep the weights of the epoch just run if it is the best so far (else count it for
        early stopping); write ``checkpoint_last.pt`` and, at a new best, ``checkpoint.pt``."""
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.since_best = score, self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self._state().items()}
        else:
            self.since_best += 1
        checkpoint = self.checkpoint()  # every worker: it gathers their RNG states
        if not self.parallel.is_main:
            return
        last = self.run_dir / "checkpoint_last.pt"
        # Written under a temporary name and renamed: a kill mid-save keeps the previous file.
        save_checkpoint(checkpoint, last)
        if improved:  # the same file: a second name, swapped in atomically
            tmp = self.run_dir / ".checkpoint.pt.tmp"
            tmp.unlink(missing_ok=True)
            os.link(last, tmp)
            os.replace(tmp, self.run_dir / "checkpoint.pt")

    def _state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return state if self.state_keys is None else {k: state[k] for k in self.state_keys}

    def checkpoint(self) -> dict:
        """The recipe's fields, ``epoch``, and under ``resume`` what :meth:`restore` needs
        (in a data-parallel run: the number of workers and each worker's RNG states; every
        worker must call it, since it gathers them)."""
        rng = rng_state(self.generators)
        ranks = self.parallel.all_gather_object(rng) if self.parallel.enabled else None
        return {
            **self.checkpoint_fields(),
            "epoch": self.epoch,
            "resume": {
                "model": {k: v.detach().cpu() for k, v in self._state().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "world_size": self.parallel.world_size,
                **({"rng_ranks": ranks} if ranks is not None else {}),
                "history": self.history,
                "best_score": list(self.best_score),
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
            },
        }

    def restore(self, last: dict | str | Path, best: dict | str | Path) -> None:
        """Continue a stopped run: the state of ``last`` (``checkpoint_last.pt``), the best
        weights of ``best`` (``checkpoint.pt``); :meth:`fit` then goes on from the next epoch
        and draws what the uninterrupted run would have drawn.

        Args:
            last, best: The checkpoints' content, or their files.

        Raises:
            ValueError: a file is empty, truncated or not a checkpoint of a training run
                (:func:`heads.runs.read_checkpoint`), or it was written by a data-parallel run
                of another number of workers; one line naming it.
        """
        last, best = (read_checkpoint(c, required=("epoch", "resume"))
                      if isinstance(c, (str, Path)) else c for c in (last, best))
        resume = last["resume"]
        world_size = resume.get("world_size", 1)
        if world_size != self.parallel.world_size:
            raise ValueError(f"the checkpoint was written by a run of {world_size} data-parallel "
                             f"worker(s), this one has {self.parallel.world_size}: resume it with "
                             f"--data-parallel {world_size} (each worker's RNG states and slice "
                             "of the batches are the run's)")
        self.model.load_state_dict(resume["model"], strict=self.state_keys is None)
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        self.scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng_ranks"][self.parallel.rank] if self.parallel.enabled
                      else resume["rng"], self.generators)
        self.epoch, self.history = last["epoch"], list(resume["history"])
        self.best_score, self.best_epoch = tuple(resume["best_score"]), resume["best_epoch"]
        self.since_best = resume["since_best"]
        device = next(iter(self.model.state_dict().values())).device
        self.best_state = {k: v.to(device) for k, v in best["resume"]["model"].items()}

def report(evaluate: Evaluator, trainer: Trainer, *, task, video_ids: dict[str, list[str]],
           **fields) -> tuple[dict, dict[str, SplitEval]]:
    """The trained (best) model on every split next to the majority baseline.

    Args:
        evaluate: The recipe's evaluator.
        trainer: The trainer after :meth:`Trainer.fit`.
        task: The :class:`catalogs.base.Task`.
        video_ids: Split → video ids, in the order of the evaluator's targets.
        **fields: Recipe fields put after ``task`` and ``kind`` (head, seed, ...).

    Returns:
        ``(results, evals)``: the content of ``metrics.json`` (``selection``, ``num_videos``,
        ``metrics``, ``baseline``, ``details`` per split, ``history``), and each split's
        :class:`SplitEval` (empty outputs are (0, K)).
    """
    selection_metric = f"val_{trainer.metric}" if evaluate.selects_on_val() else "train_loss"
    results = {
        "task": task.name, "kind": task.kind, **fields,
        "selection": {
            "metric": selection_metric,
            "best_epoch": trainer.best_epoch,
            "best_value": trainer.history[trainer.best_epoch - 1].get(selection_metric),
            "num_epochs_run": len(trainer.history),
        },
        "num_videos": {s: len(video_ids[s]) for s in SPLITS},
        "metrics": {}, "baseline": {}, "details": {}, "history": trainer.history,
    }
    evals = {}
    for split in SPLITS:
        evals[split] = split_eval = evaluate(split)
        if not len(split_eval.positions):
            split_eval.outputs = np.zeros((0, task.num_outputs), np.float32)
        results["metrics"][split] = split_eval.metrics
        results["details"][split] = details(task.kind, split_eval.outputs, split_eval.targets,
                                            task.classes)
        results["baseline"][split] = majority_baseline(
            evaluate.targets["train"], evaluate.targets[split], task.kind)
    return results, evals

