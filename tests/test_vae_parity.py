"""Parity of cogvideo_c.AutoencoderKLCogVideoX with diffusers' AutoencoderKLCogVideoX.

Goldens (inputs, outputs, random-weight models) are made by tests/reference/make_vae_fixtures.py with diffusers in
float32 and listed in tests/fixtures/vae/manifest.json. This test uses only numpy and cogvideo_c (no torch/diffusers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixture_cases import case_params, checked_diff, fail_if_missing, npz_arrays, worst_element

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vae"
MANIFEST = FIXTURES / "manifest.json"
TOL = 1e-4  # max abs diff vs diffusers (fp32)


CASES = case_params(MANIFEST)

_model_cache: dict[tuple, object] = {}


def _arrays(npz_name: str) -> dict[str, np.ndarray]:
    return npz_arrays(FIXTURES / npz_name)


def _model(case: dict):
    """One loaded model per (model_dir, slicing, tiling arguments), configured once and never reconfigured.

    enable_tiling(None, ...) keeps the *current* values (diffusers' `x or self.x`), so a model that once received
    custom tile sizes cannot be used for a default-tiling case; keying the cache by configuration avoids relying on
    any reset behaviour."""
    import cogvideo_c

    tiling_args = case.get("tiling_args", case["tiling"])
    key = (case["model_dir"], bool(case["slicing"]), json.dumps(tiling_args, sort_keys=True))
    if key not in _model_cache:
        vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(
            str(FIXTURES / case["model_dir"]), torch_dtype="float32"
        )
        if case["slicing"]:
            vae.enable_slicing()
        if tiling_args is not None:
            vae.enable_tiling(**tiling_args)
        _model_cache[key] = vae
    return _model_cache[key]


def _compare(name: str, what: str, got, want: np.ndarray) -> float:
    got, diff, max_diff = checked_diff(f"{name} {what}", got, want, "diffusers")
    if not max_diff <= TOL:
        pytest.fail(
            f"{name} {what}: max abs diff {max_diff:.3e} > {TOL:.0e} "
            + worst_element(got, want, diff, TOL, "diffusers")
        )
    return max_diff


@pytest.mark.parametrize("case", CASES)
def test_vae_parity(case):
    fail_if_missing(case, "VAE", MANIFEST, "make_vae_fixtures.py")
    arrays = _arrays(case["npz"])
    x = arrays[case["input"]]
    assert x.dtype == np.float32
    x_in = x.copy()
    vae = _model(case)

    diffs = {}
    if case["op"] == "decode":
        out = vae.decode(x_in).sample
        diffs["sample"] = _compare(case["name"], "sample", out, arrays[case["outputs"]["sample"]])
    elif case["op"] == "encode":
        dist = vae.encode(x_in).latent_dist
        diffs["mean"] = _compare(case["name"], "mean", dist.mean, arrays[case["outputs"]["mean"]])
        diffs["logvar"] = _compare(case["name"], "logvar", dist.logvar, arrays[case["outputs"]["logvar"]])
        np.testing.assert_array_equal(np.asarray(dist.mode()), np.asarray(dist.mean), err_msg="mode() != mean")
    else:
        pytest.fail(f"unknown op {case['op']!r}")

    np.testing.assert_array_equal(x_in, x, err_msg="the input array was modified in place")
    print(f"{case['name']}: " + ", ".join(f"{k} max abs diff {v:.3e}" for k, v in diffs.items()))


def test_posterior_sample_mode_and_forward():
    """sample() = mean + std * N(0, 1) drawn from the generator given (numpy's stream is the outside truth), mode()
    is the mean, and forward() is decode(encode(x).mode()) as in diffusers."""
    import os

    import cogvideo_c
    from conftest import VAE_FIXTURES

    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(os.path.join(VAE_FIXTURES, "tiny"))
    x = np.random.default_rng(5).uniform(-1, 1, (1, 3, 9, 16, 16)).astype(np.float32)
    dist = vae.encode(x).latent_dist
    noise = np.random.default_rng(7).standard_normal(dist.mean.shape, dtype=np.float32)
    np.testing.assert_array_equal(dist.sample(np.random.default_rng(7)), dist.mean + dist.std * noise)
    np.testing.assert_array_equal(dist.mode(), dist.mean)
    np.testing.assert_allclose(dist.std, np.exp(0.5 * np.clip(dist.logvar, -30, 20)), rtol=1e-6)
    np.testing.assert_array_equal(vae(x).sample, vae.decode(dist.mode()).sample)
