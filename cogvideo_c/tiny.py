"""An embedded tiny random-weight VAE, so the package runs end to end with no checkpoint at hand.

It has diffusers' own fast-test architecture (block_out_channels (8, 8, 8, 8), 4 latent channels, 2 groups) and
weights drawn from a seeded NumPy generator, written in diffusers layout (config.json + safetensors)."""

import json
import os

import numpy as np

from .safetensors_io import save_file

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


def _vae_shapes(cfg):
    """{name: shape} of an AutoencoderKLCogVideoX state dict for `cfg` (diffusers' names)."""
    shapes = {}
    boc, latent = cfg["block_out_channels"], cfg["latent_channels"]
    n = len(boc)

    def conv(prefix, co, ci, k=(3, 3, 3)):
        shapes[prefix + ".weight"] = (co, ci, *k)
        shapes[prefix + ".bias"] = (co,)

    def norm(prefix, c):
        shapes[prefix + ".weight"] = (c,)
        shapes[prefix + ".bias"] = (c,)

    def resnet(prefix, cin, cout, zq=None):
        for idx, c in (("1", cin), ("2", cout)):
            if zq:
                norm(f"{prefix}.norm{idx}.norm_layer", c)
                conv(f"{prefix}.norm{idx}.conv_y.conv", c, zq, (1, 1, 1))
                conv(f"{prefix}.norm{idx}.conv_b.conv", c, zq, (1, 1, 1))
            else:
                norm(f"{prefix}.norm{idx}", c)
            conv(f"{prefix}.conv{idx}.conv", cout, cin if idx == "1" else cout)
        if cin != cout:
            conv(f"{prefix}.conv_shortcut", cout, cin, (1, 1, 1))

    conv("encoder.conv_in.conv", boc[0], cfg["in_channels"])
    out = boc[0]
    for i in range(n):
        cin, out = out, boc[i]
        for r in range(cfg["layers_per_block"]):
            resnet(f"encoder.down_blocks.{i}.resnets.{r}", cin if r == 0 else out, out)
        if i != n - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out, (3, 3))
    for r in range(2):
        resnet(f"encoder.mid_block.resnets.{r}", out, out)
    norm("encoder.norm_out", out)
    conv("encoder.conv_out.conv", 2 * latent, out)

    top = boc[-1]
    conv("decoder.conv_in.conv", top, latent)
    for r in range(2):
        resnet(f"decoder.mid_block.resnets.{r}", top, top, latent)
    out = top
    for i in range(n):
        cin, out = out, boc[n - 1 - i]
        for r in range(cfg["layers_per_block"] + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{r}", cin if r == 0 else out, out, latent)
        if i != n - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out, (3, 3))
    norm("decoder.norm_out.norm_layer", out)
    conv("decoder.norm_out.conv_y.conv", out, latent, (1, 1, 1))
    conv("decoder.norm_out.conv_b.conv", out, latent, (1, 1, 1))
    conv("decoder.conv_out.conv", cfg["out_channels"], out)
    return shapes


