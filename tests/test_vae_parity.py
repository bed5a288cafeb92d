"""Parity of cogvideo_c.AutoencoderKLCogVideoX with diffusers' AutoencoderKLCogVideoX.

Goldens (inputs, outputs, random-weight models) are made by tests/reference/make_vae_fixtures.py with diffusers in
float32 and listed in tests/fixtures/vae/manifest.json. This test uses only numpy and cogvideo_c (no torch/diffusers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vae"
MANIFEST = FIXTURES / "manifest.json"
TOL = 1e-4  # max abs diff vs diffusers (fp32)


def _load_cases():
    if not MANIFEST.is_file():
        # Fail (not skip) every run until the fixtures exist.
        return [pytest.param(None, id="manifest-missing")]
    cases = json.loads(MANIFEST.read_text())["cases"]
    if not cases:
        return [pytest.param(None, id="manifest-empty")]
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), "duplicate case names in manifest"
    return [pytest.param(c, id=c["name"]) for c in cases]


CASES = _load_cases()

_npz_cache: dict[str, dict[str, np.ndarray]] = {}
_model_cache: dict[tuple, object] = {}


def _arrays(npz_name: str) -> dict[str, np.ndarray]:
    if npz_name not in _npz_cache:
        with np.load(FIXTURES / npz_name, allow_pickle=False) as z:
            _npz_cache[npz_name] = {k: z[k] for k in z.files}
    return _npz_cache[npz_name]


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
    got = np.asarray(got)
    assert got.shape == want.shape, f"{name} {what}: shape {got.shape}, diffusers gives {want.shape}"
    assert got.dtype == np.float32, f"{name} {what}: dtype {got.dtype}, expected float32"
    assert np.isfinite(got).all(), f"{name} {what}: non-finite values"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    if not max_diff <= TOL:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        n_bad = int((diff > TOL).sum())
        pytest.fail(
            f"{name} {what}: max abs diff {max_diff:.3e} > {TOL:.0e} at index {idx} "
            f"(got {float(got[idx])!r}, diffusers {float(want[idx])!r}); {n_bad}/{diff.size} elements over tolerance; "
            f"mean abs diff {float(diff.mean()):.3e}"
        )
    return max_diff


@pytest.mark.parametrize("case", CASES)
def test_vae_parity(case):
    if case is None:
        pytest.fail(
            f"VAE fixtures missing: {MANIFEST} (run tests/reference/make_vae_fixtures.py with the "
            "reference environment)"
        )
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
