"""The bounded mutational loop the Python fuzzers share (fuzz_configs.py, fuzz_lora.py, fuzz_media.py): cases are
made and run in a worker subprocess, one after another, each reported on its own pipe line, so that a crash or hang
costs one worker and the next starts at the following case.

A fuzzer module gives `make_case(seed, index, folder) -> target` (writes case (seed, index) into `folder`, returns a
short description), `run_case(folder) -> detail` (runs it; raises to refuse it) and optionally `after_case() ->
problem or None` (called after every case in the worker: what a refused or finished case left behind, e.g. leaked
bytes). A case passes when it runs, or fails with a clean exception (ValueError, OSError, NotImplementedError,
cogvideo_c.OutOfMemoryError). Anything else is a finding: a crash (the worker dies: SIGSEGV, abort, ...), a hang (no
answer within the case timeout), an unclean exception (KeyError, IndexError, TypeError, MemoryError, ...) or a leak
(after_case's problem).

Cases are deterministic in (seed, index). Exit status 1 when anything was found.
"""

import argparse
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

MEMORY_LIMIT = 8 * 2**30  # the worker's address space: an input that asks for more must be refused, not swap


def worker(module, seed, start, stop, scratch):
    """Runs cases [start, stop), reporting 'begin i target' / 'end i outcome detail' lines on the original stdout."""
    import resource

    import cogvideo_c

    clean = (ValueError, OSError, NotImplementedError, cogvideo_c.OutOfMemoryError)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    report = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # whatever the library prints must not garble the protocol
    os.dup2(devnull, 2)
    after = getattr(module, "after_case", None)
    for index in range(start, stop):
        folder = os.path.join(scratch, f"case{index}")
        os.makedirs(folder, exist_ok=True)
        target = module.make_case(seed, index, folder)
        report.write(f"begin {index} {target}\n")
        try:
            outcome, detail = "ok", str(module.run_case(folder))
        except BaseException as err:  # noqa: BLE001 - classifying every exception is the point (PanicException too)
            outcome, detail = "clean" if isinstance(err, clean) else "unclean", f"{type(err).__name__}: {err}"
        problem = after() if after else None
        if problem:
            outcome, detail = "leak", f"{problem} (after {detail})"
        shutil.rmtree(folder, ignore_errors=True)
        report.write(f"end {index} {outcome} {' '.join(detail.split())[:300]}\n")


def fuzz(script, seed, cases, seconds, case_timeout):
    """Runs up to `cases` cases of the fuzzer `script` (or for `seconds`); returns the counts, the clean refusals by
    exception type and the findings [(index, target, kind, detail)]."""
    scratch = tempfile.mkdtemp(prefix=f"cvx_{os.path.splitext(os.path.basename(script))[0]}_")
    counts = {"ok": 0, "clean": 0, "unclean": 0, "leak": 0, "crash": 0, "hang": 0}
    findings, rejections = [], {}
    deadline = time.monotonic() + seconds if seconds else math.inf
    index = 0
    try:
        while index < cases and time.monotonic() < deadline:
            cmd = [sys.executable, os.path.abspath(script), "--worker", "--seed", str(seed), "--start", str(index),
                   "--stop", str(cases), "--scratch", scratch]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            current, target = None, None
            case_start = time.monotonic()
            while time.monotonic() < deadline:
                # wait for the case's timeout, but not past the deadline (a case running then is stopped, not a hang)
                ready, _, _ = select.select(
                    [proc.stdout], [], [], max(0.0, min(case_start + case_timeout, deadline) - time.monotonic())
                )
                if not ready and time.monotonic() >= deadline and time.monotonic() - case_start < case_timeout:
                    continue  # the while condition ends the run
                if not ready:  # no line within the case timeout: the current case hangs
                    proc.kill()
                    proc.wait()
                    counts["hang"] += 1
                    findings.append((index if current is None else current, target, "hang", f"> {case_timeout} s"))
                    index = (index if current is None else current) + 1
                    break
                line = proc.stdout.readline()
                if not line:  # the worker died
                    rc = proc.wait()
                    if current is not None:
                        counts["crash"] += 1
                        findings.append((current, target, "crash", f"worker exit status {rc}"))
                        index = current + 1
                    else:
                        index = cases  # it finished its range (or could not start: nothing more to do)
                        if rc != 0:
                            findings.append((index, None, "crash", f"worker failed to start (exit status {rc})"))
                            counts["crash"] += 1
                    break
                case_start = time.monotonic()
                parts = line.rstrip("\n").split(" ", 3)
                if parts[0] == "begin":
                    current, target = int(parts[1]), parts[2]
                elif parts[0] == "end":
                    outcome, detail = parts[2], parts[3] if len(parts) > 3 else ""
                    counts[outcome] += 1
                    if outcome == "clean":
                        name = detail.split(":", 1)[0]
                        rejections[name] = rejections.get(name, 0) + 1
                    elif outcome in ("unclean", "leak"):
                        findings.append((current, target, "unclean exception" if outcome == "unclean" else outcome,
                                         detail))  # fmt: skip
                    index, current = current + 1, None
            else:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return counts, rejections, findings


def main(module, label, describe=None):
    """The command line of a fuzzer module: --seconds / --cases to fuzz, --replay SEED:INDEX to run one case here
    with its traceback (describe(folder, target), if given, prints what the case holds first)."""
    script = module.__file__
    parser = argparse.ArgumentParser(description=(module.__doc__ or label).split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=10**9, help="at most this many cases")
    parser.add_argument("--seconds", type=float, default=0, help="stop starting cases after this long (0: no limit)")
    parser.add_argument("--case-timeout", type=float, default=60.0)
    parser.add_argument("--replay", metavar="SEED:INDEX", help="run one case here and print its traceback")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(module, args.seed, args.start, args.stop, args.scratch)
        return 0
    if args.replay:
        seed, index = (int(x) for x in args.replay.split(":"))
        with tempfile.TemporaryDirectory() as tmp:
            target = module.make_case(seed, index, tmp)
            print(f"case {seed}:{index}: {target}")
            if describe:
                describe(tmp, target)
            try:
                print("result:", module.run_case(tmp))
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            problem = module.after_case() if hasattr(module, "after_case") else None
            if problem:
                print("after the case:", problem)
        return 0
    if not args.seconds and args.cases == 10**9:
        parser.error("give --seconds or --cases")
    start = time.monotonic()
    counts, rejections, findings = fuzz(script, args.seed, args.cases, args.seconds, args.case_timeout)
    total = sum(counts.values())
    print(
        f"python {label} fuzz (seed {args.seed}): {total} cases in {time.monotonic() - start:.0f} s: "
        f"{counts['ok']} ran, {counts['clean']} cleanly refused "
        f"({', '.join(f'{k} {v}' for k, v in sorted(rejections.items())) or 'none'}), "
        f"{counts['unclean']} unclean exceptions, {counts['leak']} leaks, {counts['crash']} crashes, "
        f"{counts['hang']} hangs"
    )
    for index, target, kind, detail in findings:
        print(f"  {kind}: case {args.seed}:{index} ({target}): {detail}")
    if findings:
        print(f"  replay one with: python {os.path.relpath(script)} --replay SEED:INDEX")
    return 1 if findings else 0
