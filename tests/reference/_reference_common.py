"""Helpers shared by the fixture scripts tests/reference/make_*_fixtures.py.

The scripts are run as `/tmp/cvx-reference/bin/python tests/reference/make_X_fixtures.py` from the repository root,
so this folder is sys.path[0] and `import _reference_common` finds this file. Every helper here is deterministic: the
fixtures a script writes must come out byte for byte the same on every run.

torch is imported by the functions that need it, so that a script without torch (make_tokenizer_fixtures.py) can use
the rest.
"""

from __future__ import annotations

import math
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np


def save_npz(path: Path, arrays: dict, *, force_zip64: bool = True, as_array=np.ascontiguousarray) -> None:
    """np.savez_compressed equivalent with fixed zip timestamps (byte-for-byte reproducible).

    force_zip64 and as_array are what each script's stored files were written with: force_zip64 changes the bytes
    of the zip headers, and np.ascontiguousarray makes a 0-d array 1-d where np.array(a, order="C") keeps it 0-d."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                np.lib.format.write_array(f, as_array(arrays[key]), allow_pickle=False)


def versions(*modules, python: bool = False) -> dict[str, str]:
    """{module name: __version__} in the order given (+ "python": the interpreter's version), for the manifests."""
    out = {m.__name__: m.__version__ for m in modules}
    if python:
        out["python"] = sys.version.split()[0]
    return out


def recreate_dir(out: Path) -> None:
    """Deletes `out` with everything in it, if it exists, and makes it again empty (a script rewrites all its files)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def print_file_sizes(out: Path, header: str = "\nfiles:", line: str = "  {rel}  {kib:.1f} KiB") -> int:
    """Prints `header`, then one `line` per file under `out` (str.format fields: rel, the path relative to `out`;
    size, in bytes; kib, in KiB); returns their total size in bytes."""
    total = 0
    print(header)
    for p in sorted(out.rglob("*")):
        if p.is_file():
            size = p.stat().st_size
            total += size
            print(line.format(rel=p.relative_to(out), size=size, kib=size / 1024))
    return total


def check_total_size(out: Path, limit: int) -> int:
    """Prints every file under `out` with its size and the total; returns 0, or 1 (with a message on stderr) when
    the total exceeds `limit` bytes (the script's exit status)."""
    total = print_file_sizes(out, header="sizes:", line="  {rel!s:60s} {size:9d}")
    print(f"  total {total} bytes ({total / 2**20:.2f} MiB)")
    if total > limit:
        print(f"fixtures exceed {limit} bytes", file=sys.stderr)
        return 1
    return 0


def plain(obj):
    """JSON-able copy of a (frozen) config dict: tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):  # diffusers' "_use_default_values" is built from a set: sort it (reproducible files)
        return {k: sorted(v) if k == "_use_default_values" else plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def rounded_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal float32 values, rounded to multiples of 2^-10 (the rounding only makes them compress)."""
    z = rng.standard_normal(shape)
    return (np.round(z * 1024.0) / 1024.0).astype(np.float32)


def numpy_randn_tensor_into(modules, draws: list):
    """Replaces diffusers' randn_tensor in `modules` by draws from NumPy Generators, with randn_tensor's rules: a
    list of one generator is that generator; a list draws (1, *shape[1:]) per batch entry from generator[i].
    Each draw's shape is appended to `draws`. cogvideo_c draws from a NumPy Generator exactly this way
    (generator.standard_normal(shape, dtype=np.float32)), so a test passing the same generators gets the same
    noise without torch."""
    import torch

    def numpy_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        shape = tuple(int(s) for s in shape)
        if isinstance(generator, list) and len(generator) == 1:
            generator = generator[0]
        if isinstance(generator, list):
            rows = [g.standard_normal((1,) + shape[1:], dtype=np.float32) for g in generator[: shape[0]]]
            arr = np.concatenate(rows)
        elif isinstance(generator, np.random.Generator):
            arr = generator.standard_normal(shape, dtype=np.float32)
        else:
            raise AssertionError(f"cases must pass NumPy Generators, got {type(generator)}")
        draws.append(shape)
        return torch.from_numpy(arr).to(device=device, dtype=dtype)

    for module in modules:
        module.randn_tensor = numpy_randn_tensor


# ----------------------------------------------------------------------------------------------------------------
# random weights: moderate scales so that every path matters and outputs are O(1). Each draws, in module order,
# from one torch.Generator seeded with `seed`.
# ----------------------------------------------------------------------------------------------------------------


def rn_factory(seed: int):
    """shape -> float32 N(0, 1) draws from a torch.Generator seeded with `seed`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=g, dtype=torch.float32)


def _assert_all_touched(model, touched: set) -> None:
    missing = {n for n, _ in model.named_parameters()} - touched
    assert not missing, f"parameters not re-randomised: {sorted(missing)}"


def _assert_finite(model) -> None:
    import torch

    for p in model.parameters():
        assert torch.isfinite(p).all()


def rerandomize_transformer(model, seed: int) -> None:
    """CogVideoXTransformer3DModel: Linear / Conv2d weights N(0, 1/fan_in), biases N(0, 0.1^2); LayerNorm weights
    1 + N(0, 0.1^2), biases N(0, 0.1^2); a learned positional table N(0, 0.5^2) on all rows (text rows included)."""
    import torch

    rn = rn_factory(seed)
    touched = set()
    with torch.no_grad():
        for name, mod in model.named_modules():
            pre = name + "." if name else ""
            if isinstance(mod, torch.nn.LayerNorm):
                if mod.weight is not None:
                    mod.weight.copy_(1.0 + 0.1 * rn(mod.weight.shape))
                    touched.add(pre + "weight")
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * rn(mod.bias.shape))
                    touched.add(pre + "bias")
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(rn(mod.weight.shape) / math.sqrt(fan_in))
                touched.add(pre + "weight")
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * rn(mod.bias.shape))
                    touched.add(pre + "bias")
        pe = model.patch_embed
        if pe.use_learned_positional_embeddings:
            pe.pos_embedding.copy_(0.5 * rn(pe.pos_embedding.shape))
    _assert_all_touched(model, touched)
    _assert_finite(model)


def rerandomize_t5(model, seed: int) -> None:
    """T5EncoderModel: Linear weights N(0, 1/fan_in), except q: N(0, 1/(fan_in * d_kv)) (T5 has no 1/sqrt(d_kv) score
    scaling, this keeps the scores O(1) like T5's own init); T5LayerNorm weights 1 + N(0, 0.1^2); the token embedding
    N(0, 1); relative_attention_bias N(0, 1)."""
    import torch
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    rn = rn_factory(seed)
    d_kv = model.config.d_kv
    touched = set()
    with torch.no_grad():
        for name, mod in model.named_modules():
            pre = name + "." if name else ""
            if isinstance(mod, T5LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * rn(mod.weight.shape))
                touched.add(pre + "weight")
            elif isinstance(mod, torch.nn.Linear):
                assert mod.bias is None
                fan_in = mod.weight.shape[1]
                scale = 1.0 / math.sqrt(fan_in * (d_kv if name.endswith(".q") else 1))
                mod.weight.copy_(rn(mod.weight.shape) * scale)
                touched.add(pre + "weight")
            elif isinstance(mod, torch.nn.Embedding):
                if mod.weight.data_ptr() in {p.data_ptr() for n, p in model.named_parameters() if n in touched}:
                    continue  # tied (encoder.embed_tokens is shared)
                mod.weight.copy_(rn(mod.weight.shape))
                touched.add(pre + "weight")
    _assert_all_touched(model, touched)
    _assert_finite(model)
    assert model.encoder.embed_tokens.weight is model.shared.weight, "encoder.embed_tokens is not tied to shared"


def rerandomize_vae(
    model, seed: int, *, weight_gain: float | None = None, clamp_logvar_channels: bool = False, out_gain: float = 1.0
) -> None:
    """AutoencoderKLCogVideoX: convs N(0, gain^2/fan_in), biases N(0, 0.1^2), GroupNorm weights 1 + N(0, 0.1^2),
    biases N(0, 0.1^2), SpatialNorm conv_y biases 1 + N(0, 0.1^2) (so the spatial scale is ~1, not ~0).

    weight_gain None: conv weights are draws / sqrt(fan_in); a number: draws * (gain / sqrt(fan_in)). The two round
    differently even for gain 1.0, and the stored fixtures were made one way or the other.
    clamp_logvar_channels: push two logvar channels outside [-30, 20] so DiagonalGaussianDistribution's clamp is
    exercised. out_gain != 1: decoder.conv_out weight and bias are multiplied by it (smaller decoded pixels)."""
    import torch

    rn = rn_factory(seed)
    touched = set()
    with torch.no_grad():
        for name, mod in model.named_modules():
            pre = name + "." if name else ""
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.copy_(1.0 + 0.1 * rn(mod.weight.shape))
                mod.bias.copy_(0.1 * rn(mod.bias.shape))
                touched.update({pre + "weight", pre + "bias"})
            elif isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = mod.weight[0].numel()
                if weight_gain is None:
                    mod.weight.copy_(rn(mod.weight.shape) / math.sqrt(fan_in))
                else:
                    mod.weight.copy_(rn(mod.weight.shape) * (weight_gain / math.sqrt(fan_in)))
                b = 0.1 * rn(mod.bias.shape)
                if name.endswith("conv_y.conv"):
                    b = b + 1.0
                mod.bias.copy_(b)
                touched.update({pre + "weight", pre + "bias"})
        if clamp_logvar_channels:
            lc = model.config.latent_channels
            bias = model.encoder.conv_out.conv.bias
            bias[lc + 0] = 25.0
            bias[lc + 1] = -35.0
        if out_gain != 1.0:
            model.decoder.conv_out.conv.weight.mul_(out_gain)
            model.decoder.conv_out.conv.bias.mul_(out_gain)
    _assert_all_touched(model, touched)
    _assert_finite(model)
