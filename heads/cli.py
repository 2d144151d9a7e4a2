"""``heads``: train temporal heads on cached features (console script ``heads``).

Thin: parse flags, build a :class:`heads.config.TrainConfig`, call the library. Torch is imported
inside the commands so ``heads --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heads import cli_common as shared
from heads.cli_common import check_device, check_store, parse_key_values, user_errors
from pipeline.cli import LogLevel, Verbose, name_list_values, setup_logging

app = typer.Typer(
    help="Train and inspect temporal heads on features from `pipeline extract`.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(verbose: Verbose = 0, log_level: LogLevel = None) -> None:
    # No docstring: the app's help stays the one given to typer.Typer above.
    setup_logging(verbose, log_level)


# Help is Rich markup: "\[" (in r-strings) keeps "[datasets.<dataset>]" from being read as a tag.

# Options shared by the commands that apply a trained run.
WhichCheckpoint = Annotated[str, typer.Option(help="Checkpoint: best or last.")]
RunStore = Annotated[str | None, typer.Option(help="Feature store root (default: the run's).")]


@app.command()
def train(
    task: Annotated[
        str | None, typer.Option(help="Task of the catalog to learn, e.g. most_screen_time (demo).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="TOML file of TrainConfig keys; over the head's "
                     r"heads/configs/<head>.toml (and its \[datasets.<dataset>] table), under "
                     "the flags."),
    ] = None,
    dataset: shared.Dataset = None,
    data_root: shared.DataRoot = None,
    variant: shared.Variant = None,
    catalog_option: shared.CatalogOption = None,
    head: Annotated[str | None, typer.Option(help="Head to train (see `heads list`).")] = None,
    features: Annotated[list[str] | None, typer.Option(
        "--features", metavar="NAME", help="Backbone or exact feature-set name, once per "
        "stream in the head's order (stan: spatial then temporal). Default: the head's config "
        "file (stan → resnet18 + r2plus1d_18).")] = None,
    plan: shared.Plan = None,
    window_sec: Annotated[
        float | None,
        typer.Option(help="LVU protocol: train on random windows of this many seconds, evaluate "
                     "every full window (probabilities averaged); 0 = whole videos (default: "
                     "the head's)."),
    ] = None,
    eval_stride_sec: Annotated[float | None, typer.Option(
        help="LVU protocol: seconds between evaluation window starts (default 1, official)."
    )] = None,
    store: Annotated[str | None, typer.Option(help="Feature store root.")] = None,
    runs_dir: shared.RunsDir = None,
    epochs: shared.Epochs = None,
    batch_size: shared.BatchSize = None,
    lr: shared.Lr = None,
    weight_decay: shared.WeightDecay = None,
    schedule: shared.Schedule = None,
    warmup_epochs: shared.WarmupEpochs = None,
    grad_clip: shared.GradClip = None,
    patience: shared.Patience = None,
    seed: shared.Seed = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="Run this many seeds (seed, seed+1, ...) and report mean ± standard "
                     "error. Default: the dataset's protocol (lvu: 5), else one run."),
    ] = None,
    device: shared.Device = None,
    precision: shared.Precision = None,
    data_parallel: shared.DataParallel = None,
    cpus_per_worker: shared.CpusPerWorker = None,
    max_failures: shared.MaxFailures = None,
    address: shared.Address = None,
    head_kwarg: shared.HeadKwarg = None,
    data_loading: Annotated[
        str | None,
        typer.Option(help="preload (tokens in RAM), stream (read from the store part by part "
                     "every epoch), or auto: stream when preloading would take over a quarter "
                     "of the RAM (default)."),
    ] = None,
    end_to_end: Annotated[
        bool,
        typer.Option("--end-to-end", help="Train backbone(s) and head together from decoded "
                     "frames instead of cached features: the `heads finetune` recipe, with its "
                     "defaults for everything not given here (see `heads finetune --help`)."),
    ] = False,
    preset: Annotated[
        str | None,
        typer.Option(help="--end-to-end: stan_small, stan_large, vtn or stat (default: from "
                     "--head: stan → stan_small, longformer → vtn, stat → stat)."),
    ] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue the stopped run in this run directory from its checkpoint_last.pt, "
             "with its config.json: other flags may only repeat its values, except --store "
             "(the feature sets must be the run's).")] = None,
) -> None:
    r"""Train a head on cached features and print per-split metrics next to the baseline.

    Settings come from TrainConfig's defaults, then heads/configs/<head>.toml, then that file's
    \[datasets.<dataset>] table for --dataset (e.g. vis4mer's CPU-sized demo settings), then
    --config, then the flags given here. With --end-to-end, fine-tune backbones and head from
    frames. Off a terminal (a log file, a job), one line per epoch instead of a progress bar.
    """
    flags = dict(locals())  # the parameters, exactly (taken before any other local exists)
    from heads.parallel import DataParallelError
    from pipeline.weights import WeightsError  # --end-to-end builds backbones

    with user_errors(WeightsError, DataParallelError):
        check_device(flags["device"], data_parallel=flags["data_parallel"])  # before any data
        check_store(flags["store"])
        _train_command(flags)


def _train_command(flags: dict) -> None:
    """`heads train` from its flags (parameter name → value): cached, --end-to-end or
    --resume."""
    catalog_options = parse_key_values(flags["catalog_option"], "--catalog-option")
    if flags["variant"] is not None:
        catalog_options["variant"] = flags["variant"]
    shared = {key: flags[key] for key in (  # the fields of both modes (heads.config.RunConfig)
        "task", "dataset", "data_root", "head", "plan", "runs_dir", "epochs", "batch_size", "lr",
        "weight_decay", "schedule", "warmup_epochs", "grad_clip", "patience", "seed", "device",
        "precision", "data_parallel", "cpus_per_worker", "max_failures")}
    shared["catalog_options"] = catalog_options or None
    shared["head_kwargs"] = parse_key_values(flags["head_kwarg"], "--head-kwarg") or None
    cached = {key: flags[key] for key in (
        "window_sec", "eval_stride_sec", "store", "data_loading")}
    cached["features"] = tuple(flags["features"]) if flags["features"] else None
    if flags["resume"] is not None:
        _resume_cached(flags["resume"], {**shared, **cached}, address=flags["address"],
                       not_with={"--config": flags["config"], "--seeds": flags["seeds"],
                                 "--end-to-end": flags["end_to_end"], "--preset": flags["preset"]})
    elif flags["end_to_end"]:
        cached_only = {"--config": flags["config"], "--seeds": flags["seeds"], **{
            f"--{k.replace('_', '-')}": v for k, v in cached.items()}}
        _train_end_to_end(preset=flags["preset"], given=shared, address=flags["address"],
                          cached_only=[
            flag for flag, value in cached_only.items() if value is not None])
    elif flags["preset"] is not None:
        raise ValueError("--preset is an --end-to-end option")
    else:
        _train_cached({**shared, **cached}, config_file=flags["config"], seeds=flags["seeds"],
                      address=flags["address"])


def _resume_cached(run_dir: str, given: dict, *, not_with: dict, address: str | None) -> None:
    """`heads train --resume RUN_DIR`: the run's stored config, the flags checked against it
    (:func:`heads.train.resume_config`), training continued in ``run_dir``."""
    from heads.train import resume_config
    from heads.train import train as run_training

    dropped = [flag for flag, value in not_with.items() if value]
    if dropped:
        raise ValueError(f"--resume continues the run in {run_dir} with its config.json; drop "
                         f"{', '.join(dropped)}")
    run_training(resume_config(run_dir, given), resume=run_dir, log=typer.echo, address=address)


def _train_cached(given: dict, *, config_file: str | None, seeds: int | None,
                  address: str | None) -> None:
    """`heads train` on cached features: the flags given, over the files (one run, or
    ``seeds`` runs summarised)."""
    from heads.config_files import build_config
    from heads.experiments import format_seed_summary, protocol_seeds, train_seeds
    from heads.train import train as run_training

    train_config = build_config({k: v for k, v in given.items() if v is not None},
                                config_file=config_file)
    if seeds is None:
        seeds = protocol_seeds(train_config.open_catalog(), 1)
        if seeds > 1:
            typer.echo(f"{train_config.dataset}: {seeds} seeds, the dataset's protocol (mean ± "
                       "standard error); --seeds 1 for a single run")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if seeds == 1:
        run_training(train_config, log=typer.echo, address=address)
        return
    first = train_config.seed
    summary = train_seeds(train_config, range(first, first + seeds), log=typer.echo,
                          address=address)
    typer.echo(format_seed_summary(summary))


# Head → end-to-end preset of `heads train --end-to-end` when --preset is not given.
_END_TO_END_PRESETS = {"stan": "stan_small", "longformer": "vtn", "stat": "stat"}


def _train_end_to_end(*, preset, given: dict, cached_only: list[str],
                      address: str | None) -> None:
    """`heads train --end-to-end`: the flags both modes share, handed to `heads finetune`'s
    recipe (heads/finetune/recipe.py); flags that only mean something for cached features are an
    error rather than silently ignored."""
    from heads.finetune.config import FinetuneConfig
    from heads.finetune.recipe import finetune as run_finetune

    if cached_only:
        raise ValueError(f"{', '.join(cached_only)}: cached-feature option(s), not valid with "
                         "--end-to-end (see `heads finetune --help` for its options)")
    if given["task"] is None:
        raise ValueError("--task is required")
    kwargs = {k: v for k, v in given.items() if v is not None}
    if preset is None:
        head = kwargs.pop("head", None)
        if head not in _END_TO_END_PRESETS:
            raise ValueError(f"--end-to-end: no preset for head {head!r}; give --preset "
                             "(stan_small, stan_large, vtn, stat) or --head "
                             f"{' | '.join(_END_TO_END_PRESETS)}")
        preset = _END_TO_END_PRESETS[head]  # with the preset's own head
    run_finetune(FinetuneConfig(preset=preset, **kwargs), log=typer.echo, address=address)


@app.command("eval")
def eval_command(
    run: Annotated[str, typer.Argument(help="Run directory of `heads train`.")],
    which: WhichCheckpoint = "best",
    store: RunStore = None,
    device: shared.Device = "auto",
    precision: Annotated[str | None, typer.Option(
        help="Autocast (auto, fp32, bf16, fp16); default: the run's.")] = None,
) -> None:
    """Recompute a run's metrics on every split from its checkpoint."""
    from heads.evaluate import evaluate_run
    from heads.runs import format_table

    with user_errors():
        check_device(device)
        check_store(store)
        results = evaluate_run(run, which=which, store=store, log=typer.echo, device=device,
                               precision=precision)
    typer.echo(format_table(results))


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="Run directory of `heads train`.")],
    video: Annotated[
        list[str] | None,
        typer.Option(metavar="ID", help="Video id, repeatable (default: every video stored in "
                     "the run's feature sets)."),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Write the predictions here (.parquet or .csv).")
    ] = None,
    which: WhichCheckpoint = "best",
    store: RunStore = None,
    device: shared.Device = "auto",
    precision: Annotated[str | None, typer.Option(
        help="Autocast (auto, fp32, bf16, fp16); default: the run's.")] = None,
) -> None:
    """Predict stored videos (labelled or not) with a trained run's checkpoint."""
    from heads.evaluate import predict_run

    with user_errors():
        check_device(device)
        check_store(store)
        frame = predict_run(run, video_ids=video or None, which=which, store=store,
                            device=device, precision=precision,
                            log=(lambda line: typer.echo(line, err=True)) if out is None
                            else typer.echo)
    if out is None:
        for row in frame.iter_rows(named=True):
            typer.echo(f"{row['video_id']}\t{row['predicted']}")
        return
    if out.endswith(".csv"):
        import polars as pl

        lists = [n for n, t in frame.schema.items() if isinstance(t, pl.List)]
        frame.with_columns(  # CSV has no lists: join them with spaces
            pl.col(n).list.eval(pl.element().cast(pl.Utf8)).list.join(" ") for n in lists
        ).write_csv(out)
    else:
        frame.write_parquet(out)
    typer.echo(f"{frame.height} predictions written to {out}")


