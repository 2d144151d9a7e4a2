"""Decoding on the GPU's video decoders (NVDEC) through NVIDIA's PyNvVideoCodec
(``--decode nvdec``; issue 19 item 3).

On a GPU node the CPUs bind extraction: a 16-core node decodes 720p H.264 at about 7,000
frames/s, while one GPU runs a ViT several times faster. With ``--decode nvdec`` the fixed plans
(``fps``, ``uniform``, ``full``, ``clips``, with ``--detector none``) ask the GPU's decoders for
exactly the frames :mod:`pipeline.sparse_decode` would decode and sample: the same packet index
(:func:`~pipeline.sparse_decode.frame_index`, a demux pass on the CPU), the same
:meth:`~pipeline.sampling.FixedSampler.needed_frames`. Each frame is decoded to RGB in GPU
memory, scaled there to the working resolution (bilinear, antialiased) and copied to the host as
BGR, as the CPU reader's frames are; the samplers, backbones and store then run unchanged.

The pixels are not the CPU path's: NVDEC's colour conversion and torch's scaling differ from
FFmpeg's swscale by a few levels, so the tokens differ slightly and ``--decode nvdec`` is part
of the feature set's fingerprint (its own feature set, never mixed with CPU-decoded videos). A
video NVDEC cannot decode as indexed fails with a clear error; it is never decoded on the CPU
into the same feature set.

Needs PyNvVideoCodec (``pip install pynvvideocodec``; ``docker build --build-arg NVDEC=1``),
torch and an NVIDIA GPU with the driver's video decoder, visible to the worker
(``--gpus-per-worker``). Checked by ``bench/gpu_check.sh``; not verified on a GPU yet.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.decode import Frame, VideoError, check_complete

# Frames asked of the decoder at once: full-resolution RGB in GPU memory, scaled as float32
# (4K: 16 x 25 MB x 4 bytes/level = 1.6 GB at the peak).
NVDEC_BATCH = 16


class NvdecUnavailable(RuntimeError):
    """``--decode nvdec`` cannot run here: PyNvVideoCodec, torch's CUDA or a GPU is missing."""


def check_available() -> None:
    """Raises :class:`NvdecUnavailable`, naming what is missing and the fix, unless
    PyNvVideoCodec imports and torch sees a GPU."""
    try:
        import PyNvVideoCodec  # noqa: F401
        import torch
    except Exception as err:  # ImportError, or its driver check (RuntimeError)
        raise NvdecUnavailable(
            f"--decode nvdec needs NVIDIA's PyNvVideoCodec ({type(err).__name__}: {err}); "
            "install it (pip install pynvvideocodec, or docker build --build-arg NVDEC=1) or "
            "decode on the CPU (--decode sparse)") from err
    if not torch.cuda.is_available():
        raise NvdecUnavailable("--decode nvdec: torch sees no GPU in this worker; give the "
                               "workers GPUs (--gpus-per-worker) or decode on the CPU")


def nvdec_frames(reader, index, frames: set[int], *, gpu_id: int = 0) -> Iterator[Frame]:
    """``frames`` (presentation indices into ``index``) of ``reader``'s video, decoded by
    NVDEC, in presentation order, at ``reader``'s working resolution (``frame_idx`` and
    ``time_sec`` from ``index``, as :func:`~pipeline.sparse_decode.sparse_frames` gives them).
    ``reader.num_decoded`` counts the frames asked of the decoder (it decodes each one's GOP
    from its keyframe on its own).

    Raises:
        VideoError: the index lists under 90 % of the frames the header announces (truncated
            file), the decoder counts another number of frames than the index (its indices
            would name other frames), or it fails on the file.
    """
    import PyNvVideoCodec as nvc
    import torch
    import torch.nn.functional as F

    path = reader.path
    reader._container.close()  # the packets were indexed; NVDEC reads the file itself
    check_complete(reader, len(index))  # as sparse decoding does
    try:
        decoder = nvc.SimpleDecoder(path, gpu_id=gpu_id, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGB)
        num_frames = len(decoder)
    except Exception as err:
        raise VideoError(f"{path}: NVDEC cannot open it ({type(err).__name__}: {err}); "
                         "extract it with --decode sparse, into its own feature set") from err
    if num_frames != len(index):
        raise VideoError(f"{path}: NVDEC counts {num_frames} frames, the packet index "
                         f"{len(index)}; extract it with --decode sparse, into its own feature "
                         "set")
    width, height = reader.width_px, reader.height_px  # the CPU reader's working size
    wanted = sorted(frames)
    for lo in range(0, len(wanted), NVDEC_BATCH):
        chunk = wanted[lo:lo + NVDEC_BATCH]
        try:
            decoded = decoder.get_batch_frames_by_index(chunk)
        except Exception as err:
            raise VideoError(f"{path}: NVDEC failed on frames {chunk[0]}-{chunk[-1]} "
                             f"({type(err).__name__}: {err})") from err
        _check_frames(path, chunk, decoded, index)
        rgb = torch.stack([torch.from_dlpack(f) for f in decoded])  # (B, H, W, 3) uint8
        small = F.interpolate(rgb.permute(0, 3, 1, 2).float(), size=(height, width),
                              mode="bilinear", antialias=True, align_corners=False)
        # RGB -> BGR (the reader's frames), (B, h, w, 3) uint8 on the host
        bgr = small.round().clamp(0, 255).byte().flip(1).permute(0, 2, 3, 1).cpu().numpy()
        reader.num_decoded += len(chunk)
        for frame_idx, pixels in zip(chunk, bgr):
            yield Frame(frame_idx, float(index.time_sec[frame_idx]), np.ascontiguousarray(pixels))


def _check_frames(path: str, chunk: list[int], decoded: list, index) -> None:
    """That NVDEC gave one frame per index asked, each with the PTS the packet index lists for
    it (``DecodedFrame.getPTS``, stream time base): PyNvVideoCodec numbers the frames itself,
    and a numbering that parts from the index (an edit list, variable frame rate) would give
    other frames than sparse decoding's, silently. Frames without ``getPTS`` (other
    PyNvVideoCodec versions) are checked by count only.

    Raises:
        VideoError: a frame missing, or a frame at another PTS than its index's.
    """
    if len(decoded) != len(chunk):
        raise VideoError(f"{path}: NVDEC gave {len(decoded)} frames for the {len(chunk)} asked "
                         f"({chunk[0]}-{chunk[-1]}); extract it with --decode sparse, into its "
                         "own feature set")
    for frame_idx, frame in zip(chunk, decoded):
        get_pts = getattr(frame, "getPTS", None)
        if get_pts is None:
            return
        pts, expected = int(get_pts()), int(index.pts[frame_idx])
        if pts != expected:
            raise VideoError(f"{path}: NVDEC's frame {frame_idx} has PTS {pts}, the packet "
                             f"index's frame {frame_idx} PTS {expected}: its frame numbering "
                             "is not the container's (an edit list or variable frame rate?); "
                             "extract it with --decode sparse, into its own feature set")
