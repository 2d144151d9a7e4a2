"""The ``mmx_trailer_20`` catalog: multi-label genre classification of movie trailers.

MMX-Trailer-20 (Fish, Weinbren & Gilbert, "Rethinking Movie Genre Classification with Fine
Grained Semantic Clustering", 2020; used by STAN) has ~8,800 trailers with up to several of 20
genre labels, but no public file list or split, so the user supplies the table:

``labels.csv`` (or ``.parquet``) with columns
- ``video_id`` — the trailer's id, e.g. its YouTube or IMDb id (required);
- ``genres`` — its genres, separated by ``;`` or ``|`` (``Action;Drama``), or a list in parquet
  (required; an empty cell means unlabelled);
- ``split`` — ``train`` / ``val`` / ``test`` (optional; where absent, a video is assigned by a
  hash of its id: 80 / 10 / 10 %, stable across runs and machines, our choice, not the paper's);
- ``path`` — the video file, absolute or relative to the table (optional; else
  ``<video_id>.<ext>`` under the video root).

The genre vocabulary is the ``genres`` option (comma-separated, in index order) or else the
sorted genres found in the table; a label outside a given vocabulary is an error. Task
``genres`` is multilabel, so ``heads train`` reports STAN's metrics (STAN §4, Table 3): mAP
weighted by class frequency, and weighted precision, recall and F1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from catalogs import register_catalog
from catalogs.base import Catalog, option_flag
from catalogs.table import table_catalog

SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def hash_split(video_id: str, seed: int = 0) -> str:
    """A split drawn from a hash of ``video_id`` (train/val/test 80/10/10 %), stable everywhere."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    for split, fraction in SPLIT_FRACTIONS:
        if u < fraction:
            return split
        u -= fraction
    return SPLIT_FRACTIONS[-1][0]


@register_catalog("mmx_trailer_20")
def mmx_trailer_20_catalog(
    *,
    root: str | Path = "data/mmx_trailer_20",
    labels: str | Path | None = None,
    video_root: str | Path | None = None,
    genres: str | tuple[str, ...] | None = None,
    split_seed: int = 0,
) -> Catalog:
    """MMX-Trailer-20 from a user table (see the module docstring for its columns).

    Args:
        root: Dataset directory: ``root/labels.csv`` and the videos under ``root``.
        labels: The table (``.csv`` or ``.parquet``).
        video_root: Where ``<video_id>.<ext>`` is looked for (default ``root``).
        genres: Genre vocabulary in index order, comma-separated or a tuple.
        split_seed: Seed of the hash split of rows without a ``split``.

    Raises:
        ValueError: no table, missing ``video_id`` / ``genres`` column, a genre outside
            ``genres``, bad splits; messages name the file and column.
    """
    root_path = Path(root).expanduser().resolve()
    path = Path(labels).expanduser().resolve() if labels else root_path / "labels.csv"
    if not path.is_file():
        raise ValueError(f"mmx_trailer_20 catalog: labels table {path} does not exist; pass "
                         f"{option_flag('labels', 'FILE.csv')}, columns video_id, genres[, split, "
                         "path]")
    vocabulary = tuple(g.strip() for g in genres.split(",")) if isinstance(genres, str) else genres
    video_dir = Path(video_root).expanduser().resolve() if video_root else root_path
    return table_catalog(
        "mmx_trailer_20", root=root_path, labels=path, kinds={"genres": "multilabel"},
        video_root=video_dir, split=lambda video_id: hash_split(video_id, int(split_seed)),
        classes={"genres": vocabulary} if vocabulary else None,
    )
