"""Per-video extraction: decode once → scenes → samples → every backbone → store.

:class:`VideoExtractor` loads its backbones once (in ``__init__``) and then processes videos one
after another; the driver runs one per Ray worker. A video that cannot be processed is recorded
as ``failed`` with its reason in every feature set it was due for, and the extractor moves on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import numpy as np

from pipeline.decode import VideoError, VideoReader
from pipeline.sampling import Scene, ScenePlanConfig, ScenePlanSampler
from pipeline.scenes import SceneDetectConfig, SceneSegmenter
from pipeline.store import FeatureStore


@dataclass(frozen=True)
class FeatureSetJob:
    """One backbone's share of a run.

    Attributes:
        feature_set: Name of the feature set it writes.
        backbone: Backbone registry key.
        weights: ``none``, ``default`` or a file path (already resolved on the driver).
        seed: Random-init seed for ``none``.
        precision: ``fp32`` or ``bf16`` (resolved, never ``auto``).
    """

    feature_set: str
    backbone: str
    weights: str
    seed: int
    precision: str = "fp32"


@dataclass(frozen=True)
class VideoResult:
    """What happened to one video (sent back to the driver)."""

    video_id: str
    status: str  # "ok" or "failed"
    error: str = ""
    num_frames: int = 0
    num_tokens: int = 0
    decode_sec: float = 0.0
    backbone_sec: float = 0.0


class VideoExtractor:
    """Extracts the ``scene`` plan for one or more backbones, one video at a time.

    Args:
        store_root: Feature store directory.
        jobs: One per backbone; each names its feature set.
        scene_config: Scene detector settings.
        plan_config: Scene-plan settings.
        short_side_px: Working resolution of decoded frames (short side, pixels).
        batch_size: Frames per backbone forward pass (clip backbones take ``batch_size //
            frames_per_clip`` clips, at least 1).
        num_threads: Torch intra-op threads (1 per worker avoids oversubscribing cores).
        device: Torch device for the backbones.
    """

    def __init__(
        self,
        store_root: str,
        jobs: list[FeatureSetJob],
        *,
        scene_config: SceneDetectConfig,
        plan_config: ScenePlanConfig,
        short_side_px: int = 256,
        batch_size: int = 32,
        num_threads: int | None = 1,
        device: str = "cpu",
    ):
        import torch

        from pipeline.backbones import create_backbone

        if num_threads:
            torch.set_num_threads(num_threads)
        self.store = FeatureStore(store_root)
        self.jobs = {job.feature_set: job for job in jobs}
        self.backbones = {
            job.feature_set: create_backbone(
                job.backbone,
                weights=job.weights,
                seed=job.seed,
                device=device,
                precision=job.precision,
            )
            for job in jobs
        }
        self.feature_sets = {name: self.store.open(name) for name in self.jobs}
        self.scene_config = scene_config
        self.plan_config = plan_config
        self.short_side_px = short_side_px
        self.batch_size = batch_size

    def ready(self) -> bool:
        """Returns once the backbones are loaded (lets the driver wait for start-up)."""
        return True

    def process(self, video_id: str, path: str, feature_sets: list[str]) -> VideoResult:
        """Extract one video into ``feature_sets`` (a subset of this extractor's jobs).

        Never raises for a bad video: the failure is written to the index and returned.
        """
        try:
            return self._process(video_id, path, feature_sets)
        except Exception as err:  # any per-video failure is recorded, never fatal to the run
            if isinstance(err, VideoError):
                message = str(err)
            else:
                where = traceback.extract_tb(err.__traceback__)[-1]
                message = (
                    f"{path}: {type(err).__name__}: {err} "
                    f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
                )
            for name in feature_sets:
                self.feature_sets[name].write_status(video_id, "failed", message)
            return VideoResult(video_id, "failed", error=message)

    def _process(self, video_id: str, path: str, feature_sets: list[str]) -> VideoResult:
        t0 = time.perf_counter()
        reader = VideoReader(path, short_side_px=self.short_side_px)
        fps = reader.info.fps
        segmenter = SceneSegmenter(self.scene_config, fps)
        sampler = ScenePlanSampler(self.plan_config, fps)
        pending: list[Scene] = []
        tokens: dict[str, list[np.ndarray]] = {name: [] for name in feature_sets}
        # Only scene metadata outlives a batch, never the sampled pixels: memory stays bounded
        # by the batch and the scene buffer, whatever the video's length.
        scenes: list[tuple[int, int, float, float]] = []  # (scene_idx, start_frame, start, end)
        backbone_sec = 0.0
        for frame in reader:
            pending += sampler.push(frame, segmenter.push(frame.frame_idx, frame.rgb))
            if len(pending) >= self.batch_size:
                backbone_sec += self._run_backbones(pending, feature_sets, tokens)
                scenes += [(s.scene_idx, s.start_frame, s.start_sec, s.end_sec) for s in pending]
                pending = []
        pending += sampler.finish(segmenter.finish())
        backbone_sec += self._run_backbones(pending, feature_sets, tokens)
        scenes += [(s.scene_idx, s.start_frame, s.start_sec, s.end_sec) for s in pending]
        scene_idx, start_frame, start_sec, end_sec = (np.array(col) for col in zip(*scenes))
        duration_sec = reader.num_decoded / fps
        info = {
            "fps": fps,
            "num_frames": reader.num_decoded,
            "num_scenes": len(scenes),
            "width_px": reader.info.width_px,
            "height_px": reader.info.height_px,
            "cut_frames": start_frame[1:].tolist(),
        }
        for name in feature_sets:
            self.feature_sets[name].write_video(
                video_id,
                np.concatenate(tokens[name]),
                start_sec=start_sec.astype(np.float32),
                end_sec=end_sec.astype(np.float32),
                scene_idx=scene_idx.astype(np.int32),
                duration_sec=duration_sec,
                info=info,
            )
        total_sec = time.perf_counter() - t0
        return VideoResult(
            video_id,
            "ok",
            num_frames=reader.num_decoded,
            num_tokens=len(scenes),
            decode_sec=total_sec - backbone_sec,
            backbone_sec=backbone_sec,
        )

    def _run_backbones(
        self, scenes: list[Scene], feature_sets: list[str], tokens: dict[str, list[np.ndarray]]
    ) -> float:
        """Append each backbone's (S, D) features of ``scenes``; returns seconds spent."""
        if not scenes:
            return 0.0
        t0 = time.perf_counter()
        for name in feature_sets:
            backbone = self.backbones[name]
            if backbone.spec.input_kind == "frame":
                batch = np.stack([s.centre for s in scenes])  # (S, H, W, 3)
                step = self.batch_size
            else:
                batch = np.stack([s.clip for s in scenes])  # (S, F, H, W, 3)
                step = max(1, self.batch_size // self.plan_config.frames_per_clip)
            for lo in range(0, len(batch), step):
                tokens[name].append(backbone(batch[lo : lo + step]))
        return time.perf_counter() - t0
