#!/usr/bin/env python3
"""Generate CogVideoXVideoToVideoPipeline and CogVideoXFunControlPipeline parity fixtures (diffusers golden frames).

Run from the repository root with the reference environment, after tests/reference/make_pipeline_fixtures.py has
written tests/fixtures/pipeline/ (its tiny_2b and tiny_5b folders are reused here, not copied):

    /tmp/cvx-reference/bin/python tests/reference/make_v2v_fixtures.py

Writes (everything under tests/fixtures/v2v/, which is deleted and recreated):
  tiny_fun/       a CogVideoX-Fun-style control pipeline: model_index.json (CogVideoXFunControlPipeline), transformer/
                  (diffusers' fun-control fast-test transformer: in_channels 8 = 2 x the 4 latent channels,
                  out_channels 4, sincos positions; random weights) and scheduler/ (DDIMScheduler(), as diffusers'
                  test), written by `pipe.save_pretrained`. Its tokenizer, text_encoder and vae folders are left
                  out: they are byte for byte tests/fixtures/pipeline/tiny_2b's, so the goldens load them from there
                  and the test passes them as components (`from_pretrained(dir, tokenizer=..., vae=...)`).
  v2v.npz         per case: "<case>__video" (uint8 [videos, F, H, W, 3], the input / control frames; PIL images or
                  float32 arrays frames / 255 as the case's video_kind says), "<case>__frames" (float32 [B, F, H, W,
                  3], output_type="np"), "<case>__initial_latents" (what prepare_latents returned: the noised video
                  latents, or the Fun case's initial noise), for Fun cases "<case>__control_latents" (float32 [B, C,
                  F_lat, h, w], prepare_control_latents' output before the permute) and, where the case passes
                  them, "<case>__latents"; "<case>__step_latents" (latents after each step; diagnostics).
  manifest.json   versions, cases (call arguments, scheduler, VAE tiling, generator seeds, draws, timesteps run), and
                  the two pipelines' __call__ parameter names (call_signatures).

Golden outputs: diffusers 0.42.1 in float32 on CPU, the pipelines loaded with `<Pipeline>.from_pretrained(dir,
torch_dtype=torch.float32)` from the saved folders.

Random draws: diffusers draws the VAE posterior sample (DiagonalGaussianDistribution.sample), the noise added at the
first timestep (scheduler.add_noise) and the DPM scheduler's noise with `randn_tensor`. To make them reproducible
without torch, `randn_tensor` is replaced in those three modules (and in the Fun pipeline's) by draws from NumPy
generators, as diffusers' randn_tensor draws from torch generators: one `generator.standard_normal(shape,
dtype=np.float32)`, or with a list of generators one (1, *shape[1:]) draw per batch entry from generator[i]. The test
passes `generator=np.random.default_rng(seed)` (or a list of them); cogvideo_c draws from a NumPy Generator exactly
that way.
"""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path

import diffusers
import numpy as np
import PIL
import safetensors
import torch
import transformers
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXFunControlPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    CogVideoXVideoToVideoPipeline,
    DDIMScheduler,
)
from diffusers.models.autoencoders import vae as vae_module
from diffusers.pipelines.cogvideo import pipeline_cogvideox_fun_control, pipeline_cogvideox_video2video
from diffusers.schedulers import scheduling_dpm_cogvideox
from PIL import Image

from _reference_common import (
    check_total_size,
    numpy_randn_tensor_into,
    plain,
    recreate_dir,
    rerandomize_transformer,
    save_npz,
    versions,
)

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_FIXTURES = ROOT / "tests" / "fixtures" / "pipeline"
OUT = ROOT / "tests" / "fixtures" / "v2v"
SIZE_LIMIT = 1 * 2**20

FUN_SEED = 3000
DEFAULT_DDIM = {k: v for k, v in DDIMScheduler().config.items() if not k.startswith("_")}
# tiles of 16 x 16 pixels (2 x 2 latents) overlapping by half: the encode's tile steps (8 pixels) and the decode's
# (1 latent) are whole latents, so the tiled latents keep the frame's size (with diffusers' default overlaps a tile
# this small would not) and a 32 x 32 frame is 4 x 4 tiles
TILING = dict(tile_sample_min_height=16, tile_sample_min_width=16, tile_overlap_factor_height=0.5,
              tile_overlap_factor_width=0.5)  # fmt: skip

P_PANDA = "a panda plays guitar in a bamboo forest"
P_ROBOT = "a robot dances on Mars"
P_MONKEY = "dance monkey"
P_CAT = "the cat sleeps peacefully in the rain"
N_BLUR = "blurry, low quality"


