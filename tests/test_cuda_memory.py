"""The "cuda" device of the memory manager from Python: device selection (cuda, cuda:N, gpu_id as diffusers reads
them), memory_stats("cuda") and its caching allocator (reserved against cudaMemGetInfo, empty_cache), the offload
strategies placing weights on cuda, set_memory_limit's OutOfMemoryError naming the strategy that fits and leaking
nothing, and pinned host memory for the weight groups.

Runs wherever build_info()["cuda"] is True: on a GPU, or on the CPU against the emulated CUDA runtime
(CVX_CUDA_EMULATE=1 pip install -e .). Model/pipeline parity on cuda is tests/test_cuda.py's."""

import gc
import os
import re

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import _C
from cogvideo_c.offload import resolve_device
from cogvideo_c.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_pipeline
from conftest import VAE_FIXTURES

NO_CUDA = not cogvideo_c.build_info()["cuda"]


def on_cuda(test):
    """Every test but the last (which runs on the emulated accelerator too): the cuda marker, skipped where
    build_info() has no cuda, and checked to leave the device as it found it."""
    marks = (pytest.mark.usefixtures("cuda_baseline"), pytest.mark.skipif(NO_CUDA, reason="no CUDA device"))
    for mark in (*marks, pytest.mark.cuda):
        test = mark(test)
    return test


MiB = 1 << 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_pipeline(str(tmp_path_factory.mktemp("tiny")), transformer={"num_layers": 4})


@pytest.fixture
def cuda_baseline():
    """Each test starts and ends with what earlier tests left on the device: nothing of its own stays behind."""
    gc.collect()
    before = cogvideo_c.memory_stats("cuda")
    yield before
    cogvideo_c.set_memory_limit("cuda", 0)
    gc.collect()
    after = cogvideo_c.memory_stats("cuda")
    assert after["allocated_bytes.all.current"] == before["allocated_bytes.all.current"]
    assert after["allocation.all.current"] == before["allocation.all.current"]


def load(folder):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_on_cuda():
    return cogvideo_c.memory_stats("cuda")["weights_bytes.current"]


@on_cuda
def test_device_names_and_gpu_id_follow_diffusers():
    count = cogvideo_c.build_info()["cuda_devices"]
    assert count >= 1 and "cuda" in cogvideo_c.build_info()["devices"]
    assert resolve_device("cuda") == "cuda:0" and resolve_device(0) == "cuda:0"
    assert resolve_device("cuda", gpu_id=0) == "cuda:0" and resolve_device("cuda:0").index == 0
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ValueError, match="both `gpu_id`=0 and an index"):
        resolve_device("cuda:0", gpu_id=0)
    with pytest.raises(ValueError, match=rf"'cuda:{count}': no such device"):
        resolve_device("cuda", gpu_id=count)
    with pytest.raises(ValueError, match="gpu_id must be a non-negative int"):
        resolve_device("cuda", gpu_id=-1)


@on_cuda
def test_model_to_cuda_moves_every_weight_group_and_back(folder):
    pipe = load(folder)
    tr = pipe.transformer
    before = weights_on_cuda()
    assert tr.to("cuda") is tr
    assert tr.device == "cuda:0" and tr.device.type == "cuda"
    info = _C.residency_info(tr._core)
    assert info["device"] == "cuda" and info["policy"] == "none"
    assert all(state == "resident" for _, state in info["groups"])
    assert weights_on_cuda() - before == tr.weight_bytes == info["resident_bytes"]
    assert info["bytes_copied"] == tr.weight_bytes
    tr.to("cpu")
    assert weights_on_cuda() == before and tr.device == "cpu"


@on_cuda
def test_memory_stats_keys_and_peaks(folder):
    stats = cogvideo_c.memory_stats("cuda")
    for key in ("allocated_bytes.all.current", "allocated_bytes.all.peak", "reserved_bytes.all.current",
                "reserved_bytes.all.peak", "weights_bytes.current", "activations_bytes.current", "num_ooms",
                "memory_limit_bytes", "pinned_bytes.current"):  # fmt: skip
        assert key in stats, key
    assert cogvideo_c.memory_stats("cuda:0") == stats  # an index names the same device
    pipe = load(folder)
    pipe.to("cuda")
    stats = cogvideo_c.memory_stats("cuda")
    assert stats["reserved_bytes.all.current"] >= stats["allocated_bytes.all.current"] > 0
    pipe.to("cpu")
    cogvideo_c.reset_peak_memory_stats("cuda")
    stats = cogvideo_c.memory_stats("cuda")
    assert stats["allocated_bytes.all.peak"] == stats["allocated_bytes.all.current"]
    assert stats["reserved_bytes.all.peak"] == stats["reserved_bytes.all.current"]
    assert cogvideo_c.max_memory_allocated("cuda") == cogvideo_c.memory_allocated("cuda")


