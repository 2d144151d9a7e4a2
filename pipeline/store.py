"""The feature store: the contract between stage 1 (``pipeline``) and stage 2 (``heads``).

Layout on disk (a Zarr v3 hierarchy plus parquet index fragments)::

    <store root>/                    Zarr group; attrs {"longvid_store": {"schema_version": 1}}
      <feature set name>/            Zarr group, one per (dataset, backbone, plan, preprocessing,
        zarr.json                    weights); attrs: schema_version, fingerprint, spec (the full
                                     extraction config), token_kind, dim, dtype, created_at
        parts/<part id>/             Zarr group written by exactly one writer, published by rename;
                                     one video, or many concatenated along T (pipeline compact)
          tokens     (T, D) or (T, N, D)   float16 by default; dims (token, channel) or
                                           (token, patch, channel)
          start_sec  (T,) float32          token start, seconds from the start of the video;
                                           dims (token,), units "s"
          end_sec    (T,) float32          token end, seconds; (token,), "s"
          scene_idx  (T,) int32            scene a token belongs to (-1 where there are no
                                           scenes); (token,)
        index/<video key>.parquet    one row per video, written last (atomic replace), with
                                     a CRC-32 per array of the video's bytes (content_hash)
        runs/<stamp>-<pid>.json      config and counts of every extraction run

Why this shape:
- writers never share a Zarr shard: every writer publishes its own part under a fresh name
  (zarr-python cannot merge partial shard writes from two processes);
- a part becomes visible only by an atomic rename, and a video counts as stored only once its
  index fragment names that part, so a crash at any point leaves nothing half-visible (on object
  stores, which cannot rename, the part is written under its final unique name and the index
  fragment, one atomic object put, is what publishes it; see :mod:`pipeline.storage`);
- nothing wrong is read silently: every chunk carries a crc32c checksum, every video a
  content hash checked on read, and a lost chunk reads as NaN (never a plausible 0);
- ragged sequences: each video's tokens are a contiguous slice (``offset``, ``num_tokens``) of
  one part, fetched without touching any other video's data.

Every part array carries zarr v3 ``dimension_names`` and CF-style ``units`` / ``long_name``
attributes (:data:`DIMENSION_NAMES`, :data:`ARRAY_ATTRIBUTES`), so xarray and zarr-python read
a part without longvid (``docs/store.md``: the layout, a zarr + polars reader, ``xr.open_zarr``);
parts written before that have no dimension names and read the same through longvid.

Feature-set names carry a fingerprint of the spec: a different config never overwrites an
existing feature set, it makes a new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.faults import maybe_crash
from pipeline.storage import Location, location, read_parquet_bytes

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "skipped")
# Columns of an index row; extra per-video facts (fps, duration, ...) live in `info_json`.
INDEX_SCHEMA = {
    "video_id": pl.Utf8,
    "status": pl.Utf8,
    "error": pl.Utf8,
    "num_tokens": pl.Int64,
    "part": pl.Utf8,
    "offset": pl.Int64,
    "duration_sec": pl.Float64,
    "updated_at": pl.Float64,
    "info_json": pl.Utf8,
    # {"algo": "crc32", "<array>": "<hex>", ...} of the video's stored bytes; null in feature
    # sets written before longvid hashed videos (see `content_hashes`)
    "content_hash": pl.Utf8,
}
_TOKEN_CHUNK = 1024  # tokens per Zarr chunk along T: ~1 MiB at D=512 float16
ARRAYS = ("tokens", "start_sec", "end_sec", "scene_idx")  # the arrays of every part
# Write chunks even when they hold only the fill value (a one-token video starting at 0 s):
# `pipeline verify` tells a lost chunk file by a chunk that is not there.
EVERY_CHUNK = {"write_empty_chunks": True}
# A lost chunk reads as its array's fill value: make that value impossible, never a plausible 0.
FILL_VALUES = {"tokens": np.nan, "start_sec": np.nan, "end_sec": np.nan,
               "scene_idx": np.iinfo(np.int32).min}
HASH_ALGO = "crc32"  # zlib's: ~2 GB/s, in the standard library
VERIFY_FIX = "`pipeline verify --fix` marks it for re-extraction"


class DamagedVideoError(ValueError):
    """A stored video's data is missing or corrupt (a user error: the fix is to redo it)."""


