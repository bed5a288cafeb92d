"""A bounded random fuzzer over the images and videos the image-to-video, video-to-video and Fun-Control pipelines
take: NumPy arrays of odd shapes, dtypes and values (NaN, infinite, huge; broadcast views with huge dimensions that
must be refused before anything that size is allocated), PIL images of every mode and odd sizes, lists mixing them,
and image / video files (PNG, GIF, JPEG, BMP, WebP, MP4 written from small frames) truncated, with bytes flipped,
with a huge width and height written into their headers, empty, or not images at all. Each case is one call of the
tiny pipeline (1 or 2 denoising steps), in a worker subprocess that keeps the pipelines loaded.

A case passes when it runs, or fails with a clean exception (ValueError, OSError, NotImplementedError,
cogvideo_c.OutOfMemoryError); anything else is a finding (fuzz_loop.py), and so is memory-manager memory a case
leaves allocated.

    python tests/fuzz/fuzz_media.py --seconds 20            # as tests/fuzz/run.sh runs it
    python tests/fuzz/fuzz_media.py --cases 200 --seed 3
    python tests/fuzz/fuzz_media.py --replay 3:17            # re-run case 17 of seed 3 here, with its traceback
"""

import io
import os
import pickle
import random
import struct
import sys
import zlib

import fuzz_loop
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
I2V = os.path.join(FIXTURES, "i2v", "tiny_5b_i2v")  # 32x48 pixels (a learned positional table)
T2V = os.path.join(FIXTURES, "pipeline", "tiny_2b")
FUN = os.path.join(FIXTURES, "v2v", "tiny_fun")
IMAGE_FORMATS = ("PNG", "GIF", "JPEG", "BMP", "WEBP", "TIFF")
MODES = ("RGB", "RGB", "L", "RGBA", "P", "1", "I", "F", "CMYK", "LA", "I;16", "YCbCr")
DTYPES = ("float32", "float32", "float64", "float16", "uint8", "int64", "bool", "complex64", "object", "<U1", "V4")
SIDES = (1, 2, 7, 16, 32, 33, 48, 100)
HUGE = (2**16, 10**5, 2**31, 2**40)
SPECIAL = (np.nan, np.inf, -np.inf, 1e30, -1.0, 2.0, 1e-45, 0.0, 1.0)


# ---- inputs ------------------------------------------------------------------------------------------------------


class _Broadcast:
    """np.broadcast_to(0.5, shape), made in the worker (pickling the view would write out every element)."""

    def __init__(self, shape):
        self.shape = shape


def _unpack(value):
    if isinstance(value, _Broadcast):
        return np.broadcast_to(np.float32(0.5), value.shape)
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    return value


def _array(rng, frames=None):
    """An image [H, W, C] / batch / video [F, H, W, C] array of an odd shape, dtype or values."""
    h, w = rng.choice(SIDES), rng.choice(SIDES)
    c = rng.choice([3, 3, 3, 1, 4, 0, 2])
    lead = [] if frames is None else [frames]
    shape = rng.choice([lead + [h, w, c]] * 4 + [[h, w], [1, h, w, c], [2, h, w, c], [h], [], [1, 1, h, w, c],
                                                 lead + [0, w, c]])  # fmt: skip
    dtype = rng.choice(DTYPES)
    if rng.random() < 0.12:  # a broadcast view: huge dimensions, no memory behind them
        big = list(shape) or [1]
        axis = rng.randrange(len(big))
        # 10**5 frames fit in memory and would be denoised (minutes of legitimate work): frames get only sizes no
        # machine holds
        big[axis] = rng.choice(HUGE[2:] if frames is not None and axis == 0 else HUGE)
        return _Broadcast(tuple(big))
    values = np.random.default_rng(rng.randrange(2**32)).random(shape)
    if rng.random() < 0.3 and values.size:
        values.reshape(-1)[rng.randrange(values.size)] = rng.choice(SPECIAL)
    if rng.random() < 0.1:
        values = values * rng.choice([255.0, -1.0, 1e6])
    try:
        arr = values.astype(dtype)
    except (TypeError, ValueError):
        arr = values.astype(np.float32)
    if rng.random() < 0.1 and arr.ndim >= 2:
        arr = arr[:, ::-1]  # a negative stride
    return arr


def _pil(rng, size=None):
    from PIL import Image

    w, h = size or (rng.choice(SIDES), rng.choice(SIDES))
    rgb = Image.fromarray(np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w, 3), dtype=np.uint8))
    mode = rng.choice(MODES)
    try:
        return rgb.convert(mode)
    except ValueError:
        return rgb


