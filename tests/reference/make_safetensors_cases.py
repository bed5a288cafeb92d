#!/usr/bin/env python3
"""Generate the table of crafted safetensors files and the reference library's verdict on each.

Run from the repository root with the reference environment (the Rust-backed `safetensors` package, never a
runtime or test dependency of cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_safetensors_cases.py

Writes tests/fixtures/safetensors_cases.json: for each case the file's parts (header bytes, the header-length field,
the data length), what safetensors.safe_open did with it ("accept" and the tensor names, or "reject" and its error),
and what cogvideo_c must do: the same, or (`stricter`) reject a file the reference accepts. Every rejection by
cogvideo_c carries the words its message must contain (the tensor, the offset). tests/test_loader_hardening.py
rebuilds each file and checks cogvideo_c against the table; this script checks that cogvideo_c is never laxer than
the reference.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import safetensors
from safetensors import safe_open

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "safetensors_cases.json"


def entry(dtype="F32", shape=(1,), offsets=(0, 4), **extra):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets), **extra}


def header(**tensors):
    return json.dumps(tensors, separators=(",", ":"))


ONE = header(a=entry())
TWO = header(a=entry(), b=entry(offsets=(4, 8)))

# (name, header text or bytes, data length, header-length field minus the header's real length, what cogvideo_c
# must say: a needle for a rejection (None: it accepts), and "stricter" when the reference accepts the file)
CASES = [
    ("valid", ONE, 4, 0, None),
    ("padded with spaces", ONE + "    ", 4, 0, None),
    ("leading whitespace", "  " + ONE, 4, 0, None),
    ("tensors out of offset order", header(b=entry(offsets=(4, 8)), a=entry()), 8, 0, None),
    (
        "empty tensors at both ends",
        header(z=entry(shape=(0,), offsets=(0, 0)), a=entry(), y=entry(shape=(2, 0), offsets=(4, 4))),
        4,
        0,
        None,
    ),
    ("unknown member in an entry", header(a=entry(extra=[[1, {"k": None}]])), 4, 0, None),
    ("metadata and no tensor", '{"__metadata__":{"format":"pt"}}', 0, 0, None),
    ("empty header", "{}", 0, 0, None),
    (
        "header length one byte short",
        ONE + " ",
        4,
        -1,
        "the tensors end at byte 4 of the data region, but the file holds 5",
    ),
    ("header length one byte long", ONE, 4, 1, "malformed JSON"),
    ("one trailing byte", ONE, 5, 0, "the tensors end at byte 4 of the data region, but the file holds 5"),
    ("data one byte short", ONE, 3, 0, "tensor 'a' ends at byte 4 past the data region of 3 bytes"),
    (
        "gap before the first tensor",
        header(a=entry(offsets=(4, 8))),
        8,
        0,
        "tensor 'a' begins at byte 4 of the data region, but the tensors before it end at byte 0",
    ),
    (
        "gap between tensors",
        header(a=entry(), b=entry(offsets=(8, 12))),
        12,
        0,
        "tensor 'b' begins at byte 8 of the data region, but the tensors before it end at byte 4",
    ),
    (
        "overlapping tensors",
        header(a=entry(shape=(2,), offsets=(0, 8)), b=entry(offsets=(4, 8))),
        8,
        0,
        "tensor 'b' [4, 8) overlaps tensor 'a', which ends at byte 8",
    ),
    ("same range twice", header(a=entry(), b=entry()), 4, 0, "[0, 4) overlaps tensor"),
    (
        "empty tensor inside another",
        header(a=entry(), z=entry(shape=(0,), offsets=(2, 2))),
        4,
        0,
        "tensor 'z' [2, 2) overlaps tensor 'a'",
    ),
    (
        "size does not match the shape",
        header(a=entry(shape=(2,))),
        4,
        0,
        "tensor 'a' spans 4 bytes but its shape and dtype need 8",
    ),
    ("end before begin", header(a=entry(offsets=(4, 0))), 4, 0, "tensor 'a' ends (0) before it begins (4)"),
    ("three offsets", header(a=entry(offsets=(0, 4, 4))), 4, 0, "\"data_offsets\" of tensor 'a' has 3 entries"),
    ("one offset", header(a=entry(offsets=(4,))), 4, 0, "\"data_offsets\" of tensor 'a' must have 2 entries, has 1"),
    ("negative offset", header(a=entry(offsets=(-4, 0))), 4, 0, "holds a negative value -4 at index 0"),
    (
        "offset past 2^64",
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551620]}}',
        4,
        0,
        "holds a non-integer (or one past 2^63) at index 1",
    ),
    (
        "float in the shape",
        '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}',
        4,
        0,
        "\"shape\" of tensor 'a' holds a non-integer",
    ),
    ("negative dimension", header(a=entry(shape=(-1,))), 4, 0, "\"shape\" of tensor 'a' holds a negative value -1"),
    (
        "element count overflows",
        header(a=entry(shape=(2**32, 2**32, 2**32))),
        4,
        0,
        "shape of tensor 'a' overflows 64 bits",
    ),
    ("missing dtype", '{"a":{"shape":[1],"data_offsets":[0,4]}}', 4, 0, "tensor 'a' has no \"dtype\""),
    ("dtype is a number", header(a=entry(dtype=5)), 4, 0, "\"dtype\" of tensor 'a' is a number, not a string"),
    ("unknown dtype", header(a=entry(dtype="Q7")), 4, 0, "unknown dtype 'Q7' for tensor 'a'"),
    ("entry is not an object", '{"a":[0,4]}', 4, 0, "entry of tensor 'a' is an array, not an object"),
    (
        "repeated member in an entry",
        '{"a":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}',
        4,
        0,
        "tensor 'a' has two \"shape\" members",
    ),
    (
        "metadata value not a string",
        '{"__metadata__":{"step":3},' + ONE[1:],
        4,
        0,
        '"__metadata__" value (header byte 24) is a number, not a string',
    ),
    ("header length past the file", ONE, 4, 100, "runs past the end of the"),
    ("header length over 100 MB", ONE, 4, 100_000_001 - len(ONE), "header length 100000001 is implausibly large"),
    ("file shorter than 8 bytes", b"", -5, 0, "shorter than the 8-byte header length"),
    ("header not UTF-8", b'{"\xff":' + json.dumps(entry()).encode() + b"}", 4, 0, "invalid UTF-8"),
    ("header not JSON", '{"a":{"dtype":', 0, 0, "malformed JSON"),
    ("header is an array", "[]", 0, 0, "header is an array, not a JSON object"),
    ("header is a string", '"a"', 0, 0, "header is a string, not a JSON object"),
    ("text after the header object", ONE + " {}", 4, 0, "expected the end after the JSON value"),
    ("NaN in an unknown member", header(a=entry())[:-2] + ',"x":NaN}}', 4, 0, "malformed JSON"),
    (
        "nesting 200 deep",
        header(a=entry())[:-2] + ',"x":' + "[" * 200 + "]" * 200 + "}}",
        4,
        0,
        "nesting deeper than 64",
    ),
    # stricter than the reference:
    (
        "nesting 70 deep",
        header(a=entry())[:-2] + ',"x":' + "[" * 70 + "]" * 70 + "}}",
        4,
        0,
        ("nesting deeper than 64", "stricter"),
    ),
    (
        "repeated tensor name",
        '{"a":' + json.dumps(entry()) + ',"a":' + json.dumps(entry()) + "}",
        4,
        0,
        ("tensor 'a' appears twice in the header", "stricter"),
    ),
    (
        "NUL in a tensor name",
        '{"a\\u0000":' + json.dumps(entry()) + "}",
        4,
        0,
        ("\\u0000 in string is not supported", "stricter"),
    ),
    ("metadata null", '{"__metadata__":null,' + ONE[1:], 4, 0, ('"__metadata__" is null, not an object', "stricter")),
    (
        "nine dimensions",
        header(a=entry(shape=(1,) * 9)),
        4,
        0,
        ("\"shape\" of tensor 'a' has 9 entries, at most 8 allowed", "stricter"),
    ),
    (
        "dtype cogvideo_c does not read",
        header(a=entry(dtype="I32")),
        4,
        0,
        ("unsupported dtype 'I32' for tensor 'a'", "stricter"),
    ),
    (
        "fp8 dtype",
        header(a=entry(dtype="F8_E4M3", shape=(4,))),
        4,
        0,
        ("unsupported dtype 'F8_E4M3' for tensor 'a'", "stricter"),
    ),
]


def build(text, data_len, length_delta):
    """The file's bytes: the length field, the header, data_len bytes 0, 1, 2, ... (data_len < 0 cuts the file)."""
    raw = text.encode() if isinstance(text, str) else text
    if data_len < 0:
        return (struct.pack("<Q", len(raw) + length_delta) + raw)[: 8 + data_len]
    return struct.pack("<Q", len(raw) + length_delta) + raw + bytes(i % 251 for i in range(data_len))