# What each part array is, for tools that read the store without longvid (xarray, zarr-python):
# its axes (zarr v3 `dimension_names`; tokens: (T, D) or (T, N, D)) and CF-style attributes.
DIMENSION_NAMES = {"tokens": {2: ("token", "channel"), 3: ("token", "patch", "channel")},
                   "start_sec": {1: ("token",)}, "end_sec": {1: ("token",)},
                   "scene_idx": {1: ("token",)}}
ARRAY_ATTRIBUTES = {
    "tokens": {"long_name": "backbone features per token (frame, clip or scene); a video is "
                            "a slice of the token axis, see the index"},
    "start_sec": {"units": "s", "long_name": "token start, seconds from the start of the video"},
    "end_sec": {"units": "s", "long_name": "token end, seconds from the start of the video"},
    "scene_idx": {"units": "1", "long_name": "scene of the token in its video, -1 = no scenes"},
}


def array_options(name: str, ndim: int) -> dict:
    """Keyword arguments of ``zarr.Group.create_array`` for the part array ``name`` of ``ndim``
    axes: zstd, then a crc32c checksum of every chunk (zarr v3's ``crc32c`` codec: a flipped bit
    fails to decode), an impossible fill value, every chunk written, the axes' names
    (:data:`DIMENSION_NAMES`) and the units and description (:data:`ARRAY_ATTRIBUTES`).

    Raises:
        ValueError: ``ndim`` is not one the array can have.
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    if ndim not in DIMENSION_NAMES[name]:
        raise ValueError(f"part array {name} cannot have {ndim} axes (it has "
                         f"{' or '.join(map(str, DIMENSION_NAMES[name]))})")
    return {
        "compressors": [ZstdCodec(level=0), Crc32cCodec()],
        "fill_value": FILL_VALUES[name],
        "config": EVERY_CHUNK,
        "dimension_names": DIMENSION_NAMES[name][ndim],
        "attributes": ARRAY_ATTRIBUTES[name],
    }


def content_hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """CRC-32 (hex) of each array's stored bytes (no conversion: cheap enough to check on every
    read), keyed by array name, plus ``algo``."""
    out = {"algo": HASH_ALGO}
    for name, values in arrays.items():
        out[name] = f"{zlib.crc32(np.ascontiguousarray(values)):08x}"
    return out


def check_name(name: str) -> str:
    """``name`` if it is a valid feature-set name (one visible path component).

    Raises:
        ValueError: it is empty, holds a path separator or ``..``, or starts with ``.``.
    """
    bad = (not name or "/" in name or "\\" in name or ".." in name or name.startswith(".")
           or any(ord(c) < 32 for c in name))
    if bad:
        raise ValueError(
            f"invalid feature-set name {name!r}: it must be one path component, not empty, "
            "without '/', '\\' or '..', and not starting with '.'; choose another --name"
        )
    return name


def fingerprint(spec: dict) -> str:
    """SHA-256 (hex) of ``spec`` as canonical JSON; identifies a feature set's config."""
    payload = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def video_key(video_id: str) -> str:
    """A file-name-safe, collision-free, visible key for ``video_id`` (ids may contain ``/``;
    a key never starts with ``.``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[:80]
    if slug.startswith("."):  # a dot-file would be hidden from every listing
        slug = "_" + slug[:79]
    return f"{slug}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class VideoFeatures:
    """One video's tokens as stored.

    Arrays not asked of :meth:`FeatureSet.read_many` are ``None``.

    Attributes:
        video_id: Catalog id.
        tokens: (T, D) pooled or (T, N, D) patch tokens, stored dtype.
        start_sec: (T,) token start times in seconds.
        end_sec: (T,) token end times in seconds.
        scene_idx: (T,) scene index per token, -1 where the plan has no scenes.
    """

    video_id: str
    tokens: np.ndarray
    start_sec: np.ndarray
    end_sec: np.ndarray
    scene_idx: np.ndarray


class FeatureSet:
    """One feature set inside a store: write parts, read videos, list the index.

    Obtain through :meth:`FeatureStore.create` or :meth:`FeatureStore.open`.

    Attributes:
        name: Feature-set name.
        loc: Its directory (local or fsspec, :mod:`pipeline.storage`).
        path: The local directory; ``None`` for a store behind a URL.
    """

    def __init__(self, loc: Location | Path | str):
        self.loc = loc if isinstance(loc, Location) else location(loc)
        self.path = self.loc.path
        self.name = self.loc.url.rstrip("/").rsplit("/", 1)[-1]
        self._attrs: dict | None = None

    @property
    def attrs(self) -> dict:
        """The group's attributes (spec, fingerprint, token kind, dim, dtype, ...).

        Raises:
            ValueError: its ``zarr.json`` cannot be parsed (the message names the file).
        """
        if self._attrs is None:
            try:
                meta = json.loads(self.loc.read_text("zarr.json"))
                attrs = meta.get("attributes", {})
                if not isinstance(attrs, dict) or not isinstance(attrs.get("dim", 0), int):
                    raise ValueError("its attributes are not a mapping with an integer dim")
            except (ValueError, AttributeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{self.loc.url}/zarr.json, the metadata of feature set {self.name}, cannot "
                    f"be read ({type(err).__name__}: {err}); run `pipeline verify`, then restore "
                    "the file or extract into a new store"
                ) from None
            self._attrs = attrs
        return self._attrs

    @property
    def spec(self) -> dict:
        """The extraction config that made this feature set."""
        return self.attrs["spec"]

    def __repr__(self) -> str:
        return f"FeatureSet({self.name!r})"

    # ---------------------------------------------------------------- writing

    def write_video(
        self,
        video_id: str,
        tokens: np.ndarray,
        *,
        start_sec: np.ndarray,
        end_sec: np.ndarray,
        scene_idx: np.ndarray | None = None,
        duration_sec: float | None = None,
        info: dict | None = None,
    ) -> str:
        """Store one video's tokens as a new part and publish it in the index.

        Args:
            video_id: Catalog id.
            tokens: (T, D) or (T, N, D); cast to the feature set's dtype.
            start_sec: (T,) token start times, seconds.
            end_sec: (T,) token end times, seconds.
            scene_idx: (T,) scene index per token; ``None`` stores -1.
            duration_sec: Video duration, seconds.
            info: Extra JSON-serialisable facts recorded in the index row (fps, num_frames...).

        Returns:
            The part id.

        Raises:
            ValueError: shapes disagree with each other or with the feature set's ``dim``.
        """
        import zarr

        num_tokens = len(tokens)
        if not (len(start_sec) == len(end_sec) == num_tokens):
            raise ValueError(
                f"{video_id}: {num_tokens} tokens but {len(start_sec)} start_sec and "
                f"{len(end_sec)} end_sec values"
            )
        if tokens.ndim not in (2, 3) or tokens.shape[-1] != self.attrs["dim"]:
            raise ValueError(
                f"{video_id}: tokens of shape {tokens.shape} are not (T, D) or (T, N, D) with "
                f"D the feature set's dim {self.attrs['dim']}"
            )
        if scene_idx is None:
            scene_idx = np.full(num_tokens, -1, dtype=np.int32)
        part_id = f"{video_key(video_id)}-{uuid.uuid4().hex[:8]}"
        # Without atomic renames the part goes straight to its unique final name; the index
        # fragment written below is what publishes it either way.
        tmp = f"parts/.tmp-{part_id}" if self.loc.atomic_rename else f"parts/{part_id}"
        group = zarr.open_group(store=self.loc.child(tmp).zarr_store(), mode="w", zarr_format=3)
        dtype = np.dtype(self.attrs["dtype"])
        data = {
            "tokens": np.ascontiguousarray(tokens, dtype=dtype),
            "start_sec": np.asarray(start_sec, dtype=np.float32),
            "end_sec": np.asarray(end_sec, dtype=np.float32),
            "scene_idx": np.asarray(scene_idx, dtype=np.int32),
        }
        chunk_t = max(1, min(num_tokens, _TOKEN_CHUNK))
        for name, values in data.items():
            group.create_array(name, data=values, chunks=(chunk_t, *values.shape[1:]),
                               **array_options(name, values.ndim))
        maybe_crash("mid_part", video_id)
        if self.loc.atomic_rename:
            self.loc.rename(tmp, f"parts/{part_id}")  # publish the part atomically
        maybe_crash("after_part", video_id)
        self._write_index_row(
            video_id,
            status="ok",
            num_tokens=num_tokens,
            part=part_id,
            offset=0,
            duration_sec=duration_sec,
            info=info,
            content_hash=json.dumps(content_hashes(data)),
        )
        return part_id

    def write_status(
        self,
        video_id: str,
        status: str,
        error: str,
        *,
        duration_sec: float | None = None,
        info: dict | None = None,
    ) -> None:
        """Record a video that has no tokens: ``failed`` (with the reason) or ``skipped``."""
        if status not in ("failed", "skipped"):
            raise ValueError(f"write_status takes 'failed' or 'skipped', not {status!r}")
        self._write_index_row(
            video_id, status=status, error=error, duration_sec=duration_sec, info=info
        )

    def _write_index_row(self, video_id: str, *, status: str, **fields) -> None:
        info = fields.pop("info", None)
        row = {key: None for key in INDEX_SCHEMA}
        row.update(fields)
        row.update(
            video_id=video_id,
            status=status,
            updated_at=time.time(),
            info_json=json.dumps(info or {}, default=str),
        )
        buffer = io.BytesIO()
        pl.DataFrame([row], schema=INDEX_SCHEMA).write_parquet(buffer)
        # the row appears whole or not at all
        self.loc.write_bytes(f"index/{video_key(video_id)}.parquet", buffer.getvalue())

    def relocate(self, row: dict, part_id: str, offset: int) -> None:
        """Rewrite the index fragment of ``row``'s video to name ``part_id`` at ``offset``.

        For :mod:`pipeline.compact`, which has copied the video's arrays there; every other
        field of ``row`` (an index row, ``INDEX_SCHEMA``) is kept.
        """
        self._write_index_row(
            row["video_id"],
            status=row["status"],
            error=row["error"],
            num_tokens=row["num_tokens"],
            part=part_id,
            offset=offset,
            duration_sec=row["duration_sec"],
            info=json.loads(row["info_json"] or "{}"),
            content_hash=row.get("content_hash"),
        )

    def write_run_record(self, name: str, record: dict) -> None:
        """Save one run's config and counts as ``runs/<name>.json``."""
        self.loc.mkdir("runs")
        payload = json.dumps(record, indent=2, default=str).encode()
        self.loc.write_bytes(f"runs/{name}.json", payload)

    def index_files(self) -> list[str]:
        """Names of the published index fragments (one per video)."""
        return [
            n for n in self.loc.listdir("index") if n.endswith(".parquet") and not n.startswith(".")
        ]

    def read_index_file(self, name: str) -> pl.DataFrame:
        """One index fragment (one row, every column of ``INDEX_SCHEMA``: those a fragment
        written by an older longvid lacks are null).

        Raises:
            ValueError: the fragment cannot be parsed (the message names the file).
        """
        # Whole bytes, one open: polars reading a path may reopen it for the row groups after
        # a writer replaced the fragment (compaction, a retry), and see the new file's bytes.
        data = self.loc.read_bytes(f"index/{name}")
        try:
            frame = read_parquet_bytes(data)
            missing = [c for c in INDEX_SCHEMA if c not in frame.columns]
            frame = frame.with_columns(pl.lit(None, INDEX_SCHEMA[c]).alias(c) for c in missing)
            frame = frame.select(list(INDEX_SCHEMA)).cast(INDEX_SCHEMA)
            if frame.height != 1:
                raise ValueError(f"{frame.height} rows, not one")
        except (pl.exceptions.PolarsError, ValueError, OSError) as err:
            raise ValueError(
                f"index fragment {self.loc.url}/index/{name} of feature set {self.name} cannot "
                f"be read ({type(err).__name__}: {err}); `pipeline verify --fix` drops it (its "
                "video is then extracted again)"
            ) from None
        return frame

    def open_part(self, part_id: str):
        """The Zarr group of a published part (read only).

        Its arrays raise :class:`DamagedVideoError` (naming the part, the feature set and the
        fix) where a chunk fails to decode (a failed checksum, a truncated file).
        """
        import zarr

        group = zarr.open_group(
            store=self.loc.child(f"parts/{part_id}").zarr_store(read_only=True), mode="r"
        )
        return _CheckedGroup(group, f"part {part_id} of feature set {self.name}")

    # ---------------------------------------------------------------- reading

    def index(self) -> pl.DataFrame:
        """Every recorded video: one row each, columns of ``INDEX_SCHEMA``."""
        frames = [self.read_index_file(name) for name in self.index_files()]
        if not frames:
            return pl.DataFrame(schema=INDEX_SCHEMA)
        return pl.concat(frames, how="vertical").sort("video_id")

    def ok_ids(self) -> set[str]:
        """Ids of the videos stored successfully."""
        index = self.index()
        return set(index.filter(pl.col("status") == "ok")["video_id"].to_list())

    def read(self, video_id: str, *, row: dict | None = None) -> VideoFeatures:
        """One video's tokens and timestamps, checked against its content hash.

        Raises:
            KeyError: the video is not stored in this feature set (or its extraction failed).
            DamagedVideoError: (a ValueError) its part or a chunk is missing or fails its
                checksum, or its data do not match its content hash; the message names the
                video, the feature set and the fix.
            ValueError: its index fragment cannot be parsed.
        """
        if row is None:
            name = f"{video_key(video_id)}.parquet"
            if not self.loc.exists(f"index/{name}"):
                raise KeyError(f"video {video_id!r} is not in feature set {self.name}")
            row = self.read_index_file(name).row(0, named=True)
        if row["status"] != "ok":
            raise KeyError(
                f"video {video_id!r} has status {row['status']!r} in feature set {self.name}: "
                f"{row['error']}"
            )
        try:
            return self._read_part([row], ARRAYS)[row["video_id"]]
        except Exception as err:  # zarr's errors for a missing part or chunk vary
            raise self._damage(row, err) from None

    def _damage(self, row: dict, err: Exception) -> DamagedVideoError:
        """The error for a video of ``row`` that failed to read with ``err``."""
        if isinstance(err, DamagedVideoError) and row["video_id"] in str(err):
            return err
        what = err.args[0] if isinstance(err, DamagedVideoError) else f"{type(err).__name__}: {err}"
        return DamagedVideoError(
            f"video {row['video_id']!r} of feature set {self.name} cannot be read from part "
            f"{row['part']} ({what}); {VERIFY_FIX}"
        )

    def read_many(
        self, video_ids: list[str], *, arrays: Sequence[str] = ARRAYS,
        index: pl.DataFrame | None = None,
    ) -> dict[str, VideoFeatures]:
        """Several videos, reading the index once and each part once.

        Videos are grouped by the part they live in; when the requested videos cover at least
        half of the span between the first and the last of them in a part (a compacted part,
        :mod:`pipeline.compact`), that span is fetched with one read per array and sliced.
        A part that fails to read because compaction moved its videos since the index was
        listed is looked up again in the videos' index fragments. Every array read is checked
        against the video's content hash (feature sets written before hashes: not checked).

        Args:
            video_ids: The videos.
            arrays: Which arrays to read (a subset of ``tokens``, ``start_sec``, ``end_sec``,
                ``scene_idx``); the others are ``None`` in the result.
            index: This feature set's :meth:`index`, when the caller has just read it (one
                parquet read per video: worth not repeating on large sets).

        Raises:
            KeyError: a video is missing or not ``ok``; the message names it.
            DamagedVideoError: (a ValueError) a video's data are missing or corrupt; the
                message names the video, the feature set and the fix.
        """
        index = self.index() if index is None else index
        rows = {r["video_id"]: r for r in index.iter_rows(named=True)}
        by_part: dict[str, list[dict]] = {}
        for video_id in video_ids:
            if video_id not in rows:
                raise KeyError(f"video {video_id!r} is not in feature set {self.name}")
            row = rows[video_id]
            if row["status"] != "ok":
                raise KeyError(
                    f"video {video_id!r} has status {row['status']!r} in feature set "
                    f"{self.name}: {row['error']}"
                )
            by_part.setdefault(row["part"], []).append(row)
        out = {}
        for part_rows in by_part.values():
            try:
                out.update(self._read_part(part_rows, arrays))
            except Exception as err:  # zarr's errors for a part deleted under us vary
                fresh = [
                    self.read_index_file(f"{video_key(r['video_id'])}.parquet").row(0, named=True)
                    for r in part_rows
                ]
                if all(f["part"] == r["part"] for f, r in zip(fresh, part_rows)):
                    raise self._culprit(part_rows, arrays, err) from None  # a real problem
                for row in fresh:  # compacted meanwhile: follow the fresh index rows
                    out[row["video_id"]] = self._select(self.read(row["video_id"], row=row), arrays)
        return {v: out[v] for v in video_ids}

    def _culprit(self, rows: list[dict], arrays: Sequence[str], err: Exception):
        """The error naming the first video of ``rows`` (one part) that fails to read alone."""
        for row in rows:
            try:
                self._read_part([row], arrays)
            except Exception as alone:  # noqa: BLE001 - any failure is this video's damage
                return self._damage(row, alone)
        return self._damage(rows[0], err)

    def _read_part(self, rows: list[dict], arrays: Sequence[str]) -> dict[str, VideoFeatures]:
        """The videos of ``rows``, all in one part, hash-checked (see :meth:`read_many`)."""
        group = self.open_part(rows[0]["part"])
        lo = min(r["offset"] for r in rows)
        hi = max(r["offset"] + r["num_tokens"] for r in rows)
        wanted = sum(r["num_tokens"] for r in rows)
        if 2 * wanted >= hi - lo:
            block = {name: group[name][lo:hi] for name in arrays}
            base = lo
        else:
            block, base = None, 0
        out = {}
        for row in rows:
            a, b = row["offset"] - base, row["offset"] - base + row["num_tokens"]
            values = {
                name: (block[name][a:b] if block is not None else group[name][a:b])
                for name in arrays
            }
            self.check_hashes(row, values)
            out[row["video_id"]] = VideoFeatures(
                video_id=row["video_id"], **{name: values.get(name) for name in ARRAYS}
            )
        return out

    def check_hashes(self, row: dict, values: dict[str, np.ndarray]) -> None:
        """Check a video's arrays as read (stored dtype, name → array) against the content
        hash of its index row ``row``; a row without one (older feature sets) passes.

        Raises:
            DamagedVideoError: an array does not match; the message names the video, the
                feature set, the array and the fix.
        """
        if not row.get("content_hash"):
            return
        expected = json.loads(row["content_hash"])
        got = content_hashes(values)
        for name in values:
            if name in expected and got[name] != expected[name]:
                lost = values[name].dtype.kind == "f" and np.isnan(values[name]).any()
                raise DamagedVideoError(
                    f"video {row['video_id']!r} of feature set {self.name}: its {name} do not "
                    f"match the content hash in its index row (crc32 {got[name]} != "
                    f"{expected[name]}"
                    + ("; NaN fill values: a chunk of part " f"{row['part']} is missing)"
                       if lost else ")") + f"; {VERIFY_FIX}"
                )

    @staticmethod
    def _select(video: VideoFeatures, arrays: Sequence[str]) -> VideoFeatures:
        """``video`` with the arrays not in ``arrays`` set to ``None``."""
        return VideoFeatures(
            video_id=video.video_id,
            **{name: getattr(video, name) if name in arrays else None for name in ARRAYS},
        )

    def size_bytes(self) -> int:
        """Bytes on disk (or in the object store) under this feature set."""
        return self.loc.size_bytes()


