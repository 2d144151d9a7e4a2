"""Bring feature dumps made elsewhere into a store (``pipeline import``).

Import sources (:func:`import_features`):

- a directory of ``<video_id>.npy`` files, one (T, D) or (T, N, D) array each; sub-directories
  nest ids (``a/b.npy`` → ``a/b``); names starting with ``.`` are ignored. An optional
  ``timestamps.parquet`` at its root supplies timestamps (one row per token, in token order or
  with a ``token_idx`` column; columns ``video_id``, ``start_sec``, ``end_sec``, optionally
  ``scene_idx``).
- one ``.h5``/``.hdf5`` file: each dataset is a video (key = its path, so groups nest ids), as
  the ViS4mer release and common extractors write them; or each video is a group holding a
  ``features`` dataset and optional ``start_sec``/``end_sec``/``scene_idx`` datasets.

- a directory as `v-iashin/video_features <https://github.com/v-iashin/video_features>`_
  writes it (``layout="video_features"``, detected): ``<feature_type>[/<model>]/<video>_<key>.npy``
  per output key, e.g. ``resnet/resnet50/v1_resnet.npy`` (T, 2048) with ``v1_fps.npy`` (a
  scalar) and ``v1_timestamps_ms.npy`` (T,), or I3D's ``i3d/v1_rgb.npy`` and ``i3d/v1_flow.npy``.
  Ids drop the ``_<key>`` suffix; one feature key (a *stream*) is imported per feature set.

The reverse, a feature set written out as HDF5, .npy files or the video_features layout, is
:mod:`pipeline.export`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.store import SCHEMA_VERSION, FeatureSet, FeatureStore, fingerprint

DTYPES = ("float16", "float32")
TOKEN_KINDS = {"pooled": 2, "patch": 3}  # token kind -> ndim of one video's array
H5_SUFFIXES = (".h5", ".hdf5")
# Declared bytes of one video's array above which import refuses it unread: far above any
# real video's features (a 2 h video at 1 fps, 1,024 floats: 29 MB), well below a host's RAM.
MAX_BYTES_PER_VIDEO = 4 << 30
_VIDEO_PARTS = ("features", "start_sec", "end_sec", "scene_idx")  # datasets of a video group
LAYOUTS = ("npy", "video_features")  # directory layouts; an h5 file has its own
# Feature keys video_features names its files by (`<video>_<key>.npy`): the feature type, or
# I3D's streams. A key equal to the file's directory or the one above it (the feature type, as
# in `s3d/v_s3d.npy`, `resnet/resnet50/v_resnet.npy`) is recognised too, for new extractors.
VIDEO_FEATURES_KEYS = ("resnet", "clip", "timm", "r21d", "s3d", "vggish", "raft", "rgb", "flow")
VIDEO_FEATURES_META = ("fps", "timestamps_ms")  # per-video files beside the features


class _MalformedVideo(ValueError):
    """One video cannot be stored; it is recorded ``failed`` and the import goes on."""


@dataclass
class ImportSummary:
    """Counts of one import run, plus the failures with their reasons."""

    feature_set: str
    num_videos: int
    num_skipped: int  # stored by an earlier run: not read again
    num_ok: int = 0
    num_failed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    wall_sec: float = 0.0


# ------------------------------------------------------------------------------------ sources


class _Source:
    """The videos of one import source, read one at a time; use with ``contextlib.closing``."""

    format = ""

    def __init__(self, path: Path, entries: dict):
        self.path = path
        self.entries = entries  # video id -> its .npy file, or its h5 dataset path

    def close(self) -> None:
        pass

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.entries

    def video_ids(self) -> list[str]:
        return sorted(self.entries)

    def provenance(self) -> dict:
        """What the spec's ``imported_from`` records of this source."""
        return {"path": str(self.path.resolve()), "format": self.format, "sha256": self.digest()}


