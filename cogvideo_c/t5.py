"""transformers.T5EncoderModel (the CogVideoX text encoder) on the C core."""

from dataclasses import dataclass

import numpy as np

from . import configuration
from ._load import _C
from .modeling import ModelMixin


@dataclass
class BaseModelOutput:
    """What ``T5EncoderModel`` returns (transformers' ``BaseModelOutput``); ``output[0]`` is last_hidden_state.

    Args:
        last_hidden_state (`np.ndarray` of shape `(batch, tokens, d_model)`): the encoder's output, float32.
    """

    last_hidden_state: np.ndarray

    def __getitem__(self, index):  # text_encoder(input_ids)[0], as the pipeline indexes it
        return (self.last_hidden_state,)[index]


class T5EncoderModel(ModelMixin):
    """T5 v1.1 (gated-gelu) and original (relu) encoders: RMS norms, relative position buckets, no attention mask
    unless given (the CogVideoX pipeline gives none). Weights are grouped per block and kept in torch_dtype; the
    computation is f32, so the half-precision overflow transformers clamps cannot occur.

    Build it with ``T5EncoderModel.from_pretrained(folder)``; the constructor takes a config dict (transformers'
    T5Config keys: d_model, d_kv, d_ff, num_layers, num_heads, relative_attention_num_buckets, ...), the
    safetensors file (or sharded index) and the dtype the weights are kept in.
    """

    _schema_kind = "t5"  # the C core's name for the weight schema

    _DEFAULTS = dict(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
    )  # fmt: skip

    def __init__(self, config, weights_path, dtype="float32", config_file=None):
        cfg, core_cfg = self._core_config(config, config_file, weights_path)
        self.config = configuration.FrozenConfig(cfg)
        self.dtype = dtype
        self._core = _C.T5(core_cfg, weights_path, dtype)

    @classmethod
    def _core_config(cls, config, config_file=None, weights_path=None):
        """(the resolved config, transformers' defaults filled in; the C core's config by its field names), after
        checking every value (errors name config_file and the key). With weights_path, the layer count is checked
        against the checkpoint and the embedding is the one it holds; without, it is shared.weight."""
        cfg = dict(cls._DEFAULTS)
        cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
        where = f"{config_file}: config" if config_file else "config"
        proj = cfg["feed_forward_proj"]
        if proj not in ("relu", "gated-gelu"):
            raise ValueError(f"{where} 'feed_forward_proj' {proj!r} is not supported (relu or gated-gelu)")

        def whole(key, minimum=1):
            return configuration.config_int(cfg[key], key, minimum, source=config_file)

        sizes = {k: whole(k) for k in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")}
        if sizes["num_heads"] * sizes["d_kv"] > configuration.C_INT_MAX:
            raise ValueError(f"{where} num_heads x d_kv = {sizes['num_heads'] * sizes['d_kv']} is too large")
        # transformers' _relative_position_bucket: max_exact = num_buckets // 4 divides (ZeroDivisionError below 4)
        # and log(max_distance / max_exact) needs max_distance > 0 (a math domain error otherwise)
        buckets = whole("relative_attention_num_buckets", 4)
        max_distance = whole("relative_attention_max_distance", 1)
        eps = configuration.config_float(cfg["layer_norm_epsilon"], "layer_norm_epsilon", True, config_file)
        names = ()
        if weights_path is not None:
            names = _C.safetensors_index(weights_path)
            per_block = 9 if proj == "gated-gelu" else 8  # q, k, v, o, 2 norms, wi (or wi_0, wi_1), wo
            if sizes["num_layers"] * per_block > len(names):
                raise ValueError(
                    f"{where} 'num_layers' = {sizes['num_layers']} implies {sizes['num_layers'] * per_block} block "
                    f"tensors, but the checkpoint {weights_path} holds {len(names)} tensors in all"
                )
        # transformers always ties them and saves shared.weight; when a file has both, the encoder uses its own
        if "encoder.embed_tokens.weight" in names:
            embedding, ignored = "encoder.embed_tokens.weight", "shared.weight"
        else:
            embedding, ignored = "shared.weight", None
        core_cfg = dict(
            sizes, relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance,
            gated=proj == "gated-gelu", layer_norm_epsilon=eps, embedding_name=embedding,
            ignored_name=ignored if ignored in names else None,
        )  # fmt: skip
        return cfg, core_cfg

    _weights_stem = "model"  # transformers' file names: model.safetensors, model-00001-of-00002.safetensors
    _config_names_class = False  # transformers' config.json has model_type / architectures instead
    _default_max_shard_size = "50GB"  # transformers' save_pretrained default

    def _config_to_save(self):
        """config.json as transformers writes it (architectures and model_type; no diffusers keys)."""
        cfg = {"architectures": ["T5EncoderModel"], "model_type": "t5"}
        cfg.update(self.config)
        return cfg

    @property
    def weight_bytes(self):
        """Bytes the loaded weights take in memory (in their dtype)."""
        return self._core.weight_bytes

    @property
    def num_weight_groups(self):
        """How many weight groups the core holds (the embedding, one per block, the final norm)."""
        return self._core.num_weight_groups

    def arena_bytes(self, ids_shape):
        """The activation arena (device bytes) encoding token ids of `ids_shape` ([B, tokens]) needs, from a
        measuring pass that does no work: what enable_auto_offload plans with."""
        return self._core.measure(np.zeros(ids_shape, dtype=np.int64), None)

    def __call__(self, input_ids, attention_mask=None, return_dict=True, **kwargs):
        """Encodes token ids (also ``forward``), as ``transformers.T5EncoderModel`` does.

        Args:
            input_ids (`np.ndarray` of shape `(batch, tokens)` or `(tokens,)`): integer token ids, e.g. from
                ``T5Tokenizer(..., return_tensors="np").input_ids``.
            attention_mask (`np.ndarray` of shape `(batch, tokens)`, *optional*): 1 for tokens to attend to, 0 for
                padding; None attends to every token (what the CogVideoX pipeline does).
            return_dict (`bool`, defaults to True): return a ``BaseModelOutput`` rather than a tuple.

        Returns:
            `BaseModelOutput` (or `(last_hidden_state,)`): float32 of shape `(batch, tokens, d_model)`.
        """
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integers, got {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        self._before_forward()
        out = self._core.forward(ids.astype(np.int64, copy=False), attention_mask)
        return BaseModelOutput(last_hidden_state=out) if return_dict else (out,)

    forward = __call__
