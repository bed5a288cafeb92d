"""The embedded tiny VAE and the `cogvideo-c` command."""

import json
import os

import numpy as np
import pytest

import cogvideo_c
from cogvideo_c import cli
from cogvideo_c._load import _C
from conftest import VAE_FIXTURES


def test_embedded_tiny_vae_has_diffusers_state_dict(tmp_path):
    # the diffusers-made fixture has the same architecture: every name, shape and dtype must agree
    folder = cogvideo_c.tiny.make_tiny_vae(str(tmp_path / "vae"))
    ours = _C.safetensors_index(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    diffusers_made = _C.safetensors_index(os.path.join(VAE_FIXTURES, "tiny", "diffusion_pytorch_model.safetensors"))
    assert ours == diffusers_made
    with open(os.path.join(VAE_FIXTURES, "tiny", "config.json")) as f:
        reference = json.load(f)
    for key, value in cogvideo_c.tiny.TINY_VAE_CONFIG.items():
        if not key.startswith("_"):
            assert reference[key] == value, key


def test_vae_decode_command_runs_the_embedded_default(tmp_path, capsys):
    out = tmp_path / "video.npy"
    assert cli.main(["vae-decode", "--frames", "2", "--height", "4", "--width", "6", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "video (1, 3, 8, 32, 48)" in printed and "peak memory" in printed
    video = np.load(out)
    assert video.shape == (1, 3, 8, 32, 48) and np.isfinite(video).all() and video.std() > 1e-3


def test_command_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli.main(["vae-decode", "--model", str(tmp_path / "missing")]) == 2
    assert "no model folder" in capsys.readouterr().err


def test_generate_writes_a_real_mp4_with_the_embedded_pipeline(tmp_path, capsys):
    import imageio_ffmpeg

    out = tmp_path / "panda.mp4"
    assert cli.main(["generate", "--prompt", "a panda playing a guitar", "--steps", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generated 9 frames of 64x64" in printed and "transformer" in printed and "peak" in printed
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (64, 64) and len(frames) == 9  # read back by ffmpeg: an outside truth


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--output", "{tmp}/missing/x.mp4"], "does not exist"),
        (["--output", "{tmp}"], "it is a folder"),
        (["--output", "{tmp}/x.webm"], "unsupported extension '.webm'"),
        (["--output", "{tmp}/x"], "unsupported extension '(none)'"),
        (["--output", "{tmp}/x.mp4", "--fps", "0"], "fps must be a positive finite number, got 0"),
        (["--output", "{tmp}/x.gif", "--fps", "-2"], "fps must be a positive finite number, got -2"),
    ],
)
def test_generate_checks_output_and_fps_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, match):
    from cogvideo_c import pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the output was checked")

    monkeypatch.setattr(pipeline.CogVideoXPipeline, "from_pretrained", classmethod(no_loading))
    monkeypatch.setattr(cli, "make_tiny_pipeline", no_loading)
    argv = ["generate"] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cogvideo-c: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written


def test_generate_writes_a_gif_when_asked(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "panda.gif"
    assert cli.main(["generate", "--steps", "1", "--fps", "4", "--output", str(out)]) == 0
    with Image.open(out) as gif:  # read back by Pillow
        assert gif.format == "GIF" and gif.size == (64, 64) and gif.n_frames == 9 and gif.info["duration"] == 250


def test_help_shows_every_command_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"generate", "make-tiny", "vae-decode", "make-tiny-vae"}
    for name, sub in commands.items():
        assert f"\n  {name} " in top, f"the description does not describe {name}"
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.option_strings:
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings} shows no default"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cogvideo-c {cogvideo_c.__version__}"


def test_make_tiny_writes_a_diffusers_layout_pipeline(tmp_path):
    folder = tmp_path / "tiny"
    assert cli.main(["make-tiny", str(folder)]) == 0
    index = json.loads((folder / "model_index.json").read_text())
    assert set(index) >= {"tokenizer", "text_encoder", "vae", "transformer", "scheduler"}
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    video = pipe("a cat", num_inference_steps=2, generator=1, output_type="np").frames
    assert video.shape == (1, 9, 64, 64, 3) and 0.0 <= video.min() and video.max() <= 1.0


def test_drop_in_demo_script_runs_and_differs_from_diffusers_only_in_its_import(tmp_path):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "cli_demo.py")
    code = [line for line in open(script).read().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert [line for line in code if line.startswith(("from diffusers", "import diffusers", "import torch"))] == []
    assert (
        "from cogvideo_c import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline, export_to_video"
        in code
    )
    out = tmp_path / "demo.mp4"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, script, "--prompt", "A girl riding a bike.", "--num_inference_steps", "2", "--output_path",
         str(out)], capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 1000