class _CheckedGroup:
    """A read-only Zarr group whose arrays turn decode failures into :class:`DamagedVideoError`
    (everything else is the group's own)."""

    def __init__(self, group, where: str):
        self._group, self._where = group, where

    def __getitem__(self, name: str) -> "_CheckedArray":
        return _CheckedArray(self._group[name], f"array {name} of {self._where}")

    def __getattr__(self, name: str):
        return getattr(self._group, name)


class _CheckedArray:
    """A Zarr array (see :class:`_CheckedGroup`): ``array[...]`` raises
    :class:`DamagedVideoError` naming the array, its part and the fix when a chunk fails to
    decode."""

    def __init__(self, array, where: str):
        self._array, self._where = array, where

    def __getitem__(self, selection) -> np.ndarray:
        try:
            return self._array[selection]
        except Exception as err:  # crc32c mismatch, truncated zstd frame: codec errors vary
            raise DamagedVideoError(
                f"{self._where}: a chunk cannot be decoded ({type(err).__name__}: {err}); "
                "`pipeline verify` names the damaged videos, `pipeline verify --fix` marks "
                "them for re-extraction"
            ) from None

    def __getattr__(self, name: str):
        return getattr(self._array, name)


class FeatureStore:
    """A directory of feature sets: a local path, or an fsspec URL (``s3://bucket/store``).

    Args:
        root: Store directory or URL (``file://`` URLs are local paths); created on first
            write. ``memory://`` works within one process only (see :mod:`pipeline.storage`).
    """

    def __init__(self, root: str | Path):
        self.loc = location(root)
        # A Path for a local store (as before), the URL for a remote one.
        self.root = self.loc.path if self.loc.is_local else self.loc.url

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    @property
    def url(self) -> str:
        """What another process (a Ray worker) opens to reach this store: an absolute local
        path, or the URL."""
        return str(self.loc.path.resolve()) if self.loc.is_local else self.loc.url

    def _ensure_root(self) -> None:
        import zarr

        if not self.loc.exists("zarr.json"):
            group = zarr.open_group(store=self.loc.zarr_store(), mode="a", zarr_format=3)
            group.attrs["longvid_store"] = {"schema_version": SCHEMA_VERSION}

    def create(self, name: str, *, spec: dict, token_kind: str, dim: int, dtype: str) -> FeatureSet:
        """Open the feature set ``name``, creating it with these attributes if new.

        Args:
            name: Feature-set name; should embed the fingerprint of ``spec``.
            spec: Full extraction config (JSON-serialisable).
            token_kind: ``pooled`` or ``patch``.
            dim: Feature dimension D.
            dtype: Stored dtype, ``float16`` or ``float32``.

        Raises:
            ValueError: ``name`` is not a valid name (:func:`check_name`), or a feature set of
                that name exists with a different fingerprint.
        """
        import zarr

        check_name(name)
        self._ensure_root()
        fp = fingerprint(spec)
        if self.loc.exists(f"{name}/zarr.json"):
            existing = FeatureSet(self.loc.child(name))
            if existing.attrs.get("fingerprint") != fp:
                raise ValueError(
                    f"feature set {name} in {self.root} was made by a different config "
                    f"(fingerprint {existing.attrs.get('fingerprint', '?')[:12]} != {fp[:12]}); "
                    "choose another store or name"
                )
            return existing
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": fp,
            "spec": spec,
            "token_kind": token_kind,
            "dim": int(dim),
            "dtype": dtype,
            "created_at": time.time(),
        }
        if not self.loc.atomic_rename:
            # No rename on object stores: the group's own zarr.json, written last, is what
            # makes the feature set exist; two drivers racing here write the same spec.
            group = zarr.open_group(
                store=self.loc.child(name).zarr_store(), mode="a", zarr_format=3
            )
            group.require_group("parts")
            group.attrs.update(attrs)
            return FeatureSet(self.loc.child(name))
        # Build the group under a temporary name, then rename: a half-made feature set is
        # never visible.
        tmp = f".tmp-{uuid.uuid4().hex[:8]}-{name}"
        group = zarr.open_group(store=self.loc.child(tmp).zarr_store(), mode="w", zarr_format=3)
        group.attrs.update(attrs)
        group.create_group("parts")
        self.loc.mkdir(f"{tmp}/index")
        try:
            self.loc.rename(tmp, name)
        except OSError:
            # Another writer created it first: use theirs if it matches.
            self.loc.remove(tmp)
            return self.create(name, spec=spec, token_kind=token_kind, dim=dim, dtype=dtype)
        return FeatureSet(self.loc.child(name))

    def open(self, name: str) -> FeatureSet:
        """The existing feature set ``name``.

        Raises:
            KeyError: no such feature set; the message lists those present.
            ValueError: ``name`` is not a valid name (:func:`check_name`).
        """
        check_name(name)
        if not self.loc.exists(f"{name}/zarr.json"):
            names = [fs.name for fs in self.feature_sets()]
            raise KeyError(
                f"no feature set {name!r} in store {self.root}; present: "
                f"{', '.join(names) or 'none'}"
            )
        return FeatureSet(self.loc.child(name))

    def feature_sets(self) -> list[FeatureSet]:
        """All feature sets in the store, sorted by name."""
        if self.loc.is_local:
            if not self.root.is_dir():
                return []
            return [
                FeatureSet(p)
                for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").exists()
            ]
        return [
            FeatureSet(self.loc.child(n))
            for n in self.loc.listdir()
            if not n.startswith(".") and n != "zarr.json" and self.loc.exists(f"{n}/zarr.json")
        ]

    def find(
        self, *, dataset: str | None = None, backbone: str | None = None, plan: str | None = None
    ) -> list[FeatureSet]:
        """Feature sets whose spec matches every given field."""
        wanted = {"dataset": dataset, "backbone": backbone, "plan": plan}
        return [
            fs
            for fs in self.feature_sets()
            if all(v is None or fs.spec.get(k) == v for k, v in wanted.items())
        ]
