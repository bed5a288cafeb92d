"""The CUDA device end to end (issue 9, "GPU tests"): every model forward and the tiny pipeline on "cuda" against the
CPU backend, the offload strategies bit for bit on cuda, VAE slicing/tiling on cuda, the README's device example with
"cuda", memory_stats("cuda"), an out-of-memory under set_memory_limit("cuda", ...), and the C CUDA op tests
(`make -C tests/c cuda`) on a real GPU.

Marker `cuda` (`pytest -m cuda`). The whole file is skipped unless build_info()["cuda"] is True: a CUDA device, real
or the CPU emulation (`CVX_CUDA_EMULATE=1 pip install -e .`). The outside truth is the CPU backend on the same
weights (itself matched against diffusers / transformers by the parity suites); tolerances are the issue's:
float32 max|cuda - cpu| <= 1e-5 * max(1, max|cpu|) (the parity suites' measure, at the issue's 1e-5), float16 /
bfloat16 compute 2e-2 with no inf/NaN (on CUDA the 16-bit torch_dtype selects tensor-core compute; the CPU
computes the same 16-bit weights in float32). End to end in 16-bit the frames drift further than one forward's
2e-2; there the bound is diffusers' own 16-bit drift on the same pipeline (test_pipeline_16bit_drift_is_within_
diffusers_own, fixture tests/fixtures/cuda_drift).

The emulation runs every GPU thread as a fiber on the CPU, so the models here are the parity suites' tiny fixtures;
tests marked `real_gpu_only` (larger sizes) run only where nvidia-smi sees a GPU.

CVX_TEST_CUDA_DEVICE=emu runs the file against the emulated accelerator instead (the CPU kernels behind the CUDA
device's memory and residency): a check of the tests themselves where no CUDA build exists.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_offload import STRATEGIES, apply, load, run

import cogvideo_c
from cogvideo_c.tiny import make_tiny_pipeline
from fixture_cases import checked_diff, compare_abs, compare_rel, npz_arrays

DEVICE = os.environ.get("CVX_TEST_CUDA_DEVICE", "cuda")
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
_INFO = cogvideo_c.build_info()


def _real_gpu() -> bool:
    """A CUDA build on a machine whose driver sees a GPU (the emulation needs no driver)."""
    if DEVICE != "cuda" or not _INFO.get("cuda") or _INFO.get("cuda_emulated") or not shutil.which("nvidia-smi"):
        return False
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return smi.returncode == 0 and "GPU" in smi.stdout


REAL_GPU = _real_gpu()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not _INFO.get("cuda"),
        reason="no CUDA device (build_info()['cuda'] is False: no CUDA kernels built, or no GPU; "
        "CVX_CUDA_EMULATE=1 pip install -e . builds the emulated one)",
    ),
]
real_gpu_only = pytest.mark.skipif(not REAL_GPU, reason="too slow under the CUDA emulation: real GPU only")
# a tiny pipeline call takes ~18 s under the emulation (on 2 cores): the file keeps one of each kind there
slow_emulated = pytest.mark.skipif(
    DEVICE == "cuda" and bool(_INFO.get("cuda_emulated")), reason="minutes under the CUDA emulation: GPU only"
)

DTYPES = ("float32", "float16", "bfloat16")
REL_TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 2e-2}
# End to end (frames in [0, 1]) the float32 bound is per forward times what the pipeline does to a forward's error:
# classifier-free guidance at scale 6 forms uncond + 6 (text - uncond), up to (1 + 2 * 6) = 13 times the error of
# each prediction, over 3 steps (measured under the emulation: 2.6e-5).
PIPELINE_F32_REL_TOL = 1e-4
# The 16-bit pipeline bound comes from diffusers' own 16-bit drift on this pipeline (tests/fixtures/cuda_drift, made
# by tests/reference/make_cuda_drift_fixtures.py): see test_pipeline_16bit_drift_is_within_diffusers_own.
CUDA_DRIFT = FIXTURES / "cuda_drift"
DRIFT_SLICE = (slice(None), slice(None, None, 2), slice(None, None, 2), slice(None, None, 2), slice(None))
DRIFT_MAX_FACTOR = 1.5  # the worst frame value may reach 1.5x diffusers' worst (a tail statistic: see the test)
DRIFT_MEAN_FACTOR = 1.0  # the mean may not exceed diffusers' mean
# our CPU frames against diffusers' stored ones: the pipeline parity suites' frames tolerance (1e-3) plus the
# float16 storage of the fixture (2^-12 on [0, 1])
DRIFT_FIXTURE_TOL = 1e-3 + 2.0**-12


def _compare(name, got, want, dtype, tolerances=REL_TOL):
    """The issue's tolerance for `dtype`; compare_rel also checks shape, float32 and that every value is finite."""
    return compare_rel(f"{name} [{DEVICE} {dtype}]", got, want, tolerances[dtype], "the CPU backend")


