"""``export_to_video`` / ``export_to_gif`` with diffusers' signatures (``diffusers.utils.export_utils``).

The MP4 goes through the ffmpeg binary of ``imageio-ffmpeg`` (its wheel ships one) with the ffmpeg command imageio's
v2 ``get_writer`` builds for diffusers (the one ``imageio_ffmpeg.write_frames`` builds): libx264, yuv420p,
``-crf int((1 - quality / 10) * 51)`` or ``-b:v bitrate``, and an upscale to a multiple of ``macro_block_size``.
ffmpeg runs here directly rather than through ``write_frames`` so that its stderr is captured: a failure raises an
OSError with a short excerpt of what ffmpeg said, instead of ffmpeg's log on the user's terminal. The GIF goes
through Pillow, as in diffusers.

Float frames are converted exactly as diffusers does, ``(frame * 255).astype(uint8)``: a truncation, not a rounding
(so 0.5 -> 127). Values outside [0, 1] are clipped first (diffusers' cast would wrap them), uint8 arrays are taken
as they are, and PIL images are converted to RGB.
"""

from __future__ import annotations

import numbers
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["export_to_gif", "export_to_video"]

# the containers ffmpeg writes H.264 into (webm, ogv and gif refuse it); .gif goes through export_to_gif
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
GIF_SUFFIXES = (".gif",)


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
        if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
            raise ValueError(f"frame {i} contains NaN or infinite values")
        sizes.add(frame.shape[:2])
    if len(sizes) > 1:
        raise ValueError(f"all frames must have the same size, got (height, width) {sorted(sizes)}")
    return frames


def _to_uint8(frame) -> np.ndarray:
    """A frame checked by ``_frame_list`` as a C-contiguous HxWx3 uint8 array (diffusers' float conversion)."""
    if _is_pil_image(frame):
        return np.ascontiguousarray(np.asarray(frame.convert("RGB"), dtype=np.uint8))
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    # in the frame's own dtype, as diffusers computes it (float16 / float32 / float64 round differently)
    return np.ascontiguousarray(np.clip(frame * 255, 0, 255).astype(np.uint8))


