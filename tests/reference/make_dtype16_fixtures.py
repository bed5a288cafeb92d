#!/usr/bin/env python3
"""Generate the 16-bit run-dtype fixtures of issue 10's pipelines and of LoRA, and LoRA on the conditioned pipelines.

Run from the repository root with the reference environment (torch + diffusers + transformers + peft), after
make_pipeline_fixtures.py, make_i2v_fixtures.py, make_v2v_fixtures.py and make_lora_fixtures.py have written their
folders (this script reads their pipelines, inputs and float32 goldens, and writes no model of its own):

    /tmp/cvx-reference/bin/python tests/reference/make_dtype16_fixtures.py

Writes (everything under tests/fixtures/dtype16/, deleted and recreated):
  frames.npz      per pipeline case "<case>__frames" (uint16 [B, F, H, W, 3]: round(65535 x the float32 frames of
                  output_type="np"), as tests/fixtures/i2v) and, where diffusers' own 16-bit load gives other
                  numbers, "<case>__diffusers_load_delta" (int16, the same shape: that golden minus "<case>__frames",
                  in the same units of 1/65535; small, so it compresses well); per transformer LoRA case
                  "<case>__out" (float32, the transformer's output).
  manifest.json   versions, and the cases (see tests/test_dtype16_pipelines.py).

Cases:
  run-dtype (RUN_DTYPE_CASES): float32 fixture folders loaded with torch_dtype float16 / bfloat16, called with a
      float32 case's arguments, inputs and generator seeds (run_dtype_of, in tests/fixtures/i2v or v2v): image-to-
      video on the 5b-I2V-style and 1.5-I2V-style folders, video-to-video on tiny_2b / tiny_5b, Fun-Control on
      tiny_fun (its tokenizer, T5 and VAE from tiny_2b, loaded in the same dtype), each pipeline with a VAE-tiled case.
  LoRA on a transformer (LORA_TRANSFORMER_CASES): tests/fixtures/lora's cases "attn_1" (unfused, scale 1), "mix"
      (three adapters mixed by set_adapters, scale 0.8) and "fused_05" (mix, then fuse_lora(lora_scale=0.5)) on the
      tiny_5b transformer loaded in float16 and in bfloat16.
  LoRA on the conditioned pipelines (LORA_PIPELINE_CASES): adapter "attn" unfused with set_adapters weight 0.8, or
      fused with fuse_lora(lora_scale=...) as python/cli_demo.py does, on image-to-video (both styles) and
      video-to-video, in float32 (the issue's parity) and in a 16-bit dtype.

Goldens: diffusers computing the 16-bit weights in float32, as tests/fixtures/*/run_dtype.json. Two per 16-bit case:
  frames_key ("rounded"): every parameter of the float32 folder rounded to the dtype, kept in float32 (the weights
      cogvideo_c holds). A LoRA's tensors are rounded too: peft gives an adapter the dtype of the layer it modifies
      (LoraLayer._move_adapter_to_device_of_base_layer: a float16 model gets float16 lora_A / lora_B; checked
      below). A fused LoRA is merged as peft merges on a 16-bit model on the CPU: the transformer (already rounded,
      so converted losslessly) is taken to the dtype for fuse_lora and back, so each adapter's delta (B @ A) *
      scaling is computed in float32, rounded to the dtype (get_delta_weight's cast back) and added in the dtype
      (`weight.data += delta`): one rounding per adapter. Rounding the float32 sum once instead is 2e-3 relative
      away in bfloat16 (cogvideo_c's fuse mirrors peft).
  diffusers_load ("load"): what a diffusers user gets: `<Pipeline>.from_pretrained(dir, torch_dtype=<dtype>)`, the
      LoRA loaded (and fused) in that dtype, then `.to(torch.float32)`. It differs from "rounded" where float16 T5
      keeps its `wo` weights in float32 (transformers' _keep_in_fp32_modules, see make_pipeline_fixtures.py);
      where the two are identical only frames_key is stored. On the transformer alone they are identical (asserted).

Random draws: diffusers' randn_tensor is replaced by NumPy draws by make_i2v_fixtures / make_v2v_fixtures on import
(the same rule in every module: generator.standard_normal(shape, dtype=np.float32), one (1, ...) draw per row for a
list of generators), so a test passing np.random.default_rng(seed) gets the same noise. Each case's float32 run is
also checked here to give back the stored float32 golden (within 1e-5), so the reused machinery is the one that made
those goldens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import diffusers
import make_i2v_fixtures as i2v  # replaces randn_tensor (VAE, image-to-video, DPM) by NumPy draws on import
import make_lora_fixtures as lora_fx
import make_v2v_fixtures as v2v  # the same for video-to-video and Fun-Control (and again VAE / DPM, same rule)
import numpy as np
import peft
import PIL
import safetensors
import torch
import transformers
from diffusers import (
    CogVideoXFunControlPipeline,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXVideoToVideoPipeline,
)

from _reference_common import check_total_size, recreate_dir, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "dtype16"
SIZE_LIMIT = 1 * 2**20  # three pipelines and LoRA (0.89 MiB when written)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

# (float32 case, dtype): every pipeline in both dtypes, each with a VAE-tiled 16-bit case
RUN_DTYPE_CASES = [
    ("i2v5b_cogddim_cfg_pil", "float16"),
    ("i2v5b_cogddim_cfg_tiling_pil", "bfloat16"),
    ("i2v15_cogddim_nocfg_tiling_pil", "float16"),
    ("i2v15_dpm_cfg_array", "bfloat16"),
    ("v2v_2b_cogddim_s05_cfg", "float16"),
    ("v2v_5b_dpm_s08_dyncfg", "float16"),
    ("v2v_5b_dpm_s05_nocfg_tiled", "bfloat16"),
    ("fun_ddim_cfg_gen", "bfloat16"),
    ("fun_cogddim_nocfg_latents_tiled", "float16"),
]
LORA_TRANSFORMER_CASES = ("attn_1", "mix", "fused_05")
# adapter "attn" (r 4 on attn1.to_q/k/v/out.0 of two 32-wide blocks) fits tiny_5b and both I2V transformers
LORA_PIPELINE_CASES = [
    dict(name="lora_i2v5b_w08", base="i2v5b_cogddim_cfg_pil", lora=dict(adapter="attn", weight=0.8),
         dtypes=["float32", "float16"]),
    # python/cli_demo.py's recipe: fuse_lora(components=["transformer"], lora_scale=1 / lora_rank)
    dict(name="lora_i2v15_fused025_tiled", base="i2v15_cogddim_nocfg_tiling_pil",
         lora=dict(adapter="attn", fuse_lora_scale=0.25), dtypes=["float32", "bfloat16"]),
    dict(name="lora_v2v5b_w08", base="v2v_5b_dpm_s08_dyncfg", lora=dict(adapter="attn", weight=0.8),
         dtypes=["float32", "bfloat16"]),
    dict(name="lora_v2v5b_fused05_tiled", base="v2v_5b_dpm_s05_nocfg_tiled",
         lora=dict(adapter="attn", fuse_lora_scale=0.5), dtypes=["float32", "float16"]),
]  # fmt: skip
FLOAT32_CHECK_TOL = 1e-5  # this script's float32 rerun of a stored golden (uint16 storage: <= 7.7e-6)

I2V_CASES = {c["name"]: c for c in i2v.CASES}
V2V_CASES = {c["name"]: c for c in v2v.CASES}


def kind_of(name: str) -> str:
    if name in I2V_CASES:
        return "image2video"
    return V2V_CASES[name]["pipeline"]  # "video2video" / "fun_control"


def round_parameters(modules, dtype) -> None:
    """Every floating tensor of the modules' state dicts rounded to `dtype`, kept in float32 (idempotent on rounded
    ones). The state dict, not only the parameters: the 5b-I2V learned positional table is a persistent buffer,
    which a 16-bit load rounds like any weight (and make_transformer_fixtures' run-dtype goldens round)."""
    with torch.no_grad():
        for m in modules:
            for t in m.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.to(dtype).to(torch.float32))


