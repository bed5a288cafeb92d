"""transformers.T5EncoderModel (the CogVideoX text encoder) on the C core."""

import os
from dataclasses import dataclass

import numpy as np

from . import configuration
from ._dtypes import resolve_dtype
from ._load import _C


@dataclass
class BaseModelOutput:
    last_hidden_state: np.ndarray

    def __getitem__(self, index):  # text_encoder(input_ids)[0], as the pipeline indexes it
        return (self.last_hidden_state,)[index]


class T5EncoderModel:
    """T5 v1.1 (gated-gelu) and original (relu) encoders: RMS norms, relative position buckets, no attention mask
    unless given (the CogVideoX pipeline gives none). Weights are grouped per block and kept in torch_dtype; the
    computation is f32, so the half-precision overflow transformers clamps cannot occur."""

    _DEFAULTS = dict(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
    )  # fmt: skip

    def __init__(self, config, weights_path, dtype="float32", config_file=None):
        cfg = dict(self._DEFAULTS)
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
        core_cfg = (
            sizes["vocab_size"], sizes["d_model"], sizes["d_kv"], sizes["num_heads"], sizes["d_ff"],
            sizes["num_layers"], buckets, max_distance, proj == "gated-gelu", eps,
            embedding, ignored if ignored in names else None,
        )  # fmt: skip
        self.config = configuration.FrozenConfig(cfg)
        self.dtype = dtype
        self._core = _C.T5(core_cfg, weights_path, dtype)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, **kwargs):
        folder = configuration.component_dir(pretrained_model_name_or_path, subfolder)
        cfg = configuration.read_config(folder, None)
        weights = configuration.weights_file(folder, stem="model")
        return cls(cfg, weights, resolve_dtype(torch_dtype), config_file=os.path.join(folder, "config.json"))

    @property
    def weight_bytes(self):
        return self._core.weight_bytes

    @property
    def num_weight_groups(self):
        return self._core.num_weight_groups

    def __call__(self, input_ids, attention_mask=None, return_dict=True, **kwargs):
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integers, got {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        out = self._core.forward(ids.astype(np.int64, copy=False), attention_mask)
        return BaseModelOutput(last_hidden_state=out) if return_dict else (out,)

    forward = __call__
