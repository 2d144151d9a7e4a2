"""``pipeline verify``: check that every video a feature set calls ``ok`` can really be read.

Extraction publishes atomically, so a crash never leaves a half-visible video; what this
catches is damage after the fact (a lost or truncated chunk file on a flaky disk or bucket, an
index fragment edited by hand, a part deleted by a clean-up script) and the garbage crashed
writers leave behind (unpublished ``.tmp-*`` parts, published parts no index row names).

Checks, per ``ok`` row of the index (see :mod:`pipeline.store` for the layout):

1. the index fragment parses and holds the video its file name says;
2. the part it names exists and has the four arrays ``tokens``, ``start_sec``, ``end_sec``,
   ``scene_idx``, of one length, with the feature set's dim and dtype;
3. the rows naming a part tile it exactly (``offset``/``num_tokens`` vs the arrays' length),
   or, in a part packed by :mod:`pipeline.compact`, lie inside it without overlapping;
4. unless ``quick``: every chunk of those arrays exists and decodes (its crc32c checksum
   holds), each video's slices match the content hash in its index row, tokens are finite and
   ``start_sec <= end_sec``; a missing or corrupt chunk is blamed on the videos whose slices
   touch it.

Feature sets written before checksums and content hashes (longvid's first stores) stay
readable, but their integrity cannot be checked: :attr:`VerifyReport.integrity` says how many
videos carry no checksums. An unreadable feature-set ``zarr.json`` is
:attr:`VerifyReport.metadata_error`.

A damaged video is listed with the reason; :func:`mark_for_redo` records it as ``failed`` so
that re-running the same ``pipeline extract`` command extracts it again (resume retries failed
videos), and drops index fragments that cannot be parsed (their video is then simply missing,
which extract also redoes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.compact import is_packed
from pipeline.store import ARRAYS, FeatureSet, video_key


@dataclass
class VerifyReport:
    """What :func:`verify_feature_set` found in one feature set.

    Attributes:
        feature_set: Its name.
        num_checked: ``ok`` videos checked.
        damaged: video_id → what is wrong with it (these need extracting again).
        bad_index_files: Index fragments that cannot be parsed → the error.
        orphan_parts: Published parts that no index row names (a worker died between
            publishing the part and writing its index row; harmless, takes space).
        temporaries: Unpublished ``.tmp-*`` parts (a writer died mid-part, or is writing now).
        integrity: Empty, or why some videos' integrity cannot be checked (no checksums).
        metadata_error: Empty, or why the feature set's ``zarr.json`` cannot be read (then
            nothing else is checked).
    """

    feature_set: str
    num_checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    bad_index_files: dict[str, str] = field(default_factory=dict)
    orphan_parts: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    integrity: str = ""
    metadata_error: str = ""

    @property
    def ok(self) -> bool:
        """No video needs redoing and the metadata reads (garbage does not count)."""
        return not self.damaged and not self.bad_index_files and not self.metadata_error

    @property
    def redo(self) -> list[str]:
        """Video ids to extract again, sorted."""
        return sorted(self.damaged)


def verify_feature_set(
    fs: FeatureSet, *, quick: bool = False, progress: bool = False
) -> VerifyReport:
    """Check every ``ok`` video of ``fs`` (see the module docstring for the checks).

    Args:
        fs: The feature set.
        quick: Check metadata and lengths only, without reading chunk data.
        progress: Show a progress bar on stderr.

    Returns:
        The report; nothing is changed (see :func:`mark_for_redo`).
    """
    report = VerifyReport(fs.name)
    try:
        dim, dtype = fs.attrs["dim"], np.dtype(fs.attrs["dtype"])
    except (ValueError, KeyError, TypeError) as err:
        report.metadata_error = str(err).strip("'\"")
    else:
        _verify_videos(fs, report, dim, dtype, quick=quick, progress=progress)
    return report


def _verify_videos(fs, report, dim, dtype, *, quick, progress) -> None:
    """The checks of :func:`verify_feature_set` on a feature set whose metadata reads."""
    from pipeline.progress import progress_bar

    rows = []
    for name in fs.loc.listdir("index"):
        if name.startswith(".") and not name.startswith(".tmp-") and name.endswith(".parquet"):
            report.bad_index_files[name] = (
                "hidden index fragment written by an older longvid (an id starting with '.'); "
                "--fix drops it and extract stores the video under a visible key"
            )
    for name in fs.index_files():
        try:
            row = fs.read_index_file(name).row(0, named=True)
        except Exception as err:  # any parse failure means the fragment is unusable
            report.bad_index_files[name] = f"{type(err).__name__}: {err}"
            continue
        if f"{video_key(row['video_id'])}.parquet" != name:
            report.bad_index_files[name] = (
                f"holds video {row['video_id']!r}, not the one it is named for"
            )
            continue
        rows.append(row)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    report.num_checked = len(ok_rows)

    parts = fs.loc.listdir("parts")
    report.temporaries = [p for p in parts if p.startswith(".tmp-")]
    # dot-named parts other than temporaries: written under the hidden keys of ids starting
    # with '.' by an older longvid; no index row names them any more (orphans for --gc)
    published = {p for p in parts if not p.startswith(".tmp-") and p != "zarr.json"}
    by_part: dict[str, list[dict]] = {}
    for row in ok_rows:
        by_part.setdefault(row["part"] or "", []).append(row)
    report.orphan_parts = sorted(published - set(by_part))
    unhashed = sum(not r.get("content_hash") for r in ok_rows)
    if unhashed:
        report.integrity = (
            f"{unhashed} of {len(ok_rows)} ok videos carry no checksums (written before longvid "
            "checksummed chunks and hashed videos): their integrity cannot be checked; "
            "extract them into a new store to get checksums"
        )
    bar = progress_bar(total=len(ok_rows), unit="video", desc=f"verify {fs.name}",
                       disable=not progress)
    for part_id, part_rows in sorted(by_part.items()):
        problems = _check_part(fs, part_id, part_rows, published, dim, dtype, quick=quick)
        for row in part_rows:
            problem = problems if isinstance(problems, str) else problems.get(row["video_id"])
            if problem:
                report.damaged[row["video_id"]] = problem
            bar.update(1)
    bar.close()


def _check_part(fs, part_id, rows, published, dim, dtype, *, quick) -> str | dict[str, str]:
    """The first problem of a part and the rows naming it (a str: every video of the part is
    damaged), or per video the problem of its own slice (empty: all fine)."""
    if not part_id:
        return "its index row names no part"
    if part_id not in published:
        return f"part {part_id} is missing"
    try:
        group = fs.open_part(part_id)
        arrays = {name: group[name] for name in ARRAYS}
    except Exception as err:  # missing metadata, unparsable JSON, missing array
        return f"part {part_id} cannot be opened ({type(err).__name__}: {err})"
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        return f"part {part_id}: arrays of different lengths {lengths}"
    length = lengths["tokens"]
    tokens = arrays["tokens"]
    if tokens.shape[-1] != dim or tokens.dtype != dtype:
        return (
            f"part {part_id}: tokens {tokens.shape} {tokens.dtype}, but the feature set "
            f"stores dim {dim} {dtype}"
        )
    if not _rows_fit(rows, length, packed=is_packed(part_id)):
        counts = ", ".join(f"{r['num_tokens']} at offset {r['offset']}" for r in rows)
        return f"token count mismatch: the index says {counts}, part {part_id} holds {length}"
    if quick:
        return {}
    problems = _missing_chunks(fs, part_id, rows, arrays)
    try:
        values = {name: array[:] for name, array in arrays.items()}
    except Exception:  # a truncated or corrupt chunk fails to decode: find whose
        values = None
    for row in rows:  # a packed part holds many videos: blame each slice alone
        if row["video_id"] in problems:
            continue
        lo, hi = row["offset"], row["offset"] + row["num_tokens"]
        try:
            mine = {n: (values[n] if values else a)[lo:hi] for n, a in arrays.items()}
            fs.check_hashes(row, mine)
        except ValueError as err:
            problems[row["video_id"]] = str(err).split("; `pipeline verify")[0]
            continue
        if not np.isfinite(mine["tokens"].astype(np.float32)).all():
            problems[row["video_id"]] = f"part {part_id}: tokens hold NaN or inf"
        elif (mine["start_sec"] > mine["end_sec"]).any():
            problems[row["video_id"]] = f"part {part_id}: a token ends before it starts"
    return problems


def _missing_chunks(fs, part_id, rows, arrays) -> dict[str, str]:
    """Video id → which chunk of its slice is missing, for the rows of part ``part_id``
    (chunks split the token axis only; a chunk file is ``<array>/c/<i>[/0...]``)."""
    problems = {}
    for name, array in arrays.items():
        if array.nchunks_initialized == array.nchunks:
            continue
        present = {int(n) for n in fs.loc.listdir(f"parts/{part_id}/{name}/c") if n.isdigit()}
        size = array.chunks[0]
        for row in rows:
            first = (row["offset"] or 0) // size
            last = ((row["offset"] or 0) + row["num_tokens"] - 1) // size
            lost = [i for i in range(first, last + 1) if i not in present]
            if lost and row["video_id"] not in problems:
                problems[row["video_id"]] = (
                    f"part {part_id}: {len(lost)} of {array.nchunks} chunk(s) of {name} are "
                    f"missing (number {', '.join(map(str, lost))})"
                )
    return problems


def _rows_fit(rows: list[dict], length: int, *, packed: bool) -> bool:
    """Whether the rows' (offset, num_tokens) slices tile a part of ``length`` tokens exactly,
    or, for a packed part (:mod:`pipeline.compact`), lie inside it without overlapping (a
    video re-extracted since, or an interrupted compaction, leaves an unnamed slice)."""
    end = 0
    for row in sorted(rows, key=lambda r: r["offset"] or 0):
        offset, num_tokens = row["offset"] or 0, row["num_tokens"]
        if not num_tokens or offset < end or (not packed and offset != end):
            return False
        end = offset + num_tokens
    return end <= length if packed else end == length


def mark_for_redo(fs: FeatureSet, report: VerifyReport) -> list[str]:
    """Make the next ``pipeline extract`` redo what ``report`` found damaged.

    Damaged videos are recorded as ``failed`` with the reason; unparsable index fragments are
    removed. Parts are left alone (a re-extracted video gets a new part).

    Returns:
        The ids marked failed.
    """
    for video_id, problem in sorted(report.damaged.items()):
        fs.write_status(video_id, "failed", f"verify: {problem}; extract again to redo it")
    for name in report.bad_index_files:
        fs.loc.remove(f"index/{name}")
    return report.redo


def remove_garbage(fs: FeatureSet, report: VerifyReport) -> int:
    """Delete the orphan parts and ``.tmp-*`` leftovers ``report`` lists.

    Only safe while nothing writes to the feature set: a running writer's ``.tmp-*`` part
    looks exactly like a crashed one's. Holds the maintenance lock (:mod:`pipeline.locks`), so
    no compaction runs meanwhile, and re-reads the index under it: a part some row names by now
    is kept.

    Returns:
        Number of parts removed.
    """
    from pipeline.locks import maintenance_lock

    with maintenance_lock(fs, "verify --gc"):
        named = set(fs.index()["part"].drop_nulls())
        names = [n for n in report.orphan_parts if n not in named] + report.temporaries
        for name in names:
            fs.loc.remove(f"parts/{name}")
    return len(names)
