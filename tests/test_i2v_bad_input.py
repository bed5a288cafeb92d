"""cogvideo_c.CogVideoXImageToVideoPipeline rejects bad images and arguments with a clear error before any model runs
(the tokenizer, T5, the VAE and the transformer are guarded: touching them fails the test), and leaks nothing.

What diffusers resizes is resized the same way (tests/test_i2v_parity.py: a 40x56 and a 24x32 PIL image, a 24x40
array, all made 32x48); what it refuses or would only fail on deep inside (a grey image reaching the VAE, an image
count the latents cannot be concatenated with) is refused here, up front, with a message naming the fix.
Uses the tiny 5b-I2V fixture of tests/reference/make_i2v_fixtures.py (32x48 pixels, learned positional table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline_bad_input import _guarded

import cogvideo_c

FOLDER = Path(__file__).resolve().parent / "fixtures" / "i2v" / "tiny_5b_i2v"
GOOD = dict(prompt="dance monkey", height=32, width=48, num_frames=9, num_inference_steps=2, guidance_scale=6.0,
            max_sequence_length=16, output_type="np")  # fmt: skip
_PIPE = {}


def _pipe():
    if "p" not in _PIPE:
        p = cogvideo_c.CogVideoXImageToVideoPipeline.from_pretrained(str(FOLDER))
        p.set_progress_bar_config(disable=True)
        _PIPE["p"] = p
    return _PIPE["p"]


def rgb(h=40, w=56, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def rejects(error, match, **changes):
    """The call with `changes` raises `error` matching `match`, nothing runs, and no allocation stays behind."""
    kw = dict(GOOD, **changes)
    kw.setdefault("image", rgb())
    loaded = _pipe()  # loaded first: its weights are not what the check below counts
    before = cogvideo_c.memory_stats()["allocated_bytes.all.current"]
    with _guarded(loaded) as pipe, pytest.raises(error, match=match) as info:
        pipe(**kw)
    assert cogvideo_c.memory_stats()["allocated_bytes.all.current"] == before
    return str(info.value)


def test_the_guarded_good_call_reaches_the_models():
    """The guard lets good arguments through to the first model (the tokenizer's T5): the failures below are the
    checks', not the guard's."""
    with _guarded(_pipe()) as pipe, pytest.raises(AssertionError, match="before the bad input was rejected"):
        pipe(image=rgb(), **GOOD)


@pytest.mark.parametrize(
    "image, match",
    [
        (None, "`image` is required"),
        (42, "`image` has to be of type `PIL.Image.Image`, `np.ndarray`, a path"),
        ({"pixels": 1}, "has to be of type"),
        ([], "`image` is an empty list"),
        ([3.5], "has to be a PIL.Image.Image, a NumPy array"),
        ([rgb(), np.zeros((32, 48, 3), np.float32)], r"mixes \['array', 'pil'\]"),
    ],
)
def test_non_image_objects_are_refused(image, match):
    rejects(ValueError, match, image=image)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    msg = rejects(FileNotFoundError, "does not exist", image=str(tmp_path / "nowhere.png"))
    assert "nowhere.png" in msg
    rejects(FileNotFoundError, "does not exist", image=[tmp_path / "nowhere.jpg"])


def test_an_unreadable_file_and_a_url_are_refused(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    rejects(OSError, "is not an image Pillow can read", image=str(bad))
    rejects(ValueError, "is a URL: cogvideo_c does not download", image="https://example.com/cat.png")


def _png_claiming(width, height):
    """A 4x4 PNG whose IHDR says width x height (its CRC made right again)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    rgb(4, 4).save(buf, format="PNG")
    blob = buf.getvalue()
    ihdr = blob[12:16] + struct.pack(">II", width, height) + blob[24:29]
    return blob[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + blob[33:]


def test_an_image_past_the_decompression_bomb_limit_is_an_os_error(tmp_path):
    """Found by tests/fuzz/fuzz_media.py: Pillow's DecompressionBombError (not an OSError) escaped load_image."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(40000, 40000))
    msg = rejects(OSError, r"is too large to decode: Image size \(1600000000 pixels\) exceeds limit", image=str(bomb))
    assert "bomb.png" in msg


def test_every_truncation_of_a_png_is_an_os_error_or_the_image(tmp_path):
    """Found by tests/fuzz/fuzz_media.py: what Pillow's decoders raise on a cut file (struct.error, IndexError, ...)
    escaped load_image; each prefix of a real PNG either decodes or is an OSError naming the file."""
    import io

    buf = io.BytesIO()
    rgb(8, 8).save(buf, format="PNG")
    blob, path = buf.getvalue(), tmp_path / "cut.png"
    for cut in range(len(blob)):
        path.write_bytes(blob[:cut])
        try:
            cogvideo_c.load_image(str(path))
        except OSError as err:
            assert "cut.png" in str(err)


@pytest.mark.parametrize("shape", [(1, 2**40, 48, 3), (2**31, 48, 3), (32, 48, 2**40)])
def test_a_huge_broadcast_array_is_refused_before_it_is_copied(shape):
    """Found by tests/fuzz/fuzz_media.py: a broadcast view (no memory behind it) of huge dimensions was copied by
    the preprocessing, a MemoryError (or the machine swapping) instead of a clear refusal."""
    rejects(cogvideo_c.OutOfMemoryError, r"`image` holds \d+ values .*: preprocessing them needs [\d.e+]+ GiB, more "
            r"than this machine's", image=np.broadcast_to(np.float32(0.5), shape))  # fmt: skip


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_images_that_are_not_rgb_name_convert(mode):
    rejects(ValueError, rf"is a {mode} image; the VAE encodes RGB: pass image.convert\('RGB'\)",
            image=rgb().convert(mode))  # fmt: skip


@pytest.mark.parametrize(
    "array, match",
    [
        (np.full((32, 48, 3), np.nan, np.float32), r"holds 4608 NaN or infinite value\(s\)"),
        (np.where(np.arange(3) == 1, np.inf, 0.5) * np.ones((8, 8, 3)), "NaN or infinite"),
        ((np.ones((32, 48, 3)) * 255).astype(np.uint8), "has dtype uint8: pass float values in \\[0, 1\\]"),
        (np.ones((32, 48, 4), np.float32), "has 4 channels"),
        (np.ones((32, 48), np.float32), r"has shape \(32, 48\): an image is \[H, W, 3\]"),
        (np.ones((1, 1, 32, 48, 3), np.float32), "has shape"),
        (np.ones((0, 48, 3), np.float32), "is empty"),
    ],
)
def test_bad_arrays_are_refused(array, match):
    rejects(ValueError, match, image=array)


def test_image_batch_must_match_the_prompt_batch():
    rejects(ValueError, r"`image` holds 2 image\(s\) for 1 prompt\(s\)", image=[rgb(), rgb(seed=1)])
    rejects(ValueError, r"`image` holds 1 image\(s\) for 2 prompt\(s\)", prompt=["a", "b"])
    rejects(ValueError, r"holds 3 image\(s\) for 2 prompt\(s\)", prompt=["a", "b"],
            image=np.zeros((3, 16, 16, 3), np.float32))  # fmt: skip


def test_sizes_follow_the_pipeline_checks_and_the_learned_table():
    rejects(ValueError, "`height` 40 must be a multiple of 16", height=40)
    # the 5b-I2V learned positional table holds 32x48: diffusers' own error, raised before the encode
    rejects(ValueError, "not possible to generate videos at a different resolution", height=48, width=48)
    rejects(ValueError, "does not map to whole latent frames", num_frames=10)


def test_latents_generators_and_timesteps_are_checked_before_work():
    rejects(ValueError, r"latents must have shape \(1, 3, 4, 4, 6\)", latents=np.zeros((1, 3, 8, 4, 6), np.float32))
    rejects(
        ValueError,
        r"`latents` holds 48 NaN or infinite value\(s\)",
        latents=np.where(np.arange(6) == 2, np.nan, 0) * np.ones((1, 3, 4, 4, 6)),
    )
    rejects(ValueError, "list of generators of length 2, but requested an effective batch size of 1",
            generator=[np.random.default_rng(0), np.random.default_rng(1)])  # fmt: skip
    rejects(ValueError, "custom `timesteps` are not supported", timesteps=[999, 500])


def test_a_text_to_video_transformer_is_refused():
    """in_channels must be twice the VAE's latent channels: a T2V transformer cannot take the image latents."""
    t2v = cogvideo_c.CogVideoXPipeline.from_pretrained(str(FOLDER.parent.parent / "pipeline" / "tiny_5b"))
    pipe = cogvideo_c.CogVideoXImageToVideoPipeline(**t2v.components)
    pipe.set_progress_bar_config(disable=True)
    with _guarded(pipe), pytest.raises(ValueError, match=r"in_channels \(4\) must be twice the VAE's latent_channels"):
        pipe(image=rgb(), **GOOD)


def test_image_latents_are_checked():
    z = np.zeros((1, 1, 4, 4, 6), np.float32)
    rejects(ValueError, "Cannot forward both `image` and `image_latents`", image_latents=z)
    rejects(ValueError, r"image_latents must have shape \(1, 1, 4, 4, 6\)", image=None, image_latents=z[:, :, :3])
    rejects(ValueError, r"image_latents must have shape \(2, 1, 4, 4, 6\)", image=None, image_latents=z,
            prompt=["a", "b"])  # fmt: skip
    bad = z.copy()
    bad[0, 0, 1, 2, 3] = np.nan
    at = r"\(the first at index \(0, 0, 1, 2, 3\)\)"
    rejects(
        ValueError, r"`image_latents` holds 1 NaN or infinite value\(s\) of 96 " + at, image=None, image_latents=bad
    )
