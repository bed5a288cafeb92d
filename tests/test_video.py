"""cogvideo_c.video: the written files are read back by an outside decoder (ffmpeg via imageio-ffmpeg, Pillow)."""

import os

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from cogvideo_c.video import export_to_gif, export_to_video

# libx264 at crf 25 on flat colours, after the RGB -> yuv420p -> RGB round trip (BT.601 limited range)
MP4_TOLERANCE = 4.0


def read_mp4(path):
    """(metadata, frames as uint8 [N, H, W, 3]) decoded by ffmpeg."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return meta, np.stack(frames)


def codec_of(path):
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    gen.close()
    return meta["codec"]


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 40), (30, 30, 30), (250, 250, 250)]


def solid_float_frames(h, w, colours):
    return [np.broadcast_to(np.array(c, np.float32) / 255, (h, w, 3)).copy() for c in colours]


def test_mp4_from_float_frames(tmp_path):
    out = tmp_path / "video.mp4"
    frames = solid_float_frames(48, 64, COLOURS)
    assert export_to_video(frames, str(out), fps=8) == str(out)
    meta, got = read_mp4(out)
    assert codec_of(out).startswith("h264"), codec_of(out)
    assert meta["fps"] == pytest.approx(8)
    assert got.shape == (len(COLOURS), 48, 64, 3), got.shape
    for i, colour in enumerate(COLOURS):
        mean = got[i].reshape(-1, 3).mean(axis=0)
        err = np.abs(mean - colour).max()
        assert err <= MP4_TOLERANCE, f"frame {i}: mean colour {mean.round(1)} vs {colour} (err {err:.2f})"
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == len(COLOURS)


def test_mp4_from_pil_and_uint8_and_4d_array(tmp_path):
    h, w = 32, 48
    pil = [Image.new("RGB", (w, h), c) for c in COLOURS[:3]]
    array = np.stack([np.full((h, w, 3), c, np.uint8) for c in COLOURS[:3]])
    for name, frames in (("pil", pil), ("uint8", list(array)), ("array4d", array)):
        out = export_to_video(frames, str(tmp_path / f"{name}.mp4"), fps=10)
        _, got = read_mp4(out)
        assert got.shape == (3, h, w, 3), (name, got.shape)
        err = np.abs(got.reshape(3, -1, 3).mean(axis=1) - np.array(COLOURS[:3])).max()
        assert err <= MP4_TOLERANCE, (name, err)


def test_mp4_macro_block_size(tmp_path):
    frames = solid_float_frames(30, 50, COLOURS[:2])
    _, padded = read_mp4(export_to_video(frames, str(tmp_path / "a.mp4")))  # default 16: imageio scales up
    assert padded.shape[1:3] == (32, 64)
    for block in (None, 1):
        _, kept = read_mp4(export_to_video(frames, str(tmp_path / f"b{block}.mp4"), macro_block_size=block))
        assert kept.shape[1:3] == (30, 50)


def test_mp4_bitrate_and_default_temp_path(tmp_path):
    frames = solid_float_frames(16, 16, COLOURS[:4])
    path = export_to_video(frames, bitrate=200_000, fps=4)
    try:
        assert path.endswith(".mp4") and os.path.getsize(path) > 0
        meta, got = read_mp4(path)
        assert got.shape == (4, 16, 16, 3) and meta["fps"] == pytest.approx(4)
    finally:
        os.remove(path)


def test_gif(tmp_path):
    out = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 24), c) for c in COLOURS]
    assert export_to_gif(frames, str(out), fps=5) == str(out)
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.size == (40, 24)
        assert gif.n_frames == len(COLOURS)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        for i, colour in enumerate(COLOURS):
            gif.seek(i)
            got = np.asarray(gif.convert("RGB"))
            assert (got == colour).all(), f"frame {i}: colours {np.unique(got.reshape(-1, 3), axis=0)} vs {colour}"


def test_float_conversion_truncates_like_diffusers(tmp_path):
    """diffusers' export_to_video does (frame * 255).astype(uint8): 0.5 -> 127, 0.999 -> 254; <0 / >1 clip."""
    values = [(0.5, 0.999, 0.0), (1.0, 0.2, 0.7), (-0.5, 1.5, 0.4)]
    want = [(127, 254, 0), (255, 51, 178), (0, 255, 102)]
    path = export_to_gif([np.full((8, 8, 3), v, np.float32) for v in values], str(tmp_path / "t.gif"))
    with Image.open(path) as gif:
        for i, colour in enumerate(want):
            gif.seek(i)
            assert tuple(np.asarray(gif.convert("RGB"))[0, 0]) == colour


