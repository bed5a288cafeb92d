#!/usr/bin/env python3
"""Generate CogVideoXImageToVideoPipeline parity fixtures: tiny random I2V pipelines + diffusers golden frames.

Run from the repository root with the reference environment, after make_pipeline_fixtures.py has written
tests/fixtures/pipeline/tiny_5b (whose tokenizer, T5 and VAE these pipelines reuse, so that git stores those files
once):

    /tmp/cvx-reference/bin/python tests/reference/make_i2v_fixtures.py

Writes (everything under tests/fixtures/i2v/, which is deleted and recreated):
  tiny_5b_i2v/   CogVideoX-5b-I2V-style pipeline saved by `pipe.save_pretrained(dir, safe_serialization=True)`:
                 transformer with RoPE and a learned positional table (in_channels 8 = 2 x 4 latent channels,
                 sample 4x6 latents = 32x48 pixels, sample_frames 9, so 9-frame videos use the learned table), and
                 tiny_5b's tokenizer (hub layout), T5 and VAE (scaling_factor 0.7).
  tiny_15_i2v/   CogVideoX1.5-5B-I2V-style: patch_size_t 2, ofs_embed_dim = time_embed_dim, patch_bias False,
                 'slice' RoPE over a 6x8-latent base grid (the 32x48 videos crop it), and tiny_5b's VAE weights with
                 invert_scale_latents True (as 1.5's VAE config). 9 frames = 3 latent frames, odd: the pipeline pads
                 one latent frame (additional_frames) and drops it before decoding.
  tiny_5b_i2v.npz, tiny_15_i2v.npz   per case "<case>__frames" (uint16 [B, F, H, W, 3]: round(65535 x the
                 float32 frames of output_type="np", which are in [0, 1]),
                 "<case>__image_latents" (the image latents the transformer is conditioned on, diagnostics), and
                 "<case>__latents" where a case passes `latents=`.
  images.npz     the input images: "pil_<n>" uint8 [H, W, 3] (given to the pipeline as PIL.Image.fromarray(...), so
                 diffusers resizes them with Lanczos) and "array_<n>" float32 [H, W, 3] in [0, 1] (given as a list
                 of one NumPy array, which diffusers' VaeImageProcessor resizes "nearest"; a bare array is refused
                 by diffusers' check_inputs).
  manifest.json  versions, pipelines, cases (see tests/test_i2v_parity.py).

Random draws. diffusers draws the VAE posterior sample of each image, then the initial latents, then (DPM) the
scheduler's noise, all from the generator passed. To reproduce them without torch, diffusers' randn_tensor is
replaced in the VAE, pipeline and DPM scheduler modules by a draw from a NumPy Generator,
`generator.standard_normal(shape, dtype=np.float32)` (one per row for a list of generators, as randn_tensor does),
and the pipeline is called with `generator=np.random.default_rng(seed)` (or a list of them): cogvideo_c draws
exactly that way from NumPy Generators.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import safetensors
import torch
import transformers
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
)
from diffusers.models.autoencoders import vae as vae_module
from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video as i2v_module
from diffusers.schedulers import scheduling_dpm_cogvideox

from _reference_common import plain, print_file_sizes, recreate_dir, rerandomize_transformer, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "fixtures" / "pipeline" / "tiny_5b"
OUT = ROOT / "tests" / "fixtures" / "i2v"
NEW_BYTES_LIMIT = 900 * 2**10  # files git does not already hold (the shared tokenizer / T5 / VAE excluded)

TRANSFORMERS = {
    "tiny_5b_i2v": dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ),
    "tiny_15_i2v": dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
        ofs_embed_dim=8, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=6, sample_frames=9,
        patch_size=2, patch_size_t=2, patch_bias=False, temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
    ),
}  # fmt: skip
VAE_OVERRIDES = {"tiny_5b_i2v": {}, "tiny_15_i2v": {"invert_scale_latents": True}}
SEEDS = {"tiny_5b_i2v": 3000, "tiny_15_i2v": 3100}

# the generic scheduler diffusers' pipeline tests use: every constructor default
DEFAULT_DDIM = {k: v for k, v in DDIMScheduler().config.items() if not k.startswith("_")}
# 32x48 frames: encode and decode each split into 2 x 2 overlapping tiles that blend over one latent row / column
# (8 pixels), with sizes for which diffusers' tiled_encode / tiled_decode give back whole 4x6 latents / 32x48 frames
TILES = dict(tile_sample_min_height=24, tile_sample_min_width=32, tile_overlap_factor_height=1 / 3,
             tile_overlap_factor_width=1 / 4)  # fmt: skip

P_PANDA = "a panda plays guitar in a bamboo forest"
P_ROBOT = "a robot dances on Mars"
P_CAT = "the cat sleeps peacefully in the rain"
P_DOGS = "two dogs run quickly on the beach at sunset"
P_MONKEY = "dance monkey"
N_BLUR = "blurry, low quality"


def case(name, pipeline, scheduler, prompt, negative_prompt, steps, gs, dyn, images, gen_seeds, tiling=False,
         latents_seed=None, num_frames=9):  # fmt: skip
    return dict(
        name=name, pipeline=pipeline, scheduler=scheduler, images=images, generator_seeds=gen_seeds, tiling=tiling,
        latents_seed=latents_seed,
        kwargs=dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=gs,
                    use_dynamic_cfg=dyn, height=32, width=48, num_frames=num_frames, max_sequence_length=16, eta=0.0),
    )  # fmt: skip


# one-frame videos in the batch case (1 latent frame: the learned table's sin-cos fallback for other frame counts)
# keep its frames small; images: "pil_0" 40x56 and "pil_1" 24x32 (Lanczos down / up), "array_0" 24x40 (nearest,
# non-integer ratios)
# fmt: off
CASES = [
    case("i2v5b_cogddim_cfg_pil", "tiny_5b_i2v", "folder", P_PANDA, None, 2, 6.0, False, ["pil_0"], 11),
    case("i2v5b_dpm_nocfg_array", "tiny_5b_i2v", ("CogVideoXDPMScheduler", "folder"), P_ROBOT, None, 2, 1.0, False,
         ["array_0"], 12),
    case("i2v5b_cogddim_cfg_tiling_pil", "tiny_5b_i2v", "folder", P_CAT, N_BLUR, 2, 6.0, False, ["pil_0"], 13,
         tiling=True),
    case("i2v5b_ddim_batch2_genlist_latents", "tiny_5b_i2v", ("DDIMScheduler", DEFAULT_DDIM), [P_MONKEY, P_DOGS],
         None, 2, 6.0, False, ["pil_0", "pil_1"], [14, 15], latents_seed=16, num_frames=1),
    case("i2v15_cogddim_dyncfg_pil", "tiny_15_i2v", "folder", P_PANDA, N_BLUR, 3, 6.0, True, ["pil_1"], 21),
    case("i2v15_dpm_cfg_array", "tiny_15_i2v", ("CogVideoXDPMScheduler", "folder"), P_DOGS, None, 2, 6.0, False,
         ["array_0"], 22),
    case("i2v15_cogddim_nocfg_tiling_pil", "tiny_15_i2v", "folder", P_ROBOT, None, 2, 1.0, False, ["pil_0"], 23,
         tiling=True),
]
# fmt: on


def make_images() -> dict[str, np.ndarray]:
    """Smooth gradients with a few edges (so resizing filters matter), deterministic."""
    out = {}
    for n, (h, w) in enumerate(((40, 56), (24, 32))):
        y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
        rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.0 * (x + 2 * y) + n)], axis=-1)
        rgb[h // 3 : h // 2, w // 4 : w // 2] = [0.9, 0.1, 0.2]
        out[f"pil_{n}"] = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    y, x = np.mgrid[0:24, 0:40] / np.array([24, 40]).reshape(2, 1, 1)
    arr = np.stack([y * x, 1 - x, 0.5 + 0.4 * np.cos(9 * y)], axis=-1)
    arr[5:11, 7:20] = [0.05, 0.8, 0.6]
    out["array_0"] = arr.astype(np.float32)
    return out


def numpy_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    """Stand-in for diffusers' randn_tensor: a NumPy Generator's float32 draw (per row for a list, as diffusers)."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, list):
        rows = [numpy_randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator[: shape[0]]]
        return torch.cat(rows)
    if not isinstance(generator, np.random.Generator):
        raise AssertionError(f"pass numpy Generators, got {type(generator)}")
    return torch.from_numpy(generator.standard_normal(shape, dtype=np.float32)).to(device=device, dtype=dtype)