def v2v(name, folder, scheduler, video, prompt, steps, strength, gs, h, w, gen, neg=None, dyn=False, tiling=None,
        kind="pil"):  # fmt: skip
    """video: (videos, frames, height, width, seed) of the random input frames; gen: a seed or a list of seeds."""
    return dict(name=name, pipeline="video2video", folder=folder, scheduler=scheduler, video=video, video_kind=kind,
                kwargs=dict(prompt=prompt, negative_prompt=neg, height=h, width=w, num_inference_steps=steps,
                            strength=strength, guidance_scale=gs, use_dynamic_cfg=dyn, eta=0.0,
                            max_sequence_length=16),
                generator=gen, latents_seed=None, tiling=tiling)  # fmt: skip


def fun(name, scheduler, video, prompt, steps, gs, h, w, gen=None, latents_seed=None, neg=None, dyn=False,
        tiling=None, kind="pil"):  # fmt: skip
    return dict(name=name, pipeline="fun_control", folder="tiny_fun", scheduler=scheduler, video=video,
                video_kind=kind,
                kwargs=dict(prompt=prompt, negative_prompt=neg, height=h, width=w, num_inference_steps=steps,
                            guidance_scale=gs, use_dynamic_cfg=dyn, eta=0.0, max_sequence_length=16),
                generator=gen, latents_seed=latents_seed, tiling=tiling)  # fmt: skip


# fmt: off
CASES = [
    # strength 0.5 of 4 steps: get_timesteps keeps the last 2
    v2v("v2v_2b_cogddim_s05_cfg", "tiny_2b", "folder", (1, 9, 16, 16, 11), P_PANDA, 4, 0.5, 6.0, 16, 16, 201),
    # PIL frames of 28 x 20 resized (Lanczos) to 16 x 16; strength 0.8 of 5 steps: 4 run
    v2v("v2v_2b_cogddim_s08_nocfg_resize", "tiny_2b", "folder", (1, 9, 20, 28, 12), P_ROBOT, 5, 0.8, 1.0, 16, 16,
        202),
    # the generic DDIMScheduler, a float array of 5 frames at 36 x 40 (nearest resize to 32 x 32), tiled encode/decode
    v2v("v2v_2b_ddim_s08_cfg_np_tiled", "tiny_2b", ("DDIMScheduler", DEFAULT_DDIM), (1, 5, 36, 40, 13), P_MONKEY, 5,
        0.8, 6.0, 32, 32, 203, neg=N_BLUR, tiling=TILING, kind="np"),
    # two videos (list of lists of PIL images), two prompts, one generator per video
    v2v("v2v_2b_cogddim_batch2_genlist", "tiny_2b", "folder", (2, 9, 16, 16, 14), [P_MONKEY, P_CAT], 3, 0.8, 6.0,
        16, 16, [204, 205]),
    # RoPE (5b-style) with the DPM scheduler: posterior, add_noise and every step draw from one generator
    v2v("v2v_5b_dpm_s08_dyncfg", "tiny_5b", ("CogVideoXDPMScheduler", "folder"), (1, 9, 16, 32, 15), P_PANDA, 5,
        0.8, 6.0, 16, 32, 206, dyn=True),
    v2v("v2v_5b_dpm_s05_nocfg_tiled", "tiny_5b", ("CogVideoXDPMScheduler", "folder"), (1, 5, 32, 32, 16), P_ROBOT, 4,
        0.5, 1.0, 32, 32, 207, tiling=TILING, kind="np"),
    fun("fun_ddim_cfg_gen", "folder", (1, 9, 16, 16, 21), P_PANDA, 3, 6.0, 16, 16, gen=301),
    fun("fun_cogddim_nocfg_latents_tiled", ("CogVideoXDDIMScheduler", "tiny_2b"), (1, 5, 32, 32, 22), P_ROBOT, 2,
        1.0, 32, 32, latents_seed=302, tiling=TILING, kind="np"),
    fun("fun_ddim_dyncfg_resize", "folder", (1, 9, 20, 24, 23), P_CAT, 2, 6.0, 16, 16, latents_seed=303, neg=N_BLUR,
        dyn=True),
]
# fmt: on

# ----------------------------------------------------------------------------------------------------------------
# NumPy draws in place of randn_tensor
# ----------------------------------------------------------------------------------------------------------------

_draws: list[tuple[int, ...]] = []
numpy_randn_tensor_into(
    (vae_module, pipeline_cogvideox_video2video, pipeline_cogvideox_fun_control, scheduling_dpm_cogvideox), _draws
)


