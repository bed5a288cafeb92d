"""Reading a component folder the way diffusers' from_pretrained does: config.json plus safetensors weights."""

import os

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


def config_int(value, key):
    """A config value that must be a whole number (an int, or a float without fraction; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"config '{key}' must be an integer, got {value!r}")
    return int(value)


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