BAD_FRAMES = [
    ([], "empty"),
    (np.zeros((0, 8, 8, 3), np.float32), "empty"),
    ([np.zeros((8, 8), np.float32)], r"\[height, width, 3\]"),
    ([np.zeros((8, 8, 4), np.float32)], r"\[height, width, 3\]"),
    ([np.zeros((8, 8, 3)), np.zeros((8, 16, 3))], "same size"),
    (np.zeros((1, 2, 8, 8, 3), np.float32), "batch of videos"),
    (np.zeros((8, 8, 3), np.float32), r"\[frames, height, width, 3\]"),
    ([np.full((8, 8, 3), np.nan, np.float32)], "NaN"),
    ([np.zeros((8, 8, 3), np.int32)], "dtype"),
    (["frame.png"], "PIL image or a numpy array"),
    ("frames", "list of PIL images"),
]


@pytest.mark.parametrize("frames,match", BAD_FRAMES)
@pytest.mark.parametrize("export", [export_to_video, export_to_gif])
def test_bad_frames(tmp_path, export, frames, match):
    out = tmp_path / "out.bin"
    with pytest.raises(ValueError, match=match):
        export(frames, str(out))
    assert not out.exists()


def test_bad_options(tmp_path):
    frames = solid_float_frames(16, 16, COLOURS[:1])
    for kwargs, match in (
        (dict(fps=0), "fps"),
        (dict(fps=-3), "fps"),
        (dict(quality=0), "quality"),
        (dict(quality=11), "quality"),
        (dict(macro_block_size=0), "macro_block_size"),
    ):
        with pytest.raises(ValueError, match=match):
            export_to_video(frames, str(tmp_path / "x.mp4"), **kwargs)
    with pytest.raises(ValueError, match="even"):
        export_to_video(solid_float_frames(15, 16, COLOURS[:1]), str(tmp_path / "x.mp4"), macro_block_size=1)
    with pytest.raises(ValueError, match="fps"):
        export_to_gif(frames, str(tmp_path / "x.gif"), fps=2000)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("export,suffix", [(export_to_video, ".mp4"), (export_to_gif, ".gif")])
