#!/usr/bin/env python3
"""Generate scheduler parity fixtures from diffusers (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler).

Run from the repository root with the reference environment (torch + diffusers, never runtime deps of cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_scheduler_fixtures.py [--check-impl]

Writes tests/fixtures/schedulers/schedulers.npz and manifest.json (both recreated). For every case (a scheduler
class and a config) the npz holds, under "<case>/...":
  alphas_cumprod, final_alpha_cumprod            the scheduler's noise table
  N<n>/timesteps                                 set_timesteps(n) for n in STEPS
  N<n>/{step_index,chain_start,t,t_back,n_draws}  the recorded steps of set_timesteps(n), stacked on axis 0: chains
                                                 of consecutive steps (the first 3 and the last 3 of the schedule);
                                                 t_back is timesteps[i - 1] (-1 at i = 0)
  N<n>/{model_output,prev_sample,pred_original_sample}   float32, one row per recorded step
  N<n>/sample                                    the sample of each chain's first step (a later step's sample is the
                                                 previous step's prev_sample)
  N<n>/old_pred                                  (DPM) old_pred_original_sample given to each step (NaN when None);
                                                 a chain's first step mid-schedule gets a random one
  N<n>/noise                                     [steps, 2, ...] every draw the step made, in order (NaN-padded;
                                                 n_draws says how many): DPM 1 or 2, DDIM with eta > 0 one
  add_noise/<k>_<f32|f16>/{original,noise,timesteps,noisy,velocity}   add_noise / get_velocity
manifest.json lists the cases (class, config, step kwargs) and the torch / diffusers / numpy versions.

DPM always draws noise (even at eta = 0): draws come from a seeded CPU torch.Generator and are recorded by wrapping
diffusers' randn_tensor, so a test can replay them. The script is deterministic (fixed seeds, fixed zip timestamps).

--check-impl additionally runs cogvideo_c.schedulers in this interpreter against diffusers with the same seeded
torch.Generator over whole schedules (bit-exactness report).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler
from diffusers.schedulers import scheduling_ddim, scheduling_dpm_cogvideox

from _reference_common import recreate_dir, save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "schedulers"

STEPS = (1, 2, 30, 49, 50)
SHAPE = (2, 1, 2, 2, 3)  # [B, F, C, H, W] like CogVideoX latents, kept tiny

# scheduler/scheduler_config.json of THUDM/CogVideoX-2b (spec §4.2); 5b differs only in snr_shift_scale = 1.0
COGVIDEOX_2B = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
COGVIDEOX_5B = dict(COGVIDEOX_2B, snr_shift_scale=1.0)

# option coverage beyond the released configs
COGVIDEOX_EPS_LEADING = dict(
    COGVIDEOX_2B,
    prediction_type="epsilon",
    rescale_betas_zero_snr=False,
    timestep_spacing="leading",
    steps_offset=1,
    set_alpha_to_one=False,
    snr_shift_scale=2.0,
)
COGVIDEOX_LINEAR_SAMPLE = dict(
    COGVIDEOX_2B,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="sample",
    timestep_spacing="linspace",
)
COGVIDEOX_COSINE = dict(
    COGVIDEOX_2B, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", rescale_betas_zero_snr=False
)
DDIM_VPRED_ZSNR = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
DDIM_SAMPLE_CLIP = {
    "prediction_type": "sample",
    "clip_sample_range": 0.5,
    "timestep_spacing": "linspace",
    "set_alpha_to_one": False,
}
DDIM_THRESHOLD = {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}

# name -> (class, config, step kwargs)
CASES = {
    "cvx_ddim_2b": (CogVideoXDDIMScheduler, COGVIDEOX_2B, {}),
    "cvx_ddim_5b": (CogVideoXDDIMScheduler, COGVIDEOX_5B, {}),
    "cvx_dpm_2b": (CogVideoXDPMScheduler, COGVIDEOX_2B, {"eta": 0.0}),
    "cvx_dpm_5b": (CogVideoXDPMScheduler, COGVIDEOX_5B, {"eta": 0.0}),
    "cvx_ddim_defaults": (CogVideoXDDIMScheduler, {}, {}),
    "cvx_dpm_defaults": (CogVideoXDPMScheduler, {}, {"eta": 0.0}),
    "cvx_ddim_eps_leading": (CogVideoXDDIMScheduler, COGVIDEOX_EPS_LEADING, {}),
    "cvx_dpm_eps_leading": (CogVideoXDPMScheduler, COGVIDEOX_EPS_LEADING, {"eta": 0.0}),
    "cvx_ddim_linear_sample": (CogVideoXDDIMScheduler, COGVIDEOX_LINEAR_SAMPLE, {}),
    "cvx_dpm_linear_sample": (CogVideoXDPMScheduler, COGVIDEOX_LINEAR_SAMPLE, {"eta": 0.0}),
    "cvx_ddim_cosine": (CogVideoXDDIMScheduler, COGVIDEOX_COSINE, {}),
    "ddim_defaults": (DDIMScheduler, {}, {}),
    "ddim_defaults_eta": (DDIMScheduler, {}, {"eta": 0.7}),
    "ddim_defaults_eta_clipped_eps": (DDIMScheduler, {}, {"eta": 0.3, "use_clipped_model_output": True}),
    "ddim_from_cvx_2b": (DDIMScheduler, COGVIDEOX_2B, {}),
    "ddim_vpred_zsnr": (DDIMScheduler, DDIM_VPRED_ZSNR, {}),
    "ddim_sample_clip": (DDIMScheduler, DDIM_SAMPLE_CLIP, {}),
    "ddim_threshold": (DDIMScheduler, DDIM_THRESHOLD, {}),
}

ADD_NOISE_TIMESTEPS = {"ends": [999, 0], "mid": [500, 19], "scalar": 979}


def _chains(n):
    """Which step indices to record, as chains of consecutive steps."""
    first = list(range(min(3, n)))
    last = [i for i in range(max(n - 3, 0), n) if i not in first]
    if last and last[0] == first[-1] + 1:
        return [first + last]
    return [c for c in (first, last) if c]


class DrawRecorder:
    """Wraps diffusers' randn_tensor in a scheduler module and keeps every draw."""

    def __init__(self, module):
        self.module = module
        self.original = module.randn_tensor
        self.draws = []

    def __enter__(self):
        def recording(*args, **kwargs):
            out = self.original(*args, **kwargs)
            self.draws.append(out.detach().cpu().numpy().copy())
            return out

        self.module.randn_tensor = recording
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self.original

    def take(self):
        d, self.draws = self.draws, []
        return d


