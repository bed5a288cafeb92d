"""diffusers' CogVideoXDDIMScheduler, CogVideoXDPMScheduler and DDIMScheduler in NumPy (no torch at run time).

Names, constructor arguments, defaults, `set_timesteps` / `step` signatures and return conventions follow
diffusers 0.42 (schedulers/scheduling_ddim_cogvideox.py, scheduling_dpm_cogvideox.py, scheduling_ddim.py).

Arithmetic follows what PyTorch does on the same inputs, so that float32 results match diffusers bit for bit or
to the last ulp:

* noise tables are built as torch builds them on the CPU: `torch.linspace` evaluates `start + step * i` (first half)
  and `end - step * (n - 1 - i)` (second half) with a fused multiply-add, float32 `torch.cumprod` accumulates in
  double; "scaled_linear" tables of the CogVideoX classes are float64, the rest float32;
* per-step coefficients are 0-dim values in the table dtype (float64 for CogVideoX) and combine among themselves
  with ordinary type promotion (`final_alpha_cumprod` is a float32 1.0, as in diffusers);
* a coefficient times a sample does not promote the sample: it is rounded to the sample's dtype (float32 / float64)
  and the product is taken in that dtype; for float16 samples the coefficient is rounded to float32, the product is
  taken in float32 and rounded to float16 (PyTorch's CUDA behaviour, spec §4.4; PyTorch on the CPU instead rounds a
  left-hand coefficient to float16 first);
* sample-sample operations promote as PyTorch does (float16 with float32 gives float32).

Random draws (CogVideoXDPMScheduler always draws, DDIMScheduler when eta > 0): `generator` may be None (a process-wide
NumPy stream), an int seed (a NumPy stream restarted by every `set_timesteps`), a `numpy.random.Generator`, or a
`torch.Generator` (or a list of them, one per batch row) when torch happens to be installed; torch generators draw
exactly as diffusers' `randn_tensor` does, so the same seeded generator gives the same numbers.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np

from ._files import read_json
from ._random import draw_standard_normal
from .configuration import FrozenConfig, _where, config_bool, config_float, config_int

logger = logging.getLogger(__name__)

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

__all__ = [
    "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
]


# ---------------------------------------------------------------------------------------------------------------------
# config values

# diffusers' released CogVideoX and DDIM configs use 1000; the tables are built element by element in Python (with
# exact rationals) and held whole, so a larger count is refused before anything is allocated.
MAX_TRAIN_TIMESTEPS = 100_000
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class UnsupportedBetaScheduleError(ValueError, NotImplementedError):
    """An unknown beta_schedule: a ValueError like every bad config value, and the NotImplementedError that
    diffusers raises for it."""


def _check_beta(value, key, source):
    """A noise variance: finite, in [0, 1) (1 - beta is an alpha whose square root the steps take and divide by)."""
    beta = config_float(value, key, source=source)
    if not 0 <= beta < 1:
        raise ValueError(f"{_where(key, source)} must be in [0, 1) (a noise variance), got {beta}")
    return beta


def _check_name(value, key, choices, source, known):
    if not isinstance(value, str):
        raise ValueError(f"{_where(key, source)} must be a string, one of {', '.join(choices)}; got {value!r}")
    if known and value not in choices:
        raise ValueError(f"{_where(key, source)} {value!r} is not supported: one of {', '.join(choices)}")


def _check_config(cls_name, kw, source=None, known_names=True):
    """Checks a scheduler's constructor arguments (all of them, defaults filled in) against what the noise tables
    and the steps need, before anything is built: ValueError naming source (the config file) and the key.

    known_names: also check prediction_type and timestep_spacing against the supported sets. Direct construction
    leaves that to set_timesteps / step, as diffusers does (tests/test_schedulers.py pins it); a config dict or
    file is checked at once, so that a pipeline fails at load rather than after encoding the prompt."""
    steps = config_int(kw["num_train_timesteps"], "num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS, source)
    _check_beta(kw["beta_start"], "beta_start", source)
    _check_beta(kw["beta_end"], "beta_end", source)
    trained = kw["trained_betas"]
    if trained is None:
        schedule = kw["beta_schedule"]
        if not isinstance(schedule, str) or schedule not in BETA_SCHEDULES:
            raise UnsupportedBetaScheduleError(
                f"{_where('beta_schedule', source)} {schedule!r} is not implemented for {cls_name} "
                f"(one of {', '.join(BETA_SCHEDULES)})"
            )
    else:
        if isinstance(trained, np.ndarray) and trained.ndim == 1:
            trained = trained.tolist()
        if not isinstance(trained, (list, tuple)) or len(trained) != steps:
            got = f"{len(trained)} values" if isinstance(trained, (list, tuple)) else repr(trained)[:100]
            raise ValueError(
                f"{_where('trained_betas', source)} must be null or a list of num_train_timesteps = {steps} numbers "
                f"(one beta per training timestep), got {got}"
            )
        for i, beta in enumerate(trained):
            _check_beta(beta, f"trained_betas[{i}]", source)
    for key in ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr"):
        if key in kw:
            config_bool(kw[key], key, source)
    if kw["rescale_betas_zero_snr"] and steps < 2:
        raise ValueError(
            f"{_where('rescale_betas_zero_snr', source)}: rescaling to zero terminal SNR needs num_train_timesteps "
            f">= 2 (it divides by the difference of the first and last alphas), got {steps}"
        )
    config_int(kw["steps_offset"], "steps_offset", 0, steps - 1, source)
    for key in ("clip_sample_range", "sample_max_value", "snr_shift_scale"):
        if key in kw:
            config_float(kw[key], key, positive=True, source=source)
    if "dynamic_thresholding_ratio" in kw:
        ratio = config_float(kw["dynamic_thresholding_ratio"], "dynamic_thresholding_ratio", source=source)
        if not 0 < ratio <= 1:
            where = _where("dynamic_thresholding_ratio", source)
            raise ValueError(f"{where} must be in (0, 1] (a quantile), got {ratio}")
    _check_name(kw["prediction_type"], "prediction_type", PREDICTION_TYPES, source, known_names)
    _check_name(kw["timestep_spacing"], "timestep_spacing", TIMESTEP_SPACINGS, source, known_names)


# ---------------------------------------------------------------------------------------------------------------------
# output


@dataclass
class DDIMSchedulerOutput:
    """diffusers.schedulers.scheduling_ddim.DDIMSchedulerOutput: `prev_sample` and `pred_original_sample`.

    Like diffusers' BaseOutput it also reads as a tuple of its non-None fields (`out[0]`, `out.to_tuple()`) and by
    key (`out["prev_sample"]`).
    """

    prev_sample: np.ndarray
    pred_original_sample: Optional[np.ndarray] = None

    def to_tuple(self):
        """The non-None fields in order: (prev_sample,) or (prev_sample, pred_original_sample)."""
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def keys(self):
        """The names of the non-None fields, as a diffusers BaseOutput (an OrderedDict) lists them."""
        return [k for k in ("prev_sample", "pred_original_sample") if getattr(self, k) is not None]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self):
        return len(self.to_tuple())


# ---------------------------------------------------------------------------------------------------------------------
# noise tables, as torch builds them on the CPU


def _round_to_float32(value: Fraction) -> np.float32:
    """A rational rounded to the nearest float32 (ties to even): no double rounding through float64."""
    x = np.float32(float(value))
    best = None
    for c in (np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))):
        if not np.isfinite(c):
            continue
        err = abs(Fraction(float(c)) - value)
        odd = int(np.asarray(c).view(np.uint32)) & 1
        key = (err, odd)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1]


def _torch_linspace(start: float, end: float, steps: int, dtype) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=dtype) on the CPU, bit for bit.

    ATen's linspace_kernel computes step = (end - start) / (steps - 1) in the output dtype, then
    `start + step * i` for i < steps // 2 and `end - step * (steps - 1 - i)` for the rest; the compiler fuses each
    into one multiply-add (a single rounding), which is emulated exactly with rationals.
    """
    dtype = np.dtype(dtype).type
    if steps <= 0:
        return np.zeros(0, dtype)
    s, e = dtype(start), dtype(end)
    if steps == 1:
        return np.array([s], dtype)
    step = (e - s) / dtype(steps - 1)
    fs, fe, fstep = Fraction(float(s)), Fraction(float(e)), Fraction(float(step))
    half = steps // 2
    out = np.empty(steps, dtype)
    for i in range(steps):
        exact = fs + fstep * i if i < half else fe - fstep * (steps - 1 - i)
        out[i] = float(exact) if dtype is np.float64 else _round_to_float32(exact)
    return out