@pytest.fixture(autouse=True)
def device_memory_checked():
    """Every test gives back what it allocated on the device (weights, arenas, staging): a leak fails the test."""
    gc.collect()
    before = cogvideo_c.memory_stats(DEVICE)["allocated_bytes.all.current"]
    yield before
    gc.collect()
    after = cogvideo_c.memory_stats(DEVICE)["allocated_bytes.all.current"]
    assert after == before, f"{DEVICE}: {after - before} bytes still allocated after the test"


def _on_cpu_then_device(model, call):
    """(call() on the CPU, call() with the model's weights on DEVICE); the weights are back on the CPU after."""
    model.to("cpu")
    want = call()
    model.to(DEVICE)
    try:
        assert model.device.type == DEVICE, model.device
        got = call()
    finally:
        model.to("cpu")
    return want, got


# ----------------------------------------------------------------------------------------------------------------
# model forwards against the CPU backend
# ----------------------------------------------------------------------------------------------------------------

T5_CASES = ("relu_b2_l7", "gated_b2_l16", "gated_b1_l226")


def _case(component, name):
    import json

    cases = json.loads((FIXTURES / component / "manifest.json").read_text())["cases"]
    (case,) = [c for c in cases if c["name"] == name]
    return case


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", T5_CASES)
def test_t5_encoder_matches_cpu(name, dtype):
    case = _case("t5", name)
    enc = cogvideo_c.T5EncoderModel.from_pretrained(str(FIXTURES / "t5" / case["model_dir"]), torch_dtype=dtype)
    ids = npz_arrays(FIXTURES / "t5" / case["npz"])[case["input_ids"]]
    want, got = _on_cpu_then_device(enc, lambda: enc(ids.copy()).last_hidden_state)
    _compare(name, got, want, dtype)


def test_t5_float16_does_not_overflow(tmp_path):
    """T5's known float16 problem (feed-forward outputs past 65504 become inf): the gated fixture with its `wo`
    weights scaled by 2^16 (exact in float16) must stay finite on the device in float16 compute and agree with the
    float32 CPU run of the same weights."""
    from cogvideo_c import _C
    from cogvideo_c.tiny import save_safetensors

    dst = tmp_path / "gated_loud"
    shutil.copytree(FIXTURES / "t5" / "gated", dst)
    path = dst / "model.safetensors"
    full = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float32")
    tensors = {}
    for i, (name, _, shape) in enumerate(full._core.weight_info()):
        tensors[name] = np.array(full._core.weight_data(i), dtype=np.float32).reshape(shape)
        if name.endswith("DenseReluDense.wo.weight"):
            tensors[name] *= np.float32(65536.0)
    save_safetensors(tensors, str(path))
    assert set(_C.safetensors_index(str(path))) == set(tensors)
    loud = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float32")
    half = cogvideo_c.T5EncoderModel.from_pretrained(str(dst), torch_dtype="float16")
    ids = np.array([[5, 17, 3, 1, 0, 0, 0]], dtype=np.int64)
    want = loud(ids).last_hidden_state
    half.to(DEVICE)
    try:
        got = half(ids).last_hidden_state
    finally:
        half.to("cpu")
    _compare("t5 float16 with feed-forward outputs past 65504", got, want, "float16")


