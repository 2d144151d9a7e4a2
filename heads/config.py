"""The configs of the two training commands, composed from one shared part.

:class:`RunConfig` holds what every training run has, cached or end to end: the task and its
catalog, the head, the optimisation (AdamW, the named learning-rate schedule, clipping) and the
loop (epochs, early stopping, seed, device). Its fields are declared and checked here once.
:class:`TrainConfig` (``heads train``, cached features) adds where the tokens come from;
:class:`heads.finetune.config.FinetuneConfig` (``heads finetune``) adds the encoders, frames and
decoding, and sets smaller defaults for the loop (a step there decodes and encodes pixels).

Field defaults are the lowest layer; ``heads/configs/<head>.toml``, a user's ``--config`` file
and flags go on top (:mod:`heads.config_files`). Every run directory stores the resolved config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The fields every training run has (see the module docstring).

    Two contracts with the heads, besides their ``forward`` (:mod:`heads.loop`):

    - optimiser settings: a parameter with an ``_optim`` dict attribute (``lr``,
      ``weight_decay``) gets its own AdamW group (:func:`heads.optim.param_groups`), scaled by
      the same schedule as ``lr``; every other parameter trains at ``lr`` with
      ``weight_decay`` on matrices only.
    - auxiliary loss: a head may set a tensor attribute ``aux_loss`` in each training forward
      (a scalar already weighted, e.g. STAN's distillation term; None when it has none); the
      loop adds it to the task loss before ``backward``, and ``train_loss`` includes it.
    """

    task: str  # task of the catalog to learn (`--task`); its kind picks loss and metrics
    dataset: str = "demo"  # catalog key (`catalogs.get_catalog`); features must be from it
    data_root: str | None = None  # catalog root; None means data/<dataset>
    # Catalog-specific factory options, as for `pipeline extract` (e.g. {"variant": "small"} for
    # the demo, {"labels": "labels.csv"} for a folder); must match what the features came from.
    catalog_options: dict = field(default_factory=dict)
    head: str | None = None  # registry key of the head (`heads list`); None = the command's
    plan: str | None = None  # sampling plan of the inputs; None = the head's / preset's
    head_kwargs: dict = field(default_factory=dict)  # passed to create_head (`--head-kwarg`)
    runs_dir: str = "runs"  # parent of the run directories
    epochs: int = 50  # upper bound; early stopping usually ends sooner on small datasets
    batch_size: int = 16  # videos per step; LVU-sized datasets have only hundreds of videos
    lr: float = 3e-4  # peak learning rate after warm-up
    weight_decay: float = 0.01  # decay on weight matrices only (not biases / norms)
    # `adamw`, or `sgd` (VTN §4.1: SGD, momentum 0.9; official: Nesterov, decay 1e-4).
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # Learning-rate schedule, by name (heads.optim.SCHEDULES): `warmup_cosine`, linear warm-up
    # over warmup_epochs then cosine decay to 0 at the last epoch's last step (warmup_epochs = 0:
    # plain cosine, VTN's R50/101 schedule); `steps`, the lr times lr_gamma at each epoch of
    # lr_milestones (VTN's ViT-B schedule: 13, 24), after the same warm-up.
    schedule: str = "warmup_cosine"
    lr_milestones: tuple[int, ...] = ()  # `steps`: epochs at which the lr is multiplied
    lr_gamma: float = 0.1  # `steps`: the factor
    warmup_epochs: int = 2  # linear warm-up keeps early transformer updates from diverging
    grad_clip: float = 1.0  # max global gradient norm
    patience: int = 10  # stop after this many epochs without val improvement; 0 = never
    seed: int = 0  # seeds init, dropout and shuffling: same seed, same run
    # `auto` (a CUDA GPU when torch sees one, else the CPU: heads.runtime), `cpu`, `cuda`,
    # `cuda:N`. Under --data-parallel each worker takes the GPU Ray Train gives it.
    device: str = "auto"
    # Autocast: `auto` (bf16 on a CUDA GPU with bf16, else fp32), `fp32`, `bf16`, `fp16` (with
    # a loss scaler). Weights and optimiser states stay fp32 (heads.runtime).
    precision: str = "auto"
    # Workers of a data-parallel run (Ray Train's TorchTrainer, DDP: heads.parallel); 1 runs
    # in this process. batch_size is per worker: the global batch is batch_size x workers.
    data_parallel: int = 1
    # CPUs Ray reserves for each data-parallel worker; its torch threads follow.
    cpus_per_worker: float = 1.0
    # Data-parallel runs: times Ray Train starts the workers again after one fails (they
    # resume from the run's last checkpoint); 0 fails the run with the worker's error.
    max_failures: int = 0
    # Backbones with BatchNorm under --data-parallel: batch statistics over the global batch
    # (torch.nn.SyncBatchNorm) instead of each worker's own.
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        from heads.optim import SCHEDULES
        from heads.runtime import check_device_name, check_precision_name

        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        checks = {
            "--epochs": (self.epochs >= 1, "at least 1", self.epochs),
            "--batch-size": (self.batch_size >= 1, "at least 1", self.batch_size),
            # None: left to a recipe's own default (heads finetune's presets), checked there.
            "--lr": (self.lr is None or self.lr > 0, "positive", self.lr),
            "--weight-decay": (self.weight_decay is None or self.weight_decay >= 0,
                               "non-negative", self.weight_decay),
            "--warmup-epochs": (self.warmup_epochs is None or self.warmup_epochs >= 0,
                                "non-negative", self.warmup_epochs),
            "--grad-clip": (self.grad_clip > 0, "positive", self.grad_clip),
            "--patience": (self.patience >= 0, "non-negative", self.patience),
            "--cpus-per-worker": (self.cpus_per_worker > 0, "positive", self.cpus_per_worker),
            "--max-failures": (self.max_failures >= 0, "non-negative", self.max_failures),
            "--optimizer": (self.optimizer in OPTIMIZERS, " or ".join(OPTIMIZERS),
                            self.optimizer),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)", self.momentum),
            "lr_gamma": (0 < self.lr_gamma <= 1, "in (0, 1]", self.lr_gamma),
            "lr_milestones": (all(m >= 1 for m in self.lr_milestones), "epochs >= 1",
                              self.lr_milestones),
            **self._checks(),
        }
        for flag, (ok, wanted, value) in checks.items():
            if not ok:
                raise ValueError(f"{flag} must be {wanted}, got {value}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}")
        check_device_name(self.device)
        check_precision_name(self.precision)
        if not isinstance(self.data_parallel, int) or self.data_parallel < 1:
            raise ValueError(f"--data-parallel must be a number of workers >= 1, got "
                             f"{self.data_parallel!r}")
        reserved = {"in_dim", "num_outputs"} & set(self.head_kwargs)
        if reserved:
            raise ValueError(
                f"--head-kwarg cannot set {', '.join(sorted(reserved))}: they come from the "
                f"{self._inputs} and the task"
            )

    # What gives the head its input dims (for the --head-kwarg error).
    _inputs = "inputs"

    def open_catalog(self):
        """The catalog this run learns from (``catalogs.get_catalog``).

        Raises:
            KeyError: unknown dataset (the message lists the valid ones).
            ValueError: the catalog rejects ``catalog_options``.
        """
        from catalogs import get_catalog

        try:
            return get_catalog(self.dataset, root=self.data_root, **self.catalog_options)
        except TypeError as err:
            raise ValueError(f"catalog {self.dataset!r} rejected its options ({err}); check "
                             "--catalog-option") from err

    def _checks(self) -> dict[str, tuple[bool, str, object]]:
        """A subclass's own ``{flag: (ok, wanted, value)}`` range checks."""
        return {}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Everything that defines a ``heads train`` run (cached features); stored in the run
    directory and the checkpoint. The shared fields and both head contracts: :class:`RunConfig`.
    """

    head: str = "stan"  # registry key of the head (`heads list`)
    features: tuple[str, ...] = ()  # one backbone or feature-set name per stream; () = head default
    # LVU protocol (ViS4mer §5.1; its evaluation from the official code, heads.windows): train
    # on random windows of this many seconds, evaluate on every full window at eval_stride_sec,
    # probabilities averaged; 0 = whole videos; None = the head's (vis4mer: 60).
    window_sec: float | None = None
    eval_stride_sec: float = 1.0  # seconds between evaluation windows (official ViS4mer: 1)
    # VTN protocol (§4.1): train on a random clip of train_clip_sec seconds (2.56 or 5.12)
    # subsampled to train_clip_frames tokens (16 or 32), evaluate on the whole video (the `full`
    # plan's 250 frames); 0 = off. Exclusive with window_sec.
    train_clip_sec: float = 0.0
    train_clip_frames: int = 16
    store: str = "store"  # feature store root written by `pipeline extract`
    # Where tokens live while training: `preload` (RAM), `stream` (read from the store part by
    # part every epoch; patch tokens of LVU-sized datasets), `auto` (stream when preloading
    # would take over a quarter of the RAM). See heads.data.load_task_data.
    data_loading: str = "auto"
    stream_cache_mib: float = 1024.0  # parts kept in RAM while streaming
    # Per-dimension feature standardisation on the train split's statistics. No paper does it
    # (longvid's deviation, docs/fidelity.md); false feeds the stored features as they are.
    standardize: bool = True
    config_files: tuple[str, ...] = ()  # TOML files the config was built from (provenance)

    _inputs = "feature sets"

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "config_files", tuple(self.config_files))
        super().__post_init__()
        if self.data_loading not in ("preload", "stream", "auto"):
            raise ValueError(
                f"--data-loading must be preload, stream or auto, got {self.data_loading!r}"
            )
        if self.stream_cache_mib <= 0:
            raise ValueError(f"stream_cache_mib must be positive, got {self.stream_cache_mib}")
        if self.train_clip_sec > 0 and (self.window_sec or 0) > 0:
            raise ValueError(
                f"train_clip_sec {self.train_clip_sec} and --window-sec {self.window_sec} are two "
                "training protocols (VTN's clips, ViS4mer's windows); set one of them to 0"
            )

    def _checks(self) -> dict[str, tuple[bool, str, object]]:
        return {"--window-sec": (self.window_sec is None or self.window_sec >= 0,
                                 "non-negative", self.window_sec),
                "--eval-stride-sec": (self.eval_stride_sec > 0, "positive", self.eval_stride_sec),
                "train_clip_sec": (self.train_clip_sec >= 0, "non-negative", self.train_clip_sec),
                "train_clip_frames": (self.train_clip_frames >= 1, "at least 1",
                                      self.train_clip_frames)}
