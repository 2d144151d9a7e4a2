"""``pipeline compact``: pack a feature set's one-video parts into large parts.

Extraction writes every video as its own part (:meth:`pipeline.store.FeatureSet.write_video`:
writers never share a Zarr shard, and a part is published whole by one rename). That is what
makes a crash harmless, but it leaves one Zarr group per video: reading a video then costs an
open of four arrays (~1 ms on a local disk, a round trip per array on an object store), which
dominates training on light heads and any scan over a large set (``bench/train_io.py``).

Compaction rewrites the small parts of a feature set into ``packed-<id>`` parts of about
``target_mib`` each, videos in ``video_id`` order, each video a contiguous slice
(``offset``, ``num_tokens``) as the store contract already allows; readers that fetch a packed
part's slice for many videos at once (:meth:`FeatureSet.read_many`, the streaming loader of
:mod:`heads.data`) pay one open and one read per part.

Crash safety, in the order things happen for each pack:

1. the packed part is written under ``parts/.tmp-*`` and published by rename (a crash before
   leaves an unpublished temporary; ``pipeline verify --gc`` removes it);
2. each member's index fragment is rewritten to name the packed part (one atomic replace per
   video: a crash in between leaves some videos pointing to the packed part and some to their
   old part, all readable);
3. the old parts whose videos all moved are deleted (a crash before leaves orphan parts:
   ``pipeline verify --gc``).

Running compaction again finishes an interrupted one: videos still in small parts are packed
anew, and a packed part less than half of which is still named by the index (videos
re-extracted since, or an interrupted compaction) is repacked; the old parts an interrupted
compaction had copied but not deleted (each packed part lists where its slices came from) are
deleted.

Compactions of one feature set take turns (an exclusive lock, :mod:`pipeline.locks`; on object
stores a single-writer rule), and each repoints a video only if its index fragment is still the
row it listed. Compaction must not run while a writer works on the same feature set (as
``pipeline verify --gc``), and a reader that listed the index before compaction and opens an
old part after it re-reads the index fragment of that video (:meth:`FeatureSet.read_many`).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.store import ARRAYS, FeatureSet, array_options, video_key

PACKED_PREFIX = "packed-"
_CHUNK_BYTES = 4 << 20  # bytes per Zarr chunk of a packed part's tokens


@dataclass
class CompactReport:
    """What :func:`compact_feature_set` did.

    Attributes:
        feature_set: Its name.
        parts_before: Published parts named by the index before.
        parts_after: Published parts named by the index after.
        videos_moved: Videos whose index fragment now names a packed part written here.
        bytes_written: Token bytes written (uncompressed).
        seconds: Wall time.
    """

    feature_set: str
    parts_before: int = 0
    parts_after: int = 0
    videos_moved: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


def is_packed(part_id: str) -> bool:
    """Whether ``part_id`` was written by compaction (several videos, gaps allowed)."""
    return part_id.startswith(PACKED_PREFIX)


def compact_feature_set(
    fs: FeatureSet, *, target_mib: float = 256.0, progress: bool = False
) -> CompactReport:
    """Pack the small parts of ``fs`` into parts of about ``target_mib`` MiB of tokens.

    A video whose tokens alone reach ``target_mib`` keeps its own part; packed parts at least
    half named by the index are left alone; fewer than two videos to pack is a no-op. Holds the
    feature set's maintenance lock (:mod:`pipeline.locks`): a second compaction, or ``pipeline
    verify --gc``, waits for this one.

    Args:
        fs: The feature set.
        target_mib: Tokens per packed part, MiB (uncompressed, stored dtype).
        progress: Show a progress bar on stderr.

    Returns:
        The counts; see :class:`CompactReport`.

    Raises:
        ValueError: ``target_mib`` is not positive.
        pipeline.locks.LockTimeout: another maintainer held the lock for an hour.
    """
    from pipeline.locks import maintenance_lock

    if target_mib <= 0:
        raise ValueError(f"target_mib must be positive, got {target_mib}")
    with maintenance_lock(fs, "compaction"):
        return _compact(fs, target_mib=target_mib, progress=progress)


def _compact(fs: FeatureSet, *, target_mib: float, progress: bool) -> CompactReport:
    """:func:`compact_feature_set`'s work, under the lock (the index is listed here)."""
    from pipeline.progress import progress_bar

    t0 = time.perf_counter()
    report = CompactReport(fs.name)
    index = fs.index()
    rows = [r for r in index.iter_rows(named=True) if r["status"] == "ok" and r["part"]]
    by_part: dict[str, list[dict]] = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row)
    report.parts_before = report.parts_after = len(by_part)
    if not rows:
        return report

    _remove_superseded(fs, set(by_part))
    token_bytes = _token_bytes(fs, rows[0]["part"])
    target_bytes = target_mib * (1 << 20)
    candidates = []
    for part_id, part_rows in by_part.items():
        live = sum(r["num_tokens"] for r in part_rows)
        if is_packed(part_id):
            length = fs.open_part(part_id)["tokens"].shape[0]
            if 2 * live >= length:
                continue  # mostly live: leave it
        elif live * token_bytes >= target_bytes:
            continue  # one large video fills a part on its own
        candidates += part_rows
    if len(candidates) < 2 and not any(is_packed(r["part"]) for r in candidates):
        report.seconds = time.perf_counter() - t0
        return report

    candidates.sort(key=lambda r: r["video_id"])
    packs, current, current_bytes = [], [], 0
    for row in candidates:
        size = row["num_tokens"] * token_bytes
        if current and current_bytes + size > target_bytes:
            packs.append(current)
            current, current_bytes = [], 0
        current.append(row)
        current_bytes += size
    packs.append(current)

    moved_from: dict[str, int] = {}  # old part -> videos moved out of it
    bar = progress_bar(total=len(candidates), unit="video", desc=f"compact {fs.name}",
                       disable=not progress)
    for pack in packs:
        part_id, offsets, nbytes = _write_packed_part(fs, pack)
        report.bytes_written += nbytes
        for row, offset in zip(pack, offsets):
            if _repoint(fs, row, part_id, offset):
                moved_from[row["part"]] = moved_from.get(row["part"], 0) + 1
                report.videos_moved += 1
            bar.update(1)
    bar.close()
    emptied = [f"parts/{p}" for p, moved in moved_from.items() if moved == len(by_part[p])]
    with ThreadPoolExecutor(max_workers=8) as pool:  # file-system latency bound, not CPU
        list(pool.map(fs.loc.remove, emptied))  # every video they held lives elsewhere now
    report.parts_after = len({r["part"] for r in fs.index().iter_rows(named=True)
                              if r["status"] == "ok" and r["part"]})
    report.seconds = time.perf_counter() - t0
    return report


