"""What the VAE memory strategies promise, measured with cogvideo_c.memory_stats.

Working memory = peak allocated during the call, above what was allocated before it, less the returned output's
bytes. The bounds come from the issue: tiling makes working memory depend on the tile, slicing on one batch item.
"""

import gc
import os

import numpy as np
import pytest

import cogvideo_c
from conftest import VAE_FIXTURES

TINY = os.path.join(VAE_FIXTURES, "tiny")


@pytest.fixture(scope="module")
def vae():
    return cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(TINY)


def working_memory(fn, *args):
    gc.collect()
    before = cogvideo_c.memory_stats()["allocated_bytes.all.current"]
    cogvideo_c.reset_peak_memory_stats()
    out = fn(*args)
    peak = cogvideo_c.memory_stats()["allocated_bytes.all.peak"]
    return peak - before - out.nbytes, out


def latents(b, f, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((b, 4, f, h, w), dtype=np.float32)


def test_tiling_working_memory_depends_on_the_tile_not_the_frame(vae):
    vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_overlap_factor_height=1 / 4,
        tile_overlap_factor_width=1 / 4,
    )
    try:
        small, _ = working_memory(lambda z: vae.decode(z).sample, latents(1, 3, 12, 12))
        large, _ = working_memory(lambda z: vae.decode(z).sample, latents(1, 3, 24, 24))
    finally:
        vae.disable_tiling()
    ratio = large / small
    print(f"tiled working memory: {small} -> {large} bytes for 4x the latent area (x{ratio:.3f})")
    assert ratio <= 1.3, f"quadrupling the area raised tiled working memory x{ratio:.3f} (> 1.3)"


def test_slicing_working_memory_is_one_batch_items(vae):
    vae.enable_slicing()
    try:
        one, _ = working_memory(lambda z: vae.decode(z).sample, latents(1, 3, 8, 8))
        four, _ = working_memory(lambda z: vae.decode(z).sample, latents(4, 3, 8, 8))
    finally:
        vae.disable_slicing()
    ratio = four / one
    print(f"sliced working memory: batch 1 {one}, batch 4 {four} bytes (x{ratio:.3f})")
    assert ratio <= 1.15, f"batch 4 needs x{ratio:.3f} the working memory of batch 1 with slicing (> 1.15)"


def test_without_strategies_working_memory_grows_with_the_input(vae):
    # a fixed part (per-thread im2col buffers) plus a part linear in the input: the increments must be linear
    w1, _ = working_memory(lambda z: vae.decode(z).sample, latents(1, 3, 8, 8))
    w2, _ = working_memory(lambda z: vae.decode(z).sample, latents(2, 3, 8, 8))
    w4, _ = working_memory(lambda z: vae.decode(z).sample, latents(4, 3, 8, 8))
    a4, _ = working_memory(lambda z: vae.decode(z).sample, latents(1, 3, 16, 16))
    print(f"plain working memory: b1 {w1}, b2 {w2}, b4 {w4}, 4x area {a4} bytes")
    assert abs((w4 - w2) - 2 * (w2 - w1)) <= 0.15 * (w4 - w2), "batch growth is not linear"
    assert w4 >= 1.8 * w1, f"batch 4 needs only x{w4 / w1:.2f} of batch 1 without slicing"
    assert a4 >= 1.8 * w1, f"4x the area needs only x{a4 / w1:.2f} without tiling"


def test_weights_and_activations_are_reported_separately(vae):
    stats = cogvideo_c.memory_stats()
    # the checkpoint holds f32 tensors: their bytes, each rounded up to the 64-byte alignment of its group
    from cogvideo_c._load import _C

    index = _C.safetensors_index(os.path.join(TINY, "diffusion_pytorch_model.safetensors"))
    tensor_bytes = sum(4 * int(np.prod(shape)) for _, shape in index.values())
    padded = sum(-(-4 * int(np.prod(shape)) // 64) * 64 for _, shape in index.values())
    assert vae.weight_bytes == padded, (vae.weight_bytes, padded)
    assert tensor_bytes <= vae.weight_bytes <= tensor_bytes + 64 * len(index)
    assert stats["weights_bytes.current"] >= vae.weight_bytes
    before = stats["activations_bytes.current"]
    cogvideo_c.reset_peak_memory_stats()
    out = vae.decode(latents(1, 2, 4, 4)).sample
    stats = cogvideo_c.memory_stats()
    assert stats["activations_bytes.current"] == before + out.nbytes  # only the output stays
    assert stats["activations_bytes.peak"] > before + out.nbytes
    assert stats["weights_bytes.peak"] == stats["weights_bytes.current"]  # decode allocates no weights
    assert vae.num_weight_groups == 2 * 4 + 3  # one per block, two mid blocks, one for the rest


def test_memory_limit_raises_and_leaks_nothing(vae):
    z = latents(2, 3, 8, 8)
    gc.collect()
    before = cogvideo_c.memory_stats()
    cogvideo_c.set_memory_limit("cpu", before["allocated_bytes.all.current"] + 64 * 1024)
    try:
        with pytest.raises(cogvideo_c.OutOfMemoryError, match="enable_tiling") as info:
            vae.decode(z)
        assert isinstance(info.value, MemoryError)
        assert "memory limit" in str(info.value)
    finally:
        cogvideo_c.set_memory_limit("cpu", None)
    after = cogvideo_c.memory_stats()
    assert after["allocated_bytes.all.current"] == before["allocated_bytes.all.current"]
    assert after["allocation.all.current"] == before["allocation.all.current"]
    assert after["num_ooms"] == before["num_ooms"] + 1
    # and the process is healthy: the same call works without the limit
    assert vae.decode(z).sample.shape == (2, 3, 9, 64, 64)


def test_emulated_accelerator_has_its_own_statistics():
    cpu = cogvideo_c.memory_stats("cpu")
    emu = cogvideo_c.memory_stats("emu")
    assert emu["allocated_bytes.all.current"] == 0
    assert cpu is not emu
    cogvideo_c.set_memory_limit("emu", 1 << 20)
    assert cogvideo_c.memory_stats("emu")["memory_limit_bytes"] == 1 << 20
    assert cogvideo_c.memory_stats("cpu")["memory_limit_bytes"] == 0
    cogvideo_c.set_memory_limit("emu", 0)
    with pytest.raises(ValueError, match="unknown device"):
        cogvideo_c.memory_stats("tpu")


def test_memory_helpers_agree_with_memory_stats(vae):
    cogvideo_c.reset_peak_memory_stats()
    vae.decode(latents(1, 1, 4, 4))
    stats = cogvideo_c.memory_stats()
    assert cogvideo_c.memory_allocated() == stats["allocated_bytes.all.current"]
    assert cogvideo_c.max_memory_allocated() == stats["allocated_bytes.all.peak"]
    with pytest.raises(ValueError, match=">= 0"):
        cogvideo_c.set_memory_limit("cpu", -1)
