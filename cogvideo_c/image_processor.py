"""diffusers' VaeImageProcessor.preprocess without torch: PIL images and NumPy arrays to the VAE's input.

The rules are diffusers 0.42.1's, input type by input type, because the pixels the VAE encodes decide the video:

- PIL images are resized with Pillow itself (``image.resize((width, height), resample=LANCZOS, reducing_gap=None)``,
  diffusers' default ``resample="lanczos"``), then read as ``np.array(image).astype(float32) / 255``.
- NumPy arrays are images channels-last, ``[H, W, C]`` or a batch ``[B, H, W, C]``, in [0, 1], and are resized as
  diffusers resizes them: ``torch.nn.functional.interpolate`` in its default mode, "nearest" (source index
  ``floor(i * in / out)`` computed in float32), reproduced here.
- Both are then normalised to [-1, 1] (``2 x - 1``), except, as in diffusers, a batch whose minimum is below 0,
  which is taken to be in [-1, 1] already (with diffusers' FutureWarning).

What diffusers would only fail on later (a grey or RGBA image gives the VAE a wrong channel count, a mixed list, an
integer array that ``2 x - 1`` wraps around) is refused here with a ValueError that says what to pass instead.
"""

import warnings

import numpy as np

from .memory import OutOfMemoryError
from .pipeline import _host_memory_bytes

__all__ = ["VaeImageProcessor"]


def _is_pil(image):
    try:
        from PIL import Image
    except ImportError:  # Pillow is a dependency; without it no input is a PIL image
        return False
    return isinstance(image, Image.Image)


def _nearest_indices(size_in, size_out):
    """torch's "nearest" source indices for one axis (aten's nearest_idx: the same index when the sizes match, a
    shift for an exact doubling, else floor(i * (in / out)) in float32, clamped)."""
    i = np.arange(size_out)
    if size_out == size_in:
        return i
    if size_out == 2 * size_in:
        return i >> 1
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), size_in - 1)


def _check_copy_fits(arrays, what):
    """Raises OutOfMemoryError before the arrays are copied (and converted to float32) if that cannot fit in memory:
    a broadcast view can claim any size without holding it."""
    count = sum(a.size for a in arrays)
    need = count * (max(a.itemsize for a in arrays) + 4)  # the copy, then float32
    available = _host_memory_bytes()
    if available is not None and need > available:
        raise OutOfMemoryError(
            f"`{what}` holds {count} values (shapes {[a.shape for a in arrays][:4]}): preprocessing them needs "
            f"{need / 2**30:.3g} GiB, more than this machine's {available / 2**30:.3g} GiB"
        )


