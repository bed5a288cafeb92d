"""Config values, forward tables and tokenizer files are checked against what the math needs (issue 7, items 2, 5,
7, 8, 9, 13 and 15): every bad value is a ValueError naming the file and key, raised before anything is built, in the
Python layer and again in the C core when the private _C entry points are called directly."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import configuration
from cogvideo_c._load import _C
from conftest import FIXTURES, VAE_FIXTURES

# `python -c` children run from here: from the checkout root, its unbuilt cogvideo_c/ would shadow an installed one
HERE = os.path.dirname(os.path.abspath(__file__))

T5_RELU = os.path.join(FIXTURES, "t5", "relu")
T5_WEIGHTS = os.path.join(T5_RELU, "model.safetensors")
TR_TINY = os.path.join(FIXTURES, "transformer", "t2b_tiny")
VAE_TINY = os.path.join(VAE_FIXTURES, "tiny")
BUCKETS = os.path.join(FIXTURES, "t5_edge_buckets")
TOK_DIR = os.path.join(FIXTURES, "tokenizer")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def copy_with_config(src, dst, **over):
    """A copy of a model folder whose config.json has `over` applied."""
    shutil.copytree(src, dst)
    cfg = read_json(os.path.join(dst, "config.json"))
    cfg.update(over)
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return str(dst)


# ---- item 8: config integers are exact or refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [
        (3.0, "must be an integer, got 3.0"),  # torch's range(3.0) fails in diffusers; transformers' configs refuse it
        ("3", "must be an integer, got '3'"),
        (True, "must be an integer, got True"),
        (None, "must be an integer, got None"),
        (2**31, r"= 2147483648 is larger than this implementation supports \(2147483647\)"),
        (2**32 + 8, "= 4294967304 is larger"),
        (0, "must be at least 1, got 0"),
    ],
)
def test_config_int_refuses_what_is_not_an_exact_c_int(value, message):
    with pytest.raises(ValueError, match=rf"^x/config.json: config 'layers_per_block' {message}"):
        configuration.config_int(value, "layers_per_block", 1, source="x/config.json")


def test_config_int_keeps_exact_values():
    assert configuration.config_int(np.int64(7), "k", 1) == 7
    assert configuration.config_int(2**31 - 1, "k") == 2**31 - 1


@pytest.mark.parametrize("value", [0.0, -1e-6, math.nan, math.inf, "1e-6", True])
def test_config_float_eps_must_be_positive_and_finite(value):
    with pytest.raises(ValueError, match="config 'norm_eps' must be a "):
        configuration.config_float(value, "norm_eps", positive=True)


def test_block_out_channels_past_c_int_is_refused_not_truncated(tmp_path):
    # it used to load as 8 (a long cast to int in module.c)
    folder = copy_with_config(VAE_TINY, tmp_path / "vae", block_out_channels=[2**32 + 8, 8, 8, 8])
    with pytest.raises(ValueError, match=r"config.json: config 'block_out_channels\[0\]' = 4294967304 is larger"):
        cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder)


def test_tile_sizes_past_c_int_are_refused_not_overflowed():
    # the "i" format used to raise OverflowError "signed integer is greater than maximum"
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(VAE_TINY)
    vae.enable_tiling(2**40, 64)
    with pytest.raises(ValueError, match=r"tiling 'tile_sample_min_height' = 1099511627776 does not fit a C int"):
        vae.decode(np.zeros((1, 4, 1, 4, 4), np.float32))


T5_FIELDS = dict(
    vocab_size=1103, d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=5, relative_attention_num_buckets=8,
    relative_attention_max_distance=128, gated=False, layer_norm_epsilon=1e-6, embedding_name="shared.weight",
)  # fmt: skip
VAE_FIELDS = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
    norm_num_groups=2, norm_eps=1e-6, temporal_compression_ratio=4,
)  # fmt: skip
TR_FIELDS = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    time_embed_dim=2, text_embed_dim=8, num_layers=2, attention_bias=True, patch_bias=True,
    norm_elementwise_affine=True, patch_size=2, max_text_seq_length=8, norm_eps=1e-5,
)  # fmt: skip


def test_c_configs_refuse_out_of_range_ints():
    """The _C constructors read every config int exactly: out of the C int range is a ValueError naming the key."""
    vae_cfg = dict(VAE_FIELDS, block_out_channels=(2**32 + 8, 8, 8, 8))
    with pytest.raises(ValueError, match=r"config 'block_out_channels' = 4294967304 does not fit a C int"):
        _C.VAE(vae_cfg, os.path.join(VAE_TINY, "diffusion_pytorch_model.safetensors"), "float32")
    with pytest.raises(ValueError, match=r"VAE config 'norm_eps' = 0 must be positive"):
        _C.VAE(
            dict(VAE_FIELDS, norm_eps=0.0),
            os.path.join(VAE_TINY, "diffusion_pytorch_model.safetensors"),
            "float32",
        )
    tr_cfg = dict(TR_FIELDS, num_attention_heads=2**31)
    with pytest.raises(ValueError, match=r"config 'num_attention_heads' = 2147483648 does not fit a C int"):
        _C.Transformer(tr_cfg, None, "float32")
    t5_cfg = dict(T5_FIELDS, relative_attention_max_distance=128.0)
    with pytest.raises(ValueError, match=r"config 'relative_attention_max_distance' must be an integer, got 128.0"):
        _C.T5(t5_cfg, T5_WEIGHTS, "float32")
    t5_cfg = dict(T5_FIELDS, layer_norm_epsilon=1e39)
    with pytest.raises(ValueError, match=r"config 'layer_norm_epsilon' = 1e\+39 is not a finite float32"):
        _C.T5(t5_cfg, T5_WEIGHTS, "float32")


# ---- item 2: T5 buckets and every model's config values -----------------------------------------------------------


@pytest.mark.parametrize(
    "over, key, message",
    [
        # transformers: max_exact = num_buckets // 4 divides -> ZeroDivisionError below 4 buckets
        (dict(relative_attention_num_buckets=2), "relative_attention_num_buckets", "must be at least 4, got 2"),
        (dict(relative_attention_num_buckets=3), "relative_attention_num_buckets", "must be at least 4, got 3"),
        # math.log(max_distance / max_exact): a math domain error at 0 and below
        (dict(relative_attention_max_distance=0), "relative_attention_max_distance", "must be at least 1, got 0"),
        # transformers' strict T5Config refuses a float there (it used to become 2 through int())
        (dict(relative_attention_max_distance=2.5), "relative_attention_max_distance", "must be an integer"),
        (dict(d_kv=0), "d_kv", "must be at least 1, got 0"),
        (dict(num_heads=2**31), "num_heads", "is larger than this implementation supports"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon", "must be a positive finite number"),
        (dict(vocab_size="1103"), "vocab_size", "must be an integer"),
        (dict(feed_forward_proj="gelu"), "feed_forward_proj", "is not supported"),
    ],
)
def test_t5_config_values_are_checked_with_file_and_key(tmp_path, over, key, message):
    folder = copy_with_config(T5_RELU, tmp_path / "t5", **over)
    with pytest.raises(ValueError, match=rf"{re.escape(folder)}/config.json: config '{key}'.*{message}"):
        cogvideo_c.T5EncoderModel.from_pretrained(folder)


@pytest.mark.parametrize("buckets", [0, 2, 3])
def test_t5_c_core_refuses_bucket_counts_without_calling_through_python(buckets):
    cfg = dict(T5_FIELDS, relative_attention_num_buckets=buckets)
    with pytest.raises(ValueError, match=rf"T5 config 'relative_attention_num_buckets' = {buckets} must be at least 4"):
        _C.T5(cfg, T5_WEIGHTS, "float32")


@pytest.mark.parametrize("case", ["md1_s6", "md2_s2", "md1_s7", "md2_s3"])
def test_t5_edge_bucket_configs_match_transformers(case):
    """relative_attention_max_distance at or below max_exact (1 and 2 with 8 buckets): transformers accepts the config;
    short inputs run and give finite outputs, longer ones map a position outside the bias table (IndexError). Goldens:
    tests/reference/make_t5_bucket_fixtures.py. The same inputs must run to the same numbers (max abs diff <= 1e-4 x
    max(1, max|expected|)) or fail with a ValueError, not an out-of-bounds read."""
    spec = read_json(os.path.join(BUCKETS, "manifest.json"))["cases"][case]
    cfg = dict(read_json(os.path.join(T5_RELU, "config.json")))
    cfg["relative_attention_max_distance"] = spec["relative_attention_max_distance"]
    model = cogvideo_c.T5EncoderModel(cfg, T5_WEIGHTS)
    with np.load(os.path.join(BUCKETS, "cases.npz")) as z:
        ids = z[f"{case}_ids"]
        expected = z[f"{case}_out"] if spec["transformers"] == "ran" else None
    if expected is None:
        assert spec["transformers"].startswith("IndexError")
        with pytest.raises(ValueError, match="gives relative position -?[0-9]+ no bucket"):
            model(ids)
    else:
        out = model(ids).last_hidden_state
        assert np.abs(out - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(
    "over, key, message",
    [
        (dict(norm_num_groups=3), r"block_out_channels\[0\]", "is not a multiple of norm_num_groups = 3"),
        (dict(norm_eps=0), "norm_eps", "must be a positive finite number"),
        (dict(layers_per_block=1.0), "layers_per_block", "must be an integer, got 1.0"),
        (dict(layers_per_block="1"), "layers_per_block", "must be an integer"),
        (dict(in_channels=0), "in_channels", "must be at least 1"),
        (dict(temporal_compression_ratio=3), "temporal_compression_ratio", "must be a power of two"),
        (dict(use_quant_conv="false"), "use_quant_conv", "must be true or false"),
        (dict(block_out_channels=[8, -8, 8, 8]), r"block_out_channels\[1\]", "must be at least 1"),
    ],
)
def test_vae_config_values_are_checked_with_file_and_key(tmp_path, over, key, message):
    folder = copy_with_config(VAE_TINY, tmp_path / "vae", **over)
    with pytest.raises(ValueError, match=rf"{re.escape(folder)}/config.json: config '{key}'.*{message}"):
        cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder)


@pytest.mark.parametrize(
    "over, key, message",
    [
        (dict(attention_head_dim=7), "attention_head_dim", "must be even"),
        (dict(num_attention_heads=3.0), "num_attention_heads", "must be an integer, got 3.0"),
        (dict(patch_size=0), "patch_size", "must be at least 1"),
        (dict(norm_eps=-1e-5), "norm_eps", "must be a positive finite number"),
        (dict(ofs_embed_dim=4), "ofs_embed_dim", "must equal time_embed_dim = 2"),
        (dict(freq_shift=8), "freq_shift", "divides the timestep frequencies by zero"),  # inner_dim 16 -> half 8
        (dict(use_rotary_positional_embeddings="no"), "use_rotary_positional_embeddings", "must be true or false"),
        (dict(num_attention_heads=2**28), "6 x num_attention_heads x attention_head_dim", "larger than"),
    ],
)
def test_transformer_config_values_are_checked_with_file_and_key(tmp_path, over, key, message):
    folder = copy_with_config(TR_TINY, tmp_path / "tr", **over)
    with pytest.raises(ValueError, match=rf"{re.escape(folder)}/config.json: config '?{key}'?.*{message}"):
        cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(folder)


def test_transformer_sincos_width_is_checked_at_construction_as_diffusers_does():
    # CogVideoXPatchEmbed builds its sin-cos table in __init__ and raises there for a width not divisible by 16
    cfg = read_json(os.path.join(TR_TINY, "config.json"))
    cfg["attention_head_dim"] = 6  # 2 x 6 = 12
    with pytest.raises(ValueError, match="needs num_attention_heads x attention_head_dim divisible by 16, got 2 x 6"):
        cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg)


# ---- item 5: the _C forward entry points check the tables they read ---------------------------------------------


@pytest.fixture(scope="module")
def rope_core():
    cfg = dict(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    return cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg, seed=1)._core


def tr_inputs(batch=1):
    hidden = np.zeros((batch, 2, 4, 4, 4), np.float32)  # 2 x 2 x 2 = 8 video tokens
    text = np.zeros((batch, 8, 16), np.float32)
    return hidden, text, np.full(batch, 500.0, np.float32)


@pytest.mark.parametrize(
    "cos_shape, sin_shape, message",
    [
        ((3, 32), (3, 32), r"image_rotary_emb must be two \[8, 32\] tables .* got \[3, 32\]"),
        ((8, 16), (8, 16), r"image_rotary_emb must be two \[8, 32\] tables .* got \[8, 16\]"),
        ((8, 32), (8, 16), "cos and sin tables must have the same shape"),
    ],
)
def test_direct_forward_refuses_short_rotary_tables(rope_core, cos_shape, sin_shape, message):
    h, e, t = tr_inputs()
    with pytest.raises(ValueError, match=message):
        rope_core.forward(h, e, t, None, None, False, np.ones(cos_shape, np.float32), np.ones(sin_shape, np.float32))


def test_direct_forward_refuses_wrong_positional_table_and_timesteps(rope_core):
    h, e, t = tr_inputs()
    with pytest.raises(ValueError, match=r"the positional table is \[3, 64\]; this input needs \[16, 64\]"):
        rope_core.forward(h, e, t, None, np.zeros((3, 64), np.float32), False, None, None)
    with pytest.raises(ValueError, match=r"the positional table is \[16, 32\]; this input needs \[16, 64\]"):
        rope_core.forward(h, e, t, None, np.zeros((16, 32), np.float32), False, None, None)
    with pytest.raises(ValueError, match=r"one value per batch item \(1\)"):
        rope_core.forward(h, e, np.zeros(3, np.float32), None, None, False, None, None)
    good = rope_core.forward(h, e, t, None, None, False, np.ones((8, 32), np.float32), np.zeros((8, 32), np.float32))
    assert good.shape == (1, 2, 4, 4, 4) and np.isfinite(good).all()


def test_direct_vae_calls_check_the_channels_they_read():
    core = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(VAE_TINY)._core
    with pytest.raises(ValueError, match="decode expects 4 channels, got 3"):
        core.decode(np.zeros((1, 3, 1, 2, 2), np.float32), False, None)
    with pytest.raises(ValueError, match="encode expects 3 channels, got 4"):
        core.encode(np.zeros((1, 4, 1, 16, 16), np.float32), False, None)


@pytest.mark.parametrize("bad_id", [1103, -1, 2**40])
def test_direct_t5_forward_refuses_ids_outside_the_vocabulary(bad_id):
    core = cogvideo_c.T5EncoderModel.from_pretrained(T5_RELU)._core
    with pytest.raises(ValueError, match=rf"token id {bad_id} at position 1 is outside the vocabulary of 1103"):
        core.forward(np.array([[5, bad_id]], np.int64))


# ---- item 7: sizes a config implies are bounded before building ---------------------------------------------------

_MEASURE = r"""
import json, resource, sys, time
import cogvideo_c
case, folder, over = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cls = {"vae": cogvideo_c.AutoencoderKLCogVideoX, "t5": cogvideo_c.T5EncoderModel,
       "tr": cogvideo_c.CogVideoXTransformer3DModel, "tok": cogvideo_c.T5Tokenizer}[case]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    if folder == "from_config":
        cls.from_config(over)
    else:
        cls.from_pretrained(folder, **over)
    error = None
