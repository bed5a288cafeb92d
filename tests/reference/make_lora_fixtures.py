#!/usr/bin/env python3
"""Generate LoRA parity fixtures: random PEFT adapters on the tiny CogVideoX-5b-style transformer
(tests/fixtures/pipeline/tiny_5b), saved by diffusers' save_lora_weights, and diffusers' golden outputs.

Run from the repository root with the reference environment (torch + diffusers + peft):

    /tmp/cvx-reference/bin/python tests/reference/make_lora_fixtures.py

Writes (everything under tests/fixtures/lora/, deleted and recreated):
  <adapter>/pytorch_lora_weights.safetensors   CogVideoXPipeline.save_lora_weights output
  lora.npz                                     inputs and golden transformer outputs of every case, and the frames
                                               of the whole-pipeline case
  manifest.json                                the adapters (config, key count) and the cases

Adapters (random A and B: peft's init_lora_weights=False, then redrawn so every module's update is O(0.1-1)):
  attn    r 4 on attn1.to_q/to_k/to_v/to_out.0, saved WITHOUT adapter metadata: rank and alpha come from the state
          dict as diffusers derives them (lora_alpha = r, scaling 1)
  alpha   r 2, lora_alpha 8 (scaling 4) on to_q/to_v, with metadata
  wide    r 3, lora_alpha 6, use_rslora, rank_pattern {"ff.net.2": 2}, on the feed-forward, the norm1/norm2
          modulation linears and proj_out, with metadata

Cases (transformer called directly, float32 CPU; RoPE tables as the pipeline builds them):
  base             no adapter
  attn_1 / attn_05 adapter "attn" unfused, attention_kwargs={"scale": 1.0 / 0.5}
  alpha_w05        adapter "alpha" with set_adapters("alpha", 0.5)
  wide             adapter "wide"
  mix              attn + alpha + wide, set_adapters(["attn", "alpha", "wide"], [0.7, -0.4, 1.2]) and scale 0.8
  fused_05         mix, then fuse_lora(lora_scale=0.5) (peft: the scale stays multiplied into each active
                   adapter afterwards)
  unfused          after unfuse_lora()
  unloaded         after unload_lora_weights() (must equal base exactly)
  fused_unloaded   attn loaded, fuse_lora(), unload_lora_weights(): the fused weights stay
Whole pipeline: "attn" at set_adapters weight 0.8 on tiny_5b, case 5b_cogddim_dyncfg_crop's arguments.

Reruns give the same arrays and tensors; only the order of the two __metadata__ entries of the files written with
metadata may change (safetensors writes them from a hash map).
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import peft
import torch
from diffusers import CogVideoXPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from _reference_common import print_file_sizes, recreate_dir, rounded_normal, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "lora"
PIPE_DIR = ROOT / "tests" / "fixtures" / "pipeline" / "tiny_5b"
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
ADAPTERS = {
    "attn": dict(config=dict(r=4, lora_alpha=4, target_modules=ATTN), metadata=False, seed=11),
    "alpha": dict(config=dict(r=2, lora_alpha=8, target_modules=["to_q", "to_v"]), metadata=True, seed=12),
    "wide": dict(
        config=dict(
            r=3,
            lora_alpha=6,
            use_rslora=True,
            rank_pattern={"ff.net.2": 2},
            target_modules=["ff.net.0.proj", "ff.net.2", "norm1.linear", "norm2.linear", "proj_out"],
        ),
        metadata=True,
        seed=13,
    ),
}
PIPE_CASE = dict(
    prompt="two dogs run quickly on the beach at sunset", negative_prompt="blurry, low quality",
    num_inference_steps=2, guidance_scale=6.0, use_dynamic_cfg=True, height=16, width=32, num_frames=9,
    max_sequence_length=16,
)  # fmt: skip


def make_adapter(name, spec):
    """Saves adapter `name` and returns its folder."""
    pipe = CogVideoXPipeline.from_pretrained(str(PIPE_DIR), torch_dtype=torch.float32)
    tr = pipe.transformer
    config = LoraConfig(init_lora_weights=False, **spec["config"])
    tr.add_adapter(config, adapter_name=name)
    rng = np.random.default_rng(spec["seed"])
    with torch.no_grad():
        for mod in tr.modules():
            if hasattr(mod, "lora_A") and name in mod.lora_A:
                a, b = mod.lora_A[name].weight, mod.lora_B[name].weight
                # A ~ N(0, 1/in), B ~ N(0, 0.3^2 / r): an update of about 0.3 x the input's scale
                a.copy_(torch.from_numpy(rounded_normal(rng, tuple(a.shape)) / np.float32(np.sqrt(a.shape[1]))))
                b.copy_(torch.from_numpy(rounded_normal(rng, tuple(b.shape)) * np.float32(0.3 / np.sqrt(b.shape[1]))))
    sd = get_peft_model_state_dict(tr, adapter_name=name)
    folder = OUT / name
    meta = tr.peft_config[name].to_dict() if spec["metadata"] else None
    if meta is not None:
        meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
    CogVideoXPipeline.save_lora_weights(str(folder), transformer_lora_layers=sd, transformer_lora_adapter_metadata=meta)
    return folder, len(sd)


def inputs(pipe, rng):
    """Transformer inputs for a 9-frame 16x32 video (3 latent frames, 2 x 4 latents), batch 2, RoPE tables."""
    c = pipe.transformer.config
    h = rng.standard_normal((2, 3, c.in_channels, 2, 4)).astype(np.float32)
    e = rng.standard_normal((2, c.max_text_seq_length, c.text_embed_dim)).astype(np.float32)
    t = np.array([500.0, 250.0], dtype=np.float32)
    cos, sin = pipe._prepare_rotary_positional_embeddings(16, 32, 3, torch.device("cpu"))
    return h, e, t, cos, sin


def forward(pipe, arrays, scale=None):
    h, e, t, cos, sin = (arrays[k] for k in ("in_hidden", "in_text", "in_timestep", "in_cos", "in_sin"))
    kw = {} if scale is None else dict(attention_kwargs={"scale": scale})
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=torch.from_numpy(h), encoder_hidden_states=torch.from_numpy(e),
            timestep=torch.from_numpy(t), image_rotary_emb=(torch.from_numpy(cos), torch.from_numpy(sin)),
            return_dict=False, **kw,
        )[0]  # fmt: skip
    return out.numpy().astype(np.float32)


def main():
    recreate_dir(OUT)
    manifest = dict(
        made_with=versions(torch, diffusers, peft, np, python=True),
        tolerance=dict(transformer_rel=1e-4, frames_max_abs=1e-3),
        pipeline_dir="tiny_5b",
        adapters={},
        cases=[],
    )
    folders = {}
    for name, spec in ADAPTERS.items():
        folders[name], n_keys = make_adapter(name, spec)
        manifest["adapters"][name] = dict(config=spec["config"], metadata=spec["metadata"], keys=n_keys)

    pipe = CogVideoXPipeline.from_pretrained(str(PIPE_DIR), torch_dtype=torch.float32)
    arrays = {}
    h, e, t, cos, sin = inputs(pipe, np.random.default_rng(5))
    arrays.update(in_hidden=h, in_text=e, in_timestep=t, in_cos=cos.numpy(), in_sin=sin.numpy())

    def case(name, steps, scale=None):
        arrays[f"{name}__out"] = forward(pipe, arrays, scale)
        manifest["cases"].append(dict(name=name, steps=steps, scale=scale, out_key=f"{name}__out"))

    case("base", [])
    pipe.load_lora_weights(str(folders["attn"]), adapter_name="attn")
    case("attn_1", [["load", "attn"]], 1.0)
    case("attn_05", [["load", "attn"]], 0.5)
    pipe.load_lora_weights(str(folders["alpha"]), adapter_name="alpha")
    manifest["active_after_two_loads"] = list(pipe.get_active_adapters())
    pipe.set_adapters("alpha", 0.5)
    case("alpha_w05", [["load", "attn"], ["load", "alpha"], ["set_adapters", "alpha", 0.5]])
    pipe.load_lora_weights(str(folders["wide"]), adapter_name="wide")
    pipe.set_adapters("wide")
    case("wide", [["load", "attn"], ["load", "alpha"], ["load", "wide"], ["set_adapters", "wide", None]])
    mix = [["attn", "alpha", "wide"], [0.7, -0.4, 1.2]]
    pipe.set_adapters(*mix)
    loads = [["load", "attn"], ["load", "alpha"], ["load", "wide"], ["set_adapters", *mix]]
    case("mix", loads, 0.8)
    pipe.fuse_lora(lora_scale=0.5)
    case("fused_05", loads + [["fuse_lora", 0.5]])
    pipe.unfuse_lora()
    case("unfused", loads + [["fuse_lora", 0.5], ["unfuse_lora"]])
    pipe.unload_lora_weights()
    case("unloaded", loads + [["fuse_lora", 0.5], ["unfuse_lora"], ["unload_lora_weights"]])
    # diffusers' unfuse subtracts the delta again, so its weights (and this output) differ from the base in the last
    # bits; cogvideo_c points back at the untouched original bytes instead (its test compares with base__out exactly)
    manifest["diffusers_unfuse_drift"] = float(np.abs(arrays["unloaded__out"] - arrays["base__out"]).max())
    pipe.load_lora_weights(str(folders["attn"]), adapter_name="attn")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    case("fused_unloaded", [["load", "attn"], ["fuse_lora", 1.0], ["unload_lora_weights"]])

    # the whole pipeline, with a fresh pipeline (fused weights above stay in the old one)
    pipe = CogVideoXPipeline.from_pretrained(str(PIPE_DIR), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(folders["attn"]), adapter_name="attn")
    pipe.set_adapters("attn", 0.8)
    shape = (1, 3, pipe.transformer.config.in_channels, 2, 4)
    latents = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        frames = pipe(**PIPE_CASE, latents=torch.from_numpy(latents.copy()), output_type="np").frames
    arrays["pipe__latents"], arrays["pipe__frames"] = latents, frames.astype(np.float32)
    manifest["pipeline_case"] = dict(
        kwargs=PIPE_CASE, adapter="attn", weight=0.8, latents_key="pipe__latents", frames_key="pipe__frames"
    )
    save_npz(OUT / "lora.npz", arrays)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for c in manifest["cases"]:
        d = np.abs(arrays[c["out_key"]] - arrays["base__out"]).max()
        print(f"{c['name']:16s} max |out - base| = {d:.4f}")
    print("diffusers' unfuse drift:", manifest["diffusers_unfuse_drift"])
    print("active after two loads:", manifest["active_after_two_loads"])
    print_file_sizes(OUT)


if __name__ == "__main__":
    main()
