"""Parity of cogvideo_c.CogVideoXTransformer3DModel with diffusers' CogVideoXTransformer3DModel.

Goldens (inputs, pipeline RoPE tables, outputs, random-weight models) are made by
tests/reference/make_transformer_fixtures.py with diffusers in float32 and listed in
tests/fixtures/transformer/manifest.json. This test uses only numpy and cogvideo_c (no torch/diffusers).

Per case: max abs diff <= 1e-4 * max(1, max|expected|), for float32 checkpoints and for float16/bfloat16 checkpoints
loaded with torch_dtype="float32" (diffusers loaded the same 16-bit file in float32). "expect_error" cases must raise
ValueError with the recorded message substring. For every case whose RoPE tables came from the pipeline,
`rotary_positional_embeddings(height, width, num_latent_frames)` must reproduce them (atol 1e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixture_cases import case_params, compare_rel, fail_if_missing, npz_arrays

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transformer"
MANIFEST = FIXTURES / "manifest.json"
REL_TOL = 1e-4  # max abs diff <= REL_TOL * max(1, max|expected|)
ROPE_ATOL = 1e-6


CASES = case_params(MANIFEST)
ROPE_CASES = [p for p in CASES if p.values[0] is None or p.values[0]["rope"] == "pipeline"]

_model_cache: dict[str, object] = {}


def _missing(case):
    fail_if_missing(case, "transformer", MANIFEST, "make_transformer_fixtures.py")


def _arrays(npz_name: str) -> dict[str, np.ndarray]:
    return npz_arrays(FIXTURES / npz_name)


def _model(model_dir: str):
    """One loaded model per fixture directory (the forward pass is stateless)."""
    import cogvideo_c

    if model_dir not in _model_cache:
        _model_cache[model_dir] = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(
            str(FIXTURES / model_dir), torch_dtype="float32"
        )
    return _model_cache[model_dir]


def _inputs(case: dict) -> dict:
    arrays = _arrays(case["npz"])
    keys = case["inputs"]

    def get(k):
        key = keys.get(k)
        return None if key is None else arrays[key]

    h, e, t = get("hidden_states"), get("encoder_hidden_states"), get("timestep")
    assert h.dtype == np.float32 and e.dtype == np.float32 and t.dtype == np.int64
    cos, sin = get("freqs_cos"), get("freqs_sin")
    if case["rope"] == "pipeline":
        assert cos is not None and sin is not None
        rot = (cos, sin)
    else:
        assert cos is None and sin is None
        rot = None
    return dict(hidden_states=h, encoder_hidden_states=e, timestep=t, image_rotary_emb=rot, ofs=get("ofs"))


def _copies(inp: dict) -> dict:
    out = {}
    for k, v in inp.items():
        if isinstance(v, tuple):
            out[k] = tuple(a.copy() for a in v)
        elif isinstance(v, np.ndarray):
            out[k] = v.copy()
        else:
            out[k] = v
    return out


def _compare(name: str, got, want: np.ndarray) -> tuple[float, float]:
    return compare_rel(name, got, want, REL_TOL, "diffusers")


@pytest.mark.parametrize("case", CASES)
def test_transformer_parity(case):
    _missing(case)
    tr = _model(case["model_dir"])
    inp = _inputs(case)
    call = _copies(inp)

    if case["expect_error"] is not None:
        with pytest.raises(ValueError) as info:
            tr(**call, return_dict=True)
        assert case["expect_error"] in str(info.value), (
            f"{case['name']}: ValueError message {str(info.value)!r} lacks {case['expect_error']!r}"
        )
        return

    out = tr(**call, return_dict=True).sample
    want = _arrays(case["npz"])[case["output"]]
    _compare(case["name"], out, want)

    # inputs must not be modified in place
    for k, v in inp.items():
        if isinstance(v, tuple):
            for a, b in zip(v, call[k]):
                np.testing.assert_array_equal(b, a, err_msg=f"{k} was modified in place")
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(call[k], v, err_msg=f"{k} was modified in place")


@pytest.mark.parametrize("case", ROPE_CASES)
def test_rotary_positional_embeddings(case):
    _missing(case)
    tr = _model(case["model_dir"])
    args = case["rope_args"]
    arrays = _arrays(case["npz"])
    want_cos = arrays[case["inputs"]["freqs_cos"]]
    want_sin = arrays[case["inputs"]["freqs_sin"]]
    cos, sin = tr.rotary_positional_embeddings(
        height=args["height"], width=args["width"], num_latent_frames=args["num_latent_frames"]
    )
    for what, got, want in (("freqs_cos", cos, want_cos), ("freqs_sin", sin, want_sin)):
        got = np.asarray(got)
        assert got.shape == want.shape, f"{case['name']} {what}: shape {got.shape}, pipeline gives {want.shape}"
        assert got.dtype == np.float32, f"{case['name']} {what}: dtype {got.dtype}"
        d = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        print(f"{case['name']} {what}: max abs diff {d:.3e} (crop {case['rope_info']['crop_coords']})")
        assert d <= ROPE_ATOL, f"{case['name']} {what}: max abs diff {d:.3e} > {ROPE_ATOL:.0e}"
