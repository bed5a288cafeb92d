"""Devices and the offload strategies of diffusers, on the C memory manager's weight residency.

A model's weights live in weight groups (one per transformer / T5 block, per VAE block, plus one for the rest);
each group has its host bytes and at most one device copy. The residency policy of each component says which
copies exist:

- ``none`` (``pipe.to(device)``): every group is on the device.
- ``model`` (``enable_model_cpu_offload``): a component comes to the device whole when it runs and leaves when the
  next one in ``model_cpu_offload_seq`` (``text_encoder->transformer->vae``) starts, as diffusers' hooks do.
- ``sequential`` (``enable_sequential_cpu_offload``, ``enable_group_offload``): the C forward streams one block
  group at a time through a ring of ``prefetch + 1`` device slots, copying the next group(s) while the current one
  computes.

``OffloadChain`` is the hook a pipeline installs on its models (``model._offload_hook``): each model calls
``before(model)`` when it runs, so calling ``pipe.transformer(...)`` directly follows the policy too, as with
diffusers' accelerate hooks.
"""

import re
import sys
import warnings
import weakref

from . import _C
from .modeling import Device, ModelMixin

# what _C's device parser knows; cuda runs when build_info() says so
_DEVICE_TYPES = ("cpu", "emu", "cuda")


def _cuda_refusal(what, text):
    """Why `text` cannot run here, or None when the CUDA backend and a device are present."""
    info = _C.build_info()
    if info["cuda"]:
        return None
    if not info["cuda_compiled"]:
        reason = ("this build has no CUDA backend (no CUDA toolkit was found when it was installed: "
                  "build_info()['cuda_compiled'] is False)")  # fmt: skip
    else:
        reason = "no CUDA device is present (build_info()['cuda_devices'] is 0)"
    return f"{what} {text!r}: {reason}; use 'cpu', or 'emu' to run the offload strategies on the emulated accelerator"


def resolve_device(device, gpu_id=None, what="device"):
    """A Device ("cpu", "emu" or "cuda:N") from a str, a torch.device-like object or an int (a CUDA index), with
    diffusers' gpu_id rules: gpu_id and an index in `device` together are an error; "cuda" alone is
    "cuda:{gpu_id}" (gpu_id defaults to 0), as diffusers builds its offload device."""
    if device is None:
        raise ValueError(f"{what} must be given")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    text = str(device)
    m = re.fullmatch(r"(\w+)(?::(\d+))?", text)
    if not m or m.group(1) not in _DEVICE_TYPES:
        raise ValueError(f"{what} {text!r}: unknown device; expected 'cpu', 'emu' (the emulated accelerator) or 'cuda'")
    kind, index = m.group(1), m.group(2)
    if gpu_id is not None and index is not None:
        raise ValueError(
            f"You have passed both `gpu_id`={gpu_id} and an index as part of the passed device `device`={text}. "
            f"Cannot pass both. Please make sure to either not define `gpu_id` or not pass the index as part of the "
            f"device: `device`={kind}"
        )
    if kind == "cuda":
        refusal = _cuda_refusal(what, text)
        if refusal:
            raise ValueError(refusal)
        if gpu_id is not None and (not isinstance(gpu_id, int) or isinstance(gpu_id, bool) or gpu_id < 0):
            raise ValueError(f"{what} {text!r}: gpu_id must be a non-negative int, got {gpu_id!r}")
        n = int(index) if index is not None else (gpu_id or 0)
        count = _C.build_info()["cuda_devices"]
        if n >= count:
            found = "1 CUDA device was found (index 0)" if count == 1 else f"{count} CUDA devices were found"
            raise ValueError(f"{what} 'cuda:{n}': no such device; {found}")
        return Device(f"cuda:{n}")
    if index not in (None, "0") or (gpu_id not in (None, 0)):
        raise ValueError(f"{what} {text!r}: there is one {kind} device (index 0)")
    return Device(kind)


