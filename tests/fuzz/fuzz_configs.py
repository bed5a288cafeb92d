"""A bounded mutational fuzzer over config parsing: mutated JSON files of the tiny fixture pipeline, each case loaded
with CogVideoXPipeline.from_pretrained and run for one denoising step, in a worker subprocess.

A case passes when it runs, or fails with a clean exception (ValueError, OSError, NotImplementedError,
cogvideo_c.OutOfMemoryError). Anything else is a finding: a crash (the worker dies: SIGSEGV, abort, ...), a hang
(no answer within --case-timeout seconds) or an unclean exception (KeyError, IndexError, MemoryError, ...). A
TypeError is one too: a config value of the wrong type must be a ValueError naming the file and key.

    python tests/fuzz/fuzz_configs.py --seconds 60            # as tests/fuzz/run.sh runs it
    python tests/fuzz/fuzz_configs.py --cases 200 --seed 3
    python tests/fuzz/fuzz_configs.py --replay 3:17            # re-run case 17 of seed 3 here, with its traceback

Cases are deterministic in (seed, index); the worker loop is fuzz_loop.py's. Exit status 1 when anything was found.
"""

import copy
import json
import math
import os
import random
import shutil
import sys

import fuzz_loop

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE = os.path.join(HERE, "..", "fixtures", "pipeline", "tiny_2b")
JSON_FILES = (  # (file, weight): the model configs carry the sizes, so they get most of the cases
    ("model_index.json", 1),
    ("vae/config.json", 4),
    ("transformer/config.json", 4),
    ("text_encoder/config.json", 4),
    ("scheduler/scheduler_config.json", 2),
    ("tokenizer/tokenizer_config.json", 1),
)
DEEP = "__cvx_fuzz_deep__"  # placeholder for nesting deeper than json.dumps can write: spliced in as text

INTERESTING = [
    0, 1, 2, 3, 4, 7, 8, -1, -2, 16, 17, 255, 2**16, 2**20, 2**31 - 1, 2**31, 2**32, 2**32 + 8, 2**53 + 1, 2**62,
    2**62 + 1, 2**63, 2**64, -(2**63), 10**6, 10**12, 0.0, -0.0, 0.5, 1.5, 2.5, 1e-30, 1e-7, 1e30, 1e308,
    float("nan"), float("inf"), float("-inf"), "", "x", "2", "silu", "gelu", "relu", "float16", "bfloat16",
    "Unigram", "x" * 5000, None, True, False, [], [0], [1, 2], [2**32 + 8], [-1], [None], {}, {"a": 1}, [[]],
]  # fmt: skip


def _interesting(rng):
    """A copy of one of INTERESTING: a later edit of the same case may write into it, and the shared list or dict
    would then carry into the next cases of the worker (and could end up inside itself, which json.dumps refuses)."""
    return copy.deepcopy(rng.choice(INTERESTING))


def _paths(node, prefix=()):
    """Every (path, value) in a JSON tree, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,), value
        yield from _paths(value, prefix + (key,))


def _random_value(rng, old):
    roll = rng.random()
    if roll < 0.3 and isinstance(old, (int, float)) and not isinstance(old, bool) and math.isfinite(old):
        return rng.choice([old + 1, old - 1, old * 2, old * 1000, -old, old + 0.5, int(old) if old == old else 0])
    if roll < 0.4 and isinstance(old, list):
        out = list(old)
        if out and rng.random() < 0.5:
            del out[rng.randrange(len(out))]
        else:
            out.append(rng.choice(out) if out else 0)
        return out
    if roll < 0.45:
        depth = rng.choice([10, 500, 0])
        return json.loads("[" * depth + "]" * depth) if depth else DEEP
    return _interesting(rng)


def _set(root, path, value):
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def mutate(rng, text):
    """A mutated copy of the JSON text (str): one to three structural edits, or a byte-level edit."""
    if rng.random() < 0.15:  # byte level: truncation, a flipped character, a different top-level value, deep nesting
        kind = rng.randrange(4)
        if kind == 0:
            return text[: rng.randrange(len(text) + 1)]
        if kind == 1:
            i = rng.randrange(len(text))
            return text[:i] + rng.choice('{}[]",:0-.eE\\ \x00\xff') + text[i + 1 :]
        if kind == 2:
            return rng.choice(["[]", "3", '"s"', "null", "[" + text + "]", text + text])
        return "[" * 100000 + "]" * 100000
    cfg = json.loads(text)
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(cfg))
        op = rng.random()
        if paths and op < 0.75:
            path, old = rng.choice(paths)
            _set(cfg, path, _random_value(rng, old))
        elif paths and op < 0.9:
            path, _ = rng.choice(paths)
            parent = cfg
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
        else:
            cfg[rng.choice(["unknown_key", "num_layers", "extra"])] = _interesting(rng)
    return json.dumps(cfg, indent=1).replace(json.dumps(DEEP), "[" * 100000 + "]" * 100000)


def make_case(seed, index, folder):
    """Writes case (seed, index) into `folder`: a copy of the tiny pipeline with one JSON file mutated (weights and
    tokenizer.json linked, not copied). Returns (mutated file, a short description)."""
    rng = random.Random(f"{seed}:{index}")
    names, weights = zip(*JSON_FILES)
    target = rng.choices(names, weights)[0]
    for dirpath, _, files in os.walk(PIPELINE):
        rel = os.path.relpath(dirpath, PIPELINE)
        os.makedirs(os.path.join(folder, rel), exist_ok=True)
        for name in files:
            src, dst = os.path.join(dirpath, name), os.path.join(folder, rel, name)
            if name.endswith(".json") and os.path.normpath(os.path.join(rel, name)) == os.path.normpath(target):
                with open(src, encoding="utf-8") as f:
                    text = mutate(rng, f.read())
                with open(dst, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(text)
            elif name.endswith(".json") and not name.startswith("tokenizer."):
                shutil.copyfile(src, dst)
            else:
                os.symlink(os.path.abspath(src), dst)
    return target


def run_case(folder):
    import numpy as np

    import cogvideo_c

    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(folder)
    frames = pipe(
        prompt="a cat",
        num_inference_steps=1,
        height=16,
        width=16,
        num_frames=8,
        guidance_scale=6.0,
        max_sequence_length=16,
        output_type="np",
        generator=np.random.default_rng(0),
    ).frames
    return np.asarray(frames).shape


def fuzz(seed, cases, seconds, case_timeout):
    """Runs up to `cases` cases (or for `seconds`); returns the counts, the clean refusals and the findings."""
    return fuzz_loop.fuzz(__file__, seed, cases, seconds, case_timeout)


def _describe(folder, target):
    with open(os.path.join(folder, target), encoding="utf-8", errors="replace") as f:
        print(f.read()[:2000])


if __name__ == "__main__":
    sys.exit(fuzz_loop.main(sys.modules[__name__], "config", _describe))
