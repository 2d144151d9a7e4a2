"""Sparse decoding: decode only the frames a fixed sampling plan takes, and what they depend on.

A plan without scene detection (``fps``, ``uniform``, ``full``, ``clips`` with ``--detector
none``) samples a few frames per second, yet a full decode reconstructs every frame. Here:

1. :func:`frame_index` demuxes the file once without decoding: every frame's presentation
   time (PTS), in presentation and in decode order, and which packets are keyframes. From the
   times the sampler names the frames it will take
   (:meth:`~pipeline.sampling.FixedSampler.needed_frames`): exactly those a full decode would
   give it.
2. :func:`decode_intervals` turns them into runs of packets (decode order) that start at a
   keyframe: for each needed frame, from the last keyframe at or before it (in decode order
   and in time, so an open GOP's leading pictures start one GOP earlier) to its own packet.
   Packets between runs are never decoded: where a whole GOP or more lies between two runs
   the reader seeks to the next run's keyframe, a shorter gap is read and dropped.
3. :func:`sparse_frames` feeds each run to the decoder, drains and flushes it after the run,
   and asks the decoder to drop non-reference pictures nobody needs (``skip_frame = NONREF``
   on packets whose PTS no window takes; H.264 and HEVC: nothing refers to such a picture, so
   every other picture decodes bit-identically).

Tokens are identical to a full decode's (``tests/test_sparse_decode.py`` compares them on
footage with B-frames, open GOPs and a variable frame rate). Whatever a sparse decode cannot
vouch for (packets without PTS, duplicate PTS, packets an edit list discards, a decoded PTS
the index does not list, frames out of order) raises :class:`SparseDecodeUnsupported` and the
caller decodes the video in full instead. Corruption inside packets that are never decoded
goes unnoticed: those frames feed no token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.decode import Frame, VideoError, VideoReader, _open, check_complete

# Codecs whose decoders drop non-reference pictures on request without touching any other.
NONREF_SKIP_CODECS = frozenset({"h264", "hevc"})


class SparseDecodeUnsupported(Exception):
    """This video cannot be decoded sparsely with identical frames; decode it in full."""


@dataclass(frozen=True)
class FrameIndex:
    """Every frame of a video stream as its packets list them (read by demuxing, no decoding).

    Attributes:
        pts: (N,) presentation timestamps (stream time base), in presentation order.
        time_sec: (N,) presentation times, seconds from the first frame, computed exactly as
            :class:`~pipeline.decode.VideoReader` computes them.
        decode_position: (N,) the packet position (decode order) of each frame.
        keyframe_positions: (K,) packet positions of the keyframes, ascending.
    """

    pts: np.ndarray
    time_sec: np.ndarray
    decode_position: np.ndarray
    keyframe_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def decode_order_pts(self) -> np.ndarray:
        """(N,) the PTS of each packet, in decode order."""
        return self.pts[np.argsort(self.decode_position)]


def frame_index(path: str) -> FrameIndex | None:
    """Demux ``path``'s video stream (no decoding) into a :class:`FrameIndex`.

    Returns:
        The index, or ``None`` when the packets cannot vouch for a sparse decode (no PTS,
        duplicate PTS, packets flagged corrupt or discarded by an edit list, a demux error):
        the caller then decodes in full, which also reports a broken file properly.
    """
    import av

    try:
        container = _open(path)
    except VideoError:
        return None  # the full decode raises it with its message
    try:
        stream = container.streams.video[0]
        time_base = float(stream.time_base) if stream.time_base else None
        pts, keyframe = [], []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream packet
            if packet.pts is None or packet.is_discard or packet.is_corrupt:
                return None
            pts.append(int(packet.pts))
            keyframe.append(bool(packet.is_keyframe))
    except av.error.FFmpegError:
        return None
    finally:
        container.close()
    if not pts or time_base is None or not keyframe[0]:
        return None
    order = sorted(range(len(pts)), key=pts.__getitem__)  # decode positions by presentation
    sorted_pts = [pts[k] for k in order]
    if any(a == b for a, b in zip(sorted_pts, sorted_pts[1:])):
        return None
    first = sorted_pts[0]
    return FrameIndex(
        pts=np.array(sorted_pts, dtype=np.int64),
        # Python ints and floats, as the reader computes (frame.pts - first_pts) * time_base.
        time_sec=np.array([(p - first) * time_base for p in sorted_pts], dtype=np.float64),
        decode_position=np.array(order, dtype=np.int64),
        keyframe_positions=np.flatnonzero(keyframe),
    )


def plan_frames(reader: VideoReader, samplers, *, sparse: bool, nvdec: bool = False
                ) -> tuple[Iterator[Frame] | VideoReader, FrameIndex | None]:
    """The frames to push into ``samplers`` (fixed-plan samplers when ``sparse``): with
    ``sparse`` and an index of the file's packets, only the frames they take
    (:func:`sparse_frames`, or with ``nvdec`` the GPU's decoders:
    :func:`pipeline.nvdec.nvdec_frames`); else every frame, from ``reader`` itself.

    Returns:
        ``(frames, index)``; ``index`` is ``None`` when every frame is decoded.

    Raises:
        VideoError: ``nvdec`` and the packets cannot be indexed (NVDEC frames are chosen by
            the index; the video is not decoded on the CPU instead).
    """
    index = frame_index(reader.path) if sparse or nvdec else None
    if index is None and nvdec:
        raise VideoError(f"{reader.path}: its packets cannot be indexed (no or duplicate PTS, "
                         "or the file is truncated or corrupt), which --decode nvdec needs; "
                         "check the file, or extract it with --decode sparse, into its own "
                         "feature set")
    if index is None:
        return reader, None
    needed = set().union(*(s.needed_frames(index.time_sec) for s in samplers.values()))
    if nvdec:
        from pipeline.nvdec import nvdec_frames

        return nvdec_frames(reader, index, needed), index
    return sparse_frames(reader, index, needed), index


def decode_intervals(index: FrameIndex, frames: set[int]) -> list[tuple[int, int]]:
    """Runs of packets (decode positions, both ends included) that decode ``frames``.

    Each needed frame (presentation index) is decoded from the last keyframe that precedes it
    both in decode order and in time; overlapping or adjacent runs are merged.

    Returns:
        ``[(first, last), ...]`` ascending and disjoint; every run starts at a keyframe.
    """
    keys = index.keyframe_positions
    key_pts = index.decode_order_pts[keys]  # PTS of each keyframe
    runs = []
    for frame in sorted(frames):
        position, pts = int(index.decode_position[frame]), int(index.pts[frame])
        k = int(np.searchsorted(keys, position, side="right")) - 1
        while k > 0 and key_pts[k] > pts:  # a leading picture of an open GOP: one GOP back
            k -= 1
        runs.append((int(keys[k]), position))
    merged: list[list[int]] = []
    for first, last in sorted(runs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(first, last) for first, last in merged]


def sparse_frames(reader: VideoReader, index: FrameIndex, frames: set[int]) -> Iterator[Frame]:
    """Decode ``frames`` (presentation indices into ``index``) of ``reader``'s video, in
    presentation order, as a full decode would give them (same pixels, ``frame_idx`` and
    ``time_sec``). ``reader.num_decoded`` counts the pictures actually decoded.

    Raises:
        VideoError: the index lists under 90 % of the frames the header announces (truncated
            file), or the decoder fails on a packet it needs.
        SparseDecodeUnsupported: the decoded pictures do not match the index (see the module
            docstring); nothing the caller should record, just decode in full.
    """
    import av

    check_complete(reader, len(index))
    wanted = set(frames) | {0}  # the first frame checks the time origin
    runs = decode_intervals(index, wanted)
    by_pts = {int(p): i for i, p in enumerate(index.pts)}
    wanted_pts = {int(index.pts[i]) for i in wanted}
    container = reader._container
    stream = container.streams.video[0]
    reader.configure_threads(stream)
    codec = stream.codec_context
    skip_nonref = codec.name in NONREF_SKIP_CODECS
    state = {"last": -1, "first": True, "yielded": 0}

    def emit(pictures) -> Iterator[Frame]:
        for picture in pictures:
            frame_idx = by_pts.get(picture.pts)
            if frame_idx is None or (state["first"] and frame_idx != 0):
                raise SparseDecodeUnsupported(f"{reader.path}: decoded PTS {picture.pts} does "
                                              "not match the demuxed index")
            state["first"] = False
            reader.num_decoded += 1
            if frame_idx in frames:
                if frame_idx <= state["last"]:
                    raise SparseDecodeUnsupported(f"{reader.path}: frames out of order")
                state["last"] = frame_idx
                state["yielded"] += 1
                yield Frame(frame_idx, float(index.time_sec[frame_idx]), picture=picture,
                            converter=reader._converter)

    position_of = {int(p): int(k) for p, k in zip(index.pts, index.decode_position)}
    pts_at = index.decode_order_pts  # decode position -> PTS
    keys = index.keyframe_positions
    run, in_run = 0, False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            position = position_of.get(packet.pts)
            if position is None:
                raise SparseDecodeUnsupported(f"{reader.path}: a packet the index lacks")
            if position < runs[run][0]:
                continue  # between runs: read, never decoded
            if not in_run and position > runs[run][0]:
                raise SparseDecodeUnsupported(f"{reader.path}: a seek passed its keyframe")
            in_run = True
            if skip_nonref:
                codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
            yield from emit(codec.decode(packet))
            if position == runs[run][1]:
                yield from emit(codec.decode(None))  # drain the run's reordered pictures
                codec.flush_buffers()
                run, in_run = run + 1, False
                if run == len(runs):
                    break
                start, after = runs[run][0], np.searchsorted(keys, position, side="right")
                if after < len(keys) and start > keys[after]:
                    # A GOP or more to skip: seek to the run's keyframe instead of reading.
                    container.seek(int(pts_at[start]), stream=stream, backward=True,
                                   any_frame=False)
    except av.error.FFmpegError as err:
        raise VideoError(f"{reader.path}: truncated or corrupt: decoding failed after "
                         f"{reader.num_decoded} frames ({err})") from err
    finally:
        container.close()
    if state["yielded"] != len(frames) or run != len(runs):
        raise SparseDecodeUnsupported(f"{reader.path}: a needed frame was not decoded")