# 2b (sin-cos table, batch 2), 5b (RoPE, non-square), 1.5 (temporal patches, slice RoPE, batch 2), 5b-I2V (learned
# table): every positional path of the transformer
TRANSFORMER_CASES = ("t2b_f3_b2", "t5b_f2_8x16", "t15_f4_8x6_b2", "t5b_i2v_f3_sample")


def _transformer_inputs(case):
    arrays = npz_arrays(FIXTURES / "transformer" / case["npz"])
    keys = case["inputs"]

    def get(k):
        return None if keys.get(k) is None else arrays[keys[k]].copy()

    rot = (get("freqs_cos"), get("freqs_sin")) if case["rope"] == "pipeline" else None
    return dict(hidden_states=get("hidden_states"), encoder_hidden_states=get("encoder_hidden_states"),
                timestep=get("timestep"), image_rotary_emb=rot, ofs=get("ofs"))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMER_CASES)
def test_transformer_matches_cpu(name, dtype):
    case = _case("transformer", name)
    tr = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(
        str(FIXTURES / "transformer" / case["model_dir"]), torch_dtype=dtype
    )
    inputs = _transformer_inputs(case)
    want, got = _on_cpu_then_device(tr, lambda: tr(**inputs).sample)
    _compare(name, got, want, dtype)


# decode and encode, one frame batch and several (causal caches), batch 2 with slicing, tiling (custom tiles) on both
VAE_CASES = ("tiny_decode_f3", "tiny_decode_b2_slicing", "tiny_decode_tiling_custom_b2_slicing", "tiny_encode_f9",
             "tiny_encode_tiling_custom_f9", "mid_decode_f3", "mid_encode_b2_slicing")  # fmt: skip


def _vae_for(case, dtype):
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(
        str(FIXTURES / "vae" / case["model_dir"]), torch_dtype=dtype
    )
    if case["slicing"]:
        vae.enable_slicing()
    if case["tiling_args"] is not None:
        vae.enable_tiling(**case["tiling_args"])
    return vae


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", VAE_CASES)
def test_vae_matches_cpu(name, dtype):
    case = _case("vae", name)
    vae = _vae_for(case, dtype)
    x = npz_arrays(FIXTURES / "vae" / f"{case['model_dir']}.npz")[case["input"]]
    if case["op"] == "decode":
        want, got = _on_cpu_then_device(vae, lambda: vae.decode(x.copy()).sample)
        _compare(name, got, want, dtype)
    else:
        want, got = _on_cpu_then_device(
            vae, lambda: (lambda d: np.stack([d.mean, d.logvar]))(vae.encode(x.copy()).latent_dist)
        )
        _compare(f"{name} (mean, logvar)", got, want, dtype)


@real_gpu_only
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_vae_tiled_decode_of_a_large_latent_matches_cpu(dtype):
    """A latent of many tiles and frame batches (13 latent frames, 60x90: the 49-frame 480x720 shape) through the
    tiny VAE, tiled and untiled on the device against the tiled CPU decode."""
    vae = _vae_for(_case("vae", "tiny_decode_f3"), dtype)
    x = np.random.default_rng(0).standard_normal((1, 4, 13, 60, 90), dtype=np.float32)
    vae.enable_tiling()
    want, tiled = _on_cpu_then_device(vae, lambda: vae.decode(x.copy()).sample)
    _compare("tiny VAE 49 frames 480x720, tiled", tiled, want, dtype)


# ----------------------------------------------------------------------------------------------------------------
# the pipeline on the device
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        "tiny": make_tiny_pipeline(str(tmp_path_factory.mktemp("tiny"))),
        "mid": make_tiny_pipeline(
            str(tmp_path_factory.mktemp("mid")),
            transformer={"num_layers": 6, "num_attention_heads": 4},
            text_encoder={"num_layers": 3},
        ),
    }


def _pipe(folder, dtype="float32", vae_mode="plain"):
    pipe = load(folder, vae_mode)
    if dtype != "float32":
        pipe.to(dtype)
    return pipe


