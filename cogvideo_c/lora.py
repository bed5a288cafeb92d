"""LoRA adapters with diffusers' API: ``pipe.load_lora_weights``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``,
``unload_lora_weights`` (diffusers' ``CogVideoXLoraLoaderMixin``) and the transformer's own ``load_lora_adapter``,
``set_adapters``, ``fuse_lora``, ... (diffusers' ``PeftAdapterMixin``), for the diffusers/PEFT file format
CogVideoX fine-tunes are published in (``transformer.<module>.lora_A.weight`` [r, in] / ``lora_B.weight`` [out, r]).

Rank and alpha are derived as diffusers derives them: from the file's ``lora_adapter_metadata`` (the LoraConfig
``save_lora_weights`` stored: r, lora_alpha, rank_pattern, alpha_pattern, use_rslora) when present, else from the
state dict (alpha = r: scaling 1). The C core computes an unfused adapter as y = W x + b + sum_i s_i B_i (A_i x),
its tensors in the weight group of the block they modify (model and sequential offload move them with it); a fused
one as a private copy of the affected weights only."""

import collections
import json
import math
import os
import re
import struct
import tempfile
import warnings

import numpy as np

from .safetensors_io import save_file

LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_MAX_RANK = 1 << 20  # the C core's bound on a LoRA rank (transformer.c)
# loading arguments diffusers takes for the Hub or torch that change nothing for a local safetensors file
_LOAD_KWARGS = {"cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "use_safetensors",
                "low_cpu_mem_usage", "hotswap", "return_lora_metadata", "subfolder", "weight_name"}  # fmt: skip


# ---- files ---------------------------------------------------------------------------------------------------------


def _resolve_file(path, weight_name=None, subfolder=None):
    """The .safetensors file a path names: the file itself, or weight_name (default pytorch_lora_weights.safetensors)
    inside the folder (and subfolder)."""
    path = os.fspath(path)
    if subfolder:
        path = os.path.join(path, subfolder)
    if os.path.isdir(path):
        name = weight_name or LORA_WEIGHT_NAME_SAFE
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            hint = f"; the folder holds {found} (pass weight_name=)" if found else ""
            raise FileNotFoundError(f"no LoRA file {name!r} in {path!r}{hint}")
        return file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no LoRA file or folder {path!r} (cogvideo_c loads local files only)")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path!r}: only .safetensors LoRA files are supported (no pickled .bin files)")
    return path


def _read_header(f, path):
    """(header dict, offset of the data) of the safetensors file open as `f`. Call it only after the C core has
    validated the file (safetensors_index: the header's length against the file, its JSON, __metadata__ a
    string-to-string object)."""
    (length,) = struct.unpack("<Q", f.read(8))
    try:
        return json.loads(f.read(length)), 8 + length
    except (ValueError, RecursionError) as e:  # what the C parser accepts and Python's does not (not UTF-8)
        raise ValueError(f"{path}: its safetensors header is not JSON Python can read ({e})") from None


def _file_metadata(path):
    """diffusers' adapter metadata (a dict) from the validated file's __metadata__, or None."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    raw = (header.get("__metadata__") or {}).get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python's parser goes
        raise ValueError(f"{path}: its {LORA_ADAPTER_METADATA_KEY!r} metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {LORA_ADAPTER_METADATA_KEY!r} metadata is not a JSON object")
    return meta


def _read_arrays(path, index):
    """{name: float32 ndarray} of every tensor of a validated safetensors file (lora_state_dict's result)."""
    with open(path, "rb") as f:
        header, base = _read_header(f, path)
        out = {}
        for name in index:
            info = header[name]
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            raw = f.read(end - begin)
            shape = tuple(info["shape"])
            if info["dtype"] == "BF16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[info["dtype"]])
            out[name] = arr.astype(np.float32).reshape(shape)
    return out


class _Source:
    """A LoRA to load: a safetensors file (its validated index and metadata), or a dict written to one."""

    def __init__(self, pretrained_model_name_or_path_or_dict, weight_name=None, subfolder=None, metadata=None):
        from ._load import _C

        src = pretrained_model_name_or_path_or_dict
        self._tmp = None
        if isinstance(src, dict):
            arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in src.items()}
            fd, self.path = tempfile.mkstemp(suffix=".safetensors", prefix="cvx_lora_")
            os.close(fd)
            self._tmp = self.path
            save_file(arrays, self.path)
            self.metadata = metadata
        else:
            self.path = _resolve_file(src, weight_name, subfolder)
        # {name: (dtype, shape)}, every size checked in C: first, as the header is read in Python only once it is
        # known to be sound (its length within the file, its JSON, __metadata__ a string-to-string object)
        self.index = _C.safetensors_index(self.path)
        if not isinstance(src, dict):
            self.metadata = metadata if metadata is not None else _file_metadata(self.path)

    def close(self):
        if self._tmp:
            os.unlink(self._tmp)  # the C core keeps its own mapping of it
            self._tmp = None


