#!/usr/bin/env python3
"""Measure diffusers' own 16-bit drift on the tiny end-to-end pipeline of tests/test_cuda.py, the outside truth for
that test's float16 / bfloat16 bound (issue 9: on CUDA the 16-bit torch_dtype selects 16-bit tensor-core compute, so
the frames move away from the CPU backend's, which computes the same 16-bit weights in float32).

Run from the repository root with the reference environment, naming a Python that has a built cogvideo_c (it writes
the tiny pipeline folder with cogvideo_c.tiny.make_tiny_pipeline, exactly as the test does):

    CVX_PROJECT_PYTHON=$VENV/bin/python /tmp/cvx-reference/bin/python tests/reference/make_cuda_drift_fixtures.py

The pipeline call is the test's: make_tiny_pipeline(folder) (seed 0), prompts ["a cat", "a dog"], negative prompt
"" (the default), guidance 6, 3 steps of the folder's CogVideoXDDIMScheduler, 9 frames of 64x64, output_type "np",
and the latents cogvideo_c draws for generator=0: np.random.default_rng(0).standard_normal(shape, float32) (the
scheduler's init_noise_sigma is 1), passed to diffusers as `latents=` in the run dtype.

Three diffusers runs per 16-bit dtype, all on torch CPU:
  "16bit":   CogVideoXPipeline.from_pretrained(folder, torch_dtype=<dtype>), everything computed in that dtype (torch
             CPU runs every op of the three models in float16 and bfloat16; transformers keeps T5's `wo` in float32 for
             float16, its _keep_in_fp32_modules);
  "rounded": the float32 load with every parameter rounded to <dtype>, computed in float32 (the weights cogvideo_c
             holds, computed as its CPU backend computes them);
plus one float32 run. The drift statistics (max and mean |a - b| over every frame value) of 16bit-vs-rounded and
16bit-vs-float32 are diffusers' own cost of 16-bit compute.

Writes tests/fixtures/cuda_drift/ (deleted and recreated):
  frames.npz     "<dtype>__16bit" and "rounded__<dtype>": the frames strided [:, ::2, ::2, ::2, :] (batch 2, 5 of
                 the 9 frames, 32x32 of 64x64, RGB), stored as float16 (2^-12 absolute rounding on [0, 1], far below
                 the drift measured); "float32" likewise.
  manifest.json  versions, the call, the sha256 of the folder's weight files (the test checks its folder is the same
                 checkpoint), the slice, and per dtype the statistics on the full frames and on the slice.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import CogVideoXPipeline

from _reference_common import recreate_dir, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "cuda_drift"
PROMPT = ["a cat", "a dog"]
CALL = dict(guidance_scale=6.0, num_inference_steps=3, height=64, width=64, num_frames=9, output_type="np")
LATENT_SHAPE = (2, 3, 4, 8, 8)  # [B, (9 - 1) // 4 + 1, latent channels, 64 // 8, 64 // 8]
SLICE = (slice(None), slice(None, None, 2), slice(None, None, 2), slice(None, None, 2), slice(None))
SLICE_TEXT = "[:, ::2, ::2, ::2, :]"
LATENTS_TEXT = f"np.random.default_rng(0).standard_normal({LATENT_SHAPE}, dtype=np.float32), cogvideo_c's generator=0"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_FILES = (
    "text_encoder/model.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
)


def write_folder(folder: Path) -> None:
    """The tiny pipeline folder, written by the project's own make_tiny_pipeline (the same bytes as the test's)."""
    py = os.environ.get("CVX_PROJECT_PYTHON")
    if not py:
        sys.exit("set CVX_PROJECT_PYTHON to a Python with cogvideo_c built (e.g. the project venv's bin/python)")
    code = "import sys; from cogvideo_c.tiny import make_tiny_pipeline; make_tiny_pipeline(sys.argv[1])"
    subprocess.run([py, "-c", code, str(folder)], check=True, cwd=ROOT)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(pipe: CogVideoXPipeline, latents: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt=PROMPT, latents=torch.from_numpy(latents.copy()).to(dtype), **CALL).frames
    frames = np.asarray(out, dtype=np.float32)
    assert frames.shape == (2, 9, 64, 64, 3) and np.isfinite(frames).all(), frames.shape
    return frames


def stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def main() -> int:
    torch.manual_seed(0)
    latents = np.random.default_rng(0).standard_normal(LATENT_SHAPE, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny"
        write_folder(folder)
        hashes = {f: sha256(folder / f) for f in WEIGHT_FILES}
        f32 = run(CogVideoXPipeline.from_pretrained(str(folder), torch_dtype=torch.float32), latents, torch.float32)
        frames = {"float32": f32}
        drift = {}
        for name, tdt in DTYPES.items():
            half = run(CogVideoXPipeline.from_pretrained(str(folder), torch_dtype=tdt), latents, tdt)
            rounded_pipe = CogVideoXPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
            with torch.no_grad():
                for comp in (rounded_pipe.text_encoder, rounded_pipe.transformer, rounded_pipe.vae):
                    for p in comp.parameters():
                        p.copy_(p.to(tdt).to(torch.float32))
            rounded = run(rounded_pipe, latents, torch.float32)
            frames[f"{name}__16bit"], frames[f"rounded__{name}"] = half, rounded
            drift[name] = {
                "16bit_vs_rounded": stats(half, rounded),
                "16bit_vs_float32": stats(half, f32),
                "rounded_vs_float32": stats(rounded, f32),
                "slice_16bit_vs_rounded": stats(half[SLICE], rounded[SLICE]),
            }
            print(name, json.dumps(drift[name]))
    recreate_dir(OUT)
    save_npz(OUT / "frames.npz", {k: v[SLICE].astype(np.float16) for k, v in frames.items()})
    manifest = {
        "versions": versions(diffusers, transformers, torch, np, python=True),
        "made_by": "tests/reference/make_cuda_drift_fixtures.py",
        "pipeline": "cogvideo_c.tiny.make_tiny_pipeline(folder) (seed 0)",
        "weight_sha256": hashes,
        "call": dict(CALL, prompt=PROMPT, negative_prompt="", latents=LATENTS_TEXT),
        "slice": SLICE_TEXT,
        "frames": "frames.npz: '<dtype>__16bit' (diffusers torch_dtype=<dtype>, 16-bit compute), 'rounded__<dtype>' "
        "(parameters rounded to <dtype>, float32 compute), 'float32'; each the slice of the [2, 9, 64, 64, 3] frames, "
        "stored as float16",
        "drift": drift,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
