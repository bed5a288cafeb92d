"""`cogvideo-c generate --image IMG`: image-to-video with the embedded tiny image-to-video pipeline (or --model), the
image checked before any model loads. The written MP4 is read back with ffmpeg (the outside truth for the file)."""

from pathlib import Path

import numpy as np
from PIL import Image

import cogvideo_c
from cogvideo_c import cli

T2V_FOLDER = Path(__file__).resolve().parent / "fixtures" / "pipeline" / "tiny_5b"


def _image(path, seed):
    Image.fromarray((np.random.default_rng(seed).random((48, 80, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _read(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, np.stack([np.frombuffer(f, np.uint8) for f in reader])


def test_generate_with_image_runs_the_embedded_image_to_video_pipeline(tmp_path, capsys):
    videos = []
    for seed in (0, 1):
        out = tmp_path / f"i2v{seed}.mp4"
        argv = [
            "generate",
            "--image",
            _image(tmp_path / f"first{seed}.png", seed),
            "--steps",
            "2",
            "--output",
            str(out),
        ]
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
        assert "model: embedded tiny random image-to-video pipeline" in printed
        assert "generated 9 frames of 64x64" in printed and "encode_image" in printed and "vae" in printed
        meta, frames = _read(out)
        assert meta["size"] == (64, 64) and len(frames) == 9
        videos.append(frames.astype(np.int16))
    # the image conditions the video: another first frame, another video (same seed, prompt and model)
    assert np.abs(videos[0] - videos[1]).mean() > 1.0


def test_the_embedded_image_to_video_pipeline_is_what_python_loads(tmp_path):
    """make_tiny_pipeline(image_to_video=True) names the I2V class, and its transformer takes 2 x 4 channels."""
    folder = cogvideo_c.tiny.make_tiny_pipeline(str(tmp_path / "tiny"), image_to_video=True)
    pipe = cogvideo_c.DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is cogvideo_c.CogVideoXImageToVideoPipeline
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels == 8


def test_generate_refuses_a_missing_image_before_loading(tmp_path, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a model loaded before the image was checked")

    monkeypatch.setattr(cogvideo_c.CogVideoXImageToVideoPipeline, "from_pretrained", no_load)
    argv = ["generate", "--image", str(tmp_path / "none.png"), "--output", str(tmp_path / "x.mp4")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cogvideo-c: error: image") and "none.png' does not exist" in err


def test_generate_with_image_and_a_text_to_video_model_says_so(tmp_path, capsys):
    argv = ["generate", "--image", _image(tmp_path / "a.png", 0), "--model", str(T2V_FOLDER), "--steps", "1",
            "--output", str(tmp_path / "x.mp4")]  # fmt: skip
    assert cli.main(argv) == 2
    assert "in_channels (4) must be twice the VAE's latent_channels (4)" in capsys.readouterr().err