def check_output_path(path, suffixes) -> str:
    """Checks, before any work, that path can be written as one of suffixes (e.g. ``VIDEO_SUFFIXES``): its folder
    exists and is writable, path is not a folder, and its extension names a container the writer can make.

    Returns path as a str. Raises ValueError (bad value or extension) or an OSError (FileNotFoundError,
    NotADirectoryError, IsADirectoryError, PermissionError) naming the path.
    """
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"output path must be a non-empty str or os.PathLike, got {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in suffixes:
        if suffixes == GIF_SUFFIXES:
            writes = "export_to_gif writes .gif files"
        else:
            writes = f"export_to_video writes H.264 into {', '.join(suffixes)} (and export_to_gif writes .gif)"
        raise ValueError(f"cannot write {path!r}: unsupported extension {suffix or '(none)'!r}; {writes}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"cannot write {path!r}: folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {path!r}: {folder!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write {path!r}: permission denied")
    if not os.path.exists(path):
        # access() says yes to root almost everywhere (/proc, read-only mounts): creating the file is the real test
        try:
            with open(path, "xb"):
                pass
        except OSError as err:
            raise type(err)(f"cannot write {path!r}: {err.strerror or err}") from None
        os.remove(path)
    return path


def _output_path(path, suffixes) -> tuple[str, bool]:
    """The path to write (a new temp file when None, as diffusers does; else checked by ``check_output_path``).

    Returns (path, created): created is True when this function made the file (so a failed write removes it).
    """
    if path is None:
        fd, path = tempfile.mkstemp(suffix=suffixes[0])
        os.close(fd)
        return path, True
    return check_output_path(path, suffixes), False


def check_fps(fps) -> float | int:
    """fps as an int or float, or a ValueError when it is not a positive finite number (bools refused)."""
    if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, numbers.Real) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return int(fps) if isinstance(fps, numbers.Integral) else float(fps)


def _stderr_excerpt(log, limit: int = 300) -> str:
    """What ffmpeg wrote, on one line and at most limit characters: its first lines name the cause (the later ones
    say which output failed). The ``[libx264 @ 0x...]`` tags are dropped."""
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").splitlines()
    text = " | ".join(t for t in (re.sub(r"^(\[[^\]]* @ 0x[0-9a-f]+\] )+", "", line.strip()) for line in lines) if t)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_ffmpeg(cmd, path, frames, first) -> None:
    """Feeds the rgb24 frames to ffmpeg's stdin; its stderr goes to a temp file and becomes the OSError's text."""
    with tempfile.TemporaryFile() as log:
        # its own session: a Ctrl-C reaches Python, which kills ffmpeg below, rather than ffmpeg mid-file
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        try:
            try:
                proc.stdin.write(first)
                for i in range(1, len(frames)):
                    proc.stdin.write(_to_uint8(frames[i]))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped reading: its exit status and log say why
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if status != 0:
            raise OSError(f"ffmpeg could not write {path!r} (exit status {status}): {_stderr_excerpt(log)}")


def export_to_video(
    video_frames,
    output_video_path: str | os.PathLike | None = None,
    fps: int = 10,
    quality: float = 5.0,
    bitrate: int | None = None,
    macro_block_size: int | None = 16,
) -> str:
    """Writes an H.264 video (yuv420p; MP4 unless the path says .m4v/.mov/.mkv/.avi) and returns its path.

    Args:
        video_frames (`list[PIL.Image.Image]`, `list[np.ndarray]` or `np.ndarray`): PIL images, HxWx3 float arrays
            in [0, 1] (or uint8), or one [F, H, W, 3] array (e.g. ``pipe(..., output_type="np").frames[0]``).
        output_video_path (`str` or `os.PathLike`, *optional*): where to write; None writes a new temporary
            ``.mp4`` file (as diffusers does).
        fps (`int` or `float`, defaults to 10): frames per second, positive and finite.
        quality (`float`, defaults to 5.0): 1 (worst) to 10 (best), libx264 ``-crf int((1 - quality / 10) * 51)``;
            ignored when ``bitrate`` is set. None adds no rate flag.
        bitrate (`int` or `str`, *optional*): constant bitrate (``-b:v``), e.g. 2_000_000 or "2M".
        macro_block_size (`int`, defaults to 16): width and height are scaled up to a multiple of it (like
            imageio); None or 1 keeps the size (libx264 with yuv420p still needs even sizes).

    Returns:
        `str`: the path written.

    Raises:
        ValueError: bad frames (empty, mixed sizes, NaN, wrong shape or dtype), fps, quality, bitrate,
            macro_block_size or extension. OSError: the folder is missing or read-only, the path is a folder, or
            ffmpeg failed.

    Everything is checked before ffmpeg starts: frames, fps, options, and the path (its folder exists and is
    writable, it is not a folder, its extension is one of .mp4, .m4v, .mov, .mkv, .avi). When ffmpeg fails anyway,
    the OSError carries a short excerpt of its log (nothing is printed) and the partial file is removed.
    """
    frames = _frame_list(video_frames)
    fps = check_fps(fps)
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
    if bitrate is not None and (
        isinstance(bitrate, bool) or not isinstance(bitrate, (int, str)) or (isinstance(bitrate, int) and bitrate < 1)
    ):
        raise ValueError(f"bitrate must be a positive int or a str such as '2M' (or None), got {bitrate!r}")
    if output_video_path is not None:
        check_output_path(output_video_path, VIDEO_SUFFIXES)
    first = _to_uint8(frames[0])
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

    # imageio_ffmpeg.write_frames' command, argument for argument
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}"]
    cmd += ["-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an"]
    cmd += ["-vcodec", "libx264", "-pix_fmt", "yuv420p"]
    if bitrate is not None:
        cmd += ["-b:v", str(bitrate)]
    elif quality is not None:
        cmd += ["-crf", str(int((1 - quality / 10.0) * 51))]
    if (out_h, out_w) != (height, width):
        cmd += ["-vf", f"scale={out_w}:{out_h}"]
    path, created = _output_path(output_video_path, VIDEO_SUFFIXES)
    cmd += ["-v", "error", path]
    remove_on_failure = created or not os.path.exists(path)
    try:
        _run_ffmpeg(cmd, path, frames, first)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise OSError(f"ffmpeg did not write {path!r}")
    except BaseException:
        if remove_on_failure:
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    return path


def export_to_gif(image, output_gif_path: str | os.PathLike | None = None, fps: int = 10) -> str:
    """Writes an animated GIF with Pillow (diffusers' settings: loop forever, ``duration = 1000 // fps`` ms).

    Args:
        image (`list[PIL.Image.Image]` or `list[np.ndarray]`): the frames; PIL images (as diffusers), or HxWx3
            float/uint8 arrays converted as in ``export_to_video``.
        output_gif_path (`str` or `os.PathLike`, *optional*): where to write (a ``.gif`` path); None writes a new
            temporary file.
        fps (`int` or `float`, defaults to 10): frames per second, positive, finite and at most 1000.

    Returns:
        `str`: the path written.

    Pillow reduces each frame to a 256-colour palette and merges identical consecutive frames. Bad frames, fps or
    paths raise ValueError / OSError before anything is written.
    """
    frames = _frame_list(image)
    fps = check_fps(fps)
    if 1000 // fps < 1:
        raise ValueError(f"fps={fps} gives a frame duration under 1 ms (1000 // fps must be >= 1)")
    if output_gif_path is not None:
        check_output_path(output_gif_path, GIF_SUFFIXES)
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("export_to_gif needs Pillow: pip install Pillow") from e
    pil = [f if _is_pil_image(f) else Image.fromarray(_to_uint8(f)) for f in frames]
    path, created = _output_path(output_gif_path, GIF_SUFFIXES)
    try:
        pil[0].save(path, save_all=True, append_images=pil[1:], optimize=False, duration=1000 // fps, loop=0)
    except BaseException:
        if created:
            os.remove(path)
        raise
    return path
