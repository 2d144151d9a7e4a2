"""The settings and the counts of one ``pipeline extract`` run: :class:`ExtractConfig` and
:class:`ExtractSummary`.

A module of their own so that the driver (:mod:`pipeline.extract`) and the execution of its
to-do list (:mod:`pipeline.execution`) can both import them without importing each other. Both
are re-exported by :mod:`pipeline.extract`; both are stored, as dicts, in each feature set's
``runs/`` log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from pipeline.backbones import PRECISIONS, RESIZE_MODES, TOKEN_KINDS
from pipeline.sampling import PLANS, PlanConfig
from pipeline.scenes import SceneDetectConfig

DTYPES = ("float16", "float32")
DECODE_MODES = ("sparse", "full", "nvdec")
TOPOLOGIES = ("per-worker", "gpu-server")


class Feature(NamedTuple):
    """One feature set of a run: a backbone's tokens of one kind on one sampling plan, with its
    frame geometry (``None``: the run's ``--resize``)."""

    backbone: str
    plan: str
    tokens: str = "pooled"
    resize: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Feature":
        """``BACKBONE:PLAN[:TOKENS[:RESIZE]]``, e.g. ``vit_b16:fps:patch`` or
        ``vit_l16_in21k:fps:patch:squash``.

        Raises:
            ValueError: not of that form, or an unknown plan, token kind or resize mode.
        """
        parts = text.split(":")
        if len(parts) not in (2, 3, 4) or not all(parts):
            raise ValueError(f"--feature {text!r}: write BACKBONE:PLAN[:TOKENS[:RESIZE]], e.g. "
                             "resnet18:scene or vit_l16_in21k:fps:patch:squash")
        feature = cls(*parts)
        if feature.plan not in PLANS:
            raise ValueError(f"--feature {text!r}: unknown plan {feature.plan!r}; valid: "
                             f"{', '.join(PLANS)}")
        if feature.tokens not in TOKEN_KINDS:
            raise ValueError(f"--feature {text!r}: unknown token kind {feature.tokens!r}; "
                             f"valid: {', '.join(TOKEN_KINDS)}")
        if feature.resize is not None and feature.resize not in RESIZE_MODES:
            raise ValueError(f"--feature {text!r}: unknown resize {feature.resize!r}; valid: "
                             f"{', '.join(RESIZE_MODES)}")
        return feature


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``pipeline extract`` needs; stored with every feature set it writes."""

    # Catalog key and its directory (the demo is built there if missing).
    dataset: str = "demo"
    data_root: str = "data/demo"
    # Backbones sharing one decode of each video; one feature set each.
    backbones: tuple[str, ...] = ("resnet18", "r2plus1d_18")
    # Sampling plan: scene (STAN), uniform (STAM), fps (ViS4mer), full (VTN), clips.
    plan: str = "scene"
    # Plan knobs: uniform tokens per video, fps tokens per second, full tokens per video,
    # clip window length (s), frames per clip for clip backbones (None: 12 for scene, else
    # the backbone's own clip length).
    num_frames: int = 16
    fps: float = 1.0
    full_num_frames: int = 250
    clip_len_sec: float = 2.0
    frames_per_clip: int | None = None
    # Token kind: pooled (T, D) or patch (T, N, D; ViTs only).
    tokens: str = "pooled"
    # Several feature sets from one decode and one scene detection of each video, as
    # "BACKBONE:PLAN[:TOKENS[:RESIZE]]" (e.g. "resnet18:scene", "vit_l16_in21k:fps:patch:squash";
    # RESIZE defaults to `resize` below); the plan knobs apply to every feature on that plan. Empty: every backbone on `plan` with `tokens`.
    # When given, `backbones`, `plan` and `tokens` are set from it (its backbones, its first
    # feature's plan and token kind).
    features: tuple[str, ...] = ()
    # Frame geometry before the backbones: crop (short side, then the centre square: the
    # weights' own eval transform) or squash (the whole frame resized to the square, nothing
    # cut away: ViS4mer §4.4). Fingerprinted only when not crop, so older feature sets keep
    # their names.
    resize: str = "crop"
    # Store directory or fsspec URL (s3://bucket/store, file:///shared/store, ...).
    store: str = "store"
    # --weights values: default (pretrained, through the library's cache) | none (seeded random
    # init: only when asked, e.g. demo, tests, benches) | PATH | BACKBONE=SPEC.
    weights: tuple[str, ...] = ("default",)
    # Seed of random-init weights (`none`).
    seed: int = 0
    # Stored token dtype; float16 halves the store with no loss that matters for heads.
    dtype: str = "float16"
    # Backbone arithmetic: fp32, bf16 (autocast) or auto (bf16 where the hardware has it).
    precision: str = "auto"
    # Scene detection (PySceneDetect detector, threshold, min scene length in frames; width and
    # swscale interpolation of the detector's thumbnail).
    detector: str = "content"
    threshold: float | None = None
    min_scene_len: int = 15
    detect_width_px: int | None = 160
    detect_interpolation: str = "fast_bilinear"
    # sparse: runs whose plans are all fixed and use no scene detector (--detector none)
    # decode only the frames the plans sample (pipeline.sparse_decode: identical tokens, far
    # fewer frames decoded); full: every frame, always. Not fingerprinted: tokens are the same.
    # nvdec: those frames from the GPU's decoders (pipeline.nvdec; other pixels: fingerprinted).
    decode: str = "sparse"
    # Decoded frames are scaled so their short side is at most this (backbones resize anyway).
    short_side_px: int = 256
    # Frames per backbone batch.
    batch_size: int = 32
    # Ray cluster address; None starts Ray locally.
    address: str | None = None
    # Parallel extractors; None = one per CPU Ray offers (per GPU share with gpus_per_worker);
    # 0 = in this process, no Ray.
    num_workers: int | None = None
    # GPUs each extractor reserves (Ray num_gpus; fractions share a GPU); > 0 runs the
    # backbones on CUDA, on GPU worker nodes (docker/).
    gpus_per_worker: float = 0.0
    # per-worker: every extractor runs its own models (on its GPU share with gpus_per_worker);
    # gpu-server: extractors decode and sample on the CPUs (one per core) and send their batches
    # to one backbone server per GPU (pipeline.backbone_server; on a cluster without GPUs, one
    # on the CPU), which batches frames from many videos. Not fingerprinted: the same tokens
    # (up to float rounding of the larger batches, well under the float16 store's step).
    topology: str = "per-worker"
    # gpu-server: most frames per forward on a server (clips: this // frames per clip).
    server_batch_size: int = 256
    # Times a video is retried on a fresh worker after its worker process died (OOM kill,
    # decoder segfault, lost node) before it is recorded as failed.
    crash_retries: int = 2
    # Longest a video may take on a worker, seconds; past it the worker is killed and the video
    # recorded as failed ("timed out after N s"); 0 = no limit.
    video_timeout_sec: float = 3600.0
    # Process only the first N videos of the catalog (smoke runs).
    limit: int | None = None
    # At the end, pack the run's one-video parts into large parts (pipeline.compact): training
    # then reads a part at a time instead of opening one Zarr group per video.
    compact: bool = True
    # Catalog-specific options (e.g. {"variant": "small"} for the demo).
    catalog_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features:
            parsed = [Feature.parse(text) for text in self.features]
            parsed = [f._replace(resize=f.resize or self.resize) for f in parsed]
            if len(set(parsed)) < len(parsed):
                raise ValueError(f"--feature: a feature is given twice in {list(self.features)}")
            # frozen: the derived fields are set once, here
            object.__setattr__(self, "backbones", tuple(dict.fromkeys(f.backbone for f in parsed)))
            object.__setattr__(self, "plan", parsed[0].plan)
            object.__setattr__(self, "tokens", parsed[0].tokens)
            for feature in parsed:
                self.plan_config(feature.plan)  # validates that plan's knobs
                if feature.plan == "scene" and self.detector == "none":
                    raise ValueError(f"--feature {':'.join(feature)}: the scene plan needs a "
                                     "scene detector; --detector none fits other plans")
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"--tokens {self.tokens!r}: valid values are {', '.join(TOKEN_KINDS)}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"--resize {self.resize!r}: valid values are {', '.join(RESIZE_MODES)}"
            )
        self.plan_config()  # validates the plan and its knobs
        if self.plan == "scene" and self.detector == "none":
            raise ValueError("the scene plan needs a scene detector; --detector none fits other plans")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision!r}: valid values are {', '.join(PRECISIONS)}"
            )
        if self.decode not in DECODE_MODES:
            raise ValueError(
                f"--decode {self.decode!r}: valid values are {', '.join(DECODE_MODES)}"
            )
        if self.decode == "nvdec":
            self._check_nvdec()
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: valid values are {', '.join(DTYPES)}")
        if not self.backbones:
            raise ValueError("give at least one --backbone")
        self.scene_config()  # validates
        if self.crash_retries < 0:
            raise ValueError(f"crash_retries must be >= 0, not {self.crash_retries}")
        if self.video_timeout_sec < 0:
            raise ValueError(f"--video-timeout-sec must be >= 0 (0: no limit), not "
                             f"{self.video_timeout_sec}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"--topology {self.topology!r}: valid values are "
                             f"{', '.join(TOPOLOGIES)}")
        if self.topology == "gpu-server" and (self.num_workers == 0 or self.gpus_per_worker):
            raise ValueError("--topology gpu-server: needs Ray workers (not --num-workers 0), and "
                             "its workers hold no GPU (drop --gpus-per-worker: the servers take "
                             "one GPU each)")
        if self.topology == "gpu-server" and self.precision == "auto":
            # The precision is fingerprinted before Ray starts, so auto cannot know whether the
            # servers will sit on GPUs (bf16) or on the CPU.
            raise ValueError("--topology gpu-server: give --precision bf16 (GPU servers) or fp32; "
                             "auto is resolved before the cluster and its GPUs are known")
        if self.server_batch_size < 1:
            raise ValueError(f"--server-batch-size must be >= 1, not {self.server_batch_size}")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker and self.num_workers == 0):
            raise ValueError(
                f"--gpus-per-worker {self.gpus_per_worker}: needs Ray workers (not --num-workers 0) "
                "and a value >= 0"
            )

    def _check_nvdec(self) -> None:
        """``--decode nvdec`` feeds fixed plans without scene detection, on workers that hold
        a GPU (not gpu-server's)."""
        plans = sorted({f.plan for f in self.feature_list()})
        if self.detector != "none" or "scene" in plans:
            raise ValueError(f"--decode nvdec: the GPU's decoders feed fixed plans (fps, uniform, "
                             f"full, clips) with --detector none; this run has --detector "
                             f"{self.detector} and plans {', '.join(plans)}")
        if self.topology == "gpu-server":
            raise ValueError("--decode nvdec: gpu-server's workers hold no GPU to decode on; use "
                             "--topology per-worker with --gpus-per-worker")

    def scene_config(self) -> SceneDetectConfig:
        """The scene detector with this run's settings."""
        return SceneDetectConfig(
            self.detector, self.threshold, self.min_scene_len, self.detect_width_px,
            self.detect_interpolation,
        )

    def feature_list(self) -> list[Feature]:
        """The run's feature sets: ``features``, or every backbone on ``plan`` with ``tokens``."""
        if self.features:
            return [f._replace(resize=f.resize or self.resize)
                    for f in map(Feature.parse, self.features)]
        return [Feature(backbone, self.plan, self.tokens, self.resize)
                for backbone in self.backbones]

    def plan_config(self, plan: str | None = None) -> PlanConfig:
        """Sampling plan ``plan`` (default: ``self.plan``) with this run's knobs."""
        plan = plan or self.plan
        frames_per_clip = self.frames_per_clip
        if frames_per_clip is None and plan == "scene":
            frames_per_clip = 12  # STAN §3: 12 frames per scene for the 3D stream
        return PlanConfig(
            name=plan,
            num_frames=self.num_frames,
            fps=self.fps,
            full_num_frames=self.full_num_frames,
            clip_len_sec=self.clip_len_sec,
            frames_per_clip=frames_per_clip,
        )


@dataclass
class ExtractSummary:
    """Counts of one run, plus the failures with their reasons."""

    feature_sets: list[str]
    num_videos: int
    num_skipped: int  # already stored: no work done
    # Catalog videos with no file on disk (null path, e.g. dead YouTube links of a benchmark):
    # not extracted and not written to the store index, only listed here and in runs/.
    missing: list[str] = field(default_factory=list)
    num_ok: int = 0
    num_failed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    # Stored videos whose source file changed since (pipeline.sources): re-extracted; why.
    changed: dict[str, str] = field(default_factory=dict)
    num_worker_crashes: int = 0  # worker processes that died; their videos were retried
    videos_per_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> videos done
    num_frames: int = 0  # frames of the videos extracted
    num_decoded: int = 0  # pictures decoded (fewer than num_frames with sparse decoding)
    # Worker-seconds over the videos extracted: in the backbones (with --topology gpu-server,
    # waiting for the server's answers), and in the rest (decoding, scene detection, sampling,
    # writing). Their sum over the run's wall_sec is the workers' busy share.
    backbone_sec: float = 0.0
    decode_sec: float = 0.0
    wall_sec: float = 0.0  # decoding and extraction, compaction not included
    # From the start of the run until its last first-round extractor had its backbones loaded
    # (Ray start, worker start, imports, weights): the part of wall_sec no frame is decoded in.
    startup_sec: float = 0.0
    started_at: float = 0.0  # Unix time (s) the run started
    compact_sec: float = 0.0  # packing the parts written (ExtractConfig.compact)
    # --topology gpu-server: seconds each backbone server spent in forwards, forwards run and
    # samples (frames or clips) they took; samples / forwards is the mean batch.
    server_busy_sec: list[float] = field(default_factory=list)
    server_num_forwards: int = 0
    server_num_samples: int = 0

    @property
    def frames_per_sec(self) -> float:
        return self.num_frames / self.wall_sec if self.wall_sec else 0.0
