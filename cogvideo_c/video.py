"""``export_to_video`` / ``export_to_gif`` with diffusers' signatures (``diffusers.utils.export_utils``).

The MP4 goes through ``imageio-ffmpeg`` (its wheel ships an ffmpeg binary) with the ffmpeg command imageio's v2
``get_writer`` builds for diffusers: libx264, yuv420p, ``-crf int((1 - quality / 10) * 51)`` or ``-b:v bitrate``,
and an upscale to a multiple of ``macro_block_size``. Calling ``imageio_ffmpeg.write_frames`` directly gives the
same file without ``imageio`` (and its Pillow dependency). The GIF goes through Pillow, as in diffusers.

Float frames are converted exactly as diffusers does, ``(frame * 255).astype(uint8)``: a truncation, not a rounding
(so 0.5 -> 127). Values outside [0, 1] are clipped first (diffusers' cast would wrap them), uint8 arrays are taken
as they are, and PIL images are converted to RGB.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["export_to_gif", "export_to_video"]


def _is_pil_image(x) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert") and hasattr(x, "size")


def _frame_list(video_frames) -> list:
    """Frames as a list, with shapes checked before any work: PIL images or HxWx3 arrays (or one FxHxWx3 array)."""
    if isinstance(video_frames, np.ndarray):
        if video_frames.ndim == 5:
            raise ValueError(f"got a batch of videos of shape {video_frames.shape}; pass one video, e.g. frames[0]")
        if video_frames.ndim != 4:
            raise ValueError(f"video array must be [frames, height, width, 3], got shape {video_frames.shape}")
        frames = list(video_frames)
    elif isinstance(video_frames, Sequence) and not isinstance(video_frames, (str, bytes)):
        frames = list(video_frames)
    else:
        raise ValueError(
            f"video_frames must be a list of PIL images or of HxWx3 arrays, got {type(video_frames).__name__}"
        )
    if not frames:
        raise ValueError("video_frames is empty: there is nothing to write")
    sizes = set()
    for i, frame in enumerate(frames):
        if _is_pil_image(frame):
            sizes.add((frame.size[1], frame.size[0]))
            continue
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame {i} is a {type(frame).__name__}, expected a PIL image or a numpy array")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i} has shape {frame.shape}, expected [height, width, 3] (RGB)")
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise ValueError(f"frame {i} has an empty shape {frame.shape}")
        if frame.dtype != np.uint8 and not (np.issubdtype(frame.dtype, np.floating) or frame.dtype == np.bool_):
            raise ValueError(f"frame {i} has dtype {frame.dtype}, expected float in [0, 1] or uint8")
        sizes.add(frame.shape[:2])
    if len(sizes) > 1:
        raise ValueError(f"all frames must have the same size, got (height, width) {sorted(sizes)}")
    return frames


def _to_uint8(frame, index: int) -> np.ndarray:
    """One frame as a C-contiguous HxWx3 uint8 array (diffusers' conversion for floats)."""
    if _is_pil_image(frame):
        return np.ascontiguousarray(np.asarray(frame.convert("RGB"), dtype=np.uint8))
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.isfinite(frame).all():
        raise ValueError(f"frame {index} contains NaN or infinite values")
    # in the frame's own dtype, as diffusers computes it (float16 / float32 / float64 round differently)
    return np.ascontiguousarray(np.clip(frame * 255, 0, 255).astype(np.uint8))


def _output_path(path, suffix: str) -> tuple[str, bool]:
    """The path to write (a new temp file when None, as diffusers does); checks the folder before any work.

    Returns (path, created): created is True when this function made the file (so a failed write removes it).
    """
    if path is None:
        fd, path = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        return path, True
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"output path must be a non-empty str or os.PathLike, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"cannot write {path!r}: folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {path!r}: {folder!r} is not a folder")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write {path!r}: permission denied")
    return path, False


def _check_fps(fps) -> float | int:
    if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, numbers.Real) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return int(fps) if isinstance(fps, numbers.Integral) else float(fps)