@on_cuda
def test_empty_cache_gives_the_cache_back_as_cudaMemGetInfo_sees_it(folder):
    pipe = load(folder)
    pipe.to("cuda")
    pipe.to("cpu")  # the weights' blocks stay cached
    del pipe
    gc.collect()
    stats = cogvideo_c.memory_stats("cuda")
    cached = stats["reserved_bytes.all.current"]
    free_before, total = _C.cuda_mem_get_info()
    cogvideo_c.empty_cache()
    after = cogvideo_c.memory_stats("cuda")
    free_after, _ = _C.cuda_mem_get_info()
    released = cached - after["reserved_bytes.all.current"]
    assert released > 0
    # the emulation counts exact cudaMalloc bytes; a GPU may differ by its page tables
    assert abs((free_after - free_before) - released) <= 4 * MiB, (free_after - free_before, released)
    assert after["allocated_bytes.all.current"] == stats["allocated_bytes.all.current"]


@on_cuda
def test_every_strategy_places_its_weights_on_cuda(folder):
    pipe = load(folder)
    base = weights_on_cuda()
    pipe.enable_model_cpu_offload(device="cuda")
    assert pipe._offload.device == "cuda:0" and weights_on_cuda() == base  # nothing comes before a component runs
    _C.residency_onload(pipe.transformer._core)  # what the hook does when the transformer runs
    assert weights_on_cuda() - base == pipe.transformer.weight_bytes
    pipe.maybe_free_model_hooks()
    assert weights_on_cuda() == base
    pipe.enable_model_cpu_offload(gpu_id=0)  # diffusers: the accelerator, cuda:gpu_id
    assert pipe._offload.device == "cuda:0"
    with pytest.raises(ValueError, match="no such device"):
        pipe.enable_model_cpu_offload(gpu_id=cogvideo_c.build_info()["cuda_devices"])
    pipe.enable_sequential_cpu_offload(device="cuda")
    assert pipe._offload.device == "cuda:0"
    assert _C.residency_info(pipe.transformer._core)["policy"] == "sequential"
    pipe.to("cpu")
    pipe._remove_offload()
    pipe.enable_group_offload(onload_device="cuda", num_blocks_per_group=1, use_stream=True)
    assert all(_C.residency_info(m._core)["device"] == "cuda" for m in pipe._models())
    assert weights_on_cuda() == base

    fresh = load(folder)
    free, _ = _C.cuda_mem_get_info()
    reserved = cogvideo_c.memory_stats("cuda")["reserved_bytes.all.current"]
    fresh.enable_auto_offload(device="cuda")  # accelerate's default: the device's free memory
    assert fresh._offload.budget == free + reserved
    fresh.enable_auto_offload(max_memory="1GB", device="cuda")
    assert fresh._offload.budget == 10**9


