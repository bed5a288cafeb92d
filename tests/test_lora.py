"""LoRA adapters against diffusers + peft (tests/fixtures/lora, made by tests/reference/make_lora_fixtures.py):
transformer outputs within 1e-4 relative of diffusers' unfused at scale 1.0 and 0.5, with set_adapters weights,
three adapters mixed, after fuse_lora(lora_scale=0.5) and unfuse_lora; unload and unfuse give the base model's
numbers bit for bit; the same numbers on the emulated device under model and sequential offload; the adapter's
bytes in memory_stats and in the residency's groups; host RSS grows by about the adapter; every bad input a clear
error before any work."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_offload import apply

import cogvideo_c
from cogvideo_c import _C, cli
from fixture_cases import compare_abs, compare_rel, short_fuzz_run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LORA = FIXTURES / "lora"
PIPE_DIR = FIXTURES / "pipeline" / "tiny_5b"
MANIFEST = json.loads((LORA / "manifest.json").read_text())
ARRAYS = dict(np.load(LORA / "lora.npz"))
REL = MANIFEST["tolerance"]["transformer_rel"]
REF = "diffusers + peft (tests/fixtures/lora)"
CASES = {c["name"]: c for c in MANIFEST["cases"]}


def transformer():
    return cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(str(PIPE_DIR), subfolder="transformer")


def forward(tr, scale=None):
    kw = {} if scale is None else dict(attention_kwargs={"scale": scale})
    a = ARRAYS
    return tr(a["in_hidden"], a["in_text"], a["in_timestep"], image_rotary_emb=(a["in_cos"], a["in_sin"]),
              return_dict=False, **kw)[0]  # fmt: skip


def replay(target, steps):
    """The case's calls, on a transformer or a pipeline (both have these methods with diffusers' names)."""
    for step in steps:
        op, args = step[0], step[1:]
        if op == "load":
            load = target.load_lora_weights if hasattr(target, "load_lora_weights") else target.load_lora_adapter
            load(str(LORA / args[0]), adapter_name=args[0])
        elif op == "set_adapters":
            target.set_adapters(args[0], args[1])
        elif op == "fuse_lora":
            target.fuse_lora(lora_scale=args[0])
        elif op == "unfuse_lora":
            target.unfuse_lora()
        elif op == "unload_lora_weights":
            (target.unload_lora_weights if hasattr(target, "unload_lora_weights") else target.unload_lora)()
        else:
            raise AssertionError(op)


@pytest.mark.parametrize("name", list(CASES))
def test_transformer_matches_diffusers(name):
    case = CASES[name]
    tr = transformer()
    replay(tr, case["steps"])
    compare_rel(name, forward(tr, case["scale"]), ARRAYS[case["out_key"]], REL, REF)


def test_pipeline_methods_match_diffusers_and_list_adapters():
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(PIPE_DIR))
    case = CASES["mix"]
    replay(pipe, case["steps"][:2])
    assert pipe.get_active_adapters() == MANIFEST["active_after_two_loads"] == ["alpha"]  # the last one loaded
    replay(pipe, case["steps"][2:])
    assert pipe.get_list_adapters() == {"transformer": ["attn", "alpha", "wide"]}
    assert pipe.get_active_adapters() == ["attn", "alpha", "wide"]
    compare_rel("mix (pipeline methods)", forward(pipe.transformer, case["scale"]), ARRAYS[case["out_key"]], REL, REF)
    assert pipe.transformer.peft_config["alpha"]["lora_alpha"] == 8 and pipe.transformer.peft_config["attn"]["r"] == 4
    pipe.delete_adapters("alpha")
    assert pipe.get_list_adapters() == {"transformer": ["attn", "wide"]}
    pipe.set_adapters(["attn", "wide"], [0.7, 1.2])
    pipe.disable_lora()
    compare_rel("disabled", forward(pipe.transformer), ARRAYS["base__out"], REL, REF)
    pipe.enable_lora()
    assert not np.array_equal(forward(pipe.transformer), ARRAYS["base__out"])
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {} and pipe.get_active_adapters() == []


def test_unload_and_unfuse_give_back_the_base_bit_for_bit():
    tr = transformer()
    base = forward(tr)
    weights = [tr._core.weight_data(i) for i in range(len(tr._core.weight_info()))]
    replay(tr, CASES["mix"]["steps"])
    unfused = forward(tr)
    tr.fuse_lora()  # lora_scale 1: the adapters' weights stay as they were
    fused = forward(tr, 0.8)  # merged: a call's scale no longer applies (as peft's merged layers)
    assert not np.array_equal(fused, base)
    compare_rel("fused vs unfused", fused, unfused, REL, "the unfused adapters")
    tr.unfuse_lora()
    # the weights point at the untouched checkpoint bytes again: exactly, unlike diffusers' subtraction
    assert np.array_equal(forward(tr), unfused)
    assert all(np.array_equal(tr._core.weight_data(i), w) for i, w in enumerate(weights))
    tr.unload_lora()
    assert np.array_equal(forward(tr), base)
    assert tr.lora_bytes == 0 and _C.residency_info(tr._core)["groups"] == _groups_of(transformer())


def _groups_of(tr):
    return _C.residency_info(tr._core)["groups"]


def _adapter_bytes(name):
    """What the adapter's tensors take in the model's layout: every lora_A/B of its file in float32, each tensor
    64-byte aligned (an outside count from the file's own header)."""
    index = _C.safetensors_index(str(LORA / name / "pytorch_lora_weights.safetensors"))
    return sum((int(np.prod(shape)) * 4 + 63) // 64 * 64 for _, shape in index.values())


def test_memory_stats_and_groups_hold_the_adapter_bytes():
    tr = transformer()
    before_stats = cogvideo_c.memory_stats()["lora_bytes.current"]
    before = [b for b, _ in _groups_of(tr)]
    tr.load_lora_adapter(str(LORA / "wide"), adapter_name="wide")
    want = _adapter_bytes("wide")
    assert tr.lora_bytes == want
    assert cogvideo_c.memory_stats()["lora_bytes.current"] - before_stats == want
    after = [b for b, _ in _groups_of(tr)]
    # group 0 (proj_out) and every block group grow: the adapter streams with the block it modifies
    assert all(a > b for a, b in zip(after, before)) and sum(after) - sum(before) == want
    tr.fuse_lora()
    fused_bytes = tr.lora_bytes - want
    assert fused_bytes > 0 and cogvideo_c.memory_stats()["lora_bytes.current"] - before_stats == tr.lora_bytes
    tr.unload_lora()  # the fused copies stay (as diffusers keeps fused weights); the adapter's tensors go
    assert tr.lora_bytes == fused_bytes and [b for b, _ in _groups_of(tr)] == before
    del tr
    assert cogvideo_c.memory_stats()["lora_bytes.current"] == before_stats


def mixed_on(device, strategy):
    """(a CPU transformer and its output with the three adapters mixed; a pipeline with the same adapters on
    `device` under `strategy`)."""
    cpu = transformer()
    replay(cpu, CASES["mix"]["steps"])
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(PIPE_DIR))
    replay(pipe, CASES["mix"]["steps"])
    apply(pipe, strategy, device)
    return cpu, forward(cpu, 0.8), pipe


@pytest.mark.parametrize("strategy", ["none", "model", "sequential", "auto"])
def test_emulated_device_and_offload_give_the_cpu_numbers(strategy):
    cpu, want, pipe = mixed_on("emu", strategy)
    assert np.array_equal(forward(pipe.transformer, 0.8), want)
    if strategy == "sequential":
        info = _C.residency_info(pipe.transformer._core)
        assert info["copies"] >= len(info["groups"]) - 1  # the block groups were streamed, adapters inside them
    # changing adapters while on the device re-lays the groups out; the numbers follow
    pipe.fuse_lora(lora_scale=0.5)
    replay(cpu, [["fuse_lora", 0.5]])
    assert np.array_equal(forward(pipe.transformer), forward(cpu))
    pipe.unload_lora_weights()
    cpu.unload_lora()
    assert np.array_equal(forward(pipe.transformer), forward(cpu))


def test_whole_pipeline_matches_diffusers_frames():
    c = MANIFEST["pipeline_case"]
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(PIPE_DIR))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(LORA / c["adapter"]), adapter_name=c["adapter"])
    pipe.set_adapters(c["adapter"], c["weight"])
    frames = pipe(**c["kwargs"], latents=ARRAYS[c["latents_key"]], output_type="np").frames
    compare_abs("pipeline frames", frames, ARRAYS[c["frames_key"]], MANIFEST["tolerance"]["frames_max_abs"], REF)


