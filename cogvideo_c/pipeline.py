"""DiffusionPipeline and CogVideoXPipeline with diffusers' names, from_pretrained, call signature and numbers, on the
C core."""

import contextlib
import copy
import inspect
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from . import _C, configuration
from ._files import read_json
from .configuration import FrozenConfig
from .lora import CogVideoXLoraLoaderMixin
from .memory import OutOfMemoryError
from .modeling import (
    CPU,
    DIFFUSERS_VERSION,
    ModelMixin,
    check_device,
    either_dtype,
    load_dtype,
    parse_to_args,
    warn_ignored,
)
from .models import AutoencoderKLCogVideoX, _standard_normal
from .offload import MemoryReport
from .t5 import T5EncoderModel
from .transformer import CogVideoXTransformer3DModel


@dataclass
class CogVideoXPipelineOutput:
    """frames: a list (one per video) of lists of PIL images, a [B, F, H, W, 3] float32 array in [0, 1] ("np"),
    or the final latents [B, F, C, h, w] ("latent")."""

    frames: object


def _component_classes():
    from . import schedulers, tokenizer

    return {
        "tokenizer": {"T5Tokenizer": tokenizer.T5Tokenizer, "T5TokenizerFast": tokenizer.T5Tokenizer},
        "text_encoder": {"T5EncoderModel": T5EncoderModel},
        "vae": {"AutoencoderKLCogVideoX": AutoencoderKLCogVideoX},
        "transformer": {"CogVideoXTransformer3DModel": CogVideoXTransformer3DModel},
        "scheduler": {
            "CogVideoXDDIMScheduler": schedulers.CogVideoXDDIMScheduler,
            "CogVideoXDPMScheduler": schedulers.CogVideoXDPMScheduler,
            "DDIMScheduler": schedulers.DDIMScheduler,
        },
    }


_TRANSFORMERS_CLASSES = ("T5Tokenizer", "T5TokenizerFast", "T5EncoderModel")

# T5Tokenizer.__call__ configures the shared `tokenizers` backend (padding, truncation) and then encodes: two
# threads must not interleave those steps, whichever pipelines the tokenizer is shared by.
_TOKENIZER_LOCK = threading.Lock()


def _has_variant(folder, variant):
    """diffusers' _identify_model_variants test: a file whose second dot-part starts with the variant."""
    return any(len(p.split(".")) > 1 and p.split(".")[1].startswith(variant) for p in os.listdir(folder))


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def _finite_array(value, name):
    """value as a float32 array; ValueError when it is not real-valued or holds NaN / inf (nothing can denoise
    from them, and they would surface only as a black video after the whole loop)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"`{name}` must be a real-valued array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` holds {int(bad.sum())} NaN or infinite value(s) of {arr.size} (the first at index {first}): "
            "a video cannot be generated from them"
        )
    return arr


def randn_tensor(shape, generator=None):
    """N(0, 1) float32 noise of `shape` drawn as diffusers' randn_tensor draws it: from one generator (or seed), or
    with a list of generators one (1, *shape[1:]) draw per batch entry from generator[i], concatenated."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(
                f"{len(generator)} generators for a batch of {shape[0]} videos (prompts x num_videos_per_prompt): "
                "pass one generator per video"
            )
        return np.concatenate([_standard_normal((1, *shape[1:]), g) for g in generator])
    return _standard_normal(shape, generator)


def _initial_noise(shape, generator, latents):
    """The initial latents of `shape`, before init_noise_sigma: drawn from `generator` (randn_tensor's rules), or the
    given `latents` checked."""
    if latents is None:
        return randn_tensor(shape, generator)
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != shape:
        raise ValueError(f"latents must have shape {shape}, got {latents.shape}")
    return latents


def _host_memory_bytes():
    """The machine's physical memory, or the process's address-space limit (ulimit -v) when that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: no bound beyond what allocation itself reports
        return None
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, ValueError, OSError):
        return total
    return total if limit == resource.RLIM_INFINITY or limit <= 0 else min(total, limit)


def _per_call(name, doc, default=None):
    """A read-only pipeline property answered by the calling thread's current (or last) call's state."""

    def get(self):
        state = self._state()
        return default if state is None else getattr(state, name)

    get.__name__, get.__doc__ = name, doc
    return property(get)


class _CallState:
    """What one pipeline call exposes through the pipeline's properties (diffusers keeps these on the pipeline;
    here each call has its own, so concurrent calls cannot change each other's guidance or stop flag)."""

    __slots__ = ("guidance_scale", "num_timesteps", "attention_kwargs", "current_timestep", "interrupt")

    def __init__(self, guidance_scale, attention_kwargs):
        self.guidance_scale = guidance_scale
        self.attention_kwargs = attention_kwargs
        self.num_timesteps = None
        self.current_timestep = None
        self.interrupt = False


class _CallRequest:
    """One pipeline call's checked arguments by their __call__ names, plus what _request derives from them; the
    pipelines' hooks read it and may add their own entries (image_latents, strength, ...)."""

    def __init__(self, **arguments):
        self.__dict__.update(arguments)

    def __repr__(self):
        return f"_CallRequest({', '.join(sorted(self.__dict__))})"


