"""Reading a component folder the way diffusers' from_pretrained does: config.json plus safetensors weights."""

import math
import numbers
import os

import numpy as np

from ._files import read_json


class FrozenConfig(dict):
    """A config dict whose keys also read as attributes (diffusers' `model.config.scaling_factor`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("the config is frozen")


# The C core holds config sizes in C ints: a larger value is refused here, never truncated.
C_INT_MAX = 2**31 - 1
MAX_TENSOR_ELEMENTS = 2**40  # the C weight registry's bound on one tensor (csrc/models/weights.c)


def _where(key, source):
    return f"{source}: config '{key}'" if source else f"config '{key}'"


def config_int(value, key, minimum=None, maximum=C_INT_MAX, source=None):
    """A config value that must be an integer in [minimum, maximum]. JSON integers only: a float (even 3.0), a string
    or a bool is refused, not coerced, as diffusers' modules (range(3.0), nn.Linear(4.0, ...)) and transformers'
    strict configs refuse them. source (the config file) and key are named in the error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{_where(key, source)} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{_where(key, source)} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{_where(key, source)} = {value} is larger than this implementation supports ({maximum})")
    return value


def config_float(value, key, positive=False, source=None):
    """A finite real config value (an int is accepted, as JSON writes 0 for 0.0); positive: > 0 (an eps)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_where(key, source)} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{_where(key, source)} must be a {'positive ' if positive else ''}finite number, got {value}")
    return value


def config_bool(value, key, source=None):
    """A true/false config value; a string such as "false" is refused (it would read as True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{_where(key, source)} must be true or false, got {value!r}")


def component_dir(path, subfolder=None):
    path = os.fspath(path)
    if subfolder:
        path = os.path.join(path, subfolder)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"no model folder at '{path}': cogvideo_c loads local folders in diffusers layout (it does not download)"
        )
    return path


def read_config(folder, class_name):
    """config.json of a component as a dict; class_name (when not None) must match its _class_name."""
    cfg_path = os.path.join(folder, "config.json")
    try:
        cfg = read_json(cfg_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"'{folder}' has no config.json") from None
    found = cfg.get("_class_name", class_name)
    if class_name is not None and found != class_name:
        raise ValueError(f"{cfg_path} describes a {found}, not a {class_name}")
    return cfg


def weights_file(folder, stem="diffusion_pytorch_model"):
    """The safetensors file (or sharded index) of a component folder."""
    for name in (
        f"{stem}.safetensors",
        f"{stem}.safetensors.index.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return candidate
    if any(n.endswith(".bin") for n in os.listdir(folder)):
        raise OSError(
            f"'{folder}' holds only PyTorch .bin weights; cogvideo_c reads safetensors (save with "
            "safe_serialization=True)"
        )
    raise FileNotFoundError(f"'{folder}' has no {stem}.safetensors (or sharded .safetensors.index.json)")
