"""The offload strategies on the emulated accelerator ("emu") and on the CPU: the same frames bit for bit under every
strategy, device peaks the memory manager measures against the bounds each strategy promises, no device allocation
between denoising steps, diffusers' rules for enabling, switching and moving, and auto's budget.

The outside truth for the frames is the `none` run on the CPU (itself matched against diffusers by the parity
suites); for the peaks it is arithmetic on the weight-group sizes and the arena sizes the models report."""

import gc
import re

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import _C
from cogvideo_c.tiny import make_tiny_pipeline

# a mid-size pipeline: more layers and heads than the tiny one, so a block group is a small part of the model
MID = {"transformer": {"num_layers": 6, "num_attention_heads": 4}, "text_encoder": {"num_layers": 3}}
STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        "tiny": make_tiny_pipeline(str(tmp_path_factory.mktemp("tiny"))),
        "mid": make_tiny_pipeline(str(tmp_path_factory.mktemp("mid")), **MID),
        "deep": make_tiny_pipeline(str(tmp_path_factory.mktemp("deep")), transformer={"num_layers": 8}),
    }


@pytest.fixture(autouse=True)
def emu_baseline():
    """Device peaks are device-wide: each test starts from an emulated device that pipelines of earlier tests have
    left (the chain holds no reference cycle, so a dropped pipeline frees its device copies at once)."""
    gc.collect()
    yield cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"]


def load(folder, vae_mode="plain"):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if vae_mode == "slicing":
        pipe.vae.enable_slicing()
    elif vae_mode == "tiling":  # tiles smaller than the 64x64 frames, so decode really runs tiled
        pipe.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
    return pipe


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(prompt=["a cat", "a dog"], generator=0, output_type="np", **kwargs).frames


def apply(pipe, strategy, device):
    if strategy == "none":
        pipe.to(device)
    elif strategy == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif strategy == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif strategy == "group":
        pipe.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    elif strategy == "auto":
        pipe.enable_auto_offload(max_memory="1GB", device=device)
    else:
        raise AssertionError(strategy)


STRATEGIES = ("none", "model", "sequential", "auto", "group")  # group last: diffusers has no way back from it


@pytest.mark.parametrize("size", ["tiny", "mid"])
@pytest.mark.parametrize("vae_mode", ["plain", "slicing", "tiling"])
def test_every_strategy_gives_the_same_frames_bit_for_bit(folders, size, vae_mode, recwarn):
    reference = run(load(folders[size], vae_mode))
    for device in ("emu", "cpu"):
        pipe = load(folders[size], vae_mode)
        for strategy in STRATEGIES:  # one pipeline switched from strategy to strategy, as a user would
            apply(pipe, strategy, device)
            got = run(pipe)
            assert np.array_equal(got, reference), (size, vae_mode, device, strategy)
        pipe.maybe_free_model_hooks()


def _info(model):
    return _C.residency_info(model._core)


def _groups(model):
    return [b for b, _ in _info(model)["groups"]]


def _stage_peaks(pipe):
    return {stage: rec for stage, rec in pipe.memory_report().items()}


def test_none_holds_every_weight_and_one_stage_arena(folders):
    pipe = load(folders["mid"])
    pipe.to("emu")
    run(pipe)
    weights = sum(m.weight_bytes for m in (pipe.text_encoder, pipe.transformer, pipe.vae))
    report = pipe.memory_report()
    for stage, rec in report.items():
        print(stage, rec)
        assert rec["device_peak_weights_bytes"] == weights, stage
        assert rec["device_peak_bytes"] == weights + rec["device_peak_activations_bytes"], stage
        assert rec["bytes_copied"] == 0, stage  # everything was brought in by to(), once
    largest = max(rec["device_peak_activations_bytes"] for rec in report.values())
    assert max(rec["device_peak_bytes"] for rec in report.values()) == weights + largest
    pipe.to("cpu")


