"""Frames of a video file, sampled as the data pipeline samples a video sample (PyAV, an lmms-eval dependency).

The frame times come from the container (a first pass over the packets, without decoding); the
frames kept are `data.chat.select_frames`' choice: closest to 0, 1/fps, 2/fps, ..., at most
`max_frames`. Only those are decoded into RGB images.

    frames, times = read_video("clip.mp4", fps=2.0, max_frames=16)
"""

from __future__ import annotations

from PIL import Image

from casa_adapter.data.chat import select_frames


def read_video(path: str, fps: float, max_frames: int) -> tuple[list[Image.Image], list[float]]:
    """(frames as RGB images, their times in seconds from the first frame) of the video at `path`."""
    import av  # installed with lmms-eval; only video inputs need it

    try:
        container = av.open(path)
    except (av.error.FileNotFoundError, av.error.InvalidDataError) as e:
        raise ValueError(f"cannot read video {path}: {e}") from e
    with container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        if not pts:
            raise ValueError(f"video {path} has no frames")
        times = [float((t - pts[0]) * stream.time_base) for t in pts]
        keep = {pts[i] for i in select_frames(times, fps, max_frames)}
        container.seek(0)
        frames = [f.to_image().convert("RGB") for f in container.decode(stream) if f.pts in keep]
    if len(frames) != len(keep):
        raise ValueError(f"video {path}: {len(keep)} frames selected, {len(frames)} decoded")
    return frames, [times[pts.index(t)] for t in sorted(keep)]


__all__ = ["read_video"]