def _remove_superseded(fs: FeatureSet, named: set[str]) -> None:
    """Delete the parts an interrupted compaction copied into a packed part but did not delete:
    listed as a source in a packed part's members, and named by no index row."""
    published = [p for p in fs.loc.listdir("parts") if not p.startswith(".") and p != "zarr.json"]
    sources = set()
    for part_id in filter(is_packed, published):
        members = fs.open_part(part_id).attrs.get("longvid_packed", {}).get("members", [])
        sources.update(m[3] for m in members if len(m) > 3)
    leftover = sorted((sources & set(published)) - named)
    with ThreadPoolExecutor(max_workers=8) as pool:  # file-system latency bound, not CPU
        list(pool.map(fs.loc.remove, [f"parts/{p}" for p in leftover]))


def _token_bytes(fs: FeatureSet, part_id: str) -> int:
    """Bytes of one token (D or N·D values of the stored dtype)."""
    shape = fs.open_part(part_id)["tokens"].shape[1:]
    return int(np.prod(shape)) * np.dtype(fs.attrs["dtype"]).itemsize


def _write_packed_part(fs: FeatureSet, pack: list[dict]) -> tuple[str, list[int], int]:
    """Concatenate the videos of ``pack`` into a new published part.

    Returns:
        The part id, each video's offset in it, and the token bytes written.
    """
    import zarr

    arrays: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    offsets, offset, members = [], 0, []
    for row in pack:
        video = fs.read(row["video_id"], row=row)
        for name in ARRAYS:
            arrays[name].append(getattr(video, name))
        offsets.append(offset)
        members.append([row["video_id"], offset, row["num_tokens"], row["part"]])
        offset += row["num_tokens"]
    data = {name: np.concatenate(parts) for name, parts in arrays.items()}
    tokens = data["tokens"]
    per_token = max(1, tokens[:1].nbytes)
    chunk_t = max(1, min(len(tokens), _CHUNK_BYTES // per_token))

    part_id = f"{PACKED_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp = f"parts/.tmp-{part_id}" if fs.loc.atomic_rename else f"parts/{part_id}"
    group = zarr.open_group(store=fs.loc.child(tmp).zarr_store(), mode="w", zarr_format=3)
    # [video, offset, num_tokens, part it came from] per slice: for people, and for a later
    # compaction to delete the old parts an interrupted one left; the index stays the truth.
    group.attrs["longvid_packed"] = {"members": members}
    for name, values in data.items():
        group.create_array(name, data=values, chunks=(chunk_t, *values.shape[1:]),
                           **array_options(name, values.ndim))
    if fs.loc.atomic_rename:
        fs.loc.rename(tmp, f"parts/{part_id}")
    return part_id, offsets, tokens.nbytes


def _repoint(fs: FeatureSet, row: dict, part_id: str, offset: int) -> bool:
    """Make ``row``'s video name ``part_id`` at ``offset``; False when its fragment changed
    since the index was listed (re-extracted meanwhile: the newer row wins)."""
    name = f"{video_key(row['video_id'])}.parquet"
    current = fs.read_index_file(name).row(0, named=True)
    if (current["part"], current["offset"], current["updated_at"]) != (
        row["part"], row["offset"], row["updated_at"]
    ):
        return False
    fs.relocate(row, part_id, offset)
    return True
