"""What the benchmark scripts (bench_vae.py, bench_transformer.py) share: process-memory probes, the timed-call loop,
the child-process runner, the model-folder cache, the reference/cogvideo_c comparison and the result table.

Only the standard library and numpy are imported here: the parent process of a benchmark must never import torch
(its children would inherit a large address space). A script imports this module from its own folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

CHECKOUT = Path(__file__).resolve().parent.parent  # the source checkout the benchmarks belong to
MIB = 2.0**20
NAMES = {"reference": "diffusers (torch)", "cvx": "cogvideo_c"}


# ----------------------------------------------------------------------------------------------------------------
# process memory helpers (Linux /proc; fall back to getrusage)
# ----------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    v = _status_kib("VmRSS")
    return None if v is None else v * 1024


def hwm_bytes() -> int | None:
    v = _status_kib("VmHWM")
    return None if v is None else v * 1024


def reset_rss_peak() -> bool:
    """Reset the RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


def fmt_mib(b) -> str:
    return "n/a" if b is None else f"{b / MIB:,.1f}"


# ----------------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------------


def import_cogvideo_c(res: dict):
    """Imports cogvideo_c; if it is not installed, from the source checkout (noted in res["note"])."""
    try:
        import cogvideo_c
    except ImportError:  # not installed: fall back to the source checkout this script belongs to
        sys.path.insert(0, str(CHECKOUT))
        import cogvideo_c

        res["note"] = f"cogvideo_c imported from the checkout {CHECKOUT}"
    return cogvideo_c


def timed_calls(res: dict, call: Callable[[], object], repeat: int, warmup: int, phase: str):
    """Runs `call` warmup times untimed, then repeat times timed, recording in res the RSS after the load, the
    high-water mark after the calls (reset just before them where possible: res["hwm_after_<phase>"]), ru_maxrss and
    the times. Returns the last call's result."""
    res["rss_after_load"] = rss_bytes()
    res["rss_peak_reset"] = reset_rss_peak()
    for _ in range(warmup):
        call()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    res[f"hwm_after_{phase}"] = hwm_bytes()
    res["rss_end"] = rss_bytes()
    res["ru_maxrss"] = maxrss_bytes()
    res["times_s"] = times
    res["time_s_median"] = statistics.median(times)
    res["warmup"] = warmup
    return out


def rss_growth(res: dict, phase: str) -> int:
    """The peak RSS growth during the timed calls of timed_calls(res, ..., phase)."""
    if res["rss_peak_reset"] and res[f"hwm_after_{phase}"] is not None:
        return res[f"hwm_after_{phase}"] - res["rss_after_load"]
    # high-water mark could not be reset: the load's own peak may be included
    return res["ru_maxrss"] - (res["rss_after_load"] or 0)


def save_output(res: dict, out, output: str, result: str) -> None:
    """Records the output's shape and statistics in res, saves the output (float32) and res."""
    out = np.ascontiguousarray(out, dtype=np.float32)
    res["out_shape"] = list(out.shape)
    res["out_finite"] = bool(np.isfinite(out).all())
    res["out_std"] = float(out.std())
    res["out_absmax"] = float(np.abs(out).max())
    np.save(output, out)
    Path(result).write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def run_cmd(cmd: list[str], env_threads: int) -> None:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(env_threads)
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def ensure_model_dir(model_dir: Path, meta_name: str, meta: dict, build_cmd: list[str], threads: int) -> None:
    """Reuses the model in model_dir if the settings recorded there (in meta_name) equal meta; otherwise removes the
    old model files, runs build_cmd (a child that writes the model there) and records meta."""
    mfile = model_dir / meta_name
    if mfile.is_file() and (model_dir / "config.json").is_file():
        try:
            if json.loads(mfile.read_text()) == meta:
                print(f"reusing model in {model_dir}")
                return
        except ValueError:
            pass
    if model_dir.exists():
        for p in (model_dir / "config.json", model_dir / "diffusion_pytorch_model.safetensors", mfile):
            if p.exists():
                p.unlink()
    model_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_cmd(build_cmd, threads)
    mfile.write_text(json.dumps(meta))
    print(f"model built and saved in {time.perf_counter() - t0:.1f} s")


