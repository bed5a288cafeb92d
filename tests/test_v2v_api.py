"""The video-to-video and Fun-Control pipelines' API beyond the parity cases: diffusers' call signatures, loading
by model_index.json, the other video forms diffusers' VideoProcessor takes (a [B, F, H, W, 3] array, an array
already in [-1, 1], a video file), seeds, and the arguments diffusers ignores. The outside truth is diffusers'
signatures and golden frames (tests/fixtures/v2v, see test_v2v_parity.py)."""

from __future__ import annotations

import inspect
import json
import warnings

import numpy as np
import pytest
from test_v2v_parity import _BY_NAME, FIXTURES, MANIFEST, V2V, _arrays, call, check_frames, input_video, load_pipeline

import cogvideo_c


@pytest.mark.parametrize("cls", [cogvideo_c.CogVideoXVideoToVideoPipeline, cogvideo_c.CogVideoXFunControlPipeline])
def test_call_signature_is_diffusers(cls):
    want = json.loads(MANIFEST.read_text())["call_signatures"][cls.__name__]
    assert list(inspect.signature(cls.__call__).parameters)[1:] == want


def test_diffusion_pipeline_loads_the_fun_control_folder_by_its_model_index():
    base = cogvideo_c.CogVideoXPipeline.from_pretrained(str(FIXTURES / "pipeline" / "tiny_2b"))
    pipe = cogvideo_c.DiffusionPipeline.from_pretrained(
        str(V2V / "tiny_fun"), tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae
    )
    assert type(pipe) is cogvideo_c.CogVideoXFunControlPipeline
    assert pipe.config["_class_name"] == "CogVideoXFunControlPipeline"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # as the folder's model_index.json names it
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels


def test_a_batch_array_and_an_array_in_minus_one_to_one_give_the_golden_frames():
    """diffusers' preprocess_video: a [B, F, H, W, 3] array is B videos; an array whose minimum is below 0 is taken
    as already in [-1, 1] (not normalised again), with diffusers' FutureWarning."""
    case = _BY_NAME["v2v_2b_ddim_s08_cfg_np_tiled"]
    pipe = load_pipeline(case)
    video = input_video(case)
    check_frames(case, call(pipe, case, video=video[None]), " (a [1, F, H, W, 3] array)")
    with pytest.warns(FutureWarning, match=r"value range in \[-1,1\] is deprecated"):
        frames = call(pipe, case, video=np.float32(2) * video - np.float32(1))
    check_frames(case, frames, " (an array in [-1, 1])")


def test_a_video_file_is_read_with_load_video(tmp_path):
    """video=path gives the frames of video=load_video(path) bit for bit (a GIF: Pillow reads it back exactly)."""
    case = _BY_NAME["v2v_2b_cogddim_s05_cfg"]
    pipe = load_pipeline(case)
    path = cogvideo_c.export_to_gif(list(_arrays()[case["video_key"]][0]), str(tmp_path / "input.gif"))
    from_path = call(pipe, case, video=path)
    from_frames = call(pipe, case, video=cogvideo_c.load_video(path))
    assert np.array_equal(from_path, from_frames)
    assert from_path.shape == tuple(case["frames_shape"])


def test_an_int_seed_is_one_numpy_generator_for_every_draw():
    """generator=7 draws the posterior sample, the added noise and the DPM noise from np.random.default_rng(7) in
    turn (not three restarts of the same stream)."""
    case = _BY_NAME["v2v_5b_dpm_s05_nocfg_tiled"]
    pipe = load_pipeline(case)
    by_seed = call(pipe, case, generator=7)
    by_generator = call(pipe, case, generator=np.random.default_rng(7))
    assert np.array_equal(by_seed, by_generator)
    assert not np.array_equal(by_seed, call(pipe, case, generator=8))


def test_num_videos_per_prompt_is_ignored_as_in_diffusers():
    case = _BY_NAME["fun_ddim_dyncfg_resize"]
    pipe = load_pipeline(case)
    with pytest.warns(UserWarning, match="num_videos_per_prompt=2 is ignored"):
        frames = call(pipe, case, num_videos_per_prompt=2)
    check_frames(case, frames, " (num_videos_per_prompt=2)")


def test_video_to_video_from_a_text_to_video_pipelines_components():
    case = _BY_NAME["v2v_2b_cogddim_s08_nocfg_resize"]
    t2v = cogvideo_c.CogVideoXPipeline.from_pretrained(str(FIXTURES / "pipeline" / case["pipeline_dir"]))
    pipe = cogvideo_c.CogVideoXVideoToVideoPipeline(**t2v.components)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer is t2v.transformer and pipe.vae is t2v.vae  # the weights are shared
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_frames(case, call(pipe, case), " (from CogVideoXPipeline's components)")


def test_latents_instead_of_a_video_start_from_them():
    """latents= (diffusers: used instead of encoding `video`, times init_noise_sigma, no noise added): diffusers'
    own noised video latents of a DDIM case give that case's golden frames, with no video and no generator."""
    case = _BY_NAME["v2v_2b_cogddim_s05_cfg"]
    pipe = load_pipeline(case)
    assert pipe.scheduler.init_noise_sigma == 1.0
    latents = _arrays()[case["initial_latents_key"]].copy()
    kwargs = dict(case["call_kwargs"], latents=latents, output_type="np")
    check_frames(case, pipe(**kwargs).frames, " (latents=, no video)")