def test_pipeline_matches_cpu(folders):
    """The tiny text-to-video pipeline (2 prompts with guidance, 3 DDIM steps) on the device against the CPU, in
    float32 (the 16-bit runs: test_pipeline_16bit_drift_is_within_diffusers_own)."""
    pipe = _pipe(folders["tiny"])
    want = run(pipe)
    pipe.to(DEVICE)
    assert pipe.device.type == DEVICE, pipe.device
    got = run(pipe)
    pipe.to("cpu")
    _compare("tiny pipeline frames", got, want, "float32", {"float32": PIPELINE_F32_REL_TOL})


def _abs_stats(got, want):
    d = np.abs(np.asarray(got, dtype=np.float64) - want)
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_pipeline_16bit_drift_is_within_diffusers_own(folders, dtype):
    """The tiny pipeline in 16-bit compute on the device against the CPU backend (the same 16-bit weights computed in
    float32), bounded by what 16-bit compute costs diffusers on the same pipeline.

    A single forward agrees within the issue's 2e-2 (the tests above), but end to end guidance 6 multiplies each
    prediction's error by up to 13 and 3 steps feed it back, so the frames drift further: under the emulation the
    device's frames are max 2.8e-1 / mean 5.1e-3 (bfloat16) and 3.9e-2 / 6.4e-4 (float16) from the CPU's. The
    outside truth is tests/fixtures/cuda_drift (tests/reference/make_cuda_drift_fixtures.py: diffusers 0.42.1, torch
    CPU, the same checkpoint, prompts, latents, steps and guidance): diffusers computing in <dtype> against diffusers
    computing the same rounded weights in float32 drifts max 2.9e-1 / mean 1.3e-2 (bfloat16) and 5.7e-2 / 1.8e-3
    (float16). The device keeps activations in float32 (only GEMM and attention operands are 16-bit), so its drift
    must stay within diffusers' own: the mean at most diffusers' mean (measured 0.40x and 0.36x), the worst value at
    most 1.5x diffusers' worst (measured 0.96x and 0.69x; the worst of 221,184 values is a tail that a GPU's other
    accumulation order moves). A kernel that lost accuracy (16-bit accumulation, a wrong rounding) would show in the
    mean first. The CPU frames are first checked against diffusers' rounded-weights run, so the fixture is this
    pipeline."""
    import hashlib
    import json

    manifest = json.loads((CUDA_DRIFT / "manifest.json").read_text())
    for rel, digest in manifest["weight_sha256"].items():
        assert hashlib.sha256((Path(folders["tiny"]) / rel).read_bytes()).hexdigest() == digest, rel
    pipe = _pipe(folders["tiny"], dtype)
    want = run(pipe)
    pipe.to(DEVICE)
    assert pipe.device.type == DEVICE, pipe.device
    got = run(pipe)
    pipe.to("cpu")
    stored = npz_arrays(CUDA_DRIFT / "frames.npz")
    compare_abs(f"tiny pipeline frames [cpu {dtype}] {manifest['slice']}", want[DRIFT_SLICE],
                stored[f"rounded__{dtype}"].astype(np.float32), DRIFT_FIXTURE_TOL,
                "diffusers (weights rounded, float32 compute)")  # fmt: skip
    checked_diff(f"tiny pipeline frames [{DEVICE} {dtype}]", got, want, "the CPU backend")
    ours_max, ours_mean = _abs_stats(got, want)
    theirs = manifest["drift"][dtype]["16bit_vs_rounded"]
    to_diffusers_max, to_diffusers_mean = _abs_stats(got[DRIFT_SLICE], stored[f"{dtype}__16bit"].astype(np.float64))
    print(f"tiny pipeline [{DEVICE} {dtype}] vs cpu: max {ours_max:.3e} mean {ours_mean:.3e}; diffusers' own 16-bit "
          f"drift: max {theirs['max_abs']:.3e} mean {theirs['mean_abs']:.3e}; vs diffusers {dtype} on "
          f"{manifest['slice']}: max {to_diffusers_max:.3e} mean {to_diffusers_mean:.3e}")  # fmt: skip
    assert ours_mean <= DRIFT_MEAN_FACTOR * theirs["mean_abs"], (ours_mean, theirs)
    assert ours_max <= DRIFT_MAX_FACTOR * theirs["max_abs"], (ours_max, theirs)


