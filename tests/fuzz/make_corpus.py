"""Writes the seed corpora of the libFuzzer targets (tests/fuzz/corpus/<target>/): small valid inputs in the
shapes real checkpoints take, plus a few near-misses, for mutations to start from. Run once; the output is
committed."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(header, data=b"", pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)  # as the reference writer aligns the data
    return struct.pack("<Q", len(text)) + text + data


def write(target, name, blob):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(blob if isinstance(blob, bytes) else blob.encode())


def main():
    f32 = struct.pack("<3f", 1.0, -2.5, 0.5)
    write(
        "safetensors",
        "mixed",
        safetensors(
            {
                "__metadata__": {"format": "pt"},
                "w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                "h": {"dtype": "F16", "shape": [1, 2], "data_offsets": [12, 16]},
                "b": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]},
                "d": {"dtype": "F64", "shape": [], "data_offsets": [20, 28]},
                "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [28, 28]},
            },
            f32 + bytes(range(8)) + struct.pack("<d", 3.0),
        ),
    )
    write("safetensors", "empty", safetensors({}))
    write(
        "safetensors",
        "unpadded",
        safetensors({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, f32[:4], False),
    )
    write(
        "safetensors",
        "unicode_extra",
        safetensors(
            {"caf\u00e9.\U0001f600": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2], "extra": [[1]]}},
            b"\x00\x3c",
        ),
    )
    write("safetensors", "gap", safetensors({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)))
    write(
        "safetensors", "int_dtype", safetensors({"x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))
    )

    # the index target's folder holds a.safetensors (a, b), b.safetensors (c), s/c.safetensors (d), l -> a
    index = {
        "metadata": {"total_size": 22},
        "weight_map": {"a": "a.safetensors", "b": "./a.safetensors", "c": "b.safetensors", "d": "s/c.safetensors"},
    }
    write("index", "all", json.dumps(index))
    write(
        "index",
        "spellings",
        json.dumps({"weight_map": {"a": ".//a.safetensors", "b": "l.safetensors", "d": "s//./c.safetensors"}}),
    )
    write("index", "empty", json.dumps({"weight_map": {}}))
    write("index", "outside", json.dumps({"weight_map": {"a": "../a.safetensors", "c": "/b.safetensors"}}))
    write("index", "missing", json.dumps({"weight_map": {"zz": "a.safetensors"}}))

    # the LoRA target: the committed adapters of tests/fixtures/lora (made by diffusers/peft for the tiny 5b model)
    for name in ("attn", "alpha", "wide"):
        with open(os.path.join(HERE, "..", "fixtures", "lora", name, "pytorch_lora_weights.safetensors"), "rb") as f:
            write("lora", name, f.read())
    q = "transformer.transformer_blocks.0.attn1.to_q"
    a16 = {"dtype": "F16", "shape": [2, 32], "data_offsets": [0, 128]}
    write("lora", "f16", safetensors({f"{q}.lora_A.weight": a16, f"{q}.lora_B.weight": {**a16, "shape": [32, 2],
                                      "data_offsets": [128, 256]}}, bytes(range(256))))  # fmt: skip
    bf = {"dtype": "BF16", "shape": [1, 32], "data_offsets": [0, 64]}
    write("lora", "rank1_bf16_odd", safetensors({"transformer.proj_out.lora_A.weight": bf,
                                                 "transformer.proj_out.lora_B.weight": {**bf, "shape": [16, 1],
                                                 "data_offsets": [64, 96]}}, bytes(96), pad=False))  # fmt: skip
    write("lora", "a_only", safetensors({f"{q}.lora_A.weight": {**a16, "dtype": "F32", "data_offsets": [0, 256]}},
                                        bytes(256)))  # fmt: skip

    write("json", "object", '{"a": [1, -2.5e-3, true, false, null, {}, []], "b": {"c": "d"}}')
    write("json", "escapes", '["\\"\\\\\\/\\b\\f\\n\\r\\t", "\\u00e9\\ud83d\\ude00", "caf\u00e9"]')
    write("json", "numbers", "[0, -0, 9223372036854775807, -9223372036854775808, 9223372036854775808, 1E+2, 0.1]")
    write("json", "nested", "[" * 60 + "]" * 60)


if __name__ == "__main__":
    main()
