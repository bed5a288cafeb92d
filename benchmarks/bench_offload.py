#!/usr/bin/env python3
"""The offload strategies on the emulated accelerator ("emu"): time, device peak and host peak of a mid-size pipeline.

    python benchmarks/bench_offload.py [--bandwidth pcie half-compute] [--repeat 3] [--rounds 1] [--threads N]
        [--strategies none model sequential sequential-no-prefetch auto] [--vae plain slicing tiling]
        [--model-dir DIR] [--out benchmarks/results/offload.md] [--json benchmarks/results/offload.json]
    python benchmarks/bench_offload.py --host-ram [--model-dir DIR]

The pipeline is make_tiny_pipeline's random-weight CogVideoX with these overrides (MID below), stored in float32:
  * text encoder: a T5 with d_model 256, 8 heads of 32, d_ff 512, 3 layers (6.7 MiB);
  * transformer: 8 heads of 64 (inner dim 512), time_embed_dim 512, text_embed_dim 256, 8 layers (197 MiB; one
    block group 24.0 MiB, the rest 4.6 MiB);
  * VAE: block_out_channels (16, 16, 32, 32), 4 groups (2.6 MiB); sample size 128 x 128, so that tiling's default
    tiles (half the sample size, 64 x 64 pixels) really tile the 128 x 128 frames.
The request: 2 prompts, 128 x 128, 9 frames (3 latent frames), 3 DDIM steps, guidance 6 (so 4 rows through the
transformer: 192 video + 226 text tokens each); one call takes about 3 s on a 2-core machine.

Strategies (device "emu"; the VAE's slicing and tiling as --vae says):
  * none: pipe.to("emu");
  * model: pipe.enable_model_cpu_offload(device="emu");
  * sequential: pipe.enable_sequential_cpu_offload(device="emu") (prefetch 1: a ring of two block slots);
  * sequential-no-prefetch: pipe.enable_group_offload("emu", offload_type="leaf_level", use_stream=False) (one block
    slot: each block's copy waits for the previous block to finish, and the block waits for its copy);
  * auto: pipe.enable_auto_offload(max_memory=B, device="emu"), B chosen so that the transformer cannot stay whole
    (between its sequential need and its whole weights + arena, from the none run's measured arena), unless
    --max-memory gives it.

Link speed (`_C.set_bandwidth("emu", bytes/s)`: every copy to the device takes at least bytes / bandwidth):
  * pcie: 16e9 bytes/s, a PCIe 4.0 x16-like link;
  * half-compute: one transformer block group's copy takes half that block's compute: from the none runs at pcie
    (plain VAE), compute per block = the fastest denoise stage's seconds / (steps x layers) (the slower ones carry a
    shared machine's other load), bandwidth = group bytes / (0.5 x that).

Each configuration runs in its own child process (this parent imports only the standard library, numpy and
_bench_common), so its host RSS is clean: one untimed warm-up call, then --repeat timed calls; the time is their
median. With --rounds N every configuration of a link runs N times, the configurations interleaved (round 1 of all,
then round 2, ...), so that a change in a shared machine's load hits them alike; the time is the median of all N x
--repeat calls. From the last call's pipe.memory_report(): device peak = the largest stage's device_peak_bytes (with its
weights / activations split), bytes copied = all stages together, overlap = 1 - wait / copy time of the denoising
stage (the transformer's streaming). Host peak RSS = the child's RSS high-water mark over load and calls; on emu
the device pool is host memory too, so it counts the mapped checkpoint pages plus the device copies.

--host-ram: the same pipeline on the CPU (none), and the issue's bound for a checkpoint stored in the run dtype:
peak RSS <= weight bytes x 1.1 + activation peak + the interpreter's baseline (RSS after `import cogvideo_c, numpy`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import CHECKOUT, fmt_mib, hwm_bytes, import_cogvideo_c, rss_bytes, run_cmd, timed_calls

HERE = Path(__file__).resolve()
META_NAME = "bench_offload_meta.json"

MID = {
    "text_encoder": {"d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 512, "num_layers": 3},
    "transformer": {"num_attention_heads": 8, "attention_head_dim": 64, "num_layers": 8, "time_embed_dim": 512,
                    "text_embed_dim": 256},
    "vae": {"block_out_channels": [16, 16, 32, 32], "norm_num_groups": 4, "sample_height": 128, "sample_width": 128},
}  # fmt: skip
REQUEST = {"prompt": ["a cat", "a dog"], "height": 128, "width": 128, "num_frames": 9, "num_inference_steps": 3}
STRATEGIES = ("none", "model", "sequential", "sequential-no-prefetch", "auto")
VAE_MODES = ("plain", "slicing", "tiling")
PCIE = 16e9
GOAL = 1.15  # the issue: sequential (prefetch) time <= 1.15 x none time at the half-compute link


# ----------------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------------


def child_make(args) -> None:
    from cogvideo_c.tiny import make_tiny_pipeline

    make_tiny_pipeline(args.model_dir, seed=args.seed, **MID)


def _load(cogvideo_c, model_dir, vae_mode):
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    if vae_mode == "slicing":
        pipe.vae.enable_slicing()
    elif vae_mode == "tiling":
        pipe.vae.enable_tiling()  # tiles of half the sample size (MID's VAE sample_height/width)
    return pipe


def _apply(pipe, strategy, max_memory):
    if strategy == "none":
        pipe.to("emu")
    elif strategy == "model":
        pipe.enable_model_cpu_offload(device="emu")
    elif strategy == "sequential":
        pipe.enable_sequential_cpu_offload(device="emu")
    elif strategy == "sequential-no-prefetch":
        pipe.enable_group_offload("emu", offload_type="leaf_level", use_stream=False)
    elif strategy == "auto":
        pipe.enable_auto_offload(max_memory=max_memory, device="emu")
    else:
        raise ValueError(strategy)


def _components(pipe, _C) -> dict:
    out = {}
    for name in ("text_encoder", "transformer", "vae"):
        model = getattr(pipe, name)
        groups = [b for b, _ in _C.residency_info(model._core)["groups"]]
        out[name] = {"weight_bytes": model.weight_bytes, "groups": groups}
    return out


def child_run(args) -> None:
    res = {"strategy": args.strategy, "vae": args.vae, "bandwidth": args.bandwidth_bytes}
    try:
        _child_run(args, res)
    except Exception as e:  # the parent's table says which configuration failed, and why
        res["error"] = f"{type(e).__name__}: {e}"
        Path(args.result).write_text(json.dumps(res, indent=1))
        raise


def _child_run(args, res: dict) -> None:
    import numpy as np  # in the baseline: the pipeline needs it anyway

    cogvideo_c = import_cogvideo_c(res)
    from cogvideo_c import _C

    res["rss_baseline"] = rss_bytes()
    _C.set_bandwidth("emu", float(args.bandwidth_bytes))
    t0 = time.perf_counter()
    pipe = _load(cogvideo_c, args.model_dir, args.vae)
    _apply(pipe, args.strategy, args.max_memory)
    res["load_s"] = time.perf_counter() - t0
    res["hwm_after_load"] = hwm_bytes()
    res["components"] = _components(pipe, _C)
    reports = []

    def call():
        out = pipe(generator=0, output_type="np", **REQUEST).frames
        reports.append(pipe.memory_report())
        return out

    frames = timed_calls(res, call, args.repeat, args.warmup, "calls")
    res["host_peak_rss"] = max(res["hwm_after_load"], res["hwm_after_calls"])
    res["reports"] = [dict(r) for r in reports[args.warmup :]]
    chain = pipe._offload
    if args.strategy == "auto" and chain is not None and chain.plan is not None:
        res["auto_plan"] = chain.plan.describe()
    res["max_memory"] = args.max_memory
    res["frames_checksum"] = float(np.asarray(frames, dtype=np.float64).sum())
    Path(args.result).write_text(json.dumps(res, indent=1))


def child_host_ram(args) -> None:
    """The pipeline on the CPU (none) from its float32 checkpoint, run in float32: peak RSS against the bound."""
    res = {}
    import numpy as np

    cogvideo_c = import_cogvideo_c(res)
    res["rss_baseline"] = rss_bytes()  # after `import cogvideo_c, numpy`
    pipe = _load(cogvideo_c, args.model_dir, "plain")
    res["weight_bytes"] = sum(m.weight_bytes for m in (pipe.text_encoder, pipe.transformer, pipe.vae))
    res["dtypes"] = sorted({str(m.dtype) for m in (pipe.text_encoder, pipe.transformer, pipe.vae)})
    res["rss_after_load"] = rss_bytes()
    t0 = time.perf_counter()
    frames = pipe(generator=0, output_type="np", **REQUEST).frames
    res["call_s"] = time.perf_counter() - t0
    report = pipe.memory_report()
    res["host_peak_rss"] = hwm_bytes()
    res["activation_peak"] = max(rec["device_peak_activations_bytes"] for rec in report.values())
    res["output_bytes"] = int(np.asarray(frames).nbytes)
    res["report"] = {k: dict(v) for k, v in report.items()}
    res["memory_stats_peak"] = cogvideo_c.memory_stats("cpu")["allocated_bytes.all.peak"]
    Path(args.result).write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def ensure_pipeline(model_dir: Path, seed: int, threads: int) -> None:
    """Reuses the pipeline in model_dir when its recorded settings equal this script's; otherwise writes it anew."""
    meta = {"mid": MID, "seed": seed}
    mfile = model_dir / META_NAME
    if mfile.is_file() and (model_dir / "model_index.json").is_file():
        try:
            if json.loads(mfile.read_text()) == meta:
                print(f"reusing pipeline in {model_dir}")
                return
        except ValueError:
            pass
    if model_dir.exists():
        shutil.rmtree(model_dir)
    t0 = time.perf_counter()
    run_cmd([sys.executable, str(HERE), "--child", "make", "--model-dir", str(model_dir), "--seed", str(seed)], threads)
    mfile.write_text(json.dumps(meta))
    print(f"pipeline written in {time.perf_counter() - t0:.1f} s")


