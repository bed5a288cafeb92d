"""CogVideoXTransformer3DModel with diffusers' name, config keys, call signature and numbers, on the C core."""

from dataclasses import dataclass

import numpy as np

from . import configuration
from ._load import _C
from .configuration import config_bool, config_float, config_int
from .embeddings import get_3d_rotary_pos_embed, get_3d_sincos_pos_embed, get_resize_crop_region_for_grid
from .lora import PeftAdapterMixin
from .modeling import ModelMixin, load_dtype


@dataclass
class Transformer2DModelOutput:
    """What ``CogVideoXTransformer3DModel`` returns (diffusers' ``Transformer2DModelOutput``).

    Args:
        sample (`np.ndarray` of shape `(batch, frames, out_channels, height, width)`): the predicted noise (or
            velocity, per the scheduler's prediction_type), float32.
    """

    sample: np.ndarray


class CogVideoXTransformer3DModel(PeftAdapterMixin, ModelMixin):
    """diffusers.CogVideoXTransformer3DModel: CogVideoX-2b (sin-cos table), -5b (RoPE), -5b-I2V (learned table),
    1.5 (temporal patches, 'slice' RoPE, ofs). Weights are grouped per transformer block; 16-bit weights stay
    16-bit and are widened tile by tile inside the GEMMs.

    Build it with ``CogVideoXTransformer3DModel.from_pretrained(folder)`` (or ``from_config`` for random weights);
    the constructor takes a config dict (diffusers' keys and defaults: num_attention_heads, attention_head_dim,
    num_layers, patch_size, use_rotary_positional_embeddings, ...), the safetensors file (or sharded index, None
    for seeded random weights), the dtype the weights are kept in, and the seed of the random weights.
    """

    _schema_kind = "transformer"  # the C core's name for the weight schema

    _DEFAULTS = dict(
        num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
        freq_shift=0, time_embed_dim=512, ofs_embed_dim=None, text_embed_dim=4096, num_layers=30, dropout=0.0,
        attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2, patch_size_t=None,
        temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
        timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
        temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False,
        use_learned_positional_embeddings=False, patch_bias=True,
    )  # fmt: skip

    def __init__(self, config, weights_path=None, dtype="float32", seed=0, config_file=None):
        cfg, core_cfg = self._core_config(config, config_file)
        self.inner_dim = core_cfg["num_attention_heads"] * core_cfg["attention_head_dim"]
        self.config = configuration.FrozenConfig(cfg)
        self.dtype = dtype
        self._core = _C.Transformer(core_cfg, weights_path, dtype, int(seed))
        self._sincos_cache = {}

    @classmethod
    def _core_config(cls, config, config_file=None):
        """(the resolved config, diffusers' defaults filled in; the C core's config by its field names), after
        checking every value (errors name config_file and the key)."""
        cfg = dict(cls._DEFAULTS)
        cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
        where = f"{config_file}: config" if config_file else "config"
        if cfg["activation_fn"] != "gelu-approximate" or cfg["timestep_activation_fn"] != "silu":
            raise ValueError(
                f"{where}: only activation_fn 'gelu-approximate' and timestep_activation_fn 'silu' are supported"
            )

        def whole(key, minimum=1):
            return config_int(cfg[key], key, minimum, source=config_file)

        def flag(key):
            return config_bool(cfg[key], key, config_file)

        def number(key, positive=True):
            return config_float(cfg[key], key, positive, config_file)

        rotary, learned = flag("use_rotary_positional_embeddings"), flag("use_learned_positional_embeddings")
        if learned and not rotary:
            raise ValueError(f"{where}: learned positional embeddings without rotary ones match no CogVideoX model")
        heads, hd = whole("num_attention_heads"), whole("attention_head_dim", 2)
        if hd % 2:
            raise ValueError(f"{where} 'attention_head_dim' = {hd} must be even (q/k are rotated in pairs)")
        p = whole("patch_size")
        pt = None if cfg["patch_size_t"] is None else whole("patch_size_t")
        inner = heads * hd
        cin, cout, time_dim = whole("in_channels"), whole("out_channels"), whole("time_embed_dim")
        # the C core sizes its linears in C ints: 6 x inner (the modulations) and the patch features must fit
        for what, value in (
            ("6 x num_attention_heads x attention_head_dim", 6 * inner),
            ("in_channels x patch_size^2 x patch_size_t", cin * p * p * (pt or 1)),
            ("out_channels x patch_size^2 x patch_size_t", cout * p * p * (pt or 1)),
        ):
            if value > configuration.C_INT_MAX:
                raise ValueError(f"{where} {what} = {value} is larger than this implementation supports")
        if 4 * inner * inner > configuration.MAX_TENSOR_ELEMENTS:  # the feed-forward's [4D, D] weight
            raise ValueError(
                f"{where} num_attention_heads x attention_head_dim = {heads} x {hd} = {inner} gives a feed-forward "
                f"weight of {4 * inner * inner} elements, more than the {configuration.MAX_TENSOR_ELEMENTS} one "
                "tensor may hold"
            )
        if not rotary and inner % 16:
            raise ValueError(
                f"{where}: the sin-cos positional table needs num_attention_heads x attention_head_dim divisible by "
                f"16, got {heads} x {hd} = {inner}"
            )
        ofs = cfg["ofs_embed_dim"]
        ofs = 0 if ofs is None else whole("ofs_embed_dim")
        if ofs and ofs != time_dim:
            raise ValueError(
                f"{where} 'ofs_embed_dim' = {ofs} must equal time_embed_dim = {time_dim} (the embeddings are added)"
            )
        shift = config_int(cfg["freq_shift"], "freq_shift", -configuration.C_INT_MAX, source=config_file)
        if shift == inner // 2 or (ofs and shift == ofs // 2):
            raise ValueError(f"{where} 'freq_shift' = {shift} divides the timestep frequencies by zero")
        text_len = whole("max_text_seq_length")
        frames_in, ratio = whole("sample_frames"), whole("temporal_compression_ratio")
        sample_h, sample_w = whole("sample_height"), whole("sample_width")
        eps = number("norm_eps")
        for key in ("spatial_interpolation_scale", "temporal_interpolation_scale"):
            number(key)
        number("dropout", positive=False)
        rows = 0
        if learned:
            frames = (frames_in - 1) // ratio + 1
            rows = text_len + frames * (sample_h // p) * (sample_w // p)
            if rows > configuration.C_INT_MAX:
                raise ValueError(f"{where}: the learned positional table would have {rows} rows, too many")
        core_cfg = dict(
            num_attention_heads=heads, attention_head_dim=hd, in_channels=cin, out_channels=cout,
            flip_sin_to_cos=flag("flip_sin_to_cos"), freq_shift=shift, time_embed_dim=time_dim, ofs_embed_dim=ofs,
            text_embed_dim=whole("text_embed_dim"), num_layers=whole("num_layers", 0),
            attention_bias=flag("attention_bias"), patch_bias=flag("patch_bias"),
            norm_elementwise_affine=flag("norm_elementwise_affine"), patch_size=p, patch_size_t=pt or 0,
            max_text_seq_length=text_len, use_learned_positional_embeddings=learned, learned_table_rows=rows,
            norm_eps=eps,
        )  # fmt: skip
        return cfg, core_cfg

    @classmethod
    def from_config(cls, config, seed=0, torch_dtype=None, dtype=None):
        """A model with seeded random weights (no checkpoint): for benchmarks at the real 2b/5b sizes."""
        return cls(dict(config), None, load_dtype(dtype, torch_dtype), seed)

    @property
    def weight_bytes(self):
        """Bytes the loaded weights take in memory (in their dtype)."""
        return self._core.weight_bytes

    @property
    def num_weight_groups(self):
        """How many weight groups the core holds (the embeddings, one per transformer block, the output head)."""
        return self._core.num_weight_groups

    # ---- positional tables -----------------------------------------------------------------------------------

    def rotary_positional_embeddings(self, height, width, num_latent_frames, vae_scale_factor_spatial=8):
        """(freqs_cos, freqs_sin) [tokens, attention_head_dim] float32, as CogVideoXPipeline's
        _prepare_rotary_positional_embeddings builds them for a video of height x width pixels."""
        c = self.config
        p, pt = c.patch_size, c.patch_size_t
        grid_h = height // (vae_scale_factor_spatial * p)
        grid_w = width // (vae_scale_factor_spatial * p)
        base_w, base_h = c.sample_width // p, c.sample_height // p
        if pt is None:
            crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
            return get_3d_rotary_pos_embed(c.attention_head_dim, crops, (grid_h, grid_w), num_latent_frames)
        frames = (num_latent_frames + pt - 1) // pt
        return get_3d_rotary_pos_embed(
            c.attention_head_dim, None, (grid_h, grid_w), frames, grid_type="slice", max_size=(base_h, base_w)
        )

    def _positional_table(self, text_len, frames, height, width):
        """What CogVideoXPatchEmbed adds: None, "learned", or a sin-cos table [L + N, D] (text rows zero)."""
        c = self.config
        if c.use_rotary_positional_embeddings and not c.use_learned_positional_embeddings:
            return None
        if c.use_learned_positional_embeddings and (c.sample_width != width or c.sample_height != height):
            raise ValueError(
                "It is currently not possible to generate videos at a different resolution that the defaults. This "
                "should only be the case with 'THUDM/CogVideoX-5b-I2V' (a learned positional table of "
                f"{c.sample_height}x{c.sample_width} latents; got {height}x{width})."
            )
        if text_len != c.max_text_seq_length:
            raise ValueError(
                f"encoder_hidden_states has {text_len} tokens but the positional table holds max_text_seq_length = "
                f"{c.max_text_seq_length}; they must be equal for this model"
            )
        pre_frames = (frames - 1) * c.temporal_compression_ratio + 1
        if c.use_learned_positional_embeddings and (c.sample_frames == pre_frames):
            return "learned"
        key = (frames, height, width)
        cache = self._sincos_cache  # one read: another thread may replace the cache meanwhile
        if key not in cache:
            p = c.patch_size
            post_frames = (pre_frames - 1) // c.temporal_compression_ratio + 1
            grid = get_3d_sincos_pos_embed(
                self.inner_dim, width // p, height // p, post_frames,
                c.spatial_interpolation_scale, c.temporal_interpolation_scale,
            )  # fmt: skip
            table = np.zeros((c.max_text_seq_length + grid.shape[0], self.inner_dim), dtype=np.float32)
            table[c.max_text_seq_length :] = grid  # one rounding float64 -> float32, as .to(embeds.dtype)
            cache = self._sincos_cache = {key: table}
        return cache[key]

    # ---- forward -----------------------------------------------------------------------------------------------

    def __call__(self, hidden_states, encoder_hidden_states, timestep, timestep_cond=None, ofs=None,
                 image_rotary_emb=None, attention_kwargs=None, return_dict=True):  # fmt: skip
        """One denoising prediction (also ``forward``), as diffusers' ``CogVideoXTransformer3DModel.forward``.

        Args:
            hidden_states (`np.ndarray` of shape `(batch, latent_frames, in_channels, height, width)`): the noisy
                latents (frames before channels, as the pipeline passes them).
            encoder_hidden_states (`np.ndarray` of shape `(batch, tokens, text_embed_dim)`): the T5 prompt
                embeddings; tokens must equal max_text_seq_length for models with a positional table.
            timestep (`int`, `float` or `np.ndarray` of shape `(batch,)`): the timestep(s); one value is used for
                every batch item.
            timestep_cond: not supported (no CogVideoX model uses it); must be None.
            ofs (`float` or `np.ndarray` of shape `(batch,)`, *optional*): the ofs value of CogVideoX 1.5 I2V.
            image_rotary_emb (`tuple(np.ndarray, np.ndarray)`, *optional*): (cos, sin), each
                `(tokens, attention_head_dim)`, from ``rotary_positional_embeddings``; None: no RoPE, as diffusers.
            attention_kwargs (`dict`, *optional*): its "scale" multiplies every active LoRA adapter's output for
                this call (diffusers' lora_scale; default 1.0); other keys are for attention processors, which
                cogvideo_c does not have, and are ignored.
            return_dict (`bool`, defaults to True): return a ``Transformer2DModelOutput`` rather than a tuple.

        Returns:
            `Transformer2DModelOutput` (or `(sample,)`): float32 of shape
            `(batch, latent_frames, out_channels, height, width)`.
        """
        if timestep_cond is not None:
            raise ValueError("timestep_cond is not supported (no CogVideoX model uses it)")
        args = self._forward_args(hidden_states, encoder_hidden_states, timestep, ofs, image_rotary_emb)
        scale = 1.0 if not attention_kwargs else attention_kwargs.get("scale", 1.0)
        scale = float(scale)
        if not np.isfinite(scale):
            raise ValueError(f"attention_kwargs['scale'] (the LoRA scale) must be finite, got {scale}")
        lora = self._lora_scales(scale)
        self._before_forward()
        out = self._core.forward(*args) if lora is None else self._core.forward(*args, lora)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _forward_args(self, hidden_states, encoder_hidden_states, timestep, ofs, image_rotary_emb):
        """The C forward's arguments, every shape checked first."""
        c = self.config
        h = np.asarray(hidden_states, dtype=np.float32)
        e = np.asarray(encoder_hidden_states, dtype=np.float32)
        if h.ndim != 5:
            raise ValueError(f"hidden_states must be [batch, frames, channels, height, width], got shape {h.shape}")
        if e.ndim != 3:
            raise ValueError(f"encoder_hidden_states must be [batch, tokens, {c.text_embed_dim}], got {e.shape}")
        B, F, C, H, W = h.shape
        if C != c.in_channels:
            raise ValueError(f"hidden_states has {C} channels; the model's in_channels is {c.in_channels}")
        if H % c.patch_size or W % c.patch_size:
            raise ValueError(f"latent height {H} and width {W} must be divisible by patch_size {c.patch_size}")
        if c.patch_size_t and F % c.patch_size_t:
            raise ValueError(
                f"{F} latent frames cannot be split into temporal patches of {c.patch_size_t} (CogVideoX 1.5 pads "
                "the latents to a multiple in the pipeline)"
            )
        if e.shape[0] != B or e.shape[2] != c.text_embed_dim:
            raise ValueError(f"encoder_hidden_states must be [{B}, tokens, {c.text_embed_dim}], got {e.shape}")
        t = self._per_item(timestep, B, "timestep")
        o = None
        if c.ofs_embed_dim:
            if ofs is None:
                raise ValueError("this model has an ofs embedding (CogVideoX 1.5 I2V): pass ofs")
            o = self._per_item(ofs, B, "ofs")
        table = self._positional_table(e.shape[1], F, H, W)
        cos = sin = None
        if image_rotary_emb is not None:
            cos, sin = (np.asarray(a, dtype=np.float32) for a in image_rotary_emb)
            tokens = (F // (c.patch_size_t or 1)) * (H // c.patch_size) * (W // c.patch_size)
            want = (tokens, c.attention_head_dim)
            if cos.shape != want or sin.shape != want:
                raise ValueError(f"image_rotary_emb must be two [{tokens}, {c.attention_head_dim}] tables, got "
                                 f"{cos.shape} and {sin.shape}")  # fmt: skip
        learned = isinstance(table, str)
        return h, e, t, o, None if learned else table, learned, cos, sin

    def arena_bytes(self, latents_shape, text_shape, height=None, width=None):
        """The activation arena (device bytes) one forward on latents of `latents_shape` ([B, F, C, h, w]) and text
        of `text_shape` ([B, L]) needs, from a measuring pass that does no work: what enable_auto_offload plans
        with. height/width: the pixel size (for the rotary tables; default 8 x the latent size)."""
        B, F, _, h, w = latents_shape
        latents = np.zeros(latents_shape, dtype=np.float32)
        text = np.zeros((text_shape[0], text_shape[1], self.config.text_embed_dim), dtype=np.float32)
        rope = None
        if self.config.use_rotary_positional_embeddings:
            rope = self.rotary_positional_embeddings(height or 8 * h, width or 8 * w, F)
        ofs = np.zeros(B, dtype=np.float32) if self.config.ofs_embed_dim else None
        return self._core.measure(*self._forward_args(latents, text, np.zeros(B), ofs, rope))

    forward = __call__

    @staticmethod
    def _per_item(value, batch, name):
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 0 or (arr.ndim == 1 and arr.shape[0] == 1):
            arr = np.full((batch,), arr.reshape(-1)[0], dtype=np.float32)  # one value broadcasts, as in diffusers
        if arr.ndim != 1 or arr.shape[0] != batch:
            raise ValueError(f"{name} must be a scalar or have one value per batch item ({batch}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must be finite (a NaN or infinite {name} cannot give a prediction), got {arr}")
        return arr