except Exception as err:
    error = f"{type(err).__name__}: {err}"
print(json.dumps({"seconds": time.perf_counter() - start, "error": error,
                  "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def measure(case, folder, over):
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, case, str(folder), json.dumps(over)],
        cwd=HERE,
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_transformer_config(**over):
    cfg = read_json(os.path.join(TR_TINY, "config.json"))
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(
    "case, source, over, error",
    [
        ("vae", "copy", dict(layers_per_block=2**20), r"ValueError: config 'layers_per_block' = 1048576 implies"),
        ("t5", "copy", dict(num_layers=2**20), r"ValueError: .*config.json: config 'num_layers' = 1048576 implies"),
        ("tr", "copy", dict(num_layers=2**20), r"ValueError: config 'num_layers' = 1048576 implies at least"),
        ("tr", "from_config", dict(num_layers=2**20), r"ValueError: config 'num_layers' = 1048576 implies .* at most"),
        # 12 [D, D]-sized matrices per block at D = 2^17: ~0.8 TB, past any test machine's memory
        ("tr", "from_config", dict(num_attention_heads=2048, attention_head_dim=64), r"OutOfMemoryError: random"),
        ("tok", TOK_DIR, dict(extra_ids=10**6), r"ValueError: .*config 'extra_ids' = 1000000 is larger"),
    ],
)
def test_huge_config_sizes_fail_at_once_with_small_memory(tmp_path, case, source, over, error):
    """Used to take 2-7 GB and up to 18 s before failing. Bound: under 1 s and under 64 MB of extra peak RSS."""
    if source == "copy":
        src = {"vae": VAE_TINY, "t5": T5_RELU, "tr": TR_TINY}[case]
        folder, kwargs = copy_with_config(src, tmp_path / case, **over), {}
    elif source == "from_config":
        folder, kwargs = "from_config", tiny_transformer_config(**over)
    else:
        folder, kwargs = source, over
    result = measure(case, folder, kwargs)
    print(case, over, result)
    kind, message = error.split(": ", 1)  # from_pretrained may put the model folder before the message
    assert result["error"] and result["error"].startswith(kind + ": ") and re.search(message, result["error"]), result
    assert result["seconds"] < 1.0 and result["rss_growth_mb"] < 64, result


def test_from_config_checks_random_weight_bytes_against_the_memory_limit():
    cfg = tiny_transformer_config(num_layers=4)
    need = cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg).weight_bytes
    used = cogvideo_c.memory_allocated()
    cogvideo_c.set_memory_limit("cpu", used + need // 2)
    try:
        stats = cogvideo_c.memory_stats()
        with pytest.raises(
            cogvideo_c.OutOfMemoryError, match=r"random weights of \d+ bytes exceed the CPU memory limit"
        ):
            cogvideo_c.CogVideoXTransformer3DModel.from_config(cfg)
        # refused before asking the memory manager for anything
        assert cogvideo_c.memory_stats()["allocation.all.allocated"] == stats["allocation.all.allocated"]
    finally:
        cogvideo_c.set_memory_limit("cpu", 0)


# ---- item 9: tokenizer files ------------------------------------------------------------------------------------


@pytest.fixture
def tok_copy(tmp_path):
    dst = tmp_path / "tok"
    shutil.copytree(TOK_DIR, dst)
    return dst


def edit_json(path, **over):
    data = read_json(path)
    data.update(over)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(eos_token={"lstrip": False}), r"'eos_token' must be a string or an object with a string 'content'"),
        (dict(extra_ids=100.0), r"config 'extra_ids' must be an integer, got 100.0"),
        (dict(extra_ids=-1), r"config 'extra_ids' must be at least 0"),
        (dict(added_tokens_decoder={"zero": "<pad>"}), r"'added_tokens_decoder' has a key 'zero' that is not a token"),
        (dict(added_tokens_decoder={"0": {"special": True}}), r"'added_tokens_decoder'\['0'\] must be a string"),
        (dict(clean_up_tokenization_spaces="yes"), r"config 'clean_up_tokenization_spaces' must be true or false"),
    ],
)
def test_tokenizer_config_errors_name_the_file_and_key(tok_copy, over, message):
    path = os.path.join(tok_copy, "tokenizer_config.json")
    edit_json(path, **over)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: .*{message}"):
        cogvideo_c.T5Tokenizer.from_pretrained(tok_copy)