# ---- the adapter's layout --------------------------------------------------------------------------------------


def _pattern_key(patterns, key):
    """peft's get_pattern_key: the first pattern the module path ends with (as a dotted suffix), else the path."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def _adapter_config(modules, ranks, metadata):
    """LoraConfig-like dict {r, lora_alpha, rank_pattern, alpha_pattern, use_rslora, use_dora, lora_bias} as
    diffusers' _create_lora_config builds it: the metadata, else get_peft_kwargs over the state dict's ranks."""
    if metadata is not None:
        cfg = dict(metadata)
        cfg.setdefault("rank_pattern", {})
        cfg.setdefault("alpha_pattern", {})
        if "r" not in cfg:
            raise ValueError("the LoRA's adapter metadata has no 'r' (rank)")
        cfg.setdefault("lora_alpha", cfg["r"])
        for key in ("rank_pattern", "alpha_pattern"):  # peft matches their keys as regular expressions
            if not isinstance(cfg[key], dict):
                raise ValueError(f"the LoRA's adapter metadata has {key} {cfg[key]!r}; it must be an object "
                                 "{module pattern: value}")  # fmt: skip
            for pattern in cfg[key]:
                try:
                    re.compile(rf"(.*\.)?({pattern})$")
                except (re.error, OverflowError, RecursionError) as e:
                    raise ValueError(f"the LoRA's adapter metadata has {key} key {pattern!r}, which is not a regular "
                                     f"expression ({e})") from None  # fmt: skip
        return cfg
    rank_dict = {f"^{m}": ranks[m] for m in modules}
    r = lora_alpha = next(iter(rank_dict.values()))
    rank_pattern = alpha_pattern = {}
    if len(set(rank_dict.values())) > 1:
        r = collections.Counter(rank_dict.values()).most_common()[0][0]
        rank_pattern = {k: v for k, v in rank_dict.items() if v != r}
        lora_alpha, alpha_pattern = r, dict(rank_pattern)  # no alphas in the file: alpha = rank per module
    return dict(r=r, lora_alpha=lora_alpha, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                use_rslora=False, use_dora=False, lora_bias=False)  # fmt: skip


def _module_scaling(cfg, module):
    """(rank, scaling) of one module as peft resolves them: rank/alpha patterns, lora_alpha / r or / sqrt(r)."""
    r_key = _pattern_key(cfg["rank_pattern"].keys(), module)
    a_key = _pattern_key(cfg["alpha_pattern"].keys(), module)
    r = cfg["rank_pattern"].get(r_key, cfg["r"])
    alpha = cfg["alpha_pattern"].get(a_key, cfg["lora_alpha"])
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= _MAX_RANK:
        raise ValueError(f"the LoRA config gives module {module!r} rank {r!r}; ranks are integers from 1 to "
                         f"{_MAX_RANK}")  # fmt: skip
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not -1e30 <= alpha <= 1e30:  # NaN too
        raise ValueError(f"the LoRA config gives module {module!r} lora_alpha {alpha!r}; it must be a finite number")
    return r, (alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r)


def _plan(index, metadata, linears, prefix, source):
    """(modules, scalings, config) of an adapter file, every key and shape checked against the model's linears
    ({module: (out, in)}): one ValueError naming every problem of a kind."""
    keys = list(index)
    if not all("lora" in k for k in keys):
        raise ValueError("Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring.")
    dora = [k for k in keys if "dora_scale" in k]
    if dora:  # diffusers' CogVideoX loader drops them with a warning (its lora_state_dict)
        warnings.warn(f"{source}: DoRA 'dora_scale' keys are dropped, as diffusers does ({dora[0]!r}, ...)",
                      UserWarning, stacklevel=4)  # fmt: skip
        keys = [k for k in keys if "dora_scale" not in k]
    if prefix is not None:
        other = sorted({k.split(".")[0] for k in keys if not k.startswith(prefix + ".")})
        keys = [k for k in keys if k.startswith(prefix + ".")]
        if other:
            message = (f"{source}: keys under {other} are ignored (a CogVideoX pipeline loads LoRA into "
                       f"'{prefix}' only, as diffusers' CogVideoXLoraLoaderMixin)")  # fmt: skip
            warnings.warn(message, UserWarning, stacklevel=4)
    if metadata is not None and prefix is not None:
        metadata = {k[len(prefix) + 1 :]: v for k, v in metadata.items() if k.startswith(prefix + ".")} or None
    strip = len(prefix) + 1 if prefix is not None else 0
    modules, pairs, bad_format = [], {}, []
    for k in keys:
        rest = k[strip:]
        for part in (".lora_A.weight", ".lora_B.weight"):
            if rest.endswith(part):
                m = rest[: -len(part)]
                if m not in pairs:
                    pairs[m] = {}
                    modules.append(m)
                pairs[m][part[6]] = index[k][1]
                break
        else:
            bad_format.append(k)
    if bad_format:
        kinds = ("'lora_magnitude_vector' is DoRA" if any("lora_magnitude_vector" in k for k in bad_format) else
                 "'lora_B.bias' is lora_bias" if any(k.endswith("lora_B.bias") for k in bad_format) else
                 "only PEFT's lora_A.weight / lora_B.weight keys are read")  # fmt: skip
        raise ValueError(f"{source}: unsupported LoRA format ({kinds}, which cogvideo_c does not support): "
                         f"{', '.join(repr(k) for k in bad_format)}")  # fmt: skip
    if not modules:  # nothing under the prefix: the caller warns, as diffusers does (no config to derive)
        return [], [], {}
    cfg = _adapter_config(modules, {m: (pairs[m].get("B") or (0,))[-1] for m in modules}, metadata)
    for flag, what in (("use_dora", "DoRA (use_dora)"), ("lora_bias", "lora_bias")):
        if cfg.get(flag):
            raise ValueError(f"{source}: the adapter's config asks for {what}, which cogvideo_c does not support")
    missing = [m for m in modules if m not in linears]
    if missing:
        named = ", ".join(repr(f"{prefix}.{m}" if prefix else m) for m in missing)
        raise ValueError(f"{source}: the LoRA has keys for {len(missing)} module(s) the transformer lacks (or that "
                         f"are not Linear layers): {named}")  # fmt: skip
    problems, scalings = [], []
    for m in modules:
        a, b = pairs[m].get("A"), pairs[m].get("B")
        out_f, in_f = linears[m]
        if a is None or b is None:
            has, lacks = ("A", "B") if a is not None else ("B", "A")
            problems.append(f"{m!r} has lora_{has}.weight without its lora_{lacks}.weight")
            continue
        if len(a) != 2 or len(b) != 2:
            problems.append(f"{m!r}: lora_A {list(a)} and lora_B {list(b)} must be 2-D")
            continue
        r, scaling = _module_scaling(cfg, m)
        if a[1] != in_f or b[0] != out_f or a[0] != b[1] or a[0] != r:
            problems.append(f"{m!r}: lora_A {list(a)} / lora_B {list(b)}, expected [{r}, {in_f}] / [{out_f}, {r}] "
                            f"(rank {r}, the Linear is {in_f} -> {out_f})")  # fmt: skip
        scalings.append(scaling)
    if problems:
        raise ValueError(f"{source}: LoRA tensors of the wrong shape: {'; '.join(problems)}")
    return modules, scalings, cfg


# ---- the transformer's methods (diffusers' PeftAdapterMixin) -------------------------------------------------------


class _Adapter:
    __slots__ = ("name", "config", "modules", "weight", "bytes")

    def __init__(self, name, config, modules, nbytes):
        self.name, self.config, self.modules, self.weight, self.bytes = name, config, modules, 1.0, nbytes


class PeftAdapterMixin:
    """The LoRA methods of diffusers' ModelMixin (PeftAdapterMixin) for CogVideoXTransformer3DModel. Adapters are
    kept in load order (the C core's order); set_adapters picks the active ones and their weights."""

    _lora_adapters = ()  # [_Adapter] in load order (an instance list once one loads)
    _lora_active = ()  # names, set_adapters order
    _lora_disabled = False
    _lora_merged = frozenset()

    def _lora_state(self):
        if not isinstance(self._lora_adapters, list):
            self._lora_adapters, self._lora_active, self._lora_merged = [], [], set()

    @property
    def peft_config(self):
        """{adapter name: its LoRA config dict (r, lora_alpha, rank_pattern, alpha_pattern, use_rslora, ...)}."""
        return {a.name: a.config for a in self._lora_adapters}

    def _linears(self):
        """{module path: (out, in)} of every Linear of the model (the 2-D .weight tensors)."""
        return {n[: -len(".weight")]: tuple(s) for n, _, s in self._core.weight_info()
                if n.endswith(".weight") and len(s) == 2}  # fmt: skip

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, prefix="transformer", hotswap=False, **kwargs):
        """Loads a LoRA adapter into the model (diffusers' ``load_lora_adapter``).

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): a .safetensors file, a folder
                holding `weight_name` (default "pytorch_lora_weights.safetensors"), or a state dict of arrays.
            prefix (`str`, defaults to "transformer"): only keys under it are loaded (None: every key).
            adapter_name (`str`, *optional*): the adapter's name; default "default_<n>" as diffusers names them.
            weight_name (`str`, *optional*), subfolder (`str`, *optional*): the file inside a folder.
            metadata (`dict`, *optional*): the LoRA config to use instead of the file's adapter metadata.

        The base weights are not copied: the adapter's tensors are read from its mapped file (one converted copy
        where their dtype differs from the model's). Every key and shape is checked before anything loads.
        """
        if hotswap:
            raise ValueError("hotswap is not supported: delete_adapters the old adapter and load the new one")
        adapter_name = kwargs.pop("adapter_name", None)
        weight_name, subfolder = kwargs.pop("weight_name", None), kwargs.pop("subfolder", None)
        metadata = kwargs.pop("metadata", None)
        if kwargs.pop("network_alphas", None):
            raise ValueError("network_alphas (kohya-style alphas) are not supported; pass metadata= instead")
        unknown = sorted(set(kwargs) - _LOAD_KWARGS - {"_pipeline"})
        if unknown:
            raise TypeError(f"load_lora_adapter() got unexpected keyword arguments {unknown}")
        self._lora_state()
        if adapter_name is not None and adapter_name in self.peft_config:
            raise ValueError(
                f"Adapter name {adapter_name} already in use in the model - please select a new adapter name."
            )
        src = _Source(pretrained_model_name_or_path_or_dict, weight_name, subfolder, metadata)
        try:
            where = src.path if src._tmp is None else "the LoRA state dict"
            modules, scalings, cfg = _plan(src.index, src.metadata, self._linears(), prefix, where)
            if not modules:
                warnings.warn(f"{where}: no LoRA keys under prefix {prefix!r}; nothing loaded", UserWarning,
                              stacklevel=3)  # fmt: skip
                return
            if adapter_name is None:
                adapter_name = self._default_adapter_name()
            index = self._core.lora_load(src.path, f"{prefix}." if prefix else "", modules,
                                         np.asarray(scalings, dtype=np.float32))  # fmt: skip
        finally:
            src.close()
        nbytes = self._core.lora_bytes()[0][index]
        cfg = dict(cfg)
        cfg.setdefault("target_modules", sorted(modules))
        self._lora_adapters.append(_Adapter(adapter_name, cfg, modules, nbytes))
        self._lora_active = [adapter_name]  # as peft: the adapter just loaded is the active one

    def _default_adapter_name(self):
        """diffusers' get_adapter_name: "default_<adapters on the first LoRA layer of the model>"."""
        if not self._lora_adapters:
            return "default_0"
        order = {m: i for i, m in enumerate(self._linears())}
        first = min((m for a in self._lora_adapters for m in a.modules), key=lambda m: order.get(m, 1 << 30))
        return f"default_{sum(first in a.modules for a in self._lora_adapters)}"

    def _lora_scales(self, scale=1.0):
        """The forward's per-adapter factors (load order): weight x scale for active ones, 0 otherwise; None
        without adapters (or with LoRA disabled)."""
        if not self._lora_adapters or self._lora_disabled:
            return None
        active = set(self._lora_active)
        return np.asarray([a.weight * scale if a.name in active else 0.0 for a in self._lora_adapters],
                          dtype=np.float32)  # fmt: skip

    def _check_names(self, adapter_names):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        present = [a.name for a in self._lora_adapters]
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"Adapter name(s) {set(missing)} not in the list of present adapters: {set(present)}.")
        return names

    def set_adapters(self, adapter_names, weights=None):
        """Makes `adapter_names` the active adapters with `weights` (one float for all, a list, None: 1.0 each),
        as diffusers' ``set_adapters``; the adapter's output is weight x lora_alpha / r x B A x."""
        self._lora_state()
        names = self._check_names(adapter_names)
        if not isinstance(weights, list):
            weights = [weights] * len(names)
        if len(names) != len(weights):
            raise ValueError(
                f"Length of adapter names {len(names)} is not equal to the length of their weights {len(weights)}."
            )
        by_name = {a.name: a for a in self._lora_adapters}
        for n, w in zip(names, weights):
            w = 1.0 if w is None else w
            if isinstance(w, dict):
                raise ValueError("per-block adapter weights (dicts) are not supported; pass one float per adapter")
            w = float(w)
            if not math.isfinite(w):
                raise ValueError(f"adapter weight {w} of {n!r} must be finite")
            by_name[n].weight = w
        self._lora_active = names
        self._lora_disabled = False

    def active_adapters(self):
        """The names of the active adapters (diffusers' ``active_adapters``)."""
        return list(self._lora_active)

    def enable_lora(self):
        """Applies the active adapters again after ``disable_lora``."""
        self._lora_disabled = False

    def disable_lora(self):
        """Runs the model without its adapters (they stay loaded). A fused model is unfused first, as peft
        unmerges a merged layer when its adapters are disabled."""
        if self._lora_merged:
            self.unfuse_lora()
        self._lora_disabled = True

    def delete_adapters(self, adapter_names):
        """Removes the named adapters (their bytes are freed, their tensors leave the weight groups)."""
        self._lora_state()
        names = self._check_names(adapter_names)
        for n in names:
            i = next(i for i, a in enumerate(self._lora_adapters) if a.name == n)
            self._core.lora_delete(i)
            del self._lora_adapters[i]
            self._lora_merged.discard(n)
        self._lora_active = [n for n in self._lora_active if n not in names]

    def fuse_lora(self, lora_scale=1.0, safe_fusing=False, adapter_names=None):
        """Merges adapters into private copies of the weights they modify (W + lora_scale x weight x scaling x B A,
        stored in the model's dtype; in 16 bits each adapter's delta is rounded to the dtype and added in it, as peft
        merges on the CPU), as diffusers' ``fuse_lora``: `adapter_names` (default the active
        ones) are merged; as in peft, lora_scale also stays multiplied into each active adapter's weight.
        safe_fusing: refuse (ValueError) an adapter whose merge gives NaN or infinite weights, before any weight
        changes."""
        self._lora_state()
        if not self._lora_adapters:
            return
        lora_scale = float(lora_scale)
        if not math.isfinite(lora_scale):
            raise ValueError(f"lora_scale must be finite, got {lora_scale}")
        names = self._check_names(adapter_names) if adapter_names is not None else list(self._lora_active)
        if lora_scale != 1.0:  # peft's scale_layer on the active adapters, not undone after the merge
            for a in self._lora_adapters:
                if a.name in self._lora_active:
                    a.weight *= lora_scale
        todo = [n for n in names if n not in self._lora_merged]
        scales = np.asarray([a.weight if a.name in todo else 0.0 for a in self._lora_adapters], dtype=np.float32)
        if not todo:
            return
        try:
            self._core.lora_fuse(scales, bool(safe_fusing))
        except ValueError as e:
            if "non-finite" not in str(e):
                raise
            bad = self._lora_adapters[int(re.search(r"adapter (\d+)", str(e)).group(1))].name
            raise ValueError(f"NaNs detected in the merged weights. The adapter {bad} seems to be broken") from None
        self._lora_merged |= set(todo)

    def unfuse_lora(self):
        """Undoes ``fuse_lora``: the weights read the original checkpoint bytes again, exactly (diffusers subtracts
        the delta, which leaves rounding)."""
        if not self._lora_merged:
            return
        self._core.lora_unfuse(False)
        self._lora_merged = set()

    def unload_lora(self):
        """Removes every adapter (diffusers' ``unload_lora``). Fused adapters stay in the weights, as in
        diffusers (the merged layers keep their merged weights when the LoRA layers are removed)."""
        self._lora_state()
        if self._lora_merged:
            self._core.lora_unfuse(True)
        for i in reversed(range(len(self._lora_adapters))):
            self._core.lora_delete(i)
        self._lora_adapters, self._lora_active, self._lora_merged = [], [], set()
        self._lora_disabled = False

    @property
    def lora_bytes(self):
        """Host bytes of the loaded adapters' tensors plus the fused weight copies (what memory_stats reports as
        lora_bytes.current)."""
        per, fused = self._core.lora_bytes()
        return sum(per) + fused


