"""Hand a feature set out as files other tools read (``pipeline export``).

Export layouts (:func:`export_features`), both importable again:

- ``h5``: one group per video at its id, a ``/`` in the id becoming nested groups
  (``show/ep1`` → ``/show/ep1/features``), holding ``features`` (T, D) or (T, N, D) in the
  stored dtype, ``start_sec``/``end_sec`` (T,) float32 seconds and ``scene_idx`` (T,) int32.
  Root attributes: ``spec`` (JSON), ``schema_version``, ``feature_set``, ``fingerprint``,
  ``token_kind``, ``dim``, ``dtype``.
- ``npy``: ``<video_id>.npy`` per video (``/`` → sub-directories), ``timestamps.parquet``
  (``video_id``, ``token_idx``, ``start_sec``, ``end_sec``, ``scene_idx``; one row per token)
  and ``spec.json`` (the same fields as the h5 root attributes).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from pipeline.interop import _VIDEO_PARTS
from pipeline.store import SCHEMA_VERSION, FeatureSet, FeatureStore

EXPORT_FORMATS = ("h5", "npy")


def export_features(
    store_root: str | Path,
    feature_set: str,
    out_path: str | Path,
    *,
    format: str = "h5",
    video_ids: list[str] | None = None,
) -> Path:
    """Write a feature set's ``ok`` videos as one HDF5 file or a directory of .npy files.

    Layouts are in the module doc; a ``/`` in a video id becomes a nested h5 group or a
    sub-directory. The output is built under a temporary name beside ``out_path`` and renamed
    into place when complete, so a reader never sees half of it.

    Args:
        store_root: Feature store directory.
        feature_set: Feature-set name (see ``pipeline ls``).
        out_path: The .h5 file or the directory to create; must not exist.
        format: ``h5`` or ``npy``.
        video_ids: Export only these; default every ``ok`` video.

    Returns:
        ``out_path``.

    Raises:
        KeyError: no such feature set, or a requested video is missing or not ``ok``.
        FileExistsError: ``out_path`` exists.
        ValueError: unknown format, nothing to export, or a video id that cannot name a file
            or h5 group.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format {format!r}: valid values are {', '.join(EXPORT_FORMATS)}")
    fs = FeatureStore(store_root).open(feature_set)
    rows = {r["video_id"]: r for r in fs.index().iter_rows(named=True)}
    ok = sorted(v for v, r in rows.items() if r["status"] == "ok")
    ids = ok if video_ids is None else sorted(set(video_ids))
    if not ids:
        raise ValueError(f"feature set {fs.name} has no ok video to export; see `pipeline status`")
    bad = sorted(set(ids) - set(ok))
    if bad:
        raise KeyError(
            f"{len(bad)} requested video(s) missing or not ok in {fs.name}: "
            f"{', '.join(bad[:5])}; see `pipeline status {fs.name}`"
        )
    _check_ids(ids, format)
    out = Path(out_path)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"feature_set": fs.name, "schema_version": SCHEMA_VERSION,
            **{k: fs.attrs[k] for k in ("fingerprint", "token_kind", "dim", "dtype")},
            "spec": fs.spec}
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    try:
        (_write_h5 if format == "h5" else _write_npy_dir)(tmp, fs, ids, rows, meta)
        os.rename(tmp, out)
    except BaseException:  # clean up, then re-raise: no temp leftovers on failure or Ctrl-C
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return out


def _check_ids(video_ids: list[str], format: str) -> None:
    """Raise ``ValueError`` for ids that would escape the output or collide in its layout."""
    wanted = set(video_ids)
    for video_id in video_ids:
        parts = video_id.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"video id {video_id!r} has an empty, '.' or '..' component and cannot name a "
                "file or h5 group; leave it out with video_ids="
            )
        parent = "/".join(parts[:-1])
        if format == "h5" and parts[-1] in _VIDEO_PARTS and parent in wanted:
            raise ValueError(
                f"video id {video_id!r} collides with the {parts[-1]!r} dataset of video "
                f"{parent!r} in the h5 layout; export with format='npy'"
            )


def _write_h5(tmp: Path, fs: FeatureSet, ids: list[str], rows: dict, meta: dict) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        for key, value in meta.items():
            f.attrs[key] = json.dumps(value) if key == "spec" else value
        for video_id in ids:
            video = fs.read(video_id, row=rows[video_id])  # one video in memory at a time
            group = f.require_group(video_id)
            group.create_dataset("features", data=video.tokens)
            for key in _VIDEO_PARTS[1:]:  # float32 seconds, int32 scenes, as stored
                group.create_dataset(key, data=getattr(video, key))


def _write_npy_dir(tmp: Path, fs: FeatureSet, ids: list[str], rows: dict, meta: dict) -> None:
    import polars as pl

    tmp.mkdir()
    frames = []  # timestamps are small, (T,) per video: one table at the end
    for video_id in ids:
        video = fs.read(video_id, row=rows[video_id])
        path = tmp / f"{video_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, video.tokens)
        frames.append(pl.DataFrame({
            "video_id": [video_id] * len(video.tokens),
            "token_idx": np.arange(len(video.tokens), dtype=np.int32),
            **{key: getattr(video, key) for key in _VIDEO_PARTS[1:]},
        }, schema_overrides={"video_id": pl.Utf8}))
    pl.concat(frames).write_parquet(tmp / "timestamps.parquet")
    (tmp / "spec.json").write_text(json.dumps(meta, indent=2, default=str))
