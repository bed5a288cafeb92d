"""What a reviewer acting as a new user still hit after issue 7's fixes (each a defect before this change)."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import cli
from cogvideo_c.video import check_output_path, export_to_video
from conftest import FIXTURES

PIPELINE = os.path.join(FIXTURES, "pipeline", "tiny_2b")


@pytest.fixture(scope="module")
def transformer():
    return cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(PIPELINE, subfolder="transformer")


def _inputs(tr, batch=1):
    c = tr.config
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((batch, 2, c.in_channels, 4, 4)).astype(np.float32)
    text = rng.standard_normal((batch, c.max_text_seq_length, c.text_embed_dim)).astype(np.float32)
    return hidden, text


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_timesteps_are_refused_by_the_transformer(transformer, bad):
    hidden, text = _inputs(transformer)
    with pytest.raises(ValueError, match="timestep must be finite"):
        transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=[bad])
    out = transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=[999]).sample  # still works
    assert out.shape == hidden.shape and np.isfinite(out).all()


def test_model_repr_prints_the_class_and_its_config(transformer):
    text = repr(transformer)
    name, config = text.split(" ", 1)
    assert name == "CogVideoXTransformer3DModel"
    saved = json.loads(config)
    with open(os.path.join(PIPELINE, "transformer", "config.json")) as f:
        on_disk = json.load(f)
    for key in ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels"):
        assert saved[key] == on_disk[key], key  # the outside truth: diffusers' own config.json
    assert saved["_class_name"] == "CogVideoXTransformer3DModel"


@pytest.mark.parametrize(
    "device,reason",
    [
        ("mps", "unknown device"),
        ("cpu:1", "there is one cpu device"),
        pytest.param(
            "cuda:0",
            "(this build has no CUDA backend|no CUDA device is present)",
            marks=pytest.mark.skipif(cogvideo_c.cuda_is_available(), reason="cuda runs models here"),
        ),
    ],
)
def test_devices_that_cannot_run_models_are_refused_with_the_reason(transformer, device, reason):
    with pytest.raises(ValueError, match=rf"device '{device}': .*{reason}"):
        transformer.to(device)
    assert transformer.to("cpu") is transformer and transformer.to("cpu:0") is transformer
    assert transformer.device == "cpu"


def test_the_emulated_accelerator_runs_models(transformer):
    before = cogvideo_c.memory_stats("emu")["weights_bytes.current"]
    assert transformer.to("emu") is transformer and transformer.device == "emu"
    # every weight group has its device copy: the emulated device holds the model's weight bytes
    assert cogvideo_c.memory_stats("emu")["weights_bytes.current"] - before == transformer.weight_bytes
    transformer.to("cpu")
    assert cogvideo_c.memory_stats("emu")["weights_bytes.current"] == before and transformer.device == "cpu"


def test_padding_to_an_absurd_model_max_length_is_a_value_error(tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(os.path.join(PIPELINE, "tokenizer"), folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = 1e20  # was an OverflowError from the tokenizers library
    cfg_path.write_text(json.dumps(cfg))
    tok = cogvideo_c.T5Tokenizer.from_pretrained(str(folder))
    with pytest.raises(ValueError, match="model_max_length.*more than the 1048576"):
        tok("a b", padding="max_length")
    assert len(tok("a b", padding="max_length", max_length=8)["input_ids"]) == 8


def test_an_output_path_that_cannot_be_created_is_refused_before_work(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc, where root's access() says yes but no file can be created")
    with pytest.raises(OSError, match=r"cannot write '/proc/x\.mp4'"):
        check_output_path("/proc/x.mp4", (".mp4",))
    assert not os.path.exists("/proc/x.mp4")
    ok = tmp_path / "fine.mp4"
    assert check_output_path(str(ok), (".mp4",)) == str(ok) and not ok.exists()  # the probe leaves nothing


def test_cli_refuses_an_uncreatable_output_before_the_model_loads(capsys, monkeypatch):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(cogvideo_c.CogVideoXPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    assert cli.main(["generate", "--model", PIPELINE, "--output", "/proc/x.mp4"]) == 2
    assert "cannot write '/proc/x.mp4'" in capsys.readouterr().err


def test_cli_takes_a_fractional_fps_as_export_to_video_does(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert cli.main(["generate", "--steps", "1", "--fps", "7.5", "--output", str(out)]) == 0
    frames = cogvideo_c.load_video(str(out))
    assert len(frames) >= 1 and out.stat().st_size > 0


def test_load_video_leaves_no_unclosed_files(tmp_path):
    frames = [np.full((16, 16, 3), v, np.float32) for v in (0.1, 0.5, 0.9)]
    path = export_to_video(frames, str(tmp_path / "v.mp4"), fps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        assert len(cogvideo_c.load_video(path)) == 3
        import gc

        gc.collect()  # an unclosed pipe would warn here, as it was collected


@pytest.mark.parametrize(
    "component,key,value,match",
    [
        ("vae", "layers_per_block", 2**20, r"{folder}: config 'layers_per_block' = 1048576 implies at least"),
        ("transformer", "num_layers", 2**20, r"{folder}: config 'num_layers' = 1048576 implies at least"),
        ("transformer", "num_attention_heads", 2**20, r"{folder}/config.json: .*num_attention_heads x attention_head"),
    ],
)
def test_errors_from_the_c_checks_name_the_model_folder(tmp_path, component, key, value, match):
    folder = tmp_path / component
    shutil.copytree(os.path.join(PIPELINE, component), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    cls = cogvideo_c.AutoencoderKLCogVideoX if component == "vae" else cogvideo_c.CogVideoXTransformer3DModel
    with pytest.raises(ValueError, match=match.format(folder=str(folder))):
        cls.from_pretrained(str(folder))
