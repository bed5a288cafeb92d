"""Parity of cogvideo_c.CogVideoXVideoToVideoPipeline and CogVideoXFunControlPipeline with diffusers'.

Goldens are made by tests/reference/make_v2v_fixtures.py with diffusers in float32 and listed in
tests/fixtures/v2v/manifest.json: video-to-video on the text-to-video fixture folders (tests/fixtures/pipeline/
tiny_2b, tiny_5b) at strength 0.5 and 0.8 with DDIM and DPM, with and without CFG, PIL and array inputs (resized
as diffusers resizes them), two videos with a list of generators; Fun-Control on tests/fixtures/v2v/tiny_fun (a
transformer with 2 x 4 input channels; tokenizer, text encoder and VAE of tiny_2b passed as components) with a
control video. Cases with `vae_tiling` encode and decode in 16 x 16 tiles of 32 x 32 frames.

The goldens' random draws (the VAE posterior sample, the noise add_noise mixes in, the DPM scheduler's) came from
NumPy generators (see the fixture script); the tests pass `np.random.default_rng(seed)` the same way. Frames must be
within 1e-3 max abs of diffusers' (the issue's bound) on the CPU, on the emulated accelerator, under model and
sequential offload to it, and on CUDA (marked `cuda`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_offload import apply

import cogvideo_c
from fixture_cases import case_params, compare_abs, npz_arrays

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V2V = FIXTURES / "v2v"
MANIFEST = V2V / "manifest.json"
FRAMES_TOL = 1e-3  # max abs diff of the [0, 1] frames vs diffusers (issue requirement)

CASES = case_params(MANIFEST)
_BY_NAME = {c.values[0]["name"]: c.values[0] for c in CASES if c.values[0] is not None}


def _arrays():
    return npz_arrays(V2V / "v2v.npz")


def load_pipeline(case, **kwargs):
    """The case's pipeline from its folder, with the case's scheduler and VAE tiling (kwargs: from_pretrained's,
    for the Fun case's components too)."""
    if case["pipeline"] == "video2video":
        folder = FIXTURES / "pipeline" / case["pipeline_dir"]
        pipe = cogvideo_c.CogVideoXVideoToVideoPipeline.from_pretrained(str(folder), **kwargs)
    else:
        base = cogvideo_c.CogVideoXPipeline.from_pretrained(str(FIXTURES / "pipeline" / case["components_from"]),
                                                            **kwargs)  # fmt: skip
        pipe = cogvideo_c.CogVideoXFunControlPipeline.from_pretrained(
            str(V2V / case["pipeline_dir"]), tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
            **kwargs,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    if case["scheduler_source"] == "from_config":
        pipe.scheduler = getattr(cogvideo_c, case["scheduler"]).from_config(case["scheduler_config"])
    assert type(pipe.scheduler).__name__ == case["scheduler"]
    if case["vae_tiling"]:
        pipe.vae.enable_tiling(**case["vae_tiling"])
    return pipe


def input_video(case):
    """The case's `video` / `control_video` argument, as the fixture script passed it."""
    from PIL import Image

    frames = _arrays()[case["video_key"]]
    if case["video_kind"] == "np":
        return frames[0].astype(np.float32) / np.float32(255)
    videos = [[Image.fromarray(f) for f in v] for v in frames]
    return videos[0] if len(videos) == 1 else videos


def generator(case):
    seeds = case["generator_seeds"]
    if seeds is None:
        return None
    return [np.random.default_rng(s) for s in seeds] if isinstance(seeds, list) else np.random.default_rng(seeds)


def call(pipe, case, **extra):
    kwargs = dict(case["call_kwargs"], generator=generator(case), output_type="np")
    kwargs.update(extra)
    if case["latents_key"]:
        kwargs["latents"] = _arrays()[case["latents_key"]].copy()
    if not {"video", "control_video", "control_video_latents"} & set(extra):
        kwargs["video" if case["pipeline"] == "video2video" else "control_video"] = input_video(case)
    return pipe(**kwargs).frames


def check_frames(case, frames, label=""):
    want = _arrays()[case["frames_key"]]
    assert list(np.shape(frames)) == case["frames_shape"]
    compare_abs(f"{case['name']}{label} frames", frames, want, FRAMES_TOL, "diffusers")


@pytest.mark.parametrize("case", CASES)
def test_frames_match_diffusers(case):
    assert case is not None, f"no v2v fixtures: run tests/reference/make_v2v_fixtures.py ({MANIFEST})"
    pipe = load_pipeline(case)
    steps = []

    def on_step(p, i, t, kw):
        steps.append(int(t))
        return {}

    frames = call(pipe, case, callback_on_step_end=on_step)
    # strength keeps the last steps_run of the scheduler's timesteps (diffusers' get_timesteps)
    assert steps == case["timesteps"][len(case["timesteps"]) - case["steps_run"] :]
    assert pipe.num_timesteps == case["steps_run"]
    check_frames(case, frames)


@pytest.mark.parametrize("name", [n for n in _BY_NAME if _BY_NAME[n]["vae_tiling"]])
def test_tiled_cases_really_tile(name):
    """Tiles of 16 x 16 blend differently from whole frames: untiled, the tiled cases' frames are far from the
    golden (so the tiles did split the 32 x 32 frames)."""
    case = _BY_NAME[name]
    pipe = load_pipeline(case)
    pipe.vae.disable_tiling()
    diff = float(np.abs(call(pipe, case) - _arrays()[case["frames_key"]]).max())
    print(f"{name} untiled vs the tiled golden: {diff:.3e}")
    assert diff > 100 * FRAMES_TOL


def test_fun_control_video_latents_give_the_control_videos_frames():
    """control_video_latents, as diffusers' prepare_control_latents computes them (stored by the fixture script),
    in place of the control video: the same golden frames."""
    case = _BY_NAME["fun_ddim_cfg_gen"]
    control = _arrays()[case["control_latents_key"]]
    frames = call(load_pipeline(case), case, control_video_latents=control.copy())
    check_frames(case, frames, " (control_video_latents)")


def test_fun_prepare_control_latents_matches_diffusers():
    case = _BY_NAME["fun_cogddim_nocfg_latents_tiled"]
    pipe = load_pipeline(case)
    kw = case["call_kwargs"]
    video = pipe._video_processor().preprocess_video(input_video(case), kw["height"], kw["width"])
    _, got = pipe.prepare_control_latents(None, video)
    want = _arrays()[case["control_latents_key"]]
    compare_abs("prepare_control_latents (tiled)", got, want, 1e-4, "diffusers")


def test_v2v_initial_latents_match_diffusers():
    """The noised video latents (posterior draw x scaling_factor, add_noise at the first kept timestep) before the
    first step, against what diffusers' prepare_latents returned."""
    case = _BY_NAME["v2v_5b_dpm_s08_dyncfg"]
    pipe = load_pipeline(case)
    seen = {}
    original = pipe._prepare_call_latents

    def spy(scheduler, request, report):
        seen["latents"], conditioning = original(scheduler, request, report)
        return seen["latents"], conditioning

    pipe._prepare_call_latents = spy
    call(pipe, case, output_type="latent")
    compare_abs("initial latents", seen["latents"], _arrays()[case["initial_latents_key"]], 1e-4, "diffusers")


DEVICE_CASES = ("v2v_2b_cogddim_s05_cfg", "fun_ddim_cfg_gen")


@pytest.mark.parametrize("strategy", ["none", "model", "sequential", "auto"])
@pytest.mark.parametrize("name", DEVICE_CASES)
def test_on_the_emulated_accelerator(name, strategy):
    """pipe.to("emu"), enable_model_cpu_offload / enable_sequential_cpu_offload / enable_auto_offload(device="emu")
    (test_offload's `apply`)."""
    case = _BY_NAME[name]
    pipe = load_pipeline(case)
    apply(pipe, strategy, "emu")
    check_frames(case, call(pipe, case), f" on emu ({strategy})")
    # the encode ran as its own stage, on the device, with the whole VAE there (under every strategy the VAE
    # comes to the device whole: its blocks rerun for every frame batch)
    stage = pipe.memory_report()["encode_video"]
    assert (stage["component"], stage["device"]) == ("vae", "emu"), stage
    assert stage["device_peak_weights_bytes"] >= pipe.vae.weight_bytes, stage


CUDA_DEVICE = os.environ.get("CVX_TEST_CUDA_DEVICE", "cuda")  # "emu": a check of the test without a CUDA build


@pytest.mark.cuda
@pytest.mark.parametrize("name", DEVICE_CASES)
def test_on_cuda(name):
    if CUDA_DEVICE == "cuda" and not cogvideo_c.cuda_is_available():
        pytest.skip("no CUDA device (build_info()['cuda'] is False; CVX_CUDA_EMULATE=1 builds the emulated one)")
    case = _BY_NAME[name]
    pipe = load_pipeline(case)
    pipe.to(CUDA_DEVICE)
    check_frames(case, call(pipe, case), f" on {CUDA_DEVICE}")


def test_manifest_covers_the_required_cases():
    man = json.loads(MANIFEST.read_text())
    v2v = [c for c in man["cases"] if c["pipeline"] == "video2video"]
    fun = [c for c in man["cases"] if c["pipeline"] == "fun_control"]
    assert {0.5, 0.8} <= {c["call_kwargs"]["strength"] for c in v2v}
    assert {"CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "DDIMScheduler"} <= {c["scheduler"] for c in v2v}
    for group in (v2v, fun):
        assert any(c["call_kwargs"]["guidance_scale"] > 1 for c in group)
        assert any(c["call_kwargs"]["guidance_scale"] <= 1 for c in group)
        assert any(c["vae_tiling"] for c in group) and any(not c["vae_tiling"] for c in group)
        assert {"pil", "np"} <= {c["video_kind"] for c in group}
    assert any(isinstance(c["generator_seeds"], list) for c in v2v)