def _torch_cumprod(x: np.ndarray) -> np.ndarray:
    """torch.cumprod on the CPU: a sequential running product accumulated in double, stored in x's dtype."""
    return np.cumprod(x.astype(np.float64)).astype(x.dtype)


def betas_for_alpha_bar(num_diffusion_timesteps, max_beta=0.999, alpha_transform_type="cosine"):
    """diffusers.schedulers.scheduling_ddpm.betas_for_alpha_bar (float32 result, Python-float arithmetic)."""
    if alpha_transform_type == "cosine":

        def alpha_bar_fn(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    elif alpha_transform_type == "laplace":

        def alpha_bar_fn(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

    elif alpha_transform_type == "exp":

        def alpha_bar_fn(t):
            return math.exp(t * -12.0)

    else:
        raise ValueError(f"Unsupported alpha_transform_type: {alpha_transform_type}")

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return np.array(betas, dtype=np.float32)


def _rescale_cumprod_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The CogVideoX schedulers' rescale_zero_terminal_snr (operates on the cumulative alphas directly)."""
    dt = alphas_cumprod.dtype.type
    r = np.sqrt(alphas_cumprod)
    r0, r_t = r[0], r[-1]
    r = r - r_t
    r = r * dt((r0 / (r0 - r_t)))
    return r * r


def _rescale_betas_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """DDIMScheduler's rescale_zero_terminal_snr (takes and returns betas)."""
    dt = betas.dtype.type
    alphas_bar = _rescale_cumprod_zero_terminal_snr(_torch_cumprod(dt(1.0) - betas))
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return dt(1) - alphas


def _make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, scaled_dtype):
    if trained_betas is not None:
        return np.asarray(trained_betas, dtype=np.float64).astype(np.float32)
    if beta_schedule == "linear":
        return _torch_linspace(beta_start, beta_end, num_train_timesteps, np.float32)
    if beta_schedule == "scaled_linear":
        r = _torch_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, scaled_dtype)
        return r * r
    return betas_for_alpha_bar(num_train_timesteps)  # "squaredcos_cap_v2", the only other name _check_config admits


