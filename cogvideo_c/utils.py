"""``load_image`` / ``load_video`` with the signatures of ``diffusers.utils.load_image`` / ``load_video``.

Local files only: cogvideo_c never downloads, so an http(s) URL raises a ValueError that says to fetch the file
first. Images are read with Pillow; videos with the ffmpeg binary of ``imageio-ffmpeg`` (a dependency), and GIFs
with Pillow, as diffusers does.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Callable

from ._files import check_regular
from .memory import OutOfMemoryError

__all__ = ["load_image", "load_video"]

# What Pillow's decoders raise on a corrupt or truncated file: OSError ("image file is truncated", without the
# path) and more (its Image.open catches some of them while identifying a file, but not while decoding or seeking)
_PILLOW_DECODE_ERRORS = (OSError, EOFError, IndexError, KeyError, SyntaxError, TypeError, ValueError,
                         ZeroDivisionError, struct.error)  # fmt: skip


def _pillow_error(path, err):
    """The OSError for a file Pillow could not decode: unidentified, corrupt, or past its decompression-bomb limit
    (an image of more pixels than Image.MAX_IMAGE_PIXELS x 2, refused before its pixels are allocated)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return OSError(f"{path!r} is not an image Pillow can read")
    if isinstance(err, Image.DecompressionBombError):
        return OSError(f"{path!r} is too large to decode: {err}")
    return OSError(f"{path!r} is corrupt or truncated: Pillow could not decode it ({type(err).__name__}: {err})")