def saved_tokenizer_json(folder):
    """tokenizer.json of the fixture tokenizer, as save_pretrained would write it (loaded as a dict)."""
    path = os.path.join(folder, "tokenizer.json")
    cogvideo_c.T5Tokenizer.from_pretrained(TOK_DIR).backend_tokenizer.save(path)
    os.remove(os.path.join(folder, "spiece.model"))
    return path, read_json(path)


def test_malformed_charsmap_is_a_value_error_not_a_panic(tok_copy):
    """A charsmap the tokenizers library parses but then indexes out of bounds: its PanicException (a BaseException
    that escapes `except Exception`) used to surface at the first call."""
    import base64

    path, spec = saved_tokenizer_json(tok_copy)
    spec["normalizer"]["precompiled_charsmap"] = base64.b64encode(b"\x08\x00\x00\x00abcdefgh").decode()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    try:
        cogvideo_c.T5Tokenizer.from_pretrained(tok_copy)
    except Exception as err:  # a BaseException outside Exception fails the test
        assert isinstance(err, ValueError)
        assert str(err).startswith(f"{path}: the tokenizers library rejected it (PanicException: index out of bounds")
    else:
        pytest.fail("a malformed charsmap loaded")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["model"]["vocab"].__setitem__(3, ["x"]), r"model.vocab\[3\] must be a \[piece, score\] pair"),
        (lambda s: s["model"].__setitem__("vocab", s["model"]["vocab"][:2]), "the tokenizers library rejected it"),
        (lambda s: s.__setitem__("model", []), "expected a Unigram model"),
        (
            lambda s: s["normalizer"].__setitem__("precompiled_charsmap", "!!"),
            "normalizer 'precompiled_charsmap' is not base64",
        ),
    ],
)
def test_malformed_tokenizer_json_names_the_file(tok_copy, mutate, message):
    path, spec = saved_tokenizer_json(tok_copy)
    mutate(spec)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: {message}"):
        cogvideo_c.T5Tokenizer.from_pretrained(tok_copy)


