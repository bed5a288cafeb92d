"""Parity of cogvideo_c.schedulers with diffusers' CogVideoXDDIMScheduler, CogVideoXDPMScheduler and DDIMScheduler.

Goldens are made by tests/reference/make_scheduler_fixtures.py (torch + diffusers) and listed in
tests/fixtures/schedulers/manifest.json. This test uses only numpy and cogvideo_c (no torch/diffusers): the noise
that diffusers drew is replayed through a stand-in generator, which also checks how many draws each step makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cogvideo_c import schedulers
from cogvideo_c.schedulers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DDIMSchedulerOutput,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schedulers"
MANIFEST = FIXTURES / "manifest.json"
ATOL = 1e-6  # step outputs, float32, O(1) values
RTOL = 1e-6  # for the few larger values (epsilon prediction at high noise divides by sqrt(alpha_prod_t))

COGVIDEOX_2B = {
    "_class_name": "CogVideoXDDIMScheduler",
    "_diffusers_version": "0.30.0.dev0",
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


def _load_cases():
    if not MANIFEST.is_file():
        return [pytest.param(None, id="manifest-missing")]
    cases = json.loads(MANIFEST.read_text())["cases"]
    return [pytest.param(c, id=c["name"]) for c in cases] or [pytest.param(None, id="manifest-empty")]


CASES = _load_cases()
_NPZ = {}


def _arrays():
    if "z" not in _NPZ:
        manifest = json.loads(MANIFEST.read_text())
        with np.load(FIXTURES / manifest["npz"], allow_pickle=False) as z:
            _NPZ["z"] = {k: z[k] for k in z.files}
        _NPZ["manifest"] = manifest
    return _NPZ["z"], _NPZ["manifest"]


class ReplayGenerator:
    """Stands in for a numpy Generator: hands out recorded draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)
        self.used = 0

    def standard_normal(self, size, dtype=np.float64):
        assert self.used < len(self.draws), "the scheduler drew more noise than diffusers did"
        d = self.draws[self.used]
        assert d.shape == tuple(size)
        self.used += 1
        return d


class CountingGenerator:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def standard_normal(self, size, dtype=np.float64):
        self.calls += 1
        return self.rng.standard_normal(size, dtype=np.float32)


def _close(ours, ref, what):
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=RTOL, err_msg=what)


# ---------------------------------------------------------------------------------------------------------------------
# parity with the diffusers goldens


