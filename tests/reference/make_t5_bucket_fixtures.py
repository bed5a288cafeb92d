#!/usr/bin/env python3
"""Goldens for T5 relative-position bucket edge configs: what transformers computes, and where it fails.

Run from the repository root with the reference environment:

    /tmp/cvx-reference/bin/python tests/reference/make_t5_bucket_fixtures.py

The "relu" T5 fixture (8 buckets: half 4, max_exact 2) is loaded with relative_attention_max_distance 1 and 2, at or
below max_exact. transformers accepts both configs; its log-bucket (log(n / max_exact) / log(max_distance /
max_exact)) is then negative (max_distance 1) or 0 / 0 (max_distance 2), so some relative positions get an index
outside the bias table and the forward raises IndexError, while shorter inputs run and give finite outputs.
Writes tests/fixtures/t5_edge_buckets/cases.npz (ids + golden last_hidden_state per case that runs) and
manifest.json (per case: the sequence length, and whether transformers ran or raised).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import T5Config, T5EncoderModel

from _reference_common import save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "t5" / "relu"
OUT = ROOT / "tests" / "fixtures" / "t5_edge_buckets"

# (max_distance, tokens): for 1, positions up to 5 apart map into the table and 6 apart do not; for 2, positions
# up to 1 apart are "exact" buckets and 2 apart divide 0 by 0
CASES = [(1, 6), (1, 7), (2, 2), (2, 3)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    arrays, manifest = (
        {},
        {"made_with": versions(torch, transformers, np, python=True), "model": "t5/relu", "cases": {}},
    )
    rng = np.random.default_rng(7)
    for max_distance, tokens in CASES:
        cfg = T5Config.from_pretrained(str(MODEL))
        cfg.relative_attention_max_distance = max_distance
        model = T5EncoderModel.from_pretrained(str(MODEL), config=cfg, dtype=torch.float32).eval()
        ids = rng.integers(2, cfg.vocab_size, size=(1, tokens), dtype=np.int64)
        name = f"md{max_distance}_s{tokens}"
        entry = {"relative_attention_max_distance": max_distance, "tokens": tokens}
        try:
            with torch.no_grad():
                out = model(torch.from_numpy(ids)).last_hidden_state.numpy()
            arrays[f"{name}_ids"], arrays[f"{name}_out"] = ids, out.astype(np.float32)
            entry["transformers"] = "ran"
            assert np.isfinite(out).all()
        except IndexError as err:
            arrays[f"{name}_ids"] = ids
            entry["transformers"] = f"IndexError: {err}"
        manifest["cases"][name] = entry
        print(name, entry["transformers"])
    save_npz(OUT / "cases.npz", arrays)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