# ---- item 13: no [file.c:line] tags unless CVX_DEBUG=1 --------------------------------------------------------------

_C_ERROR = r"""
import sys
from cogvideo_c._load import _C

try:
    _C.T5(dict(vocab_size=1103, d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=5,
               relative_attention_num_buckets=2, relative_attention_max_distance=128, gated=False,
               layer_norm_epsilon=1e-6, embedding_name="shared.weight"), sys.argv[1], "float32")
except ValueError as err:
    print(err)
"""


@pytest.mark.parametrize("debug, tagged", [(None, False), ("0", False), ("1", True)])
def test_error_location_tags_only_with_cvx_debug(debug, tagged):
    env = {k: v for k, v in os.environ.items() if k != "CVX_DEBUG"}
    if debug is not None:
        env["CVX_DEBUG"] = debug
    proc = subprocess.run(
        [sys.executable, "-c", _C_ERROR, T5_WEIGHTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
        cwd=HERE,
    )
    message = proc.stdout.strip()
    assert message.startswith("T5 config 'relative_attention_num_buckets' = 2 must be at least 4")
    assert bool(re.search(r" \[t5\.c:\d+\]$", message)) == tagged, message


# ---- item 15: build_info says what is compiled and what runs ------------------------------------------------------


def test_build_info_is_consistent_with_what_runs():
    info = cogvideo_c.build_info()
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["cuda_kernels"], bool)
    assert info["cuda_devices"] == _C.cuda_device_count() >= 0
    assert info["cuda"] == (info["cuda_kernels"] and info["cuda_devices"] > 0) == cogvideo_c.cuda_is_available()
    assert info["devices"] == ["cpu", "emu"] + (["cuda"] if info["cuda"] else [])
    for device in info["devices"]:
        assert cogvideo_c.memory_stats(device)["allocated_bytes.all.current"] >= 0
    if not info["cuda_compiled"]:
        assert info["cuda_devices"] == 0 and not info["cuda_kernels"]
    if not info["cuda"]:  # what the pipeline says when asked for a device build_info does not list
        pipe = cogvideo_c.CogVideoXPipeline.__new__(cogvideo_c.CogVideoXPipeline)
        with pytest.raises(ValueError, match="this build has no CUDA backend|no CUDA device is present"):
            pipe.to("cuda")