def make_tiny_vae(folder, seed=0):
    """Writes the tiny random VAE to `folder` (diffusers layout) and returns the folder."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in _vae_shapes(TINY_VAE_CONFIG).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if name.endswith("norm_layer.weight") or (len(shape) == 1 and "norm" in name and name.endswith(".weight")):
            tensors[name] = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) == 1:
            tensors[name] = 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(TINY_VAE_CONFIG, f, indent=2)
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


def _t5_shapes(cfg):
    d, inner, f = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"]
    shapes = {"shared.weight": (cfg["vocab_size"], d), "encoder.final_layer_norm.weight": (d,)}
    shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        cfg["relative_attention_num_buckets"], cfg["num_heads"],
    )  # fmt: skip
    for i in range(cfg["num_layers"]):
        p = f"encoder.block.{i}.layer"
        for name in "qkv":
            shapes[f"{p}.0.SelfAttention.{name}.weight"] = (inner, d)
        shapes[f"{p}.0.SelfAttention.o.weight"] = (d, inner)
        shapes[f"{p}.0.layer_norm.weight"] = (d,)
        shapes[f"{p}.1.DenseReluDense.wi.weight"] = (f, d)
        shapes[f"{p}.1.DenseReluDense.wo.weight"] = (d, f)
        shapes[f"{p}.1.layer_norm.weight"] = (d,)
    return shapes


def _transformer_shapes(cfg):
    D, E, p = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["time_embed_dim"], cfg["patch_size"]
    hd, c_in, c_out = cfg["attention_head_dim"], cfg["in_channels"], cfg["out_channels"]
    shapes = {
        "patch_embed.proj.weight": (D, c_in, p, p), "patch_embed.proj.bias": (D,),
        "patch_embed.text_proj.weight": (D, cfg["text_embed_dim"]), "patch_embed.text_proj.bias": (D,),
        "time_embedding.linear_1.weight": (E, D), "time_embedding.linear_1.bias": (E,),
        "time_embedding.linear_2.weight": (E, E), "time_embedding.linear_2.bias": (E,),
        "norm_final.weight": (D,), "norm_final.bias": (D,), "norm_out.linear.weight": (2 * D, E),
        "norm_out.linear.bias": (2 * D,), "norm_out.norm.weight": (D,), "norm_out.norm.bias": (D,),
        "proj_out.weight": (p * p * c_out, D), "proj_out.bias": (p * p * c_out,),
    }  # fmt: skip
    for i in range(cfg["num_layers"]):
        b = f"transformer_blocks.{i}"
        for norm in ("norm1", "norm2"):
            shapes[f"{b}.{norm}.linear.weight"], shapes[f"{b}.{norm}.linear.bias"] = (6 * D, E), (6 * D,)
            shapes[f"{b}.{norm}.norm.weight"], shapes[f"{b}.{norm}.norm.bias"] = (D,), (D,)
        for qk in ("norm_q", "norm_k"):
            shapes[f"{b}.attn1.{qk}.weight"], shapes[f"{b}.attn1.{qk}.bias"] = (hd,), (hd,)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"{b}.attn1.{proj}.weight"], shapes[f"{b}.attn1.{proj}.bias"] = (D, D), (D,)
        shapes[f"{b}.ff.net.0.proj.weight"], shapes[f"{b}.ff.net.0.proj.bias"] = (4 * D, D), (4 * D,)
        shapes[f"{b}.ff.net.2.weight"], shapes[f"{b}.ff.net.2.bias"] = (D, 4 * D), (D,)
    return shapes


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


def make_tiny_pipeline(folder, seed=0):
    """Writes a tiny random-weight CogVideoX pipeline in diffusers layout (model_index.json + tokenizer,
    text_encoder, transformer, vae, scheduler) and returns the folder: it runs end to end in seconds."""
    import shutil

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "tiny_tokenizer"),
                    os.path.join(folder, "tokenizer"), dirs_exist_ok=True)  # fmt: skip
    t5 = _random_weights(_t5_shapes(TINY_T5_CONFIG), rng, embedding_names=("shared.weight",))
    t5["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] *= 10.0
    _write_component(folder, "text_encoder", TINY_T5_CONFIG, t5, "model.safetensors")
    tr = _random_weights(_transformer_shapes(TINY_TRANSFORMER_CONFIG), rng)
    _write_component(folder, "transformer", TINY_TRANSFORMER_CONFIG, tr, "diffusion_pytorch_model.safetensors")
    make_tiny_vae(os.path.join(folder, "vae"), seed=seed + 1)
    _write_component(folder, "scheduler", TINY_SCHEDULER_CONFIG, None, None)
    index = {
        "_class_name": "CogVideoXPipeline", "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"], "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    }  # fmt: skip
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder
