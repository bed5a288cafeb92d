#!/usr/bin/env python3
"""Generate T5EncoderModel parity fixtures (random-weight models + transformers golden outputs).

Run from the repository root with the reference environment (torch + transformers, never runtime deps of cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_t5_fixtures.py

Writes (everything under tests/fixtures/t5/, which is deleted and recreated):
  relu/            tiny-random-t5 config (spec §6.2), feed_forward_proj "relu", float32, one model.safetensors
  gated/           small t5-v1_1-style config, feed_forward_proj "gated-gelu", float32, one model.safetensors
  gated_sharded/   the same weights saved with max_shard_size="100KB" (model.safetensors.index.json + shards)
  gated_fp16/      the same weights, model.to(float16).save_pretrained
  gated_bf16/      the same weights, model.to(bfloat16).save_pretrained
  relu.npz, gated.npz   input_ids (int64 [B, L]) and golden last_hidden_state (float32 [B, L, d_model])
  manifest.json    one entry per case (see tests/test_t5_parity.py), plus the checkpoint weight names/shapes,
                   the relative-position bucket tables and what `_keep_in_fp32_modules` does on load.
  run_dtype.json, run_dtype.npz   run-dtype cases: the float32 folders loaded with torch_dtype float16 / bfloat16,
                   with two goldens each (RUN_DTYPE_CASES; see tests/test_dtype_parity.py)

Golden outputs always come from transformers in float32 on CPU (16-bit weight files loaded with dtype=float32),
with the model's default attention implementation (sdpa); they are cross-checked against the eager attention path
and against an independent float64 numpy re-implementation of the encoder forward written from the transformers
source (this script's `numpy_t5_encoder`). Inputs mimic the pipeline: random ids, EOS (1), pad (0) tail, and no
attention mask (the pipeline calls `text_encoder(input_ids)[0]`). Deterministic (fixed seeds, fixed zip timestamps).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from transformers import T5Config, T5EncoderModel

from _reference_common import print_file_sizes, recreate_dir, rerandomize_t5, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "t5"
SIZE_LIMIT = 2 * 2**20  # all fixtures together

# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------

MODELS = {
    # hf-internal-testing/tiny-random-t5 (spec §6.2): 8 buckets -> half 4, max_exact 2, log(128/2)
    "relu": dict(
        vocab_size=1103,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=37,
        num_layers=5,
        num_decoder_layers=5,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ),
    # small t5-v1_1-style config (as google/t5-v1_1-xxl: gated-gelu -> gelu_new, 32 buckets, untied lm head)
    "gated": dict(
        vocab_size=500,
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=96,
        num_layers=3,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ),
}
SEEDS = {"relu": 1234, "gated": 5678}

# weight-file variants: directory suffix -> (dtype stored in the file, save_pretrained kwargs)
VARIANTS = {
    "relu": {"": ("float32", {})},
    "gated": {
        "": ("float32", {}),
        "_sharded": ("float32", {"max_shard_size": "100KB"}),
        "_fp16": ("float16", {}),
        "_bf16": ("bfloat16", {}),
    },
}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# input cases per model: (case base name, batch, length, number of random ids before the EOS per row)
#   n_random = L means "no EOS / pad tail" (the whole row is random ids).
CASES = {
    "relu": [
        ("b1_l1", 1, 1, [1]),
        ("b1_l7", 1, 7, [5]),
        ("b2_l7", 2, 7, [5, 3]),
        ("b1_l16", 1, 16, [16]),
        ("b2_l16", 2, 16, [5, 11]),
    ],
    "gated": [
        ("b1_l1", 1, 1, [0]),  # just the EOS token
        ("b1_l7", 1, 7, [5]),
        ("b2_l7", 2, 7, [5, 2]),
        ("b2_l16", 2, 16, [5, 15]),
        ("b1_l226", 1, 226, [24]),  # the pipeline's max_sequence_length
    ],
}
# the 16-bit files are run on b1_l7 and b2_l16 only, the 226-token case on the float32 files only (the float32
# files share one golden; this keeps all fixtures < 2 MiB)
SIXTEEN_BIT_CASES = ("b1_l7", "b2_l16")
FLOAT32_VARIANTS = ("", "_sharded")

# run-dtype cases (issue 7 item 1): the float32 checkpoint loaded with torch_dtype float16 / bfloat16 (cogvideo_c
# keeps every weight in that dtype and computes in float32). Two references per case:
#   "output": the weights rounded to the dtype (model.to(dtype)), computed by transformers in float32; for "gated" it
#       is the 16-bit file case's golden (the same weights: asserted bit-identical), for "relu" a new output.
#   "transformers_output": what a transformers user gets, T5EncoderModel.from_pretrained(<f32 dir>, dtype=<dtype>)
#       then .to(torch.float32): for float16, _keep_in_fp32_modules keeps every `wo` at its float32 value (unrounded);
#       for bfloat16 all weights are rounded, so it equals "output" (asserted).
RUN_DTYPE_CASES = {"relu": ("b2_l7",), "gated": SIXTEEN_BIT_CASES}
RUN_DTYPES = {"float16": "_fp16", "bfloat16": "_bf16"}  # run dtype -> the gated 16-bit file variant
RUN_DTYPE_NPZ = "run_dtype.npz"


def build_model(name: str) -> T5EncoderModel:
    torch.manual_seed(SEEDS[name])
    model = T5EncoderModel(T5Config(**MODELS[name])).eval()
    rerandomize_t5(model, SEEDS[name] + 1)  # also checks that encoder.embed_tokens is tied to shared
    return model


def load(model_dir: Path, dtype=torch.float32, **kw) -> T5EncoderModel:
    return T5EncoderModel.from_pretrained(str(model_dir), dtype=dtype, **kw).eval()


def run_dtype_cases(model_name: str, cfg: dict, f32_dir: Path, ref_sd: dict, arrays: dict, run_arrays: dict) -> list:
    """The RUN_DTYPE_CASES of one model (see RUN_DTYPE_CASES for the two references)."""
    entries = []
    for dtype, file_variant in RUN_DTYPES.items():
        tdt = TORCH_DTYPE[dtype]
        m = load(f32_dir, dtype=tdt)
        wo = {n: p.dtype for n, p in m.named_parameters() if ".wo." in n}
        keep_fp32 = dtype == "float16"  # T5's _keep_in_fp32_modules = ["wo"] applies to float16 loads only
        assert wo and set(wo.values()) == {torch.float32 if keep_fp32 else tdt}, (model_name, dtype, wo)
        m = m.to(torch.float32)
        rounded = build_model(model_name).to(tdt).to(torch.float32)
        for n, p in m.state_dict().items():
            want = ref_sd[n] if keep_fp32 and ".wo." in n else ref_sd[n].to(tdt).float()
            assert torch.equal(p, want), (model_name, dtype, n)
        rounded_np = {k: t.to(tdt).float().numpy() for k, t in ref_sd.items()}
        for base in RUN_DTYPE_CASES[model_name]:
            ids = arrays[f"{model_name}_{base}__input_ids"]
            t_ids = torch.from_numpy(ids)
            out = rounded(t_ids).last_hidden_state.numpy()
            tf_out = m(t_ids).last_hidden_state.numpy()
            assert np.isfinite(out).all() and np.isfinite(tf_out).all()
            max_ref = float(np.abs(out).max())
            d_np = float(np.abs(numpy_t5_encoder(rounded_np, cfg, ids) - out).max())
            assert d_np <= 2e-5 * max(1.0, max_ref), d_np
            name = f"{model_name}_{base}__{dtype}"
            file_key = f"{model_name}{file_variant}_{base}__out"
            if file_key in arrays:
                assert np.array_equal(out, arrays[file_key]), name
                out_key, npz = file_key, f"{model_name}.npz"
            else:
                out_key, npz = f"{name}__out", RUN_DTYPE_NPZ
                run_arrays[out_key] = out
            if keep_fp32:
                tf_key = f"{name}__transformers_out"
                run_arrays[tf_key] = tf_out
            else:
                assert np.array_equal(tf_out, out), name
                tf_key = out_key
            f32 = arrays[f"{model_name}_{base}__out"]
            entry = {
                "name": name,
                "model_dir": f32_dir.name,
                "torch_dtype": dtype,
                "input_ids": f"{model_name}_{base}__input_ids",
                "npz_inputs": f"{model_name}.npz",
                "output": out_key,
                "npz": npz,
                "transformers_output": tf_key,
                "npz_transformers": RUN_DTYPE_NPZ if keep_fp32 else npz,
                "transformers_keeps_wo_in_float32": keep_fp32,
                "shape": list(out.shape),
                "max_abs_diff_vs_float32": float(np.abs(out - f32).max()),
                "max_abs_diff_output_vs_transformers_output": float(np.abs(out - tf_out).max()),
                "max_abs_expected": max_ref,
            }
            entries.append(entry)
            print(
                f"  {name:28s} {npz}: vs float32 {entry['max_abs_diff_vs_float32']:.3e}, rounded vs transformers' "
                f"load {entry['max_abs_diff_output_vs_transformers_output']:.3e} (max|out| {max_ref:.3f})"
            )
        del m, rounded
    return entries


def make_ids(rng: np.random.Generator, vocab: int, L: int, n_random: list[int]) -> np.ndarray:
    """Rows of the pipeline's form: n random ids in [0, vocab), then EOS (1), then pad (0) up to L."""
    ids = np.zeros((len(n_random), L), dtype=np.int64)
    for b, n in enumerate(n_random):
        n = min(n, L)
        ids[b, :n] = rng.integers(0, vocab, size=n)
        if n < L:
            ids[b, n] = 1
    return ids


