"""The README's examples run as written with torch_dtype="float16" and "bfloat16" (issue 7: a float16 run decoded to
100 % NaN, `cogvideo-c generate --dtype float16` failed after the denoising loop, `python/cli_demo.py --dtype
bfloat16` wrote a broken 2 KB MP4).

The python blocks are read from README.md itself and executed with only the checkpoint paths (and, for the components
block, the 480x720 sizes and the inputs the README leaves undefined) replaced by the tiny pipeline's, so a change to
the README is tested as it stands. Every video written is read back by ffmpeg (imageio-ffmpeg): the outside truth for
"playable, with the right frame count and size".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import cli

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ["float16", "bfloat16"]
# the tiny pipeline (cogvideo_c.tiny / `cogvideo-c make-tiny`): 8x8 latents (64x64 px), 4 latent channels
TINY_SIZE, TINY_LATENT_CHANNELS = 64, 4
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
MIN_PIXEL_STD = 2.0  # uint8 levels: a NaN or constant video decodes to flat frames (std 0)


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _block(marker: str) -> str:
    blocks = [b for b in _python_blocks() if marker in b]
    assert len(blocks) == 1, f"README.md: expected one python block with {marker!r}, found {len(blocks)}"
    return blocks[0]


def _substitute(code: str, replacements: dict[str, str]) -> str:
    """Replaces each README text exactly once (fails if the README no longer says it, so the test is updated)."""
    for old, new in replacements.items():
        assert code.count(old) == 1, f"README.md block no longer contains {old!r} exactly once:\n{code}"
        code = code.replace(old, new)
    return code


def _dtype_text(code: str, dtype: str) -> str:
    assert 'torch_dtype="float16"' in code, 'the README example no longer passes torch_dtype="float16"'
    return code.replace('torch_dtype="float16"', f'torch_dtype="{dtype}"')


def _read_back(path) -> tuple[dict, np.ndarray]:
    """(ffmpeg metadata, frames uint8 [N, H, W, 3]) as ffmpeg decodes the file."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])
    return meta, frames


def _check_video_file(path, frames: int, size: int) -> np.ndarray:
    meta, got = _read_back(path)
    assert meta["size"] == (size, size), meta
    assert got.shape[0] == frames, f"{path}: ffmpeg reads {got.shape[0]} frames, expected {frames}"
    std = float(got.std())
    assert std > MIN_PIXEL_STD, f"{path}: frames are flat (pixel std {std:.2f}): a NaN or constant video"
    return got


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "CogVideoX-tiny"
    assert cli.main(["make-tiny", str(folder)]) == 0
    return folder


def _spy_decode(vae, record: list):
    """Wraps vae.decode to keep what it returns (the float frames before post-processing)."""
    decode = vae.decode

    def spy(*args, **kwargs):
        out = decode(*args, **kwargs)
        record.append(np.array(out.sample, copy=True))
        return out

    vae.decode = spy


@pytest.mark.parametrize("dtype", DTYPES)
def test_readme_pipeline_example(dtype, tiny_dir, tmp_path, monkeypatch):
    """The 'Install and run' block, as written (50 steps, 49 frames, tiling, export_to_video at 8 fps)."""
    code = _substitute(_dtype_text(_block('export_to_video(video, "panda.mp4"'), dtype),
                       {'"path/to/CogVideoX-2b"': repr(str(tiny_dir))})  # fmt: skip
    decoded: list = []
    from_pretrained = cogvideo_c.CogVideoXPipeline.from_pretrained

    def loading(*args, **kwargs):  # the README's own call, then a spy on its VAE and a quiet progress bar
        pipe = from_pretrained(*args, **kwargs)
        assert pipe.vae.dtype == pipe.transformer.dtype == pipe.text_encoder.dtype == dtype
        pipe.set_progress_bar_config(disable=True)
        _spy_decode(pipe.vae, decoded)
        return pipe

    monkeypatch.setattr(cogvideo_c.CogVideoXPipeline, "from_pretrained", loading)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (pipeline example)", "exec"), scope)

    video = scope["video"]
    assert len(decoded) == 1
    sample = decoded[0]
    assert sample.shape == (1, 3, 49, TINY_SIZE, TINY_SIZE) and sample.dtype == np.float32, sample.shape
    assert np.isfinite(sample).all(), f"{dtype}: the decoded video has non-finite values"
    assert len(video) == 49 and all(np.asarray(f).shape == (TINY_SIZE, TINY_SIZE, 3) for f in video)
    got = _check_video_file(tmp_path / "panda.mp4", 49, TINY_SIZE)
    # what ffmpeg reads back is the video the pipeline returned, up to H.264 loss: the tiny model's frames are pixel
    # noise, which crf 25 + yuv420p blurs (mean |error| ~25 levels), but each frame's per-channel mean survives
    # (measured max error 3.3 levels)
    want = np.stack([np.asarray(f) for f in video]).astype(np.float64)
    err = float(np.abs(got.mean(axis=(1, 2)) - want.mean(axis=(1, 2))).max())
    assert err <= 8.0, f"{dtype}: an MP4 frame's channel mean differs from the returned frame's by {err:.2f} levels"
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "panda.mp4"))
    assert n == 49 and abs(secs - 49 / 8) <= 0.01, (n, secs)  # fps=8 as written (ffmpeg prints 2 decimals)


