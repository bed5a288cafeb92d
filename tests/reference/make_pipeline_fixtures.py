#!/usr/bin/env python3
"""Generate CogVideoXPipeline (text-to-video) parity fixtures: tiny random pipelines + diffusers golden frames.

Run from the repository root with the reference environment (torch + diffusers + transformers + sentencepiece, never
runtime deps of cogvideo_c), after tests/reference/make_tokenizer_fixtures.py has written tests/fixtures/tokenizer/:

    /tmp/cvx-reference/bin/python tests/reference/make_pipeline_fixtures.py

Writes (everything under tests/fixtures/pipeline/, which is deleted and recreated):
  tiny_2b/        CogVideoX-2b-style pipeline saved by `pipe.save_pretrained(dir, safe_serialization=True)`:
                  transformer = diffusers' pipeline-test config (spec §6.1, sincos positions, max_text_seq_length 16),
                  T5 "relu" (tiny-random-t5 style, 2 layers), the test VAE (scaling_factor 1.15258426), scheduler
                  CogVideoXDDIMScheduler with the released 2b config (spec §4.2). Its tokenizer/ folder is what
                  transformers 5 writes (tokenizer.json + tokenizer_config.json, no spiece.model).
  tiny_5b/        CogVideoX-5b-style: RoPE transformer (2 heads x 16, 2 layers, sample 4x6 latents), T5 "gated-gelu",
                  the test VAE with scaling_factor 0.7, CogVideoXDDIMScheduler with the 5b config (snr_shift_scale 1.0).
                  Its tokenizer/ folder is the hub layout (spiece.model, tokenizer_config.json,
                  special_tokens_map.json, added_tokens.json; no tokenizer.json), copied from tests/fixtures/tokenizer.
  tiny_2b.npz, tiny_5b.npz   per case: "<case>__latents" (float32 [B, F_lat, 4, h, w], the initial latents passed as
                  `latents=`), "<case>__frames" (float32 [B, F, H, W, 3], output_type="np"), "<case>__step_latents"
                  (float32 [steps, B, F_lat, 4, h, w], latents after each scheduler step, from callback_on_step_end;
                  diagnostics), for DPM cases "<case>__noise" (float32 [draws, B, F_lat, 4, h, w], every draw the
                  scheduler made, in order); per prompt-embeds case "<name>__prompt_embeds" and
                  "<name>__negative_prompt_embeds".
  manifest.json   versions, pipelines, cases, prompt-embeds cases (see tests/test_pipeline_parity.py).
  run_dtype.json, run_dtype.npz   run-dtype cases: the float32 folders loaded with torch_dtype float16 / bfloat16,
                  with two goldens each (RUN_DTYPE_CASES; see tests/test_dtype_parity.py).

Golden outputs come from diffusers' CogVideoXPipeline in float32 on CPU, reloaded from the saved folder with
`CogVideoXPipeline.from_pretrained(dir, torch_dtype=torch.float32)` (so the saved files are what is tested).

Schedulers: a case either uses the folder's own scheduler ("scheduler_source": "folder") or sets
`pipe.scheduler = <scheduler>.from_config(<scheduler_config>)` (diffusers' idiom; the stored config is the full
`dict(scheduler.config)`, including `_class_name` / `_diffusers_version`).

CogVideoXDPMScheduler draws N(0, 1) noise on every step whatever `eta` is (and a second draw, replacing the first, on
second-order steps). To make those cases reproducible without torch, diffusers' `randn_tensor` in the DPM scheduler
module is replaced here by a draw from a NumPy generator: `generator.standard_normal(shape, dtype=np.float32)`, with
`generator = np.random.default_rng(seed)` passed to the pipeline as `generator=`. cogvideo_c's `_standard_normal`
draws exactly that way from a NumPy Generator, so the test passes `generator=np.random.default_rng(seed)`. The draws
are stored too ("<case>__noise").
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import diffusers
import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
)
from diffusers.schedulers import scheduling_dpm_cogvideox
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from _reference_common import (
    check_total_size,
    plain,
    recreate_dir,
    rerandomize_t5,
    rerandomize_transformer,
    rerandomize_vae,
    save_npz,
    versions,
)

ROOT = Path(__file__).resolve().parents[2]
TOK_SRC = ROOT / "tests" / "fixtures" / "tokenizer"
OUT = ROOT / "tests" / "fixtures" / "pipeline"
SIZE_LIMIT = 3 * 2**20  # all pipeline fixtures together
VAE_OUT_GAIN = 0.4

# ----------------------------------------------------------------------------------------------------------------
# scheduler configs (spec §4.2: released CogVideoX-2b scheduler_config.json; 5b identical except snr_shift_scale 1.0)
# ----------------------------------------------------------------------------------------------------------------

SCHED_2B = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    clip_sample_range=1.0,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    sample_max_value=1.0,
    set_alpha_to_one=True,
    snr_shift_scale=3.0,
    steps_offset=0,
    timestep_spacing="trailing",
    trained_betas=None,
)
SCHED_5B = dict(SCHED_2B, snr_shift_scale=1.0)

# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------

VAE_TEST = dict(  # diffusers' tests/pipelines/cogvideo/test_cogvideox.py (spec §6.1)
    in_channels=3,
    out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
)

T5_COMMON = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=37,
    num_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

PIPELINES = {
    "tiny_2b": dict(
        seed=1000,
        t5=dict(T5_COMMON, feed_forward_proj="relu"),
        transformer=dict(  # spec §6.1, exactly diffusers' pipeline-test transformer
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=32,
            num_layers=1,
            sample_width=2,
            sample_height=2,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=16,
        ),
        vae=dict(VAE_TEST),  # scaling_factor default 1.15258426 (as 2b)
        scheduler=("CogVideoXDDIMScheduler", SCHED_2B),
        tokenizer_layout="save_pretrained",  # tokenizer.json + tokenizer_config.json (transformers 5)
    ),
    "tiny_5b": dict(
        seed=2000,
        t5=dict(T5_COMMON, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        transformer=dict(
            num_attention_heads=2,
            attention_head_dim=16,  # RoPE split 4 / 6 / 6
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=32,
            num_layers=2,
            sample_width=6,  # base RoPE grid 2 x 3 patches: other sizes get a crop region (fractional positions)
            sample_height=4,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=16,
            use_rotary_positional_embeddings=True,
        ),
        vae=dict(VAE_TEST, scaling_factor=0.7),  # as 5b
        scheduler=("CogVideoXDDIMScheduler", SCHED_5B),
        tokenizer_layout="hub",  # spiece.model + json files, as the released checkpoints
    ),
}

# ----------------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------------

# the generic scheduler diffusers' pipeline test uses (spec §4.7): every constructor default, written out
DEFAULT_DDIM = {k: v for k, v in DDIMScheduler().config.items() if not k.startswith("_")}


def case(name, pipeline, scheduler, prompt, negative_prompt, steps, gs, dyn, h, w, nf, msl, seed, gen_seed=None):
    return dict(
        name=name,
        pipeline=pipeline,
        scheduler=scheduler,  # "folder" or (class name, config dict or "folder": the folder scheduler's config)
        kwargs=dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=gs,
            use_dynamic_cfg=dyn,
            height=h,
            width=w,
            num_frames=nf,
            max_sequence_length=msl,
            eta=0.0,
        ),
        latents_seed=seed,
        generator_seed=gen_seed,
    )


P_MONKEY = "dance monkey"
P_PANDA = "a panda plays guitar in a bamboo forest"
P_ROBOT = "a robot dances on Mars"
P_DOGS = "two dogs run quickly on the beach at sunset"
P_CAT = "the cat sleeps peacefully in the rain"
P_LONG = "an old man reads a book and drinks coffee inside a cozy kitchen while a tiny mouse juggles oranges"
N_BLUR = "blurry, low quality"

# fmt: off
CASES = [
    # diffusers' own fast test (spec §6.1): generic DDIMScheduler(), 2 steps, CFG 6, 16x16, 8 frames, msl 16
    case("2b_ddim_difftest", "tiny_2b", ("DDIMScheduler", DEFAULT_DDIM), P_MONKEY, "", 2, 6.0, False, 16, 16, 8, 16, 1),
    case("2b_cogddim_cfg_5steps", "tiny_2b", "folder", P_PANDA, None, 5, 6.0, False, 16, 16, 9, 16, 2),
    case("2b_cogddim_nocfg", "tiny_2b", "folder", P_ROBOT, None, 2, 1.0, False, 16, 16, 8, 16, 3),
    case("2b_cogddim_dyncfg_neg_wide", "tiny_2b", "folder", P_DOGS, N_BLUR, 5, 6.0, True, 16, 32, 8, 16, 4),
    case("2b_cogddim_batch2", "tiny_2b", "folder", [P_MONKEY, P_CAT], ["", N_BLUR], 2, 6.0, False, 16, 16, 8, 16, 5),
    case("2b_dpm_cfg_5steps", "tiny_2b", ("CogVideoXDPMScheduler", "folder"), P_PANDA, None, 5, 6.0, False,
         16, 16, 8, 16, 6, gen_seed=106),
    case("5b_cogddim_cfg_5steps", "tiny_5b", "folder", P_PANDA, None, 5, 6.0, False, 32, 48, 9, 16, 7),
    case("5b_cogddim_dyncfg_crop", "tiny_5b", "folder", P_DOGS, N_BLUR, 2, 6.0, True, 16, 32, 9, 16, 8),
    case("5b_dpm_dyncfg_5steps", "tiny_5b", ("CogVideoXDPMScheduler", "folder"), P_ROBOT, None, 5, 6.0, True,
         32, 32, 9, 16, 9, gen_seed=109),
    case("5b_dpm_nocfg_batch2", "tiny_5b", ("CogVideoXDPMScheduler", "folder"), [P_MONKEY, P_CAT], None, 2, 1.0,
         False, 16, 16, 8, 16, 10, gen_seed=110),
    # RoPE models accept any text length: max_sequence_length 12 (< max_text_seq_length 16) truncates the prompt
    case("5b_ddim_difftest_msl12", "tiny_5b", ("DDIMScheduler", DEFAULT_DDIM), P_LONG, None, 2, 6.0, False,
         16, 16, 8, 12, 11),
]
# fmt: on

# run-dtype cases (issue 7 item 1): the float32 pipeline folder loaded with torch_dtype float16 / bfloat16, which
# cogvideo_c runs with every weight kept in that dtype and float32 arithmetic. Two goldens per case:
#   "frames_key": diffusers on the folder loaded in float32 with every parameter rounded to the dtype (the weights
#       cogvideo_c holds), computed in float32;
#   "diffusers_load_frames_key": CogVideoXPipeline.from_pretrained(dir, torch_dtype=<dtype>).to(torch.float32), what
#       a diffusers user's weights are: for float16, transformers keeps the T5 `wo` weights unrounded
#       (_keep_in_fp32_modules), everything else is rounded; for bfloat16 the two are identical (asserted).
RUN_DTYPE_CASES = ("2b_cogddim_cfg_5steps", "5b_cogddim_dyncfg_crop")
RUN_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
RUN_DTYPE_NPZ = "run_dtype.npz"

EMBED_CASES = [
    dict(name="2b_embeds_monkey", pipeline="tiny_2b", prompt=P_MONKEY, negative_prompt="", max_sequence_length=16),
    dict(
        name="2b_embeds_batch2",
        pipeline="tiny_2b",
        prompt=[P_PANDA, P_LONG],
        negative_prompt=N_BLUR,
        max_sequence_length=16,
    ),  # fmt: skip
    dict(name="5b_embeds_monkey", pipeline="tiny_5b", prompt=P_MONKEY, negative_prompt=None, max_sequence_length=16),
    dict(
        name="5b_embeds_long_msl12", pipeline="tiny_5b", prompt=P_LONG, negative_prompt=N_BLUR, max_sequence_length=12
    ),  # fmt: skip
]

# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def make_scheduler(class_name: str, config: dict):
    cls = {"CogVideoXDDIMScheduler": CogVideoXDDIMScheduler, "CogVideoXDPMScheduler": CogVideoXDPMScheduler,
           "DDIMScheduler": DDIMScheduler}[class_name]  # fmt: skip
    return cls.from_config(config)


def tree_files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# building and saving
# ----------------------------------------------------------------------------------------------------------------


def build_pipeline(name: str, tokenizer: T5Tokenizer) -> CogVideoXPipeline:
    spec = PIPELINES[name]
    seed = spec["seed"]
    vocab = int(math.ceil(len(tokenizer) / 32) * 32)  # the tokenizer's ids rounded up (T5 pads its embedding too)

    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=vocab, **spec["t5"])).eval()
    rerandomize_t5(text_encoder, seed + 1)

    torch.manual_seed(seed + 2)
    transformer = CogVideoXTransformer3DModel(**spec["transformer"]).eval()
    rerandomize_transformer(transformer, seed + 3)

    torch.manual_seed(seed + 4)
    vae = AutoencoderKLCogVideoX(**spec["vae"]).eval()
    # smaller output layer: decoded pixels mostly inside [-1, 1], so few frame values are clamped to 0 / 1
    rerandomize_vae(vae, seed + 5, out_gain=VAE_OUT_GAIN)

    scheduler = make_scheduler(*spec["scheduler"])
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def save_pipeline(name: str, pipe: CogVideoXPipeline) -> Path:
    d = OUT / name
    pipe.save_pretrained(str(d), safe_serialization=True)
    tok_dir = d / "tokenizer"
    assert tok_dir.is_dir(), "save_pretrained wrote no tokenizer folder"
    if PIPELINES[name]["tokenizer_layout"] == "hub":
        # the released checkpoints' layout (spec §7): spiece.model + json files, no tokenizer.json
        shutil.rmtree(tok_dir)
        tok_dir.mkdir()
        for f in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
            shutil.copy2(TOK_SRC / f, tok_dir / f)
    else:
        assert (tok_dir / "tokenizer.json").is_file(), sorted(p.name for p in tok_dir.iterdir())
    return d


def check_reload(name: str, original: CogVideoXPipeline, reloaded: CogVideoXPipeline, tokenizer: T5Tokenizer):
    for comp in ("text_encoder", "transformer", "vae"):
        a = dict(getattr(original, comp).state_dict())
        b = dict(getattr(reloaded, comp).state_dict())
        assert a.keys() == b.keys(), f"{name}/{comp}: state dict keys differ after reload"
        for k in a:
            assert b[k].dtype == torch.float32, f"{name}/{comp}.{k}: {b[k].dtype}"
            assert torch.equal(a[k], b[k]), f"{name}/{comp}.{k} differs after reload"
    assert type(reloaded.scheduler).__name__ == type(original.scheduler).__name__
    assert dict(reloaded.scheduler.config) == dict(original.scheduler.config)
    # the saved tokenizer must tokenise like the source fixture tokenizer, both via the pipeline and directly
    probe = [P_MONKEY, P_LONG, "", N_BLUR, "café naïve 2024 </s> <extra_id_3>"]
    want = tokenizer(probe, padding="max_length", max_length=16, truncation=True).input_ids
    for tok in (reloaded.tokenizer, T5Tokenizer.from_pretrained(str(OUT / name / "tokenizer"))):
        got = tok(probe, padding="max_length", max_length=16, truncation=True).input_ids
        assert got == want, f"{name}: reloaded tokenizer differs: {got} vs {want}"
        assert 2 not in tok(P_PANDA).input_ids, f"{name}: reloaded tokenizer makes <unk> of a corpus prompt"


# ----------------------------------------------------------------------------------------------------------------
# running diffusers
# ----------------------------------------------------------------------------------------------------------------

_noise_draws: list[np.ndarray] = []
_orig_randn_tensor = scheduling_dpm_cogvideox.randn_tensor


def numpy_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    """Stand-in for diffusers' randn_tensor in the DPM scheduler: a NumPy Generator's float32 draw."""
    if not isinstance(generator, np.random.Generator):
        raise AssertionError(f"DPM cases must pass a numpy Generator, got {type(generator)}")
    arr = generator.standard_normal(tuple(int(s) for s in shape), dtype=np.float32)
    _noise_draws.append(arr.copy())
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


scheduling_dpm_cogvideox.randn_tensor = numpy_randn_tensor


def latent_shape(pipe, kwargs):
    prompt = kwargs["prompt"]
    b = 1 if isinstance(prompt, str) else len(prompt)
    f = (kwargs["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    s = pipe.vae_scale_factor_spatial
    return (b, f, pipe.transformer.config.in_channels, kwargs["height"] // s, kwargs["width"] // s)


def run_case(pipe: CogVideoXPipeline, folder_scheduler, c: dict, arrays: dict) -> dict:
    kw = dict(c["kwargs"])
    if c["scheduler"] == "folder":
        pipe.scheduler = folder_scheduler
        config_in = dict(folder_scheduler.config)
    else:
        # ("Class", "folder"): diffusers' idiom `Class.from_config(pipe.scheduler.config)` on the folder's scheduler
        # (so the config passed still says _class_name "CogVideoXDDIMScheduler")
        cls_name, config_in = c["scheduler"]
        config_in = dict(folder_scheduler.config) if config_in == "folder" else dict(config_in)
        pipe.scheduler = make_scheduler(cls_name, config_in)
    sched_name = type(pipe.scheduler).__name__
    is_dpm = sched_name == "CogVideoXDPMScheduler"
    assert is_dpm == (c["generator_seed"] is not None), c["name"]

    latents = np.random.default_rng(c["latents_seed"]).standard_normal(latent_shape(pipe, kw)).astype(np.float32)
    step_latents = []

    def on_step(p, i, t, cb_kwargs):
        step_latents.append(cb_kwargs["latents"].detach().cpu().numpy().copy())
        return {}

    _noise_draws.clear()
    gen = np.random.default_rng(c["generator_seed"]) if is_dpm else None
    with torch.no_grad():
        frames = pipe(
            **kw,
            latents=torch.from_numpy(latents.copy()),
            generator=gen,
            output_type="np",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        ).frames
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32, (type(frames), getattr(frames, "dtype", 0))
    b = latents.shape[0]
    assert frames.shape == (b, kw["num_frames"], kw["height"], kw["width"], 3), frames.shape
    assert np.isfinite(frames).all(), c["name"]
    if not is_dpm:
        assert not _noise_draws
    n = c["name"]
    arrays[f"{n}__latents"] = latents
    arrays[f"{n}__frames"] = frames
    arrays[f"{n}__step_latents"] = np.stack(step_latents).astype(np.float32)
    entry = dict(
        name=n,
        pipeline_dir=c["pipeline"],
        scheduler=sched_name,
        scheduler_source="folder" if c["scheduler"] == "folder" else "from_config",
        scheduler_config=plain(config_in),  # what the test passes to from_config ("folder": the folder's config)
        timesteps=[int(t) for t in pipe.scheduler.timesteps],
        call_kwargs=kw,
        latents_key=f"{n}__latents",
        frames_key=f"{n}__frames",
        step_latents_key=f"{n}__step_latents",
        frames_shape=list(frames.shape),
        npz=f"{c['pipeline']}.npz",
    )
    if is_dpm:
        arrays[f"{n}__noise"] = np.stack(_noise_draws)
        entry["generator"] = dict(
            kind="numpy.random.default_rng",
            seed=c["generator_seed"],
            draw="generator.standard_normal(latents.shape, dtype=np.float32), once per step plus a second draw on "
            "steps with an old x0 prediction and prev_timestep >= 0 (the first draw is then discarded)",
            num_draws=len(_noise_draws),
        )
        entry["noise_key"] = f"{n}__noise"
    sat = float(np.mean((frames <= 0.0) | (frames >= 1.0)))
    entry["stats"] = dict(
        mean=float(frames.mean()), std=float(frames.std()), saturated_fraction=sat,
        latents_out_std=float(step_latents[-1].std()),
    )  # fmt: skip
    print(
        f"  {n:28s} {sched_name:22s} frames {tuple(frames.shape)} mean {frames.mean():.4f} std {frames.std():.4f} "
        f"saturated {sat:.3f} steps {entry['timesteps']}" + (f" draws {len(_noise_draws)}" if is_dpm else "")
    )
    return entry


def run_embeds(pipe: CogVideoXPipeline, e: dict, arrays: dict) -> dict:
    with torch.no_grad():
        pe, ne = pipe.encode_prompt(
            e["prompt"], e["negative_prompt"], do_classifier_free_guidance=True,
            max_sequence_length=e["max_sequence_length"], device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
    n = e["name"]
    arrays[f"{n}__prompt_embeds"] = pe.numpy().astype(np.float32)
    arrays[f"{n}__negative_prompt_embeds"] = ne.numpy().astype(np.float32)
    print(f"  {n:28s} prompt_embeds {tuple(pe.shape)} max|x| {pe.abs().max():.3f}")
    return dict(
        e,
        pipeline_dir=e["pipeline"],
        do_classifier_free_guidance=True,
        prompt_embeds_key=f"{n}__prompt_embeds",
        negative_prompt_embeds_key=f"{n}__negative_prompt_embeds",
        npz=f"{e['pipeline']}.npz",
    )


def round_parameters(pipe: CogVideoXPipeline, dtype) -> None:
    """Every parameter of the three models rounded to `dtype`, kept in float32 (buffers are computed tables)."""
    with torch.no_grad():
        for comp in (pipe.text_encoder, pipe.transformer, pipe.vae):
            for p in comp.parameters():
                p.copy_(p.to(dtype).to(torch.float32))


def run_dtype_cases(name: str, d: Path, folder_scheduler, f32_arrays: dict, arrays: dict) -> list[dict]:
    """The RUN_DTYPE_CASES of one pipeline folder (see RUN_DTYPE_CASES for the two goldens); f32_arrays holds the
    float32 cases' outputs, `arrays` receives the new ones."""
    entries = []
    for dtype, tdt in RUN_DTYPES.items():
        rounded = CogVideoXPipeline.from_pretrained(str(d), torch_dtype=torch.float32)
        round_parameters(rounded, tdt)
        loaded = CogVideoXPipeline.from_pretrained(str(d), torch_dtype=tdt)
        wo = {p.dtype for n, p in loaded.text_encoder.named_parameters() if ".wo." in n}
        assert wo == {torch.float32 if dtype == "float16" else tdt}, (name, dtype, wo)
        loaded.to(torch.float32)
        for p in (rounded, loaded):
            p.set_progress_bar_config(disable=True)
        for c in CASES:
            if c["pipeline"] != name or c["name"] not in RUN_DTYPE_CASES:
                continue
            entry = run_case(rounded, folder_scheduler, dict(c, name=f"{c['name']}__{dtype}"), arrays)
            load_entry = run_case(loaded, folder_scheduler, dict(c, name=f"{c['name']}__{dtype}__load"), arrays)
            frames, load_frames = arrays[entry["frames_key"]], arrays.pop(load_entry["frames_key"])
            for k in ("latents_key", "step_latents_key"):
                del arrays[load_entry[k]]  # same latents; the step latents are the rounded run's diagnostics
            if dtype == "float16":
                entry["diffusers_load_frames_key"] = f"{entry['name']}__diffusers_load_frames"
                arrays[entry["diffusers_load_frames_key"]] = load_frames
            else:
                assert np.array_equal(frames, load_frames), (name, dtype, c["name"])
                entry["diffusers_load_frames_key"] = entry["frames_key"]
            entry.update(
                torch_dtype=dtype,
                npz=RUN_DTYPE_NPZ,
                run_dtype_of=c["name"],
                max_abs_diff_vs_float32=float(np.abs(frames - f32_arrays[f"{c['name']}__frames"]).max()),
                max_abs_diff_vs_diffusers_load=float(np.abs(frames - load_frames).max()),
            )
            print(
                f"    vs float32 {entry['max_abs_diff_vs_float32']:.3e}, rounded vs diffusers' torch_dtype load "
                f"{entry['max_abs_diff_vs_diffusers_load']:.3e}"
            )
            entries.append(entry)
        del rounded, loaded
    return entries