# ----------------------------------------------------------------------------------------------------------------
# independent numpy re-implementation (float64 except the bucket computation, which follows torch's float32 ops)
# ----------------------------------------------------------------------------------------------------------------


def numpy_bucket(rel: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """transformers' T5Attention._relative_position_bucket (bidirectional), rel = key_pos - query_pos (int64)."""
    half = num_buckets // 2
    bucket = (rel > 0).astype(np.int64) * half
    n = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        # torch: log(n.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact), all float32
        # (n / max_exact is true division of a float32 tensor by a Python int; the Python-double divisor and
        # multiplier are used as float32 scalars), then .to(long) truncates toward zero.
        x = np.log(n.astype(np.float32) / np.float32(max_exact))
        x = x / np.float32(math.log(max_distance / max_exact))
        x = x * np.float32(half - max_exact)
    large = max_exact + np.where(np.isfinite(x), x, 0).astype(np.int64)  # n = 0 (log -> -inf) is "small" anyway
    large = np.minimum(large, half - 1)
    return bucket + np.where(n < max_exact, n, large)


def numpy_t5_encoder(sd: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    H, dk, eps = cfg["num_heads"], cfg["d_kv"], cfg["layer_norm_epsilon"]
    gated = cfg["feed_forward_proj"].startswith("gated")
    f = {k: v.astype(np.float64) for k, v in sd.items()}

    def rms(x, w):
        return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    B, L = ids.shape
    x = f["shared.weight"][ids]  # no sqrt(d_model) scaling
    pos = np.arange(L)
    bucket = numpy_bucket(
        pos[None, :] - pos[:, None], cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]
    )
    bias = f["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][bucket]  # [Lq, Lk, H]
    bias = bias.transpose(2, 0, 1)[None]  # [1, H, Lq, Lk], computed once, used by every block
    for i in range(cfg["num_layers"]):
        p = f"encoder.block.{i}.layer."
        y = rms(x, f[p + "0.layer_norm.weight"])
        q, k, v = (
            (y @ f[p + f"0.SelfAttention.{n}.weight"].T).reshape(B, L, H, dk).transpose(0, 2, 1, 3) for n in "qkv"
        )
        s = q @ k.transpose(0, 1, 3, 2) + bias  # no 1/sqrt(d_kv) scaling; no mask (all ones)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, L, H * dk)
        x = x + a @ f[p + "0.SelfAttention.o.weight"].T
        y = rms(x, f[p + "1.layer_norm.weight"])
        if gated:
            u = gelu_new(y @ f[p + "1.DenseReluDense.wi_0.weight"].T) * (y @ f[p + "1.DenseReluDense.wi_1.weight"].T)
        else:
            u = np.maximum(y @ f[p + "1.DenseReluDense.wi.weight"].T, 0.0)
        x = x + u @ f[p + "1.DenseReluDense.wo.weight"].T
    return rms(x, f["encoder.final_layer_norm.weight"])


# ----------------------------------------------------------------------------------------------------------------
# checkpoint inspection
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_tensors(model_dir: Path) -> dict[str, dict]:
    """name -> {shape, dtype, file} from the safetensors headers (single file or sharded with an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        wmap = json.loads(index.read_text())["weight_map"]
        files = sorted(set(wmap.values()))
    else:
        files = ["model.safetensors"]
        wmap = None
    out = {}
    for fn in files:
        with safe_open(str(model_dir / fn), framework="pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                out[k] = {"shape": list(sl.get_shape()), "dtype": sl.get_dtype(), "file": fn}
    if wmap is not None:
        assert set(wmap) == set(out), "index weight_map does not match the shards"
        assert all(wmap[k] == v["file"] for k, v in out.items())
    return out


def keep_in_fp32_report(d16: dict[str, Path], ref_outputs: dict[str, np.ndarray], ids: np.ndarray) -> dict:
    """What transformers does with `_keep_in_fp32_modules` (T5: ["wo"]) when saving / loading 16-bit models."""
    rep = {
        "T5PreTrainedModel._keep_in_fp32_modules": sorted(T5EncoderModel._keep_in_fp32_modules or []),
        "T5PreTrainedModel._keep_in_fp32_modules_strict": sorted(T5EncoderModel._keep_in_fp32_modules_strict or []),
        "rule": "PreTrainedModel._get_dtype_plan: the _keep_in_fp32_modules names become unanchored regex patterns "
        "('wo' matches every key containing 'wo', i.e. encoder.block.{i}.layer.1.DenseReluDense.wo.weight) that are "
        "loaded as float32 only when the requested load dtype is float16; _keep_in_fp32_modules_strict (empty for "
        "T5) would apply to float16 and bfloat16. save_pretrained does not apply it: model.to(dtype) casts every "
        "parameter, so the 16-bit files store wo in 16 bits.",
        "loads": {},
    }
    for file_dtype, d in d16.items():
        stored = sorted({v["dtype"] for v in checkpoint_tensors(d).values()})
        rep["loads"][f"{file_dtype} file: stored dtypes"] = stored
        for req in ("float32", "float16", "bfloat16", "auto", None):
            kw = {} if req is None else {"dtype": TORCH_DTYPE.get(req, req)}
            m = T5EncoderModel.from_pretrained(str(d), **kw).eval()
            dts = {}
            for n, p in m.named_parameters():
                dts.setdefault(str(p.dtype).replace("torch.", ""), []).append(n)
            summary = {}
            for dt, names in sorted(dts.items()):
                summary[dt] = names if len(names) <= 6 else f"{len(names)} parameters (all others)"
            # forward in the loaded precision on CPU (information only: not a parity target)
            with torch.no_grad():
                o = m(torch.from_numpy(ids))[0]
            diff = float(np.abs(o.float().numpy().astype(np.float64) - ref_outputs[file_dtype]).max())
            rep["loads"][f"{file_dtype} file, from_pretrained({'dtype=' + repr(req) if req else 'no dtype'})"] = {
                "parameter_dtypes": summary,
                "output_dtype": str(o.dtype).replace("torch.", ""),
                "cpu_max_abs_diff_vs_fp32_golden": diff,
            }
            del m
    return rep


def dumps_compact(obj) -> str:
    """json.dumps(indent=1), but lists of numbers (shapes, bucket tables) on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(
        r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text
    )


def bucket_tables() -> dict:
    """Reference bucket tables for rel = key_pos - query_pos in [-160, 160] (checked against transformers)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-160, 161, dtype=np.int64)
    out = {}
    for nb, md in ((8, 128), (32, 128)):
        ref = T5Attention._relative_position_bucket(torch.from_numpy(rel), True, nb, md).numpy()
        mine = numpy_bucket(rel, nb, md)
        assert np.array_equal(ref, mine), f"bucket mismatch for {nb}/{md}"
        out[f"num_buckets={nb},max_distance={md}"] = {"rel_min": -160, "rel_max": 160, "bucket": ref.tolist()}
    # exhaustive check of the numpy formula over a long range too (spec: 226-token prompts; longer is cheap)
    rel = np.arange(-5000, 5001, dtype=np.int64)
    for nb, md in ((8, 128), (32, 128), (32, 64), (16, 100)):
        ref = T5Attention._relative_position_bucket(torch.from_numpy(rel), True, nb, md).numpy()
        assert np.array_equal(ref, numpy_bucket(rel, nb, md)), f"bucket mismatch for {nb}/{md}"
    return out


# ----------------------------------------------------------------------------------------------------------------


def main() -> int:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    recreate_dir(OUT)

    manifest_cases = []
    run_cases: list[dict] = []
    run_arrays: dict[str, np.ndarray] = {}
    checkpoints = {}
    attn_impl = None
    fp32_report = None
    for model_name, cfg in MODELS.items():
        print(f"{model_name}: {cfg}")
        dirs = {v: OUT / f"{model_name}{v}" for v in VARIANTS[model_name]}
        for v, (dt, kw) in VARIANTS[model_name].items():
            m = build_model(model_name)  # fresh fp32 copy each time
            if dt != "float32":
                m = m.to(TORCH_DTYPE[dt])
            m.save_pretrained(str(dirs[v]), safe_serialization=True, **kw)
            del m

        ref = build_model(model_name)
        ref_sd = {k: t.detach().clone() for k, t in ref.state_dict().items()}
        loaded = {v: load(d) for v, d in dirs.items()}
        for v, m in loaded.items():
            dt = VARIANTS[model_name][v][0]
            attn_impl = m.config._attn_implementation
            assert m.encoder.embed_tokens.weight is m.shared.weight, f"{model_name}{v}: embed_tokens not tied on load"
            sd = m.state_dict()
            assert sorted(sd) == sorted(ref_sd), (model_name, v)
            for k, t in sd.items():
                assert t.dtype == torch.float32, (k, t.dtype)
                assert torch.equal(t, ref_sd[k].to(TORCH_DTYPE[dt]).float()), f"{model_name}{v}: {k} differs"

        # checkpoint names / shapes as written by save_pretrained
        for v, d in dirs.items():
            tensors = checkpoint_tensors(d)
            files = sorted(p.name for p in d.iterdir())
            checkpoints[f"{model_name}{v}"] = {
                "files": files,
                "config_dtype": json.loads((d / "config.json").read_text()).get("dtype"),
                "stored_dtypes": sorted({t["dtype"] for t in tensors.values()}),
                "tensor_count": len(tensors),
            }
            if v in ("", "_sharded"):
                checkpoints[f"{model_name}{v}"]["tensors"] = {k: t["shape"] for k, t in sorted(tensors.items())}
            if v == "_sharded":
                assert len([f for f in files if f.endswith(".safetensors")]) >= 3, files
            assert "shared.weight" in tensors
            assert "encoder.embed_tokens.weight" not in tensors  # tied duplicate is dropped by save_pretrained

        rng = np.random.default_rng(SEEDS[model_name])
        arrays: dict[str, np.ndarray] = {}
        npz_name = f"{model_name}.npz"
        ref_np = {
            dt: {k: t.to(TORCH_DTYPE[dt]).float().numpy() for k, t in ref_sd.items()}
            for dt in {VARIANTS[model_name][v][0] for v in dirs}
        }
        eager = {v: load(d, attn_implementation="eager") for v, d in dirs.items()}
        for base, B, L, n_random in CASES[model_name]:
            ids = make_ids(rng, cfg["vocab_size"], L, n_random)
            if base == "b1_l16" and model_name == "relu":
                ids[0, 0], ids[0, -1] = cfg["vocab_size"] - 1, 0  # include the largest id and a 0 id
            in_key = f"{model_name}_{base}__input_ids"
            arrays[in_key] = ids
            t_ids = torch.from_numpy(ids)
            for v in dirs:
                if v not in FLOAT32_VARIANTS and base not in SIXTEEN_BIT_CASES:
                    continue
                dt = VARIANTS[model_name][v][0]
                m = loaded[v]
                out_obj = m(t_ids)
                out = out_obj.last_hidden_state
                assert torch.equal(out, out_obj[0])
                assert out.dtype == torch.float32 and tuple(out.shape) == (B, L, cfg["d_model"])
                out = out.numpy()
                assert np.isfinite(out).all()
                # cross-checks: eager attention path, numpy float64 re-implementation
                d_eager = float(np.abs(eager[v](t_ids).last_hidden_state.numpy() - out).max())
                d_np = float(np.abs(numpy_t5_encoder(ref_np[dt], cfg, ids) - out).max())
                max_ref = float(np.abs(out).max())
                assert d_eager <= 2e-5 * max(1.0, max_ref), d_eager
                assert d_np <= 2e-5 * max(1.0, max_ref), d_np
                name = f"{model_name}{v}_{base}"
                if v == "":
                    out_key = f"{model_name}_{base}__out"
                    arrays[out_key] = out
                elif v == "_sharded":
                    out_key = f"{model_name}_{base}__out"  # identical weights -> identical golden
                    assert np.array_equal(out, arrays[out_key])
                else:
                    out_key = f"{model_name}{v}_{base}__out"
                    arrays[out_key] = out
                manifest_cases.append(
                    {
                        "name": name,
                        "model_dir": f"{model_name}{v}",
                        "npz": npz_name,
                        "input_ids": in_key,
                        "output": out_key,
                        "dtype_file": dt,
                        "shape": [B, L, cfg["d_model"]],
                    }
                )
                print(
                    f"  {name:28s} ids[0]={ids[0, : min(L, 8)].tolist()}{'...' if L > 8 else ''} "
                    f"max|out| {max_ref:.3f} std {float(out.std()):.3f}  eager diff {d_eager:.1e}  numpy64 diff "
                    f"{d_np:.1e}"
                )
        if model_name == "gated":
            # no attention mask: the pad tail is attended, so changing a pad position changes the prompt positions
            a = make_ids(np.random.default_rng(0), cfg["vocab_size"], 16, [5])
            b = a.copy()
            b[0, 10] = 7
            oa, ob = (loaded[""](torch.from_numpy(x)).last_hidden_state.numpy() for x in (a, b))
            assert np.abs(oa[0, :5] - ob[0, :5]).max() > 1e-3, "pad tail does not influence the prompt tokens?"
            # _keep_in_fp32_modules behaviour, measured on the 226-token input against the float32-loaded goldens
            ids226 = arrays["gated_b1_l226__input_ids"]
            fp32_report = keep_in_fp32_report(
                {"float16": dirs["_fp16"], "bfloat16": dirs["_bf16"]},
                {
                    dt: loaded[v](torch.from_numpy(ids226)).last_hidden_state.numpy()
                    for v, dt in (("_fp16", "float16"), ("_bf16", "bfloat16"))
                },
                ids226,
            )
        run_cases += run_dtype_cases(model_name, cfg, dirs[""], ref_sd, arrays, run_arrays)
        del loaded, eager, ref
        save_npz(OUT / npz_name, arrays)

    manifest = {
        "description": "T5EncoderModel parity fixtures; goldens are last_hidden_state computed by transformers in "
        "float32 on CPU (16-bit weight files loaded with dtype=float32), default attention implementation "
        f"({attn_impl!r}), input_ids only (no attention mask), cross-checked against eager attention and a float64 "
        "numpy re-implementation. Made by tests/reference/make_t5_fixtures.py.",
        "made_with": versions(torch, transformers, safetensors, np, python=True),
        "tolerance": "max abs diff <= 1e-4 * max(1, max|expected|)",
        "models": {
            name: {
                "config": cfg,
                "seed": SEEDS[name],
                "variants": {f"{name}{v}": VARIANTS[name][v][0] for v in VARIANTS[name]},
            }
            for name, cfg in MODELS.items()
        },
        "checkpoints": checkpoints,
        "tied_weights": "T5Config.__post_init__ always sets tie_word_embeddings=True (a False in the kwargs only sets "
        "scale_decoder_outputs=False), so T5EncoderModel._tied_weights_keys {'encoder.embed_tokens.weight': "
        "'shared.weight'} always applies: encoder.embed_tokens.weight IS shared.weight, save_pretrained writes only "
        "shared.weight, and from_pretrained accepts either name (if only encoder.embed_tokens.weight is in the file, "
        "source and target are swapped and shared is tied to it). config.json stores tie_word_embeddings=true.",
        "keep_in_fp32_modules": fp32_report,
        "relative_position_buckets": bucket_tables(),
        "cases": manifest_cases,
    }
    (OUT / "manifest.json").write_text(dumps_compact(manifest) + "\n")
    save_npz(OUT / RUN_DTYPE_NPZ, run_arrays)
    run_manifest = {
        "description": "T5EncoderModel run-dtype parity fixtures: the float32 checkpoints loaded with torch_dtype "
        "float16 / bfloat16. 'output': transformers in float32 on the weights rounded to the dtype (what cogvideo_c "
        "holds); 'transformers_output': T5EncoderModel.from_pretrained(<f32 dir>, dtype=<dtype>).to(torch.float32), "
        "which for float16 keeps the `wo` weights unrounded (_keep_in_fp32_modules). Inputs are in <model>.npz. Made "
        "by tests/reference/make_t5_fixtures.py.",
        "made_with": versions(torch, transformers, safetensors, np, python=True),
        "cases": run_cases,
    }
    (OUT / "run_dtype.json").write_text(dumps_compact(run_manifest) + "\n")

    total = print_file_sizes(OUT)
    print(f"{len(manifest_cases)} cases; attention implementation {attn_impl}")
    print(f"total size of {OUT.relative_to(ROOT)}: {total / 2**20:.3f} MiB ({total} bytes)")
    assert total < SIZE_LIMIT, "fixtures exceed 2 MiB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
