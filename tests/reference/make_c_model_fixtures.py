"""Writes tests/fixtures/c/: the inputs and diffusers/transformers outputs that tests/c/test_models.c checks the C
models against, as raw little-endian arrays (.f32 float32, .i64 int64) that C reads without an npz parser.

Every array is copied from the committed goldens (tests/fixtures/{vae,t5,transformer}/*.npz, made by the other
make_*_fixtures.py scripts with diffusers / transformers); the one computed here is the sin-cos positional table of
the 2b-style transformer, an input that cogvideo_c's numpy port of diffusers' get_3d_sincos_pos_embed builds (and
that tests/test_transformer_parity.py checks against diffusers through the whole forward).

Run from the repository root with the project's environment (numpy + a built cogvideo_c, no torch):
    python tests/reference/make_c_model_fixtures.py
The files come out byte for byte the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import cogvideo_c

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
DESCRIPTION = (
    "Inputs and diffusers/transformers goldens for tests/c/test_models.c as raw little-endian arrays (.f32 float32, "
    ".i64 int64), copied from the npz goldens by tests/reference/make_c_model_fixtures.py; 16-bit goldens are the "
    "16-bit weight files computed in float32."
)
OUT = ROOT / "c"

# (npz under tests/fixtures, key in it, file written here)
COPIES = [
    # VAE "tiny": decode 3 latent frames, encode 9 frames; goldens of the f32, f16 and bf16 weight files, all computed
    # by diffusers in float32
    ("vae/tiny.npz", "tiny_decode_f3__input", "vae_decode_f3__input"),
    ("vae/tiny.npz", "tiny_decode_f3__sample", "vae_decode_f3__f32"),
    ("vae/tiny.npz", "tiny_f16_decode_f3__sample", "vae_decode_f3__f16"),
    ("vae/tiny.npz", "tiny_bf16_decode_f3__sample", "vae_decode_f3__bf16"),
    ("vae/tiny.npz", "tiny_encode_f9__input", "vae_encode_f9__input"),
    # VAE "mid": a tiled decode (32x48 px tiles, overlap 1/4 x 1/6) of the 16-bit files
    ("vae/mid.npz", "mid_decode_tiling_custom__input", "vae_mid_tiled__input"),
    ("vae/mid.npz", "mid_f16_decode_tiling_custom__sample", "vae_mid_tiled__f16"),
    ("vae/mid.npz", "mid_bf16_decode_tiling_custom__sample", "vae_mid_tiled__bf16"),
    # T5 "gated" (v1.1): 2 x 16 tokens, no mask
    ("t5/gated.npz", "gated_b2_l16__input_ids", "t5_b2_l16__ids"),
    ("t5/gated.npz", "gated_b2_l16__out", "t5_b2_l16__f32"),
    ("t5/gated.npz", "gated_fp16_b2_l16__out", "t5_b2_l16__f16"),
    ("t5/gated.npz", "gated_bf16_b2_l16__out", "t5_b2_l16__bf16"),
    # transformer "t2b_tiny" (2b style: sin-cos table, Conv2d patches), diffusers' model-test inputs
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1__hidden_states", "t2b_b2_f1__hidden"),
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1__encoder_hidden_states", "t2b_b2_f1__text"),
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1__timestep", "t2b_b2_f1__timestep"),
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1__sample", "t2b_b2_f1__f32"),
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1_f16__sample", "t2b_b2_f1__f16"),
    ("transformer/t2b_tiny.npz", "t2b_tiny_test_config_b2_f1_bf16__sample", "t2b_b2_f1__bf16"),
    # transformer "t15" (1.5 style: RoPE tables from the pipeline, temporal patches)
    ("transformer/t15.npz", "t15_f2__hidden_states", "t15_f2__hidden"),
    ("transformer/t15.npz", "t15_f2__encoder_hidden_states", "t15_f2__text"),
    ("transformer/t15.npz", "t15_f2__timestep", "t15_f2__timestep"),
    ("transformer/t15.npz", "t15_f2__freqs_cos", "t15_f2__rope_cos"),
    ("transformer/t15.npz", "t15_f2__freqs_sin", "t15_f2__rope_sin"),
    ("transformer/t15.npz", "t15_f2__sample", "t15_f2__f32"),
    ("transformer/t15.npz", "t15_f2_bf16__sample", "t15_f2__bf16"),
]

# the encoder's moments as the C core returns them: mean then logvar along channels
MOMENTS = [
    ("tiny_encode_f9", "vae_encode_f9__f32"),
    ("tiny_f16_encode_f9", "vae_encode_f9__f16"),
    ("tiny_bf16_encode_f9", "vae_encode_f9__bf16"),
]


def _write(name: str, array: np.ndarray, manifest: dict, source: str) -> None:
    if array.dtype.kind in "iu":
        array, ext = array.astype("<i8"), "i64"
    else:
        array, ext = array.astype("<f4"), "f32"
    path = OUT / f"{name}.{ext}"
    path.write_bytes(np.ascontiguousarray(array).tobytes())
    manifest[path.name] = {"shape": list(array.shape), "from": source}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    manifest: dict = {}
    for npz, key, name in COPIES:
        arr = np.load(ROOT / npz)[key]
        if name.endswith("__timestep"):
            arr = arr.astype(np.float32)  # the core takes f32 timesteps (as the Python layer passes them)
        _write(name, arr, manifest, f"{npz}:{key}")
    vae = np.load(ROOT / "vae/tiny.npz")
    for case, name in MOMENTS:
        mean, logvar = vae[f"{case}__mean"], vae[f"{case}__logvar"]
        # diffusers' posterior clamps logvar to [-30, 20]: inside that range the raw moments are the golden ones
        assert -30 < logvar.min() and logvar.max() < 20, case
        _write(name, np.concatenate([mean, logvar], axis=1), manifest, f"vae/tiny.npz:{case}__mean|logvar")

    tr = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(str(ROOT / "transformer" / "t2b_tiny"))
    hidden = np.load(ROOT / "transformer/t2b_tiny.npz")["t2b_tiny_test_config_b2_f1__hidden_states"]
    table = tr._positional_table(tr.config.max_text_seq_length, *hidden.shape[1:2], *hidden.shape[3:])
    _write("t2b_b2_f1__pos_table", table, manifest, "cogvideo_c CogVideoXTransformer3DModel._positional_table")

    (OUT / "manifest.json").write_text(json.dumps({"description": DESCRIPTION, "files": manifest}, indent=1) + "\n")


if __name__ == "__main__":
    main()
