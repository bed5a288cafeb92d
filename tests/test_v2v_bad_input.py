"""Bad input to CogVideoXVideoToVideoPipeline and CogVideoXFunControlPipeline: each a specific exception and
message, raised before the prompt is encoded or the VAE encodes anything (both are spied on), and nothing of the
memory manager's left allocated."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_v2v_parity import FIXTURES, V2V

import cogvideo_c
from fixture_cases import short_fuzz_run


class HeavyWork(AssertionError):
    pass


def _forbid_heavy_work(pipe):
    def boom(*args, **kwargs):
        raise HeavyWork("the call got past its checks into encode_prompt / the VAE encode")

    pipe.encode_prompt = boom
    pipe.vae.encode = boom
    return pipe


@pytest.fixture(scope="module")
def v2v():
    pipe = cogvideo_c.CogVideoXVideoToVideoPipeline.from_pretrained(str(FIXTURES / "pipeline" / "tiny_2b"))
    pipe.set_progress_bar_config(disable=True)
    return _forbid_heavy_work(pipe)


@pytest.fixture(scope="module")
def fun():
    base = cogvideo_c.CogVideoXPipeline.from_pretrained(str(FIXTURES / "pipeline" / "tiny_2b"))
    pipe = cogvideo_c.CogVideoXFunControlPipeline.from_pretrained(
        str(V2V / "tiny_fun"), tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae
    )
    pipe.set_progress_bar_config(disable=True)
    return _forbid_heavy_work(pipe)


def frames(n=9, h=16, w=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, h, w, 3)).astype(np.float32)


def pil_frames(n=9, h=16, w=16, mode="RGB"):
    from PIL import Image

    return [Image.fromarray((f * 255).astype(np.uint8)).convert(mode) for f in frames(n, h, w)]


V2V_CASES = [
    (dict(strength=0.0), ValueError, r"strength should in \(0.0, 1.0\] but is 0.0"),
    (dict(strength=1.01), ValueError, r"strength should in \(0.0, 1.0\] but is 1.01"),
    (dict(strength=-0.5), ValueError, r"strength should in \(0.0, 1.0\]"),
    (dict(strength=float("nan")), ValueError, r"`strength` must be a number in \(0, 1\], got nan"),
    (dict(strength=True), ValueError, r"`strength` must be a number in \(0, 1\], got True"),
    (dict(strength="0.8"), ValueError, r"`strength` must be a number"),
    (dict(strength=0.1, num_inference_steps=5), ValueError, r"runs no denoising step \(int\(5 \* 0.1\) = 0\)"),
    (dict(video=[]), ValueError, r"`video` is an empty list: a video needs at least one frame"),
    (dict(video=np.zeros((0, 16, 16, 3), np.float32)), ValueError, r"`video` has no frames"),
    (dict(video=[frames(9), frames(5)], prompt=["a", "b"]), ValueError, r"videos of different lengths or sizes"),
    (dict(video=[frames(9), frames(9)]), ValueError, r"2 videos for 1 prompts"),
    (dict(video=123), ValueError, r"`video` must be a list of PIL images, an array .* got int"),
    (dict(video=(frames() * 255).astype(np.uint8)), ValueError, r"dtype uint8: pass float values in \[0, 1\]"),
    (dict(video=pil_frames(mode="RGBA")), ValueError, r"is a RGBA image; the VAE encodes RGB"),
    (dict(video=frames()[..., :1]), ValueError, r"has 1 channels"),
    (dict(latents=np.zeros((1, 3, 4, 2, 2), np.float32)), ValueError, r"Only one of `video` or `latents`"),
    (dict(video=None), ValueError, r"Provide either `video` or `latents`"),
    (dict(timesteps=[999, 500]), ValueError, r"custom `timesteps` are not supported"),
    (dict(height=20), ValueError, r"`height` 20 must be a multiple of 16"),
]


@pytest.mark.parametrize("kwargs, error, message", V2V_CASES, ids=[f"v2v{i}" for i in range(len(V2V_CASES))])
def test_video_to_video_refuses_before_any_work(v2v, cpu_memory_checked, kwargs, error, message):
    call = dict(video=frames(), prompt="a panda", num_inference_steps=4, max_sequence_length=16)
    call.update(kwargs)
    with pytest.raises(error, match=message):
        v2v(**call)


def test_video_file_that_is_missing_or_not_a_video(v2v, cpu_memory_checked, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video '.*missing.mp4' does not exist"):
        v2v(video=str(tmp_path / "missing.mp4"), prompt="a panda", max_sequence_length=16)
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("these are not frames")
    with pytest.raises(OSError, match=r"cannot read video '.*not_a_video.mp4'"):
        v2v(video=str(bad), prompt="a panda", max_sequence_length=16)


def _gif(frames_=2, size=8, screen=None):
    """A small animated GIF (bytes); `screen` (w, h) replaces its logical screen size."""
    import io
    import struct

    buf = io.BytesIO()
    first, *rest = pil_frames(frames_, size, size)
    first.save(buf, format="GIF", save_all=True, append_images=rest, duration=40, loop=0)
    blob = buf.getvalue()
    return blob if screen is None else blob[:6] + struct.pack("<HH", *screen) + blob[10:]


def test_every_truncation_of_a_gif_is_an_os_error_or_its_frames(tmp_path):
    """Found by tests/fuzz/fuzz_media.py: Pillow's IndexError / struct.error on a cut GIF escaped load_video; each
    prefix of a real GIF either decodes or is an OSError naming the file."""
    blob, path = _gif(), tmp_path / "cut.gif"
    for cut in range(len(blob)):
        path.write_bytes(blob[:cut])
        try:
            cogvideo_c.load_video(str(path))
        except OSError as err:
            assert "cut.gif" in str(err)


def test_a_gif_past_the_decompression_bomb_limit_is_an_os_error(v2v, cpu_memory_checked, tmp_path):
    """Found by tests/fuzz/fuzz_media.py: Pillow's DecompressionBombError (not an OSError) escaped load_video."""
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(_gif(screen=(65535, 65535)))
    with pytest.raises(OSError, match=r"bomb.gif' is too large to decode: Image size \(4294836225 pixels\)"):
        v2v(video=str(bomb), prompt="a panda", max_sequence_length=16)


def test_a_huge_broadcast_video_is_refused_before_it_is_copied(v2v, fun, cpu_memory_checked):
    """Found by tests/fuzz/fuzz_media.py: a broadcast view of huge dimensions was copied by the preprocessing (a
    MemoryError)."""
    video = np.broadcast_to(np.float32(0.5), (9, 16, 2**40, 3))
    with pytest.raises(
        cogvideo_c.OutOfMemoryError, match=r"`video` holds 474989023199232 values .*preprocessing them needs"
    ):
        v2v(video=video, prompt="a panda", max_sequence_length=16)
    with pytest.raises(cogvideo_c.OutOfMemoryError, match=r"`control_video` holds \d+ values"):
        fun(control_video=video, prompt="a panda", max_sequence_length=16)


@pytest.mark.parametrize("video", [np.broadcast_to(np.float32(0.5), (2**31, 1, 16, 16, 3)),
                                   [np.broadcast_to(np.float32(0.5), (2**30, 1, 16, 16, 3))] * 2])  # fmt: skip
def test_a_huge_batch_of_videos_is_refused_before_it_is_split(v2v, cpu_memory_checked, video):
    """Found by tests/fuzz/fuzz_media.py: a 5-D broadcast view of 2**31 videos was split into as many views (a
    MemoryError) before any size was checked."""
    with pytest.raises(cogvideo_c.OutOfMemoryError, match=r"`video` holds 1649267441664 values .*preprocessing"):
        v2v(video=video, prompt="a panda", max_sequence_length=16)


_DECODE_UNDER_LIMIT = r"""
import resource, sys, cogvideo_c
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
try:
    frames = cogvideo_c.load_video(sys.argv[1])
    print("decoded", len(frames))
except cogvideo_c.OutOfMemoryError as err:
    print("refused:", err)
"""


def test_a_gif_whose_frames_cannot_fit_is_refused_before_they_are_decoded(tmp_path):
    """Found by tests/fuzz/fuzz_media.py: a 9 KB GIF with a 12000x12000 screen decodes to 432 MB a frame; its 16
    frames were decoded whatever the memory (a MemoryError under the worker's address-space limit, the OOM killer
    without one). Under a 3 GiB limit the frame that would not fit is refused first."""
    import subprocess
    import sys

    path = tmp_path / "screen.gif"
    path.write_bytes(_gif(frames_=16, screen=(12000, 12000)))
    proc = subprocess.run([sys.executable, "-c", _DECODE_UNDER_LIMIT, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: video" in proc.stdout and "decoding frame" in proc.stdout, proc.stdout
    assert re.search(
        r"decoding frame \d+ needs \d+ bytes \(the frames, 432000000 bytes each, and the decoder's "
        r"working memory\), more than the \d+ bytes of memory available",
        proc.stdout,
    ), proc.stdout


def test_a_short_image_and_video_fuzz_run_finds_nothing():
    """tests/fuzz/fuzz_media.py (odd arrays, PIL images and mutated image / video files through the i2v, v2v and
    Fun-Control pipelines), briefly."""
    short_fuzz_run("fuzz_media", 40)


def test_tiles_that_change_the_latent_size_are_refused(v2v, cpu_memory_checked):
    """16-pixel tiles with diffusers' default overlaps (1/6, 1/5) step by 13 x 12 pixels: the tiled encode of a
    32 x 32 video has more latent rows than 32 / 8, which diffusers would only find in add_noise."""
    v2v.vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16)
    try:
        with pytest.raises(ValueError, match=r"with the VAE's tiling settings to latents of \(frames, height, width\)"):
            v2v(video=frames(9, 32, 32), prompt="a panda", height=32, width=32, max_sequence_length=16)
    finally:
        v2v.vae.disable_tiling()


def test_video_to_video_needs_a_text_to_video_transformer(fun, cpu_memory_checked):
    pipe = cogvideo_c.CogVideoXVideoToVideoPipeline(**fun.components)
    with pytest.raises(ValueError, match=r"takes 8 input channels but the VAE's latents have 4"):
        pipe(video=frames(), prompt="a panda", max_sequence_length=16)


def test_too_few_latent_frames_for_temporal_patches(tmp_path, cpu_memory_checked):
    """CogVideoX 1.5 (patch_size_t 2): a 9-frame video has 3 latent frames, not whole temporal patches (diffusers
    raises the same; only text-to-video pads)."""
    from cogvideo_c.tiny import make_tiny_pipeline

    config = {"patch_size_t": 2, "use_rotary_positional_embeddings": True}
    folder = make_tiny_pipeline(str(tmp_path), transformer=config)
    pipe = _forbid_heavy_work(cogvideo_c.CogVideoXVideoToVideoPipeline.from_pretrained(folder))
    with pytest.raises(ValueError, match=r"divisible by `patch_size_t=2` but the given video contains latent_frames=3"):
        pipe(video=frames(9, 64, 64), prompt="a panda")


FUN_CASES = [
    (dict(control_video_latents=np.zeros((1, 4, 3, 2, 2), np.float32)), ValueError,
     r"Cannot pass both `control_video` and `control_video_latents`"),
    (dict(control_video=None), ValueError, r"Provide either `control_video` or `control_video_latents`"),
    (dict(control_video=None, control_video_latents=np.zeros((1, 4, 3, 4, 4), np.float32)), ValueError,
     r"control_video_latents must be \[videos, 4, latent frames, 2, 2\] .* got shape \(1, 4, 3, 4, 4\)"),
    (dict(control_video=None, control_video_latents=np.full((1, 4, 3, 2, 2), np.nan, np.float32)), ValueError,
     r"`control_video_latents` holds 48 NaN or infinite value"),
    (dict(latents=np.zeros((1, 2, 4, 2, 2), np.float32)), ValueError, r"latents must have shape \(1, 3, 4, 2, 2\)"),
    (dict(control_video=[frames(), frames()]), ValueError, r"2 control videos for 1 prompts"),
    (dict(control_video=[]), ValueError, r"`control_video` is an empty list"),
    (dict(control_video=[frames(9), frames(9, 32, 32)], prompt=["a", "b"]), None, None),  # resized: same size
    (dict(control_video=[frames(9), frames(5)], prompt=["a", "b"]), ValueError, r"different lengths or sizes"),
    (dict(timesteps=[999]), ValueError, r"custom `timesteps` are not supported"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, error, message", FUN_CASES, ids=[f"fun{i}" for i in range(len(FUN_CASES))])
def test_fun_control_refuses_before_any_work(fun, cpu_memory_checked, kwargs, error, message):
    call = dict(control_video=frames(), prompt="a panda", num_inference_steps=2, max_sequence_length=16)
    call.update(kwargs)
    if error is None:  # differently sized control videos are resized to one size, as diffusers: the checks pass
        with pytest.raises(HeavyWork):
            fun(**call)
        return
    with pytest.raises(error, match=message):
        fun(**call)


def test_fun_control_refuses_the_dpm_scheduler(fun, cpu_memory_checked):
    saved = fun.scheduler
    fun.scheduler = cogvideo_c.CogVideoXDPMScheduler.from_config(saved.config)
    try:
        with pytest.raises(ValueError, match=r"steps its scheduler as DDIM .* use DDIMScheduler"):
            fun(control_video=frames(), prompt="a panda", max_sequence_length=16)
    finally:
        fun.scheduler = saved


def test_fun_control_needs_a_fun_transformer(v2v, cpu_memory_checked):
    pipe = cogvideo_c.CogVideoXFunControlPipeline(**v2v.components)
    with pytest.raises(ValueError, match=r"takes 4 input channels; a Fun-Control transformer takes twice .* 8"):
        pipe(control_video=frames(), prompt="a panda", max_sequence_length=16)
