"""CogVideoXTransformer3DModel beyond parity: memory promises, weight storage, random construction, bad input."""

import gc
import json
import os

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c._load import _C
from conftest import FIXTURES

TR = os.path.join(FIXTURES, "transformer")


def small_config(**over):
    cfg = dict(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    cfg.update(over)
    return cfg


def inputs(model, frames, h, w, text=8, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    c = model.config
    hidden = rng.standard_normal((batch, frames, c.in_channels, h, w), dtype=np.float32)
    text_emb = rng.standard_normal((batch, text, c.text_embed_dim), dtype=np.float32)
    return hidden, text_emb, np.full((batch,), 500, dtype=np.int64)


def peak_activations(fn):
    gc.collect()
    before = cogvideo_c.memory_stats()["activations_bytes.current"]
    cogvideo_c.reset_peak_memory_stats()
    out = fn()
    return cogvideo_c.memory_stats()["activations_bytes.peak"] - before - out.nbytes


def test_attention_working_memory_grows_linearly_in_tokens():
    # with an S x S score matrix, doubling the tokens would need ~4x the activations; here it must stay ~2x
    model = cogvideo_c.CogVideoXTransformer3DModel.from_config(small_config(), seed=1)
    h1, e1, t1 = inputs(model, 4, 32, 32)  # 8 + 4 * 256 = 1032 tokens
    h2, e2, t2 = inputs(model, 8, 32, 32)  # 8 + 8 * 256 = 2056 tokens
    small = peak_activations(lambda: model(h1, e1, t1).sample)
    large = peak_activations(lambda: model(h2, e2, t2).sample)
    ratio = large / small
    full_matrix = 4 * 2056 * 2056  # what one head's S x S matrix alone would take
    print(f"peak activations: {small} -> {large} bytes (x{ratio:.3f}); one S x S matrix: {full_matrix} bytes")
    assert ratio <= 2.3, f"doubling the tokens raised peak activations x{ratio:.3f} (> 2.3)"
    assert large < full_matrix


def checkpoint_tensor_bytes(folder):
    index = _C.safetensors_index(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
    return index, sum(sizes[dt] * int(np.prod(shape)) for dt, shape in index.values())


@pytest.mark.parametrize("folder,dtype", [("t2b_f16", "float16"), ("t5b_bf16", "bfloat16"), ("t2b", "float32")])
def test_weight_bytes_are_the_checkpoints_tensor_bytes(folder, dtype):
    path = os.path.join(TR, folder)
    index, tensor_bytes = checkpoint_tensor_bytes(path)
    gc.collect()
    before = cogvideo_c.memory_stats()
    model = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(path, torch_dtype=dtype)
    after = cogvideo_c.memory_stats()
    copied = after["weights_bytes.current"] - before["weights_bytes.current"]
    mapped = after["mapped_weights_bytes.current"] - before["mapped_weights_bytes.current"]
    print(f"{folder}: checkpoint tensors {tensor_bytes} bytes, weights {model.weight_bytes} bytes in the device "
          f"layout, host: {mapped} read in place from the mapped file, {copied} copied")
    # stored in the run dtype: every tensor is read in place from the mapping, no host copy at all
    assert copied == 0 and mapped == tensor_bytes
    # the device layout holds the same bytes, up to each tensor's 64-byte alignment inside its group
    assert tensor_bytes <= model.weight_bytes < tensor_bytes + 64 * len(index)
    assert model.num_weight_groups == model.config.num_layers + 1


def test_16bit_weights_give_the_f32_results():
    # f16 values widen exactly, so keeping the weights 16-bit (widened tile by tile) must match converting at load
    path = os.path.join(TR, "t2b_f16")
    half = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(path, torch_dtype="float16")
    full = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(path, torch_dtype="float32")
    h, e, t = inputs(full, 3, 8, 12)
    a, b = half(h, e, t).sample, full(h, e, t).sample
    diff = float(np.abs(a - b).max())
    print(f"f16-resident vs f32-converted weights: max abs diff {diff:.3e}")
    assert diff <= 1e-6 * max(1.0, float(np.abs(b).max()))


def test_from_config_builds_the_same_architecture_as_the_checkpoint():
    path = os.path.join(TR, "t5b")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    loaded = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(path)
    built = cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg, seed=3)
    assert built.weight_bytes == loaded.weight_bytes
    h, e, t = inputs(built, 2, 8, 12)
    out = built(h, e, t, image_rotary_emb=built.rotary_positional_embeddings(64, 96, 2)).sample
    again = cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg, seed=3)(
        h, e, t, image_rotary_emb=built.rotary_positional_embeddings(64, 96, 2)
    ).sample
    assert out.shape == h.shape and np.isfinite(out).all() and out.std() > 1e-3
    assert np.array_equal(out, again)  # seeded: the same weights every time


@pytest.fixture(scope="module")
def t2b():
    return cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(os.path.join(TR, "t2b"))


@pytest.fixture(scope="module")
def t15():
    return cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(os.path.join(TR, "t15_i2v"))


def rejected_before_work(fn, match):
    """The call raises ValueError(match) and no allocation was made for it."""
    before = cogvideo_c.memory_stats()["allocation.all.allocated"]
    with pytest.raises(ValueError, match=match):
        fn()
    assert cogvideo_c.memory_stats()["allocation.all.allocated"] == before, "work started before the check"


class TestBadInput:
    def test_wrong_latent_channels(self, t2b):
        h, e, t = inputs(t2b, 2, 8, 12)
        rejected_before_work(lambda: t2b(h[:, :, :3], e, t), "has 3 channels; the model's in_channels is 4")

    def test_size_not_divisible_by_the_patch(self, t2b):
        h, e, t = inputs(t2b, 2, 7, 12)
        rejected_before_work(lambda: t2b(h, e, t), "divisible by patch_size 2")

    def test_text_length_the_table_cannot_hold(self, t2b):
        h, e, t = inputs(t2b, 2, 8, 12, text=5)
        rejected_before_work(lambda: t2b(h, e, t), "5 tokens but the positional table holds")

    def test_frames_that_temporal_patches_cannot_take(self, t15):
        h, e, t = inputs(t15, 3, 8, 8)
        rejected_before_work(lambda: t15(h, e, t, ofs=2.0), "3 latent frames cannot be split")

    def test_timestep_of_the_wrong_shape(self, t2b):
        h, e, _ = inputs(t2b, 2, 8, 12, batch=2)
        rejected_before_work(lambda: t2b(h, e, np.zeros((3,))), "timestep must be a scalar or have one value")
        rejected_before_work(lambda: t2b(h, e, np.zeros((2, 1))), "timestep must be a scalar or have one value")

    def test_missing_ofs(self, t15):
        h, e, t = inputs(t15, 2, 8, 8)
        rejected_before_work(lambda: t15(h, e, t), "pass ofs")

    def test_rotary_tables_of_the_wrong_shape(self, t15):
        h, e, t = inputs(t15, 2, 8, 8)
        cos, sin = t15.rotary_positional_embeddings(64, 64, 2)
        rejected_before_work(lambda: t15(h, e, t, ofs=2.0, image_rotary_emb=(cos[:-1], sin)), "image_rotary_emb")

    def test_grid_larger_than_the_15_rope_base(self, t15):
        with pytest.raises(ValueError, match="larger than the model's"):
            t15.rotary_positional_embeddings(height=8 * 2 * 20, width=64, num_latent_frames=2)

    def test_wrong_rank_and_text_width(self, t2b):
        h, e, t = inputs(t2b, 2, 8, 12)
        rejected_before_work(lambda: t2b(h[0], e, t), "hidden_states must be")
        rejected_before_work(lambda: t2b(h, e[:, :, :5], t), "encoder_hidden_states must be")

    def test_unsupported_config(self):
        with pytest.raises(ValueError, match="learned positional embeddings without rotary"):
            cogvideo_c.CogVideoXTransformer3DModel.from_config(
                small_config(use_rotary_positional_embeddings=False, use_learned_positional_embeddings=True)
            )
