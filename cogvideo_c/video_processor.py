"""diffusers' VideoProcessor.preprocess_video without torch: the videos a pipeline is given, as the VAE's input.

A video is a list of PIL images, a list of [H, W, 3] arrays, one [F, H, W, 3] array in [0, 1], or a video file
(read with ``load_video``); several videos are a list of such lists / arrays or one [B, F, H, W, 3] array. Each
video's frames go through ``VaeImageProcessor.preprocess`` (PIL frames resized with Pillow's Lanczos filter, arrays
with torch's "nearest" rule, then ``2 x - 1``), one video at a time as diffusers does, and the videos are stacked
channels first: [B, 3, F, H, W].
"""

import os
import warnings

import numpy as np

from .image_processor import VaeImageProcessor, _check_copy_fits, _is_pil

__all__ = ["VideoProcessor"]


def _is_image(x):
    """diffusers' is_valid_image: a PIL image or a 2-D / 3-D array."""
    return _is_pil(x) or (isinstance(x, np.ndarray) and x.ndim in (2, 3))


def _is_video(x):
    """diffusers' is_valid_image_imagelist: a 4-D array, one image, or a list of images."""
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return True
    if _is_image(x):
        return True
    return isinstance(x, list) and all(_is_image(i) for i in x)


class VideoProcessor(VaeImageProcessor):
    """diffusers.video_processor.VideoProcessor's preprocessing (the VaeImageProcessor it extends, per video)."""

    def preprocess_video(self, video, height=None, width=None, what="video"):
        """Videos -> float32 [B, 3, F, height, width] in [-1, 1], as diffusers' preprocess_video(video, height, width).

        Args:
            video: a list of PIL images or of [H, W, 3] arrays (one video), one [F, H, W, 3] array, a list of those
                (several videos), one [B, F, H, W, 3] array, or a path to a video file (read with
                ``cogvideo_c.load_video``). Arrays hold floats in [0, 1] (or, with diffusers' FutureWarning, [-1, 1]).
            height, width (`int`, *optional*): the frames' size after resizing (rounded down to multiples of
                vae_scale_factor); each video's first frame's by default.
            what (`str`): the argument's name, for the error messages.

        Raises ValueError for other inputs (torch tensors, mixed lists, empty videos, non-RGB frames, integer or
        non-finite arrays, videos whose frame counts or sizes differ) and OSError for a file that cannot be read.
        """
        if isinstance(video, (str, os.PathLike)):
            from .utils import load_video

            video = load_video(video)
        if isinstance(video, tuple):
            video = [list(v) if isinstance(v, tuple) else v for v in video]
        if isinstance(video, list) and not video:
            raise ValueError(f"`{what}` is an empty list: a video needs at least one frame")
        if isinstance(video, np.ndarray) or (isinstance(video, list) and isinstance(video[0], np.ndarray)):
            _check_copy_fits([v for v in ([video] if isinstance(video, np.ndarray) else video)
                              if isinstance(v, np.ndarray)], what)  # fmt: skip
        if isinstance(video, list) and isinstance(video[0], np.ndarray) and video[0].ndim == 5:
            warnings.warn(
                "Passing `video` as a list of 5d np.ndarray is deprecated.Please concatenate the list along the batch "
                "dimension and pass it as a single 5d np.ndarray",
                FutureWarning,
                stacklevel=3,
            )
            video = np.concatenate(video, axis=0)
        if isinstance(video, np.ndarray) and video.ndim == 5:
            videos = list(video)
        elif (isinstance(video, list) and _is_image(video[0])) or _is_video(video):
            videos = [video]
        elif isinstance(video, list) and all(isinstance(v, (list, np.ndarray)) and _is_video(v) for v in video):
            videos = video
        else:
            shape = f" of shape {video.shape}" if isinstance(video, np.ndarray) else ""
            raise ValueError(
                f"`{what}` must be a list of PIL images, an array [frames, height, width, 3] in [0, 1], a list of "
                f"those (several videos), an array [videos, frames, height, width, 3] or a video file path, got "
                f"{type(video).__name__}{shape}"
            )
        out = []
        for n, frames in enumerate(videos):
            label = what if len(videos) == 1 else f"{what}[{n}]"
            if (isinstance(frames, list) and not frames) or (isinstance(frames, np.ndarray) and frames.shape[0] == 0):
                raise ValueError(f"`{label}` has no frames: a video needs at least one frame")
            out.append(self.preprocess(frames, height=height, width=width, what=label))
        shapes = {v.shape for v in out}
        if len(shapes) > 1:
            listed = ", ".join(f"{v.shape[0]} frames of {v.shape[3]}x{v.shape[2]}" for v in out)
            raise ValueError(f"`{what}` holds videos of different lengths or sizes ({listed}): they are denoised as "
                             "one batch")  # fmt: skip
        return np.ascontiguousarray(np.stack(out).transpose(0, 2, 1, 3, 4))  # [B, F, C, H, W] -> [B, C, F, H, W]
