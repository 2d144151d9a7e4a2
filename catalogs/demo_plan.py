"""The plan of the ``demo`` dataset: its sources, sizes and seeded shot lists, no pixels.

Three sources, which are also the classes: ``bigbuckbunny`` (1280×720, 25 fps, 132 frames),
``bikes`` (640×272, 25 fps, 250 frames) and ``carphone`` (176×144, 29.97 fps, 120 frames; a
pristine and a distorted encode of the same content, one picked at random per shot). A demo
video (320×180, 25 fps, H.264) is a sequence of shots; a shot is a source, an offset into it, a
random 16:9 crop, an optional mirror, a playback speed, and ping-pong looping when it outlasts its
source. Boundaries are hard cuts or fades through black. A video shows two or three sources;
its shots are drawn unordered and then shuffled, so the source of the first shot (the
``first_source`` task) can only be read from the order. Everything is drawn from seeded
generators, so labels and shot boundaries are known exactly.

:func:`plan_demo` draws every video's shots (milliseconds) and :func:`plan_tables` derives the
tables and labels from them. :mod:`catalogs.demo_render` turns the plans into pixels and
:mod:`catalogs.demo` builds and loads the dataset; both import this module, which imports
neither. A change to what is drawn here must bump :data:`catalogs.demo.BUILDER_VERSION`, so that
saved builds are rebuilt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

FPS = 25
WIDTH_PX, HEIGHT_PX = 320, 180
CLASSES: tuple[str, ...] = ("bigbuckbunny", "bikes", "carphone")
SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "bigbuckbunny": ("bigbuckbunny.mp4",),
    "bikes": ("bikes.mp4",),
    "carphone": ("carphone_pristine.mp4", "carphone_distorted.mp4"),
}
# (width_px, height_px, fps, num_frames), so plans need no decoding; rendering checks them.
SOURCE_INFO: dict[str, tuple[int, int, float, int]] = {
    "bigbuckbunny": (1280, 720, 25.0, 132),
    "bikes": (640, 272, 25.0, 250),
    "carphone": (176, 144, 30000 / 1001, 120),
}
# Source frame ranges [start, end) free of cuts: bikes is itself an edit (cuts at frames 30, 76,
# 137, 187, 242; the last 8 frames are too short to use). A shot stays inside one range, so the
# only visual discontinuities of a demo video are its recorded shot boundaries.
SOURCE_SEGMENTS: dict[str, tuple[tuple[int, int], ...]] = {
    "bigbuckbunny": ((0, 132),),
    "bikes": ((0, 30), (30, 76), (76, 137), (137, 187), (187, 242)),
    "carphone": ((0, 120),),
}
SPEEDS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
MIN_SHOT_FRAMES = 38  # 1.5 s at 25 fps, rounded up
FADE_NUM_FRAMES = 12  # ~0.5 s out to black at the end of a shot, ~0.5 s in at the next one
# Lead of the dominant source over the runner-up, as a fraction of the video: most_screen_time
# never ties and is never decided by a handful of frames.
_MIN_LEAD_FRACTION = 0.10
_SPLIT_STREAM = 0x5EED  # keeps the split/dominant draw apart from the per-video streams
# first_source is the dominant source in 40 % of the videos, each other source in 30 %; two
# sources are in use with probability 1/2 when the first is the dominant one, 1/3 otherwise.
# Then P(first = s | sources in use, shots per source) is uniform over the sources in use
# (2-source {D, X}: 0.4 * 1/2 * 1/2 = 0.3 * 1/3; 3-source: 0.4 * 1/2 = 0.3 * 2/3), so what a mean
# over time sees says nothing about which source comes first beyond which sources are there.
_FIRST_IS_DOMINANT = 0.4
_TWO_SOURCES_GIVEN_FIRST = {True: 1 / 2, False: 1 / 3}  # keyed by first == dominant


@dataclass(frozen=True)
class Variant:
    """Size of a demo build: number of videos, duration range and shots per video."""

    num_videos: int
    min_duration_sec: float
    max_duration_sec: float
    min_shots: int
    max_shots: int


VARIANTS: dict[str, Variant] = {
    "default": Variant(num_videos=96, min_duration_sec=20.0, max_duration_sec=60.0,
                       min_shots=4, max_shots=12),
    # For tests: builds in a few seconds.
    "small": Variant(num_videos=8, min_duration_sec=8.0, max_duration_sec=14.0,
                     min_shots=3, max_shots=5),
}


@dataclass(frozen=True)
class Shot:
    """One shot: output frames ``[start_frame, end_frame)`` of a demo video.

    Output frame ``k`` of the shot shows source frame ``source_start_frame + floor(k * speed *
    source_fps / FPS)``, bounced back and forth inside ``[segment_start_frame,
    segment_end_frame)``. ``crop_*`` are pixels of the original source. ``transition_in`` is
    ``start`` (first shot), ``cut`` or ``fade``.
    """

    source: str
    source_file: str
    start_frame: int
    end_frame: int
    segment_start_frame: int
    segment_end_frame: int
    source_start_frame: int
    crop_x: int
    crop_y: int
    crop_w: int
    crop_h: int
    flip: bool
    speed: float
    transition_in: str


SHOTS_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String, "shot_idx": pl.Int64, "source": pl.String, "source_file": pl.String,
    "start_frame": pl.Int64, "end_frame": pl.Int64, "start_sec": pl.Float64, "end_sec": pl.Float64,
    "segment_start_frame": pl.Int64, "segment_end_frame": pl.Int64,
    "source_start_frame": pl.Int64, "crop_x": pl.Int64, "crop_y": pl.Int64, "crop_w": pl.Int64,
    "crop_h": pl.Int64, "flip": pl.Boolean, "speed": pl.Float64, "transition_in": pl.String,
}


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one demo video and to derive its labels."""

    video_id: str
    split: str
    num_frames: int
    shots: tuple[Shot, ...]