def test_bad_output_path(tmp_path, export, suffix):
    frames = solid_float_frames(16, 16, COLOURS[:2])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(frames, str(tmp_path / "missing" / f"out{suffix}"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        export(frames, str(tmp_path / "file" / f"out{suffix}"))
    (tmp_path / f"dir{suffix}").mkdir()
    with pytest.raises(IsADirectoryError):
        export(frames, str(tmp_path / f"dir{suffix}"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            export_to_video(solid_float_frames(16, 16, COLOURS[:1]), str(ro / "out.mp4"))
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf"), True, "8", None])
@pytest.mark.parametrize("export,suffix", [(export_to_video, ".mp4"), (export_to_gif, ".gif")])
def test_bad_fps_is_refused_before_ffmpeg_starts(tmp_path, monkeypatch, export, suffix, fps):
    import subprocess

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("ffmpeg was started"))
    with pytest.raises(ValueError, match="fps must be a positive finite number"):
        export(solid_float_frames(16, 16, COLOURS[:2]), str(tmp_path / f"out{suffix}"), fps=fps)
    assert not any(tmp_path.iterdir())


def test_nan_in_a_later_frame_is_refused_before_ffmpeg_starts(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("ffmpeg was started"))
    frames = solid_float_frames(16, 16, COLOURS[:3])
    frames[2][3, 4, 1] = np.inf
    with pytest.raises(ValueError, match="frame 2 contains NaN or infinite values"):
        export_to_video(frames, str(tmp_path / "out.mp4"))


@pytest.mark.parametrize(
    "export,name,match",
    [
        (export_to_video, "out.webm", r"unsupported extension '\.webm'; export_to_video writes H\.264 into \.mp4"),
        (export_to_video, "out.gif", r"unsupported extension '\.gif'.*export_to_gif writes \.gif"),
        (export_to_video, "out", r"unsupported extension '\(none\)'"),
        (export_to_gif, "out.mp4", r"unsupported extension '\.mp4'; export_to_gif writes \.gif"),
    ],
)
def test_unsupported_container_is_refused(tmp_path, export, name, match):
    with pytest.raises(ValueError, match=match):
        export(solid_float_frames(16, 16, COLOURS[:2]), str(tmp_path / name))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", [".m4v", ".mov", ".mkv", ".avi", ".MP4"])
def test_other_h264_containers(tmp_path, suffix):
    out = export_to_video(solid_float_frames(16, 16, COLOURS[:3]), str(tmp_path / f"v{suffix}"), fps=5)
    meta, got = read_mp4(out)  # decoded by ffmpeg
    assert meta["codec"].startswith("h264") and got.shape == (3, 16, 16, 3)


def test_ffmpeg_failure_is_a_clean_oserror_and_prints_nothing(tmp_path, capfd):
    out = tmp_path / "out.mp4"
    with pytest.raises(OSError, match=r"ffmpeg could not write .*out\.mp4.* \(exit status \d+\): .*lots") as err:
        export_to_video(solid_float_frames(16, 16, COLOURS[:2]), str(out), bitrate="lots")
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)
    captured = capfd.readouterr()  # the file descriptors: what ffmpeg itself would have printed
    assert captured.err == "" and captured.out == ""
    assert not out.exists()  # the partial file is removed


def test_bad_bitrate_values(tmp_path):
    for bitrate in (0, -5, True, 2.5):
        with pytest.raises(ValueError, match="bitrate must be a positive int"):
            export_to_video(solid_float_frames(16, 16, COLOURS[:1]), str(tmp_path / "x.mp4"), bitrate=bitrate)


def test_same_bytes_as_imageio_ffmpeg_write_frames(tmp_path):
    # ffmpeg runs here directly (to capture its log); the command must stay the one imageio-ffmpeg builds
    frames = [np.random.default_rng(i).random((30, 50, 3)).astype(np.float32) for i in range(4)]
    ours = export_to_video(frames, str(tmp_path / "ours.mp4"), fps=8)
    writer = imageio_ffmpeg.write_frames(
        str(tmp_path / "imageio.mp4"), (50, 30), fps=8, quality=5.0, codec="libx264", macro_block_size=16,
        ffmpeg_log_level="error",
    )  # fmt: skip
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray((f * 255).astype(np.uint8)))
    writer.close()
    assert open(ours, "rb").read() == (tmp_path / "imageio.mp4").read_bytes()


# ------------------------------------------------------------------------------------------------------------------
# load_image / load_video
# ------------------------------------------------------------------------------------------------------------------


def test_load_video_round_trips_export_to_video_and_export_to_gif(tmp_path):
    from cogvideo_c import load_video

    mp4 = export_to_video(solid_float_frames(32, 48, COLOURS), str(tmp_path / "v.mp4"), fps=8)
    frames = load_video(mp4)
    assert len(frames) == len(COLOURS) and all(f.mode == "RGB" and f.size == (48, 32) for f in frames)
    for frame, colour in zip(frames, COLOURS):
        assert np.abs(np.asarray(frame).reshape(-1, 3).mean(axis=0) - colour).max() <= MP4_TOLERANCE
    gif = export_to_gif([Image.new("RGB", (40, 24), c) for c in COLOURS], str(tmp_path / "a.gif"), fps=5)
    frames = load_video(gif)
    assert len(frames) == len(COLOURS)
    for frame, colour in zip(frames, COLOURS):
        assert frame.mode == "RGB" and (np.asarray(frame) == colour).all()  # a GIF's palette holds them exactly
    halves = load_video(gif, convert_method=lambda fs: [f.resize((20, 12)) for f in fs])
    assert [f.size for f in halves] == [(20, 12)] * len(COLOURS)


def test_load_image_from_path_and_pil(tmp_path):
    from cogvideo_c import load_image

    want = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(want).convert("RGBA").save(tmp_path / "x.png")
    got = load_image(str(tmp_path / "x.png"))
    assert got.mode == "RGB" and (np.asarray(got) == want).all()  # PNG is lossless
    assert load_image(tmp_path / "x.png", convert_method=lambda im: im.convert("L")).mode == "L"
    grey = load_image(Image.fromarray(want[..., 0]))
    assert grey.mode == "RGB" and (np.asarray(grey)[..., 2] == want[..., 0]).all()
    # EXIF orientation 6 (rotate 90 degrees clockwise to display) is applied, as diffusers does
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(want).save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert load_image(str(tmp_path / "r.jpg")).size == (12, 20)


@pytest.mark.parametrize("loader", ["load_image", "load_video"])
def test_loaders_refuse_urls_and_bad_paths(tmp_path, loader):
    import cogvideo_c

    load = getattr(cogvideo_c, loader)
    with pytest.raises(ValueError, match="is a URL: cogvideo_c does not download files"):
        load("https://example.com/panda.mp4")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(str(tmp_path / "missing.png"))
    with pytest.raises(OSError, match="is a directory, not a regular file"):
        load(str(tmp_path))
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):  # opening it would block forever
        load(str(fifo))
    with pytest.raises(ValueError, match="local file path"):
        load(42)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(OSError) as err:
        load(str(tmp_path / "junk.mp4"))
    assert "junk.mp4" in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 600