def make_scheduler(spec, folder_scheduler, configs):
    if spec == "folder":
        return folder_scheduler, dict(folder_scheduler.config)
    cls_name, config = spec
    cls = {"CogVideoXDDIMScheduler": CogVideoXDDIMScheduler, "CogVideoXDPMScheduler": CogVideoXDPMScheduler,
           "DDIMScheduler": DDIMScheduler}[cls_name]  # fmt: skip
    if config == "folder":
        config = dict(folder_scheduler.config)
    elif isinstance(config, str):
        config = dict(configs[config])
    return cls.from_config(config), dict(config)


def build_fun() -> Path:
    """tests/fixtures/v2v/tiny_fun: model_index.json, transformer/, scheduler/ of a saved Fun-Control pipeline."""
    base = CogVideoXPipeline.from_pretrained(str(PIPELINE_FIXTURES / "tiny_2b"), torch_dtype=torch.float32)
    # diffusers' tests/pipelines/cogvideo/test_cogvideox_fun_control.py: its text-to-video test transformer (the
    # one tiny_2b has) with in_channels 8, twice the latent channels
    config = {k: v for k, v in dict(base.transformer.config).items() if not k.startswith("_")}
    torch.manual_seed(FUN_SEED)
    transformer = CogVideoXTransformer3DModel(**dict(config, in_channels=8)).eval()
    rerandomize_transformer(transformer, FUN_SEED + 1)
    pipe = CogVideoXFunControlPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                       transformer=transformer, scheduler=DDIMScheduler())  # fmt: skip
    d = OUT / "tiny_fun"
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        d.mkdir()
        shutil.copy2(Path(tmp) / "model_index.json", d / "model_index.json")
        for sub in ("transformer", "scheduler"):
            shutil.copytree(Path(tmp) / sub, d / sub)
        for sub in ("tokenizer", "text_encoder", "vae"):  # the same bytes as tiny_2b's (not stored twice)
            for f in sorted((Path(tmp) / sub).iterdir()):
                if f.suffix == ".safetensors":
                    assert f.read_bytes() == (PIPELINE_FIXTURES / "tiny_2b" / sub / f.name).read_bytes(), f
    return d