for _module in (vae_module, i2v_module, scheduling_dpm_cogvideox):
    _module.randn_tensor = numpy_randn_tensor


def build(name: str, base: CogVideoXPipeline) -> CogVideoXImageToVideoPipeline:
    torch.manual_seed(SEEDS[name])
    transformer = CogVideoXTransformer3DModel(**TRANSFORMERS[name]).eval()
    rerandomize_transformer(transformer, SEEDS[name] + 1)
    vae = base.vae
    if VAE_OVERRIDES[name]:
        vae = AutoencoderKLCogVideoX.from_config(dict(base.vae.config, **VAE_OVERRIDES[name])).eval()
        vae.load_state_dict(base.vae.state_dict())
    return CogVideoXImageToVideoPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=vae, transformer=transformer,
        scheduler=base.scheduler,
    )  # fmt: skip


def save(name: str, pipe: CogVideoXImageToVideoPipeline) -> Path:
    d = OUT / name
    pipe.save_pretrained(str(d), safe_serialization=True)
    shutil.rmtree(d / "tokenizer")
    shutil.copytree(BASE / "tokenizer", d / "tokenizer")  # the hub layout, byte for byte tiny_5b's
    for part in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        same = (d / part).read_bytes() == (BASE / part).read_bytes()
        assert same, f"{name}/{part} is not byte for byte tiny_5b's: git would store a second copy"
    return d


