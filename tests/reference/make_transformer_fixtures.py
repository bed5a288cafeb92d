#!/usr/bin/env python3
"""Generate CogVideoXTransformer3DModel parity fixtures (random-weight models + diffusers golden outputs).

Run from the repository root with the reference environment (torch + diffusers, never runtime deps of cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_transformer_fixtures.py

Writes (everything under tests/fixtures/transformer/, which is deleted and recreated):
  <model>/, <model>_f16/, <model>_bf16/   diffusers save_pretrained(safe_serialization=True) directories
  <model>.npz                             inputs, RoPE tables and golden outputs of all cases of that model
  manifest.json                           one entry per case (see tests/test_transformer_parity.py)
  run_dtype.json, run_dtype.npz           run-dtype cases: the float32 folders loaded with torch_dtype float16 /
                                          bfloat16 (RUN_DTYPE_CASES; see tests/test_dtype_parity.py)

Golden outputs always come from diffusers in float32 on CPU; the 16-bit weight files are loaded with
torch_dtype=float32. For RoPE models the (freqs_cos, freqs_sin) tables are produced by the pipeline's own
CogVideoXPipeline._prepare_rotary_positional_embeddings (height = 8 * latent H, width = 8 * latent W, num_frames =
latent frames), cross-checked against an independent numpy re-derivation, and passed as image_rotary_emb exactly as
the pipeline does. The script is deterministic (fixed seeds, fixed zip timestamps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import diffusers
import numpy as np
import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from _reference_common import (
    print_file_sizes,
    recreate_dir,
    rerandomize_transformer,
    rounded_normal,
    save_npz,
    versions,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "transformer"
VAE_SCALE_SPATIAL = 8  # the pipeline's vae_scale_factor_spatial for every released VAE

# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------

# diffusers' own model-level test config (tests/models/transformers/test_models_transformer_cogvideox.py)
_TINY = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    time_embed_dim=2,
    text_embed_dim=8,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=8,
    patch_size=2,
    patch_size_t=None,
    temporal_compression_ratio=4,
    max_text_seq_length=8,
)
_COMMON = dict(num_layers=2, time_embed_dim=16, text_embed_dim=24, max_text_seq_length=8, patch_size=2)

MODELS = {
    # 2b-style, diffusers' tiny test config (sincos; sample_frames=8 never equals a (K-1)*4+1 frame count, so the
    # stored table is never used and the sincos table is always recomputed)
    "t2b_tiny": dict(_TINY),
    # 2b-style: sincos table, D = 48, non-square sample (8x12 latents), sample_frames=9 (3 latent frames)
    "t2b": dict(
        _COMMON,
        num_attention_heads=3,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        sample_height=8,
        sample_width=12,
        sample_frames=9,
    ),
    # 5b-style: RoPE only (no absolute table), head dim 32 -> RoPE split t/h/w = 8/12/12
    "t5b": dict(
        _COMMON,
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        sample_height=8,
        sample_width=12,
        sample_frames=9,
        use_rotary_positional_embeddings=True,
    ),
    # 5b-I2V-style: RoPE + learned (persistent) positional table, in_channels 2x
    "t5b_i2v": dict(
        _COMMON,
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=8,
        out_channels=4,
        sample_height=8,
        sample_width=12,
        sample_frames=9,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ),
    # 1.5-style: patch_size_t=2 (Linear patch embed, always with bias), patch_bias=False, RoPE 'slice' grids,
    # head dim 16 -> RoPE split 4/6/6; sample 8x8 latents (base grid 4x4); sample_frames=13 (4 latent frames)
    "t15": dict(
        _COMMON,
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        sample_height=8,
        sample_width=8,
        sample_frames=13,
        patch_size_t=2,
        patch_bias=False,
        use_rotary_positional_embeddings=True,
    ),
    # 1.5-I2V-style: + ofs embedding (ofs_embed_dim must equal time_embed_dim: emb + ofs_emb), in_channels 2x
    "t15_i2v": dict(
        _COMMON,
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=8,
        out_channels=4,
        sample_height=8,
        sample_width=8,
        sample_frames=13,
        patch_size_t=2,
        patch_bias=False,
        use_rotary_positional_embeddings=True,
        ofs_embed_dim=16,
    ),
    # diffusers' tiny 1.5 test config (head dim 8: its RoPE split 2/3/3 is invalid, so the test passes no RoPE)
    "t15_tiny": dict(_TINY, patch_size_t=2, use_rotary_positional_embeddings=True),
}
SEEDS = {name: 1000 + 17 * i for i, name in enumerate(MODELS)}
# 16-bit copies (the released 2b ships fp16, 5b / 1.5 ship bf16); the tiny 2b gets both
SIXTEEN = {
    "t2b_tiny": ("_f16", "_bf16"),
    "t2b": ("_f16",),
    "t5b": ("_bf16",),
    "t5b_i2v": ("_bf16",),
    "t15": ("_bf16",),
    "t15_i2v": (),  # (size budget: the fixtures must stay under 4 MiB)
    "t15_tiny": (),
}
VARIANT_DTYPE = {"": torch.float32, "_f16": torch.float16, "_bf16": torch.bfloat16}
VARIANT_NAME = {"": "float32", "_f16": "float16", "_bf16": "bfloat16"}

# run-dtype cases (issue 7 item 1): the float32 checkpoint loaded with torch_dtype float16 / bfloat16; base case name
# -> run dtypes. Reference: diffusers' own loading path, from_pretrained(<f32 dir>, torch_dtype=<dtype>) then
# .to(torch.float32) (the 16-bit weights computed in float32; cogvideo_c keeps the weights in the run dtype and
# computes in float32). Where the 16-bit file case exists its golden is reused (asserted bit-identical); the others add
# outputs to run_dtype.npz.
BOTH = ("float16", "bfloat16")
RUN_DTYPE_CASES = {
    "t2b_tiny": {"test_config_b2_f1": BOTH},
    "t2b": {"f3_sample": BOTH, "f2_12x8_b2": ("float16",)},  # f3_sample: the stored sincos table
    "t5b": {"f2": BOTH, "f2_8x16": ("bfloat16",)},
    "t5b_i2v": {"f3_sample": ("bfloat16",)},  # learned (persistent) positional table
    "t15": {"f2": BOTH, "f4_8x6_b2": ("bfloat16",)},
    "t15_i2v": {"f2_ofs2": ("float16",)},
    "t15_tiny": {},
}
FILE_VARIANT = {"float16": "_f16", "bfloat16": "_bf16"}
RUN_DTYPE_NPZ = "run_dtype.npz"

LEARNED_HW_ERROR = "It is currently not possible to generate videos at a different resolution"


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def build_model(name: str) -> CogVideoXTransformer3DModel:
    torch.manual_seed(SEEDS[name])
    model = CogVideoXTransformer3DModel(**MODELS[name]).eval()
    rerandomize_transformer(model, SEEDS[name] + 1)
    return model


def load_fp32(model_dir: Path) -> CogVideoXTransformer3DModel:
    m = CogVideoXTransformer3DModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    for p in m.parameters():
        assert p.dtype == torch.float32
    for b in m.buffers():
        assert b.dtype in (torch.float32, torch.float64), b.dtype
    return m


def call_kwargs(arrays: dict, keys: dict, rot) -> dict:
    """The model's forward arguments for a case (copies of its stored inputs)."""
    return dict(
        hidden_states=torch.from_numpy(arrays[keys["hidden_states"]].copy()),
        encoder_hidden_states=torch.from_numpy(arrays[keys["encoder_hidden_states"]].copy()),
        timestep=torch.from_numpy(arrays[keys["timestep"]].copy()),
        ofs=None if keys["ofs"] is None else torch.from_numpy(arrays[keys["ofs"]].copy()),
        image_rotary_emb=rot,
        return_dict=True,
    )


