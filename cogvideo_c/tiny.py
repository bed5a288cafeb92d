"""An embedded tiny random-weight VAE, so the package runs end to end with no checkpoint at hand.

It has diffusers' own fast-test architecture (block_out_channels (8, 8, 8, 8), 4 latent channels, 2 groups) and
weights drawn from a seeded NumPy generator, written in diffusers layout (config.json + safetensors)."""

import json
import os
import struct

import numpy as np

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
    """Writes {name: float32 array} as a safetensors file (the format's header + little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


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
