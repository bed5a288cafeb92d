"""What the three model classes share with diffusers' ModelMixin: the dtype= / torch_dtype= / variant= loading
arguments, save_pretrained, to(), device."""

import json
import os
import tempfile
import warnings

from . import configuration
from ._dtypes import resolve_dtype
from .memory import OutOfMemoryError
from .safetensors_io import TensorEntry, find_weights, save_checkpoint

DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose file layout and config keys cogvideo_c follows

# loading arguments that ask for nothing cogvideo_c would do differently
_HONOURED = {"use_safetensors": True, "local_files_only": True}


class Device(str):
    """A device name that also reads like torch.device: `pipe.device == "cpu"`, `pipe.device.type`."""

    @property
    def type(self):
        return self.split(":")[0]

    @property
    def index(self):
        return int(self.split(":")[1]) if ":" in self else None


CPU = Device("cpu")


def either_dtype(dtype, torch_dtype):
    """diffusers' `dtype=` or its older name `torch_dtype=`, as given (both: an error, as in diffusers)."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError("You have passed both `dtype` and `torch_dtype`. Please only pass `dtype`.")
    return dtype if dtype is not None else torch_dtype


def load_dtype(dtype, torch_dtype, default="float32"):
    """The run dtype from diffusers' `dtype=` or its older name `torch_dtype=`."""
    return resolve_dtype(either_dtype(dtype, torch_dtype), default)


def warn_ignored(owner, kwargs, stacklevel=3):
    """One warning naming the keyword arguments `owner` accepts for diffusers' sake but does not act on."""
    ignored = sorted(k for k, v in kwargs.items() if not (k in _HONOURED and v == _HONOURED[k]))
    if ignored:
        warnings.warn(
            f"{owner} ignores {', '.join(ignored)} (cogvideo_c loads local folders of safetensors on the CPU)",
            UserWarning,
            stacklevel=stacklevel,
        )


def check_device(device):
    """A device models can run on: "cpu", "emu" (the emulated accelerator: a separate memory pool with a copy
    thread, where the offload strategies run as they do on a GPU) or "cuda" / "cuda:N" where build_info() lists
    it. ValueError for anything else, before any work."""
    if device is None:
        return None
    from .offload import resolve_device

    return resolve_device(device)


def parse_to_args(args, kwargs):
    """(device, dtype) from diffusers' to(...) forms: to(dtype), to(device), to(device, dtype), to(device=...,
    dtype=...), and torch_dtype= as another name for dtype. Strings are dtype names when they name one."""
    kwargs = dict(kwargs)
    dtype = either_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
    device = kwargs.pop("device", None)
    kwargs.pop("silence_dtype_warnings", None)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    if len(args) > 2:
        raise ValueError("Please make sure to pass at most two arguments (`device` and `dtype`) `.to(...)`")
    positional_dtype = positional_device = None
    if len(args) == 2:
        positional_device, positional_dtype = args
    elif len(args) == 1:
        try:
            positional_dtype = resolve_dtype(args[0]) if args[0] is not None else None
        except ValueError:
            positional_device = args[0]
    if dtype is not None and positional_dtype is not None:
        raise ValueError("You have passed `dtype` both as an argument and as a keyword argument.")
    if device is not None and positional_device is not None:
        raise ValueError("You have passed `device` both as an argument and as a keyword argument.")
    dtype = dtype if dtype is not None else positional_dtype
    device = device if device is not None else positional_device
    return check_device(device), None if dtype is None else resolve_dtype(dtype)