def test_model_offload_holds_one_component_and_its_arena(folders):
    pipe = load(folders["mid"])
    pipe.enable_model_cpu_offload(device="emu")
    run(pipe)
    report = pipe.memory_report()
    models = {"encode_prompt": pipe.text_encoder, "denoise": pipe.transformer, "decode": pipe.vae}
    for stage, rec in report.items():
        print(stage, rec)
        model = models[stage]
        assert rec["device_peak_weights_bytes"] == model.weight_bytes, stage
        assert rec["device_peak_bytes"] <= 1.05 * (model.weight_bytes + rec["device_peak_activations_bytes"])
        assert rec["bytes_copied"] == model.weight_bytes, stage  # one pass per call, not per step
    # maybe_free_model_hooks: after the call no weight of this pipeline is on the device
    assert all(_info(m)["resident_bytes"] == 0 for m in (pipe.text_encoder, pipe.transformer, pipe.vae))


@pytest.mark.parametrize(
    "offload_type,blocks,use_stream,ring",
    [("leaf_level", None, False, 1), ("leaf_level", None, True, 2), ("block_level", 2, True, 4)],
)
def test_sequential_holds_a_ring_of_block_groups(folders, offload_type, blocks, use_stream, ring):
    pipe = load(folders["mid"])
    pipe.enable_group_offload("emu", offload_type=offload_type, num_blocks_per_group=blocks, use_stream=use_stream)
    run(pipe)
    assert _info(pipe.transformer)["policy"] == "sequential"
    report = pipe.memory_report()
    for stage, model in (("encode_prompt", pipe.text_encoder), ("denoise", pipe.transformer)):
        groups = _groups(model)
        slots = min(ring, len(groups) - 1)  # a ring never has more slots than the component has blocks
        bound = slots * max(groups[1:]) + groups[0]
        rec = report[stage]
        print(stage, slots, rec["device_peak_weights_bytes"], bound)
        assert rec["device_peak_weights_bytes"] == bound, stage
        assert rec["device_peak_bytes"] <= 1.05 * (bound + rec["device_peak_activations_bytes"])
    # every block group comes in once per step (the ring's first groups carry over from one step to the next)
    groups = _groups(pipe.transformer)
    assert report["denoise"]["bytes_copied"] >= STEPS * sum(groups[1:]) - ring * max(groups[1:])
    pipe.to("cpu")


def test_sequential_peak_does_not_grow_with_depth(folders):
    peaks = {}
    for size in ("tiny", "deep"):  # 2 and 8 layers
        pipe = load(folders[size])
        pipe.enable_sequential_cpu_offload(device="emu")
        run(pipe, num_inference_steps=2)
        peaks[size] = pipe.memory_report()["denoise"]["device_peak_bytes"]
    print(peaks)
    assert peaks["deep"] <= 1.1 * peaks["tiny"]


@pytest.mark.parametrize("strategy", ["none", "model", "sequential", "auto"])
def test_no_device_allocation_between_denoising_steps(folders, strategy):
    pipe = load(folders["mid"])
    apply(pipe, strategy, "emu")
    counts = []

    def count(pipe_, step, timestep, kwargs):
        counts.append(cogvideo_c.memory_stats("emu")["allocation.all.allocated"])
        return kwargs

    run(pipe, num_inference_steps=5, callback_on_step_end=count)
    print(strategy, counts)
    assert len(counts) == 5 and len(set(counts[1:])) == 1, counts  # steps 2..N allocate nothing on the device


def test_enabling_twice_and_switching_follow_diffusers(folders):
    pipe = load(folders["tiny"])
    reference = run(pipe)
    pipe.enable_model_cpu_offload(device="emu")
    pipe.enable_model_cpu_offload(device="emu")  # twice: the same hooks again
    assert np.array_equal(run(pipe), reference)
    pipe.enable_sequential_cpu_offload(device="emu")  # switching replaces the hooks
    assert _info(pipe.transformer)["policy"] == "sequential"
    with pytest.raises(ValueError, match="activated sequential model offloading"):
        pipe.to("emu")
    pipe.to("cpu")  # allowed; the hooks stay and bring the weights back on the next call
    assert np.array_equal(run(pipe), reference)
    pipe.enable_model_cpu_offload(device="emu")
    with pytest.warns(UserWarning, match="memory gains from offloading are lost"):
        pipe.to("emu")
    assert pipe._offload is None and _info(pipe.transformer)["policy"] == "none" and pipe.device == "emu"
    assert np.array_equal(run(pipe), reference)
    pipe.enable_group_offload("emu", offload_type="leaf_level")
    with pytest.raises(ValueError, match="group offloading enabled"):
        pipe.enable_model_cpu_offload(device="emu")
    with pytest.raises(ValueError, match="group offloading enabled"):
        pipe.enable_sequential_cpu_offload(device="emu")
    pipe.to("cpu")


