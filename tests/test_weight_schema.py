"""The C weight declarations are the one schema (issue 8, part 6): `_C.weight_schema` reports what a load checks a
checkpoint against, configs cross into C by name (a dict of the C struct's fields, every key and value checked), and
tiny.py builds its checkpoints from the schema with the same bytes as before."""

import hashlib
import json
import os

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import tiny
from cogvideo_c._load import _C
from conftest import FIXTURES

MODELS = {  # fixture folder -> (class, weights file); every checkpoint here was saved by diffusers / transformers
    "vae/tiny": (cogvideo_c.AutoencoderKLCogVideoX, "diffusion_pytorch_model.safetensors"),
    "vae/mid": (cogvideo_c.AutoencoderKLCogVideoX, "diffusion_pytorch_model.safetensors"),
    "transformer/t2b_tiny": (cogvideo_c.CogVideoXTransformer3DModel, "diffusion_pytorch_model.safetensors"),
    "transformer/t15": (cogvideo_c.CogVideoXTransformer3DModel, "diffusion_pytorch_model.safetensors"),
    "transformer/t15_i2v": (cogvideo_c.CogVideoXTransformer3DModel, "diffusion_pytorch_model.safetensors"),
    "transformer/t5b_i2v": (cogvideo_c.CogVideoXTransformer3DModel, "diffusion_pytorch_model.safetensors"),
    "t5/relu": (cogvideo_c.T5EncoderModel, "model.safetensors"),
    "t5/gated": (cogvideo_c.T5EncoderModel, "model.safetensors"),
}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def read_config(folder):
    with open(os.path.join(FIXTURES, folder, "config.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("folder", sorted(MODELS))
def test_schema_is_what_a_load_declares_and_what_the_checkpoint_holds(folder, dtype):
    cls, weights = MODELS[folder]
    schema = cls.weight_schema(read_config(folder), dtype)
    model = cls.from_pretrained(os.path.join(FIXTURES, folder), torch_dtype=dtype)
    # the declarations the load checked, in the same order
    assert [(n, tuple(s)) for n, s, _, _ in schema] == [(n, tuple(s)) for n, _, s in model._core.weight_info()]
    # the outside truth: the tensors diffusers / transformers saved
    on_disk = {n: tuple(s) for n, (_, s) in _C.safetensors_index(os.path.join(FIXTURES, folder, weights)).items()}
    assert {n: tuple(s) for n, s, _, _ in schema} == on_disk
    # groups and stored dtypes are the load's: its bytes are the schema's, each tensor 64-byte aligned in its group
    assert model.num_weight_groups == max(g for _, _, g, _ in schema) + 1
    nbytes = sum(-(-int(np.prod(s, dtype=np.int64)) * ITEMSIZE[d] // 64) * 64 for _, s, _, d in schema)
    assert model.weight_bytes == nbytes
    assert {d for _, _, _, d in schema} <= {dtype, "float32"}


def test_schema_groups_follow_the_blocks():
    """Group 0 outside the blocks, group 1 + i for block i (the unit residency moves)."""
    schema = cogvideo_c.CogVideoXTransformer3DModel.weight_schema(read_config("transformer/t2b_tiny"))
    for name, _, group, _ in schema:
        want = 1 + int(name.split(".")[1]) if name.startswith("transformer_blocks.") else 0
        assert group == want, name
    t5 = cogvideo_c.T5EncoderModel.weight_schema(read_config("t5/relu"))
    for name, _, group, _ in t5:
        block = int(name.split(".")[2]) if name.startswith("encoder.block.") else -1
        assert group == 1 + block, name


def test_schema_of_a_released_size_allocates_nothing():
    """CogVideoX-5b's transformer (about 11 GB in bfloat16) is described without a byte of weights; its parameter
    count is the published 5.57e9 (within 1 %)."""
    cfg = dict(read_config("transformer/t5b"), num_attention_heads=48, attention_head_dim=64, num_layers=42,
               in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096, patch_size=2)  # fmt: skip
    before = cogvideo_c.memory_stats()
    schema = cogvideo_c.CogVideoXTransformer3DModel.weight_schema(cfg, "bfloat16")
    after = cogvideo_c.memory_stats()
    assert after["allocation.all.allocated"] == before["allocation.all.allocated"]
    assert after["allocated_bytes.all.peak"] == before["allocated_bytes.all.peak"]
    params = sum(int(np.prod(s, dtype=np.int64)) for _, s, _, _ in schema)
    print(f"CogVideoX-5b transformer: {len(schema)} tensors, {params} parameters")
    assert abs(params - 5.57e9) <= 0.01 * 5.57e9
    assert max(g for _, _, g, _ in schema) == 42


def test_schema_checks_the_config_as_create_does():
    cfg = dict(read_config("transformer/t2b_tiny"), num_layers=2**20)
    with pytest.raises(ValueError, match=r"config 'num_layers' = 1048576 implies at least .* at most 65536"):
        cogvideo_c.CogVideoXTransformer3DModel.weight_schema(cfg)
    core = cogvideo_c.CogVideoXTransformer3DModel._core_config(read_config("transformer/t2b_tiny"))[1]
    with pytest.raises(ValueError, match="transformer config 'attention_head_dim' = 7 must be even"):
        _C.weight_schema("transformer", dict(core, attention_head_dim=7), "float32")
    with pytest.raises(ValueError, match="unknown model kind 'unet'"):
        _C.weight_schema("unet", core, "float32")
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        _C.weight_schema("transformer", core, "int8")


# ---- configs by name: the C reader refuses what the struct does not hold ------------------------------------------


def core_configs():
    """(kind, the _C constructor's arguments after the config, the C config dict) for each model."""
    vae = cogvideo_c.AutoencoderKLCogVideoX._core_config(read_config("vae/tiny"))[1]
    tr = cogvideo_c.CogVideoXTransformer3DModel._core_config(read_config("transformer/t2b_tiny"))[1]
    t5 = cogvideo_c.T5EncoderModel._core_config(read_config("t5/relu"))[1]
    return {
        "vae": (_C.VAE, (os.path.join(FIXTURES, "vae/tiny/diffusion_pytorch_model.safetensors"), "float32"), vae),
        "transformer": (_C.Transformer, (None, "float32"), tr),
        "t5": (_C.T5, (os.path.join(FIXTURES, "t5/relu/model.safetensors"), "float32"), t5),
    }


INT_KEY = {"vae": "in_channels", "transformer": "in_channels", "t5": "d_model"}  # a required int field of each
BAD = {  # change(config, key) -> the message it gives
    "unknown": (lambda c, k: c.update(num_layerz=2), "config has an unknown key 'num_layerz'"),
    "missing": (lambda c, k: c.pop(k), "config is missing the key '{key}'"),
    "float": (lambda c, k: c.update({k: 3.0}), "config '{key}' must be an integer, got 3.0"),
    "2**40": (lambda c, k: c.update({k: 2**40}), "config '{key}' = 1099511627776 does not fit a C int"),
    "bool": (lambda c, k: c.update({k: True}), "config '{key}' must be an integer, got True"),
    "str": (lambda c, k: c.update({k: "3"}), "config '{key}' must be an integer, got '3'"),
}


@pytest.mark.parametrize("kind", ["vae", "transformer", "t5"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_dicts_through_c_name_the_key(kind, case):
    ctor, args, good = core_configs()[kind]
    change, message = BAD[case]
    bad = dict(good)
    change(bad, INT_KEY[kind])
    message = message.format(key=INT_KEY[kind])
    before = cogvideo_c.memory_stats()["allocation.all.current"]
    with pytest.raises(ValueError, match=message):
        ctor(bad, *args)
    with pytest.raises(ValueError, match=message):
        _C.weight_schema(kind, bad, "float32")
    assert cogvideo_c.memory_stats()["allocation.all.current"] == before
    ctor(good, *args)  # the good dict still builds


def test_config_value_types_are_exact():
    _, _, tr = core_configs()["transformer"]
    for value in (1, 0, "true", None):  # a flag is True or False, nothing that merely reads as one
        with pytest.raises(ValueError, match=rf"config 'patch_bias' must be True or False, got {value!r}"):
            _C.weight_schema("transformer", dict(tr, patch_bias=value), "float32")
    for value in (float("nan"), float("inf"), 1e39, "1e-5", True):
        with pytest.raises(ValueError, match="config 'norm_eps' (= .* is not a finite float32|must be a number)"):
            _C.weight_schema("transformer", dict(tr, norm_eps=value), "float32")
    _, _, vae = core_configs()["vae"]
    for value, message in (
        ((), "must have 1 to 8 entries"),
        ((8,) * 9, "must have 1 to 8 entries"),
        ("8888", r"must be a list of integers, got '8888'"),
        ((8, 8.0, 8, 8), "must be an integer, got 8.0"),
    ):
        with pytest.raises(ValueError, match=rf"config 'block_out_channels' {message}"):
            _C.weight_schema("vae", dict(vae, block_out_channels=value), "float32")
    assert len(_C.weight_schema("vae", dict(vae, block_out_channels=[8, 8]), "float32")) < 236  # a list reads too
    _, _, t5 = core_configs()["t5"]
    with pytest.raises(ValueError, match="config 'embedding_name' must be a string, got None"):
        _C.weight_schema("t5", dict(t5, embedding_name=None), "float32")
    # a name is never a format string
    assert _C.weight_schema("t5", dict(t5, embedding_name="%s%n%s"), "float32")[0][0] == "%s%n%s"
    with pytest.raises(ValueError, match="T5 config keys must be strings, got 3"):
        _C.weight_schema("t5", {**t5, 3: 1}, "float32")
    with pytest.raises(ValueError, match=r"the VAE config must be a dict of its fields, got \(3, 3\)"):
        _C.weight_schema("vae", (3, 3), "float32")


def test_optional_fields_default_to_the_absent_feature():
    """ofs_embed_dim, patch_size_t, the learned table and T5's ignored name may be left out: zero / none."""
    _, _, tr = core_configs()["transformer"]
    assert tr["ofs_embed_dim"] == 0 and tr["patch_size_t"] == 0 and tr["use_learned_positional_embeddings"] is False
    short = {k: v for k, v in tr.items() if k not in ("ofs_embed_dim", "patch_size_t", "learned_table_rows",
                                                      "use_learned_positional_embeddings")}  # fmt: skip
    assert _C.weight_schema("transformer", short, "float32") == _C.weight_schema("transformer", tr, "float32")


# ---- tiny.py: the schema builds the embedded checkpoints, byte for byte as before ---------------------------------

# sha256 of the files make_tiny_pipeline(folder, seed=0) and make_tiny_vae(folder, seed=0) wrote before tiny.py read
# the schema (its own tables of names and shapes then), recorded from main at 9d575cf
TINY_SHA256 = {
    "pipe/text_encoder/model.safetensors": "1c17a6c7af7bc6a5b94eb9ebca3114ed1a84c4483668df96775a0e86399303b3",
    "pipe/transformer/diffusion_pytorch_model.safetensors": (
        "66a1979911b1006b0b30799e50613b1f82faf7347c9e5faf7706b9e9fc9fd420"
    ),
    "pipe/vae/diffusion_pytorch_model.safetensors": "0fd7a86d1493fe11371ccc78bde9ed61475bf655f8ea04166a4b0c90b51b5879",
    "vae/diffusion_pytorch_model.safetensors": "1f598b25fa617cb12c42955bd9872e1a628922669ca62d088e44fe044efa1019",
    "pipe/transformer/config.json": "4a06c434b7bb71020dc4aeed87cc0b8709ff1710c596ea3c3c2295add282f661",
    "pipe/text_encoder/config.json": "f30b158eadd2da8dd59a748715c2f759807e2dcb188a6f7598e75917f13c8956",
    "pipe/vae/config.json": "d1631f69a937eebff8e8cb95af1f77500d63bb58658e6e24c3042ab53dfd31b2",
}


def test_tiny_checkpoints_are_byte_identical_to_before(tmp_path):
    tiny.make_tiny_pipeline(str(tmp_path / "pipe"), seed=0)
    tiny.make_tiny_vae(str(tmp_path / "vae"), seed=0)
    for rel, want in TINY_SHA256.items():
        with open(tmp_path / rel, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want, rel
    # and they hold exactly what the C core declares for their configs
    for rel, cls in (
        ("pipe/transformer", cogvideo_c.CogVideoXTransformer3DModel),
        ("pipe/text_encoder", cogvideo_c.T5EncoderModel),
        ("vae", cogvideo_c.AutoencoderKLCogVideoX),
    ):
        folder = tmp_path / rel
        with open(folder / "config.json", encoding="utf-8") as f:
            schema = cls.weight_schema(json.load(f))
        weights = next(str(p) for p in folder.iterdir() if p.suffix == ".safetensors")
        on_disk = {n: tuple(s) for n, (_, s) in _C.safetensors_index(weights).items()}
        assert on_disk == {n: tuple(s) for n, s, _, _ in schema}
