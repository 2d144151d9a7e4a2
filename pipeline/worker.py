"""Per-video extraction: decode once → scenes → every plan's windows → every backbone → store.

:class:`VideoExtractor` loads its backbones once (in ``__init__``) and then processes videos one
after another; the driver runs one per Ray worker. One decode and one scene detection of a video
feed every feature set due for it, whatever their plans: each plan has its own sampler, each
feature set gets exactly the tokens a run of its own would write. A video that cannot be
processed is recorded as ``failed`` with its reason in every feature set it was due for, and the
extractor moves on.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from pipeline.backbone_server import BackboneServerLost, load_models, model_key
from pipeline.decode import VideoError, VideoInfo, VideoReader
from pipeline.faults import maybe_crash
from pipeline.sampling import (
    PlanConfig,
    Window,
    is_variable_frame_rate,
    make_sampler,
    stream_plan_windows,
    video_end_sec,
    window_batch,
)
from pipeline.scenes import SceneDetectConfig, SceneSegmenter
from pipeline.sources import source_identity
from pipeline.sparse_decode import SparseDecodeUnsupported, plan_frames
from pipeline.store import FeatureStore, video_key


def record_failure(fs, video_id: str, message: str, *, run_started_at: float | None) -> bool:
    """Record ``video_id`` as failed in feature set ``fs``, unless its index row is ``ok`` and
    was written after this run started (``run_started_at``, Unix time): another run committed
    the video since, and a failure of this one must never replace that success. The row is
    re-read just before writing.

    Returns:
        Whether the failure was written.
    """
    if run_started_at is not None:
        try:
            row = fs.read_index_file(f"{video_key(video_id)}.parquet").row(0, named=True)
        except (FileNotFoundError, KeyError, OSError, ValueError):
            row = None  # no row (or an unreadable one): nothing to protect
        if row and row["status"] == "ok" and (row["updated_at"] or 0) >= run_started_at:
            return False
    fs.write_status(video_id, "failed", message)
    return True


# Batches one worker may have at the backbone server before it waits for the oldest.
MAX_PENDING = 4


@dataclass(frozen=True)
class FeatureSetJob:
    """One feature set's share of a run: a backbone on a sampling plan.

    Attributes:
        feature_set: Name of the feature set it writes.
        backbone: Backbone registry key.
        weights: ``none``, ``default`` or a file path (already resolved on the driver).
        seed: Random-init seed for ``none``.
        precision: ``fp32`` or ``bf16`` (resolved, never ``auto``).
        token_kind: ``pooled`` or ``patch``.
        plan: Its sampling plan; ``None``: the extractor's ``plan_config``.
        resize: Frame geometry before the backbone (``crop`` or ``squash``).
    """

    feature_set: str
    backbone: str
    weights: str
    seed: int
    precision: str = "fp32"
    token_kind: str = "pooled"
    plan: PlanConfig | None = None
    resize: str = "crop"


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
    num_decoded: int = 0  # pictures decoded (under num_frames when decoded sparsely)


@dataclass
class _Embedded:
    """One video's decode, windows and tokens, before they are written."""

    info: VideoInfo
    times: list[float]  # every frame's presentation time, seconds
    tokens: dict[str, list[np.ndarray]]  # feature set -> token batches
    spans: dict[PlanConfig, list]  # plan -> (scene, start_sec, end_sec) per window
    cuts: list[int] = field(default_factory=list)
    backbone_sec: float = 0.0
    num_decoded: int = 0