def _png_with_size(blob, width, height):
    """The PNG with its IHDR width and height replaced (and the chunk's CRC made right again)."""
    ihdr = blob[12:29]  # b"IHDR" + 13 bytes
    ihdr = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return blob[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + blob[33:]


def _mutate_bytes(rng, blob, flips, junk):
    """The file's bytes truncated (half the time), with up to `flips` bytes changed, or replaced by one of `junk`."""
    kind = rng.random()
    if kind < 0.5:
        return blob[: rng.randrange(len(blob) + 1)]
    if kind < 0.9 and blob:
        out = bytearray(blob)
        for _ in range(rng.randint(1, flips)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    return rng.choice(junk)


def _image_file(rng, folder):
    """An image file (a path), often mutated: truncated, a byte flipped, a huge size in its header, empty, text."""
    fmt = rng.choice(IMAGE_FORMATS)
    img = _pil(rng, (rng.choice(SIDES), rng.choice(SIDES)))
    if fmt in ("JPEG",) and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB").save(buf, format=fmt)
    blob = buf.getvalue()
    kind = rng.random()
    if kind < 0.2 and fmt == "PNG":
        blob = _png_with_size(blob, rng.choice(HUGE[:2] + (40000, 2**31 - 1)), rng.choice(HUGE[:2] + (40000, 1)))
    elif kind < 0.3 and fmt == "GIF":
        blob = blob[:6] + struct.pack("<HH", 65535, rng.choice([65535, 1, 40000])) + blob[10:]
    elif kind < 0.7:
        blob = _mutate_bytes(rng, blob, 4, [b"", b"not an image", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\x00" * 100])
    ext = rng.choice([fmt.lower(), fmt.lower(), "png", "txt", "mp4", "gif"])
    path = os.path.join(folder, f"input.{ext}")
    with open(path, "wb") as f:
        f.write(blob)
    return path


_MP4 = {}


def _mp4_bytes(frames, size):
    """An H.264 MP4 of `frames` frames of size (w, h), written once per worker with imageio-ffmpeg."""
    key = (frames, size)
    if key not in _MP4:
        import tempfile

        import imageio_ffmpeg

        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            writer = imageio_ffmpeg.write_frames(path, size, fps=8, macro_block_size=1, ffmpeg_log_level="error")
            writer.send(None)
            rng = np.random.default_rng(frames)
            for _ in range(frames):
                writer.send(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8).tobytes())
            writer.close()
            with open(path, "rb") as f:
                _MP4[key] = f.read()
        finally:
            os.unlink(path)
    return _MP4[key]


def _video_file(rng, folder):
    """A video file (a path): a GIF or an MP4, often mutated as _image_file mutates images."""
    n = rng.choice([1, 2, 5, 9, 9, 13])
    size = rng.choice([(16, 16), (16, 16), (32, 16), (18, 10)])  # even: H.264 in yuv420p
    if rng.random() < 0.5:
        # a huge logical screen: past Pillow's decompression-bomb limit, or within it (144 M pixels, 432 MB a decoded
        # frame) with 200 frames (86 GB), which no memory holds (fewer may decode legitimately, seconds a frame)
        screen = rng.choice([None] * 17 + [(65535, 65535), (65535, 40000), (12000, 12000)])
        n = 200 if screen == (12000, 12000) else n
        frames = [_pil(rng, size).convert("RGB") for _ in range(n)]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
        blob, ext = buf.getvalue(), "gif"
        if screen is not None:
            blob = blob[:6] + struct.pack("<HH", *screen) + blob[10:]
    else:
        blob, ext = _mp4_bytes(n, size), "mp4"
    if rng.random() < 0.5:
        blob = _mutate_bytes(rng, blob, 8, [b"", b"not a video", b"GIF89a", b"\x00\x00\x00\x18ftypmp42"])
    ext = ext if rng.random() < 0.85 else rng.choice(["gif", "mp4", "png", "mkv"])
    path = os.path.join(folder, f"input.{ext}")
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _image(rng, folder):
    kind = rng.random()
    if kind < 0.35:
        return "array", _array(rng)
    if kind < 0.55:
        return "pil", _pil(rng)
    if kind < 0.9:
        return "file", _image_file(rng, folder)
    return "list", [_pil(rng) if rng.random() < 0.5 else _array(rng) for _ in range(rng.randint(1, 3))]


def _video(rng, folder):
    kind = rng.random()
    n = rng.choice([0, 1, 2, 5, 9, 9, 9, 13, 50])
    if kind < 0.3:
        return "array", _array(rng, frames=n)
    if kind < 0.5:
        size = (rng.choice(SIDES), rng.choice(SIDES)) if rng.random() < 0.5 else (16, 16)
        frames = [_pil(rng, size) if rng.random() < 0.9 else _pil(rng) for _ in range(n)]
        return "pil_frames", frames
    if kind < 0.6:
        return "array_frames", [_array(rng) for _ in range(n)]
    return "file", _video_file(rng, folder)


def make_case(seed, index, folder):
    """Writes case (seed, index) into `folder`: the input (case.pickle, and the file it names, if any). Returns
    "<pipeline>:<input kind>"."""
    rng = random.Random(f"media:{seed}:{index}")
    pipeline = rng.choice(["i2v", "i2v", "v2v", "v2v", "fun"])
    kind, value = _image(rng, folder) if pipeline == "i2v" else _video(rng, folder)
    with open(os.path.join(folder, "case.pickle"), "wb") as f:
        pickle.dump({"pipeline": pipeline, "kind": kind, "value": value, "strength": rng.choice([0.5, 0.8, 1.0])}, f)
    return f"{pipeline}:{kind}"


# ---- running a case ----------------------------------------------------------------------------------------------

_PIPES = {}


def _pipe(name):
    """The worker's pipelines, all loaded at the first case (then the memory manager's allocation is noted)."""
    import cogvideo_c

    if not _PIPES:
        v2v = cogvideo_c.CogVideoXVideoToVideoPipeline.from_pretrained(T2V)
        _PIPES["i2v"] = cogvideo_c.CogVideoXImageToVideoPipeline.from_pretrained(I2V)
        _PIPES["v2v"] = v2v
        _PIPES["fun"] = cogvideo_c.CogVideoXFunControlPipeline.from_pretrained(
            FUN, tokenizer=v2v.tokenizer, text_encoder=v2v.text_encoder, vae=v2v.vae
        )
        for pipe in _PIPES.values():
            pipe.set_progress_bar_config(disable=True)
        _PIPES["allocated"] = cogvideo_c.memory_stats("cpu")["allocated_bytes.all.current"]
    return _PIPES[name]


def run_case(folder):
    import warnings

    with open(os.path.join(folder, "case.pickle"), "rb") as f:
        case = pickle.load(f)
    pipe = _pipe(case["pipeline"])
    case["value"] = _unpack(case["value"])
    common = dict(prompt="a cat", num_inference_steps=2, guidance_scale=6.0, max_sequence_length=16, output_type="np",
                  generator=np.random.default_rng(0))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' FutureWarnings for [-1, 1] inputs, RuntimeWarnings of NaN math
        if case["pipeline"] == "i2v":
            out = pipe(image=case["value"], height=32, width=48, num_frames=9, **common)
        elif case["pipeline"] == "v2v":
            out = pipe(video=case["value"], height=16, width=16, strength=case["strength"], **common)
        else:
            out = pipe(control_video=case["value"], height=16, width=16, **common)
    return f"frames {np.asarray(out.frames).shape}"


def after_case():
    import cogvideo_c

    before = _pipe("allocated")
    allocated = cogvideo_c.memory_stats("cpu")["allocated_bytes.all.current"]
    return f"allocated bytes {allocated}, {before} before the case" if allocated != before else None


def _describe(folder, target):
    with open(os.path.join(folder, "case.pickle"), "rb") as f:
        case = pickle.load(f)
    value = _unpack(case["value"])
    if isinstance(value, np.ndarray):
        print(f"array {value.shape} {value.dtype} strides {value.strides}")
    elif isinstance(value, list):
        print("list:", [getattr(v, "shape", None) or (getattr(v, "mode", None), getattr(v, "size", None))
                         for v in value][:20])  # fmt: skip
    elif isinstance(value, str):
        print(f"file {value}: {os.path.getsize(value)} bytes")
    else:
        print(value)


def fuzz(seed, cases, seconds, case_timeout):
    """Runs up to `cases` cases (or for `seconds`); returns the counts, the clean refusals and the findings."""
    return fuzz_loop.fuzz(__file__, seed, cases, seconds, case_timeout)


if __name__ == "__main__":
    sys.exit(fuzz_loop.main(sys.modules[__name__], "image/video", _describe))
