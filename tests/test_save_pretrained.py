"""save_pretrained for the models, scheduler, tokenizer and pipeline; variant= and dtype= loading (issue 7, item 11).

Round trips must be exact (the reloaded model computes bit-identical outputs); the files must be the safetensors
format (header length, JSON header, 8-byte aligned data, no gaps or trailing bytes) in the model's dtype, with
16-bit values rounded to nearest even from the float32 checkpoint as torch's .to() rounds them, and use diffusers'
file names (_add_variant, huggingface_hub's shard names). numpy + cogvideo_c only."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import cogvideo_c

SRC = Path(__file__).resolve().parent / "fixtures" / "pipeline" / "tiny_2b"
CALL = dict(prompt="dance monkey", height=16, width=16, num_frames=9, max_sequence_length=16, output_type="np")
_ESIZE = {"F32": 4, "F16": 2, "BF16": 2}


def _read_safetensors(path):
    """(metadata, {name: (dtype, shape, raw bytes)}) read by the format's definition, checking the layout."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0, "the data section must start 8-byte aligned"
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    body = data[8 + n :]
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(body), "gap at the start or bytes after the last tensor"
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "gap or overlap between tensors"
    out = {}
    for name, v in header.items():
        a, b = v["data_offsets"]
        assert b - a == int(np.prod(v["shape"], dtype=np.int64)) * _ESIZE[v["dtype"]], name
        out[name] = (v["dtype"], tuple(v["shape"]), body[a:b])
    return meta, out