def plan_demo(*, variant: str = "default", seed: int = 0) -> list[VideoPlan]:
    """Draws the shots of every video of a variant, without decoding or encoding anything.

    Video ``i`` is drawn from ``numpy.random.default_rng(seed + i)``. Its dominant source and
    its first shot's source (each balanced over the three classes) and its split
    (train/val/test ≈ 60/20/20 %, stratified by both) come from a separate stream.

    Raises:
        ValueError: unknown variant; the message lists the valid ones.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; valid: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    num = spec.num_videos
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    dominants = rng.permutation(np.arange(num) % len(CLASSES))
    # Offset of the first source from the dominant one in CLASSES (0: the same), in fixed
    # shares per dominant class, so first sources are balanced too.
    offsets = np.zeros(num, dtype=int)
    for k in range(len(CLASSES)):
        members = np.flatnonzero(dominants == k)
        num_same = round(_FIRST_IS_DOMINANT * len(members))
        offsets[members] = rng.permutation(
            [0] * num_same + [1 + j % 2 for j in range(len(members) - num_same)])
    firsts = (dominants + offsets) % len(CLASSES)
    tiebreaks = rng.random(num)
    plans = [_plan_video(np.random.default_rng(seed + i), f"demo_{i:03d}",
                         CLASSES[dominants[i]], CLASSES[firsts[i]], spec) for i in range(num)]
    num_val = num_test = max(1, round(0.2 * num))
    counts = {"train": num - num_val - num_test, "val": num_val, "test": num_test}
    # Stratified by class: spread each split evenly along a list sorted by dominant class (and
    # by first source within one), so every split has the classes of both classification tasks
    # in about the same proportions (a split whose majority class differs from train's makes
    # the majority baseline meaningless).
    pattern = [s for _, s in sorted(((i + 0.5) / n, s) for s, n in counts.items()
                                    for i in range(n))]
    by_class = np.lexsort((tiebreaks, firsts, dominants))  # class-major, random within a class
    splits = [""] * num
    for position, video in enumerate(by_class):
        splits[video] = pattern[position]
    return [dataclasses.replace(plan, split=split) for plan, split in zip(plans, splits)]


def _plan_video(rng: np.random.Generator, video_id: str, dominant: str, first_source: str,
                spec: Variant) -> VideoPlan:
    """Draws one video; rejection-samples until ``dominant`` clearly leads the screen time.

    The shots are drawn unordered, then put in order: one shot of ``first_source`` first, the
    others shuffled. With the sources in use drawn as :data:`_TWO_SOURCES_GIVEN_FIRST` says,
    the unordered shots (what a mean over time sees) carry no information on ``first_source``
    beyond the sources present.
    """
    others = [c for c in CLASSES if c != dominant]
    # Two or three sources, so sources_present is not always all three, and never one only
    # (its order would say nothing). Drawn once: redrawing on rejection would skew the odds.
    two_sources = rng.random() < _TWO_SOURCES_GIVEN_FIRST[first_source == dominant]
    if first_source == dominant:
        used = [dominant, *rng.permutation(others)[: 1 if two_sources else 2].tolist()]
    else:
        used = [dominant, first_source, *([] if two_sources else
                                         [c for c in others if c != first_source])]
    for _ in range(1000):
        num_frames = int(rng.integers(round(spec.min_duration_sec * FPS),
                                      round(spec.max_duration_sec * FPS) + 1))
        num_shots = int(rng.integers(spec.min_shots, spec.max_shots + 1))
        odds = np.array([2.0 if s == dominant else 1.0 for s in used])
        pool = [used[k] for k in rng.choice(len(used), size=num_shots, p=odds / odds.sum())]
        if set(pool) != set(used):
            continue
        is_dominant = np.array([s == dominant for s in pool])
        weights = rng.gamma(2.0, size=num_shots) * np.where(is_dominant, 3.0, 1.0)
        spare = num_frames - MIN_SHOT_FRAMES * num_shots
        extra = np.floor(spare * weights / weights.sum()).astype(int)
        extra[: spare - extra.sum()] += 1
        pool_lengths = (MIN_SHOT_FRAMES + extra).tolist()
        screen = [sum(n for n, s in zip(pool_lengths, pool) if s == c)
                  for c in [dominant, *others]]
        num_dominant = pool.count(dominant)
        # The dominant source leads in screen time by a margin and also in number of shots,
        # so the label is learnable from per-scene tokens (which carry no duration) while
        # still needing the whole video.
        leads_shots = all(num_dominant > pool.count(c) for c in others)
        if leads_shots and screen[0] - max(screen[1:]) >= _MIN_LEAD_FRACTION * num_frames:
            break
    else:
        raise RuntimeError(f"{video_id}: no shot list satisfies the constraints; check VARIANTS")
    candidates = [k for k, s in enumerate(pool) if s == first_source]
    first = candidates[rng.integers(len(candidates))]
    rest = [k for k in range(num_shots) if k != first]
    order = [first, *(rest[k] for k in rng.permutation(len(rest)))]
    sources = [pool[k] for k in order]
    lengths = [pool_lengths[k] for k in order]

    fades: set[int] = set()
    if rng.random() < 1 / 3:  # about a third of the videos have one or two fades
        num_fades = int(rng.integers(1, min(2, num_shots - 1) + 1))
        fades = set(rng.choice(np.arange(1, num_shots), size=num_fades, replace=False).tolist())
    shots: list[Shot] = []
    for idx, (source, length) in enumerate(zip(sources, lengths)):
        start_frame = shots[-1].end_frame if shots else 0
        transition = "start" if idx == 0 else "fade" if idx in fades else "cut"
        shots.append(_draw_shot(rng, source, start_frame, start_frame + length, transition,
                                shots[-1] if shots else None))
    return VideoPlan(video_id, "", num_frames, tuple(shots))


def _draw_shot(rng: np.random.Generator, source: str, start_frame: int, end_frame: int,
               transition_in: str, previous: Shot | None) -> Shot:
    """Draws a shot's look; a repeat of the previous shot's source is made clearly different."""
    width, height, _, _ = SOURCE_INFO[source]
    segments = SOURCE_SEGMENTS[source]
    max_w = min(width, int(height * WIDTH_PX / HEIGHT_PX))  # widest 16:9 crop
    if previous is not None and previous.source == source:
        # Same source across a cut: mirror it, zoom to the other end of the scale range and
        # move to another segment (or half a clip away), so the cut stays a clear discontinuity.
        scale = rng.uniform(0.5, 0.65) if previous.crop_w / max_w > 0.75 else rng.uniform(0.85, 1)
        flip = not previous.flip
        segment = (previous.segment_start_frame, previous.segment_end_frame)
        if len(segments) > 1:
            choices = [s for s in segments if s != segment]
            segment = choices[rng.integers(len(choices))]
            offset = int(rng.integers(*segment))
        else:
            size = segment[1] - segment[0]
            jump = size // 2 + int(rng.integers(-(size // 8), size // 8 + 1))
            offset = segment[0] + (previous.source_start_frame - segment[0] + jump) % size
    else:
        scale = rng.uniform(0.5, 1.0)
        flip = bool(rng.random() < 0.5)
        segment = segments[rng.integers(len(segments))]
        offset = int(rng.integers(*segment))
    crop_w = int(round(max_w * scale))
    crop_h = int(round(crop_w * HEIGHT_PX / WIDTH_PX))
    return Shot(
        source=source,
        source_file=str(rng.choice(SOURCE_FILES[source])),
        start_frame=start_frame,
        end_frame=end_frame,
        segment_start_frame=segment[0],
        segment_end_frame=segment[1],
        source_start_frame=offset,
        crop_x=int(rng.integers(0, width - crop_w + 1)),
        crop_y=int(rng.integers(0, height - crop_h + 1)),
        crop_w=crop_w,
        crop_h=crop_h,
        flip=flip,
        speed=float(rng.choice(SPEEDS)),
        transition_in=transition_in,
    )


def plan_tables(plans: list[VideoPlan]) -> dict[str, pl.DataFrame]:
    """The ``videos``, ``labels``, ``shots`` and ``cuts`` tables of a plan (as written to disk;
    ``videos.path`` relative to the dataset root)."""
    video_rows, shot_rows, cut_rows, label_rows = [], [], [], []
    for plan in plans:
        video_rows.append({"video_id": plan.video_id, "path": f"videos/{plan.video_id}.mp4",
                           "split": plan.split, "duration_sec": plan.num_frames / FPS,
                           "num_frames": plan.num_frames, "fps": float(FPS)})
        screen_frames = dict.fromkeys(CLASSES, 0)
        for idx, shot in enumerate(plan.shots):
            screen_frames[shot.source] += shot.end_frame - shot.start_frame
            shot_rows.append({"video_id": plan.video_id, "shot_idx": idx,
                              "start_sec": shot.start_frame / FPS,
                              "end_sec": shot.end_frame / FPS, **dataclasses.asdict(shot)})
            if idx > 0:
                cut_rows.append({"video_id": plan.video_id, "frame_idx": shot.start_frame,
                                 "time_sec": shot.start_frame / FPS,
                                 "kind": "fade" if shot.transition_in == "fade" else "hard"})
        label_rows.append({
            "video_id": plan.video_id,
            "most_screen_time": max(CLASSES, key=screen_frames.__getitem__),
            "first_source": plan.shots[0].source,
            "sources_present": [c for c in CLASSES if screen_frames[c] > 0],
            "bunny_fraction": screen_frames["bigbuckbunny"] / plan.num_frames,
        })
    return {
        "videos": pl.DataFrame(video_rows, schema={
            "video_id": pl.String, "path": pl.String, "split": pl.String,
            "duration_sec": pl.Float64, "num_frames": pl.Int64, "fps": pl.Float64}),
        "labels": pl.DataFrame(label_rows, schema={
            "video_id": pl.String, "most_screen_time": pl.String, "first_source": pl.String,
            "sources_present": pl.List(pl.String), "bunny_fraction": pl.Float64}),
        "shots": pl.DataFrame(shot_rows, schema=SHOTS_SCHEMA),
        "cuts": pl.DataFrame(cut_rows, schema={"video_id": pl.String, "frame_idx": pl.Int64,
                                               "time_sec": pl.Float64, "kind": pl.String}),
    }