@pytest.mark.parametrize(
    "size,dtype,vae_mode",
    [("tiny", "float32", "plain")] + [pytest.param(*p, marks=slow_emulated) for p in (
        ("tiny", "float32", "slicing"), ("tiny", "float32", "tiling"), ("mid", "float32", "tiling"),
        ("tiny", "bfloat16", "tiling"), ("tiny", "float16", "plain"))],
)  # fmt: skip
def test_every_strategy_gives_the_same_frames_on_the_device(folders, size, dtype, vae_mode, recwarn):
    """none / model / sequential / auto (max_memory) / group offload on the device: the same kernels on the same
    weights, so the frames are bit-identical to pipe.to(device)'s (and, in float32, within the tolerance of the
    CPU's). One pipeline is switched from strategy to strategy, as a user would."""
    pipe = _pipe(folders[size], dtype, vae_mode)
    cpu = run(pipe) if dtype == "float32" else None  # 16-bit compute drifts from the CPU: bounded in the test above
    reference = None
    for strategy in STRATEGIES:
        apply(pipe, strategy, DEVICE)
        got = run(pipe)
        if reference is None:
            reference = got
            if cpu is not None:
                _compare(f"{size} {vae_mode} frames", got, cpu, dtype, {"float32": PIPELINE_F32_REL_TOL})
        assert np.array_equal(got, reference), (size, dtype, vae_mode, strategy)
    pipe.maybe_free_model_hooks()
    pipe.to("cpu")


@slow_emulated
def test_auto_under_a_budget_streams_and_stays_within_it(folders, device_memory_checked):
    """enable_auto_offload(max_memory=...) at the smallest budget it says fits (asked with an impossible one first):
    it streams the transformer, the device peak of every stage stays inside the budget, and the frames equal
    pipe.to(device)'s."""
    pipe = _pipe(folders["mid"], vae_mode="tiling")
    pipe.to(DEVICE)
    reference = run(pipe)
    pipe.to("cpu")
    pipe.enable_auto_offload(max_memory=4096, device=DEVICE)
    with pytest.raises(
        cogvideo_c.OutOfMemoryError, match=r"the smallest budget that fits is .* \((\d+) bytes\)"
    ) as err:
        run(pipe)
    budget = int(re.search(r"fits is .*? \((\d+) bytes\)", str(err.value)).group(1))
    pipe.enable_auto_offload(max_memory=budget, device=DEVICE)
    got = run(pipe)
    assert np.array_equal(got, reference)
    report = pipe.memory_report()
    assert report["denoise"]["device_peak_weights_bytes"] < pipe.transformer.weight_bytes, report["denoise"]
    for stage, rec in report.items():
        assert rec["device_peak_bytes"] - device_memory_checked <= budget, (stage, rec, budget)
    pipe.maybe_free_model_hooks()
    pipe.to("cpu")


def _readme_block(marker):
    """The README's python block containing `marker` (test_readme_examples reads them the same way; it is not
    imported here because it needs imageio-ffmpeg at import, which a GPU machine may lack)."""
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S) if marker in b
    ]
    assert len(blocks) == 1, f"README.md: expected one python block with {marker!r}, found {len(blocks)}"
    return blocks[0]