class ModelMixin:
    """save_pretrained / to / device for a model whose weights live in a C core object (`self._core`, with
    weight_info() and weight_data(i)) and whose config is `self.config`."""

    _weights_stem = "diffusion_pytorch_model"  # transformers models: "model"
    _device = CPU  # where the weights are (set_residency moves them)
    _offload_hook = None  # the pipeline's OffloadChain, when an offload strategy is on
    _default_max_shard_size = "10GB"  # diffusers' ModelMixin default (transformers: "50GB")
    _config_names_class = True  # diffusers' config.json names its _class_name; transformers' does not

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, dtype=None,
                        variant=None, **kwargs):  # fmt: skip
        """Loads the model from a local folder in diffusers layout (transformers' for T5EncoderModel): config.json
        and safetensors weights, one file or sharded.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a local folder (nothing is downloaded): the
                pipeline folder with ``subfolder=`` ("vae", "transformer", "text_encoder"), or the component folder
                itself.
            subfolder (`str`, *optional*): the component's folder inside it.
            torch_dtype (`str`, NumPy dtype or `torch.dtype`, *optional*): the older name of ``dtype``.
            dtype (`str`, NumPy dtype or `torch.dtype`, *optional*): the run dtype, float32 (default), float16 or
                bfloat16; weights are converted at load (give dtype or torch_dtype, not both).
            variant (`str`, *optional*): e.g. ``"fp16"`` loads ``<weights>.fp16.safetensors`` (or its sharded
                index), as diffusers names variants.
            kwargs: hub options (``cache_dir``, ``revision``, ...) are accepted with a warning; nothing is downloaded.

        Raises:
            OSError: the folder, config.json or weights are missing, unreadable or not regular files. ValueError: a
            config value or a weight does not match the architecture (the file and key are named).
        """
        folder = configuration.component_dir(pretrained_model_name_or_path, subfolder)
        cfg = configuration.read_config(folder, cls.__name__ if cls._config_names_class else None)
        run_dtype = load_dtype(dtype, torch_dtype)
        warn_ignored(f"{cls.__name__}.from_pretrained", kwargs)
        weights = find_weights(folder, stem=cls._weights_stem, variant=variant)
        try:
            return cls(cfg, weights, run_dtype, config_file=os.path.join(folder, "config.json"))
        except ValueError as err:  # the C core's checks name the key and the tensor; say which model too
            if folder in str(err):
                raise
            raise ValueError(f"{folder}: {err}") from None

    def __repr__(self):
        """The class and its config, as diffusers prints a model's config."""
        return f"{type(self).__name__} {json.dumps(self._config_to_save(), indent=2, sort_keys=True)}\n"

    @property
    def device(self):
        """Where the weights are: "cpu", "emu" or "cuda:N" (a str that also has torch.device's `.type` and `.index`).
        Under an offload strategy it is "cpu" while none of the model's weights are on the device, as diffusers reports
        an offloaded module (pipe._execution_device is where it computes)."""
        if self._offload_hook is not None:
            from . import _C

            if not _C.residency_info(self._core)["resident_bytes"]:
                return CPU
        return self._device

    @classmethod
    def weight_schema(cls, config, dtype="float32"):
        """What a model of `config` declares, from the C core, without loading or allocating anything:
        [(name, shape, group, stored_dtype)] in declaration order (diffusers' state-dict names; transformers' for
        T5, whose embedding is named as transformers saves it, shared.weight)."""
        from . import _C

        return _C.weight_schema(cls._schema_kind, cls._core_config(config)[1], dtype)

    def _before_forward(self):
        """Every forward starts here: the pipeline's offload hook brings this model in (and the others out)."""
        if self._offload_hook is not None:
            self._offload_hook.before(self)

    def _leave_stage(self):
        """Another component runs now: an offloaded model drops its device copies; every model gives back its
        activation arena, so the device holds one stage's activations at a time."""
        from . import _C

        if self._offload_hook is not None:
            _C.residency_offload(self._core)
        self._core.trim_arena()

    def _config_to_save(self):
        """config.json as diffusers writes it: _class_name and _diffusers_version, then the config."""
        cfg = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION}
        cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()})
        return cfg

    def save_config(self, save_directory):
        """Writes config.json into save_directory (created if needed) and returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self._config_to_save(), indent=2, sort_keys=True) + "\n")
        return path

    def _weight_entries(self):
        return [
            TensorEntry(name, dtype, shape, lambda i=i: self._core.weight_data(i))
            for i, (name, dtype, shape) in enumerate(self._core.weight_info())
        ]

    def save_pretrained(self, save_directory, is_main_process=True, save_function=None, safe_serialization=True,
                        variant=None, max_shard_size=None, push_to_hub=False, **kwargs):  # fmt: skip
        """Saves config.json and the weights (in the model's dtype: a float16 model writes F16 tensors) so that
        from_pretrained(save_directory) rebuilds the same model, as diffusers' ModelMixin.save_pretrained.

        variant: weights go to "<name>.<variant>.safetensors" (load them back with variant=...). max_shard_size
        (bytes or "10GB"-style; default 10GB, transformers models 50GB): bigger checkpoints are written as shards
        plus a .safetensors.index.json. Only safetensors are written (safe_serialization=False is an error) and
        nothing is uploaded (push_to_hub=True is an error). Returns nothing, as diffusers."""
        if os.path.isfile(save_directory):
            raise OSError(f"save_directory '{save_directory}' is a file, not a folder")
        if not safe_serialization:
            raise ValueError("cogvideo_c writes safetensors only (safe_serialization=False would need torch.save)")
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: cogvideo_c does not upload (use huggingface-cli upload)")
        if save_function is not None or kwargs:
            warn_ignored(f"{type(self).__name__}.save_pretrained", dict(kwargs, save_function=save_function))
        if not is_main_process:
            return
        self.save_config(save_directory)
        save_checkpoint(self._weight_entries(), save_directory, self._weights_stem, variant,
                        max_shard_size or self._default_max_shard_size)  # fmt: skip

    def to(self, *args, **kwargs):
        """diffusers' model.to(device / dtype). A device ("cpu", "emu", "cuda", "cuda:N") brings every weight group
        there (the copies on the old device are dropped; nothing is copied back). A new dtype converts the weights as
        torch's .to(dtype) does (from the weights held now, rounded to nearest even), through a temporary checkpoint in
        the system temp folder (as large as the model in its current dtype)."""
        device, dtype = parse_to_args(args, kwargs)
        if dtype is not None and dtype != self.dtype:
            with tempfile.TemporaryDirectory(prefix="cogvideo_c-to-") as tmp:
                self.save_pretrained(tmp)
                converted = type(self).from_pretrained(tmp, dtype=dtype)
            self._core, self.dtype = converted._core, converted.dtype
            old_device, self._device = self._device, CPU  # a new core: its weights start on the host
            if device is None and self._offload_hook is not None:
                self._offload_hook.install_one(self)  # the new weights follow the offload strategy
            elif device is None and old_device != CPU:
                device = old_device  # they go where the old ones were
        if device is not None:
            from .offload import fitting_strategy

            try:
                self._move(device)
            except OutOfMemoryError as err:  # name what fits, as the pipeline's to() does
                raise OutOfMemoryError(f"{err}{fitting_strategy([self], device)}") from None
        return self

    def _move(self, device):
        """Every weight group to `device` (the `none` policy); out of device memory, the weights go back where they
        were first (the device keeps nothing of them) and the OutOfMemoryError propagates."""
        from .offload import set_residency

        previous = self._device
        try:
            set_residency(self, device, "none")
        except OutOfMemoryError:
            set_residency(self, previous, "none")
            raise