def _rne(values, dtype):
    """float32 values rounded to nearest even in float16 / bfloat16, as bit patterns (uint16)."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "F16":
        return values.astype(np.float16).view(np.uint16)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _runner(kind):
    """A forward of the component on fixed inputs."""
    rng = np.random.default_rng(0)
    if kind == "vae":
        z = rng.standard_normal((1, 4, 2, 2, 2), dtype=np.float32)
        return lambda m: m.decode(z).sample
    if kind == "transformer":
        h, e = rng.standard_normal((2, 2, 4, 2, 2), dtype=np.float32), rng.standard_normal((2, 16, 32), np.float32)
        return lambda m: m(h, e, np.array([999, 500]), return_dict=False)[0]
    ids = rng.integers(0, 100, size=(2, 7))
    return lambda m: m(ids)[0]


MODELS = [
    ("vae", cogvideo_c.AutoencoderKLCogVideoX, "diffusion_pytorch_model"),
    ("transformer", cogvideo_c.CogVideoXTransformer3DModel, "diffusion_pytorch_model"),
    ("text_encoder", cogvideo_c.T5EncoderModel, "model"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind, cls, stem", MODELS)
def test_model_round_trip_is_exact_and_in_the_model_dtype(tmp_path, kind, cls, stem, dtype):
    model = cls.from_pretrained(str(SRC / kind), dtype=dtype)
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", f"{stem}.safetensors"]
    meta, saved = _read_safetensors(tmp_path / f"{stem}.safetensors")
    assert meta == {"format": "pt"}
    st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    assert {v[0] for v in saved.values()} == {st_dtype}  # every tensor, biases and norms included
    # the values are the float32 checkpoint's, rounded as torch's .to(dtype) rounds (nearest even)
    _, original = _read_safetensors(next((SRC / kind).glob("*.safetensors")))
    assert set(saved) == set(original)
    for name, (odt, shape, raw) in original.items():
        assert odt == "F32" and saved[name][1] == shape
        if dtype == "float32":
            assert saved[name][2] == raw, name
        else:
            assert np.array_equal(np.frombuffer(saved[name][2], "<u2"), _rne(np.frombuffer(raw, "<f4"), st_dtype))
    cfg = json.loads((tmp_path / "config.json").read_text())
    if kind == "text_encoder":
        assert cfg["architectures"] == ["T5EncoderModel"] and cfg["model_type"] == "t5"
    else:
        assert cfg["_class_name"] == cls.__name__ and cfg["_diffusers_version"]
    run = _runner(kind)
    again = cls.from_pretrained(str(tmp_path), dtype=dtype)
    assert np.array_equal(run(again), run(model))


@pytest.mark.parametrize("kind, cls, stem", MODELS)
def test_variant_and_shards_use_diffusers_names(tmp_path, kind, cls, stem):
    model = cls.from_pretrained(str(SRC / kind), dtype="float16")
    total = sum(int(np.prod(s, dtype=np.int64)) * 2 for _, _, s in model._core.weight_info())
    model.save_pretrained(str(tmp_path), variant="fp16", max_shard_size=total // 3)
    files = sorted(os.listdir(tmp_path))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 3
    assert shards[0] == f"{stem}.fp16-00001-of-{len(shards):05d}.safetensors"
    index_name = f"{stem}.safetensors.index.fp16.json"  # diffusers' _add_variant of the index name
    assert files == sorted(["config.json", index_name, *shards])
    index = json.loads((tmp_path / index_name).read_text())
    assert index["metadata"]["total_size"] == total
    assert sorted(set(index["weight_map"].values())) == shards
    with pytest.raises(FileNotFoundError, match=r"variant=None|has no"):
        cls.from_pretrained(str(tmp_path))  # the plain name is absent: only the variant was saved
    with pytest.raises(FileNotFoundError, match=rf"variant='bf16'.*{stem}\.bf16\.safetensors"):
        cls.from_pretrained(str(tmp_path), variant="bf16")
    run = _runner(kind)
    assert np.array_equal(run(cls.from_pretrained(str(tmp_path), variant="fp16", dtype="float16")), run(model))
    # saving again unsharded replaces the shards and the index
    model.save_pretrained(str(tmp_path), variant="fp16")
    assert sorted(os.listdir(tmp_path)) == ["config.json", f"{stem}.fp16.safetensors"]


def test_save_pretrained_refuses_what_it_cannot_do(tmp_path):
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(str(SRC / "vae"))
    with pytest.raises(ValueError, match="safetensors only"):
        vae.save_pretrained(str(tmp_path), safe_serialization=False)
    with pytest.raises(ValueError, match="push_to_hub"):
        vae.save_pretrained(str(tmp_path), push_to_hub=True)
    with pytest.raises(ValueError, match="max_shard_size"):
        vae.save_pretrained(str(tmp_path), max_shard_size="10 parsecs")
    with pytest.raises(ValueError, match="variant"):
        vae.save_pretrained(str(tmp_path), variant="../x")
    assert not list(tmp_path.glob("*.safetensors"))


def test_scheduler_and_tokenizer_save(tmp_path):
    sched = cogvideo_c.CogVideoXDDIMScheduler.from_pretrained(str(SRC / "scheduler"))
    sched.save_pretrained(str(tmp_path / "s"))
    saved = json.loads((tmp_path / "s" / "scheduler_config.json").read_text())
    assert saved == json.loads((SRC / "scheduler" / "scheduler_config.json").read_text())  # diffusers' own file
    tok = cogvideo_c.T5Tokenizer.from_pretrained(str(SRC / "tokenizer"))
    tok.save_pretrained(str(tmp_path / "t"))
    again = cogvideo_c.T5Tokenizer.from_pretrained(str(tmp_path / "t"))
    text = ["a panda, playing a guitar <extra_id_3>", "zebra"]
    kw = dict(padding="max_length", max_length=16)
    assert again(text, **kw)["input_ids"] == tok(text, **kw)["input_ids"]
    assert (tmp_path / "t" / "tokenizer.json").read_bytes() == (SRC / "tokenizer" / "tokenizer.json").read_bytes()


def _frames(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**CALL, num_inference_steps=2, generator=11, **kw).frames


def test_pipeline_round_trip_gives_identical_frames(tmp_path):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(SRC))
    pipe.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "model_index.json").read_text()) == json.loads((SRC / "model_index.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in SRC.iterdir())
    again = cogvideo_c.DiffusionPipeline.from_pretrained(str(tmp_path))
    assert np.array_equal(_frames(again), _frames(pipe))


def test_pipeline_saved_in_float16_as_a_variant(tmp_path):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(SRC), torch_dtype="float16")
    pipe.save_pretrained(str(tmp_path), variant="fp16")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (tmp_path / "text_encoder" / "model.fp16.safetensors").is_file()
    _, saved = _read_safetensors(tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    assert {v[0] for v in saved.values()} == {"F16"}
    again = cogvideo_c.CogVideoXPipeline.from_pretrained(str(tmp_path), variant="fp16", dtype="float16")
    assert np.array_equal(_frames(again), _frames(pipe))
    with pytest.raises(ValueError, match="`variant=bf16`, but no such modeling files"):
        cogvideo_c.CogVideoXPipeline.from_pretrained(str(tmp_path), variant="bf16")


def test_safetensors_writer_matches_the_format(tmp_path):
    from cogvideo_c.safetensors_io import save_file

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0, 65504.0], dtype=np.float16)
    c = ("bfloat16", np.array([0x3F80, 0xC000], dtype=np.uint16))  # 1.0, -2.0
    path = tmp_path / "x.safetensors"
    save_file({"b": b, "a": a, "c": c}, str(path))
    meta, t = _read_safetensors(path)
    assert meta == {"format": "pt"}
    assert t["a"] == ("F32", (2, 3), a.tobytes()) and t["b"] == ("F16", (3,), b.tobytes())
    assert t["c"] == ("BF16", (2,), c[1].tobytes())
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert path.stat().st_size == 8 + n + 24 + 6 + 4  # header + the bytes of the three tensors, nothing else
    assert cogvideo_c._C.safetensors_index(str(path)) == {
        "a": ("float32", (2, 3)), "b": ("float16", (3,)), "c": ("bfloat16", (2,)),
    }  # fmt: skip
    with pytest.raises(ValueError, match="int64"):
        save_file({"i": np.zeros(2, dtype=np.int64)}, str(tmp_path / "y.safetensors"))
    assert not (tmp_path / "y.safetensors").exists() and len(list(tmp_path.iterdir())) == 1


def test_core_weight_access_checks_its_arguments():
    core = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(str(SRC / "vae"))._core
    n = len(core.weight_info())
    with pytest.raises(IndexError, match=rf"weight index {n} is outside \[0, {n}\)"):
        core.weight_data(n)
    with pytest.raises(IndexError, match="weight index -1"):
        core.weight_data(-1)
    for cls in (cogvideo_c._C.VAE, cogvideo_c._C.Transformer, cogvideo_c._C.T5):
        with pytest.raises(ValueError, match="not initialised"):
            cls.__new__(cls).weight_info()