def run_config(args, work: Path, strategy: str, vae: str, bandwidth: float, max_memory=None) -> dict:
    tag = f"{strategy}_{vae}_{bandwidth:.6g}"
    result = work / f"res_{tag}.json"
    cmd = [sys.executable, str(HERE), "--child", "run", "--model-dir", str(args.model_dir), "--strategy", strategy,
           "--vae", vae, "--bandwidth-bytes", repr(bandwidth), "--repeat", str(args.repeat), "--warmup",
           str(args.warmup), "--result", str(result)]  # fmt: skip
    if max_memory is not None:
        cmd += ["--max-memory", str(max_memory)]
    try:
        run_cmd(cmd, args.threads)
    except subprocess.CalledProcessError as e:
        res = json.loads(result.read_text()) if result.is_file() else {}
        return {"strategy": strategy, "vae": vae, "bandwidth": bandwidth, "max_memory": max_memory,
                "error": res.get("error", f"exit status {e.returncode}")}  # fmt: skip
    return summarize(json.loads(result.read_text()))


def summarize(res: dict) -> dict:
    """The table's numbers from one child's raw result (kept under "raw")."""
    last = res["reports"][-1]
    peak_stage = max(last, key=lambda s: last[s]["device_peak_bytes"])
    denoise = [r["denoise"] for r in res["reports"]]
    copy_s = sum(rec["copy_seconds"] for rec in last.values())
    wait_s = sum(rec["wait_seconds"] for rec in last.values())
    d = last["denoise"]
    return {
        "strategy": res["strategy"],
        "vae": res["vae"],
        "bandwidth": res["bandwidth"],
        "time_s": res["time_s_median"],
        "times_s": res["times_s"],
        "denoise_s": statistics.median(r["seconds"] for r in denoise),
        "decode_s": statistics.median(r["decode"]["seconds"] for r in res["reports"]),
        "device_peak": last[peak_stage]["device_peak_bytes"],
        "device_peak_stage": peak_stage,
        "device_peak_weights": last[peak_stage]["device_peak_weights_bytes"],
        "device_peak_activations": last[peak_stage]["device_peak_activations_bytes"],
        "host_peak_rss": res["host_peak_rss"],
        "bytes_copied": sum(rec["bytes_copied"] for rec in last.values()),
        "copy_s": copy_s,
        "wait_s": wait_s,
        "denoise_overlap": d["overlap"],
        "denoise_peak": d["device_peak_bytes"],
        "denoise_peak_weights": d["device_peak_weights_bytes"],
        "denoise_bytes_copied": d["bytes_copied"],
        "auto_plan": res.get("auto_plan"),
        "max_memory": res.get("max_memory"),
        "frames_checksum": res["frames_checksum"],
        "raw": res,
    }


