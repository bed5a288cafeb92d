"""Writing safetensors checkpoints (one file or shards plus an index) and finding a variant's weight files, with the
file names diffusers and transformers use (`_add_variant`, huggingface_hub's shard split).

The format: an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape", "data_offsets"}} with
"__metadata__" {"format": "pt"}, padded with spaces to a multiple of 8, then the tensors' little-endian bytes back to
back in header order (no gaps, nothing after the last tensor: what the reference reader and ours accept)."""

import json
import os
import re
import struct
import tempfile

import numpy as np

from . import configuration

# our dtype names -> (safetensors dtype, bytes per element, the NumPy type the bytes are written from)
_ST_DTYPES = {
    "float32": ("F32", 4, "<f4"),
    "float16": ("F16", 2, "<f2"),
    "bfloat16": ("BF16", 2, "<u2"),  # NumPy has no bfloat16: the bit patterns travel as uint16
    "float64": ("F64", 8, "<f8"),
}
_NUMPY_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.float64): "float64"}
_SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}  # huggingface_hub's parse_size_to_int


def add_variant(weights_name, variant=None):
    """diffusers' _add_variant: "x.safetensors" -> "x.fp16.safetensors", "x.safetensors.index.json" ->
    "x.safetensors.index.fp16.json"."""
    if variant is None:
        return weights_name
    if not isinstance(variant, str) or not variant or not re.fullmatch(r"[A-Za-z0-9_\-]+", variant):
        raise ValueError(f"variant must be a short name such as 'fp16' (letters, digits, '_', '-'), got {variant!r}")
    parts = weights_name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def parse_size(size):
    """max_shard_size as bytes: an int, or digits and a unit ("10GB", "500MB"; decimal units as huggingface_hub)."""
    if isinstance(size, bool):
        raise ValueError(f"max_shard_size must be bytes (int) or a size such as '10GB', got {size!r}")
    if isinstance(size, (int, np.integer)):
        value = int(size)
    elif isinstance(size, str) and size.strip()[-2:].upper() in _SIZE_UNITS:
        text = size.strip()
        try:
            value = int(float(text[:-2].strip()) * _SIZE_UNITS[text[-2:].upper()])
        except ValueError:
            raise ValueError(f"max_shard_size {size!r}: cannot read the number before the unit") from None
    else:
        raise ValueError(f"max_shard_size must be bytes (int) or digits with TB/GB/MB/KB such as '10GB', got {size!r}")
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


class TensorEntry:
    """One tensor to write: its name, dtype name (float32 / float16 / bfloat16 / float64), shape, and a function that
    returns its data as a NumPy array (called once, while writing, so a whole model never sits in memory twice)."""

    __slots__ = ("name", "dtype", "shape", "fetch")

    def __init__(self, name, dtype, shape, fetch):
        if dtype not in _ST_DTYPES:
            raise ValueError(f"tensor '{name}': cannot write dtype {dtype!r} (float32, float16, bfloat16, float64)")
        self.name, self.dtype, self.shape, self.fetch = name, dtype, tuple(int(s) for s in shape), fetch

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * _ST_DTYPES[self.dtype][1]


def entries_from_arrays(tensors):
    """{name: float32/float16/float64 array, or ("bfloat16", uint16 bit-pattern array)} -> [TensorEntry]."""
    out = []
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, array = value
            array = np.asarray(array)
        else:
            array = np.asarray(value)
            dtype = _NUMPY_NAMES.get(array.dtype)
            if dtype is None:
                raise ValueError(f"tensor '{name}': cannot write NumPy dtype {array.dtype} (float32, float16, float64)")
        out.append(TensorEntry(name, dtype, array.shape, lambda a=array: a))
    return out


def write_file(entries, path, metadata=None):
    """Writes [TensorEntry] as one safetensors file (tensors in name order), atomically: a temporary file in the
    same folder is renamed over `path` once complete."""
    entries = sorted(entries, key=lambda e: e.name)
    header, offset = {}, 0
    for e in entries:
        if e.name in header or e.name == "__metadata__":
            raise ValueError(f"tensor name '{e.name}' is repeated or reserved")
        header[e.name] = {
            "dtype": _ST_DTYPES[e.dtype][0],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    meta = {"format": "pt"} if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer pads it
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for e in entries:
                data = np.ascontiguousarray(e.fetch(), dtype=_ST_DTYPES[e.dtype][2])
                if data.shape != e.shape:
                    raise ValueError(f"tensor '{e.name}' has shape {data.shape}, its header says {e.shape}")
                f.write(memoryview(data).cast("B"))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save_file(tensors, path, metadata=None):
    """safetensors.numpy.save_file for {name: array} (float32 / float16 / float64, or ("bfloat16", uint16 bits))."""
    return write_file(entries_from_arrays(tensors), path, metadata)


def save_checkpoint(entries, folder, stem, variant=None, max_shard_size="10GB"):
    """Writes `entries` into `folder` as diffusers' / transformers' save_pretrained do: "<stem>[.variant].safetensors",
    or, past max_shard_size, shards "<stem>[.variant]-00001-of-0000N.safetensors" plus
    "<stem>.safetensors.index[.variant].json" (tensors split greedily in name order, one oversized tensor per shard,
    as huggingface_hub splits them). Shards and indexes of an earlier save under the same names are removed.
    Returns the path to load (the file or the index)."""
    limit = parse_size(max_shard_size)
    entries = sorted(entries, key=lambda e: e.name)
    shards, current, size = [], [], 0
    for e in entries:
        if current and size + e.nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += e.nbytes
    if current or not shards:
        shards.append(current)
    weights_name = add_variant(f"{stem}.safetensors", variant)
    index_name = add_variant(f"{stem}.safetensors.index.json", variant)
    pattern = weights_name.replace(".safetensors", "{suffix}.safetensors")
    names = [
        pattern.format(suffix="" if len(shards) == 1 else f"-{i + 1:05d}-of-{len(shards):05d}")
        for i in range(len(shards))
    ]
    os.makedirs(folder, exist_ok=True)
    stale = re.compile(re.escape(pattern).replace(r"\{suffix\}", r"-\d{5}-of-\d{5}"))
    for old in os.listdir(folder):
        if (stale.fullmatch(old) or old in (weights_name, index_name)) and old not in names:
            os.remove(os.path.join(folder, old))
    for name, shard in zip(names, shards):
        write_file(shard, os.path.join(folder, name))
    if len(shards) == 1:
        return os.path.join(folder, names[0])
    index = {
        "metadata": {"total_size": sum(e.nbytes for e in entries)},
        "weight_map": {e.name: name for name, shard in zip(names, shards) for e in shard},
    }
    index_path = os.path.join(folder, index_name)
    with open(index_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index_path


def find_weights(folder, stem="diffusion_pytorch_model", variant=None):
    """The weights to load from a component folder. Without a variant: configuration.weights_file. With one:
    "<stem>.<variant>.safetensors" or its sharded index "<stem>.safetensors.index.<variant>.json" (also with the
    "model" stem transformers uses); a missing variant is an error naming the files looked for, not a silent fall
    back to the full-precision weights."""
    if variant is None:
        return configuration.weights_file(folder, stem=stem)
    tried = []
    for base in dict.fromkeys((stem, "model")):
        for name in (f"{base}.safetensors", f"{base}.safetensors.index.json"):
            candidate = os.path.join(folder, add_variant(name, variant))
            tried.append(os.path.basename(candidate))
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"'{folder}' has no weights for variant={variant!r} (looked for {', '.join(tried)})")
