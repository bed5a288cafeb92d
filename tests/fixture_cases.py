"""Helpers shared by the parity tests (tests/test_*_parity.py): fixture manifests, cached npz arrays and the
comparison of an output with its golden; and a short run of one of the fuzzers in tests/fuzz/.

The fixtures are made by the scripts in tests/reference/ (see each test's docstring); the tests themselves use only
numpy and cogvideo_c.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest


def case_params(manifest: Path, key: str = "cases", label: str = "manifest") -> list:
    """One pytest.param per entry of manifest[key], with the case name as its id.

    A missing manifest or an empty list gives a single param None ("manifest-missing" / "manifest-empty"), so that
    every run fails (not skips) until the fixtures exist."""
    if not manifest.is_file():
        return [pytest.param(None, id="manifest-missing")]
    cases = json.loads(manifest.read_text())[key]
    if not cases:
        return [pytest.param(None, id="manifest-empty")]
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), f"duplicate case names in {label}"
    return [pytest.param(c, id=c["name"]) for c in cases]


def fail_if_missing(case, what: str, manifest: Path, script: str) -> None:
    """Fails the test of a None case (the manifest is missing or empty), naming the script that makes it."""
    if case is None:
        pytest.fail(
            f"{what} fixtures missing: {manifest} (run tests/reference/{script} with the reference environment)"
        )


_npz_cache: dict[Path, dict[str, np.ndarray]] = {}


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz fixture, read once per test session."""
    if path not in _npz_cache:
        with np.load(path, allow_pickle=False) as z:
            _npz_cache[path] = {k: z[k] for k in z.files}
    return _npz_cache[path]


def checked_diff(label: str, got, want: np.ndarray, reference: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Asserts that `got` has the golden's shape, is float32 and finite; returns (got as an array, |got - want| in
    float64, its maximum)."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{label}: shape {got.shape}, {reference} gives {want.shape}"
    assert got.dtype == np.float32, f"{label}: dtype {got.dtype}, expected float32"
    assert np.isfinite(got).all(), f"{label}: non-finite values"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    return got, diff, max_diff


def worst_element(got: np.ndarray, want: np.ndarray, diff: np.ndarray, tol: float, reference: str) -> str:
    """Where the largest difference is, and how many elements are over the tolerance (for a failure message)."""
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    n_bad = int((diff > tol).sum())
    return (
        f"at index {idx} (got {float(got[idx])!r}, {reference} {float(want[idx])!r}); {n_bad}/{diff.size} elements "
        f"over tolerance; mean abs diff {float(diff.mean()):.3e}"
    )


def compare_rel(name: str, got, want: np.ndarray, rel_tol: float, reference: str) -> tuple[float, float]:
    """max |got - want| <= rel_tol * max(1, max|want|), printing the numbers; returns (max abs diff, max|want|)."""
    got, diff, max_diff = checked_diff(name, got, want, reference)
    max_ref = float(np.abs(want).max()) if want.size else 0.0
    tol = rel_tol * max(1.0, max_ref)
    print(f"{name}: max abs diff {max_diff:.3e}, max|expected| {max_ref:.3f}, tolerance {tol:.3e}")
    if not max_diff <= tol:
        pytest.fail(
            f"{name}: max abs diff {max_diff:.3e} > {tol:.3e} (= {rel_tol:.0e} * max(1, {max_ref:.3f})) "
            + worst_element(got, want, diff, tol, reference)
        )
    return max_diff, max_ref


def compare_abs(name: str, got, want: np.ndarray, tol: float, reference: str) -> float:
    """max |got - want| <= tol, printing the numbers; returns the max abs diff."""
    got, diff, max_diff = checked_diff(name, got, want, reference)
    print(f"{name}: max abs diff {max_diff:.3e}, tolerance {tol:.1e}")
    if not max_diff <= tol:
        pytest.fail(
            f"{name}: max abs diff {max_diff:.3e} > {tol:.1e} " + worst_element(got, want, diff, tol, reference)
        )
    return max_diff


def short_fuzz_run(name: str, cases: int) -> None:
    """Runs the first `cases` cases (seed 0) of tests/fuzz/<name>.py and fails on any finding: every case runs or
    is refused cleanly, at least one runs, and nothing is left behind."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.pop(0)
    counts, _, findings = module.fuzz(seed=0, cases=cases, seconds=0, case_timeout=120)
    assert findings == []
    assert sum(counts.values()) == cases and counts["ok"] + counts["clean"] == cases and counts["ok"] > 0, counts
