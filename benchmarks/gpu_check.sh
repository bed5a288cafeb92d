#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (issue 9): install, the C CUDA op tests, the GPU pytest suite and
# the benchmark against diffusers (transformer step, tiled VAE decode, and issue 10's LoRA step and image-to-video
# call, each under none / model / sequential offload), inside one time budget, every stage logged under $OUT, a
# failed stage not stopping the next. Prepare here first (downloads the wheels the device lacks into .gpu-carry/, ignored by git):
#
#     bash benchmarks/prepare_gpu_carry.sh
#
# then one device call (the `run` tool), from the checkout's root:
#
#     command:   bash benchmarks/gpu_check.sh
#     carry:     [".gpu-carry"]
#     timeout_s: 600
#
# $OUT gets at most 8 files (the device tool's limit): 01-install.log, 02-ctest.log, 03-pytest.log, 04-bench.log,
# bench_gpu.md, bench_gpu.json, bench_gpu.png, summary.md. The last lines printed are the summary and the benchmark
# table (the tool returns the end of the output).
#
# Environment:
#   OUT                       output folder (default: ./gpu-check-out)
#   GPU_CHECK_BUDGET_S        total wall-clock budget (default 480: the issue's 8 minutes)
#   GPU_CHECK_PYTHON          interpreter (default python3: the device's, with torch)
#   GPU_CHECK_BENCH_ARGS      extra bench_gpu.py arguments, e.g. "--model 5b --dtypes bfloat16" (or "--no-lora
#                             --no-i2v": issue 9's rows only)
#   GPU_CHECK_SKIP_INSTALL=1  use the cogvideo_c already installed (a rerun on a warm machine)
#   GPU_CHECK_TINY=1          without a GPU: still run the benchmark stage, with --tiny (a check of this script)
#   CVX_CUDA_ARCHS            nvcc architectures (default here 90: H100/H200)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=$ROOT/.gpu-carry/wheels
export CVX_CUDA_ARCHS=${CVX_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
START=$(date +%s)
SUMMARY=$OUT/summary.md
: >"$SUMMARY.stages"

if nvidia-smi -L >/dev/null 2>&1; then GPU=1; else GPU=0; fi

elapsed() { echo $(($(date +%s) - START)); }

# stage NAME CAP_S RESERVE_S CMD: runs CMD (a bash string) with a timeout of min(CAP_S, budget left - RESERVE_S),
# its output in $OUT/NAME.log; records the outcome. RESERVE_S keeps time for the stages after it.
stage() {
    local name=$1 cap=$2 reserve=$3 cmd=$4
    local left=$((BUDGET - $(elapsed) - reserve))
    local t=$((cap < left ? cap : left))
    local log=$OUT/$name.log
    if [ "$t" -lt 10 ]; then
        echo "| $name | skipped: ${left}s of the budget left | – |" >>"$SUMMARY.stages"
        echo "== $name: skipped (budget)"
        return 0
    fi
    echo "== $name (timeout ${t}s) $(date -u +%T)"
    local t0 rc
    t0=$(date +%s)
    { echo "\$ $cmd"; echo; } >"$log"
    timeout -k 10 "$t" bash -c "$cmd" >>"$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMED OUT after ${t}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    echo "| $name | $status | ${took}s |" >>"$SUMMARY.stages"
    echo "   $status in ${took}s; last lines of $name.log:"
    tail -n 8 "$log" | sed 's/^/   | /'
    return 0
}

skip() {
    echo "| $1 | skipped: $2 | – |" >>"$SUMMARY.stages"
    echo "== $1: skipped ($2)"
}

# ---- 01 install: the carried wheels the machine lacks, then cogvideo_c built with nvcc for sm_90 --------------
INSTALL=$(
    cat <<EOF
set -e
nvidia-smi || true
nvcc --version | tail -2 || true
ls "\$(dirname "\$(dirname "\$(command -v nvcc)")")"/lib64 2>/dev/null | grep -E 'libcu(blas|blasLt|dart)\.so' || echo "no cuBLAS / cudart next to nvcc"
$PY - "$WHEELS" <<'PYEOF'
import importlib.metadata as md, pathlib, subprocess, sys
wheels = sorted(pathlib.Path(sys.argv[1]).glob("*.whl"))
if not wheels:
    sys.exit(f"no wheels in {sys.argv[1]}: run benchmarks/prepare_gpu_carry.sh before the device call")
only_if_absent = {"setuptools", "wheel", "numpy", "zipp", "importlib_metadata"}
todo = []
for w in wheels:
    name = w.name.split("-")[0].lower().replace("_", "-")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have and name.replace("-", "_") in only_if_absent:
        print(f"keep {name} {have} (carried {w.name.split('-')[1]} not needed)")
    else:
        print(f"install {w.name} (have {have})")
        todo.append(str(w))
if todo:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", *todo])
PYEOF
$PY -m pip install --no-build-isolation --no-deps --no-index -v -e .
cd /tmp && $PY -c "import cogvideo_c, json; i = cogvideo_c.build_info(); print(json.dumps(i)); assert i['cuda'], 'build_info()[\"cuda\"] is False: CUDA backend not built or no device'"
EOF
)
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    skip 01-install "GPU_CHECK_SKIP_INSTALL=1"
else
    stage 01-install 240 150 "$INSTALL"
fi

# ---- 02 the C CUDA op tests on the GPU (the S = 17,776 attention case included) ---------------------------------
if [ "$GPU" = 1 ]; then
    stage 02-ctest 120 120 "CVX_CUDA_TEST_BIG=1 make -j\$(nproc) -C tests/c cuda PYTHON=$PY"
else
    skip 02-ctest "no GPU (nvidia-smi sees none)"
fi

# ---- 03 pytest -m cuda: the files that use the marker (others may import what this machine lacks) ---------------
CUDA_TESTS=$(grep -l "mark\.cuda" tests/test_*.py | tr '\n' ' ')
stage 03-pytest 100 100 "$PY -m pytest -m cuda -q -rs -p no:cacheprovider -o faulthandler_timeout=60 $CUDA_TESTS"

# ---- 04 the benchmark against diffusers ----------------------------------------------------------------------
if [ "$GPU" = 1 ]; then
    left=$((BUDGET - $(elapsed) - 15))
    stage 04-bench 600 5 "$PY benchmarks/bench_gpu.py --out $OUT --work /tmp/bench_gpu_work --budget-s $((left - 10)) \
        ${GPU_CHECK_BENCH_ARGS:-}"
elif [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
    stage 04-bench 600 5 "$PY benchmarks/bench_gpu.py --out $OUT --tiny ${GPU_CHECK_BENCH_ARGS:-}"
else
    skip 04-bench "no GPU (GPU_CHECK_TINY=1 runs it with --tiny)"
fi

# ---- summary ---------------------------------------------------------------------------------------------------
{
    echo "# gpu_check.sh, $(date -u '+%F %T') UTC, $(elapsed)s of a ${BUDGET}s budget"
    echo
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
    echo "Python: $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1);" \
        "torch: $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1);" \
        "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none); commit: $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
    echo
    echo "| stage | result | time |"
    echo "|---|---|---:|"
    cat "$SUMMARY.stages"
    echo
    grep -h -E '^(FAILED|ERROR) |[0-9]+ (passed|failed)' "$OUT/03-pytest.log" 2>/dev/null | tail -n 30
} >"$SUMMARY"
rm -f "$SUMMARY.stages"
echo
cat "$SUMMARY"
[ -f "$OUT/bench_gpu.md" ] && { echo; cat "$OUT/bench_gpu.md"; }
exit 0