def _step(sched, cls, t, t_back, sample, model_output, old_pred, kwargs, generator):
    if cls is CogVideoXDPMScheduler:
        return sched.step(model_output, old_pred, t, t_back, sample, generator=generator, return_dict=False, **kwargs)
    return sched.step(model_output, t, sample, generator=generator, return_dict=False, **kwargs)


def make_case(name, cls, config, kwargs, arrays, seed):
    sched = cls.from_config(config) if config else cls()
    arrays[f"{name}/alphas_cumprod"] = sched.alphas_cumprod.numpy()
    arrays[f"{name}/final_alpha_cumprod"] = np.asarray(sched.final_alpha_cumprod.numpy())
    rng = np.random.default_rng(seed)
    module = scheduling_dpm_cogvideox if cls is CogVideoXDPMScheduler else scheduling_ddim
    is_dpm = cls is CogVideoXDPMScheduler
    for n in STEPS:
        sched.set_timesteps(n)
        timesteps = sched.timesteps
        arrays[f"{name}/N{n}/timesteps"] = timesteps.numpy()
        rec_steps, chain_start, ts, t_backs, n_draws = [], [], [], [], []
        fields = {k: [] for k in ("sample", "model_output", "old_pred", "prev_sample", "pred_original_sample", "noise")}
        generator = torch.Generator().manual_seed(seed * 1000 + n)
        with DrawRecorder(module) as rec:
            for chain in _chains(n):
                sample = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32))
                old_pred = None
                for i in chain:
                    t = timesteps[i]
                    t_back = timesteps[i - 1] if i > 0 else None
                    if is_dpm and old_pred is None and i > 0:
                        # a chain that starts mid-schedule: give it a previous x0 prediction as the pipeline would
                        old_pred = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32))
                    model_output = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32))
                    rec_steps.append(i)
                    chain_start.append(i == chain[0])
                    ts.append(int(t))
                    t_backs.append(-1 if t_back is None else int(t_back))
                    fields["sample"].append(sample.numpy().copy())
                    fields["model_output"].append(model_output.numpy().copy())
                    has_old = is_dpm and old_pred is not None
                    fields["old_pred"].append(
                        old_pred.numpy().copy() if has_old else np.full(SHAPE, np.nan, np.float32)
                    )
                    prev, x0 = _step(sched, cls, t, t_back, sample, model_output, old_pred, kwargs, generator)
                    assert prev.dtype == torch.float32 and x0.dtype == torch.float32
                    fields["prev_sample"].append(prev.numpy().copy())
                    fields["pred_original_sample"].append(x0.numpy().copy())
                    draws = rec.take()
                    assert len(draws) <= 2
                    n_draws.append(len(draws))
                    draws = draws + [np.full(SHAPE, np.nan, np.float32)] * (2 - len(draws))
                    fields["noise"].append(np.stack(draws))
                    sample, old_pred = prev, x0
        prefix = f"{name}/N{n}"
        arrays[f"{prefix}/step_index"] = np.asarray(rec_steps, np.int64)
        arrays[f"{prefix}/chain_start"] = np.asarray(chain_start, bool)
        arrays[f"{prefix}/t"] = np.asarray(ts, np.int64)
        arrays[f"{prefix}/t_back"] = np.asarray(t_backs, np.int64)
        arrays[f"{prefix}/n_draws"] = np.asarray(n_draws, np.int64)
        for k, v in fields.items():
            if k == "old_pred" and not is_dpm:
                continue
            if k == "noise" and not any(n_draws):
                continue
            if k == "sample":  # only chain starts: later samples are the previous step's prev_sample
                v = [x for x, c in zip(v, chain_start) if c]
            arrays[f"{prefix}/{k}"] = np.stack(v)
    # add_noise / get_velocity (float32 and float16 samples)
    for key, ts in ADD_NOISE_TIMESTEPS.items():
        for dtype, tdtype in (("f32", torch.float32), ("f16", torch.float16)):
            x0 = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32)).to(tdtype)
            noise = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32)).to(tdtype)
            t = torch.tensor(ts, dtype=torch.int64)
            prefix = f"{name}/add_noise/{key}_{dtype}"
            arrays[f"{prefix}/original"] = x0.numpy()
            arrays[f"{prefix}/noise"] = noise.numpy()
            arrays[f"{prefix}/timesteps"] = t.numpy()
            arrays[f"{prefix}/noisy"] = sched.add_noise(x0, noise, t).numpy()
            arrays[f"{prefix}/velocity"] = sched.get_velocity(x0, noise, t).numpy()