def _local_file(path, what: str) -> str:
    """path as a str naming an existing regular file (a FIFO or device would block the reader), else an error."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be a local file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(f"{what} must be a str path, got {path!r}")
    if path.lower().startswith(("http://", "https://")):
        raise ValueError(
            f"{path!r} is a URL: cogvideo_c does not download files; download it first (e.g. with `curl -O`) "
            f"and pass the local path"
        )
    try:
        check_regular(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    except OSError as err:
        raise OSError(f"{what} {err}") from None
    return path


def _decode_budget():
    """Bytes a video's decoded frames may take: the memory the machine has available now (MemAvailable), or what
    this process's address-space limit (ulimit -v) leaves, whichever is less; the machine's memory where /proc is
    missing; None where nothing is known."""
    from .pipeline import _host_memory_bytes

    budget = _host_memory_bytes()
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        budget = available if budget is None else min(budget, available)
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY and limit > 0:
            with open("/proc/self/status", encoding="ascii") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            budget = min(budget, max(limit - used, 0))
    except (OSError, ValueError, StopIteration, ImportError):
        pass
    return budget


def _out_of_memory(path, frames, frame_bytes, need, budget):
    return OutOfMemoryError(
        f"video {path!r}: decoding frame {frames + 1} needs {need} bytes (the frames, {frame_bytes} bytes each, and "
        f"the decoder's working memory), more than the {budget} bytes of memory available"
    )


def _check_decoded(path, frames, frame_bytes, working_bytes, budget):
    """OutOfMemoryError before one more frame is decoded if the frames kept (frame_bytes each) and the decoder's
    working memory for the next (working_bytes) would exceed budget."""
    need = (frames + 1) * frame_bytes + working_bytes
    if budget is not None and need > budget:
        raise _out_of_memory(path, frames, frame_bytes, need, budget)


def load_image(image, convert_method: Callable | None = None):
    """Loads an image as a PIL image, as ``diffusers.utils.load_image`` does (without downloading).

    Args:
        image (`str`, `os.PathLike` or `PIL.Image.Image`):
            A local image file (any format Pillow reads) or an already loaded PIL image.
        convert_method (`Callable`, *optional*):
            Called with the image (after its EXIF orientation is applied) and returns the image to use; by default
            the image is converted to RGB.

    Returns:
        `PIL.Image.Image`: the image, RGB unless ``convert_method`` says otherwise.

    Raises:
        ValueError: for a URL (cogvideo_c does not download) or a value that is neither a path nor a PIL image.
        OSError: the file is missing, not a regular file, not an image Pillow can read, corrupt or truncated, or
            past Pillow's decompression-bomb limit (refused before its pixels are allocated).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    else:
        path = _local_file(image, "image")
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)  # a loaded copy: the file is closed on return
        except (UnidentifiedImageError, Image.DecompressionBombError, *_PILLOW_DECODE_ERRORS) as err:
            raise _pillow_error(path, err) from None
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def load_video(video, convert_method: Callable | None = None) -> list:
    """Loads a video file as a list of RGB PIL images, as ``diffusers.utils.load_video`` does (without downloading).

    Args:
        video (`str` or `os.PathLike`):
            A local video file: a GIF (read with Pillow) or anything ffmpeg decodes (.mp4, .mkv, .mov, ...; read
            through ``imageio-ffmpeg``). Every frame is decoded into memory (height x width x 3 bytes each), up to
            the memory available: a video whose frames would not fit is refused before the frame that would not.
        convert_method (`Callable`, *optional*):
            Called with the list of frames and returns the list to use (diffusers' hook, e.g. to resize them).

    Returns:
        `list[PIL.Image.Image]`: the frames in order, RGB (diffusers returns a GIF's frames in their palette mode;
        here they are RGB like a video's).

    Raises:
        ValueError: for a URL (cogvideo_c does not download) or a value that is not a path.
        OSError: the file is missing, not a regular file, or not a video ffmpeg or Pillow can decode (the message
            has a short excerpt of ffmpeg's error; nothing is printed); a GIF also when it is corrupt, truncated or
            past Pillow's decompression-bomb limit.
        cogvideo_c.OutOfMemoryError: the decoded frames would not fit in the memory available.
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    path = _local_file(video, "video")
    if path.lower().endswith(".gif"):
        budget, frames = _decode_budget(), []
        try:
            with Image.open(path) as gif:
                # every frame's RGB copy (3 bytes a pixel) and Pillow's working frames for the last (RGBA, the
                # previous one for disposal, the conversion: 12), checked before any is decoded (n_frames only
                # walks the frames' headers)
                pixels = gif.width * gif.height
                _check_decoded(path, gif.n_frames - 1, 3 * pixels, 12 * pixels, budget)
                for frame in ImageSequence.Iterator(gif):
                    frames.append(frame.convert("RGB"))
        except OutOfMemoryError:  # a MemoryError too: not to be caught below
            raise
        except MemoryError:  # the estimate above fell short: still refused, not a crash
            raise _out_of_memory(path, len(frames), 3 * gif.width * gif.height, "more", budget) from None
        except (UnidentifiedImageError, Image.DecompressionBombError, *_PILLOW_DECODE_ERRORS) as err:
            raise _pillow_error(path, err) from None
    else:
        import imageio_ffmpeg
        import numpy as np

        # imageio-ffmpeg ends ffmpeg when its generator finishes but leaves its pipe objects for the garbage
        # collector to close, which warns (ResourceWarning) in the user's program: not ours to report
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            reader = imageio_ffmpeg.read_frames(path)
            try:
                meta = next(reader)
                width, height = meta["size"]
                budget, frames = _decode_budget(), []
                _check_decoded(path, 0, 3 * width * height, 3 * width * height, budget)  # the first, read ahead
                try:
                    for b in reader:
                        _check_decoded(path, len(frames), 3 * width * height, 3 * width * height, budget)
                        frames.append(Image.fromarray(np.frombuffer(b, np.uint8).reshape(height, width, 3)))
                except OutOfMemoryError:  # a MemoryError too: not to be caught below
                    raise
                except MemoryError:  # the estimate fell short: still refused, not a crash
                    raise _out_of_memory(path, len(frames), 3 * width * height, "more", budget) from None
            except (OSError, RuntimeError) as err:
                # imageio-ffmpeg's message is a multi-line ffmpeg log: keep its first and last lines
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                excerpt = " | ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)
                raise OSError(f"cannot read video {path!r}: {excerpt[:300]}") from None
            finally:
                reader.close()  # ends ffmpeg when an error stopped the reading early
        if not frames:
            raise OSError(f"video {path!r} has no frames")
    return convert_method(frames) if convert_method is not None else frames