def components(pipe):
    return [pipe.text_encoder, pipe.transformer, pipe.vae]


def load(name: str, load_dtype):
    """The case's pipeline from its fixture folder, every component in `load_dtype`, progress bar off."""
    kind = kind_of(name)
    if kind == "image2video":
        pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(FIX / "i2v" / I2V_CASES[name]["pipeline"]),
                                                             torch_dtype=load_dtype)  # fmt: skip
    elif kind == "video2video":
        pipe = CogVideoXVideoToVideoPipeline.from_pretrained(str(FIX / "pipeline" / V2V_CASES[name]["folder"]),
                                                             torch_dtype=load_dtype)  # fmt: skip
    else:  # the components' own folder loaded in the same dtype, as a user passing them would
        base = CogVideoXPipeline.from_pretrained(str(FIX / "pipeline" / "tiny_2b"), torch_dtype=load_dtype)
        pipe = CogVideoXFunControlPipeline.from_pretrained(
            str(FIX / "v2v" / "tiny_fun"), tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
            torch_dtype=load_dtype,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_adapter_dtype(transformer, dtype) -> None:
    """peft's lora_A / lora_B take the base layer's dtype (the premise of the "rounded" golden)."""
    got = {p.dtype for n, p in transformer.named_parameters() if "lora_" in n}
    assert got == {dtype}, f"peft gave the adapter {got} on a {dtype} model"


def apply_lora(pipe, spec, mode: str, tdt) -> None:
    """Loads spec's adapter; weight: set_adapters(adapter, weight); fuse_lora_scale: fuse_lora as cli_demo.py."""
    if spec is None:
        return
    pipe.load_lora_weights(str(FIX / "lora" / spec["adapter"]), adapter_name=spec["adapter"])
    check_adapter_dtype(pipe.transformer, tdt if mode == "load" else torch.float32)
    if mode == "rounded":
        round_parameters([pipe.transformer], tdt)
    if "weight" in spec:
        pipe.set_adapters(spec["adapter"], spec["weight"])
    else:
        fuse_in_dtype(pipe, mode, tdt, lambda: pipe.fuse_lora(components=["transformer"],
                                                               lora_scale=spec["fuse_lora_scale"]))  # fmt: skip


def fuse_in_dtype(pipe, mode: str, tdt, fuse) -> None:
    """fuse() as peft merges on a 16-bit model: for "rounded" the (already rounded, so losslessly converted)
    transformer is taken to the dtype for the merge and back to float32."""
    if mode == "rounded" and tdt != torch.float32:
        pipe.transformer.to(tdt)
    fuse()
    if mode == "rounded" and tdt != torch.float32:
        pipe.transformer.to(torch.float32)


def run_pipeline(name: str, mode: str, dtype: str, lora, label: str) -> np.ndarray:
    """float32 frames [B, F, H, W, 3] of case `name` (its f32 arguments) with `mode` "float32", "rounded" or
    "load" (see the module docstring)."""
    tdt = DTYPES.get(dtype, torch.float32)
    pipe = load(name, tdt if mode == "load" else torch.float32)
    if mode == "rounded":
        round_parameters(components(pipe), tdt)
    apply_lora(pipe, lora, mode, tdt)
    if mode == "load":
        if dtype == "float16":  # transformers keeps T5's wo in float32 (make_pipeline_fixtures asserts it too)
            wo = {p.dtype for n, p in pipe.text_encoder.named_parameters() if ".wo." in n}
            assert wo == {torch.float32}, wo
        pipe.to(torch.float32)
    arrays: dict = {}
    print(f"  {label} [{mode}]")
    if kind_of(name) == "image2video":
        i2v.run_case(pipe, pipe.scheduler, dict(I2V_CASES[name], name="x"), i2v.make_images(), arrays)
        return arrays["x__frames"].astype(np.float64) / 65535.0
    tiny_2b_scheduler = FIX / "pipeline" / "tiny_2b" / "scheduler" / "scheduler_config.json"
    configs = {"tiny_2b": json.loads(tiny_2b_scheduler.read_text())}
    v2v.run_case(dict(V2V_CASES[name], name="x"), configs, arrays, pipe=pipe)
    return arrays["x__frames"].astype(np.float64)


def stored_float32_frames(name: str) -> np.ndarray:
    """The float32 golden of case `name` (float64; tests/fixtures/i2v stores uint16 frames x 65535)."""
    if kind_of(name) == "image2video":
        path = FIX / "i2v" / f"{I2V_CASES[name]['pipeline']}.npz"
    else:
        path = FIX / "v2v" / "v2v.npz"
    with np.load(path) as z:
        frames = z[f"{name}__frames"]
    return frames.astype(np.float64) / (65535.0 if frames.dtype == np.uint16 else 1.0)


def encode(frames: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frames, 0.0, 1.0) * 65535.0).astype(np.uint16)