def run_children(args, work: Path, tag: str, input_path: Path, child_cmd: Callable[[str, str, list], list]) -> dict:
    """Runs the reference child and (unless --check-only-reference) the cogvideo_c child on input_path, each writing
    work/out_<tag><mode>.npy and work/res_<tag><mode>.json; child_cmd(python, mode, extra) builds a child's command.
    Returns {mode: result} with each result's max_abs_diff against the reference output."""
    impls = [("reference", sys.executable)]
    if not args.check_only_reference:
        impls.append(("cvx", args.cvx_python))
    results = {}
    for mode, py in impls:
        extra = ["--input", str(input_path), "--output", str(work / f"out_{tag}{mode}.npy")]
        extra += ["--result", str(work / f"res_{tag}{mode}.json")]
        extra += ["--repeat", str(args.repeat), "--warmup", str(args.warmup)]
        run_cmd(child_cmd(py, mode, extra), args.threads)
        results[mode] = json.loads((work / f"res_{tag}{mode}.json").read_text())
    ref = np.load(work / f"out_{tag}reference.npy").astype(np.float64)
    for mode in results:
        out = np.load(work / f"out_{tag}{mode}.npy")
        if out.shape != ref.shape:
            results[mode]["max_abs_diff"] = f"shape {list(out.shape)} != {list(ref.shape)}"
        else:
            results[mode]["max_abs_diff"] = float(np.abs(out.astype(np.float64) - ref).max())
    return results


def print_table(results: dict) -> None:
    """The markdown table: time, peak RSS, peak tensor memory and max abs diff of each implementation."""
    print()
    print(
        "| implementation | time (s, median) | peak RSS (MiB) | peak tensor memory (MiB) | max abs diff vs diffusers |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        diff = r["max_abs_diff"]
        diff = "0 (reference)" if mode == "reference" else (f"{diff:.3e}" if isinstance(diff, float) else diff)
        tensor = fmt_mib(r.get("peak_tensor_bytes"))
        if mode == "reference":
            tensor += "*"
        print(f"| {NAMES[mode]} | {r['time_s_median']:.3f} | {fmt_mib(r['ru_maxrss'])} | {tensor} | {diff} |")
    print()


def print_runs(results: dict, phase: str) -> None:
    """One line per implementation: version, load time, the times of the timed calls, output statistics."""
    for mode, r in results.items():
        print(
            f"  {NAMES[mode]}: {r['version']}; load {r['load_s']:.2f} s; {phase} times "
            + ", ".join(f"{t:.3f}" for t in r["times_s"])
            + f" s; output std {r['out_std']:.3f}, max |x| {r['out_absmax']:.3f}, finite {r['out_finite']}"
        )


def write_json(path: str, args, results: dict) -> None:
    Path(path).write_text(
        json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results}, indent=1)
    )


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def add_timing_args(ap: argparse.ArgumentParser, calls: str, model_dir_help: str) -> None:
    """--threads, --repeat, --warmup (`calls`: what is timed, e.g. "decodes") and --model-dir."""
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help=f"timed {calls}; the median is reported")
    ap.add_argument("--warmup", type=int, default=None, help=f"untimed {calls} first (default: 1 if --repeat > 1)")
    ap.add_argument("--model-dir", default=None, help=model_dir_help)


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """--seed, --cvx-python, --check-only-reference, --json and the hidden arguments of the child processes."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cvx-python", default=sys.executable, help="interpreter with cogvideo_c installed")
    ap.add_argument("--check-only-reference", action="store_true", help="run only the diffusers side")
    ap.add_argument("--json", default=None, help="also write all raw results to this JSON file")
    ap.add_argument("--child", choices=["make-model", "reference", "cvx"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parses and checks --repeat; --warmup defaults to 1 with --repeat > 1, else 0."""
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.warmup is None:
        args.warmup = 1 if args.repeat > 1 else 0
    return args