class _NpyDirSource(_Source):
    """A directory of ``<video_id>.npy`` files, each read through a memory map."""

    format = "npy"

    def __init__(self, root: Path):
        import polars as pl

        super().__init__(root, {
            rel.with_suffix("").as_posix(): root / rel for rel in _visible_npy(root)
        })
        self.stamps: dict[str, dict] = {}
        table = root / "timestamps.parquet"
        if table.is_file():
            frame = pl.read_parquet(table)
            if "video_id" not in frame.columns:
                raise ValueError(f"{table} has no video_id column; add one or remove the file")
            if "token_idx" in frame.columns:  # as export writes it; else rows are in token order
                frame = frame.sort("video_id", "token_idx")
            # Timestamps are (T,) per video, small next to the tokens: read them once.
            for part in frame.partition_by("video_id", maintain_order=True):
                self.stamps[part["video_id"][0]] = {
                    c: part[c].to_numpy() for c in _VIDEO_PARTS[1:] if c in part.columns
                }

    def where(self, video_id: str) -> str:
        return str(self.entries.get(video_id, self.path / f"{video_id}.npy"))

    def digest(self) -> str:
        # The sorted ids, not the bytes: re-reading every array just to name the feature set
        # would double the import's I/O, and a fixed file keeps its feature set (so re-running
        # retries it there).
        return hashlib.sha256("\n".join(self.video_ids()).encode()).hexdigest()

    def _open(self, video_id: str) -> np.ndarray:
        try:
            return np.load(self.entries[video_id], mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise _MalformedVideo(f"not a readable .npy array ({err})") from None

    def shape_dtype(self, video_id: str) -> tuple[tuple[int, ...], np.dtype]:
        array = self._open(video_id)
        return array.shape, array.dtype

    def load(self, video_id: str, dtype: np.dtype) -> tuple[np.ndarray, dict]:
        # The map is cast in buffered blocks, so a float64 file is never copied whole;
        # overflow becomes inf, which the caller reports.
        with np.errstate(over="ignore"):
            return np.array(self._open(video_id), dtype=dtype), self.stamps.get(video_id, {})


def _visible_npy(root: Path) -> list[Path]:
    """The .npy files under ``root``, relative to it, without those under a ``.`` name."""
    return sorted(rel for rel in (p.relative_to(root) for p in root.rglob("*.npy") if p.is_file())
                  if not any(part.startswith(".") for part in rel.parts))


def split_video_features_name(stem: str, keys) -> tuple[str, str] | None:
    """``(video, key)`` of a video_features file stem ``<video>_<key>``, the longest of
    ``keys`` matching; ``None`` when no key ends it after a non-empty video name."""
    for key in sorted(keys, key=len, reverse=True):
        if key and stem.endswith(f"_{key}") and len(stem) > len(key) + 1:
            return stem[: -len(key) - 1], key
    return None


def _scan_video_features(root: Path) -> tuple[dict, list[Path]]:
    """``{(directory, key): {video: path}}`` of the .npy files under ``root`` named
    ``<video>_<key>.npy`` (directory relative to ``root``), and the files named otherwise."""
    found, others, root_abs = {}, [], root.resolve()
    for rel in _visible_npy(root):
        here = (root_abs / rel).parent
        keys = {*VIDEO_FEATURES_KEYS, *VIDEO_FEATURES_META, here.name, here.parent.name}
        split = split_video_features_name(rel.stem, keys)
        if split is None:
            others.append(rel)
        else:
            found.setdefault((rel.parent, split[1]), {})[split[0]] = root / rel
    return found, others


def _is_video_features(root: Path) -> bool:
    """Whether every .npy file under ``root`` is named as video_features names them, and at
    least one is an fps/timestamps_ms file or carries its directory's feature type as key."""
    found, others = _scan_video_features(root)
    here = root.resolve()
    return bool(found) and not others and any(
        key in VIDEO_FEATURES_META or key in ((here / d).name, (here / d).parent.name)
        for d, key in found
    )


class _VideoFeaturesSource(_NpyDirSource):
    """A video_features output directory (module doc): one stream's ``<video>_<key>.npy``
    files, with timestamps from each video's ``_timestamps_ms.npy`` and ``_fps.npy``.

    Raises:
        ValueError: a file not named ``<video>_<key>.npy``; several streams and no ``stream``
            (the message lists them); an unknown ``stream``; a stream in several directories.
    """

    format = "video_features"

    def __init__(self, root: Path, stream: str | None):
        found, others = _scan_video_features(root)
        if others:
            raise ValueError(
                f"{root / others[0]} is not named <video>_<key>.npy as video_features names its "
                f"files ({len(others)} such file(s)); import the directory with --layout npy"
            )
        streams: dict[str, list[Path]] = {}
        for rel_dir, key in sorted(found):
            if key not in VIDEO_FEATURES_META:
                streams.setdefault(key, []).append(rel_dir)
        names = ", ".join(sorted(streams))
        if not streams:
            raise ValueError(f"{root} holds only fps/timestamps_ms files, no features")
        if stream is None and len(streams) > 1:
            raise ValueError(f"{root} holds {len(streams)} video_features streams ({names}); "
                             "choose one with --stream")
        stream = stream if stream is not None else next(iter(streams))
        if stream not in streams:
            raise ValueError(f"no video_features stream {stream!r} in {root}; its streams: {names}")
        if len(streams[stream]) > 1:
            dirs = ", ".join(d.as_posix() for d in streams[stream])
            raise ValueError(f"stream {stream} is in {len(streams[stream])} directories of {root} "
                             f"({dirs}); import one of those directories")
        (rel_dir,) = streams[stream]
        _Source.__init__(self, root, found[(rel_dir, stream)])
        self.stamps, self.stream, self.dir = {}, stream, root / rel_dir
        self.meta = {key: found.get((rel_dir, key), {}) for key in VIDEO_FEATURES_META}
        here = self.dir.resolve()
        # The <feature_type>[/<model>] directory, for export to write the same layout again.
        self.feature_dir = (f"{stream}/{here.name}" if here.parent.name == stream != here.name
                            else here.name)

    def where(self, video_id: str) -> str:
        return str(self.entries.get(video_id, self.dir / f"{video_id}_{self.stream}.npy"))

    def digest(self) -> str:
        listing = [self.stream, self.feature_dir, *self.video_ids()]
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()

    def provenance(self) -> dict:
        return {**super().provenance(), "stream": self.stream, "feature_dir": self.feature_dir}

    def load(self, video_id: str, dtype: np.dtype) -> tuple[np.ndarray, dict]:
        tokens, _ = super().load(video_id, dtype)
        return tokens, self._stamps(video_id, len(tokens))

    def _stamps(self, video_id: str, num_tokens: int) -> dict:
        """``start_sec``/``end_sec`` (T,) float32 seconds and ``fps`` of one video; ``{}`` (or
        only ``fps``) without a timestamps_ms file.

        Token t starts at ``timestamps_ms[t] / 1000`` and ends where token t + 1 starts; the
        last lasts as long as the one before it, or ``1 / fps`` when it is the only one.
        """
        stamps, fps_path = {}, self.meta["fps"].get(video_id)
        if fps_path is not None:
            fps = _read_small(fps_path, ((), (1,)))
            if not fps.reshape(-1)[0] > 0:
                raise _MalformedVideo(f"{fps_path}: fps {fps.reshape(-1)[0]} is not positive")
            stamps["fps"] = float(fps.reshape(-1)[0])
        ms_path = self.meta["timestamps_ms"].get(video_id)
        if ms_path is None:
            return stamps
        start_sec = (_read_small(ms_path, ((num_tokens,),)) / 1000).astype(np.float32)
        if (np.diff(start_sec) < 0).any():
            raise _MalformedVideo(f"{ms_path}: timestamps decrease")
        if num_tokens == 1 and "fps" not in stamps:
            raise _MalformedVideo(f"{ms_path}: one token and no {video_id}_fps.npy beside it, so "
                                  "its end is unknown; add the fps file")
        last = np.float64(start_sec[-1])
        last += last - start_sec[-2] if num_tokens > 1 else 1.0 / stamps["fps"]
        end_sec = np.append(start_sec[1:], np.float32(last))
        return {**stamps, "start_sec": start_sec, "end_sec": end_sec}


def _read_small(path: Path, shapes: tuple) -> np.ndarray:
    """A small .npy (fps, timestamps) as float64, its shape one of ``shapes`` (checked from
    the header, before reading) and its values finite; else :class:`_MalformedVideo`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _MalformedVideo(f"{path}: not a readable .npy array ({err})") from None
    if array.shape not in shapes or array.dtype.kind not in "fiu":
        want = " or ".join(str(s) for s in shapes)
        raise _MalformedVideo(f"{path}: {array.dtype} {array.shape} is not numeric {want}")
    values = np.array(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise _MalformedVideo(f"{path}: contains NaN or inf")
    return values


class _H5Source(_Source):
    """One HDF5 file: a dataset per video, or a group per video with a ``features`` dataset.

    Nothing outside the file is ever opened: a key reached through an external link, a soft
    link leading out of the file or to nothing, external raw storage or a virtual dataset is
    listed but refused (``refused``), and fails alone with the reason.
    """

    format = "h5"

    def __init__(self, path: Path):
        import h5py

        try:
            self.file = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 file ({err})") from None
        super().__init__(path, {})
        self.refused: dict[str, str] = {}  # video id -> why it is not read
        self._seen: set = set()  # groups walked: hard links can make cycles
        self._walk(self.file, "")

    def _walk(self, group, prefix: str) -> None:
        import h5py

        if group.id in self._seen:
            return
        self._seen.add(group.id)
        members = {name: self._resolve(group, name) for name in group}  # never opens a link
        features, why_not, _ = members.get("features", (None, None, False))
        is_video = bool(prefix) and (isinstance(features, h5py.Dataset) or why_not is not None)
        if is_video:
            video_id = prefix.rstrip("/")
            self.entries[video_id] = f"{prefix}features"
            bad = [f"{n}: {why}" for n, (_, why, _) in members.items()
                   if n in _VIDEO_PARTS and why]
            if bad:
                self.refused[video_id] = "; ".join(bad)
        for name, (obj, why_not, soft) in members.items():
            if isinstance(obj, h5py.Group):
                if not soft:  # a soft link to a group is an alias: its videos are found once
                    self._walk(obj, f"{prefix}{name}/")  # a video group may nest videos
            elif not is_video:
                self.entries[f"{prefix}{name}"] = f"{prefix}{name}"
                if why_not:
                    self.refused[f"{prefix}{name}"] = why_not

    def _resolve(self, group, name: str, depth: int = 0) -> tuple[object, str | None, bool]:
        """(object, None, via_soft_link) for a member inside this file, else (None, why, _).

        A missing member gives (None, None, False). Links are inspected, never followed out.
        """
        import h5py

        link = group.get(name, getlink=True)
        if link is None:
            return None, None, False
        if isinstance(link, h5py.ExternalLink):
            return None, (
                f"external link to {Path(link.filename).name}:{link.path}, which import never "
                "opens; import that file itself, or copy the data into this one"
            ), False
        if isinstance(link, h5py.SoftLink):
            here = group.name.rstrip("/")
            path = link.path if link.path.startswith("/") else f"{here}/{link.path}"
            if depth >= 16:
                return None, f"soft link to {path} nests more than 16 links deep", True
            obj = self.file
            for part in filter(None, path.split("/")):
                found, why_not, _ = (self._resolve(obj, part, depth + 1)
                                     if isinstance(obj, h5py.Group) else (None, None, False))
                if found is None:
                    why_not = why_not or "points to nothing in this file"
                    return None, f"soft link to {path}: {why_not}", True
                obj = found
            return obj, None, True
        return group[name], None, False  # a hard link: always inside this file

    def close(self) -> None:
        self.file.close()

    def where(self, video_id: str) -> str:
        return f"{self.path}:/{self.entries.get(video_id, video_id)}"

    def digest(self) -> str:
        sha = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
        return sha.hexdigest()

    def shape_dtype(self, video_id: str) -> tuple[tuple[int, ...], np.dtype]:
        if video_id in self.refused:
            raise _MalformedVideo(self.refused[video_id])
        dataset = self.file[self.entries[video_id]]
        _check_storage(dataset)
        return dataset.shape, dataset.dtype

    def load(self, video_id: str, dtype: np.dtype) -> tuple[np.ndarray, dict]:
        # HDF5 converts while reading, through its own small buffer: no float64 copy.
        key = self.entries[video_id]
        tokens, stamps = self.file[key].astype(dtype)[()], {}
        if key.endswith("/features"):
            group = self.file[key[: -len("/features")]]
            for name in (k for k in _VIDEO_PARTS[1:] if k in group):
                part = group[name]  # links were refused by the walk
                # Checked before reading: timestamps are (T,), never a second bomb.
                if not hasattr(part, "shape") or part.shape != (len(tokens),):
                    raise _MalformedVideo(f"{name} {getattr(part, 'shape', '(a group)')} is not "
                                          f"{len(tokens)} finite numbers")
                _check_storage(part, name)
                stamps[name] = part[()]
        return tokens, stamps


def _check_storage(dataset, what: str = "") -> None:
    """Raise :class:`_MalformedVideo` for a dataset whose values are not all in this file.

    Header only: external raw storage and virtual datasets read other files; a dataset with
    unwritten chunks (or no storage at all) would read its fill value, and may declare far
    more bytes than the file holds (a 1.4 KB file declaring 1 GB).
    """
    prefix = f"{what}: " if what else ""
    if dataset.external:
        files = sorted({Path(os.fsdecode(name)).name for name, *_ in dataset.external})
        raise _MalformedVideo(f"{prefix}external storage in {', '.join(files)}, which import "
                              "never reads; copy the data into the HDF5 file")
    if dataset.is_virtual:
        files = sorted({Path(m.file_name).name for m in dataset.virtual_sources()})
        raise _MalformedVideo(f"{prefix}virtual dataset mapping {', '.join(files)}, which import "
                              "never reads; copy the data into the HDF5 file")
    if dataset.size == 0:
        return  # an empty array is reported by the shape check
    if dataset.chunks is not None:
        num_chunks = math.prod(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks))
        num_written = dataset.id.get_num_chunks()
        if num_written < num_chunks:
            raise _MalformedVideo(
                f"{prefix}only {num_written} of {num_chunks} chunks are written: the rest would "
                f"read as the fill value {dataset.fillvalue}; write the whole array"
            )
    elif dataset.id.get_storage_size() == 0:
        raise _MalformedVideo(f"{prefix}never written: it would read as the fill value "
                              f"{dataset.fillvalue}; write the whole array")


def _open_source(source: Path, layout: str | None = None, stream: str | None = None) -> _Source:
    """The source at ``source``: an h5 file, or a directory read as ``layout`` (default: the
    video_features layout when its files are named so, else ``npy``)."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: valid values are {', '.join(LAYOUTS)}")
    if source.is_dir():
        if layout == "video_features" or (layout is None and _is_video_features(source)):
            return _VideoFeaturesSource(source, stream)
        if stream is not None:
            raise ValueError(f"--stream {stream} applies to the video_features layout; {source} "
                             "is read as a directory of <video_id>.npy files")
        return _NpyDirSource(source)
    if source.is_file() and source.suffix.lower() in H5_SUFFIXES:
        if layout is not None or stream is not None:
            raise ValueError(f"{source} is an HDF5 file: --layout and --stream apply to "
                             "directories only")
        return _H5Source(source)
    if not source.exists():
        raise FileNotFoundError(f"import source {source} does not exist")
    raise ValueError(
        f"import source {source} is neither a directory of .npy files nor an "
        f"{'/'.join(H5_SUFFIXES)} file; convert it to one of those"
    )