def run_dtype_cases(
    model_name: str, model_dir: Path, loaded: dict, arrays: dict, case_inputs: dict, run_arrays: dict
) -> list[dict]:
    """The RUN_DTYPE_CASES of one model: diffusers loads the float32 folder with torch_dtype=<dtype> and computes in
    float32. Reuses the 16-bit file case's golden where it exists (bit-identical: asserted), else adds the output to
    run_arrays."""
    entries = []
    for dtype in ("float16", "bfloat16"):
        bases = [b for b, dts in RUN_DTYPE_CASES[model_name].items() if dtype in dts]
        if not bases:
            continue
        torch_dtype = VARIANT_DTYPE[FILE_VARIANT[dtype]]
        model = CogVideoXTransformer3DModel.from_pretrained(str(model_dir), torch_dtype=torch_dtype).eval()
        assert {p.dtype for p in model.parameters()} == {torch_dtype}, (model_name, dtype)
        model = model.to(torch.float32)
        # the same weights as the 16-bit copy would hold (model.to(dtype) of the float32 weights)
        want_sd = {k: t.to(torch_dtype).float() for k, t in loaded[""].state_dict().items()}
        sd = model.state_dict()
        assert sd.keys() == want_sd.keys() and all(torch.equal(sd[k], want_sd[k]) for k in sd), (model_name, dtype)
        for base in bases:
            keys, rot, kind = case_inputs[base]
            a = model(**call_kwargs(arrays, keys, rot)).sample.contiguous().numpy()
            assert np.isfinite(a).all(), (model_name, base, dtype)
            file_key = f"{model_name}_{base}{FILE_VARIANT[dtype]}__sample"
            if file_key in arrays:
                assert np.array_equal(a, arrays[file_key]), (model_name, base, dtype)
                out_key, npz = file_key, f"{model_name}.npz"
            else:
                out_key, npz = f"{model_name}_{base}__{dtype}__sample", RUN_DTYPE_NPZ
                run_arrays[out_key] = a
            entries.append(
                {
                    "name": f"{model_name}_{base}__{dtype}",
                    "model": model_name,
                    "model_dir": model_dir.name,
                    "torch_dtype": dtype,
                    "npz_inputs": f"{model_name}.npz",
                    "inputs": dict(keys),
                    "rope": "pipeline" if rot is not None else "none",
                    "positional_embedding": kind,
                    "output": out_key,
                    "npz": npz,
                    "same_as_file_case": f"{model_name}_{base}{FILE_VARIANT[dtype]}" if npz != RUN_DTYPE_NPZ else None,
                    # how far the 16-bit weights move the output from the float32 golden
                    "max_abs_diff_vs_float32": float(np.abs(a - arrays[f"{model_name}_{base}__sample"]).max()),
                }
            )
            print(f"  {entries[-1]['name']:34s} {npz}: vs float32 {entries[-1]['max_abs_diff_vs_float32']:.3e}")
    return entries


