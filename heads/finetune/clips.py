"""Decoded frames for end-to-end training: one item per video, every window of its sampling plan.

The pixels come from the same code as ``pipeline extract``: :class:`~pipeline.decode.VideoReader`
decodes once (fixed plans only the frames they sample: :mod:`pipeline.sparse_decode`),
:class:`~pipeline.scenes.SceneSegmenter` finds the cuts (``scene`` plan only) and
:func:`~pipeline.sampling.make_sampler` picks each window's centre frame or F-frame clip. Items
are decoded inside ``DataLoader`` workers; :func:`collate` concatenates the windows of a batch
per stream so that a backbone runs on them in one pass.

Augmentation (train only) is drawn once per video and applied to every frame of every stream:
one random resized crop box (``torchvision.transforms.v2.RandomResizedCrop.get_params``) and one
horizontal flip. A video's window tokens form one sequence that the head reads as content, so a
crop that changed from scene to scene would look like a change of scene. The draw is seeded by
``(seed, epoch, video index)``, so a run sees the same crops whatever the number of workers.
Evaluation takes the central crop the backbone's own preprocessing takes (resize the short
side to ``resize_px``, crop ``size_px``), done as one resized crop.

Multi-view testing (``views=(K, S)``, STAT's Implementation Details: 5 × 1 or 3 × 3 views): K
temporal views sample each segment of a fixed plan at ``(k + 0.5) / K`` of it instead of its
centre (K samplers fed by one decode, :func:`decode_views`), S spatial views crop the eval
square at S evenly spaced positions along the long side (left / centre / right for 3). An item
then holds the K·S views one after the other; :func:`collate` lists each as a video of its own
under the same index, and :func:`heads.finetune.recipe.predict_clips` averages them. Cost: one
decode still, but K·S times the colour conversion, cropping and encoder forward of one view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.decode import VideoError, VideoReader
from pipeline.sampling import PlanConfig, Window, make_sampler, stream_plan_windows
from pipeline.sparse_decode import SparseDecodeUnsupported, plan_frames
from pipeline.scenes import SceneDetectConfig, SceneSegmenter


@dataclass(frozen=True)
class StreamPixels:
    """How one stream's pixels are sampled and shaped.

    Attributes:
        frames_per_window: 1 = the window's centre frame (2D backbones, stems), F = a clip of F
            frames spread over the window (3D backbones).
        size_px: Side of the square crop fed to the stream's encoder, pixels.
        resize_px: Short side the backbone's preprocessing resizes to before its centre crop;
            sets the evaluation crop (``size_px / resize_px`` of the short side) and the
            decoding resolution.
    """

    frames_per_window: int
    size_px: int
    resize_px: int

    def __post_init__(self) -> None:
        if self.frames_per_window < 1 or self.size_px < 1 or self.resize_px < self.size_px:
            raise ValueError(
                f"stream pixels: need frames_per_window >= 1 and resize_px >= size_px >= 1, got "
                f"{self.frames_per_window}, {self.size_px}, {self.resize_px}"
            )


def decode_windows(
    path: str, *, plan: PlanConfig, scenes: SceneDetectConfig, counts: set[int], short_side_px: int,
    rng: np.random.Generator | None = None,
) -> list[Window]:
    """Decode ``path`` once and return the windows of ``plan`` with their sampled frames.

    Args:
        path: Video file.
        plan: Sampling plan (``scene``: one window per PySceneDetect scene; fixed plans need no
            detector; frames no window samples are never colour-converted).
        scenes: Detector settings for the ``scene`` plan.
        counts: Frames to sample per window (1 = centre frame, F = clip).
        short_side_px: Decoding resolution (short side, never upscaled).
        rng: Fixed plans: each sample at a random instant of its segment, not its centre.

    Returns:
        Windows in time order; ``window.frames[c]`` is (c, H, W, 3) uint8 RGB.

    Raises:
        VideoError: the file cannot be decoded, or the plan finds no window.
    """
    (windows,) = decode_views(path, plan=plan, scenes=scenes, counts=counts,
                              short_side_px=short_side_px, rng=rng)
    return windows


def decode_views(
    path: str, *, plan: PlanConfig, scenes: SceneDetectConfig, counts: set[int], short_side_px: int,
    offsets: Sequence[float | None] = (None,), rng: np.random.Generator | None = None,
) -> list[list[Window]]:
    """:func:`decode_windows` for several temporal views from one decode: view k samples each
    segment at ``offsets[k]`` of it (None: its centre; fixed plans only), as
    :func:`pipeline.sampling.sample_instants` does.

    Returns:
        Per view, its windows in time order (every view has the plan's windows).

    Raises:
        VideoError: the file cannot be decoded, or the plan finds no window.
        ValueError: an offset with the ``scene`` plan.
    """
    # Fixed plans decode only the frames they sample (bit-identical: pipeline.sparse_decode);
    # a video whose packets cannot vouch for that is decoded in full.
    sparse = plan.name != "scene"
    try:
        views = _decode_views(path, plan, scenes, counts, short_side_px, offsets, rng, sparse)
    except SparseDecodeUnsupported:
        views = _decode_views(path, plan, scenes, counts, short_side_px, offsets, rng, False)
    if not views[0]:
        raise VideoError(f"{path}: the {plan.name} plan found no window to sample")
    return views


def _decode_views(path, plan, scenes, counts, short_side_px, offsets, rng,
                  sparse: bool) -> list[list[Window]]:
    reader = VideoReader(path, short_side_px=short_side_px)
    fps = reader.info.fps
    duration_sec = reader.info.duration_sec  # the header's, else frames / fps
    samplers = {k: make_sampler(plan, fps=fps, duration_sec=duration_sec, counts=counts, rng=rng,
                                offset=offset) for k, offset in enumerate(offsets)}
    segmenter = SceneSegmenter(scenes, fps) if plan.name == "scene" else None
    frames, _ = plan_frames(reader, samplers, sparse=sparse)
    views: list[list[Window]] = [[] for _ in offsets]
    for k, window in stream_plan_windows(frames, samplers, segmenter):
        views[k].append(window)
    return views


def view_offsets(num_views: int) -> tuple[float | None, ...]:
    """Sampling offsets of ``num_views`` temporal views: ``(k + 0.5) / K`` of each segment;
    one view is the segment centre (None, exactly today's single-view sampling)."""
    if num_views == 1:
        return (None,)
    return tuple((k + 0.5) / num_views for k in range(num_views))


def crop_box(
    height_px: int, width_px: int, stream: StreamPixels, *, train: bool, crop_scale=(0.35, 1.0),
    view: int = 0, num_views: int = 1,
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the crop taken from every frame of a video.

    Train: a random resized crop box (area fraction in ``crop_scale``, aspect 3/4–4/3, from
    ``torchvision.transforms.v2.RandomResizedCrop.get_params`` on the global torch RNG, which
    the caller seeds). Eval: the centre square whose side is ``size_px / resize_px`` of the
    short side, i.e. resize-then-centre-crop as the backbone's own preprocessing does; with
    ``num_views`` spatial views, view ``view`` of them slides that square along the long side
    to evenly spaced positions from one end to the other (3: left, centre, right; 1: centre).
    """
    if train:
        from torchvision.transforms import v2

        dummy = torch.empty(1, height_px, width_px)  # get_params reads only the size
        return tuple(int(v) for v in v2.RandomResizedCrop.get_params(
            dummy, scale=list(crop_scale), ratio=[3 / 4, 4 / 3]
        ))
    side = max(1, round(min(height_px, width_px) * stream.size_px / stream.resize_px))
    top, left = (height_px - side) // 2, (width_px - side) // 2
    if num_views > 1:
        along = view * (max(height_px, width_px) - side) // (num_views - 1)
        top, left = (along, left) if height_px > width_px else (top, along)
    return top, left, side, side


@dataclass
class VideoItem:
    """One video, ready for :func:`collate`.

    Attributes:
        index: Position in the dataset.
        frames: Per stream, uint8 (W, 3, S, S) for ``frames_per_window == 1`` or
            (W, F, 3, S, S) for clips; W windows, S = the stream's ``size_px``. Empty on failure.
        target: Encoded target (scalar int64, (K,) or (1,) float32).
        error: Why the video could not be decoded ("" when it was).
        view_windows: With test views, the windows of each view, which ``frames`` holds one
            view after the other (temporal-major); () = one view of all W windows.
    """

    index: int
    frames: list[torch.Tensor]
    target: torch.Tensor
    error: str = ""
    view_windows: tuple[int, ...] = ()


class VideoClipDataset(torch.utils.data.Dataset):
    """Videos as per-stream window frames, decoded on access (in ``DataLoader`` workers).

    Args:
        paths: Video file per item.
        targets: Encoded targets, first axis = number of videos.
        streams: Pixels of each stream, in the head's stream order.
        plan: Sampling plan.
        scenes: Scene detector settings (``scene`` plan).
        train: Random crop and flip (else the deterministic centre crop).
        seed: Seeds the augmentation together with the epoch and the item index.
        crop_scale: Area fraction range of the random crop.
        flip: Whether training flips (p = 0.5).
        cache: A dict shared by datasets over the same videos to keep decoded windows across
            epochs and splits (memory: every window at the decoding resolution), or None. Only
            useful in the main process (``num_workers=0``): a worker's cache dies with it.
        clip_sec: > 0: each fetch keeps ``clip_frames`` of the plan's windows, at evenly spaced
            instants of a random ``clip_sec`` clip (VTN §4.1; :func:`heads.windows.clip_streams`,
            drawn from the seed, the epoch and the item); 0 keeps every window.
        clip_frames: Windows per clip.
        random_frames: Fixed plans: every fetch samples each window at a random instant of its
            segment (drawn from the seed, the epoch and the item; STAT's "one random frame per
            segment" in training) instead of its centre; such windows are never cached.
        views: Evaluation only: ``(K, S)`` test views, K temporal (fixed plans) × S spatial
            (module docstring); (1, 1) = the single centre view.

    Items:
        :class:`VideoItem`; a video that fails to decode gives an item with ``error`` set,
        which :func:`collate` leaves out and reports.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        *,
        streams: Sequence[StreamPixels],
        plan: PlanConfig,
        scenes: SceneDetectConfig,
        train: bool,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        flip: bool = True,
        cache: dict | None = None,
        clip_sec: float = 0.0,
        clip_frames: int = 16,
        random_frames: bool = False,
        views: tuple[int, int] = (1, 1),
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} videos but {len(targets)} targets")
        views = tuple(views)
        if views != (1, 1) and (train or clip_sec > 0):
            raise ValueError(f"test views {views[0]}x{views[1]} are for evaluation, not training")
        self.paths = list(paths)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.streams = list(streams)
        self.plan, self.scenes = plan, scenes
        self.train, self.seed, self.crop_scale, self.flip = train, seed, crop_scale, flip
        self.cache = cache
        self.clip_sec, self.clip_frames = clip_sec, clip_frames
        self.random_frames = random_frames
        self.views = views
        self.epoch = 0
        self.counts = {s.frames_per_window for s in self.streams}
        self.short_side_px = max(s.resize_px for s in self.streams)

    def set_epoch(self, epoch: int) -> None:
        """Pick the augmentation draws of ``epoch`` (call before iterating a new epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _windows(self, i: int) -> list[list[Window]]:
        """The windows of each temporal view of video ``i`` (one view unless ``views``)."""
        path = self.paths[i]
        if self.random_frames:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            return [decode_windows(path, plan=self.plan, scenes=self.scenes, counts=self.counts,
                                   short_side_px=self.short_side_px, rng=rng)]
        key = (path, self.short_side_px, self.plan, self.scenes, tuple(sorted(self.counts)),
               self.views[0])
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        views = decode_views(
            path, plan=self.plan, scenes=self.scenes, counts=self.counts,
            short_side_px=self.short_side_px, offsets=view_offsets(self.views[0]),
        )
        if self.cache is not None:
            self.cache[key] = views
        return views

    def _clip(self, windows: list[Window], i: int) -> list[Window]:
        """``clip_frames`` of ``windows`` at evenly spaced instants of a random clip."""
        from heads.windows import clip_streams, random_span

        times = np.array([[w.start_sec, w.end_sec] for w in windows])  # (W, 2)
        rng = np.random.default_rng((self.seed, self.epoch, i, 1))
        lo_sec, hi_sec = random_span(float(times[:, 1].max()), self.clip_sec, rng)
        (picked,) = clip_streams([np.arange(len(windows))], [times], lo_sec, hi_sec,
                                 self.clip_frames)
        return [windows[j] for j in picked]

    def __getitem__(self, i: int) -> VideoItem:
        try:
            views = self._windows(i)
        except VideoError as err:
            return VideoItem(i, [], self.targets[i], error=str(err))
        if self.clip_sec > 0:
            views = [self._clip(views[0], i)]
        height_px, width_px = views[0][0].frames[min(self.counts)].shape[1:3]
        if not self.train:
            num_crops = self.views[1]
            per_view = [self._crop(windows, lambda stream, j=j: crop_box(
                height_px, width_px, stream, train=False, view=j, num_views=num_crops))
                for windows in views for j in range(num_crops)]
            frames = [torch.cat(parts) for parts in zip(*per_view)]  # per stream (V·W, ...)
            view_windows = () if len(per_view) == 1 else tuple(len(w) for w in views
                                                               for _ in range(num_crops))
            return VideoItem(i, frames, self.targets[i], view_windows=view_windows)
        with torch.random.fork_rng(devices=[]):
            # One draw per video, the same for every frame and stream (see the module docstring).
            state = np.random.SeedSequence((self.seed, self.epoch, i)).generate_state(1)
            torch.manual_seed(int(state[0]))
            box = crop_box(height_px, width_px, self.streams[0], train=True,
                           crop_scale=self.crop_scale)
            flip = self.flip and bool(torch.rand(()) < 0.5)
        return VideoItem(i, self._crop(views[0], lambda stream: box, flip), self.targets[i])

    def _crop(self, windows: list[Window], box_of, flip: bool = False) -> list[torch.Tensor]:
        """Per stream, the windows' frames cropped to ``box_of(stream)`` and resized to the
        stream's side: uint8 (W, 3, S, S) or (W, F, 3, S, S)."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        frames = []
        for stream in self.streams:
            count = stream.frames_per_window
            raw = np.stack([w.frames[count] for w in windows])  # (W, F, H, W_px, 3)
            video = torch.from_numpy(raw).permute(0, 1, 4, 2, 3)  # (W, F, 3, H, W_px)
            video = video.reshape(-1, *video.shape[2:])  # (W·F, 3, H, W_px)
            out = TF.resized_crop(
                tv_tensors.Video(video), *box_of(stream), size=[stream.size_px, stream.size_px],
                antialias=True,
            )  # (W·F, 3, S, S)
            if flip:
                out = TF.horizontal_flip(out)
            out = out.as_subclass(torch.Tensor)
            if count > 1:
                out = out.reshape(len(windows), count, *out.shape[1:])  # (W, F, 3, S, S)
            frames.append(out.contiguous())
        return frames


@dataclass
class ClipBatch:
    """A batch of videos for :class:`heads.finetune.models.PixelModel`.

    Attributes:
        frames: Per stream, the windows of every video concatenated: uint8 (ΣW, 3, S, S) or
            (ΣW, F, 3, S, S).
        lengths: Per stream, (B,) int64 windows per video.
        targets: (B,) or (B, K) targets.
        indices: (B,) dataset positions of the videos.
        errors: ``(index, message)`` of videos left out because they failed to decode.

    With test views, each view of a video is one of the B "videos": its index and target
    repeat, once per view, in a row.
    """

    frames: list[torch.Tensor]
    lengths: list[torch.Tensor]
    targets: torch.Tensor
    indices: torch.Tensor
    errors: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> ClipBatch:
        """The batch with frames and targets on ``device`` (lengths stay on the CPU)."""
        return ClipBatch(
            [f.to(device, non_blocking=True) for f in self.frames], self.lengths,
            self.targets.to(device, non_blocking=True), self.indices, self.errors,
        )


def collate(items: Sequence[VideoItem]) -> ClipBatch:
    """Concatenate the windows of ``items`` per stream; failed videos are left out and listed
    in ``errors`` (a batch may end up empty: ``len(batch) == 0``)."""
    errors = [(item.index, item.error) for item in items if item.error]
    good = [item for item in items if not item.error]
    if not good:
        return ClipBatch([], [], torch.empty(0), torch.empty(0, dtype=torch.long), errors)
    num_streams = len(good[0].frames)
    frames = [torch.cat([item.frames[s] for item in good]) for s in range(num_streams)]
    lengths = [torch.tensor([n for item in good
                             for n in item.view_windows or [len(item.frames[s])]])
               for s in range(num_streams)]
    repeats = [len(item.view_windows) or 1 for item in good]
    targets = torch.stack([item.target for item, r in zip(good, repeats) for _ in range(r)])
    indices = torch.tensor([item.index for item, r in zip(good, repeats) for _ in range(r)])
    return ClipBatch(frames, lengths, targets, indices, errors)
