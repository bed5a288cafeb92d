"""Bad input gets a clear Python exception, early, and leaves the process healthy with nothing leaked."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

import cogvideo_c
from conftest import VAE_FIXTURES

TINY = os.path.join(VAE_FIXTURES, "tiny")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def read_safetensors(path):
    """(header dict, data bytes) of a safetensors file, read with the standard library only."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path, header, data, header_len=None):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text) if header_len is None else header_len))
        f.write(text)
        f.write(data)


@pytest.fixture
def model_copy(tmp_path):
    """A writable copy of the tiny VAE folder."""
    dst = tmp_path / "vae"
    shutil.copytree(TINY, dst)
    return dst


def load(folder, **kw):
    return cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder, **kw)


def first_tensor(header):
    return next(k for k in sorted(header) if k != "__metadata__")


@pytest.mark.usefixtures("cpu_memory_checked")
class TestCheckpointFiles:
    def test_truncated_file(self, model_copy):
        path = model_copy / WEIGHTS
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) - 100])
        with pytest.raises(OSError, match="past the end|truncated|out of range|beyond"):
            load(model_copy)

    def test_file_shorter_than_the_header_length_field(self, model_copy):
        (model_copy / WEIGHTS).write_bytes(b"\x10\x00")
        with pytest.raises(OSError):
            load(model_copy)

    def test_header_length_past_end(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        write_safetensors(model_copy / WEIGHTS, header, data, header_len=10**9)
        with pytest.raises(OSError, match="header"):
            load(model_copy)

    def test_overlapping_offsets(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        size_b = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size_b]
        write_safetensors(model_copy / WEIGHTS, header, data)
        with pytest.raises(OSError, match="overlap"):
            load(model_copy)

    def test_offsets_out_of_range(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        name = first_tensor(header)
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [len(data) + 16, len(data) + 16 + (end - begin)]
        write_safetensors(model_copy / WEIGHTS, header, data)
        with pytest.raises(OSError, match=name.replace(".", r"\.")):
            load(model_copy)

    def test_unknown_dtype(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        name = first_tensor(header)
        header[name]["dtype"] = "I64"
        write_safetensors(model_copy / WEIGHTS, header, data)
        with pytest.raises(OSError, match="I64"):
            load(model_copy)

    def test_size_that_does_not_match_the_shape(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        name = first_tensor(header)
        header[name]["shape"] = [header[name]["shape"][0] + 1] + header[name]["shape"][1:]
        write_safetensors(model_copy / WEIGHTS, header, data)
        with pytest.raises(OSError, match=name.replace(".", r"\.")):
            load(model_copy)

    def test_header_that_is_not_json(self, model_copy):
        with open(model_copy / WEIGHTS, "wb") as f:
            f.write(struct.pack("<Q", 5) + b"{oops")
        with pytest.raises(OSError, match="JSON|json"):
            load(model_copy)

    def test_missing_tensor_is_named(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        # drop the tensor's bytes too, and close the gap: a gap is an error of its own (the tensors tile the data)
        begin, end = header.pop("decoder.conv_out.conv.bias")["data_offsets"]
        for info in header.values():
            if "data_offsets" in info and info["data_offsets"][0] >= end:
                info["data_offsets"] = [o - (end - begin) for o in info["data_offsets"]]
        write_safetensors(model_copy / WEIGHTS, header, data[:begin] + data[end:])
        with pytest.raises(ValueError, match=r"1 missing tensor\(s\) 'decoder\.conv_out\.conv\.bias'"):
            load(model_copy)

    def test_unexpected_tensor_is_named(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        header["decoder.extra.weight"] = {"dtype": "F32", "shape": [0], "data_offsets": [len(data), len(data)]}
        write_safetensors(model_copy / WEIGHTS, header, data)
        with pytest.raises(ValueError, match=r"1 unexpected 'decoder\.extra\.weight'"):
            load(model_copy)

    def test_wrong_shape_is_named(self, model_copy):
        # a config that disagrees with the checkpoint: every conv shape is wrong, and the error says so
        cfg = json.loads((model_copy / "config.json").read_text())
        cfg["latent_channels"] = 8
        (model_copy / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(
            ValueError,
            match=r"'decoder\.conv_in\.conv\.weight' has shape \[8, 4, 3, 3, 3\], "
            r"expected \[8, 8, 3, 3, 3\]",
        ):
            load(model_copy)

    def test_config_that_is_not_an_object(self, model_copy):
        (model_copy / "config.json").write_text("[1, 2, 3]")
        with pytest.raises(ValueError, match="JSON object"):
            load(model_copy)

    def test_config_that_is_not_json(self, model_copy):
        (model_copy / "config.json").write_text("{not json")
        with pytest.raises(ValueError, match="not valid JSON"):
            load(model_copy)

    def test_config_of_another_class(self, model_copy):
        cfg = json.loads((model_copy / "config.json").read_text())
        cfg["_class_name"] = "AutoencoderKL"
        (model_copy / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="AutoencoderKL,"):
            load(model_copy)

    def test_missing_folder_and_weights(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no model folder"):
            load(tmp_path / "nowhere")
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(FileNotFoundError, match="safetensors"):
            load(tmp_path)

    def test_unsupported_dtype_argument(self):
        with pytest.raises(ValueError, match="float64"):
            load(TINY, torch_dtype="float64")

    def test_sharded_checkpoint_loads_the_same_weights(self, model_copy):
        header, data = read_safetensors(model_copy / WEIGHTS)
        names = sorted(k for k in header if k != "__metadata__")
        weight_map = {}
        for shard, part in (("a", names[: len(names) // 2]), ("b", names[len(names) // 2 :])):
            fname = f"diffusion_pytorch_model-0000{1 if shard == 'a' else 2}-of-00002.safetensors"
            blob, sub = b"", {}
            for n in part:
                begin, end = header[n]["data_offsets"]
                sub[n] = dict(header[n], data_offsets=[len(blob), len(blob) + end - begin])
                blob += data[begin:end]
                weight_map[n] = fname
            write_safetensors(model_copy / fname, sub, blob)
        os.remove(model_copy / WEIGHTS)
        index = {"metadata": {"total_size": len(data)}, "weight_map": weight_map}
        (model_copy / (WEIGHTS + ".index.json")).write_text(json.dumps(index))
        z = np.random.default_rng(0).standard_normal((1, 4, 2, 4, 4), dtype=np.float32)
        sharded = load(model_copy).decode(z).sample
        single = load(TINY).decode(z).sample
        assert np.array_equal(sharded, single)

    def test_memory_limit_too_small_for_the_weights(self):
        before = cogvideo_c.memory_stats()["allocated_bytes.all.current"]
        cogvideo_c.set_memory_limit("cpu", before + 1024)
        try:
            with pytest.raises(cogvideo_c.OutOfMemoryError, match="memory limit"):
                load(TINY)
        finally:
            cogvideo_c.set_memory_limit("cpu", 0)
        assert cogvideo_c.memory_stats()["allocated_bytes.all.current"] == before


@pytest.fixture(scope="module")
def vae():
    return load(TINY)


@pytest.mark.usefixtures("cpu_memory_checked")
class TestArrays:
    def test_wrong_channel_count(self, vae):
        with pytest.raises(ValueError, match="expects 4 channels, got 3"):
            vae.decode(np.zeros((1, 3, 2, 4, 4), np.float32))
        with pytest.raises(ValueError, match="expects 3 channels, got 4"):
            vae.encode(np.zeros((1, 4, 1, 16, 16), np.float32))

    def test_wrong_rank(self, vae):
        with pytest.raises(ValueError, match="5-D"):
            vae.decode(np.zeros((4, 2, 4, 4), np.float32))

    def test_empty_dimension(self, vae):
        with pytest.raises(ValueError, match="at least 1"):
            vae.decode(np.zeros((1, 4, 0, 4, 4), np.float32))

    def test_too_small_for_the_encoder(self, vae):
        with pytest.raises(ValueError, match="too small"):
            vae.encode(np.zeros((1, 3, 1, 2, 2), np.float32))

    def test_non_numeric_array(self, vae):
        with pytest.raises(ValueError, match="real-valued"):
            vae.decode(np.array([["a"]]))

    def test_float64_and_non_contiguous_arrays_are_converted(self, vae):
        z = np.random.default_rng(1).standard_normal((1, 4, 2, 4, 6), dtype=np.float32)
        reference = vae.decode(z).sample
        as_f64 = vae.decode(z.astype(np.float64)).sample
        strided = np.asfortranarray(z)
        transposed_view = np.ascontiguousarray(z.transpose(0, 1, 2, 4, 3)).transpose(0, 1, 2, 4, 3)
        assert not transposed_view.flags.c_contiguous
        assert np.array_equal(as_f64, reference)
        assert np.array_equal(vae.decode(strided).sample, reference)
        assert np.array_equal(vae.decode(transposed_view).sample, reference)

    def test_bad_tiling_parameters(self, vae):
        with pytest.raises(ValueError, match="between 0 and 1"):
            vae.enable_tiling(tile_overlap_factor_height=1.5)
        with pytest.raises(ValueError, match="positive integer"):
            vae.enable_tiling(tile_sample_min_height=-8)
        assert not vae.use_tiling  # a rejected call changes nothing
