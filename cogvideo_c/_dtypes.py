"""Names for the three weight dtypes, from whatever a diffusers script passes as torch_dtype."""

_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_dtype(dtype, default="float32"):
    """'float32', 'float16' or 'bfloat16' for a string, a NumPy dtype or type, or a torch.dtype (no torch import)."""
    if dtype is None:
        return default
    name = getattr(dtype, "name", None) if not isinstance(dtype, str) else dtype
    if name is None:
        name = getattr(dtype, "__name__", None) or str(dtype)
    name = str(name).lower().replace("torch.", "").replace("numpy.", "")
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unsupported dtype {dtype!r}: use float32, float16 or bfloat16")