def auto_budget(none_row: dict) -> int:
    """A budget the transformer cannot stay whole in (its weights + arena), but its prefetch-1 stream fits, and so do
    the other stages whole: from the none run's measured sizes (the planner itself measures them again)."""
    if "error" in none_row:
        raise SystemExit(f"the none run failed ({none_row['error']}): nothing to measure against")
    comps = none_row["raw"][-1]["components"]
    last = none_row["raw"][-1]["reports"][-1]
    acts = {stage: rec["device_peak_activations_bytes"] for stage, rec in last.items()}
    groups = comps["transformer"]["groups"]
    stream = groups[0] + 2 * max(groups[1:]) + acts["denoise"]
    whole = comps["transformer"]["weight_bytes"] + acts["denoise"]
    others = max(comps["text_encoder"]["weight_bytes"] + acts["encode_prompt"],
                 comps["vae"]["weight_bytes"] + acts["decode"])  # fmt: skip
    need = max(stream, others)
    budget = int(need * 1.05)
    if budget >= whole:
        raise SystemExit(f"auto: no budget forces streaming (need {need} >= whole transformer {whole})")
    return budget


def half_compute_bandwidth(none_row: dict) -> tuple[float, dict]:
    if "error" in none_row:
        raise SystemExit(f"the none run failed ({none_row['error']}): nothing to measure against")
    steps = REQUEST["num_inference_steps"]
    layers = MID["transformer"]["num_layers"]
    # the fastest denoise seen: on a shared machine the slower ones carry others' load, and the link must be half
    # of the block's own compute (at most half of any slower one)
    block_s = min(none_row["denoise_all_s"]) / (steps * layers)
    group = max(none_row["raw"][-1]["components"]["transformer"]["groups"][1:])
    bw = group / (0.5 * block_s)
    return bw, {"block_compute_s": block_s, "block_group_bytes": group, "bandwidth": bw}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = None
    try:  # physical cores: distinct (physical id, core id) pairs
        pairs, cur = set(), {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    cur[k] = v
                elif cur:
                    pairs.add((cur.get("physical id"), cur.get("core id")))
                    cur = {}
        if cur:
            pairs.add((cur.get("physical id"), cur.get("core id")))
        cores = len(pairs) or None
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores, "threads": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}  # fmt: skip


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ratio(row, base):
    return f"{row['time_s'] / base['time_s']:.2f}" if base else "-"