@pytest.mark.parametrize("model_max_length", [None, 2**70])
def test_truncation_without_a_usable_max_length_does_not_truncate(model_max_length):
    # transformers: "no maximum length is provided and the model has no predefined maximum length: default to no
    # truncation"; the 1e30 default used to raise OverflowError from the tokenizers library
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    tok = cogvideo_c.T5Tokenizer.from_pretrained(TOK_DIR, **kwargs)
    if model_max_length is None:
        tok.model_max_length = int(1e30)
    plain = tok("a long prompt with several words")["input_ids"]
    assert tok("a long prompt with several words", truncation=True)["input_ids"] == plain
    assert tok("a long prompt with several words", truncation=True, max_length=2**65)["input_ids"] == plain
    with pytest.raises(ValueError, match="max_length must be an integer, got 4.0"):
        tok("a", truncation=True, max_length=4.0)


# ---- items 7, 8, 9: scheduler and VAE config values (what the config fuzzer found) ---------------------------------

PIPELINE = os.path.join(FIXTURES, "pipeline", "tiny_2b")
SCHEDULER_DIR = os.path.join(PIPELINE, "scheduler")
NESTED = json.loads("[" * 500 + "]" * 500)  # parses, but deepcopy of the pipeline's scheduler recursed past the limit


def scheduler_copy(tmp_path, **over):
    """A copy of the tiny pipeline's scheduler folder with `over` applied; returns its config file's path."""
    folder = tmp_path / "scheduler"
    shutil.copytree(SCHEDULER_DIR, folder)
    path = folder / "scheduler_config.json"
    cfg = read_json(path)
    cfg.update(over)
    path.write_text(json.dumps(cfg))  # Python's json writes inf / nan as Infinity / NaN and reads them back
    return str(path)


@pytest.mark.parametrize(
    "cls, over, key, message",
    [
        # each of these used to fail late with another exception type (named after the case)
        ("CogVideoXDDIMScheduler", dict(num_train_timesteps=0), "num_train_timesteps", "must be at least 1, got 0"),
        ("CogVideoXDDIMScheduler", dict(num_train_timesteps=2**53 + 1), "num_train_timesteps",  # MemoryError, 64 PiB
         r"= 9007199254740993 is larger than this implementation supports \(100000\)"),
        ("CogVideoXDDIMScheduler", dict(num_train_timesteps=1000.5), "num_train_timesteps", "must be an integer"),
        ("CogVideoXDDIMScheduler", dict(beta_start=float("inf")), "beta_start", "must be a finite number, got inf"),
        ("CogVideoXDDIMScheduler", dict(beta_start=-1.0), "beta_start", r"must be in \[0, 1\) \(a noise variance\)"),
        ("CogVideoXDDIMScheduler", dict(beta_end=1.5), "beta_end", r"must be in \[0, 1\)"),
        ("CogVideoXDDIMScheduler", dict(beta_end="silu"), "beta_end", "must be a number, got 'silu'"),
        ("CogVideoXDDIMScheduler", dict(trained_betas=[0.1]), "trained_betas",
         "must be null or a list of num_train_timesteps = 1000 numbers .* got 1 values"),
        ("CogVideoXDDIMScheduler", dict(trained_betas={"a": 1}), "trained_betas", "must be null or a list"),
        ("CogVideoXDDIMScheduler", dict(trained_betas=[0.01] * 999 + [1.0]), r"trained_betas\[999\]",
         r"must be in \[0, 1\)"),
        ("CogVideoXDDIMScheduler", dict(clip_sample=NESTED), "clip_sample", r"must be true or false, got \[\["),
        ("CogVideoXDDIMScheduler", dict(set_alpha_to_one="false"), "set_alpha_to_one", "must be true or false"),
        ("CogVideoXDDIMScheduler", dict(num_train_timesteps=1), "rescale_betas_zero_snr",
         "needs num_train_timesteps >= 2"),
        ("CogVideoXDDIMScheduler", dict(steps_offset=-1), "steps_offset", "must be at least 0"),
        ("CogVideoXDDIMScheduler", dict(steps_offset=1000), "steps_offset", r"larger than .* supports \(999\)"),
        ("CogVideoXDPMScheduler", dict(snr_shift_scale=0), "snr_shift_scale", "must be a positive finite number"),
        ("CogVideoXDDIMScheduler", dict(clip_sample_range=[1]), "clip_sample_range", "must be a number"),
        ("CogVideoXDDIMScheduler", dict(prediction_type="noise"), "prediction_type",
         "'noise' is not supported: one of epsilon, sample, v_prediction"),
        ("CogVideoXDDIMScheduler", dict(timestep_spacing="sideways"), "timestep_spacing",
         "'sideways' is not supported: one of linspace, leading, trailing"),
        ("CogVideoXDDIMScheduler", dict(timestep_spacing=NESTED), "timestep_spacing", "must be a string"),
        ("DDIMScheduler", dict(thresholding="yes"), "thresholding", "must be true or false"),
        ("DDIMScheduler", dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio",
         r"must be in \(0, 1\] \(a quantile\)"),
        ("DDIMScheduler", dict(sample_max_value=float("nan")), "sample_max_value", "must be a positive finite"),
    ],
)  # fmt: skip
def test_scheduler_config_values_are_checked_with_file_and_key(tmp_path, cls, over, key, message):
    path = scheduler_copy(tmp_path, **over)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: config '{key}'.*{message}"):
        getattr(cogvideo_c, cls).from_pretrained(os.path.dirname(path))


