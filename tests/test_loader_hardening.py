"""The checkpoint loaders against hostile files: FIFOs and devices in place of files, safetensors files the reference
library rejects, headers and indexes built to cost gigabytes, JSON nested past Python's limits, and a short run of
the config fuzzer (tests/fuzz/fuzz_configs.py)."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

import cogvideo_c
from cogvideo_c import _C
from cogvideo_c._files import MAX_FILE_BYTES
from conftest import FIXTURES, VAE_FIXTURES
from fixture_cases import short_fuzz_run

# `python -c` children run from here: from the checkout root, its unbuilt cogvideo_c/ would shadow an installed one
HERE = os.path.dirname(os.path.abspath(__file__))

PIPELINE = os.path.join(FIXTURES, "pipeline", "tiny_2b")
T5_SHARDED = os.path.join(FIXTURES, "t5", "gated_sharded")
TOKENIZER = os.path.join(FIXTURES, "tokenizer")
CASES = json.loads(open(os.path.join(FIXTURES, "safetensors_cases.json"), encoding="utf-8").read())["cases"]


def st_file(path, header, data=b"", header_len=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


# ---- safetensors strictness: the reference library's verdicts (tests/reference/make_safetensors_cases.py) --------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_safetensors_verdict_matches_the_reference(case, tmp_path):
    raw = bytes.fromhex(case["header_hex"])
    blob = struct.pack("<Q", len(raw) + case["header_len_delta"]) + raw
    blob = (
        blob[: 8 + case["data_len"]] if case["data_len"] < 0 else blob + bytes(i % 251 for i in range(case["data_len"]))
    )
    path = tmp_path / "case.safetensors"
    path.write_bytes(blob)
    if case["cogvideo_c"]["verdict"] == "accept":
        assert case["reference"]["verdict"] == "accept"
        assert sorted(_C.safetensors_index(str(path))) == case["reference"]["tensors"]
    else:
        with pytest.raises(OSError) as err:
            _C.safetensors_index(str(path))
        assert case["cogvideo_c"]["message"] in str(err.value)
        assert str(path) in str(err.value)


def test_the_case_table_is_never_laxer_than_the_reference():
    laxer = [
        c["name"] for c in CASES if c["reference"]["verdict"] == "reject" and c["cogvideo_c"]["verdict"] != "reject"
    ]
    assert laxer == []
    assert sum(c["stricter"] for c in CASES) == 7  # each listed in make_safetensors_cases.py with its reason


def test_a_header_length_one_byte_short_of_a_real_checkpoint_is_refused(tmp_path):
    # the tiny VAE fixture as diffusers wrote it: its header is padded, so one byte less still parses as JSON and
    # would shift every weight by a byte
    src = os.path.join(VAE_FIXTURES, "tiny", "diffusion_pytorch_model.safetensors")
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8 + n - 1 : 8 + n] == b" ", "the fixture's header is not padded: the case needs a padded header"
    folder = tmp_path / "vae"
    shutil.copytree(os.path.join(VAE_FIXTURES, "tiny"), folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", n - 1) + raw[8:])
    with pytest.raises(OSError, match=r"the tensors end at byte \d+ of the data region, but the file holds \d+ bytes"):
        cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder)


# ---- non-regular files: refused at once, never opened for reading ----------------------------------------------


def raises_promptly(fn, fifos, match, timeout=10.0):
    """Runs fn in a thread; it must raise OSError matching `match` within `timeout` s. A call blocked on one of the
    FIFOs is released (a writer opens and closes it, giving the reader end of file) before the test fails."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"the call blocked for {timeout} s on a FIFO")
    err = outcome.get("error")
    assert isinstance(err, OSError), f"expected OSError, got {outcome}"
    assert re.search(match, str(err)), str(err)


def _copy(src, tmp_path):
    dst = tmp_path / os.path.basename(src)
    shutil.copytree(src, dst)
    return dst