def pipeline_rope(model: CogVideoXTransformer3DModel, height: int, width: int, num_frames: int):
    """The pipeline's own _prepare_rotary_positional_embeddings (called unbound on a stand-in `self`)."""
    stub = SimpleNamespace(vae_scale_factor_spatial=VAE_SCALE_SPATIAL, transformer=model)
    cos, sin = CogVideoXPipeline._prepare_rotary_positional_embeddings(stub, height, width, num_frames, "cpu")
    return cos.numpy(), sin.numpy()


# ---- independent numpy re-derivation (documents the arithmetic a C implementation must reproduce) ----


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) on CPU: start/end rounded to float32, step computed in float32,
    first half start + step*i, second half end - step*(n-1-i), each a fused multiply-add (one rounding)."""
    s, e = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([s], np.float32)
    step = np.float32((e - s) / np.float32(n - 1))
    out = np.empty(n, np.float32)
    for i in range(n):
        if i < n // 2:
            out[i] = np.float32(float(s) + float(step) * i)  # exact in double for these small values -> one rounding
        else:
            out[i] = np.float32(float(e) - float(step) * (n - 1 - i))
    return out


def _rope_1d(dim: int, pos: np.ndarray):
    freqs = (1.0 / (np.float32(10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    ang = np.outer(pos.astype(np.float32), freqs).astype(np.float32)
    return np.repeat(np.cos(ang), 2, axis=1), np.repeat(np.sin(ang), 2, axis=1)


def numpy_rope(cfg: dict, height: int, width: int, num_frames: int):
    p, p_t = cfg.get("patch_size", 2), cfg.get("patch_size_t")
    hd = cfg["attention_head_dim"]
    gh, gw = height // (VAE_SCALE_SPATIAL * p), width // (VAE_SCALE_SPATIAL * p)
    base_w, base_h = cfg["sample_width"] // p, cfg["sample_height"] // p
    if p_t is None:
        (top, left), (bottom, right) = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
        T = num_frames
        grid_h = _linspace_f32(top, bottom * (gh - 1) / gh, gh)
        grid_w = _linspace_f32(left, right * (gw - 1) / gw, gw)
        grid_t = _linspace_f32(0, T * (T - 1) / T, T)
        crop = [[top, left], [bottom, right]]
    else:
        T = (num_frames + p_t - 1) // p_t
        assert gh <= base_h and gw <= base_w, "'slice' grids need the grid to fit the config's sample size"
        grid_h = np.arange(gh, dtype=np.float32)
        grid_w = np.arange(gw, dtype=np.float32)
        grid_t = np.arange(T, dtype=np.float32)
        crop = None
    dt, dh = hd // 4, hd // 8 * 3
    ct, st = _rope_1d(dt, grid_t)
    ch, sh = _rope_1d(dh, grid_h)
    cw, sw = _rope_1d(dh, grid_w)

    def combine(a, b, c):
        a = np.broadcast_to(a[:, None, None, :], (T, gh, gw, a.shape[-1]))
        b = np.broadcast_to(b[None, :, None, :], (T, gh, gw, b.shape[-1]))
        c = np.broadcast_to(c[None, None, :, :], (T, gh, gw, c.shape[-1]))
        return np.concatenate([a, b, c], axis=-1).reshape(T * gh * gw, -1)

    return (
        combine(ct, ch, cw),
        combine(st, sh, sw),
        crop,
        dict(grid_h=[float(v) for v in grid_h], grid_w=[float(v) for v in grid_w], grid_t=[float(v) for v in grid_t]),
    )


# ----------------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------------


def cases_for(model: str) -> list[dict]:
    """Each case: base name, variants, B, F, H, W (latent), L (text length), timesteps (list or None = random),
    ofs (list or None), rope ('pipeline' / 'none' / None for non-RoPE models), expect_error, note."""
    cfg = MODELS[model]
    rope_model = cfg.get("use_rotary_positional_embeddings", False)
    L0 = cfg["max_text_seq_length"]
    cs: list[dict] = []

    def add(name, B, F, H, W, L=L0, t=None, ofs=None, rope="pipeline", variants=("",), error=None, note=None):
        cs.append(
            dict(
                base=name,
                variants=variants,
                B=B,
                F=F,
                H=H,
                W=W,
                L=L,
                t=t,
                ofs=ofs,
                rope=rope if rope_model else None,
                error=error,
                note=note,
            )
        )

    six = SIXTEEN[model]
    if model == "t2b_tiny":
        add(
            "test_config_b2_f1",
            2,
            1,
            8,
            8,
            t=[371, 925],
            variants=("",) + six,
            note="diffusers' model test inputs: hidden [2,1,4,8,8]; sincos recomputed for 1 frame",
        )
        add("f2", 1, 2, 8, 8, t=[999])
        add("f3_6x10", 1, 3, 6, 10, t=[0], note="non-square latents, sincos recomputed at 6x10")
    elif model == "t2b":
        add(
            "f3_sample",
            1,
            3,
            8,
            12,
            t=[500],
            variants=("",) + six,
            note="latent size == sample size and (F-1)*4+1 == sample_frames: the stored sincos table is used",
        )
        add("f1", 1, 1, 8, 12, t=[1], note="1 frame: table recomputed for 1 pixel frame")
        add("f2", 1, 2, 8, 12, t=[250])
        add("f2_6x10", 1, 2, 6, 10, t=[777], note="resolution != sample size: sincos table recomputed")
        add("f3_b2", 2, 3, 8, 12, t=[13, 901], note="batch 2, different timesteps")
        add("f2_12x8_b2", 2, 2, 12, 8, t=[640, 80], variants=("",) + six, note="portrait, larger than sample")
    elif model == "t5b":
        add("f1", 1, 1, 8, 12, t=[10], note="grid 4x6 == base 4x6: crop ((0,0),(4,6)), integer positions")
        add("f2", 1, 2, 8, 12, t=[333], variants=("",) + six)
        add("f3_b2", 2, 3, 8, 12, t=[999, 4], note="batch 2, different timesteps")
        add(
            "f2_8x16",
            1,
            2,
            8,
            16,
            t=[600],
            variants=("",) + six,
            note="grid 4x8 vs base 4x6: crop ((0,0),(3,6)), h positions linspace(0, 2.25, 4), w linspace(0, 5.25, 8)",
        )
        add(
            "f2_12x12",
            1,
            2,
            12,
            12,
            t=[123],
            note="grid 6x6 vs base 4x6: crop ((0,1),(4,5)), fractional h and w positions",
        )
        add("f1_4x6", 1, 1, 4, 6, t=[450], note="grid 2x3 (smaller than base): crop ((0,0),(4,6)), positions 0,2(,4)")
        add(
            "f2_2x16",
            1,
            2,
            2,
            16,
            t=[50],
            note="grid 1x8: resize_h round(0.75)=1, crop_top round(1.5)=2 (half-to-even); 1-point linspace = start",
        )
        add(
            "f1_16x2",
            1,
            1,
            16,
            2,
            t=[900],
            note="grid 8x1: resize_w round(0.5)=0 (half-to-even), crop ((0,3),(4,3)); w position 3",
        )
        add(
            "f3_text5", 1, 3, 8, 12, L=5, t=[700], note="text length 5 != max_text_seq_length (allowed without a table)"
        )
        add("f2_norope", 1, 2, 8, 12, t=[333], rope="none", note="image_rotary_emb=None: no positional information")
    elif model == "t5b_i2v":
        add("f3_sample", 1, 3, 8, 12, t=[321], variants=("",) + six, note="sample size: the learned table is added")
        add("f3_sample_b2", 2, 3, 8, 12, t=[42, 958])
        add(
            "f2_frames_mismatch",
            1,
            2,
            8,
            12,
            t=[640],
            note="(F-1)*4+1 != sample_frames: diffusers silently substitutes a freshly computed sincos table",
        )
        add("f3_norope", 1, 3, 8, 12, t=[321], rope="none", note="learned table, no RoPE")
        add(
            "f3_8x16_error",
            1,
            3,
            8,
            16,
            t=[1],
            rope="none",
            error=LEARNED_HW_ERROR,
            note="learned table with H/W != sample size raises ValueError",
        )
        add(
            "f1_6x12_error",
            1,
            1,
            6,
            12,
            t=[1],
            rope="none",
            error=LEARNED_HW_ERROR,
            note="H mismatch raises even though the frame count also differs",
        )
    elif model == "t15":
        add("f2", 1, 2, 8, 8, t=[400], variants=("",) + six, note="grid 4x4 == base: slice grids 0..3")
        add("f4_4x8", 1, 4, 4, 8, t=[88], note="grid 2x4 (< base 4x4): sliced tables; 2 frame groups")
        add("f4_8x6_b2", 2, 4, 8, 6, t=[999, 0], variants=("",) + six, note="batch 2, grid 4x3")
        add("f2_text5", 1, 2, 8, 8, L=5, t=[555], note="text length 5 != max_text_seq_length")
        add("f2_norope", 1, 2, 8, 8, t=[400], rope="none")
    elif model == "t15_i2v":
        add("f2_ofs2", 1, 2, 8, 8, t=[400], ofs=[2.0], variants=("",) + six, note="ofs = [2.0] as the pipeline passes")
        add("f4_b2_ofs1", 2, 4, 8, 6, t=[700, 30], ofs=[2.0], note="ofs of shape [1] broadcast over batch 2")
        add("f2_b2_ofs2", 2, 2, 4, 8, t=[250, 251], ofs=[2.0, 7.5], note="per-item ofs")
        add("f2_norope", 1, 2, 8, 8, t=[400], ofs=[2.0], rope="none")
    elif model == "t15_tiny":
        add(
            "test_config_b2_f2",
            2,
            2,
            8,
            8,
            t=[17, 640],
            rope="none",
            note="diffusers' 1.5 model test: hidden [2,2,4,8,8], no image_rotary_emb (head dim 8 cannot take RoPE)",
        )
    else:
        raise KeyError(model)
    return cs


def pos_embedding_kind(cfg: dict, F: int, H: int, W: int) -> str:
    rope = cfg.get("use_rotary_positional_embeddings", False)
    learned = cfg.get("use_learned_positional_embeddings", False)
    if rope and not learned:
        return "none"
    pre = (F - 1) * cfg.get("temporal_compression_ratio", 4) + 1
    same = H == cfg["sample_height"] and W == cfg["sample_width"] and pre == cfg["sample_frames"]
    if learned:
        if H != cfg["sample_height"] or W != cfg["sample_width"]:
            return "error"
        return "learned" if same else "sincos_recomputed"
    return "sincos_table" if same else "sincos_recomputed"


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def main() -> int:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    recreate_dir(OUT)

    manifest_cases = []
    run_cases: list[dict] = []
    run_arrays: dict[str, np.ndarray] = {}
    for model_name, cfg in MODELS.items():
        print(f"{model_name}: {cfg}")
        variants = ("",) + SIXTEEN[model_name]
        dirs = {v: OUT / f"{model_name}{v}" for v in variants}
        for v in variants:
            m = build_model(model_name)  # fresh fp32 copy each time (no f32 -> f16 -> f32 round trips)
            if v:
                m = m.to(VARIANT_DTYPE[v])
            m.save_pretrained(str(dirs[v]), safe_serialization=True)
            del m
        loaded = {v: load_fp32(d) for v, d in dirs.items()}
        ref = build_model(model_name)
        for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), loaded[""].state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), (n1, n2)
        del ref

        rng = np.random.default_rng(SEEDS[model_name])
        arrays: dict[str, np.ndarray] = {}
        npz_name = f"{model_name}.npz"
        case_inputs: dict[str, tuple] = {}  # base case name -> (input keys, RoPE tensors or None, positional kind)

        for case in cases_for(model_name):
            base = f"{model_name}_{case['base']}"
            B, F, H, W, L = case["B"], case["F"], case["H"], case["W"], case["L"]
            C = cfg["in_channels"]
            # ---- inputs (shared by all weight variants of the case) ----
            keys = {
                "hidden_states": f"{base}__hidden_states",
                "encoder_hidden_states": f"{base}__encoder_hidden_states",
                "timestep": f"{base}__timestep",
                "ofs": None,
                "freqs_cos": None,
                "freqs_sin": None,
            }
            arrays[keys["hidden_states"]] = rounded_normal(rng, (B, F, C, H, W))
            arrays[keys["encoder_hidden_states"]] = rounded_normal(rng, (B, L, cfg["text_embed_dim"]))
            t = case["t"] if case["t"] is not None else list(rng.integers(0, 1000, size=B))
            assert len(t) == B
            arrays[keys["timestep"]] = np.asarray(t, dtype=np.int64)
            if case["ofs"] is not None:
                keys["ofs"] = f"{base}__ofs"
                arrays[keys["ofs"]] = np.asarray(case["ofs"], dtype=np.float32)
            rope_args = rope_info = None
            rot = None
            if case["rope"] == "pipeline":
                height, width = H * VAE_SCALE_SPATIAL, W * VAE_SCALE_SPATIAL
                cos, sin = pipeline_rope(loaded[""], height, width, F)
                ncos, nsin, crop, grids = numpy_rope(cfg, height, width, F)
                rd = max(float(np.abs(cos - ncos).max()), float(np.abs(sin - nsin).max()))
                assert cos.shape == ncos.shape and rd <= 1e-6, (base, cos.shape, ncos.shape, rd)
                keys["freqs_cos"], keys["freqs_sin"] = f"{base}__freqs_cos", f"{base}__freqs_sin"
                arrays[keys["freqs_cos"]], arrays[keys["freqs_sin"]] = cos, sin
                rope_args = {"height": height, "width": width, "num_latent_frames": F}
                rope_info = {"crop_coords": crop, **grids, "numpy_rederivation_max_abs_diff": rd}
                rot = (torch.from_numpy(cos.copy()), torch.from_numpy(sin.copy()))

            kind = pos_embedding_kind(cfg, F, H, W)
            case_inputs[case["base"]] = (keys, rot, kind)
            for v in case["variants"]:
                name = base + v
                model = loaded[v]
                kwargs = call_kwargs(arrays, keys, rot)
                out_key = None
                out_shape = None
                if case["error"] is not None:
                    assert kind == "error", (name, kind)
                    try:
                        model(**kwargs)
                    except ValueError as exc:
                        assert case["error"] in str(exc), (name, str(exc))
                    else:
                        raise AssertionError(f"{name}: diffusers did not raise")
                    stats = f"raises ValueError({case['error'][:40]!r}...)"
                else:
                    out = model(**kwargs).sample
                    a = out.detach().to(torch.float32).contiguous().numpy()
                    assert np.isfinite(a).all(), name
                    assert a.shape == (B, F, cfg["out_channels"], H, W), (name, a.shape)
                    out_key = f"{name}__sample"
                    arrays[out_key] = a
                    out_shape = list(a.shape)
                    stats = f"out{out_shape} std={float(a.std()):.3f} max|.|={float(np.abs(a).max()):.3f}"
                    if B == 2:
                        stats += f" |item0-item1|max={float(np.abs(a[0] - a[1]).max()):.3f}"
                entry = {
                    "name": name,
                    "model": model_name,
                    "model_dir": dirs[v].name,
                    "weights_dtype": VARIANT_NAME[v],
                    "npz": npz_name,
                    "inputs": dict(keys),
                    "input_shapes": {k: list(arrays[key].shape) for k, key in keys.items() if key is not None},
                    "rope": case["rope"],
                    "rope_args": rope_args,
                    "rope_info": rope_info,
                    "positional_embedding": kind,
                    "output": out_key,
                    "output_shape": out_shape,
                    "expect_error": case["error"],
                }
                if case["note"]:
                    entry["note"] = case["note"]
                manifest_cases.append(entry)
                rs = ""
                if rope_info is not None and rope_info["crop_coords"] is not None:
                    rs = f" crop={rope_info['crop_coords']}"
                print(
                    f"  {name:34s} B{B} F{F} {H}x{W} L{L} t={t} ofs={case['ofs']} rope={case['rope']} "
                    f"pos={kind}{rs} -> {stats}"
                )

        # ---- path checks: RoPE / learned table / ofs must change the output ----
        _path_checks(model_name, cfg, loaded[""], rng)

        run_cases += run_dtype_cases(model_name, dirs[""], loaded, arrays, case_inputs, run_arrays)
        save_npz(OUT / npz_name, arrays)

    manifest = {
        "description": "CogVideoXTransformer3DModel parity fixtures; goldens computed by diffusers in float32 on CPU "
        "(16-bit weight files loaded with torch_dtype=float32); RoPE tables from the pipeline's "
        "_prepare_rotary_positional_embeddings with height=8*H, width=8*W, num_frames=F (latent). "
        "Made by tests/reference/make_transformer_fixtures.py.",
        "made_with": versions(torch, diffusers, np, python=True),
        "tolerance": "max abs diff <= 1e-4 * max(1, max|expected|)",
        "vae_scale_factor_spatial": VAE_SCALE_SPATIAL,
        "models": {
            name: {"config": cfg, "variants": [f"{name}{v}" for v in ("",) + SIXTEEN[name]]}
            for name, cfg in MODELS.items()
        },
        "cases": manifest_cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    save_npz(OUT / RUN_DTYPE_NPZ, run_arrays)
    run_manifest = {
        "description": "CogVideoXTransformer3DModel run-dtype parity fixtures: the float32 checkpoints loaded with "
        "torch_dtype float16 / bfloat16. Goldens: diffusers CogVideoXTransformer3DModel.from_pretrained(<f32 dir>, "
        "torch_dtype=<dtype>).to(torch.float32), i.e. the 16-bit weights computed in float32 on CPU; inputs (and RoPE "
        "tables) are those of the float32 cases in <model>.npz. Made by tests/reference/make_transformer_fixtures.py.",
        "made_with": versions(torch, diffusers, np, python=True),
        "cases": run_cases,
    }
    (OUT / "run_dtype.json").write_text(json.dumps(run_manifest, indent=1) + "\n")

    total = print_file_sizes(OUT)
    print(f"{len(manifest_cases)} cases; total size of {OUT.relative_to(ROOT)}: {total / 2**20:.2f} MiB")
    assert total < 4 * 2**20, "fixtures exceed 4 MiB"
    return 0


def _path_checks(model_name: str, cfg: dict, model, rng: np.random.Generator) -> None:
    """Assert that the optional paths actually change the output (so the fixtures exercise them)."""
    B, F = 1, 2 if cfg.get("patch_size_t") else 3
    H, W, L = cfg["sample_height"], cfg["sample_width"], cfg["max_text_seq_length"]
    h = torch.from_numpy(rounded_normal(rng, (B, F, cfg["in_channels"], H, W)))
    e = torch.from_numpy(rounded_normal(rng, (B, L, cfg["text_embed_dim"])))
    t = torch.tensor([500])
    ofs = torch.tensor([2.0]) if cfg.get("ofs_embed_dim") else None
    base = model(h, e, t, ofs=ofs).sample
    msgs = []
    if cfg.get("use_rotary_positional_embeddings") and cfg["attention_head_dim"] >= 16:
        cos, sin = pipeline_rope(model, H * 8, W * 8, F)
        rot = (torch.from_numpy(cos), torch.from_numpy(sin))
        d = float((model(h, e, t, ofs=ofs, image_rotary_emb=rot).sample - base).abs().max())
        assert d > 1e-2, (model_name, "rope", d)
        msgs.append(f"rope effect {d:.3f}")
    if cfg.get("ofs_embed_dim"):
        d = float((model(h, e, t, ofs=torch.tensor([5.0])).sample - base).abs().max())
        assert d > 1e-2, (model_name, "ofs", d)
        msgs.append(f"ofs effect {d:.3f}")
    if cfg.get("use_learned_positional_embeddings") or not cfg.get("use_rotary_positional_embeddings"):
        saved = model.patch_embed.pos_embedding.clone()
        model.patch_embed.pos_embedding.zero_()
        d = float((model(h, e, t, ofs=ofs).sample - base).abs().max())
        model.patch_embed.pos_embedding.copy_(saved)
        if cfg.get("use_learned_positional_embeddings") or (F - 1) * 4 + 1 == cfg["sample_frames"]:
            assert d > 1e-2, (model_name, "pos table", d)
        msgs.append(f"stored pos table effect {d:.3f}")
    d = float((model(h, e, torch.tensor([10]), ofs=ofs).sample - base).abs().max())
    assert d > 1e-2, (model_name, "timestep", d)
    msgs.append(f"timestep effect {d:.3f}")
    print(f"  path checks: {', '.join(msgs)}")


if __name__ == "__main__":
    sys.exit(main())