def test_dtype_takes_torch_dtype_aliases_and_refuses_others(capsys):
    for text, want in (("fp16", "float16"), ("BF16", "bfloat16"), ("half", "float16"), ("float32", "float32")):
        assert cli._parser().parse_args(["generate", "--dtype", text]).dtype == want
    with pytest.raises(SystemExit) as done:
        cli.main(["vae-decode", "--dtype", "int8"])
    assert done.value.code == 2
    err = capsys.readouterr().err  # argparse's wording of the choices varies between Python versions
    assert "argument --dtype: invalid choice: 'int8'" in err and "bfloat16" in err


@pytest.mark.parametrize(
    "flags,plan",
    [
        (["--device", "emu"], None),
        (["--device", "emu", "--offload", "model"], None),
        (["--device", "emu", "--offload", "sequential"], None),
        (["--device", "emu", "--max-memory", "1GB"], "every component stays on the device"),
    ],
)
def test_generate_on_the_emulated_device_with_each_strategy_writes_the_same_frames(tmp_path, capsys, flags, plan):
    """The same seed gives the same frames whatever the device and strategy (the MP4s decode to the same pixels)."""
    import imageio_ffmpeg

    def frames(path, extra):
        assert cli.main(["generate", "--prompt", "a panda", "--steps", "2", "--output", str(path), *extra]) == 0
        reader = imageio_ffmpeg.read_frames(str(path))
        next(reader)
        return [np.frombuffer(f, dtype=np.uint8) for f in reader]

    reference = frames(tmp_path / "cpu.mp4", [])
    capsys.readouterr()
    got = frames(tmp_path / "emu.mp4", flags)
    captured = capsys.readouterr()
    assert "device emu" in captured.out and "encode_prompt" in captured.out  # the memory report, by stage
    if plan:
        assert plan in captured.err
    assert len(got) == len(reference) and all(np.array_equal(a, b) for a, b in zip(got, reference))


def test_generate_refuses_max_memory_with_a_fixed_strategy(tmp_path, capsys):
    args = [
        "generate",
        "--prompt",
        "x",
        "--output",
        str(tmp_path / "x.mp4"),
        "--offload",
        "model",
        "--max-memory",
        "1GB",
    ]
    assert cli.main(args) == 2
    assert "--max-memory goes with --offload auto" in capsys.readouterr().err


def test_generate_with_video_runs_video_to_video_on_the_embedded_pipeline(tmp_path, capsys):
    """--video VID --strength S: CogVideoXVideoToVideoPipeline on the embedded tiny pipeline (its transformer takes
    the VAE's latent channels, as text-to-video's). The output has the input's 9 frames (9 = 4k + 1 decode back to
    9), at the tiny model's 64 x 64, and strength 0.5 of 4 steps runs 2 (diffusers' get_timesteps)."""
    import imageio_ffmpeg

    from cogvideo_c import export_to_video

    ramp = np.linspace(0, 1, 9 * 48 * 80 * 3, dtype=np.float32).reshape(9, 48, 80, 3)
    source = export_to_video(list(ramp), str(tmp_path / "source.mp4"), fps=8)
    out = tmp_path / "v2v.mp4"
    argv = ["generate", "--video", source, "--strength", "0.5", "--steps", "4", "--output", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"from {source} (9 frames) at strength 0.5: 2 of 4 steps" in printed, printed
    assert "generated 9 frames of 64x64" in printed and "encode_video" in printed, printed
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (64, 64) and len(list(reader)) == 9  # read back by ffmpeg


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--video", "{tmp}/missing.mp4"], "video '{tmp}/missing.mp4' does not exist"),
        (["--video", "{tmp}/text.mp4"], "cannot read video '{tmp}/text.mp4'"),
        (["--video", "{tmp}/source.gif", "--strength", "0"], r"strength should in (0.0, 1.0] but is 0.0"),
        (["--video", "{tmp}/source.gif", "--strength", "1.5"], r"strength should in (0.0, 1.0] but is 1.5"),
        (["--video", "{tmp}/source.gif", "--frames", "9"], "--frames does not apply with --video"),
        (["--strength", "0.5"], "--strength goes with --video"),
        (["--video", "{tmp}/source.gif", "--image", "{tmp}/source.gif"], "--image (image to video) and --video"),
    ],
)
def test_generate_checks_the_video_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, match):
    from cogvideo_c import export_to_gif

    export_to_gif([np.zeros((16, 16, 3), np.float32)] * 3, str(tmp_path / "source.gif"))
    (tmp_path / "text.mp4").write_text("not a video")

    def no_loading(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the video was checked")

    monkeypatch.setattr(cli, "make_tiny_pipeline", no_loading)
    argv = ["generate", "--output", str(tmp_path / "out.mp4")] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cogvideo-c: error: ") and "Traceback" not in err, err
    assert match.replace("{tmp}", str(tmp_path)) in err, err
    assert not (tmp_path / "out.mp4").exists()