def frames_entry(name, base, dtype, lora, arrays, f32_frames) -> dict:
    """A 16-bit pipeline case: both goldens, their distance, the distance from float32."""
    rounded = run_pipeline(base, "rounded", dtype, lora, name)
    loaded = run_pipeline(base, "load", dtype, lora, name)
    arrays[f"{name}__frames"] = encode(rounded)
    load_key = None
    delta = encode(loaded).astype(np.int32) - encode(rounded)
    if delta.any():  # small: stored as the difference (int16 units of 1 / 65535), which compresses well
        assert np.abs(delta).max() < 2**15, (name, np.abs(delta).max())
        load_key = f"{name}__diffusers_load_delta"
        arrays[load_key] = delta.astype(np.int16)
    entry = dict(
        name=name, pipeline=kind_of(base), run_dtype_of=base, torch_dtype=dtype, lora=lora,
        fixtures="i2v" if kind_of(base) == "image2video" else "v2v", frames_key=f"{name}__frames",
        diffusers_load_delta_key=load_key, frames_encoding="uint16: frames = stored / 65535",
        frames_shape=list(rounded.shape),
        max_abs_diff_vs_float32=float(np.abs(rounded - f32_frames).max()),
        max_abs_diff_vs_diffusers_load=float(np.abs(rounded - loaded).max()),
    )  # fmt: skip
    print(f"    {name}: vs float32 {entry['max_abs_diff_vs_float32']:.3e}, rounded vs diffusers' load "
          f"{entry['max_abs_diff_vs_diffusers_load']:.3e}")  # fmt: skip
    return entry


