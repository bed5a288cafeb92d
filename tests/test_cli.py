"""The embedded tiny VAE and the `cogvideo-c` command."""

import json
import os

import numpy as np

import cogvideo_c
from cogvideo_c import cli
from cogvideo_c._load import _C
from conftest import VAE_FIXTURES


def test_embedded_tiny_vae_has_diffusers_state_dict(tmp_path):
    # the diffusers-made fixture has the same architecture: every name, shape and dtype must agree
    folder = cogvideo_c.tiny.make_tiny_vae(str(tmp_path / "vae"))
    ours = _C.safetensors_index(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    diffusers_made = _C.safetensors_index(os.path.join(VAE_FIXTURES, "tiny", "diffusion_pytorch_model.safetensors"))
    assert ours == diffusers_made
    with open(os.path.join(VAE_FIXTURES, "tiny", "config.json")) as f:
        reference = json.load(f)
    for key, value in cogvideo_c.tiny.TINY_VAE_CONFIG.items():
        if not key.startswith("_"):
            assert reference[key] == value, key


def test_vae_decode_command_runs_the_embedded_default(tmp_path, capsys):
    out = tmp_path / "video.npy"
    assert cli.main(["vae-decode", "--frames", "2", "--height", "4", "--width", "6", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "video (1, 3, 8, 32, 48)" in printed and "peak memory" in printed
    video = np.load(out)
    assert video.shape == (1, 3, 8, 32, 48) and np.isfinite(video).all() and video.std() > 1e-3


def test_command_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli.main(["vae-decode", "--model", str(tmp_path / "missing")]) == 2
    assert "no model folder" in capsys.readouterr().err