def reference_verdict(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        try:
            with safe_open(path, "np") as f:
                return {"verdict": "accept", "tensors": sorted(f.keys())}
        except Exception as err:  # noqa: BLE001 - the reference's own exception types are what is recorded
            return {"verdict": "reject", "error": f"{type(err).__name__}: {err}"}


def main():
    cases = []
    for name, text, data_len, length_delta, ours in CASES:
        raw = text.encode() if isinstance(text, str) else text
        ref = reference_verdict(build(raw, data_len, length_delta))
        needle, stricter = (ours, False) if not isinstance(ours, tuple) else (ours[0], True)
        if stricter != (ref["verdict"] == "accept" and needle is not None):
            raise SystemExit(f"case '{name}': marked stricter={stricter} but the reference says {ref}")
        if ref["verdict"] == "reject" and needle is None:
            raise SystemExit(f"case '{name}': the reference rejects it ({ref['error']}), cogvideo_c must too")
        cases.append(
            {
                "name": name,
                "header_hex": raw.hex(),
                "data_len": data_len,
                "header_len_delta": length_delta,
                "reference": ref,
                "cogvideo_c": {"verdict": "accept"} if needle is None else {"verdict": "reject", "message": needle},
                "stricter": stricter,
            }
        )
    manifest = {
        "versions": {"safetensors": safetensors.__version__},
        "notes": [
            "file = 8-byte little-endian (len(header) + header_len_delta), the header bytes, then data_len bytes "
            "i % 251 (data_len < 0: the first 8 + data_len bytes of length field + header).",
            "reference: safetensors.safe_open(path, 'np'), the Rust implementation's checks (read_metadata and "
            "Metadata::validate).",
            "cogvideo_c: 'accept' (the same tensors) or 'reject' with words its OSError message must contain; "
            "stricter: the reference accepts what cogvideo_c rejects (never the other way round).",
        ],
        "cases": cases,
    }
    OUT.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