def test_offload_argument_errors(folders):
    pipe = load(folders["tiny"])
    if not cogvideo_c.cuda_is_available():
        with pytest.raises(ValueError, match="this build has no CUDA backend|no CUDA device is present"):
            pipe.enable_model_cpu_offload(device="cuda")
    with pytest.raises(ValueError, match="both `gpu_id`=0 and an index"):
        pipe.enable_sequential_cpu_offload(gpu_id=0, device="emu:0")
    with pytest.raises(ValueError, match="num_blocks_per_group"):
        pipe.enable_group_offload("emu", offload_type="block_level")
    with pytest.raises(ValueError, match="offload_device must be the CPU"):
        pipe.enable_group_offload("emu", offload_device="emu", offload_type="leaf_level")
    with pytest.raises(ValueError, match="6 apples"):
        pipe.enable_auto_offload(max_memory="6 apples")
    info = cogvideo_c.build_info()
    if not info["cuda"] or info.get("cuda_emulated"):  # with a GPU, diffusers' default: cuda:0
        with pytest.warns(UserWarning, match="no accelerator in this build"):
            pipe.enable_model_cpu_offload()  # a diffusers script on a CPU-only machine runs unchanged
        assert pipe._offload.device == "cpu"


def test_auto_keeps_everything_resident_when_it_fits(folders, capsys):
    pipe = load(folders["mid"])
    before = cogvideo_c.memory_stats("emu")["weights_bytes.current"]
    pipe.enable_auto_offload(max_memory="1GB", device="emu")
    run(pipe)
    assert "every component stays on the device" in capsys.readouterr().err
    held = cogvideo_c.memory_stats("emu")["weights_bytes.current"] - before
    assert held == sum(m.weight_bytes for m in (pipe.text_encoder, pipe.transformer, pipe.vae))
    run(pipe)  # a second call reloads nothing
    assert all(rec["bytes_copied"] == 0 for rec in pipe.memory_report().values())
    pipe.to("cpu")


def test_auto_picks_streaming_under_a_tight_budget_and_stays_within_it(folders, capsys, emu_baseline):
    from cogvideo_c.offload import stage_need

    pipe = load(folders["mid"], "tiling")  # small tiles: the decode's arena is not what decides
    reference = run(pipe)
    te, tr, vae = pipe.text_encoder, pipe.transformer, pipe.vae
    # what each stage needs, from the models' own group sizes and measured arenas (batch 2 with guidance: 4 rows)
    arenas = {
        "te": te.arena_bytes((2, 226)),
        "tr": tr.arena_bytes((4, 3, 4, 8, 8), (4, 226)),
        "vae": vae.arena_bytes((2, 4, 3, 8, 8)),
    }
    whole = {k: stage_need(_info(m), "model", 0, arenas[k]) for k, m in (("te", te), ("tr", tr), ("vae", vae))}
    streamed = stage_need(_info(tr), "sequential", 1, arenas["tr"])
    budget = max(streamed, whole["te"], whole["vae"])
    assert budget < whole["tr"]  # the transformer cannot come in whole: auto must stream it
    pipe.enable_auto_offload(max_memory=budget, device="emu")
    got = run(pipe)
    printed = capsys.readouterr().err
    print(printed)
    assert "transformer sequential (prefetch 1)" in printed
    assert np.array_equal(got, reference)
    for stage, rec in pipe.memory_report().items():
        assert rec["device_peak_bytes"] - emu_baseline <= budget, (stage, rec["device_peak_bytes"], budget)
    pipe.to("cpu")