def _overlap(row):
    return "-" if row["denoise_overlap"] is None else f"{row['denoise_overlap']:.0%}"


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| strategy | VAE | time (s, median) | x none | denoise (s) | device peak (MiB) | weights (MiB) "
        "| activations (MiB) | denoise peak (weights) (MiB) | host peak RSS (MiB) | copied (MiB) | copy (s) | wait (s) "
        "| denoise overlap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["vae"]: r for r in rows if r["strategy"] == "none" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | {r['vae']} | failed: {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['strategy']} | {r['vae']} | {r['time_s']:.3f} | {_ratio(r, base.get(r['vae']))} | "
            f"{r['denoise_s']:.3f} | {fmt_mib(r['device_peak'])} | {fmt_mib(r['device_peak_weights'])} | "
            f"{fmt_mib(r['device_peak_activations'])} | {fmt_mib(r['denoise_peak'])} "
            f"({fmt_mib(r['denoise_peak_weights'])}) | {fmt_mib(r['host_peak_rss'])} | {fmt_mib(r['bytes_copied'])} | "
            f"{r['copy_s']:.3f} | {r['wait_s']:.3f} | {_overlap(r)} |"
        )
    return lines


def goal_lines(rows: list[dict]) -> list[str]:
    out = []
    for vae in VAE_MODES:
        by = {r["strategy"]: r for r in rows if r["vae"] == vae and "error" not in r}
        if "none" not in by or "sequential" not in by:
            continue
        ratio = by["sequential"]["time_s"] / by["none"]["time_s"]
        line = f"- VAE {vae}: sequential / none = {ratio:.2f} ({'meets' if ratio <= GOAL else 'misses'} the <= {GOAL}"
        line += " goal)"
        line += f"; compute waited {by['sequential']['wait_s']:.3f} s for copies"
        if "sequential-no-prefetch" in by:
            slow = by["sequential-no-prefetch"]
            line += (f"; sequential without prefetch / none = {slow['time_s'] / by['none']['time_s']:.2f}, compute "
                     f"waited {slow['wait_s']:.3f} s")  # fmt: skip
        out.append(line)
    return out