# ---- the pipeline's methods (diffusers' CogVideoXLoraLoaderMixin) --------------------------------------------------


class CogVideoXLoraLoaderMixin:
    """LoRA for the CogVideoX pipelines (diffusers' CogVideoXLoraLoaderMixin): adapters load into the
    transformer only."""

    _lora_loadable_modules = ["transformer"]
    transformer_name = "transformer"

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """The LoRA file's tensors as {key: float32 ndarray} (with return_lora_metadata=True: (dict, metadata)),
        dora_scale keys dropped as diffusers does."""
        return_metadata = kwargs.pop("return_lora_metadata", False)
        weight_name, subfolder = kwargs.pop("weight_name", None), kwargs.pop("subfolder", None)
        unknown = sorted(set(kwargs) - _LOAD_KWARGS)
        if unknown:
            raise TypeError(f"lora_state_dict() got unexpected keyword arguments {unknown}")
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            sd, meta = dict(pretrained_model_name_or_path_or_dict), None
        else:
            src = _Source(pretrained_model_name_or_path_or_dict, weight_name, subfolder)
            sd, meta = _read_arrays(src.path, src.index), src.metadata
        sd = {k: v for k, v in sd.items() if "dora_scale" not in k}
        return (sd, meta) if return_metadata else sd

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, hotswap=False, **kwargs):
        """Loads a LoRA into the transformer (diffusers' ``load_lora_weights``).

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): a .safetensors file, a folder
                holding `weight_name` (default "pytorch_lora_weights.safetensors"), or a state dict of arrays.
            adapter_name (`str`, *optional*): the adapter's name (default "default_<n>").
            weight_name (`str`, *optional*): the file's name inside a folder.

        The adapter becomes the active one (as in diffusers); combine several with ``set_adapters``. Host memory
        grows by about the adapter's bytes: the model is not copied.
        """
        self.transformer.load_lora_adapter(pretrained_model_name_or_path_or_dict, prefix="transformer",
                                           hotswap=hotswap, adapter_name=adapter_name, **kwargs)  # fmt: skip

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Activates `adapter_names` with `adapter_weights` (a float, one per adapter, or None: 1.0)."""
        if isinstance(adapter_weights, dict):
            adapter_weights = adapter_weights.get("transformer", 1.0)
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if not isinstance(adapter_weights, list):
            adapter_weights = [adapter_weights] * len(names)
        if len(names) != len(adapter_weights):
            raise ValueError(f"Length of adapter names {len(names)} is not equal to the length of the weights "
                             f"{len(adapter_weights)}")  # fmt: skip
        weights = [w.get("transformer", 1.0) if isinstance(w, dict) else w for w in adapter_weights]
        self.transformer.set_adapters(names, weights)

    def get_active_adapters(self):
        """The active adapters' names."""
        return self.transformer.active_adapters()

    def get_list_adapters(self):
        """{"transformer": [every loaded adapter's name]} (empty without adapters)."""
        names = list(self.transformer.peft_config)
        return {"transformer": names} if names else {}

    def delete_adapters(self, adapter_names):
        """Removes the named adapters."""
        self.transformer.delete_adapters(adapter_names)

    def enable_lora(self):
        """Applies the active adapters again after ``disable_lora``."""
        self.transformer.enable_lora()

    def disable_lora(self):
        """Runs the transformer without its adapters (they stay loaded)."""
        self.transformer.disable_lora()

    def fuse_lora(self, components=["transformer"], lora_scale=1.0, safe_fusing=False, adapter_names=None, **kwargs):  # noqa: B006
        """Merges the adapters into the transformer's weights (see CogVideoXTransformer3DModel.fuse_lora); only
        the copies of the affected weights are new memory."""
        if len(components) == 0:
            raise ValueError("`components` cannot be an empty list.")
        for c in components:
            if c not in self._lora_loadable_modules:
                raise ValueError(f"{c} is not found in self._lora_loadable_modules={self._lora_loadable_modules}.")
        self.transformer.fuse_lora(lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names)

    def unfuse_lora(self, components=["transformer"], **kwargs):  # noqa: B006
        """Gives back the weights from before fuse_lora, bit for bit."""
        if len(components) == 0:
            raise ValueError("`components` cannot be an empty list.")
        self.transformer.unfuse_lora()

    def unload_lora_weights(self):
        """Removes every adapter; fused ones stay in the weights (as diffusers)."""
        self.transformer.unload_lora()