def test_cli_lora_path_scale(tmp_path, capsys):
    out = tmp_path / "v.gif"
    argv = ["generate", "--model", str(PIPE_DIR), "--steps", "2", "--frames", "9", "--height", "16", "--width", "32",
            "--output", str(out), "--lora", f"{LORA / 'attn'}:0.8"]  # fmt: skip
    written = []
    for lora in (["--lora", f"{LORA / 'attn'}:0.8"], ["--lora", f"{LORA / 'attn'}:0"], []):
        assert cli.main(argv[:-2] + lora) == 0
        written.append(out.read_bytes())
    # weight 0 leaves the base model's frames (the same GIF bytes); 0.8 changes them
    assert written[1] == written[2] and written[0] != written[2]
    assert cli.main(argv[:-2] + ["--lora", f"{LORA / 'attn'}:x"]) == 2
    assert "SCALE after the last ':' must be a number" in capsys.readouterr().err
    assert cli.main(argv[:-2] + ["--lora", str(tmp_path / "nothing")]) == 2
    assert "no LoRA file or folder" in capsys.readouterr().err


# ---- bad input ---------------------------------------------------------------------------------------------------


def _write(tmp_path, tensors, metadata=None):
    from cogvideo_c.safetensors_io import save_file

    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path), metadata)
    return path