# ---------------------------------------------------------------------------------------------------------------------
# torch-like arithmetic between 0-dim coefficients and arrays


def _one(x):
    return np.asarray(x).dtype.type(1)


def _sqrt(x):
    return np.sqrt(x)


def _mul(coef, x: np.ndarray) -> np.ndarray:
    """`coef * x` with coef a 0-dim value: the result has x's dtype (0-dim tensors do not promote)."""
    if x.dtype == np.float16:
        return (np.float32(coef) * x.astype(np.float32)).astype(np.float16)
    return x.dtype.type(coef) * x


def _div(x: np.ndarray, coef) -> np.ndarray:
    """`x / coef` with coef a 0-dim value (true division in x's dtype)."""
    if x.dtype == np.float16:
        return (x.astype(np.float32) / np.float32(coef)).astype(np.float16)
    return x / x.dtype.type(coef)


def _epsilon_from_x0(sample, pred_original_sample, alpha_prod_t, beta_prod_t):
    """The noise implied by x_t and x0: (x_t - sqrt(a_t) * x0) / sqrt(1 - a_t)."""
    return _div(sample - _mul(_sqrt(alpha_prod_t), pred_original_sample), _sqrt(beta_prod_t))


def _as_sample(x, name):
    if x is None:
        raise ValueError(f"`{name}` must be an array, got None")
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {x.dtype}")
    return x


def _as_timestep(t, name="timestep"):
    if t is None:
        raise ValueError(f"`{name}` must be an integer timestep, got None")
    if type(t).__module__.startswith("torch"):
        t = t.item()
    arr = np.asarray(t)
    if arr.size != 1:
        raise ValueError(f"`{name}` must be a single timestep, got shape {arr.shape}")
    value = arr.reshape(()).item()
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"`{name}` must be an integer timestep, got {t!r}")
    return int(value)


def _as_timesteps(timesteps):
    if type(timesteps).__module__.startswith("torch"):
        timesteps = timesteps.detach().cpu().numpy()
    arr = np.asarray(timesteps)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"`timesteps` must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# random draws

_GLOBAL_RNG = None


class _NoiseSource:
    """Turns diffusers' `generator` argument into draws; int seeds keep one stream per set_timesteps()."""

    def __init__(self):
        self._seed = None
        self._rng = None

    def reset(self):
        self._seed = None
        self._rng = None

    def _resolve(self, generator):
        global _GLOBAL_RNG
        if generator is None:
            if _GLOBAL_RNG is None:
                _GLOBAL_RNG = np.random.default_rng()
            return _GLOBAL_RNG
        if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            seed = int(generator)
            if self._rng is None or self._seed != seed:
                self._seed, self._rng = seed, np.random.default_rng(seed)
            return self._rng
        return generator

    def randn(self, shape, dtype, generator):
        """diffusers.utils.torch_utils.randn_tensor(shape, generator, dtype) as a NumPy array."""
        shape = tuple(int(s) for s in shape)
        if isinstance(generator, (list, tuple)):
            if len(generator) == 1:
                generator = generator[0]
            else:
                if len(shape) == 0 or len(generator) < shape[0]:
                    raise ValueError(f"a list of {len(generator)} generators cannot draw a batch of shape {shape}")
                rows = [draw_standard_normal((1,) + shape[1:], dtype, self._resolve(g)) for g in generator[: shape[0]]]
                return np.concatenate(rows, axis=0)
        return draw_standard_normal(shape, dtype, self._resolve(generator))


# ---------------------------------------------------------------------------------------------------------------------
# shared machinery


class _SchedulerBase:
    """Config handling and timestep schedules of the three schedulers (diffusers' ConfigMixin + SchedulerMixin)."""

    config_name = SCHEDULER_CONFIG_NAME
    order = 1
    _scaled_linear_dtype = np.float32  # dtype of the "scaled_linear" beta table

    def _build(self, kw):
        """The constructors' common body: register the config, then build the noise tables and the defaults."""
        _check_config(type(self).__name__, kw, known_names=False)
        self._register_config(kw)
        betas = _make_betas(
            kw["num_train_timesteps"],
            kw["beta_start"],
            kw["beta_end"],
            kw["beta_schedule"],
            kw["trained_betas"],
            self._scaled_linear_dtype,
        )
        betas = self._finish_betas(betas)
        dt = betas.dtype.type
        self.betas = betas
        self.alphas = dt(1.0) - betas
        self.alphas_cumprod = self._finish_alphas_cumprod(_torch_cumprod(self.alphas))
        self.final_alpha_cumprod = np.float32(1.0) if kw["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = np.arange(0, kw["num_train_timesteps"])[::-1].copy().astype(np.int64)
        self._noise = _NoiseSource()

    def _finish_betas(self, betas):
        return betas

    def _finish_alphas_cumprod(self, alphas_cumprod):
        return alphas_cumprod

    def _register_config(self, kwargs):
        cfg = {"_class_name": type(self).__name__}
        for key, value in kwargs.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            cfg[key] = value
        self._internal_config = FrozenConfig(cfg)

    @property
    def config(self):
        """The constructor's arguments (and ``_class_name``), read-only; attributes and keys both work."""
        return self._internal_config

    # -- loading / saving --------------------------------------------------------------------------------------

    @classmethod
    def _init_parameters(cls):
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if k != "self"}

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """(init, unused): the keys of config_dict (updated with kwargs) the constructor takes, and the others
        (warned about once, as diffusers does). Private ``_`` keys are dropped."""
        params = cls._init_parameters()
        config_dict = dict(config_dict)
        config_dict.update(kwargs)
        init, unused = {}, {}
        for key, value in config_dict.items():
            if key.startswith("_"):
                continue
            if key in params:
                init[key] = value
            else:
                unused[key] = value
        if unused:
            logger.warning(
                f"The config attributes {unused} were passed to {cls.__name__}, but are not expected and will be "
                "ignored. Please verify your scheduler_config.json configuration file."
            )
        return init, unused

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a config dict (e.g. another scheduler's `.config`); keyword arguments override its values."""
        if config is None:
            config = {}
        elif hasattr(config, "config") and not isinstance(config, dict):
            config = config.config
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        return cls._from_config(config, return_unused_kwargs, kwargs)

    @classmethod
    def _from_config(cls, config, return_unused_kwargs, kwargs, source=None):
        init, unused = cls.extract_init_dict(config, **kwargs)
        # every value is checked, the names included, before the constructor builds anything (source: the file)
        _check_config(cls.__name__, {**cls._init_parameters(), **init}, source)
        model = cls(**init)
        if return_unused_kwargs:
            return model, unused
        return model

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, subfolder=None):
        """The dict in ``scheduler_config.json`` of a local folder (or its subfolder), or of a JSON file path.

        Raises FileNotFoundError for a missing folder or file (nothing is downloaded) and ValueError for a file
        that is not a JSON object.
        """
        return read_json(cls._config_path(pretrained_model_name_or_path, subfolder))

    @classmethod
    def _config_path(cls, pretrained_model_name_or_path, subfolder):
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            cfg_path = path
        else:
            if subfolder:
                path = os.path.join(path, subfolder)
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"no scheduler folder at '{path}': cogvideo_c loads local folders in diffusers layout "
                    "(it does not download)"
                )
            cfg_path = os.path.join(path, cls.config_name)
            if not os.path.lexists(cfg_path):
                raise FileNotFoundError(f"'{path}' has no {cls.config_name}")
        return cfg_path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, return_unused_kwargs=False, **kwargs):
        """Read `scheduler_config.json` from a local folder (optionally its `subfolder`), as diffusers does.

        Like diffusers, the class is the one called, whatever `_class_name` the file names (so a DPM scheduler can
        be loaded from a CogVideoX-DDIM config). Keyword arguments override the file's values.
        """
        for ignored in ("cache_dir", "local_files_only", "revision", "token", "force_download", "proxies"):
            kwargs.pop(ignored, None)
        cfg_path = cls._config_path(pretrained_model_name_or_path, subfolder)
        return cls._from_config(read_json(cfg_path), return_unused_kwargs, kwargs, source=cfg_path)

    def save_config(self, save_directory, **kwargs):
        """Writes ``scheduler_config.json`` (the config with _class_name and _diffusers_version, as diffusers writes
        it, sorted keys) into save_directory (created if missing) and returns its path; ``save_pretrained`` is the
        same. Extra keyword arguments are accepted and ignored."""
        from .modeling import DIFFUSERS_VERSION

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"_diffusers_version": DIFFUSERS_VERSION, **self.config}, f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    save_pretrained = save_config

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(dict(self.config), indent=2, sort_keys=True)}\n"

    def __len__(self):
        return self.config.num_train_timesteps

    # -- timesteps ---------------------------------------------------------------------------------------------

    def scale_model_input(self, sample, timestep=None):
        """Identity (kept for interchangeability with schedulers that scale the model input)."""
        return sample

    def set_timesteps(self, num_inference_steps, device=None):
        """Sets the discrete timesteps of the chain (``self.timesteps``, int64, descending) for a run.

        Args:
            num_inference_steps (`int`): the number of denoising steps, from 1 to num_train_timesteps.
            device: accepted and ignored (everything runs on the CPU).

        The spacing follows ``timestep_spacing`` ("linspace", "leading" plus steps_offset, or "trailing"), as
        diffusers. A new call also restarts the scheduler's noise stream.
        """
        n = num_inference_steps
        if type(n).__module__.startswith("torch"):
            n = n.item()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        n = int(n)
        if n <= 0:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {n}")
        if n > self.config.num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`:"
                f" {self.config.num_train_timesteps} as the unet model trained with this scheduler can only handle"
                f" maximal {self.config.num_train_timesteps} timesteps."
            )
        self.num_inference_steps = n
        T = self.config.num_train_timesteps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            step_ratio = T // n
            timesteps = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)
            timesteps += self.config.steps_offset
        elif spacing == "trailing":
            step_ratio = T / n
            timesteps = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        else:
            raise ValueError(f"{spacing} is not supported. Please make sure to choose one of 'leading' or 'trailing'.")
        self.timesteps = timesteps
        self._noise.reset()

    def _check_ready(self):
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )

    def _alpha_prod(self, t):
        if t < 0 or t >= len(self.alphas_cumprod):
            raise ValueError(f"timestep {t} is outside [0, {len(self.alphas_cumprod) - 1}]")
        return self.alphas_cumprod[t]

    def _alpha_prod_prev(self, prev_t):
        return self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

    def _step_inputs(self, model_output, timestep, sample):
        """`step`'s common checks: (model_output, sample, t, prev_t) with prev_t = t - T // N."""
        self._check_ready()
        model_output = _as_sample(model_output, "model_output")
        sample = _as_sample(sample, "sample")
        t = _as_timestep(timestep)
        return model_output, sample, t, t - self.config.num_train_timesteps // self.num_inference_steps

    def _alpha_terms(self, t, prev_t):
        """(alpha_prod_t, alpha_prod_t_prev, beta_prod_t) of a step t -> prev_t."""
        alpha_prod_t = self._alpha_prod(t)
        return alpha_prod_t, self._alpha_prod_prev(prev_t), _one(alpha_prod_t) - alpha_prod_t

    def _get_variance(self, timestep, prev_timestep):
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prod_prev(prev_timestep)
        beta_prod_t = _one(alpha_prod_t) - alpha_prod_t
        beta_prod_t_prev = _one(alpha_prod_t_prev) - alpha_prod_t_prev
        with np.errstate(all="ignore"):
            return (beta_prod_t_prev / beta_prod_t) * (_one(alpha_prod_t) - alpha_prod_t / alpha_prod_t_prev)

    @staticmethod
    def _output(prev_sample, pred_original_sample, return_dict):
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _pred_original_sample(self, model_output, sample, alpha_prod_t, beta_prod_t):
        pt = self.config.prediction_type
        if pt == "epsilon":
            return _div(sample - _mul(_sqrt(beta_prod_t), model_output), _sqrt(alpha_prod_t))
        if pt == "sample":
            return model_output
        if pt == "v_prediction":
            return _mul(_sqrt(alpha_prod_t), sample) - _mul(_sqrt(beta_prod_t), model_output)
        raise ValueError(f"prediction_type given as {pt} must be one of `epsilon`, `sample`, or `v_prediction`")

    def _pred_epsilon(self, model_output, sample, pred_original_sample, alpha_prod_t, beta_prod_t):
        pt = self.config.prediction_type
        if pt == "epsilon":
            return model_output
        if pt == "v_prediction":
            return _mul(_sqrt(alpha_prod_t), model_output) + _mul(_sqrt(beta_prod_t), sample)
        return _epsilon_from_x0(sample, pred_original_sample, alpha_prod_t, beta_prod_t)

    # -- forward process ---------------------------------------------------------------------------------------

    def _sqrt_alpha_terms(self, like: np.ndarray, timesteps):
        t = _as_timesteps(timesteps).reshape(-1)
        ac = self.alphas_cumprod.astype(like.dtype)[t]
        sqrt_alpha_prod = np.sqrt(ac)
        sqrt_one_minus = np.sqrt(like.dtype.type(1) - ac)
        extra = max(like.ndim - 1, 0)
        shape = sqrt_alpha_prod.shape + (1,) * extra
        return sqrt_alpha_prod.reshape(shape), sqrt_one_minus.reshape(shape)

    def add_noise(self, original_samples, noise, timesteps):
        """Forward diffusion: sqrt(a_t) * x0 + sqrt(1 - a_t) * noise, with a_t cast to the samples' dtype."""
        x0 = _as_sample(original_samples, "original_samples")
        noise = _as_sample(noise, "noise")
        sa, s1 = self._sqrt_alpha_terms(x0, timesteps)
        return sa * x0 + s1 * noise

    def get_velocity(self, sample, noise, timesteps):
        """v = sqrt(a_t) * noise - sqrt(1 - a_t) * sample, with a_t cast to the sample's dtype."""
        sample = _as_sample(sample, "sample")
        noise = _as_sample(noise, "noise")
        sa, s1 = self._sqrt_alpha_terms(sample, timesteps)
        return sa * noise - s1 * sample


class _CogVideoXSchedulerBase(_SchedulerBase):
    """What CogVideoXDDIMScheduler and CogVideoXDPMScheduler share: diffusers' constructor and the shifted table."""

    _scaled_linear_dtype = np.float64

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.0120,
        beta_schedule: str = "scaled_linear",
        trained_betas=None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        snr_shift_scale: float = 3.0,
    ):
        self._build(dict(_ctor_args(locals())))

    def _finish_alphas_cumprod(self, alphas_cumprod):
        dt = alphas_cumprod.dtype.type
        # SNR shift following SD3: a / (s + (1 - s) * a)
        s = self.config.snr_shift_scale
        ac = alphas_cumprod / (dt(s) + dt(1 - s) * alphas_cumprod)
        if self.config.rescale_betas_zero_snr:
            ac = _rescale_cumprod_zero_terminal_snr(ac)
        return ac


# ---------------------------------------------------------------------------------------------------------------------
# the schedulers


class CogVideoXDDIMScheduler(_CogVideoXSchedulerBase):
    """diffusers.CogVideoXDDIMScheduler: deterministic DDIM on an SNR-shifted (optionally zero-terminal-SNR) table.

    `step` ignores eta, generator, variance_noise, use_clipped_model_output, clip_sample and thresholding, as
    diffusers' does.
    """

    def step(
        self,
        model_output,
        timestep,
        sample,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise=None,
        return_dict: bool = True,
    ):
        """One DDIM update x_t -> x_{t - T // N} (deterministic).

        Args:
            model_output (`np.ndarray`): the transformer's prediction (noise, velocity or sample, per
                ``prediction_type``), same shape as sample.
            timestep (`int`): the current timestep, one of ``self.timesteps``.
            sample (`np.ndarray`): the current latents x_t.
            eta, use_clipped_model_output, generator, variance_noise: ignored, as in diffusers.
            return_dict (`bool`, defaults to True): return a ``DDIMSchedulerOutput`` rather than a tuple.

        Returns:
            `DDIMSchedulerOutput` or `(prev_sample, pred_original_sample)`.
        """
        model_output, sample, t, prev_t = self._step_inputs(model_output, timestep, sample)

        with np.errstate(all="ignore"):
            alpha_prod_t, alpha_prod_t_prev, beta_prod_t = self._alpha_terms(t, prev_t)

            pred_original_sample = self._pred_original_sample(model_output, sample, alpha_prod_t, beta_prod_t)

            a_t = _sqrt((_one(alpha_prod_t_prev) - alpha_prod_t_prev) / (_one(alpha_prod_t) - alpha_prod_t))
            b_t = _sqrt(alpha_prod_t_prev) - _sqrt(alpha_prod_t) * a_t

            prev_sample = _mul(a_t, sample) + _mul(b_t, pred_original_sample)

        return self._output(prev_sample, pred_original_sample, return_dict)


class CogVideoXDPMScheduler(_CogVideoXSchedulerBase):
    """diffusers.CogVideoXDPMScheduler: stochastic DPM-Solver++(2M)-style sampler on the CogVideoX table.

    As in diffusers it draws noise at every step whatever `eta` is (eta is ignored): one draw when
    `old_pred_original_sample` is None or at the last step, two at the other steps (the first is discarded).
    Extension: a `variance_noise` array, when given, is used as that noise and nothing is drawn (diffusers ignores
    the argument); this lets a test replay recorded noise.
    """

    @staticmethod
    def _lambda(a):
        return np.log(np.sqrt(a / (_one(a) - a)))

    def get_variables(self, alpha_prod_t, alpha_prod_t_prev, alpha_prod_t_back=None):
        """(h, r, lamb, lamb_next) of DPM-Solver++(2M); r is None without alpha_prod_t_back."""
        with np.errstate(all="ignore"):
            lamb = self._lambda(alpha_prod_t)
            lamb_next = self._lambda(alpha_prod_t_prev)
            h = lamb_next - lamb
            if alpha_prod_t_back is not None:
                lamb_previous = self._lambda(alpha_prod_t_back)
                h_last = lamb - lamb_previous
                r = h_last / h
                return h, r, lamb, lamb_next
            return h, None, lamb, lamb_next

    def get_mult(self, h, r, alpha_prod_t, alpha_prod_t_prev, alpha_prod_t_back=None):
        """(mult1, mult2[, mult3, mult4]): the multipliers of sample, x0 and the 2M correction."""
        with np.errstate(all="ignore"):
            ratio = (_one(alpha_prod_t_prev) - alpha_prod_t_prev) / (_one(alpha_prod_t) - alpha_prod_t)
            mult1 = _sqrt(ratio) * np.exp(-h)
            mult2 = np.expm1(h.dtype.type(-2) * h) * _sqrt(alpha_prod_t_prev)
            if alpha_prod_t_back is not None:
                two_r = r.dtype.type(2) * r
                mult3 = r.dtype.type(1) + r.dtype.type(1) / two_r
                mult4 = r.dtype.type(1) / two_r
                return mult1, mult2, mult3, mult4
            return mult1, mult2

    def step(
        self,
        model_output,
        old_pred_original_sample,
        timestep,
        timestep_back,
        sample,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise=None,
        return_dict: bool = False,
    ):
        """One DPM step; returns (prev_sample, pred_original_sample).

        Args:
            model_output (`np.ndarray`): the transformer's prediction (noise, velocity or sample, per
                ``prediction_type``), same shape as sample.
            old_pred_original_sample (`np.ndarray` or None): the pred_original_sample of the previous step (None at
                the first one).
            timestep (`int`): the current timestep, one of ``self.timesteps``.
            timestep_back (`int` or None): the previous step's timestep (None at the first one).
            sample (`np.ndarray`): the current latents x_t.
            eta, use_clipped_model_output: ignored, as in diffusers.
            generator (`int`, `np.random.Generator` or `torch.Generator`, *optional*): the noise source.
            variance_noise (`np.ndarray`, *optional*): noise to use instead of drawing it (an extension).
            return_dict (`bool`, defaults to False): see below.

        Exactly as diffusers: on the first step (`old_pred_original_sample is None`) and the last one the tuple is
        returned whatever `return_dict` says; otherwise return_dict=True gives a DDIMSchedulerOutput.
        """
        model_output, sample, t, prev_t = self._step_inputs(model_output, timestep, sample)
        if old_pred_original_sample is not None:
            old_pred_original_sample = _as_sample(old_pred_original_sample, "old_pred_original_sample")

        if variance_noise is not None:
            variance_noise = _as_sample(variance_noise, "variance_noise")
            if variance_noise.shape != sample.shape:
                raise ValueError(f"variance_noise has shape {variance_noise.shape}, the sample {sample.shape}")
            variance_noise = variance_noise.astype(sample.dtype, copy=False)

        def noise():
            if variance_noise is not None:
                return variance_noise
            return self._noise.randn(sample.shape, sample.dtype, generator)

        with np.errstate(all="ignore"):
            alpha_prod_t, alpha_prod_t_prev, beta_prod_t = self._alpha_terms(t, prev_t)
            alpha_prod_t_back = None
            if timestep_back is not None:
                alpha_prod_t_back = self._alpha_prod(_as_timestep(timestep_back, "timestep_back"))

            pred_original_sample = self._pred_original_sample(model_output, sample, alpha_prod_t, beta_prod_t)

            h, r, _, _ = self.get_variables(alpha_prod_t, alpha_prod_t_prev, alpha_prod_t_back)
            mult = list(self.get_mult(h, r, alpha_prod_t, alpha_prod_t_prev, alpha_prod_t_back))
            mult_noise = _sqrt(_one(alpha_prod_t_prev) - alpha_prod_t_prev) * _sqrt(
                _one(h) - np.exp(h.dtype.type(-2) * h)
            )

            prev_sample = _mul(mult[0], sample) - _mul(mult[1], pred_original_sample) + _mul(mult_noise, noise())

            if old_pred_original_sample is None or prev_t < 0:
                # diffusers returns the tuple here whatever return_dict says
                return prev_sample, pred_original_sample

            denoised_d = _mul(mult[2], pred_original_sample) - _mul(mult[3], old_pred_original_sample)
            prev_sample = _mul(mult[0], sample) - _mul(mult[1], denoised_d) + _mul(mult_noise, noise())

        return self._output(prev_sample, pred_original_sample, return_dict)


class DDIMScheduler(_SchedulerBase):
    """diffusers.DDIMScheduler (the generic one used by diffusers' tiny CogVideoX pipeline tests)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._build(dict(_ctor_args(locals())))

    def _finish_betas(self, betas):
        if self.config.rescale_betas_zero_snr:
            betas = _rescale_betas_zero_terminal_snr(betas)
        return betas

    def _threshold_sample(self, sample):
        """Dynamic thresholding (Imagen): clamp each batch row to its `dynamic_thresholding_ratio` quantile."""
        dtype = sample.dtype
        batch_size, channels, *remaining = sample.shape
        x = sample if dtype in (np.float32, np.float64) else sample.astype(np.float32)
        x = x.reshape(batch_size, channels * int(np.prod(remaining)))
        s = np.quantile(np.abs(x), self.config.dynamic_thresholding_ratio, axis=1).astype(x.dtype)
        s = np.clip(s, x.dtype.type(1), x.dtype.type(self.config.sample_max_value))[:, None]
        x = np.clip(x, -s, s) / s
        return x.reshape(batch_size, channels, *remaining).astype(dtype)

    def step(
        self,
        model_output,
        timestep,
        sample,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise=None,
        return_dict: bool = True,
    ):
        """One DDIM update (formulas 12 and 16 of the DDIM paper); noise is added only when eta > 0.

        Args:
            model_output (`np.ndarray`): the transformer's prediction (noise, velocity or sample, per
                ``prediction_type``), same shape as sample.
            timestep (`int`): the current timestep, one of ``self.timesteps``.
            sample (`np.ndarray`): the current latents x_t.
            eta (`float`, defaults to 0.0): the weight of the added noise (0: deterministic DDIM, 1: DDPM-like).
            use_clipped_model_output (`bool`, defaults to False): recompute the noise from the clipped x0.
            generator (`int`, `np.random.Generator` or `torch.Generator`, *optional*): the noise source (eta > 0).
            variance_noise (`np.ndarray`, *optional*): the noise to add instead of drawing it (not with generator).
            return_dict (`bool`, defaults to True): return a ``DDIMSchedulerOutput`` rather than a tuple.

        Returns:
            `DDIMSchedulerOutput` or `(prev_sample, pred_original_sample)`.
        """
        model_output, sample, t, prev_t = self._step_inputs(model_output, timestep, sample)

        with np.errstate(all="ignore"):
            alpha_prod_t, alpha_prod_t_prev, beta_prod_t = self._alpha_terms(t, prev_t)

            pred_original_sample = self._pred_original_sample(model_output, sample, alpha_prod_t, beta_prod_t)
            pred_epsilon = self._pred_epsilon(model_output, sample, pred_original_sample, alpha_prod_t, beta_prod_t)

            if self.config.thresholding:
                pred_original_sample = self._threshold_sample(pred_original_sample)
            elif self.config.clip_sample:
                r = pred_original_sample.dtype.type(self.config.clip_sample_range)
                pred_original_sample = np.clip(pred_original_sample, -r, r)

            variance = self._get_variance(t, prev_t)
            std_dev_t = variance.dtype.type(eta) * _sqrt(variance)

            if use_clipped_model_output:
                pred_epsilon = _epsilon_from_x0(sample, pred_original_sample, alpha_prod_t, beta_prod_t)

            coef = _sqrt(_one(alpha_prod_t_prev) - alpha_prod_t_prev - std_dev_t * std_dev_t)
            pred_sample_direction = _mul(coef, pred_epsilon)
            prev_sample = _mul(_sqrt(alpha_prod_t_prev), pred_original_sample) + pred_sample_direction

            if eta > 0:
                if variance_noise is not None and generator is not None:
                    raise ValueError(
                        "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                        " `variance_noise` stays `None`."
                    )
                if variance_noise is None:
                    variance_noise = self._noise.randn(model_output.shape, model_output.dtype, generator)
                else:
                    variance_noise = _as_sample(variance_noise, "variance_noise")
                prev_sample = prev_sample + _mul(std_dev_t, variance_noise)

        return self._output(prev_sample, pred_original_sample, return_dict)


def _ctor_args(scope):
    """The constructor's arguments, in order, from its locals()."""
    return [(k, v) for k, v in scope.items() if k not in ("self", "__class__")]
