"""The ``breakfast`` catalog: the Breakfast Actions dataset, 10 breakfast activities.

Official layout (Kuehne, Arslan & Serre, "The Language of Actions", CVPR 2014; the release's
``BreakfastII_15fps_qvga_sync`` folder): ``<participant>/<camera>/<participant>_<activity>.<ext>``
with participants ``P03``…``P54``, cameras ``cam01``, ``cam02``, ``webcam01``, ``webcam02`` and
``stereo`` (whose files end ``_ch0`` / ``_ch1``), e.g. ``P03/cam01/P03_coffee.avi``. The activity
is in the file name; there is no labels file. Evaluation uses four splits by participant: split
``s<k>`` tests on one group of 13 participants (s1: P03–P15, s2: P16–P28, s3: P29–P41,
s4: P42–P54) and trains on the rest; Breakfast has no val split.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import Catalog, Task
from catalogs.files import VIDEO_EXTENSIONS

ACTIVITIES: tuple[str, ...] = (
    "cereals", "coffee", "friedegg", "juice", "milk",
    "pancake", "salat", "sandwich", "scrambledegg", "tea",
)
# Test participants of each official split (numbers of P03..P54).
FOLDS: dict[int, range] = {1: range(3, 16), 2: range(16, 29), 3: range(29, 42), 4: range(42, 55)}
_NAME = re.compile(r"^(P\d\d)_([a-z]+?)(?:_ch\d)?$")


@register_catalog("breakfast")
def breakfast_catalog(
    *, root: str | Path = "data/breakfast", video_root: str | Path | None = None, fold: int = 1
) -> Catalog:
    """The Breakfast videos under ``video_root``; task ``activity`` (10 classes).

    Args:
        root: Dataset directory; the default ``video_root``.
        video_root: The release's video folder (``BreakfastII_15fps_qvga_sync``), searched
            recursively for ``P<nn>_<activity>[_ch<k>].<ext>``; other files are ignored.
        fold: Official split 1-4: its 13 participants are ``test``, the others ``train``.

    Returns:
        The catalog; ``video_id`` is ``<participant>/<camera>/<file stem>`` (unique across the
        cameras that filmed one session), ``videos`` also has ``participant`` and ``camera``.

    Raises:
        ValueError: the folder is missing or holds no Breakfast video, ``fold`` is not 1-4, or
            a file names an activity outside :data:`ACTIVITIES` (the message names the file).
    """
    fold = int(fold)
    if fold not in FOLDS:
        raise ValueError(f"breakfast catalog: fold {fold} is not one of 1, 2, 3, 4")
    root_path = Path(root).expanduser().resolve()
    video_dir = Path(video_root).expanduser().resolve() if video_root else root_path
    if not video_dir.is_dir():
        raise ValueError(f"breakfast catalog: video folder {video_dir} is not a directory")
    rows = []
    for file in sorted(video_dir.rglob("*")):
        match = _NAME.match(file.stem)
        if file.suffix.lower() not in VIDEO_EXTENSIONS or not match or not file.is_file():
            continue
        participant, activity = match.groups()
        if activity not in ACTIVITIES:
            raise ValueError(f"breakfast catalog: {file} names activity {activity!r}, not one "
                             f"of {ACTIVITIES}")
        camera = file.parent.name
        rows.append({
            "video_id": f"{participant}/{camera}/{file.stem}",
            "path": str(file),
            "split": "test" if int(participant[1:]) in FOLDS[fold] else "train",
            "participant": participant,
            "camera": camera,
            "activity": activity,
        })
    if not rows:
        raise ValueError(f"breakfast catalog: no P<nn>_<activity>.<ext> video under {video_dir}")
    table = pl.DataFrame(rows)
    return Catalog(
        name="breakfast",
        root=root_path,
        videos=table.drop("activity"),
        tasks={"activity": Task("activity", "classification", ACTIVITIES,
                                "breakfast dish being prepared")},
        labels=table.select("video_id", "activity"),
        meta={"video_root": str(video_dir), "fold": fold},
    )