def _pair(module, r, in_f, out_f, prefix="transformer."):
    return {f"{prefix}{module}.lora_A.weight": np.zeros((r, in_f)),
            f"{prefix}{module}.lora_B.weight": np.zeros((out_f, r))}  # fmt: skip


Q = "transformer_blocks.0.attn1.to_q"  # 32 -> 32 in the tiny 5b model


def test_keys_the_model_lacks_are_all_named(tmp_path, cpu_memory_checked):
    tr = transformer()
    path = _write(tmp_path, {**_pair(Q, 2, 32, 32), **_pair("transformer_blocks.7.attn1.to_q", 2, 32, 32),
                             **_pair("transformer_blocks.0.attn1.to_z", 2, 32, 32),
                             **_pair("patch_embed.proj", 2, 16, 32)})  # fmt: skip
    with pytest.raises(ValueError, match=r"3 module\(s\) the transformer lacks") as err:
        tr.load_lora_adapter(str(path))
    for m in ("transformer_blocks.7.attn1.to_q", "transformer_blocks.0.attn1.to_z", "patch_embed.proj"):
        assert f"'transformer.{m}'" in str(err.value)
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


@pytest.mark.parametrize(
    "tensors, match",
    [
        (_pair(Q, 2, 31, 32), r"lora_A \[2, 31\] / lora_B \[32, 2\], expected \[2, 32\] / \[32, 2\]"),
        (_pair(Q, 2, 32, 16), r"lora_B \[16, 2\], expected \[2, 32\] / \[32, 2\]"),
        ({f"transformer.{Q}.lora_A.weight": np.zeros((2, 32)), f"transformer.{Q}.lora_B.weight": np.zeros((32, 3))},
         r"lora_A \[2, 32\] / lora_B \[32, 3\]"),
        ({f"transformer.{Q}.lora_A.weight": np.zeros((2, 32))}, r"lora_A.weight without its lora_B.weight"),
        ({**_pair(Q, 2, 32, 32), f"transformer.{Q}.lora_magnitude_vector": np.zeros(32)}, r"is DoRA.*magnitude"),
        ({**_pair(Q, 2, 32, 32), f"transformer.{Q}.lora_B.bias": np.zeros(32)}, r"lora_bias.*lora_B.bias"),
        ({**_pair(Q, 2, 32, 32), f"transformer.{Q}.alpha": np.zeros(1)}, r"all LoRA param names contain"),
    ],
)  # fmt: skip
def test_wrong_shapes_and_formats_are_refused(tmp_path, tensors, match, cpu_memory_checked):
    tr = transformer()
    with pytest.raises(ValueError, match=match):
        tr.load_lora_adapter(str(_write(tmp_path, tensors)))
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