# ------------------------------------------------------------------------------------ import


def import_features(
    store_root: str | Path,
    source: str | Path,
    *,
    dataset: str,
    backbone: str,
    plan: str,
    name: str | None = None,
    fps: float | None = None,
    token_kind: str | None = None,
    dtype: str = "float16",
    video_ids: list[str] | None = None,
    max_bytes_per_video: int = MAX_BYTES_PER_VIDEO,
    layout: str | None = None,
    stream: str | None = None,
) -> ImportSummary:
    """Store existing per-video feature dumps as a feature set, one video at a time.

    Timestamps (seconds) come from the source when it has them (h5 ``start_sec``/``end_sec``
    datasets, ``timestamps.parquet`` beside .npy files, video_features' ``_timestamps_ms.npy``:
    token t spans [ms[t], ms[t + 1]) / 1000, the last as long as the one before it, or
    1 / fps from ``_fps.npy`` when alone); else token t covers
    [t / fps, (t + 1) / fps); else ``start_sec = t``, ``end_sec = t + 1`` and the spec says
    ``"timestamps": "index"``. Each index row's ``info_json`` says which applied (and holds
    the video's ``fps`` from a video_features ``_fps.npy``). The spec records ``token_shape``
    ((D,) or (N, D)) and the source (``imported_from``).

    Args:
        store_root: Feature store directory.
        source: A directory of ``<video_id>.npy``, a video_features output directory, or one
            ``.h5``/``.hdf5`` file (module doc).
        dataset: Catalog name, recorded in the spec and the feature-set name.
        backbone: Backbone that made the features (free text, e.g. ``vit_l16``).
        plan: Sampling plan that made them (e.g. ``fps``).
        name: Feature-set name; default ``<dataset>__<backbone>__<plan>__<fingerprint[:10]>``.
        fps: Tokens per second, for videos whose source has no timestamps.
        token_kind: ``pooled`` (T, D) or ``patch`` (T, N, D); default: the first video's.
        dtype: Stored dtype, ``float16`` or ``float32``; other input dtypes are cast.
        video_ids: Import only these; an id absent from the source is recorded ``failed``.
        max_bytes_per_video: Largest array a video may declare (T x D x source itemsize,
            bytes; default :data:`MAX_BYTES_PER_VIDEO`, 4 GiB): larger ones are refused from
            their header, before anything is read or allocated.
        layout: How to read a directory, ``npy`` or ``video_features``; default: detected.
        stream: The video_features key to import (``rgb``, ``flow``, ...), when there are several.

    Returns:
        Counts and failures. A malformed video (unreadable, not numeric, wrong ndim, per-token
        shape differing from the first video's, empty, declaring over ``max_bytes_per_video``,
        NaN/inf, beyond ``dtype``'s range, bad timestamps; in HDF5 also an external link, a
        soft link leading out of the file or to nothing, external or virtual storage, unwritten
        chunks) is recorded ``failed`` with its file/key and the reason, before its data is
        read; the others are stored. Re-running skips ``ok`` videos and retries the others.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a bad argument, an unknown source format, no usable video in the source,
            a video_features directory with several streams and no ``stream`` (or an unknown
            one), or a feature set called ``name`` that was made from another spec.
    """
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: valid values are {', '.join(DTYPES)}")
    if token_kind is not None and token_kind not in TOKEN_KINDS:
        raise ValueError(f"token_kind {token_kind!r}: valid values are {', '.join(TOKEN_KINDS)}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not max_bytes_per_video > 0:
        raise ValueError(f"max_bytes_per_video must be positive, got {max_bytes_per_video}")
    source = Path(source)
    with contextlib.closing(_open_source(source, layout, stream)) as src:
        if not src.video_ids():
            raise ValueError(f"{source} holds no videos (.npy files or h5 datasets)")
        wanted = src.video_ids() if video_ids is None else sorted(set(video_ids))
        ndim, tail = _first_shape(src, wanted, TOKEN_KINDS.get(token_kind), max_bytes_per_video)
        kind = next(k for k, n in TOKEN_KINDS.items() if n == ndim)
        spec = {
            "schema_version": SCHEMA_VERSION, "dataset": dataset, "backbone": backbone,
            "plan": plan, "token_kind": kind, "dtype": dtype,
            "token_shape": list(tail),  # (D,) or (N, D): what `pipeline ls` shows
            "timestamps": "fps" if fps else "index", "fps": fps,  # for videos without their own
            "imported_from": src.provenance(),
        }
        name = name or f"{dataset}__{backbone}__{plan}__{fingerprint(spec)[:10]}"
        fs = FeatureStore(store_root).create(
            name, spec=spec, token_kind=kind, dim=tail[-1], dtype=dtype
        )
        tail = (*tail[:-1], fs.attrs["dim"])  # resuming: D is the one already stored
        done = fs.ok_ids()
        summary = ImportSummary(fs.name, len(wanted), sum(v in done for v in wanted))
        for video_id in (v for v in wanted if v not in done):
            try:
                _import_one(fs, src, video_id, np.dtype(dtype), ndim, tail, fps,
                            max_bytes_per_video)
                summary.num_ok += 1
            except _MalformedVideo as err:
                summary.failed[video_id] = f"{src.where(video_id)}: {err}"
                summary.num_failed += 1
                fs.write_status(video_id, "failed", summary.failed[video_id])
    summary.wall_sec = time.perf_counter() - t0
    return summary


def _first_shape(src: _Source, wanted: list[str], ndim: int | None,
                 max_bytes: int) -> tuple[int, tuple]:
    """(ndim, per-token shape) of the first well-formed wanted video, from its header only.

    Raises:
        ValueError: no wanted video is well formed; names the first problem.
    """
    first_error = None
    for video_id in (v for v in wanted if v in src):
        try:
            shape, src_dtype = src.shape_dtype(video_id)
            _check_shape(shape, src_dtype, ndim, None, max_bytes)
            return len(shape), shape[1:]
        except _MalformedVideo as err:
            first_error = first_error or f"{src.where(video_id)}: {err}"
    raise ValueError(
        f"no usable video in {src.path} ({first_error or 'none of the requested ids is there'});"
        " each video must be a non-empty numeric (T, D) or (T, N, D) array"
    )


def _check_shape(shape: tuple, dtype: np.dtype, ndim: int | None, tail: tuple | None,
                 max_bytes: int) -> None:
    """Raise :class:`_MalformedVideo` unless the array is (T, D)/(T, N, D) ending in ``tail``
    and declares at most ``max_bytes``."""
    if dtype.kind not in "fiu":
        raise _MalformedVideo(f"dtype {dtype} is not numeric")
    if len(shape) not in TOKEN_KINDS.values() or (ndim is not None and len(shape) != ndim):
        want = {2: "(T, D)", 3: "(T, N, D)"}.get(ndim, "(T, D) or (T, N, D)")
        raise _MalformedVideo(f"shape {shape} is not {want}")
    if 0 in shape:
        raise _MalformedVideo(f"empty array of shape {shape}")
    num_bytes = math.prod(shape) * dtype.itemsize
    if num_bytes > max_bytes:
        raise _MalformedVideo(
            f"declares {shape} {dtype} = {num_bytes:,} bytes, over the limit of {max_bytes:,} "
            "bytes per video; if the video is really this large, raise the limit "
            "(`pipeline import --max-gib-per-video`, or max_bytes_per_video)"
        )
    if tail is not None and shape[1:] != tail:
        raise _MalformedVideo(f"per-token shape {shape[1:]} differs from the first video's {tail}")


def _import_one(fs: FeatureSet, src: _Source, video_id: str, dtype: np.dtype, ndim: int,
                tail: tuple, fps: float | None, max_bytes: int) -> None:
    """Check, read, cast and store one video; raise :class:`_MalformedVideo` to fail it alone."""
    if video_id not in src:
        raise _MalformedVideo(f"video {video_id!r} is not in the import source")
    # Header only: a bad array, however large it claims to be, costs nothing.
    _check_shape(*src.shape_dtype(video_id), ndim, tail, max_bytes)
    try:
        tokens, stamps = src.load(video_id, dtype)
        if not np.isfinite(tokens).all():
            # float32 tells NaN/inf in the source from overflow of a float16 cast.
            if np.isfinite(src.load(video_id, np.dtype("float32"))[0]).all():
                raise _MalformedVideo(f"values beyond the {dtype} range; import with float32")
            raise _MalformedVideo("contains NaN or inf")
    except OSError as err:
        raise _MalformedVideo(f"cannot read ({err})") from None
    start_sec, end_sec, scene_idx, how = _timestamps(stamps, len(tokens), fps)
    info = {"timestamps": how, "source": src.where(video_id)}
    if "fps" in stamps:  # video_features' own, which export writes back
        info["fps"] = stamps["fps"]
    fs.write_video(video_id, tokens, start_sec=start_sec, end_sec=end_sec, scene_idx=scene_idx,
                   info=info)


def _timestamps(stamps: dict, num_tokens: int, fps: float | None) -> tuple:
    """(start_sec, end_sec, scene_idx, how): from the source, else from ``fps``, else indices."""
    found = {}
    for name, dt in (("start_sec", np.float32), ("end_sec", np.float32), ("scene_idx", np.int32)):
        if name in stamps:
            values = np.asarray(stamps[name])
            if (values.shape != (num_tokens,) or values.dtype.kind not in "fiu"
                    or not np.isfinite(values).all()):
                raise _MalformedVideo(f"{name} {values.shape} is not {num_tokens} finite numbers")
            found[name] = values.astype(dt)
    scene_idx = found.get("scene_idx", np.full(num_tokens, -1, np.int32))
    if "start_sec" in found and "end_sec" in found:
        if (found["end_sec"] < found["start_sec"]).any():
            raise _MalformedVideo("end_sec before start_sec for some tokens")
        return found["start_sec"], found["end_sec"], scene_idx, "file"
    # Token t covers [t / fps, (t + 1) / fps); without fps the index stands in for seconds.
    step_sec = 1.0 / fps if fps else 1.0
    start_sec = np.arange(num_tokens) * step_sec
    return start_sec, start_sec + step_sec, scene_idx, "fps" if fps else "index"
