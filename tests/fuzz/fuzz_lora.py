"""A bounded mutational fuzzer over LoRA adapter files: the committed adapters of tests/fixtures/lora (made by
diffusers/peft for the tiny 5b pipeline) with keys renamed, dropped or added, shapes and dtypes changed, values made
NaN / infinite / huge, the `lora_adapter_metadata` JSON's rank, alpha, target_modules and rank/alpha patterns
mutated (types, huge, zero, negative, NaN, nested, invalid regexes), or the file's bytes truncated and flipped. Each
case goes through the tiny pipeline (on the CPU, or on the emulated device under sequential offload), in a worker
subprocess that keeps the pipelines loaded: lora_state_dict,
load_lora_weights (sometimes beside a good second adapter), set_adapters, one short denoising step, fuse_lora,
a transformer forward, unfuse_lora, unload_lora_weights.

A case passes when it runs, or fails with a clean exception (ValueError, OSError, NotImplementedError,
cogvideo_c.OutOfMemoryError). Anything else is a finding (fuzz_loop.py), and so is what a case leaves behind: after
every case, adapters unloaded, the transformer must hold no LoRA bytes, the memory manager must be back to its
allocation before the case, and the base model's output must be the same bits as before any adapter ("nothing lost").

    python tests/fuzz/fuzz_lora.py --seconds 20            # as tests/fuzz/run.sh runs it
    python tests/fuzz/fuzz_lora.py --cases 300 --seed 3
    python tests/fuzz/fuzz_lora.py --replay 3:17            # re-run case 17 of seed 3 here, with its traceback
"""

import json
import math
import os
import random
import struct
import sys

import fuzz_loop
import numpy as np
from fuzz_configs import DEEP, _random_value

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
LORA = os.path.join(FIXTURES, "lora")
PIPELINE = os.path.join(FIXTURES, "pipeline", "tiny_5b")
ADAPTERS = ("attn", "alpha", "wide")
FILE = "pytorch_lora_weights.safetensors"
META = "lora_adapter_metadata"
DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": None}  # BF16: the top 16 bits of the f32
OTHER_DTYPES = {"I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "I16": 2, "XX": 4}  # unread: raw bytes
MODULES = ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_out.0", "transformer_blocks.0.ff.net.2",
           "transformer_blocks.1.norm1.linear", "proj_out", "patch_embed.proj", "time_embedding.linear_1",
           "norm_out.linear", "transformer_blocks.0.attn1.norm_q", "transformer_blocks.9.attn1.to_q", "to_q", "",
           "transformer_blocks.0.attn1.to_q\x00x", "x" * 300, "transformer_blocks.-1.attn1.to_q",
           "transformer_blocks.0.attn1")  # fmt: skip
SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_A.bias", ".lora_B.bias", ".lora_magnitude_vector",
            ".dora_scale", ".alpha", ".lora_up.weight", ".lora_down.weight", ".weight", "")  # fmt: skip
PREFIXES = ("transformer.", "text_encoder.", "", "transformer", "unet.", "transformer.transformer.")
META_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora",
             "lora_bias", "exclude_modules", "init_lora_weights", "fan_in_fan_out")  # fmt: skip
PATTERNS = ("to_q", "ff.net.2", "attn1.to_.*", ".*", "(", "[", "a{99999999999}", "\\", "^transformer_blocks.0",
            "transformer_blocks.0.attn1.to_q", "", "(?P<x>", "to_q|to_k")  # fmt: skip
SPECIAL = (np.nan, np.inf, -np.inf, 1e30, -1e30, 65504.0, 1e-45, 0.0, 3e38)


# ---- the adapter file --------------------------------------------------------------------------------------------


