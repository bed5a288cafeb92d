"""How OpenMP's waiting policy changes the speed of a CPU run, on an idle machine and on a loaded one.

GNU OpenMP (libgomp) workers spin after each parallel region (GOMP_SPINCOUNT=300000 when OMP_WAIT_POLICY is unset)
before they sleep. On a machine whose cores other processes also use, the spinning workers take time slices from
the one thread that has work, and every parallel region waits for a worker that is descheduled. This script runs
one workload (a VAE decode of tests/fixtures/vae/mid, or the embedded tiny pipeline) in a fresh child process per
configuration, side by side (one run of each configuration per round, so drifts in the machine's load hit all
configurations alike), idle and with --busy busy-loop processes competing for the cores, and prints the medians.

    python benchmarks/bench_threads.py                        # VAE decode, 3 rounds, idle and loaded (2 busy loops)
    python benchmarks/bench_threads.py --workload pipeline --rounds 5 --busy 4

A configuration is a set of environment variables given to the child. "gomp default (spin)" sets
GOMP_SPINCOUNT=300000, libgomp's own default, which also stops cogvideo_c from applying its passive default
(it applies OMP_WAIT_POLICY=PASSIVE only when neither variable is set); "cogvideo_c default" sets neither.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")

CONFIGS = {
    "gomp default (spin)": {"GOMP_SPINCOUNT": "300000"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "cogvideo_c default": {},
}

# The child: build the model outside the timed part, warm up once, then time --calls calls and print the median.
CHILD = r"""
import statistics, sys, tempfile, time
import numpy as np
import cogvideo_c
workload, calls, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if workload == "vae":
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(folder)
    z = np.random.default_rng(0).standard_normal((1, vae.config.latent_channels, 3, 16, 24), dtype=np.float32)
    run = lambda: vae.decode(z).sample
else:
    tmp = tempfile.mkdtemp()
    pipe = cogvideo_c.CogVideoXPipeline.from_pretrained(cogvideo_c.tiny.make_tiny_pipeline(tmp))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe("a panda", num_inference_steps=10, generator=0, output_type="np")
run()
times = []
for _ in range(calls):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def run_child(workload: str, calls: int, env_extra: dict, timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(env_extra)
    folder = str(CHECKOUT / "tests" / "fixtures" / "vae" / "mid")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, workload, str(calls), folder],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({env_extra}): {done.stderr[-1500:]}")
    return float(done.stdout.split()[-1])


class BusyLoops:
    """N processes that spin on a core each, killed (by their own pids) on exit; each also stops by itself after
    max_seconds or as soon as this process is gone (so a killed benchmark leaves nothing spinning)."""

    def __init__(self, count: int, max_seconds: float):
        self.count, self.max_seconds, self.procs = count, max_seconds, []

    def __enter__(self):
        code = (
            f"import os, time\nend, parent = time.monotonic() + {self.max_seconds}, {os.getpid()}\n"
            "while time.monotonic() < end and os.getppid() == parent: pass"
        )
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("vae", "pipeline"), default="vae", help="what each child times")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per configuration (median taken)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per child (the child prints their median)")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes in the loaded runs (0: idle only)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a child may take before it is killed")
    parser.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=list(CONFIGS), metavar="CONFIG")
    args = parser.parse_args(argv)

    conditions = [("idle", 0)] + ([(f"loaded ({args.busy} busy loops)", args.busy)] if args.busy else [])
    print(f"workload: {args.workload}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start")
    results = {}
    for condition, busy in conditions:
        for r in range(args.rounds):
            # the busy loops are started once per round and end with it (or when every child has timed out)
            with BusyLoops(busy, max_seconds=len(args.configs) * args.timeout):
                if busy:
                    time.sleep(0.5)  # let them reach the scheduler first
                for name in args.configs:
                    seconds = run_child(args.workload, args.calls, CONFIGS[name], args.timeout)
                    results.setdefault((condition, name), []).append(seconds)
                    print(f"  {condition:<24} round {r + 1}  {name:<26} {seconds:8.3f} s", flush=True)
    print(f"\nmedian of {args.rounds} rounds (each the median of {args.calls} calls), seconds per call:")
    for condition, _ in conditions:
        one = statistics.median(results[(condition, "1 thread")]) if "1 thread" in args.configs else None
        for name in args.configs:
            med = statistics.median(results[(condition, name)])
            ratio = f"  ({med / one:.2f}x one thread)" if one else ""
            print(f"  {condition:<24} {name:<26} {med:8.3f}{ratio}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