FIFO_CASES = {
    # name: (fixture folder, file replaced by a FIFO, loader)
    "vae weights": (os.path.join(VAE_FIXTURES, "tiny"), "diffusion_pytorch_model.safetensors", "vae"),
    "vae config.json": (os.path.join(VAE_FIXTURES, "tiny"), "config.json", "vae"),
    "t5 shard": (T5_SHARDED, "model-00003-of-00006.safetensors", "t5"),
    "t5 shard index": (T5_SHARDED, "model.safetensors.index.json", "t5"),
    "transformer weights": (os.path.join(PIPELINE, "transformer"), "diffusion_pytorch_model.safetensors", "tr"),
    "model_index.json": (PIPELINE, "model_index.json", "pipe"),
    "scheduler_config.json": (PIPELINE, "scheduler/scheduler_config.json", "pipe"),
    "tokenizer.json": (os.path.join(PIPELINE, "tokenizer"), "tokenizer.json", "tok"),
    "tokenizer_config.json": (os.path.join(PIPELINE, "tokenizer"), "tokenizer_config.json", "tok"),
    "spiece.model": (TOKENIZER, "spiece.model", "tok"),
    "special_tokens_map.json": (TOKENIZER, "special_tokens_map.json", "tok"),
}
LOADERS = {
    "vae": cogvideo_c.AutoencoderKLCogVideoX.from_pretrained,
    "t5": cogvideo_c.T5EncoderModel.from_pretrained,
    "tr": cogvideo_c.CogVideoXTransformer3DModel.from_pretrained,
    "pipe": cogvideo_c.CogVideoXPipeline.from_pretrained,
    "tok": cogvideo_c.T5Tokenizer.from_pretrained,
}


@pytest.mark.parametrize("name", FIFO_CASES)
def test_a_fifo_in_place_of_a_file_is_refused_at_once(name, tmp_path):
    src, rel, loader = FIFO_CASES[name]
    folder = _copy(src, tmp_path)
    fifo = folder / rel
    os.remove(fifo)
    os.mkfifo(fifo)
    raises_promptly(
        lambda: LOADERS[loader](str(folder)), [fifo], match=re.escape(str(fifo)) + ".* is a FIFO, not a regular file"
    )


@pytest.mark.parametrize(
    "rel, make, kind",
    [
        ("config.json", lambda p: os.mkdir(p), "a directory"),
        ("config.json", lambda p: os.symlink("/dev/zero", p), "a character device"),  # would never end
        ("diffusion_pytorch_model.safetensors", lambda p: os.symlink("/dev/zero", p), "a character device"),
    ],
)
def test_a_directory_or_device_in_place_of_a_file_is_refused(rel, make, kind, tmp_path):
    folder = _copy(os.path.join(VAE_FIXTURES, "tiny"), tmp_path)
    os.remove(folder / rel)
    make(folder / rel)
    raises_promptly(lambda: LOADERS["vae"](str(folder)), [], match=f"{re.escape(str(folder / rel))}'? is {kind}")


def test_a_config_larger_than_any_real_one_is_refused_before_reading(tmp_path):
    folder = _copy(os.path.join(VAE_FIXTURES, "tiny"), tmp_path)
    with open(folder / "config.json", "ab") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(OSError, match=rf"config\.json is {MAX_FILE_BYTES + 1} bytes, more than the {MAX_FILE_BYTES}"):
        LOADERS["vae"](str(folder))


# ---- JSON that Python cannot read, or that is not an object ---------------------------------------------------

JSON_FILES = {
    # name: (fixture folder, file, loader)
    "config.json": (os.path.join(VAE_FIXTURES, "tiny"), "config.json", "vae"),
    "model_index.json": (PIPELINE, "model_index.json", "pipe"),
    "scheduler_config.json": (PIPELINE, "scheduler/scheduler_config.json", "pipe"),
    "tokenizer.json": (os.path.join(PIPELINE, "tokenizer"), "tokenizer.json", "tok"),
    "tokenizer_config.json": (os.path.join(PIPELINE, "tokenizer"), "tokenizer_config.json", "tok"),
}