@pytest.mark.parametrize("schedule", ["cubic", ["linear"]])
def test_unknown_beta_schedule_is_a_value_error_and_diffusers_not_implemented_error(tmp_path, schedule):
    path = scheduler_copy(tmp_path, beta_schedule=schedule)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: config 'beta_schedule' .* is not implemented") as err:
        cogvideo_c.CogVideoXDDIMScheduler.from_pretrained(os.path.dirname(path))
    assert isinstance(err.value, NotImplementedError)  # what diffusers raises (tests/test_schedulers.py pins it)


def test_scheduler_constructor_checks_values_and_from_config_checks_names_at_once():
    with pytest.raises(ValueError, match=r"^config 'num_train_timesteps' must be at least 1, got 0"):
        cogvideo_c.CogVideoXDPMScheduler(num_train_timesteps=0)
    with pytest.raises(ValueError, match=r"^config 'beta_end' must be in \[0, 1\)"):
        cogvideo_c.DDIMScheduler(beta_end=2.0)
    # a config dict is checked whole before building, the names included (the constructor leaves them to
    # set_timesteps / step, as diffusers does)
    with pytest.raises(ValueError, match=r"^config 'prediction_type' 'noise' is not supported"):
        cogvideo_c.CogVideoXDDIMScheduler.from_config({"prediction_type": "noise"})
    # released values load, and keep their table bit for bit (tests/test_schedulers.py compares with diffusers)
    s = cogvideo_c.CogVideoXDDIMScheduler.from_pretrained(SCHEDULER_DIR)
    assert len(s.alphas_cumprod) == 1000 and s.alphas_cumprod.dtype == np.float64
    betas = [0.0001 * (i + 1) for i in range(1000)]
    assert np.array_equal(cogvideo_c.DDIMScheduler(trained_betas=betas).betas, np.float32(betas))


