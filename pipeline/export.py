"""Hand a feature set out as files other tools read (``pipeline export``).

Export layouts (:func:`export_features`), all importable again:

- ``h5``: one group per video at its id, a ``/`` in the id becoming nested groups
  (``show/ep1`` → ``/show/ep1/features``), holding ``features`` (T, D) or (T, N, D) in the
  stored dtype, ``start_sec``/``end_sec`` (T,) float32 seconds and ``scene_idx`` (T,) int32.
  Root attributes: ``spec`` (JSON), ``schema_version``, ``feature_set``, ``fingerprint``,
  ``token_kind``, ``dim``, ``dtype``.
- ``npy``: ``<video_id>.npy`` per video (``/`` → sub-directories), ``timestamps.parquet``
  (``video_id``, ``token_idx``, ``start_sec``, ``end_sec``, ``scene_idx``; one row per token)
  and ``spec.json`` (the same fields as the h5 root attributes).
- ``video_features``: the layout of v-iashin/video_features,
  ``<feature_dir>/<video_id>_<stream>.npy`` (T, D) or (T, N, D) in the stored dtype, with
  ``<video_id>_fps.npy`` (a float64 scalar: the fps the video was imported with, else 1 / its
  last token's duration) and ``<video_id>_timestamps_ms.npy`` ((T,) float64 start times, ms);
  ``feature_dir`` is ``<feature_type>[/<model>]`` and ``spec.json`` lies at the root. The
  layout has no end times and no scenes: import gives token t the end ``start[t + 1]``, and
  the last token the duration of the one before it (1 / fps when alone), so a feature set
  imported from this layout comes back bit-identical; others lose their end times and scenes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from pipeline.interop import (
    _VIDEO_PARTS,
    VIDEO_FEATURES_KEYS,
    VIDEO_FEATURES_META,
    split_video_features_name,
)
from pipeline.store import SCHEMA_VERSION, FeatureSet, FeatureStore

EXPORT_FORMATS = ("h5", "npy", "video_features")


def export_features(
    store_root: str | Path,
    feature_set: str,
    out_path: str | Path,
    *,
    format: str = "h5",
    video_ids: list[str] | None = None,
    feature_dir: str | None = None,
    stream: str | None = None,
) -> Path:
    """Write a feature set's ``ok`` videos as one HDF5 file or a directory of .npy files.

    Layouts are in the module doc; a ``/`` in a video id becomes a nested h5 group or a
    sub-directory. The output is built under a temporary name beside ``out_path`` and renamed
    into place when complete, so a reader never sees half of it.

    Args:
        store_root: Feature store directory.
        feature_set: Feature-set name (see ``pipeline ls``).
        out_path: The .h5 file or the directory to create; must not exist.
        format: ``h5``, ``npy`` or ``video_features``.
        video_ids: Export only these; default every ``ok`` video.
        feature_dir: video_features only: the ``<feature_type>[/<model>]`` directory under
            ``out_path``; default the one the feature set was imported from, else its backbone.
        stream: video_features only: the file key, ``<video_id>_<stream>.npy``; default the
            one it was imported from, else its backbone.

    Returns:
        ``out_path``.

    Raises:
        KeyError: no such feature set, or a requested video is missing or not ``ok``.
        FileExistsError: ``out_path`` exists.
        ValueError: unknown format, nothing to export, a video id that cannot name a file
            or h5 group (in video_features: one with a ``/``, or one its file name would not
            give back), a bad ``feature_dir``/``stream``, or a video_features video whose fps
            is unknown and whose last token lasts 0 s.
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
    if format == "video_features":
        where = _video_features_names(fs.spec, ids, feature_dir, stream)
    elif feature_dir is not None or stream is not None:
        raise ValueError("feature_dir and stream apply to format='video_features' only")
    out = Path(out_path)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"feature_set": fs.name, "schema_version": SCHEMA_VERSION,
            **{k: fs.attrs[k] for k in ("fingerprint", "token_kind", "dim", "dtype")},
            "spec": fs.spec}
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    try:
        if format == "video_features":
            _write_video_features(tmp, fs, ids, rows, meta, *where)
        else:
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


def _video_features_names(spec: dict, ids: list[str], feature_dir: str | None,
                          stream: str | None) -> tuple[str, str]:
    """``(feature_dir, stream)`` to write, checked so that import reads back the same ids.

    Raises:
        ValueError: a bad directory or stream, or an id the layout cannot carry.
    """
    source = spec.get("imported_from") or {}
    if source.get("format") != "video_features":
        source = {}
    backbone = str(spec.get("backbone") or "features")
    stream = stream or source.get("stream") or backbone
    feature_dir = feature_dir or source.get("feature_dir") or stream
    parts = feature_dir.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"feature_dir {feature_dir!r} must be <feature_type>[/<model>], "
                         "relative, without empty, '.' or '..' parts")
    if not stream or "/" in stream or stream in VIDEO_FEATURES_META:
        raise ValueError(f"stream {stream!r} cannot name video_features files; give another")
    if stream not in (*VIDEO_FEATURES_KEYS, *parts[-2:]):
        raise ValueError(f"stream {stream!r} is neither a video_features key nor a part of "
                         f"feature_dir {feature_dir!r}, so import would not find it; use "
                         f"feature_dir '{stream}' or '{stream}/<model>'")
    keys = {*VIDEO_FEATURES_KEYS, *VIDEO_FEATURES_META, *parts[-2:]}
    for video_id in ids:
        if "/" in video_id or video_id.startswith("."):
            raise ValueError(
                f"video id {video_id!r}: the video_features layout names files by a plain "
                "video name; export with format='npy' or leave it out with video_ids="
            )
        for key in (stream, *VIDEO_FEATURES_META):
            if split_video_features_name(f"{video_id}_{key}", keys) != (video_id, key):
                raise ValueError(f"video id {video_id!r}: its file {video_id}_{key}.npy would "
                                 "import under another id; export with format='npy'")
    return feature_dir, stream


def _write_video_features(tmp: Path, fs: FeatureSet, ids: list[str], rows: dict, meta: dict,
                          feature_dir: str, stream: str) -> None:
    out = tmp / feature_dir
    out.mkdir(parents=True)
    for video_id in ids:
        video = fs.read(video_id, row=rows[video_id])
        fps = json.loads(rows[video_id].get("info_json") or "{}").get("fps")
        if fps is None:  # so that import gives a lone token its duration back
            last_sec = float(video.end_sec[-1]) - float(video.start_sec[-1])
            if not last_sec > 0:
                raise ValueError(f"video {video_id} has no fps and its last token lasts "
                                 f"{last_sec} s: video_features' fps file cannot be written; "
                                 "export with format='npy'")
            fps = 1.0 / last_sec
        np.save(out / f"{video_id}_{stream}.npy", video.tokens)
        np.save(out / f"{video_id}_fps.npy", np.array(fps, dtype=np.float64))
        # float32 seconds -> float64 ms is exact enough that import's / 1000 gives them back
        np.save(out / f"{video_id}_timestamps_ms.npy", video.start_sec.astype(np.float64) * 1000)
    (tmp / "spec.json").write_text(json.dumps(meta, indent=2, default=str))