@pytest.mark.parametrize("case", CASES)
def test_parity(case):
    assert case is not None, f"no scheduler fixtures: run tests/reference/make_scheduler_fixtures.py ({MANIFEST})"
    z, manifest = _arrays()
    name = case["name"]
    cls = getattr(schedulers, case["class"])
    sched = cls.from_config(case["config"]) if case["config"] else cls()
    kwargs = case["step_kwargs"]

    ref_table = z[f"{name}/alphas_cumprod"]
    assert sched.alphas_cumprod.dtype == ref_table.dtype
    # float64 tables agree to an ulp (torch's CPU sqrt is MKL's, not always correctly rounded)
    tol = 1e-15 if ref_table.dtype == np.float64 else 1e-6
    np.testing.assert_allclose(sched.alphas_cumprod, ref_table, atol=tol, rtol=0)
    assert float(sched.final_alpha_cumprod) == float(z[f"{name}/final_alpha_cumprod"])
    if ref_table.dtype == np.float32 and not np.array_equal(sched.alphas_cumprod, ref_table):
        # float32 tables built with sqrt (zero-SNR rescale) differ from torch's by an ulp or two: torch's CPU sqrt is
        # MKL's, not correctly rounded. Step on diffusers' own table so the step arithmetic is what is compared.
        sched.alphas_cumprod = ref_table.copy()
        if not sched.config.set_alpha_to_one:
            sched.final_alpha_cumprod = sched.alphas_cumprod[0]

    for n in manifest["steps"]:
        sched.set_timesteps(n)
        ref_ts = z[f"{name}/N{n}/timesteps"]
        assert sched.timesteps.dtype == np.int64
        np.testing.assert_array_equal(sched.timesteps, ref_ts, err_msg=f"{name} N={n} timesteps")
        prefix = f"{name}/N{n}"
        steps = z[f"{prefix}/step_index"]
        starts = z[f"{prefix}/chain_start"]
        n_draws = z[f"{prefix}/n_draws"]
        chain_samples = iter(z[f"{prefix}/sample"])
        sample = None
        for k, i in enumerate(steps):
            t, t_back = int(z[f"{prefix}/t"][k]), int(z[f"{prefix}/t_back"][k])
            assert t == int(sched.timesteps[i])
            # the sample diffusers was given: a chain start, or diffusers' previous output
            sample = next(chain_samples) if starts[k] else z[f"{prefix}/prev_sample"][k - 1]
            model_output = z[f"{prefix}/model_output"][k]
            gen = ReplayGenerator(z[f"{prefix}/noise"][k][: n_draws[k]]) if n_draws[k] else None
            what = f"{name} N={n} step {i} (t={t})"
            if cls is CogVideoXDPMScheduler:
                old = z[f"{prefix}/old_pred"][k]
                old = None if np.isnan(old).all() else old
                prev, x0 = sched.step(
                    model_output,
                    old,
                    sched.timesteps[i],
                    sched.timesteps[i - 1] if i > 0 else None,
                    sample,
                    generator=gen,
                    return_dict=False,
                    **kwargs,
                )
                assert (t_back == -1) == (i == 0)
            else:
                prev, x0 = sched.step(
                    model_output, sched.timesteps[i], sample, generator=gen, return_dict=False, **kwargs
                )
            if gen is not None:
                assert gen.used == n_draws[k], f"{what}: drew {gen.used} times, diffusers {n_draws[k]}"
            _close(x0, z[f"{prefix}/pred_original_sample"][k], what + " pred_original_sample")
            _close(prev, z[f"{prefix}/prev_sample"][k], what + " prev_sample")

    for key in manifest["add_noise_timesteps"]:
        for dt in ("f32", "f16"):
            p = f"{name}/add_noise/{key}_{dt}"
            x0, noise, ts = z[f"{p}/original"], z[f"{p}/noise"], z[f"{p}/timesteps"]
            noisy = sched.add_noise(x0, noise, ts)
            vel = sched.get_velocity(x0, noise, ts)
            if dt == "f32":
                _close(noisy, z[f"{p}/noisy"], f"{p} add_noise")
                _close(vel, z[f"{p}/velocity"], f"{p} get_velocity")
            else:  # half: within one half-precision rounding
                for ours, ref in ((noisy, z[f"{p}/noisy"]), (vel, z[f"{p}/velocity"])):
                    assert ours.dtype == np.float16
                    np.testing.assert_allclose(ours.astype(np.float32), ref.astype(np.float32), atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------------------------------------------------------------
# released tables and schedules (spec §4.2, §4.3)


@pytest.mark.parametrize(
    "config,expected",
    [
        (
            COGVIDEOX_2B,
            {
                0: 0.9974543276430069,
                1: 0.9948006264269799,
                19: 0.9465729792377547,
                499: 0.09596956169073541,
                500: 0.09532810086292638,
                979: 2.7194360400217652e-05,
                998: 6.230788467394798e-08,
                999: 0.0,
            },
        ),
        (
            COGVIDEOX_5B,
            {
                0: 0.99915,
                1: 0.9982334461401823,
                19: 0.9810104569288466,
                499: 0.24235916655614523,
                500: 0.24101878275731575,
                979: 8.578784340054837e-05,
                998: 1.967888056621291e-07,
                999: 0.0,
            },
        ),
    ],
    ids=["2b", "5b"],
)
def test_released_tables(config, expected):
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        s = cls.from_config(config)
        assert s.alphas_cumprod.dtype == np.float64
        for t, v in expected.items():
            assert s.alphas_cumprod[t] == pytest.approx(v, rel=1e-13, abs=0)
        assert s.alphas_cumprod[999] == 0.0


def test_released_timesteps():
    s = CogVideoXDDIMScheduler.from_config(COGVIDEOX_2B)
    s.set_timesteps(50)
    np.testing.assert_array_equal(s.timesteps, np.arange(999, 0, -20))
    s.set_timesteps(2)
    np.testing.assert_array_equal(s.timesteps, [999, 499])
    s.set_timesteps(30)
    assert list(s.timesteps[:6]) == [999, 966, 932, 899, 866, 832] and list(s.timesteps[-3:]) == [99, 66, 32]


# ---------------------------------------------------------------------------------------------------------------------
# API conventions


def _rand(seed, shape=(1, 2, 4, 3, 5)):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_defaults_and_identity():
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler):
        s = cls()
        assert s.order == 1 and s.init_noise_sigma == 1.0 and len(s) == 1000
        assert s.config.num_train_timesteps == 1000 and s.config["_class_name"] == cls.__name__
        x = _rand(0)
        assert s.scale_model_input(x, 5) is x
        np.testing.assert_array_equal(s.timesteps, np.arange(999, -1, -1))
        with pytest.raises(AttributeError):
            s.config.beta_start = 0.5
    assert CogVideoXDDIMScheduler().config.snr_shift_scale == 3.0
    assert CogVideoXDDIMScheduler().config.beta_schedule == "scaled_linear"
    assert DDIMScheduler().config.beta_schedule == "linear"
    assert DDIMScheduler().alphas_cumprod.dtype == np.float32


