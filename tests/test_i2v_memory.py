"""Memory of image-to-video's second VAE pass, the image encode: with tiling its working memory depends on the tile,
not the frame (the decode's promise, tests/test_vae_memory.py, now for encode), and the auto planner sizes the
encode's arena before any work, so a budget holds through the encode_image stage too.

Working memory = peak allocated during the call, above what was allocated before it, less the returned output's
bytes (cogvideo_c.memory_stats); the planner's arenas come from the models' measuring passes."""

import gc
import os

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c.tiny import make_tiny_pipeline
from conftest import VAE_FIXTURES


@pytest.fixture(scope="module")
def vae():
    return cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(os.path.join(VAE_FIXTURES, "tiny"))


@pytest.fixture(scope="module")
def i2v_folder(tmp_path_factory):
    return make_tiny_pipeline(str(tmp_path_factory.mktemp("tiny_i2v")), image_to_video=True)


def encode_working_memory(vae, size, seed=0, frames=1):
    """Working memory of encoding one image (a one-frame video [1, 3, 1, size, size]), or a video of `frames`
    frames, beyond its input and output: the core takes its own copy of the input (which grows with the frame as
    the input itself does), so the input's bytes are left out with the output's."""
    image = np.random.default_rng(seed).uniform(-1, 1, (1, 3, frames, size, size)).astype(np.float32)
    gc.collect()
    before = cogvideo_c.memory_stats()["allocated_bytes.all.current"]
    cogvideo_c.reset_peak_memory_stats()
    out = vae.encode(image).latent_dist.parameters
    peak = cogvideo_c.memory_stats()["allocated_bytes.all.peak"]
    return peak - before - out.nbytes - image.nbytes


# 1 frame: image-to-video's image; 17 frames: a video as video-to-video and Fun-Control encode it (three of the
# encoder's frame batches, with the conv caches carried from batch to batch)
@pytest.mark.parametrize("frames", [1, 17])
def test_tiled_image_encode_working_memory_depends_on_the_tile_not_the_frame(vae, frames):
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor_height=1 / 4,
                      tile_overlap_factor_width=1 / 4)  # fmt: skip
    try:
        small, large = encode_working_memory(vae, 96, frames=frames), encode_working_memory(vae, 192, frames=frames)
    finally:
        vae.disable_tiling()
    plain_small = encode_working_memory(vae, 96, frames=frames)
    plain_large = encode_working_memory(vae, 192, frames=frames)
    ratio, plain_ratio = large / small, plain_large / plain_small
    print(f"tiled {frames}-frame encode working memory: {small} -> {large} bytes for 4x the area (x{ratio:.3f}); "
          f"untiled {plain_small} -> {plain_large} (x{plain_ratio:.3f})")  # fmt: skip
    assert ratio <= 1.3, f"quadrupling the area raised tiled encode working memory x{ratio:.3f} (> 1.3)"
    assert plain_ratio >= 1.8, f"untiled, 4x the area needs only x{plain_ratio:.2f}: the test measures nothing"


def test_tiled_encode_arena_the_planner_reads_depends_on_the_tile(vae):
    """vae.arena_bytes(..., decode=False), what enable_auto_offload plans the encode with, follows the same rule."""
    tiles = (32, 32, 0.25, 0.25)
    vae.enable_tiling(*tiles)
    try:
        small = vae.arena_bytes((1, 3, 1, 96, 96), decode=False)
        large = vae.arena_bytes((1, 3, 1, 192, 192), decode=False)
    finally:
        vae.disable_tiling()
    plain = vae.arena_bytes((1, 3, 1, 192, 192), decode=False)
    print(f"encode arena, tiled: {small} -> {large} bytes for 4x the area; untiled at 192x192: {plain}")
    assert large <= 1.3 * small and plain >= 1.8 * large


def _request(pipe, **overrides):
    kw = dict(prompt="a cat", negative_prompt=None, height=64, width=64, num_frames=9, num_inference_steps=2,
              guidance_scale=6.0, use_dynamic_cfg=False, num_videos_per_prompt=1, eta=0.0, generator=0, latents=None,
              prompt_embeds=None, negative_prompt_embeds=None, output_type="np", return_dict=True,
              attention_kwargs=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=["latents"],
              max_sequence_length=226)  # fmt: skip
    kw.update(overrides)
    return pipe._request(kw)


def test_the_planner_sizes_the_vae_by_its_larger_stage_encode_or_decode(i2v_folder):
    pipe = cogvideo_c.CogVideoXImageToVideoPipeline.from_pretrained(i2v_folder)
    vae = pipe.vae
    for output_type in ("np", "latent"):
        _, arenas = pipe._request_sizes(_request(pipe, output_type=output_type))
        for (slicing, tiling), got in arenas["vae"].items():
            encode = vae.arena_bytes((1, 3, 1, 64, 64), slicing, tiling, decode=False)
            decode = vae.arena_bytes((1, 4, 3, 8, 8), slicing, tiling) if output_type == "np" else 0
            assert got == max(encode, decode) > 0, (output_type, slicing, tiling, got, encode, decode)
    # text-to-video keeps its one VAE stage: nothing to plan for output_type="latent"
    t2v = cogvideo_c.CogVideoXPipeline(**pipe.components)
    assert t2v._request_sizes(_request(t2v, output_type="latent"))[1]["vae"] == {(False, False): 0}


@pytest.mark.parametrize("output_type", ["np", "latent"])
def test_auto_offload_holds_its_budget_through_the_image_encode(i2v_folder, capsys, output_type):
    """The smallest budget the planner accepts for the request, given as max_memory: every stage, the image encode
    included, peaks within it on the emulated device, and the output is the CPU's. With output_type="latent" the
    encode is the VAE's only stage (a planner that knew only the decode would give the VAE no arena at all)."""
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    kw = dict(image=image, prompt="a cat", height=64, width=64, num_frames=9, num_inference_steps=2, generator=0,
              output_type=output_type)  # fmt: skip
    cpu = cogvideo_c.CogVideoXImageToVideoPipeline.from_pretrained(i2v_folder)
    cpu.set_progress_bar_config(disable=True)
    want = cpu(**kw).frames
    gc.collect()  # device peaks are device-wide: start from what earlier tests' pipelines left on "emu"
    baseline = cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"]
    pipe = cogvideo_c.CogVideoXImageToVideoPipeline.from_pretrained(i2v_folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_auto_offload(max_memory=4096, device="emu")
    with pytest.raises(cogvideo_c.OutOfMemoryError, match="the smallest budget that fits is") as info:
        pipe(**kw)
    smallest = int(str(info.value).split("the smallest budget that fits is ")[1].split("(")[1].split(" ")[0])
    pipe.enable_auto_offload(max_memory=smallest, device="emu")
    frames = pipe(**kw).frames
    report = pipe.memory_report()
    peaks = {stage: rec["device_peak_bytes"] - baseline for stage, rec in report.items()}
    print(f"budget {smallest} bytes; device peaks {peaks} (above {baseline} held before); "
          f"{capsys.readouterr().err.strip()}")  # fmt: skip
    assert report["encode_image"]["device"] == "emu" and report["encode_image"]["device_peak_bytes"] > 0
    assert max(peaks.values()) <= smallest, f"a stage went past max_memory={smallest}: {peaks}"
    assert np.array_equal(frames, want)
