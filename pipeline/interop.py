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

The reverse, a feature set written out as HDF5 or .npy files, is :mod:`pipeline.export`.
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


class _NpyDirSource(_Source):
    """A directory of ``<video_id>.npy`` files, each read through a memory map."""

    format = "npy"

    def __init__(self, root: Path):
        import polars as pl

        visible = (p.relative_to(root) for p in root.rglob("*.npy") if p.is_file())
        super().__init__(root, {
            rel.with_suffix("").as_posix(): root / rel
            for rel in visible if not any(part.startswith(".") for part in rel.parts)
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


def _open_source(source: Path) -> _Source:
    if source.is_dir():
        return _NpyDirSource(source)
    if source.is_file() and source.suffix.lower() in H5_SUFFIXES:
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
) -> ImportSummary:
    """Store existing per-video feature dumps as a feature set, one video at a time.

    Timestamps (seconds) come from the source when it has them (h5 ``start_sec``/``end_sec``
    datasets, or ``timestamps.parquet`` beside .npy files); else token t covers
    [t / fps, (t + 1) / fps); else ``start_sec = t``, ``end_sec = t + 1`` and the spec says
    ``"timestamps": "index"``. Each index row's ``info_json`` says which applied.

    Args:
        store_root: Feature store directory.
        source: A directory of ``<video_id>.npy`` or one ``.h5``/``.hdf5`` file (module doc).
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
            or a feature set called ``name`` that was made from another spec.
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
    with contextlib.closing(_open_source(source)) as src:
        if not src.video_ids():
            raise ValueError(f"{source} holds no videos (.npy files or h5 datasets)")
        wanted = src.video_ids() if video_ids is None else sorted(set(video_ids))
        ndim, tail = _first_shape(src, wanted, TOKEN_KINDS.get(token_kind), max_bytes_per_video)
        kind = next(k for k, n in TOKEN_KINDS.items() if n == ndim)
        spec = {
            "schema_version": SCHEMA_VERSION, "dataset": dataset, "backbone": backbone,
            "plan": plan, "token_kind": kind, "dtype": dtype,
            "timestamps": "fps" if fps else "index", "fps": fps,  # for videos without their own
            "imported_from": {
                "path": str(source.resolve()), "format": src.format, "sha256": src.digest()
            },
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
    fs.write_video(video_id, tokens, start_sec=start_sec, end_sec=end_sec, scene_idx=scene_idx,
                   info={"timestamps": how, "source": src.where(video_id)})


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