def export_to_video(
    video_frames,
    output_video_path: str | os.PathLike | None = None,
    fps: int = 10,
    quality: float = 5.0,
    bitrate: int | None = None,
    macro_block_size: int | None = 16,
) -> str:
    """Writes an H.264 MP4 (yuv420p) and returns its path.

    video_frames: a list of PIL images, a list of HxWx3 float arrays in [0, 1] (or uint8), or one [F, H, W, 3]
        array (e.g. ``pipe(..., output_type="np").frames[0]``).
    output_video_path: where to write; None writes a new temporary ``.mp4`` file (as diffusers does).
    quality: 1 (worst) to 10 (best), libx264 ``-crf int((1 - quality / 10) * 51)``; ignored when ``bitrate`` is set.
        None adds no rate flag.
    bitrate: constant bitrate (``-b:v``), e.g. 2_000_000 or "2M".
    macro_block_size: width and height are scaled up to a multiple of it (16 by default, like imageio); None or 1
        keeps the size (libx264 with yuv420p still needs even sizes).
    """
    frames = _frame_list(video_frames)
    fps = _check_fps(fps)
    if bitrate is not None:
        quality = None  # imageio: a fixed bitrate disables the quality flag
    elif quality is not None:
        if isinstance(quality, (bool, np.bool_)) or not isinstance(quality, numbers.Real) or not 1 <= quality <= 10:
            raise ValueError(f"quality must be a number from 1 to 10 (or None), got {quality!r}")
        quality = float(quality)
    if macro_block_size is not None and (
        isinstance(macro_block_size, bool) or not isinstance(macro_block_size, int) or macro_block_size < 1
    ):
        raise ValueError(f"macro_block_size must be a positive int or None, got {macro_block_size!r}")
    first = _to_uint8(frames[0], 0)
    height, width = first.shape[:2]
    block = macro_block_size or 1
    out_h, out_w = -(-height // block) * block, -(-width // block) * block  # imageio's upscale
    if out_h % 2 or out_w % 2:
        raise ValueError(
            f"H.264 (yuv420p) needs an even width and height, got {out_w}x{out_h} (frames {width}x{height}, "
            f"macro_block_size={macro_block_size})"
        )
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError("export_to_video needs `imageio-ffmpeg`: pip install imageio-ffmpeg") from e

    path, created = _output_path(output_video_path, ".mp4")
    remove_on_failure = created or not os.path.exists(path)
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        fps=fps,
        quality=quality,
        bitrate=None if bitrate is None else str(bitrate),
        codec="libx264",
        macro_block_size=block,
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        writer.send(first)
        for i in range(1, len(frames)):
            writer.send(_to_uint8(frames[i], i))
        writer.close()
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise OSError(f"ffmpeg did not write {path!r}")
    except BaseException:
        writer.close()
        if remove_on_failure:
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    return path


def export_to_gif(image, output_gif_path: str | os.PathLike | None = None, fps: int = 10) -> str:
    """Writes an animated GIF with Pillow (diffusers' settings: loop forever, ``duration = 1000 // fps`` ms).

    image: a list of PIL images (as diffusers), or HxWx3 float/uint8 arrays converted as in ``export_to_video``.
    Pillow reduces each frame to a 256-colour palette and merges identical consecutive frames.
    """
    frames = _frame_list(image)
    fps = _check_fps(fps)
    if 1000 // fps < 1:
        raise ValueError(f"fps={fps} gives a frame duration under 1 ms (1000 // fps must be >= 1)")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("export_to_gif needs Pillow: pip install Pillow") from e
    pil = [f if _is_pil_image(f) else Image.fromarray(_to_uint8(f, i)) for i, f in enumerate(frames)]
    path, created = _output_path(output_gif_path, ".gif")
    try:
        pil[0].save(path, save_all=True, append_images=pil[1:], optimize=False, duration=1000 // fps, loop=0)
    except BaseException:
        if created:
            os.remove(path)
        raise
    return path