def ring_lines(rows: list[dict], meta: dict) -> list[str]:
    """The transformer's streaming peak against the issue's bound: (k + 1) largest block groups + its non-block
    group (the arena aside), per sequential strategy (k = 1 with prefetch, 0 without)."""
    groups = meta["components"]["transformer"]["groups"]
    out = []
    for strategy, k in (("sequential", 1), ("sequential-no-prefetch", 0)):
        got = sorted({r["denoise_peak_weights"] for r in rows if r["strategy"] == strategy and "error" not in r})
        if got:
            want = (k + 1) * max(groups[1:]) + groups[0]
            out.append(f"- {strategy}: the denoise stage holds {', '.join(fmt_mib(g) for g in got)} MiB of weights; "
                       f"({k} + 1) x {fmt_mib(max(groups[1:]))} + {fmt_mib(groups[0])} (non-block) = {fmt_mib(want)} "
                       "MiB")  # fmt: skip
    return ["Weights on the device while the transformer streams:", ""] + out + [""] if out else []


def write_markdown(path: Path, args, meta: dict, sections: dict) -> None:
    m = meta["machine"]
    lines = [
        "# Offload strategies on the emulated accelerator",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} hardware threads ({m['system']}, Python "
        f"{m['python']}); {args.threads} compute threads (OMP_NUM_THREADS). cogvideo_c commit {meta['commit']}; "
        f"run {meta['date']} in {meta['total_s'] / 60:.1f} min; load average (1 min) "
        f"{meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after (the machine may be shared).",
        "",
        f"Pipeline (make_tiny_pipeline overrides, float32): {json.dumps(MID)}. Weights: "
        + ", ".join(f"{n} {fmt_mib(c['weight_bytes'])} MiB" for n, c in meta["components"].items())
        + f"; transformer block group {fmt_mib(meta['block_group_bytes'])} MiB.",
        "",
        f"Request: {json.dumps(REQUEST)}, guidance 6 (classifier-free: 4 rows through the transformer). Each row: "
        f"{args.rounds} child process(es), interleaved with the other rows, each {args.warmup} warm-up + "
        f"{args.repeat} timed calls; the time is the median of all {args.rounds * args.repeat}. Device peak: the "
        "largest stage's peak in pipe.memory_report() (weights / activations at that stage); denoise peak: the "
        "transformer stage's (its weights in brackets: the streaming ring); copied: all stages; "
        "denoise overlap: 1 - wait / copy time of the transformer's stream. Host peak RSS: the child's high-water "
        "mark (on emu the device pool is host memory too).",
        "",
        "On a shared machine the wall times carry other processes' load (see the load average): compare rows "
        "of one run, and read the wait column (the time compute waited for copies, measured by the memory manager "
        "per call) as the part of the time the link itself costs, which that load does not change.",
        "",
    ]
    for name, sec in sections.items():
        lines += [f"## Link: {name} ({sec['bandwidth'] / 1e9:.3g} GB/s)", ""]
        if "calibration" in sec:
            c = sec["calibration"]
            lines += [
                f"Calibrated from the fastest denoise of the none runs at pcie (VAE plain): compute per transformer "
                "block "
                f"{c['block_compute_s'] * 1e3:.1f} ms, block group {fmt_mib(c['block_group_bytes'])} MiB, so a "
                f"block's copy takes {0.5 * c['block_compute_s'] * 1e3:.1f} ms at {c['bandwidth'] / 1e6:.0f} MB/s.",
                "",
            ]
        lines += table(sec["rows"]) + [""]
        plans = sorted({f"{r['vae']}: max_memory {r['max_memory']} bytes -> {r['auto_plan']}" for r in sec["rows"]
                        if r.get("auto_plan")})  # fmt: skip
        if plans:
            lines += ["auto's choices:", ""] + [f"- {p}" for p in plans] + [""]
        lines += ring_lines(sec["rows"], meta)
        goals = goal_lines(sec["rows"])
        if goals and name == "half-compute":
            lines += [f"The issue's goal at this link (sequential with prefetch <= {GOAL} x none):", ""] + goals + [""]
    path.write_text("\n".join(lines))