def test_ddim_return_conventions():
    s = CogVideoXDDIMScheduler.from_config(COGVIDEOX_2B)
    s.set_timesteps(4)
    x, v = _rand(1), _rand(2)
    out = s.step(v, s.timesteps[0], x)
    assert isinstance(out, DDIMSchedulerOutput)
    prev, x0 = s.step(v, s.timesteps[0], x, return_dict=False)
    np.testing.assert_array_equal(out.prev_sample, prev)
    np.testing.assert_array_equal(out[0], prev)
    np.testing.assert_array_equal(out["pred_original_sample"], x0)
    # t = 999 on the zero-SNR table: x0 = -v
    np.testing.assert_array_equal(x0, -v)
    # eta, generator, variance_noise are ignored by CogVideoXDDIMScheduler
    prev2, _ = s.step(v, s.timesteps[0], x, eta=1.0, generator=CountingGenerator(), return_dict=False)
    np.testing.assert_array_equal(prev, prev2)


def test_dpm_return_conventions_and_draws():
    s = CogVideoXDPMScheduler.from_config(COGVIDEOX_2B)
    s.set_timesteps(4)
    ts = s.timesteps
    x, v = _rand(3), _rand(4)
    g = CountingGenerator()
    # first step: a tuple whatever return_dict says, one draw
    out = s.step(v, None, ts[0], None, x, generator=g, return_dict=True)
    assert isinstance(out, tuple) and g.calls == 1
    x1, x0 = out
    # middle step: return_dict is honoured, two draws (the first discarded)
    out = s.step(_rand(5), x0, ts[1], ts[0], x1, generator=g, return_dict=True)
    assert isinstance(out, DDIMSchedulerOutput) and g.calls == 3
    out = s.step(_rand(5), x0, ts[1], ts[0], x1, generator=g)
    assert isinstance(out, tuple) and g.calls == 5
    # last step: a tuple, one draw, and the result is the x0 prediction (a_prev = 1)
    out = s.step(_rand(6), x0, ts[-1], ts[-2], x1, generator=g, return_dict=True)
    assert isinstance(out, tuple) and g.calls == 6
    np.testing.assert_array_equal(out[0], out[1])


def test_dpm_eta_ignored_and_seeded():
    s = CogVideoXDPMScheduler.from_config(COGVIDEOX_5B)

    def run(eta, seed):
        s.set_timesteps(6)
        x, old = _rand(7), None
        for i, t in enumerate(s.timesteps):
            x, old = s.step(_rand(10 + i), old, t, s.timesteps[i - 1] if i > 0 else None, x, eta=eta, generator=seed)
        return x

    a, b, c = run(0.0, 123), run(1.0, 123), run(0.0, 124)
    np.testing.assert_array_equal(a, b)  # eta is not used by diffusers' DPM step
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all() and a.dtype == np.float32
    # numpy Generators are accepted too
    s.set_timesteps(3)
    p, _ = s.step(_rand(1), None, s.timesteps[0], None, _rand(2), generator=np.random.default_rng(0))
    assert np.isfinite(p).all()


def test_dpm_variance_noise_replaces_draws():
    s = CogVideoXDPMScheduler.from_config(COGVIDEOX_2B)
    s.set_timesteps(5)
    x, v, noise = _rand(1), _rand(2), _rand(3)
    a, _ = s.step(v, None, s.timesteps[0], None, x, generator=ReplayGenerator([noise]))
    g = CountingGenerator()
    b, _ = s.step(v, None, s.timesteps[0], None, x, generator=g, variance_noise=noise)
    np.testing.assert_array_equal(a, b)
    assert g.calls == 0