def test_metadata_rank_that_the_tensors_contradict(tmp_path):
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 4})}
    tr = transformer()
    with pytest.raises(ValueError, match=r"expected \[4, 32\] / \[32, 4\] \(rank 4"):
        tr.load_lora_adapter(str(_write(tmp_path, _pair(Q, 2, 32, 32), meta)))
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 2, "transformer.use_dora": True})}
    with pytest.raises(ValueError, match=r"DoRA \(use_dora\)"):
        tr.load_lora_adapter(str(_write(tmp_path, _pair(Q, 2, 32, 32), meta)))


def test_names_and_other_components(tmp_path):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(PIPE_DIR))
    pipe.load_lora_weights(str(LORA / "attn"), adapter_name="attn")
    with pytest.raises(ValueError, match="Adapter name attn already in use in the model"):
        pipe.load_lora_weights(str(LORA / "alpha"), adapter_name="attn")
    with pytest.raises(ValueError, match=r"Adapter name\(s\) \{'nope'\} not in the list of present adapters"):
        pipe.set_adapters(["attn", "nope"], [1.0, 0.5])
    with pytest.raises(ValueError, match="Length of adapter names 2 is not equal"):
        pipe.set_adapters(["attn", "attn"], [1.0])
    with pytest.raises(ValueError, match=r"text_encoder is not found in self._lora_loadable_modules"):
        pipe.fuse_lora(components=["text_encoder"])
    # a text-encoder LoRA: diffusers' CogVideoX loader reads the transformer's keys only
    path = _write(tmp_path, {**_pair(Q, 2, 32, 32), **_pair("encoder.block.0.layer.0.SelfAttention.q", 2, 8, 8,
                                                                   prefix="text_encoder.")})  # fmt: skip
    with pytest.warns(UserWarning, match=r"keys under \['text_encoder'\] are ignored"):
        pipe.load_lora_weights(str(path))
    assert pipe.get_list_adapters() == {"transformer": ["attn", "default_1"]}
    with pytest.raises(FileNotFoundError, match="no LoRA file 'pytorch_lora_weights.safetensors'"):
        pipe.load_lora_weights(str(PIPE_DIR))
    with pytest.raises(ValueError, match="finite"):
        forward(pipe.transformer, float("nan"))


def test_safe_fusing_refuses_non_finite_weights(tmp_path):
    t = _pair(Q, 2, 32, 32)
    t[f"transformer.{Q}.lora_B.weight"][0, 0] = np.inf
    tr = transformer()
    tr.load_lora_adapter(str(_write(tmp_path, t)), adapter_name="bad")
    with pytest.raises(ValueError, match="NaNs detected in the merged weights. The adapter bad seems to be broken"):
        tr.fuse_lora(safe_fusing=True)
    assert tr.lora_bytes == _adapter_bytes_of(t)  # nothing fused