def main() -> int:
    if not (TOK_SRC / "spiece.model").is_file():
        print(f"missing {TOK_SRC}/spiece.model: run tests/reference/make_tokenizer_fixtures.py first", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    recreate_dir(OUT)
    tokenizer = T5Tokenizer.from_pretrained(str(TOK_SRC))

    manifest = dict(
        versions=versions(diffusers, transformers, torch, np, tokenizers, safetensors),
        tolerance=dict(frames_max_abs=1e-3, prompt_embeds_rel=1e-4),
        notes=[
            "Golden frames: diffusers CogVideoXPipeline, float32, CPU, loaded from the saved folder with "
            "CogVideoXPipeline.from_pretrained(dir, torch_dtype=torch.float32).",
            "latents are passed as `latents=` (float32 [B, F_lat, C, h, w], BFCHW); frames are output_type='np': "
            "float32 [B, F, H, W, 3] in [0, 1].",
            "scheduler_source 'folder': the pipeline folder's own scheduler; 'from_config': "
            "pipe.scheduler = <scheduler>.from_config(scheduler_config).",
            "DPM cases: pass generator=np.random.default_rng(generator.seed); diffusers' randn_tensor was replaced "
            "by generator.standard_normal(shape, dtype=np.float32) for these goldens (noise_key holds the draws).",
            "step_latents: latents after each scheduler step (callback_on_step_end), diagnostics only.",
        ],
        pipelines={},
        cases=[],
        prompt_embeds_cases=[],
    )
    arrays: dict[str, dict[str, np.ndarray]] = {name: {} for name in PIPELINES}
    run_arrays: dict[str, np.ndarray] = {}
    run_manifest = dict(
        versions=manifest["versions"],
        tolerance=manifest["tolerance"],
        notes=[
            "Run-dtype cases: the float32 folder loaded with torch_dtype float16 / bfloat16, called with the float32 "
            "case's latents and arguments (run_dtype_of). frames_key: diffusers in float32 with every parameter "
            "rounded to the dtype (the weights cogvideo_c keeps); diffusers_load_frames_key: "
            "CogVideoXPipeline.from_pretrained(dir, torch_dtype=<dtype>).to(torch.float32), which for float16 keeps "
            "the T5 `wo` weights unrounded (transformers' _keep_in_fp32_modules); identical for bfloat16.",
        ],
        cases=[],
    )

    for name, spec in PIPELINES.items():
        print(f"building {name}")
        original = build_pipeline(name, tokenizer)
        d = save_pipeline(name, original)
        pipe = CogVideoXPipeline.from_pretrained(str(d), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        check_reload(name, original, pipe, tokenizer)
        folder_scheduler = pipe.scheduler
        manifest["pipelines"][name] = dict(
            dir=name,
            model_index=json.loads((d / "model_index.json").read_text()),
            scheduler_config=json.loads((d / "scheduler" / "scheduler_config.json").read_text()),
            transformer_config=plain(dict(pipe.transformer.config)),
            vae_scaling_factor=float(pipe.vae.config.scaling_factor),
            t5=dict(
                vocab_size=pipe.text_encoder.config.vocab_size,
                feed_forward_proj=spec["t5"]["feed_forward_proj"],
                d_model=pipe.text_encoder.config.d_model,
            ),  # fmt: skip
            tokenizer_layout=spec["tokenizer_layout"],
            tokenizer_files=sorted(p.name for p in (d / "tokenizer").iterdir()),
            vae_scale_factor_spatial=pipe.vae_scale_factor_spatial,
            vae_scale_factor_temporal=pipe.vae_scale_factor_temporal,
            files=tree_files(d),
        )
        for e in EMBED_CASES:
            if e["pipeline"] == name:
                manifest["prompt_embeds_cases"].append(run_embeds(pipe, e, arrays[name]))
        for c in CASES:
            if c["pipeline"] == name:
                manifest["cases"].append(run_case(pipe, folder_scheduler, c, arrays[name]))
        run_manifest["cases"] += run_dtype_cases(name, d, folder_scheduler, arrays[name], run_arrays)
        del original, pipe

    for name in PIPELINES:
        save_npz(OUT / f"{name}.npz", arrays[name])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    save_npz(OUT / RUN_DTYPE_NPZ, run_arrays)
    (OUT / "run_dtype.json").write_text(json.dumps(run_manifest, indent=1) + "\n")

    return check_total_size(OUT, SIZE_LIMIT)


if __name__ == "__main__":
    sys.exit(main())
