"""Positional tables of CogVideoX, computed exactly as diffusers and its pipeline compute them (NumPy, no torch):
the 3D sin-cos table (float64 frequencies), and the 3D rotary tables with the pipeline's crop-region rule."""

import numpy as np


def _sincos_1d(dim, pos):
    """[sin(pos * omega), cos(pos * omega)] with omega_k = 1 / 10000^(k / (dim/2)) in float64 (diffusers)."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_3d_sincos_pos_embed(embed_dim, grid_w, grid_h, frames, spatial_scale=1.875, temporal_scale=1.0):
    """diffusers' get_3d_sincos_pos_embed: [frames * grid_h * grid_w, embed_dim] float64; each row is
    [temporal (D/4), spatial x (3D/8), spatial y (3D/8)], rows ordered frame, row, column."""
    if embed_dim % 16:
        raise ValueError(f"the sin-cos table needs a width divisible by 16, got {embed_dim}")
    d_spatial, d_temporal = 3 * embed_dim // 4, embed_dim // 4
    gh = np.arange(grid_h, dtype=np.float32) / np.float32(spatial_scale)
    gw = np.arange(grid_w, dtype=np.float32) / np.float32(spatial_scale)
    xs, ys = np.meshgrid(gw, gh, indexing="xy")  # [grid_h, grid_w] each: the first half encodes x, as diffusers
    spatial = np.concatenate([_sincos_1d(d_spatial // 2, xs), _sincos_1d(d_spatial // 2, ys)], axis=1)
    gt = np.arange(frames, dtype=np.float32) / np.float32(temporal_scale)
    temporal = _sincos_1d(d_temporal, gt)
    table = np.concatenate(
        [np.repeat(temporal, grid_h * grid_w, axis=0), np.tile(spatial, (frames, 1))],
        axis=1,
    )
    return table


def _round_half_even(x):
    return int(np.round(x))  # Python's round() rounds halves to even, as np.round does


def get_resize_crop_region_for_grid(src, tgt_width, tgt_height):
    """The pipeline's crop region of a (height, width) grid inside the base grid (Python rounding)."""
    tw, th = tgt_width, tgt_height
    h, w = src
    r = h / w
    if r > (th / tw):
        resize_height = th
        resize_width = _round_half_even(th / h * w)
    else:
        resize_width = tw
        resize_height = _round_half_even(tw / w * h)
    crop_top = _round_half_even((th - resize_height) / 2.0)
    crop_left = _round_half_even((tw - resize_width) / 2.0)
    return (crop_top, crop_left), (crop_top + resize_height, crop_left + resize_width)


def _linspace_f32(start, stop, n):
    """torch.linspace in float32: start/stop rounded to f32, step in f32, each element with one rounding, the first
    half counted from the start and the second from the end."""
    start, stop = np.float32(start), np.float32(stop)
    if n == 1:
        return np.array([start], dtype=np.float32)
    step = np.float32((np.float64(stop) - np.float64(start)) / (n - 1))
    i = np.arange(n, dtype=np.float64)
    half = n // 2
    out = np.where(
        i < half,
        np.float64(start) + np.float64(step) * i,
        np.float64(stop) - np.float64(step) * (n - 1 - i),
    )
    return out.astype(np.float32)


def _rope_1d(dim, pos, theta=10000.0):
    """cos and sin [n, dim] of pos * theta^(-2k/dim), each frequency repeated for the pair (2k, 2k+1); float32."""
    exps = np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)
    freqs = (np.float32(1.0) / np.power(np.float32(theta), exps)).astype(np.float32)
    ang = np.outer(pos.astype(np.float32), freqs).astype(np.float32)
    return np.repeat(np.cos(ang), 2, axis=1), np.repeat(np.sin(ang), 2, axis=1)


def get_3d_rotary_pos_embed(head_dim, crops_coords, grid_size, temporal_size, grid_type="linspace", max_size=None):
    """diffusers' get_3d_rotary_pos_embed (use_real): (cos, sin), each [T * gh * gw, head_dim] float32, rows ordered
    frame, row, column; columns [time (hd/4), height (3hd/8), width (3hd/8)]."""
    gh, gw = grid_size
    if grid_type == "linspace":
        (top, left), (bottom, right) = crops_coords
        pos_h = _linspace_f32(top, bottom * (gh - 1) / gh, gh)
        pos_w = _linspace_f32(left, right * (gw - 1) / gw, gw)
        pos_t = _linspace_f32(0, temporal_size * (temporal_size - 1) / temporal_size, temporal_size)
    else:  # "slice": integer positions of the full base grid, truncated to the grid
        max_h, max_w = max_size
        if gh > max_h or gw > max_w:
            raise ValueError(
                f"a {gh}x{gw} patch grid is larger than the model's {max_h}x{max_w} sample grid (CogVideoX 1.5 RoPE)"
            )
        pos_h = np.arange(max_h, dtype=np.float32)
        pos_w = np.arange(max_w, dtype=np.float32)
        pos_t = np.arange(temporal_size, dtype=np.float32)
    dim_t, dim_h = head_dim // 4, head_dim // 8 * 3
    dim_w = dim_h
    ct, st = _rope_1d(dim_t, pos_t)
    ch, sh = _rope_1d(dim_h, pos_h)
    cw, sw = _rope_1d(dim_w, pos_w)
    if grid_type == "slice":
        ct, st, ch, sh, cw, sw = ct[:temporal_size], st[:temporal_size], ch[:gh], sh[:gh], cw[:gw], sw[:gw]
    T = ct.shape[0]

    def combine(t, h, w):
        t = np.broadcast_to(t[:, None, None, :], (T, gh, gw, dim_t))
        h = np.broadcast_to(h[None, :, None, :], (T, gh, gw, dim_h))
        w = np.broadcast_to(w[None, None, :, :], (T, gh, gw, dim_w))
        return np.concatenate([t, h, w], axis=-1).reshape(T * gh * gw, head_dim).astype(np.float32)

    return combine(ct, ch, cw), combine(st, sh, sw)
