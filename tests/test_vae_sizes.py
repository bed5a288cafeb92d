"""VAE output sizes: closed-form frame counts equal to diffusers' frame-batched loop, and absurd sizes refused at once.

The reference counts below re-derive, in plain Python, what diffusers' AutoencoderKLCogVideoX._decode / _encode /
tiled_decode / tiled_encode produce: frame batches of 2 latent (8 sample) frames with the first absorbing the
remainder, CogVideoXUpsample3D / Downsample3D on the time axis (an odd count keeps its first frame single), and the
tile grid of rows kept per tile. Every size limit must be met before any work, so each refusal is timed: it has to
come back within a second (before the fix, `decoded_frames(2**62)` looped for ever holding the GIL).
numpy + cogvideo_c only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import cogvideo_c

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "vae" / "tiny"  # 4 blocks: 3 spatial x2 steps, up to 3 time steps; 4 latent channels
PIPELINE = FIXTURES / "pipeline" / "tiny_2b"
MAX_EXTENT = 1 << 20  # CVX_VAE_MAX_EXTENT in csrc/models/vae.h
MAX_OUTPUT_BYTES = 1 << 40  # CVX_VAE_MAX_OUTPUT_BYTES
INSTANT_S = 1.0


def _vae(ratio=4):
    cfg = cogvideo_c.configuration.read_config(str(TINY), "AutoencoderKLCogVideoX")
    cfg["temporal_compression_ratio"] = ratio
    return cogvideo_c.AutoencoderKLCogVideoX(cfg, str(TINY / "diffusion_pytorch_model.safetensors"))


def _time_levels(vae, ratio):
    """Blocks that resample in time: the first log2(ratio), among the num_blocks - 1 that resample at all."""
    return min(ratio.bit_length() - 1, len(vae.config.block_out_channels) - 1)


def _up_frames(t, levels):
    for _ in range(levels):
        if t > 1:
            t = 1 + 2 * (t - 1) if t % 2 else 2 * t
    return t


def _down_frames(t, levels):
    for _ in range(levels):
        if t > 1:
            t = 1 + (t - 1) // 2 if t % 2 else t // 2
    return t


def _frame_batched(n, batch, per_batch):
    """diffusers' loop: max(n // batch, 1) batches, batch i spanning
    [batch * i + (0 if i == 0 else rem), batch * (i + 1) + rem)."""
    rem, total = n % batch, 0
    for i in range(max(n // batch, 1)):
        start = batch * i + (0 if i == 0 else rem)
        end = min(batch * (i + 1) + rem, n)
        total += per_batch(end - start)
    return total


def _timed(fn, *args):
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < INSTANT_S, f"took {elapsed:.2f} s"


@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
def test_frame_counts_match_the_frame_batched_loop(ratio):
    vae = _vae(ratio)
    levels = _time_levels(vae, ratio)
    assert levels == {1: 0, 2: 1, 4: 2, 8: 3}[ratio]
    for n in range(1, 201):
        want_dec = _frame_batched(n, 2, lambda t: _up_frames(t, levels))
        assert vae.decoded_frames(n) == want_dec, (ratio, n)
        assert vae._core.output_shape((1, 4, n, 2, 3), True, None) == (1, 3, want_dec, 16, 24), (ratio, n)
        want_enc = _frame_batched(n, 8, lambda t: _down_frames(t, levels))
        assert vae._core.output_shape((1, 3, n, 16, 24), False, None) == (1, 8, want_enc, 2, 3), (ratio, n)


def _tiled_rows(size, tile_in, stride, limit, extent):
    return sum(min(extent(min(tile_in, size - i)), limit) for i in range(0, size, stride))


@pytest.mark.parametrize("tiles", [(32, 48, 0.25, 1 / 6), (16, 24, 0.25, 1 / 6), (240, 360, 1 / 6, 0.2)])
def test_tiled_sizes_match_diffusers_tile_grid(tiles):
    vae = _vae()
    th, tw, fh, fw = tiles
    lat_h, lat_w = int(th / 8), int(tw / 8)
    up = lambda n: 8 * n  # noqa: E731

    def down(n):
        for _ in range(3):
            n = (n - 2) // 2 + 1 if n >= 2 else 0
        return n

    for size in range(1, 81):
        # decode: tiles of lat_h latent rows every int(lat_h * (1 - fh)), keeping th - int(th * fh) pixel rows
        h = max(size, lat_h + 1)  # taller than a tile, so tiling applies
        got = vae._core.output_shape((1, 4, 1, h, size), True, tiles)
        want_h = _tiled_rows(h, lat_h, int(lat_h * (1 - fh)), th - int(th * fh), up)
        want_w = _tiled_rows(size, lat_w, int(lat_w * (1 - fw)), tw - int(tw * fw), up)
        assert got[3:] == (want_h, want_w), (tiles, size)
        # encode: tiles of th pixel rows every int(th * (1 - fh)), keeping lat_h - int(lat_h * fh) latent rows
        h = max(8 * size, th + 1)
        w = 8 * size
        got = vae._core.output_shape((1, 3, 1, h, w), False, tiles)
        want_h = _tiled_rows(h, th, int(th * (1 - fh)), lat_h - int(lat_h * fh), down)
        want_w = _tiled_rows(w, tw, int(tw * (1 - fw)), lat_w - int(lat_w * fw), down)
        assert got[3:] == (want_h, want_w), (tiles, size)


def test_decoded_frames_of_absurd_counts_fail_at_once():
    vae = _vae()
    assert _timed(vae.decoded_frames, MAX_EXTENT) == 4 * MAX_EXTENT  # an even count: 2 -> 8 frames per batch
    with pytest.raises(ValueError, match=rf"frames is {2**62}, over the limit of {MAX_EXTENT}"):
        _timed(vae.decoded_frames, 2**62)
    with pytest.raises(ValueError, match=rf"frames is {MAX_EXTENT + 1}, over the limit of {MAX_EXTENT}"):
        _timed(vae.decoded_frames, MAX_EXTENT + 1)
    with pytest.raises(ValueError, match=rf"latent_frames {2**64} does not fit in 64 bits"):
        _timed(vae.decoded_frames, 2**64)
    with pytest.raises(ValueError, match=r"latent_frames must be a whole number, got 2\.5"):
        vae.decoded_frames(2.5)
    with pytest.raises(ValueError, match=r"frames is 0; every dimension must be at least 1"):
        vae.decoded_frames(0)


@pytest.mark.parametrize(
    "decode, shape, message",
    [
        (True, (1, 4, 2**40, 1, 1), rf"decode: frames is {2**40}, over the limit of {MAX_EXTENT}"),
        (True, (1, 4, 1, 2**21, 1), rf"decode: height is {2**21}, over the limit of {MAX_EXTENT}"),
        (True, (1, 4, 1, 1, 2**50), rf"decode: width is {2**50}, over the limit of {MAX_EXTENT}"),
        (True, (2**30, 4, 1, 1, 1), rf"decode: batch is {2**30}, over the limit of {MAX_EXTENT}"),
        (False, (1, 3, 2**21, 16, 16), rf"encode: frames is {2**21}, over the limit of {MAX_EXTENT}"),
        # every dimension within its limit, but the output [1, 3, 4 * 2**20, 2**13, 2**13] is 3 PiB
        (True, (1, 4, 2**20, 2**10, 2**10), rf"the output \[1, 3, {2**22}, 8192, 8192\] .* {MAX_OUTPUT_BYTES} bytes"),
    ],
    ids=["frames", "height", "width", "batch", "encode-frames", "output-bytes"],
)
def test_absurd_inputs_are_refused_before_conversion_or_work(decode, shape, message, cpu_memory_checked):
    vae = _vae()
    # a zero-stride view: converting it to a contiguous array first would take terabytes
    x = np.broadcast_to(np.float32(0.5), shape)
    run = vae.decode if decode else vae.encode
    with pytest.raises(ValueError, match=message):
        _timed(run, x)
    with pytest.raises(ValueError, match=message):
        _timed(vae._core.output_shape, shape, decode, None)