class DiffusionPipeline:
    """Base class of the pipelines, as diffusers.DiffusionPipeline: loading from a diffusers folder
    (`DiffusionPipeline.from_pretrained` picks the class that model_index.json names), saving, `components`,
    `config`, `device`, `dtype`, `to()`, the progress bar, and the per-call state behind `guidance_scale`,
    `num_timesteps`, `interrupt`.

    One pipeline object may be called from several threads at once: every call runs on its own copy of the
    scheduler and keeps its guidance scale, timestep count and interrupt flag to itself. The properties read the
    state of the calling thread's current (or last) call, or of the last call started anywhere."""

    config_name = "model_index.json"
    model_cpu_offload_seq = None
    _optional_components = []
    _pipelines = {}  # class name -> class, filled by __init_subclass__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        DiffusionPipeline._pipelines[cls.__name__] = cls

    def __init__(self):
        self._name_or_path = None
        self._progress_bar_config = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._running = []  # _CallState of the calls in flight
        self._last_call = None
        self._warned = set()
        self._device_lock = threading.Lock()
        self._last_report = None

    # ---- loading -------------------------------------------------------------------------------------------

    @classmethod
    def _component_names(cls):
        return [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Loads a local folder in diffusers layout: model_index.json naming each component, each in its own
        subfolder.

        On `DiffusionPipeline` itself the pipeline class is the one model_index.json's `_class_name` names (an
        unknown one is a ValueError); on a subclass it is that class.

        Keyword arguments:
            dtype (or its older name torch_dtype): float32 (default), float16 or bfloat16, as a string, NumPy or
                torch dtype; or a dict {component name: dtype, "default": dtype} as diffusers accepts.
            variant: e.g. "fp16": components whose folder holds that variant load "<weights>.fp16.safetensors"
                (the others their usual weights); no component with it is a ValueError, as in diffusers.
            tokenizer, text_encoder, vae, transformer, scheduler: a ready component, used as given.
            Hub options (cache_dir, revision, ...) are accepted with one warning: cogvideo_c reads local folders.
        """
        root = configuration.component_dir(pretrained_model_name_or_path)
        index_path = os.path.join(root, "model_index.json")
        try:
            index = read_json(index_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"'{root}' has no model_index.json (not a diffusers pipeline folder)") from None
        target = cls
        if cls is DiffusionPipeline:
            name = index.get("_class_name")
            target = DiffusionPipeline._pipelines.get(name) if isinstance(name, str) else None
            if target is None:
                raise ValueError(
                    f"{index_path} names the pipeline class {name!r}, which cogvideo_c does not provide (it has "
                    f"{sorted(DiffusionPipeline._pipelines)})"
                )
        pipe = target._load_components(root, index_path, index, kwargs)
        pipe._name_or_path = os.fspath(pretrained_model_name_or_path)
        return pipe

    @classmethod
    def _load_components(cls, root, index_path, index, kwargs):
        kwargs = dict(kwargs)
        dtype_arg = either_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        variant = kwargs.pop("variant", None)
        classes = _component_classes()
        names = cls._component_names()
        given = {n: kwargs.pop(n) for n in names if n in kwargs}
        warn_ignored(f"{cls.__name__}.from_pretrained", kwargs, stacklevel=4)
        variants = {}
        if variant is not None:
            for n in names:
                folder = os.path.join(root, n)
                if n not in given and os.path.isdir(folder) and _has_variant(folder, variant):
                    variants[n] = variant
            if not variants:
                raise ValueError(
                    f"You are trying to load the model files of the `variant={variant}`, but no such modeling files "
                    f"are available in '{root}'."
                )
        parts = {}
        for name in names:
            if name in given:
                parts[name] = given[name]
                continue
            known = classes.get(name, {})
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"{index_path} does not name a '{name}' component")
            class_name = entry[1]
            if not isinstance(class_name, str) or class_name not in known:  # a list or dict is no class name
                raise ValueError(
                    f"{index_path}: {name} is a {str(class_name)[:100]}, which cogvideo_c does not provide "
                    f"(expected one of {sorted(known)})"
                )
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"the '{name}' component folder is missing: {folder}")
            component_cls = known[class_name]
            load_kwargs = {}
            if issubclass(component_cls, ModelMixin):
                if isinstance(dtype_arg, dict):
                    load_kwargs["dtype"] = load_dtype(dtype_arg.get(name, dtype_arg.get("default")), None)
                else:
                    load_kwargs["dtype"] = load_dtype(dtype_arg, None)
                load_kwargs["variant"] = variants.get(name)
            parts[name] = component_cls.from_pretrained(folder, **load_kwargs)
        return cls(**parts)

    # ---- what the pipeline is made of ----------------------------------------------------------------------

    @property
    def components(self):
        """{name: component} in the order of the constructor's arguments: `OtherPipeline(**pipe.components)`
        shares the loaded weights."""
        return {name: getattr(self, name) for name in self._component_names()}

    @property
    def name_or_path(self):
        """The folder the pipeline was loaded from (None when built from components)."""
        return self._name_or_path

    @property
    def config(self):
        """model_index.json as diffusers writes it: _class_name, _diffusers_version and [library, class] of each
        component (from the components held now, so a swapped scheduler shows), plus _name_or_path."""
        cfg = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION}
        if self._name_or_path is not None:
            cfg["_name_or_path"] = self._name_or_path
        for name, component in self.components.items():
            if component is None:
                cfg[name] = [None, None]
                continue
            class_name = type(component).__name__
            if type(component).__module__.split(".")[0] == "cogvideo_c":
                library = "transformers" if class_name in _TRANSFORMERS_CLASSES else "diffusers"
            else:
                library = type(component).__module__.split(".")[0]
            cfg[name] = [library, class_name]
        return FrozenConfig(cfg)

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(dict(self.config), indent=2, sort_keys=True)}\n"

    def _models(self):
        return [c for c in self.components.values() if isinstance(c, ModelMixin)]

    @property
    def device(self):
        """The device of the first model component, as diffusers reports it ("cpu" while offloaded; a str with
        torch.device's `.type`)."""
        models = self._models()
        return models[0].device if models else CPU

    def _device_of_models(self):
        """Where the first model's weights were placed (its to() device), offloaded or not."""
        models = self._models()
        return models[0]._device if models else CPU

    @property
    def _execution_device(self):
        """Where the components compute: the offload device when a strategy is on."""
        chain = self._offload
        return chain.device if chain is not None else self.device

    @property
    def dtype(self):
        """The weight dtype of the denoiser (the transformer), or of the first model component: "float32",
        "float16" or "bfloat16". (diffusers reports the first torch module it finds.)"""
        denoiser = getattr(self, "transformer", None)
        if isinstance(denoiser, ModelMixin):
            return denoiser.dtype
        models = self._models()
        return models[0].dtype if models else "float32"

    # ---- saving --------------------------------------------------------------------------------------------

    def save_config(self, save_directory):
        """Writes model_index.json (the config without _name_or_path) into save_directory; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        cfg = {k: v for k, v in self.config.items() if k != "_name_or_path"}
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return path

    def save_pretrained(self, save_directory, safe_serialization=True, variant=None, max_shard_size=None,
                        push_to_hub=False, **kwargs):  # fmt: skip
        """Saves every component into its subfolder of save_directory (models as config.json + safetensors in
        their dtype, the scheduler's scheduler_config.json, the tokenizer's files) and model_index.json, so that
        from_pretrained(save_directory) rebuilds the same pipeline, as diffusers' DiffusionPipeline.save_pretrained.

        variant: model weights go to "<name>.<variant>.safetensors" (load with variant=...). max_shard_size: as
        the models' save_pretrained (bytes or "10GB"). Only safetensors are written; nothing is uploaded."""
        if not safe_serialization:
            raise ValueError("cogvideo_c writes safetensors only (safe_serialization=False would need torch.save)")
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: cogvideo_c does not upload (use huggingface-cli upload)")
        warn_ignored(f"{type(self).__name__}.save_pretrained", kwargs)
        for name, component in self.components.items():
            save = getattr(component, "save_pretrained", None)
            if save is None:
                raise ValueError(f"the '{name}' component ({type(component).__name__}) has no save_pretrained")
            accepted = inspect.signature(save).parameters
            save_kwargs = {}
            if "variant" in accepted:
                save_kwargs["variant"] = variant
            if "max_shard_size" in accepted and max_shard_size is not None:
                save_kwargs["max_shard_size"] = max_shard_size
            save(os.path.join(save_directory, name), **save_kwargs)
        self.save_config(save_directory)

    # ---- device, dtype, memory -----------------------------------------------------------------------------

    def to(self, *args, **kwargs):
        """diffusers' pipe.to(device), pipe.to(dtype), pipe.to(device, dtype), pipe.to(device=..., dtype=...)
        (torch_dtype= is also accepted). A device ("cpu", "cuda", "cuda:N", or "emu": the emulated accelerator) brings
        every model component there whole (the `none` strategy). As in diffusers, moving a sequentially offloaded
        pipeline to an accelerator is an error, and moving a model-offloaded one warns (the memory saving is lost; its
        components then stay on the device). A dtype converts the weights of every model component from the weights held
        now, as torch's .to(dtype) does. Returns the pipeline."""
        device, dtype = parse_to_args(args, kwargs)
        chain = self._offload
        if device is not None and device != "cpu" and chain is not None:
            if chain.policy == "sequential":
                raise ValueError(
                    "It seems like you have activated sequential model offloading by calling "
                    "`enable_sequential_cpu_offload`, but are now attempting to move the pipeline to an accelerator. "
                    "This is not compatible with offloading. Please, move your pipeline `.to('cpu')` or consider "
                    "removing the move altogether if you use sequential offloading."
                )
            if chain.policy == "group":  # diffusers: a group-offloaded module is not moved by to()
                for model in chain.models:
                    warnings.warn(f"The module '{type(model).__name__}' is group offloaded and moving it to {device} "
                                  "via .to() is not supported.", UserWarning, stacklevel=2)  # fmt: skip
                return self
            if chain.policy in ("model", "auto"):
                warnings.warn(
                    f"It seems like you have activated {chain.policy} offloading (`enable_{chain.policy}_"
                    f"{'cpu_offload' if chain.policy == 'model' else 'offload'}`), but are now manually moving the "
                    f"pipeline to {device}. The memory gains from offloading are lost: every "
                    "component now stays on the device.",
                    UserWarning,
                    stacklevel=2,
                )
                self._remove_offload()
        if dtype is not None:
            for model in self._models():
                model.to(dtype=dtype)
        if device is not None:
            moved = []
            for model in self._models():
                if model._offload_hook is None:
                    previous = model._device
                    try:
                        model._move(device)
                    except OutOfMemoryError as err:
                        self._undo_move(moved, device, err)
                    if previous != device:
                        moved.append((model, previous))
                elif device == "cpu":  # diffusers: the hooks stay and bring the weights back on the next call
                    model._leave_stage()
        return self

    def _undo_move(self, moved, device, err):
        """A move that ran out of device memory: the components it moved go back where they were (the device holds
        what it held before), and the error names the offload strategy that fits."""
        from .offload import fitting_strategy, set_residency

        for model, previous in reversed(moved):
            set_residency(model, previous, "none")
        hint = fitting_strategy(self._models(), device)
        raise OutOfMemoryError(f"{err}{hint}") from None

    @property
    def _offload(self):
        return getattr(self, "_offload_chain", None)

    def _remove_offload(self):
        chain = self._offload
        if chain is not None:
            chain.free()
            chain.remove()
        self._offload_chain = None

    def _enable_offload(self, policy, device, gpu_id, prefetch, what):
        from .offload import OffloadChain, default_offload_device, resolve_device

        if self.model_cpu_offload_seq is None:
            raise ValueError(f"{what} cannot be enabled because no `model_cpu_offload_seq` class attribute is set.")
        current = self._offload
        if current is not None and current.policy == "group" and policy != "group":
            raise ValueError(
                "You are trying to apply model/sequential CPU offloading to a pipeline that contains components with "
                "group offloading enabled. This is not supported. Please disable group offloading for components of "
                "the pipeline to use other offloading methods."
            )
        if device is None:
            if gpu_id is not None and (not isinstance(gpu_id, int) or isinstance(gpu_id, bool)):
                raise ValueError(f"{what}: gpu_id must be an int, got {gpu_id!r}")
            try:
                if current is not None and (gpu_id is None or current.device.type != "cuda"):
                    device = default_offload_device(current.device, gpu_id) if gpu_id else current.device
                else:
                    device = default_offload_device(self._device_of_models(), gpu_id)
            except ValueError as err:
                raise ValueError(f"{what}: {err}") from None
        else:
            if gpu_id is not None and (not isinstance(gpu_id, int) or isinstance(gpu_id, bool)):
                raise ValueError(f"{what}: gpu_id must be an int, got {gpu_id!r}")
            device = resolve_device(device, gpu_id)
        self._remove_offload()  # diffusers: remove_all_hooks(), then hook again
        for model in self._models():
            model.to("cpu")
        self._offload_chain = OffloadChain(self, device, policy, prefetch, vae_policy=self._vae_sequential_policy)
        return self._offload_chain

    # Under sequential offload the VAE comes to the device whole: its blocks rerun for every frame batch and tile,
    # so streaming them would copy the decoder's weights once per batch (benchmarks/bench_offload.py measures both).
    _vae_sequential_policy = "model"

    def enable_model_cpu_offload(self, gpu_id=None, device=None):
        """diffusers' model offload: each component comes to the device whole when it runs and leaves when the
        next one in `model_cpu_offload_seq` (text_encoder -> transformer -> vae) starts; a pipeline that encodes an
        image or video first brings the VAE in for that encode, then the transformer, then the VAE again for the
        decode. After the call every component is off the device again (maybe_free_model_hooks).

        Args:
            gpu_id (`int`, *optional*): the CUDA device index (as diffusers: "cuda" means "cuda:{gpu_id}"; 0 for
                the emulated accelerator, of which there is one).
            device (`str`, *optional*): "cuda" / "cuda:N", "emu" (the emulated accelerator) or "cpu". Without one:
                the device the pipeline was moved to, else CUDA when build_info() lists it; on a CPU-only setup the
                weights stay on the CPU (a warning says so) where diffusers would raise for want of an accelerator.
        """
        self._enable_offload("model", device, gpu_id, 0, "Model CPU offload")

    def enable_sequential_cpu_offload(self, gpu_id=None, device=None):
        """diffusers' sequential offload, done as a stream: inside each forward only one block's weight group is
        on the device at a time, and the next one is copied on the copy queue while the current block computes
        (a ring of two device slots), so the copies hide behind compute instead of costing diffusers' 3-10x. The
        weights outside the blocks stay on the device while their component runs. Arguments as
        enable_model_cpu_offload."""
        self._enable_offload("sequential", device, gpu_id, 1, "Sequential CPU offload")

    def enable_group_offload(self, onload_device, offload_device="cpu", offload_type="block_level",
                             num_blocks_per_group=None, non_blocking=False, use_stream=False, record_stream=False,
                             low_cpu_mem_usage=False, offload_to_disk_path=None, exclude_modules=None):  # fmt: skip
        """diffusers' group offloading on every model component: block groups come to `onload_device` as their
        blocks run. Here a group is one block (a transformer or T5 block, a VAE block), so "block_level" with
        `num_blocks_per_group` = N keeps up to N blocks on the device (2N with `use_stream`, which prefetches the
        next N while the current ones compute) and "leaf_level" keeps one (two with `use_stream`).
        `offload_device` must be the CPU; weights are never written to disk (`offload_to_disk_path` is refused);
        `non_blocking`, `record_stream` and `low_cpu_mem_usage` change nothing here (copies are always queued, and
        host weights are the mapped checkpoint)."""
        from .offload import resolve_device

        if str(offload_device) not in ("cpu", "cpu:0"):
            raise ValueError(f"offload_device must be the CPU, got {offload_device!r}")
        if offload_to_disk_path is not None:
            raise ValueError("offload_to_disk_path is not supported: the host weights are the mapped checkpoint")
        if offload_type not in ("block_level", "leaf_level"):
            raise ValueError(f"offload_type must be 'block_level' or 'leaf_level', got {offload_type!r}")
        if offload_type == "block_level" and num_blocks_per_group is None:
            raise ValueError("`num_blocks_per_group` must be provided when using `offload_type='block_level'.")
        n = 1 if offload_type == "leaf_level" else _positive_int(num_blocks_per_group, "num_blocks_per_group")
        excluded = [exclude_modules] if isinstance(exclude_modules, str) else list(exclude_modules or [])
        unknown = [name for name in excluded if name not in self.components]
        if unknown:
            raise ValueError(f"exclude_modules names no component: {unknown}")
        device = resolve_device(onload_device, what="onload_device")
        # a group of more blocks than a component has is the whole component; the ring never has more slots anyway
        n = min(n, 32)
        chain = self._enable_offload("group", device, None, 2 * n - 1 if use_stream else n - 1, "Group offload")
        for name in excluded:  # diffusers moves excluded components to the onload device whole
            model = self.components[name]
            if model in chain.models:
                chain.models.remove(model)
                model._offload_hook = None
                model.to(device)

    def memory_report(self):
        """The last call's memory report (a MemoryReport: a dict per stage, str() a table): device peaks (weights
        vs activations), bytes copied, copy time, the overlap of copies with compute, host peak RSS. None before
        the first call."""
        return self._last_report

    @contextlib.contextmanager
    def _stage(self, report, stage, name):
        """One stage of a call: the other components give back their arenas (and, offloaded, their weights), and
        the stage is measured for memory_report()."""
        from .offload import StageMeter

        model = getattr(self, name)
        chain = self._offload
        if chain is None:
            for other in self._models():
                if other is not model:
                    other._leave_stage()
        elif model in chain.models:
            chain.leave_others(model)  # what the model's hook would do first, so the stage starts without them
        meter = StageMeter(report, stage, name, model, self._execution_device)
        try:
            yield
        finally:
            meter.end()

    def enable_auto_offload(self, max_memory=None, device=None):
        """One budget knob (beyond diffusers): before each call, from sizes known before any work (each
        component's weight groups, and each stage's activation arena measured for the requested size), picks the
        fastest combination that fits `max_memory` on the device: everything resident; else per component whole
        (model offload) or streamed (sequential, prefetch 1, then 0); with the VAE's slicing, then tiling, turned
        on only when nothing fits without. It prints the choice, and keeps components on the device across
        stages and calls while they fit, so nothing is reloaded needlessly. A budget nothing fits raises
        OutOfMemoryError before any work, naming the smallest budget that would.

        Args:
            max_memory (`int` or `str`, *optional*): device bytes, or a size as accelerate reads it ("6GB"
                = 6e9 bytes, "6GiB" = 6 x 2**30). Default: on CUDA the device's free memory (cudaMemGetInfo, as
                accelerate) plus what cogvideo_c already holds there; elsewhere "6GB".
            device (`str`, *optional*): as enable_model_cpu_offload's.
        """
        from .offload import AutoChain, default_budget, default_offload_device, parse_memory_size, resolve_device

        budget = parse_memory_size(max_memory) if max_memory is not None else None
        current = self._offload
        if current is not None and current.policy == "group":
            raise ValueError("group offloading is enabled on this pipeline: auto offload cannot be applied on top")
        if device is None:
            device = current.device if current is not None else default_offload_device(self._device_of_models())
        else:
            device = resolve_device(device)
        if budget is None:
            budget = default_budget(device)
        self._remove_offload()
        for model in self._models():
            model.to("cpu")
        self._offload_chain = AutoChain(self, device, budget)

    def _plan_auto(self, chain, request):
        """The AutoPlan for one request, applied to the chain (printed when it changes)."""
        from .offload import plan_auto, print_plan

        infos, arenas = self._request_sizes(request)
        plan = plan_auto(chain.budget, infos, arenas)
        slicing, tiling = plan.vae_options
        if slicing and not self.vae.use_slicing:
            self.vae.enable_slicing()
        if tiling and not self.vae.use_tiling:
            self.vae.enable_tiling()
        text = plan.describe()
        if text != getattr(chain, "_printed", None):
            print_plan(text)
            chain._printed = text
        chain.apply(plan)
        return plan

    def _request_sizes(self, request):
        """What the planner reads for one request, before any work: each component's residency info (its weight
        groups) and its stage's activation arena from a measuring pass (the VAE's for the user's slicing / tiling,
        then with slicing, then with tiling too). The VAE runs in up to two stages, the encode of the pipeline's
        conditioning input (_vae_encode_shapes) before the denoising and the decode after it, under one policy:
        its arena is the larger of the two."""
        batch = request.videos
        rows = batch * (2 if request.do_cfg else 1)
        latents = self._latent_shape(rows, request.num_frames, request.height, request.width)
        _, latent_frames, _, h, w = latents
        hidden = latents[:2] + (self.transformer.config.in_channels,) + latents[3:]  # with any conditioning channels
        components = {"text_encoder": self.text_encoder, "transformer": self.transformer, "vae": self.vae}
        infos = {name: _C.residency_info(m._core) for name, m in components.items()}
        arenas = {
            "text_encoder": {(None, None): self.text_encoder.arena_bytes((batch, request.max_sequence_length))},
            "transformer": {(None, None): self.transformer.arena_bytes(hidden, (rows, request.max_sequence_length))},
        }
        vae = self.vae
        z = (batch, vae.config.latent_channels, latent_frames, h, w)
        options = [(vae.use_slicing, vae.use_tiling), (True, vae.use_tiling), (True, True)]
        keys = list(dict.fromkeys(options))  # the user's settings first; no duplicates
        decode = request.output_type != "latent"
        encodes = self._vae_encode_shapes(request)
        if decode or encodes:
            arenas["vae"] = {}
            for key in keys:
                stages = [vae.arena_bytes(z, *key)] if decode else []
                stages += [vae.arena_bytes(shape, *key, decode=False) for shape in encodes]
                arenas["vae"][key] = max(stages)
        else:
            arenas["vae"] = {keys[0]: 0}
        return infos, arenas

    def _vae_encode_shapes(self, request):
        """Hook: the shapes [B, 3, F, H, W] of the videos the VAE encodes during this request before the denoising
        (none for text-to-video), so that the planner sizes the encode's arena too."""
        return []

    def _request_fit(self, device, request):
        """For an OutOfMemoryError of a call on `device`: the strategy the auto planner finds for this request in
        what the device can give (the room left plus the weights the components hold there now), as text."""
        from .offload import device_room, format_bytes, plan_auto

        room = device_room(device)
        if room is None:
            return ""
        infos, arenas = self._request_sizes(request)
        budget = room + sum(info["resident_bytes"] for info in infos.values())
        try:
            plan = plan_auto(budget, infos, arenas)
        except OutOfMemoryError as err:  # nothing fits: the planner names the smallest budget that would
            return f"; {err}"
        chosen = plan.describe().split(": ", 1)[1]
        return f"; {format_bytes(budget)} of {device} would fit this request with {chosen} " \
               f"(enable_auto_offload(max_memory={budget}) applies it)"  # fmt: skip

    def maybe_free_model_hooks(self):
        """diffusers' end-of-call step: under an offload strategy every component leaves the device (the state
        before the call); without one, nothing happens."""
        chain = self._offload
        if chain is not None:
            chain.free()

    def enable_vae_slicing(self):
        """Decode one video of a batch at a time (the same as `pipe.vae.enable_slicing()`)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self):
        """Decode the whole batch at once again (`pipe.vae.disable_slicing()`)."""
        self.vae.disable_slicing()

    def enable_vae_tiling(self):
        """Decode in overlapping spatial tiles to bound memory (`pipe.vae.enable_tiling()`)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self):
        """Decode whole frames again (`pipe.vae.disable_tiling()`)."""
        self.vae.disable_tiling()

    # ---- progress bar --------------------------------------------------------------------------------------

    def progress_bar(self, iterable=None, total=None):
        """A tqdm bar over `iterable`, or with `total` steps, configured by set_progress_bar_config (diffusers)."""
        from tqdm.auto import tqdm

        if not isinstance(self._progress_bar_config, dict):
            raise ValueError(
                f"`self._progress_bar_config` should be of type `dict`, but is {type(self._progress_bar_config)}."
            )
        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self._progress_bar_config)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    def set_progress_bar_config(self, **kwargs):
        """Keyword arguments for tqdm in every later progress bar (e.g. disable=True), replacing earlier ones."""
        self._progress_bar_config = kwargs

    # ---- per-call state ------------------------------------------------------------------------------------

    def _begin_call(self, guidance_scale, attention_kwargs):
        state = _CallState(guidance_scale, attention_kwargs)
        self._local.active = state
        self._local.last = state
        with self._lock:
            self._running.append(state)
            self._last_call = state
        return state

    def _end_call(self, state):
        self._local.active = None
        with self._lock:
            self._running.remove(state)

    def _state(self):
        return getattr(self._local, "active", None) or getattr(self._local, "last", None) or self._last_call

    guidance_scale = _per_call(
        "guidance_scale", "The guidance scale of the current (or last) call; with use_dynamic_cfg, the current step's."
    )
    num_timesteps = _per_call("num_timesteps", "How many denoising steps the current (or last) call runs.")
    attention_kwargs = _per_call("attention_kwargs", "The attention_kwargs given to the current (or last) call.")
    current_timestep = _per_call(
        "current_timestep", "The timestep being denoised by the current call (None outside the loop)."
    )
    interrupt = _per_call(
        "interrupt", "True once the current call was asked to stop (`pipe._interrupt = True`).", default=False
    )

    @property
    def _interrupt(self):
        return self.interrupt

    @_interrupt.setter
    def _interrupt(self, value):
        """diffusers' stop flag: set inside a callback it stops that call's loop (the remaining steps are skipped
        and the latents reached so far are decoded); set from any other thread it stops every call in flight."""
        active = getattr(self._local, "active", None)
        if active is not None:
            active.interrupt = bool(value)
            return
        with self._lock:
            for state in self._running:
                state.interrupt = bool(value)

    def _warn_once(self, argument, message):
        """Warns once per pipeline object and argument that an accepted argument is not acted on."""
        with self._lock:
            if argument in self._warned:
                return
            self._warned.add(argument)
        warnings.warn(message, UserWarning, stacklevel=3)