def run_host_ram(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_offload_"))
    try:
        result = work / "host_ram.json"
        run_cmd([sys.executable, str(HERE), "--child", "host-ram", "--model-dir", str(args.model_dir), "--result",
                 str(result)], args.threads)  # fmt: skip
        res = json.loads(result.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bound = res["weight_bytes"] * 1.1 + res["activation_peak"] + res["rss_baseline"]
    res["bound"] = bound
    res["meets_bound"] = res["host_peak_rss"] <= bound
    res["command"] = "python benchmarks/bench_offload.py " + " ".join(sys.argv[1:])
    res["machine"], res["commit"] = machine(), commit()
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    m = res["machine"]
    lines = [
        "# Host RAM of a pipeline run from a checkpoint stored in the run dtype",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} hardware threads; cogvideo_c commit {res['commit']}; "
        f"run {res['date']}.",
        "",
        f"The benchmark's pipeline (float32 files, float32 run, dtypes {res['dtypes']}) on the CPU (none), one call of "
        f"{json.dumps(REQUEST)} ({res['call_s']:.2f} s). Baseline: RSS after `import cogvideo_c, numpy`; activation "
        "peak: the largest stage's device_peak_activations_bytes in pipe.memory_report() (the activation arena); peak "
        "RSS: the child's VmHWM at the end. The issue's bound: peak RSS <= weights x 1.1 + activations + baseline.",
        "",
        "| weights (MiB) | activation peak (MiB) | baseline RSS (MiB) | bound (MiB) | peak RSS (MiB) "
        "| peak - baseline (MiB) | within the bound |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {fmt_mib(res['weight_bytes'])} | {fmt_mib(res['activation_peak'])} | {fmt_mib(res['rss_baseline'])} | "
        f"{fmt_mib(bound)} | {fmt_mib(res['host_peak_rss'])} | {fmt_mib(res['host_peak_rss'] - res['rss_baseline'])} "
        f"| {'yes' if res['meets_bound'] else 'NO'} |",
        "",
        f"RSS after load {fmt_mib(res['rss_after_load'])} MiB (the mapped weights are read in place, paged in as the "
        f"forwards touch them); memory_stats('cpu') peak {fmt_mib(res['memory_stats_peak'])} MiB; per stage, the "
        "host peak RSS at its end: "
        + ", ".join(f"{k} {fmt_mib(v['host_peak_rss_bytes'])} MiB" for k, v in res["report"].items())
        + ".",
        "",
    ]
    out = Path(args.out or CHECKOUT / "benchmarks" / "results" / "host_ram.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    (Path(args.json) if args.json else out.with_suffix(".json")).write_text(json.dumps(res, indent=1))
    print(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bandwidth", nargs="+", default=["pcie", "half-compute"], choices=["pcie", "half-compute"])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--vae", nargs="+", default=list(VAE_MODES), choices=VAE_MODES)
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per configuration; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    ap.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, interleaved")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default=None, help="cache the pipeline here (default: a temporary folder)")
    ap.add_argument("--max-memory", type=int, default=None, help="auto's budget in bytes (default: see above)")
    ap.add_argument("--out", default=None, help="the Markdown (default: benchmarks/results/offload.md, or host_ram.md)")
    ap.add_argument("--json", default=None, help="raw numbers (default: --out with .json)")
    ap.add_argument("--host-ram", action="store_true", help="the host-RAM check on the CPU instead of the table")
    ap.add_argument("--child", choices=["make", "run", "host-ram"], help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth-bytes", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "make":
        return child_make(args)
    if args.child == "run":
        args.vae = args.vae[0] if isinstance(args.vae, list) else args.vae
        return child_run(args)
    if args.child == "host-ram":
        return child_host_ram(args)
    if args.repeat < 1 or args.rounds < 1:
        ap.error("--repeat and --rounds must be >= 1")

    tmp = None
    if args.model_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench_offload_model_")
        args.model_dir = tmp
    try:
        ensure_pipeline(Path(args.model_dir), args.seed, args.threads)
        if args.host_ram:
            return run_host_ram(args)
        run_table(args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def merge_rounds(rows: list[dict]) -> dict:
    """One configuration's rows from --rounds child runs: the times pooled (their median), the host peak the largest,
    the rest (deterministic: peaks, bytes) from the last round; every round's raw result kept."""
    failed = [r for r in rows if "error" in r]
    if failed:
        return failed[0]
    out = dict(rows[-1])
    out["times_s"] = [t for r in rows for t in r["times_s"]]
    out["time_s"] = statistics.median(out["times_s"])
    out["denoise_all_s"] = [rec["denoise"]["seconds"] for r in rows for rec in r["raw"]["reports"]]
    out["denoise_s"] = statistics.median(out["denoise_all_s"])
    out["decode_s"] = statistics.median(rec["decode"]["seconds"] for r in rows for rec in r["raw"]["reports"])
    out["host_peak_rss"] = max(r["host_peak_rss"] for r in rows)
    out["raw"] = [r["raw"] for r in rows]
    return out


def run_section(args, work: Path, link: str, bandwidth: float, none_pcie: dict, budgets: dict) -> list[dict]:
    """Every (VAE mode, strategy) at one link, all of them once per round (--rounds), so that a change in the
    machine's load hits every configuration alike; returns the merged rows."""
    runs = {}
    for rnd in range(args.rounds):
        for vae in args.vae:
            for strategy in args.strategies:
                budget = None
                if strategy == "auto":
                    if vae not in budgets:
                        if args.max_memory is not None:
                            budgets[vae] = args.max_memory
                        else:
                            if vae not in none_pcie:
                                none_pcie[vae] = merge_rounds([run_config(args, work, "none", vae, PCIE)])
                            budgets[vae] = auto_budget(none_pcie[vae])
                    budget = budgets[vae]
                row = run_config(args, work, strategy, vae, bandwidth, budget)
                runs.setdefault((vae, strategy), []).append(row)
                if strategy == "none" and link == "pcie" and vae not in none_pcie and "error" not in row:
                    none_pcie[vae] = merge_rounds([row])  # the auto budget needs only its sizes
                head = f"  {link} round {rnd + 1}/{args.rounds} {strategy} {vae}:"
                if "error" in row:
                    print(f"{head} failed: {row['error']}", flush=True)
                else:
                    print(f"{head} {row['time_s']:.3f} s, device peak {fmt_mib(row['device_peak'])} MiB, host peak "
                          f"{fmt_mib(row['host_peak_rss'])} MiB, overlap {_overlap(row)}", flush=True)  # fmt: skip
    rows = [merge_rounds(r) for r in runs.values()]
    if link == "pcie":  # the calibration of half-compute: every round's none times
        none_pcie.update({r["vae"]: r for r in rows if r["strategy"] == "none" and "error" not in r})
    return rows


def run_table(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_offload_"))
    command = "python benchmarks/bench_offload.py " + " ".join(sys.argv[1:])
    sections = {}
    none_pcie = {}  # vae -> the none row at pcie (the auto budget and the half-compute calibration)
    budgets = {}  # vae -> auto's max_memory
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        for link in ("pcie", "half-compute"):
            if link not in args.bandwidth:
                continue
            sec = {}
            if link == "pcie":
                sec["bandwidth"] = PCIE
            else:
                if "plain" not in none_pcie:
                    none_pcie["plain"] = merge_rounds([run_config(args, work, "none", "plain", PCIE)])
                sec["bandwidth"], sec["calibration"] = half_compute_bandwidth(none_pcie["plain"])
            sec["rows"] = run_section(args, work, link, sec["bandwidth"], none_pcie, budgets)
            sections[link] = sec
    finally:
        shutil.rmtree(work, ignore_errors=True)
    any_row = next(r for s in sections.values() for r in s["rows"] if "raw" in r)
    comps = any_row["raw"][-1]["components"]
    meta = {
        "command": command,
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "components": comps,
        "block_group_bytes": max(comps["transformer"]["groups"][1:]),
        "mid": MID,
        "request": REQUEST,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "total_s": time.perf_counter() - t_start,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out = Path(args.out or CHECKOUT / "benchmarks" / "results" / "offload.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(out, args, meta, sections)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    for sec in sections.values():
        for row in sec["rows"]:
            for raw in row.get("raw", []):
                raw.pop("components", None)  # the same in every row: kept once in meta
    json_path.write_text(json.dumps({"meta": meta, "sections": sections}, indent=1))
    print(out.read_text())
    print(f"wrote {out} and {json_path} ({meta['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