def test_ddim_eta_noise():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x, e, noise = _rand(1), _rand(2), _rand(3)
    a = s.step(e, s.timesteps[2], x, eta=0.5, variance_noise=noise).prev_sample
    b = s.step(e, s.timesteps[2], x, eta=0.5, generator=ReplayGenerator([noise])).prev_sample
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="generator"):
        s.step(e, s.timesteps[2], x, eta=0.5, generator=1, variance_noise=noise)
    g = CountingGenerator()
    s.step(e, s.timesteps[2], x, eta=0.0, generator=g)
    assert g.calls == 0


def test_half_samples_keep_dtype():
    s = CogVideoXDDIMScheduler.from_config(COGVIDEOX_2B)
    s.set_timesteps(5)
    x = _rand(1).astype(np.float16)
    prev, x0 = s.step(_rand(2), s.timesteps[1], x, return_dict=False)
    # fp16 sample with fp32 model output: sqrt(a)*sample is a half op, the difference is float32 (as torch)
    assert x0.dtype == np.float32 and prev.dtype == np.float32
    s16 = s.add_noise(x, x, np.array([10]))
    assert s16.dtype == np.float16


# ---------------------------------------------------------------------------------------------------------------------
# loading


def test_from_pretrained(tmp_path, caplog):
    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(json.dumps(dict(COGVIDEOX_2B, some_future_key=1)))
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        s = cls.from_pretrained(tmp_path, subfolder="scheduler")
        assert s.config.prediction_type == "v_prediction" and s.config.snr_shift_scale == 3.0
        assert s.config["_class_name"] == cls.__name__ and "some_future_key" not in s.config
        assert s.alphas_cumprod[999] == 0.0
    assert "some_future_key" in caplog.text
    s = CogVideoXDDIMScheduler.from_pretrained(folder)
    assert s.config.timestep_spacing == "trailing"
    s2 = CogVideoXDPMScheduler.from_config(s.config, timestep_spacing="leading")
    assert s2.config.timestep_spacing == "leading" and s2.config.snr_shift_scale == 3.0
    assert (
        CogVideoXDDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler", snr_shift_scale=1.0).config[
            "snr_shift_scale"
        ]
        == 1.0
    )
    # save_pretrained round trip
    s.save_pretrained(tmp_path / "saved")
    s3 = CogVideoXDDIMScheduler.from_pretrained(tmp_path / "saved")
    assert dict(s3.config) == dict(s.config)
    with pytest.raises(FileNotFoundError):
        CogVideoXDDIMScheduler.from_pretrained(tmp_path, subfolder="nope")
    with pytest.raises(FileNotFoundError):
        CogVideoXDDIMScheduler.from_pretrained(tmp_path)  # no scheduler_config.json at the top
    (folder / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError):
        CogVideoXDDIMScheduler.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("cls", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler])
def test_bad_num_inference_steps(cls):
    s = cls()
    for n in (0, -1, -50):
        with pytest.raises(ValueError):
            s.set_timesteps(n)
    for n in (2.5, "10", None, True):
        with pytest.raises(ValueError):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match="cannot be larger"):
        s.set_timesteps(1001)
    s.set_timesteps(1000)
    assert len(s.timesteps) == 1000


@pytest.mark.parametrize("cls", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler])
def test_step_before_set_timesteps(cls):
    s = cls()
    x = _rand(0)
    with pytest.raises(ValueError, match="set_timesteps"):
        if cls is CogVideoXDPMScheduler:
            s.step(x, None, 999, None, x)
        else:
            s.step(x, 999, x)


def test_bad_config():
    with pytest.raises(NotImplementedError):
        CogVideoXDDIMScheduler(beta_schedule="cubic")
    with pytest.raises(NotImplementedError):
        DDIMScheduler(beta_schedule="cubic")
    s = CogVideoXDDIMScheduler(timestep_spacing="sideways")
    with pytest.raises(ValueError, match="not supported"):
        s.set_timesteps(10)
    s = CogVideoXDDIMScheduler(prediction_type="noise")
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="prediction_type"):
        s.step(_rand(0), s.timesteps[0], _rand(1))
    s = DDIMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError):
        s.step(_rand(0), 1000, _rand(1))
    with pytest.raises(TypeError):
        s.step(np.zeros((2, 2), np.int32), 10, _rand(1))