class CogVideoXPipeline(CogVideoXLoraLoaderMixin, DiffusionPipeline):
    """Text-to-video with CogVideoX: T5 prompt encoding, the transformer denoising loop with classifier-free
    guidance, and the VAE decode, exactly as diffusers' CogVideoXPipeline computes them.

    Args:
        tokenizer (T5Tokenizer): turns prompts into T5 token ids.
        text_encoder (T5EncoderModel): the frozen T5 v1.1 encoder giving the prompt embeddings.
        vae (AutoencoderKLCogVideoX): decodes the denoised latents to frames.
        transformer (CogVideoXTransformer3DModel): the denoiser.
        scheduler (CogVideoXDDIMScheduler, CogVideoXDPMScheduler or DDIMScheduler): the sampler. Each call runs
            on its own copy of it (so concurrent calls cannot disturb each other); `pipe.scheduler` itself is the
            template and is never stepped.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        super().__init__()
        self.tokenizer, self.text_encoder, self.vae = tokenizer, text_encoder, vae
        self.transformer, self.scheduler = transformer, scheduler
        self.vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1) if vae else 8
        self.vae_scale_factor_temporal = vae.config.temporal_compression_ratio if vae else 4
        self.vae_scaling_factor_image = vae.config.scaling_factor if vae else 0.7

    # ---- prompt encoding -----------------------------------------------------------------------------------

    def _t5_prompt_embeds(self, prompt, max_sequence_length):
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        with _TOKENIZER_LOCK:
            ids = self.tokenizer(
                prompt, padding="max_length", max_length=max_sequence_length, truncation=True,
                add_special_tokens=True, return_tensors="np",
            )["input_ids"]  # fmt: skip
        return self.text_encoder(ids)[0].astype(np.float32, copy=False)

    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance=True, num_videos_per_prompt=1,
                      prompt_embeds=None, negative_prompt_embeds=None, max_sequence_length=226, device=None,
                      dtype=None):  # fmt: skip
        """Encodes the prompt (and, with guidance, the negative prompt) into T5 hidden states, as diffusers.

        Args:
            prompt (str or list of str): the prompt(s); may be None when prompt_embeds is given.
            negative_prompt (str or list of str, optional): what to guide away from; "" when not given.
            do_classifier_free_guidance (bool): also encode the negative prompt.
            num_videos_per_prompt (int): each embedding is repeated this many times (consecutively).
            prompt_embeds, negative_prompt_embeds (arrays [B, L, D], optional): precomputed embeddings, used as
                given instead of running the tokenizer and T5.
            max_sequence_length (int): tokens per prompt (padded / truncated to it).
            device: a device the pipeline accepts, or None (the embeddings are host arrays wherever T5 runs).
                dtype: the embeddings are float32 (a different dtype warns once).

        Returns:
            (prompt_embeds, negative_prompt_embeds) float32 arrays [B * num_videos_per_prompt, L, D]; the second is
            None without guidance and without given negative embeddings.
        """
        check_device(device)
        if dtype is not None and str(dtype).replace("torch.", "") not in ("float32", "float"):
            self._warn_once("encode_prompt.dtype", f"encode_prompt(dtype={dtype!r}) is ignored: embeddings are float32")
        num_videos_per_prompt = _positive_int(num_videos_per_prompt, "num_videos_per_prompt")
        if prompt_embeds is None:
            prompt_embeds = self._t5_prompt_embeds(prompt, max_sequence_length)
        prompt_embeds = np.repeat(np.asarray(prompt_embeds, dtype=np.float32), num_videos_per_prompt, axis=0)
        batch = prompt_embeds.shape[0] // num_videos_per_prompt
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = batch * [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if prompt is not None and not isinstance(prompt, str) and len(negative_prompt) != batch:
                raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {batch} prompts")
            negative_prompt_embeds = self._t5_prompt_embeds(negative_prompt, max_sequence_length)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = np.repeat(
                np.asarray(negative_prompt_embeds, dtype=np.float32), num_videos_per_prompt, axis=0
            )
        return prompt_embeds, negative_prompt_embeds

    # ---- checks --------------------------------------------------------------------------------------------

    def check_inputs(self, prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                     callback_on_step_end_tensor_inputs, prompt_embeds=None, negative_prompt_embeds=None,
                     output_type="pil", latents=None, guidance_scale=6.0, num_videos_per_prompt=1,
                     eta=0.0):  # fmt: skip
        """Raises ValueError for arguments the call cannot use, before any work: sizes that are not multiples of
        vae_scale_factor_spatial x patch_size (with the nearest valid values), frame counts that do not map to
        whole latent frames, NaN / inf in latents or embeddings, conflicting prompt arguments, and more (diffusers'
        checks and some it lacks). Sizes whose arrays could not fit in this machine's memory raise
        cogvideo_c.OutOfMemoryError, also before any work."""
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            _positive_int(value, name)
        self._check_spatial_size(height, width)
        num_videos_per_prompt = _positive_int(num_videos_per_prompt, "num_videos_per_prompt")
        if not isinstance(num_inference_steps, (int, np.integer)) or isinstance(num_inference_steps, bool) \
                or num_inference_steps < 1:  # fmt: skip
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        for name, value in (("guidance_scale", guidance_scale), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):  # fmt: skip
                raise ValueError(f"`{name}` must be a finite number, got {value!r}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                             f"but found {bad}")  # fmt: skip
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both undefined.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("`prompt` is an empty list")
        if prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `negative_prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `negative_prompt` and `negative_prompt_embeds`.")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds` "
                    f"{np.shape(negative_prompt_embeds)}."
                )
        if prompt_embeds is not None and np.ndim(prompt_embeds) != 3:
            raise ValueError(f"prompt_embeds must be [batch, tokens, width], got shape {np.shape(prompt_embeds)}")
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds),
                            ("latents", latents)):  # fmt: skip
            if value is not None:
                _finite_array(value, name)
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type {output_type!r}: use 'pil', 'np' or 'latent' ('pt' needs torch)")
        batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else np.shape(prompt_embeds)[0]
        if latents is not None:
            want = self._latent_shape(batch * num_videos_per_prompt, num_frames, height, width)
            if np.shape(latents) != want:
                raise ValueError(
                    f"latents must have shape {want} ([prompts x num_videos_per_prompt, latent frames, channels, "
                    f"height / {self.vae_scale_factor_spatial}, width / {self.vae_scale_factor_spatial}]), got "
                    f"{np.shape(latents)}"
                )
        # arithmetic only: an absurd size is refused here, before the VAE is asked about frames or anything is built
        self._check_host_memory(batch * num_videos_per_prompt, height, width, num_frames, guidance_scale > 1.0)
        if self._decoded_frames(num_frames) != num_frames:
            r = self.vae_scale_factor_temporal
            valid = sorted({self._decoded_frames(n) for n in range(max(1, num_frames - 2 * r), num_frames + 2 * r)})
            raise ValueError(
                f"num_frames {num_frames} does not map to whole latent frames: the VAE would decode "
                f"{self._decoded_frames(num_frames)}; nearby valid counts are {valid}"
            )

    def _latent_shape(self, videos, num_frames, height, width):
        """Hook (f): the initial latents' shape (what check_inputs holds `latents` to, and the planner sizes), with
        CogVideoX 1.5's padding to whole temporal patches; num_frames as the user gave it."""
        frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        frames += self._padding_frames(frames)
        s = self.vae_scale_factor_spatial
        return (videos, frames, self.transformer.config.in_channels, height // s, width // s)

    def _padding_frames(self, latent_frames):
        """The latent frames CogVideoX 1.5 (patch_size_t) adds to fill whole temporal patches; 0 for 1.0 models."""
        pt = self.transformer.config.patch_size_t
        return pt - latent_frames % pt if pt is not None and latent_frames % pt else 0

    def _check_spatial_size(self, height, width):
        """height and width in pixels must be multiples of vae_scale_factor_spatial x patch_size (16 for the
        released models): the VAE divides by the first, the transformer's patches by the second."""
        patch = self.transformer.config.patch_size
        multiple = self.vae_scale_factor_spatial * patch
        for name, value in (("height", height), ("width", width)):
            if value % multiple:
                lower = value // multiple * multiple
                nearest = " or ".join(str(v) for v in (lower, lower + multiple) if v > 0)
                raise ValueError(
                    f"`{name}` {value} must be a multiple of {multiple} (vae_scale_factor_spatial "
                    f"{self.vae_scale_factor_spatial} x the transformer's patch_size {patch}); the nearest valid "
                    f"{name} is {nearest}"
                )

    def _check_host_memory(self, videos, height, width, num_frames, do_cfg):
        """The arrays this call holds in NumPy (latents with their CFG copies and scheduler temporaries, the rotary
        tables, the decoded float32 video and its conversion) must fit in the machine's memory."""
        c = self.transformer.config
        s, r = self.vae_scale_factor_spatial, self.vae_scale_factor_temporal
        latent_frames = (num_frames - 1) // r + 1
        latent_bytes = 4 * videos * latent_frames * c.in_channels * (height // s) * (width // s)
        tokens = latent_frames * (height // (s * c.patch_size)) * (width // (s * c.patch_size))
        video_bytes = 4 * videos * 3 * (latent_frames * r) * height * width
        need = (8 if do_cfg else 5) * latent_bytes + 2 * 4 * tokens * c.attention_head_dim + 3 * video_bytes
        available = _host_memory_bytes()
        if available is not None and need > available:
            raise OutOfMemoryError(
                f"{videos} video(s) of {num_frames} frames at {height}x{width} need at least {need / 2**30:.3g} GiB "
                f"for their latents and decoded frames alone, more than this machine's {available / 2**30:.3g} GiB: "
                "use fewer frames, a smaller size or fewer videos per call"
            )

    def _decoded_frames(self, num_frames):
        """Frames the VAE decodes from the latents of num_frames (4(F-1)+1 for odd latent counts F, 4F for even,
        with the released VAEs), asked of the VAE itself."""
        f = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        return self.vae.decoded_frames(f)

    # ---- the call ------------------------------------------------------------------------------------------

    def __call__(self, prompt=None, negative_prompt=None, height=None, width=None, num_frames=None,
                 num_inference_steps=50, timesteps=None, guidance_scale=6, use_dynamic_cfg=False,
                 num_videos_per_prompt=1, eta=0.0, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type="pil", return_dict=True, attention_kwargs=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length=226):  # fmt: skip
        """Generates videos from text, as diffusers' CogVideoXPipeline.__call__.

        Args:
            prompt (str or list of str, optional): the prompt(s) to guide generation; or pass `prompt_embeds`.
            negative_prompt (str or list of str, optional): what to guide away from ("" when not given); ignored
                without guidance (guidance_scale <= 1).
            height (int, optional): frame height in pixels, a multiple of vae_scale_factor_spatial x patch_size
                (16 for the released models); defaults to transformer.config.sample_height x
                vae_scale_factor_spatial (480 for CogVideoX).
            width (int, optional): frame width in pixels, the same multiple; defaults to sample_width x
                vae_scale_factor_spatial (720).
            num_frames (int, optional): frames to generate; must map to whole latent frames (4k + 1 for the
                released models, e.g. 49); defaults to transformer.config.sample_frames.
            num_inference_steps (int, defaults to 50): denoising steps; more is slower and usually better.
            timesteps: custom timesteps are not supported by the CogVideoX schedulers (ValueError, as diffusers'
                retrieve_timesteps raises for them).
            guidance_scale (float, defaults to 6): classifier-free guidance weight w (Imagen, eq. 2); guidance is
                on when it is > 1.
            use_dynamic_cfg (bool, defaults to False): raise the guidance over the steps with diffusers' cosine rule.
            num_videos_per_prompt (int, defaults to 1): videos generated per prompt. diffusers ignores this
                argument (it always makes one); here it is acted on: each prompt's embeddings are repeated and
                batch x num_videos_per_prompt latents are drawn, so the output holds that many videos per prompt
                (consecutively), the same as repeating each prompt in a list.
            eta (float, defaults to 0.0): DDIM's eta, used by DDIMScheduler; the CogVideoX schedulers ignore it (as
                in diffusers), and a non-zero value then warns once.
            generator (optional): an int seed, a numpy.random.Generator, a torch.Generator (drawn as torch draws),
                or a list with one per video, for the initial latents and the DPM scheduler's noise.
            latents (array [B x num_videos_per_prompt, F, C, h, w], optional): initial noise, used instead of
                drawing it; must be finite.
            prompt_embeds (array [B, L, D], optional): precomputed prompt embeddings (instead of `prompt`).
            negative_prompt_embeds (array [B, L, D], optional): precomputed negative embeddings.
            output_type (str, defaults to "pil"): "pil" (lists of PIL images), "np" (float32 [B, F, H, W, 3] in
                [0, 1]) or "latent" (the denoised latents).
            return_dict (bool, defaults to True): return a CogVideoXPipelineOutput instead of a tuple.
            attention_kwargs (dict, optional): passed to the transformer: its "scale" multiplies the loaded LoRA
                adapters' outputs (diffusers' lora_scale); other keys warn once and change nothing.
            callback_on_step_end (callable, optional): called after every step as
                `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; callback_kwargs holds the tensors
                named in callback_on_step_end_tensor_inputs, and returned entries replace them. Setting
                `pipe._interrupt = True` in it stops the loop after that step (the latents reached are decoded).
            callback_on_step_end_tensor_inputs (list of str, defaults to ["latents"]): any of "latents",
                "prompt_embeds", "negative_prompt_embeds".
            max_sequence_length (int, defaults to 226): tokens per prompt; must equal the transformer's
                max_text_seq_length.

        Returns:
            CogVideoXPipelineOutput with `frames` (see output_type), or the tuple (frames,) when return_dict is False.

        Bad arguments raise ValueError (sizes, NaN inputs, conflicting prompts) and sizes that cannot fit in memory
        cogvideo_c.OutOfMemoryError, all before any encoding or denoising. One pipeline may be called from several
        threads at once; each call keeps its own scheduler copy and state.
        """
        height, width, num_frames = self._default_size(height, width, num_frames)
        if timesteps is not None:
            raise ValueError("custom `timesteps` are not supported by the CogVideoX schedulers' set_timesteps")
        self.check_inputs(prompt, height, width, num_frames, num_inference_steps, negative_prompt,
                          callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds,
                          output_type, latents, guidance_scale, num_videos_per_prompt, eta)  # fmt: skip
        return self._call(self._request(locals()))

    # ---- the shared call: one denoising loop, and the hooks the other CogVideoX pipelines override -----------

    def _default_size(self, height, width, num_frames):
        """height, width and num_frames, each defaulting to the transformer's sample size (diffusers' rule)."""
        tc = self.transformer.config
        height = height or tc.sample_height * self.vae_scale_factor_spatial
        width = width or tc.sample_width * self.vae_scale_factor_spatial
        return height, width, num_frames or tc.sample_frames

    def _request(self, arguments):
        """One call's checked arguments plus what every stage derives from them. `arguments`: the pipeline's
        __call__ parameters by name (its `locals()` after the defaults and checks; "self" and "timesteps" are left
        out). Derived: batch_size (prompts), videos (batch_size x num_videos_per_prompt), do_cfg, and
        additional_frames, the latent frames CogVideoX 1.5 adds to whole temporal patches (num_frames is then the
        padded pixel frame count, as diffusers carries it into prepare_latents; requested_frames the given one)."""
        r = _CallRequest(**{k: v for k, v in arguments.items() if k not in ("self", "__class__", "timesteps")})
        if r.prompt is not None:
            r.batch_size = 1 if isinstance(r.prompt, str) else len(r.prompt)
        else:
            r.batch_size = len(r.prompt_embeds)
        r.videos = r.batch_size * r.num_videos_per_prompt
        r.do_cfg = r.guidance_scale > 1.0
        r.additional_frames = self._padding_frames((r.num_frames - 1) // self.vae_scale_factor_temporal + 1)
        r.requested_frames = r.num_frames
        r.num_frames = r.num_frames + r.additional_frames * self.vae_scale_factor_temporal
        return r

    def _call(self, request):
        """Everything after a pipeline's own checks: warnings for arguments not acted on, this call's scheduler
        copy and state, the auto planner, _generate under the device lock, and an OutOfMemoryError's hint."""
        from .schedulers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

        r = request
        if r.attention_kwargs is not None and set(r.attention_kwargs) - {"scale"}:
            self._warn_once("attention_kwargs", "attention_kwargs keys other than 'scale' (the LoRA scale) are "
                                                "ignored: cogvideo_c has no attention processors")  # fmt: skip
        if r.eta and isinstance(self.scheduler, (CogVideoXDDIMScheduler, CogVideoXDPMScheduler)):
            self._warn_once("eta", f"eta={r.eta} is ignored by {type(self.scheduler).__name__} (as in diffusers; "
                                   "DDIMScheduler uses it)")  # fmt: skip
        scheduler = copy.deepcopy(self.scheduler)  # this call's own timesteps and noise stream
        state = self._begin_call(r.guidance_scale, r.attention_kwargs)
        # components move between host and device under an offload strategy: calls then take turns
        with self._device_lock if self._offload is not None else contextlib.nullcontext():
            chain = self._offload
            if chain is not None and chain.policy == "auto":  # sizes are known now: plan before any work
                self._plan_auto(chain, r)
            try:
                try:
                    video = self._generate(scheduler, state, r)
                finally:
                    self._end_call(state)
                    self.maybe_free_model_hooks()
                    for model in self._models():  # also after Ctrl-C between steps: no arena stays on the device
                        model._core.trim_arena()
            except OutOfMemoryError as err:
                device = self._execution_device
                if device == "cpu" or (chain is not None and chain.policy == "auto"):  # auto planned it already
                    raise
                raise OutOfMemoryError(f"{err}{self._request_fit(device, r)}") from None
        return CogVideoXPipelineOutput(frames=video) if r.return_dict else (video,)

    def _generate(self, scheduler, state, request):
        """The stages of one call: encode_prompt, the hooks' timesteps and initial latents (with any VAE encode),
        the denoising loop, and the decode."""
        r = request
        do_cfg = r.do_cfg

        report = MemoryReport()
        self._last_report = report
        with self._stage(report, "encode_prompt", "text_encoder"):
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                r.prompt, r.negative_prompt, do_cfg, r.num_videos_per_prompt, r.prompt_embeds,
                r.negative_prompt_embeds, r.max_sequence_length,
            )  # fmt: skip
        if do_cfg:
            prompt_embeds = np.concatenate([negative_prompt_embeds, prompt_embeds], axis=0)  # unconditional first

        timesteps = self._prepare_timesteps(scheduler, r)
        state.num_timesteps = len(timesteps)
        latents, conditioning = self._prepare_call_latents(scheduler, r, report)
        num_inference_steps = r.num_inference_steps

        step_params = inspect.signature(scheduler.step).parameters
        extra_step_kwargs = {k: v for k, v in (("eta", r.eta), ("generator", r.generator)) if k in step_params}
        image_rotary_emb = None
        if self.transformer.config.use_rotary_positional_embeddings:
            image_rotary_emb = self.transformer.rotary_positional_embeddings(
                r.height, r.width, latents.shape[1], vae_scale_factor_spatial=self.vae_scale_factor_spatial
            )
        transformer_kwargs = self._transformer_kwargs(r, latents)
        guidance_scale, callback = r.guidance_scale, r.callback_on_step_end
        is_dpm = type(scheduler).__name__ == "CogVideoXDPMScheduler"
        old_pred_original_sample = None
        with self._stage(report, "denoise", "transformer"), self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                if state.interrupt:
                    continue
                state.current_timestep = t
                latent_model_input = np.concatenate([latents, latents]) if do_cfg else latents
                latent_model_input = scheduler.scale_model_input(latent_model_input, t)
                latent_model_input = self._transformer_input(latent_model_input, conditioning, r)
                timestep = np.full((latent_model_input.shape[0],), t, dtype=np.int64)
                noise_pred = self.transformer(
                    hidden_states=latent_model_input, encoder_hidden_states=prompt_embeds, timestep=timestep,
                    image_rotary_emb=image_rotary_emb, attention_kwargs=state.attention_kwargs, return_dict=False,
                    **transformer_kwargs,
                )[0].astype(np.float32, copy=False)  # fmt: skip
                if r.use_dynamic_cfg:
                    # the raw timestep value in a Python double, as diffusers computes it (spec: reproduce literally)
                    q = ((num_inference_steps - int(t)) / num_inference_steps) ** 5.0
                    state.guidance_scale = 1 + guidance_scale * ((1 - math.cos(math.pi * q)) / 2)
                if do_cfg:
                    uncond, text = np.split(noise_pred, 2)
                    noise_pred = uncond + np.float32(state.guidance_scale) * (text - uncond)
                if is_dpm:
                    latents, old_pred_original_sample = scheduler.step(
                        noise_pred, old_pred_original_sample, t, timesteps[i - 1] if i > 0 else None, latents,
                        **extra_step_kwargs, return_dict=False,
                    )  # fmt: skip
                else:
                    latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                latents = np.asarray(latents, dtype=np.float32)
                if callback is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}  # fmt: skip
                    kw = {k: local[k] for k in r.callback_on_step_end_tensor_inputs}
                    outputs = callback(self, i, t, kw) or {}
                    for name in ("latents", "prompt_embeds", "negative_prompt_embeds"):
                        if name in outputs and outputs[name] is not local[name]:
                            local[name] = _finite_array(outputs[name], f"{name} returned by the callback at step {i}")
                    latents, prompt_embeds = local["latents"], local["prompt_embeds"]
                    negative_prompt_embeds = local["negative_prompt_embeds"]
                bar.update()
        state.current_timestep = None

        if r.output_type == "latent":
            return latents
        with self._stage(report, "decode", "vae"):
            video = self.decode_latents(self._latents_to_decode(latents, r))
        return self.postprocess_video(video, r.output_type)

    def _prepare_timesteps(self, scheduler, request):
        """Hook (a): sets the call's scheduler copy up and returns the timesteps the loop runs, in order. It may set
        request.num_inference_steps to the count use_dynamic_cfg is to read (video-to-video's get_timesteps)."""
        scheduler.set_timesteps(request.num_inference_steps)
        return scheduler.timesteps

    def _prepare_call_latents(self, scheduler, request, report):
        """Hook (b): (latents [videos, F, C, h, w] float32, already scaled by init_noise_sigma, conditioning or
        None). Conditioning, when not None, is an array [videos, F, C', h, w] that _transformer_input concatenates
        to every step's input along the channels. A VAE encode done here runs inside
        `self._stage(report, "encode_...", "vae")`, so offload brings the VAE in and the report measures it; its
        random draws come first, before the noise, as diffusers orders them."""
        r = request
        latents = self.prepare_latents(r.videos, self.transformer.config.in_channels, r.num_frames, r.height, r.width,
                                       r.generator, r.latents, scheduler=scheduler)  # fmt: skip
        return latents, None

    def _transformer_input(self, latent_model_input, conditioning, request):
        """Hook (c): the transformer's hidden_states for one step from the scaled (CFG-doubled) latents: with
        conditioning, [input, conditioning (doubled likewise under CFG)] along the channels, as diffusers' image,
        control and inpainting pipelines build it."""
        if conditioning is None:
            return latent_model_input
        if request.do_cfg:
            conditioning = np.concatenate([conditioning, conditioning])
        return np.concatenate([latent_model_input, conditioning], axis=2)

    def _transformer_kwargs(self, request, latents):
        """Hook (d): extra keyword arguments for every transformer call (e.g. image-to-video's `ofs`), computed once
        before the loop from the initial latents."""
        return {}

    def _latents_to_decode(self, latents, request):
        """Hook (e): the denoised latents the VAE decodes: without the latent frames CogVideoX 1.5 padded at the
        front (diffusers' `latents[:, additional_frames:]`)."""
        return latents[:, request.additional_frames :]

    def prepare_latents(self, batch_size, num_channels_latents, num_frames, height, width, generator=None,
                        latents=None, scheduler=None):  # fmt: skip
        """The initial latents [batch, (num_frames - 1) // 4 + 1, channels, height // 8, width // 8]: drawn from
        `generator` (one draw for the batch, or one per entry of a list of generators), or the given `latents`
        checked for shape; scaled by the scheduler's init_noise_sigma."""
        scheduler = scheduler or self.scheduler
        shape = (
            batch_size, (num_frames - 1) // self.vae_scale_factor_temporal + 1, num_channels_latents,
            height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial,
        )  # fmt: skip
        return _initial_noise(shape, generator, latents) * np.float32(scheduler.init_noise_sigma)

    def decode_latents(self, latents):
        """Latents [B, F, C, h, w] -> the VAE's frames [B, 3, F', H, W] in [-1, 1] (after 1 / scaling_factor)."""
        latents = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4))  # BFCHW -> BCFHW
        latents = np.float32(1 / self.vae_scaling_factor_image) * latents
        return self.vae.decode(latents).sample

    @staticmethod
    def postprocess_video(video, output_type="np"):
        """[B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] in [0, 1] ("np") or lists of PIL images ("pil")."""
        frames = np.clip(video * np.float32(0.5) + np.float32(0.5), 0.0, 1.0).transpose(0, 2, 3, 4, 1)
        if output_type == "np":
            return np.ascontiguousarray(frames, dtype=np.float32)
        from PIL import Image

        as_bytes = np.round(frames * 255).astype(np.uint8)
        return [[Image.fromarray(f) for f in item] for item in as_bytes]