@app.command()
def runs(
    runs_dir: Annotated[str, typer.Option(help="Parent of the run directories.")] = "runs",
    head: Annotated[str | None, typer.Option(help="Only this head.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
) -> None:
    """Every run under --runs-dir as a table, newest first."""
    import polars as pl

    from heads.runs import list_runs

    table = list_runs(runs_dir)
    if head:
        table = table.filter(pl.col("head") == head)
    if task:
        table = table.filter(pl.col("task") == task)
    if table.is_empty():
        typer.echo(f"no runs under {runs_dir}")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        typer.echo(str(table))


@app.command()
def sweep(
    heads_: Annotated[
        str | None, typer.Option("--heads", help="Comma-separated heads, e.g. mean,stan,vis4mer.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated tasks of the catalog (default: all).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Seeds per cell: 0 .. N-1. Default: the dataset's protocol (lvu: 5), else 3.")] = None,
    dataset: Annotated[str, typer.Option(help="Catalog key.")] = "demo",
    data_root: Annotated[
        str | None, typer.Option(help="Catalog root directory (default: data/<dataset>, "
                                 "data/<dataset>-<variant> for a variant).")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="Catalog variant (demo: small).")] = None,
    store: Annotated[str, typer.Option(help="Feature store root.")] = "./store",
    runs_dir: Annotated[str, typer.Option(help="The sweep directory goes under this.")] = "runs",
    config: Annotated[
        str | None, typer.Option(help="TOML file of TrainConfig keys for every cell.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="[HEAD.]KEY=VALUE",
                     help="Override as [HEAD.]key=value, repeatable, e.g. epochs=5 or "
                     'vis4mer.features=["vit_b16"].'),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address; omit to start Ray locally.")
    ] = None,
    num_workers: Annotated[
        int | None, typer.Option(help="Parallel runs (default: as many as the cluster's CPUs "
                                      "and GPUs hold at --cpus-per-run / --gpus-per-run).")
    ] = None,
    cpus_per_run: Annotated[float | None, typer.Option(
        help="CPUs per run (its torch threads follow; default 1).")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(
        help="GPU share per run: 0.25 packs four runs on one GPU, 1 gives each its own "
             "(default 0: the CPUs). Runs land on the cluster's GPU nodes through Ray.")] = None,
    device: Annotated[str | None, typer.Option(
        help="auto (cuda when --gpus-per-run is set, else cpu; the default), cpu or cuda.")
    ] = None,
    resume: Annotated[str | None, typer.Option(
        help="A sweep directory: rerun only its runs missing or failed in its sweep.json, with "
             "the heads, tasks, seeds and overrides recorded there.")] = None,
) -> None:
    r"""Train every head × task × seed on Ray and print a summary table (mean ± standard error).

    Each head's settings are resolved as for `heads train`: its config file, the file's
    \[datasets.<dataset>] table, --config, then --set. Exits with 1 when a run failed (its
    worker may have died); `--resume SWEEP_DIR` then reruns only what did not finish.
    """
    from catalogs import default_root, get_catalog
    from heads.experiments import (RunResources, failed_cells, parse_sets, protocol_seeds,
                                   resume_sweep, run_sweep)
    from heads.runs import new_run_dir

    with user_errors():
        check_store(store)
        given_resources = {k: v for k, v in (("cpus", cpus_per_run), ("gpus", gpus_per_run),
                                             ("device", device)) if v is not None}
        if resume:
            given = [f for f, v in (("--heads", heads_), ("--tasks", tasks), ("--seeds", seeds),
                                    ("--set", set_), ("--config", config)) if v]
            if given:
                raise ValueError(f"--resume reruns the sweep recorded in {resume}/sweep.json; "
                                 f"drop {', '.join(given)}")
            table = resume_sweep(Path(resume), address=address, num_workers=num_workers,
                                 resources=RunResources(**given_resources)
                                 if given_resources else None, log=typer.echo)
        else:
            resources = RunResources(**given_resources)  # bad values fail before any work
            if not heads_:
                raise ValueError("pass --heads (e.g. --heads mean,stan), or --resume SWEEP_DIR")
            head_names = [h.strip() for h in heads_.split(",") if h.strip()]
            options = {"variant": variant} if variant else {}
            root = data_root or default_root(dataset, variant)
            catalog = get_catalog(dataset, root=root, **options)
            task_names = list(catalog.tasks) if tasks in (None, "all") else [
                t.strip() for t in tasks.split(",") if t.strip()
            ]
            overrides = parse_sets(set_ or [], head_names)
            base = {"dataset": dataset, "data_root": root, "store": store,
                    "catalog_options": options}
            overrides = {h: {**base, **values} for h, values in overrides.items()}
            out_dir = new_run_dir(Path(runs_dir), "sweep", "-".join(head_names))
            seeds = protocol_seeds(catalog, 3) if seeds is None else seeds
            table = run_sweep(catalog, heads=head_names, tasks=task_names, seeds=range(seeds),
                              overrides=overrides, out_dir=out_dir, config_file=config,
                              address=address, num_workers=num_workers, log=typer.echo,
                              resources=resources)
    if failed_cells(table):
        raise typer.Exit(code=1)


@app.command()
def explain(
    run: Annotated[str, typer.Argument(help="Run directory of a head with a CLS token.")],
    video: Annotated[str, typer.Option(help="Video id to explain.")],
    out: Annotated[str | None, typer.Option(help="PNG path (default: RUN/explain/).")] = None,
    which: WhichCheckpoint = "best",
    store: RunStore = None,
    top: Annotated[int, typer.Option(help="Print this many most-attended tokens.")] = 5,
) -> None:
    """Plot which tokens (scenes or frames, with their times) the CLS token attends to."""
    from heads.explain import explain_video

    with user_errors():
        check_store(store)
        table, png = explain_video(run, video, which=which, store=store, out=out)
    typer.echo(f"most attended tokens of {video}:")
    for row in table.sort("weight", descending=True).head(top).iter_rows(named=True):
        stream = f"{row['stream']:>12s} " if "stream" in row else ""
        typer.echo(f"  {stream}token {row['token']:4d}  "
                   f"{row['start_sec']:7.2f}-{row['end_sec']:7.2f} s  weight {row['weight']:.3f}")
    typer.echo(f"plot written to {png}")


@app.command("compare")
def compare_command(
    path: Annotated[str, typer.Argument(
        help="A sweep directory (sweep.json), a run directory, or a folder holding them (its "
             "newest sweep).")],
    table: Annotated[str, typer.Option(
        help="Reference table: a name of heads/references/ (vis4mer_lvu, stan_lvu, "
             "demo_dry_run) or a .toml path.")],
    out: Annotated[str | None, typer.Option(
        help="Folder for compare.md/.csv/.png (default: the sweep or run directory).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split to compare (default: the table's, test).")] = None,
) -> None:
    """Our results next to a paper's table: mean ± SE, the paper's value, the difference, cells
    outside 2 SE marked, and why a cell could not run."""
    from heads.compare import run_compare

    with user_errors():
        run_compare(path, table=table, out_dir=out, split=split, log=typer.echo)


@app.command("list")
def list_command(
    in_dim: Annotated[int, typer.Option(help="Feature dim D of every stream.")] = 512,
    num_outputs: Annotated[int, typer.Option(help="K, the number of outputs.")] = 3,
    paper: Annotated[bool, typer.Option(
        "--paper", help="The sizes the papers state (VTN, STAN, STAM) and STAT's GFLOPs per "
                        "clip next to ours at the paper's setting, with their ratio.")] = False,
) -> None:
    """Every registered head, its input streams and its parameter count at default size
    (`mean` counted with one stream); `--paper`: the papers' model sizes (and STAT's cost of
    one clip) against ours."""
    if paper:
        from heads.paper_sizes import format_paper_table, paper_table

        typer.echo(format_paper_table(paper_table()))
        return
    from heads.models import create_head, get_head_class, list_heads

    rows = [("head", "streams", "parameters")]
    for name in list_heads():
        cls = get_head_class(name)
        model = create_head(name, in_dim=[in_dim] * len(cls.streams), num_outputs=num_outputs)
        num_params = sum(p.numel() for p in model.parameters())
        variadic = getattr(cls, "variadic_streams", False)
        streams = "+".join(cls.streams) + (" (one per feature set)" if variadic else "")
        rows.append((name, streams, f"{num_params:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


class _PlainHelp(typer.core.TyperCommand):
    """Click's own help layout, up to 120 columns: it puts a long flag name on a line of its own,
    where Rich's option table at 80 columns cuts it (``heads finetune``: 45 options, names up
    to ``--no-train-batchnorm``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "rich_markup_mode": None})


# End-to-end fine-tuning (backbones + head from frames): its own command, see heads/finetune/cli.py.
from heads.finetune.cli import finetune as _finetune  # noqa: E402

app.command("finetune", cls=_PlainHelp, context_settings={"max_content_width": 120})(_finetune)
name_list_values(_finetune, encoder="NAME", trainable="NAME", weights="SPEC", lr_milestone="EPOCH")


if __name__ == "__main__":
    app()