def load(case):
    base_dir = PIPELINE_FIXTURES / (case["folder"] if case["pipeline"] == "video2video" else "tiny_2b")
    if case["pipeline"] == "video2video":
        pipe = CogVideoXVideoToVideoPipeline.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    else:
        base = CogVideoXPipeline.from_pretrained(str(base_dir), torch_dtype=torch.float32)
        pipe = CogVideoXFunControlPipeline.from_pretrained(
            str(OUT / "tiny_fun"), tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
            torch_dtype=torch.float32,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def input_frames(spec):
    videos, frames, h, w, seed = spec
    return np.random.default_rng(seed).integers(0, 256, size=(videos, frames, h, w, 3), dtype=np.uint8)


def as_video(frames_u8, kind):
    """The pipeline's `video` / `control_video` argument from the stored frames."""
    if kind == "np":
        assert frames_u8.shape[0] == 1
        return frames_u8[0].astype(np.float32) / np.float32(255)  # one [F, H, W, 3] array in [0, 1]
    vids = [[Image.fromarray(f) for f in v] for v in frames_u8]
    return vids[0] if len(vids) == 1 else vids


def generators(gen):
    if gen is None:
        return None
    return [np.random.default_rng(s) for s in gen] if isinstance(gen, list) else np.random.default_rng(gen)


def run_case(c, configs, arrays, pipe=None) -> dict:
    """One case on a fresh pipeline: `pipe`, or the case's folder loaded in float32 (make_dtype16_fixtures.py passes
    16-bit ones)."""
    pipe = load(c) if pipe is None else pipe
    folder_scheduler = pipe.scheduler
    pipe.scheduler, config_in = make_scheduler(c["scheduler"], folder_scheduler, configs)
    if c["tiling"]:
        pipe.vae.enable_tiling(**c["tiling"])
    n, kw = c["name"], dict(c["kwargs"])
    frames_u8 = input_frames(c["video"])
    captured = {}
    orig_prepare = pipe.prepare_latents

    def prepare_latents(*args, **kwargs):
        out = orig_prepare(*args, **kwargs)
        captured["initial_latents"] = out.detach().numpy().copy()
        return out

    pipe.prepare_latents = prepare_latents
    if c["pipeline"] == "fun_control":
        orig_control = pipe.prepare_control_latents

        def prepare_control_latents(*args, **kwargs):
            mask, control = orig_control(*args, **kwargs)
            captured["control_latents"] = control.detach().numpy().copy()
            return mask, control

        pipe.prepare_control_latents = prepare_control_latents
    step_latents = []

    def on_step(p, i, t, cb):
        step_latents.append(cb["latents"].detach().numpy().copy())
        return {}

    extra = {}
    if c["latents_seed"] is not None:
        s = pipe.vae_scale_factor_spatial
        shape = (1, (c["video"][1] - 1) // 4 + 1, 4, kw["height"] // s, kw["width"] // s)
        lat = np.random.default_rng(c["latents_seed"]).standard_normal(shape).astype(np.float32)
        arrays[f"{n}__latents"] = lat
        extra["latents"] = torch.from_numpy(lat.copy())
    video_arg = "video" if c["pipeline"] == "video2video" else "control_video"
    _draws.clear()
    with torch.no_grad():
        frames = pipe(**kw, **{video_arg: as_video(frames_u8, c["video_kind"])}, generator=generators(c["generator"]),
                      output_type="np", callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"],
                      **extra).frames  # fmt: skip
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32
    assert np.isfinite(frames).all(), n
    arrays[f"{n}__video"] = frames_u8
    arrays[f"{n}__frames"] = frames
    arrays[f"{n}__initial_latents"] = captured["initial_latents"]
    arrays[f"{n}__step_latents"] = np.stack(step_latents).astype(np.float32)
    entry = dict(
        name=n, pipeline=c["pipeline"], pipeline_dir=c["folder"] if c["pipeline"] == "video2video" else "tiny_fun",
        components_from="tiny_2b" if c["pipeline"] == "fun_control" else None,
        scheduler=type(pipe.scheduler).__name__,
        scheduler_source="folder" if c["scheduler"] == "folder" else "from_config",
        scheduler_config=plain(config_in), call_kwargs=kw, video_kind=c["video_kind"], video_key=f"{n}__video",
        vae_tiling=c["tiling"], generator_seeds=c["generator"],
        latents_key=f"{n}__latents" if c["latents_seed"] is not None else None,
        frames_key=f"{n}__frames", initial_latents_key=f"{n}__initial_latents", step_latents_key=f"{n}__step_latents",
        frames_shape=list(frames.shape), timesteps=[int(t) for t in pipe.scheduler.timesteps],
        steps_run=len(step_latents), draws=[list(s) for s in _draws],
    )  # fmt: skip
    if "control_latents" in captured:
        arrays[f"{n}__control_latents"] = captured["control_latents"]
        entry["control_latents_key"] = f"{n}__control_latents"
    print(f"  {n:34s} {entry['scheduler']:22s} frames {tuple(frames.shape)} mean {frames.mean():.4f} std "
          f"{frames.std():.4f} steps run {len(step_latents)} of {entry['timesteps']} draws {len(_draws)}")  # fmt: skip
    return entry


def main() -> int:
    if not (PIPELINE_FIXTURES / "tiny_2b" / "model_index.json").is_file():
        print("missing tests/fixtures/pipeline: run tests/reference/make_pipeline_fixtures.py first", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    recreate_dir(OUT)
    build_fun()
    tiny_2b_scheduler = PIPELINE_FIXTURES / "tiny_2b" / "scheduler" / "scheduler_config.json"
    configs = {"tiny_2b": json.loads(tiny_2b_scheduler.read_text())}
    manifest = dict(
        versions=versions(diffusers, transformers, torch, np, safetensors, PIL),
        tolerance=dict(frames_max_abs=1e-3),
        notes=[
            "Golden frames: diffusers' CogVideoXVideoToVideoPipeline / CogVideoXFunControlPipeline, float32, CPU; "
            "video2video cases load tests/fixtures/pipeline/<pipeline_dir> (the text-to-video folders), fun_control "
            "cases load tests/fixtures/v2v/tiny_fun with tokenizer, text_encoder and vae from components_from.",
            "video_kind 'pil': the stored uint8 frames as PIL images (a list of lists for several videos); 'np': one "
            "float32 [F, H, W, 3] array, frames / 255.",
            "generator_seeds: pass np.random.default_rng(seed) (or a list of them); diffusers' randn_tensor drew "
            "generator.standard_normal(shape, dtype=np.float32) for these goldens, in the order of `draws`.",
            "vae_tiling: pipe.vae.enable_tiling(**vae_tiling) before the call.",
        ],
        cases=[],
        # diffusers' __call__ parameters, in order (cogvideo_c's must be the same names in the same order)
        call_signatures={
            cls.__name__: list(inspect.signature(cls.__call__).parameters)[1:]
            for cls in (CogVideoXVideoToVideoPipeline, CogVideoXFunControlPipeline)
        },
    )
    arrays: dict[str, np.ndarray] = {}
    for c in CASES:
        manifest["cases"].append(run_case(c, configs, arrays))
    save_npz(OUT / "v2v.npz", arrays)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return check_total_size(OUT, SIZE_LIMIT)


if __name__ == "__main__":
    sys.exit(main())
