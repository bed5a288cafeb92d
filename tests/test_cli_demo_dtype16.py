"""The image-to-video and video-to-video examples run as written in 16 bits (the tests/test_readme_examples.py checks,
for issue 10's pipelines): `python/cli_demo.py --generate_type i2v / v2v --dtype float16 / bfloat16` (the demo loads
with torch_dtype, switches to the DPM scheduler, calls enable_sequential_cpu_offload(), enable_slicing() and
enable_tiling(), and with --lora_path fuses the adapter at 1 / --lora_rank), the same recipe with the offload on the
emulated accelerator, and `cogvideo-c generate --image / --video` with --dtype, --lora, --tiling, --slicing and
--offload sequential on emu.

Every video written is read back by ffmpeg (imageio-ffmpeg): the right frame count and size, pixels that vary (a NaN
or constant video decodes to flat frames) and frames that are not all the same. The frames' values are the parity
tests' (tests/test_dtype16_pipelines.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_readme_examples import MIN_PIXEL_STD, _read_back

import cogvideo_c
from cogvideo_c import cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# the demo passes no max_sequence_length (226 tokens): models with RoPE and no learned table, which take any text
# length (tiny_5b_i2v's table holds 16 text tokens, so diffusers refuses the demo's call on it too)
I2V_DIR = FIXTURES / "i2v" / "tiny_15_i2v"  # 1.5-I2V style, 48 x 64 px, 9 frames by default
I2V_SIZE = (64, 48)  # (width, height)
V2V_DIR = FIXTURES / "pipeline" / "tiny_5b"  # 32 x 48 px by default
V2V_SIZE = (48, 32)
LORA_DIR = FIXTURES / "lora" / "attn"  # rank 4 on the attention projections of tiny_5b-shaped transformers
LORA_RANK = 4
DEMO = ROOT / "python" / "cli_demo.py"
MIN_FRAME_CHANGE = 0.5  # mean |frame - first frame| in uint8 levels: a video of one repeated frame is 0


def check_video(path, frames: int, width: int, height: int) -> np.ndarray:
    """ffmpeg reads `frames` frames of width x height, which vary in space and in time."""
    meta, got = _read_back(path)
    assert meta["size"] == (width, height), meta
    assert got.shape[0] == frames, f"{path}: ffmpeg reads {got.shape[0]} frames, expected {frames}"
    std = float(got.std())
    assert std > MIN_PIXEL_STD, f"{path}: frames are flat (pixel std {std:.2f}): a NaN or constant video"
    change = float(np.abs(got.astype(np.int16) - got[:1]).mean(axis=(1, 2, 3)).max())
    assert change > MIN_FRAME_CHANGE, f"{path}: every frame is the first one (max mean change {change:.2f} levels)"
    return got


def demo(tmp_path, *args) -> Path:
    out = tmp_path / "demo.mp4"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, str(DEMO), "--prompt", "A girl riding a bike.", "--num_inference_steps", "2",
         "--output_path", str(out), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("generate_type", ["i2v", "v2v"])
def test_cli_demo_conditioned_dtype(generate_type, dtype, tmp_path):
    """The demo on the embedded tiny pipelines (an image-to-video one for i2v) with its stand-in image / 9-frame
    video: 9 frames of 64 x 64."""
    check_video(demo(tmp_path, "--generate_type", generate_type, "--dtype", dtype), 9, 64, 64)


@pytest.mark.parametrize("generate_type, dtype", [("i2v", "float16"), ("i2v", "bfloat16"), ("v2v", "bfloat16"),
                                                  ("v2v", "float16")])  # fmt: skip
def test_cli_demo_lora_path_dtype(generate_type, dtype, tmp_path):
    """--lora_path with a fixture adapter folder (fused at 1 / --lora_rank by the demo) on a fixture model of the
    adapter's shape, in 16 bits: 9 frames at the model's size, and other frames than without the adapter."""
    model, size = (I2V_DIR, I2V_SIZE) if generate_type == "i2v" else (V2V_DIR, V2V_SIZE)
    args = ["--generate_type", generate_type, "--dtype", dtype, "--model_path", str(model)]
    with_lora = check_video(demo(tmp_path, *args, "--lora_path", str(LORA_DIR), "--lora_rank", str(LORA_RANK)),
                            9, *size)  # fmt: skip
    without = check_video(demo(tmp_path, *args), 9, *size)
    change = float(np.abs(with_lora.astype(np.int16) - without).mean())
    assert change > 1.0, f"the adapter changed the video by {change:.2f} levels on average"


def _image():
    y, x = np.mgrid[0:64, 0:64] / 63.0
    return Image.fromarray(np.round(np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], -1) * 255).astype(np.uint8))


def _video():
    y, x = np.mgrid[0:64, 0:64] / 63.0
    return [Image.fromarray(np.round(np.stack([x, y, np.full_like(x, k / 8)], -1) * 255).astype(np.uint8))
            for k in range(9)]  # fmt: skip


def _demo_recipe(generate_type, dtype, lora, offload):
    """python/cli_demo.py's generate_video, step for step, with the offload on "emu" when `offload`."""
    if generate_type == "i2v":
        cls, folder = cogvideo_c.CogVideoXImageToVideoPipeline, I2V_DIR
    else:
        cls, folder = cogvideo_c.CogVideoXVideoToVideoPipeline, V2V_DIR
    pipe = cls.from_pretrained(str(folder), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(str(LORA_DIR), weight_name="pytorch_lora_weights.safetensors", adapter_name="test_1")
        pipe.fuse_lora(components=["transformer"], lora_scale=1 / LORA_RANK)
    pipe.scheduler = cogvideo_c.CogVideoXDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    if offload:
        pipe.enable_sequential_cpu_offload(device="emu")
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    # the demo's num_frames is None (the model's sample_frames) for i2v; v2v takes the video's length
    source = {"image": _image(), "num_frames": None} if generate_type == "i2v" else {"video": _video()}
    frames = pipe(height=None, width=None, prompt="A girl riding a bike.", num_videos_per_prompt=1,
                  num_inference_steps=2, use_dynamic_cfg=True, guidance_scale=6.0, generator=42,
                  **source).frames[0]  # fmt: skip
    if offload:
        assert pipe.memory_report()["denoise"]["device"] == "emu"
        pipe.maybe_free_model_hooks()
    return np.stack([np.asarray(f) for f in frames])


@pytest.mark.parametrize(
    "generate_type, dtype, lora",
    [("i2v", "float16", False), ("i2v", "bfloat16", True), ("v2v", "bfloat16", False), ("v2v", "float16", True)],
)
def test_cli_demo_recipe_with_sequential_offload_on_emu_gives_the_cpu_frames(generate_type, dtype, lora):
    """torch_dtype 16-bit + (a fused LoRA) + DPM + enable_sequential_cpu_offload(device="emu") + slicing + tiling:
    the frames of the same recipe on the CPU without offload, bit for bit, 9 frames of the model's size that vary."""
    cpu = _demo_recipe(generate_type, dtype, lora, offload=False)
    emu = _demo_recipe(generate_type, dtype, lora, offload=True)
    width, height = I2V_SIZE if generate_type == "i2v" else V2V_SIZE
    assert cpu.shape == (9, height, width, 3) and float(cpu.std()) > MIN_PIXEL_STD
    assert np.array_equal(emu, cpu), f"max |emu - cpu| {int(np.abs(emu.astype(int) - cpu).max())} levels"


@pytest.mark.parametrize("kind, dtype", [("image", "float16"), ("video", "bfloat16")])
def test_cli_generate_conditioned_dtype_lora_offload(kind, dtype, tmp_path, capsys):
    """`cogvideo-c generate --image / --video ... --dtype D --lora attn:0.8 --tiling --slicing`: on the CPU, and with
    --device emu --offload sequential the same pixels."""
    if kind == "image":
        source, model, (width, height) = tmp_path / "first.png", I2V_DIR, I2V_SIZE
        _image().save(source)
    else:
        source, model, (width, height) = tmp_path / "source.mp4", V2V_DIR, V2V_SIZE
        cogvideo_c.export_to_video([np.asarray(f, np.float32) / 255 for f in _video()], str(source), fps=8)
    argv = ["generate", "--model", str(model), f"--{kind}", str(source), "--dtype", dtype, "--steps", "2",
            "--lora", f"{LORA_DIR}:0.8", "--tiling", "--slicing"]  # fmt: skip
    got = []
    for where, extra in (("cpu", []), ("emu", ["--device", "emu", "--offload", "sequential"])):
        out = tmp_path / f"{where}.mp4"
        assert cli.main([*argv, "--output", str(out), *extra]) == 0, capsys.readouterr().err
        assert f"generated 9 frames of {width}x{height}" in capsys.readouterr().out
        got.append(check_video(out, 9, width, height))
    assert np.array_equal(got[0], got[1]), "emu with sequential offload wrote other pixels than the CPU"
