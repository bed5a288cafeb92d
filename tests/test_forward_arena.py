"""Each forward runs in an activation arena sized by a measuring pass (core/ctx.h cvx_ctx_run): the transformer keeps
its arena between calls, so a denoising step of the same shape allocates nothing from the memory manager but its
host output; the VAE and T5, which run once per pipeline call, give theirs back after each call."""

import gc

import numpy as np
from test_transformer import inputs, small_config

import cogvideo_c


def allocations():
    return cogvideo_c.memory_stats("cpu")["allocation.all.allocated"]


def test_the_same_transformer_step_twice_allocates_only_its_output():
    model = cogvideo_c.CogVideoXTransformer3DModel.from_config(small_config(num_layers=2), seed=3)
    hidden, text, t = inputs(model, 4, 16, 16)
    first = model(hidden, text, t).sample  # sizes and reserves the arena
    gc.collect()
    before = allocations()
    second = model(hidden, text, t).sample
    third = model(hidden, text, np.full((1,), 20, dtype=np.int64)).sample
    made = allocations() - before
    assert made == 2, f"two more steps made {made} memory-manager allocations (want 2: their host outputs)"
    assert np.array_equal(first, second)  # the reused arena changes no number
    assert not np.array_equal(second, third)


def test_a_larger_input_resizes_the_arena_once():
    model = cogvideo_c.CogVideoXTransformer3DModel.from_config(small_config(), seed=3)
    small, large = inputs(model, 4, 16, 16), inputs(model, 8, 16, 16)
    model(*small)
    gc.collect()
    before = allocations()
    model(*large)
    model(*large)
    made = allocations() - before
    # the first large step re-reserves the arena (one allocation) and each step allocates its output
    assert made == 3, f"made {made} allocations (want 1 arena + 2 outputs)"
    activations = cogvideo_c.memory_stats("cpu")["activations_bytes.current"]
    del model
    gc.collect()
    # the arena belonged to the model: it goes with it
    assert cogvideo_c.memory_stats("cpu")["activations_bytes.current"] < activations