def default_offload_device(current, gpu_id=None):
    """The device enable_*_offload uses when none is given: diffusers picks the accelerator (cuda:gpu_id) and raises
    without one; here the emulated accelerator counts as one when the pipeline was moved to it, and otherwise
    (no GPU either: an emulated CUDA device is not picked unasked) the weights stay where they are (the CPU) with a
    warning, so that a diffusers script runs unchanged on a CPU-only machine."""
    info = _C.build_info()
    # an emulated CUDA device (a CVX_CUDA_EMULATE build) computes on the CPU, far slower: taken when gpu_id names
    # it, not by default
    gpu = info["cuda"] and (gpu_id is not None or not info.get("cuda_emulated", False))
    if current.type == "cuda" or (current == "cpu" and gpu):
        return resolve_device("cuda", gpu_id) if gpu_id is not None or current == "cpu" else current
    if gpu_id not in (None, 0) or isinstance(gpu_id, bool):
        raise ValueError(f"gpu_id must be the int 0 (this build has one device of each kind), got {gpu_id!r}")
    if current != "cpu":
        return current
    warnings.warn(
        "no accelerator in this build: the offload strategy is recorded but the weights stay on the CPU, where "
        "nothing needs offloading (pass device='emu' to run it on the emulated accelerator)",
        stacklevel=3,
    )
    return Device("cpu")


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_memory_size(value, what="max_memory"):
    """Bytes from an int or a size string as accelerate's max_memory reads it ("6GB" = 6e9, "6GiB" = 6 * 2**30)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of bytes or a size such as '6GB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]I?B|B)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ValueError(f"{what} must be a number of bytes or a size such as '6GB', got {value!r}")
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])
    if size <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return size


def format_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def default_budget(device):
    """enable_auto_offload's budget when max_memory is not given: on CUDA the device's free memory
    (cudaMemGetInfo, as accelerate reads it) plus what cogvideo_c already holds there (its own cache and
    components, which the plan may reuse); elsewhere 6 GB."""
    if Device(device).type != "cuda":
        return parse_memory_size("6GB")
    free, _total = _C.cuda_mem_get_info(str(device))
    return free + _C.memory_stats("cuda")["reserved_bytes.all.current"]


def device_room(device):
    """Bytes the device can still give cogvideo_c: its memory limit less what is allocated there, else on CUDA the
    free memory (cudaMemGetInfo) plus the allocator's cache; None where nothing bounds it but the host."""
    stats = _C.memory_stats(str(device))
    if stats["memory_limit_bytes"]:
        return max(0, stats["memory_limit_bytes"] - stats["allocated_bytes.all.current"])
    if Device(device).type == "cuda":
        free, _total = _C.cuda_mem_get_info(str(device))
        return free + stats["reserved_bytes.all.current"] - stats["allocated_bytes.all.current"]
    return None


def fitting_strategy(models, device):
    """For an OutOfMemoryError of a move to `device`: which diffusers strategy's device weights fit the room left
    there (the planner's stage_need, weights only: each stage's activations come on top), as text."""
    infos = [_C.residency_info(m._core) for m in models]
    room = device_room(device)
    if not infos or room is None:
        return ""
    needs = (
        ("pipe.to(device)", sum(stage_need(i, "model", 0, 0) for i in infos)),
        ("enable_model_cpu_offload()", max(stage_need(i, "model", 0, 0) for i in infos)),
        ("enable_sequential_cpu_offload()", max(stage_need(i, "sequential", 1, 0) for i in infos)),
    )
    fits = [(name, need) for name, need in needs[1:] if need <= room]
    detail = ", ".join(f"{name} {format_bytes(need)}" for name, need in needs)
    head = f"{fits[0][0]} would fit" if fits else "no offload strategy fits"
    return (f"; {head}: {format_bytes(room)} are free on {device}, and the weights need {detail} (activations "
            "come on top: enable_auto_offload(max_memory=...) plans both)")  # fmt: skip


def set_residency(model, device, policy="none", prefetch=0):
    """Moves one model's weights (all its device copies are dropped first)."""
    _C.residency_set(model._core, str(device), policy, int(prefetch))
    model._device = Device(device)


class OffloadChain:
    """The offload hooks of one pipeline: the device, each component's policy, and the order they run in."""

    def __init__(self, pipe, device, policy, prefetch=1, vae_policy=None):
        self._pipe = weakref.ref(pipe)  # the models hold the chain: no cycle back to the pipeline
        self.names = {id(getattr(pipe, n)): n for n in pipe.components if isinstance(getattr(pipe, n), ModelMixin)}
        self.device = Device(device)
        self.policy = policy  # "model", "sequential" or "group"
        self.prefetch = prefetch
        names = (pipe.model_cpu_offload_seq or "").split("->")
        models = pipe._models()
        # the sequence first, then any other model (offloaded like the rest), as diffusers hooks them
        # a name listed twice (Fun-Control's "text_encoder->vae->transformer->vae") is hooked once, as diffusers
        ordered = [getattr(pipe, n, None) for n in dict.fromkeys(names)]
        self.models = [m for m in ordered if m in models] + [m for m in models if m not in ordered]
        self.policies = {}
        for model in self.models:
            p = "sequential" if policy in ("sequential", "group") else "model"
            if p == "sequential" and model is getattr(pipe, "vae", None) and vae_policy:
                p = vae_policy
            self.policies[id(model)] = p
        self.install()

    def install(self):
        for model in self.models:
            self.install_one(model)

    def install_one(self, model):
        set_residency(model, self.device, self.policies[id(model)], self.prefetch)
        model._offload_hook = self

    def remove(self):
        for model in self.models:
            if model._offload_hook is self:
                model._offload_hook = None

    def before(self, model):
        """A component is about to run: the others leave the device and, under model offload, it comes in whole."""
        self.leave_others(model)
        self.bring_in(model)

    def leave_others(self, model):
        for other in self.models:
            if other is not model:
                other._leave_stage()

    def bring_in(self, model):
        if model._device != self.device:  # moved away by to(): follow the policy again
            set_residency(model, self.device, self.policies[id(model)], self.prefetch)
        if self.policies[id(model)] == "model":
            _C.residency_onload(model._core)

    def free(self):
        """maybe_free_model_hooks: every component leaves the device (the state before the call)."""
        for model in self.models:
            _C.residency_offload(model._core)
            model._leave_stage()


def print_plan(text):
    print(f"cogvideo_c: {text}", file=sys.stderr)


def host_memory():
    """(peak RSS, current RSS) of this process in bytes, from /proc (Linux) or getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return peak, peak


class MemoryReport(dict):
    """pipe.memory_report(): one entry per stage of the last call ("encode_prompt", the VAE encode of a conditioning
    input such as image-to-video's "encode_image", "denoise", "decode"), each a
    dict of the component that ran, its device, wall seconds, the device's peak bytes during the stage (total,
    weights, activations), the component's activation arena (the last forward's, sized by its measuring pass),
    the weight bytes copied to the device and the copy time,
    the time compute waited for copies, the overlap of copies with compute (1: every copy hidden, None: no
    copies), and the host's peak and current RSS at the end of the stage. str() gives a table."""

    COLUMNS = (("stage", "stage", "{}"), ("component", "component", "{}"), ("device", "device", "{}"),
               ("seconds", "seconds", "{:.2f}"), ("device_peak_bytes", "device peak", "b"),
               ("device_peak_weights_bytes", "of it weights", "b"), ("arena_bytes", "arena", "b"),
               ("bytes_copied", "copied", "b"), ("copy_seconds", "copy s", "{:.3f}"),
               ("wait_seconds", "waited s", "{:.3f}"), ("overlap", "overlap", "{:.0%}"),
               ("host_peak_rss_bytes", "host peak RSS", "b"))  # fmt: skip

    def __str__(self):
        rows = [[label for _, label, _ in self.COLUMNS]]
        for stage, rec in self.items():
            row = []
            for key, _, fmt in self.COLUMNS:
                value = stage if key == "stage" else rec.get(key)
                if value is None:
                    row.append("-")
                elif fmt == "b":
                    row.append(format_bytes(value))
                else:
                    row.append(fmt.format(value))
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


class StageMeter:
    """Measures one stage of a pipeline call for the memory report."""

    def __init__(self, report, stage, name, model, device):
        import time

        self.report, self.stage, self.name, self.model, self.device = report, stage, name, model, str(device)
        self._time = time.perf_counter
        _C.stage_mark(self.device)
        _C.residency_reset_stats(model._core)
        self.t0 = self._time()

    def end(self):
        seconds = self._time() - self.t0
        total, weights, acts = _C.stage_peaks(self.device)
        info = _C.residency_info(self.model._core)
        copy_s, wait_s = info["copy_ns"] / 1e9, info["wait_ns"] / 1e9
        peak_rss, rss = host_memory()
        self.report[self.stage] = {
            "component": self.name, "device": self.device, "seconds": seconds,
            "device_peak_bytes": total, "device_peak_weights_bytes": weights, "device_peak_activations_bytes": acts,
            "arena_bytes": self.model._core.arena_bytes,
            "bytes_copied": info["bytes_copied"], "copies": info["copies"], "copy_seconds": copy_s,
            "wait_seconds": wait_s, "overlap": max(0.0, 1.0 - wait_s / copy_s) if info["copies"] and copy_s else None,
            "host_peak_rss_bytes": peak_rss, "host_rss_bytes": rss,
        }  # fmt: skip


# ---- auto: the fastest combination that fits a budget -------------------------------------------------------------

# per component, fastest first; (policy, prefetch)
_COMPONENT_OPTIONS = (("model", 0), ("sequential", 1), ("sequential", 0))


def stage_need(info, policy, prefetch, arena):
    """Device bytes one component's stage needs under a policy: all its weights (model), or the ring of
    prefetch + 1 slots of its largest block group plus its non-block group (sequential), plus its arena."""
    groups = [b for b, _ in info["groups"]]
    if policy == "model" or len(groups) < 2:
        return sum(groups) + arena
    return min(prefetch + 1, len(groups) - 1) * max(groups[1:]) + groups[0] + arena


class AutoPlan:
    """What enable_auto_offload chose for one request: per component a policy, the VAE's slicing/tiling, and the
    device peak each stage will reach."""

    def __init__(self, budget, resident, choices, vae_options, peaks):
        self.budget = budget
        self.resident = resident  # True: everything stays on the device (the `none` strategy)
        self.choices = choices  # name -> (policy, prefetch)
        self.vae_options = vae_options  # (slicing, tiling) the plan needs
        self.peaks = peaks  # name -> bytes

    def describe(self):
        if self.resident:
            head = "every component stays on the device"
        else:
            head = ", ".join(
                f"{n} {p}" + (f" (prefetch {k})" if p == "sequential" else "") for n, (p, k) in self.choices.items()
            )
        extra = []
        if self.vae_options[0]:
            extra.append("VAE slicing")
        if self.vae_options[1]:
            extra.append("VAE tiling")
        tail = f" with {' and '.join(extra)}" if extra else ""
        peak = max(self.peaks.values()) if self.peaks else 0
        return f"auto offload within {format_bytes(self.budget)}: {head}{tail}; device peak {format_bytes(peak)}"


def plan_auto(budget, components, arenas):
    """components: name -> residency info; arenas: name -> {(slicing, tiling): bytes} (one key for non-VAE
    components, (None, None)). Returns the fastest AutoPlan that fits, or raises OutOfMemoryError naming the
    smallest budget that would fit."""
    from .memory import OutOfMemoryError

    names = list(components)
    weights = {n: sum(b for b, _ in components[n]["groups"]) for n in names}
    vae_keys = list(next((a for n, a in arenas.items() if len(a) > 1), {(None, None): 0}))

    def arena(name, key):
        table = arenas[name]
        return table[key] if key in table else next(iter(table.values()))

    best_need = None
    for key in vae_keys:  # the user's VAE settings first, then slicing, then tiling
        # everything resident: the weights of all, and one stage's arena at a time
        total = sum(weights.values()) + max(arena(n, key) for n in names)
        if total <= budget:
            return AutoPlan(budget, True, {n: ("none", 0) for n in names}, key, {n: total for n in names})
        choices, peaks, fits = {}, {}, True
        for n in names:
            options = [(p, k, stage_need(components[n], p, k, arena(n, key))) for p, k in _COMPONENT_OPTIONS]
            fitting = [o for o in options if o[2] <= budget]
            smallest = min(o[2] for o in options)
            best_need = smallest if best_need is None else best_need
            if not fitting:
                fits = False
                peaks[n] = smallest
                continue
            p, k, need = fitting[0]
            choices[n], peaks[n] = (p, k), need
        if fits:
            return AutoPlan(budget, False, choices, key, peaks)
    # nothing fits: the smallest budget is the largest stage under its leanest option with the leanest VAE setting
    leanest = vae_keys[-1]
    smallest = max(
        min(stage_need(components[n], p, k, arena(n, leanest)) for p, k in _COMPONENT_OPTIONS) for n in names
    )
    fitting = plan_auto(smallest, components, arenas).describe().split(": ", 1)[1]
    raise OutOfMemoryError(
        f"max_memory={format_bytes(budget)} ({budget} bytes) cannot hold this request under any offload strategy; "
        f"the smallest budget that fits is {format_bytes(smallest)} ({smallest} bytes), with {fitting}"
    )


class AutoChain(OffloadChain):
    """enable_auto_offload: per-component policies from an AutoPlan, and components that stay on the device
    across stages and calls while the budget allows (no needless reloads)."""

    def __init__(self, pipe, device, budget):
        self.budget = budget
        self.plan = None
        super().__init__(pipe, device, "auto", 1)

    def apply(self, plan):
        """Installs a plan (only what changed moves)."""
        self.plan = plan
        for model in self.models:
            name = self.name_of(model)
            policy, prefetch = plan.choices.get(name, ("model", 0))
            policy = "none" if plan.resident else policy
            if self.policies.get(id(model)) != policy or model._device != self.device:
                set_residency(model, self.device, policy, prefetch)
            self.policies[id(model)] = policy
            model._offload_hook = self

    def name_of(self, model):
        return self.names.get(id(model), type(model).__name__)

    def install_one(self, model):
        policy = self.policies.get(id(model), "model")
        set_residency(model, self.device, policy, self.prefetch)
        model._offload_hook = self

    def leave_others(self, model):
        """Evicts other components in sequence order, only as much as this stage's need within the budget asks;
        every other component gives back its arena."""
        need = self.plan.peaks.get(self.name_of(model), 0) if self.plan else 0
        held = {id(m): _C.residency_info(m._core)["resident_bytes"] for m in self.models}
        for other in self.models:
            if other is model:
                continue
            if self.plan is not None and not self.plan.resident:
                if sum(held[id(m)] for m in self.models if m is not model) + need > self.budget:
                    _C.residency_offload(other._core)
                    held[id(other)] = 0
            other._core.trim_arena()

    def free(self):
        """Components stay on the device after a call when they fit: the next call does not reload them."""
        for model in self.models:
            model._core.trim_arena()