def check_impl():
    """Run cogvideo_c.schedulers against diffusers with identical torch generators (bit-exactness report)."""
    # import cogvideo_c.schedulers alone (the package __init__ loads the compiled core and its BLAS wheel)
    pkg = types.ModuleType("cogvideo_c")
    pkg.__path__ = [str(ROOT / "cogvideo_c")]
    sys.modules.setdefault("cogvideo_c", pkg)
    from cogvideo_c import schedulers as ours

    worst = 0.0
    exact = total = 0
    for name, (cls, config, kwargs) in CASES.items():
        case_worst, case_exact, case_total = 0.0, 0, 0
        a = cls.from_config(config) if config else cls()
        b = getattr(ours, cls.__name__).from_config(dict(a.config))
        t_ac = (a.alphas_cumprod.numpy() == b.alphas_cumprod).all()
        for n in STEPS:
            a.set_timesteps(n)
            b.set_timesteps(n)
            assert (a.timesteps.numpy() == b.timesteps).all(), (name, n)
            ga, gb = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
            rng = np.random.default_rng(n)
            xs = rng.standard_normal(SHAPE, dtype=np.float32)
            xa, xb, olda, oldb = torch.from_numpy(xs), xs, None, None
            for i, t in enumerate(a.timesteps):
                mo = rng.standard_normal(SHAPE, dtype=np.float32)
                tb = a.timesteps[i - 1] if i > 0 else None
                if cls is CogVideoXDPMScheduler:
                    pa, olda = a.step(torch.from_numpy(mo), olda, t, tb, xa, generator=ga, return_dict=False, **kwargs)
                    pb, oldb = b.step(mo, oldb, int(t), None if tb is None else int(tb), xb, generator=gb, **kwargs)
                else:
                    pa = a.step(torch.from_numpy(mo), t, xa, generator=ga, **kwargs).prev_sample
                    pb = b.step(mo, int(t), xb, generator=gb, **kwargs).prev_sample
                d = float(np.max(np.abs(pa.numpy() - pb) / np.maximum(1.0, np.abs(pb))))
                case_worst = max(case_worst, d)
                case_exact += int(d == 0.0)
                case_total += 1
                xa, xb = pa, pb
        t_diff = float(np.max(np.abs(a.alphas_cumprod.numpy() - b.alphas_cumprod)))
        print(
            f"  {name:30s} table exact={bool(t_ac)} (max diff {t_diff:.2g}); steps bit-exact {case_exact}/{case_total},"
            f" worst relative diff {case_worst:.3g}"
        )
        worst, exact, total = max(worst, case_worst), exact + case_exact, total + case_total
    print(f"check-impl: {exact}/{total} full-chain steps bit-exact, worst relative diff {worst:.3g}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-impl", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    recreate_dir(OUT)
    arrays = {}
    manifest = {
        "versions": {
            **versions(torch, diffusers, np),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "npz": "schedulers.npz",
        "steps": list(STEPS),
        "shape": list(SHAPE),
        "add_noise_timesteps": ADD_NOISE_TIMESTEPS,
        "cases": [],
    }
    for k, (name, (cls, config, kwargs)) in enumerate(CASES.items()):
        make_case(name, cls, config, kwargs, arrays, seed=k + 1)
        manifest["cases"].append({"name": name, "class": cls.__name__, "config": config, "step_kwargs": kwargs})
    # np.array, not np.ascontiguousarray: final_alpha_cumprod stays 0-d
    save_npz(OUT / "schedulers.npz", arrays, as_array=lambda a: np.array(a, order="C"))
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = (OUT / "schedulers.npz").stat().st_size
    print(f"wrote {len(arrays)} arrays, {size / 1024:.0f} KiB, {len(CASES)} cases to {OUT}")
    if args.check_impl:
        check_impl()


if __name__ == "__main__":
    main()