def transformer_lora_out(case: dict, mode: str, tdt, inputs: dict) -> np.ndarray:
    """tests/fixtures/lora case `case` on tiny_5b's transformer: "rounded" or "load" (module docstring)."""
    pipe = CogVideoXPipeline.from_pretrained(str(FIX / "pipeline" / "tiny_5b"),
                                             torch_dtype=tdt if mode == "load" else torch.float32)  # fmt: skip
    tr = pipe.transformer
    if mode == "rounded":
        round_parameters([tr], tdt)
    for step in case["steps"]:
        op, args = step[0], step[1:]
        if op == "load":
            pipe.load_lora_weights(str(FIX / "lora" / args[0]), adapter_name=args[0])
            check_adapter_dtype(tr, tdt if mode == "load" else torch.float32)
        elif op == "set_adapters":
            pipe.set_adapters(args[0], args[1])
        elif op == "fuse_lora":
            fuse_in_dtype(pipe, mode, tdt, lambda: pipe.fuse_lora(lora_scale=args[0]))
        else:
            raise AssertionError(op)
        if mode == "rounded":
            round_parameters([tr], tdt)
    if mode == "load":
        tr.to(torch.float32)
    return lora_fx.forward(pipe, inputs, case["scale"])


def main() -> int:
    for need in ("i2v/manifest.json", "v2v/manifest.json", "lora/manifest.json"):
        if not (FIX / need).is_file():
            print(f"missing tests/fixtures/{need}: run its make_*_fixtures.py first", file=sys.stderr)
            return 1
    torch.set_num_threads(2)
    recreate_dir(OUT)
    arrays: dict[str, np.ndarray] = {}
    manifest = dict(
        versions=versions(diffusers, transformers, torch, peft, np, safetensors, PIL),
        tolerance=dict(frames_max_abs=1e-3, transformer_rel=1e-4),
        notes=[
            "16-bit cases: the float32 fixture folders loaded with torch_dtype=<dtype>, called as the float32 case "
            "run_dtype_of (tests/fixtures/<fixtures>/manifest.json: arguments, inputs, generator seeds, tiling).",
            "frames_key: diffusers in float32 with every parameter rounded to the dtype (a LoRA's tensors too, as "
            "peft gives the adapter the base layer's dtype; a fused LoRA merged by peft on the transformer in the "
            "dtype: each delta rounded to the dtype and added in the dtype); diffusers_load_delta_key (null: the "
            "same): <Pipeline>.from_pretrained(dir, torch_dtype=<dtype>), LoRA loaded and fused in that dtype, then "
            ".to(torch.float32) (float16: T5's wo unrounded), stored as int16 (that golden - frames) x 65535.",
            "lora: adapter (tests/fixtures/lora/<adapter>) loaded with load_lora_weights(adapter_name=adapter), then "
            "set_adapters(adapter, weight) or fuse_lora(components=['transformer'], lora_scale=fuse_lora_scale).",
            "Transformer LoRA cases: tests/fixtures/lora's case lora_case (its steps, scale, inputs) on tiny_5b's "
            "transformer loaded in the dtype.",
        ],
        cases=[],
        lora_pipeline_cases=[],
        lora_transformer_cases=[],
    )

    print("run-dtype cases")
    for base, dtype in RUN_DTYPE_CASES:
        f32 = run_pipeline(base, "float32", "float32", None, base)
        stored = stored_float32_frames(base)
        drift = float(np.abs(f32 - stored).max())
        assert drift <= FLOAT32_CHECK_TOL, f"{base}: this script's float32 run is {drift:.2e} off the stored golden"
        manifest["cases"].append(frames_entry(f"{base}__{dtype}", base, dtype, None, arrays, stored))

    print("LoRA on the pipelines")
    for c in LORA_PIPELINE_CASES:
        f32 = run_pipeline(c["base"], "float32", "float32", c["lora"], c["name"])
        arrays[f"{c['name']}__float32__frames"] = encode(f32)
        no_lora = stored_float32_frames(c["base"])
        entry = dict(
            name=f"{c['name']}__float32", pipeline=kind_of(c["base"]), run_dtype_of=c["base"],
            torch_dtype="float32", lora=c["lora"], fixtures="i2v" if kind_of(c["base"]) == "image2video" else "v2v",
            frames_key=f"{c['name']}__float32__frames", frames_encoding="uint16: frames = stored / 65535",
            frames_shape=list(f32.shape), max_abs_diff_vs_no_lora=float(np.abs(f32 - no_lora).max()),
        )  # fmt: skip
        print(f"    {entry['name']}: vs the case without LoRA {entry['max_abs_diff_vs_no_lora']:.3e}")
        manifest["lora_pipeline_cases"].append(entry)
        for dtype in c["dtypes"]:
            if dtype != "float32":
                manifest["lora_pipeline_cases"].append(
                    frames_entry(f"{c['name']}__{dtype}", c["base"], dtype, c["lora"], arrays, f32)
                )

    print("LoRA on the transformer")
    lora_manifest = json.loads((FIX / "lora" / "manifest.json").read_text())
    with np.load(FIX / "lora" / "lora.npz") as z:
        lora_arrays = {k: z[k] for k in z.files}
    for name in LORA_TRANSFORMER_CASES:
        case = next(c for c in lora_manifest["cases"] if c["name"] == name)
        for dtype, tdt in DTYPES.items():
            n = f"{name}__{dtype}"
            rounded = transformer_lora_out(case, "rounded", tdt, lora_arrays)
            loaded = transformer_lora_out(case, "load", tdt, lora_arrays)
            # no T5 here: the rounded weights (with peft's 16-bit merge) are diffusers' own 16-bit load exactly
            assert np.array_equal(rounded, loaded), (n, float(np.abs(rounded - loaded).max()))
            arrays[f"{n}__out"] = rounded
            want32 = lora_arrays[case["out_key"]]
            entry = dict(
                name=n, lora_case=name, torch_dtype=dtype, out_key=f"{n}__out",
                max_abs_ref=float(np.abs(rounded).max()),
                max_abs_diff_vs_float32=float(np.abs(rounded - want32).max()),
                max_abs_diff_vs_diffusers_load=float(np.abs(rounded - loaded).max()),
            )  # fmt: skip
            print(f"    {n}: max|out| {entry['max_abs_ref']:.3f}, vs float32 {entry['max_abs_diff_vs_float32']:.3e}, "
                  f"rounded vs diffusers' load {entry['max_abs_diff_vs_diffusers_load']:.3e}")  # fmt: skip
            manifest["lora_transformer_cases"].append(entry)

    save_npz(OUT / "frames.npz", arrays)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return check_total_size(OUT, SIZE_LIMIT)


if __name__ == "__main__":
    sys.exit(main())
