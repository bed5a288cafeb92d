"""An embedded tiny random-weight VAE, so the package runs end to end with no checkpoint at hand.

It has diffusers' own fast-test architecture (block_out_channels (8, 8, 8, 8), 4 latent channels, 2 groups) and
weights drawn from a seeded NumPy generator, written in diffusers layout (config.json + safetensors). Which tensors
exist, and their shapes, come from the C core's own declarations (`weight_schema`): the one schema a load checks."""

import json
import os

import numpy as np

from .models import AutoencoderKLCogVideoX
from .safetensors_io import save_file
from .t5 import T5EncoderModel
from .transformer import CogVideoXTransformer3DModel

TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKLCogVideoX",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "temporal_compression_ratio": 4,
}


def save_safetensors(tensors, path):
    """Writes {name: array} as a float32 safetensors file."""
    save_file({name: np.asarray(t, dtype=np.float32) for name, t in tensors.items()}, path)


def _shapes(schema):
    """{name: shape} in the order of `schema` ([(name, shape, group, stored_dtype)] from weight_schema)."""
    return {name: shape for name, shape, _, _ in schema}


def make_tiny_vae(folder, seed=0, config=None):
    """Writes the tiny random VAE (or one of `config`) to `folder` (diffusers layout) and returns the folder."""
    os.makedirs(folder, exist_ok=True)
    config = config or TINY_VAE_CONFIG
    tensors = _random_weights(_shapes(AutoencoderKLCogVideoX.weight_schema(config)), np.random.default_rng(seed))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_safetensors(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    return folder


# ---- the whole tiny pipeline ---------------------------------------------------------------------------------

TINY_T5_CONFIG = {
    "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 704, "d_model": 32, "d_kv": 8,
    "num_heads": 4, "d_ff": 37, "num_layers": 2, "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 128, "feed_forward_proj": "relu", "layer_norm_epsilon": 1e-6,
    "is_encoder_decoder": False, "use_cache": False, "pad_token_id": 0, "eos_token_id": 1,
}  # fmt: skip

TINY_TRANSFORMER_CONFIG = {
    "_class_name": "CogVideoXTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 16,
    "in_channels": 4, "out_channels": 4, "time_embed_dim": 32, "text_embed_dim": 32, "num_layers": 2,
    "sample_width": 8, "sample_height": 8, "sample_frames": 9, "patch_size": 2, "max_text_seq_length": 226,
    "temporal_compression_ratio": 4,
}  # fmt: skip

# CogVideoX-2b's released scheduler configuration
TINY_SCHEDULER_CONFIG = {
    "_class_name": "CogVideoXDDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "set_alpha_to_one": True, "snr_shift_scale": 3.0, "steps_offset": 0,
    "timestep_spacing": "trailing",
}  # fmt: skip


def _first_draw_order(schema):
    """The transformer's tensors in the order the first tiny.py drew (and wrote) them, kept so that the same seed
    gives the same bytes: the shared group 0 first, then block by block with its two adaptive norms (norm1, norm2)
    before attention and feed-forward. The C core declares them in diffusers' module order instead."""
    return sorted(schema, key=lambda w: (w[2], ".norm1." not in w[0] and ".norm2." not in w[0]))


def _random_weights(shapes, rng, embedding_names=()):
    """Norm scales near 1, biases near 0, matrices N(0, 1/fan_in), embeddings N(0, 1)."""
    tensors = {}
    for name, shape in shapes.items():
        if name in embedding_names:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) == 1 and ("norm" in name and name.endswith(".weight")):
            tensors[name] = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) == 1:
            tensors[name] = 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(np.prod(shape[1:]))
    return tensors


def _write_component(folder, name, config, tensors, weights_name):
    path = os.path.join(folder, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json" if name != "scheduler" else "scheduler_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if tensors is not None:
        save_safetensors(tensors, os.path.join(path, weights_name))


def make_tiny_pipeline(folder, seed=0, text_encoder=None, transformer=None, vae=None, image_to_video=False):
    """Writes a tiny random-weight CogVideoX pipeline in diffusers layout (model_index.json + tokenizer,
    text_encoder, transformer, vae, scheduler) and returns the folder: it runs end to end in seconds.

    text_encoder / transformer / vae: config entries that replace the tiny ones (e.g. {"num_layers": 8} for a
    deeper transformer, as the offload tests and benchmarks use); the weights follow the C schema of the result.
    image_to_video: a CogVideoXImageToVideoPipeline instead (model_index.json names it), whose transformer takes
    the image latents beside the noise: in_channels = 2 x the VAE's latent channels."""
    import shutil

    t5_config = dict(TINY_T5_CONFIG, **(text_encoder or {}))
    vae_config = dict(TINY_VAE_CONFIG, **(vae or {}))
    i2v = {"in_channels": 2 * vae_config["latent_channels"]} if image_to_video else {}
    tr_config = dict(TINY_TRANSFORMER_CONFIG, **i2v, **(transformer or {}))
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "tiny_tokenizer"),
                    os.path.join(folder, "tokenizer"), dirs_exist_ok=True)  # fmt: skip
    t5 = _random_weights(_shapes(T5EncoderModel.weight_schema(t5_config)), rng, embedding_names=("shared.weight",))
    t5["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] *= 10.0
    _write_component(folder, "text_encoder", t5_config, t5, "model.safetensors")
    tr_schema = CogVideoXTransformer3DModel.weight_schema(tr_config)
    tr = _random_weights(_shapes(_first_draw_order(tr_schema)), rng)
    _write_component(folder, "transformer", tr_config, tr, "diffusion_pytorch_model.safetensors")
    make_tiny_vae(os.path.join(folder, "vae"), seed=seed + 1, config=vae_config)
    _write_component(folder, "scheduler", TINY_SCHEDULER_CONFIG, None, None)
    index = {
        "_class_name": "CogVideoXImageToVideoPipeline" if image_to_video else "CogVideoXPipeline",
        "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"], "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    }  # fmt: skip
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder
