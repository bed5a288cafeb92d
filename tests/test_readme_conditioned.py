"""The README's image-to-video / video-to-video / LoRA block runs as written with torch_dtype "float16" and "bfloat16"
(the lesson of issue 7: an example only tested in float32 can decode to NaN), on the embedded tiny pipelines.

Only the checkpoint paths are replaced; the image and video files the block reads are written where it runs, and the
LoRA folder holds a random adapter in diffusers' file layout for the tiny transformer's attention. Every video written
is read back by ffmpeg."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_readme_examples import DTYPES, TINY_SIZE, _block, _check_video_file, _dtype_text, _substitute

import cogvideo_c
from cogvideo_c.safetensors_io import save_file
from cogvideo_c.tiny import make_tiny_pipeline

RANK = 4


def _write_attention_lora(transformer_dir, folder, seed=0):
    """A rank-4 adapter on every block's to_q/to_k/to_v/to_out.0, named and shaped as diffusers saves one."""
    config = json.loads((transformer_dir / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    rng = np.random.default_rng(seed)
    tensors = {}
    for block in range(config["num_layers"]):
        for module in ("to_q", "to_k", "to_v", "to_out.0"):
            key = f"transformer.transformer_blocks.{block}.attn1.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((RANK, inner), dtype=np.float32) * 0.2
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((inner, RANK), dtype=np.float32) * 0.2
    folder.mkdir()
    save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditioned")
    i2v = make_tiny_pipeline(str(root / "CogVideoX-tiny-I2V"), image_to_video=True)
    t2v = make_tiny_pipeline(str(root / "CogVideoX-tiny"))
    lora = _write_attention_lora(root / "CogVideoX-tiny-I2V" / "transformer", root / "lora")
    return i2v, t2v, lora


@pytest.mark.filterwarnings("ignore:no accelerator")
@pytest.mark.parametrize("lora_call", ["set_adapters", "fuse_lora"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_readme_image_and_video_to_video_example(dtype, lora_call, tiny_dirs, tmp_path, monkeypatch):
    """The block as written (LoRA at weight 0.8 under sequential offload, tiling, 49 frames, 50 steps; then
    video-to-video at strength 0.8), and with its commented alternative `pipe.fuse_lora(lora_scale=0.8)` instead of
    set_adapters: both videos are finite, not flat, and the adapter changes the image-to-video frames (the same call
    without it differs)."""
    i2v_dir, t2v_dir, lora_dir = tiny_dirs
    replacements = {
        '"path/to/CogVideoX-5b-I2V"': repr(str(i2v_dir)),
        '"path/to/lora-folder"': repr(str(lora_dir)),
        '"path/to/CogVideoX-5b"': repr(str(t2v_dir)),
    }
    if lora_call == "fuse_lora":
        replacements['pipe.set_adapters(["style"], [0.8])'] = "pipe.fuse_lora(lora_scale=0.8)"
    code = _substitute(_dtype_text(_block("CogVideoXImageToVideoPipeline.from_pretrained"), dtype), replacements)
    monkeypatch.chdir(tmp_path)
    y, x = np.mgrid[0:TINY_SIZE, 0:TINY_SIZE] / (TINY_SIZE - 1)
    frames = [np.stack([x, y, np.full_like(x, k / 8)], axis=-1) for k in range(9)]
    Image.fromarray(np.round(frames[0] * 255).astype(np.uint8)).save(tmp_path / "first_frame.png")
    cogvideo_c.export_to_video(frames, str(tmp_path / "input.mp4"), fps=8)

    pipes = []
    for cls in (cogvideo_c.CogVideoXImageToVideoPipeline, cogvideo_c.CogVideoXVideoToVideoPipeline):
        loader = cls.from_pretrained

        def loading(*args, _loader=loader, **kwargs):
            pipe = _loader(*args, **kwargs)
            pipe.set_progress_bar_config(disable=True)
            pipes.append(pipe)
            return pipe

        monkeypatch.setattr(cls, "from_pretrained", loading)
    scope: dict = {}
    exec(compile(code, "README.md (image/video-to-video example)", "exec"), scope)

    i2v_pipe = pipes[0]
    assert i2v_pipe.transformer.dtype == dtype and i2v_pipe.get_active_adapters() == ["style"]
    if lora_call == "fuse_lora":  # the merged copies of the adapted weights exist
        assert i2v_pipe.transformer._core.lora_bytes()[1] > 0
    _check_video_file(tmp_path / "panda_i2v.mp4", 49, TINY_SIZE)
    video = scope["video"]  # the video-to-video result: as many frames as the input video
    assert len(video) == 9 and all(np.isfinite(np.asarray(f, dtype=np.float32)).all() for f in video)
    assert float(np.std(np.stack([np.asarray(f) for f in video]))) > 2.0

    # the adapter acts: without it the same image-to-video call (2 steps here) gives other frames
    image = cogvideo_c.load_image("first_frame.png")
    kwargs = dict(image=image, prompt="A panda playing a guitar", num_frames=49, num_inference_steps=2,
                  generator=42, output_type="np")  # fmt: skip
    with_lora = i2v_pipe(**kwargs).frames
    i2v_pipe.disable_lora()
    without = i2v_pipe(**kwargs).frames
    assert np.isfinite(with_lora).all() and float(np.abs(with_lora - without).max()) > 1e-3
    i2v_pipe.maybe_free_model_hooks()
