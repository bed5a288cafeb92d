"""cogvideo_c.CogVideoXPipeline rejects broken folders and bad call arguments with a clear error, before any heavy work.

Uses the tiny pipeline fixtures of tests/reference/make_pipeline_fixtures.py (copied into tmp_path for the
broken-folder cases). numpy + cogvideo_c only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipeline"
SRC = FIXTURES / "tiny_2b"  # 2b-style: 16x16 px = 2x2 latents, max_text_seq_length 16, text width 32

GOOD = dict(
    prompt="dance monkey",
    negative_prompt="",
    height=16,
    width=16,
    num_frames=8,
    num_inference_steps=2,
    guidance_scale=6.0,
    max_sequence_length=16,
    output_type="np",
)


def _require_fixture():
    assert (SRC / "model_index.json").is_file(), f"missing {SRC}: run tests/reference/make_pipeline_fixtures.py"


def _copy(tmp_path: Path) -> Path:
    _require_fixture()
    dst = tmp_path / "pipe"
    shutil.copytree(SRC, dst)
    return dst


def _load(path):
    import cogvideo_c

    return cogvideo_c.CogVideoXPipeline.from_pretrained(str(path), torch_dtype="float32")


# ---- broken folders ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["vae", "transformer", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component_folder(tmp_path, component):
    d = _copy(tmp_path)
    shutil.rmtree(d / component)
    with pytest.raises(FileNotFoundError):
        _load(d)


def test_missing_model_index(tmp_path):
    d = _copy(tmp_path)
    (d / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError):
        _load(d)


@pytest.mark.parametrize(
    "component, entry",
    [
        ("scheduler", ["diffusers", "FancyNewScheduler"]),
        ("vae", ["diffusers", "AutoencoderKL"]),
        ("transformer", ["diffusers", "SD3Transformer2DModel"]),
        ("text_encoder", ["transformers", "CLIPTextModel"]),
    ],
)
def test_model_index_names_unknown_class(tmp_path, component, entry):
    d = _copy(tmp_path)
    index = json.loads((d / "model_index.json").read_text())
    index[component] = entry
    (d / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError):
        _load(d)


# ---- bad call arguments --------------------------------------------------------------------------------------

_PIPE = {}


def _pipe():
    if "p" not in _PIPE:
        _require_fixture()
        p = _load(SRC)
        if hasattr(p, "set_progress_bar_config"):
            p.set_progress_bar_config(disable=True)
        _PIPE["p"] = p
    return _PIPE["p"]


class _Guard:
    """Stands in for a component: attributes pass through, running it fails the test."""

    _HEAVY = ("decode", "encode", "forward", "tiled_decode")

    def __init__(self, inner, name):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, key):
        if key in self._HEAVY:
            raise AssertionError(f"{self._name}.{key} was used before the bad input was rejected")
        return getattr(self._inner, key)

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self._name} ran before the bad input was rejected")


@contextlib.contextmanager
def _guarded(pipe):
    names = ("tokenizer", "text_encoder", "transformer", "vae")
    saved = {n: getattr(pipe, n) for n in names}
    try:
        for n in names:
            setattr(pipe, n, _Guard(saved[n], n))
        yield pipe
    finally:
        for n in names:
            setattr(pipe, n, saved[n])


def _rejects(**changes):
    kw = dict(GOOD, **changes)
    kw = {k: v for k, v in kw.items() if v is not _DROP}
    with _guarded(_pipe()) as pipe, pytest.raises(ValueError):
        pipe(**kw)


_DROP = object()


@pytest.mark.parametrize("height, width", [(20, 16), (16, 12), (17, 16), (16, 33)])
def test_size_not_divisible_by_8(height, width):
    _rejects(height=height, width=width)


@pytest.mark.parametrize("num_frames", [10, 11])
def test_num_frames_without_whole_latent_frames(num_frames):
    _rejects(num_frames=num_frames)


@pytest.mark.parametrize("steps", [0, -1, -5])
def test_non_positive_num_inference_steps(steps):
    _rejects(num_inference_steps=steps)


def test_prompt_and_prompt_embeds_both_given():
    _rejects(prompt_embeds=np.zeros((1, 16, 32), dtype=np.float32))


@pytest.mark.parametrize(
    "neg_shape",
    [(1, 12, 32), (2, 16, 32), (1, 16, 24)],
)
def test_mismatched_prompt_and_negative_embeds(neg_shape):
    _rejects(
        prompt=_DROP,
        negative_prompt=_DROP,
        prompt_embeds=np.zeros((1, 16, 32), dtype=np.float32),
        negative_prompt_embeds=np.zeros(neg_shape, dtype=np.float32),
    )


def test_good_call_passes_the_guard_checks():
    """The guard itself does not reject good arguments: the same call with one bad value is what fails above.
    (Only the argument checks are exercised here; running the call is test_pipeline_parity's job.)"""
    pipe = _pipe()
    with _guarded(pipe), pytest.raises(AssertionError, match="before the bad input was rejected"):
        pipe(**GOOD)