@on_cuda
def test_memory_limit_names_the_strategy_that_fits_and_leaks_nothing(folder, cuda_baseline):
    pipe = load(folder)
    models = pipe._models()
    sizes = sorted(m.weight_bytes for m in models)
    used = cuda_baseline["allocated_bytes.all.current"]
    # room for the largest component, not for all of them: model offload fits
    cogvideo_c.set_memory_limit("cuda", used + sizes[-1] + sizes[0] // 2)
    with pytest.raises(cogvideo_c.OutOfMemoryError, match=r"enable_model_cpu_offload\(\) would fit") as err:
        pipe.to("cuda")
    assert "memory limit" in str(err.value)
    assert cogvideo_c.memory_stats("cuda")["allocated_bytes.all.current"] == used  # the components moved went back
    assert all(m.device == "cpu" and _C.residency_info(m._core)["device"] == "cpu" for m in models)
    # room for less than the largest: streaming its blocks fits
    tr_info = _C.residency_info(pipe.transformer._core)
    groups = [b for b, _ in tr_info["groups"]]
    ring = 2 * max(groups[1:]) + groups[0]
    vae = pipe.vae.weight_bytes
    if ring < sizes[-1] and vae < sizes[-1]:
        cogvideo_c.set_memory_limit("cuda", used + max(ring, vae, pipe.text_encoder.weight_bytes // 2) + 64)
        with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
            pipe.transformer.to("cuda")
        message = str(err.value)
        assert re.search(r"enable_(sequential|model)_cpu_offload\(\) would fit", message), message
        assert cogvideo_c.memory_stats("cuda")["allocated_bytes.all.current"] == used
    cogvideo_c.set_memory_limit("cuda", 0)
    pipe.to("cuda")  # and the process is healthy
    pipe.to("cpu")


@on_cuda
def test_weight_groups_copy_from_pinned_host_memory():
    base = cogvideo_c.memory_stats("cuda")["pinned_bytes.current"]
    path = os.path.join(VAE_FIXTURES, "tiny_f16")
    # float16 run of a float16 checkpoint: the groups read the mapped file in place; it is pinned as it is
    mapped = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(path, dtype="float16")
    mapped.to("cuda")
    info = _C.residency_info(mapped._core)
    assert info["mapped_bytes"] > 0 and info["pinned_bytes"] >= info["mapped_bytes"]
    file_bytes = os.path.getsize(os.path.join(path, "diffusion_pytorch_model.safetensors"))
    pinned = cogvideo_c.memory_stats("cuda")["pinned_bytes.current"] - base
    assert pinned >= file_bytes, (pinned, file_bytes)  # the whole mapping, once
    # float32 run of it: converted host copies, each on pages of its own and pinned alone
    converted = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(path, dtype="float32")
    converted.to("cuda")
    cinfo = _C.residency_info(converted._core)
    assert cinfo["mapped_bytes"] == 0 and cinfo["pinned_bytes"] > 0
    assert cogvideo_c.memory_stats("cuda")["pinned_bytes.current"] - base == pinned + cinfo["pinned_bytes"]
    del mapped, converted
    gc.collect()
    assert cogvideo_c.memory_stats("cuda")["pinned_bytes.current"] == base  # unpinned with the weights


def _cuda_ops_ready():
    """False while the CUDA ops of this build are the temporary stubs (a forward then fails before any work)."""
    tr = cogvideo_c.CogVideoXTransformer3DModel.from_config(dict(TINY_TRANSFORMER_CONFIG, num_layers=1))
    tr.to("cuda")
    try:
        tr(*_tiny_inputs(tr))
        return True
    except RuntimeError as err:
        if "not implemented on CUDA yet" in str(err):
            return False
        raise
    finally:
        tr.to("cpu")


def _tiny_inputs(tr):
    rng = np.random.default_rng(0)
    c = tr.config
    x = rng.standard_normal((1, 3, c.in_channels, 8, 8), dtype=np.float32)
    text = rng.standard_normal((1, 226, c.text_embed_dim), dtype=np.float32)
    return x, text, np.array([500])


@pytest.mark.parametrize(
    "device",
    ["emu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(NO_CUDA, reason="no CUDA device")])],
)
def test_a_call_out_of_device_memory_names_the_plan_that_fits(folder, device):
    """pipe.to(device), then a call whose activations do not fit: the OutOfMemoryError names the auto planner's
    answer for that request (the smallest budget that fits, or the plan that fits the budget the device has), the
    device keeps only the weights, and the plan it names runs within that budget."""
    if device == "cuda" and not _cuda_ops_ready():
        pytest.skip("the CUDA ops of this build are still stubs")
    gc.collect()
    pipe = load(folder)
    pipe.to(device)
    held = cogvideo_c.memory_stats(device)["allocated_bytes.all.current"]
    others = held - sum(m.weight_bytes for m in pipe._models())  # what earlier tests' objects hold there

    def call():
        return pipe(prompt="a cat", num_inference_steps=2, generator=0, output_type="np").frames

    try:
        cogvideo_c.set_memory_limit(device, held + 4096)  # no room for any stage's activations
        with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
            call()
        message = str(err.value)
        assert "memory limit" in message
        assert cogvideo_c.memory_stats(device)["allocated_bytes.all.current"] == held  # no arena left behind
        found = re.search(r"the smallest budget that fits is .*? \((\d+) bytes\), with (.*); device peak", message)
        assert found, message
        smallest, plan = int(found.group(1)), found.group(2)

        cogvideo_c.set_memory_limit(device, others + smallest)  # the device can give exactly that budget
        with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
            call()  # still everything resident: too much
        fit = r"of \S+ would fit this request with (.*?); device peak .*? \(enable_auto_offload\(max_memory=(\d+)\)"
        found = re.search(fit, str(err.value))
        assert found and int(found.group(2)) == smallest and found.group(1) == plan, str(err.value)
        assert cogvideo_c.memory_stats(device)["allocated_bytes.all.current"] == held

        pipe.enable_auto_offload(max_memory=smallest, device=device)  # what the message says fits does fit
        frames = call()
        assert frames.shape[0] == 1 and np.isfinite(frames).all()
    finally:
        cogvideo_c.set_memory_limit(device, 0)
        pipe.to("cpu")