def test_pipeline_refuses_a_nested_scheduler_value_at_load(tmp_path):
    """clip_sample = [[[...]]] used to load and then raise RecursionError when the call copied its scheduler."""
    root = tmp_path / "pipe"
    shutil.copytree(PIPELINE, root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**read_json(path), "clip_sample": NESTED}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: config 'clip_sample' must be true or false"):
        cogvideo_c.CogVideoXPipeline.from_pretrained(root)


def test_model_index_class_name_that_is_not_a_string_names_the_file(tmp_path):
    root = tmp_path / "pipe"
    shutil.copytree(PIPELINE, root)
    index = read_json(root / "model_index.json")
    index["tokenizer"] = ["transformers", ["T5Tokenizer"]]  # used to be TypeError: unhashable type: 'list'
    (root / "model_index.json").write_text(json.dumps(index))
    where = re.escape(str(root / "model_index.json"))
    with pytest.raises(ValueError, match=rf"^{where}: tokenizer is a \['T5Tokenizer'\], which cogvideo_c does not"):
        cogvideo_c.CogVideoXPipeline.from_pretrained(root)


@pytest.mark.parametrize(
    "over, key, message",
    [
        (dict(scaling_factor=0), "scaling_factor", "= 0.0 must be non-zero"),  # ZeroDivisionError in decode_latents
        (dict(scaling_factor=1e-300), "scaling_factor", r"1 / scaling_factor a normal float32"),  # inverse: inf
        (dict(scaling_factor=1e300), "scaling_factor", r"1 / scaling_factor a normal float32"),  # inverse: 0
        (dict(scaling_factor=float("nan")), "scaling_factor", "must be a finite number"),
        (dict(shift_factor="x"), "shift_factor", "must be a number"),
        (dict(latents_mean=[0.0, 0.0, 0.0]), "latents_mean", "must be null or a list of latent_channels = 4 numbers"),
        (dict(latents_mean=[0.0, 0.0, 0.0, "x"]), r"latents_mean\[3\]", "must be a number"),
        (dict(latents_std=[1.0, 1.0, 1.0, 0.0]), r"latents_std\[3\]", "must be a positive finite number"),
    ],
)
def test_vae_scaling_values_are_checked_with_file_and_key(tmp_path, over, key, message):
    folder = copy_with_config(VAE_TINY, tmp_path / "vae", **over)
    with pytest.raises(ValueError, match=rf"^{re.escape(folder)}/config.json: config '{key}'.*{message}"):
        cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder)


def test_vae_per_channel_statistics_of_the_right_length_load(tmp_path):
    stats = dict(latents_mean=[0.0, 0.5, -0.5, 1.0], latents_std=[1.0, 2.0, 0.5, 1.0], shift_factor=0.25)
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(copy_with_config(VAE_TINY, tmp_path / "vae", **stats))
    assert list(vae.config.latents_std) == stats["latents_std"] and vae.config.shift_factor == 0.25