@pytest.mark.parametrize("name", JSON_FILES)
@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100000 + "]" * 100000, "nests JSON arrays or objects too deeply to be read"),
        ('{"a":' * 100000 + "1" + "}" * 100000, "nests JSON arrays or objects too deeply to be read"),
        ("[1, 2]", "must hold a JSON object, found list"),
        ('"config"', "must hold a JSON object, found str"),
        ("{oops", "is not valid JSON"),
        (b"{\xff}", "is not UTF-8 text"),
    ],
    ids=["deep arrays", "deep objects", "array", "string", "malformed", "not UTF-8"],
)
def test_unreadable_json_is_a_value_error_naming_the_file(name, text, message, tmp_path):
    src, rel, loader = JSON_FILES[name]
    folder = _copy(src, tmp_path)
    (folder / rel).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=re.escape(str(folder / rel)) + ".*" + re.escape(message)):
        LOADERS[loader](str(folder))


# ---- memory bounded by the header's size ----------------------------------------------------------------------

_PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    import cogvideo_c

    def status(key):  # kB in /proc/self/status
        return int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1]) * 1024

    # a safety net, so that a regression fails the test instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + 2 * 2**30, resource.RLIM_INFINITY))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: the import's own peak does not hide the call's
    base = status("VmRSS")
    try:
        result = len(cogvideo_c._C.safetensors_index(sys.argv[1]))
    except (OSError, MemoryError) as err:
        result = f"{type(err).__name__}: {err}"
    print(result)
    print(status("VmHWM") - base)
    """
)


def peak_rss_growth(path):
    """(safetensors_index's result or error, growth of the peak RSS in bytes) in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, timeout=300, cwd=HERE
    )
    assert out.returncode == 0, out.stderr
    result, growth = out.stdout.strip().rsplit("\n", 1)
    return result, int(growth)


def test_a_header_of_empty_arrays_costs_no_more_than_its_mapping(tmp_path):
    # 24 MB of [] in a member the reader skips: a JSON tree took ~25x the header (2.5 GB for 99 MB)
    pad = b"[" + b"[]," * (8 * 2**20) + b"[]]"
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"pad":' + pad + b"}}"
    path = tmp_path / "empty_arrays.safetensors"
    st_file(path, header, b"\0" * 4)
    result, growth = peak_rss_growth(path)
    assert result == "1"
    # the header's pages, read once through the mapping, are the cost; 16 MB of slack for the interpreter
    assert growth < len(header) + 16 * 2**20, (
        f"peak RSS grew by {growth / 2**20:.0f} MB for a {len(header) / 2**20:.0f} MB header"
    )


def test_an_index_naming_one_shard_30000_ways_opens_it_once(tmp_path):
    n = 30000
    tensors = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    tensors["w"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    st_file(tmp_path / "one.safetensors", tensors, b"\0" * 4)
    # 30,000 different spellings of one file: ./ and . followed by 1..150 slashes
    spellings = ["./" * (i % 200) + "." + "/" * (1 + i // 200) + "one.safetensors" for i in range(n)]
    assert len(set(spellings)) == n
    weight_map = {f"t{i}": spellings[i] for i in range(n)} | {"w": "one.safetensors"}
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    result, growth = peak_rss_growth(path)
    assert result == str(n + 1)
    # one parse of the 1.7 MB shard header and of the index; opening the shard once per spelling took ~3 GB
    assert growth < 128 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"


def test_an_index_may_not_leave_its_folder(tmp_path):
    (tmp_path / "inner").mkdir()
    st_file(tmp_path / "outside.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    path = tmp_path / "inner" / "model.safetensors.index.json"
    for name, message in (
        ("../outside.safetensors", "named with '..'"),
        (str(tmp_path / "outside.safetensors"), "absolute path"),
    ):
        path.write_text(json.dumps({"weight_map": {"w": name}}))
        with pytest.raises(OSError, match=re.escape(message)):
            _C.safetensors_index(str(path))


# ---- the config fuzzer, briefly --------------------------------------------------------------------------------


def test_a_short_config_fuzz_run_finds_nothing():
    short_fuzz_run("fuzz_configs", 6)