class VaeImageProcessor:
    """diffusers.image_processor.VaeImageProcessor's preprocessing, for the arguments the CogVideoX pipelines use.

    Args:
        do_resize (`bool`, defaults to True): resize to the requested height and width.
        vae_scale_factor (`int`, defaults to 8): height and width are rounded down to multiples of it.
        resample (`str`, defaults to "lanczos"): the Pillow filter for PIL images ("nearest", "bilinear",
            "bicubic", "lanczos", "box", "hamming"), as diffusers' PIL_INTERPOLATION names them.
        do_normalize (`bool`, defaults to True): map [0, 1] to [-1, 1].
    """

    _RESAMPLE = ("nearest", "linear", "bilinear", "bicubic", "lanczos", "box", "hamming")

    def __init__(self, do_resize=True, vae_scale_factor=8, resample="lanczos", do_normalize=True):
        if resample not in self._RESAMPLE:
            raise ValueError(f"resample must be one of {self._RESAMPLE}, got {resample!r}")
        self.do_resize, self.vae_scale_factor = bool(do_resize), int(vae_scale_factor)
        self.resample, self.do_normalize = resample, bool(do_normalize)

    def _pil_filter(self):
        from PIL import Image

        name = {"linear": "bilinear"}.get(self.resample, self.resample)
        return getattr(Image.Resampling, name.upper())

    def get_default_height_width(self, image, height=None, width=None):
        """height and width (the image's own when None), rounded down to multiples of vae_scale_factor."""
        if height is None:
            height = image.height if _is_pil(image) else image.shape[1]
        if width is None:
            width = image.width if _is_pil(image) else image.shape[2]
        return tuple(x - x % self.vae_scale_factor for x in (height, width))

    @staticmethod
    def _as_list(image, what):
        if isinstance(image, (list, tuple)):
            if not image:
                raise ValueError(f"`{what}` is an empty list: pass at least one image")
            return list(image)
        return [image]

    def preprocess(self, image, height=None, width=None, what="image"):
        """A PIL image, a NumPy image [H, W, C] / batch [B, H, W, C] in [0, 1], or a list of either ->
        float32 [B, 3, height, width] in [-1, 1] (channels first), as diffusers' preprocess(image, height, width).

        Raises ValueError for anything else: other types, a list mixing types, images without 3 channels (grey,
        RGBA: `image.convert("RGB")` them), integer or non-finite arrays, a size of zero."""
        images = self._as_list(image, what)
        kinds = {"pil" if _is_pil(i) else "array" if isinstance(i, np.ndarray) else type(i).__name__ for i in images}
        if len(kinds) > 1:
            raise ValueError(f"`{what}` mixes {sorted(kinds)}: pass PIL images only or NumPy arrays only")
        kind = kinds.pop()
        if kind == "pil":
            batch = self._from_pil(images, height, width, what)
        elif kind == "array":
            batch = self._from_arrays(images, height, width, what)
        else:
            raise ValueError(
                f"`{what}` has to be a PIL.Image.Image, a NumPy array [H, W, 3] / [B, H, W, 3] in [0, 1], a path to "
                f"an image file, or a list of them, but is {kind}"
            )
        do_normalize = self.do_normalize
        if do_normalize and batch.min() < 0:
            warnings.warn(
                "Passing `image` as torch tensor with value range in [-1,1] is deprecated. The expected value range "
                f"for image tensor is [0,1] when passing as pytorch tensor or numpy Array. You passed `image` with "
                f"value range [{batch.min()},{batch.max()}]",
                FutureWarning,
                stacklevel=3,
            )
            do_normalize = False
        if do_normalize:
            batch = 2.0 * batch - 1.0  # in the input's float dtype, as torch computes it, then float32
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _from_pil(self, images, height, width, what):
        out = []
        for n, img in enumerate(images):
            if img.mode != "RGB":
                raise ValueError(
                    f"`{what}`[{n}] is a {img.mode} image; the VAE encodes RGB: pass image.convert('RGB') (load_image "
                    "converts for you)"
                )
            if img.width < 1 or img.height < 1:
                raise ValueError(f"`{what}`[{n}] is empty ({img.width}x{img.height})")
            if self.do_resize:
                h, w = self.get_default_height_width(images[0], height, width)
                img = img.resize((w, h), resample=self._pil_filter(), reducing_gap=None)
            out.append(np.array(img).astype(np.float32) / 255.0)
        if len({a.shape for a in out}) > 1:
            raise ValueError(f"`{what}` images have different sizes {sorted({a.shape[:2] for a in out})}: pass a size")
        return np.stack(out).transpose(0, 3, 1, 2)

    def _from_arrays(self, images, height, width, what):
        for n, a in enumerate(images):
            if a.ndim not in (3, 4):
                raise ValueError(
                    f"`{what}` array {n} has shape {a.shape}: an image is [H, W, 3] and a batch [B, H, W, 3] "
                    "(channels last, values in [0, 1])"
                )
            if a.dtype.kind != "f":
                raise ValueError(
                    f"`{what}` array {n} has dtype {a.dtype}: pass float values in [0, 1] (e.g. array / 255) or a "
                    "PIL image"
                )
        _check_copy_fits(images, what)  # the batch below is a copy of every array
        if images[0].ndim == 4:
            if len(images) > 1:
                warnings.warn(
                    "Passing `image` as a list of 4d np.ndarray is deprecated.Please concatenate the list along the "
                    "batch dimension and pass it as a single 4d np.ndarray",
                    FutureWarning,
                    stacklevel=4,
                )
            batch = np.concatenate(images, axis=0)
        else:
            if len({a.shape for a in images}) > 1:
                raise ValueError(f"`{what}` arrays have different shapes {[a.shape for a in images]}")
            batch = np.stack(images, axis=0)
        if batch.shape[-1] != 3:
            raise ValueError(
                f"`{what}` has {batch.shape[-1]} channels (shape {batch.shape}); the VAE encodes RGB images [H, W, 3] "
                "(channels last)"
            )
        if 0 in batch.shape:
            raise ValueError(f"`{what}` is empty (shape {batch.shape})")
        bad = ~np.isfinite(batch)
        if bad.any():
            raise ValueError(
                f"`{what}` holds {int(bad.sum())} NaN or infinite value(s) (the first at index "
                f"{tuple(int(i) for i in np.argwhere(bad)[0])}): the VAE cannot encode them"
            )
        batch = batch.transpose(0, 3, 1, 2)  # BHWC -> BCHW, as numpy_to_pt
        h, w = self.get_default_height_width(batch.transpose(0, 2, 3, 1), height, width)
        if self.do_resize:
            batch = batch[:, :, _nearest_indices(batch.shape[2], h)][:, :, :, _nearest_indices(batch.shape[3], w)]
        return batch