@slow_emulated
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_readme_device_example_runs_on_the_device(folders, dtype, monkeypatch, capsys):
    """The README's 'Devices and offload' block with its device named DEVICE (and the tiny pipeline, 2 steps): it
    runs as written, prints the report and a device peak, and the frames match a plain CPU run within the 16-bit
    tolerance (uint8 levels)."""
    code = _readme_block("enable_sequential_cpu_offload(device=")
    assert code.count('"path/to/CogVideoX-2b"') == 1 and code.count("num_inference_steps=50") == 1, code
    assert re.search(r'device="(emu|cuda)"', code), "the README's device example names no device"
    code = re.sub(r'"(emu|cuda)"', repr(DEVICE), code)
    code = code.replace('"path/to/CogVideoX-2b"', repr(folders["tiny"])).replace(
        "num_inference_steps=50", "num_inference_steps=2"
    )
    code = code.replace('torch_dtype="float16"', f'torch_dtype="{dtype}"')
    from_pretrained = cogvideo_c.CogVideoXPipeline.from_pretrained
    loaded = []

    def loading(*args, **kwargs):
        pipe = from_pretrained(*args, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        loaded.append(pipe)
        return pipe

    monkeypatch.setattr(cogvideo_c.CogVideoXPipeline, "from_pretrained", loading)
    scope: dict = {}
    exec(compile(code, f"README.md (device example, {DEVICE})", "exec"), scope)
    printed = capsys.readouterr().out
    assert "encode_prompt" in printed and "denoise" in printed and "decode" in printed, printed
    assert int(printed.strip().splitlines()[-1]) > 0  # memory_stats(DEVICE) peak
    plain = from_pretrained(folders["tiny"], torch_dtype=dtype)
    plain.set_progress_bar_config(disable=True)
    plain.vae.enable_tiling()
    want = plain(prompt="A panda playing a guitar", num_inference_steps=2, num_frames=49, generator=42).frames[0]
    got = np.stack([np.asarray(f, dtype=np.float32) for f in scope["video"]]) / 255.0
    _compare("README device example frames (uint8 / 255)", got, np.stack([np.asarray(f) for f in want]) / 255.0,
             dtype)  # fmt: skip
    loaded[0].maybe_free_model_hooks()
    loaded[0].to("cpu")


# ----------------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------------


def test_memory_stats_count_weights_and_activations(folders, device_memory_checked):
    """After pipe.to(device) the device holds exactly the weights; a call's peak is the weights plus its largest
    stage arena, as memory_report() says; reserved bytes cover allocated ones; pipe.to("cpu") gives it all back."""
    base = device_memory_checked
    pipe = _pipe(folders["tiny"])
    weights = sum(m.weight_bytes for m in (pipe.text_encoder, pipe.transformer, pipe.vae))
    w0 = cogvideo_c.memory_stats(DEVICE)["weights_bytes.current"]
    pipe.to(DEVICE)
    stats = cogvideo_c.memory_stats(DEVICE)
    assert stats["weights_bytes.current"] - w0 == weights
    assert stats["allocated_bytes.all.current"] - base == weights
    cogvideo_c.reset_peak_memory_stats(DEVICE)
    run(pipe)
    stats = cogvideo_c.memory_stats(DEVICE)
    report = pipe.memory_report()
    largest = max(rec["device_peak_activations_bytes"] for rec in report.values())
    for stage, rec in report.items():
        assert rec["device_peak_weights_bytes"] == weights, stage
        assert rec["device_peak_bytes"] == weights + rec["device_peak_activations_bytes"], stage
    assert stats["allocated_bytes.all.peak"] - base == weights + largest, (stats, report)
    assert stats["activations_bytes.peak"] >= largest
    assert stats["allocated_bytes.all.current"] - base == weights  # no arena left after the call
    assert stats["reserved_bytes.all.current"] >= stats["allocated_bytes.all.current"]
    assert stats["reserved_bytes.all.peak"] >= stats["allocated_bytes.all.peak"]
    assert cogvideo_c.max_memory_allocated(DEVICE) == stats["allocated_bytes.all.peak"]
    pipe.to("cpu")
    assert cogvideo_c.memory_allocated(DEVICE) == base


STRATEGY_NAMES = r"enable_(sequential_cpu_offload|model_cpu_offload|group_offload|auto_offload)"


def _strategy_named(message):
    m = re.search(STRATEGY_NAMES, message)
    assert m, f"the out-of-memory message names no strategy that would fit: {message!r}"
    return m.group(1)


def _apply_named(pipe, name, limit):
    if name == "auto_offload":
        pipe.enable_auto_offload(max_memory=limit, device=DEVICE)
    elif name == "group_offload":
        pipe.enable_group_offload(DEVICE, offload_type="leaf_level", use_stream=True)
    else:
        getattr(pipe, f"enable_{name}")(device=DEVICE)


def test_out_of_memory_names_a_strategy_that_fits_and_leaks_nothing(folders, device_memory_checked):
    """Under set_memory_limit(device, L), L the smallest budget auto says fits (asked with an impossible one
    first), pipe.to(device) + a call (which needs more than L) raises OutOfMemoryError naming a strategy; nothing
    stays allocated once the pipeline is back on the CPU; the strategy it names then runs inside L and gives the
    frames of an unlimited run."""
    base = device_memory_checked
    pipe = _pipe(folders["tiny"], vae_mode="tiling")
    pipe.to(DEVICE)
    cogvideo_c.reset_peak_memory_stats(DEVICE)
    reference = run(pipe)
    whole = cogvideo_c.max_memory_allocated(DEVICE) - base
    pipe.to("cpu")
    pipe.enable_auto_offload(max_memory=4096, device=DEVICE)
    with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
        run(pipe)
    smallest = int(re.search(r"fits is .*? \((\d+) bytes\)", str(err.value)).group(1))
    pipe.maybe_free_model_hooks()
    pipe._remove_offload()
    assert smallest < whole, (smallest, whole)  # the limit below is one that pipe.to(device) does not fit
    limit = base + smallest
    ooms = cogvideo_c.memory_stats(DEVICE)["num_ooms"]
    cogvideo_c.set_memory_limit(DEVICE, limit)
    try:
        with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
            pipe.to(DEVICE)
            run(pipe)
        message = str(err.value)
        print(message)
        assert cogvideo_c.memory_stats(DEVICE)["num_ooms"] > ooms
        name = _strategy_named(message)
        pipe.to("cpu")
        assert cogvideo_c.memory_allocated(DEVICE) == base, "the failed call left device memory allocated"
        _apply_named(pipe, name, smallest)
        cogvideo_c.reset_peak_memory_stats(DEVICE)
        got = run(pipe)
        assert cogvideo_c.max_memory_allocated(DEVICE) <= limit
        assert np.array_equal(got, reference), f"{name} under the limit changed the frames"
    finally:
        cogvideo_c.set_memory_limit(DEVICE, None)
        pipe.maybe_free_model_hooks()
        pipe.to("cpu")


@slow_emulated
def test_a_device_name_with_an_index_and_gpu_id(folders):
    """device="cuda:0" and gpu_id=0 are diffusers' spellings of the one device; another index is refused."""
    if DEVICE != "cuda":
        pytest.skip("cuda:N names only")
    pipe = _pipe(folders["tiny"])
    want = run(pipe)
    pipe.to("cuda:0")
    assert pipe.device.type == "cuda", pipe.device
    _compare("cuda:0 frames", run(pipe), want, "float32", {"float32": PIPELINE_F32_REL_TOL})
    pipe.to("cpu")
    pipe.enable_model_cpu_offload(gpu_id=0, device="cuda")
    _compare("gpu_id=0 frames", run(pipe), want, "float32", {"float32": PIPELINE_F32_REL_TOL})
    pipe.maybe_free_model_hooks()
    beyond = f"cuda:{max(1, _INFO.get('cuda_devices', 1))}"  # one past the last device
    with pytest.raises(ValueError, match=re.escape(beyond)):
        pipe.to(beyond)
    pipe.to("cpu")


# ----------------------------------------------------------------------------------------------------------------
# the C CUDA op tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_GPU, reason="the C CUDA op tests run on a real GPU (make -C tests/c cuda-emu emulates)")
def test_c_cuda_op_tests_on_the_gpu():
    """`make -C tests/c cuda`: every CUDA op against its CPU twin on the GPU (CVX_CUDA_TEST_BIG=1 from the
    environment adds the S = 17,776 attention case)."""
    jobs = f"-j{os.cpu_count() or 1}"
    proc = subprocess.run(["make", jobs, "-C", str(ROOT / "tests" / "c"), "cuda", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, (
        f"make -C tests/c cuda failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