def run_case(pipe, folder_scheduler, c: dict, images: dict, arrays: dict) -> dict:
    kw = dict(c["kwargs"])
    if c["scheduler"] == "folder":
        pipe.scheduler, config_in = folder_scheduler, dict(folder_scheduler.config)
    else:
        cls_name, config_in = c["scheduler"]
        config_in = dict(folder_scheduler.config) if config_in == "folder" else dict(config_in)
        cls = {"CogVideoXDPMScheduler": CogVideoXDPMScheduler, "DDIMScheduler": DDIMScheduler}[cls_name]
        pipe.scheduler = cls.from_config(config_in)
    pipe.vae.disable_tiling()
    if c["tiling"]:
        pipe.vae.enable_tiling(**TILES)
    kinds = {k.split("_")[0] for k in c["images"]}
    assert len(kinds) == 1
    if kinds == {"pil"}:
        image = [PIL.Image.fromarray(images[k]) for k in c["images"]]
        image = image[0] if len(image) == 1 else image
    else:
        image = [images[k].copy() for k in c["images"]]  # a list: diffusers' check_inputs refuses a bare array
    seeds = c["generator_seeds"]
    gen = [np.random.default_rng(s) for s in seeds] if isinstance(seeds, list) else np.random.default_rng(seeds)
    latents = None
    b = 1 if isinstance(kw["prompt"], str) else len(kw["prompt"])
    if c["latents_seed"] is not None:
        f = (kw["num_frames"] - 1) // 4 + 1
        shape = (b, f, pipe.transformer.config.in_channels // 2, kw["height"] // 8, kw["width"] // 8)
        latents = np.random.default_rng(c["latents_seed"]).standard_normal(shape).astype(np.float32)
        arrays[f"{c['name']}__latents"] = latents
    seen = {}
    original_prepare = pipe.prepare_latents

    def spy(*args, **kwargs):
        out = original_prepare(*args, **kwargs)
        seen["image_latents"] = out[1].detach().numpy().copy()
        return out

    pipe.prepare_latents = spy
    with torch.no_grad():
        frames = pipe(
            image=image, **kw, generator=gen, output_type="np",
            latents=None if latents is None else torch.from_numpy(latents.copy()),
        ).frames  # fmt: skip
    del pipe.prepare_latents
    assert frames.shape == (b, kw["num_frames"], kw["height"], kw["width"], 3), frames.shape
    assert np.isfinite(frames).all(), c["name"]
    n = c["name"]
    # stored as round(frames * 65535) in uint16 (half the bytes of float32, rounding error <= 7.7e-6, far inside the
    # 1e-3 tolerance): the frames of random models compress badly
    arrays[f"{n}__frames"] = np.round(np.clip(frames, 0.0, 1.0) * 65535.0).astype(np.uint16)
    arrays[f"{n}__image_latents"] = seen["image_latents"]
    sat = float(np.mean((frames <= 0.0) | (frames >= 1.0)))
    print(f"  {n:34s} {type(pipe.scheduler).__name__:22s} frames {frames.shape} mean {frames.mean():.4f} std "
          f"{frames.std():.4f} saturated {sat:.3f} image_latents {seen['image_latents'].shape}")  # fmt: skip
    return dict(
        name=n,
        pipeline_dir=c["pipeline"],
        scheduler=type(pipe.scheduler).__name__,
        scheduler_source="folder" if c["scheduler"] == "folder" else "from_config",
        scheduler_config=plain(config_in),
        timesteps=[int(t) for t in pipe.scheduler.timesteps],
        call_kwargs=kw,
        images=c["images"],
        image_kind=kinds.pop(),
        generator_seeds=seeds,
        tiling=TILES if c["tiling"] else None,
        latents_key=f"{n}__latents" if latents is not None else None,
        frames_key=f"{n}__frames",
        frames_encoding="uint16: frames = stored / 65535",
        image_latents_key=f"{n}__image_latents",
        frames_shape=list(frames.shape),
        npz=f"{c['pipeline']}.npz",
        stats=dict(mean=float(frames.mean()), std=float(frames.std()), saturated_fraction=sat),
    )


def main() -> int:
    if not (BASE / "model_index.json").is_file():
        print(f"missing {BASE}: run tests/reference/make_pipeline_fixtures.py first", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    recreate_dir(OUT)
    base = CogVideoXPipeline.from_pretrained(str(BASE), torch_dtype=torch.float32)
    images = make_images()
    save_npz(OUT / "images.npz", images)
    manifest = dict(
        versions=versions(diffusers, transformers, torch, np, safetensors, PIL),
        tolerance=dict(frames_max_abs=1e-3),
        notes=[
            "Golden frames: diffusers CogVideoXImageToVideoPipeline, float32, CPU, loaded from the saved folder with "
            "CogVideoXImageToVideoPipeline.from_pretrained(dir, torch_dtype=torch.float32); output_type='np'.",
            "generator: np.random.default_rng(seed) (a list for a list of seeds); diffusers' randn_tensor was "
            "replaced by generator.standard_normal(shape, dtype=np.float32) in the VAE posterior, the pipeline and "
            "the DPM scheduler.",
            "images: image_kind 'pil' passes PIL.Image.fromarray(images.npz[key]) (one, or a list for several); "
            "'array' passes [images.npz[key]] (a list of one float32 HWC array).",
            "tiling: pipe.vae.enable_tiling(**tiling) (encode and decode), else disable_tiling().",
        ],
        pipelines={},
        cases=[],
    )
    arrays = {name: {} for name in TRANSFORMERS}
    for name in TRANSFORMERS:
        print(f"building {name}")
        d = save(name, build(name, base))
        pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(d), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        folder_scheduler = pipe.scheduler
        manifest["pipelines"][name] = dict(
            dir=name,
            transformer_config={k: v for k, v in plain(dict(pipe.transformer.config)).items() if k != "_name_or_path"},
            vae_config={k: v for k, v in plain(dict(pipe.vae.config)).items() if k != "_name_or_path"},
            model_index=json.loads((d / "model_index.json").read_text()),
        )
        for c in CASES:
            if c["pipeline"] == name:
                manifest["cases"].append(run_case(pipe, folder_scheduler, c, images, arrays[name]))
    for name in TRANSFORMERS:
        save_npz(OUT / f"{name}.npz", arrays[name])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = print_file_sizes(OUT)
    shared = sum(
        (OUT / n / p).stat().st_size
        for n in TRANSFORMERS
        for p in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors")
    ) + sum(f.stat().st_size for n in TRANSFORMERS for f in (OUT / n / "tokenizer").iterdir())
    new = total - shared
    print(f"total {total / 1024:.1f} KiB, of it new to git {new / 1024:.1f} KiB (limit {NEW_BYTES_LIMIT / 1024:.0f})")
    if new > NEW_BYTES_LIMIT:
        print("fixtures too large", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
