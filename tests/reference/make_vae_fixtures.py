#!/usr/bin/env python3
"""Generate VAE parity fixtures (random-weight AutoencoderKLCogVideoX models + diffusers golden outputs).

Run from the repository root with the reference environment (torch + diffusers, never runtime deps of cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_vae_fixtures.py

Writes (everything under tests/fixtures/vae/, which is deleted and recreated):
  <model>/, <model>_f16/, <model>_bf16/   diffusers save_pretrained(safe_serialization=True) directories
  <model>.npz                             inputs and golden outputs of all cases of that model (and its 16-bit copies)
  manifest.json                           one entry per case (see tests/test_vae_parity.py)
  run_dtype.json, run_dtype.npz           run-dtype cases: the float32 folders loaded with torch_dtype float16 /
                                          bfloat16 (RUN_DTYPE_CASES; see tests/test_dtype_parity.py)

Golden outputs always come from diffusers in float32; the 16-bit files are loaded with torch_dtype=float32.
The script is deterministic (fixed torch / numpy seeds, fixed zip timestamps).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX

from _reference_common import print_file_sizes, recreate_dir, rerandomize_vae, rounded_normal, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "vae"

BLOCKS = 4
MODELS = {
    # diffusers' own model-level test config (tests/models/autoencoders/test_models_autoencoder_cogvideox.py)
    "tiny": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * BLOCKS,
        up_block_types=("CogVideoXUpBlock3D",) * BLOCKS,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ),
    # More channels / layers, non-default eps, scaling factor and sample size (=> default tile sizes 32x48 px,
    # 4x6 latents, so the *default* tiling parameters are reachable at small sizes). Channel change 8 -> 16 gives
    # conv_shortcut layers in encoder.down_blocks.1 and decoder.up_blocks.3.
    "mid": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * BLOCKS,
        up_block_types=("CogVideoXUpBlock3D",) * BLOCKS,
        block_out_channels=(8, 16, 16, 16),
        latent_channels=8,
        layers_per_block=2,
        norm_num_groups=4,
        norm_eps=1e-5,
        temporal_compression_ratio=4,
        sample_height=64,
        sample_width=96,
        scaling_factor=0.7,
    ),
}
SEEDS = {"tiny": 1234, "mid": 5678}
WEIGHT_GAIN = 1.0  # conv weights ~ N(0, (gain^2 / fan_in)): decoder output std ~0.9, not saturated


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def build_model(name: str) -> AutoencoderKLCogVideoX:
    torch.manual_seed(SEEDS[name])
    model = AutoencoderKLCogVideoX(**MODELS[name]).eval()
    # "mid": two logvar channels outside [-30, 20], so DiagonalGaussianDistribution's clamp is exercised
    rerandomize_vae(model, SEEDS[name] + 1, weight_gain=WEIGHT_GAIN, clamp_logvar_channels=(name == "mid"))
    return model


def load_fp32(model_dir: Path) -> AutoencoderKLCogVideoX:
    m = AutoencoderKLCogVideoX.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    for p in m.parameters():
        assert p.dtype == torch.float32
    return m


def pixel_input(rng: np.random.Generator, shape) -> np.ndarray:
    # like real 8-bit video frames mapped to [-1, 1]: k / 127.5 - 1, k in 0..255
    k = rng.integers(0, 256, size=shape)
    return (k / 127.5 - 1.0).astype(np.float32)


def tiling_info(vae: AutoencoderKLCogVideoX, op: str, shape) -> dict:
    """Tile grid exactly as diffusers computes it (tiled_decode / tiled_encode), plus the resulting output size."""
    H, W = shape[-2], shape[-1]
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    if op == "decode":
        triggered = W > vae.tile_latent_min_width or H > vae.tile_latent_min_height
        step_h = int(vae.tile_latent_min_height * (1 - vae.tile_overlap_factor_height))
        step_w = int(vae.tile_latent_min_width * (1 - vae.tile_overlap_factor_width))
        tile_h, tile_w = vae.tile_latent_min_height, vae.tile_latent_min_width
        blend_h = int(vae.tile_sample_min_height * vae.tile_overlap_factor_height)
        blend_w = int(vae.tile_sample_min_width * vae.tile_overlap_factor_width)
        limit_h = vae.tile_sample_min_height - blend_h
        limit_w = vae.tile_sample_min_width - blend_w

        def out_size(n):  # tile of n latents decodes to 8n pixels
            return n * f
    else:
        triggered = W > vae.tile_sample_min_width or H > vae.tile_sample_min_height
        step_h = int(vae.tile_sample_min_height * (1 - vae.tile_overlap_factor_height))
        step_w = int(vae.tile_sample_min_width * (1 - vae.tile_overlap_factor_width))
        tile_h, tile_w = vae.tile_sample_min_height, vae.tile_sample_min_width
        blend_h = int(vae.tile_latent_min_height * vae.tile_overlap_factor_height)
        blend_w = int(vae.tile_latent_min_width * vae.tile_overlap_factor_width)
        limit_h = vae.tile_latent_min_height - blend_h
        limit_w = vae.tile_latent_min_width - blend_w

        def out_size(n):  # n pixels -> latents (3 stride-2 convs with right/bottom pad 1)
            for _ in range(len(vae.config.block_out_channels) - 1):
                n = (n + 1 - 3) // 2 + 1
            return n

    rows = list(range(0, H, step_h))
    cols = list(range(0, W, step_w))
    out_h = sum(min(out_size(min(tile_h, H - i)), limit_h) for i in rows)
    out_w = sum(min(out_size(min(tile_w, W - j)), limit_w) for j in cols)
    regular_h = H * f if op == "decode" else out_size(H)
    regular_w = W * f if op == "decode" else out_size(W)
    return dict(
        triggered=bool(triggered),
        tile_rows=len(rows),
        tile_cols=len(cols),
        tile_count=len(rows) * len(cols),
        stride=[step_h, step_w],
        tile_size=[tile_h, tile_w],
        blend_extent=[blend_h, blend_w],
        row_limit=[limit_h, limit_w],
        predicted_out_hw=[out_h, out_w],
        untiled_out_hw=[regular_h, regular_w],
        output_size_matches_untiled=(out_h == regular_h and out_w == regular_w),
        # spec §12 item 1: the tile stride (in input units) and the kept size (in output units) describe the same
        # distance only if stride * 8 == kept (decode) or stride == kept * 8 (encode)
        stride_matches_kept_size=(
            [step_h * f, step_w * f] == [limit_h, limit_w]
            if op == "decode"
            else [step_h, step_w] == [limit_h * f, limit_w * f]
        ),
    )


def num_frame_batches(op: str, frames: int) -> int:
    bs = 2 if op == "decode" else 8
    return max(frames // bs, 1)


def configure(vae: AutoencoderKLCogVideoX, case: dict) -> tuple[dict | None, dict | None]:
    """Puts `vae` in the state a case needs (slicing, tiling with its arguments, else __init__'s tile defaults);
    returns (effective tiling values, tiling_info) or (None, None) without tiling."""
    vae.disable_slicing()
    vae.disable_tiling()
    # restore __init__ tile defaults (enable_tiling mutates them)
    sh, sw = vae.config.sample_height, vae.config.sample_width
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_height, vae.tile_sample_min_width = sh // 2, sw // 2
    vae.tile_latent_min_height = int(vae.tile_sample_min_height / f)
    vae.tile_latent_min_width = int(vae.tile_sample_min_width / f)
    vae.tile_overlap_factor_height, vae.tile_overlap_factor_width = 1 / 6, 1 / 5
    if case["slicing"]:
        vae.enable_slicing()
    if case["tiling"] is None:
        return None, None
    vae.enable_tiling(**case["tiling"])
    tiling_rec = {
        "tile_sample_min_height": vae.tile_sample_min_height,
        "tile_sample_min_width": vae.tile_sample_min_width,
        "tile_overlap_factor_height": vae.tile_overlap_factor_height,
        "tile_overlap_factor_width": vae.tile_overlap_factor_width,
    }
    info = tiling_info(vae, case["op"], case["shape"])
    assert info["triggered"], (case["name"], info)
    assert info["tile_count"] > 1, (case["name"], info)
    return tiling_rec, info


def forward(vae: AutoencoderKLCogVideoX, op: str, x_np: np.ndarray) -> dict:
    """decode -> {"sample"}, encode -> {"mean", "logvar"} (torch tensors)."""
    x = torch.from_numpy(x_np.copy())
    if op == "decode":
        return {"sample": vae.decode(x).sample}
    dist = vae.encode(x).latent_dist
    return {"mean": dist.mean, "logvar": dist.logvar}


# ----------------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------------

T_CONSISTENT = dict(  # stride == kept size: 32 px tiles (4 latents), stride 3 latents = 24 px = 32 - int(32/4)
    tile_sample_min_height=32,
    tile_sample_min_width=48,
    tile_overlap_factor_height=1 / 4,
    tile_overlap_factor_width=1 / 6,
)
T_MISMATCH = dict(  # spec §12 item 1: stride 1 latent (8 px) but kept size 16 - 4 = 12 px -> output larger than 8x
    tile_sample_min_height=16,
    tile_sample_min_width=24,
    tile_overlap_factor_height=1 / 4,
    tile_overlap_factor_width=1 / 6,
)
T_DEFAULT: dict = {}  # enable_tiling() with no arguments: the model's __init__ defaults


def cases_for(model: str) -> list[dict]:
    """Each case: name, variant (""/"_f16"/"_bf16"), op, input shape, slicing, tiling kwargs or None."""
    L = MODELS[model]["latent_channels"]
    C = MODELS[model]["in_channels"]
    cs: list[dict] = []

    def add(name, op, shape, slicing=False, tiling=None, variants=("",), input_from=None, note=None):
        for v in variants:
            cs.append(
                dict(
                    name=f"{model}{v}_{name}",
                    base=name,
                    variant=v,
                    op=op,
                    shape=tuple(shape),
                    slicing=slicing,
                    tiling=tiling,
                    input_from=input_from,
                    note=note,
                )
            )

    sixteen = ("", "_f16", "_bf16")
    if model == "tiny":
        # decode: latent frame counts 1..5 (frame batches [0,1) / [0,2) / [0,3) / [0,2),[2,4) / [0,3),[3,5)),
        # 3x5 latents
        for F in (1, 2, 3, 4, 5):
            add(f"decode_f{F}", "decode", (1, L, F, 3, 5), variants=sixteen if F == 3 else ("",))
        add("decode_b2", "decode", (2, L, 3, 2, 3))
        add("decode_b2_slicing", "decode", (2, L, 3, 2, 3), slicing=True, input_from="decode_b2")
        # default tiling parameters (240x360 px tiles = 30x45 latents, factors 1/6, 1/5). A full 2-D grid would need
        # >= 31x46 latents (a 248x368 output, 1.1 MB), so use two thin grids: 2x1 tiles (vertical blend, extent 40 px)
        # and 1x2 tiles (horizontal blend, extent 72 px). 2-D grids are covered by the custom-parameter cases.
        add("decode_tiling_default_rows", "decode", (1, L, 1, 31, 6), tiling=T_DEFAULT)
        add("decode_tiling_default_cols", "decode", (1, L, 1, 4, 46), tiling=T_DEFAULT)
        # custom tiling with consistent stride; 5 latent frames = two frame batches [0,3), [3,5) inside each tile;
        # 5x6 latents: triggered by the height only (W == tile width is not "greater"), yet 2x2 tiles; the last tile
        # column is 1 latent (8 px) thin, i.e. fully blended (extent min(48, 8, 8) = 8)
        add("decode_tiling_custom_f5", "decode", (1, L, 5, 5, 6), tiling=T_CONSISTENT)
        add("decode_tiling_custom_b2_slicing", "decode", (2, L, 1, 5, 7), slicing=True, tiling=T_CONSISTENT)
        add(
            "decode_tiling_custom_b2",
            "decode",
            (2, L, 1, 5, 7),
            tiling=T_CONSISTENT,
            input_from="decode_tiling_custom_b2_slicing",
        )
        add(
            "decode_tiling_mismatch",
            "decode",
            (1, L, 1, 6, 10),
            tiling=T_MISMATCH,
            note="diffusers' tile stride (8 px) and kept size (12/20 px) disagree: output larger than 8x latent",
        )
        # encode: pixel frame counts 1, 9, 17 (standard), 12 (even: one 12-frame batch), 5 at odd-ish size 20x28
        for F in (1, 9, 17):
            add(f"encode_f{F}", "encode", (1, C, F, 16, 24), variants=sixteen if F == 9 else ("",))
        add("encode_f12", "encode", (1, C, 12, 16, 24))
        add("encode_f5_20x28", "encode", (1, C, 5, 20, 28))
        add("encode_b2", "encode", (2, C, 9, 16, 24))
        add("encode_b2_slicing", "encode", (2, C, 9, 16, 24), slicing=True, input_from="encode_b2")
        # tiled encode with the default parameters (240x360 px tiles, blend 5x9 latents, kept 25x36): thin grids
        # 2x1 (248x48 px) and 1x2 (32x368 px), as for decode
        add("encode_tiling_default_rows", "encode", (1, C, 1, 248, 48), tiling=T_DEFAULT)
        add("encode_tiling_default_cols", "encode", (1, C, 1, 32, 368), tiling=T_DEFAULT)
        add("encode_tiling_custom_f9", "encode", (1, C, 9, 56, 88), tiling=T_CONSISTENT)
        add(
            "encode_tiling_mismatch",
            "encode",
            (1, C, 1, 32, 48),
            tiling=T_MISMATCH,
            note="pixel stride 12 px = 1.5 latents, blend extent 0, kept 2 latents: output larger than H/8",
        )
    else:
        for F in (1, 2, 3, 4, 5):
            add(f"decode_f{F}", "decode", (1, L, F, 2, 3), variants=sixteen if F == 3 else ("",))
        add("decode_b2_slicing", "decode", (2, L, 2, 2, 3), slicing=True)
        # default tiling of this config: 32x48 px tiles (4x6 latents), factors 1/6, 1/5 -> stride 3x4 latents but
        # kept size 27x39 px: output 43x63 for 5x7 latents (not 40x56)
        add(
            "decode_tiling_default",
            "decode",
            (1, L, 2, 5, 7),
            tiling=T_DEFAULT,
            note="default tiling for sample 64x96: stride 24x32 px, kept 27x39 px -> output larger than 8x latent",
        )
        add("decode_tiling_custom", "decode", (1, L, 1, 7, 11), tiling=T_CONSISTENT, variants=sixteen)
        for F in (1, 9, 17):
            add(f"encode_f{F}", "encode", (1, C, F, 16, 24), variants=sixteen if F == 9 else ("",))
        add("encode_b2_slicing", "encode", (2, C, 1, 16, 24), slicing=True)
        add(
            "encode_tiling_default",
            "encode",
            (1, C, 1, 40, 56),
            tiling=T_DEFAULT,
            note="default tiling for sample 64x96: 32x48 px tiles, stride 26x38 px but kept 4x5 latents (32x40 px), "
            "blend extent 0x1; the output size happens to equal the untiled one (5x7) but the tiles are misaligned",
        )
        add("encode_tiling_custom", "encode", (1, C, 1, 56, 88), tiling=T_CONSISTENT)
    return cs


# run-dtype cases (issue 7 item 1): the float32 checkpoint loaded with torch_dtype float16 / bfloat16. Base case name
# -> run dtypes. The reference is diffusers' own loading path, `from_pretrained(<f32 dir>, torch_dtype=<dtype>)`, then
# `.to(torch.float32)`: the same 16-bit weights, computed in float32 (cogvideo_c keeps the weights in the run dtype and
# computes in float32). Where the 16-bit *file* case of the same input exists, its golden is reused (asserted equal);
# the others (slicing and tiling in 16 bits) add outputs to run_dtype.npz.
BOTH = ("float16", "bfloat16")
RUN_DTYPE_CASES = {
    "tiny": {
        "decode_f3": BOTH,
        "encode_f9": BOTH,
        "decode_b2_slicing": ("float16",),
        "encode_b2_slicing": ("bfloat16",),
        "encode_tiling_custom_f9": ("float16",),
    },
    "mid": {"decode_f3": BOTH, "decode_tiling_custom": BOTH, "encode_f9": BOTH},
}
RUN_DTYPE_NPZ = "run_dtype.npz"
FILE_VARIANT = {"float16": "_f16", "bfloat16": "_bf16"}
TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def run_dtype_cases(model_name, dirs, loaded, arrays, inputs, run_arrays) -> list[dict]:
    """The RUN_DTYPE_CASES of one model: diffusers loads the float32 folder with torch_dtype=<dtype> and computes in
    float32. Reuses the 16-bit file case's golden where it exists (bit-identical: asserted), else adds outputs to
    run_arrays."""
    cases = {c["base"]: c for c in cases_for(model_name) if c["variant"] == ""}
    entries = []
    for dtype in BOTH:
        vae = AutoencoderKLCogVideoX.from_pretrained(str(dirs[""]), torch_dtype=TORCH_DTYPE[dtype]).eval()
        assert {p.dtype for p in vae.parameters()} == {TORCH_DTYPE[dtype]}, (model_name, dtype)
        vae = vae.to(torch.float32)
        # the same weights as the 16-bit file (model.to(dtype).save_pretrained) loaded in float32
        file_sd, sd = loaded[FILE_VARIANT[dtype]].state_dict(), vae.state_dict()
        assert sd.keys() == file_sd.keys() and all(torch.equal(sd[k], file_sd[k]) for k in sd), (model_name, dtype)
        for base, dtypes in RUN_DTYPE_CASES[model_name].items():
            if dtype not in dtypes:
                continue
            case = cases[base]
            in_key = inputs[case["input_from"] or base]
            tiling_rec, _ = configure(vae, case)
            out = {k: t.contiguous().numpy() for k, t in forward(vae, case["op"], arrays[in_key]).items()}
            file_keys = {k: f"{model_name}{FILE_VARIANT[dtype]}_{base}__{k}" for k in out}
            if all(key in arrays for key in file_keys.values()):
                for k, key in file_keys.items():
                    assert np.array_equal(out[k], arrays[key]), (model_name, dtype, base, k)
                out_keys, npz = file_keys, f"{model_name}.npz"
            else:
                out_keys, npz = {k: f"{model_name}_{base}__{dtype}__{k}" for k in out}, RUN_DTYPE_NPZ
                run_arrays.update({out_keys[k]: a for k, a in out.items()})
            f32 = {k: arrays[f"{model_name}_{base}__{k}"] for k in out}
            entries.append(
                {
                    "name": f"{model_name}_{base}__{dtype}",
                    "model_dir": dirs[""].name,
                    "torch_dtype": dtype,
                    "op": case["op"],
                    "input": in_key,
                    "input_shape": list(case["shape"]),
                    "outputs": out_keys,
                    "npz": npz,
                    "slicing": case["slicing"],
                    "tiling": tiling_rec,
                    "tiling_args": case["tiling"],
                    "same_as_file_case": f"{model_name}{FILE_VARIANT[dtype]}_{base}" if npz != RUN_DTYPE_NPZ else None,
                    # how far the 16-bit weights move the output from the float32 golden (so a run that ignored
                    # torch_dtype would be seen)
                    "max_abs_diff_vs_float32": {k: float(np.abs(out[k] - f32[k]).max()) for k in out},
                }
            )
            print(f"  {entries[-1]['name']:40s} {npz}: vs float32 {entries[-1]['max_abs_diff_vs_float32']}")
    return entries


def main() -> int:
    torch.set_grad_enabled(False)
    diffusers.utils.logging.set_verbosity_error()  # silence the ".to(float16) with no fp32 modules" warning
    recreate_dir(OUT)

    manifest_cases = []
    run_cases: list[dict] = []
    run_arrays: dict[str, np.ndarray] = {}
    for model_name in MODELS:
        # ---- models: f32 + 16-bit copies (built once, saved, reloaded through from_pretrained in fp32) ----
        model = build_model(model_name)
        dirs = {"": OUT / model_name, "_f16": OUT / f"{model_name}_f16", "_bf16": OUT / f"{model_name}_bf16"}
        model.save_pretrained(str(dirs[""]), safe_serialization=True)
        model.to(torch.float16).save_pretrained(str(dirs["_f16"]), safe_serialization=True)
        model = build_model(model_name)  # fresh fp32 copy (avoid any f32->f16->f32 round trip)
        model.to(torch.bfloat16).save_pretrained(str(dirs["_bf16"]), safe_serialization=True)
        del model
        loaded = {v: load_fp32(d) for v, d in dirs.items()}

        rng = np.random.default_rng(SEEDS[model_name])
        arrays: dict[str, np.ndarray] = {}
        inputs: dict[str, str] = {}  # base case name -> npz key of its input
        npz_name = f"{model_name}.npz"

        for case in cases_for(model_name):
            name, op, shape = case["name"], case["op"], case["shape"]
            # ---- input (shared between variants and with input_from) ----
            base_in = case["input_from"] or case["base"]
            if base_in not in inputs:
                key = f"{model_name}_{base_in}__input"
                arrays[key] = rounded_normal(rng, shape) if op == "decode" else pixel_input(rng, shape)
                inputs[base_in] = key
            in_key = inputs[base_in]
            x_np = arrays[in_key]
            assert x_np.shape == shape, (name, x_np.shape, shape)

            # ---- a fresh fp32 model state for this case ----
            vae = loaded[case["variant"]]
            tiling_rec, info = configure(vae, case)

            # ---- count sub-network calls to prove which path ran ----
            calls = {"n": 0, "tiled": 0}
            net = vae.decoder if op == "decode" else vae.encoder
            hook = net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
            tiled_fn_name = "tiled_decode" if op == "decode" else "tiled_encode"
            orig_tiled = getattr(vae, tiled_fn_name)

            def counting(*a, _orig=orig_tiled, **k):
                calls["tiled"] += 1
                return _orig(*a, **k)

            setattr(vae, tiled_fn_name, counting)
            try:
                out = forward(vae, op, x_np)
            finally:
                hook.remove()
                delattr(vae, tiled_fn_name)

            B, F = shape[0], shape[2]
            slices = B if (case["slicing"] and B > 1) else 1
            tiles = info["tile_count"] if info else 1
            expect_calls = slices * tiles * num_frame_batches(op, F)
            assert calls["n"] == expect_calls, (name, calls, expect_calls)
            assert calls["tiled"] == (slices if info else 0), (name, calls)

            out_keys = {}
            out_shapes = {}
            for k, t in out.items():
                a = t.detach().to(torch.float32).contiguous().numpy()
                assert np.isfinite(a).all(), (name, k)
                key = f"{name}__{k}"
                arrays[key] = a
                out_keys[k] = key
                out_shapes[k] = list(a.shape)
            if info:
                main_out = out["sample"] if op == "decode" else out["mean"]
                assert list(main_out.shape[-2:]) == info["predicted_out_hw"], (name, main_out.shape, info)

            entry = {
                "name": name,
                "model_dir": dirs[case["variant"]].name,
                "weights_dtype": {"": "float32", "_f16": "float16", "_bf16": "bfloat16"}[case["variant"]],
                "op": op,
                "input": in_key,
                "input_shape": list(shape),
                "outputs": out_keys,
                "output_shapes": out_shapes,
                "slicing": case["slicing"],
                "tiling": tiling_rec,
                # the keyword arguments actually passed to enable_tiling ({} = the model's defaults); "tiling" holds
                # the resulting effective values
                "tiling_args": case["tiling"],
                "npz": npz_name,
                "decoder_or_encoder_calls": calls["n"],
            }
            if info:
                entry["tiling_info"] = info
            if case["note"]:
                entry["note"] = case["note"]
            manifest_cases.append(entry)
            stats = " ".join(
                f"{k}{out_shapes[k]} std={float(t.std()):.3f} max|.|={float(t.abs().max()):.3f}" for k, t in out.items()
            )
            extra = ""
            if info:
                extra = (
                    f" tiles={info['tile_rows']}x{info['tile_cols']} stride={info['stride']} "
                    f"kept={info['row_limit']} blend={info['blend_extent']}"
                    f"{'' if info['stride_matches_kept_size'] else ' (stride != kept size)'}"
                    f"{'' if info['output_size_matches_untiled'] else ' (output size != untiled)'}"
                )
            print(f"  {name:40s} {op} in{list(shape)} -> {stats}{extra}")

        run_cases += run_dtype_cases(model_name, dirs, loaded, arrays, inputs, run_arrays)
        save_npz(OUT / npz_name, arrays)
        with zipfile.ZipFile(OUT / npz_name) as zf:
            big = sorted(zf.infolist(), key=lambda i: -i.compress_size)[:8]
            print(
                f"  {npz_name}: largest members "
                + ", ".join(f"{i.filename} {i.compress_size / 1024:.0f}K" for i in big)
            )

    manifest = {
        "description": "AutoencoderKLCogVideoX parity fixtures; goldens computed by diffusers in float32 on CPU "
        "(16-bit weight files loaded with torch_dtype=float32). Made by tests/reference/make_vae_fixtures.py.",
        "made_with": versions(torch, diffusers, np, python=True),
        "tolerance_max_abs": 1e-4,
        "models": {
            name: {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
            for name, cfg in MODELS.items()
        },
        "cases": manifest_cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    save_npz(OUT / RUN_DTYPE_NPZ, run_arrays)
    run_manifest = {
        "description": "AutoencoderKLCogVideoX run-dtype parity fixtures: the float32 checkpoints loaded with "
        "torch_dtype float16 / bfloat16. Goldens: diffusers AutoencoderKLCogVideoX.from_pretrained(<f32 dir>, "
        "torch_dtype=<dtype>).to(torch.float32), i.e. the 16-bit weights computed in float32 on CPU (bit-identical to "
        "the 16-bit file cases, which are reused). Made by tests/reference/make_vae_fixtures.py.",
        "made_with": versions(torch, diffusers, np, python=True),
        "cases": run_cases,
    }
    (OUT / "run_dtype.json").write_text(json.dumps(run_manifest, indent=1) + "\n")

    total = print_file_sizes(OUT)
    print(f"{len(manifest_cases)} cases; total size of {OUT.relative_to(ROOT)}: {total / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
