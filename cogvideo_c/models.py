"""Model classes with diffusers' names, signatures and defaults, backed by the C core."""

from dataclasses import dataclass

import numpy as np

from . import configuration
from ._load import _C
from ._random import draw_standard_normal
from .configuration import config_bool, config_float, config_int
from .memory import OutOfMemoryError
from .modeling import ModelMixin


@dataclass
class DecoderOutput:
    """What ``AutoencoderKLCogVideoX.decode`` returns (diffusers' ``DecoderOutput``).

    Args:
        sample (`np.ndarray` of shape `(batch, out_channels, frames, height, width)`): the decoded video, float32,
            roughly in [-1, 1].
    """

    sample: np.ndarray


class DiagonalGaussianDistribution:
    """diffusers' posterior: moments [B, 2C, ...] split into mean and logvar (clamped to [-30, 20]).

    Args:
        parameters (`np.ndarray` of shape `(batch, 2 * latent_channels, frames, height, width)`): the encoder's
            output; the first half of the channels is the mean, the second half the log-variance.
    """

    def __init__(self, parameters):
        self.parameters = parameters
        self.mean, self.logvar = np.split(parameters, 2, axis=1)
        self.logvar = np.clip(self.logvar, -30.0, 20.0)
        self.std = np.exp(0.5 * self.logvar)
        self.var = np.exp(self.logvar)

    def sample(self, generator=None):
        """A draw ``mean + std * noise`` from the posterior, in the mean's dtype.

        Args:
            generator (`int`, `np.random.Generator` or `torch.Generator`, *optional*): the noise source; an int
                seeds a NumPy generator, a torch.Generator draws as torch does. None: fresh OS entropy.
        """
        noise = _standard_normal(self.mean.shape, generator)
        return (self.mean + self.std * noise).astype(self.mean.dtype, copy=False)

    def mode(self):
        """The posterior's mode, i.e. its mean (what diffusers uses when ``sample_posterior=False``)."""
        return self.mean

    def kl(self, other=None):
        """KL divergence per batch item (summed over all other axes) to ``other``, or to N(0, 1) when None."""
        axes = tuple(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * np.sum(self.mean**2 + self.var - 1.0 - self.logvar, axis=axes)
        return 0.5 * np.sum(
            (self.mean - other.mean) ** 2 / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            axis=axes,
        )


@dataclass
class AutoencoderKLOutput:
    """What ``AutoencoderKLCogVideoX.encode`` returns (diffusers' ``AutoencoderKLOutput``).

    Args:
        latent_dist (`DiagonalGaussianDistribution`): the posterior; ``.sample(generator)`` or ``.mode()`` gives
            latents of shape `(batch, latent_channels, latent_frames, height / 8, width / 8)`.
    """

    latent_dist: DiagonalGaussianDistribution


def _standard_normal(shape, generator):
    """N(0, 1) float32 noise from an int seed, a NumPy Generator, or a torch.Generator (drawn as torch draws it)."""
    if generator is None or isinstance(generator, (int, np.integer)):
        return np.random.default_rng(generator).standard_normal(shape, dtype=np.float32)
    return draw_standard_normal(shape, np.float32, generator)


class AutoencoderKLCogVideoX(ModelMixin):
    """diffusers.AutoencoderKLCogVideoX on the cogvideo_c core: decode/encode with frame batches, slicing, tiling.

    Build it with ``AutoencoderKLCogVideoX.from_pretrained(folder)``; the constructor takes a config dict (keys and
    defaults as diffusers', e.g. ``block_out_channels``, ``layers_per_block``, ``latent_channels``,
    ``scaling_factor``), the safetensors file (or sharded index) and the run dtype ("float32", "float16",
    "bfloat16"). ``config`` holds the resolved values, read-only. Inputs and outputs are NumPy arrays (channels
    first, ``[batch, channels, frames, height, width]``); the work runs in C on the CPU.
    """

    _schema_kind = "vae"  # the C core's name for the weight schema

    _DEFAULTS = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(128, 256, 256, 512),
        layers_per_block=3,
        act_fn="silu",
        norm_eps=1e-6,
        norm_num_groups=32,
        temporal_compression_ratio=4,
        sample_height=480,
        sample_width=720,
        scaling_factor=1.15258426,
        shift_factor=None,
        latents_mean=None,
        latents_std=None,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        invert_scale_latents=False,
    )

    def __init__(self, config, weights_path, dtype="float32", config_file=None):
        cfg, core_cfg = self._core_config(config, config_file)
        self.config = configuration.FrozenConfig(cfg)
        self.dtype = dtype
        self._core = _C.VAE(core_cfg, weights_path, dtype)
        self.use_slicing = False
        self.use_tiling = False
        self.num_latent_frames_batch_size = 2
        self.num_sample_frames_batch_size = 8
        self.tile_sample_min_height = int(cfg["sample_height"]) // 2
        self.tile_sample_min_width = int(cfg["sample_width"]) // 2
        self._update_latent_tile()
        self.tile_overlap_factor_height = 1 / 6
        self.tile_overlap_factor_width = 1 / 5

    @classmethod
    def _core_config(cls, config, config_file=None):
        """(the resolved config, diffusers' defaults filled in; the C core's config by its field names), after
        checking every value (errors name config_file and the key)."""
        cfg = dict(cls._DEFAULTS)
        cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
        where = f"{config_file}: config" if config_file else "config"

        def whole(key, minimum=1):
            return config_int(cfg[key], key, minimum, source=config_file)

        blocks = cfg["block_out_channels"]
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise ValueError(f"{where} 'block_out_channels' must be a non-empty list, got {blocks!r}")
        blocks = tuple(config_int(b, f"block_out_channels[{i}]", 1, source=config_file) for i, b in enumerate(blocks))
        n = len(blocks)
        for key, kind in (("down_block_types", "CogVideoXDownBlock3D"), ("up_block_types", "CogVideoXUpBlock3D")):
            types = cfg.get(key, [kind] * n)
            if not isinstance(types, (list, tuple)) or list(types) != [kind] * n:
                raise ValueError(f"{where} '{key}' must be {n} x '{kind}' (one per block_out_channels), got {types!r}")
        if cfg["act_fn"] not in ("silu", "swish"):
            raise ValueError(f"{where} 'act_fn' {cfg['act_fn']!r} is not supported (CogVideoX VAEs use silu)")
        if config_bool(cfg["use_quant_conv"], "use_quant_conv", config_file) or config_bool(
            cfg["use_post_quant_conv"], "use_post_quant_conv", config_file
        ):
            raise ValueError(
                f"{where}: use_quant_conv / use_post_quant_conv are not supported (no CogVideoX VAE uses them)"
            )
        # GroupNorm(num_groups, channels) needs the groups to divide every block's channels (the mid blocks and
        # norm_out use the last block's, the decoder's SpatialNorm3D the same groups)
        groups = whole("norm_num_groups")
        for i, channels in enumerate(blocks):
            if channels % groups:
                raise ValueError(
                    f"{where} 'block_out_channels[{i}]' = {channels} is not a multiple of norm_num_groups = "
                    f"{groups} (GroupNorm splits the channels into equal groups)"
                )
        ratio = whole("temporal_compression_ratio")
        if ratio & (ratio - 1):
            raise ValueError(f"{where} 'temporal_compression_ratio' = {ratio} must be a power of two")
        for key in ("sample_height", "sample_width"):
            whole(key)
        # the pipeline multiplies the latents by float32(1 / scaling_factor): 0 would divide by zero, and an inverse
        # outside float32's normal range would turn every latent into inf or 0
        scaling = config_float(cfg["scaling_factor"], "scaling_factor", source=config_file)
        f32 = np.finfo(np.float32)
        if scaling == 0 or not float(f32.tiny) <= abs(1 / scaling) <= float(f32.max):
            raise ValueError(
                f"{where} 'scaling_factor' = {scaling} must be non-zero, with 1 / scaling_factor a normal float32 "
                "(the latents are divided by it)"
            )
        if cfg["shift_factor"] is not None:
            config_float(cfg["shift_factor"], "shift_factor", source=config_file)
        latent_channels = whole("latent_channels")
        for key in ("latents_mean", "latents_std"):  # per-channel statistics, when a config gives them
            values = cfg[key]
            if values is None:
                continue
            if not isinstance(values, (list, tuple)) or len(values) != latent_channels:
                got = f"{len(values)} values" if isinstance(values, (list, tuple)) else repr(values)[:100]
                raise ValueError(
                    f"{where} '{key}' must be null or a list of latent_channels = {latent_channels} numbers, got {got}"
                )
            for i, value in enumerate(values):
                config_float(value, f"{key}[{i}]", positive=key == "latents_std", source=config_file)
        for key in ("force_upcast", "invert_scale_latents"):
            config_bool(cfg[key], key, config_file)
        core_cfg = dict(
            in_channels=whole("in_channels"),
            out_channels=whole("out_channels"),
            latent_channels=latent_channels,
            block_out_channels=blocks,
            layers_per_block=whole("layers_per_block"),
            norm_num_groups=groups,
            norm_eps=config_float(cfg["norm_eps"], "norm_eps", positive=True, source=config_file),
            temporal_compression_ratio=ratio,
        )
        cfg["block_out_channels"] = blocks
        return cfg, core_cfg

    @property
    def weight_bytes(self):
        """Bytes the loaded weights take in memory (in the run dtype)."""
        return self._core.weight_bytes

    @property
    def num_weight_groups(self):
        """How many weight tensors the core holds (one per parameter of diffusers' state dict it uses)."""
        return self._core.num_weight_groups

    def _update_latent_tile(self):
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        self.tile_latent_min_height = int(self.tile_sample_min_height / factor)
        self.tile_latent_min_width = int(self.tile_sample_min_width / factor)

    def decoded_frames(self, latent_frames):
        """How many frames decode() returns for latent_frames latent frames (frame batches included). Computed in
        closed form; a count past the core's limit raises ValueError naming it."""
        frames = int(latent_frames)
        if frames != latent_frames:
            raise ValueError(f"latent_frames must be a whole number, got {latent_frames!r}")
        if not -(2**63) <= frames < 2**63:  # the core's own limit, which it names, is far lower
            raise ValueError(f"latent_frames {frames} does not fit in 64 bits")
        shape = (1, self.config.latent_channels, frames, 1, 1)
        return self._core.output_shape(shape, True, None)[2]

    def enable_slicing(self):
        """Decode/encode a batch one video at a time (as diffusers): less peak memory for batch > 1, same result."""
        self.use_slicing = True

    def disable_slicing(self):
        """Process the whole batch at once again (the default)."""
        self.use_slicing = False

    def enable_tiling(
        self,
        tile_sample_min_height=None,
        tile_sample_min_width=None,
        tile_overlap_factor_height=None,
        tile_overlap_factor_width=None,
    ):
        """Decode/encode in overlapping spatial tiles blended at their seams (as diffusers): less peak memory for
        large frames, a result within tiling's blending of the untiled one.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels (default: half of sample_height).
            tile_sample_min_width (`int`, *optional*): tile width in pixels (default: half of sample_width).
            tile_overlap_factor_height (`float`, *optional*): vertical overlap, a fraction in (0, 1) (default 1/6).
            tile_overlap_factor_width (`float`, *optional*): horizontal overlap, a fraction in (0, 1) (default 1/5).

        Arguments left None (or 0) keep their current value, as in diffusers.
        """
        for name, value in (
            ("tile_overlap_factor_height", tile_overlap_factor_height),
            ("tile_overlap_factor_width", tile_overlap_factor_width),
        ):
            if value is not None and value and not 0 < value < 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name, value in (
            ("tile_sample_min_height", tile_sample_min_height),
            ("tile_sample_min_width", tile_sample_min_width),
        ):
            if value is not None and value and (int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.use_tiling = True
        self.tile_sample_min_height = int(tile_sample_min_height or self.tile_sample_min_height)
        self.tile_sample_min_width = int(tile_sample_min_width or self.tile_sample_min_width)
        self._update_latent_tile()
        self.tile_overlap_factor_height = tile_overlap_factor_height or self.tile_overlap_factor_height
        self.tile_overlap_factor_width = tile_overlap_factor_width or self.tile_overlap_factor_width

    def disable_tiling(self):
        """Process whole frames again (the default)."""
        self.use_tiling = False

    def _tiling(self):
        if not self.use_tiling:
            return None
        return (
            self.tile_sample_min_height,
            self.tile_sample_min_width,
            float(self.tile_overlap_factor_height),
            float(self.tile_overlap_factor_width),
        )

    def _run(self, array, decode):
        array = np.asarray(array)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"expected a real-valued array, got dtype {array.dtype}")
        self._before_forward()
        run = self._core.decode if decode else self._core.encode
        if array.ndim == 5:
            # shapes and size limits first: before a (possibly broadcast) input is converted or any work starts
            self._core.output_shape(array.shape, decode, self._tiling())
        try:
            return run(array, self.use_slicing, self._tiling())
        except OutOfMemoryError as err:
            hints = []
            if not self.use_tiling:
                hints.append("vae.enable_tiling()")
            if array.ndim == 5 and array.shape[0] > 1 and not self.use_slicing:
                hints.append("vae.enable_slicing()")
            hint = f"; {' and '.join(hints)} would need less memory" if hints else ""
            raise OutOfMemoryError(f"{err}{hint}") from None

    def arena_bytes(self, shape, slicing=None, tiling=None, decode=True):
        """The activation arena (device bytes) decoding latents of `shape` ([B, C, F, h, w]; with decode=False,
        encoding a video of that shape) needs with the given slicing / tiling (default: as enabled now), from a
        measuring pass that does no work: what enable_auto_offload plans with."""
        slicing = self.use_slicing if slicing is None else slicing
        use_tiling = self.use_tiling if tiling is None else tiling
        saved, self.use_tiling = self.use_tiling, use_tiling
        try:
            tiles = self._tiling()
        finally:
            self.use_tiling = saved
        self._core.output_shape(tuple(shape), decode, tiles)  # sizes checked before anything is made
        return self._core.measure(np.zeros(shape, dtype=np.float32), decode, bool(slicing), tiles)

    def decode(self, z, return_dict=True):
        """Decodes latents to a video.

        Args:
            z (`np.ndarray` of shape `(batch, latent_channels, latent_frames, height, width)`): latents (any real
                dtype; computed in the run dtype). Latents from the pipeline are divided by ``scaling_factor`` first.
            return_dict (`bool`, defaults to True): return a ``DecoderOutput`` rather than a tuple.

        Returns:
            `DecoderOutput` (or `(sample,)`): sample of shape `(batch, out_channels, frames, 8 * height, 8 * width)`,
            float32, where frames is ``decoded_frames(latent_frames)`` (49 for CogVideoX's 13 latent frames; the
            decode runs in batches of 2 latent frames, as diffusers', so an even count gives 8 per pair).
        """
        sample = self._run(z, decode=True)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def encode(self, x, return_dict=True):
        """Encodes a video to the posterior over latents.

        Args:
            x (`np.ndarray` of shape `(batch, in_channels, frames, height, width)`): the video, roughly in [-1, 1].
            return_dict (`bool`, defaults to True): return an ``AutoencoderKLOutput`` rather than a tuple.

        Returns:
            `AutoencoderKLOutput` (or `(latent_dist,)`): a ``DiagonalGaussianDistribution`` over latents of shape
            `(batch, latent_channels, latent_frames, height / 8, width / 8)`.
        """
        posterior = DiagonalGaussianDistribution(self._run(x, decode=False))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def forward(self, sample, sample_posterior=False, return_dict=True, generator=None):
        """Encodes then decodes a video (diffusers' ``forward``; also ``vae(sample)``).

        Args:
            sample (`np.ndarray` of shape `(batch, in_channels, frames, height, width)`): the video.
            sample_posterior (`bool`, defaults to False): decode a draw from the posterior instead of its mode.
            return_dict (`bool`, defaults to True): return a ``DecoderOutput`` rather than a tuple.
            generator (`int`, `np.random.Generator` or `torch.Generator`, *optional*): noise for the draw.
        """
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    __call__ = forward
