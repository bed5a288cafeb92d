"""Parity of cogvideo_c.T5EncoderModel with transformers' T5EncoderModel (the CogVideoX text encoder).

Goldens (random-weight checkpoints, input_ids, last_hidden_state) are made by tests/reference/make_t5_fixtures.py
with transformers in float32 and listed in tests/fixtures/t5/manifest.json. This test uses only numpy and
cogvideo_c (no torch/transformers).

Models: "relu" (tiny-random-t5 config, non-gated ReLU FF, 8 buckets), "gated" (t5-v1_1 style, gated-gelu, 32
buckets, also as a sharded checkpoint and as float16 / bfloat16 files). The pipeline's call is reproduced: int64
input_ids [B, L] with an EOS + pad tail and no attention mask. Per case: max abs diff <= 1e-4 * max(1, max|expected|),
for float32 checkpoints and for 16-bit checkpoints loaded with torch_dtype="float32" (transformers loaded the same
16-bit file in float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixture_cases import case_params, compare_rel, fail_if_missing, npz_arrays

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "t5"
MANIFEST = FIXTURES / "manifest.json"
REL_TOL = 1e-4  # max abs diff <= REL_TOL * max(1, max|expected|)


CASES = case_params(MANIFEST)

_model_cache: dict[str, object] = {}


def _missing(case):
    fail_if_missing(case, "T5", MANIFEST, "make_t5_fixtures.py")


def _arrays(npz_name: str) -> dict[str, np.ndarray]:
    return npz_arrays(FIXTURES / npz_name)


def _model(model_dir: str):
    """One loaded encoder per fixture directory (the forward pass is stateless)."""
    import cogvideo_c

    if model_dir not in _model_cache:
        _model_cache[model_dir] = cogvideo_c.T5EncoderModel.from_pretrained(
            str(FIXTURES / model_dir), torch_dtype="float32"
        )
    return _model_cache[model_dir]


def _compare(name: str, got, want: np.ndarray) -> None:
    compare_rel(name, got, want, REL_TOL, "transformers")


@pytest.mark.parametrize("case", CASES)
def test_t5_encoder_parity(case):
    _missing(case)
    enc = _model(case["model_dir"])
    arrays = _arrays(case["npz"])
    ids = arrays[case["input_ids"]]
    want = arrays[case["output"]]
    assert ids.dtype == np.int64 and ids.ndim == 2
    assert want.dtype == np.float32 and list(want.shape) == case["shape"]

    call = ids.copy()
    out = enc(call)
    got = out.last_hidden_state
    _compare(case["name"], got, want)

    # tuple-style access, as the pipeline does (text_encoder(input_ids)[0])
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(got), err_msg="out[0] != out.last_hidden_state")
    # the input must not be modified in place
    np.testing.assert_array_equal(call, ids, err_msg="input_ids were modified in place")


def test_half_precision_weights_cannot_overflow(tmp_path):
    """T5's known fp16 problem: feed-forward outputs beyond 65504 become inf in half-precision arithmetic
    (transformers clamps them). Here 16-bit weights are widened and the math is f32, so a model whose
    feed-forward is scaled by 2^16 gives finite outputs equal to the f32-loaded model's."""
    import json as _json
    import shutil

    from cogvideo_c._load import _C
    from cogvideo_c.tiny import save_safetensors

    src = FIXTURES / "gated"
    dst = tmp_path / "gated_loud"
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = _json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=np.float32).reshape(info["shape"]).copy()
        if name.endswith("DenseReluDense.wo.weight"):
            # powers of two keep the weights exactly representable in float16
            tensors[name] *= np.float32(65536.0)  # feed-forward outputs far past float16's 65504
    save_safetensors(tensors, str(path))
    assert set(_C.safetensors_index(str(path))) == set(tensors)
    import cogvideo_c

    ids = np.array([[5, 17, 3, 1, 0, 0, 0]], dtype=np.int64)
    half = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float16")
    full = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float32")
    a, b = half(ids).last_hidden_state, full(ids).last_hidden_state
    assert np.isfinite(a).all()
    # the f32 model with f16-rounded weights computes the same numbers: nothing was clamped or lost
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()}
    save_safetensors(rounded, str(path))
    ref = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float32")(ids).last_hidden_state
    print(f"half-resident vs f32 on the same rounded weights: max diff {float(np.abs(a - ref).max()):.3e}; "
          f"vs unrounded: {float(np.abs(a - b).max()):.3e}")  # fmt: skip
    assert np.abs(a - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