def _read_fixture(name):
    """(tensors {name: [dtype, shape, float32 array]} in file order, the header's __metadata__ dict)."""
    with open(os.path.join(LORA, name, FILE), "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = blob[8 + length + begin : 8 + length + end]
        tensors[key] = ["F32", list(info["shape"]), np.frombuffer(raw, "<f4").reshape(info["shape"]).copy()]
    return tensors, dict(header.get("__metadata__") or {})


def _tensor_bytes(dtype, shape, values):
    """The tensor's bytes in `dtype`: the values converted (repeated or cut to the shape's count), or raw bytes for
    the dtypes the loader does not read."""
    count = math.prod(shape)
    flat = np.resize(np.asarray(values, np.float32).ravel(), count) if count else np.zeros(0, np.float32)
    if dtype in OTHER_DTYPES:
        return bytes(flat.view(np.uint8)[: count * OTHER_DTYPES[dtype]].tobytes().ljust(count * OTHER_DTYPES[dtype],
                                                                                         b"\x01"))  # fmt: skip
    if dtype == "BF16":
        return (flat.view("<u4") >> 16).astype("<u2").tobytes()
    with np.errstate(over="ignore", invalid="ignore"):
        return flat.astype(DTYPES[dtype]).tobytes()


def build(tensors, metadata, rng=None):
    """The safetensors bytes of {name: [dtype, shape, values]} (contiguous, in order) and the __metadata__ dict; with
    rng, sometimes the header's data_offsets of one tensor are off (gaps, overlaps, past the end)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, values) in tensors.items():
        raw = _tensor_bytes(dtype, shape, values) if all(isinstance(d, int) and 0 <= d < 2**20 for d in shape) else b""
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if rng is not None and header and rng.random() < 0.5:
        entry = header[rng.choice([k for k in header if k != "__metadata__"] or ["__metadata__"])]
        if isinstance(entry, dict) and "data_offsets" in entry:
            b, e = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[b, e + 4], [b - 4, e - 4], [b + 2, e + 2], [e, b], [0, 2**64 - 1],
                                                [b, 2**63], [-1, e], [b, None]])  # fmt: skip
    text = json.dumps(header, separators=(",", ":")).replace(json.dumps(DEEP), "[" * 100000 + "]" * 100000).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# ---- mutations ---------------------------------------------------------------------------------------------------


def _rename(rng, name):
    kind = rng.randrange(6)
    module, _, _ = name[len("transformer.") :].rpartition(".lora_")
    if kind == 0:  # another module of the model (or one it lacks)
        return "transformer." + rng.choice(MODULES) + name[name.rfind(".lora_") :]
    if kind == 1:  # another suffix
        return "transformer." + module + rng.choice(SUFFIXES)
    if kind == 2:  # another prefix
        return rng.choice(PREFIXES) + name[len("transformer.") :]
    if kind == 3:  # lora_A <-> lora_B
        return name.replace("lora_A", "lora_@").replace("lora_B", "lora_A").replace("lora_@", "lora_B")
    if kind == 4:  # a character changed
        i = rng.randrange(len(name))
        return name[:i] + rng.choice(".x0_\x00\u00e9/") + name[i + 1 :]
    return name + rng.choice(["", ".", "x", ".lora_A.weight"])


def _new_shape(rng, shape):
    shape = [d if isinstance(d, int) and not isinstance(d, bool) else 1 for d in shape]  # after an earlier edit
    kind = rng.randrange(8)
    if kind == 0:
        return shape[::-1]
    if kind == 1:
        i = rng.randrange(len(shape)) if shape else 0
        return [d + rng.choice([-1, 1, 2]) if j == i else d for j, d in enumerate(shape)]
    if kind == 2:
        return [rng.choice([0, 1, 2**31, 2**32 + 1, 2**40, 2**63, -1, 2**64])] + list(shape[1:])
    if kind == 3:
        return rng.choice([[], [shape[0] if shape else 1], list(shape) + [1], [1] + list(shape), [1, 1, 1, 1]])
    if kind == 4:
        return [shape[0] * 2 if shape else 2] + list(shape[1:])  # a larger rank on one side only
    if kind == 5:
        return [rng.choice([1, 2, 3, 4, 7, 64])] + list(shape[1:])
    if kind == 6:
        return [rng.choice([0.5, "2", None, True, [2]])] + list(shape[1:])
    return list(shape[:-1]) + [rng.choice([0, 1, 16, 31, 33, 64, 128])]


def _mutate_metadata(rng, metadata):
    """The __metadata__ dict with its lora_adapter_metadata JSON mutated (or added, or replaced by garbage)."""
    raw = metadata.get(META)
    kind = rng.random()
    if kind < 0.15:  # not JSON, not an object, deep, a value of another type in the header
        metadata[META] = rng.choice(
            [
                "",
                "{",
                "null",
                "[]",
                "3",
                '"s"',
                "[" * 100000 + "]" * 100000,
                '{"a": 1}',
                '{"transformer.r": NaN}',
                '{"transformer.r": 1e999}',
                "\udcff",
                "{}" * 2,
            ]
        )
        if rng.random() < 0.2:
            metadata[META] = rng.choice([3, None, {"r": 2}, [1], DEEP])  # C refuses: metadata is str -> str
        return metadata
    try:  # an earlier edit of the same case may have left garbage
        meta = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        meta = {"transformer.r": 4, "transformer.lora_alpha": 4}
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        key = "transformer." + rng.choice(META_KEYS) if rng.random() < 0.9 else rng.choice(["r", "transformer", ""])
        if op < 0.45:
            old = meta.get(key, 4)
            meta[key] = _random_value(rng, old if not isinstance(old, int) or abs(old) < 2**60 else 4)
        elif op < 0.75:  # patterns: a regex key, a rank or alpha of any kind
            which = "transformer." + rng.choice(["rank_pattern", "alpha_pattern"])
            pattern = meta.get(which) if isinstance(meta.get(which), dict) else {}
            pattern[rng.choice(PATTERNS)] = rng.choice([2, 3, 4, 1, 0, -1, 2**40, 10**400, 2.0, 1e308, "2", None,
                                                        [2], {"r": 2}, float("nan"), True])  # fmt: skip
            meta[which] = pattern
        elif op < 0.9 and meta:
            del meta[rng.choice(list(meta))]
        else:
            meta["transformer.r"] = rng.choice([10**400, -(10**400), 2**63, 1, 2, 3, 8, True])
            meta["transformer.lora_alpha"] = rng.choice([10**400, 1e308, -1e308, 0, 2**1023 * 1.5, True, 1e-320])
    with_nan = json.dumps(meta, allow_nan=True)
    metadata[META] = with_nan.replace(json.dumps(DEEP), "[" * 100000 + "]" * 100000)
    return metadata


def mutate(rng, tensors, metadata):
    """One to three edits of the adapter's tensors or metadata (in place); returns what was done."""
    done = []
    for _ in range(rng.randint(1, 3)):
        names = list(tensors)
        op = rng.random()
        if op < 0.15 and names:
            old = rng.choice(names)
            new = _rename(rng, old)
            tensors = {new if k == old else k: v for k, v in tensors.items()}
            done.append("rename")
        elif op < 0.22 and names:
            for _ in range(rng.choice([1, 1, 2, len(names)])):
                if tensors:
                    del tensors[rng.choice(list(tensors))]
            done.append("drop")
        elif op < 0.32:
            src = tensors[rng.choice(names)] if names else ["F32", [2, 32], np.zeros((2, 32), np.float32)]
            module = rng.choice(MODULES)
            tensors["transformer." + module + rng.choice(SUFFIXES[:2] * 3 + SUFFIXES)] = list(src)
            done.append("add")
        elif op < 0.5 and names:
            entry = tensors[rng.choice(names)]
            entry[1] = _new_shape(rng, entry[1])
            if rng.random() < 0.5 and len(entry[1]) == 2:  # its partner agrees: a consistent wrong-rank pair
                for other in tensors.values():
                    if other is not entry and len(other[1]) == 2 and rng.random() < 0.5:
                        other[1] = [other[1][0], entry[1][0]] if rng.random() < 0.5 else [entry[1][0], other[1][1]]
            done.append("shape")
        elif op < 0.6 and names:
            tensors[rng.choice(names)][0] = rng.choice(list(DTYPES) * 3 + list(OTHER_DTYPES))
            done.append("dtype")
        elif op < 0.7 and names:
            entry = tensors[rng.choice(names)]
            values = np.array(entry[2], np.float32, copy=True)
            if values.size:
                flat = values.reshape(-1)
                idx = rng.sample(range(flat.size), min(flat.size, rng.choice([1, 3, flat.size])))
                flat[idx] = rng.choice(SPECIAL)
            entry[2] = values
            done.append("values")
        else:
            metadata = _mutate_metadata(rng, metadata)
            done.append("metadata")
    return tensors, metadata, done


def make_case(seed, index, folder):
    """Writes case (seed, index) into `folder`: the adapter file (mutated) and plan.json (how it is used).
    Returns a short description."""
    rng = random.Random(f"lora:{seed}:{index}")
    base = rng.choice(ADAPTERS)
    tensors, metadata = _read_fixture(base)
    tensors, metadata, done = mutate(rng, tensors, metadata)
    blob = build(tensors, metadata, rng if rng.random() < 0.08 else None)
    if rng.random() < 0.12:  # byte level: truncated, a byte flipped (length field or header), junk appended
        kind = rng.randrange(4)
        if kind == 0:
            blob = blob[: rng.randrange(len(blob) + 1)]
        elif kind == 1:
            i = rng.randrange(min(len(blob), 8 + 200))
            blob = blob[:i] + bytes([rng.randrange(256)]) + blob[i + 1 :]
        elif kind == 2:
            blob = struct.pack("<Q", rng.choice([0, 1, 2**63, 2**64 - 1, len(blob)])) + blob[8:]
        else:
            blob += b"\x00" * rng.choice([1, 7, 8, 4096])
        done.append("bytes")
    with open(os.path.join(folder, FILE), "wb") as f:
        f.write(blob)
    plan = {
        "where": rng.choice(WHERE),
        "by_folder": rng.random() < 0.5,
        "second": rng.random() < 0.3,
        "weights": [rng.choice([1.0, 0.5, 0.0, -2.0, 1e30, 1e-30, None]) for _ in range(2)],
        "lora_scale": rng.choice([1.0, 0.5, 0.0, -1.0, 1e30]),
        "safe_fusing": rng.random() < 0.5,
    }
    with open(os.path.join(folder, "plan.json"), "w") as f:
        json.dump(plan, f)
    return f"{base}:{'+'.join(done)}"


# ---- running a case ----------------------------------------------------------------------------------------------

_STATE = {}
WHERE = ("cpu", "cpu", "emu")  # the emulated device under sequential offload: adapters stream with their block


def _state():
    """The worker's pipelines (on the CPU, and on the emulated device with sequential offload), loaded once, with
    their base transformer outputs and the memory manager's allocation."""
    if not _STATE:
        import cogvideo_c

        _STATE["inputs"] = dict(np.load(os.path.join(LORA, "lora.npz")))
        _STATE["pipes"], _STATE["base"] = {}, {}
        for where in sorted(set(WHERE)):
            pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(PIPELINE)
            pipe.set_progress_bar_config(disable=True)
            if where == "emu":
                pipe.enable_sequential_cpu_offload(device="emu")
            _call(pipe)  # warm: the arenas the call keeps are not the case's
            _STATE["pipes"][where] = pipe
            _STATE["base"][where] = _forward(pipe)
        _STATE["allocated"] = _allocated()
    return _STATE


def _forward(pipe):
    a = _STATE["inputs"]
    return pipe.transformer(a["in_hidden"], a["in_text"], a["in_timestep"], image_rotary_emb=(a["in_cos"], a["in_sin"]),
                            return_dict=False)[0]  # fmt: skip


def _allocated():
    """The memory manager's allocated bytes on each device with every model's activation arena given back and its
    offloaded weights off the device (a direct transformer forward keeps both; a pipeline call leaves neither)."""
    import cogvideo_c

    for pipe in _STATE["pipes"].values():
        for model in pipe._models():
            model._leave_stage()
    return {d: cogvideo_c.memory_stats(d)["allocated_bytes.all.current"] for d in sorted(set(WHERE))}


def _call(pipe):
    return pipe(prompt="a cat", num_inference_steps=1, height=16, width=16, num_frames=9, guidance_scale=6.0,
                max_sequence_length=16, output_type="np", generator=np.random.default_rng(0)).frames  # fmt: skip


def run_case(folder):
    import cogvideo_c

    st = _state()
    with open(os.path.join(folder, "plan.json")) as f:
        plan = json.load(f)
    pipe = st["pipes"][plan["where"]]
    path = folder if plan["by_folder"] else os.path.join(folder, FILE)
    sd, _ = cogvideo_c.CogVideoXPipeline.lora_state_dict(path, return_lora_metadata=True)
    pipe.load_lora_weights(path, adapter_name="fuzz")
    names = ["fuzz"]
    if not pipe.get_list_adapters():
        return f"nothing loaded ({len(sd)} tensors)"
    if plan["second"]:
        pipe.load_lora_weights(os.path.join(LORA, "attn"), adapter_name="attn")
        names.append("attn")
    pipe.set_adapters(names, plan["weights"][: len(names)])
    frames = np.asarray(_call(pipe))
    pipe.fuse_lora(lora_scale=plan["lora_scale"], safe_fusing=plan["safe_fusing"])
    out = _forward(pipe)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    return f"{plan['where']}: frames {frames.shape}, fused output finite: {bool(np.isfinite(out).all())}"


def after_case():
    """What the case left behind, or None: adapters are unloaded first (unfused, so that nothing is baked in)."""
    import cogvideo_c

    st = _state()
    problems = []
    for where, pipe in st["pipes"].items():
        try:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
        except BaseException as err:  # noqa: BLE001 - a cleanup that fails is the finding
            return f"unloading after the case failed ({where}): {type(err).__name__}: {err}"
        if pipe.transformer.lora_bytes:
            problems.append(f"{pipe.transformer.lora_bytes} LoRA bytes left on the {where} pipeline")
    if cogvideo_c.memory_stats("cpu")["lora_bytes.current"]:
        problems.append(f"memory_stats reports {cogvideo_c.memory_stats('cpu')['lora_bytes.current']} LoRA bytes")
    allocated = _allocated()
    if allocated != st["allocated"]:
        problems.append(f"allocated bytes {allocated}, {st['allocated']} before")
    for where, pipe in st["pipes"].items():
        if not np.array_equal(_forward(pipe), st["base"][where]):
            problems.append(f"the base model's output changed ({where})")
    return "; ".join(problems) or None


def fuzz(seed, cases, seconds, case_timeout):
    """Runs up to `cases` cases (or for `seconds`); returns the counts, the clean refusals and the findings."""
    return fuzz_loop.fuzz(__file__, seed, cases, seconds, case_timeout)


def _describe(folder, target):
    with open(os.path.join(folder, FILE), "rb") as f:
        blob = f.read()
    print(f"{len(blob)} bytes; header: {blob[8:2008].decode('utf-8', 'replace')}")
    with open(os.path.join(folder, "plan.json")) as f:
        print("plan:", f.read())


if __name__ == "__main__":
    sys.exit(fuzz_loop.main(sys.modules[__name__], "LoRA", _describe))