class VideoExtractor:
    """Extracts feature sets (backbone × sampling plan) from one decode per video, one video at
    a time.

    Args:
        store_root: Feature store directory or URL (:class:`~pipeline.store.FeatureStore`).
        jobs: One per feature set; each names its feature set, backbone and plan. Jobs with the
            same backbone, weights, precision and resize share one loaded model.
        scene_config: Scene detector settings (cuts drive the ``scene`` plan and give every
            other plan's tokens their scene index).
        plan_config: The sampling plan of jobs that name none.
        short_side_px: Working resolution of decoded frames (short side, pixels).
        batch_size: Frames per backbone forward pass (clip backbones take ``batch_size //
            frames_per_clip`` clips, at least 1); also the number of windows sampled before
            the backbones run, which bounds the frames held in memory.
        num_threads: Torch intra-op threads (1 per worker avoids oversubscribing cores);
            unused with a ``server`` (such a worker never imports torch).
        decode_threads: Decoder threads per video (see :class:`~pipeline.decode.VideoReader`):
            1 for a worker that holds one core, 0 for FFmpeg's frame threading on every core.
        device: Torch device for the backbones.
        decode: ``sparse``: videos whose plans are all fixed and need no scene detection
            decode only the frames they sample (:mod:`pipeline.sparse_decode`; identical
            tokens); ``full``: every frame, always; ``nvdec``: as ``sparse``, the frames
            decoded by the GPU's decoders (:mod:`pipeline.nvdec`; its own fingerprint).
        env: Environment variables to set in this process first (the driver forwards its
            ``LONGVID_*`` ones, e.g. :mod:`pipeline.faults`, to workers it does not share a
            process environment with).
        run_started_at: When the run began (Unix time): a failure never replaces an ``ok`` row
            written after it (:func:`record_failure`).
        server: A :class:`~pipeline.backbone_server.BackboneServer` actor handle
            (``--topology gpu-server``): the batches go there, batched with other workers'
            ones, and this extractor loads no model; ``None``: its own models on ``device``.
    """

    def __init__(
        self,
        store_root: str,
        jobs: list[FeatureSetJob],
        *,
        scene_config: SceneDetectConfig,
        plan_config: PlanConfig | None = None,
        short_side_px: int = 256,
        batch_size: int = 32,
        num_threads: int | None = 1,
        decode_threads: int = 1,
        device: str = "cpu",
        decode: str = "sparse",
        env: dict[str, str] | None = None,
        run_started_at: float | None = None,
        server=None,
    ):
        os.environ.update(env or {})

        from pipeline.backbones import backbone_spec

        if server is None and num_threads:  # with a server, no torch here (1.6 s of start-up)
            import torch

            torch.set_num_threads(num_threads)
        self.store = FeatureStore(store_root)
        self.jobs = {job.feature_set: job for job in jobs}
        self.plans = {job.feature_set: job.plan or plan_config for job in jobs}
        if None in self.plans.values():
            raise ValueError("a feature-set job names no sampling plan and no plan_config given")
        self.server = server
        # Feature set -> its model, one per (backbone, weights, seed, precision, resize); none
        # with a server.
        models = load_models(jobs, device) if server is None else {}
        self.backbones = {job.feature_set: models[model_key(job)] for job in jobs if models}
        self.feature_sets = {name: self.store.open(name) for name in self.jobs}
        # Frames per window each backbone needs: 1 (centre frame) or its clip length.
        self.counts = {
            job.feature_set: backbone_spec(job.backbone, resize=job.resize).clip_frames(
                self.plans[job.feature_set].frames_per_clip)
            for job in jobs
        }
        self.pending: list[tuple[list, int, object]] = []  # (token list, index, server ref)
        self.scene_config = scene_config
        self.short_side_px = short_side_px
        self.decode_threads = decode_threads
        self.decode = decode
        if decode == "nvdec":
            from pipeline.nvdec import check_available

            check_available()  # a worker without it fails to start: the run stops, says why
        self.batch_size = batch_size
        self.run_started_at = run_started_at
        self.ready_at = time.time()

    def ready(self) -> float:
        """When this extractor finished loading its backbones (Unix time, s): the driver's
        measure of start-up (:attr:`~pipeline.extract_config.ExtractSummary.startup_sec`)."""
        return self.ready_at

    def node_id(self) -> str:
        """The Ray node this extractor runs on (hex id; ``local`` outside Ray)."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def process(self, video_id: str, path: str, feature_sets: list[str]) -> VideoResult:
        """Extract one video into ``feature_sets`` (a subset of this extractor's jobs).

        Never raises for a bad video: the failure is written to the index and returned.
        """
        try:
            return self._process(video_id, path, feature_sets)
        except BackboneServerLost:
            raise  # not this video's fault: the driver stops the run
        except Exception as err:  # any per-video failure is recorded, never fatal to the run
            if isinstance(err, VideoError):
                message = str(err)
            else:
                where = traceback.extract_tb(err.__traceback__)[-1]
                message = (
                    f"{path}: {type(err).__name__}: {err} "
                    f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
                )
            written = [record_failure(self.feature_sets[name], video_id, message,
                                      run_started_at=self.run_started_at)
                       for name in feature_sets]
            if not any(written):
                message += " (not recorded: another run stored the video since this run began)"
            return VideoResult(video_id, "failed", error=message)

    def _process(self, video_id: str, path: str, feature_sets: list[str]) -> VideoResult:
        t0 = time.perf_counter()
        source = source_identity(path)  # recorded: a later run notices a changed file
        maybe_crash("hang", video_id)
        maybe_crash("start", video_id)
        detect = self.scene_config.detector != "none"
        groups: dict[PlanConfig, list[str]] = {}  # plan -> its feature sets due for this video
        for name in feature_sets:
            groups.setdefault(self.plans[name], []).append(name)
        # Without scene detection, fixed plans need only the frames they sample.
        sparse = (self.decode in ("sparse", "nvdec") and not detect
                  and all(plan.name != "scene" for plan in groups))
        try:
            run = self._embed(path, groups, detect=detect, sparse=sparse)
        except SparseDecodeUnsupported:
            run = self._embed(path, groups, detect=detect, sparse=False)
        cut_frames = sorted(set(c for c in run.cuts if c < len(run.times)))
        cut_sec = [run.times[c] for c in cut_frames]
        info = {
            "fps": run.info.fps,
            "num_frames": len(run.times),
            "num_scenes": len(cut_frames) + 1 if detect else None,
            "width_px": run.info.width_px,
            "height_px": run.info.height_px,
            "cut_frames": cut_frames,
            "cut_sec": cut_sec,
            "variable_frame_rate": is_variable_frame_rate(run.times),
            "source": source,
        }
        end_sec = (video_end_sec(run.times[-1], run.info.fps, run.info.duration_sec)
                   if run.times else 0.0)
        for plan in groups:  # all or nothing: no feature set is written before this check
            if not run.spans[plan]:
                raise VideoError(f"{path}: the {plan.name} plan found no window to sample")
        for plan, names in groups.items():
            self._write(video_id, names, run.tokens, run.spans[plan], plan=plan, cut_sec=cut_sec,
                        detect=detect, duration_sec=end_sec, info=info)
        total_sec = time.perf_counter() - t0
        return VideoResult(
            video_id,
            "ok",
            num_frames=len(run.times),
            num_tokens=sum(len(s) for s in run.spans.values()),
            decode_sec=total_sec - run.backbone_sec,
            backbone_sec=run.backbone_sec,
            num_decoded=run.num_decoded,
        )

    def _embed(self, path: str, groups: dict[PlanConfig, list[str]], *, detect: bool,
               sparse: bool) -> "_Embedded":
        """Decode ``path`` once (every frame, or with ``sparse`` only those the fixed plans
        sample: :mod:`pipeline.sparse_decode`), sample every plan's windows and run each
        backbone on them in batches.

        Raises:
            VideoError: the video cannot be decoded.
            SparseDecodeUnsupported: ``sparse`` and the video cannot be decoded sparsely.
        """
        self.pending.clear()  # a failed video's answers are not waited for
        reader = VideoReader(path, short_side_px=self.short_side_px,
                             decode_threads=self.decode_threads)
        info = reader.info
        segmenter = SceneSegmenter(self.scene_config, info.fps) if detect else None
        samplers = {
            plan: make_sampler(plan, fps=info.fps, duration_sec=info.duration_sec,
                               counts={self.counts[name] for name in names})
            for plan, names in groups.items()
        }
        frames, index = plan_frames(reader, samplers, sparse=sparse,
                                    nvdec=self.decode == "nvdec")
        # Every frame's presentation time, seconds: from the index, or filled while decoding.
        times: list[float] = [] if index is None else index.time_sec.tolist()
        run = _Embedded(info=info, times=times,
                        tokens={n: [] for ns in groups.values() for n in ns},
                        spans={plan: [] for plan in groups})
        pending: dict[PlanConfig, list[Window]] = {plan: [] for plan in groups}
        # Only window metadata outlives a batch, never the sampled pixels: memory stays bounded
        # by the batches and the samplers' buffers, whatever the video's length.
        for plan, window in stream_plan_windows(frames, samplers, segmenter, run.cuts,
                                                None if index is not None else times):
            pending[plan].append(window)
            if len(pending[plan]) >= self.batch_size:
                self._flush(run, plan, pending[plan], groups[plan])
                pending[plan] = []
        for plan, windows in pending.items():
            self._flush(run, plan, windows, groups[plan])
        run.backbone_sec += self._resolve(0)
        run.num_decoded = reader.num_decoded
        return run

    def _flush(self, run: "_Embedded", plan: PlanConfig, windows: list[Window],
               names: list[str]) -> None:
        """Run the backbones of ``names`` on ``windows`` and keep the windows' spans."""
        run.backbone_sec += self._run_backbones(windows, names, run.tokens)
        run.spans[plan] += [(w.scene_idx, w.start_sec, w.end_sec) for w in windows]

    def _write(self, video_id: str, names: list[str], tokens: dict[str, list[np.ndarray]],
               spans: list[tuple], *, plan: PlanConfig, cut_sec: list[float], detect: bool,
               duration_sec: float, info: dict) -> None:
        """Commit one plan's feature sets of a video, with each token's span and scene."""
        scene_idx, start_sec, end_sec = (np.array(c) for c in zip(*spans))
        if not detect:
            scene_idx = np.full(len(spans), -1)
        elif plan.name != "scene":
            # A window belongs to the scene shown at its centre.
            scene_idx = np.searchsorted(cut_sec, (start_sec + end_sec) / 2, side="right")
        for name in names:
            self.feature_sets[name].write_video(
                video_id,
                np.concatenate(tokens[name]),
                start_sec=start_sec.astype(np.float32),
                end_sec=end_sec.astype(np.float32),
                scene_idx=scene_idx.astype(np.int32),
                duration_sec=duration_sec,
                info=info,
            )

    def _run_backbones(
        self, windows: list[Window], feature_sets: list[str], tokens: dict[str, list[np.ndarray]]
    ) -> float:
        """Append each backbone's tokens of ``windows``, cast to the stored dtype at once (a long
        video's tokens never sit in float32); returns seconds spent."""
        if not windows:
            return 0.0
        t0 = time.perf_counter()
        for name in feature_sets:
            count = self.counts[name]
            dtype = np.dtype(self.feature_sets[name].attrs["dtype"])
            batch = window_batch(windows, count)  # (S, H, W, 3) or (S, F, H, W, 3)
            step = max(1, self.batch_size // count)
            for lo in range(0, len(batch), step):
                if self.server is not None:
                    self._send(name, batch[lo : lo + step], dtype, tokens[name])
                    continue
                out = self.backbones[name](batch[lo : lo + step], self.jobs[name].token_kind)
                tokens[name].append(out.astype(dtype))  # (s, D) or (s, N, D)
        return time.perf_counter() - t0

    def _send(self, name: str, frames: np.ndarray, dtype: np.dtype, out: list) -> None:
        """Send one batch of feature set ``name`` to the server; its tokens take their place
        in ``out`` when resolved. Decoding goes on while the server works, with at most
        :data:`MAX_PENDING` batches of this worker outstanding (bounded memory)."""
        job = self.jobs[name]
        out.append(None)
        ref = self.server.embed.remote(model_key(job), frames, job.token_kind, dtype.name)
        self.pending.append((out, len(out) - 1, ref))
        self._resolve(MAX_PENDING)

    def _resolve(self, keep: int) -> float:
        """Wait for the server's answers until at most ``keep`` batches are outstanding;
        returns seconds waited.

        Raises:
            BackboneServerLost: the server died (and Ray could not restart it).
        """
        import ray

        t0 = time.perf_counter()
        while len(self.pending) > keep:
            out, idx, ref = self.pending.pop(0)
            try:
                out[idx] = ray.get(ref)  # (s, D) or (s, N, D), already in the stored dtype
            except ray.exceptions.RayActorError as err:
                self.pending.clear()
                raise BackboneServerLost(f"the backbone server died: {err}") from err
            except Exception:
                self.pending.clear()  # the video fails; no answer of it is waited for again
                raise
        return time.perf_counter() - t0

