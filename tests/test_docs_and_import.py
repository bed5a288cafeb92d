"""Item 13: help() says something useful for the whole public API, and a checkout that was never built says how to
build instead of Python's "partially initialized module ... circular import"."""

import inspect
import os
import shutil
import site
import subprocess
import sys

import cogvideo_c

# The main entry points: their docstrings have a diffusers-style Args section that names every parameter.
WITH_ARGS = [
    cogvideo_c.AutoencoderKLCogVideoX.from_pretrained,
    cogvideo_c.AutoencoderKLCogVideoX.decode,
    cogvideo_c.AutoencoderKLCogVideoX.encode,
    cogvideo_c.AutoencoderKLCogVideoX.forward,
    cogvideo_c.AutoencoderKLCogVideoX.enable_tiling,
    cogvideo_c.T5EncoderModel.from_pretrained,
    cogvideo_c.T5EncoderModel.__call__,
    cogvideo_c.CogVideoXTransformer3DModel.from_pretrained,
    cogvideo_c.CogVideoXTransformer3DModel.__call__,
    cogvideo_c.T5Tokenizer.__call__,
    cogvideo_c.T5Tokenizer.decode,
    cogvideo_c.CogVideoXDDIMScheduler.step,
    cogvideo_c.CogVideoXDPMScheduler.step,
    cogvideo_c.DDIMScheduler.step,
    cogvideo_c.CogVideoXDDIMScheduler.set_timesteps,
    cogvideo_c.export_to_video,
    cogvideo_c.export_to_gif,
    cogvideo_c.load_image,
    cogvideo_c.load_video,
    cogvideo_c.set_memory_limit,
]


def _own_doc(obj):
    """The object's own docstring: a class's, not one inherited from object or a dataclass' generated text."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return (doc or "").strip()


def _public_api():
    """(name, object) for every name in cogvideo_c.__all__, the public methods and properties of its classes (and
    their cogvideo_c base classes), and the public functions of the modules it exports."""
    for name in cogvideo_c.__all__:
        obj = getattr(cogvideo_c, name)
        yield name, obj
        if inspect.ismodule(obj):
            for key, value in vars(obj).items():
                if not key.startswith("_") and inspect.isfunction(value) and value.__module__ == obj.__name__:
                    yield f"{name}.{key}", value
        elif inspect.isclass(obj):
            for cls in obj.__mro__:
                if not cls.__module__.startswith("cogvideo_c."):
                    continue
                for key, value in vars(cls).items():
                    if key.startswith("_") and key != "__call__":
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if isinstance(value, property):
                        value = value.fget
                    if inspect.isfunction(value):
                        yield f"{name}.{key}", value


def test_every_public_object_has_a_docstring():
    missing = [name for name, obj in _public_api() if not _own_doc(obj)]
    assert missing == []
    assert len(list(_public_api())) > 80  # the walk really reaches the methods


def test_main_entry_points_document_every_argument():
    for fn in WITH_ARGS:
        doc = inspect.getdoc(fn)
        assert "Args:" in doc, fn.__qualname__
        for param in inspect.signature(fn).parameters:
            if param not in ("self", "cls", "kwargs", "args"):
                assert param in doc, f"{fn.__qualname__} does not document {param}"


def test_help_of_a_call_says_what_it_does():
    text = pydoc_text(cogvideo_c.T5EncoderModel.__call__)
    assert "Call self as a function" not in text and "input_ids" in text and "attention_mask" in text


def pydoc_text(obj):
    import pydoc

    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


def test_import_from_an_unbuilt_checkout_says_how_to_build(tmp_path):
    # a copy of the package's sources without the compiled _C, imported from the folder that holds it (as from a
    # fresh clone's root)
    package = os.path.dirname(cogvideo_c.__file__)
    shutil.copytree(package, tmp_path / "cogvideo_c", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    assert not [p for p in os.listdir(tmp_path / "cogvideo_c") if p.startswith("_C.")]
    # -S with site-packages on PYTHONPATH: numpy and scipy-openblas32 are found, but no .pth file runs, so an
    # editable install's import hook cannot hand this copy the checkout's _C
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import cogvideo_c"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cogvideo_c's compiled core (_C) is not built in "), last
    assert str(tmp_path / "cogvideo_c") in last
    assert "`pip install .`" in last and "`pip install -e .`" in last
    assert "circular import" not in done.stderr