def _adapter_bytes_of(tensors):
    return sum((v.size * 4 + 63) // 64 * 64 for v in tensors.values())


def test_state_dict_input_and_lora_state_dict():
    sd, meta = cogvideo_c.CogVideoXPipeline.lora_state_dict(str(LORA / "alpha"), return_lora_metadata=True)
    assert meta["transformer.lora_alpha"] == 8 and len(sd) == MANIFEST["adapters"]["alpha"]["keys"]
    tr = transformer()
    tr.load_lora_adapter(sd, adapter_name="alpha", metadata=meta)
    tr.set_adapters("alpha", 0.5)
    compare_rel("alpha from a dict", forward(tr), ARRAYS["alpha_w05__out"], REL, REF)


# ---- found by tests/fuzz/fuzz_lora.py ----------------------------------------------------------------------------


def _raw(tmp_path, header, data=b"\0" * 512, length=None):
    """A safetensors file written byte by byte (the writers refuse what these tests need): the header dict (or
    bytes), the data, and the length field (default: the header's)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return str(path)


RAW_Q = {f"transformer.{Q}.lora_A.weight": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]},
         f"transformer.{Q}.lora_B.weight": {"dtype": "F32", "shape": [32, 2], "data_offsets": [256, 512]}}  # fmt: skip


@pytest.mark.parametrize(
    "header, length, error, match",
    [
        # read in Python before the C core had checked it: MemoryError / OverflowError from f.read(length)
        (RAW_Q, 2**63, OSError, "header length 9223372036854775808 is implausibly large"),
        (RAW_Q, 2**40, OSError, "header length 1099511627776 is implausibly large"),
        # a TypeError from json.loads(a dict)
        ({**RAW_Q, "__metadata__": {"lora_adapter_metadata": {"r": 2}}}, None, OSError,
         r"a \"__metadata__\" value \(header byte \d+\) is an object, not a string"),
        # a RecursionError from json.loads
        ({**RAW_Q, "__metadata__": {"lora_adapter_metadata": "[" * 100000 + "]" * 100000}}, None, ValueError,
         "its 'lora_adapter_metadata' metadata is not JSON .maximum recursion depth"),
    ],
)  # fmt: skip
def test_the_header_is_read_only_after_the_core_checked_it(tmp_path, header, length, error, match, cpu_memory_checked):
    tr = transformer()
    path = _raw(tmp_path, header, length=length)
    with pytest.raises(error, match=match):
        tr.load_lora_adapter(path)
    with pytest.raises(error, match=match):
        cogvideo_c.CogVideoXPipeline.lora_state_dict(path)
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


@pytest.mark.parametrize(
    "meta, match",
    [
        # AttributeError: 'list' object has no attribute 'keys'
        ({"transformer.r": 2, "transformer.rank_pattern": [2]}, r"rank_pattern \[2\]; it must be an object"),
        ({"transformer.r": 2, "transformer.alpha_pattern": 3}, r"alpha_pattern 3; it must be an object"),
        # re.error / OverflowError from re.match over the patterns
        ({"transformer.r": 2, "transformer.rank_pattern": {"(": 2}}, r"rank_pattern key '\(', which is not a regular"),
        ({"transformer.r": 2, "transformer.alpha_pattern": {"a{99999999999}": 2}}, r"key 'a\{99999999999\}', which"),
        # TypeError: unsupported operand type(s) for /
        ({"transformer.r": 2, "transformer.lora_alpha": "2"}, r"lora_alpha '2'; it must be a finite number"),
        ({"transformer.r": 2, "transformer.alpha_pattern": {"to_q": None}}, r"lora_alpha None; it must be a finite"),
        # OverflowError: int too large to convert to float / integer division result too large for a float
        ({"transformer.r": 2, "transformer.lora_alpha": 10**400}, r"lora_alpha 1000+; it must be a finite number"),
        ({"transformer.r": 10**400, "transformer.use_rslora": True}, r"rank 1000+; ranks are integers from 1 to"),
        ({"transformer.r": True}, r"rank True; ranks are integers from 1 to 1048576"),
    ],
)  # fmt: skip
def test_metadata_values_of_the_wrong_kind_are_value_errors(tmp_path, meta, match, cpu_memory_checked):
    tr = transformer()
    path = _write(tmp_path, _pair(Q, 2, 32, 32), {"lora_adapter_metadata": json.dumps(meta)})
    with pytest.raises(ValueError, match=match):
        tr.load_lora_adapter(str(path))
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


@pytest.mark.filterwarnings("ignore:.*keys under .* are ignored")
@pytest.mark.parametrize("header", [{}, {"text_encoder.x.lora_A.weight": RAW_Q[f"transformer.{Q}.lora_A.weight"]}])
def test_a_file_without_transformer_keys_loads_nothing_with_a_warning(tmp_path, header, cpu_memory_checked):
    """A StopIteration escaped deriving the rank of no modules (diffusers warns and loads nothing)."""
    tr = transformer()
    data = b"\0" * (256 if header else 0)
    with pytest.warns(UserWarning, match="no LoRA keys under prefix 'transformer'; nothing loaded"):
        tr.load_lora_adapter(_raw(tmp_path, header, data), adapter_name="empty")
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


def test_a_scalar_lora_b_is_a_shape_error(tmp_path, cpu_memory_checked):
    """An IndexError escaped reading the rank (the last dimension) of a 0-D lora_B."""
    header = {**RAW_Q, f"transformer.{Q}.lora_B.weight": {"dtype": "F32", "shape": [], "data_offsets": [256, 260]}}
    tr = transformer()
    with pytest.raises(ValueError, match=r"lora_A \[2, 32\] and lora_B \[\] must be 2-D"):
        tr.load_lora_adapter(_raw(tmp_path, header, b"\0" * 260))
    assert tr.peft_config == {} and tr.lora_bytes == 0
    del tr


def test_a_short_lora_fuzz_run_finds_nothing():
    """tests/fuzz/fuzz_lora.py (mutated adapter files through load / set_adapters / a step / fuse / unfuse /
    unload), briefly."""
    short_fuzz_run("fuzz_lora", 60)


CHILD = r"""
import json, sys

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

import cogvideo_c, numpy
from cogvideo_c.safetensors_io import save_file
rng = numpy.random.default_rng(0)
tr = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(sys.argv[1])
names = [n for n, _, s in tr._core.weight_info() if n.endswith(".weight") and len(s) == 2 and "ff.net" in n]
shapes = {n: s for n, _, s in tr._core.weight_info()}
sd = {}
for n in names:
    out_f, in_f = shapes[n]
    sd["transformer." + n[:-7] + ".lora_A.weight"] = rng.standard_normal((128, in_f), dtype=numpy.float32)
    sd["transformer." + n[:-7] + ".lora_B.weight"] = rng.standard_normal((out_f, 128), dtype=numpy.float32) * 1e-3
save_file(sd, sys.argv[2])
del sd
weights = tr.weight_bytes
c = tr.config
h = numpy.zeros((1, 2, c.in_channels, 4, 4), numpy.float32)
e = numpy.zeros((1, c.max_text_seq_length, c.text_embed_dim), numpy.float32)
rope = tr.rotary_positional_embeddings(32, 32, 2) if c.use_rotary_positional_embeddings else None
tr(h, e, 1.0, image_rotary_emb=rope)  # the arena and every base weight touched once
before = rss()
tr.load_lora_adapter(sys.argv[2], adapter_name="big")
tr(h, e, 1.0, image_rotary_emb=rope)  # the adapter's pages read
x = tr.lora_bytes
after = rss()
print(json.dumps({"grew": after - before, "adapter": x, "weights": weights}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the RSS probes read Linux's /proc")
def test_loading_grows_host_rss_by_about_the_adapter(tmp_path):
    from cogvideo_c.tiny import make_tiny_pipeline

    folder = make_tiny_pipeline(str(tmp_path / "pipe"), transformer={"num_attention_heads": 8,
                                "attention_head_dim": 64, "num_layers": 2, "time_embed_dim": 512})  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", CHILD, os.path.join(folder, "transformer"),
                           str(tmp_path / "lora.safetensors")], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["weights"] > 40 * 2**20 and got["adapter"] > 4 * 2**20, got  # the model is 10x the adapter
    # the adapter once (read in place from its page-cached file) and a little bookkeeping; a copy of the model
    # (the weights, 40+ MiB) would break it
    print(
        f"RSS grew {got['grew'] / 2**20:.2f} MiB loading a {got['adapter'] / 2**20:.2f} MiB adapter on a "
        f"{got['weights'] / 2**20:.1f} MiB model"
    )
    assert 0.9 * got["adapter"] <= got["grew"] <= 1.1 * got["adapter"] + 4 * 2**20, got


@pytest.mark.cuda
@pytest.mark.skipif(not cogvideo_c.build_info().get("cuda"), reason="no CUDA device in this build")
@pytest.mark.parametrize("strategy", ["none", "sequential"])
def test_cuda_matches_cpu(strategy):
    _, want, pipe = mixed_on("cuda", strategy)
    compare_rel(f"cuda {strategy}", forward(pipe.transformer, 0.8), want, REL, "the CPU backend")
    compare_rel(f"cuda {strategy} vs diffusers", forward(pipe.transformer, 0.8), ARRAYS["mix__out"], REL, REF)
    pipe.fuse_lora(lora_scale=0.5)
    compare_rel("cuda fused", forward(pipe.transformer), ARRAYS["fused_05__out"], REL, REF)