@pytest.mark.parametrize("dtype", DTYPES)
def test_readme_offload_example(dtype, tiny_dir, monkeypatch, capsys):
    """The 'Devices and offload' block as written (sequential offload on emu, tiling, 49 frames; 2 steps instead of
    50): the frames equal a plain CPU run's bit for bit, and the report and the device peak print."""
    code = _substitute(_dtype_text(_block('enable_sequential_cpu_offload(device="emu")'), dtype),
                       {'"path/to/CogVideoX-2b"': repr(str(tiny_dir)),
                        "num_inference_steps=50": "num_inference_steps=2"})  # fmt: skip
    from_pretrained = cogvideo_c.CogVideoXPipeline.from_pretrained
    loaded = []

    def loading(*args, **kwargs):
        pipe = from_pretrained(*args, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        loaded.append(pipe)
        return pipe

    monkeypatch.setattr(cogvideo_c.CogVideoXPipeline, "from_pretrained", loading)
    scope: dict = {}
    exec(compile(code, "README.md (offload example)", "exec"), scope)
    printed = capsys.readouterr().out
    assert "encode_prompt" in printed and "denoise" in printed and "decode" in printed
    peak = int(printed.strip().splitlines()[-1])
    assert peak > 0
    plain = from_pretrained(str(tiny_dir), torch_dtype=dtype)
    plain.set_progress_bar_config(disable=True)
    plain.vae.enable_tiling()
    want = plain(prompt="A panda playing a guitar", num_inference_steps=2, num_frames=49, generator=42).frames[0]
    assert len(scope["video"]) == len(want) == 49
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(scope["video"], want))
    loaded[0].maybe_free_model_hooks()


@pytest.mark.parametrize("dtype", DTYPES)
def test_readme_components_example(dtype, tiny_dir, tmp_path, monkeypatch, capsys):
    """The components block: the VAE (torch_dtype as written, slicing and tiling), a 5b-style RoPE transformer, its
    rotary tables, a forward, from_config and memory_stats. The README's 480x720 px is the released size; on the tiny
    RoPE transformer (tests/fixtures/pipeline/tiny_5b) that is 17,550 tokens, so it becomes 32x48 (13 latent frames
    as written), and the inputs the README leaves undefined are given."""
    tr_dir = ROOT / "tests" / "fixtures" / "pipeline" / "tiny_5b" / "transformer"
    config = json.loads((tr_dir / "config.json").read_text())
    code = _substitute(
        _dtype_text(_block("AutoencoderKLCogVideoX.from_pretrained"), dtype),
        {
            '"path/to/CogVideoX-2b/vae"': repr(str(tiny_dir / "vae")),
            '"path/to/CogVideoX-5b/transformer"': repr(str(tr_dir)),
            "height=480, width=720,": "height=32, width=48,",
        },
    )
    rng = np.random.default_rng(0)
    scope = {
        "latents": rng.standard_normal((1, TINY_LATENT_CHANNELS, 13, 4, 6), dtype=np.float32),
        "latents_bfchw": rng.standard_normal((1, 13, config["in_channels"], 4, 6), dtype=np.float32),
        "prompt_embeds": rng.standard_normal((1, config["max_text_seq_length"], config["text_embed_dim"]),
                                             dtype=np.float32),
        "config": config,
    }  # fmt: skip
    exec(compile(code, "README.md (components example)", "exec"), scope)

    vae = scope["vae"]
    assert vae.dtype == dtype and vae.use_slicing and vae.use_tiling
    video = scope["video"]
    assert video.shape == (1, 3, 4 * (13 - 1) + 1, 32, 48) and video.dtype == np.float32  # README: 4(F-1)+1, 8H, 8W
    assert np.isfinite(video).all() and float(video.std()) > 1e-2, f"{dtype}: decoded video non-finite or flat"
    # the float32 VAE's decode up to the 16-bit rounding of the weights: 0 < max diff <= 8 u max|float32 video|, u
    # the dtype's unit roundoff (measured 3.4 u for float16, 2.8 u for bfloat16); the exact values are the parity
    # tests' (tests/test_dtype_parity.py)
    f32 = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(str(tiny_dir / "vae"), torch_dtype="float32")
    want = f32.decode(scope["latents"]).sample
    diff, bound = float(np.abs(video - want).max()), 8 * UNIT_ROUNDOFF[dtype] * float(np.abs(want).max())
    assert 0.0 < diff <= bound, f"{dtype}: 16-bit decode differs from float32 by {diff:.3e} (bound {bound:.3e})"
    noise_pred = scope["noise_pred"]
    assert noise_pred.shape == scope["latents_bfchw"].shape and np.isfinite(noise_pred).all()
    assert "allocated_bytes.all.current" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", DTYPES)
def test_cli_generate_dtype(dtype, tiny_dir, tmp_path, capsys):
    """`cogvideo-c generate --dtype <dtype>` on the tiny folder writes a playable MP4 of the model's 9 frames."""
    out = tmp_path / "out.mp4"
    argv = ["generate", "--model", str(tiny_dir), "--dtype", dtype, "--steps", "2", "--output", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert f"generated 9 frames of {TINY_SIZE}x{TINY_SIZE}" in capsys.readouterr().out
    _check_video_file(out, 9, TINY_SIZE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cli_demo_dtype(dtype, tiny_dir, tmp_path):
    """`python python/cli_demo.py --dtype <dtype>` (DPM, dynamic CFG, slicing and tiling) writes a playable MP4 of the
    model's 9 frames (it wrote a 2 KB broken one in bfloat16)."""
    out = tmp_path / "demo.mp4"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, str(ROOT / "python" / "cli_demo.py"), "--prompt", "A girl riding a bike.", "--model_path",
         str(tiny_dir), "--dtype", dtype, "--num_inference_steps", "2", "--output_path", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    _check_video_file(out, 9, TINY_SIZE)