def test_auto_refuses_an_impossible_budget_before_any_work(folders, emu_baseline):
    pipe = load(folders["tiny"])
    steps = []
    before = cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"]
    pipe.enable_auto_offload(max_memory=4096, device="emu")
    with pytest.raises(
        cogvideo_c.OutOfMemoryError, match=r"the smallest budget that fits is .* \((\d+) bytes\)"
    ) as err:
        run(pipe, callback_on_step_end=lambda *a: steps.append(1) or a[-1])
    assert steps == [] and pipe.memory_report() is None  # not one stage ran
    assert cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"] == before
    # the budget it names is enough: the run fits in it
    smallest = int(re.search(r"fits is .*? \((\d+) bytes\)", err.value.args[0]).group(1))
    pipe.enable_auto_offload(max_memory=smallest, device="emu")
    run(pipe)
    assert max(rec["device_peak_bytes"] for rec in pipe.memory_report().values()) - emu_baseline <= smallest
    pipe.to("cpu")


def test_a_transformer_without_blocks_runs_under_every_residency():
    """num_layers = 0 is a valid config: its pass over the block groups is empty, and every policy gives the CPU's
    numbers."""
    from cogvideo_c.tiny import TINY_TRANSFORMER_CONFIG

    tr = cogvideo_c.CogVideoXTransformer3DModel.from_config(dict(TINY_TRANSFORMER_CONFIG, num_layers=0))
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 8, 8), dtype=np.float32)
    text = np.random.default_rng(1).standard_normal((1, 226, 32), dtype=np.float32)
    want = tr(x, text, [10]).sample
    for policy in ("none", "model", "sequential"):
        _C.residency_set(tr._core, "emu", policy, 1)
        assert np.array_equal(tr(x, text, [10]).sample, want), policy
    tr.to("cpu")


def test_review_fixes_device_interrupt_groups_moves_and_budget_text(folders, emu_baseline, capsys):
    """pipe.device is "cpu" while offloaded (as diffusers reports it); an interrupt between steps leaves no arena on
    the device; a group bigger than the model is the whole model; to() after group offload warns as diffusers and
    moves nothing; the smallest budget names the plan that budget gets; gpu_id=0 is diffusers' default index."""
    pipe = load(folders["tiny"])
    pipe.enable_model_cpu_offload(device="emu")
    run(pipe)
    assert pipe.device == "cpu" and pipe._execution_device == "emu"

    pipe.to("cpu")
    pipe._remove_offload()
    pipe.to("emu")
    weights = cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"] - emu_baseline

    def stop(pipe_, step, timestep, kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(pipe, callback_on_step_end=stop)
    assert cogvideo_c.memory_stats("emu")["allocated_bytes.all.current"] - emu_baseline == weights  # no arena

    reference = run(pipe)
    pipe.enable_group_offload("emu", num_blocks_per_group=1000, use_stream=True)
    assert np.array_equal(run(pipe), reference)
    with pytest.warns(UserWarning, match="is group offloaded and moving it to emu via .to.. is not supported"):
        pipe.to("emu")
    assert pipe._offload.policy == "group"

    fresh = load(folders["tiny"])
    fresh.enable_auto_offload(max_memory=1000, device="emu")
    with pytest.raises(cogvideo_c.OutOfMemoryError) as err:
        run(fresh)
    message = err.value.args[0]
    smallest = int(re.search(r"fits is .*? \((\d+) bytes\)", message).group(1))
    fresh.enable_auto_offload(max_memory=smallest, device="emu")
    capsys.readouterr()
    run(fresh)
    chosen = capsys.readouterr().err.split(": ", 2)[2].strip()
    assert chosen in message, (chosen, message)

    with pytest.warns(UserWarning, match="activated auto offloading"):
        fresh.to("emu")  # auto, like model offload: the components stay on the device, the strategy is gone
    assert fresh._offload is None
    fresh.enable_model_cpu_offload(gpu_id=0)  # the device the pipeline was moved to, index 0
    assert fresh._offload.device == "emu"
    with pytest.raises(ValueError, match="gpu_id must be"):
        fresh.enable_model_cpu_offload(gpu_id=0.0, device="emu")
    fresh.maybe_free_model_hooks()
